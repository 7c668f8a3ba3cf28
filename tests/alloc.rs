//! The per-packet hot path allocates nothing: steady-state encap and decap, for every
//! algorithm and backend, make zero heap allocations once the SAs and the buffer exist.
//!
//! This file is its own test binary, so it can install a counting global allocator. The count
//! is per thread: the test harness's own threads (output capture, the "running for over 60 s"
//! watchdog) allocate whenever they like, and must not be charged to the datapath.

use bytes::{BufMut, BytesMut};
use esplab_esp::{Algorithm, Backend, InboundSa, OutboundSa, ReplayWindow, SaParams};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts every allocation (including zeroed allocations and reallocations) and forwards
/// it to the system allocator.
struct CountingAlloc;

thread_local! {
    // `const` initialisation: touching it never allocates (a lazily initialised thread local
    // could recurse into the allocator).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one allocation on the calling thread. `try_with` because the allocator also runs
/// while a thread's locals are being torn down.
fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract (layout, pointer provenance, alignment) is upheld by `System`; the
// only addition is a thread-local counter increment, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's: `layout` has non-zero size.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator (i.e. by `System`) with `layout`,
        // and `new_size` is non-zero, as our caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made so far by the calling thread.
fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const PACKETS: usize = 1000;
/// Largest payload sent; the buffer is sized for it once, outside the measured loop.
const MAX_PAYLOAD: usize = 1500;
/// Headroom left in front of the ESP header for an outer IPv6 + UDP header.
const OUTER: usize = 48;

#[test]
fn steady_state_encap_and_decap_do_not_allocate() {
    // The counter works: a heap allocation in this thread is seen.
    let before = allocations();
    let probe = std::hint::black_box(vec![1u8; 64]);
    assert!(
        allocations() > before,
        "the counting allocator is not installed"
    );
    drop(probe);

    let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
    let mut combos = 0;
    for alg in Algorithm::ALL {
        for backend in Backend::ALL {
            for esn in [false, true] {
                let ctx = format!("{} [{}] esn={esn}", alg.name(), backend.name());
                // --- Setup (allocates: keys, key schedules, replay bitmap, buffer).
                let mut params = SaParams::new(
                    0xc0de_a110,
                    alg,
                    &vec![0x42; alg.enc_key_len()],
                    &vec![0x24; alg.integ_key_len()],
                );
                params.backend = backend;
                params.esn = esn;
                let mut tx = OutboundSa::new(&params).unwrap();
                let mut rx = InboundSa::new(&params).unwrap();
                if esn {
                    // Cross a high-half boundary inside the measured loop.
                    let start = (1u64 << 32) - (PACKETS as u64 / 2);
                    tx.set_next_seq(start);
                    rx.set_replay(ReplayWindow::with_initial_high(64, true, 0).unwrap());
                }
                let hdr = tx.header_len();
                let mut buf =
                    BytesMut::with_capacity(OUTER + hdr + MAX_PAYLOAD + tx.max_trailer_len());
                let capacity = buf.capacity();
                // One packet outside the measurement, so lazy one-time initialisation (CPU
                // feature detection and the like) is not counted as per-packet work.
                one_packet(&mut tx, &mut rx, &mut buf, hdr, &payload[..100], &ctx);

                // --- Measured: PACKETS packets of varying sizes through encap and decap.
                let start = allocations();
                for i in 0..PACKETS {
                    let len = (i * 37) % (MAX_PAYLOAD + 1);
                    one_packet(&mut tx, &mut rx, &mut buf, hdr, &payload[..len], &ctx);
                }
                let delta = allocations() - start;
                assert_eq!(delta, 0, "{ctx}: {delta} allocations in {PACKETS} packets");
                assert_eq!(buf.capacity(), capacity, "{ctx}: buffer grew");
                assert_eq!(tx.last_seq(), rx.replay().right_edge(), "{ctx}");
                combos += 1;
            }
        }
    }
    assert_eq!(combos, 16);
}

/// One packet: reuse the buffer, encap with the BytesMut API, decap in place, check.
/// Panics (which allocate) only on failure.
fn one_packet(
    tx: &mut OutboundSa,
    rx: &mut InboundSa,
    buf: &mut BytesMut,
    hdr: usize,
    payload: &[u8],
    ctx: &str,
) {
    buf.clear();
    buf.put_bytes(0, OUTER + hdr);
    buf.put_slice(payload);
    let e = match tx.encap(buf, OUTER + hdr, 4, None) {
        Ok(e) => e,
        Err(err) => panic!("{ctx}: encap: {err}"),
    };
    let d = match rx.decap(&mut buf[e.esp.clone()]) {
        Ok(d) => d,
        Err(err) => panic!("{ctx}: decap: {err}"),
    };
    assert!(d.seq == e.seq && d.next_header == 4, "{ctx}: decap result");
    assert!(&buf[e.esp][d.payload] == payload, "{ctx}: payload");
}

// ---------------------------------------------------------------------------------------
// The same promise through the real datapath, `esplab_node::Node`: the SAD lookup (single
// and batched), the per-SA slab, the selector check, the counters, the invalid-SPI rate
// limiter and flow table, and the event queue, for delivered packets and for every common
// drop.
//
// What may allocate once, and is therefore done before counting starts:
// - building the nodes and SAs (keys, key schedules, replay bitmaps, the SAD's tables, the
//   event queue's ring, which `EventQueue::new` sizes to its capacity up front, and the
//   rate limiter's flow table, created for `2 * max_flows` flows, up to 32Ki);
// - the first use of lazily initialised process-wide state (CPU feature detection); the
//   setup's encapsulations already pay for it.
// Each case still runs a warm-up before counting, so a future one-time initialisation on
// the first packet would not be charged as per-packet work; today none exists (with the
// warm-ups set to zero, no allocation was seen on any first packet when this was written).
// A flow table that fills up (it once grew then, at a seed-dependent moment) has its own
// test below, `node_invalid_spi_full_flow_table_allocates_at_most_once` (now: never).
// Not per packet and not counted: `Node::handle_timeout`, the once-a-second periodic work
// (when a retired SPI's grace period ends, its purge publishes a new SAD snapshot, which
// allocates); it is called between packets on the virtual clock as the daemon does,
// outside the counted regions. (In these runs nothing is due and it allocated nothing.)
// ---------------------------------------------------------------------------------------

use esplab_esp::{DropReason, Encap, Family};
use esplab_node::{
    Agent, AgentConfig, Dir, Event, Inbound, LogLimits, Node, NodeConfig, Outbound, PeerConfig,
    UdpDatagram, UnderlayEncap, BATCH, HEADROOM, TAILROOM,
};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Packets counted per case (the issue asks for at least 1000).
const NODE_PACKETS: usize = 1000;
/// Packets run through each case before counting starts.
const NODE_WARMUP: usize = 100;
/// Largest inner packet sent through a node.
const MAX_INNER: usize = 1400;
/// Buffer for one underlay datagram: outer IPv6 + UDP + the ESP packet.
const SLOT: usize = HEADROOM + MAX_INNER + TAILROOM + 64;
const A_TO_B: u32 = 0xc0de_0a0b;
/// An inbound SA on B that is removed, so its SPI is "retired" during the grace period.
const RETIRED: u32 = 0xc0de_dead;
const NAT_T: u16 = 4500;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn a_addr() -> IpAddr {
    ip("198.18.0.1")
}

fn b_addr() -> IpAddr {
    ip("198.18.0.2")
}

fn node(name: &str, local: &str, peer: &str, lts: &str, rts: &str, limits: LogLimits) -> Node {
    Node::new(
        NodeConfig {
            name: name.into(),
            local: ip(local),
            peers: vec![PeerConfig {
                name: "peer".into(),
                address: ip(peer),
                encap: UnderlayEncap::Udp,
                port: NAT_T,
                local_ts: vec![lts.parse().unwrap()],
                remote_ts: vec![rts.parse().unwrap()],
            }],
            log_limits: limits,
            event_queue: 64,
            retired_grace: Duration::from_secs(3600),
        },
        Some(7),
    )
}

fn sa(spi: u32, alg: Algorithm) -> SaParams {
    SaParams::new(
        spi,
        alg,
        &vec![spi as u8; alg.enc_key_len()],
        &vec![(spi >> 8) as u8; alg.integ_key_len()],
    )
}

/// A (sender, 198.19.1.0/24) and B (receiver, 198.19.2.0/24) with one SA A→B.
fn pair(alg: Algorithm, b_limits: LogLimits, t0: Instant) -> (Node, Node) {
    let mut a = node(
        "a",
        "198.18.0.1",
        "198.18.0.2",
        "198.19.1.0/24",
        "198.19.2.0/24",
        LogLimits::default(),
    );
    let mut b = node(
        "b",
        "198.18.0.2",
        "198.18.0.1",
        "198.19.2.0/24",
        "198.19.1.0/24",
        b_limits,
    );
    a.install_outbound(0, &sa(A_TO_B, alg), t0).unwrap();
    b.install_inbound(0, &sa(A_TO_B, alg), t0).unwrap();
    (a, b)
}

/// Inner length of the `i`th packet: 20..=MAX_INNER, varied.
fn inner_len(i: usize) -> usize {
    20 + (i * 37) % (MAX_INNER - 19)
}

/// Writes a minimal IPv4 packet 198.19.1.x → 198.19.2.1 of `n` bytes at `buf[..n]`.
fn write_inner(buf: &mut [u8], n: usize, i: usize) {
    buf[..n].fill(i as u8);
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = 17;
    buf[12..16].copy_from_slice(&[198, 19, 1, 1 + (i % 250) as u8]);
    buf[16..20].copy_from_slice(&[198, 19, 2, 1]);
}

/// One ESP packet from A, as its bytes, with the inner length it carries.
fn esp_from(a: &mut Node, now: Instant, i: usize) -> (Vec<u8>, usize) {
    let n = inner_len(i);
    let mut buf = vec![0u8; HEADROOM + n + TAILROOM];
    write_inner(&mut buf[HEADROOM..], n, i);
    match a.outbound(now, &mut buf, HEADROOM..HEADROOM + n) {
        Outbound::Send { esp, .. } => (buf[esp].to_vec(), n),
        other => panic!("setup encap: {other:?}"),
    }
}

fn esp_batch(a: &mut Node, now: Instant, count: usize) -> Vec<(Vec<u8>, usize)> {
    (0..count).map(|i| esp_from(a, now, i)).collect()
}

/// Writes an underlay IP datagram (IPv4 or IPv6, raw ESP or UDP 4500) carrying `esp` into
/// `buf`; returns its length. Checksums are left zero: the parser does not check them (the
/// kernel has, before a raw socket hands a datagram over).
fn write_datagram(buf: &mut [u8], src: IpAddr, dst: IpAddr, udp: bool, esp: &[u8]) -> usize {
    let upper = esp.len() + if udp { 8 } else { 0 };
    let proto = if udp { 17 } else { 50 };
    let hlen = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[..20].fill(0);
            buf[0] = 0x45;
            buf[2..4].copy_from_slice(&((20 + upper) as u16).to_be_bytes());
            buf[8] = 64;
            buf[9] = proto;
            buf[12..16].copy_from_slice(&s.octets());
            buf[16..20].copy_from_slice(&d.octets());
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            buf[..40].fill(0);
            buf[0] = 0x60;
            buf[4..6].copy_from_slice(&(upper as u16).to_be_bytes());
            buf[6] = proto;
            buf[7] = 64;
            buf[8..24].copy_from_slice(&s.octets());
            buf[24..40].copy_from_slice(&d.octets());
            40
        }
        _ => panic!("mixed families"),
    };
    let mut off = hlen;
    if udp {
        buf[off..off + 2].copy_from_slice(&NAT_T.to_be_bytes());
        buf[off + 2..off + 4].copy_from_slice(&NAT_T.to_be_bytes());
        buf[off + 4..off + 6].copy_from_slice(&(upper as u16).to_be_bytes());
        buf[off + 6..off + 8].fill(0);
        off += 8;
    }
    buf[off..off + esp.len()].copy_from_slice(esp);
    off + esp.len()
}

