//! The invalid-SPI drop path through the real `Node`, in packets per second.
//!
//! Every packet is a 64-byte UDP-encapsulated ESP datagram (RFC 3948) from the configured
//! peer whose SPI the node does not know: classify the UDP payload, reject reserved SPIs, SAD
//! lookup (miss), drop counters, the invalid-SPI rate limiter (per-flow + global, the vendor
//! behaviour), and one `Event::InvalidSpi` per packet into the bounded event queue. This is
//! the whole work the datapath does for such a packet; the daemon adds only the socket.
//!
//! The SAD holds N reserved inbound SPIs (N = 1Ki and 1Mi) reserved in one transaction:
//! reserved and live slots carry the same tag and fingerprint, and a miss reads only the
//! fingerprint array (1Mi) or the entry's tag (1Ki), so the lookup costs what it would with N
//! live SAs (which would need N cipher contexts).
//!
//! Cases (criterion throughput = packets, so `thrpt` reads as packets per second):
//! * `single`: `Node::inbound_udp`, one packet at a time, random SPIs;
//! * `batch32`: `Node::inbound_udp_batch` on 32 datagrams at a time (one SAD snapshot and a
//!   prefetching lookup per batch), the daemon's `recvmmsg` shape;
//! * `single_one_flow`: one stale SPI repeated (a peer still sending on an SA we lost), the
//!   rate limiter's per-flow case;
//! * `*_drained`: the control side takes every event after each 32 packets (`poll_event`),
//!   so every packet builds and queues its event; the other cases run against a full queue
//!   (a flood fills 1024 slots within microseconds), where events are counted as dropped.
//!
//! `interleaved()` then runs the cases alternately (median of rounds) for numbers that hold
//! up on a shared machine. Run: `cargo bench --bench drop`. Results: `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use esplab_node::{
    Inbound, LogLimits, Node, NodeConfig, PeerConfig, UdpDatagram, UnderlayEncap, BATCH,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZES: [usize; 2] = [1 << 10, 1 << 20];
/// Packets per criterion iteration.
const WINDOW: usize = 1024;
const PKT: usize = 64;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(n: usize) -> Node {
    let cfg = NodeConfig {
        name: "b".into(),
        local: ip("198.18.0.2"),
        peers: vec![PeerConfig {
            name: "a".into(),
            address: ip("198.18.0.1"),
            encap: UnderlayEncap::Udp,
            port: 4500,
            local_ts: vec!["198.19.2.0/24".parse().unwrap()],
            remote_ts: vec!["198.19.1.0/24".parse().unwrap()],
        }],
        log_limits: LogLimits::default(),
        event_queue: 1024,
        retired_grace: Duration::from_secs(5),
    };
    let mut node = Node::new(cfg, Some(0xd0d0));
    let mut spis = Vec::with_capacity(n);
    node.reserve_spis(n, &mut spis).unwrap();
    node
}

/// Random SPIs above 255, 4x as many as the table has slots so that the lines they touch
/// are not all cached between iterations.
fn spi_order(n: usize, rng: &mut StdRng) -> Vec<u32> {
    (0..(4 * n).max(4 * WINDOW))
        .map(|_| rng.gen::<u32>() | 0x100)
        .collect()
}

/// One drop-path driver: a node, its packets and the SPIs to put in them.
struct Driver {
    node: Node,
    t0: Instant,
    src: IpAddr,
    dst: IpAddr,
    bufs: Vec<[u8; PKT]>,
    spis: Vec<u32>,
    pos: usize,
}

impl Driver {
    fn new(n: usize, rng: &mut StdRng) -> Self {
        let mut bufs = vec![[0u8; PKT]; BATCH];
        for (i, b) in bufs.iter_mut().enumerate() {
            b[7] = i as u8 + 1; // sequence number
        }
        Self {
            node: node(n),
            t0: Instant::now(),
            src: ip("198.18.0.1"),
            dst: ip("198.18.0.2"),
            bufs,
            spis: spi_order(n, rng),
            pos: 0,
        }
    }

    fn window(&mut self) -> std::ops::Range<usize> {
        let r = self.pos..self.pos + WINDOW;
        self.pos = (self.pos + WINDOW) % self.spis.len();
        r
    }

