//! Fixed-work driver for instruction counting (`just bench-icount`).
//!
//! `icount PATH N` runs N operations of one hot path after a fixed setup. Run it under
//! `valgrind --tool=callgrind` with N and 2N: the difference of the two totals divided by N is
//! the instructions per operation, with setup cancelled out. Instruction counts do not care
//! what else the shared machine is doing, unlike wall-clock benchmarks.

use esplab_esp::{decap, Algorithm, Backend, Cipher, OutboundSa, ReplayWindow, SaParams};
use esplab_ike::{EndpointConfig, Identity, IkePeerConfig};
use esplab_node::{
    Agent, AgentConfig, Inbound, LogLimits, Node, NodeConfig, PeerConfig, UdpDatagram,
    UnderlayEncap,
};
use esplab_sad::{Lookup, Sad, SadConfig};
use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

fn lcg(x: &mut u64) -> u32 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*x >> 32) as u32
}

#[path = "../benches/support/floors.rs"]
mod floors;
use floors::{miss_word, not_hit, Found};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("lookup-hit");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    match path {
        "lookup-hit" | "lookup-miss" => {
            let sad: Sad<u32> = Sad::new(SadConfig {
                rng_seed: Some(1),
                ..SadConfig::default()
            });
            let spis: Vec<u32> = (0..1024).map(|i| sad.allocate(i).unwrap()).collect();
            let mut r = sad.reader();
            let mut x = 7u64;
            let mut hits = 0u32;
            for i in 0..n {
                let spi = if path == "lookup-hit" {
                    spis[i & 1023]
                } else {
                    lcg(&mut x) | 0x100
                };
                if let Lookup::Hit(v) = r.lookup(black_box(spi)) {
                    hits = hits.wrapping_add(*v);
                }
            }
            black_box(hits);
        }
        "lookup-batch-hit" | "lookup-batch-miss" => {
            // Per lookup, through the reader's adaptive batch (32 per call) on the same
            // 1Ki-SA table as `lookup-hit`/`lookup-miss`. Larger tables take the
            // fingerprinted and two-pass paths, but building one under callgrind costs
            // billions of instructions of setup; criterion covers them (benches/sad.rs).
            let sas = 1024;
            let sad: Sad<u32> = Sad::new(SadConfig {
                rng_seed: Some(1),
                initial_capacity: sas,
                ..SadConfig::default()
            });
            let spis: Vec<u32> = (0..sas).map(|i| sad.allocate(i as u32).unwrap()).collect();
            let mut r = sad.reader();
            let mut x = 7u64;
            let mut hits = 0usize;
            let mut burst = [0u32; 32];
            for b in 0..n / 32 {
                for (k, s) in burst.iter_mut().enumerate() {
                    *s = if path == "lookup-batch-hit" {
                        spis[(b * 32 + k).wrapping_mul(40503) & (sas - 1)]
                    } else {
                        lcg(&mut x) | 0x100
                    };
                }
                let mut out = [Lookup::Unknown; 32];
                r.lookup_batch(black_box(&burst), &mut out);
                hits += out.iter().filter(|o| matches!(o, Lookup::Hit(_))).count();
            }
            black_box(hits);
        }
        "floor-vec" | "floor-word" | "floor-min" | "floor-flat" | "sad-batch-map" => {
            // #7's SAD-hit target against its floors, in instructions (what bounds an
            // L1-resident loop's time): the same precomputed order of hits on the same 1Ki-SA
            // table (the node's 4-byte values), 32 per round, each answer stored into an
            // array of 32 (the output shape of the SAD's batch). `floor-vec`: the bare index,
            // `vec[spi & mask]`, nothing verified (benches/sad.rs `vec_batch32`);
            // `floor-word`: SPI and value packed in one `u64` per slot, the SPI (high half)
            // compared through an `Option` filter (`word_batch32`); `floor-min`: the SPI in the
            // low half, one compare, misses out of line, the word as the answer (`word_min`,
            // the least a lookup that checks the SPI does); `floor-flat`:
            // that word with the node's three-way answer and hit count (`flat_found`);
            // `sad-batch-map`: the SAD as the node calls it (`SadReader::lookup_batch_map`, the
            // snapshot checked once per round).
            let sas = 1024;
            let sad: Sad<NonZeroU32> = Sad::new(SadConfig {
                rng_seed: Some(1),
                initial_capacity: sas,
                ..SadConfig::default()
            });
            let spis: Vec<u32> = (1..=sas as u32)
                .map(|i| sad.allocate(NonZeroU32::new(i).unwrap()).unwrap())
                .collect();
            let mask = sad.stats().slots - 1;
            let mut vec = vec![0u64; mask + 1];
            let mut words = vec![0u64; mask + 1];
            let mut mins = vec![0u64; mask + 1];
            for (i, &s) in spis.iter().enumerate() {
                vec[s as usize & mask] = i as u64;
                words[s as usize & mask] = u64::from(s) << 32 | (i as u64 + 1);
                mins[s as usize & mask] = (i as u64 + 1) << 32 | u64::from(s);
            }
            let mut x = 7u64;
            let order: Vec<u32> = (0..4096)
                .map(|_| spis[lcg(&mut x) as usize % sas])
                .collect();
            let mut r = sad.reader();
            let mut hits = 0usize;
            // Which case, decided once: a string compare per round would be counted too.
            let case = ["floor-vec", "floor-word", "floor-min", "floor-flat"]
                .iter()
                .position(|&p| p == path);
            for b in 0..n / 32 {
                let burst = black_box(&order[(b * 32) % order.len()..][..32]);
                match case {
                    Some(0) => {
                        let mut out = [0u64; 32];
                        for (o, &s) in out.iter_mut().zip(burst) {
                            *o = vec[s as usize & mask];
                        }
                        black_box(&out);
                    }
                    Some(1) => {
                        let mut out = [None; 32];
                        for (o, &s) in out.iter_mut().zip(burst) {
                            let w = words[s as usize & mask];
                            *o = NonZeroU32::new(w as u32).filter(|_| (w >> 32) as u32 == s);
                        }
                        black_box(&out);
                    }
                    Some(2) => {
                        let mut out = [0u64; 32];
                        for (o, &s) in out.iter_mut().zip(burst) {
                            let w = mins[s as usize & mask];
                            *o = if w as u32 == s { w } else { miss_word(s) };
                        }
                        black_box(&out);
                    }
                    Some(_) => {
                        let mut out = [Found::Unknown; 32];
                        for (o, &s) in out.iter_mut().zip(burst) {
                            let w = words[s as usize & mask];
                            *o = match NonZeroU32::new(w as u32) {
                                Some(v) if (w >> 32) as u32 == s => {
                                    hits += 1;
                                    Found::Hit(v)
                                }
                                _ => not_hit(s),
                            };
                        }
                        black_box(&out);
                    }
                    None => {
                        let mut out = [Found::Unknown; 32];
                        r.lookup_batch_map(burst, &mut out, Found::from);
                        black_box(&out);
                    }
                }
            }
            black_box(hits);
        }
        "decap-gcm128-1400" | "decap-gcm128-64" => {
            let size = if path.ends_with("1400") { 1400 } else { 64 };
            let p = SaParams::new(0xc0de_0001, Algorithm::AesGcm128, &[0x42; 20], &[]);
            let tx = OutboundSa::new(&p).unwrap();
            let h = tx.header_len();
            let mut buf = vec![0u8; h + size + tx.max_trailer_len()];
            let r = tx.encap_slice(&mut buf, h..h + size, 4, None).unwrap();
            let pkt = buf[r.esp].to_vec();
            let cipher = Cipher::new(Algorithm::AesGcm128, Backend::Ring, &p.enc_key, &[]).unwrap();
            let mut w = ReplayWindow::new(64, false).unwrap();
            let mut b = pkt.clone();
            for _ in 0..n {
                b.copy_from_slice(&pkt);
                w.reset();
                black_box(decap(&cipher, 0xc0de_0001, &mut w, black_box(&mut b)).unwrap());
            }
        }
        "drop-unknown-spi"
        | "drop-unknown-spi-batch"
        | "drop-one-flow"
        | "drop-unknown-spi-drained" => {
            // The whole invalid-SPI path of the node: parse, SAD miss, counters, rate
            // limiter, event queue (full after the first 1024: drop-and-count), with random
            // SPIs one at a time, through `inbound_udp_batch` 32 at a time, with one stale
            // SPI repeated (per-flow limiter case), or with the events taken after every 32
            // packets (each packet builds and queues its event).
            let ip = |s: &str| s.parse().unwrap();
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
            let mut node = Node::new(cfg, Some(1));
            let t0 = Instant::now();
            let (src, dst) = (ip("198.18.0.1"), ip("198.18.0.2"));
            let mut x = 9u64;
            if path == "drop-unknown-spi-batch" {
                let mut bufs = [[0u8; 64]; esplab_node::BATCH];
                let mut out = [const { Inbound::Keepalive }; esplab_node::BATCH];
                for _ in 0..n / esplab_node::BATCH {
                    for b in bufs.iter_mut() {
                        b[..4].copy_from_slice(&(lcg(&mut x) | 0x100).to_be_bytes());
                    }
                    let mut it = bufs.iter_mut();
                    let mut batch: [UdpDatagram<'_>; esplab_node::BATCH] =
                        std::array::from_fn(|_| UdpDatagram {
                            src,
                            sport: 4500,
                            dst,
                            dport: 4500,
                            buf: &mut it.next().unwrap()[..],
                            payload: 0..64,
                        });
                    node.inbound_udp_batch(black_box(t0), black_box(&mut batch), &mut out);
                    black_box(&out);
                }
            } else {
                let mut pkt = [0u8; 64];
                for i in 0..n {
                    let spi = if path == "drop-one-flow" {
                        0x5eed_0101
                    } else {
                        lcg(&mut x) | 0x100
                    };
                    pkt[..4].copy_from_slice(&spi.to_be_bytes());
                    // Arguments through black_box: no constant folding of the addresses.
                    let (t, s, d) = black_box((t0, src, dst));
                    black_box(node.inbound_udp(t, s, 4500, d, 4500, &mut pkt, 0..64));
                    if path == "drop-unknown-spi-drained" && i % 32 == 31 {
                        while let Some(e) = node.poll_event() {
                            black_box(e);
                        }
                    }
                }
            }
        }
        "agent-unknown-spi-peer" | "agent-unknown-spi-stranger" => {
            // The daemon's whole invalid-SPI path: the agent's node drop plus the recovery
            // engine (per-SPI hold-down table, per-source event table, events), random SPIs
            // from the configured static peer (no IKE SA, recovery off: the default) or from
            // an address that is no configured peer; one packet a microsecond (all within
            // one hold-down, so the 4096-entry table stays full and evicts), events taken
            // after every 32 packets as the daemon does.
            let ip = |s: &str| s.parse().unwrap();
            let mut peer = IkePeerConfig::new(
                "a",
                Identity::fqdn("b.example"),
                Some(Identity::fqdn("a.example")),
                b"icount psk",
            );
            peer.remote_addr = Some(SocketAddr::new(ip("198.18.0.1"), 500));
            let cfg = AgentConfig {
                node: NodeConfig {
                    name: "b".into(),
                    local: ip("198.18.0.2"),
                    peers: vec![],
                    log_limits: LogLimits::default(),
                    event_queue: 1024,
                    retired_grace: Duration::from_secs(5),
                },
                ike: EndpointConfig {
                    peers: vec![peer],
                    rng_seed: Some(1),
                    ..Default::default()
                },
                debug_keys: false,
                recovery: Default::default(),
            };
            let t0 = Instant::now();
            let mut agent = Agent::new(cfg, t0).unwrap();
            let src = if path == "agent-unknown-spi-peer" {
                "198.18.0.1"
            } else {
                "198.18.0.99"
            };
            let (local, remote) = (
                SocketAddr::new(ip("198.18.0.2"), 4500),
                SocketAddr::new(ip(src), 4500),
            );
            let mut x = 9u64;
            let mut pkt = [0u8; 64];
            for i in 0..n {
                pkt[..4].copy_from_slice(&(lcg(&mut x) | 0x100).to_be_bytes());
                let now = t0 + Duration::from_micros(i as u64);
                let (t, l, r) = black_box((now, local, remote));
                black_box(agent.handle_underlay_udp(t, l, r, &mut pkt, 0..64));
                if i % 32 == 31 {
                    while let Some(e) = agent.poll_event() {
                        black_box(e);
                    }
                }
            }
            black_box(agent.recovery_stats());
        }
        "encap-node-gcm128-64" | "encap-tx-gcm128-64" => {
            // The outbound path of a node for a 64-byte inner packet: selector match,
            // sequence number, padding, AES-128-GCM seal, counters; through the node itself
            // or through the sending thread's handle (`[datapath] tx_thread`).
            let ip = |s: &str| s.parse().unwrap();
            let cfg = NodeConfig {
                name: "a".into(),
                local: ip("198.18.0.1"),
                peers: vec![PeerConfig {
                    name: "b".into(),
                    address: ip("198.18.0.2"),
                    encap: UnderlayEncap::Udp,
                    port: 4500,
                    local_ts: vec!["198.19.1.0/24".parse().unwrap()],
                    remote_ts: vec!["198.19.2.0/24".parse().unwrap()],
                }],
                log_limits: LogLimits::default(),
                event_queue: 1024,
                retired_grace: Duration::from_secs(5),
            };
            let mut node = Node::new(cfg, Some(1));
            let t0 = Instant::now();
            let p = SaParams::new(0xc0de_0001, Algorithm::AesGcm128, &[0x42; 20], &[]);
            node.install_outbound(0, &p, t0).unwrap();
            let h = esplab_node::HEADROOM;
            let mut buf = vec![0u8; h + 64 + esplab_node::TAILROOM];
            let mut pkt = [0u8; 64];
            pkt[0] = 0x45;
            pkt[2..4].copy_from_slice(&64u16.to_be_bytes());
            pkt[12..16].copy_from_slice(&[198, 19, 1, 1]);
            pkt[16..20].copy_from_slice(&[198, 19, 2, 1]);
            if path == "encap-tx-gcm128-64" {
                let mut tx = node.split_tx();
                for _ in 0..n {
                    buf[h..h + 64].copy_from_slice(&pkt);
                    black_box(tx.outbound(t0, black_box(&mut buf), h..h + 64));
                }
            } else {
                for _ in 0..n {
                    buf[h..h + 64].copy_from_slice(&pkt);
                    black_box(node.outbound(t0, black_box(&mut buf), h..h + 64));
                }
            }
        }
        other => {
            eprintln!("icount: unknown path {other:?} (lookup-hit, lookup-miss, lookup-batch-hit, lookup-batch-miss, floor-vec, floor-min, floor-word, floor-flat, sad-batch-map, decap-gcm128-64, decap-gcm128-1400, encap-node-gcm128-64, encap-tx-gcm128-64, drop-unknown-spi, drop-unknown-spi-batch, drop-one-flow, drop-unknown-spi-drained, agent-unknown-spi-peer, agent-unknown-spi-stranger)");
            std::process::exit(2);
        }
    }
}
