//! Typed errors of the SAD's control-plane operations.

use thiserror::Error;

/// Why a SAD write was refused. Lookups never fail: they classify (see [`crate::Lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SadError {
    /// The SPI lies in 0..=255, which RFC 4303 §2.1 reserves (0 for local use, 1..=255 for
    /// IANA); such a value must not identify an SA on the wire.
    #[error("SPI {0:#010x} is reserved (RFC 4303 §2.1: 0..=255 never name an SA)")]
    ReservedSpi(u32),
    /// The SPI already names an inbound SA (live, reserved, or retired and still inside its
    /// grace period).
    #[error("SPI {0:#010x} is already in use")]
    SpiInUse(u32),
    /// `install` was called for an SPI that is not in the reserved state.
    #[error("SPI {0:#010x} is not reserved")]
    NotReserved(u32),
    /// No live inbound SA has this SPI.
    #[error("no live SA with SPI {0:#010x}")]
    NotFound(u32),
    /// The slot table is at its configured maximum and at its load limit.
    #[error("SAD is full ({capacity} allocated SPIs)")]
    Full {
        /// The maximum number of allocated (non-foreign) SPIs.
        capacity: usize,
    },
}
