//! Flight recorder for invalid-SPI debugging (`[capture]`, docs/recovery.md).
//!
//! Intermittent invalid-SPI errors are hard to catch with a capture started afterwards, so the
//! daemon keeps the last N underlay packets and IKE messages in a [`Ring`] and, when an
//! invalid-SPI event fires, writes them to a classic pcap file with the Wireshark `esp_sa`
//! and `ikev2_decryption_table` lines beside it, then optionally runs a script
//! ([`Capture::on_invalid_spi`]).
//!
//! The ring preallocates every slot at startup: recording a packet is one `memcpy` into a
//! reused buffer plus a few scalar stores, so it can sit on the datapath. Outer IP/UDP
//! headers are not stored; they are rebuilt from the addresses and ports at dump time.
//!
//! ESP packets are sampled per SPI ([`CaptureConfig::per_spi_interval`]): at 300 000
//! packets a second a ring of every packet would hold the last 3 ms and cost a copy of
//! each one, while a desync plays out over seconds. IKE messages, keepalives and the first
//! packet of an SPI not seen within the interval are always kept, and the datapath records
//! an inbound packet it sampled out after all when its SPI turns out to be unknown.

use crate::clock::rfc3339_millis;
use esplab_esp::wire::{emit_outer, finish_udp6_checksum, OuterParams};
use esplab_esp::Encap;
use esplab_node::event::InvalidSpi;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default number of ring slots (`[capture] ring`).
pub const DEFAULT_RING: usize = 1000;

/// Default minimum time between two dumps (`[capture] min_interval`).
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Default `[capture] per_spi_interval`: one ESP packet per SPI every 10 ms keeps 100 a
/// second of a busy SA (a 1000-slot ring then spans seconds, not milliseconds).
pub const DEFAULT_PER_SPI_INTERVAL: Duration = Duration::from_millis(10);

/// Entries of the per-SPI sampler (direct-mapped; two SPIs sharing an entry are both kept
/// more often, never less).
const SAMPLER_SLOTS: usize = 256;

/// Room past the MTU in a slot: an ESP header, IV, trailer and ICV around a full inner packet,
/// plus a UDP header and (for IPv4 raw ESP, stored with its header) an outer IP header.
const SLOT_SLACK: usize = 128;

/// pcap `LINKTYPE_RAW`: each record starts with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;

/// Spawned `on_event` scripts still running are kept (to be reaped) up to this many; past it
/// a new event does not start another script.
const MAX_CHILDREN: usize = 16;

/// `[capture]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Ring slots; 0 disables the recorder (and the dumps and the script).
    pub ring: usize,
    /// Bytes kept of each recorded payload (like tcpdump's `-s`); 0 keeps whole packets
    /// (up to the MTU plus ESP and UDP overhead). A short snap length makes recording a
    /// short copy and lets a long ring stay small, at the price of payloads Wireshark can
    /// no longer decrypt (headers, SPIs and sequence numbers stay readable).
    pub snaplen: usize,
    /// At most one dump (and one script run) per this interval.
    pub min_interval: Duration,
    /// ESP packets of one SPI are recorded at most once per this interval (zero: every
    /// packet); see the module documentation.
    pub per_spi_interval: Duration,
    /// Where dumps go.
    pub dir: PathBuf,
    /// Script run after each dump, with the event in its environment.
    pub on_event: Option<PathBuf>,
}

impl CaptureConfig {
    /// Defaults for a node: dumps go beside the log file, else to `/tmp/esplab-capture-NAME`.
    pub fn defaults(name: &str, log_file: Option<&Path>) -> Self {
        let dir = log_file
            .and_then(|f| f.parent())
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/esplab-capture-{name}")));
        Self {
            ring: DEFAULT_RING,
            snaplen: 0,
            min_interval: DEFAULT_MIN_INTERVAL,
            per_spi_interval: DEFAULT_PER_SPI_INTERVAL,
            dir,
            on_event: None,
        }
    }
}

/// Which way a recorded packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the underlay.
    In,
    /// Sent to the underlay.
    Out,
}

/// How a recorded payload travelled, i.e. which outer headers to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP (IKE on 500, RFC 3948 ESP-in-UDP or IKE on 4500): the payload is the UDP payload.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// IP protocol 50: the payload is the ESP packet.
    Esp,
    /// The payload is already a whole IP packet (IPv4 raw-socket reads include the header).
    Ip,
}

/// One recorded packet.
#[derive(Debug, Clone)]
struct Slot {
    at: SystemTime,
    dir: Direction,
    src: IpAddr,
    dst: IpAddr,
    transport: Transport,
    /// Length before truncation.
    orig_len: usize,
    /// The stored bytes; capacity fixed at startup, never grown.
    data: Vec<u8>,
}

/// Fixed-size ring of the last packets; oldest overwritten first.
#[derive(Debug, Clone)]
pub struct Ring {
    slots: Vec<Slot>,
    /// Slot the next record goes into.
    next: usize,
    /// Slots in use.
    len: usize,
    slot_cap: usize,
    sampler: Sampler,
}