    fn drain(&mut self) {
        while let Some(e) = self.node.poll_event() {
            black_box(e);
        }
    }

    /// `WINDOW` packets one at a time; `spi` overrides the random order.
    fn single(&mut self, spi: Option<u32>, drain: bool) {
        let r = self.window();
        let (t0, src, dst) = (self.t0, self.src, self.dst);
        for k in r.step_by(BATCH) {
            for (j, b) in self.bufs.iter_mut().enumerate() {
                let s = spi.unwrap_or(self.spis[k + j]);
                b[..4].copy_from_slice(&s.to_be_bytes());
                let v =
                    self.node
                        .inbound_udp(t0, src, 4500, dst, 4500, black_box(&mut b[..]), 0..PKT);
                debug_assert!(matches!(v, Inbound::Drop(_)));
                black_box(v);
            }
            if drain {
                self.drain();
            }
        }
    }

    /// `WINDOW` packets through the batched path, 32 at a time.
    fn batch(&mut self, drain: bool) {
        let r = self.window();
        let (t0, src, dst) = (self.t0, self.src, self.dst);
        let mut out = [const { Inbound::Keepalive }; BATCH];
        for k in r.step_by(BATCH) {
            for (b, s) in self.bufs.iter_mut().zip(&self.spis[k..k + BATCH]) {
                b[..4].copy_from_slice(&s.to_be_bytes());
            }
            let mut it = self.bufs.iter_mut();
            let mut batch: [UdpDatagram<'_>; BATCH] = std::array::from_fn(|_| UdpDatagram {
                src,
                sport: 4500,
                dst,
                dport: 4500,
                buf: &mut it.next().unwrap()[..],
                payload: 0..PKT,
            });
            self.node.inbound_udp_batch(t0, &mut batch, &mut out);
            black_box(&out);
            if drain {
                self.drain();
            }
        }
    }
}

type Case = (&'static str, fn(&mut Driver));

const CASES: [Case; 5] = [
    ("single", |d| d.single(None, false)),
    ("batch32", |d| d.batch(false)),
    ("single_one_flow", |d| d.single(Some(0x5eed_0101), false)),
    ("single_drained", |d| d.single(None, true)),
    ("batch32_drained", |d| d.batch(true)),
];

fn bench_drop(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0xd20b);
    for n in SIZES {
        let mut d = Driver::new(n, &mut rng);
        let mut g = c.benchmark_group("drop_unknown_spi");
        g.throughput(Throughput::Elements(WINDOW as u64));
        for (name, f) in CASES {
            g.bench_function(BenchmarkId::new(name, n), |b| b.iter(|| f(&mut d)));
        }
        g.finish();
        let c = d.node.counters();
        assert_eq!(c.in_packets, 0, "every packet must have been dropped");
    }
}

/// The cases alternately, each over the whole SPI order once per round; median and best of
/// the rounds in ns per packet and Mpps.
fn interleaved() {
    const ROUNDS: usize = 9;
    let mut rng = StdRng::seed_from_u64(0x1ea7);
    println!("\ninterleaved drop path: {ROUNDS} rounds, ns per packet (median / best) and Mpps");
    for n in SIZES {
        let mut d = Driver::new(n, &mut rng);
        let windows = d.spis.len() / WINDOW;
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
        for _ in 0..ROUNDS {
            for (k, (_, f)) in CASES.iter().enumerate() {
                d.pos = 0;
                let t = Instant::now();
                for _ in 0..windows {
                    f(&mut d);
                }
                ns[k].push(t.elapsed().as_nanos() as f64 / (windows * WINDOW) as f64);
            }
        }
        println!("N = {n}");
        for (k, (name, _)) in CASES.iter().enumerate() {
            let v = &mut ns[k];
            v.sort_by(f64::total_cmp);
            let (med, best) = (v[v.len() / 2], v[0]);
            println!(
                "{name:>16} {med:>7.2} ns {best:>7.2} ns   {:>6.1} Mpps (median) {:>6.1} Mpps (best)",
                1e3 / med,
                1e3 / best
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    bench_drop(&mut c);
    c.final_summary();
    // `cargo test --benches` runs bench binaries without --bench: skip the extra loop there.
    if std::env::args().any(|a| a == "--bench") {
        interleaved();
    }
}
