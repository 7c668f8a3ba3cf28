//! The peer daemon's TOML configuration.
//!
//! Errors name the file, the line and the key (`a.toml:14: peer[0].sa[1].key: ...`), because
//! a network engineer editing a config at 2 a.m. wants to be told where, not just what.
//! Secrets can live in separate files (`key_file`, `integ_key_file`), with a warning when such
//! a file is readable by group or others.

use esplab_esp::{Algorithm, Backend, SaParams};
use esplab_node::{
    DpdAction, LogLimits, NodeConfig, OnInvalidSpi, PeerConfig, PeerRecovery, RecoveryConfig,
    UnderlayEncap,
};
use esplab_sad::TrafficSelector;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A configuration error with its location.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ConfigError {
    /// The config file (or secret file) at fault.
    pub file: String,
    /// 1-based line (0 when the whole file is at fault).
    pub line: usize,
    /// What is wrong, starting with the key.
    pub msg: String,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    /// Drop root to this user after opening the TUN device and sockets (privs.rs).
    user: Option<Spanned<String>>,
    underlay: RawUnderlay,
    tun: RawTun,
    control: Option<RawControl>,
    log: Option<RawLog>,
    ike: Option<RawIke>,
    recovery: Option<RawRecovery>,
    capture: Option<RawCapture>,
    datapath: Option<RawDatapath>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

/// How the datapath runs (`[datapath]`, docs/PERFORMANCE.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    tx_thread: Option<bool>,
}

/// The invalid-SPI flight recorder (`[capture]`, docs/recovery.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    ring: Option<Spanned<i64>>,
    snaplen: Option<Spanned<i64>>,
    min_interval: Option<Spanned<String>>,
    per_spi_interval: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    on_event: Option<Spanned<String>>,
}

/// Node-wide invalid-SPI recovery limits (`[recovery]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    hold_down: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    global_per_minute: Option<Spanned<u32>>,
    max_tracked: Option<Spanned<usize>>,
    unprotected_hint: Option<bool>,
}

/// Node-wide IKE settings (`[ike]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIke {
    retransmit_tries: Option<u32>,
    retransmit_timeout: Option<Spanned<String>>,
    retransmit_base: Option<Spanned<f64>>,
    half_open_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnderlay {
    local: Spanned<String>,
    encap: Option<Spanned<String>>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTun {
    name: Option<String>,
    address: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    routes: Option<bool>,
    tx_queue_len: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    file: Option<String>,
    events_file: Option<String>,
    invalid_spi_flow_interval: Option<Spanned<String>>,
    invalid_spi_global_max: Option<u32>,
    invalid_spi_global_window: Option<Spanned<String>>,
    max_tracked_flows: Option<usize>,
    event_queue: Option<usize>,
    retired_spi_grace: Option<Spanned<String>>,
    debug_keys: Option<bool>,
    events_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    address: Option<Spanned<String>>,
    encap: Option<Spanned<String>>,
    #[serde(default)]
    local_ts: Vec<Spanned<String>>,
    #[serde(default)]
    remote_ts: Vec<Spanned<String>>,
    #[serde(default)]
    sa: Vec<RawSa>,
    // IKEv2 (a peer negotiates its SAs when `auth` is set).
    auth: Option<Spanned<String>>,
    local_id: Option<Spanned<String>>,
    remote_id: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    ike_proposals: Option<Vec<Spanned<String>>>,
    esp_proposals: Option<Vec<Spanned<String>>>,
    start: Option<bool>,
    dynamic: Option<Spanned<bool>>,
    ike_lifetime: Option<Spanned<String>>,
    child_lifetime: Option<Spanned<String>>,
    rekey_margin: Option<Spanned<String>>,
    dpd_delay: Option<Spanned<String>>,
    initial_contact: Option<bool>,
    // Per-peer retransmission schedule (overrides `[ike]`).
    retransmit_tries: Option<Spanned<u32>>,
    retransmit_timeout: Option<Spanned<String>>,
    retransmit_base: Option<Spanned<f64>>,
    // Invalid-SPI recovery (docs/recovery.md).
    on_invalid_spi: Option<Spanned<String>>,
    invalid_spi_recovery: Option<Spanned<bool>>,
    dpd_action: Option<Spanned<String>>,
    on_peer_delete: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    direction: Spanned<String>,
    spi: Spanned<SpiValue>,
    alg: Spanned<String>,
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    integ_key: Option<Spanned<String>>,
    integ_key_file: Option<Spanned<String>>,
    esn: Option<bool>,
    replay_window: Option<Spanned<u32>>,
    backend: Option<Spanned<String>>,
}

/// SPI written as `0xc0de0001` (string) or a plain integer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SpiValue {
    Int(i64),
    Str(String),
}

/// Direction of a manually keyed SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaDirection {
    /// We receive on it (its SPI is looked up in our SAD).
    In,
    /// We send on it.
    Out,
}

/// A manually keyed SA (like `ip xfrm state add`).
#[derive(Debug, Clone)]
pub struct ManualSa {
    /// Index of the peer in [`Config::node`]`.peers`.
    pub peer: usize,
    /// Direction.
    pub direction: SaDirection,
    /// Keys and options.
    pub params: SaParams,
}

/// The TUN device settings.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// Address and prefix length given to the interface, if any.
    pub address: Option<(IpAddr, u8)>,
    /// MTU.
    pub mtu: u32,
    /// Whether the daemon routes every peer's `remote_ts` through the device (default true;
    /// false leaves routing to the operator).
    pub routes: bool,
    /// Packets the kernel queues for the daemon to read (the device's `txqueuelen`).
    pub tx_queue_len: u32,
}

/// Default [`TunConfig::tx_queue_len`]. The kernel's 500 for a TUN device overflows when the
/// daemon is off the CPU for 5 ms at 1 Gbit/s of 1400-byte packets; on the 2-vCPU bench
/// machine that cost 40-60 % of the loss-free UDP rate (docs/PERFORMANCE.md). 2000 packets
/// cover 22 ms of such a stream; TCP senders do not fill it (TCP small queues).
pub const DEFAULT_TUN_TX_QUEUE_LEN: u32 = 2000;

/// Everything `esplab peer` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The node's settings (sans-IO part).
    pub node: NodeConfig,
    /// Manually keyed SAs.
    pub sas: Vec<ManualSa>,
    /// TUN device.
    pub tun: TunConfig,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Log file (in addition to stderr).
    pub log_file: Option<PathBuf>,
    /// JSON-lines event file.
    pub events_file: Option<PathBuf>,
    /// Warnings found while loading (e.g. secret files readable by others).
    pub warnings: Vec<String>,
    /// The IKE endpoint when some peer has `auth = "psk"` (its peers are also in
    /// `node.peers`, by name, for routes and the datapath).
    pub ike: Option<esplab_ike::EndpointConfig>,
    /// Log key material (`log.debug_keys`, `esplab peer --debug-keys`) as Wireshark UAT lines.
    pub debug_keys: bool,
    /// Invalid-SPI recovery and liveness policy (`[recovery]` and per-peer keys).
    pub recovery: RecoveryConfig,
    /// The invalid-SPI flight recorder (`[capture]`).
    pub capture: crate::capture::CaptureConfig,
    /// Run as this user once the TUN device and sockets are open (`user`, `esplab peer
    /// --user`).
    pub user: Option<String>,
    /// Rate limit of the events file and followers (`log.events_per_second`, 0 = none).
    pub events_per_second: u32,
    /// `datapath.tx_thread`: the TUN → ESP direction on a thread of its own.
    pub tx_thread: bool,
}