/// Which ESP packets [`Ring::offer`] keeps: per SPI, one per interval.
#[derive(Debug, Clone)]
struct Sampler {
    /// Zero: keep every packet.
    interval: Duration,
    /// Odd multiplier of the table index. SPIs come off the wire; a random key keeps a
    /// sender from aiming many SPIs at one entry (which would only make us keep more).
    key: u32,
    /// `(SPI, next packet kept from)`; SPI 0 never appears in ESP (RFC 4303 §2.1), so it
    /// marks an unused entry.
    table: Box<[(u32, Instant)]>,
    /// ESP packets left out since startup.
    skipped: u64,
}

impl Sampler {
    fn new(interval: Duration) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let key = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32
            | 1;
        Self {
            interval,
            key,
            table: vec![(0, Instant::now()); SAMPLER_SLOTS].into_boxed_slice(),
            skipped: 0,
        }
    }

    /// Whether to keep a packet of `spi` seen at `now` (and if so, start its interval).
    #[inline]
    fn admit(&mut self, spi: u32, now: Instant) -> bool {
        if self.interval.is_zero() {
            return true;
        }
        // The top 8 bits of the product: SAMPLER_SLOTS = 2^8 entries.
        let e = &mut self.table[(spi.wrapping_mul(self.key) >> 24) as usize];
        if e.0 == spi && now < e.1 {
            self.skipped += 1;
            return false;
        }
        // `now` when the sum does not fit: keep every packet rather than panic.
        *e = (spi, now.checked_add(self.interval).unwrap_or(now));
        true
    }
}

/// The SPI of a recorded payload that is an ESP packet; `None` for IKE (port 500, or the
/// RFC 3948 §2.2 non-ESP marker on 4500), NAT-keepalives and runts, which are always kept.
fn esp_spi(transport: Transport, payload: &[u8]) -> Option<u32> {
    let esp = match transport {
        Transport::Udp { sport, dport } if sport == 500 || dport == 500 => return None,
        Transport::Udp { .. } | Transport::Esp => payload,
        // IPv4 raw reads keep the IP header: skip it (RFC 791 IHL, in 32-bit words).
        Transport::Ip => {
            let ihl = usize::from(*payload.first()? & 0x0f) * 4;
            if payload.get(9) != Some(&50) {
                return None;
            }
            payload.get(ihl..)?
        }
    };
    // SPI and sequence number at least (RFC 4303 §2); an SPI of 0 is the non-ESP marker.
    let spi = u32::from_be_bytes(esp.get(..4)?.try_into().ok()?);
    (esp.len() >= 8 && spi != 0).then_some(spi)
}

/// A recorded packet, as [`Ring::iter`] returns it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Wall-clock time.
    pub at: SystemTime,
    /// Direction.
    pub dir: Direction,
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// Transport.
    pub transport: Transport,
    /// Length on the wire of the payload before truncation.
    pub orig_len: usize,
    /// The stored (possibly truncated) payload.
    pub data: &'a [u8],
}

impl Ring {
    /// `n` slots of `slot_cap` bytes each, all allocated now.
    pub fn new(n: usize, slot_cap: usize) -> Self {
        let slots = (0..n)
            .map(|_| Slot {
                at: UNIX_EPOCH,
                dir: Direction::In,
                src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                transport: Transport::Esp,
                orig_len: 0,
                data: Vec::with_capacity(slot_cap),
            })
            .collect();
        Self {
            slots,
            next: 0,
            len: 0,
            slot_cap,
            sampler: Sampler::new(Duration::ZERO),
        }
    }

    /// The same ring keeping ESP packets of one SPI at most once per `interval` in
    /// [`Ring::offer`] (zero: every packet).
    pub fn sampled(mut self, interval: Duration) -> Self {
        self.sampler.interval = interval;
        self
    }

    /// ESP packets [`Ring::offer`] left out since startup.
    pub fn sampled_out(&self) -> u64 {
        self.sampler.skipped
    }

    /// [`Ring::record`] for a packet that may be ESP: kept unless its SPI was kept less
    /// than the sampling interval before `now`. Returns whether it was recorded.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn offer(
        &mut self,
        now: Instant,
        at: SystemTime,
        dir: Direction,
        src: IpAddr,
        dst: IpAddr,
        transport: Transport,
        payload: &[u8],
    ) -> bool {
        if let Some(spi) = esp_spi(transport, payload) {
            if !self.sampler.admit(spi, now) {
                return false;
            }
        }
        self.record(at, dir, src, dst, transport, payload);
        true
    }

    /// A ring sized for a TUN MTU: whole packets, or the first `snaplen` bytes of each
    /// when `snaplen` is not 0.
    pub fn for_mtu(n: usize, mtu: usize, snaplen: usize) -> Self {
        let whole = mtu + SLOT_SLACK;
        Self::new(
            n,
            if snaplen == 0 {
                whole
            } else {
                snaplen.min(whole)
            },
        )
    }

    /// Slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved per slot.
    pub fn slot_capacity(&self) -> usize {
        self.slot_cap
    }

    /// Stores a packet, overwriting the oldest when full. Longer payloads are truncated to
    /// the slot size (their original length is kept). No allocation: the slot's buffer has
    /// its capacity from [`Ring::new`].
    pub fn record(
        &mut self,
        at: SystemTime,
        dir: Direction,
        src: IpAddr,
        dst: IpAddr,
        transport: Transport,
        payload: &[u8],
    ) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let s = &mut self.slots[self.next];
        s.at = at;
        s.dir = dir;
        s.src = src;
        s.dst = dst;
        s.transport = transport;
        s.orig_len = payload.len();
        s.data.clear();
        s.data
            .extend_from_slice(&payload[..payload.len().min(self.slot_cap)]);
        self.next = (self.next + 1) % n;
        self.len = (self.len + 1).min(n);
    }

    /// Records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        let n = self.slots.len();
        let start = if n == 0 {
            0
        } else {
            (self.next + n - self.len) % n
        };
        (0..self.len).map(move |i| {
            let s = &self.slots[(start + i) % n];
            Record {
                at: s.at,
                dir: s.dir,
                src: s.src,
                dst: s.dst,
                transport: s.transport,
                orig_len: s.orig_len,
                data: &s.data,
            }
        })
    }
}

