//! The direct-index slot table holding SPIs that this SAD allocated.
//!
//! Slot index = `spi & mask`; the slot's tag holds the full SPI, so a lookup is one masked
//! index plus one 4-byte compare. The table is split into fixed-size chunks, each behind its
//! own `Arc`, so a copy-on-write update clones the chunk array (pointers only) and the one
//! chunk it touches instead of the whole table.
//!
//! Tables of at least [`FP_MIN_SLOTS`] slots also keep a flat array of 8-bit
//! fingerprints, one per slot, shared by every snapshot of the same table size and updated in
//! place (see [`Fingerprints`]): a miss-tuned lookup reads 1 byte out of that dense array
//! (2 MiB at 1Mi SAs, well within the data TLB's reach and a small share of the L3 on this
//! machine) and touches the entries (16 MiB there with the node's 8-byte entries) only
//! for SPIs whose fingerprint matches, about 1 in 256 unknown SPIs. A hit-tuned lookup
//! reads the entry directly.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// log2 of the slots per chunk.
pub(crate) const CHUNK_BITS: u32 = 10;
/// Slots per chunk: 8 KiB of 8-byte entries (SPI and the node's SA index), 128 bytes of
/// retired bits.
pub(crate) const CHUNK: usize = 1 << CHUNK_BITS;

/// State of one slot, owned (what writers put in and take out).
pub(crate) enum Slot<V> {
    /// Free; its tag is 0.
    Empty,
    /// SPI handed out (e.g. in an IKE SA payload) but no keys installed yet.
    Reserved,
    /// A live SA.
    Live(V),
    /// Removed or rekeyed less than the grace period ago; the value is already dropped. The
    /// deadline is kept by the writer (see `txn`), so a slot stays one pointer wide.
    Retired,
}

/// State of one slot, borrowed.
pub(crate) enum SlotRef<'a, V> {
    Empty,
    Reserved,
    Live(&'a V),
    Retired,
}

/// One slot: the full SPI and the value side by side, so a hit reads one cache line and
/// the tag compare that proves it is free. The value is stored inline: with a 4-byte value
/// that has a niche (`NonZeroU32`, an index into the caller's SA array, as the node uses)
/// an entry is 8 bytes, the size of the bare index's word; with an `Arc` it is 16.
#[repr(C)]
pub(crate) struct Entry<V> {
    /// Full SPI of an occupied slot, 0 when empty (0 is never a valid SPI, RFC 4303 §2.1).
    tag: u32,
    /// The SA of a live slot.
    value: Option<V>,
}

impl<V> Entry<V> {
    /// The full SPI (0 when empty).
    #[inline(always)]
    pub(crate) fn tag(&self) -> u32 {
        self.tag
    }

    /// The SA, when live.
    #[inline(always)]
    pub(crate) fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }
}

impl<V: Clone> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            tag: self.tag,
            value: self.value.clone(),
        }
    }
}

/// `CHUNK` consecutive slots: an array of [`Entry`]s and one retired bit per slot.
///
/// A slot's state is encoded, not stored as an enum (which would add a tag word to every
/// entry):
///
/// | state    | tag | value  | retired bit |
/// |----------|-----|--------|-------------|
/// | Empty    | 0   | `None` | 0           |
/// | Reserved | SPI | `None` | 0           |
/// | Live     | SPI | `Some` | 0           |
/// | Retired  | SPI | `None` | 1           |
///
/// Layout history (measured, `docs/sad.md`): tags and pointers used to be two parallel arrays
/// so that a miss read only a dense 4-byte tag; a hit then read two random lines (tag, then
/// pointer) against the bare index's one. Since large tables answer misses from the
/// fingerprint array ([`Fingerprints`]) and never touch the chunks for them, the chunk is
/// laid out for hits: one line holds both. Small tables (at most 32Ki slots, 256 KiB of
/// 8-byte entries) stay cache-resident either way. Until round 9 the value was an `Arc<V>`
/// (16-byte entries, and for the node one more dependent read, of the `Arc`'s `u32`, per
/// hit); values are now stored inline.
#[repr(C, align(64))]
pub(crate) struct Chunk<V> {
    entries: [Entry<V>; CHUNK],
    /// One bit per slot: retired (only read when the value is `None`).
    retired: [u64; CHUNK / 64],
}