/// strongSwan-style identity: an IP address is an IP identity, `user@host` an RFC 822
/// address, anything else an FQDN.
pub fn parse_identity(s: &str) -> Result<esplab_ike::Identity, String> {
    use esplab_ike::Identity;
    let s = s.trim();
    if s.is_empty() {
        return Err("empty identity".into());
    }
    Ok(match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Identity::Ipv4(a),
        Ok(IpAddr::V6(a)) => Identity::Ipv6(a),
        Err(_) if s.contains('@') => Identity::Rfc822(s.as_bytes().to_vec()),
        Err(_) => Identity::fqdn(s),
    })
}

/// A PSK as strongSwan writes it: `0x` + hex, else the string's bytes.
fn parse_psk(s: &str) -> Result<Vec<u8>, String> {
    let v = match s.strip_prefix("0x") {
        Some(h) => decode_hex(h)?,
        None => s.as_bytes().to_vec(),
    };
    if v.is_empty() {
        return Err("empty secret".into());
    }
    Ok(v)
}

/// Reads a PSK file (relative to the config's directory), warning when group or others can
/// read it.
fn read_psk_file(base: &Path, name: &str, warnings: &mut Vec<String>) -> Result<Vec<u8>, String> {
    let p = base.join(name);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(md) = std::fs::metadata(&p) {
            if md.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "secret file {} is readable by group or others (chmod 600 it)",
                    p.display()
                ));
            }
        }
    }
    parse_psk(text.trim_end_matches(['\n', '\r']))
        .map_err(|e| format!("secret file {}: {e}", p.display()))
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            msg: format!("{key}: {msg}"),
        }
    }
}

/// The message of a TOML syntax error, never empty. The parser gives no message for some
/// inputs (a stray carriage return, "\rN", found by the `config` fuzz target), which left
/// the user with a bare "FILE:LINE: "; then name the character the parser stopped at.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let m = e.message().trim();
    if !m.is_empty() {
        return m.to_string();
    }
    let at = e
        .span()
        .map(|s| s.start)
        .filter(|&s| text.is_char_boundary(s));
    match at.and_then(|s| text[s..].chars().next()) {
        Some(c) => format!("invalid TOML: unexpected {:?}", c),
        None => "invalid TOML".to_string(),
    }
}

/// Parses a duration like `60s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m, h)"
            ))
        }
    };
    // `try_`: `Duration::from_secs_f64` panics past u64::MAX seconds ("1e30s"); found by
    // the `config` fuzz target. It also refuses negative, infinite and NaN values.
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

fn parse_encap(s: &str) -> Result<UnderlayEncap, String> {
    match s {
        "udp" | "udp4500" | "nat-t" => Ok(UnderlayEncap::Udp),
        "esp" | "raw" => Ok(UnderlayEncap::Raw),
        _ => Err(format!(
            "unknown encapsulation {s:?} (expected \"udp\" for RFC 3948 UDP 4500, or \"esp\" for IP protocol 50)"
        )),
    }
}

fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("expected ADDRESS/PREFIX, got {s:?}"))?;
    let addr: IpAddr = a.parse().map_err(|_| format!("invalid address {a:?}"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("invalid prefix length {l:?}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} too long"));
    }
    Ok((addr, len))
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&t).map_err(|e| format!("invalid hex ({e})"))
}