/// Asserts a verdict delivered the inner packet of length `n` (an IPv4 header first).
fn check_delivered(v: &Inbound, buf: &[u8], n: usize, ctx: &str) {
    match v {
        Inbound::Deliver(r) if r.len() == n && buf[r.start] == 0x45 => {}
        other => panic!("{ctx}: {other:?}"),
    }
}

/// Delivers valid ESP from A to B by every inbound entry point, then encapsulates on A,
/// counting allocations only around the datapath calls.
#[test]
fn node_datapath_delivers_and_encaps_without_allocating() {
    for alg in Algorithm::ALL {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(alg, LogLimits::default(), t0);
        let per_case = NODE_WARMUP + NODE_PACKETS;
        // Setup (allocates): the ESP packets each case feeds to B, in sequence order.
        let pkts = esp_batch(&mut a, t0, 4 * per_case);
        let mut buf = vec![0u8; SLOT];
        let name = alg.name();

        // 1. inbound_udp: the NAT-T socket's path.
        let cases: [(&str, usize); 4] = [
            ("inbound_udp", 0),
            ("inbound_ip", 1),
            ("inbound_esp", 2),
            ("inbound_udp_batch", 3),
        ];
        for (case, k) in cases {
            let ctx = format!("{name} {case}");
            let chunk = &pkts[k * per_case..(k + 1) * per_case];
            let before = b.counters().in_packets;
            let mut counted = 0;
            if case == "inbound_udp_batch" {
                counted = batch_deliver(&mut b, t0, chunk, &ctx);
            } else {
                for (i, (esp, n)) in chunk.iter().enumerate() {
                    let start = allocations();
                    match case {
                        "inbound_udp" => {
                            buf[..esp.len()].copy_from_slice(esp);
                            let v = b.inbound_udp(
                                t0,
                                a_addr(),
                                NAT_T,
                                b_addr(),
                                NAT_T,
                                &mut buf,
                                0..esp.len(),
                            );
                            check_delivered(&v, &buf, *n, &ctx);
                        }
                        "inbound_ip" => {
                            // Raw ESP and UDP-encapsulated, both through the IP parser.
                            let len = write_datagram(&mut buf, a_addr(), b_addr(), i % 2 == 0, esp);
                            let v = b.inbound_ip(t0, &mut buf[..len]);
                            check_delivered(&v, &buf, *n, &ctx);
                        }
                        _ => {
                            buf[..esp.len()].copy_from_slice(esp);
                            let v = b.inbound_esp(
                                t0,
                                a_addr(),
                                b_addr(),
                                Encap::Raw,
                                &mut buf,
                                0..esp.len(),
                            );
                            check_delivered(&v, &buf, *n, &ctx);
                        }
                    }
                    let delta = allocations() - start;
                    if i >= NODE_WARMUP {
                        counted += delta;
                    }
                }
            }
            assert_eq!(
                counted, 0,
                "{ctx}: {counted} allocations in {NODE_PACKETS} packets"
            );
            assert_eq!(
                b.counters().in_packets - before,
                per_case as u64,
                "{ctx}: in_packets did not move by one per packet"
            );
        }
        // The only drops are the unknown SPIs mixed into the batches.
        let unknown = in_drops(&b, DropReason::UnknownSpi);
        assert!(unknown > 0, "{name}");
        assert_eq!(b.counters().total_drops(Dir::In), unknown, "{name}");

        // 2. outbound: A encapsulates into one reused buffer.
        let ctx = format!("{name} outbound");
        let before = a.counters().out_packets;
        let mut counted = 0;
        for i in 0..per_case {
            let n = inner_len(i);
            let end = HEADROOM + n + TAILROOM;
            let start = allocations();
            write_inner(&mut buf[HEADROOM..], n, i);
            let v = a.outbound(t0, &mut buf[..end], HEADROOM..HEADROOM + n);
            let delta = allocations() - start;
            match v {
                Outbound::Send {
                    esp,
                    dst,
                    port: NAT_T,
                    encap: UnderlayEncap::Udp,
                } if dst == b_addr() && esp.len() > n => {}
                other => panic!("{ctx}: {other:?}"),
            }
            if i >= NODE_WARMUP {
                counted += delta;
            }
        }
        assert_eq!(
            counted, 0,
            "{ctx}: {counted} allocations in {NODE_PACKETS} packets"
        );
        assert_eq!(a.counters().out_packets - before, per_case as u64, "{ctx}");
        assert_eq!(a.counters().total_drops(Dir::Out), 0, "{ctx}");
    }
}

