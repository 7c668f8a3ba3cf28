//! The outbound (TUN → ESP) half of a node: the policies that pick an outbound SA for an
//! inner packet, and the SAs themselves.
//!
//! The node owns an [`OutPlane`] and encrypts through it on its own thread
//! ([`Node::outbound`](crate::Node::outbound)). A daemon that gives the TUN → ESP direction
//! a thread of its own calls [`Node::split_tx`](crate::Node::split_tx) once and hands the
//! returned [`TxHandle`] to that thread. From then on the node publishes a copy of its
//! plane after every change (installs, removals, rekeys, NAT following: control-plane
//! events, not per packet) and the handle picks the new copy up before its next packet.
//! What the two threads share is immutable except for single-writer counters and the
//! SAs' sequence counters, which are atomic (RFC 4303 §3.3.3: a number is never reused,
//! whichever thread sends). No lock is taken per packet.

use crate::counters::{Counters, Dir};
use crate::event::Event;
use crate::node::{covers, family_of, inner_addrs, Outbound, UnderlayEncap};
use arc_swap::ArcSwap;
use esplab_esp::wire;
use esplab_esp::{DropReason, Family, OutboundSa};
use esplab_sad::TrafficSelector;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Adds one to a counter that only one thread writes (a plain load and store: no locked
/// instruction on the packet path). Readers on other threads may see it a little late.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// An outbound SA and its statistics, shared by the node and its sending thread.
#[derive(Debug)]
pub(crate) struct OutSa {
    pub(crate) sa: OutboundSa,
    pub(crate) created: Instant,
    /// Nanoseconds from `created` to the last packet sent, plus one (0: none yet).
    last: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    /// What `packets`/`bytes` were at the last `clear counters` (written by the control
    /// side only, so a clear never races with the sender's increments).
    base_packets: AtomicU64,
    base_bytes: AtomicU64,
    /// Set once the "sequence numbers exhausted" event for this SA reached a queue: one
    /// event per SA, not one per refused packet (each is logged).
    exhaustion_reported: AtomicBool,
}

impl OutSa {
    pub(crate) fn new(sa: OutboundSa, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            sa,
            created: now,
            last: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            base_packets: AtomicU64::new(0),
            base_bytes: AtomicU64::new(0),
            exhaustion_reported: AtomicBool::new(false),
        })
    }

    /// Records that the exhaustion event is queued (see [`OutPlane::outbound`]).
    pub(crate) fn exhaustion_reported(&self) {
        self.exhaustion_reported.store(true, Relaxed);
    }

    fn sent(&self, now: Instant, bytes: u64) {
        bump(&self.packets, 1);
        bump(&self.bytes, bytes);
        let ns = now.saturating_duration_since(self.created).as_nanos();
        self.last
            .store(u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1, Relaxed);
    }

    pub(crate) fn packets(&self) -> u64 {
        self.packets
            .load(Relaxed)
            .wrapping_sub(self.base_packets.load(Relaxed))
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
            .load(Relaxed)
            .wrapping_sub(self.base_bytes.load(Relaxed))
    }

    pub(crate) fn last(&self) -> Option<Instant> {
        match self.last.load(Relaxed) {
            0 => None,
            n => self.created.checked_add(Duration::from_nanos(n - 1)),
        }
    }

    pub(crate) fn clear(&self) {
        self.base_packets.store(self.packets.load(Relaxed), Relaxed);
        self.base_bytes.store(self.bytes.load(Relaxed), Relaxed);
    }
}

/// The outbound half of a negotiated (IKE) CHILD SA pair. Several may exist per peer
/// (old and new pair during a rekey); traffic takes the newest active one whose selectors
/// match.
#[derive(Debug, Clone)]
pub(crate) struct ChildOut {
    pub(crate) peer: usize,
    pub(crate) inbound_spi: u32,
    pub(crate) local_ts: Vec<TrafficSelector>,
    pub(crate) remote_ts: Vec<TrafficSelector>,
    pub(crate) dst: IpAddr,
    pub(crate) port: u16,
    pub(crate) encap: UnderlayEncap,
    pub(crate) active: bool,
    pub(crate) out: Arc<OutSa>,
}

/// A configured peer's policy and its manual outbound SA, if any.
#[derive(Debug, Clone)]
pub(crate) struct PeerOut {
    pub(crate) local_ts: Vec<TrafficSelector>,
    pub(crate) remote_ts: Vec<TrafficSelector>,
    pub(crate) dst: IpAddr,
    pub(crate) port: u16,
    pub(crate) encap: UnderlayEncap,
    pub(crate) sa: Option<Arc<OutSa>>,
}

