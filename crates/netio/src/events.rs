//! Where the node's events go: the log, a bounded ring for `show events`, live followers and
//! the JSON-lines events file.
//!
//! RFC 4303 §3.4.2: an invalid-SPI packet is an auditable event whose record SHOULD hold the
//! SPI, the date and time received, the source and destination addresses and the sequence
//! number; every `invalid-spi` record here carries all of them.
//!
//! The events file and the live followers are rate-limited ([`EventRateLimit`]): a flood of
//! invalid-SPI packets makes one event per packet, and without a bound it would fill the
//! disk and swamp every follower at the attacker's packet rate. Records over the limit are
//! counted, not written, and one `events-suppressed` record per window says how many. The
//! ring of `show events` is bounded in size already and keeps every record.
//!
//! The log lines of IKE and recovery events ([`EventSink::agent_event`]) are rate-limited the
//! same way: an IKE_SA_INIT flood or a stream of unknown SPIs makes one such event per
//! datagram. SA lifecycle lines (CHILD SA installed, removed, ...) always pass: an attacker
//! cannot make them without the keys.

use crate::clock::WallClock;
use crate::control::EventRecord;
use crate::log::{open_append, Logger};
use esplab_esp::Encap;
use esplab_node::{invalid_spi_log_line, suppressed_log_line, AgentEvent, Event, InvalidSpi};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events kept for `show events`.
pub const RING: usize = 1000;

/// Events a follower may fall behind by before it is told some were lost.
const FOLLOW_BACKLOG: usize = 1024;

/// Default of `log.events_per_second`: records written to the events file and sent to
/// followers per second, summary records excluded.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 200;

/// Log lines per second for IKE messages and recovery events (see [`EventSink::agent_event`]).
/// A handshake or a rekey logs about ten.
pub const AGENT_LINES_PER_SECOND: u32 = 100;

/// The window of [`EventRateLimit`].
pub const EVENTS_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// At most `per_window` records per fixed window of [`EVENTS_WINDOW`]; the rest are
/// counted and reported once the window is over. Plain counters: no allocation per record.
#[derive(Debug, Clone)]
pub struct EventRateLimit {
    /// 0 = unlimited.
    per_window: u32,
    window_start: Option<std::time::Instant>,
    used: u32,
    /// Held back in the current (or last unreported) window.
    held: u64,
    /// Held back since start.
    total_held: u64,
}

impl EventRateLimit {
    /// A limit of `per_second` records per second (0 = unlimited).
    pub fn new(per_second: u32) -> Self {
        Self {
            per_window: per_second,
            window_start: None,
            used: 0,
            held: 0,
            total_held: 0,
        }
    }

