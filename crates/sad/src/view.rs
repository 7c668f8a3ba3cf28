//! An immutable snapshot of the whole SAD: what readers look SPIs up in.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::foreign::{Foreign, ForeignTable};
use crate::selector::{FlowKey, SelectorPair};
use crate::table::{Entry, SlotRef, SlotTable};
use crate::Lookup;

/// Most SPIs [`SadView::lookup_batch`] resolves per prefetch round.
pub const BATCH: usize = 32;

/// Largest table whose hit-tuned batches run in one pass. Measured on this project's
/// machine (Zen 3, 512 KiB L2; docs/sad.md, round 6): up to 2^18 slots (4 MiB of entries)
/// one pass was 1.2-1.6x faster than two; from 2^19 slots the entries come from DRAM and
/// the two-pass batch, 32 loads in flight, holds its own (1.3-1.6x faster at 2^21 slots
/// than single lookups). Miss-tuned batches read 1-byte fingerprints (2 MiB at 2^21 slots)
/// and ran faster in one pass at every size measured.
const TWO_PASS_SLOTS: usize = 1 << 18;

/// An outbound SA with the peer and selectors it was installed for.
#[derive(Debug)]
pub struct OutboundEntry<O> {
    /// The peer's (tunnel endpoint) address.
    pub peer: IpAddr,
    /// The CHILD SA's selectors.
    pub selectors: SelectorPair,
    /// The SA.
    pub sa: Arc<O>,
}

impl<O> Clone for OutboundEntry<O> {
    fn clone(&self) -> Self {
        Self {
            peer: self.peer,
            selectors: self.selectors,
            sa: Arc::clone(&self.sa),
        }
    }
}

/// State of an inbound entry, for listing (`show sa`).
#[derive(Debug)]
pub enum EntryState<'a, V> {
    /// SPI handed out, SA not installed yet.
    Reserved,
    /// Live SA.
    Live(&'a V),
    /// Removed or rekeyed, inside its grace period.
    Retired,
}

/// One inbound entry, for listing.
#[derive(Debug)]
pub struct InboundEntry<'a, V> {
    /// The SPI.
    pub spi: u32,
    /// Its state.
    pub state: EntryState<'a, V>,
    /// `true` if the SPI was chosen outside this SAD (`insert_foreign`).
    pub foreign: bool,
}

/// Entry counts of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SadStats {
    /// Live inbound SAs with an SPI this SAD allocated.
    pub live: usize,
    /// Allocated SPIs reserved but not installed.
    pub reserved: usize,
    /// Allocated SPIs inside their grace period.
    pub retired: usize,
    /// Live inbound SAs with a foreign SPI.
    pub foreign_live: usize,
    /// Foreign SPIs inside their grace period.
    pub foreign_retired: usize,
    /// Slots in the direct-index table.
    pub slots: usize,
    /// Outbound SAs.
    pub outbound: usize,
}

/// Live/reserved/retired counts of the slot table.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlotCounts {
    pub(crate) live: usize,
    pub(crate) reserved: usize,
    pub(crate) retired: usize,
}

impl SlotCounts {
    /// Slots not `Empty`: what the load factor counts.
    pub(crate) fn occupied(&self) -> usize {
        self.live + self.reserved + self.retired
    }
}

/// One published, immutable version of the SAD.
///
/// Obtained from [`crate::SadReader::view`] (datapath) or [`crate::Sad::snapshot`] (control
/// plane). Everything here is read-only and lock-free; a snapshot never changes, so results
/// borrowed from it stay consistent for as long as it is held.
pub struct SadView<V, O = V> {
    pub(crate) table: SlotTable<V>,
    pub(crate) foreign: Option<Arc<ForeignTable<V>>>,
    pub(crate) outbound: Arc<Vec<OutboundEntry<O>>>,
    pub(crate) counts: SlotCounts,
    /// Publication number: each published snapshot is one more than the one it replaced
    /// (the writer's quarantine of freed slots is keyed on it).
    pub(crate) gen: u64,
}

impl<V, O> Clone for SadView<V, O> {
    /// Shallow: clones the chunk pointer array and bumps `Arc`s; O(slots / 1024).
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            foreign: self.foreign.clone(),
            outbound: Arc::clone(&self.outbound),
            counts: self.counts,
            gen: self.gen,
        }
    }
}

