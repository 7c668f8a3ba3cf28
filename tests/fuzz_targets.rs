//! The cargo-fuzz targets (`fuzz/`, issue #8) on stable Rust: every target body in
//! `fuzz/src/targets.rs` runs here over its seed corpus (`fuzz/seeds/NAME/`, also made
//! in memory by [`seeds`]), over mutations of the seeds and over random bytes, so CI
//! exercises the same code for a few seconds without libFuzzer or a nightly compiler.
//! `just fuzz` runs the real fuzzer; results are in docs/RELIABILITY.md.
//!
//! `cargo test --test fuzz_targets -- --ignored write_seed_corpus` rewrites the seed
//! directories from [`seeds`].

#[path = "../fuzz/src/targets.rs"]
#[allow(dead_code)]
mod targets;

use esplab_esp::{Algorithm, OutboundSa};
use esplab_ike::{Flags, IkeHeader, Notify, NotifyType, Payload, PayloadType};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use targets::*;

fn seed_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(name)
}

/// A 28-byte IPv4/UDP packet 198.19.2.1 → 198.19.1.1 (inside the known SA's selectors).
fn inner_v4(id: u8) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[5] = id;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 19, 2, 1]);
    p[16..20].copy_from_slice(&[198, 19, 1, 1]);
    p[24..26].copy_from_slice(&8u16.to_be_bytes());
    p
}

/// The ESP text (payload‖padding‖Pad Length‖Next Header) the engine would build.
fn esp_text(alg: Algorithm, payload: &[u8], next_header: u8) -> Vec<u8> {
    let align = if alg.is_aead() { 4 } else { 16 };
    let pad = (align - (payload.len() + 2) % align) % align;
    let mut t = payload.to_vec();
    t.extend((1..=pad as u8).collect::<Vec<_>>());
    t.push(pad as u8);
    t.push(next_header);
    t
}

/// An authentic packet for the known SA via the engine's own encapsulation.
fn engine_packet(alg: Algorithm, esn: bool, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut tx = OutboundSa::new(&known_sa(alg, esn, 64)).unwrap();
    tx.set_next_seq(seq);
    let start = tx.header_len();
    let mut buf = vec![0u8; start + payload.len() + tx.max_trailer_len()];
    buf[start..start + payload.len()].copy_from_slice(payload);
    let out = tx
        .encap_slice(&mut buf, start..start + payload.len(), 4, None)
        .unwrap();
    buf[out.esp].to_vec()
}

