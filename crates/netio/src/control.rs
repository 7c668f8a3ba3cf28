//! The control protocol between `esplab peer` and `esplab show|clear`, and its client.
//!
//! One request per line, one JSON response per line, on a unix stream socket (mode 0600):
//!
//! ```text
//! → {"cmd":"show-sa"}
//! ← {"ok":true,"node":"a","sas":[{"peer":"b","direction":"out","spi":"0xc0de0001",...}]}
//! → {"cmd":"clear-sa","spi":"0xc0de0001"}
//! ← {"ok":true,"node":"a","removed":1}
//! → {"cmd":"rekey","peer":"b","spi":"0xc0de0001"}      ("ike":true for the IKE SA)
//! ← {"ok":true,"node":"a","rekeying":["0xc0de0001"]}
//! → {"cmd":"follow-events"}
//! ← {"ok":true,"node":"a","events":[...the recent ones...]}
//! ← {"time":"2026-11-27T16:40:01.123Z","node":"a","type":"invalid-spi",...}   (one line per new event)
//! ```
//!
//! The same serde types serve the daemon and the client, so the two cannot drift apart.
//! SPIs are written `"0x%08x"` everywhere (requests also accept a plain number).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default control socket when neither `--socket` nor `--config` is given.
pub const DEFAULT_SOCKET: &str = "/run/esplab/esplab.sock";

/// Longest request line the daemon reads; requests are tiny, this only bounds memory.
pub const MAX_REQUEST_LINE: usize = 4096;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every SA with its counters.
    ShowSa,
    /// Every node counter.
    ShowCounters,
    /// The recent events (a bounded ring).
    ShowEvents,
    /// The recent events, then every new event as its own line until the client hangs up.
    FollowEvents,
    /// Remove SAs without telling the peer (the way to cause a desync on purpose).
    ClearSa {
        /// Remove the SAs with this SPI (inbound and outbound).
        #[serde(
            default,
            with = "spi_hex::option",
            skip_serializing_if = "Option::is_none"
        )]
        spi: Option<u32>,
        /// Remove every SA.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// Zero every counter.
    ClearCounters,
    /// The IKE SAs and their CHILD SAs.
    ShowIke,
    /// Start an IKE SA (and its CHILD SA) with a peer.
    Initiate {
        /// Peer name.
        peer: String,
    },
    /// Delete every IKE SA with a peer (INFORMATIONAL Delete).
    Terminate {
        /// Peer name.
        peer: String,
    },
    /// Invalid-SPI recovery counters and per-peer state.
    ShowRecovery,
    /// Rekey with a peer: its CHILD SAs (all of them, or the pair with `spi`) with
    /// CREATE_CHILD_SA (RFC 7296 §1.3.3), or with `ike` its IKE SA (§1.3.2).
    Rekey {
        /// Peer name.
        peer: String,
        /// Rekey the IKE SA instead of CHILD SAs.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ike: bool,
        /// Only the CHILD SA pair with this (inbound or outbound) SPI.
        #[serde(
            default,
            with = "spi_hex::option",
            skip_serializing_if = "Option::is_none"
        )]
        spi: Option<u32>,
    },
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The daemon's node name (`name` in its config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `show-sa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas: Option<Vec<SaRow>>,
    /// `show-counters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Vec<CounterRow>>,
    /// `show-events` and the first line of `follow-events`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventRecord>>,
    /// `clear-sa`: how many SAs were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<usize>,
    /// `show-ike`: the IKE SAs (`esplab_ike::IkeSaInfo` as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<Vec<serde_json::Value>>,
    /// `show-recovery`: `{"stats": RecoveryStats, "peers": [PeerRecoveryStatus]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<serde_json::Value>,
    /// `rekey` of CHILD SAs: the inbound SPIs of the pairs whose rekey was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekeying: Option<Vec<String>>,
}

impl Response {
    /// A success carrying nothing yet.
    pub fn ok(node: &str) -> Self {
        Self {
            ok: true,
            node: Some(node.to_string()),
            ..Self::default()
        }
    }

    /// A refusal.
    pub fn error(node: &str, msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            node: Some(node.to_string()),
            ..Self::default()
        }
    }
}