    /// Whether a record at `now` may go out; counts it as held back when not.
    pub fn admit(&mut self, now: std::time::Instant) -> bool {
        if self.per_window == 0 {
            return true;
        }
        match self.window_start {
            Some(t) if now.saturating_duration_since(t) < EVENTS_WINDOW => {}
            // A new window; what the last one held back is reported by `take_summary`
            // (called before every admission by the sink), never lost.
            _ => {
                self.window_start = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.per_window {
            self.used += 1;
            true
        } else {
            self.held += 1;
            self.total_held += 1;
            false
        }
    }

    /// Whether [`EventRateLimit::admit`] at `now` would let a record out (it changes nothing).
    fn would_admit(&self, now: std::time::Instant) -> bool {
        self.per_window == 0
            || self.used < self.per_window
            || self
                .window_start
                .is_none_or(|t| now.saturating_duration_since(t) >= EVENTS_WINDOW)
    }

    /// Once the window that held records back is over: how many it held (then resets).
    pub fn take_summary(&mut self, now: std::time::Instant) -> Option<u64> {
        let start = self.window_start?;
        if self.held == 0 || now.saturating_duration_since(start) < EVENTS_WINDOW {
            return None;
        }
        Some(std::mem::take(&mut self.held))
    }

    /// Records held back since start.
    pub fn total_held(&self) -> u64 {
        self.total_held
    }
}

/// The record of a node event, and whether it deserves a log line.
pub fn record_of(ev: &Event, clock: &WallClock, node: &str) -> (EventRecord, bool) {
    match ev {
        Event::InvalidSpi(e) => (invalid_spi_record(e, clock, node), e.logged),
        Event::InvalidSpiSuppressed { at, count, window } => {
            let mut r = EventRecord::new(
                clock.rfc3339(*at),
                node,
                "invalid-spi-suppressed",
                suppressed_log_line(*count, window.as_secs()),
            );
            r.count = Some(*count);
            r.window_secs = Some(window.as_secs());
            (r, true)
        }
        Event::RetiredSpi { at, spi, src } => {
            let mut r = EventRecord::new(
                clock.rfc3339(*at),
                node,
                "retired-spi",
                format!(
                    "late packet for retired SPI 0x{spi:08x} from {src} (dropped, not a desync)"
                ),
            );
            r.spi = Some(*spi);
            r.src = Some(*src);
            // Retired-SPI packets are expected after a rekey: counted, never logged.
            (r, false)
        }
        Event::SequenceExhausted { at, spi } => {
            let mut r = EventRecord::new(
                clock.rfc3339(*at),
                node,
                "sequence-exhausted",
                format!(
                    "outbound SA 0x{spi:08x} has used its whole sequence number space; packets are dropped until it is replaced"
                ),
            );
            r.spi = Some(*spi);
            (r, true)
        }
        other => (
            EventRecord::new(
                clock.rfc3339(std::time::Instant::now()),
                node,
                "other",
                format!("{other:?}"),
            ),
            false,
        ),
    }
}

/// The `invalid-spi` record of `e` (a pure function of the event: its time is `e.at`, so it
/// can be made late, when `show events` asks, with the same result).
fn invalid_spi_record(e: &InvalidSpi, clock: &WallClock, node: &str) -> EventRecord {
    let mut r = EventRecord::new(
        clock.rfc3339(e.at),
        node,
        "invalid-spi",
        invalid_spi_log_line(e),
    );
    r.spi = Some(e.spi);
    r.src = Some(e.src);
    r.dst = Some(e.dst);
    r.seq = Some(e.seq);
    r.family = Some(e.family.name().to_string());
    r.encap = Some(
        match e.encap {
            Encap::Raw => "esp",
            Encap::Udp { .. } => "udp",
        }
        .to_string(),
    );
    r.len = Some(e.len);
    r.logged = Some(e.logged);
    r
}

/// The record of an IKE / SA event of the agent, with a stable `type`, or `None` for the
/// per-message chatter (sent, received, dropped: those go to the log only):
///
/// | type | when |
/// |---|---|
/// | `ike-sa-established` | IKE_AUTH succeeded |
/// | `ike-sa-init-failed`, `ike-auth-failed`, `ike-no-proposal-chosen` | setup failed (`reason`) |
/// | `ike-sa-rekeyed` | IKE SA replaced (`ike_sa` old, `other` new) |
/// | `ike-sa-rekey-failed` | our IKE SA rekey was refused (`reason`) |
/// | `ike-sa-deleted` | an IKE SA is gone (`reason`) |
/// | `ike-peer-dead` | retransmissions exhausted |
/// | `ike-peer-address-changed` | NAT mapping / port floating (`dst` = peer address) |
/// | `child-sa-installed` | a CHILD SA pair went into the SAD (`spi` in, `other` out) |
/// | `child-sa-rekeyed` | a pair was replaced (`spi` old in, `other` new in) |
/// | `child-sa-rekey-collision` | both sides rekeyed a pair (`reason` `won`/`lost`) |
/// | `child-sa-failed`, `child-sa-install-failed` | creating or rekeying a pair failed |
/// | `child-sa-deleted` | a pair is gone (`spi` in, `other` out, `reason`) |
pub fn ike_record_of(
    ev: &esplab_node::AgentEvent,
    time: impl FnOnce() -> String,
    node: &str,
) -> Option<EventRecord> {
    use esplab_ike::IkeEvent as I;
    use esplab_node::AgentEvent as A;
    let hex = |s: u32| format!("0x{s:08x}");
    // (type, peer, IKE SA, SPI, other, reason)
    type Fields = (
        &'static str,
        String,
        Option<u64>,
        Option<u32>,
        Option<String>,
        Option<String>,
    );
    let f: Fields = match ev {
        A::Ike(e) => match e {
            I::AuthSucceeded { ike_sa, peer, .. } => (
                "ike-sa-established",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                None,
            ),
            I::SaInitFailed {
                ike_sa,
                peer,
                reason,
                ..
            } => (
                "ike-sa-init-failed",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                Some(reason.clone()),
            ),
            I::AuthFailed { ike_sa, peer, why } => (
                "ike-auth-failed",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                Some(why.to_string()),
            ),
            I::NoProposalChosen {
                ike_sa,
                peer,
                exchange,
                by_us,
            } => (
                "ike-no-proposal-chosen",
                peer.clone().unwrap_or_default(),
                ike_sa.map(|i| i.0),
                None,
                None,
                Some(format!(
                    "{exchange}: {}",
                    if *by_us { "by us" } else { "by the peer" }
                )),
            ),
            I::IkeRekeyed { old, new, peer } => (
                "ike-sa-rekeyed",
                peer.clone(),
                Some(old.0),
                None,
                Some(new.0.to_string()),
                None,
            ),
            I::IkeRekeyFailed {
                ike_sa,
                peer,
                notify,
            } => (
                "ike-sa-rekey-failed",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                Some(notify.to_string()),
            ),
            I::IkeSaDeleted {
                ike_sa,
                peer,
                reason,
            } => (
                "ike-sa-deleted",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                Some(reason.as_str().to_string()),
            ),
            I::PeerDead { ike_sa, peer } => (
                "ike-peer-dead",
                peer.clone(),
                Some(ike_sa.0),
                None,
                None,
                None,
            ),
            I::PeerAddressChanged {
                ike_sa,
                peer,
                remote,
                ..
            } => (
                "ike-peer-address-changed",
                peer.clone(),
                Some(ike_sa.0),
                None,
                Some(remote.to_string()),
                None,
            ),
            I::ChildRekeyed {
                ike_sa,
                peer,
                old_inbound_spi,
                new_inbound_spi,
                ..
            } => (
                "child-sa-rekeyed",
                peer.clone(),
                Some(ike_sa.0),
                Some(*old_inbound_spi),
                Some(hex(*new_inbound_spi)),
                None,
            ),
            I::RekeyCollision {
                ike_sa,
                peer,
                old_inbound_spi,
                won,
            } => (
                "child-sa-rekey-collision",
                peer.clone(),
                Some(ike_sa.0),
                Some(*old_inbound_spi),
                None,
                Some(if *won { "won" } else { "lost" }.to_string()),
            ),
            I::ChildFailed {
                ike_sa,
                peer,
                notify,
                rekey_of,
                by_us,
            } => (
                "child-sa-failed",
                peer.clone(),
                Some(ike_sa.0),
                *rekey_of,
                None,
                Some(format!(
                    "{notify} {}",
                    if *by_us { "sent" } else { "received" }
                )),
            ),
            I::ChildDeleted {
                ike_sa,
                peer,
                inbound_spi,
                outbound_spi,
                reason,
            } => (
                "child-sa-deleted",
                peer.clone(),
                Some(ike_sa.0),
                Some(*inbound_spi),
                Some(hex(*outbound_spi)),
                Some(reason.as_str().to_string()),
            ),
            _ => return None,
        },
        A::ChildInstalled {
            peer,
            ike_sa,
            inbound_spi,
            outbound_spi,
            ..
        } => (
            "child-sa-installed",
            peer.clone(),
            Some(ike_sa.0),
            Some(*inbound_spi),
            Some(hex(*outbound_spi)),
            None,
        ),
        A::InstallFailed {
            peer,
            inbound_spi,
            error,
        } => (
            "child-sa-install-failed",
            peer.clone(),
            None,
            Some(*inbound_spi),
            None,
            Some(error.clone()),
        ),
        _ => return None,
    };
    let (kind, peer, ike_sa, spi, other, reason) = f;
    // The log line without the key material `debug_keys` adds as further lines.
    let message = crate::ike_log::lines(ev)
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut r = EventRecord::new(time(), node, kind, message);
    r.peer = (!peer.is_empty()).then_some(peer);
    r.ike_sa = ike_sa;
    r.spi = spi;
    r.other = other;
    r.reason = reason;
    Some(r)
}

/// An entry of the `show events` ring.
#[derive(Debug)]
enum Entry {
    /// A record as written (or as it would have been).
    Record(Arc<EventRecord>),
    /// An invalid-SPI event the rate limit kept out of the file and away from followers:
    /// under a flood that is nearly every packet, so its record (timestamp, message, a few
    /// strings) is only made if `show events` asks for it ([`invalid_spi_record`] gives the
    /// same record then as now).
    Held(InvalidSpi),
}

/// The event outlets.
#[derive(Debug)]
pub struct EventSink {
    node: String,
    clock: WallClock,
    ring: VecDeque<Entry>,
    tx: broadcast::Sender<Arc<EventRecord>>,
    file: Option<BufWriter<File>>,
    limit: EventRateLimit,
    /// Log lines of IKE and recovery events.
    agent_lines: EventRateLimit,
}

impl EventSink {
    /// Outlets for `node`, appending JSON lines to `events_file` when given.
    pub fn new(node: &str, clock: WallClock, events_file: Option<&Path>) -> io::Result<Self> {
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG);
        Ok(Self {
            node: node.to_string(),
            clock,
            ring: VecDeque::with_capacity(RING),
            tx,
            file: events_file
                .map(|p| open_append(p).map(BufWriter::new))
                .transpose()?,
            limit: EventRateLimit::new(DEFAULT_EVENTS_PER_SECOND),
            agent_lines: EventRateLimit::new(AGENT_LINES_PER_SECOND),
        })
    }

    /// Sets the rate limit of the events file and followers (`log.events_per_second`,
    /// 0 = unlimited).
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.limit = EventRateLimit::new(per_second);
        self
    }