/// Everything an inner packet's way out depends on.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutPlane {
    /// Negotiated pairs, oldest first. Behind `Arc`s so that publishing a plane to the
    /// sending thread copies pointers, not every pair's selectors.
    pub(crate) children: Vec<Arc<ChildOut>>,
    /// Configured peers, by node peer index.
    pub(crate) peers: Vec<PeerOut>,
}

/// Where outbound verdicts are counted: the node's own counters, or the shared ones of a
/// sending thread.
pub(crate) trait CountOut {
    fn sent(&mut self, bytes: u64);
    fn dropped(&mut self, reason: DropReason, family: Family);
}

impl CountOut for Counters {
    fn sent(&mut self, bytes: u64) {
        self.out_packets += 1;
        self.out_bytes += bytes;
    }
    fn dropped(&mut self, reason: DropReason, family: Family) {
        self.drop(Dir::Out, reason, family);
    }
}

impl OutPlane {
    /// Encrypts the inner packet at `buf[payload]` in place on the SA its selectors pick.
    /// Also returns an SA whose sequence numbers ran out and whose event has not been
    /// queued yet: the caller raises it and, if the queue took it, calls
    /// [`OutSa::exhaustion_reported`] (a full queue leaves it for the next packet).
    pub(crate) fn outbound(
        &self,
        counters: &mut impl CountOut,
        now: Instant,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> (Outbound, Option<&OutSa>) {
        let Some((src, dst)) = inner_addrs(&buf[payload.clone()]) else {
            counters.dropped(DropReason::NotEsp, Family::V4);
            return (Outbound::Drop(DropReason::NotEsp), None);
        };
        let fam = family_of(dst);
        let nh = match fam {
            Family::V4 => wire::NEXT_HEADER_IPV4,
            Family::V6 => wire::NEXT_HEADER_IPV6,
        };
        // Negotiated CHILD SAs first, newest first (after a rekey the new pair wins);
        // then the manual per-peer SAs. Remote selectors are tested first: they tell peers
        // apart (a hub's local ones are all alike), so a miss costs one test instead of two.
        let route = self
            .children
            .iter()
            .rev()
            .find(|c| c.active && covers(&c.remote_ts, dst) && covers(&c.local_ts, src))
            .map(|c| (&c.out, c.dst, c.port, c.encap))
            .or_else(|| {
                let p = self
                    .peers
                    .iter()
                    .find(|p| covers(&p.remote_ts, dst) && covers(&p.local_ts, src))?;
                Some((p.sa.as_ref()?, p.dst, p.port, p.encap))
            });
        let Some((s, out_dst, out_port, out_encap)) = route else {
            counters.dropped(DropReason::NoOutboundSa, fam);
            return (Outbound::Drop(DropReason::NoOutboundSa), None);
        };
        let n = payload.len() as u64;
        match s.sa.encap_slice(buf, payload, nh, None) {
            Ok(e) => {
                s.sent(now, n);
                counters.sent(n);
                let v = Outbound::Send {
                    esp: e.esp,
                    dst: out_dst,
                    port: out_port,
                    encap: out_encap,
                };
                (v, None)
            }
            Err(e) => {
                let r = e.reason();
                counters.dropped(r, fam);
                let exhausted = (r == DropReason::SequenceExhausted
                    && !s.exhaustion_reported.load(Relaxed))
                .then_some(&**s);
                (Outbound::Drop(r), exhausted)
            }
        }
    }
}

/// The sending thread's counters, read by the node for `show counters`.
#[derive(Debug)]
struct TxCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: [[AtomicU64; 2]; DropReason::ALL.len()],
    /// Events the node's queue had no room for.
    events_lost: AtomicU64,
}

impl TxCounters {
    fn new() -> Self {
        Self {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            events_lost: AtomicU64::new(0),
        }
    }

    /// A snapshot as node counters (outbound fields only).
    fn snapshot(&self) -> Counters {
        let mut c = Counters::default();
        c.out_packets = self.packets.load(Relaxed);
        c.out_bytes = self.bytes.load(Relaxed);
        c.events_dropped = self.events_lost.load(Relaxed);
        for r in DropReason::ALL {
            for (fi, f) in [Family::V4, Family::V6].into_iter().enumerate() {
                c.add_drops(Dir::Out, r, f, self.drops[r.index()][fi].load(Relaxed));
            }
        }
        c
    }
}

