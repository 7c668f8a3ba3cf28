//! AEAD backends and the ESP decap/encap paths.
//!
//! Decides the datapath's default AES-GCM backend (ring vs RustCrypto `aes-gcm`) and measures
//! what ESP processing adds on top of the bare cipher call. Criterion runs the cases one after
//! another; on this shared 2-core machine that is noisy, so `interleaved()` at the end runs the
//! two backends alternately in one process and prints the ratio (the number to quote), then
//! decap against the bare open it is built on, the same way.
//!
//! Cases: bare AES-GCM open (128 and 256, both backends), decap for every algorithm and
//! AES-GCM backend, encap likewise, each at 64, 512, 1400 and 9000 bytes of payload.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use esplab_esp::{decap, Algorithm, Backend, Cipher, OutboundSa, ReplayWindow, SaParams};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: [usize; 4] = [64, 512, 1400, 9000];
const SPI: u32 = 0xc0de_0001;

fn params(alg: Algorithm, backend: Backend) -> SaParams {
    let mut p = SaParams::new(
        SPI,
        alg,
        &vec![0x42; alg.enc_key_len()],
        &vec![0x17; alg.integ_key_len()],
    );
    p.backend = backend;
    p
}

/// One ESP packet (SPI..ICV) carrying `size` payload bytes.
fn esp_packet(p: &SaParams, size: usize) -> Vec<u8> {
    let tx = OutboundSa::new(p).unwrap();
    let h = tx.header_len();
    let mut buf = vec![0u8; h + size + tx.max_trailer_len()];
    let r = tx.encap_slice(&mut buf, h..h + size, 4, None).unwrap();
    buf[r.esp].to_vec()
}

struct BareRing(ring::aead::LessSafeKey);
// Two values per size, made once outside the timed loops: the variant size does not matter.
#[allow(clippy::large_enum_variant)]
enum BareRustCrypto {
    K128(aes_gcm::Aes128Gcm),
    K256(aes_gcm::Aes256Gcm),
}

/// ring AES-GCM with a `key_len`-byte key (16 or 32).
fn bare_ring_key(key_len: usize) -> BareRing {
    let alg = if key_len == 32 {
        &ring::aead::AES_256_GCM
    } else {
        &ring::aead::AES_128_GCM
    };
    let k = ring::aead::UnboundKey::new(alg, &vec![0x42; key_len]).unwrap();
    BareRing(ring::aead::LessSafeKey::new(k))
}

fn bare_ring() -> BareRing {
    bare_ring_key(16)
}

/// RustCrypto AES-GCM with a `key_len`-byte key (16 or 32).
fn bare_rustcrypto_key(key_len: usize) -> BareRustCrypto {
    use aes_gcm::KeyInit;
    let key = vec![0x42; key_len];
    if key_len == 32 {
        BareRustCrypto::K256(aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap())
    } else {
        BareRustCrypto::K128(aes_gcm::Aes128Gcm::new_from_slice(&key).unwrap())
    }
}

fn bare_rustcrypto() -> BareRustCrypto {
    bare_rustcrypto_key(16)
}

impl BareRing {
    fn seal(&self, buf: &mut [u8]) -> [u8; 16] {
        let n = ring::aead::Nonce::assume_unique_for_key([1; 12]);
        let t = self
            .0
            .seal_in_place_separate_tag(n, ring::aead::Aad::from([0u8; 8]), buf)
            .unwrap();
        t.as_ref().try_into().unwrap()
    }
    fn open(&self, buf: &mut [u8], tag: [u8; 16]) -> bool {
        let n = ring::aead::Nonce::assume_unique_for_key([1; 12]);
        self.0
            .open_in_place_separate_tag(
                n,
                ring::aead::Aad::from([0u8; 8]),
                ring::aead::Tag::from(tag),
                buf,
                0..,
            )
            .is_ok()
    }
}

impl BareRustCrypto {
    fn open(&self, buf: &mut [u8], tag: [u8; 16]) -> bool {
        use aes_gcm::aead::AeadInPlace;
        let (n, t) = (&[1; 12].into(), &tag.into());
        match self {
            BareRustCrypto::K128(k) => k.decrypt_in_place_detached(n, &[0u8; 8], buf, t),
            BareRustCrypto::K256(k) => k.decrypt_in_place_detached(n, &[0u8; 8], buf, t),
        }
        .is_ok()
    }
}

/// The bare AES-GCM open of each backend on the same buffer: the floor for decap.
fn bare_open(c: &mut Criterion) {
    for (group, key_len) in [("bare_open_aes128gcm", 16), ("bare_open_aes256gcm", 32)] {
        let mut g = c.benchmark_group(group);
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let r = bare_ring_key(key_len);
            let rc = bare_rustcrypto_key(key_len);
            let mut ct = vec![0u8; size];
            let tag = r.seal(&mut ct);
            let mut buf = ct.clone();
            g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
                b.iter(|| {
                    buf.copy_from_slice(&ct);
                    assert!(r.open(black_box(&mut buf), tag));
                })
            });
            g.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
                b.iter(|| {
                    buf.copy_from_slice(&ct);
                    assert!(rc.open(black_box(&mut buf), tag));
                })
            });
        }
        g.finish();
    }
}

/// Every algorithm, with both AES-GCM backends (CBC+HMAC has one implementation).
const CASES: [(Algorithm, Backend); 6] = [
    (Algorithm::AesGcm128, Backend::Ring),
    (Algorithm::AesGcm128, Backend::RustCrypto),
    (Algorithm::AesGcm256, Backend::Ring),
    (Algorithm::AesGcm256, Backend::RustCrypto),
    (Algorithm::AesCbc128HmacSha256, Backend::Ring),
    (Algorithm::AesCbc256HmacSha256, Backend::Ring),
];

