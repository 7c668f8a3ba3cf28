//! Property test: random operation sequences against a reference model (a std HashMap).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use esplab_sad::{EntryState, Lookup, Sad, SadConfig, SadError, SadTxn};
use proptest::prelude::*;
use proptest::sample::Index;

const GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Live(u32),
    Reserved,
    Retired(Instant),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    foreign: bool,
}

/// An SPI argument: one the model knows, or any value (reserved range included).
#[derive(Debug, Clone)]
enum Pick {
    Known(Index),
    Any(u32),
}

#[derive(Debug, Clone)]
enum Op {
    Allocate(u32),
    AllocateMany(u16),
    Reserve,
    Install(Pick, u32),
    InsertForeign(Pick, u32),
    Remove(Pick),
    Replace(Pick, u32),
    Advance(u16),
    Purge,
    Lookup(Pick),
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => any::<Index>().prop_map(Pick::Known),
        1 => prop_oneof![0u32..512, any::<u32>()].prop_map(Pick::Any),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u32>().prop_map(Op::Allocate),
        1 => (1u16..400).prop_map(Op::AllocateMany),
        3 => Just(Op::Reserve),
        3 => (pick(), any::<u32>()).prop_map(|(p, v)| Op::Install(p, v)),
        3 => (pick(), any::<u32>()).prop_map(|(p, v)| Op::InsertForeign(p, v)),
        4 => pick().prop_map(Op::Remove),
        2 => (pick(), any::<u32>()).prop_map(|(p, v)| Op::Replace(p, v)),
        3 => (0u16..80).prop_map(Op::Advance),
        2 => Just(Op::Purge),
        4 => pick().prop_map(Op::Lookup),
    ]
}

struct Model {
    map: HashMap<u32, Entry>,
    now: Instant,
}

impl Model {
    fn resolve(&self, p: &Pick) -> u32 {
        match p {
            Pick::Any(s) => *s,
            Pick::Known(i) if self.map.is_empty() => i.index(u32::MAX as usize) as u32,
            Pick::Known(i) => {
                let mut keys: Vec<u32> = self.map.keys().copied().collect();
                keys.sort_unstable();
                keys[i.index(keys.len())]
            }
        }
    }

    fn expect_lookup(&self, spi: u32) -> Option<Option<u32>> {
        // None = Unknown, Some(None) = Retired, Some(Some(v)) = Hit(v)
        match self.map.get(&spi).map(|e| e.state) {
            Some(State::Live(v)) => Some(Some(v)),
            Some(State::Retired(_)) => Some(None),
            Some(State::Reserved) | None => None,
        }
    }

    fn new_allocated(&mut self, spi: u32, state: State) {
        assert!(spi > 255, "RFC 4303 §2.1 range allocated: {spi}");
        let prev = self.map.insert(
            spi,
            Entry {
                state,
                foreign: false,
            },
        );
        assert!(prev.is_none(), "allocated a used SPI {spi:#x}: {prev:?}");
    }
}

fn classify(l: Lookup<'_, u32>) -> Option<Option<u32>> {
    match l {
        Lookup::Hit(v) => Some(Some(*v)),
        Lookup::Retired => Some(None),
        Lookup::Unknown => None,
    }
}