/// Reads a secret (hex) from a file, relative to the config's directory; warns when the file
/// is readable by group or others.
fn read_secret(base: &Path, name: &str, warnings: &mut Vec<String>) -> Result<Vec<u8>, String> {
    let p = base.join(name);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(md) = std::fs::metadata(&p) {
            if md.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "secret file {} is readable by group or others (chmod 600 it)",
                    p.display()
                ));
            }
        }
    }
    decode_hex(text.trim()).map_err(|e| format!("secret file {}: {e}", p.display()))
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            msg: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text (`path` names it in errors and anchors relative secret files).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let cx = Ctx { file: &file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| cx.line_of(s.start)).unwrap_or(0);
            ConfigError {
                file: file.clone(),
                line,
                msg: toml_message(text, &e),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut warnings = Vec::new();

        let local: IpAddr = raw.underlay.local.get_ref().parse().map_err(|_| {
            cx.err(
                raw.underlay.local.span(),
                "underlay.local",
                "not an IP address",
            )
        })?;
        let default_encap = match &raw.underlay.encap {
            Some(e) => {
                parse_encap(e.get_ref()).map_err(|m| cx.err(e.span(), "underlay.encap", m))?
            }
            None => UnderlayEncap::Udp,
        };
        let port = raw.underlay.port.unwrap_or(esplab_esp::wire::NAT_T_PORT);

        let tun = TunConfig {
            name: raw.tun.name.clone().unwrap_or_else(|| "esplab0".into()),
            address: match &raw.tun.address {
                Some(a) => Some(
                    parse_prefix(a.get_ref()).map_err(|m| cx.err(a.span(), "tun.address", m))?,
                ),
                None => None,
            },
            mtu: raw.tun.mtu.as_ref().map(|m| *m.get_ref()).unwrap_or(1400),
            routes: raw.tun.routes.unwrap_or(true),
            tx_queue_len: raw
                .tun
                .tx_queue_len
                .as_ref()
                .map(|q| *q.get_ref())
                .unwrap_or(DEFAULT_TUN_TX_QUEUE_LEN),
        };
        if !(1..=1_000_000).contains(&tun.tx_queue_len) {
            let span = raw
                .tun
                .tx_queue_len
                .as_ref()
                .map(|q| q.span())
                .unwrap_or(0..0);
            return Err(cx.err(
                span,
                "tun.tx_queue_len",
                format!("{} out of range 1..=1000000", tun.tx_queue_len),
            ));
        }
        if !(576..=9000).contains(&tun.mtu) {
            let span = raw.tun.mtu.as_ref().map(|m| m.span()).unwrap_or(0..0);
            return Err(cx.err(
                span,
                "tun.mtu",
                format!("{} out of range 576..=9000", tun.mtu),
            ));
        }

        let mut limits = LogLimits::default();
        let mut event_queue = 1024;
        let mut events_per_second = crate::events::DEFAULT_EVENTS_PER_SECOND;
        let mut grace = Duration::from_secs(5);
        let (mut log_file, mut events_file) = (None, None);
        if let Some(l) = &raw.log {
            let dur =
                |v: &Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, ConfigError> {
                    match v {
                        Some(s) => parse_duration(s.get_ref())
                            .map(Some)
                            .map_err(|m| cx.err(s.span(), key, m)),
                        None => Ok(None),
                    }
                };
            if let Some(d) = dur(
                &l.invalid_spi_flow_interval,
                "log.invalid_spi_flow_interval",
            )? {
                limits.per_flow_interval = d;
            }
            if let Some(d) = dur(
                &l.invalid_spi_global_window,
                "log.invalid_spi_global_window",
            )? {
                limits.global_window = d;
            }
            if let Some(d) = dur(&l.retired_spi_grace, "log.retired_spi_grace")? {
                grace = d;
            }
            if let Some(n) = l.invalid_spi_global_max {
                limits.global_max = n;
            }
            if let Some(n) = l.max_tracked_flows {
                limits.max_flows = n.max(1);
            }
            if let Some(n) = l.event_queue {
                event_queue = n.max(1);
            }
            if let Some(n) = l.events_per_second {
                events_per_second = n;
            }
            log_file = l.file.as_ref().map(|f| base.join(f));
            events_file = l.events_file.as_ref().map(|f| base.join(f));
        }

        let debug_keys = raw.log.as_ref().and_then(|l| l.debug_keys).unwrap_or(false);
        let mut ike_cfg = esplab_ike::EndpointConfig::default();
        if let Some(i) = &raw.ike {
            let dur =
                |v: &Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, ConfigError> {
                    match v {
                        Some(s) => parse_duration(s.get_ref())
                            .map(Some)
                            .map_err(|m| cx.err(s.span(), key, m)),
                        None => Ok(None),
                    }
                };
            if let Some(n) = i.retransmit_tries {
                ike_cfg.retransmit.tries = n;
            }
            if let Some(d) = dur(&i.retransmit_timeout, "ike.retransmit_timeout")? {
                ike_cfg.retransmit.timeout = d;
            }
            if let Some(b) = &i.retransmit_base {
                if !(1.0..=10.0).contains(b.get_ref()) {
                    return Err(cx.err(b.span(), "ike.retransmit_base", "expected 1.0..=10.0"));
                }
                ike_cfg.retransmit.base = *b.get_ref();
            }
            if let Some(d) = dur(&i.half_open_timeout, "ike.half_open_timeout")? {
                ike_cfg.half_open_timeout = d;
            }
        }

        let mut recovery = RecoveryConfig::default();
        if let Some(r) = &raw.recovery {
            let dur =
                |v: &Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, ConfigError> {
                    match v {
                        Some(s) => {
                            let d = parse_duration(s.get_ref())
                                .map_err(|m| cx.err(s.span(), key, m))?;
                            if d.is_zero() {
                                return Err(cx.err(s.span(), key, "must be more than 0"));
                            }
                            Ok(Some(d))
                        }
                        None => Ok(None),
                    }
                };
            if let Some(d) = dur(&r.hold_down, "recovery.hold_down")? {
                recovery.hold_down = d;
            }
            if let Some(d) = dur(&r.max_backoff, "recovery.max_backoff")? {
                recovery.max_backoff = d;
            }
            if recovery.max_backoff < recovery.hold_down {
                let span = r
                    .max_backoff
                    .as_ref()
                    .or(r.hold_down.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                return Err(cx.err(
                    span,
                    "recovery.max_backoff",
                    "must be at least recovery.hold_down",
                ));
            }
            if let Some(n) = &r.global_per_minute {
                recovery.global_per_minute = *n.get_ref();
            }
            if let Some(n) = &r.max_tracked {
                if *n.get_ref() == 0 {
                    return Err(cx.err(n.span(), "recovery.max_tracked", "must be at least 1"));
                }
                recovery.max_tracked = *n.get_ref();
            }
            if let Some(b) = r.unprotected_hint {
                recovery.unprotected_hint = b;
            }
        }

        let capture = parse_capture(&cx, raw.capture.as_ref(), &base, &raw, log_file.as_deref())?;

        let mut peers = Vec::new();
        let mut sas = Vec::new();
        let mut seen_spis = std::collections::HashSet::new();
        for (pi, p) in raw.peer.iter().enumerate() {
            let key = |k: &str| format!("peer[{pi}].{k}");
            let dynamic = p.dynamic.as_ref().is_some_and(|d| *d.get_ref());
            let address: IpAddr =
                match &p.address {
                    Some(a) => {
                        let address: IpAddr = a
                            .get_ref()
                            .parse()
                            .map_err(|_| cx.err(a.span(), &key("address"), "not an IP address"))?;
                        if address.is_ipv4() != local.is_ipv4() {
                            return Err(cx.err(
                                a.span(),
                                &key("address"),
                                "address family differs from underlay.local",
                            ));
                        }
                        address
                    }
                    None if dynamic && p.auth.is_some() => match local {
                        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    },
                    None => return Err(cx.err(
                        p.name.span(),
                        &key("address"),
                        "missing (only a peer with auth = \"psk\" and dynamic = true may omit it)",
                    )),
                };
            let encap = match &p.encap {
                Some(e) => {
                    parse_encap(e.get_ref()).map_err(|m| cx.err(e.span(), &key("encap"), m))?
                }
                None => default_encap,
            };
            let ts =
                |v: &Vec<Spanned<String>>, k: &str| -> Result<Vec<TrafficSelector>, ConfigError> {
                    v.iter()
                        .map(|s| {
                            s.get_ref()
                                .parse::<TrafficSelector>()
                                .map_err(|e| cx.err(s.span(), &key(k), e))
                        })
                        .collect()
                };
            let local_ts = ts(&p.local_ts, "local_ts")?;
            let remote_ts = ts(&p.remote_ts, "remote_ts")?;
            if local_ts.is_empty() || remote_ts.is_empty() {
                return Err(cx.err(
                    p.name.span(),
                    &key("local_ts/remote_ts"),
                    "both local_ts and remote_ts need at least one selector (e.g. \"198.19.1.0/24\")",
                ));
            }
            for (si, s) in p.sa.iter().enumerate() {
                let skey = |k: &str| format!("peer[{pi}].sa[{si}].{k}");
                let direction = match s.direction.get_ref().as_str() {
                    "in" | "inbound" => SaDirection::In,
                    "out" | "outbound" => SaDirection::Out,
                    d => {
                        return Err(cx.err(
                            s.direction.span(),
                            &skey("direction"),
                            format!("expected \"in\" or \"out\", got {d:?}"),
                        ))
                    }
                };
                let spi = match s.spi.get_ref() {
                    SpiValue::Int(i) => u32::try_from(*i).ok(),
                    SpiValue::Str(t) => {
                        let t = t.trim();
                        match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                            Some(h) => u32::from_str_radix(h, 16).ok(),
                            None => t.parse().ok(),
                        }
                    }
                }
                .ok_or_else(|| cx.err(s.spi.span(), &skey("spi"), "not a 32-bit SPI"))?;
                // RFC 4303 §2.1: 1..=255 are reserved by IANA and 0 is for local use only.
                if spi <= 255 {
                    return Err(cx.err(
                        s.spi.span(),
                        &skey("spi"),
                        "SPIs 0..=255 are reserved (RFC 4303 §2.1)",
                    ));
                }
                // Inbound SPIs name SAs node-wide (they are what the SAD is keyed on);
                // outbound SPIs only need to be unique towards one peer.
                let scope = match direction {
                    SaDirection::In => None,
                    SaDirection::Out => Some(pi),
                };
                if !seen_spis.insert((spi, scope)) {
                    return Err(cx.err(
                        s.spi.span(),
                        &skey("spi"),
                        format!("duplicate SPI 0x{spi:08x}"),
                    ));
                }
                let alg = Algorithm::from_name(s.alg.get_ref())
                    .map_err(|e| cx.err(s.alg.span(), &skey("alg"), e))?;
                let secret = |inline: &Option<Spanned<String>>,
                              file: &Option<Spanned<String>>,
                              k: &str,
                              warnings: &mut Vec<String>|
                 -> Result<Vec<u8>, ConfigError> {
                    match (inline, file) {
                        (Some(_), Some(f)) => Err(cx.err(
                            f.span(),
                            &skey(k),
                            "give the key inline or in a file, not both",
                        )),
                        (Some(v), None) => {
                            decode_hex(v.get_ref()).map_err(|m| cx.err(v.span(), &skey(k), m))
                        }
                        (None, Some(f)) => read_secret(&base, f.get_ref(), warnings)
                            .map_err(|m| cx.err(f.span(), &skey(&format!("{k}_file")), m)),
                        (None, None) => Ok(Vec::new()),
                    }
                };
                let enc_key = secret(&s.key, &s.key_file, "key", &mut warnings)?;
                let integ_key =
                    secret(&s.integ_key, &s.integ_key_file, "integ_key", &mut warnings)?;
                let mut params = SaParams::new(spi, alg, &enc_key, &integ_key);
                params.esn = s.esn.unwrap_or(false);
                if let Some(w) = &s.replay_window {
                    params.replay_window = *w.get_ref();
                }
                if let Some(b) = &s.backend {
                    params.backend = match b.get_ref().as_str() {
                        "ring" => Backend::Ring,
                        "rustcrypto" | "aes-gcm" => Backend::RustCrypto,
                        o => {
                            return Err(cx.err(
                                b.span(),
                                &skey("backend"),
                                format!("expected \"ring\" or \"rustcrypto\", got {o:?}"),
                            ))
                        }
                    };
                }
                // Key the SA once now so a bad key length is reported with its line.
                esplab_esp::Cipher::new(alg, params.backend, &params.enc_key, &params.integ_key)
                    .map_err(|e| {
                        let span = s
                            .key
                            .as_ref()
                            .map(|k| k.span())
                            .or(s.key_file.as_ref().map(|k| k.span()))
                            .unwrap_or(s.alg.span());
                        cx.err(span, &skey("key"), e)
                    })?;
                esplab_esp::ReplayWindow::new(params.replay_window, params.esn).map_err(|e| {
                    cx.err(
                        s.replay_window
                            .as_ref()
                            .map(|w| w.span())
                            .unwrap_or(s.alg.span()),
                        &skey("replay_window"),
                        e,
                    )
                })?;
                sas.push(ManualSa {
                    peer: pi,
                    direction,
                    params,
                });
            }
            if let Some(mut ike_peer) = ike_peer(
                &cx,
                p,
                pi,
                local,
                p.address.as_ref().map(|_| address),
                (&local_ts, &remote_ts),
                &base,
                &mut warnings,
            )? {
                if !p.sa.is_empty() {
                    return Err(cx.err(
                        p.name.span(),
                        &key("sa"),
                        "a peer with auth = \"psk\" negotiates its SAs: remove its [[peer.sa]]",
                    ));
                }
                ike_peer.retransmit = peer_retransmit(&cx, p, pi, ike_cfg.retransmit)?;
                if let Some(pr) = peer_recovery(&cx, p, pi, ike_peer.dpd_delay)? {
                    recovery.peers.insert(p.name.get_ref().clone(), pr);
                }
                ike_cfg.peers.push(ike_peer);
            }
            peers.push(PeerConfig {
                name: p.name.get_ref().clone(),
                address,
                encap,
                port,
                local_ts,
                remote_ts,
            });
        }
        let name = raw.name.clone().unwrap_or_else(|| "esplab".into());
        let control_socket = socket_path(
            &name,
            raw.control.as_ref().and_then(|c| c.socket.as_deref()),
        );
        Ok(Config {
            path: path.to_path_buf(),
            node: NodeConfig {
                name,
                local,
                peers,
                log_limits: limits,
                event_queue,
                retired_grace: grace,
            },
            sas,
            tun,
            control_socket,
            log_file,
            events_file,
            warnings,
            ike: if ike_cfg.peers.is_empty() {
                None
            } else {
                Some(ike_cfg)
            },
            debug_keys,
            recovery,
            capture,
            user: match &raw.user {
                Some(u) if u.get_ref().trim().is_empty() => {
                    return Err(cx.err(u.span(), "user", "empty user name"))
                }
                u => u.as_ref().map(|u| u.get_ref().clone()),
            },
            events_per_second,
            tx_thread: raw
                .datapath
                .as_ref()
                .and_then(|d| d.tx_thread)
                .unwrap_or(false),
        })
    }
}

