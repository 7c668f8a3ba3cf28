//! Write transactions: the only way the SAD changes.
//!
//! A transaction edits a private copy of the current snapshot (copy-on-write: the chunk pointer
//! array is cloned, then only the chunks actually written) and publishes it in one atomic swap
//! when the transaction ends, so readers see either none or all of its changes.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::foreign::{Foreign, ForeignTable};
use crate::selector::SelectorPair;
use crate::table::{Slot, SlotRef};
use crate::view::{OutboundEntry, SadView};
use crate::{Lookup, SadError};

/// Random slot probes before falling back to a scan. At load factor <= 1/2 each probe finds a
/// free slot with probability >= 1/2, so the scan practically never runs.
const RANDOM_PROBES: usize = 64;
/// Random high-bit draws per chosen slot before trying another slot (only foreign SPIs and the
/// reserved range 0..=255 can make a draw fail).
const DRAWS_PER_SLOT: usize = 8;
/// Slots tried before `reserve_spi` gives up; only reachable if foreign SPIs cover nearly all
/// values of many slots.
const SLOT_ATTEMPTS: usize = 1024;

/// A retirement: `(deadline, spi)`. Ordered by deadline so purge pops from the front.
pub(crate) type Retirement = (Instant, u32);

/// Slots that purge freed in a fingerprinted table, withheld from reservation until no
/// snapshot older than the purge is alive: rule 2 of `table::Fingerprints`. Without it, a
/// reader still holding a snapshot from before the SPI was removed (a `Sad::snapshot` kept
/// past the grace period, or a datapath thread descheduled that long) could see the slot's
/// old SA under a fingerprint rewritten for the slot's next SPI.
///
/// Quarantined slots count toward the load factor. They are released at the start of each
/// transaction once the writer's graveyard (which holds every replaced snapshot a reader may
/// still use) has nothing older than the purge; growth clears them (the grown table has its
/// own fingerprint array, which no old snapshot reads).
#[derive(Default)]
pub(crate) struct Quarantine {
    /// One bit per slot of the current table; empty until first used.
    bits: Vec<u64>,
    /// `(generation of the snapshot that freed the slot, slot)`, in generation order.
    queue: VecDeque<(u64, usize)>,
}

impl Quarantine {
    fn contains(&self, idx: usize) -> bool {
        self.bits
            .get(idx / 64)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    /// Slots currently withheld.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    fn add(&mut self, gen: u64, idx: usize, slots: usize) {
        if self.bits.len() < slots / 64 {
            self.bits.resize(slots / 64, 0);
        }
        debug_assert!(!self.contains(idx), "slot quarantined twice");
        self.bits[idx / 64] |= 1 << (idx % 64);
        self.queue.push_back((gen, idx));
    }

    /// Release every slot freed by a snapshot no older than `oldest_live`, the oldest
    /// snapshot generation a reader may still hold.
    pub(crate) fn release(&mut self, oldest_live: u64) {
        while let Some(&(gen, idx)) = self.queue.front() {
            if gen > oldest_live {
                break;
            }
            self.queue.pop_front();
            self.bits[idx / 64] &= !(1 << (idx % 64));
        }
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.bits.clear();
    }

    /// Apply a committed transaction: `freed` slots were freed by snapshot `gen`; `grew`
    /// means the published table is a new one, on which nothing is quarantined.
    pub(crate) fn commit(&mut self, gen: u64, grew: bool, freed: Vec<usize>, slots: usize) {
        if grew {
            self.clear();
        } else {
            freed.into_iter().for_each(|idx| self.add(gen, idx, slots));
        }
    }
}