fn apply(m: &mut Model, t: &mut SadTxn<'_, u32>, op: &Op) {
    match op {
        Op::Allocate(v) => {
            let spi = t.allocate(*v).unwrap();
            m.new_allocated(spi, State::Live(*v));
        }
        Op::AllocateMany(n) => {
            for k in 0..u32::from(*n) {
                let spi = t.allocate(k).unwrap();
                m.new_allocated(spi, State::Live(k));
            }
        }
        Op::Reserve => {
            let spi = t.reserve_spi().unwrap();
            m.new_allocated(spi, State::Reserved);
        }
        Op::Install(p, v) => {
            let spi = m.resolve(p);
            let r = t.install(spi, *v);
            match m.map.get_mut(&spi) {
                Some(e) if e.state == State::Reserved && !e.foreign => {
                    assert_eq!(r, Ok(()));
                    e.state = State::Live(*v);
                }
                _ => assert_eq!(r, Err(SadError::NotReserved(spi))),
            }
        }
        Op::InsertForeign(p, v) => {
            let spi = m.resolve(p);
            let r = t.insert_foreign(spi, *v);
            let expect = match m.map.get(&spi) {
                _ if spi <= 255 => Err(SadError::ReservedSpi(spi)),
                Some(e) if !e.foreign => Err(SadError::SpiInUse(spi)),
                Some(Entry {
                    state: State::Live(_),
                    ..
                }) => Err(SadError::SpiInUse(spi)),
                _ => Ok(()),
            };
            assert_eq!(r, expect);
            if r.is_ok() {
                m.map.insert(
                    spi,
                    Entry {
                        state: State::Live(*v),
                        foreign: true,
                    },
                );
            }
        }
        Op::Remove(p) => {
            let spi = m.resolve(p);
            let r = t.remove(spi, m.now);
            let until = m.now + GRACE;
            match m.map.get_mut(&spi) {
                Some(e) => match e.state {
                    State::Live(v) => {
                        assert_eq!(r, Some(v));
                        e.state = State::Retired(until);
                    }
                    State::Reserved => {
                        assert_eq!(r, None);
                        e.state = State::Retired(until);
                    }
                    State::Retired(_) => assert_eq!(r, None),
                },
                None => assert_eq!(r, None),
            }
        }
        Op::Replace(p, v) => {
            let spi = m.resolve(p);
            let r = t.replace(spi, *v);
            match m.map.get_mut(&spi) {
                Some(Entry {
                    state: s @ State::Live(_),
                    ..
                }) => {
                    let State::Live(old) = *s else { unreachable!() };
                    assert_eq!(r, Ok(old));
                    *s = State::Live(*v);
                }
                _ => assert_eq!(r, Err(SadError::NotFound(spi))),
            }
        }
        Op::Advance(ms) => m.now += Duration::from_millis(u64::from(*ms)),
        Op::Purge => {
            let n = t.purge(m.now);
            let before = m.map.len();
            let now = m.now;
            m.map
                .retain(|_, e| !matches!(e.state, State::Retired(u) if u <= now));
            assert_eq!(n, before - m.map.len(), "purged count");
        }
        Op::Lookup(p) => {
            let spi = m.resolve(p);
            assert_eq!(
                classify(t.lookup(spi)),
                m.expect_lookup(spi),
                "spi {spi:#x}"
            );
        }
    }
}

fn check_counts(m: &Model, sad: &Sad<u32>) {
    let s = sad.stats();
    let count = |f: bool, pred: fn(&State) -> bool| {
        m.map
            .values()
            .filter(|e| e.foreign == f && pred(&e.state))
            .count()
    };
    assert_eq!(s.live, count(false, |s| matches!(s, State::Live(_))));
    assert_eq!(s.reserved, count(false, |s| matches!(s, State::Reserved)));
    assert_eq!(s.retired, count(false, |s| matches!(s, State::Retired(_))));
    assert_eq!(s.foreign_live, count(true, |s| matches!(s, State::Live(_))));
    assert_eq!(
        s.foreign_retired,
        count(true, |s| matches!(s, State::Retired(_)))
    );
    assert_eq!(sad.len(), s.live + s.foreign_live);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn sad_matches_model(
        seed in any::<u64>(),
        groups in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..60),
    ) {
        run_model(1, seed, &groups)?;
    }

    /// The same from a table of 64Ki slots, where lookups go through fingerprints.
    #[test]
    fn sad_matches_model_fingerprinted(
        seed in any::<u64>(),
        groups in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..60),
    ) {
        run_model(1 << 15, seed, &groups)?;
    }

    /// The same from a table of 512Ki slots, where hit-tuned batches run in two passes
    /// (`TWO_PASS_SLOTS` in `view.rs`; smaller tables take one).
    #[test]
    fn sad_matches_model_two_pass_batches(
        seed in any::<u64>(),
        groups in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..60),
    ) {
        run_model(1 << 18, seed, &groups)?;
    }
}