/// Writes the classic pcap global header (microsecond timestamps, `LINKTYPE_RAW`).
pub fn write_pcap_header(w: &mut impl Write) -> io::Result<()> {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone, sigfigs: 0.
    h[16..20].copy_from_slice(&65_535u32.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
    w.write_all(&h)
}

/// Rebuilds the IP packet of a record into `out` (cleared first); returns its length on the
/// wire (which is larger than `out.len()` when the payload was truncated).
pub fn rebuild(r: &Record<'_>, out: &mut Vec<u8>) -> io::Result<usize> {
    out.clear();
    let udp = match r.transport {
        Transport::Ip => {
            out.extend_from_slice(r.data);
            return Ok(r.orig_len);
        }
        Transport::Udp { sport, dport } => Some((sport, dport)),
        Transport::Esp => None,
    };
    let params = OuterParams {
        src: r.src,
        dst: r.dst,
        udp,
        ip_id: 0,
        ttl: 64,
    };
    let hlen = params.header_len();
    out.resize(hlen, 0);
    emit_outer(out, &params, r.orig_len)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    out.extend_from_slice(r.data);
    // RFC 8200 §8.1: UDP over IPv6 needs a checksum; only computable on the whole payload.
    if udp.is_some() && r.src.is_ipv6() && r.data.len() == r.orig_len {
        finish_udp6_checksum(out);
    }
    Ok(hlen + r.orig_len)
}

/// Writes every record of `ring` as a pcap file to `w`; returns the number of packets.
pub fn write_pcap(ring: &Ring, w: &mut impl Write) -> io::Result<usize> {
    write_pcap_merged(ring, None, w)
}

/// [`write_pcap`] of two rings (the datapath's and the sending thread's), their records
/// merged in time order.
pub fn write_pcap_merged(a: &Ring, b: Option<&Ring>, w: &mut impl Write) -> io::Result<usize> {
    write_pcap_header(w)?;
    let cap = a.slot_capacity().max(b.map_or(0, Ring::slot_capacity));
    let mut buf = Vec::with_capacity(cap + 64);
    let mut n = 0;
    let mut xs = a.iter().peekable();
    let mut ys = b.into_iter().flat_map(Ring::iter).peekable();
    let merged = std::iter::from_fn(|| match (xs.peek(), ys.peek()) {
        (Some(x), Some(y)) if y.at < x.at => ys.next(),
        (Some(_), _) => xs.next(),
        (None, _) => ys.next(),
    });
    for r in merged {
        let wire = rebuild(&r, &mut buf)?;
        let d = r.at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(d.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&d.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(wire as u32).to_le_bytes());
        w.write_all(&h)?;
        w.write_all(&buf)?;
        n += 1;
    }
    Ok(n)
}

/// At most one action per interval.
#[derive(Debug, Clone)]
pub struct RateLimit {
    min: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    /// One per `min` (zero: no limit).
    pub fn new(min: Duration) -> Self {
        Self { min, last: None }
    }

    /// Whether an action may run now (and if so, counts it).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < self.min => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// `2026-11-27T16:40:01.123Z` → `20261127T164001.123Z`: sorts, no `:` for file systems that
/// refuse it.
fn file_stamp(t: SystemTime) -> String {
    rfc3339_millis(t)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// The environment an `on_event` script gets for an invalid-SPI event.
pub fn event_env(node: &str, e: &InvalidSpi, pcap: &Path) -> Vec<(&'static str, String)> {
    let encap = match e.encap {
        Encap::Raw => "esp".to_string(),
        Encap::Udp { sport, dport } => format!("udp/{sport}/{dport}"),
    };
    let family = if e.src.is_ipv4() { "ipv4" } else { "ipv6" };
    vec![
        ("ESPLAB_EVENT", "invalid-spi".into()),
        ("ESPLAB_SPI", format!("0x{:08x}", e.spi)),
        ("ESPLAB_SRC", e.src.to_string()),
        ("ESPLAB_DST", e.dst.to_string()),
        ("ESPLAB_SEQ", e.seq.to_string()),
        ("ESPLAB_FAMILY", family.into()),
        ("ESPLAB_ENCAP", encap),
        ("ESPLAB_NODE", node.into()),
        ("ESPLAB_PCAP", pcap.display().to_string()),
    ]
}

/// What a dump did, for the log.
#[derive(Debug)]
pub struct DumpReport {
    /// Packets written.
    pub packets: usize,
    /// The pcap file.
    pub pcap: PathBuf,
    /// ESP packets left out by per-SPI sampling since startup (both rings).
    pub sampled_out: u64,
    /// The sampling interval (zero: every packet kept).
    pub per_spi_interval: Duration,
    /// The UAT file (`esp_sa` lines).
    pub uat: PathBuf,
    /// The `ikev2_decryption_table` UAT file.
    pub ike_uat: PathBuf,
    /// Why the `on_event` command did not start, if it did not.
    pub script_error: Option<String>,
}

/// The flight recorder with its dump policy; owned by the datapath.
#[derive(Debug)]
pub struct Capture {
    cfg: CaptureConfig,
    node: String,
    ring: Ring,
    limit: RateLimit,
    /// `esp_sa` lines for manual SAs (from the config), fixed at startup.
    manual_uat: Vec<String>,
    /// `esp_sa` lines from negotiated CHILD SAs, newest last, bounded.
    ike_uat: Vec<String>,
    /// `ikev2_decryption_table` lines of the IKE SAs, newest last, bounded.
    ikev2_uat: Vec<String>,
    /// Whether key material may be written (`log.debug_keys`).
    debug_keys: bool,
    children: Vec<Child>,
    /// The sending thread's ring, when the TUN → ESP direction has a thread of its own.
    tx_ring: Option<Arc<Mutex<Ring>>>,
}

/// Negotiated-SA UAT lines kept (two per CHILD SA; old pairs fall off).
const MAX_IKE_UAT: usize = 256;

/// IKE SA UAT lines kept (one per IKE SA; old ones fall off).
const MAX_IKEV2_UAT: usize = 64;

impl Capture {
    /// A recorder, or `None` when `ring = 0`.
    pub fn new(
        cfg: CaptureConfig,
        node: &str,
        mtu: usize,
        manual_uat: Vec<String>,
        debug_keys: bool,
    ) -> Option<Self> {
        if cfg.ring == 0 {
            return None;
        }
        Some(Self {
            ring: Ring::for_mtu(cfg.ring, mtu, cfg.snaplen).sampled(cfg.per_spi_interval),
            limit: RateLimit::new(cfg.min_interval),
            node: node.to_string(),
            cfg,
            manual_uat,
            ike_uat: Vec::new(),
            ikev2_uat: Vec::new(),
            debug_keys,
            children: Vec::new(),
            tx_ring: None,
        })
    }

    /// A second ring the size of this one, for the sending thread; dumps then include
    /// what it records ([`Capture::dump`] merges both in time order).
    pub fn make_tx_ring(&self) -> Ring {
        Ring::new(self.ring.capacity(), self.ring.slot_capacity())
            .sampled(self.cfg.per_spi_interval)
    }

    /// The sending thread's ring, shared (see [`Capture::make_tx_ring`]).
    pub fn set_tx_ring(&mut self, r: Arc<Mutex<Ring>>) {
        self.tx_ring = Some(r);
    }

    /// The ring, to offer packets that may be ESP ([`Ring::offer`], sampled per SPI).
    pub fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// Records one packet, never sampled (see [`Ring::record`]).
    pub fn record(
        &mut self,
        at: SystemTime,
        dir: Direction,
        src: IpAddr,
        dst: IpAddr,
        transport: Transport,
        payload: &[u8],
    ) {
        self.ring.record(at, dir, src, dst, transport, payload);
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Remembers the `esp_sa` lines of a negotiated CHILD SA (empty without debug keys).
    pub fn add_uat(&mut self, lines: &[String]) {
        self.ike_uat.extend(lines.iter().cloned());
        if self.ike_uat.len() > MAX_IKE_UAT {
            let extra = self.ike_uat.len() - MAX_IKE_UAT;
            self.ike_uat.drain(..extra);
        }
    }

    /// Remembers the `ikev2_decryption_table` line of an IKE SA (first or rekeyed).
    pub fn add_ike_sa_uat(&mut self, line: &str) {
        if self.ikev2_uat.iter().any(|l| l == line) {
            return;
        }
        self.ikev2_uat.push(line.to_string());
        if self.ikev2_uat.len() > MAX_IKEV2_UAT {
            let extra = self.ikev2_uat.len() - MAX_IKEV2_UAT;
            self.ikev2_uat.drain(..extra);
        }
    }

    /// The `.ikev2_decryption_table` file's text (same key policy as [`Capture::uat_text`]).
    pub fn ikev2_uat_text(&self) -> String {
        let mut s = String::from(
            "# Wireshark ikev2_decryption_table UAT (Preferences > Protocols > ISAKMP > IKEv2\n# Decryption Table, or copy to the profile's ikev2_decryption_table file); tshark:\n# -o 'uat:ikev2_decryption_table:LINE'\n",
        );
        if !self.debug_keys {
            s.push_str(
                "# key material not written: debug keys are off (set log.debug_keys = true or run esplab peer --debug-keys)\n",
            );
            return s;
        }
        for l in &self.ikev2_uat {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// The `.uat` file's text.
    pub fn uat_text(&self) -> String {
        let mut s = String::from(
            "# Wireshark esp_sa UAT (Preferences > Protocols > ESP > ESP SAs, or copy to the\n# profile's esp_sa file); tshark: -o 'uat:esp_sa:LINE'\n",
        );
        if !self.debug_keys {
            s.push_str(
                "# key material not written: debug keys are off (set log.debug_keys = true or run esplab peer --debug-keys)\n",
            );
            return s;
        }
        for l in self.manual_uat.iter().chain(&self.ike_uat) {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Handles an invalid-SPI event: when the rate limit allows, dumps the ring and starts
    /// the `on_event` script. `Ok(None)` when rate-limited.
    pub fn on_invalid_spi(
        &mut self,
        now: Instant,
        wall: SystemTime,
        e: &InvalidSpi,
    ) -> io::Result<Option<DumpReport>> {
        self.reap();
        if !self.limit.allow(now) {
            return Ok(None);
        }
        let mut report = self.dump(wall, e.spi)?;
        if let Some(script) = &self.cfg.on_event {
            if self.children.len() >= MAX_CHILDREN {
                report.script_error = Some(format!(
                    "on_event {}: not started, {MAX_CHILDREN} earlier runs still going",
                    script.display()
                ));
            } else {
                match Command::new(script)
                    .envs(event_env(&self.node, e, &report.pcap))
                    .stdin(Stdio::null())
                    .spawn()
                {
                    Ok(child) => self.children.push(child),
                    Err(err) => {
                        report.script_error = Some(format!("on_event {}: {err}", script.display()))
                    }
                }
            }
        }
        Ok(Some(report))
    }

    /// Writes `<dir>/invalid-spi-<stamp>-spi-<hex>.pcap` and beside it the `.uat`
    /// (`esp_sa`) and `.ikev2_decryption_table` files.
    pub fn dump(&self, wall: SystemTime, spi: u32) -> io::Result<DumpReport> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        let stem = format!("invalid-spi-{}-spi-{spi:08x}", file_stamp(wall));
        let pcap = self.cfg.dir.join(format!("{stem}.pcap"));
        let uat = self.cfg.dir.join(format!("{stem}.uat"));
        let ike_uat = self.cfg.dir.join(format!("{stem}.ikev2_decryption_table"));
        let mut w = io::BufWriter::new(std::fs::File::create(&pcap)?);
        // The sending thread's ring is copied under its lock (one memory copy, once per
        // dump at most), so that thread never waits for the file to be written.
        let tx = self
            .tx_ring
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let packets = write_pcap_merged(&self.ring, tx.as_ref(), &mut w)?;
        let sampled_out = self.ring.sampled_out() + tx.as_ref().map_or(0, Ring::sampled_out);
        w.flush()?;
        // Key material: owner-only.
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(&uat)?.write_all(self.uat_text().as_bytes())?;
        o.open(&ike_uat)?
            .write_all(self.ikev2_uat_text().as_bytes())?;
        Ok(DumpReport {
            packets,
            sampled_out,
            per_spi_interval: self.cfg.per_spi_interval,
            pcap,
            uat,
            ike_uat,
            script_error: None,
        })
    }

    /// Collects finished scripts so none stays a zombie.
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esplab_esp::wire::{parse_underlay, Underlay};
    use esplab_esp::Family;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn t(i: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + i)
    }

    #[test]
    fn ring_wraps_keeps_order_and_never_grows() {
        let mut r = Ring::new(4, 16);
        let ptrs: Vec<*const u8> = r.slots.iter().map(|s| s.data.as_ptr()).collect();
        assert!(r.is_empty());
        for i in 0..10u8 {
            r.record(
                t(i as u64),
                Direction::In,
                a("198.18.0.1"),
                a("198.18.0.2"),
                Transport::Esp,
                &[i; 8],
            );
        }
        assert_eq!(r.len(), 4);
        let got: Vec<u8> = r.iter().map(|x| x.data[0]).collect();
        assert_eq!(got, vec![6, 7, 8, 9]);
        // Same buffers, same capacity: nothing was reallocated.
        for (s, p) in r.slots.iter().zip(ptrs) {
            assert_eq!(s.data.as_ptr(), p);
            assert_eq!(s.data.capacity(), 16);
        }
    }

    #[test]
    fn ring_truncates_and_keeps_length() {
        let mut r = Ring::new(2, 16);
        r.record(
            t(0),
            Direction::Out,
            a("198.18.0.1"),
            a("198.18.0.2"),
            Transport::Esp,
            &[7; 100],
        );
        let x = r.iter().next().unwrap();
        assert_eq!((x.data.len(), x.orig_len), (16, 100));
        assert_eq!(r.slots[0].data.capacity(), 16);
        // Zero slots: recording is a no-op.
        let mut z = Ring::new(0, 16);
        z.record(
            t(0),
            Direction::In,
            a("198.18.0.1"),
            a("198.18.0.2"),
            Transport::Esp,
            &[1],
        );
        assert!(z.is_empty());
    }

    #[test]
    fn snaplen_sizes_the_slots() {
        let cfg = |snaplen| CaptureConfig {
            snaplen,
            ..CaptureConfig::defaults("a", None)
        };
        let whole = Capture::new(cfg(0), "a", 1400, Vec::new(), false).unwrap();
        assert_eq!(whole.ring().slot_capacity(), 1400 + SLOT_SLACK);
        let mut short = Capture::new(cfg(64), "a", 1400, Vec::new(), false).unwrap();
        assert_eq!(short.ring().slot_capacity(), 64);
        // Longer than a whole packet: whole packets.
        let long = Capture::new(cfg(9000), "a", 1400, Vec::new(), false).unwrap();
        assert_eq!(long.ring().slot_capacity(), 1400 + SLOT_SLACK);
        short.record(
            t(0),
            Direction::In,
            a("198.18.0.2"),
            a("198.18.0.1"),
            Transport::Udp {
                sport: 4500,
                dport: 4500,
            },
            &esp(0xc0de0001, 9, 1000),
        );
        // The pcap record keeps the SPI and sequence number and says how long the packet was.
        let mut pcap = Vec::new();
        assert_eq!(write_pcap(short.ring(), &mut pcap).unwrap(), 1);
        let rec = &pcap[24..];
        let incl = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(rec[12..16].try_into().unwrap()) as usize;
        assert_eq!((incl, orig), (20 + 8 + 64, 20 + 8 + 1000));
        let payload = &rec[16 + 28..16 + incl];
        assert_eq!(&payload[..8], &esp(0xc0de0001, 9, 8)[..]);
    }

    fn esp(spi: u32, seq: u32, len: usize) -> Vec<u8> {
        let mut v = vec![0xabu8; len];
        v[0..4].copy_from_slice(&spi.to_be_bytes());
        v[4..8].copy_from_slice(&seq.to_be_bytes());
        v
    }

    /// SPIs and sequence numbers of the ring's records, oldest first.
    fn recorded(r: &Ring) -> Vec<(u32, u32)> {
        r.iter()
            .filter_map(|x| {
                let b = match x.transport {
                    Transport::Ip => &x.data[20..],
                    _ => x.data,
                };
                Some((
                    u32::from_be_bytes(b.get(..4)?.try_into().ok()?),
                    u32::from_be_bytes(b.get(4..8)?.try_into().ok()?),
                ))
            })
            .collect()
    }

    #[test]
    fn esp_is_sampled_per_spi_and_everything_else_kept() {
        let udp = Transport::Udp {
            sport: 4500,
            dport: 4500,
        };
        let mut r = Ring::new(64, 200).sampled(Duration::from_millis(10));
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let offer = |r: &mut Ring, at: Instant, tr: Transport, p: &[u8]| {
            r.offer(
                at,
                t(0),
                Direction::In,
                a("198.18.0.1"),
                a("198.18.0.2"),
                tr,
                p,
            )
        };
        // Two SPIs interleaved: the first packet of each, then one per 10 ms each.
        let mut kept = vec![];
        for m in 0..25u32 {
            for spi in [0x1000_0001, 0x2000_0002] {
                if offer(&mut r, ms(m.into()), udp, &esp(spi, m, 40)) {
                    kept.push((spi, m));
                }
            }
        }
        let want: Vec<(u32, u32)> = [0, 10, 20]
            .iter()
            .flat_map(|&m| [(0x1000_0001, m), (0x2000_0002, m)])
            .collect();
        assert_eq!(kept, want);
        assert_eq!(recorded(&r), want);
        assert_eq!(r.sampled_out(), 50 - 6);
        // Always kept, however often: IKE behind the non-ESP marker on 4500, IKE on 500
        // (its first bytes are an IKE SPI, not an ESP one), keepalives, runts.
        let ike_4500 = [vec![0u8; 4], vec![0x11; 36]].concat();
        let ike_500 = vec![0x22u8; 40];
        let on_500 = Transport::Udp {
            sport: 500,
            dport: 500,
        };
        for _ in 0..3 {
            assert!(offer(&mut r, ms(21), udp, &ike_4500));
            assert!(offer(&mut r, ms(21), on_500, &ike_500));
            assert!(offer(&mut r, ms(21), udp, &[0xff]));
            assert!(offer(&mut r, ms(21), udp, &[0x33; 7]));
        }
        // Raw ESP, with (IPv4) and without (IPv6) the IP header: sampled by SPI too; a
        // non-ESP IPv4 packet is kept.
        let mut v4 = vec![0x45u8; 20];
        v4[9] = 50;
        v4.extend(esp(0x3000_0003, 1, 40));
        assert!(offer(&mut r, ms(21), Transport::Ip, &v4));
        assert!(!offer(&mut r, ms(22), Transport::Ip, &v4));
        assert!(offer(
            &mut r,
            ms(21),
            Transport::Esp,
            &esp(0x4000_0004, 1, 40)
        ));
        assert!(!offer(
            &mut r,
            ms(22),
            Transport::Esp,
            &esp(0x4000_0004, 2, 40)
        ));
        v4[9] = 17;
        assert!(offer(&mut r, ms(22), Transport::Ip, &v4));
        assert!(offer(&mut r, ms(22), Transport::Ip, &v4));
        // `record` is never sampled (IKE sent, and inbound packets recorded late).
        r.record(
            t(1),
            Direction::In,
            a("198.18.0.1"),
            a("198.18.0.2"),
            udp,
            &esp(0x1000_0001, 99, 40),
        );
        assert_eq!(recorded(&r).last(), Some(&(0x1000_0001, 99)));
    }

    #[test]
    fn zero_interval_keeps_every_packet() {
        let udp = Transport::Udp {
            sport: 4500,
            dport: 4500,
        };
        let mut r = Ring::new(8, 100);
        let now = Instant::now();
        for seq in 0..20 {
            let p = esp(0x1000_0001, seq, 40);
            assert!(r.offer(
                now,
                t(0),
                Direction::Out,
                a("198.18.0.1"),
                a("198.18.0.2"),
                udp,
                &p
            ));
        }
        assert_eq!(r.len(), 8);
        assert_eq!(r.sampled_out(), 0);
    }

    #[test]
    fn sampler_entries_are_shared_without_losing_spis() {
        // More SPIs than entries: each is still kept at least once per interval.
        let mut s = Sampler::new(Duration::from_millis(10));
        let now = Instant::now();
        let spis: Vec<u32> = (1..=2000u32)
            .map(|i| i.wrapping_mul(0x9e37_79b9) | 1)
            .collect();
        for round in 0..3u64 {
            let at = now + Duration::from_millis(20 * round);
            for &spi in &spis {
                // The first packet of a round (20 ms after the last one kept) always passes.
                assert!(s.admit(spi, at), "spi {spi:#x} round {round}");
            }
        }
        // A huge interval does not overflow `Instant`.
        let mut s = Sampler::new(Duration::MAX);
        assert!(s.admit(7, now));
        assert!(s.admit(7, now));
    }

    #[test]
    fn pcap_parses_and_headers_rebuild() {
        let mut r = Ring::new(8, 1500);
        r.record(
            t(1),
            Direction::In,
            a("198.18.0.2"),
            a("198.18.0.1"),
            Transport::Udp {
                sport: 4500,
                dport: 4500,
            },
            &esp(0xc0de0001, 1, 64),
        );
        r.record(
            t(2),
            Direction::Out,
            a("2001:db8::1"),
            a("2001:db8::2"),
            Transport::Udp {
                sport: 4500,
                dport: 4500,
            },
            &esp(0xc0de0002, 2, 64),
        );
        r.record(
            t(3),
            Direction::Out,
            a("2001:db8::1"),
            a("2001:db8::2"),
            Transport::Esp,
            &esp(0xc0de0003, 3, 64),
        );
        r.record(
            t(4),
            Direction::In,
            a("198.18.0.2"),
            a("198.18.0.1"),
            Transport::Esp,
            &esp(0xc0de0004, 4, 64),
        );
        let mut out = Vec::new();
        assert_eq!(write_pcap(&r, &mut out).unwrap(), 4);
        assert_eq!(&out[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&out[20..24], &101u32.to_le_bytes());

        let mut reader = pcap_file::pcap::PcapReader::new(&out[..]).unwrap();
        assert_eq!(
            reader.header().datalink,
            pcap_file::DataLink::RAW,
            "LINKTYPE_RAW"
        );
        let mut spis = Vec::new();
        let mut i = 1;
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            assert_eq!(p.timestamp, Duration::from_millis(1_700_000_000_000 + i));
            let data = p.data.into_owned();
            let u = parse_underlay(&data).unwrap();
            let (Underlay::Esp(o) | Underlay::Ike(o) | Underlay::Keepalive(o)) = &u;
            assert!(matches!(u, Underlay::Esp(_)), "{u:?}");
            let body = &data[o.payload.clone()];
            spis.push(u32::from_be_bytes(body[0..4].try_into().unwrap()));
            i += 1;
        }
        assert_eq!(spis, vec![0xc0de0001, 0xc0de0002, 0xc0de0003, 0xc0de0004]);
    }

    #[test]
    fn ipv6_udp_checksum_is_valid() {
        let rec = Record {
            at: t(0),
            dir: Direction::Out,
            src: a("2001:db8::1"),
            dst: a("2001:db8::2"),
            transport: Transport::Udp {
                sport: 4500,
                dport: 4500,
            },
            orig_len: 40,
            data: &esp(0x1000, 1, 40),
        };
        let mut out = Vec::new();
        assert_eq!(rebuild(&rec, &mut out).unwrap(), 40 + 8 + 40);
        assert_ne!(&out[46..48], &[0, 0], "UDP/IPv6 checksum set");
        // Truncated: the IP header keeps the original length.
        let mut r = Ring::new(1, 16);
        r.record(
            t(0),
            Direction::In,
            a("198.18.0.2"),
            a("198.18.0.1"),
            Transport::Esp,
            &esp(0x1000, 1, 100),
        );
        let rec = r.iter().next().unwrap();
        assert_eq!(rebuild(&rec, &mut out).unwrap(), 120);
        assert_eq!(out.len(), 36);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 120);
    }

    #[test]
    fn rate_limit() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(Duration::from_secs(60));
        assert!(l.allow(t0));
        assert!(!l.allow(t0 + Duration::from_secs(59)));
        assert!(l.allow(t0 + Duration::from_secs(60)));
        let mut l = RateLimit::new(Duration::ZERO);
        assert!(l.allow(t0) && l.allow(t0));
    }

    fn event(spi: u32) -> InvalidSpi {
        InvalidSpi {
            at: Instant::now(),
            spi,
            src: a("198.18.0.2"),
            dst: a("198.18.0.1"),
            seq: 7,
            family: Family::V4,
            encap: Encap::Udp {
                sport: 4500,
                dport: 4500,
            },
            flow_label: 0,
            len: 64,
            logged: true,
        }
    }

    #[test]
    fn dump_is_rate_limited_and_runs_the_script() {
        let dir = std::env::temp_dir().join(format!("esplab-capture-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("hook.sh");
        let envfile = dir.join("env.txt");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv | grep ^ESPLAB_ > {}.tmp && mv {0}.tmp {0}\n",
                envfile.display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cfg = CaptureConfig {
            ring: 4,
            snaplen: 0,
            min_interval: Duration::from_secs(60),
            per_spi_interval: DEFAULT_PER_SPI_INTERVAL,
            dir: dir.clone(),
            on_event: Some(script),
        };
        let mut c = Capture::new(cfg, "a", 1400, vec!["\"IPv4\",\"x\"".into()], false).unwrap();
        c.record(
            t(0),
            Direction::In,
            a("198.18.0.2"),
            a("198.18.0.1"),
            Transport::Esp,
            &esp(0xdead0001, 7, 64),
        );
        let now = Instant::now();
        let rep = c
            .on_invalid_spi(now, t(5), &event(0xdead0001))
            .unwrap()
            .unwrap();
        assert_eq!(rep.packets, 1);
        assert!(rep.script_error.is_none(), "{:?}", rep.script_error);
        let name = rep.pcap.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with("invalid-spi-20231114T") && name.ends_with("-spi-dead0001.pcap"),
            "{name}"
        );
        let uat = std::fs::read_to_string(&rep.uat).unwrap();
        assert!(
            uat.contains("debug keys are off") && !uat.contains("\"IPv4\""),
            "{uat}"
        );
        c.add_ike_sa_uat("0102030405060708,1112131415161718,aa,bb,\"x\",,,\"y\"");
        let ike = std::fs::read_to_string(&rep.ike_uat).unwrap();
        assert!(
            rep.ike_uat
                .to_str()
                .unwrap()
                .ends_with("-spi-dead0001.ikev2_decryption_table")
                && ike.contains("debug keys are off")
                && !ike.contains("0102030405060708"),
            "{ike}"
        );
        assert!(c
            .on_invalid_spi(now + Duration::from_secs(1), t(6), &event(1))
            .unwrap()
            .is_none());
        // The script ran with the event's fields.
        let mut env = String::new();
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(&envfile) {
                env = s;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(env.contains("ESPLAB_EVENT=invalid-spi"), "{env}");
        assert!(env.contains("ESPLAB_SPI=0xdead0001"), "{env}");
        assert!(env.contains("ESPLAB_SEQ=7"), "{env}");
        assert!(env.contains("ESPLAB_ENCAP=udp/4500/4500"), "{env}");
        assert!(
            env.contains(&format!("ESPLAB_PCAP={}", rep.pcap.display())),
            "{env}"
        );
        for _ in 0..100 {
            c.reap();
            if c.children.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(c.children.is_empty(), "script reaped");
        // With debug keys the lines are written.
        c.debug_keys = true;
        assert!(c.uat_text().contains("\"IPv4\",\"x\""));
        assert!(c.ikev2_uat_text().contains("0102030405060708"));
        // Rekeyed IKE SAs add lines; a repeated line is kept once; the oldest fall off.
        c.add_ike_sa_uat("0102030405060708,1112131415161718,aa,bb,\"x\",,,\"y\"");
        c.add_ike_sa_uat("0102030405060708,1112131415161718,aa,bb,\"x\",,,\"y\"");
        let text = c.ikev2_uat_text();
        assert_eq!(text.matches("0102030405060708,").count(), 1, "{text}");
        for i in 0..MAX_IKEV2_UAT as u64 {
            c.add_ike_sa_uat(&format!("{i:016x},01,aa,bb,\"x\",,,\"y\""));
        }
        let text = c.ikev2_uat_text();
        assert!(!text.contains("0102030405060708,") && text.contains("0000000000000000,"));
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            MAX_IKEV2_UAT
        );
        let rep = c.dump(t(7), 0xdead0002).unwrap();
        let ike = std::fs::read_to_string(&rep.ike_uat).unwrap();
        assert!(ike.contains("0000000000000001,01,aa"), "{ike}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&rep.ike_uat)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disabled_and_default_dir() {
        let mut cfg = CaptureConfig::defaults("a", Some(Path::new("/var/log/esplab/a.log")));
        assert_eq!(cfg.dir, PathBuf::from("/var/log/esplab"));
        assert_eq!(
            CaptureConfig::defaults("a", None).dir,
            PathBuf::from("/tmp/esplab-capture-a")
        );
        cfg.ring = 0;
        assert!(Capture::new(cfg, "a", 1400, Vec::new(), false).is_none());
    }
}