/// Writer-only state, behind the `Sad`'s mutex.
pub(crate) struct WriterState<V, O> {
    pub(crate) rng: StdRng,
    /// Deadlines of retired SPIs (committed transactions only).
    pub(crate) retiring: BTreeSet<Retirement>,
    /// Replaced snapshots a reader may still hold. Kept here and freed by the writer once it
    /// holds the last reference, so a reader refreshing its cache never runs the O(slots)
    /// destructor (nor drops a `V`) on the packet path.
    pub(crate) graveyard: Vec<Arc<SadView<V, O>>>,
    /// Freed slots not yet reusable.
    pub(crate) quarantine: Quarantine,
}

/// An open write transaction; see [`crate::Sad::update`].
///
/// Changes become visible to readers atomically when the closure given to `update` returns.
/// If it panics, nothing is published and the SAD stays as it was.
pub struct SadTxn<'w, V, O = V> {
    base: Arc<SadView<V, O>>,
    work: Option<SadView<V, O>>,
    rng: &'w mut StdRng,
    retiring: &'w BTreeSet<Retirement>,
    quarantine: &'w Quarantine,
    /// Slots of a fingerprinted table freed in this transaction (quarantined on commit, and
    /// not reserved again in it).
    freed: HashSet<usize>,
    /// The table grew in this transaction: the writer's quarantine refers to the old one.
    grew: bool,
    /// Retirements made in this transaction.
    retire_add: Vec<Retirement>,
    /// Committed retirements up to this key were consumed by `purge` in this transaction.
    purged_upto: Option<Retirement>,
    foreign_dirty: bool,
    grace: Duration,
    max_slots: usize,
}

impl<'w, V: Clone, O> SadTxn<'w, V, O> {
    pub(crate) fn new(
        base: Arc<SadView<V, O>>,
        rng: &'w mut StdRng,
        retiring: &'w BTreeSet<Retirement>,
        quarantine: &'w Quarantine,
        grace: Duration,
        max_slots: usize,
    ) -> Self {
        Self {
            base,
            work: None,
            rng,
            retiring,
            quarantine,
            freed: HashSet::new(),
            grew: false,
            retire_add: Vec::new(),
            purged_upto: None,
            foreign_dirty: false,
            grace,
            max_slots,
        }
    }

    /// The state as this transaction sees it (its own changes included).
    pub fn view(&self) -> &SadView<V, O> {
        self.work.as_ref().unwrap_or(&self.base)
    }

    /// The working copy, made on the first write.
    fn work(&mut self) -> &mut SadView<V, O> {
        let base = &self.base;
        self.work.get_or_insert_with(|| {
            let mut v = SadView::clone(base);
            v.gen = base.gen + 1;
            v
        })
    }

    /// Slots withheld from reservation (see [`Quarantine`]).
    fn quarantined(&self) -> usize {
        if self.grew {
            0
        } else {
            self.quarantine.len() + self.freed.len()
        }
    }

    /// `true` if slot `idx` is free but may not be reserved yet.
    fn is_quarantined(&self, idx: usize) -> bool {
        !self.grew && (self.quarantine.contains(idx) || self.freed.contains(&idx))
    }