/// One SA as `show sa` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaRow {
    /// Peer name.
    pub peer: String,
    /// `in` or `out`.
    pub direction: String,
    /// SPI.
    #[serde(with = "spi_hex")]
    pub spi: u32,
    /// Algorithm name.
    pub alg: String,
    /// Extended sequence numbers.
    pub esn: bool,
    /// Packets through the SA.
    pub packets: u64,
    /// Inner bytes through the SA.
    pub bytes: u64,
    /// Inbound: replay window size; outbound: 0.
    pub replay_window: u32,
    /// Inbound: highest sequence number accepted; outbound: last sequence number sent.
    pub seq: u64,
    /// Seconds since installed.
    pub age_secs: f64,
    /// Seconds since last used (absent: never used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
    /// How the SA's ESP travels: `udp` (RFC 3948 UDP encapsulation) or `esp` (raw, IP
    /// protocol 50), the words events use. Empty when read from a daemon that predates
    /// the field.
    #[serde(default)]
    pub encap: String,
    /// The peer's UDP port for `udp` (4500 unless a NAT moved it); absent for `esp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
}

impl From<esplab_node::SaInfo> for SaRow {
    fn from(s: esplab_node::SaInfo) -> Self {
        Self {
            peer: s.peer,
            direction: s.direction.to_string(),
            spi: s.spi,
            alg: s.alg.to_string(),
            esn: s.esn,
            packets: s.packets,
            bytes: s.bytes,
            replay_window: s.replay_window,
            seq: s.seq,
            age_secs: s.age_secs,
            idle_secs: s.idle_secs,
            encap: match s.encap {
                esplab_node::UnderlayEncap::Udp => "udp",
                esplab_node::UnderlayEncap::Raw => "esp",
            }
            .to_string(),
            udp_port: s.udp_port,
        }
    }
}

/// One counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    /// Name (`IN_US_V4_PKT_SA_NOT_FOUND_SPI`, ...).
    pub name: String,
    /// Value.
    pub value: u64,
}

/// One event, as kept in the daemon's ring, streamed to followers and appended to
/// `log.events_file`. Fields that do not apply to a type are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The daemon's node name.
    pub node: String,
    /// `invalid-spi`, `invalid-spi-suppressed`, `retired-spi`, `sequence-exhausted`,
    /// `sa-cleared`, `events-lost` (a follower fell behind), an IKE event (`ike-sa-*`,
    /// `child-sa-*`, `ike-auth-failed`, `ike-peer-dead`, ...: see
    /// `events::ike_record_of`) or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SPI concerned.
    #[serde(
        default,
        with = "spi_hex::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub spi: Option<u32>,
    /// Outer source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// Outer destination address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// Sequence number as received (low 32 bits, unauthenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// `ipv4` or `ipv6` (the underlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `udp` (RFC 3948) or `esp` (IP protocol 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<String>,
    /// ESP packet length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<usize>,
    /// Whether a log line was printed for it (false: held back by the rate limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged: Option<bool>,
    /// `invalid-spi-suppressed`: lines held back; `events-lost`: events missed;
    /// `sa-cleared`: SAs removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `invalid-spi-suppressed`: the window the count covers, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// IKE events: the peer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// IKE events: the IKE SA (the daemon's IKE SA number, as in `show ike`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_sa: Option<u64>,
    /// IKE events: the other SA concerned (`ike-sa-rekeyed`: the new IKE SA;
    /// `child-sa-*`: the outbound SPI as `0x%08x`; `child-sa-rekeyed`: the new inbound SPI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    /// IKE events: why (`ike-sa-deleted`, `child-sa-deleted`: `local`, `peer`, `rekeyed`,
    /// `expired`, `peer-dead`, ...; failures: the notification or the check that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The human-readable line (for `invalid-spi`, the vendor log line).
    pub message: String,
}

impl EventRecord {
    /// A record of `kind` with only the common fields set.
    pub fn new(time: String, node: &str, kind: &str, message: String) -> Self {
        Self {
            time,
            node: node.to_string(),
            kind: kind.to_string(),
            spi: None,
            src: None,
            dst: None,
            seq: None,
            family: None,
            encap: None,
            len: None,
            logged: None,
            count: None,
            window_secs: None,
            peer: None,
            ike_sa: None,
            other: None,
            reason: None,
            message,
        }
    }

    /// The line `show events` prints: `TIME esplab[NODE]: MESSAGE`, marked when the rate
    /// limits kept it out of the log.
    pub fn log_line(&self) -> String {
        let l = log_line(&self.time, &self.node, &self.message);
        match self.logged {
            Some(false) => format!("{l} [not logged: rate limit]"),
            _ => l,
        }
    }
}

/// A daemon log line: `2026-11-27T16:40:01.123Z esplab[a]: MESSAGE`.
pub fn log_line(time: &str, node: &str, message: &str) -> String {
    format!("{time} esplab[{node}]: {message}")
}

/// Parses an SPI written `0x1234abcd` (hex) or `305441741` (decimal).
pub fn parse_spi(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("invalid SPI {s:?} (expected 0x1234abcd or a decimal number)"))
}

