//! Anti-replay window (RFC 4303 §3.4.3 and Appendix A), 32-bit and extended sequence numbers.
//!
//! The bitmap is a ring of 64-bit words indexed by sequence number (the RFC 6479 layout), so
//! advancing the window clears whole words instead of shifting bits: O(1) per packet for
//! in-order traffic whatever the window size. One spare word lets the right edge move inside a
//! word without clearing bits still inside the window.
//!
//! The window is checked *before* the ICV is verified (cheap rejection of duplicates) and
//! committed only *after* it verified (RFC 4303 §3.4.3: "the receive window is updated only if
//! the integrity verification succeeds"), so a forged packet with a huge sequence number
//! cannot move the window.

use crate::error::{EspError, KeyError};

/// Default window, as RFC 4303 §3.4.3 recommends ("a minimum window size of 32 packets MUST be
/// supported ... a window size of 64 is preferred and SHOULD be employed as the default").
pub const DEFAULT_WINDOW: u32 = 64;
/// Largest supported window.
pub const MAX_WINDOW: u32 = 65536;

const WORD_BITS: u64 = 64;

/// Receiver-side anti-replay state of one inbound SA.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Window size in packets (0 disables anti-replay, RFC 4303 §3.4.3 allows it for manual
    /// keying; the ESN high half is still inferred from the right edge).
    size: u32,
    esn: bool,
    /// Highest authenticated sequence number (full 64 bits). 0 = nothing received.
    top: u64,
    /// Nothing received yet: with ESN the high half of the first packet is `initial_high`
    /// (manual keying and tools start an SA mid-stream this way).
    fresh: Option<u32>,
    /// Ring of words; bit (seq mod (words*64)) marks seq as received.
    bits: Box<[u64]>,
}

impl ReplayWindow {
    /// A fresh window: nothing received, right edge 0.
    pub fn new(size: u32, esn: bool) -> Result<Self, KeyError> {
        if size > MAX_WINDOW {
            return Err(KeyError::ReplayWindow {
                max: MAX_WINDOW,
                got: size,
            });
        }
        // One spare word so the word holding the right edge never overlaps the left edge.
        let words = (size as usize).div_ceil(WORD_BITS as usize) + 1;
        Ok(Self {
            size,
            esn,
            top: 0,
            fresh: Some(0),
            bits: vec![0; words].into_boxed_slice(),
        })
    }

    /// A fresh window whose first packet is taken to have ESN high half `high`
    /// (the `seq-high` SA option: decrypting a capture taken mid-stream).
    pub fn with_initial_high(size: u32, esn: bool, high: u32) -> Result<Self, KeyError> {
        let mut w = Self::new(size, esn)?;
        w.fresh = Some(high);
        Ok(w)
    }

    /// A window whose right edge is `top`, with an empty bitmap (`top` itself not yet seen).
    /// Tests and restored state use it (e.g. the ESN wrap vectors start at 0x0_FFFFFFF0).
    pub fn with_right_edge(size: u32, esn: bool, top: u64) -> Result<Self, KeyError> {
        let mut w = Self::new(size, esn)?;
        w.top = top;
        w.fresh = None;
        Ok(w)
    }

    /// Window size in packets.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether extended sequence numbers are in use.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The right edge: highest sequence number accepted so far (full 64 bits).
    pub fn right_edge(&self) -> u64 {
        self.top
    }

    /// Infers the full sequence number of a packet carrying `seq_lo` on the wire.
    ///
    /// Without ESN the wire value is the whole number. With ESN this is RFC 4303 Appendix
    /// A2.2: the high half is the right edge's, or one more (the packet is past a wrap), or one
    /// less (the window straddles a wrap and the packet is left of it). `None` when the packet
    /// would belong before sequence number 0, which cannot be valid.
    pub fn infer(&self, seq_lo: u32) -> Option<u64> {
        if !self.esn {
            return Some(seq_lo as u64);
        }
        if let Some(high) = self.fresh {
            return Some(((high as u64) << 32) | seq_lo as u64);
        }
        let w = self.size.max(1) as u64;
        let tl = self.top & 0xffff_ffff;
        let th = self.top >> 32;
        let seql = seq_lo as u64;
        let seqh = if tl >= w - 1 {
            // Case A: the window lies within one subspace.
            if seql >= tl - (w - 1) {
                th
            } else {
                th.checked_add(1)?
            }
        } else {
            // Case B: the window spans the boundary between subspaces th-1 and th.
            let left = (tl + (1 << 32) - (w - 1)) & 0xffff_ffff;
            if seql >= left {
                th.checked_sub(1)?
            } else {
                th
            }
        };
        Some((seqh << 32) | seql)
    }