    /// Records kept out of the events file and away from followers by the rate limit.
    pub fn suppressed_total(&self) -> u64 {
        self.limit.total_held()
    }

    /// Handles one node event: log line if due, then ring, followers, file.
    pub fn node_event(&mut self, ev: &Event, log: &mut Logger) {
        if let Event::InvalidSpi(e) = ev {
            if !e.logged {
                // The flood path: no log line, and most often no room in the file either.
                let now = std::time::Instant::now();
                self.summarize(now);
                if self.limit.admit(now) {
                    let rec = invalid_spi_record(e, &self.clock, &self.node);
                    self.store(rec, true);
                } else {
                    self.keep(Entry::Held(e.clone()));
                }
                return;
            }
        }
        let (rec, print) = record_of(ev, &self.clock, &self.node);
        if print {
            log.line_at(&rec.time, &rec.message);
        }
        self.push(rec);
    }

    /// Stores the record of an IKE / SA event, if it has one ([`ike_record_of`]); the
    /// daemon logs those events itself.
    pub fn agent_event(&mut self, ev: &esplab_node::AgentEvent) {
        // The time is only formatted for events that have a record (not for the recovery
        // events an unknown-SPI flood makes per packet).
        let clock = &self.clock;
        let time = || clock.rfc3339(std::time::Instant::now());
        if let Some(rec) = ike_record_of(ev, time, &self.node) {
            self.push(rec);
        }
    }

