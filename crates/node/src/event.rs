//! Typed events from the datapath to the control side, through a bounded queue.
//!
//! The datapath never waits on the control plane: when the queue is full the event is dropped
//! and counted (`events_dropped`), the packet counters stay exact either way.

use esplab_esp::{Encap, Family};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

/// An ESP packet arrived for an SPI we hold no SA for: the RFC 4303 §3.4.2 auditable event
/// ("the audit log entry for this event SHOULD include the SPI value, date/time received,
/// Source Address, Destination Address, Sequence Number, and (in IPv6) the Flow ID").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpi {
    /// When it arrived.
    pub at: Instant,
    /// The SPI on the wire.
    pub spi: u32,
    /// Outer source address.
    pub src: IpAddr,
    /// Outer destination address.
    pub dst: IpAddr,
    /// Low 32 bits of the sequence number (as received; unauthenticated).
    pub seq: u32,
    /// Underlay family.
    pub family: Family,
    /// Raw ESP or UDP-encapsulated (RFC 3948); detection is identical for both.
    pub encap: Encap,
    /// IPv6 flow label (0 for IPv4 or when unknown).
    pub flow_label: u32,
    /// ESP packet length.
    pub len: usize,
    /// Whether the rate limiter let this one print a log line.
    pub logged: bool,
}

/// Everything the datapath reports to the control side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A packet for an unknown SPI.
    InvalidSpi(InvalidSpi),
    /// A packet for an SPI retired less than the grace period ago (late packet, not a
    /// desync): counted, never logged, one event per packet is not useful so only the first
    /// of a burst is reported by the caller's choice.
    RetiredSpi {
        /// When.
        at: Instant,
        /// The SPI.
        spi: u32,
        /// Outer source.
        src: IpAddr,
    },
    /// Invalid-SPI log lines suppressed by the rate limits during the last global window.
    InvalidSpiSuppressed {
        /// When the summary was made.
        at: Instant,
        /// Lines suppressed.
        count: u64,
        /// The window they were counted over.
        window: std::time::Duration,
    },
    /// An outbound SA reached the end of its sequence space and refused a packet.
    SequenceExhausted {
        /// When.
        at: Instant,
        /// The outbound SPI.
        spi: u32,
    },
}

/// Bounded FIFO of events; full ⇒ drop and count.
#[derive(Debug)]
pub struct EventQueue {
    q: VecDeque<Event>,
    cap: usize,
    dropped: u64,
}

impl EventQueue {
    /// A queue holding at most `cap` events.
    pub fn new(cap: usize) -> Self {
        Self {
            q: VecDeque::with_capacity(cap),
            cap,
            dropped: 0,
        }
    }

    /// Enqueues `e`, or drops it if the queue is full. Returns whether it was queued.
    pub fn push(&mut self, e: Event) -> bool {
        if self.q.len() >= self.cap {
            self.dropped += 1;
            return false;
        }
        self.q.push_back(e);
        true
    }

    /// Enqueues the event `make` builds, or drops it (and counts it) if the queue is full,
    /// in which case `make` is not called: a flood against a full queue does not pay for
    /// building events nobody will see. Returns whether it was queued.
    #[inline]
    pub fn push_with(&mut self, make: impl FnOnce() -> Event) -> bool {
        if self.q.len() >= self.cap {
            self.dropped += 1;
            return false;
        }
        self.q.push_back(make());
        true
    }

    /// Whether the next push would be dropped. With [`count_dropped`](Self::count_dropped),
    /// lets a caller test for room before it even gathers what the event holds (the
    /// invalid-SPI drop path: a flood meets a full queue on every packet).
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.q.len() >= self.cap
    }

    /// Counts one event dropped for want of room, as a refused push does.
    #[inline(always)]
    pub fn count_dropped(&mut self) {
        self.dropped += 1;
    }

    /// Takes the oldest event.
    pub fn pop(&mut self) -> Option<Event> {
        self.q.pop_front()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The vendor-format log line for an invalid SPI (`prot=50` also for UDP-encapsulated ESP:
/// the protocol is ESP either way).
pub fn invalid_spi_log_line(e: &InvalidSpi) -> String {
    format!(
        "%CRYPTO-4-RECVD_PKT_INV_SPI: decaps: rec'd IPSEC packet has invalid spi for destaddr={}, prot=50, spi=0x{:08X}({}), srcaddr={}",
        e.dst, e.spi, e.spi, e.src
    )
}

/// The periodic summary of suppressed invalid-SPI lines.
pub fn suppressed_log_line(n: u64, window_secs: u64) -> String {
    format!(
        "%CRYPTO-4-RECVD_PKT_INV_SPI: {n} messages suppressed in the last {window_secs} s (rate limit)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_line_shape() {
        let e = InvalidSpi {
            at: Instant::now(),
            spi: 0xB761863E,
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            seq: 7,
            family: Family::V4,
            encap: Encap::Raw,
            flow_label: 0,
            len: 100,
            logged: true,
        };
        assert_eq!(
            invalid_spi_log_line(&e),
            "%CRYPTO-4-RECVD_PKT_INV_SPI: decaps: rec'd IPSEC packet has invalid spi for destaddr=198.18.0.2, prot=50, spi=0xB761863E(3076621886), srcaddr=198.18.0.1"
        );
    }

    #[test]
    fn queue_is_bounded() {
        let mut q = EventQueue::new(2);
        let e = Event::SequenceExhausted {
            at: Instant::now(),
            spi: 1,
        };
        assert!(q.push(e.clone()));
        assert!(q.push(e.clone()));
        assert!(!q.push(e.clone()));
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped(), 1);
        q.pop();
        assert!(q.push(e.clone()));
        // push_with: same bound and count, and the event is not built when full.
        assert!(!q.push_with(|| unreachable!("built for a full queue")));
        assert_eq!(q.dropped(), 2);
        q.pop();
        assert!(q.push_with(|| e.clone()));
        assert_eq!((q.len(), q.dropped()), (2, 2));
        assert_eq!(q.pop(), Some(e.clone()));
        // is_full / count_dropped: the same bound and count as a refused push.
        assert!(!q.is_full());
        assert!(q.push(e.clone()));
        assert!(q.is_full());
        q.count_dropped();
        assert_eq!((q.len(), q.dropped()), (2, 3));
        q.pop();
        assert!(!q.is_full());
    }
}
