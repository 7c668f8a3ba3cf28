//! An immutable snapshot of the whole SAD: what readers look SPIs up in.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::foreign::{Foreign, ForeignTable};
use crate::selector::{FlowKey, SelectorPair};
use crate::table::{SlotRef, SlotTable};
use crate::Lookup;

/// Most SPIs [`SadView::lookup_batch`] resolves per prefetch round.
pub const BATCH: usize = 32;

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
    Live(&'a Arc<V>),
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
    pub(crate) fn with_slots(slots: usize, fp_key: u16) -> Self {
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
    /// A miss reads one dense entry (a 2-byte fingerprint on tables of 64Ki slots and more,
    /// else the 4-byte tag); a hit reads that and the slot's SA pointer, two independent loads
    /// the CPU issues together.
    // `always`: as a plain `#[inline]` LLVM kept it out of line in the benches' closures,
    // and the call with its 16-byte return doubled the cost of an L1 hit.
    #[inline(always)]
    pub fn lookup(&self, spi: u32) -> Lookup<'_, V> {
        if self.table.exact {
            return self.lookup_exact(spi);
        }
        // Small table: the chunk's full tag decides, as cheaply as anything here (the whole
        // table is cache-resident at these sizes).
        let (chunk, i) = self.table.locate(spi);
        if chunk.tag(i) == spi {
            match chunk.value(i) {
                Some(v) => Lookup::Hit(v),
                None if chunk.is_retired(i) => Lookup::Retired,
                // Reserved (no keys yet), or the empty slot's 0 matched the invalid SPI 0.
                None => Lookup::Unknown,
            }
        } else {
            self.lookup_foreign(spi)
        }
    }

    /// [`Self::lookup`] on a fingerprinted table.
    #[inline(always)]
    fn lookup_exact(&self, spi: u32) -> Lookup<'_, V> {
        let t = &self.table;
        if t.fps[t.index(spi)].load(Ordering::Relaxed) != t.fingerprint(spi) {
            return self.lookup_foreign(spi);
        }
        self.classify(spi)
    }

    /// Classify `spi`, whose slot matched it (`SlotTable::matches`).
    #[inline(always)]
    fn classify(&self, spi: u32) -> Lookup<'_, V> {
        let (chunk, i) = self.table.locate(spi);
        match chunk.value(i) {
            // Small tables matched the full tag; fingerprinted ones the fingerprint, and a
            // value in this snapshot's slot then belongs to `spi` (see `table::Fingerprints`).
            Some(v) => Lookup::Hit(v),
            // The tag compare makes Retired independent of fingerprints (a stale one on a
            // freed slot, or the 0 of a never-used one).
            None if chunk.tag(i) == spi && chunk.is_retired(i) => Lookup::Retired,
            // Empty or reserved (no keys yet): not an SA of this table. A foreign SPI can share
            // a fingerprint with an empty slot, so the foreign map still decides.
            None => self.lookup_foreign(spi),
        }
    }

    #[inline(always)]
    fn lookup_foreign(&self, spi: u32) -> Lookup<'_, V> {
        match &self.foreign {
            None => Lookup::Unknown,
            Some(f) => f.lookup(spi),
        }
    }

    /// Classify `spis[k]` into `out[k]` for every `k` (a receive burst).
    ///
    /// Works in rounds of [`BATCH`]. The first pass reads every SPI's fingerprint (or tag),
    /// so the round's independent cache misses overlap instead of each waiting behind the
    /// packet work that separates single lookups; the second pass classifies, reading the SA
    /// pointer of each match. It does not touch the SAs themselves: see
    /// [`Self::lookup_batch_warm`] for a caller that is about to use every hit's SA.
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch<'a>(&'a self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        self.batch::<false>(spis, out)
    }

    /// [`Self::lookup_batch`], and also read the first cache line of every hit's SA (the
    /// `Arc` reference count, just before the value) so the caller's next step does not miss
    /// on it. Costs ~2x the plain batch in a loop that only looks up (at 1Mi SAs: one more
    /// random line per hit); pays off when real per-packet work separates the lookups (see
    /// `sad_hit_work` in `docs/sad.md`).
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch_warm<'a>(&'a self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        self.batch::<true>(spis, out)
    }

    #[inline(always)]
    fn batch<'a, const WARM: bool>(&'a self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        assert!(
            out.len() >= spis.len(),
            "lookup_batch: out shorter than spis"
        );
        for (spis, out) in spis.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            let mut matched = [false; BATCH];
            for (m, &spi) in matched.iter_mut().zip(spis) {
                *m = self.table.matches(spi);
            }
            let mut warm = 0usize;
            for ((o, &spi), &m) in out.iter_mut().zip(spis).zip(matched.iter()) {
                *o = if m {
                    let l = self.classify(spi);
                    if WARM && l.is_hit() {
                        // The `Arc` header sits just before the value: reading its count
                        // brings the SA's first line in.
                        let (chunk, i) = self.table.locate(spi);
                        if let Some(a) = chunk.value(i) {
                            warm = warm.wrapping_add(Arc::strong_count(a));
                        }
                    }
                    l
                } else {
                    self.lookup_foreign(spi)
                };
            }
            if WARM {
                // Keeps the warming loads from being optimised away; one register store.
                std::hint::black_box(warm);
            }
        }
    }

    /// The live inbound SA with this SPI.
    pub fn get(&self, spi: u32) -> Option<&Arc<V>> {
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
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Arc<V>)> + '_ {
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
