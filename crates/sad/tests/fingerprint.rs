//! Tables of 64Ki slots and more look SPIs up by an 8-bit fingerprint array shared by all
//! snapshots and written in place; these tests pin down the rules that keep that exact.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use esplab_sad::{Lookup, Sad, SadConfig, SadReader};

/// A SAD whose table starts at 64Ki slots (fingerprinted).
fn exact_sad(seed: u64) -> Sad<u32> {
    let sad = Sad::new(SadConfig {
        initial_capacity: 1 << 15,
        grace_period: Duration::from_secs(1),
        rng_seed: Some(seed),
        ..SadConfig::default()
    });
    assert_eq!(sad.stats().slots, 1 << 16);
    sad
}

const MASK: u32 = (1 << 16) - 1;

#[test]
fn freed_slots_wait_for_old_snapshots() {
    let sad = exact_sad(1);
    let t0 = Instant::now();
    let old_spis: Vec<u32> = sad.update(|t| (0..2000).map(|i| t.allocate(i).unwrap()).collect());
    // A reader that keeps a snapshot with these SAs live past their grace period.
    let old = sad.snapshot();
    sad.update(|t| {
        old_spis.iter().for_each(|&s| {
            t.remove(s, t0);
        })
    });
    assert_eq!(sad.purge(t0 + Duration::from_secs(2)), 2000);
    let old_slots: HashSet<u32> = old_spis.iter().map(|s| s & MASK).collect();
    // Refill to just under the load limit: none of the freed slots may be reused while `old`
    // is alive, and `old` never mistakes a new SPI for the SA its slot held.
    let new: Vec<u32> = sad.update(|t| (0..26_000).map(|i| t.allocate(i).unwrap()).collect());
    assert_eq!(sad.stats().slots, 1 << 16, "no growth yet");
    for &n in &new {
        assert!(!old_slots.contains(&(n & MASK)), "slot of {n:#x} reused");
        assert_eq!(old.lookup(n), Lookup::Unknown);
    }
    for (i, &s) in old_spis.iter().enumerate() {
        assert_eq!(
            old.lookup(s),
            Lookup::Hit(&(i as u32)),
            "a snapshot never changes"
        );
        assert_eq!(sad.reader().lookup(s), Lookup::Unknown);
    }
    // Once the old snapshot is gone, the next transaction releases the slots.
    drop(old);
    let more: Vec<u32> = sad.update(|t| (0..5000).map(|i| t.allocate(i).unwrap()).collect());
    let reused = more
        .iter()
        .filter(|&&n| old_slots.contains(&(n & MASK)))
        .count();
    assert!(reused > 0, "freed slots are reusable again");
    let mut r = sad.reader();
    for (i, &n) in more.iter().enumerate() {
        assert_eq!(r.lookup(n), Lookup::Hit(&(i as u32)));
    }
}

#[test]
fn quarantine_counts_toward_the_load_factor_and_growth_clears_it() {
    let sad = exact_sad(2);
    let t0 = Instant::now();
    let a: Vec<u32> = sad.update(|t| (0..30_000).map(|i| t.allocate(i).unwrap()).collect());
    let old = sad.snapshot();
    sad.update(|t| {
        a.iter().for_each(|&s| {
            t.remove(s, t0);
        })
    });
    sad.purge(t0 + Duration::from_secs(2));
    assert_eq!(sad.len(), 0);
    // 30 000 slots are free but quarantined: 3 000 more allocations exceed half of 64Ki.
    let b: Vec<u32> = sad.update(|t| (0..3000).map(|i| t.allocate(i).unwrap()).collect());
    assert_eq!(sad.stats().slots, 1 << 17, "grew instead of reusing");
    // The old snapshot still sees its own table, untouched by growth.
    for (i, &s) in a.iter().enumerate() {
        assert_eq!(old.lookup(s), Lookup::Hit(&(i as u32)));
    }
    for &s in &b {
        assert_eq!(old.lookup(s), Lookup::Unknown);
    }
    let mut r = sad.reader();
    for (i, &s) in b.iter().enumerate() {
        assert_eq!(r.lookup(s), Lookup::Hit(&(i as u32)));
    }
}

#[test]
fn stale_fingerprint_is_never_a_wrong_answer() {
    let sad = exact_sad(3);
    let t0 = Instant::now();
    let s = sad.allocate(7).unwrap();
    let neighbour = s ^ 0x0001_0000; // same slot, different fingerprint
    let mut r = sad.reader();
    assert_eq!(r.lookup(s), Lookup::Hit(&7));
    assert_eq!(r.lookup(neighbour), Lookup::Unknown);
    sad.remove(s, t0);
    assert_eq!(r.lookup(s), Lookup::Retired);
    assert_eq!(r.lookup(neighbour), Lookup::Unknown, "retired is per SPI");
    sad.purge(t0 + Duration::from_secs(1));
    // The slot is empty, its fingerprint still says `s`: a miss, not Retired.
    assert_eq!(r.lookup(s), Lookup::Unknown);
    // The same value as a foreign (manually keyed) SPI: the fingerprint matches an empty
    // slot, and the foreign map must still answer.
    sad.insert_foreign(s, 9).unwrap();
    assert_eq!(r.lookup(s), Lookup::Hit(&9));
    let view = r.view();
    let mut out = [Lookup::Unknown; 2];
    view.lookup_batch(&[s, neighbour], &mut out);
    assert_eq!(out, [Lookup::Hit(&9), Lookup::Unknown]);
    view.lookup_batch_direct(&[s, neighbour], &mut out);
    assert_eq!(out, [Lookup::Hit(&9), Lookup::Unknown]);
    for direct in [false, true] {
        assert_eq!(view.lookup_batch_with(&[neighbour, s], &mut out, direct), 1);
        assert_eq!(out, [Lookup::Unknown, Lookup::Hit(&9)]);
    }
    assert_eq!(view.lookup_direct(s), Lookup::Hit(&9));
    assert_eq!(view.lookup_direct(neighbour), Lookup::Unknown);
}

