//! The SAD handle: control-plane writes, snapshot publication, reader creation.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::reader::SadReader;
use crate::selector::SelectorPair;
use crate::table::CHUNK;
use crate::txn::{Quarantine, SadTxn, WriterState};
use crate::view::{SadStats, SadView};
use crate::{SadConfig, SadError};

/// Most allocated SPIs a SAD can hold: 2^23, so the table stays at most 2^24 slots and at
/// least 8 bits of every allocated SPI are random.
pub const MAX_CAPACITY: usize = 1 << (MAX_SLOT_BITS - 1);
const MAX_SLOT_BITS: u32 = 24;

/// The Security Association Database: inbound SAs by SPI, outbound SAs by peer and selectors.
///
/// `V` is the inbound SA type, `O` the outbound one (the same by default).
///
/// Reads go through [`SadReader`] (per thread, lock-free) or [`Sad::snapshot`]. Writes take an
/// internal mutex (control plane only), edit a copy-on-write copy of the current snapshot and
/// publish it atomically.
pub struct Sad<V, O = V> {
    current: Arc<ArcSwap<SadView<V, O>>>,
    writer: Mutex<WriterState<V, O>>,
    grace: Duration,
    max_slots: usize,
}

/// Slots for `capacity` allocated SPIs at load factor 1/2 (power of two, at least one chunk).
fn slots_for(capacity: usize) -> usize {
    capacity
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .clamp(CHUNK, 1 << MAX_SLOT_BITS)
}