impl<V, O> fmt::Debug for SadView<V, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SadView")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<V, O> SadView<V, O> {
    pub(crate) fn with_slots(slots: usize, fp_key: u8) -> Self {
        Self {
            gen: 0,
            table: SlotTable::with_slots(slots, fp_key),
            foreign: None,
            outbound: Arc::new(Vec::new()),
            counts: SlotCounts::default(),
        }
    }

    /// Classify an inbound SPI (RFC 4303 §3.4.2: the SPI, with the destination, selects the
    /// SA; for a unicast SA the SPI alone suffices and is what we key on).
    ///
    /// Tuned for misses (the invalid-SPI flood): on tables of 64Ki slots and more a miss
    /// reads one 2-byte fingerprint out of a dense array and nothing else; a hit reads that
    /// and the slot's entry, two independent loads the CPU issues together. Smaller tables
    /// read the entry alone, as [`Self::lookup_direct`] does. Same answers either way.
    // `always`: as a plain `#[inline]` LLVM kept it out of line in the benches' closures,
    // and the call with its 16-byte return doubled the cost of an L1 hit.
    #[inline(always)]
    pub fn lookup(&self, spi: u32) -> Lookup<'_, V> {
        let t = &self.table;
        if t.fingerprinted && t.fps[t.index(spi)].load(Ordering::Relaxed) != t.fingerprint(spi) {
            // No fingerprint match: not an SA of this table (see `table::Fingerprints`).
            return self.lookup_foreign(spi);
        }
        self.lookup_direct(spi)
    }

    /// Classify an inbound SPI reading its slot's entry (SPI and value, one cache line)
    /// without the fingerprint: tuned for hits. On large tables a miss costs a random line of
    /// the entry table (8 bytes per slot with a 4-byte value) instead of the fingerprint
    /// array's 1 byte, so use it where SPIs are expected to be known; [`crate::SadReader`]'s
    /// batches choose between the two from the hit rate they see.
    #[inline(always)]
    pub fn lookup_direct(&self, spi: u32) -> Lookup<'_, V> {
        let (chunk, i) = self.table.locate(spi);
        let e = chunk.entry(i);
        // The tag first, the value only on a match: whether a slot is occupied is as
        // random as the SPIs of a flood, and testing it first (it is a 0 test of the inline
        // value) cost a mispredicted branch per miss: 2.3 -> 8.1 ns at 64Ki.
        if e.tag() == spi {
            match e.value() {
                Some(v) => Lookup::Hit(v),
                None if chunk.is_retired(i) => Lookup::Retired,
                // Reserved (no keys yet), or the empty slot's 0 matched the invalid SPI 0:
                // never a foreign SPI (`insert_foreign` refuses SPIs this table holds, and 0).
                None => Lookup::Unknown,
            }
        } else {
            self.lookup_foreign(spi)
        }
    }

    #[inline(always)]
    fn lookup_foreign(&self, spi: u32) -> Lookup<'_, V> {
        match &self.foreign {
            None => Lookup::Unknown,
            Some(f) => f.lookup(spi),
        }
    }

    /// Classify `spis[k]` into `out[k]` for every `k` (a receive burst), tuned for misses:
    /// the answers of [`Self::lookup`], one after the other. Returns the number of hits.
    ///
    /// The lookups run back to back, with no packet work between them, so their
    /// independent cache misses overlap instead of each waiting behind the work that
    /// separates single lookups. A hit's value is stored in its entry, so the line that
    /// proves the hit also brings the value. See [`Self::lookup_batch_direct`] for bursts of
    /// mostly known SPIs.
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch<'a>(&'a self, spis: &[u32], out: &mut [Lookup<'a, V>]) -> usize {
        self.lookup_batch_map(spis, out, false, |l| l)
    }

    /// [`Self::lookup_batch`] tuned for hits: every SPI's entry (SPI and value) is read
    /// directly, one random line per lookup whether it hits or not. Large tables (more than
    /// `TWO_PASS_SLOTS`) work in rounds of [`BATCH`]: a first pass reads the round's
    /// entries, a second classifies from them. Returns the number of hits.
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch_direct<'a>(&'a self, spis: &[u32], out: &mut [Lookup<'a, V>]) -> usize {
        self.lookup_batch_map(spis, out, true, |l| l)
    }

    /// [`Self::lookup_batch_direct`] when `direct`, else [`Self::lookup_batch`].
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch_with<'a>(
        &'a self,
        spis: &[u32],
        out: &mut [Lookup<'a, V>],
        direct: bool,
    ) -> usize {
        self.lookup_batch_map(spis, out, direct, |l| l)
    }

    /// [`Self::lookup_batch_with`], each answer stored as `map(answer)`: for a caller that
    /// keeps its own form of the answer (the node's is 8 bytes, the SA index by value), so
    /// the batch writes that directly instead of a 16-byte [`Lookup`] to convert in a second
    /// loop. `map` is inlined into the batch loop; keep it a cheap `match`. This is the batch
    /// loop every other batch form runs with the identity map; it returns the number of hits.
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline(always)]
    pub fn lookup_batch_map<'a, T>(
        &'a self,
        spis: &[u32],
        out: &mut [T],
        direct: bool,
        map: impl Fn(Lookup<'a, V>) -> T,
    ) -> usize {
        assert!(
            out.len() >= spis.len(),
            "lookup_batch: out shorter than spis"
        );
        // Miss-tuned reads of large tables go through the fingerprints; everything else
        // reads entries. Only hit-tuned batches on tables whose entries come from DRAM gain
        // from a separate first pass (keeping the entries it read: at 1Mi SAs ~1.25x faster
        // than computing each hit's address twice).
        match (self.table.fingerprinted, direct) {
            (false, _) => self.single_pass::<false, T>(spis, out, map),
            (true, false) => self.single_pass::<true, T>(spis, out, map),
            (true, true) if self.table.slots() <= TWO_PASS_SLOTS => {
                self.single_pass::<false, T>(spis, out, map)
            }
            (true, true) => self.two_pass(spis, out, map),
        }
    }

    /// One pass over the SPIs: each one's fingerprint (`FP`) or entry, then its answer. The
    /// loop body has no dependency on the previous SPI, so the CPU's out-of-order window
    /// already overlaps several lookups' misses; a second pass only pays when the reads go
    /// to DRAM faster than that window drains (hit-tuned reads of large tables, see
    /// [`TWO_PASS_SLOTS`]). Same answers as [`Self::lookup`] / [`Self::lookup_direct`].
    #[inline(always)]
    fn single_pass<'a, const FP: bool, T>(
        &'a self,
        spis: &[u32],
        out: &mut [T],
        map: impl Fn(Lookup<'a, V>) -> T,
    ) -> usize {
        let t = &self.table;
        let mut hits = 0;
        for (o, &spi) in out.iter_mut().zip(spis) {
            let l = if FP && t.fps[t.index(spi)].load(Ordering::Relaxed) != t.fingerprint(spi) {
                // No fingerprint match: not an SA of this table (see `table::Fingerprints`).
                self.lookup_foreign(spi)
            } else {
                let e = t.entry(spi);
                // The tag first: its compare is as predictable as the traffic (all hits,
                // or a flood of misses), while whether a slot is occupied is not.
                if e.tag() == spi {
                    match e.value() {
                        Some(a) => Lookup::Hit(a),
                        // Retired or reserved.
                        None => self.lookup_direct(spi),
                    }
                } else {
                    self.lookup_foreign(spi)
                }
            };
            hits += usize::from(l.is_hit());
            *o = map(l);
        }
        hits
    }

    /// Hit-tuned rounds of [`BATCH`] in two passes: read every entry, then classify.
    #[inline(always)]
    fn two_pass<'a, T>(
        &'a self,
        spis: &[u32],
        out: &mut [T],
        map: impl Fn(Lookup<'a, V>) -> T,
    ) -> usize {
        let t = &self.table;
        let mut hits = 0;
        for (spis, out) in spis.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            // Pass 1: one independent load per SPI (the tag compare is what issues it; an
            // address alone loads nothing), so the round's cache misses overlap. Slots past
            // the end of a short round point at slot 0 and are never read.
            let ents: [&Entry<V>; BATCH] = match <&[u32; BATCH]>::try_from(spis) {
                // A full round: no per-SPI length test.
                Ok(full) => full.map(|spi| t.entry(spi)),
                Err(_) => std::array::from_fn(|k| t.entry(spis.get(k).copied().unwrap_or(0))),
            };
            let mut matched = [false; BATCH];
            for ((m, &spi), e) in matched.iter_mut().zip(spis).zip(&ents) {
                *m = e.tag() == spi;
            }
            // Pass 2: classify.
            for (((o, &spi), e), &m) in out.iter_mut().zip(spis).zip(&ents).zip(&matched) {
                let l = if m {
                    match e.value() {
                        Some(a) => Lookup::Hit(a),
                        // Retired or reserved.
                        None => self.lookup_direct(spi),
                    }
                } else {
                    self.lookup_foreign(spi)
                };
                hits += usize::from(l.is_hit());
                *o = map(l);
            }
        }
        hits
    }

    /// The live inbound SA with this SPI.
    pub fn get(&self, spi: u32) -> Option<&V> {
        match self.table.get(spi) {
            Some(SlotRef::Live(v)) => Some(v),
            Some(_) => None,
            None => match self.foreign.as_deref()?.map.get(&spi)? {
                Foreign::Live(v) => Some(v),
                Foreign::Retired { .. } => None,
            },
        }
    }

    /// Number of live inbound SAs (allocated and foreign).
    pub fn len(&self) -> usize {
        self.counts.live + self.foreign.as_deref().map_or(0, |f| f.live)
    }

    /// `true` if there is no live inbound SA.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry counts.
    pub fn stats(&self) -> SadStats {
        let (foreign_live, foreign_all) = self
            .foreign
            .as_deref()
            .map_or((0, 0), |f| (f.live, f.map.len()));
        SadStats {
            live: self.counts.live,
            reserved: self.counts.reserved,
            retired: self.counts.retired,
            foreign_live,
            foreign_retired: foreign_all - foreign_live,
            slots: self.table.slots(),
            outbound: self.outbound.len(),
        }
    }

    /// Live inbound SAs as `(spi, sa)`: allocated ones in slot order, then foreign ones in
    /// map order. O(slots); meant for the control plane (`show sa`).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> + '_ {
        self.entries().filter_map(|e| match e.state {
            EntryState::Live(v) => Some((e.spi, v)),
            _ => None,
        })
    }

    /// Every inbound entry, including reserved and retired SPIs.
    pub fn entries(&self) -> impl Iterator<Item = InboundEntry<'_, V>> + '_ {
        let slots = self.table.occupied().map(|(spi, s)| InboundEntry {
            spi,
            state: match s {
                SlotRef::Live(v) => EntryState::Live(v),
                SlotRef::Retired => EntryState::Retired,
                SlotRef::Reserved | SlotRef::Empty => EntryState::Reserved,
            },
            foreign: false,
        });
        let foreign = self.foreign.iter().flat_map(|f| {
            f.map.iter().map(|(&spi, e)| InboundEntry {
                spi,
                state: match e {
                    Foreign::Live(v) => EntryState::Live(v),
                    Foreign::Retired { .. } => EntryState::Retired,
                },
                foreign: true,
            })
        });
        slots.chain(foreign)
    }

    /// The outbound SA installed for exactly this peer and selector pair.
    pub fn outbound_get(&self, peer: IpAddr, selectors: &SelectorPair) -> Option<&Arc<O>> {
        self.outbound
            .iter()
            .find(|e| e.peer == peer && e.selectors == *selectors)
            .map(|e| &e.sa)
    }

    /// The outbound SA for a cleartext packet: the first entry, in installation order, whose
    /// selectors cover the flow (the SPD is ordered and first match wins, RFC 4301 §4.4.1).
    ///
    /// A linear scan: outbound policies number in the tens to hundreds, where a scan over a
    /// contiguous array beats any index; revisit if that stops being true.
    #[inline]
    pub fn outbound_match(&self, flow: &FlowKey) -> Option<&O> {
        self.outbound
            .iter()
            .find(|e| e.selectors.matches(flow))
            .map(|e| &*e.sa)
    }

    /// Outbound entries in installation (= match priority) order.
    pub fn outbound(&self) -> &[OutboundEntry<O>] {
        &self.outbound
    }
}
