//! Results of an inbound lookup.

use std::fmt;

/// What an inbound SPI names, as seen by the datapath.
///
/// Distinguishing `Retired` from `Unknown` lets the caller treat a late packet for an SA that
/// was just rekeyed or deleted as expected noise, while a truly unknown SPI gets invalid-SPI
/// handling (RFC 4303 §3.4.2: no valid SA means discard, an auditable event; an IKEv2 peer
/// may be told with an INVALID_SPI notification, RFC 7296 §1.5).
pub enum Lookup<'a, V> {
    /// A live SA with exactly this SPI.
    Hit(&'a V),
    /// The SPI named an SA that was removed or rekeyed less than the grace period ago.
    Retired,
    /// No SA has, or recently had, this SPI (this includes SPIs reserved but not installed
    /// yet: without keys, no packet can be processed for them).
    Unknown,
}

impl<V> Lookup<'_, V> {
    /// The SA, if this is a hit.
    #[inline]
    pub fn hit(&self) -> Option<&V> {
        match self {
            Lookup::Hit(v) => Some(v),
            _ => None,
        }
    }

    /// `true` for [`Lookup::Hit`].
    #[inline]
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }
}

// Manual impls: deriving would demand `V: Clone`/`V: Copy`, but we only copy a reference.
impl<V> Clone for Lookup<'_, V> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for Lookup<'_, V> {}

impl<V: fmt::Debug> fmt::Debug for Lookup<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Hit(v) => f.debug_tuple("Hit").field(v).finish(),
            Lookup::Retired => f.write_str("Retired"),
            Lookup::Unknown => f.write_str("Unknown"),
        }
    }
}

impl<V: PartialEq> PartialEq for Lookup<'_, V> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Lookup::Hit(a), Lookup::Hit(b)) => a == b,
            (Lookup::Retired, Lookup::Retired) | (Lookup::Unknown, Lookup::Unknown) => true,
            _ => false,
        }
    }
}