/// Serde for SPIs as `"0x%08x"` strings (a plain number is accepted on input).
pub mod spi_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Num(u32),
        Str(String),
    }

    fn from_any<E: serde::de::Error>(a: Any) -> Result<u32, E> {
        match a {
            Any::Num(n) => Ok(n),
            Any::Str(s) => super::parse_spi(&s).map_err(E::custom),
        }
    }

    /// Writes `0x%08x`.
    pub fn serialize<S: Serializer>(spi: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{spi:08x}"))
    }

    /// Reads `"0x..."`, a decimal string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        from_any(Any::deserialize(d)?)
    }

    /// The same for `Option<u32>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `0x%08x` or null.
        pub fn serialize<S: Serializer>(spi: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
            match spi {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads what [`super::deserialize`] reads, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
            Option::<super::Any>::deserialize(d)?
                .map(super::from_any)
                .transpose()
        }
    }
}

/// Why a control request failed, from the client's side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket, or we may not use it.
    #[error("cannot reach the esplab daemon at {}: {} ({hint})", path.display(), os_reason(source))]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The connection broke or timed out mid-request.
    #[error("lost the connection to the esplab daemon at {}: {}", path.display(), os_reason(source))]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon answered something that is not this protocol.
    #[error("unexpected answer from the esplab daemon at {}: {msg}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong with it.
        msg: String,
    },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// An OS error's text without Rust's ` (os error N)` suffix, for one-line messages.
fn os_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// A connection to a running daemon. Blocking: the CLI needs nothing more.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// How long a one-shot request may take before the client gives up (the daemon answers
/// from its datapath loop between packet batches, so anything near this means it is stuck).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects to the daemon's control socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => "run as the daemon's user, e.g. with sudo",
                _ => "is 'esplab peer' running?",
            };
            ClientError::Connect {
                path: path.to_path_buf(),
                source,
                hint,
            }
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))
    }

    /// Reads one line; `None` at end of stream.
    fn read_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line)),
            Err(e) => Err(self.io(e)),
        }
    }

    fn response(&mut self) -> Result<Response, ClientError> {
        let line = self.read_line()?.ok_or_else(|| ClientError::Protocol {
            path: self.path.clone(),
            msg: "connection closed before the answer".into(),
        })?;
        let r: Response = serde_json::from_str(&line).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        if !r.ok {
            return Err(ClientError::Refused(
                r.error.unwrap_or_else(|| "request refused".into()),
            ));
        }
        Ok(r)
    }

    /// Sends `req` and waits (at most 10 s) for the answer; a refusal is an error.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| self.io(e))?;
        self.send(req)?;
        self.response()
    }

    /// Starts following events: returns the recent ones (in the response) and a stream of
    /// the new ones, each with its raw JSON line.
    pub fn follow(mut self) -> Result<(Response, EventStream), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| self.io(e))?;
        self.send(&Request::FollowEvents)?;
        let first = self.response()?;
        Ok((first, EventStream { client: self }))
    }
}

/// New events from a `follow-events` request, until the daemon stops.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
}

