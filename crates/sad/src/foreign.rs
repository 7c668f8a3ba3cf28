//! Inbound SAs whose SPI someone else chose (manual keying, or a peer's pick), which cannot be
//! placed by the direct-index rule.
//!
//! They live in a `HashMap` with std's `RandomState` (SipHash with a random key): the SPI of a
//! lookup comes off the wire, and an unseeded hash would let a sender pick colliding values.
//! In front of the map sits a bit filter indexed by a randomly keyed multiplicative hash, so
//! that a miss (the common case for an invalid-SPI flood) costs one bit test instead of a
//! SipHash computation whenever foreign SAs exist at all.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::time::Instant;

use crate::Lookup;

/// One foreign entry.
pub(crate) enum Foreign<V> {
    /// A live SA.
    Live(V),
    /// Removed less than the grace period ago; `until` is when it may be purged.
    Retired { until: Option<Instant> },
}

impl<V: Clone> Clone for Foreign<V> {
    fn clone(&self) -> Self {
        match self {
            Foreign::Live(v) => Foreign::Live(v.clone()),
            Foreign::Retired { until } => Foreign::Retired { until: *until },
        }
    }
}

/// Bits of filter per map entry: one hash function, so ~1/16 of misses reach the map.
const FILTER_BITS_PER_ENTRY: usize = 16;
/// Filter size bounds (bits). The upper bound (2 MiB) keeps the filter cache-friendly.
const FILTER_MIN_BITS: usize = 512;
const FILTER_MAX_BITS: usize = 1 << 24;

/// Foreign SPIs: map plus miss filter.
pub(crate) struct ForeignTable<V> {
    pub(crate) map: HashMap<u32, Foreign<V>, RandomState>,
    /// Number of `Foreign::Live` entries.
    pub(crate) live: usize,
    filter: Box<[u64]>,
    /// Random odd multiplier keying the filter hash.
    mul: u32,
    /// `32 - log2(filter bits)`.
    shift: u32,
}

impl<V: Clone> Clone for ForeignTable<V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            live: self.live,
            filter: self.filter.clone(),
            mul: self.mul,
            shift: self.shift,
        }
    }
}

impl<V> ForeignTable<V> {
    /// An empty table whose filter is keyed by `key` (made odd so the multiply is a bijection).
    pub(crate) fn new(key: u32) -> Self {
        let mut t = Self {
            map: HashMap::default(),
            live: 0,
            filter: Box::new([]),
            mul: key | 1,
            shift: 32,
        };
        t.rebuild_filter();
        t
    }

    #[inline(always)]
    fn bit(&self, spi: u32) -> usize {
        (spi.wrapping_mul(self.mul) >> self.shift) as usize
    }

    /// Classify `spi`. The filter test is inlined into the caller's loop; the map probe,
    /// reached by ~1/16 of misses, is not.
    #[inline]
    pub(crate) fn lookup(&self, spi: u32) -> Lookup<'_, V> {
        let b = self.bit(spi);
        if self.filter[b >> 6] & (1 << (b & 63)) == 0 {
            return Lookup::Unknown;
        }
        self.probe(spi)
    }

    #[inline(never)]
    fn probe(&self, spi: u32) -> Lookup<'_, V> {
        match self.map.get(&spi) {
            Some(Foreign::Live(v)) => Lookup::Hit(v),
            Some(Foreign::Retired { .. }) => Lookup::Retired,
            None => Lookup::Unknown,
        }
    }

    /// Resize and refill the filter from the map; called once per committed transaction that
    /// changed the map (a cleared bit could be shared, so removals need a rebuild anyway).
    pub(crate) fn rebuild_filter(&mut self) {
        let bits = (self.map.len() * FILTER_BITS_PER_ENTRY)
            .next_power_of_two()
            .clamp(FILTER_MIN_BITS, FILTER_MAX_BITS);
        self.shift = 32 - bits.trailing_zeros();
        let mut filter = vec![0u64; bits / 64].into_boxed_slice();
        for &spi in self.map.keys() {
            let b = self.bit(spi);
            filter[b >> 6] |= 1 << (b & 63);
        }
        self.filter = filter;
    }
}

impl<V> ForeignTable<V> {
    /// Insert or overwrite an entry, keeping the filter free of false negatives (stale set
    /// bits are fine until the next `rebuild_filter`).
    pub(crate) fn put(&mut self, spi: u32, entry: Foreign<V>) -> Option<Foreign<V>> {
        let b = self.bit(spi);
        self.filter[b >> 6] |= 1 << (b & 63);
        let new_live = matches!(entry, Foreign::Live(_));
        let old = self.map.insert(spi, entry);
        let old_live = matches!(old, Some(Foreign::Live(_)));
        self.live = self.live + usize::from(new_live) - usize::from(old_live);
        old
    }

    /// Remove an entry (its filter bit stays set until the next rebuild).
    pub(crate) fn take(&mut self, spi: u32) -> Option<Foreign<V>> {
        let old = self.map.remove(&spi);
        if matches!(old, Some(Foreign::Live(_))) {
            self.live -= 1;
        }
        old
    }
}