    /// Logs an IKE, recovery or SA event of the agent (node events go to
    /// [`EventSink::node_event`]). IKE message and recovery lines can be driven by anyone who
    /// can send us datagrams, so they share a budget of [`AGENT_LINES_PER_SECOND`]; the rest
    /// are counted and summarised by [`EventSink::tick`].
    pub fn agent_log(&mut self, ev: &AgentEvent, log: &mut Logger) {
        let limited = matches!(ev, AgentEvent::Ike(_) | AgentEvent::Recovery(_));
        let now = std::time::Instant::now();
        if limited {
            self.summarize_lines(now, log);
        }
        if let AgentEvent::Recovery(_) = ev {
            if !self.agent_lines.would_admit(now) {
                // Its one line (`ike_log::lines`) would be held back: count it without
                // formatting it.
                let _ = self.agent_lines.admit(now);
                return;
            }
        }
        for l in crate::ike_log::lines(ev) {
            if !limited || self.agent_lines.admit(now) {
                log.line(&l);
            }
        }
    }

    fn summarize_lines(&mut self, now: std::time::Instant, log: &mut Logger) {
        if let Some(n) = self.agent_lines.take_summary(now) {
            log.line(&format!(
                "{n} IKE/recovery log lines suppressed in the last {} s (rate limit {} per second; show ike, show recovery and the counters have everything)",
                EVENTS_WINDOW.as_secs(),
                AGENT_LINES_PER_SECOND
            ));
        }
    }