impl<V> Chunk<V> {
    pub(crate) fn empty() -> Self {
        Self {
            entries: std::array::from_fn(|_| Entry {
                tag: 0,
                value: None,
            }),
            retired: [0; CHUNK / 64],
        }
    }

    /// The tag of slot `i`.
    #[inline(always)]
    pub(crate) fn tag(&self, i: usize) -> u32 {
        self.entries[i].tag
    }

    /// The value of slot `i`, when live.
    #[inline(always)]
    pub(crate) fn value(&self, i: usize) -> Option<&V> {
        self.entries[i].value.as_ref()
    }

    /// Slot `i` as a whole (one bounds check for the tag and the value).
    #[inline(always)]
    pub(crate) fn entry(&self, i: usize) -> &Entry<V> {
        &self.entries[i]
    }

    #[inline(always)]
    pub(crate) fn is_retired(&self, i: usize) -> bool {
        self.retired[i / 64] & (1 << (i % 64)) != 0
    }

    /// The state of slot `i`.
    #[inline]
    pub(crate) fn state(&self, i: usize) -> SlotRef<'_, V> {
        match self.value(i) {
            Some(v) => SlotRef::Live(v),
            None if self.tag(i) == 0 => SlotRef::Empty,
            None if self.is_retired(i) => SlotRef::Retired,
            None => SlotRef::Reserved,
        }
    }

    /// Set slot `i` to `tag` and `slot`, returning the previous state.
    fn replace(&mut self, i: usize, tag: u32, slot: Slot<V>) -> Slot<V> {
        debug_assert_eq!(tag == 0, matches!(slot, Slot::Empty));
        let was_retired = self.is_retired(i);
        let bit = 1 << (i % 64);
        self.retired[i / 64] &= !bit;
        let e = &mut self.entries[i];
        let old = match (e.value.take(), e.tag) {
            (Some(v), _) => Slot::Live(v),
            (None, 0) => Slot::Empty,
            (None, _) if was_retired => Slot::Retired,
            (None, _) => Slot::Reserved,
        };
        e.tag = tag;
        match slot {
            Slot::Live(v) => e.value = Some(v),
            Slot::Retired => self.retired[i / 64] |= bit,
            Slot::Empty | Slot::Reserved => {}
        }
        old
    }
}

impl<V: Clone> Clone for Chunk<V> {
    /// Clones every live value: cheap for the small `Copy` values the datapath stores (an
    /// index), a reference count for an `Arc`.
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            retired: self.retired,
        }
    }
}

/// Smallest table that keeps fingerprints. Below it the whole table is at most 1 MiB of
/// entries and stays cached, so a lookup compares the entry's tag in place; from 2^16 slots
/// up the slot index holds at least the low 16 bits of an SPI and the fingerprint folds the
/// rest.
pub(crate) const FP_MIN_SLOTS: usize = 1 << 16;