/// The sending thread's path (`[datapath] tx_thread`): a split node's `TxHandle`
/// encrypts without allocating, also on the packet right after the node published a
/// change (the handle only takes a reference to the new plane).
#[test]
fn split_tx_handle_encaps_without_allocating() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(Algorithm::AesGcm128, LogLimits::default(), t0);
    let mut h = a.split_tx();
    let mut buf = vec![0u8; SLOT];
    let mut counted = 0;
    for i in 0..NODE_PACKETS {
        if i == NODE_PACKETS / 2 {
            // A control-plane change mid-stream (its own allocations are not counted).
            a.install_outbound(0, &sa(A_TO_B + 1, Algorithm::AesGcm128), t0)
                .unwrap();
        }
        let n = inner_len(i);
        let end = HEADROOM + n + TAILROOM;
        write_inner(&mut buf[HEADROOM..], n, i);
        let start = allocations();
        let v = h.outbound(t0, &mut buf[..end], HEADROOM..HEADROOM + n);
        let delta = allocations() - start;
        assert!(matches!(v, Outbound::Send { .. }), "{v:?}");
        if i >= NODE_WARMUP {
            counted += delta;
        }
    }
    assert_eq!(
        counted, 0,
        "{counted} allocations in {NODE_PACKETS} packets"
    );
    assert_eq!(a.counters_total().out_packets, NODE_PACKETS as u64);
}