fn run_model(initial_capacity: usize, seed: u64, groups: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let sad: Sad<u32> = Sad::new(SadConfig {
        initial_capacity,
        grace_period: GRACE,
        rng_seed: Some(seed),
        ..SadConfig::default()
    });
    let mut reader = sad.reader();
    let mut m = Model {
        map: HashMap::new(),
        now: Instant::now(),
    };
    // A snapshot held across later groups (a slow reader), with what it said when taken.
    let mut held = None;
    for (g, group) in groups.iter().enumerate() {
        // Each group is one transaction: checks inside see the uncommitted state.
        sad.update(|t| group.iter().for_each(|op| apply(&mut m, t, op)));
        check_counts(&m, &sad);
        for (&spi, _) in m.map.iter().take(64) {
            prop_assert_eq!(classify(reader.lookup(spi)), m.expect_lookup(spi));
            // The hit-tuned read (entry first, no fingerprint) answers the same.
            prop_assert_eq!(
                classify(reader.view().lookup_direct(spi)),
                m.expect_lookup(spi)
            );
        }
        // A snapshot never changes, however much purging and reallocation happened since
        // (freed slots are not reused while it lives): every SPI it knew classifies as it
        // did, and SPIs that came later are unknown to it.
        if let Some((snap, said)) = &held {
            let snap: &std::sync::Arc<esplab_sad::SadView<u32>> = snap;
            let said: &HashMap<u32, Option<Option<u32>>> = said;
            for (&spi, want) in said.iter().take(200) {
                prop_assert_eq!(classify(snap.lookup(spi)), *want);
                prop_assert_eq!(classify(snap.lookup_direct(spi)), *want);
            }
            for &spi in m.map.keys().filter(|s| !said.contains_key(s)).take(200) {
                prop_assert_eq!(classify(snap.lookup(spi)), None);
                prop_assert_eq!(classify(snap.lookup_direct(spi)), None);
            }
        }
        if g % 8 == 0 {
            let said = m.map.keys().map(|&s| (s, m.expect_lookup(s))).collect();
            held = Some((sad.snapshot(), said));
        }
    }
    // Full comparison of the listing.
    let snap = sad.snapshot();
    let mut listed: Vec<(u32, bool, String)> = snap
        .entries()
        .map(|e| {
            let st = match e.state {
                EntryState::Live(v) => format!("live {v}"),
                EntryState::Reserved => "reserved".into(),
                EntryState::Retired => "retired".into(),
            };
            (e.spi, e.foreign, st)
        })
        .collect();
    listed.sort();
    let mut expect: Vec<(u32, bool, String)> = m
        .map
        .iter()
        .map(|(&spi, e)| {
            let st = match e.state {
                State::Live(v) => format!("live {v}"),
                State::Reserved => "reserved".into(),
                State::Retired(_) => "retired".into(),
            };
            (spi, e.foreign, st)
        })
        .collect();
    expect.sort();
    prop_assert_eq!(listed, expect);
    // Batch lookups agree with the model on known and random SPIs.
    let mut qs: Vec<u32> = m.map.keys().copied().take(100).collect();
    qs.extend((0..50u32).map(|i| i.wrapping_mul(0x9e37_79b9) ^ seed as u32));
    let want: Vec<_> = qs.iter().map(|&q| m.expect_lookup(q)).collect();
    let check = |out: &[Lookup<'_, u32>], how: &str| -> Result<(), TestCaseError> {
        for ((q, l), w) in qs.iter().zip(out).zip(&want) {
            prop_assert_eq!(classify(*l), *w, "{} spi {:#x}", how, q);
        }
        Ok(())
    };
    // Every batch form, miss-tuned and hit-tuned, and the hit counts they return.
    let mut out = vec![Lookup::Unknown; qs.len()];
    let view = sad.snapshot();
    view.lookup_batch(&qs, &mut out);
    check(&out, "lookup_batch")?;
    view.lookup_batch_direct(&qs, &mut out);
    check(&out, "lookup_batch_direct")?;
    let hit_count = want.iter().filter(|w| matches!(w, Some(Some(_)))).count();
    for direct in [false, true] {
        let hits = view.lookup_batch_with(&qs, &mut out, direct);
        check(&out, "lookup_batch_with")?;
        prop_assert_eq!(hits, hit_count);
    }
    // The mapped forms store `map(answer)` in the same loop: the same answers and counts.
    for direct in [false, true] {
        let mut mapped = vec![None; qs.len()];
        let hits = view.lookup_batch_map(&qs, &mut mapped, direct, classify);
        prop_assert_eq!(&mapped, &want, "lookup_batch_map direct={}", direct);
        prop_assert_eq!(hits, hit_count);
    }
    // The reader's batches switch reads by the hit rate they see; the answers stay.
    for _ in 0..2 {
        let mut out = vec![Lookup::Unknown; qs.len()];
        reader.lookup_batch(&qs, &mut out);
        check(&out, "reader lookup_batch")?;
        let mut mapped = vec![None; qs.len()];
        reader.lookup_batch_map(&qs, &mut mapped, classify);
        prop_assert_eq!(&mapped, &want, "reader lookup_batch_map");
    }
    Ok(())
}