impl<V: Clone, O> Sad<V, O> {
    /// An empty SAD.
    pub fn new(config: SadConfig) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut rng = rng;
        let max_slots = slots_for(config.max_capacity.min(MAX_CAPACITY));
        let slots = slots_for(config.initial_capacity).min(max_slots);
        let fp_key = rng.gen::<u8>();
        Self {
            current: Arc::new(ArcSwap::from_pointee(SadView::with_slots(slots, fp_key))),
            writer: Mutex::new(WriterState {
                rng,
                retiring: BTreeSet::new(),
                graveyard: Vec::new(),
                quarantine: Quarantine::default(),
            }),
            grace: config.grace_period,
            max_slots,
        }
    }

    /// The configured grace period for retired SPIs.
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// A new lock-free read handle (one per datapath thread).
    pub fn reader(&self) -> SadReader<V, O> {
        SadReader::new(Arc::clone(&self.current))
    }

    /// The current snapshot, for control-plane reads (`show sa`, statistics).
    pub fn snapshot(&self) -> Arc<SadView<V, O>> {
        self.current.load_full()
    }

    /// The live inbound SA with this SPI (control plane; the datapath uses [`SadReader`]).
    pub fn get(&self, spi: u32) -> Option<V> {
        self.current.load().get(spi).cloned()
    }

    /// The outbound SA installed for exactly this peer and selector pair.
    pub fn get_outbound(&self, peer: IpAddr, selectors: &SelectorPair) -> Option<Arc<O>> {
        self.current.load().outbound_get(peer, selectors).cloned()
    }

    /// Number of live inbound SAs.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// `true` if there is no live inbound SA.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry counts of the current snapshot.
    pub fn stats(&self) -> SadStats {
        self.current.load().stats()
    }

    fn lock(&self) -> MutexGuard<'_, WriterState<V, O>> {
        // A panic inside `update` leaves the writer state as the last commit left it (the
        // transaction's changes live in the transaction until commit), so poison is harmless.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run a write transaction: every change `f` makes is published to readers at once when
    /// it returns (one snapshot swap), or not at all if it panics. Use it to batch many
    /// changes (bulk load, rekey of many SAs): each chunk is then copied at most once.
    pub fn update<R>(&self, f: impl FnOnce(&mut SadTxn<'_, V, O>) -> R) -> R {
        let mut guard = self.lock();
        let state = &mut *guard;
        // Free replaced snapshots no reader holds any more, then release the quarantined slots
        // that only those snapshots could have seen. (The graveyard is in publication order.)
        state.graveyard.retain(|s| Arc::strong_count(s) > 1);
        let oldest_live = state.graveyard.first().map_or(u64::MAX, |s| s.gen);
        state.quarantine.release(oldest_live);
        // Only writers publish and we hold the writer lock, so this is the latest snapshot.
        let base = self.current.load_full();
        let mut txn = SadTxn::new(
            base,
            &mut state.rng,
            &state.retiring,
            &state.quarantine,
            self.grace,
            self.max_slots,
        );
        let result = f(&mut txn);
        let done = txn.finish();
        if let Some(view) = done.publish {
            let (gen, slots) = (view.gen, view.table.slots());
            let old = self.current.swap(Arc::new(view));
            state.graveyard.push(old);
            state.quarantine.commit(gen, done.grew, done.freed, slots);
        }
        if let Some(hi) = done.purged_upto {
            while state.retiring.first().is_some_and(|r| *r <= hi) {
                state.retiring.pop_first();
            }
        }
        state.retiring.extend(done.retire_add);
        // Free replaced snapshots no reader holds any more (see `WriterState::graveyard`).
        state.graveyard.retain(|s| Arc::strong_count(s) > 1);
        result
    }

    /// Allocate a fresh SPI and reserve it (lookups say `Unknown` until [`Sad::install`]).
    /// This is what an IKE responder or initiator puts in its SA payload before keys exist.
    pub fn reserve_spi(&self) -> Result<u32, SadError> {
        self.update(|t| t.reserve_spi())
    }

    /// Install the SA for a reserved SPI.
    pub fn install(&self, spi: u32, sa: V) -> Result<(), SadError> {
        self.update(|t| t.install(spi, sa))
    }

    /// Allocate a fresh SPI and install `sa` under it in one step.
    pub fn allocate(&self, sa: V) -> Result<u32, SadError> {
        self.update(|t| t.allocate(sa))
    }

    /// Insert an SA under an SPI chosen elsewhere; see [`SadTxn::insert_foreign`].
    pub fn insert_foreign(&self, spi: u32, sa: V) -> Result<(), SadError> {
        self.update(|t| t.insert_foreign(spi, sa))
    }

    /// Swap the SA of a live SPI, returning the previous one.
    pub fn replace(&self, spi: u32, sa: V) -> Result<V, SadError> {
        self.update(|t| t.replace(spi, sa))
    }

    /// Retire an SPI for the grace period; see [`SadTxn::remove`].
    pub fn remove(&self, spi: u32, now: Instant) -> Option<V> {
        self.update(|t| t.remove(spi, now))
    }

    /// Install `sa` under reserved `new_spi` and retire `old_spi` in one snapshot.
    pub fn rekey(&self, old_spi: u32, new_spi: u32, sa: V, now: Instant) -> Result<V, SadError> {
        self.update(|t| t.rekey(old_spi, new_spi, sa, now))
    }

    /// Free retired SPIs whose grace period ended at or before `now`; returns how many. Call
    /// it periodically (it also frees replaced snapshots that readers have let go of).
    pub fn purge(&self, now: Instant) -> usize {
        self.update(|t| t.purge(now))
    }

    /// Install or replace an outbound SA; see [`SadTxn::insert_outbound`].
    pub fn insert_outbound(&self, peer: IpAddr, selectors: SelectorPair, sa: O) -> Option<Arc<O>> {
        self.update(|t| t.insert_outbound(peer, selectors, sa))
    }

    /// Remove the outbound SA for a peer and selector pair.
    pub fn remove_outbound(&self, peer: IpAddr, selectors: &SelectorPair) -> Option<Arc<O>> {
        self.update(|t| t.remove_outbound(peer, selectors))
    }
}

impl<V: Clone, O> Default for Sad<V, O> {
    fn default() -> Self {
        Self::new(SadConfig::default())
    }
}

impl<V: Clone, O> std::fmt::Debug for Sad<V, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("stats", &self.stats())
            .field("grace", &self.grace)
            .finish()
    }
}