/// A batched inbound entry point: the node's, or the agent's (which the daemon uses).
trait BatchSink {
    fn feed(&mut self, now: Instant, batch: &mut [UdpDatagram<'_>], out: &mut [Inbound]);
    fn node(&self) -> &Node;
    /// Takes every queued event, as the daemon does after a burst.
    fn drain_events(&mut self);
    /// Whether the unknown SPIs mixed in are all different (else a few repeat).
    fn distinct_unknown_spis(&self) -> bool {
        true
    }
}

impl BatchSink for Node {
    fn feed(&mut self, now: Instant, batch: &mut [UdpDatagram<'_>], out: &mut [Inbound]) {
        self.inbound_udp_batch(now, batch, out);
    }
    fn node(&self) -> &Node {
        self
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
}

impl BatchSink for Agent {
    fn feed(&mut self, now: Instant, batch: &mut [UdpDatagram<'_>], out: &mut [Inbound]) {
        self.handle_underlay_udp_batch(now, batch, out);
    }
    fn node(&self) -> &Node {
        Agent::node(self)
    }
    /// The agent's recovery policy keeps one hold-down entry per (source, SPI) it acted on
    /// (bounded; it grows, and may allocate, while new SPIs keep coming, on the single
    /// path as on this one): a few SPIs that repeat measure the steady state.
    fn distinct_unknown_spis(&self) -> bool {
        false
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
}

/// The agent's batch entry (`Agent::handle_underlay_udp_batch`, the daemon's path for a
/// `recvmmsg` burst): valid ESP from A and unknown SPIs, through B's agent (manual SAs, no
/// IKE peers, default recovery policy), allocate nothing once warm.
#[test]
fn agent_batch_delivers_without_allocating() {
    for alg in Algorithm::ALL {
        let t0 = Instant::now();
        let (mut a, b_node) = pair(alg, LogLimits::default(), t0);
        let mut b = Agent::new(
            AgentConfig {
                node: b_node.config().clone(),
                ike: Default::default(),
                debug_keys: false,
                recovery: Default::default(),
            },
            t0,
        )
        .unwrap();
        b.node_mut()
            .install_inbound(0, &sa(A_TO_B, alg), t0)
            .unwrap();
        let per_case = NODE_WARMUP + NODE_PACKETS;
        let pkts = esp_batch(&mut a, t0, per_case);
        let ctx = format!("{} handle_underlay_udp_batch", alg.name());
        let counted = batch_deliver(&mut b, t0, &pkts, &ctx);
        assert_eq!(
            counted, 0,
            "{ctx}: {counted} allocations in {NODE_PACKETS} packets"
        );
        assert_eq!(b.node().counters().in_packets, per_case as u64, "{ctx}");
    }
}

/// Feeds `chunk` to B through `inbound_udp_batch` in batches of `2 * BATCH + 3` (a partial
/// lookup group at the end), with every fifth datagram's SPI replaced by an unknown one so
/// both arms of the batch run. Returns allocations counted after the warm-up.
fn batch_deliver(
    b: &mut impl BatchSink,
    now: Instant,
    chunk: &[(Vec<u8>, usize)],
    ctx: &str,
) -> usize {
    const K: usize = 2 * BATCH + 3;
    let mut slots = vec![0u8; K * SLOT];
    let mut counted = 0;
    let mut unknown = 0u64;
    let drops_before = b
        .node()
        .counters()
        .drops(Dir::In, DropReason::UnknownSpi, Family::V4);
    let mut next = 0;
    // The packets taken out for unknown SPIs still have to reach B in sequence order for
    // the per_case count to hold, so they are fed as valid ones and the unknown ones are
    // extra datagrams (copies with a rewritten SPI).
    while next < chunk.len() {
        let warm = next < NODE_WARMUP;
        let mut lens = [0usize; K];
        let mut expect = [None::<usize>; K];
        let mut used = 0;
        for (j, slot) in slots.chunks_mut(SLOT).enumerate() {
            if next >= chunk.len() {
                break;
            }
            let (esp, n) = &chunk[next];
            slot[..esp.len()].copy_from_slice(esp);
            lens[j] = esp.len();
            if j % 5 == 4 {
                let spi = if b.distinct_unknown_spis() {
                    0x7000_0000u32 + (next * K + j) as u32
                } else {
                    0x7000_0000u32 + (j % 3) as u32
                };
                slot[..4].copy_from_slice(&spi.to_be_bytes());
            } else {
                expect[j] = Some(*n);
                next += 1;
            }
            used = j + 1;
        }
        let start = allocations();
        {
            let mut it = slots.chunks_mut(SLOT);
            let mut batch: [UdpDatagram<'_>; K] = std::array::from_fn(|j| UdpDatagram {
                src: a_addr(),
                sport: NAT_T,
                dst: b_addr(),
                dport: NAT_T,
                buf: it.next().unwrap(),
                payload: 0..lens[j],
            });
            let mut out: [Inbound; K] = std::array::from_fn(|_| Inbound::Keepalive);
            b.feed(now, &mut batch[..used], &mut out[..used]);
            for (j, v) in out[..used].iter().enumerate() {
                match expect[j] {
                    Some(n) => check_delivered(v, &*batch[j].buf, n, ctx),
                    None => {
                        assert!(*v == Inbound::Drop(DropReason::UnknownSpi), "{ctx}: {v:?}");
                        unknown += 1;
                    }
                }
            }
            b.drain_events();
        }
        let delta = allocations() - start;
        if !warm {
            counted += delta;
        }
    }
    assert!(unknown > 0, "{ctx}: no unknown SPI in the batches");
    assert_eq!(
        b.node()
            .counters()
            .drops(Dir::In, DropReason::UnknownSpi, Family::V4)
            - drops_before,
        unknown,
        "{ctx}"
    );
    counted
}

/// What the control side saw while draining a node's event queue.
#[derive(Debug, Default)]
struct Tally {
    invalid_spi: u64,
    logged: u64,
    summaries: u64,
}

/// Runs `packet(node, now, i)` for `warmup + count` packets, `step` apart on the
/// virtual clock, draining the event queue after each (as the daemon does) and calling
/// `handle_timeout` once per virtual second. Counts allocations of the packet and the
/// drain after the warm-up only; `handle_timeout` (periodic, not per packet) is not counted.
fn run_counted(
    node: &mut Node,
    t0: Instant,
    step: Duration,
    warmup: usize,
    count: usize,
    mut packet: impl FnMut(&mut Node, Instant, usize),
) -> (usize, Tally) {
    let mut counted = 0;
    let mut tally = Tally::default();
    let mut next_tick = t0;
    // Read before counting: looking up the environment allocates.
    let debug = std::env::var_os("ALLOC_DEBUG").is_some();
    for i in 0..warmup + count {
        let now = t0 + step * i as u32;
        if now >= next_tick {
            node.handle_timeout(now);
            next_tick = now + Duration::from_secs(1);
        }
        let start = allocations();
        packet(node, now, i);
        while let Some(e) = node.poll_event() {
            match e {
                Event::InvalidSpi(e) => {
                    tally.invalid_spi += 1;
                    tally.logged += u64::from(e.logged);
                }
                Event::InvalidSpiSuppressed { .. } => tally.summaries += 1,
                _ => {}
            }
        }
        let delta = allocations() - start;
        if i >= warmup {
            counted += delta;
        }
        if delta > 0 && debug {
            eprintln!(
                "packet {i}: {delta} allocations, tracked {}",
                node.tracked_flows()
            );
        }
    }
    (counted, tally)
}

fn in_drops(n: &Node, r: DropReason) -> u64 {
    n.counters().drops(Dir::In, r, Family::V4) + n.counters().drops(Dir::In, r, Family::V6)
}

/// A source address per flow: IPv4 in 198.18.0.0/15 or IPv6 in 2001:2::/48.
fn flow_src(f: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from([0x2001, 2, 0, 0, 0, 0, (f >> 16) as u16, f as u16])
    } else {
        IpAddr::from([198, 18 + ((f >> 16) & 1) as u8, (f >> 8) as u8, f as u8])
    }
}

/// An ESP packet for an SPI B does not hold, from flow `f`, through one of four entry
/// points (UDP socket, raw IPv4/IPv6 datagram, UDP-in-IP datagram, bare ESP).
fn unknown_spi_packet(b: &mut Node, buf: &mut [u8], now: Instant, i: usize, f: usize) {
    let spi = 0x4000_0000 + 7 * f as u32;
    let v6 = i % 4 == 1;
    let src = flow_src(f, v6);
    let dst = if v6 { ip("2001:2::2") } else { b_addr() };
    let mut esp = [0xabu8; 64];
    esp[..4].copy_from_slice(&spi.to_be_bytes());
    esp[4..8].copy_from_slice(&(i as u32 + 1).to_be_bytes());
    let v = match i % 4 {
        0 => {
            buf[..64].copy_from_slice(&esp);
            b.inbound_udp(now, src, NAT_T, dst, NAT_T, buf, 0..64)
        }
        1 | 2 => {
            let len = write_datagram(buf, src, dst, i % 4 == 2, &esp);
            b.inbound_ip(now, &mut buf[..len])
        }
        _ => {
            buf[..64].copy_from_slice(&esp);
            b.inbound_esp(now, src, dst, Encap::Raw, buf, 0..64)
        }
    };
    assert!(v == Inbound::Drop(DropReason::UnknownSpi), "{v:?}");
}

/// A flood of unknown SPIs from many sources with the vendor default limits (10 lines a
/// minute): over 110 virtual seconds the log budget is spent, refilled at the next window
/// and spent again, so both the logging path (flow table insert) and the suppressed
/// shortcut run inside the counted region; every packet is counted and evented.
#[test]
fn node_invalid_spi_flood_does_not_allocate() {
    let t0 = Instant::now();
    let (_, mut b) = pair(Algorithm::AesGcm128, LogLimits::default(), t0);
    let mut buf = vec![0u8; SLOT];
    let total = (NODE_WARMUP + NODE_PACKETS) as u64;
    let (counted, tally) = run_counted(
        &mut b,
        t0,
        Duration::from_millis(100),
        NODE_WARMUP,
        NODE_PACKETS,
        |b, now, i| unknown_spi_packet(b, &mut buf, now, i, i),
    );
    assert_eq!(
        counted, 0,
        "{counted} allocations in {NODE_PACKETS} invalid-SPI drops"
    );
    let c = b.counters();
    assert_eq!(in_drops(&b, DropReason::UnknownSpi), total);
    assert!(c.drops(Dir::In, DropReason::UnknownSpi, Family::V6) > 0);
    assert_eq!(tally.invalid_spi, total, "one event per packet");
    assert_eq!(c.events_dropped, 0);
    assert_eq!(tally.logged, c.invalid_spi_logged);
    // Two windows (t0 and t0 + 60 s), ten new flows logged in each.
    assert_eq!(c.invalid_spi_logged, 20, "{tally:?}");
    assert_eq!(c.invalid_spi_suppressed, total - 20);
    assert!(
        tally.summaries >= 1,
        "no suppressed-lines summary: {tally:?}"
    );
}

/// Flow tracking at work, with a budget too large to spend: a one-second per-flow interval
/// and global window (so the once-a-second `handle_timeout` evicts stale flows), one packet
/// in eight from a new flow and the rest from eight hot ones. The limiter logs new flows,
/// suppresses repeats (cached last flow and map lookup) and logs a flow again once its
/// interval has passed, all inside the counted region.
///
/// The table stays below half of its slots (at most 56 of 112 for `max_flows: 64`), so when
/// deleted-slot markers left by evictions use up its free slots, std's table rehashes in
/// place instead of allocating a larger one; the test asserts that bound so it cannot flake.
/// A table that fills up is the next test.
#[test]
fn node_invalid_spi_flow_tracking_does_not_allocate() {
    let limits = LogLimits {
        per_flow_interval: Duration::from_secs(1),
        global_max: 1_000_000,
        global_window: Duration::from_secs(1),
        max_flows: 64,
    };
    let t0 = Instant::now();
    let (_, mut b) = pair(Algorithm::AesGcm128, limits, t0);
    let mut buf = vec![0u8; SLOT];
    let warmup = 1000;
    let total = (warmup + NODE_PACKETS) as u64;
    let mut max_tracked = 0;
    let (counted, tally) = run_counted(
        &mut b,
        t0,
        Duration::from_millis(10),
        warmup,
        NODE_PACKETS,
        |b, now, i| {
            let f = if i % 8 == 0 { 1000 + i } else { i % 8 };
            unknown_spi_packet(b, &mut buf, now, i, f);
            max_tracked = max_tracked.max(b.tracked_flows());
        },
    );
    assert!(
        (17..=56).contains(&max_tracked),
        "flow table peaked at {max_tracked} flows"
    );
    assert_eq!(
        counted, 0,
        "{counted} allocations in {NODE_PACKETS} invalid-SPI drops"
    );
    let c = b.counters();
    assert_eq!(in_drops(&b, DropReason::UnknownSpi), total);
    assert_eq!(tally.invalid_spi, total);
    assert_eq!(c.events_dropped, 0);
    assert_eq!(tally.logged, c.invalid_spi_logged);
    assert!(
        c.invalid_spi_logged > 300 && c.invalid_spi_suppressed > 300,
        "both logged and suppressed: {tally:?}"
    );
    assert_eq!(c.invalid_spi_logged + c.invalid_spi_suppressed, total);
}

/// A flow table that fills up: a two-second per-flow interval, a one-minute window and a
/// third of the packets from new flows, so the table is full (64 flows), evicts when it can
/// and refuses new flows when it cannot.
///
/// No allocation either (issue #7): evictions leave deleted-slot markers in the flow map, and
/// hashbrown rehashes in place when they use up its free slots only while the map is at most
/// half full; `LogLimiter::new` sizes it for twice `max_flows` (crates/node/src/rate_limit.rs
/// `flow_map_capacity`), so it never is more than half full and never allocates. (Before,
/// sized for `min(max_flows, 1024)`, it allocated once, at a seed-dependent moment.)
#[test]
fn node_invalid_spi_full_flow_table_allocates_at_most_once() {
    let limits = LogLimits {
        per_flow_interval: Duration::from_secs(2),
        global_max: 1_000_000,
        global_window: Duration::from_secs(60),
        max_flows: 64,
    };
    let t0 = Instant::now();
    let (_, mut b) = pair(Algorithm::AesGcm128, limits, t0);
    let mut buf = vec![0u8; SLOT];
    // The warm-up fills the table (about 33 new flows a second); counting starts once full.
    let (warmup, count) = (1000, 5 * NODE_PACKETS);
    let total = (warmup + count) as u64;
    let (mut full_at_warmup_end, mut max_tracked) = (false, 0);
    let (counted, tally) = run_counted(
        &mut b,
        t0,
        Duration::from_millis(10),
        warmup,
        count,
        |b, now, i| {
            let f = if i % 3 == 0 { 1000 + i } else { (i / 3) % 8 };
            unknown_spi_packet(b, &mut buf, now, i, f);
            max_tracked = max_tracked.max(b.tracked_flows());
            if i + 1 == warmup {
                full_at_warmup_end = max_tracked == 64;
            }
        },
    );
    assert!(
        full_at_warmup_end,
        "the flow table never filled: {max_tracked}"
    );
    assert_eq!(max_tracked, 64, "the flow table is bounded");
    assert_eq!(
        counted, 0,
        "{counted} allocations in {count} invalid-SPI drops"
    );
    let c = b.counters();
    assert_eq!(in_drops(&b, DropReason::UnknownSpi), total);
    assert_eq!(tally.invalid_spi, total);
    assert_eq!(tally.logged, c.invalid_spi_logged);
    assert!(
        c.invalid_spi_logged > 100 && c.invalid_spi_suppressed > 100,
        "both logged and suppressed: {tally:?}"
    );
    assert_eq!(c.invalid_spi_logged + c.invalid_spi_suppressed, total);
}

/// The other drops of valid-looking traffic, each counted by reason: bad ICV, replay,
/// too short, reserved SPI and retired SPI.
#[test]
fn node_drops_do_not_allocate() {
    for alg in Algorithm::ALL {
        let name = alg.name();
        let t0 = Instant::now();
        let (mut a, mut b) = pair(alg, LogLimits::default(), t0);
        b.install_inbound(0, &sa(RETIRED, alg), t0).unwrap();
        assert_eq!(b.remove_spi(RETIRED, t0), 1);
        let per_case = NODE_WARMUP + NODE_PACKETS;
        // Setup: packets B has delivered (to replay), then fresh ones (to corrupt).
        let delivered = esp_batch(&mut a, t0, per_case);
        let fresh = esp_batch(&mut a, t0, per_case);
        let mut buf = vec![0u8; SLOT];
        for (esp, n) in &delivered {
            buf[..esp.len()].copy_from_slice(esp);
            let v = b.inbound_udp(t0, a_addr(), NAT_T, b_addr(), NAT_T, &mut buf, 0..esp.len());
            check_delivered(&v, &buf, *n, name);
        }
        let step = Duration::from_millis(1);
        let case =
            |b: &mut Node,
             what: &str,
             reasons: &[DropReason],
             packet: &mut dyn FnMut(&mut Node, Instant, usize) -> Inbound| {
                let before: u64 = reasons.iter().map(|r| in_drops(b, *r)).sum();
                let (counted, _) =
                    run_counted(b, t0, step, NODE_WARMUP, NODE_PACKETS, |b, now, i| {
                        let v = packet(b, now, i);
                        assert!(
                            matches!(v, Inbound::Drop(r) if reasons.contains(&r)),
                            "{name} {what}: {v:?}"
                        );
                    });
                assert_eq!(
                    counted, 0,
                    "{name} {what}: {counted} allocations in {NODE_PACKETS} packets"
                );
                let after: u64 = reasons.iter().map(|r| in_drops(b, *r)).sum();
                assert_eq!(
                    after - before,
                    per_case as u64,
                    "{name} {what}: drop counter"
                );
            };

        case(
            &mut b,
            "bad ICV",
            &[DropReason::IcvMismatch],
            &mut |b: &mut Node, now: Instant, i: usize| {
                let esp = &fresh[i].0;
                buf[..esp.len()].copy_from_slice(esp);
                buf[esp.len() - 1] ^= 0x80;
                b.inbound_udp(
                    now,
                    a_addr(),
                    NAT_T,
                    b_addr(),
                    NAT_T,
                    &mut buf,
                    0..esp.len(),
                )
            },
        );
        case(
            &mut b,
            "replay",
            &[DropReason::ReplayDuplicate, DropReason::ReplayTooOld],
            &mut |b: &mut Node, now: Instant, i: usize| {
                let esp = &delivered[i].0;
                buf[..esp.len()].copy_from_slice(esp);
                b.inbound_udp(
                    now,
                    a_addr(),
                    NAT_T,
                    b_addr(),
                    NAT_T,
                    &mut buf,
                    0..esp.len(),
                )
            },
        );
        case(
            &mut b,
            "too short",
            &[DropReason::TooShort],
            &mut |b: &mut Node, now: Instant, i: usize| {
                // Shorter than an ESP header (RFC 4303 §2: SPI + sequence number = 8 octets),
                // by three entry points; 0xab so it is neither a keepalive nor an IKE marker.
                let len = 2 + i % 6;
                buf[..len].fill(0xab);
                match i % 3 {
                    0 => b.inbound_udp(now, a_addr(), NAT_T, b_addr(), NAT_T, &mut buf, 0..len),
                    1 => b.inbound_esp(now, a_addr(), b_addr(), Encap::Raw, &mut buf, 0..len),
                    _ => {
                        let esp = [0xabu8; 7];
                        let n = write_datagram(&mut buf, a_addr(), b_addr(), false, &esp[..len]);
                        b.inbound_ip(now, &mut buf[..n])
                    }
                }
            },
        );
        case(
            &mut b,
            "reserved SPI",
            &[DropReason::ReservedSpi],
            &mut |b: &mut Node, now: Instant, i: usize| {
                // RFC 4303 §2.1: SPIs 1..=255 are reserved.
                let mut esp = [0xabu8; 64];
                esp[..4].copy_from_slice(&(1 + (i % 255) as u32).to_be_bytes());
                buf[..64].copy_from_slice(&esp);
                b.inbound_udp(now, a_addr(), NAT_T, b_addr(), NAT_T, &mut buf, 0..64)
            },
        );
        case(
            &mut b,
            "retired SPI",
            &[DropReason::RetiredSpi],
            &mut |b: &mut Node, now: Instant, i: usize| {
                let mut esp = [0xabu8; 64];
                esp[..4].copy_from_slice(&RETIRED.to_be_bytes());
                esp[4..8].copy_from_slice(&(i as u32 + 1).to_be_bytes());
                buf[..64].copy_from_slice(&esp);
                b.inbound_udp(now, a_addr(), NAT_T, b_addr(), NAT_T, &mut buf, 0..64)
            },
        );
        // None of these is an invalid-SPI event, and nothing was delivered by them.
        assert_eq!(
            b.counters().invalid_spi_logged + b.counters().invalid_spi_suppressed,
            0
        );
        assert_eq!(b.counters().in_packets, per_case as u64, "{name}");
    }
}

/// An IPv4 TCP segment (`flags`, `len` payload bytes at `seq`) with a valid TCP checksum, so
/// that esplab's GRO may merge it.
fn tcp_segment(sport: u16, seq: u32, len: usize, flags: u8) -> Vec<u8> {
    let mut p = ipv4_transport(6, 20, len);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    transport_checksum(&mut p, 36);
    p
}

/// A UDP datagram (IPv4, DF) with `len` payload bytes.
fn udp_datagram(sport: u16, len: usize) -> Vec<u8> {
    let mut p = ipv4_transport(17, 8, len);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    transport_checksum(&mut p, 26);
    p
}

/// An IPv4 packet (DF, 198.18.1.1 → 198.18.2.1) of protocol `proto` with a zeroed
/// transport header of `hdr` bytes and `len` payload bytes.
fn ipv4_transport(proto: u8, hdr: usize, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 20 + hdr + len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + hdr + len) as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[198, 18, 1, 1]);
    p[16..20].copy_from_slice(&[198, 18, 2, 1]);
    p
}

/// RFC 9293 §3.1, RFC 768: one's complement of the sum over pseudo-header and segment,
/// stored at `at`.
fn transport_checksum(p: &mut [u8], at: usize) {
    let mut s: u64 = u64::from(p[9]) + (p.len() - 20) as u64;
    for w in p[12..20].chunks(2).chain(p[20..].chunks(2)) {
        s += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    p[at..at + 2].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// The TUN write path with `tun_writev` (esplab's GRO): once it has seen a burst as large
/// as the next, coalescing and flushing allocate nothing.
#[test]
fn tun_gro_coalesces_and_flushes_without_allocating() {
    use esplab_netio::gro::Gro;
    // Four flows of 48 segments, interleaved, plus a segment that goes alone.
    let mut bufs: Vec<Vec<u8>> = (0..192u32)
        .map(|i| tcp_segment(40000 + (i % 4) as u16, (i / 4) * 1300, 1300, 0x10))
        .collect();
    // And a segment that goes alone (PSH with no super-packet open: the flow's first).
    bufs.push(tcp_segment(40004, 0, 100, 0x18));
    // And a UDP flow of 40 datagrams.
    bufs.extend((0..40).map(|_| udp_datagram(40005, 1200)));
    let mut g = Gro::new();
    g.set_udp(true);
    let burst = |g: &mut Gro| {
        for (i, b) in bufs.iter().enumerate() {
            assert!(g.push(i, 0..b.len(), b));
        }
        let mut writes = 0;
        let mut bytes = 0;
        g.flush(&bufs, |prefix, pieces| {
            writes += 1;
            bytes += prefix.len() + pieces.map(<[u8]>::len).sum::<usize>();
            Ok(())
        });
        (writes, bytes)
    };
    let first = burst(&mut g);
    let before = allocations();
    for _ in 0..100 {
        assert_eq!(burst(&mut g), first);
    }
    assert_eq!(allocations() - before, 0, "GRO allocated");
    // Four TCP super-packets, the odd one, a UDP super-packet: the segments did merge.
    assert_eq!(first.0, 6, "{first:?}");
    let stats = g.take_stats();
    assert_eq!(stats.udp_coalesced, 101 * 40, "{stats:?}");
}
