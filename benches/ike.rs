//! One IKEv2 handshake (IKE_SA_INIT + IKE_AUTH with its first CHILD SA, RFC 7296 §1.2)
//! between two `esplab_ike::Endpoint`s in memory, both sides' work included: the four
//! messages are built, encrypted, parsed and answered, X25519 on both sides, PSK
//! authentication, key derivation for the IKE SA and the CHILD SA.
//!
//! Each iteration starts from two fresh endpoints (made outside the timing by
//! `iter_batched`) and ends when both have installed the CHILD SA pair. Criterion's
//! `thrpt` reads as handshakes per second on one core.
//!
//! Run: `cargo bench --bench ike`. Results: `docs/PERFORMANCE.md`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{Endpoint, EndpointConfig, Identity, IkePeerConfig, Output, SpiAllocator};

const A: &str = "198.18.0.1:500";
const B: &str = "198.18.0.2:500";

struct Spis(u32);

impl SpiAllocator for Spis {
    fn allocate_inbound_spi(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

fn peer(
    name: &str,
    me: &str,
    them: &str,
    local: &str,
    remote: &str,
    suites: (&str, &str),
) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        Identity::fqdn(me),
        Some(Identity::fqdn(them)),
        b"esplab bench psk",
    );
    p.local_addr = Some(local.parse().unwrap());
    p.remote_addr = Some(remote.parse().unwrap());
    p.ike_proposals = ProposalSpec::parse_ike_list(suites.0).unwrap();
    p.esp_proposals = ProposalSpec::parse_esp_list(suites.1).unwrap();
    p.ike_lifetime = None;
    p.child_lifetime = None;
    p
}

/// Two endpoints ready to talk: A ("sun") knows B as "moon" and vice versa.
struct Pair {
    now: Instant,
    a: Endpoint,
    b: Endpoint,
    spis_a: Spis,
    spis_b: Spis,
}

fn pair(suites: (&str, &str), seed: u64) -> Pair {
    let now = Instant::now();
    let ep = |p: IkePeerConfig, seed| {
        Endpoint::new(
            EndpointConfig {
                peers: vec![p],
                rng_seed: Some(seed),
                ..Default::default()
            },
            now,
        )
        .unwrap()
    };
    Pair {
        now,
        a: ep(peer("moon", "sun", "moon", A, B, suites), seed),
        b: ep(peer("sun", "moon", "sun", B, A, suites), seed ^ 0x5555),
        spis_a: Spis(0xa000_0000),
        spis_b: Spis(0xb000_0000),
    }
}

/// A initiates, the datagrams go back and forth until both sides are quiet. Returns the
/// CHILD SA pairs installed (2 when the handshake succeeded).
fn handshake(p: &mut Pair) -> usize {
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    p.a.initiate(p.now, "moon", &mut p.spis_a).unwrap();
    let mut installed = 0;
    let mut wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        for ep in [&mut p.a, &mut p.b] {
            while let Some(o) = ep.poll_output() {
                match o {
                    Output::Send {
                        local,
                        remote,
                        data,
                    } => wire.push((local, remote, data)),
                    Output::InstallChild(_) => installed += 1,
                    _ => {}
                }
            }
        }
        if wire.is_empty() {
            return installed;
        }
        for (src, dst, data) in wire.drain(..) {
            if dst == b_addr {
                p.b.handle_datagram(p.now, dst, src, &data, &mut p.spis_b);
            } else if dst == a_addr {
                p.a.handle_datagram(p.now, dst, src, &data, &mut p.spis_a);
            }
        }
    }
}

fn bench_ike(c: &mut Criterion) {
    let mut g = c.benchmark_group("ike_handshake");
    g.throughput(Throughput::Elements(1));
    for (name, suites) in [
        (
            "aes128gcm16-prfsha256-x25519",
            ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ),
        (
            "aes128-sha256-x25519",
            ("aes128-sha256-x25519", "aes128-sha256"),
        ),
    ] {
        // Check once, outside the timing, that the handshake really completes.
        assert_eq!(
            handshake(&mut pair(suites, 1)),
            2,
            "{name}: no CHILD SA pair"
        );
        let mut seed = 0u64;
        g.bench_function(BenchmarkId::new("init_auth_pair", name), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    pair(suites, seed)
                },
                |mut p| {
                    let n = handshake(&mut p);
                    debug_assert_eq!(n, 2);
                    p
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The two suites alternately, 20 handshakes per round, median and best of 15 rounds: the
/// numbers to quote on a shared machine.
fn interleaved() {
    const ROUNDS: usize = 15;
    const PER_ROUND: usize = 20;
    let suites = [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes128-sha256-x25519", "aes128-sha256"),
    ];
    let mut us = vec![Vec::new(); suites.len()];
    let mut seed = 1000u64;
    for _ in 0..ROUNDS {
        for (k, &s) in suites.iter().enumerate() {
            let mut pairs: Vec<Pair> = (0..PER_ROUND)
                .map(|_| {
                    seed += 1;
                    pair(s, seed)
                })
                .collect();
            let t = Instant::now();
            for p in pairs.iter_mut() {
                assert_eq!(handshake(p), 2);
            }
            us[k].push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
        }
    }
    println!("\ninterleaved IKE_SA_INIT + IKE_AUTH pair, both sides ({ROUNDS} rounds)");
    for (k, (ike, _)) in suites.iter().enumerate() {
        let v = &mut us[k];
        v.sort_by(f64::total_cmp);
        let (med, best) = (v[v.len() / 2], v[0]);
        println!(
            "{ike:>30} {med:>8.0} us median {best:>8.0} us best  {:>6.0} handshakes/s (median)",
            1e6 / med
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_ike(&mut c);
    c.final_summary();
    // `cargo test --benches` runs bench binaries without --bench: skip the extra loop there.
    if std::env::args().any(|a| a == "--bench") {
        interleaved();
    }
}