    /// IKE and recovery log lines held back by the rate limit since start.
    pub fn agent_lines_suppressed(&self) -> u64 {
        self.agent_lines.total_held()
    }

    /// Stores a record (already logged or not meant to be): always in the ring; in the
    /// file and to followers when the rate limit admits it.
    pub fn push(&mut self, rec: EventRecord) {
        let now = std::time::Instant::now();
        self.summarize(now);
        let admitted = self.limit.admit(now);
        self.store(rec, admitted);
    }

    /// Writes the `events-suppressed` record of a finished window that held records back.
    /// Called on every push and, so the summary comes even when the flood has stopped,
    /// periodically by the daemon ([`EventSink::tick`]). True when it wrote one.
    fn summarize(&mut self, now: std::time::Instant) -> bool {
        let Some(n) = self.limit.take_summary(now) else {
            return false;
        };
        let mut r = EventRecord::new(
            self.clock.rfc3339(now),
            &self.node,
            "events-suppressed",
            format!(
                "{n} events not written to the events file or followers (rate limit {} per {} s)",
                self.limit.per_window,
                EVENTS_WINDOW.as_secs()
            ),
        );
        r.count = Some(n);
        r.window_secs = Some(EVENTS_WINDOW.as_secs());
        self.store(r, true);
        true
    }

    fn store(&mut self, rec: EventRecord, outward: bool) {
        if outward {
            if let Some(f) = &mut self.file {
                // An events file that cannot be written must not stop the datapath.
                if serde_json::to_writer(&mut *f, &rec).is_ok() {
                    let _ = f.write_all(b"\n");
                }
            }
        }
        let rec = Arc::new(rec);
        if outward && self.tx.receiver_count() > 0 {
            // Err only when nobody listens, checked just above.
            let _ = self.tx.send(Arc::clone(&rec));
        }
        self.keep(Entry::Record(rec));
    }

    /// Adds to the `show events` ring, dropping its oldest entry when full.
    fn keep(&mut self, e: Entry) {
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    /// Emits a pending `events-suppressed` summary (and the log lines' summary) once its
    /// window is over, and flushes the file when it did. Returns whether it wrote anything.
    pub fn tick(&mut self, now: std::time::Instant, log: &mut Logger) -> bool {
        self.summarize_lines(now, log);
        let wrote = self.summarize(now);
        if wrote {
            self.flush();
        }
        wrote
    }

    /// Pushes buffered file lines to the OS (after each batch, so a burst costs one write).
    pub fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    /// The recent events, oldest first.
    pub fn recent(&self) -> Vec<EventRecord> {
        self.ring
            .iter()
            .map(|e| match e {
                Entry::Record(r) => (**r).clone(),
                Entry::Held(e) => invalid_spi_record(e, &self.clock, &self.node),
            })
            .collect()
    }

    /// A live feed of the events pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }

    /// The wall clock events are stamped with.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esplab_esp::Family;
    use esplab_node::InvalidSpi;
    use std::time::{Duration, Instant};

    fn invalid(logged: bool) -> Event {
        Event::InvalidSpi(InvalidSpi {
            at: Instant::now(),
            spi: 0xc0de0001,
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            seq: 7,
            family: Family::V4,
            encap: Encap::Udp {
                sport: 4500,
                dport: 4500,
            },
            flow_label: 0,
            len: 120,
            logged,
        })
    }

    #[test]
    fn invalid_spi_record_has_the_audit_fields() {
        let (r, print) = record_of(&invalid(true), &WallClock::new(), "b");
        assert!(print);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["type"], "invalid-spi");
        assert_eq!(j["spi"], "0xc0de0001");
        assert_eq!(j["src"], "198.18.0.1");
        assert_eq!(j["dst"], "198.18.0.2");
        assert_eq!(j["seq"], 7);
        assert_eq!(j["family"], "ipv4");
        assert_eq!(j["encap"], "udp");
        assert_eq!(j["logged"], true);
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
        assert!(r.message.starts_with("%CRYPTO-4-RECVD_PKT_INV_SPI: "));
        let (_, print) = record_of(&invalid(false), &WallClock::new(), "b");
        assert!(!print);
    }