/// The per-slot fingerprints of one table size, shared by every snapshot of that size.
///
/// `fp[idx]` is `fingerprint(spi)` of the last SPI reserved in slot `idx` (0 if none was since
/// the array was built). It is the only part of the SAD that changes in place, which keeps
/// copy-on-write cheap (no 2 MiB copy per change) and is sound because of two rules:
///
/// 1. Only `reserve` writes it (`SlotTable::replace` with a new SPI in an empty slot); purge
///    and every other change leave it alone. A stale fingerprint on a freed slot costs a
///    lookup one extra read, never a wrong answer (the snapshot's slot is empty there).
/// 2. A slot freed by purge is reserved again only once no snapshot older than that purge is
///    alive (the writer's quarantine, `txn::Quarantine`). So when `fp[idx]` changes, every
///    live snapshot sharing this array has slot `idx` empty.
///
/// Invariant, from 1 and 2: for every live snapshot `S` sharing the array and every slot
/// `idx` that `S` holds non-empty with SPI `T`, `fp[idx] == fingerprint(T)` at every instant.
/// So a lookup of `spi` that finds `fp[idx] != fingerprint(spi)` knows that `S`'s slot does
/// not hold `spi` and may skip the slot: the fingerprint never hides an SA. A match proves
/// nothing by itself (the slot may be empty, or a fingerprint may be from a transaction not
/// yet published, or one that panicked): the lookup then reads the slot's entry, and its full
/// tag decides. A random unknown SPI matches with probability 1/256 (8 bits; 16-bit
/// fingerprints were 1/2048 at 2Mi slots, but twice the array: measured in `docs/sad.md`,
/// round 5, the node's drop path was faster with the smaller array), and then costs one
/// read of the entry. Growth
/// builds a new array for the new table and never writes the old one again, so snapshots
/// from before a growth keep a consistent pair.
///
/// Relaxed ordering suffices: a fingerprint is written before the snapshot that holds its
/// slot is published (`ArcSwap::swap`, release), and a reader that loads that snapshot
/// (acquire) sees the write; a reader that does not see it has a snapshot with the slot empty.
pub(crate) type Fingerprints = Arc<[AtomicU8]>;

/// The slot table: `mask + 1` slots (a power of two, at least `CHUNK`) in `chunks`.
pub(crate) struct SlotTable<V> {
    pub(crate) mask: u32,
    /// `true` when the table has at least [`FP_MIN_SLOTS`] slots and `fps` is in use.
    pub(crate) fingerprinted: bool,
    /// Random key xored into fingerprints, so a sender cannot tell which SPIs match the 0
    /// of never-used slots (those would cost an extra read each; never a wrong answer).
    pub(crate) fp_key: u8,
    /// One fingerprint per slot when `fingerprinted`, empty otherwise (small tables compare the
    /// chunk's full tag, already cache-resident there).
    pub(crate) fps: Fingerprints,
    pub(crate) chunks: Box<[Arc<Chunk<V>>]>,
}

impl<V> Clone for SlotTable<V> {
    fn clone(&self) -> Self {
        Self {
            mask: self.mask,
            fingerprinted: self.fingerprinted,
            fp_key: self.fp_key,
            fps: Arc::clone(&self.fps),
            chunks: self.chunks.clone(),
        }
    }
}

impl<V> SlotTable<V> {
    /// An empty table of `slots` slots (`slots` is a power of two, at least `CHUNK`).
    pub(crate) fn with_slots(slots: usize, fp_key: u8) -> Self {
        debug_assert!(slots.is_power_of_two() && slots >= CHUNK);
        // One empty chunk shared by every position: `Arc::make_mut` gives a position its
        // own copy on its first write, so an empty table costs pointers, not chunks.
        let empty = Arc::new(Chunk::empty());
        let chunks = (0..slots / CHUNK).map(|_| Arc::clone(&empty)).collect();
        let fingerprinted = slots >= FP_MIN_SLOTS;
        let fps: Fingerprints = if fingerprinted {
            (0..slots).map(|_| AtomicU8::new(0)).collect()
        } else {
            Arc::new([])
        };
        Self {
            mask: (slots - 1) as u32,
            fingerprinted,
            fp_key,
            fps,
            chunks,
        }
    }

