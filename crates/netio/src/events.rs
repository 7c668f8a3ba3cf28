//! Where the node's events go: the log, a bounded ring for `show events`, live followers and
//! the JSON-lines events file.
//!
//! RFC 4303 §3.4.2: an invalid-SPI packet is an auditable event whose record SHOULD hold the
//! SPI, the date and time received, the source and destination addresses and the sequence
//! number; every `invalid-spi` record here carries all of them.

use crate::clock::WallClock;
use crate::control::EventRecord;
use crate::log::{open_append, Logger};
use esplab_esp::Encap;
use esplab_node::{invalid_spi_log_line, suppressed_log_line, Event};
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

/// The record of a node event, and whether it deserves a log line.
pub fn record_of(ev: &Event, clock: &WallClock, node: &str) -> (EventRecord, bool) {
    match ev {
        Event::InvalidSpi(e) => {
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
            (r, e.logged)
        }
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

/// The event outlets.
#[derive(Debug)]
pub struct EventSink {
    node: String,
    clock: WallClock,
    ring: VecDeque<Arc<EventRecord>>,
    tx: broadcast::Sender<Arc<EventRecord>>,
    file: Option<BufWriter<File>>,
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
        })
    }

    /// Handles one node event: log line if due, then ring, followers, file.
    pub fn node_event(&mut self, ev: &Event, log: &mut Logger) {
        let (rec, print) = record_of(ev, &self.clock, &self.node);
        if print {
            log.line_at(&rec.time, &rec.message);
        }
        self.push(rec);
    }

    /// Stores a record (already logged or not meant to be).
    pub fn push(&mut self, rec: EventRecord) {
        if let Some(f) = &mut self.file {
            // An events file that cannot be written must not stop the datapath.
            if serde_json::to_writer(&mut *f, &rec).is_ok() {
                let _ = f.write_all(b"\n");
            }
        }
        let rec = Arc::new(rec);
        if self.tx.receiver_count() > 0 {
            // Err only when nobody listens, checked just above.
            let _ = self.tx.send(Arc::clone(&rec));
        }
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(rec);
    }

    /// Pushes buffered file lines to the OS (after each batch, so a burst costs one write).
    pub fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    /// The recent events, oldest first.
    pub fn recent(&self) -> Vec<EventRecord> {
        self.ring.iter().map(|r| (**r).clone()).collect()
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
}