    /// Classify an SPI as a reader would after this transaction.
    pub fn lookup(&self, spi: u32) -> Lookup<'_, V> {
        self.view().lookup(spi)
    }

    /// The live inbound SA with this SPI.
    pub fn get(&self, spi: u32) -> Option<&V> {
        self.view().get(spi)
    }

    /// Grow the slot table if one more occupied slot would exceed the load factor of 1/2.
    fn ensure_room(&mut self) -> Result<(), SadError> {
        let view = self.view();
        let slots = view.table.slots();
        if view.counts.occupied() + self.quarantined() < slots / 2 {
            return Ok(());
        }
        if slots >= self.max_slots {
            return Err(SadError::Full {
                capacity: self.max_slots / 2,
            });
        }
        let work = self.work();
        work.table = work.table.grown(slots * 2);
        self.grew = true;
        self.freed.clear();
        Ok(())
    }

    /// A uniformly random free slot index.
    fn pick_free_slot(&mut self) -> usize {
        let table = &self.work.as_ref().unwrap_or(&self.base).table;
        let slots = table.slots();
        for _ in 0..RANDOM_PROBES {
            let idx = self.rng.gen_range(0..slots);
            if table.tag_at(idx) == 0 && !self.is_quarantined(idx) {
                return idx;
            }
        }
        let start = self.rng.gen_range(0..slots);
        (0..slots)
            .map(|k| (start + k) & (slots - 1))
            .find(|&idx| table.tag_at(idx) == 0 && !self.is_quarantined(idx))
            .expect("load factor <= 1/2 leaves free slots")
    }

    /// Choose a fresh SPI and put its slot in the reserved state.
    ///
    /// The low bits select a random free slot, the remaining bits are random, so the SPI is
    /// unpredictable yet resolves by direct index. It is never in 0..=255 (RFC 4303 §2.1
    /// reserves them), never equal to a live, reserved or retired SPI (its slot was free), and
    /// never equal to a foreign SPI (checked).
    pub fn reserve_spi(&mut self) -> Result<u32, SadError> {
        self.ensure_room()?;
        for _ in 0..SLOT_ATTEMPTS {
            let idx = self.pick_free_slot();
            let view = self.work.as_ref().unwrap_or(&self.base);
            let mask = view.table.mask;
            let foreign = view.foreign.as_deref();
            let mut found = None;
            for _ in 0..DRAWS_PER_SLOT {
                let spi = (self.rng.gen::<u32>() & !mask) | idx as u32;
                if spi > 255 && !foreign.is_some_and(|f| f.map.contains_key(&spi)) {
                    found = Some(spi);
                    break;
                }
            }
            if let Some(spi) = found {
                let work = self.work();
                work.table.replace(idx, spi, Slot::Reserved);
                work.counts.reserved += 1;
                return Ok(spi);
            }
        }
        Err(SadError::Full {
            capacity: self.max_slots / 2,
        })
    }

    /// Install the SA for an SPI obtained from [`Self::reserve_spi`].
    pub fn install(&mut self, spi: u32, sa: V) -> Result<(), SadError> {
        if !matches!(self.view().table.get(spi), Some(SlotRef::Reserved)) {
            return Err(SadError::NotReserved(spi));
        }
        let work = self.work();
        let idx = work.table.index(spi);
        work.table.replace(idx, spi, Slot::Live(sa));
        work.counts.reserved -= 1;
        work.counts.live += 1;
        Ok(())
    }

    /// Allocate a fresh SPI and install `sa` under it.
    pub fn allocate(&mut self, sa: V) -> Result<u32, SadError> {
        let spi = self.reserve_spi()?;
        self.install(spi, sa)?;
        Ok(spi)
    }

    /// Insert an SA whose SPI was chosen elsewhere (manual keying, or a peer).
    ///
    /// Fails if the SPI is in 0..=255 or already names a live, reserved or retired allocated
    /// SPI, or a live foreign one. A foreign SPI inside its grace period may be inserted again
    /// (an operator deleting and re-adding a manual SA should not have to wait).
    pub fn insert_foreign(&mut self, spi: u32, sa: V) -> Result<(), SadError> {
        // RFC 4303 §2.1: 0 is for local use, 1..=255 are reserved by IANA.
        if spi <= 255 {
            return Err(SadError::ReservedSpi(spi));
        }
        let view = self.view();
        if view.table.get(spi).is_some() {
            return Err(SadError::SpiInUse(spi));
        }
        if let Some(Foreign::Live(_)) = view.foreign.as_deref().and_then(|f| f.map.get(&spi)) {
            return Err(SadError::SpiInUse(spi));
        }
        let key = self.rng.gen::<u32>();
        let work = self.work();
        let table = work
            .foreign
            .get_or_insert_with(|| Arc::new(ForeignTable::new(key)));
        Arc::make_mut(table).put(spi, Foreign::Live(sa));
        self.foreign_dirty = true;
        Ok(())
    }

    /// Swap the SA of a live SPI (allocated or foreign), returning the previous one.
    pub fn replace(&mut self, spi: u32, sa: V) -> Result<V, SadError> {
        let view = self.view();
        if let Some(slot) = view.table.get(spi) {
            if !matches!(slot, SlotRef::Live(_)) {
                return Err(SadError::NotFound(spi));
            }
            let work = self.work();
            let idx = work.table.index(spi);
            match work.table.replace(idx, spi, Slot::Live(sa)) {
                Slot::Live(old) => return Ok(old),
                _ => unreachable!("checked live above"),
            }
        }
        if !matches!(
            view.foreign.as_deref().and_then(|f| f.map.get(&spi)),
            Some(Foreign::Live(_))
        ) {
            return Err(SadError::NotFound(spi));
        }
        let table = self.work().foreign.as_mut().expect("checked above");
        match Arc::make_mut(table).put(spi, Foreign::Live(sa)) {
            Some(Foreign::Live(old)) => Ok(old),
            _ => unreachable!("checked live above"),
        }
    }

    /// Retire an SPI: a live SA is dropped from the table (and returned), a reserved SPI is
    /// abandoned. Either way the SPI is classified [`Lookup::Retired`] and withheld from
    /// reallocation until `now + grace period`, when [`Self::purge`] frees it.
    pub fn remove(&mut self, spi: u32, now: Instant) -> Option<V> {
        // Deadline overflow means "longer than representable": never purge.
        let until = now.checked_add(self.grace);
        let view = self.view();
        if let Some(slot) = view.table.get(spi) {
            if !matches!(slot, SlotRef::Live(_) | SlotRef::Reserved) {
                return None;
            }
            let work = self.work();
            let idx = work.table.index(spi);
            let old = work.table.replace(idx, spi, Slot::Retired);
            work.counts.retired += 1;
            let out = match old {
                Slot::Live(v) => {
                    work.counts.live -= 1;
                    Some(v)
                }
                _ => {
                    work.counts.reserved -= 1;
                    None
                }
            };
            if let Some(until) = until {
                self.retire_add.push((until, spi));
            }
            return out;
        }
        if !matches!(
            view.foreign.as_deref().and_then(|f| f.map.get(&spi)),
            Some(Foreign::Live(_))
        ) {
            return None;
        }
        let table = self.work().foreign.as_mut().expect("checked above");
        let old = Arc::make_mut(table).put(spi, Foreign::Retired { until });
        self.foreign_dirty = true;
        if let Some(until) = until {
            self.retire_add.push((until, spi));
        }
        match old {
            Some(Foreign::Live(v)) => Some(v),
            _ => unreachable!("checked live above"),
        }
    }

    /// Rekey: install `sa` under `new_spi` (from [`Self::reserve_spi`]) and retire `old_spi`,
    /// returning the old SA, in one snapshot. Both checks happen before any change. The peer
    /// may still have packets for the old SA in flight when it is deleted (RFC 7296 §2.8), so
    /// the old SPI stays [`Lookup::Retired`] for the grace period rather than turning unknown.
    pub fn rekey(
        &mut self,
        old_spi: u32,
        new_spi: u32,
        sa: V,
        now: Instant,
    ) -> Result<V, SadError> {
        if self.get(old_spi).is_none() {
            return Err(SadError::NotFound(old_spi));
        }
        self.install(new_spi, sa)?;
        Ok(self.remove(old_spi, now).expect("checked live above"))
    }

    /// Free every retired SPI whose grace period ended at or before `now`. Returns how many.
    pub fn purge(&mut self, now: Instant) -> usize {
        let hi = (now, u32::MAX);
        let mut due: Vec<Retirement> = match self.purged_upto {
            None => self.retiring.range(..=hi).copied().collect(),
            Some(lo) if lo < hi => self
                .retiring
                .range((std::ops::Bound::Excluded(lo), std::ops::Bound::Included(hi)))
                .copied()
                .collect(),
            Some(_) => Vec::new(),
        };
        if !matches!(self.purged_upto, Some(lo) if lo >= hi) {
            self.purged_upto = Some(hi);
        }
        let (now_due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retire_add)
            .into_iter()
            .partition(|r| *r <= hi);
        self.retire_add = later;
        due.extend(now_due);
        if due.is_empty() {
            return 0;
        }
        let mut freed = 0;
        let grew = self.grew;
        let mut freed_slots = Vec::new();
        let work = self.work();
        let mut foreign_changed = false;
        for (until, spi) in due {
            if matches!(work.table.get(spi), Some(SlotRef::Retired)) {
                let idx = work.table.index(spi);
                work.table.replace(idx, 0, Slot::Empty);
                work.counts.retired -= 1;
                // A grown table is private to this transaction: no reader saw its slots.
                if work.table.fingerprinted && !grew {
                    freed_slots.push(idx);
                }
                freed += 1;
                continue;
            }
            // A foreign SPI re-inserted or re-retired since leaves a stale queue entry: only
            // the entry whose deadline matches frees it.
            let matches = work.foreign.as_deref().is_some_and(|f| {
                matches!(f.map.get(&spi), Some(Foreign::Retired { until: Some(u) }) if *u == until)
            });
            if matches {
                let f = work.foreign.as_mut().expect("checked above");
                Arc::make_mut(f).take(spi);
                foreign_changed = true;
                freed += 1;
            }
        }
        self.foreign_dirty |= foreign_changed;
        self.freed.extend(freed_slots);
        freed
    }

    /// Install (or replace) the outbound SA for a peer and selector pair; returns the replaced
    /// SA. A new pair goes last in match order, a replaced one keeps its place.
    pub fn insert_outbound(
        &mut self,
        peer: IpAddr,
        selectors: SelectorPair,
        sa: O,
    ) -> Option<Arc<O>> {
        let list = Arc::make_mut(&mut self.work().outbound);
        let sa = Arc::new(sa);
        match list
            .iter_mut()
            .find(|e| e.peer == peer && e.selectors == selectors)
        {
            Some(e) => Some(std::mem::replace(&mut e.sa, sa)),
            None => {
                list.push(OutboundEntry {
                    peer,
                    selectors,
                    sa,
                });
                None
            }
        }
    }

    /// Remove the outbound SA for a peer and selector pair.
    pub fn remove_outbound(&mut self, peer: IpAddr, selectors: &SelectorPair) -> Option<Arc<O>> {
        let pos = self
            .view()
            .outbound
            .iter()
            .position(|e| e.peer == peer && e.selectors == *selectors)?;
        Some(Arc::make_mut(&mut self.work().outbound).remove(pos).sa)
    }

    /// Finish: the snapshot to publish (if anything changed) and the retirement log.
    pub(crate) fn finish(mut self) -> Finished<V, O> {
        if self.foreign_dirty {
            if let Some(work) = self.work.as_mut() {
                let empty = work.foreign.as_deref().is_some_and(|f| f.map.is_empty());
                if empty {
                    work.foreign = None;
                } else if let Some(f) = work.foreign.as_mut() {
                    Arc::make_mut(f).rebuild_filter();
                }
            }
        }
        Finished {
            publish: self.work.take(),
            retire_add: std::mem::take(&mut self.retire_add),
            purged_upto: self.purged_upto,
            freed: self.freed.drain().collect(),
            grew: self.grew,
        }
    }
}

/// What a completed transaction hands to the commit step.
pub(crate) struct Finished<V, O> {
    pub(crate) publish: Option<SadView<V, O>>,
    pub(crate) retire_add: Vec<Retirement>,
    pub(crate) purged_upto: Option<Retirement>,
    pub(crate) freed: Vec<usize>,
    pub(crate) grew: bool,
}