    #[test]
    fn ike_events_have_stable_types() {
        use esplab_ike::{DeleteReason, IkeEvent, IkeSaId};
        use esplab_node::AgentEvent;
        let id = IkeSaId(3);
        let peer = || "b".to_string();
        let cases: Vec<(AgentEvent, &str)> = vec![
            (
                AgentEvent::Ike(IkeEvent::IkeRekeyed {
                    old: id,
                    new: IkeSaId(4),
                    peer: peer(),
                }),
                "ike-sa-rekeyed",
            ),
            (
                AgentEvent::Ike(IkeEvent::IkeSaDeleted {
                    ike_sa: id,
                    peer: peer(),
                    reason: DeleteReason::Peer,
                }),
                "ike-sa-deleted",
            ),
            (
                AgentEvent::Ike(IkeEvent::PeerDead {
                    ike_sa: id,
                    peer: peer(),
                }),
                "ike-peer-dead",
            ),
            (
                AgentEvent::Ike(IkeEvent::AuthFailed {
                    ike_sa: id,
                    peer: peer(),
                    why: esplab_ike::AuthFailure::BadAuth,
                }),
                "ike-auth-failed",
            ),
            (
                AgentEvent::Ike(IkeEvent::ChildRekeyed {
                    ike_sa: id,
                    peer: peer(),
                    old_inbound_spi: 0xc0de0001,
                    new_inbound_spi: 0xc0de0002,
                    new_outbound_spi: 0xc0de0003,
                    initiator: true,
                }),
                "child-sa-rekeyed",
            ),
            (
                AgentEvent::Ike(IkeEvent::ChildDeleted {
                    ike_sa: id,
                    peer: peer(),
                    inbound_spi: 0xc0de0001,
                    outbound_spi: 0xc0de0003,
                    reason: DeleteReason::Rekeyed,
                }),
                "child-sa-deleted",
            ),
            (
                AgentEvent::ChildInstalled {
                    peer: peer(),
                    ike_sa: id,
                    inbound_spi: 0xc0de0001,
                    outbound_spi: 0xc0de0003,
                    suite: "aes128gcm16".into(),
                    local_ts: vec![],
                    remote_ts: vec![],
                    remote: "198.18.0.2:4500".parse().unwrap(),
                    active: true,
                    rekey_of: None,
                    uat: vec!["secret key line".into()],
                },
                "child-sa-installed",
            ),
        ];
        let mut s = EventSink::new("a", WallClock::new(), None).unwrap();
        for (ev, kind) in &cases {
            s.agent_event(ev);
            let r = s.recent().pop().unwrap();
            assert_eq!(r.kind, *kind);
            assert_eq!(r.peer.as_deref(), Some("b"));
            assert_eq!(r.ike_sa, Some(3));
            assert!(!r.message.is_empty() && !r.message.contains("secret"));
            let j = serde_json::to_value(&r).unwrap();
            assert_eq!(j["type"], *kind);
        }
        let all = s.recent();
        assert_eq!(all.len(), cases.len());
        assert_eq!(all[0].other.as_deref(), Some("4"));
        assert_eq!(all[1].reason.as_deref(), Some("peer"));
        assert_eq!(all[4].spi, Some(0xc0de0001));
        assert_eq!(all[4].other.as_deref(), Some("0xc0de0002"));
        assert_eq!(all[5].reason.as_deref(), Some("rekeyed"));
        // Per-message chatter has no record.
        s.agent_event(&AgentEvent::Ike(IkeEvent::CookieSent {
            remote: "198.18.0.2:500".parse().unwrap(),
        }));
        assert_eq!(s.recent().len(), cases.len());
    }

