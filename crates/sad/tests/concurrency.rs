//! Readers on other threads while a writer inserts, removes, purges: never a torn state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use esplab_sad::{Lookup, Sad, SadConfig};

/// An SA that knows its own SPI and its pair's.
#[derive(Debug, Clone)]
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

/// Fingerprinted tables (64Ki slots and more, fingerprints written in place): readers on the
/// current snapshot and a slow reader holding old snapshots across purges, reallocation and
/// growth never see a hit for the wrong SPI, and a held snapshot keeps answering as it did.
#[test]
fn fingerprinted_table_under_churn_and_growth() {
    let sad: Arc<Sad<Sa>> = Arc::new(Sad::new(SadConfig {
        initial_capacity: 1 << 15,
        grace_period: Duration::from_micros(50),
        rng_seed: Some(5),
        ..SadConfig::default()
    }));
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..RING).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU32::new(0));
    let held_checks = Arc::new(AtomicU32::new(0));

    // A current-snapshot reader: single and batched lookups.
    let fast = {
        let (sad, ring, stop, hits) = (sad.clone(), ring.clone(), stop.clone(), hits.clone());
        thread::spawn(move || {
            let mut r = sad.reader();
            let mut x = 0x9e37_79b9u32;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let spis: [u32; 32] = std::array::from_fn(|k| {
                    let p = ring[(x as usize).wrapping_add(k * 7) % RING].load(Ordering::Relaxed);
                    // Live SPIs, their same-slot neighbours, random values.
                    match k % 4 {
                        0 | 1 => (p >> 32) as u32,
                        2 => ((p >> 32) as u32) ^ 0x0100_0000,
                        _ => x.wrapping_mul(k as u32 + 1),
                    }
                });
                for &spi in &spis {
                    if let Lookup::Hit(sa) = r.lookup(spi) {
                        assert_eq!(sa.spi, spi, "lookup({spi:#x}) gave {sa:?}");
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let mut out = [Lookup::Unknown; 32];
                r.lookup_batch(&spis, &mut out);
                for (spi, l) in spis.iter().zip(&out) {
                    if let Lookup::Hit(sa) = l {
                        assert_eq!(sa.spi, *spi);
                    }
                }
            }
        })
    };
    // A slow reader: holds a snapshot for a while, records what it said for a sample of SPIs,
    // and checks the same snapshot says exactly that while the writer purges and reallocates.
    let slow = {
        let (sad, ring, stop, checks) =
            (sad.clone(), ring.clone(), stop.clone(), held_checks.clone());
        thread::spawn(move || {
            let mut x = 0x1234_5679u32;
            while !stop.load(Ordering::Relaxed) {
                let snap = sad.snapshot();
                let sample: Vec<(u32, Option<u32>)> = (0..64)
                    .map(|k| {
                        let p = ring[(x as usize + k * 13) % RING].load(Ordering::Relaxed);
                        let spi = (p >> 32) as u32;
                        let said = match snap.lookup(spi) {
                            Lookup::Hit(sa) => {
                                assert_eq!(sa.spi, spi);
                                Some(1)
                            }
                            Lookup::Retired => Some(0),
                            Lookup::Unknown => None,
                        };
                        (spi, said)
                    })
                    .collect();
                for _ in 0..200 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    for &(spi, said) in &sample {
                        let now = match snap.lookup(spi) {
                            Lookup::Hit(sa) => {
                                assert_eq!(sa.spi, spi);
                                Some(1)
                            }
                            Lookup::Retired => Some(0),
                            Lookup::Unknown => None,
                        };
                        assert_eq!(now, said, "held snapshot changed its answer for {spi:#x}");
                    }
                    // SPIs installed since: the held snapshot must not hit them.
                    let p = ring[x as usize % RING].load(Ordering::Relaxed);
                    if let Lookup::Hit(sa) = snap.lookup((p >> 32) as u32) {
                        assert_eq!(sa.spi, (p >> 32) as u32);
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let t0 = Instant::now();
    let mut live: Vec<u32> = Vec::new();
    let mut x = 11u64;
    for round in 0..4000u64 {
        let now = t0 + Duration::from_micros(round * 10);
        let spi = sad
            .update(|t| {
                let s = t.reserve_spi()?;
                t.install(s, Sa { spi: s, partner: 0 }).map(|_| s)
            })
            .unwrap();
        ring[round as usize % RING].store(u64::from(spi) << 32, Ordering::Relaxed);
        live.push(spi);
        if live.len() > 2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let old = live.swap_remove((x >> 33) as usize % live.len());
            assert!(sad.remove(old, now).is_some());
        }
        if round % 8 == 0 {
            sad.purge(now);
        }
        // Twice, a bulk load that pushes the table past its load limit: growth under readers.
        if round == 1500 || round == 3000 {
            let bulk: Vec<u32> = sad.update(|t| {
                (0..40_000)
                    .map(|_| {
                        let s = t.reserve_spi().unwrap();
                        t.install(s, Sa { spi: s, partner: 1 }).unwrap();
                        s
                    })
                    .collect()
            });
            sad.update(|t| {
                bulk.iter().for_each(|&s| {
                    t.remove(s, now);
                })
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    fast.join().expect("reader panicked");
    slow.join().expect("slow reader panicked");
    assert!(sad.stats().slots >= 1 << 17, "the table grew");
    assert!(hits.load(Ordering::Relaxed) > 1000, "readers saw live SAs");
    assert!(
        held_checks.load(Ordering::Relaxed) > 100,
        "held snapshots checked"
    );
}