/// IPv4 + UDP 4500 → 4500 around `payload`, 198.18.0.2 → 198.18.0.1.
fn outer_udp4(payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 18, 0, 2]);
    p[16..20].copy_from_slice(&[198, 18, 0, 1]);
    p[20..22].copy_from_slice(&4500u16.to_be_bytes());
    p[22..24].copy_from_slice(&4500u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// One known-SA packet in the `esp_known_sa` input format.
fn known_op(esn: bool, seq: u64, text: &[u8]) -> Vec<u8> {
    let mut v = vec![if esn { 1 } else { 0 }];
    v.extend_from_slice(&(seq as u32).to_be_bytes());
    if esn {
        v.extend_from_slice(&((seq >> 32) as u32).to_be_bytes());
    }
    v.push(text.len() as u8);
    v.extend_from_slice(text);
    v
}

fn sealed_sk(gcm: bool, payloads: &[Payload], mid: u32) -> Vec<u8> {
    let (e, a) = sk_keys(gcm);
    let c = if gcm {
        esplab_ike::crypto::SkCipher::new(esplab_ike::Encr::AesGcm128, None, &e, &a)
    } else {
        esplab_ike::crypto::SkCipher::new(
            esplab_ike::Encr::AesCbc128,
            Some(esplab_ike::Integ::HmacSha256_128),
            &e,
            &a,
        )
    }
    .unwrap();
    let h = IkeHeader {
        spi_i: 7,
        spi_r: 9,
        exchange_type: esplab_ike::ExchangeType::INFORMATIONAL,
        flags: Flags::INITIATOR,
        message_id: mid,
    };
    c.seal(&h, payloads, &vec![0x11; c.iv_len()]).unwrap()
}

/// Seeds per target: the test vectors, the example configs, a real IKE exchange and
/// packets built for the known SA.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vectors_pcap = std::fs::read(root.join("tests/vectors/pcaps/esp_positive.pcap")).unwrap();
    let mut out = Vec::new();
    match name {
        "esp_decap" => {
            for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
                for esn in [false, true] {
                    let sel = i as u8 | if esn { 4 } else { 0 };
                    let p = engine_packet(alg, esn, 1, &inner_v4(1));
                    for (mode, bytes) in [(0u8, p.clone()), (1, outer_udp4(&p)), (2, p.clone())] {
                        let mut s = vec![sel | (mode << 3), 0];
                        s.extend_from_slice(&bytes);
                        out.push(s);
                    }
                }
            }
            out.push(vec![0, 0, 0xff]);
            out.push([&[0u8, 0, 0, 0, 0, 0][..], &[1u8; 28][..]].concat());
            out.push([&[0u8, 0, 0, 0, 0, 7, 0, 0, 0, 1][..], &[9u8; 20][..]].concat());
            for f in pcap_io::read_capture(&vectors_pcap).unwrap().iter().take(8) {
                let mut s = vec![1 << 3, 0];
                s.extend_from_slice(&f.data);
                out.push(s);
            }
        }
        "esp_known_sa" => {
            for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
                for esn in [false, true] {
                    let sel = i as u8 | if esn { 4 } else { 0 } | (2 << 3);
                    let text = esp_text(alg, &inner_v4(1), 4);
                    let mut s = vec![sel];
                    for seq in [1u64, 2, 2, 70, 3, 1 << 32] {
                        s.extend(known_op(esn, seq, &text));
                    }
                    // Bad padding, pad length beyond the payload, next header 59 and 17.
                    let mut bad = text.clone();
                    let n = bad.len();
                    bad[n - 2] = 200;
                    s.extend(known_op(esn, 80, &bad));
                    s.extend(known_op(esn, 81, &esp_text(alg, &inner_v4(2), 59)));
                    s.extend(known_op(esn, 82, &esp_text(alg, &inner_v4(3), 17)));
                    out.push(s);
                }
            }
        }
        "ike_message" => out.extend(transcript().packets.iter().map(|(_, d)| d.clone())),
        "sk_decrypt" => {
            let inner = vec![
                Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])),
                Payload::Notify(Notify::new(NotifyType::INVALID_SPI, vec![0xc0, 0xde, 0, 1])),
            ];
            for (mode, gcm) in [(0u8, true), (1, false)] {
                for p in [&inner[..], &inner[..1], &[][..]] {
                    let mut s = vec![mode];
                    s.extend(sealed_sk(gcm, p, 2));
                    out.push(s);
                }
            }
            let mut plain = Vec::new();
            let first = esplab_ike::emit_payloads(&inner, &mut plain).unwrap();
            plain.push(0);
            let mut s = vec![2, first.0, 0, 0, 0, 2];
            s.extend(plain);
            out.push(s);
            out.extend(
                transcript()
                    .packets
                    .iter()
                    .filter(|(_, d)| d.len() > 28 && d[16] == PayloadType::SK.0)
                    .map(|(_, d)| [&[0u8][..], d].concat()),
            );
        }
        "ike_state" => {
            let n = transcript().packets.len() as u8;
            // Replay the whole exchange from the start, then from mid-way with forgeries.
            out.push([vec![0u8], (0..n).flat_map(|i| [2u8, i]).collect()].concat());
            out.push(vec![3, 1, 2, 0, 0, 1, 0x20, 0, 3, 0, 0, 0x12, 5, 0, 3, 10]);
            out.push(vec![6, 0, 0, 40, 1, 2, 3, 0x13, 30]);
            for i in 0..n {
                out.push(vec![i, 1, i, 0, 0, 28, 1, 0]);
            }
        }
        "config" => {
            for f in [
                "examples/two-peers/a.toml",
                "examples/two-peers/b.toml",
                "examples/ike-two-peers/a.toml",
                "examples/ike-two-peers/b.toml",
            ] {
                out.push(std::fs::read(root.join(f)).unwrap());
            }
        }
        "pcap" => {
            out.push(vectors_pcap.clone());
            out.push(vectors_pcap[..200].to_vec());
            let dir = std::env::temp_dir().join(format!("esplab-fuzz-seed-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("ike.pcap");
            let pkts: Vec<_> = transcript()
                .packets
                .iter()
                .take(4)
                .enumerate()
                .map(|(i, (_, d))| {
                    let mut marked = vec![0u8; 4];
                    marked.extend_from_slice(d);
                    (
                        std::time::Duration::from_millis(i as u64),
                        outer_udp4(&marked),
                    )
                })
                .collect();
            pcap_io::write_raw_pcap(&path, &pkts).unwrap();
            out.push(std::fs::read(&path).unwrap());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        other => panic!("no target {other}"),
    }
    out
}

/// Seeds from memory and from `fuzz/seeds/NAME/` (which the fuzzer's corpus grows from).
fn all_seeds(name: &str) -> Vec<Vec<u8>> {
    let mut v = seeds(name);
    if let Ok(rd) = std::fs::read_dir(seed_dir(name)) {
        for e in rd.flatten() {
            v.push(std::fs::read(e.path()).unwrap());
        }
    }
    v
}

fn run_target(name: &str) {
    let f = TARGETS.iter().find(|(n, _)| *n == name).unwrap().1;
    let seeds = all_seeds(name);
    assert!(!seeds.is_empty());
    for s in &seeds {
        f(s);
    }
    // Random bytes and seed mutations: flips, cuts, splices.
    let mut cfg = ProptestConfig::with_cases(if name == "ike_state" { 128 } else { 512 });
    cfg.failure_persistence = None;
    let mut runner = proptest::test_runner::TestRunner::new(cfg);
    let strat = (
        any::<prop::sample::Index>(),
        proptest::collection::vec((any::<u16>(), any::<u8>()), 0..8),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    runner
        .run(&strat, |(i, flips, cut, tail, random)| {
            let mut d = if random {
                tail.clone()
            } else {
                seeds[i.index(seeds.len())].clone()
            };
            for (at, x) in flips {
                if !d.is_empty() {
                    let n = d.len();
                    d[at as usize % n] ^= x;
                }
            }
            if let Some(c) = cut {
                d.truncate(c as usize % (d.len() + 1));
            }
            if !random {
                d.extend_from_slice(&tail);
            }
            f(&d);
            Ok(())
        })
        .unwrap();
}

#[test]
fn esp_decap_target() {
    run_target("esp_decap");
}

#[test]
fn esp_known_sa_target() {
    run_target("esp_known_sa");
}

#[test]
fn ike_message_target() {
    run_target("ike_message");
}

#[test]
fn sk_decrypt_target() {
    run_target("sk_decrypt");
}

#[test]
fn ike_state_target() {
    run_target("ike_state");
}

#[test]
fn config_target() {
    run_target("config");
}

#[test]
fn pcap_target() {
    run_target("pcap");
}

/// The known-SA sealing (done outside the engine) must produce packets the engine
/// accepts, or `esp_known_sa` would only ever test the ICV failure path.
#[test]
fn known_sa_seal_agrees_with_the_engine() {
    for alg in Algorithm::ALL {
        for esn in [false, true] {
            let p = known_sa(alg, esn, 64);
            let seq = if esn { (3 << 32) | 5 } else { 5 };
            let text = esp_text(alg, &inner_v4(9), 4);
            let mut ours = build_known(&p, seq, 0, &text);
            let mut rx = esplab_esp::InboundSa::new(&p).unwrap();
            if esn {
                rx.set_replay(
                    esplab_esp::ReplayWindow::with_right_edge(64, true, 3 << 32).unwrap(),
                );
            }
            let d = rx
                .decap(&mut ours)
                .unwrap_or_else(|e| panic!("{alg:?} esn={esn}: {e}"));
            assert_eq!(d.seq, seq);
            assert_eq!(&ours[d.payload], &inner_v4(9)[..]);
        }
    }
    // And through a node: the input format reaches Deliver (no panic means the target's
    // invariants held for it).
    for s in seeds("esp_known_sa") {
        esp_known_sa(&s);
    }
}

#[test]
fn sk_seal_agrees_with_the_ike_crate() {
    let inner = [Payload::Notify(Notify::new(
        NotifyType::INITIAL_CONTACT,
        vec![],
    ))];
    let mut plain = Vec::new();
    let first = esplab_ike::emit_payloads(&inner, &mut plain).unwrap();
    plain.push(0);
    let msg = seal_sk_gcm(first.0, 4, &plain);
    let (e, _) = sk_keys(true);
    let c = esplab_ike::crypto::SkCipher::new(esplab_ike::Encr::AesGcm128, None, &e, &[]).unwrap();
    assert_eq!(c.open(&msg).unwrap().payloads().unwrap(), inner);
}

#[test]
fn transcript_covers_every_exchange() {
    let t = transcript();
    let kinds: std::collections::BTreeSet<_> = t
        .packets
        .iter()
        .map(|(_, d)| (d[18], d[19] & 0x20))
        .collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    // `ike_state` tells real messages from forged ones with this set, built once.
    let real: std::collections::BTreeSet<_> = t.packets.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(t.real, real);
}

/// `fuzz/uninstrumented-rustc.sh` (the fuzz workspace's rustc wrapper) strips libFuzzer's
/// instrumentation and debug assertions from the third-party cryptography crates only.
#[test]
fn fuzz_rustc_wrapper_strips_only_crypto_crates() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/uninstrumented-rustc.sh");
    let run = |crate_name: &str| {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(["echo", "--crate-name", crate_name, "-Cpasses=sancov-module"])
            .args(["-C", "llvm-args=-sanitizer-coverage-level=4"])
            .args([
                "-Cllvm-args=-sanitizer-coverage-trace-compares",
                "--cfg",
                "fuzzing",
            ])
            .args([
                "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
                "-Cdebug-assertions",
            ])
            .output()
            .expect("bash runs the wrapper");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(
        run("curve25519_dalek"),
        "--crate-name curve25519_dalek --cfg fuzzing \
         -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
         -Cdebug-assertions=off -Coverflow-checks=off"
    );
    assert_eq!(
        run("esplab_ike"),
        "--crate-name esplab_ike -Cpasses=sancov-module -C \
         llvm-args=-sanitizer-coverage-level=4 \
         -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
         -Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cdebug-assertions"
    );
}

/// Rewrites `fuzz/seeds/` (run by hand when the seed generators change).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (name, _) in TARGETS {
        let dir = seed_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
        }
    }
}