    /// The fingerprint of an SPI: its upper 16 bits folded into 8, keyed. Those bits are
    /// not (all) index bits up to 16Mi slots, so two SPIs of one slot differ there.
    #[inline(always)]
    pub(crate) fn fingerprint(&self, spi: u32) -> u8 {
        ((spi >> 16) ^ (spi >> 24)) as u8 ^ self.fp_key
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn slots(&self) -> usize {
        self.mask as usize + 1
    }

    /// The slot index an SPI maps to.
    #[inline(always)]
    pub(crate) fn index(&self, spi: u32) -> usize {
        (spi & self.mask) as usize
    }

    /// Chunk and in-chunk index of the slot an SPI maps to.
    #[inline(always)]
    pub(crate) fn locate(&self, spi: u32) -> (&Chunk<V>, usize) {
        let idx = self.index(spi);
        (&self.chunks[idx >> CHUNK_BITS], idx & (CHUNK - 1))
    }

    /// The entry of the slot `spi` maps to (its tag is not necessarily `spi`).
    #[inline(always)]
    pub(crate) fn entry(&self, spi: u32) -> &Entry<V> {
        let (c, i) = self.locate(spi);
        &c.entries[i]
    }

    /// The tag of slot `idx`.
    #[inline]
    pub(crate) fn tag_at(&self, idx: usize) -> u32 {
        self.chunks[idx >> CHUNK_BITS].tag(idx & (CHUNK - 1))
    }

    /// The state of `spi`'s slot if its tag is exactly `spi`.
    #[inline]
    pub(crate) fn get(&self, spi: u32) -> Option<SlotRef<'_, V>> {
        let (c, i) = self.locate(spi);
        (c.tag(i) == spi && spi != 0).then(|| c.state(i))
    }

    /// Every occupied slot as `(spi, state)`, in slot order.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, SlotRef<'_, V>)> + '_ {
        self.chunks.iter().flat_map(|c| {
            (0..CHUNK)
                .filter(|&i| c.tag(i) != 0)
                .map(|i| (c.tag(i), c.state(i)))
        })
    }
}

/// The writer's side: changing a slot may copy its chunk, and growth copies every value.
impl<V: Clone> SlotTable<V> {
    /// Set slot `idx`, returning its previous state; clones the chunk first if a published
    /// snapshot shares it.
    ///
    /// Writing an SPI into an empty slot (a reservation) also sets the slot's fingerprint;
    /// the caller guarantees the slot is empty in every live snapshot sharing the array (rule
    /// 2 of [`Fingerprints`]). Nothing else touches fingerprints.
    pub(crate) fn replace(&mut self, idx: usize, tag: u32, slot: Slot<V>) -> Slot<V> {
        let fp = self.fingerprint(tag);
        let chunk = Arc::make_mut(&mut self.chunks[idx >> CHUNK_BITS]);
        let i = idx & (CHUNK - 1);
        if self.fingerprinted && tag != 0 && chunk.tag(i) == 0 {
            self.fps[idx].store(fp, Ordering::Relaxed);
        }
        chunk.replace(i, tag, slot)
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
        // A fresh array, private until the grown table is published: no reader sees it filling.
        let fingerprinted = new_slots >= FP_MIN_SLOTS;
        let fps: Fingerprints = if fingerprinted {
            (0..new_slots).map(|_| AtomicU8::new(0)).collect()
        } else {
            Arc::new([])
        };
        for (tag, state) in self.occupied() {
            let idx = (tag & new_mask) as usize;
            let c = &mut chunks[idx >> CHUNK_BITS];
            let i = idx & (CHUNK - 1);
            debug_assert_eq!(c.tag(i), 0, "growth collision");
            let slot = match state {
                SlotRef::Live(v) => Slot::Live(v.clone()),
                SlotRef::Retired => Slot::Retired,
                SlotRef::Reserved | SlotRef::Empty => Slot::Reserved,
            };
            c.replace(i, tag, slot);
            if fingerprinted {
                fps[idx].store(self.fingerprint(tag), Ordering::Relaxed);
            }
        }
        Self {
            mask: new_mask,
            fingerprinted,
            fp_key: self.fp_key,
            fps,
            chunks: chunks.into_iter().map(Arc::new).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;
    use std::num::NonZeroU32;

    /// The layout the datapath's numbers depend on: a 4-byte value with a niche makes an
    /// 8-byte entry (SPI and value on one word, like the bare index's), a pointer 16.
    #[test]
    fn entry_sizes() {
        assert_eq!(size_of::<Entry<NonZeroU32>>(), 8);
        assert_eq!(size_of::<Entry<Arc<u64>>>(), 16);
        assert_eq!(size_of::<Entry<u32>>(), 12);
    }
}
