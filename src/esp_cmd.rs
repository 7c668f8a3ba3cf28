//! `esplab esp decrypt` and `esplab esp encrypt`: the ESP engine on packets given as hex or
//! in a capture, with SAs given on the command line. Reference: `docs/esp-tool.md`.

use crate::cli::{note, CliError, Status};
use crate::hexin::{self, Spi};
use crate::pcap_io::{self, Frame, LinkType};
use crate::sa_spec::{parse_u64, SaSpec};
use clap::{ArgGroup, Args, Subcommand};
use esplab_esp::wire::{
    self, emit_outer, finish_udp6_checksum, NAT_T_PORT, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6,
};
use esplab_esp::{
    parse_underlay, Decapped, DropReason, EspError, EspPacket, InboundSa, OuterParams, Underlay,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `esplab esp ...`
#[derive(Debug, Subcommand)]
pub enum EspCommand {
    /// Decrypt ESP packets; print one JSON object per packet.
    Decrypt(DecryptArgs),
    /// Encrypt packets into ESP; print each ESP (or outer) packet as hex.
    Encrypt(EncryptArgs),
}

/// Options of `esplab esp decrypt`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["hex", "pcap"])))]
pub struct DecryptArgs {
    /// An SA (repeatable; each packet goes to the SA of its SPI):
    /// spi=N,alg=NAME,key=HEX[,integ-key=HEX][,esn=true][,seq-high=N][,window=N][,backend=ring|rustcrypto]
    #[arg(long = "sa", value_name = "SPEC", required = true)]
    pub sa: Vec<String>,
    /// A packet in hex: ESP from the SPI on, or a whole IPv4/IPv6 packet carrying ESP
    /// (protocol 50 or UDP 4500). Repeat for several packets, decrypted in order through
    /// the same SA state.
    #[arg(long, value_name = "HEX")]
    pub hex: Vec<String>,
    /// A pcap or pcapng capture: every ESP packet in it is decrypted.
    #[arg(long, value_name = "FILE", conflicts_with = "hex")]
    pub pcap: Option<PathBuf>,
    /// Write the decrypted inner packets (tunnel mode) to this pcap (raw IP link type).
    #[arg(long, value_name = "FILE.pcap")]
    pub out: Option<PathBuf>,
}

/// Options of `esplab esp encrypt`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["hex", "pcap"])))]
pub struct EncryptArgs {
    /// The SA (same SPEC as decrypt; seq-high and window are ignored).
    #[arg(long = "sa", value_name = "SPEC")]
    pub sa: String,
    /// Sequence number of the first packet: the full 64-bit number (above 2^32-1 only with
    /// esn=true). Later packets get seq+1, seq+2, ...
    #[arg(long, value_name = "N", default_value = "1")]
    pub seq: String,
    /// The IV (8 bytes for GCM, 16 for CBC), for reproducible output; one packet only.
    #[arg(long, value_name = "HEX")]
    pub iv: Option<String>,
    /// A payload in hex (in tunnel mode the inner IP packet). Repeatable.
    #[arg(long, value_name = "HEX")]
    pub hex: Vec<String>,
    /// A pcap or pcapng capture: each IP packet in it is encrypted, in order.
    #[arg(long, value_name = "FILE", conflicts_with = "hex")]
    pub pcap: Option<PathBuf>,
    /// Next header for the trailer (default: 4 or 41 from the payload's IP version).
    #[arg(long, value_name = "N")]
    pub next_header: Option<String>,
    /// Wrap the ESP packet in an outer IP header SRC -> DST (IPv4 or IPv6).
    #[arg(long, value_name = "SRC,DST")]
    pub outer: Option<String>,
    /// UDP-encapsulate the ESP packet (RFC 3948, UDP 4500 -> 4500).
    #[arg(long)]
    pub udp_encap: bool,
    /// IPv4 identification of the outer header.
    #[arg(long, value_name = "N")]
    pub ip_id: Option<String>,
    /// Write the outer packets to this pcap (raw IP link type).
    #[arg(long, value_name = "FILE.pcap")]
    pub out: Option<PathBuf>,
}

/// Outer addresses used when an outer header is wanted but `--outer` is not given
/// (RFC 5737 documentation addresses, as in the test vectors).
pub const DEFAULT_OUTER: &str = "192.0.2.1,198.51.100.2";
/// scapy's defaults, so that re-encrypted vectors match byte for byte.
const DEFAULT_IP_ID: u16 = 1;
const OUTER_TTL: u8 = 64;

/// Runs an `esp` subcommand.
pub fn run(cmd: EspCommand, out: &mut dyn Write) -> Result<Status, CliError> {
    match cmd {
        EspCommand::Decrypt(a) => decrypt(&a, out),
        EspCommand::Encrypt(a) => encrypt(&a, out),
    }
}

// ---------------------------------------------------------------------------------------
// decrypt

/// One JSON output line. Fields are printed in declaration order; absent ones are left out.
#[derive(Debug, Default, Serialize)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_header: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pad_length: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn emit(out: &mut dyn Write, line: &Line) -> Result<(), CliError> {
    // Serializing a struct of strings and integers cannot fail; map it anyway, no unwrap.
    let text = serde_json::to_string(line)
        .map_err(|e| CliError::Stdout(std::io::Error::other(e.to_string())))?;
    writeln!(out, "{text}").map_err(CliError::Stdout)
}

