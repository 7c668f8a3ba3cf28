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
}

/// The published-snapshot slot and this reader's cached copy of it.
type SnapshotCache<V, O> = Cache<Arc<ArcSwap<SadView<V, O>>>, Arc<SadView<V, O>>>;

impl<V, O> Clone for SadReader<V, O> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
        }
    }
}

impl<V, O> SadReader<V, O> {
    pub(crate) fn new(shared: Arc<ArcSwap<SadView<V, O>>>) -> Self {
        Self {
            cache: Cache::new(shared),
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

    /// Classify many SPIs against one snapshot; see [`SadView::lookup_batch`].
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch<'a>(&'a mut self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        self.view().lookup_batch(spis, out)
    }

    /// [`Self::lookup_batch`] that also brings every hit's SA into the cache; see
    /// [`SadView::lookup_batch_warm`].
    ///
    /// # Panics
    /// If `out` is shorter than `spis`.
    #[inline]
    pub fn lookup_batch_warm<'a>(&'a mut self, spis: &[u32], out: &mut [Lookup<'a, V>]) {
        self.view().lookup_batch_warm(spis, out)
    }

    /// The outbound SA for a cleartext packet; see [`SadView::outbound_match`].
    #[inline]
    pub fn outbound_match(&mut self, flow: &FlowKey) -> Option<&O> {
        self.view().outbound_match(flow)
    }
}
