//! Quick A/B of `SadView::lookup` against a bare index, and a disassembly target
//! (`view_loop`): `cargo run --release -p esplab-sad --example lookup_asm -- [N]`, then
//! `objdump -d --no-show-raw-insn -C target/release/examples/lookup_asm`.
use std::hint::black_box;
use std::time::Instant;

use esplab_sad::{Lookup, Sad, SadConfig, SadView};

#[inline(never)]
fn view_loop(view: &SadView<u32>, spis: &[u32]) {
    for &s in spis {
        black_box(view.lookup(s));
    }
}

#[inline(never)]
fn direct_batch_loop(view: &SadView<u32>, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        view.lookup_batch_direct(w, &mut out);
        black_box(&out);
    }
}

#[inline(never)]
fn flat16_loop(flat: &[(u32, usize)], mask: usize, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [0usize; 32];
        for (o, &s) in out.iter_mut().zip(w) {
            let e = &flat[s as usize & mask];
            *o = if e.0 == s { e.1 } else { usize::MAX };
        }
        black_box(&out);
    }
}

/// A verified 16-byte slot holding the SA pointer itself (the SAD entry's shape, flat).
type Slot16 = (u32, Option<std::sync::Arc<u32>>);

#[inline(never)]
fn direct_single_pass(view: &SadView<u32>, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        for (o, &s) in out.iter_mut().zip(w) {
            *o = view.lookup_direct(s);
        }
        black_box(&out);
    }
}

#[inline(never)]
fn miss_single_pass(view: &SadView<u32>, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        for (o, &s) in out.iter_mut().zip(w) {
            *o = view.lookup(s);
        }
        black_box(&out);
    }
}

#[inline(never)]
fn flat16_enum(flat: &[Slot16], mask: usize, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        for (o, &s) in out.iter_mut().zip(w) {
            let e = &flat[s as usize & mask];
            *o = if e.0 == s {
                match &e.1 {
                    Some(a) => Lookup::Hit(&**a),
                    None => Lookup::Retired,
                }
            } else {
                Lookup::Unknown
            };
        }
        black_box(&out);
    }
}

#[inline(never)]
fn chunked16_enum(ch: &[Box<[Slot16]>], mask: usize, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        for (o, &s) in out.iter_mut().zip(w) {
            let i = s as usize & mask;
            let e = &ch[i >> 10][i & 1023];
            *o = if e.0 == s {
                match &e.1 {
                    Some(a) => Lookup::Hit(&**a),
                    None => Lookup::Retired,
                }
            } else {
                Lookup::Unknown
            };
        }
        black_box(&out);
    }
}

#[inline(never)]
fn vec_loop(vec: &[usize], mask: usize, spis: &[u32]) {
    for &s in spis {
        black_box(vec[s as usize & mask]);
    }
}

#[inline(never)]
fn batch_loop(view: &SadView<u32>, spis: &[u32]) {
    for w in spis.chunks(32) {
        let mut out = [Lookup::Unknown; 32];
        view.lookup_batch(w, &mut out);
        black_box(&out);
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let sad: Sad<u32> = Sad::new(SadConfig {
        initial_capacity: n,
        rng_seed: Some(1),
        ..SadConfig::default()
    });
    let spis: Vec<u32> = sad.update(|t| (0..n as u32).map(|i| t.allocate(i).unwrap()).collect());
    let slots = sad.stats().slots;
    let mask = slots - 1;
    let mut vec = vec![usize::MAX; slots];
    for (i, &s) in spis.iter().enumerate() {
        vec[s as usize & mask] = i;
    }
    let mut x = 88172645463325252u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (4 * n).max(1 << 16);
    let hits: Vec<u32> = (0..len).map(|_| spis[rnd() as usize % n]).collect();
    let misses: Vec<u32> = (0..len).map(|_| rnd() as u32).collect();
    let mut r = sad.reader();
    let view = r.view();
    let mut flat = vec![(0u32, usize::MAX); slots];
    for (i, &s) in spis.iter().enumerate() {
        flat[s as usize & mask] = (s, i);
    }
    let flatv: Vec<Slot16> = (0..slots)
        .map(|i| {
            let (t, v) = flat[i];
            (t, (v != usize::MAX).then(|| std::sync::Arc::new(v as u32)))
        })
        .collect();
    let ch: Vec<Box<[Slot16]>> = flatv
        .chunks(1024)
        .map(|c| c.to_vec().into_boxed_slice())
        .collect();
    let mut best = [f64::MAX; 14];
    for _ in 0..15 {
        let cases: [&dyn Fn(); 14] = [
            &|| vec_loop(&vec, mask, &hits),
            &|| view_loop(view, &hits),
            &|| batch_loop(view, &hits),
            &|| vec_loop(&vec, mask, &misses),
            &|| view_loop(view, &misses),
            &|| batch_loop(view, &misses),
            &|| direct_batch_loop(view, &hits),
            &|| flat16_loop(&flat, mask, &hits),
            &|| direct_single_pass(view, &hits),
            &|| flat16_enum(&flatv, mask, &hits),
            &|| chunked16_enum(&ch, mask, &hits),
            &|| miss_single_pass(view, &hits),
            &|| miss_single_pass(view, &misses),
            &|| direct_single_pass(view, &misses),
        ];
        for (k, f) in cases.iter().enumerate() {
            let t = Instant::now();
            f();
            best[k] = best[k].min(t.elapsed().as_nanos() as f64 / len as f64);
        }
    }
    println!(
        "N={n} slots={slots}: hit vec {:.2} view {:.2} ({:.2}x) batch {:.2} direct batch {:.2} flat 16-byte probe {:.2} | miss vec {:.2} view {:.2} batch {:.2}",
        best[0], best[1], best[1] / best[0], best[2], best[6], best[7], best[3], best[4], best[5]
    );
    println!("  single-pass direct {:.2} flat16 enum {:.2} chunked16 enum {:.2} | single-pass fp-first hit {:.2} miss {:.2} | single-pass direct miss {:.2}", best[8], best[9], best[10], best[11], best[12], best[13]);
}