impl Iterator for EventStream {
    /// The event and its JSON line (without the newline).
    type Item = Result<(EventRecord, String), ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.client.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let line = line.trim_end().to_string();
        Some(
            serde_json::from_str(&line)
                .map(|ev| (ev, line))
                .map_err(|e| ClientError::Protocol {
                    path: self.client.path.clone(),
                    msg: e.to_string(),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let j = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(j(&Request::ShowSa), r#"{"cmd":"show-sa"}"#);
        assert_eq!(j(&Request::ClearCounters), r#"{"cmd":"clear-counters"}"#);
        assert_eq!(
            j(&Request::ClearSa {
                spi: Some(0xc0de0001),
                all: false
            }),
            r#"{"cmd":"clear-sa","spi":"0xc0de0001"}"#
        );
        assert_eq!(
            j(&Request::ClearSa {
                spi: None,
                all: true
            }),
            r#"{"cmd":"clear-sa","all":true}"#
        );
        // Hand-typed requests may give the SPI as a number or a hex string.
        let r: Request = serde_json::from_str(r#"{"cmd":"clear-sa","spi":3235774465}"#).unwrap();
        assert_eq!(
            r,
            Request::ClearSa {
                spi: Some(0xc0de0001),
                all: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"clear-sa","spi":"0xC0DE0001"}"#).unwrap();
        assert_eq!(
            r,
            Request::ClearSa {
                spi: Some(0xc0de0001),
                all: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"clear-sa","spi":"zz"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn rekey_wire_format() {
        let j = |r: &Request| serde_json::to_string(r).unwrap();
        let child = Request::Rekey {
            peer: "b".into(),
            ike: false,
            spi: None,
        };
        assert_eq!(j(&child), r#"{"cmd":"rekey","peer":"b"}"#);
        let ike = Request::Rekey {
            peer: "b".into(),
            ike: true,
            spi: None,
        };
        assert_eq!(j(&ike), r#"{"cmd":"rekey","peer":"b","ike":true}"#);
        let one = Request::Rekey {
            peer: "b".into(),
            ike: false,
            spi: Some(0xc0de0001),
        };
        assert_eq!(j(&one), r#"{"cmd":"rekey","peer":"b","spi":"0xc0de0001"}"#);
        for r in [child, ike, one] {
            assert_eq!(serde_json::from_str::<Request>(&j(&r)).unwrap(), r);
        }
        // Hand-typed: a decimal SPI; a missing peer is refused.
        let r: Request =
            serde_json::from_str(r#"{"cmd":"rekey","peer":"b","spi":3235774465}"#).unwrap();
        assert_eq!(
            r,
            Request::Rekey {
                peer: "b".into(),
                ike: false,
                spi: Some(0xc0de0001)
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rekey"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"cmd":"rekey","peer":"b","spi":"x"}"#).is_err()
        );
        // The answer lists the pairs being rekeyed.
        let mut resp = Response::ok("a");
        resp.rekeying = Some(vec!["0xc0de0001".into()]);
        let line = serde_json::to_string(&resp).unwrap();
        assert!(line.contains(r#""rekeying":["0xc0de0001"]"#), "{line}");
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), resp);
    }

    #[test]
    fn response_round_trip() {
        let mut r = Response::ok("a");
        r.sas = Some(vec![SaRow {
            peer: "b".into(),
            direction: "in".into(),
            spi: 0xc0de0002,
            alg: "aes-gcm-128".into(),
            esn: false,
            packets: 3,
            bytes: 252,
            replay_window: 64,
            seq: 3,
            age_secs: 1.5,
            idle_secs: None,
            encap: "esp".into(),
            udp_port: None,
        }]);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""spi":"0xc0de0002""#), "{line}");
        assert!(!line.contains("idle_secs"), "{line}");
        assert!(line.contains(r#""encap":"esp""#), "{line}");
        assert!(!line.contains("udp_port"), "raw ESP has no port: {line}");
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    fn sa_info(encap: esplab_node::UnderlayEncap, udp_port: Option<u16>) -> esplab_node::SaInfo {
        esplab_node::SaInfo {
            peer: "b".into(),
            direction: "out",
            spi: 0xc0de0001,
            alg: "aes-gcm-128",
            esn: false,
            packets: 0,
            bytes: 0,
            replay_window: 0,
            seq: 0,
            age_secs: 0.0,
            idle_secs: None,
            encap,
            udp_port,
        }
    }

    /// The encapsulation uses the words of the events (`udp`/`esp`) and the UDP port
    /// a NAT may have moved.
    #[test]
    fn sa_row_encap_from_sa_info() {
        use esplab_node::UnderlayEncap;
        let udp = SaRow::from(sa_info(UnderlayEncap::Udp, Some(31000)));
        assert_eq!((udp.encap.as_str(), udp.udp_port), ("udp", Some(31000)));
        let line = serde_json::to_string(&udp).unwrap();
        assert!(line.contains(r#""encap":"udp","udp_port":31000"#), "{line}");
        let raw = SaRow::from(sa_info(UnderlayEncap::Raw, None));
        assert_eq!((raw.encap.as_str(), raw.udp_port), ("esp", None));
    }

    /// A newer client still reads an older daemon's `show sa` (fields were only added).
    #[test]
    fn sa_row_without_encap_still_parses() {
        let old = r#"{"peer":"b","direction":"in","spi":"0xc0de0002","alg":"aes-gcm-128",
            "esn":false,"packets":3,"bytes":252,"replay_window":64,"seq":3,"age_secs":1.5}"#;
        let r: SaRow = serde_json::from_str(old).unwrap();
        assert_eq!((r.encap.as_str(), r.udp_port), ("", None));
        assert_eq!(r.spi, 0xc0de0002);
    }

    #[test]
    fn spi_parsing() {
        assert_eq!(parse_spi("0xc0de0001"), Ok(0xc0de0001));
        assert_eq!(parse_spi("0XC0DE0001"), Ok(0xc0de0001));
        assert_eq!(parse_spi("256"), Ok(256));
        assert!(parse_spi("0x1c0de0001").is_err());
        assert!(parse_spi("").is_err());
    }

    #[test]
    fn connect_error_is_one_clear_line() {
        let p = Path::new("/nonexistent-esplab-dir/a.sock");
        let e = Client::connect(p).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot reach the esplab daemon at /nonexistent-esplab-dir/a.sock: No such file or directory (is 'esplab peer' running?)"
        );
    }
}