/// The receiving SAs, by SPI. A BTreeMap: the SPI comes off the wire.
struct Sad {
    sas: BTreeMap<u32, InboundSa>,
}

/// What became of one ESP packet.
enum Verdict {
    /// Decrypted; the payload lies at `d.payload` in the ESP buffer.
    Decrypted { spi: u32, d: Decapped },
    /// No `--sa` for this SPI.
    UnknownSpi(u32),
    /// Dropped by the SA (replay, ICV, trailer...), or too short to hold an SPI (`spi` None).
    Dropped { spi: Option<u32>, err: EspError },
}

impl Sad {
    fn new(specs: &[String]) -> Result<Self, CliError> {
        let mut sas = BTreeMap::new();
        for text in specs {
            let spec = SaSpec::parse(text)?;
            let spi = spec.spi();
            if sas.insert(spi, spec.inbound()?).is_some() {
                return Err(CliError::DuplicateSpi(Spi(spi)));
            }
        }
        Ok(Self { sas })
    }

    fn has(&self, esp: &[u8]) -> bool {
        EspPacket::new_checked(esp).is_ok_and(|p| self.sas.contains_key(&p.spi()))
    }

    /// RFC 4303 §3.4.2: the SA is found by the SPI (we hold no selectors to add to the key).
    fn open(&mut self, esp: &mut [u8]) -> Verdict {
        let spi = match EspPacket::new_checked(&esp[..]) {
            Ok(p) => p.spi(),
            Err(err) => return Verdict::Dropped { spi: None, err },
        };
        let Some(sa) = self.sas.get_mut(&spi) else {
            return Verdict::UnknownSpi(spi);
        };
        match sa.decap(esp) {
            Ok(d) => Verdict::Decrypted { spi, d },
            Err(err) => Verdict::Dropped {
                spi: Some(spi),
                err,
            },
        }
    }
}

/// Turns a verdict into its JSON line; `esp` is the buffer the verdict was reached on.
fn verdict_line(frame: Option<u64>, v: &Verdict, esp: &[u8]) -> Line {
    match v {
        Verdict::Decrypted { spi, d } => Line {
            frame,
            spi: Some(Spi(*spi).to_string()),
            seq: Some(d.seq),
            next_header: Some(d.next_header),
            pad_length: Some(d.pad_len),
            payload: Some(hexin::encode(
                esp.get(d.payload.clone()).unwrap_or_default(),
            )),
            ..Line::default()
        },
        Verdict::UnknownSpi(spi) => Line {
            frame,
            spi: Some(Spi(*spi).to_string()),
            error: Some(DropReason::UnknownSpi.as_str()),
            detail: Some("no --sa has this SPI".into()),
            ..Line::default()
        },
        Verdict::Dropped { spi, err } => Line {
            frame,
            spi: spi.map(|s| Spi(s).to_string()),
            error: Some(err.reason().as_str()),
            detail: Some(err.to_string()),
            ..Line::default()
        },
    }
}