fn case_name(alg: Algorithm, backend: Backend) -> String {
    if alg.is_aead() {
        format!("{}/{}", alg.name(), backend.name())
    } else {
        alg.name().to_string()
    }
}

/// Full inbound decap (length/SPI checks, replay check, ICV + decrypt, trailer checks,
/// replay commit) per algorithm and backend. The packet is restored from a template each
/// iteration (as in the bare case) and the replay window reset, so one packet can be reused.
fn decap_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("decap");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for (alg, backend) in CASES {
            let p = params(alg, backend);
            let pkt = esp_packet(&p, size);
            let cipher = Cipher::new(alg, backend, &p.enc_key, &p.integ_key).unwrap();
            let mut replay = ReplayWindow::new(64, false).unwrap();
            let mut buf = pkt.clone();
            g.bench_with_input(
                BenchmarkId::new(case_name(alg, backend), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        buf.copy_from_slice(&pkt);
                        replay.reset();
                        decap(&cipher, SPI, &mut replay, black_box(&mut buf)).unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

/// Outbound encap per algorithm and AES-GCM backend.
fn encap_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("encap");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for (alg, backend) in CASES {
            let p = params(alg, backend);
            let mut tx = OutboundSa::new(&p).unwrap();
            let h = tx.header_len();
            let mut buf = vec![0u8; h + size + tx.max_trailer_len()];
            g.bench_with_input(
                BenchmarkId::new(case_name(alg, backend), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        tx.set_next_seq(1);
                        tx.encap_slice(black_box(&mut buf), h..h + size, 4, None)
                            .unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

/// ring vs RustCrypto, alternating rounds in one process: both see the same machine state,
/// so the ratio is trustworthy even when absolute numbers drift.
fn interleaved() {
    println!("\ninterleaved AES-128-GCM open, ring vs rustcrypto (median of 15 rounds)");
    println!(
        "{:>6} {:>12} {:>12} {:>8}",
        "bytes", "ring ns", "rustcrypto", "ratio"
    );
    for size in SIZES {
        let r = bare_ring();
        let rc = bare_rustcrypto();
        let mut ct = vec![0u8; size];
        let tag = r.seal(&mut ct);
        let mut buf = ct.clone();
        let iters = (2_000_000 / size).max(1000);
        let mut tr = Vec::new();
        let mut tc = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            for _ in 0..iters {
                buf.copy_from_slice(&ct);
                black_box(r.open(black_box(&mut buf), tag));
            }
            tr.push(t.elapsed() / iters as u32);
            let t = Instant::now();
            for _ in 0..iters {
                buf.copy_from_slice(&ct);
                black_box(rc.open(black_box(&mut buf), tag));
            }
            tc.push(t.elapsed() / iters as u32);
        }
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_nanos() as f64
        };
        let (a, b) = (med(&mut tr), med(&mut tc));
        println!("{size:>6} {a:>12.0} {b:>12.0} {:>7.2}x", b / a);
    }
    decap_vs_bare();
}

/// Decap AES-GCM (ring, the default) against the bare ring open of a buffer of the same
/// length, alternating rounds, median of 15: what ESP processing adds to the cipher.
fn decap_vs_bare() {
    for (alg, key_len) in [(Algorithm::AesGcm128, 16), (Algorithm::AesGcm256, 32)] {
        println!(
            "\ninterleaved {} decap vs bare open, ring (median of 15 rounds)",
            alg.name()
        );
        println!(
            "{:>6} {:>12} {:>12} {:>8}",
            "bytes", "bare ns", "decap ns", "ratio"
        );
        for size in SIZES {
            let p = params(alg, Backend::Ring);
            let pkt = esp_packet(&p, size);
            let cipher = Cipher::new(alg, Backend::Ring, &p.enc_key, &p.integ_key).unwrap();
            let mut replay = ReplayWindow::new(64, false).unwrap();
            let mut dbuf = pkt.clone();
            // The bare open decrypts what decap decrypts: payload + padding + trailer.
            let text = pkt.len() - 8 - 8 - 16;
            let r = bare_ring_key(key_len);
            let mut ct = vec![0u8; text];
            let tag = r.seal(&mut ct);
            let mut buf = ct.clone();
            let iters = (2_000_000 / size).max(1000);
            let (mut tb, mut td) = (Vec::new(), Vec::new());
            for _ in 0..15 {
                let t = Instant::now();
                for _ in 0..iters {
                    buf.copy_from_slice(&ct);
                    black_box(r.open(black_box(&mut buf), tag));
                }
                tb.push(t.elapsed() / iters as u32);
                let t = Instant::now();
                for _ in 0..iters {
                    dbuf.copy_from_slice(&pkt);
                    replay.reset();
                    black_box(decap(&cipher, SPI, &mut replay, black_box(&mut dbuf)).unwrap());
                }
                td.push(t.elapsed() / iters as u32);
            }
            let med = |v: &mut Vec<Duration>| {
                v.sort();
                v[v.len() / 2].as_nanos() as f64
            };
            let (a, b) = (med(&mut tb), med(&mut td));
            println!("{size:>6} {a:>12.0} {b:>12.0} {:>7.2}x", b / a);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bare_open, decap_path, encap_path
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs bench binaries with --bench absent: skip the long loop there.
    if std::env::args().any(|a| a == "--bench") {
        interleaved();
    }
}
