//! Construction-time settings of a [`crate::Sad`].

use std::time::Duration;

/// Settings for [`crate::Sad::new`]. Start from `SadConfig::default()` and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SadConfig {
    /// Number of allocated inbound SPIs to size the slot table for up front. The table grows
    /// on demand (doubling), so this only avoids early growth copies.
    pub initial_capacity: usize,
    /// Upper bound on allocated inbound SPIs (live + reserved + retired). Capped at
    /// [`crate::MAX_CAPACITY`] so that at least 8 bits of every SPI stay random.
    pub max_capacity: usize,
    /// How long a removed or rekeyed SPI keeps being classified [`crate::Lookup::Retired`]
    /// (and is withheld from reallocation) before [`crate::Sad::purge`] may free it.
    pub grace_period: Duration,
    /// Seed for the SPI allocator. `None` seeds from the OS entropy source; `Some` makes SPI
    /// sequences reproducible (tests, simulations). Never use a fixed seed in production:
    /// predictable SPIs let an off-path attacker aim packets at live SAs.
    pub rng_seed: Option<u64>,
}

impl Default for SadConfig {
    fn default() -> Self {
        Self {
            initial_capacity: 1024,
            max_capacity: crate::MAX_CAPACITY,
            grace_period: Duration::from_secs(5),
            rng_seed: None,
        }
    }
}
