//! Invalid-SPI recovery policy: configuration (behaviour comes with the recovery issue).
//!
//! The vendor behaviour being reproduced (docs/recovery.md, `shared/seed/NOTES.md`):
//! 1. unknown SPI from a peer we hold an IKE SA with → INFORMATIONAL Delete(ESP,[spi]) and/or
//!    N(INVALID_SPI) over that IKE SA (always, whatever the recovery flag);
//! 2. no IKE SA, the sender is a statically configured peer, recovery on → new IKE SA with
//!    INITIAL_CONTACT, then the Delete over it;
//! 3. the sender is not a static peer → impossible; a rate-limited event says why.

use std::collections::BTreeMap;
use std::time::Duration;

/// What to send over an existing IKE SA for an unknown SPI (RFC 7296 §1.5, §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalidSpi {
    /// INFORMATIONAL with Delete(ESP, [spi]) — strongSwan drops its stale SA on exactly this.
    #[default]
    Delete,
    /// INFORMATIONAL with N(INVALID_SPI, spi).
    Notify,
    /// Both payloads in one INFORMATIONAL.
    Both,
    /// Nothing (count and log only).
    None,
}

/// What to do when liveness (DPD) declares a peer dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Remove the IKE SA and its CHILD SAs.
    #[default]
    Clear,
    /// Remove them and initiate again (static peers only).
    Restart,
}

/// Recovery settings of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecovery {
    /// Rule 1: what to send over an existing IKE SA.
    pub on_invalid_spi: OnInvalidSpi,
    /// Rule 2: build an IKE SA to a static peer that has none (default off, as vendors:
    /// an attacker could make us initiate).
    pub invalid_spi_recovery: bool,
    /// Liveness probe after this long without anything (IKE or ESP) from the peer.
    pub dpd_delay: Option<Duration>,
    /// What to do with a dead peer.
    pub dpd_action: DpdAction,
}

impl Default for PeerRecovery {
    fn default() -> Self {
        Self {
            on_invalid_spi: OnInvalidSpi::Delete,
            invalid_spi_recovery: false,
            dpd_delay: None,
            dpd_action: DpdAction::Clear,
        }
    }
}

/// Node-wide recovery settings and per-peer overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Settings of peers not listed in `peers`.
    pub default: PeerRecovery,
    /// Per-peer settings by peer name.
    pub peers: BTreeMap<String, PeerRecovery>,
    /// At most one action (Delete/Notify, or IKE initiation) per SPI / per peer per this long.
    pub hold_down: Duration,
    /// Ceiling of the exponential backoff after failed recovery initiations.
    pub max_backoff: Duration,
    /// Global budget: recovery actions per minute across all peers.
    pub global_per_minute: u32,
    /// Largest number of SPIs / sources tracked at once (bounded tables).
    pub max_tracked: usize,
    /// Rule 3 option: send an unprotected INVALID_SPI hint to non-static sources (off).
    pub unprotected_hint: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            default: PeerRecovery::default(),
            peers: BTreeMap::new(),
            hold_down: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            global_per_minute: 60,
            max_tracked: 4096,
            unprotected_hint: false,
        }
    }
}

impl RecoveryConfig {
    /// The settings for the peer named `name`.
    pub fn for_peer(&self, name: &str) -> &PeerRecovery {
        self.peers.get(name).unwrap_or(&self.default)
    }
}
