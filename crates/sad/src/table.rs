//! The direct-index slot table holding SPIs that this SAD allocated.
//!
//! Slot index = `spi & mask`; the slot's tag holds the full SPI, so a lookup is one masked
//! index plus one 4-byte compare. The table is split into fixed-size chunks, each behind its
//! own `Arc`, so a copy-on-write update clones the chunk array (pointers only) and the one
//! chunk it touches instead of the whole table.

use std::sync::Arc;

/// log2 of the slots per chunk.
pub(crate) const CHUNK_BITS: u32 = 10;
/// Slots per chunk: 4 KiB of tags plus 16 KiB of slot states.
pub(crate) const CHUNK: usize = 1 << CHUNK_BITS;

/// State of one slot. The SPI itself lives in the chunk's tag array.
pub(crate) enum Slot<V> {
    /// Free; its tag is 0.
    Empty,
    /// SPI handed out (e.g. in an IKE SA payload) but no keys installed yet.
    Reserved,
    /// A live SA.
    Live(Arc<V>),
    /// Removed or rekeyed less than the grace period ago; the value is already dropped. The
    /// deadline is kept by the writer (see `txn`), so slots stay 16 bytes.
    Retired,
}

// Manual impl: cloning a slot clones an `Arc`, never a `V`.
impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        match self {
            Slot::Empty => Slot::Empty,
            Slot::Reserved => Slot::Reserved,
            Slot::Live(v) => Slot::Live(Arc::clone(v)),
            Slot::Retired => Slot::Retired,
        }
    }
}

/// `CHUNK` consecutive slots. Tags are dense (`[u32; CHUNK]`) so a miss reads 4 bytes and 16
/// tags share a cache line; the slot states sit in a separate array read only on a tag match.
pub(crate) struct Chunk<V> {
    /// Full SPI of each occupied slot, 0 when empty (0 is never a valid SPI, RFC 4303 §2.1).
    pub(crate) tags: [u32; CHUNK],
    /// State of each slot.
    pub(crate) slots: [Slot<V>; CHUNK],
}

impl<V> Chunk<V> {
    pub(crate) fn empty() -> Self {
        Self {
            tags: [0; CHUNK],
            slots: std::array::from_fn(|_| Slot::Empty),
        }
    }
}

impl<V> Clone for Chunk<V> {
    fn clone(&self) -> Self {
        Self {
            tags: self.tags,
            slots: self.slots.clone(),
        }
    }
}

/// The slot table: `mask + 1` slots (a power of two, at least `CHUNK`) in `chunks`.
pub(crate) struct SlotTable<V> {
    pub(crate) mask: u32,
    pub(crate) chunks: Box<[Arc<Chunk<V>>]>,
}

impl<V> Clone for SlotTable<V> {
    fn clone(&self) -> Self {
        Self {
            mask: self.mask,
            chunks: self.chunks.clone(),
        }
    }
}

impl<V> SlotTable<V> {
    /// An empty table of `slots` slots (`slots` is a power of two, at least `CHUNK`).
    pub(crate) fn with_slots(slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two() && slots >= CHUNK);
        let chunks = (0..slots / CHUNK)
            .map(|_| Arc::new(Chunk::empty()))
            .collect();
        Self {
            mask: (slots - 1) as u32,
            chunks,
        }
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn slots(&self) -> usize {
        self.mask as usize + 1
    }

    /// Chunk and in-chunk index of the slot an SPI maps to.
    #[inline(always)]
    pub(crate) fn locate(&self, spi: u32) -> (&Chunk<V>, usize) {
        let idx = (spi & self.mask) as usize;
        (&self.chunks[idx >> CHUNK_BITS], idx & (CHUNK - 1))
    }

    /// The tag stored in the slot `spi` maps to (not necessarily `spi`).
    #[inline(always)]
    pub(crate) fn tag(&self, spi: u32) -> u32 {
        let (c, i) = self.locate(spi);
        c.tags[i]
    }

    /// The tag and state of slot `idx`.
    #[inline]
    pub(crate) fn at(&self, idx: usize) -> (u32, &Slot<V>) {
        let c = &self.chunks[idx >> CHUNK_BITS];
        let i = idx & (CHUNK - 1);
        (c.tags[i], &c.slots[i])
    }

    /// The state of `spi`'s slot if its tag is exactly `spi`.
    #[inline]
    pub(crate) fn get(&self, spi: u32) -> Option<&Slot<V>> {
        let (c, i) = self.locate(spi);
        (c.tags[i] == spi && spi != 0).then(|| &c.slots[i])
    }

    /// Mutable tag and state of slot `idx`; clones the chunk if a published snapshot shares it.
    pub(crate) fn at_mut(&mut self, idx: usize) -> (&mut u32, &mut Slot<V>) {
        let c = Arc::make_mut(&mut self.chunks[idx >> CHUNK_BITS]);
        let i = idx & (CHUNK - 1);
        (&mut c.tags[i], &mut c.slots[i])
    }

    /// A table of `new_slots` slots holding every occupied slot of `self`.
    ///
    /// Each SPI moves to `spi & new_mask`. That never collides: two occupied slots `a != b`
    /// differ in their low `log2(old slots)` bits, and the new index keeps those bits, so the
    /// new indices differ too.
    pub(crate) fn grown(&self, new_slots: usize) -> Self {
        debug_assert!(new_slots.is_power_of_two() && new_slots > self.slots());
        let mut chunks: Vec<Chunk<V>> = (0..new_slots / CHUNK).map(|_| Chunk::empty()).collect();
        let new_mask = (new_slots - 1) as u32;
        for old in self.chunks.iter() {
            for (&tag, slot) in old.tags.iter().zip(old.slots.iter()) {
                if tag == 0 {
                    continue;
                }
                let idx = (tag & new_mask) as usize;
                let c = &mut chunks[idx >> CHUNK_BITS];
                let i = idx & (CHUNK - 1);
                debug_assert_eq!(c.tags[i], 0, "growth collision");
                c.tags[i] = tag;
                c.slots[i] = slot.clone();
            }
        }
        Self {
            mask: new_mask,
            chunks: chunks.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every occupied slot as `(spi, state)`, in slot order.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, &Slot<V>)> + '_ {
        self.chunks.iter().flat_map(|c| {
            c.tags
                .iter()
                .zip(c.slots.iter())
                .filter(|(&t, _)| t != 0)
                .map(|(&t, s)| (t, s))
        })
    }
}
