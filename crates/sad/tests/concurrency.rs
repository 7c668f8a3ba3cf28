//! Readers on other threads while a writer inserts, removes, purges: never a torn state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use esplab_sad::{Lookup, Sad, SadConfig};

/// An SA that knows its own SPI and its pair's.
#[derive(Debug)]
struct Sa {
    spi: u32,
    partner: u32,
}

/// Recently installed pairs: readers look these (and random SPIs) up.
const RING: usize = 1024;

#[test]
fn readers_never_see_torn_state() {
    let sad: Arc<Sad<Sa>> = Arc::new(Sad::new(SadConfig {
        initial_capacity: 1,
        grace_period: Duration::from_millis(2),
        rng_seed: Some(99),
        ..SadConfig::default()
    }));
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..RING).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU32::new(0));
    let pair_checks = Arc::new(AtomicU32::new(0));

    let readers: Vec<_> = (0..2)
        .map(|id| {
            let (sad, ring, stop) = (sad.clone(), ring.clone(), stop.clone());
            let (hits, pair_checks) = (hits.clone(), pair_checks.clone());
            thread::spawn(move || {
                let mut r = sad.reader();
                let mut x = 0x1234_5678u32 ^ id;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let pair = ring[x as usize % RING].load(Ordering::Relaxed);
                    let (a, b) = ((pair >> 32) as u32, pair as u32);
                    // Single lookups: a hit always carries the SPI that was looked up.
                    for spi in [a, b, x] {
                        if let Lookup::Hit(sa) = r.lookup(spi) {
                            assert_eq!(sa.spi, spi, "torn: lookup({spi:#x}) gave {sa:?}");
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Within one snapshot the two SAs of a pair, installed in one transaction,
                    // are both live or neither (removal retires both together too).
                    if pair != 0 {
                        let view = r.view();
                        match (view.lookup(a), view.lookup(b)) {
                            (Lookup::Hit(sa), Lookup::Hit(sb)) => {
                                assert_eq!((sa.spi, sa.partner, sb.spi, sb.partner), (a, b, b, a));
                                pair_checks.fetch_add(1, Ordering::Relaxed);
                            }
                            (Lookup::Hit(_), other) | (other, Lookup::Hit(_)) => {
                                panic!("half a pair visible: {other:?}")
                            }
                            _ => {}
                        }
                    }
                    // Batches: same invariant as single lookups.
                    let spis: Vec<u32> = (0..32)
                        .map(|k| {
                            let p = ring[(x as usize + k * 31) % RING].load(Ordering::Relaxed);
                            if k % 2 == 0 {
                                (p >> 32) as u32
                            } else {
                                p as u32
                            }
                        })
                        .collect();
                    // The results borrow the reader, so the buffer lives per iteration.
                    let mut out = [Lookup::Unknown; 32];
                    r.lookup_batch(&spis, &mut out);
                    for (spi, l) in spis.iter().zip(out.iter()) {
                        if let Lookup::Hit(sa) = l {
                            assert_eq!(sa.spi, *spi);
                        }
                    }
                }
            })
        })
        .collect();

    let t0 = Instant::now();
    let mut installed: Vec<(u32, u32)> = Vec::new();
    let mut x = 7u64;
    for round in 0..3000u64 {
        let now = t0 + Duration::from_micros(round * 100);
        let pair = sad.update(|t| {
            let a = t.reserve_spi().unwrap();
            let b = t.reserve_spi().unwrap();
            t.install(a, Sa { spi: a, partner: b }).unwrap();
            t.install(b, Sa { spi: b, partner: a }).unwrap();
            (a, b)
        });
        ring[round as usize % RING].store(
            (u64::from(pair.0) << 32) | u64::from(pair.1),
            Ordering::Relaxed,
        );
        installed.push(pair);
        // Foreign SAs churn too.
        let f = 0x4000_0000 + (round as u32 % 64) * 0x10001;
        if sad.get(f).is_none() {
            let _ = sad.insert_foreign(f, Sa { spi: f, partner: f });
        } else {
            sad.remove(f, now);
        }
        // Keep ~500 pairs live: remove a random older pair (both halves at once).
        if installed.len() > 500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b) = installed.swap_remove((x >> 33) as usize % installed.len());
            sad.update(|t| {
                assert!(t.remove(a, now).is_some());
                assert!(t.remove(b, now).is_some());
            });
        }
        if round % 16 == 0 {
            sad.purge(now);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader panicked");
    }
    assert!(hits.load(Ordering::Relaxed) > 1000, "readers saw live SAs");
    assert!(
        pair_checks.load(Ordering::Relaxed) > 100,
        "pair invariant exercised"
    );
    assert_eq!(sad.len(), installed.len() * 2 + sad.stats().foreign_live);
}

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Sad<Sa>>();
    send::<esplab_sad::SadReader<Sa>>();
    send_sync::<esplab_sad::SadView<Sa>>();
}