    #[test]
    fn ring_is_bounded_and_followers_see_new_events() {
        let mut s = EventSink::new("b", WallClock::new(), None).unwrap();
        let mut log = Logger::new("b", None).unwrap();
        let mut rx = s.subscribe();
        for _ in 0..RING + 5 {
            s.node_event(&invalid(false), &mut log);
        }
        assert_eq!(s.recent().len(), RING);
        assert_eq!(rx.try_recv().unwrap().kind, "invalid-spi");
        s.node_event(
            &Event::InvalidSpiSuppressed {
                at: Instant::now(),
                count: 4,
                window: Duration::from_secs(60),
            },
            &mut log,
        );
        assert_eq!(s.recent().last().unwrap().count, Some(4));
    }

    #[test]
    fn held_back_invalid_spi_events_show_the_same_records_as_written_ones() {
        let mut s = EventSink::new("b", WallClock::new(), None)
            .unwrap()
            .with_rate_limit(2);
        let mut log = Logger::new("b", None).unwrap();
        let evs: Vec<Event> = (0..5)
            .map(|i| match invalid(false) {
                Event::InvalidSpi(mut e) => {
                    e.spi = 0x100 + i;
                    e.at -= Duration::from_millis(u64::from(i) * 7);
                    Event::InvalidSpi(e)
                }
                _ => unreachable!(),
            })
            .collect();
        for e in &evs {
            s.node_event(e, &mut log);
        }
        // Two written, three held back (unless a window ended in between on a slow machine).
        assert!(s.suppressed_total() <= 3);
        let shown = s.recent();
        assert_eq!(shown.len(), 5);
        for (e, r) in evs.iter().zip(&shown) {
            let (want, _) = record_of(e, s.clock(), "b");
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::to_value(&want).unwrap()
            );
        }
    }

    #[test]
    fn recovery_lines_over_the_limit_are_counted_without_being_made() {
        let mut s = EventSink::new("b", WallClock::new(), None).unwrap();
        let mut log = Logger::new("b", None).unwrap();
        let ev = AgentEvent::Recovery(esplab_node::RecoveryEvent {
            at: Instant::now(),
            kind: esplab_node::RecoveryKind::InvalidSpiSeen,
            peer: None,
            src: Some("198.18.0.1".parse().unwrap()),
            spi: Some(1),
        });
        assert_eq!(crate::ike_log::lines(&ev).len(), 1, "one line each");
        let t0 = Instant::now();
        let n = u64::from(AGENT_LINES_PER_SECOND) * 3;
        for _ in 0..n {
            s.agent_log(&ev, &mut log);
        }
        // Every line beyond the budget of each window is held back and counted.
        let windows = 1 + t0.elapsed().as_secs() + 1;
        let held = s.agent_lines_suppressed();
        assert!(held >= n.saturating_sub(u64::from(AGENT_LINES_PER_SECOND) * windows));
        assert!(held <= n - u64::from(AGENT_LINES_PER_SECOND), "{held}");
        let mut l = EventRateLimit::new(1);
        assert!(l.would_admit(t0));
        assert!(l.admit(t0));
        assert!(!l.would_admit(t0));
        assert_eq!(l.total_held(), 0, "would_admit counts nothing");
        assert!(l.would_admit(t0 + EVENTS_WINDOW));
    }

    #[test]
    fn rate_limit_admits_per_window_and_reports_the_rest_once() {
        let t0 = Instant::now();
        let mut l = EventRateLimit::new(3);
        let admitted = (0..10).filter(|_| l.admit(t0)).count();
        assert_eq!(admitted, 3);
        // Not before the window is over.
        assert_eq!(l.take_summary(t0 + Duration::from_millis(999)), None);
        let t1 = t0 + EVENTS_WINDOW;
        assert_eq!(l.take_summary(t1), Some(7));
        assert_eq!(l.take_summary(t1), None, "reported once");
        // A new window admits again.
        assert!((0..3).all(|_| l.admit(t1)));
        assert!(!l.admit(t1));
        assert_eq!(l.total_held(), 8);
        // 0 = unlimited.
        let mut u = EventRateLimit::new(0);
        assert!((0..10_000).all(|_| u.admit(t0)));
        assert_eq!(u.take_summary(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn flood_of_events_is_bounded_in_file_and_followers_with_a_summary() {
        let dir = std::env::temp_dir().join(format!("esplab-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut s = EventSink::new("b", WallClock::new(), Some(&path))
            .unwrap()
            .with_rate_limit(50);
        let mut log = Logger::new("b", None).unwrap();
        let mut rx = s.subscribe();
        let t0 = Instant::now();
        for _ in 0..500 {
            s.node_event(&invalid(false), &mut log);
        }
        s.flush();
        // The ring keeps everything (bounded in size); file and followers got at most one
        // window's worth (the loop may straddle a window boundary on a slow machine).
        assert_eq!(s.recent().len(), 500);
        let held = s.suppressed_total();
        let lines = || std::fs::read_to_string(&path).unwrap();
        let written = lines().lines().count() as u64;
        assert_eq!(written + held, 500 + summaries(&lines()).1, "{held}");
        assert!(
            written <= 50 * (1 + t0.elapsed().as_secs() + 1) + 2,
            "{written}"
        );
        let mut followed = 0;
        while let Ok(r) = rx.try_recv() {
            assert!(r.kind == "invalid-spi" || r.kind == "events-suppressed");
            followed += 1;
        }
        assert_eq!(followed, written);
        // The summary of the held-back records comes after the window, without new events.
        assert!(s.tick(Instant::now() + EVENTS_WINDOW * 2, &mut log));
        let (count, n) = summaries(&lines());
        assert_eq!(
            count, held,
            "every held-back record is counted in a summary"
        );
        assert!(n >= 1);
        let last = rx.try_recv().unwrap();
        assert_eq!(last.kind, "events-suppressed");
        assert_eq!(last.window_secs, Some(1));
        assert!(
            !s.tick(Instant::now() + EVENTS_WINDOW * 3, &mut log),
            "nothing more to report"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ike_and_recovery_log_lines_are_capped_lifecycle_lines_are_not() {
        let dir = std::env::temp_dir().join(format!("esplab-agentlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.log");
        let mut s = EventSink::new("b", WallClock::new(), None).unwrap();
        let mut log = Logger::new("b", Some(&path)).unwrap();
        let cookie = AgentEvent::Ike(esplab_ike::IkeEvent::CookieSent {
            remote: "198.18.1.3:500".parse().unwrap(),
        });
        let t0 = Instant::now();
        for _ in 0..1000 {
            s.agent_log(&cookie, &mut log);
        }
        let active = AgentEvent::ChildActivated {
            peer: "p".into(),
            inbound_spi: 1,
            outbound_spi: 2,
        };
        for _ in 0..3 {
            s.agent_log(&active, &mut log);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let cookies = text.lines().filter(|l| l.contains("CookieSent")).count() as u64;
        let windows = 1 + t0.elapsed().as_secs() + 1;
        assert!(
            cookies <= u64::from(AGENT_LINES_PER_SECOND) * windows,
            "{cookies}"
        );
        assert_eq!(cookies + s.agent_lines_suppressed(), 1000);
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("outbound active"))
                .count(),
            3,
            "lifecycle lines are never held back"
        );
        // The summary comes once the window is over, without new events.
        s.tick(Instant::now() + EVENTS_WINDOW * 2, &mut log);
        let text = std::fs::read_to_string(&path).unwrap();
        let summarized: u64 = text
            .lines()
            .filter_map(|l| {
                let (_, m) = l.split_once("esplab[b]: ")?;
                m.split_once(" IKE/recovery log lines suppressed")
                    .and_then(|(n, _)| n.parse::<u64>().ok())
            })
            .sum();
        assert_eq!(summarized, s.agent_lines_suppressed());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// (sum of `count` over `events-suppressed` lines, number of such lines).
    fn summaries(text: &str) -> (u64, u64) {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "events-suppressed")
            .fold((0, 0), |(c, n), v| {
                (c + v["count"].as_u64().unwrap(), n + 1)
            })
    }
}