    /// Checks a full sequence number against the window without changing it.
    pub fn check(&self, seq: u64) -> Result<(), EspError> {
        // RFC 4303 §3.3.3: the first packet sent on an SA has sequence number 1; 0 is never valid.
        if seq == 0 {
            return Err(EspError::ReplayTooOld { seq });
        }
        if seq > self.top || self.size == 0 {
            return Ok(());
        }
        if self.top - seq >= self.size as u64 {
            return Err(EspError::ReplayTooOld { seq });
        }
        if self.bit(seq) {
            return Err(EspError::ReplayDuplicate { seq });
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after the ICV verified and [`check`](Self::check)
    /// passed. Returns true if the right edge moved.
    pub fn commit(&mut self, seq: u64) -> bool {
        self.fresh = None;
        if self.size == 0 {
            let advanced = seq > self.top;
            self.top = self.top.max(seq);
            return advanced;
        }
        let ring_bits = self.bits.len() as u64 * WORD_BITS;
        let mut advanced = false;
        if seq > self.top {
            let old_word = self.top / WORD_BITS;
            let new_word = seq / WORD_BITS;
            // Clear the words the right edge moves over: they last held numbers a whole ring ago.
            let to_clear = (new_word - old_word).min(self.bits.len() as u64);
            for i in 1..=to_clear {
                let idx = ((old_word + i) % self.bits.len() as u64) as usize;
                self.bits[idx] = 0;
            }
            self.top = seq;
            advanced = true;
        }
        let bit = seq % ring_bits;
        self.bits[(bit / WORD_BITS) as usize] |= 1 << (bit % WORD_BITS);
        advanced
    }

    fn bit(&self, seq: u64) -> bool {
        let ring_bits = self.bits.len() as u64 * WORD_BITS;
        let bit = seq % ring_bits;
        self.bits[(bit / WORD_BITS) as usize] & (1 << (bit % WORD_BITS)) != 0
    }

    /// Forgets everything received: right edge 0, empty bitmap (no allocation; benchmarks
    /// replay the same packet through it).
    pub fn reset(&mut self) {
        self.top = 0;
        self.fresh = Some(0);
        self.bits.iter_mut().for_each(|w| *w = 0);
    }

    /// The lowest sequence number still inside the window (for `show sa`).
    pub fn left_edge(&self) -> u64 {
        (self.top + 1).saturating_sub(self.size as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn accept(w: &mut ReplayWindow, seq: u64) -> Result<(), EspError> {
        w.check(seq)?;
        w.commit(seq);
        Ok(())
    }

    #[test]
    fn in_order_then_duplicates_and_too_old() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        for s in 1..=70 {
            accept(&mut w, s).unwrap();
        }
        assert_eq!(w.left_edge(), 7);
        assert_eq!(
            w.check(6).unwrap_err().reason(),
            crate::DropReason::ReplayTooOld
        );
        assert_eq!(
            w.check(7).unwrap_err().reason(),
            crate::DropReason::ReplayDuplicate
        );
        assert!(w.check(71).is_ok());
        assert!(w.check(0).is_err());
    }

    #[test]
    fn large_jump_clears_ring() {
        let mut w = ReplayWindow::new(128, false).unwrap();
        accept(&mut w, 5).unwrap();
        accept(&mut w, 100_000).unwrap();
        // 5 + ring size may alias bit positions: it must not be seen as a duplicate.
        for s in 100_000 - 127..100_000 {
            assert!(w.check(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn esn_inference_cases() {
        // Case A: T = 0x1_00000100, W = 64.
        let w = ReplayWindow::with_right_edge(64, true, 0x1_0000_0100).unwrap();
        assert_eq!(w.infer(0x101), Some(0x1_0000_0101));
        assert_eq!(w.infer(0x0c1), Some(0x1_0000_00c1));
        assert_eq!(w.infer(0x10), Some(0x2_0000_0010));
        // Case B: T = 0x1_00000005.
        let w = ReplayWindow::with_right_edge(64, true, 0x1_0000_0005).unwrap();
        assert_eq!(w.infer(0xffff_fff0), Some(0x0_ffff_fff0));
        assert_eq!(w.infer(6), Some(0x1_0000_0006));
        // Case B at the very start of a seeded window: nothing before 0.
        let w = ReplayWindow::with_right_edge(64, true, 3).unwrap();
        assert_eq!(w.infer(0xffff_fff0), None);
        assert_eq!(w.infer(1), Some(1));
        // A fresh window takes the configured high half for its first packet.
        let w = ReplayWindow::with_initial_high(64, true, 0xffff_fffe).unwrap();
        assert_eq!(w.infer(0xffff_ffff), Some(0xffff_fffe_ffff_ffff));
    }

    #[test]
    fn window_bounds() {
        assert!(ReplayWindow::new(4096, true).is_ok());
        assert!(ReplayWindow::new(MAX_WINDOW + 1, true).is_err());
    }

    /// The simplest possible model: a set of accepted numbers and the highest one.
    fn model_accepts(seen: &BTreeSet<u64>, top: u64, size: u64, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > top {
            return true;
        }
        top - seq < size && !seen.contains(&seq)
    }

    proptest! {
        #[test]
        fn matches_reference_model(
            size in prop_oneof![Just(32u32), Just(64), Just(100), Just(1024), Just(4096)],
            base in 0u64..(1 << 40),
            offsets in proptest::collection::vec(0u64..6000, 1..400),
        ) {
            let mut w = ReplayWindow::new(size, true).unwrap();
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for off in offsets {
                let seq = base + off;
                let expect = model_accepts(&seen, top, size as u64, seq);
                let got = w.check(seq).is_ok();
                prop_assert_eq!(got, expect, "seq {} top {}", seq, top);
                if got {
                    w.commit(seq);
                    seen.insert(seq);
                    top = top.max(seq);
                }
                prop_assert_eq!(w.right_edge(), top);
            }
        }
    }
}