/// The recovery keys of an IKE `[[peer]]` (`None` when it sets none of them).
fn peer_recovery(
    cx: &Ctx<'_>,
    p: &RawPeer,
    pi: usize,
    dpd_delay: Option<Duration>,
) -> Result<Option<PeerRecovery>, ConfigError> {
    let key = |k: &str| format!("peer[{pi}].{k}");
    let any = p.on_invalid_spi.is_some()
        || p.invalid_spi_recovery.is_some()
        || p.dpd_action.is_some()
        || dpd_delay.is_some();
    if !any {
        return Ok(None);
    }
    let mut r = PeerRecovery {
        dpd_delay,
        ..PeerRecovery::default()
    };
    if let Some(v) = &p.on_invalid_spi {
        r.on_invalid_spi = match v.get_ref().as_str() {
            "delete" => OnInvalidSpi::Delete,
            "notify" => OnInvalidSpi::Notify,
            "both" => OnInvalidSpi::Both,
            "none" => OnInvalidSpi::None,
            o => {
                return Err(cx.err(
                    v.span(),
                    &key("on_invalid_spi"),
                    format!("expected \"delete\", \"notify\", \"both\" or \"none\", got {o:?}"),
                ))
            }
        };
    }
    if let Some(v) = &p.invalid_spi_recovery {
        let dynamic = p.dynamic.as_ref().is_some_and(|d| *d.get_ref());
        if *v.get_ref() && (p.address.is_none() || dynamic) {
            return Err(cx.err(
                v.span(),
                &key("invalid_spi_recovery"),
                "needs a static peer address (a dynamic peer cannot be initiated to)",
            ));
        }
        r.invalid_spi_recovery = *v.get_ref();
    }
    if let Some(v) = &p.dpd_action {
        r.dpd_action = match v.get_ref().as_str() {
            "clear" => DpdAction::Clear,
            "restart" => DpdAction::Restart,
            o => {
                return Err(cx.err(
                    v.span(),
                    &key("dpd_action"),
                    format!("expected \"clear\" or \"restart\", got {o:?}"),
                ))
            }
        };
    }
    Ok(Some(r))
}

/// A peer's own retransmission schedule: the `[ike]` one (`node_wide`) with the peer's
/// `retransmit_*` keys applied; `None` when it has none.
fn peer_retransmit(
    cx: &Ctx<'_>,
    p: &RawPeer,
    pi: usize,
    node_wide: esplab_ike::Retransmit,
) -> Result<Option<esplab_ike::Retransmit>, ConfigError> {
    let key = |k: &str| format!("peer[{pi}].{k}");
    if p.retransmit_tries.is_none() && p.retransmit_timeout.is_none() && p.retransmit_base.is_none()
    {
        return Ok(None);
    }
    let mut r = node_wide;
    if let Some(n) = &p.retransmit_tries {
        r.tries = *n.get_ref();
    }
    if let Some(s) = &p.retransmit_timeout {
        r.timeout = parse_duration(s.get_ref())
            .map_err(|m| cx.err(s.span(), &key("retransmit_timeout"), m))?;
        if r.timeout.is_zero() {
            return Err(cx.err(s.span(), &key("retransmit_timeout"), "must be more than 0"));
        }
    }
    if let Some(b) = &p.retransmit_base {
        if !(1.0..=10.0).contains(b.get_ref()) {
            return Err(cx.err(b.span(), &key("retransmit_base"), "expected 1.0..=10.0"));
        }
        r.base = *b.get_ref();
    }
    Ok(Some(r))
}