#[test]
fn growth_into_and_within_fingerprinted_tables_keeps_every_spi() {
    let sad: Sad<u32> = Sad::new(SadConfig {
        initial_capacity: 1,
        rng_seed: Some(4),
        ..SadConfig::default()
    });
    let t0 = Instant::now();
    // 1Ki slots -> 256Ki slots, in steps inside and between transactions.
    let mut spis = Vec::new();
    for round in 0..10u32 {
        spis.extend(sad.update(|t| {
            (0..10_000)
                .map(|i| (t.allocate(round * 10_000 + i).unwrap(), round * 10_000 + i))
                .collect::<Vec<_>>()
        }));
    }
    assert_eq!(sad.stats().slots, 1 << 18);
    let retired: Vec<u32> = spis.iter().step_by(3).map(|&(s, _)| s).collect();
    sad.update(|t| {
        retired.iter().for_each(|&s| {
            t.remove(s, t0);
        })
    });
    let gone: HashSet<u32> = retired.iter().copied().collect();
    let values: Vec<u32> = spis.iter().map(|&(_, v)| v).collect();
    let spis: Vec<u32> = spis.iter().map(|&(s, _)| s).collect();
    let mut r = sad.reader();
    let mut batch_in = Vec::new();
    let mut batch_want = Vec::new();
    for (s, v) in spis.iter().copied().zip(values.iter()) {
        let want = if gone.contains(&s) {
            Lookup::Retired
        } else {
            Lookup::Hit(v)
        };
        assert_eq!(r.lookup(s), want);
        // Neighbours: same slot (low 18 bits), other upper bits.
        assert_eq!(r.lookup(s ^ 0x8000_0000), Lookup::Unknown);
        batch_in.push(s);
        batch_want.push(want);
    }
    let view = r.view();
    let mut out = vec![Lookup::Unknown; batch_in.len()];
    view.lookup_batch(&batch_in, &mut out);
    assert!(out == batch_want);
    view.lookup_batch_direct(&batch_in, &mut out);
    assert!(out == batch_want);
    for direct in [false, true] {
        view.lookup_batch_with(&batch_in, &mut out, direct);
        assert!(out == batch_want);
    }
    for (&s, want) in batch_in.iter().zip(&batch_want) {
        assert_eq!(view.lookup_direct(s), *want);
    }
}

/// The reader's batches read entries directly after a batch of mostly hits and go back to
/// fingerprints after a batch of mostly unknown SPIs (a flood), answering the same either way.
#[test]
fn reader_batches_follow_the_hit_rate() {
    let sad: Sad<u32> = Sad::new(SadConfig {
        initial_capacity: 1 << 15,
        rng_seed: Some(9),
        ..SadConfig::default()
    });
    let spis: Vec<u32> = sad.update(|t| (0..64).map(|i| t.allocate(i).unwrap()).collect());
    let unknown: Vec<u32> = spis.iter().map(|s| s ^ 0x8000_0000).collect();
    let mut r = sad.reader();
    // One batch; what it answered as `Some(value)` for hits, `None` otherwise.
    fn run(r: &mut SadReader<u32>, spis: &[u32]) -> Vec<Option<u32>> {
        let mut out = vec![Lookup::Unknown; spis.len()];
        r.lookup_batch(spis, &mut out);
        out.iter().map(|l| l.hit().copied()).collect()
    }
    assert!(!r.batch_direct(), "a new reader starts miss-tuned");
    let got = run(&mut r, &spis);
    assert_eq!(got, (0..64).map(Some).collect::<Vec<_>>());
    assert!(r.batch_direct(), "all hits: next batch reads entries");
    assert!(run(&mut r, &unknown).iter().all(Option::is_none));
    assert!(!r.batch_direct(), "all misses: back to fingerprints");
    // Half and half stays on fingerprints (below three quarters).
    let mixed: Vec<u32> = spis[..32].iter().chain(&unknown[..32]).copied().collect();
    run(&mut r, &mixed);
    assert!(!r.batch_direct());
    let mostly: Vec<u32> = spis[..48].iter().chain(&unknown[..16]).copied().collect();
    let got = run(&mut r, &mostly);
    assert!(r.batch_direct());
    assert_eq!(got[47], Some(47));
    assert_eq!(got[48], None);
    // And in direct mode, answers are still exact.
    let got = run(&mut r, &mixed);
    assert_eq!(got[..32], (0..32).map(Some).collect::<Vec<_>>()[..]);
    assert!(got[32..].iter().all(Option::is_none));
}
