//! The datapath's per-thread handle.

use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use crate::selector::FlowKey;
use crate::view::SadView;
use crate::Lookup;

/// A per-thread, lock-free read handle on a [`crate::Sad`].
///
/// It caches the current snapshot (`arc_swap::cache::Cache`): each access compares the cached
/// pointer with the published one (one relaxed atomic load) and only takes a new reference
/// when a writer has published since. It never locks or allocates. Hold one per datapath
/// thread; `&mut self` is needed because the cache is refreshed in place.
///
/// The cache keeps the last seen snapshot alive; a reader idle for long pins old SAs in
/// memory until its next access.
pub struct SadReader<V, O = V> {
    cache: SnapshotCache<V, O>,
    /// Read entries directly in the next batch (hit-tuned) rather than fingerprints first
    /// (miss-tuned): set when at least [`DIRECT_HITS`] of the last batch's SPIs were hits.
    direct: bool,
}

/// Share of hits in a batch (in quarters) from which the next batch reads entries directly.
///
/// On a fingerprinted table a fingerprint-first lookup costs `F + h * E` (one fingerprint
/// read, plus an entry read for each hit) and a direct one `E`, where the entry array is 8x
/// the fingerprint array and its random reads cost 2-3x as much (`docs/sad.md`), so direct
/// pays off from `h` of about 0.6. Three quarters leaves a margin on the side of the flood
/// case: a burst of unknown SPIs flips the next batch back to fingerprints.
const DIRECT_HITS: usize = 3;

/// The published-snapshot slot and this reader's cached copy of it.
type SnapshotCache<V, O> = Cache<Arc<ArcSwap<SadView<V, O>>>, Arc<SadView<V, O>>>;

impl<V, O> Clone for SadReader<V, O> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            direct: self.direct,
        }
    }
}

impl<V, O> SadReader<V, O> {
    pub(crate) fn new(shared: Arc<ArcSwap<SadView<V, O>>>) -> Self {
        Self {
            cache: Cache::new(shared),
            direct: false,
        }
    }

    /// The current snapshot. Take it once to run many lookups against one consistent version.
    #[inline]
    pub fn view(&mut self) -> &SadView<V, O> {
        self.cache.load()
    }

    /// Classify an inbound SPI against the current snapshot.
    #[inline(always)]
    pub fn lookup(&mut self, spi: u32) -> Lookup<'_, V> {
        self.view().lookup(spi)
    }

    /// Classify many SPIs against one snapshot: [`SadView::lookup_batch`] or, when most of
    /// the previous batch hit, [`SadView::lookup_batch_direct`] (same answers, different
    /// memory reads: fingerprints first for floods of unknown SPIs, entries directly for
    /// tunnel traffic).
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch<'a>(&'a mut self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        self.lookup_batch_map(spis, out, |l| l);
    }

    /// [`Self::lookup_batch`], each answer stored as `map(answer)`: see
    /// [`SadView::lookup_batch_map`].
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch_map<'a, T>(
        &'a mut self,
        spis: &[u32],
        out: &mut [T],
        map: impl Fn(Lookup<'a, V>) -> T,
    ) {
        let hits = self
            .cache
            .load()
            .lookup_batch_map(spis, out, self.direct, map);
        self.direct = hits * 4 >= spis.len() * DIRECT_HITS && !spis.is_empty();
    }

    /// `true` if the next batch will read entries directly (the last one mostly hit).
    pub fn batch_direct(&self) -> bool {
        self.direct
    }

    /// The outbound SA for a cleartext packet; see [`SadView::outbound_match`].
    #[inline]
    pub fn outbound_match(&mut self, flow: &FlowKey) -> Option<&O> {
        self.view().outbound_match(flow)
    }
}
