//! What `benches/sad.rs` and `examples/icount.rs` (#7's SAD-hit floors) both use: the
//! node-shaped answer and the out-of-line non-hit paths, so both measure the same code.
//! Included by path (`#[path]`): benches and examples share no library.

use std::hint::black_box;
use std::num::NonZeroU32;

use esplab_sad::Lookup;

/// A caller's own 8-byte form of an answer (the node's has this shape: its SA index by
/// value), which `lookup_batch_map` writes directly.
// The hit's value is only read through `black_box`.
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub enum Found {
    Hit(NonZeroU32),
    Retired,
    Unknown,
}

impl<V: Copy> From<Lookup<'_, V>> for Found
where
    NonZeroU32: From<V>,
{
    #[inline(always)]
    fn from(l: Lookup<'_, V>) -> Self {
        match l {
            Lookup::Hit(&v) => Found::Hit(NonZeroU32::from(v)),
            Lookup::Retired => Found::Retired,
            Lookup::Unknown => Found::Unknown,
        }
    }
}

/// `flat_found`'s answer for a non-hit: out of line, where a SAD would read the retired bit
/// and the foreign map.
#[cold]
#[inline(never)]
pub fn not_hit(spi: u32) -> Found {
    black_box(spi);
    Found::Unknown
}

/// `word_min`'s answer for an SPI its slot does not hold: out of line.
#[cold]
#[inline(never)]
pub fn miss_word(spi: u32) -> u64 {
    black_box(spi);
    0
}