/// True when `buf` starts like an IP packet: an IPv4 header with a valid checksum, or an
/// IPv6 header whose payload length reaches at least to the end of the buffer. A packet cut
/// short still counts (and is then reported as a bad outer header rather than taken for
/// ESP with SPI 0x45...).
fn looks_like_ip(buf: &[u8]) -> bool {
    match buf.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = (buf[0] & 0x0f) as usize * 4;
            buf.len() >= 20 && ihl >= 20 && ihl <= buf.len() && wire::checksum(0, &buf[..ihl]) == 0
        }
        Some(6) => {
            buf.len() >= 40 && 40 + u16::from_be_bytes([buf[4], buf[5]]) as usize >= buf.len()
        }
        _ => false,
    }
}

/// Where the ESP packet lies in a `--hex` buffer: a whole outer packet, or bare ESP.
fn locate_hex(buf: &[u8], sad: &Sad) -> Result<Range<usize>, EspError> {
    if looks_like_ip(buf) {
        match parse_underlay(buf) {
            Ok(Underlay::Esp(o)) => return Ok(o.payload),
            // Bare ESP whose SPI and sequence number happen to read as an IP header: the
            // SPI decides.
            _ if sad.has(buf) => return Ok(0..buf.len()),
            Ok(Underlay::Ike(_)) => return Err(EspError::NotEsp("an IKE message")),
            Ok(Underlay::Keepalive(_)) => return Err(EspError::NotEsp("a NAT-keepalive")),
            Err(e) => return Err(e),
        }
    }
    Ok(0..buf.len())
}

/// A decrypted inner packet for `--out`, if it is one (tunnel mode), without any TFC
/// padding after the inner IP packet (RFC 4303 §2.7).
fn inner_packet(d: &Decapped, esp: &[u8]) -> Option<Vec<u8>> {
    if d.next_header != NEXT_HEADER_IPV4 && d.next_header != NEXT_HEADER_IPV6 {
        return None;
    }
    let p = esp.get(d.payload.clone())?;
    Some(p[..pcap_io::ip_len(p).unwrap_or(p.len())].to_vec())
}

fn decrypt(a: &DecryptArgs, out: &mut dyn Write) -> Result<Status, CliError> {
    let mut run = Decryption {
        sad: Sad::new(&a.sa)?,
        inner: Vec::new(),
        not_tunnel: 0,
        all_ok: true,
    };
    match &a.pcap {
        Some(path) => run.pcap(path, out)?,
        None => run.hex(&a.hex, out)?,
    }
    if let Some(path) = &a.out {
        if run.not_tunnel > 0 {
            note(format_args!(
                "{} decrypted packets with a next header other than 4 or 41 (not tunnel mode) \
                 left out of {}",
                run.not_tunnel,
                path.display()
            ));
        }
        write_pcap(path, &run.inner)?;
    }
    Ok(if run.all_ok {
        Status::Success
    } else {
        Status::Failed
    })
}

/// State of one `decrypt` run.
struct Decryption {
    sad: Sad,
    /// Decrypted inner packets for `--out`, with their capture times.
    inner: Vec<(Duration, Vec<u8>)>,
    /// Decrypted packets left out of `--out` (not tunnel mode).
    not_tunnel: usize,
    /// Every packet the run is answerable for decrypted.
    all_ok: bool,
}

impl Decryption {
    fn keep(&mut self, ts: Duration, d: &Decapped, esp: &[u8]) {
        match inner_packet(d, esp) {
            Some(p) => self.inner.push((ts, p)),
            None => self.not_tunnel += 1,
        }
    }