/// What the node and its sending thread share.
#[derive(Debug)]
pub(crate) struct TxShared {
    /// The current plane; replaced whole on every change.
    plane: ArcSwap<OutPlane>,
    /// Bumped after each replacement: the sender compares it per packet (one load) and
    /// loads the plane only when it moved.
    generation: AtomicU64,
    counters: TxCounters,
}

/// The node's side of a split: publishes planes, reads the sender's counters and events.
#[derive(Debug)]
pub(crate) struct TxPublisher {
    shared: Arc<TxShared>,
    events: Receiver<Event>,
    /// The sender's counters at the last `clear counters`.
    base: Counters,
}

/// Events a sending thread can raise before the node collects them (sequence numbers
/// exhausted: one per SA, then the SA is rekeyed or removed; a full queue defers it).
const TX_EVENTS: usize = 64;

impl TxPublisher {
    pub(crate) fn new(plane: &OutPlane) -> (Self, TxHandle) {
        let shared = Arc::new(TxShared {
            plane: ArcSwap::from_pointee(plane.clone()),
            generation: AtomicU64::new(0),
            counters: TxCounters::new(),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(TX_EVENTS);
        let handle = TxHandle {
            plane: Arc::new(plane.clone()),
            generation: 0,
            shared: shared.clone(),
            events: tx,
        };
        let p = Self {
            shared,
            events: rx,
            base: Counters::default(),
        };
        (p, handle)
    }

    /// Makes `plane` the one the sender uses from its next packet on.
    pub(crate) fn publish(&self, plane: &OutPlane) {
        self.shared.plane.store(Arc::new(plane.clone()));
        self.shared.generation.fetch_add(1, Release);
    }

    /// How many planes were published (tests: a bulk change publishes once).
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Acquire)
    }

    /// The sender's counters since the last clear.
    pub(crate) fn counters(&self) -> Counters {
        self.shared.counters.snapshot().minus(&self.base)
    }

    pub(crate) fn clear_counters(&mut self) {
        self.base = self.shared.counters.snapshot();
    }

    pub(crate) fn poll_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

/// The sending thread's access to a node's outbound half (see the module docs). Made by
/// [`Node::split_tx`](crate::Node::split_tx).
#[derive(Debug)]
pub struct TxHandle {
    plane: Arc<OutPlane>,
    generation: u64,
    shared: Arc<TxShared>,
    events: SyncSender<Event>,
}

impl CountOut for &TxCounters {
    fn sent(&mut self, bytes: u64) {
        bump(&self.packets, 1);
        bump(&self.bytes, bytes);
    }
    fn dropped(&mut self, reason: DropReason, family: Family) {
        let fi = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        bump(&self.drops[reason.index()][fi], 1);
    }
}

impl TxHandle {
    /// [`Node::outbound`](crate::Node::outbound) on the sending thread: the same
    /// policies, SAs, counters and events, through the node's latest published plane.
    pub fn outbound(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound {
        self.refresh();
        let mut c = &self.shared.counters;
        let (v, exhausted) = self.plane.outbound(&mut c, now, buf, payload);
        if let Some(s) = exhausted {
            let spi = s.sa.spi();
            match self
                .events
                .try_send(Event::SequenceExhausted { at: now, spi })
            {
                Ok(()) => s.exhaustion_reported(),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    bump(&self.shared.counters.events_lost, 1);
                }
            }
        }
        v
    }