/// The IKE part of a `[[peer]]`, if it has `auth`; errors for IKE keys without it.
#[allow(clippy::too_many_arguments)]
fn ike_peer(
    cx: &Ctx<'_>,
    p: &RawPeer,
    pi: usize,
    local: IpAddr,
    address: Option<IpAddr>,
    ts: (&[TrafficSelector], &[TrafficSelector]),
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<esplab_ike::IkePeerConfig>, ConfigError> {
    use esplab_ike::proposal::ProposalSpec;
    use esplab_ike::{IkePeerConfig, Lifetime};
    use std::net::SocketAddr;
    let key = |k: &str| format!("peer[{pi}].{k}");
    let Some(auth) = &p.auth else {
        // IKE keys without `auth` are a mistake worth a line number.
        let stray = [
            ("local_id", p.local_id.as_ref().map(|v| v.span())),
            ("remote_id", p.remote_id.as_ref().map(|v| v.span())),
            ("secret", p.secret.as_ref().map(|v| v.span())),
            ("secret_file", p.secret_file.as_ref().map(|v| v.span())),
            ("ike_lifetime", p.ike_lifetime.as_ref().map(|v| v.span())),
            (
                "child_lifetime",
                p.child_lifetime.as_ref().map(|v| v.span()),
            ),
            ("dynamic", p.dynamic.as_ref().map(|v| v.span())),
            (
                "on_invalid_spi",
                p.on_invalid_spi.as_ref().map(|v| v.span()),
            ),
            (
                "invalid_spi_recovery",
                p.invalid_spi_recovery.as_ref().map(|v| v.span()),
            ),
            ("dpd_action", p.dpd_action.as_ref().map(|v| v.span())),
            (
                "retransmit_tries",
                p.retransmit_tries.as_ref().map(|v| v.span()),
            ),
            (
                "retransmit_timeout",
                p.retransmit_timeout.as_ref().map(|v| v.span()),
            ),
            (
                "retransmit_base",
                p.retransmit_base.as_ref().map(|v| v.span()),
            ),
            (
                "on_peer_delete",
                p.on_peer_delete.as_ref().map(|v| v.span()),
            ),
        ];
        if let Some((k, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
            return Err(cx.err(span, &key(k), "only for IKE peers (add auth = \"psk\")"));
        }
        return Ok(None);
    };
    if auth.get_ref() != "psk" {
        return Err(cx.err(
            auth.span(),
            &key("auth"),
            format!("only \"psk\" is supported, got {:?}", auth.get_ref()),
        ));
    }
    let psk = match (&p.secret, &p.secret_file) {
        (Some(_), Some(f)) => {
            return Err(cx.err(
                f.span(),
                &key("secret_file"),
                "give secret or secret_file, not both",
            ))
        }
        (Some(s), None) => {
            parse_psk(s.get_ref()).map_err(|m| cx.err(s.span(), &key("secret"), m))?
        }
        (None, Some(f)) => read_psk_file(base, f.get_ref(), warnings)
            .map_err(|m| cx.err(f.span(), &key("secret_file"), m))?,
        (None, None) => {
            return Err(cx.err(
                auth.span(),
                &key("secret"),
                "auth = \"psk\" needs secret or secret_file",
            ))
        }
    };
    let id = |v: &Option<Spanned<String>>,
              k: &str|
     -> Result<Option<esplab_ike::Identity>, ConfigError> {
        match v {
            Some(s) => parse_identity(s.get_ref())
                .map(Some)
                .map_err(|m| cx.err(s.span(), &key(k), m)),
            None => Ok(None),
        }
    };
    let local_id = id(&p.local_id, "local_id")?.unwrap_or(match local {
        IpAddr::V4(a) => esplab_ike::Identity::Ipv4(a),
        IpAddr::V6(a) => esplab_ike::Identity::Ipv6(a),
    });
    let remote_id = id(&p.remote_id, "remote_id")?;
    let mut c = IkePeerConfig::new(p.name.get_ref(), local_id, remote_id, &psk);
    let dynamic = p.dynamic.as_ref().is_some_and(|d| *d.get_ref());
    c.local_addr = Some(SocketAddr::new(local, 500));
    c.remote_addr = if dynamic {
        None
    } else {
        address.map(|a| SocketAddr::new(a, 500))
    };
    c.local_ts = ts.0.iter().map(esplab_node::agent::ike_ts).collect();
    c.remote_ts = ts.1.iter().map(esplab_node::agent::ike_ts).collect();
    let props = |v: &Option<Vec<Spanned<String>>>,
                 k: &str,
                 esp: bool|
     -> Result<Option<Vec<ProposalSpec>>, ConfigError> {
        let Some(list) = v else { return Ok(None) };
        let mut out = Vec::new();
        for s in list {
            let r = if esp {
                ProposalSpec::parse_esp_list(s.get_ref())
            } else {
                ProposalSpec::parse_ike_list(s.get_ref())
            };
            out.extend(r.map_err(|e| cx.err(s.span(), &key(k), e))?);
        }
        if out.is_empty() {
            return Err(ConfigError {
                file: cx.file.to_string(),
                line: cx.line_of(p.name.span().start),
                msg: format!("{}: empty list", key(k)),
            });
        }
        Ok(Some(out))
    };
    if let Some(v) = props(&p.ike_proposals, "ike_proposals", false)? {
        c.ike_proposals = v;
    }
    if let Some(v) = props(&p.esp_proposals, "esp_proposals", true)? {
        c.esp_proposals = v;
    }
    c.start = p.start.unwrap_or(false) && !dynamic;
    if let Some(ic) = p.initial_contact {
        c.initial_contact = ic;
    }
    let dur = |v: &Option<Spanned<String>>,
               k: &str|
     -> Result<Option<(Duration, std::ops::Range<usize>)>, ConfigError> {
        match v {
            Some(s) => parse_duration(s.get_ref())
                .map(|d| Some((d, s.span())))
                .map_err(|m| cx.err(s.span(), &key(k), m)),
            None => Ok(None),
        }
    };
    let margin = dur(&p.rekey_margin, "rekey_margin")?;
    let lifetime = |d: Option<(Duration, std::ops::Range<usize>)>,
                    k: &str,
                    default: Lifetime|
     -> Result<Option<Lifetime>, ConfigError> {
        let Some((hard, span)) = d else {
            return Ok(Some(default));
        };
        if hard.is_zero() {
            // 0 = never rekey nor expire.
            return Ok(None);
        }
        let m = margin
            .as_ref()
            .map(|(m, _)| *m)
            .unwrap_or(hard / 10)
            .min(default.margin);
        let m = margin.as_ref().map(|(m, _)| *m).unwrap_or(m);
        let jitter = m / 2;
        if m + jitter >= hard {
            return Err(cx.err(
                span,
                &key(k),
                format!("{hard:?} leaves no time before the rekey (rekey_margin {m:?} plus jitter {jitter:?})"),
            ));
        }
        Ok(Some(Lifetime::new(hard, m, jitter)))
    };
    c.ike_lifetime = lifetime(
        dur(&p.ike_lifetime, "ike_lifetime")?,
        "ike_lifetime",
        Lifetime::ike_default(),
    )?;
    c.child_lifetime = lifetime(
        dur(&p.child_lifetime, "child_lifetime")?,
        "child_lifetime",
        Lifetime::child_default(),
    )?;
    if let Some((d, _)) = dur(&p.dpd_delay, "dpd_delay")? {
        c.dpd_delay = (!d.is_zero()).then_some(d);
    }
    if let Some(v) = &p.on_peer_delete {
        c.on_peer_delete = match v.get_ref().as_str() {
            "restart" => esplab_ike::PeerAction::Restart,
            "none" => esplab_ike::PeerAction::None,
            o => {
                return Err(cx.err(
                    v.span(),
                    &key("on_peer_delete"),
                    format!("expected \"restart\" or \"none\", got {o:?}"),
                ))
            }
        };
    }
    Ok(Some(c))
}

/// `[capture]`: ring size, rate limit, dump directory (relative to the config's directory)
/// and the `on_event` script.
fn parse_capture(
    cx: &Ctx<'_>,
    c: Option<&RawCapture>,
    base: &Path,
    raw: &RawConfig,
    log_file: Option<&Path>,
) -> Result<crate::capture::CaptureConfig, ConfigError> {
    let name = raw.name.as_deref().unwrap_or("esplab");
    let mut out = crate::capture::CaptureConfig::defaults(name, log_file);
    let Some(c) = c else { return Ok(out) };
    if let Some(n) = &c.ring {
        out.ring = usize::try_from(*n.get_ref())
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| {
                cx.err(
                    n.span(),
                    "capture.ring",
                    format!("{} out of range 0..=1000000 (0 disables)", n.get_ref()),
                )
            })?;
    }
    if let Some(n) = &c.snaplen {
        // 16 bytes hold the ESP header (SPI, sequence number) and the start of an IKE
        // header; what a dump is for when the payload is not kept.
        out.snaplen = usize::try_from(*n.get_ref())
            .ok()
            .filter(|n| *n == 0 || (16..=65_535).contains(n))
            .ok_or_else(|| {
                cx.err(
                    n.span(),
                    "capture.snaplen",
                    format!(
                        "{} out of range: 0 (whole packets) or 16..=65535",
                        n.get_ref()
                    ),
                )
            })?;
    }
    if let Some(d) = &c.min_interval {
        out.min_interval =
            parse_duration(d.get_ref()).map_err(|m| cx.err(d.span(), "capture.min_interval", m))?;
    }
    if let Some(d) = &c.per_spi_interval {
        out.per_spi_interval = parse_duration(d.get_ref())
            .and_then(|i| {
                // A bound keeps `now + interval` far from `Instant`'s range.
                (i <= Duration::from_secs(86_400))
                    .then_some(i)
                    .ok_or_else(|| format!("{:?} is more than a day", d.get_ref()))
            })
            .map_err(|m| cx.err(d.span(), "capture.per_spi_interval", m))?;
    }
    if let Some(d) = &c.dir {
        if d.get_ref().trim().is_empty() {
            return Err(cx.err(d.span(), "capture.dir", "empty path"));
        }
        out.dir = base.join(d.get_ref());
    }
    if let Some(e) = &c.on_event {
        if e.get_ref().trim().is_empty() {
            return Err(cx.err(e.span(), "capture.on_event", "empty command"));
        }
        out.on_event = Some(base.join(e.get_ref()));
    }
    Ok(out)
}

/// The control socket a config names: `control.socket`, else `/run/esplab/NAME.sock`.
fn socket_path(name: &str, socket: Option<&str>) -> PathBuf {
    socket
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/esplab/{name}.sock")))
}

/// Only the control socket path of a config file, for `esplab show --config FILE`.
///
/// Reads just `name` and `control.socket`, so a client can reach a daemon whose config holds
/// secrets it cannot read (key files) or that is otherwise invalid.
pub fn control_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        msg: format!("cannot read: {e}"),
    })?;
    let cx = Ctx {
        file: &file,
        text: &text,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError {
        file: file.clone(),
        line: e.span().map(|s| cx.line_of(s.start)).unwrap_or(0),
        msg: e.message().trim().to_string(),
    })?;
    let field = |v: Option<&toml::Value>, key: &str| -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ConfigError {
                file: file.clone(),
                line: 0,
                msg: format!("{key}: expected a string"),
            }),
        }
    };
    let name = field(table.get("name"), "name")?.unwrap_or_else(|| "esplab".into());
    let socket = field(
        table
            .get("control")
            .and_then(|c| c.as_table())
            .and_then(|c| c.get("socket")),
        "control.socket",
    )?;
    Ok(socket_path(&name, socket.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "a"
[underlay]
local = "198.18.0.1"
encap = "udp"
[tun]
name = "esplab-a"
mtu = 1400
[control]
socket = "/tmp/esplab-test-a.sock"
[[peer]]
name = "b"
address = "198.18.0.2"
local_ts = ["198.19.1.0/24"]
remote_ts = ["198.19.2.0/24"]
[[peer.sa]]
direction = "out"
spi = "0xc0de0001"
alg = "aes-gcm-128"
key = "000102030405060708090a0b0c0d0e0f10111213"
[[peer.sa]]
direction = "in"
spi = 3235775490
alg = "aes-cbc-128-hmac-sha256"
key = "000102030405060708090a0b0c0d0e0f"
integ_key = "000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"
replay_window = 1024
"#;

    #[test]
    fn good_config() {
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.node.name, "a");
        assert_eq!(c.node.peers.len(), 1);
        assert_eq!(c.sas.len(), 2);
        assert_eq!(c.sas[0].params.spi, 0xc0de0001);
        assert_eq!(c.sas[1].params.spi, 3235775490);
        assert_eq!(c.sas[1].params.replay_window, 1024);
        assert_eq!(c.tun.name, "esplab-a");
        assert!(c.tun.routes);
        assert_eq!(c.tun.tx_queue_len, DEFAULT_TUN_TX_QUEUE_LEN);
    }

    #[test]
    fn tun_tx_queue_len() {
        let c = Config::parse(
            Path::new("a.toml"),
            &GOOD.replace("mtu = 1400", "mtu = 1400\ntx_queue_len = 8000"),
        )
        .unwrap();
        assert_eq!(c.tun.tx_queue_len, 8000);
        let e = err_of(&GOOD.replace("mtu = 1400", "mtu = 1400\ntx_queue_len = 0"));
        assert!(e.starts_with("a.toml:9: tun.tx_queue_len:"), "{e}");
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn control_socket_only() {
        let dir = std::env::temp_dir().join(format!("esplab-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.toml");
        // A bad key does not stop a client from finding the socket.
        let bad = GOOD.replace("000102030405060708090a0b0c0d0e0f10111213", "zz");
        assert!(Config::parse(&p, &bad).is_err());
        std::fs::write(&p, bad).unwrap();
        assert_eq!(
            control_socket_of(&p).unwrap(),
            PathBuf::from("/tmp/esplab-test-a.sock")
        );
        std::fs::write(&p, "name = \"b\"\n").unwrap();
        assert_eq!(
            control_socket_of(&p).unwrap(),
            PathBuf::from("/run/esplab/b.sock")
        );
        std::fs::write(&p, "name = 3\n").unwrap();
        assert!(control_socket_of(&p)
            .unwrap_err()
            .to_string()
            .contains("name"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn err_of(text: &str) -> String {
        Config::parse(Path::new("a.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace(
            "key = \"000102030405060708090a0b0c0d0e0f10111213\"",
            "key = \"0001\"",
        );
        let e = err_of(&bad);
        assert!(e.starts_with("a.toml:20: peer[0].sa[0].key:"), "{e}");
        assert!(e.contains("20 bytes"), "{e}");

        let bad = GOOD.replace("local = \"198.18.0.1\"", "local = \"198.18.0\"");
        assert!(
            err_of(&bad).starts_with("a.toml:4: underlay.local:"),
            "{}",
            err_of(&bad)
        );

        let bad = GOOD.replace("mtu = 1400", "mtu = 1400\ncolour = \"blue\"");
        let e = err_of(&bad);
        assert!(e.starts_with("a.toml:9:") && e.contains("colour"), "{e}");

        let bad = GOOD.replace("spi = \"0xc0de0001\"", "spi = \"0x10\"");
        assert!(err_of(&bad).contains("reserved"), "{}", err_of(&bad));

        let bad = GOOD.replace("alg = \"aes-gcm-128\"", "alg = \"des\"");
        assert!(
            err_of(&bad).starts_with("a.toml:19: peer[0].sa[0].alg:"),
            "{}",
            err_of(&bad)
        );

        let bad = GOOD.replace(
            "[[peer]]\nname = \"b\"",
            "[[peer]]\nname = \"b\"\nname = \"c\"",
        );
        assert!(err_of(&bad).starts_with("a.toml:"), "{}", err_of(&bad));
    }

    const IKE: &str = r#"
name = "a"
[underlay]
local = "198.18.0.1"
[tun]
name = "esplab-a"
[ike]
retransmit_tries = 2
retransmit_timeout = "500ms"
[[peer]]
name = "b"
address = "198.18.0.2"
local_ts = ["198.19.1.0/24"]
remote_ts = ["198.19.2.0/24"]
auth = "psk"
local_id = "a.example"
remote_id = "198.18.0.2"
secret = "0x0102030405"
ike_proposals = ["aes128gcm16-prfsha256-x25519", "aes128-sha256-x25519"]
esp_proposals = ["aes128gcm16,aes128-sha256"]
start = true
child_lifetime = "30s"
rekey_margin = "5s"
dpd_delay = "10s"
"#;

    #[test]
    fn ike_peer() {
        let c = Config::parse(Path::new("a.toml"), IKE).unwrap();
        let ike = c.ike.unwrap();
        assert_eq!(ike.retransmit.tries, 2);
        assert_eq!(ike.retransmit.timeout, Duration::from_millis(500));
        let p = &ike.peers[0];
        assert_eq!(p.local_id, esplab_ike::Identity::fqdn("a.example"));
        assert_eq!(
            p.remote_id,
            Some(esplab_ike::Identity::Ipv4("198.18.0.2".parse().unwrap()))
        );
        assert_eq!(p.psk.as_bytes(), &[1, 2, 3, 4, 5]);
        assert_eq!(p.ike_proposals.len(), 2);
        assert_eq!(p.esp_proposals.len(), 2);
        assert!(p.start);
        let l = p.child_lifetime.unwrap();
        assert_eq!(
            (l.hard, l.margin),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
        assert_eq!(p.dpd_delay, Some(Duration::from_secs(10)));
        assert_eq!(p.remote_addr, Some("198.18.0.2:500".parse().unwrap()));
        assert!(c.sas.is_empty());
        assert_eq!(c.node.peers.len(), 1);
        // Manual configs have no IKE part.
        assert!(Config::parse(Path::new("a.toml"), GOOD)
            .unwrap()
            .ike
            .is_none());
    }

    #[test]
    fn peer_retransmit_overrides_ike() {
        // Without the keys the peer follows [ike] (tries 2, timeout 500ms).
        let c = Config::parse(Path::new("a.toml"), IKE).unwrap();
        assert_eq!(c.ike.unwrap().peers[0].retransmit, None);
        // Line 25 is the first key after dpd_delay.
        let text = format!("{IKE}retransmit_timeout = \"2s\"\nretransmit_base = 1.5\n");
        let ike = Config::parse(Path::new("a.toml"), &text)
            .unwrap()
            .ike
            .unwrap();
        let r = ike.peers[0].retransmit.unwrap();
        // tries from [ike], the rest from the peer.
        assert_eq!(r.tries, 2);
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert_eq!(r.base, 1.5);
        assert_eq!(ike.retransmit.timeout, Duration::from_millis(500));
        let ike = Config::parse(Path::new("a.toml"), &format!("{IKE}retransmit_tries = 7\n"))
            .unwrap()
            .ike
            .unwrap();
        assert_eq!(ike.peers[0].retransmit.unwrap().tries, 7);
        let e = err_of(&format!("{IKE}retransmit_base = 0.5\n"));
        assert!(
            e.starts_with("a.toml:25: peer[0].retransmit_base: expected"),
            "{e}"
        );
        let e = err_of(&format!(
            "{IKE}retransmit_tries = 1\nretransmit_timeout = \"soon\"\n"
        ));
        assert!(
            e.starts_with("a.toml:26: peer[0].retransmit_timeout:"),
            "{e}"
        );
        let e = err_of(&format!("{IKE}retransmit_timeout = \"0s\"\n"));
        assert!(
            e.starts_with("a.toml:25: peer[0].retransmit_timeout:"),
            "{e}"
        );
        // Only for IKE peers.
        let e = err_of(&format!(
            "{GOOD}[[peer]]\nname = \"c\"\naddress = \"198.18.0.3\"\nlocal_ts = [\"198.19.1.0/24\"]\nremote_ts = [\"198.19.3.0/24\"]\nretransmit_tries = 3\n"
        ));
        assert!(e.contains("retransmit_tries: only for IKE peers"), "{e}");
    }

    #[test]
    fn recovery_keys() {
        // Line 24 is dpd_delay; the recovery keys follow it.
        let text = format!(
            "{IKE}on_invalid_spi = \"both\"\ninvalid_spi_recovery = true\ndpd_action = \"restart\"\non_peer_delete = \"restart\"\n[recovery]\nhold_down = \"5s\"\nmax_backoff = \"2m\"\nglobal_per_minute = 30\nmax_tracked = 100\nunprotected_hint = true\n"
        );
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        let r = &c.recovery;
        assert_eq!(r.hold_down, Duration::from_secs(5));
        assert_eq!(r.max_backoff, Duration::from_secs(120));
        assert_eq!((r.global_per_minute, r.max_tracked), (30, 100));
        assert!(r.unprotected_hint);
        let p = r.for_peer("b");
        assert_eq!(p.on_invalid_spi, OnInvalidSpi::Both);
        assert!(p.invalid_spi_recovery);
        assert_eq!(p.dpd_action, DpdAction::Restart);
        assert_eq!(p.dpd_delay, Some(Duration::from_secs(10)));
        assert_eq!(
            c.ike.unwrap().peers[0].on_peer_delete,
            esplab_ike::PeerAction::Restart
        );
        // Defaults: no [recovery], no keys.
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.recovery, RecoveryConfig::default());

        let e = err_of(&format!("{IKE}on_invalid_spi = \"drop\"\n"));
        assert!(e.starts_with("a.toml:25: peer[0].on_invalid_spi:"), "{e}");
        let e = err_of(&format!("{IKE}dpd_action = \"hold\"\n"));
        assert!(e.starts_with("a.toml:25: peer[0].dpd_action:"), "{e}");
        let e = err_of(&format!("{IKE}on_peer_delete = \"x\"\n"));
        assert!(e.starts_with("a.toml:25: peer[0].on_peer_delete:"), "{e}");
        let e = err_of(&format!("{IKE}[recovery]\nhold_down = \"soon\"\n"));
        assert!(e.starts_with("a.toml:26: recovery.hold_down:"), "{e}");
        let e = err_of(&format!("{IKE}[recovery]\nunprotected_hint = \"yes\"\n"));
        assert!(e.starts_with("a.toml:26"), "{e}");
        let e = err_of(&format!(
            "{IKE}[recovery]\nhold_down = \"60s\"\nmax_backoff = \"10s\"\n"
        ));
        assert!(e.starts_with("a.toml:27: recovery.max_backoff:"), "{e}");
        let e = err_of(&format!("{IKE}[recovery]\nbudget = 3\n"));
        assert!(e.contains("budget"), "{e}");
        // Recovery needs a static address.
        let dynamic = IKE
            .replace("address = \"198.18.0.2\"\n", "")
            .replace("start = true", "dynamic = true");
        let e = err_of(&format!("{dynamic}invalid_spi_recovery = true\n"));
        assert!(
            e.contains("peer[0].invalid_spi_recovery: needs a static"),
            "{e}"
        );
        // Only for IKE peers.
        let e = err_of(&GOOD.replace(
            "remote_ts = [\"198.19.2.0/24\"]",
            "remote_ts = [\"198.19.2.0/24\"]\non_invalid_spi = \"delete\"",
        ));
        assert!(e.contains("on_invalid_spi: only for IKE peers"), "{e}");
    }

    #[test]
    fn ike_errors_name_file_line_and_key() {
        let e = err_of(&IKE.replace("aes128-sha256-x25519\"", "aes128-md5-x25519\""));
        assert!(e.starts_with("a.toml:19: peer[0].ike_proposals:"), "{e}");
        let e = err_of(&IKE.replace("auth = \"psk\"", "auth = \"rsa\""));
        assert!(e.starts_with("a.toml:15: peer[0].auth:"), "{e}");
        let e = err_of(&IKE.replace("secret = \"0x0102030405\"\n", ""));
        assert!(e.starts_with("a.toml:15: peer[0].secret:"), "{e}");
        let e = err_of(&IKE.replace("child_lifetime = \"30s\"", "child_lifetime = \"6s\""));
        assert!(e.starts_with("a.toml:22: peer[0].child_lifetime:"), "{e}");
        let e = err_of(&IKE.replace("auth = \"psk\"\n", ""));
        assert!(
            e.starts_with("a.toml:15: peer[0].local_id: only for IKE peers"),
            "{e}"
        );
        // Dynamic responders may omit the address.
        let dynamic = IKE
            .replace("address = \"198.18.0.2\"\n", "")
            .replace("start = true", "dynamic = true");
        let c = Config::parse(Path::new("a.toml"), &dynamic).unwrap();
        assert!(c.ike.unwrap().peers[0].remote_addr.is_none());
        let e = err_of(&IKE.replace("address = \"198.18.0.2\"\n", ""));
        assert!(e.contains("peer[0].address: missing"), "{e}");
    }

    #[test]
    fn datapath_keys() {
        let c = Config::parse(Path::new("/etc/esplab/a.toml"), GOOD).unwrap();
        assert!(!c.tx_thread, "one datapath thread unless asked");
        let text = format!("{GOOD}[datapath]\ntx_thread = true\n");
        assert!(
            Config::parse(Path::new("/etc/esplab/a.toml"), &text)
                .unwrap()
                .tx_thread
        );
        let e = err_of(&format!("{GOOD}[datapath]\ntx_thread = 2\n"));
        assert!(e.contains("tx_thread") || e.contains("bool"), "{e}");
        let e = err_of(&format!("{GOOD}[datapath]\nthreads = 2\n"));
        assert!(e.contains("threads"), "{e}");
    }

    #[test]
    fn capture_keys() {
        // Defaults: ring 1000, 60 s, no script, /tmp/esplab-capture-NAME without a log file.
        let c = Config::parse(Path::new("/etc/esplab/a.toml"), GOOD).unwrap();
        assert_eq!(c.capture.ring, 1000);
        assert_eq!(c.capture.snaplen, 0);
        assert_eq!(c.capture.min_interval, Duration::from_secs(60));
        assert_eq!(c.capture.per_spi_interval, Duration::from_millis(10));
        assert_eq!(c.capture.dir, PathBuf::from("/tmp/esplab-capture-a"));
        assert!(c.capture.on_event.is_none());
        let text = format!("{GOOD}[log]\nfile = \"log/a.log\"\n");
        let c = Config::parse(Path::new("/etc/esplab/a.toml"), &text).unwrap();
        assert_eq!(c.capture.dir, PathBuf::from("/etc/esplab/log"));
        let text = format!(
            "{GOOD}[capture]\nring = 0\nsnaplen = 96\nmin_interval = \"5s\"\nper_spi_interval = \"0\"\ndir = \"/var/tmp/cap\"\non_event = \"hook.sh\"\n"
        );
        let c = Config::parse(Path::new("/etc/esplab/a.toml"), &text).unwrap();
        assert_eq!(c.capture.ring, 0);
        assert_eq!(c.capture.snaplen, 96);
        assert_eq!(c.capture.min_interval, Duration::from_secs(5));
        assert!(c.capture.per_spi_interval.is_zero());
        assert_eq!(c.capture.dir, PathBuf::from("/var/tmp/cap"));
        assert_eq!(
            c.capture.on_event,
            Some(PathBuf::from("/etc/esplab/hook.sh"))
        );
        // GOOD has 27 lines; [capture] is line 28.
        let e = err_of(&format!("{GOOD}[capture]\nring = -1\n"));
        assert!(e.starts_with("a.toml:29: capture.ring:"), "{e}");
        for bad in ["-1", "8", "65536"] {
            let e = err_of(&format!("{GOOD}[capture]\nsnaplen = {bad}\n"));
            assert!(e.starts_with("a.toml:29: capture.snaplen:"), "{e}");
        }
        let e = err_of(&format!("{GOOD}[capture]\nmin_interval = \"often\"\n"));
        assert!(e.starts_with("a.toml:29: capture.min_interval:"), "{e}");
        for bad in ["-1ms", "25h"] {
            let e = err_of(&format!("{GOOD}[capture]\nper_spi_interval = \"{bad}\"\n"));
            assert!(e.starts_with("a.toml:29: capture.per_spi_interval:"), "{e}");
        }
        let e = err_of(&format!("{GOOD}[capture]\non_event = \"\"\n"));
        assert!(e.starts_with("a.toml:29: capture.on_event:"), "{e}");
        let e = err_of(&format!("{GOOD}[capture]\nsize = 3\n"));
        assert!(e.starts_with("a.toml:29:") && e.contains("size"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn psk_file_readable_by_others_warns_and_user_and_events_rate_parse() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("esplab-cfg-psk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("psk"), "0x0102030405\n").unwrap();
        let text = IKE.replace("secret = \"0x0102030405\"", "secret_file = \"psk\"");
        let cfg = dir.join("a.toml");
        for (mode, warns) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
            std::fs::set_permissions(dir.join("psk"), std::fs::Permissions::from_mode(mode))
                .unwrap();
            let c = Config::parse(&cfg, &text).unwrap();
            let w = c
                .warnings
                .iter()
                .any(|w| w.contains("readable by group or others"));
            assert_eq!(w, warns, "mode {mode:o}: {:?}", c.warnings);
            assert_eq!(c.ike.unwrap().peers[0].psk.as_bytes(), [1, 2, 3, 4, 5]);
        }
        std::fs::remove_dir_all(&dir).unwrap();

        let c = Config::parse(Path::new("a.toml"), IKE).unwrap();
        assert_eq!(c.user, None);
        assert_eq!(
            c.events_per_second,
            crate::events::DEFAULT_EVENTS_PER_SECOND
        );
        let text = format!("user = \"nobody\"\n{IKE}[log]\nevents_per_second = 0\n");
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.events_per_second, 0);
        let e = err_of(&format!("user = \" \"\n{IKE}"));
        assert!(e.starts_with("a.toml:1: user:"), "{e}");
    }
}