    /// `--hex`: every value is a packet, and every packet must decrypt.
    fn hex(&mut self, values: &[String], out: &mut dyn Write) -> Result<(), CliError> {
        // Decode every packet before processing any, so bad hex produces no partial output.
        let packets = values
            .iter()
            .enumerate()
            .map(|(i, h)| hex_arg("--hex", i, values.len(), h))
            .collect::<Result<Vec<_>, _>>()?;
        for mut buf in packets {
            let (v, esp) = match locate_hex(&buf, &self.sad) {
                Ok(r) => {
                    let esp = &mut buf[r];
                    (self.sad.open(esp), &*esp)
                }
                Err(err) => (Verdict::Dropped { spi: None, err }, &buf[..]),
            };
            match &v {
                Verdict::Decrypted { d, .. } => self.keep(Duration::ZERO, d, esp),
                _ => self.all_ok = false,
            }
            emit(out, &verdict_line(None, &v, esp))?;
        }
        Ok(())
    }

    /// `--pcap`: every ESP packet of an SA we hold must decrypt; the rest is counted on
    /// stderr.
    fn pcap(&mut self, path: &Path, out: &mut dyn Write) -> Result<(), CliError> {
        let bytes = read_file("--pcap", path)?;
        let frames = pcap_io::read_capture(&bytes).map_err(|source| CliError::Capture {
            flag: "--pcap",
            path: path.display().to_string(),
            source,
        })?;
        let mut stats = PcapStats::default();
        let mut esp = Vec::new();
        for f in &frames {
            let Some(range) = stats.esp_of(f) else {
                continue;
            };
            esp.clear();
            esp.extend_from_slice(&f.data[range]);
            let v = self.sad.open(&mut esp);
            match &v {
                Verdict::UnknownSpi(spi) => {
                    *stats.unknown.entry(*spi).or_default() += 1;
                    continue;
                }
                Verdict::Dropped { spi: None, .. } => {
                    stats.malformed += 1;
                    continue;
                }
                Verdict::Dropped { .. } => self.all_ok = false,
                Verdict::Decrypted { d, .. } => self.keep(f.timestamp, d, &esp),
            }
            emit(out, &verdict_line(Some(f.number), &v, &esp))?;
        }
        stats.report();
        Ok(())
    }
}

/// What `--pcap` decrypt skipped, for the summary on stderr.
#[derive(Default)]
struct PcapStats {
    /// Frames on interfaces whose link type we cannot take apart (pcapng only).
    unsupported_link: BTreeMap<u32, usize>,
    /// IP packets with a malformed or fragmented header, and ESP too short for an SPI.
    malformed: usize,
    /// ESP packets per SPI with no `--sa`.
    unknown: BTreeMap<u32, usize>,
}

impl PcapStats {
    /// The ESP packet in a frame, if it holds one.
    fn esp_of(&mut self, f: &Frame<'_>) -> Option<Range<usize>> {
        let Some(link) = LinkType::from_code(f.link) else {
            *self.unsupported_link.entry(f.link).or_default() += 1;
            return None;
        };
        let ip = link.ip_packet(&f.data)?;
        let offset = f.data.len() - ip.len();
        match parse_underlay(ip) {
            Ok(Underlay::Esp(o)) => Some(o.payload.start + offset..o.payload.end + offset),
            Err(EspError::BadOuterHeader(_)) => {
                self.malformed += 1;
                None
            }
            // Not ESP (other protocols, IKE, keepalives): skipped silently.
            _ => None,
        }
    }