    /// Picks up the node's latest plane if it changed (one load when it did not). The
    /// sending thread also calls it when idle, so that the SAs (and keys) the node removed
    /// are released without waiting for the next packet.
    pub fn refresh(&mut self) {
        let g = self.shared.generation.load(Acquire);
        if g != self.generation {
            self.plane = self.shared.plane.load_full();
            self.generation = g;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node::HEADROOM;
    use esplab_esp::{Algorithm, SaParams};

    fn peer(sa: Option<Arc<OutSa>>) -> PeerOut {
        PeerOut {
            local_ts: vec!["198.19.1.0/24".parse().unwrap()],
            remote_ts: vec!["198.19.2.0/24".parse().unwrap()],
            dst: "198.18.0.2".parse().unwrap(),
            port: 4500,
            encap: UnderlayEncap::Udp,
            sa,
        }
    }

    /// A 40-byte IPv4 packet 198.19.1.1 -> 198.19.2.1 at HEADROOM, with room behind.
    pub(crate) fn packet() -> Vec<u8> {
        let mut b = vec![0u8; HEADROOM + 40 + 64];
        let p = &mut b[HEADROOM..HEADROOM + 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[12..16].copy_from_slice(&[198, 19, 1, 1]);
        p[16..20].copy_from_slice(&[198, 19, 2, 1]);
        b
    }

    /// The handle sees what the node publishes, counts where the node reads, and hands
    /// the "sequence numbers exhausted" event over (RFC 4303 §3.3.3: never cycle).
    #[test]
    fn handle_follows_published_planes_counts_and_raises_exhaustion() {
        let now = Instant::now();
        let mut sa =
            OutboundSa::new(&SaParams::new(0x1000, Algorithm::AesGcm128, &[7; 20], &[])).unwrap();
        sa.set_next_seq(u32::MAX as u64);
        let mut plane = OutPlane {
            children: vec![],
            peers: vec![peer(Some(OutSa::new(sa, now)))],
        };
        let (mut publisher, mut h) = TxPublisher::new(&plane);
        let mut b = packet();
        assert!(matches!(
            h.outbound(now, &mut b, HEADROOM..HEADROOM + 40),
            Outbound::Send { .. }
        ));
        // A full event queue: the refused packet is counted, the event waits for the next.
        let filler = Event::SequenceExhausted { at: now, spi: 1 };
        while h.events.try_send(filler.clone()).is_ok() {}
        let mut b = packet();
        assert_eq!(
            h.outbound(now, &mut b, HEADROOM..HEADROOM + 40),
            Outbound::Drop(DropReason::SequenceExhausted)
        );
        assert_eq!(publisher.counters().events_dropped, 1);
        while publisher.poll_event().is_some() {}
        // Then one event for the SA, however many packets it refuses (each is logged).
        for _ in 0..100 {
            let mut b = packet();
            assert_eq!(
                h.outbound(now, &mut b, HEADROOM..HEADROOM + 40),
                Outbound::Drop(DropReason::SequenceExhausted)
            );
        }
        assert!(matches!(
            publisher.poll_event(),
            Some(Event::SequenceExhausted { spi: 0x1000, .. })
        ));
        assert!(publisher.poll_event().is_none());
        assert_eq!(publisher.counters().events_dropped, 1);
        // The SA goes away: the very next packet has no SA.
        plane.peers[0].sa = None;
        publisher.publish(&plane);
        let mut b = packet();
        assert_eq!(
            h.outbound(now, &mut b, HEADROOM..HEADROOM + 40),
            Outbound::Drop(DropReason::NoOutboundSa)
        );
        let c = publisher.counters();
        assert_eq!((c.out_packets, c.out_bytes), (1, 40));
        assert_eq!(
            c.drops(Dir::Out, DropReason::SequenceExhausted, Family::V4),
            101
        );
        assert_eq!(c.drops(Dir::Out, DropReason::NoOutboundSa, Family::V4), 1);
        publisher.clear_counters();
        assert_eq!(publisher.counters().total_drops(Dir::Out), 0);
        let mut b = packet();
        let _ = h.outbound(now, &mut b, HEADROOM..HEADROOM + 40);
        assert_eq!(publisher.counters().total_drops(Dir::Out), 1);
    }

    /// An idle sender lets go of the SAs the node removed (their keys with them) when it
    /// refreshes, without waiting for a packet.
    #[test]
    fn refresh_releases_removed_sas() {
        let now = Instant::now();
        let sa = OutboundSa::new(&SaParams::new(0x1000, Algorithm::AesGcm128, &[7; 20], &[]));
        let sa = OutSa::new(sa.unwrap(), now);
        let mut plane = OutPlane {
            children: vec![],
            peers: vec![peer(Some(sa.clone()))],
        };
        let (publisher, mut h) = TxPublisher::new(&plane);
        plane.peers[0].sa = None;
        publisher.publish(&plane);
        assert_eq!(Arc::strong_count(&sa), 2, "ours and the handle's");
        h.refresh();
        assert_eq!(Arc::strong_count(&sa), 1);
    }

    #[test]
    fn shared_parts_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<OutSa>();
        check::<TxShared>();
        fn send<T: Send>() {}
        send::<TxHandle>();
    }
}
