//! AEAD backends and the ESP decap/encap paths.
//!
//! Decides the datapath's default AES-GCM backend (ring vs RustCrypto `aes-gcm`) and measures
//! what ESP processing adds on top of the bare cipher call. Criterion runs the cases one after
//! another; on this shared 2-core machine that is noisy, so `interleaved()` at the end runs the
//! two backends alternately in one process and prints the ratio (the number to quote).

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
    let mut tx = OutboundSa::new(p).unwrap();
    let h = tx.header_len();
    let mut buf = vec![0u8; h + size + tx.max_trailer_len()];
    let r = tx.encap_slice(&mut buf, h..h + size, 4, None).unwrap();
    buf[r.esp].to_vec()
}

struct BareRing(ring::aead::LessSafeKey);
struct BareRustCrypto(aes_gcm::Aes128Gcm);

fn bare_ring() -> BareRing {
    let k = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[0x42; 16]).unwrap();
    BareRing(ring::aead::LessSafeKey::new(k))
}

fn bare_rustcrypto() -> BareRustCrypto {
    use aes_gcm::KeyInit;
    BareRustCrypto(aes_gcm::Aes128Gcm::new_from_slice(&[0x42; 16]).unwrap())
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
        self.0
            .decrypt_in_place_detached(&[1; 12].into(), &[0u8; 8], buf, &tag.into())
            .is_ok()
    }
}

/// The bare AES-128-GCM open of each backend on the same buffer: the floor for decap.
fn bare_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("bare_open_aes128gcm");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let r = bare_ring();
        let rc = bare_rustcrypto();
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

/// Full inbound decap (length/SPI checks, replay check, ICV + decrypt, trailer checks,
/// replay commit) per algorithm and backend. The packet is restored from a template each
/// iteration (as in the bare case) and the replay window reset, so one packet can be reused.
fn decap_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("decap");
    let cases = [
        (Algorithm::AesGcm128, Backend::Ring),
        (Algorithm::AesGcm128, Backend::RustCrypto),
        (Algorithm::AesGcm256, Backend::Ring),
        (Algorithm::AesCbc128HmacSha256, Backend::Ring),
        (Algorithm::AesCbc256HmacSha256, Backend::Ring),
    ];
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for (alg, backend) in cases {
            let p = params(alg, backend);
            let pkt = esp_packet(&p, size);
            let cipher = Cipher::new(alg, backend, &p.enc_key, &p.integ_key).unwrap();
            let mut replay = ReplayWindow::new(64, false).unwrap();
            let mut buf = pkt.clone();
            let name = if alg.is_aead() {
                format!("{}/{}", alg.name(), backend.name())
            } else {
                alg.name().to_string()
            };
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    buf.copy_from_slice(&pkt);
                    replay.reset();
                    decap(&cipher, SPI, &mut replay, black_box(&mut buf)).unwrap()
                })
            });
        }
    }
    g.finish();
}

/// Outbound encap per algorithm (default backend).
fn encap_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("encap");
    for size in [64usize, 1400] {
        g.throughput(Throughput::Bytes(size as u64));
        for alg in Algorithm::ALL {
            let p = params(alg, Backend::Ring);
            let mut tx = OutboundSa::new(&p).unwrap();
            let h = tx.header_len();
            let mut buf = vec![0u8; h + size + tx.max_trailer_len()];
            g.bench_with_input(BenchmarkId::new(alg.name(), size), &size, |b, _| {
                b.iter(|| {
                    tx.set_next_seq(1);
                    tx.encap_slice(black_box(&mut buf), h..h + size, 4, None)
                        .unwrap()
                })
            });
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