    fn report(&self) {
        if !self.unknown.is_empty() {
            let total: usize = self.unknown.values().sum();
            let list: Vec<String> = self
                .unknown
                .iter()
                .take(8)
                .map(|(spi, n)| format!("{} ({n})", Spi(*spi)))
                .collect();
            let more = if self.unknown.len() > 8 { ", ..." } else { "" };
            note(format_args!(
                "{total} ESP packets skipped: no --sa for SPI {}{more}",
                list.join(", ")
            ));
        }
        if self.malformed > 0 {
            note(format_args!(
                "{} packets skipped: IP fragment, malformed IP header, or ESP too short to \
                 hold an SPI",
                self.malformed
            ));
        }
        for (link, n) in &self.unsupported_link {
            note(format_args!(
                "{n} frames skipped: unsupported link type {link}"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// encrypt

fn encrypt(a: &EncryptArgs, out: &mut dyn Write) -> Result<Status, CliError> {
    let spec = SaSpec::parse(&a.sa)?;
    let params = &spec.params;
    let seq = parse_u64("--seq", &a.seq).map_err(|e| CliError::Usage(e.to_string()))?;
    // RFC 4303 §3.3.3: the first packet of an SA carries sequence number 1; 0 is never sent.
    if seq == 0 {
        return Err(CliError::Usage("--seq: must be at least 1".into()));
    }
    if seq > u64::from(u32::MAX) && !params.esn {
        return Err(CliError::Usage(format!(
            "--seq {seq}: above 2^32-1 needs esn=true in --sa (RFC 4303 §2.2)"
        )));
    }
    let iv = match &a.iv {
        Some(h) => {
            let iv = hex_arg("--iv", 0, 1, h)?;
            if iv.len() != params.alg.iv_len() {
                return Err(CliError::Usage(format!(
                    "--iv: {} needs {} bytes, got {}",
                    params.alg.name(),
                    params.alg.iv_len(),
                    iv.len()
                )));
            }
            Some(iv)
        }
        None => None,
    };
    let next_header: Option<u8> = a
        .next_header
        .as_deref()
        .map(|v| parse_small("--next-header", v))
        .transpose()?;
    let outer = outer_params(a)?;
    let payloads = match &a.pcap {
        Some(path) => ip_packets_of(path)?,
        None => a
            .hex
            .iter()
            .enumerate()
            .map(|(i, h)| Ok((Duration::ZERO, hex_arg("--hex", i, a.hex.len(), h)?)))
            .collect::<Result<_, CliError>>()?,
    };
    // Reusing an IV under one key is fatal for GCM (RFC 4106 §3.1) and bad for CBC.
    if iv.is_some() && payloads.len() > 1 {
        return Err(CliError::Usage(format!(
            "--iv: only for a single packet (got {}); without --iv each packet gets its own",
            payloads.len()
        )));
    }
    // RFC 4303 §3.3.3: the counter never cycles. Refuse up front rather than after some
    // packets were printed.
    let limit = if params.esn {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    let count = payloads.len() as u64;
    if count > 0 && !matches!(seq.checked_add(count - 1), Some(last) if last <= limit) {
        return Err(CliError::Usage(format!(
            "--seq {seq}: {count} packets would run past sequence number {limit} \
             (RFC 4303 §3.3.3: the counter must not cycle)"
        )));
    }
    // Settle every next header first, so a bad payload stops the run before any output.
    let next_headers = payloads
        .iter()
        .enumerate()
        .map(
            |(i, (_, p))| match (next_header, p.first().map(|b| b >> 4)) {
                (Some(nh), _) => Ok(nh),
                (None, Some(4)) => Ok(NEXT_HEADER_IPV4),
                (None, Some(6)) => Ok(NEXT_HEADER_IPV6),
                _ => Err(CliError::Usage(format!(
                    "packet {}: not an IPv4 or IPv6 packet, so the next header is unknown; \
                 pass --next-header N",
                    i + 1
                ))),
            },
        )
        .collect::<Result<Vec<u8>, _>>()?;

    let mut sa = spec.outbound()?;
    sa.set_next_seq(seq);
    let start = outer.as_ref().map_or(0, OuterParams::header_len) + sa.header_len();
    let mut written = Vec::new();
    let mut buf = Vec::new();
    for (i, ((ts, payload), nh)) in payloads.iter().zip(next_headers).enumerate() {
        let index = i + 1;
        let end = start + payload.len();
        buf.clear();
        buf.resize(end + sa.max_trailer_len(), 0);
        buf[start..end].copy_from_slice(payload);
        let e = sa
            .encap_slice(&mut buf, start..end, nh, iv.as_deref())
            .map_err(|source| CliError::Encap { index, source })?;
        let packet = match &outer {
            Some(o) => {
                emit_outer(&mut buf, o, e.esp.len())
                    .map_err(|source| CliError::Encap { index, source })?;
                if o.udp.is_some() && o.src.is_ipv6() {
                    // Zero is not a valid UDP checksum over IPv6 (RFC 8200 §8.1).
                    finish_udp6_checksum(&mut buf[..e.esp.end]);
                }
                &buf[..e.esp.end]
            }
            None => &buf[e.esp],
        };
        writeln!(out, "{}", hexin::encode(packet)).map_err(CliError::Stdout)?;
        if a.out.is_some() {
            written.push((*ts, packet.to_vec()));
        }
    }
    if let Some(path) = &a.out {
        write_pcap(path, &written)?;
    }
    Ok(Status::Success)
}

/// The IP packets of a capture, cut to their IP length (no Ethernet padding), with their
/// capture times.
fn ip_packets_of(path: &Path) -> Result<Vec<(Duration, Vec<u8>)>, CliError> {
    let bytes = read_file("--pcap", path)?;
    let frames = pcap_io::read_capture(&bytes).map_err(|source| CliError::Capture {
        flag: "--pcap",
        path: path.display().to_string(),
        source,
    })?;
    let mut skipped = 0usize;
    let mut v = Vec::new();
    for f in &frames {
        let ip = LinkType::from_code(f.link).and_then(|l| l.ip_packet(&f.data));
        match ip.and_then(|ip| ip.get(..pcap_io::ip_len(ip)?)) {
            Some(ip) => v.push((f.timestamp, ip.to_vec())),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        note(format_args!(
            "{skipped} frames without a whole IP packet skipped"
        ));
    }
    Ok(v)
}

/// A small number option (decimal or 0x hex) that must fit its type.
fn parse_small<T: TryFrom<u64>>(flag: &'static str, v: &str) -> Result<T, CliError> {
    let n = parse_u64(flag, v).map_err(|e| CliError::Usage(e.to_string()))?;
    T::try_from(n).map_err(|_| CliError::Usage(format!("{flag} {v}: out of range")))
}

/// The outer header, if one is wanted: `--outer`, or the default addresses when
/// `--udp-encap`, `--ip-id` or `--out` asks for an outer header without naming them.
fn outer_params(a: &EncryptArgs) -> Result<Option<OuterParams>, CliError> {
    let wanted = a.outer.is_some() || a.udp_encap || a.ip_id.is_some() || a.out.is_some();
    if !wanted {
        return Ok(None);
    }
    let text = a.outer.as_deref().unwrap_or(DEFAULT_OUTER);
    let bad = |why: &str| CliError::Usage(format!("--outer {text}: {why}"));
    let (s, d) = text
        .split_once(',')
        .ok_or_else(|| bad("expected SRC,DST"))?;
    let src: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| bad("SRC is not an IP address"))?;
    let dst: IpAddr = d
        .trim()
        .parse()
        .map_err(|_| bad("DST is not an IP address"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(bad("SRC and DST must both be IPv4 or both IPv6"));
    }
    let ip_id = match &a.ip_id {
        Some(v) => parse_small("--ip-id", v)?,
        None => DEFAULT_IP_ID,
    };
    Ok(Some(OuterParams {
        src,
        dst,
        udp: a.udp_encap.then_some((NAT_T_PORT, NAT_T_PORT)),
        ip_id,
        ttl: OUTER_TTL,
    }))
}

// ---------------------------------------------------------------------------------------
// shared

/// Decodes the `i`-th of `n` values of a hex option, naming it in errors.
fn hex_arg(flag: &str, i: usize, n: usize, h: &str) -> Result<Vec<u8>, CliError> {
    hexin::decode(h).map_err(|source| CliError::Hex {
        flag: if n > 1 {
            format!("{flag} #{}", i + 1)
        } else {
            flag.to_string()
        },
        source,
    })
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

fn write_pcap(path: &Path, packets: &[(Duration, Vec<u8>)]) -> Result<(), CliError> {
    pcap_io::write_raw_pcap(path, packets).map_err(|source| CliError::Capture {
        flag: "--out",
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c69d16455327789af9a9161ac6b3985d5123f20b";
    const ESP: &str = "c0de086c00000001d3010de559dab3a4d63a3305c9fc2d316601aec094340bd4e0d7b0643c9dd9b88c210d248714dcab133f8080060d679a9c20eafe1948a0613ddea679a18049bfe229c7453677a4322e354fd00b61647e6d99f7e2cce0d8e84616fe936e2452900636b2ea9ed53b0746e8f8b1080053d0";
    const OUTER: &str = "4500008c0001000040328e08c0000201c6336402";

    fn sad() -> Sad {
        Sad::new(&[format!("spi=0xc0de086c,alg=aes-gcm-128,key={KEY}")]).unwrap()
    }

    #[test]
    fn hex_detection() {
        let esp = hex::decode(ESP).unwrap();
        let whole = hex::decode(format!("{OUTER}{ESP}")).unwrap();
        assert_eq!(locate_hex(&esp, &sad()).unwrap(), 0..esp.len());
        assert_eq!(locate_hex(&whole, &sad()).unwrap(), 20..whole.len());
        // A consistent IPv4 packet that is not ESP is reported as such.
        let icmp = hex::decode("45000054424200003f0125630a0100010a0200010800d9fa12340001030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff060d141b222930373e454c535a61686f767d84").unwrap();
        assert_eq!(
            locate_hex(&icmp, &sad()).unwrap_err().reason(),
            DropReason::NotEsp
        );
        // A whole packet cut short is a bad outer header, not ESP with SPI 0x4500008c.
        assert_eq!(
            locate_hex(&whole[..100], &sad()).unwrap_err().reason(),
            DropReason::BadOuterHeader
        );
        // Bare ESP whose first bytes read as an IP header: a configured SPI decides.
        let mut odd = esp.clone();
        odd[..4].copy_from_slice(&[0x60, 0, 0, 1]);
        odd[4..8].copy_from_slice(&[0, 0x50, 0, 1]);
        assert!(looks_like_ip(&odd));
        let sad6 = Sad::new(&[format!("spi=0x60000001,alg=aes-gcm-128,key={KEY}")]).unwrap();
        assert_eq!(locate_hex(&odd, &sad6).unwrap(), 0..odd.len());
    }

    #[test]
    fn decrypt_then_replay() {
        let mut sad = sad();
        let mut esp = hex::decode(ESP).unwrap();
        let mut again = esp.clone();
        match sad.open(&mut esp) {
            Verdict::Decrypted { spi, d } => {
                assert_eq!(spi, 0xc0de086c);
                assert_eq!((d.seq, d.next_header, d.pad_len), (1, 4, 2));
                let line = serde_json::to_string(&verdict_line(
                    None,
                    &Verdict::Decrypted { spi, d },
                    &esp,
                ))
                .unwrap();
                assert!(line.starts_with(r#"{"spi":"0xc0de086c","seq":1,"next_header":4,"pad_length":2,"payload":"4500"#), "{line}");
            }
            _ => panic!("not decrypted"),
        }
        let v = sad.open(&mut again);
        let line = serde_json::to_string(&verdict_line(Some(3), &v, &again)).unwrap();
        assert_eq!(
            line,
            r#"{"frame":3,"spi":"0xc0de086c","error":"replay-duplicate","detail":"replayed sequence number 1"}"#
        );
        let mut short = vec![1, 2, 3];
        assert!(matches!(
            sad.open(&mut short),
            Verdict::Dropped { spi: None, .. }
        ));
        let mut other = hex::decode(ESP).unwrap();
        other[3] ^= 1;
        assert!(matches!(
            sad.open(&mut other),
            Verdict::UnknownSpi(0xc0de086d)
        ));
    }

    #[test]
    fn duplicate_spi_refused() {
        let spec = format!("spi=0xc0de086c,alg=aes-gcm-128,key={KEY}");
        assert!(matches!(
            Sad::new(&[spec.clone(), spec]),
            Err(CliError::DuplicateSpi(Spi(0xc0de086c)))
        ));
    }
}
