//! Configuration of an [`crate::Endpoint`]: the node-wide settings and one
//! [`IkePeerConfig`] per peer ("connection" in strongSwan terms).

use crate::codes::ProtocolId;
use crate::crypto::SecretBytes;
use crate::payload::Identity;
use crate::proposal::ProposalSpec;
use crate::transform::DhGroup;
use crate::ts::TrafficSelector;
use std::net::SocketAddr;
use std::time::Duration;

/// Node-wide settings and the peers.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The peers. Names must be unique.
    pub peers: Vec<IkePeerConfig>,
    /// Retransmission of requests (RFC 7296 §2.1).
    pub retransmit: Retransmit,
    /// Half-open IKE SAs (responder side, IKE_SA_INIT answered, IKE_AUTH not yet
    /// received) at or above which IKE_SA_INIT requests must carry a valid COOKIE (§2.6).
    pub half_open_limit: usize,
    /// A half-open responder IKE SA is dropped after this long without IKE_AUTH.
    pub half_open_timeout: Duration,
    /// The COOKIE secret is replaced after this long; the previous one stays valid for
    /// one more period so cookies in flight are still accepted (§2.6).
    pub cookie_secret_lifetime: Duration,
    /// Seed of the endpoint's RNG (IKE SPIs, nonces, X25519 secrets, IVs, jitter):
    /// `Some` makes a run reproducible (the lab simulator), `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// What [`crate::Endpoint::notify_invalid_spi`] sends.
    pub invalid_spi_action: InvalidSpiAction,
    /// The NAT-T port (RFC 3948, RFC 7296 §2.23). An initiator that detects a NAT while
    /// talking to port 500 moves the IKE SA to this port on both sides ("port floating").
    pub nat_t_port: u16,
    /// After a failed rekey (TEMPORARY_FAILURE, NO_PROPOSAL_CHOSEN, ...) try again this
    /// much later (or at the hard expiry, whichever is first).
    pub rekey_retry: Duration,
    /// How many times an initiator restarts IKE_SA_INIT after COOKIE or
    /// INVALID_KE_PAYLOAD answers before giving up.
    pub max_init_restarts: u8,
    /// A responder whose IKE SA was rekeyed waits this long for the peer's Delete of the
    /// old IKE SA before deleting it itself.
    pub rekeyed_ike_grace: Duration,
    /// Debugging only: hand every IKE SA's SK_e*/SK_a* to the caller as
    /// [`crate::Output::IkeKeys`] (for Wireshark's `ikev2_decryption_table`), the first
    /// one once IKE_SA_INIT is done and each one made by an IKE SA rekey. Off by default:
    /// the keys decrypt every IKE message of the SA.
    pub export_ike_keys: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            peers: Vec::new(),
            retransmit: Retransmit::default(),
            half_open_limit: 10,
            half_open_timeout: Duration::from_secs(30),
            cookie_secret_lifetime: Duration::from_secs(120),
            rng_seed: None,
            invalid_spi_action: InvalidSpiAction::Both,
            nat_t_port: 4500,
            rekey_retry: Duration::from_secs(30),
            max_init_restarts: 5,
            rekeyed_ike_grace: Duration::from_secs(30),
            export_ike_keys: false,
        }
    }
}

/// Retransmission schedule of requests (RFC 7296 §2.1 leaves the numbers to the
/// implementation; the defaults are strongSwan's): the n-th transmission (n = 0 for the
/// original) waits `timeout · base^n` (capped at `limit`) for the response; after `tries`
/// retransmissions and the last wait the peer is declared dead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retransmit {
    /// Number of retransmissions.
    pub tries: u32,
    /// Wait after the original transmission.
    pub timeout: Duration,
    /// Growth factor of the wait.
    pub base: f64,
    /// Upper bound of a single wait.
    pub limit: Option<Duration>,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            tries: 5,
            timeout: Duration::from_secs(4),
            base: 1.8,
            limit: None,
        }
    }
}

impl Retransmit {
    /// The wait after transmission `n` (0 = the original message).
    pub fn wait(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.timeout.as_secs_f64() * self.base.max(1.0).powi(exp);
        // Guard against absurd configurations: Duration::from_secs_f64 panics on overflow.
        let d = if secs.is_finite() && secs < 1e12 {
            Duration::from_secs_f64(secs)
        } else {
            Duration::from_secs(1_000_000_000_000)
        };
        match self.limit {
            Some(l) => d.min(l),
            None => d,
        }
    }

    /// From the original transmission to giving up: the sum of all waits.
    pub fn total(&self) -> Duration {
        (0..=self.tries).map(|n| self.wait(n)).sum()
    }
}

/// Lifetime of an SA: at `hard` it is deleted; it is rekeyed (soft expiry) at
/// `hard - margin - random(0..=jitter)`, so that the two peers rarely start the rekey at
/// the same moment (RFC 7296 §2.8: the side with the shorter lifetime rekeys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Hard lifetime.
    pub hard: Duration,
    /// Rekey this long before the hard lifetime.
    pub margin: Duration,
    /// Up to this much earlier still, chosen at random per SA.
    pub jitter: Duration,
}

impl Lifetime {
    /// A lifetime with rekey `margin` and `jitter`.
    pub const fn new(hard: Duration, margin: Duration, jitter: Duration) -> Self {
        Lifetime {
            hard,
            margin,
            jitter,
        }
    }

    /// strongSwan-like IKE SA default: rekey after 3h30 to 4h, delete at 4h.
    pub const fn ike_default() -> Self {
        Lifetime::new(
            Duration::from_secs(4 * 3600),
            Duration::from_secs(20 * 60),
            Duration::from_secs(10 * 60),
        )
    }

    /// strongSwan-like CHILD SA default: rekey after 54 to 60 minutes, delete at 70.
    pub const fn child_default() -> Self {
        Lifetime::new(
            Duration::from_secs(70 * 60),
            Duration::from_secs(10 * 60),
            Duration::from_secs(6 * 60),
        )
    }
}

/// Tunnel or transport mode of CHILD SAs (RFC 7296 §1.3.1: transport is asked for with
/// USE_TRANSPORT_MODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tunnel mode (the default).
    #[default]
    Tunnel,
    /// Transport mode.
    Transport,
}

/// What to do when the peer deletes our SAs or stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerAction {
    /// Nothing: the SAs are gone.
    #[default]
    None,
    /// Re-create them: a deleted CHILD SA with CREATE_CHILD_SA, a deleted or dead IKE SA
    /// with a new IKE_SA_INIT (only for peers with a `remote_addr`).
    Restart,
}

/// What [`crate::Endpoint::notify_invalid_spi`] puts in its INFORMATIONAL request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidSpiAction {
    /// Delete(ESP, [spi]) (RFC 7296 §1.4.1): the peer closes the SA pair whose
    /// outbound SPI it is.
    Delete,
    /// N(INVALID_SPI) with the SPI as data (RFC 7296 §1.5, §3.10.1).
    Notify,
    /// Both payloads.
    #[default]
    Both,
}

/// One peer.
#[derive(Debug, Clone)]
pub struct IkePeerConfig {
    /// Unique name (commands and events refer to the peer by it).
    pub name: String,
    /// Our address and port for this peer. Needed to initiate (and for NAT detection);
    /// a responder uses the address the request arrived on.
    pub local_addr: Option<SocketAddr>,
    /// The peer's address and IKE port. `None` = dynamic: requests are accepted from any
    /// address (when no peer with that address exists) and this side never initiates.
    pub remote_addr: Option<SocketAddr>,
    /// Our identity (IDi/IDr).
    pub local_id: Identity,
    /// The identity the peer must prove; `None` accepts any identity that knows the PSK.
    pub remote_id: Option<Identity>,
    /// The pre-shared key (RFC 7296 §2.15).
    pub psk: SecretBytes,
    /// IKE proposals in preference order.
    pub ike_proposals: Vec<ProposalSpec>,
    /// ESP proposals in preference order; a DH group means PFS in CREATE_CHILD_SA.
    pub esp_proposals: Vec<ProposalSpec>,
    /// Our traffic selectors (TSi when initiating); empty = our IKE address.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's traffic selectors; empty = its IKE address.
    pub remote_ts: Vec<TrafficSelector>,
    /// Tunnel or transport mode.
    pub mode: Mode,
    /// Initiate when the endpoint starts (at the first `handle_timeout`).
    pub start: bool,
    /// IKE SA lifetime; `None` = never rekey nor expire.
    pub ike_lifetime: Option<Lifetime>,
    /// CHILD SA lifetime; `None` = never rekey nor expire.
    pub child_lifetime: Option<Lifetime>,
    /// After a rekey (or a Delete exchange) the old inbound SA is kept this long for
    /// packets still in flight: `Output::RemoveChild::linger`.
    pub child_linger: Duration,
    /// Send INITIAL_CONTACT in IKE_AUTH when we hold no other IKE SA with this peer
    /// (RFC 7296 §2.4).
    pub initial_contact: bool,
    /// Liveness check (empty INFORMATIONAL, §1.4) after this long without a message from
    /// the peer.
    pub dpd_delay: Option<Duration>,
    /// What to do when the peer deletes a CHILD SA (that it did not replace by a rekey)
    /// or the IKE SA.
    pub on_peer_delete: PeerAction,
    /// What to do when the peer is declared dead (retransmissions exhausted).
    pub on_dead: PeerAction,
    /// This peer's retransmission schedule (§2.1); `None` = [`EndpointConfig::retransmit`].
    pub retransmit: Option<Retransmit>,
}

impl IkePeerConfig {
    /// A peer with the defaults: IKE `aes128gcm16-prfsha256-x25519`, ESP `aes128gcm16`,
    /// host-to-host selectors, tunnel mode, strongSwan-like lifetimes, 2 s linger,
    /// INITIAL_CONTACT on, no DPD, no restarts, not started automatically.
    pub fn new(name: &str, local_id: Identity, remote_id: Option<Identity>, psk: &[u8]) -> Self {
        IkePeerConfig {
            name: name.to_string(),
            local_addr: None,
            remote_addr: None,
            local_id,
            remote_id,
            psk: SecretBytes::from_slice(psk),
            ike_proposals: vec![ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519")
                .expect("built-in proposal parses")],
            esp_proposals: vec![
                ProposalSpec::parse_esp("aes128gcm16").expect("built-in proposal parses")
            ],
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            mode: Mode::Tunnel,
            start: false,
            ike_lifetime: Some(Lifetime::ike_default()),
            child_lifetime: Some(Lifetime::child_default()),
            child_linger: Duration::from_secs(2),
            initial_contact: true,
            dpd_delay: None,
            on_peer_delete: PeerAction::None,
            on_dead: PeerAction::None,
            retransmit: None,
        }
    }

    /// True for a responder-only peer that accepts any address.
    pub fn is_dynamic(&self) -> bool {
        self.remote_addr.is_none()
    }

    /// The DH group our IKE_SA_INIT KE payload uses: the first implemented group of the
    /// proposals, in order (unimplemented groups may be offered, never guessed).
    pub fn ike_ke_group(&self) -> Option<DhGroup> {
        first_supported_group(&self.ike_proposals)
    }

    /// The PFS group of CREATE_CHILD_SA requests, if the first ESP proposal has one.
    pub fn pfs_group(&self) -> Option<DhGroup> {
        self.esp_proposals
            .first()
            .and_then(|p| p.dh.iter().copied().find(|g| g.is_supported()))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &'static str| ConfigError::Invalid {
            peer: self.name.clone(),
            what,
        };
        if self.name.is_empty() {
            return Err(bad("empty name"));
        }
        if self.ike_proposals.is_empty() {
            return Err(bad("no IKE proposals"));
        }
        if self.esp_proposals.is_empty() {
            return Err(bad("no ESP proposals"));
        }
        if self
            .ike_proposals
            .iter()
            .any(|p| p.protocol_id != ProtocolId::IKE)
        {
            return Err(bad("an IKE proposal is not for protocol IKE"));
        }
        if self
            .esp_proposals
            .iter()
            .any(|p| p.protocol_id != ProtocolId::ESP)
        {
            return Err(bad("an ESP proposal is not for protocol ESP"));
        }
        if self.ike_ke_group().is_none() {
            return Err(bad(
                "no implemented Diffie-Hellman group in the IKE proposals",
            ));
        }
        if self.psk.is_empty() {
            return Err(bad("empty PSK"));
        }
        Ok(())
    }
}

pub(crate) fn first_supported_group(specs: &[ProposalSpec]) -> Option<DhGroup> {
    specs
        .iter()
        .flat_map(|p| p.dh.iter().copied())
        .find(|g| g.is_supported())
}

/// A configuration the endpoint cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two peers share a name.
    #[error("duplicate peer name '{0}'")]
    DuplicatePeer(String),
    /// A peer's settings are unusable.
    #[error("peer '{peer}': {what}")]
    Invalid {
        /// The peer.
        peer: String,
        /// What is wrong.
        what: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongswan_retransmit_schedule() {
        let r = Retransmit::default();
        let waits: Vec<f64> = (0..=5).map(|n| r.wait(n).as_secs_f64()).collect();
        let want = [4.0, 7.2, 12.96, 23.328, 41.9904, 75.58272];
        for (w, e) in waits.iter().zip(want) {
            assert!((w - e).abs() < 1e-6, "{w} vs {e}");
        }
        assert!((r.total().as_secs_f64() - want.iter().sum::<f64>()).abs() < 1e-6);
        let capped = Retransmit {
            limit: Some(Duration::from_secs(10)),
            ..r
        };
        assert_eq!(capped.wait(3), Duration::from_secs(10));
    }

    #[test]
    fn peer_defaults_validate() {
        let p = IkePeerConfig::new("moon", Identity::fqdn("sun"), None, b"secret");
        assert!(p.validate().is_ok());
        assert!(p.is_dynamic());
        assert_eq!(p.ike_ke_group(), Some(DhGroup::CURVE25519));
        assert_eq!(p.pfs_group(), None);
        let mut q = p.clone();
        q.esp_proposals.clear();
        assert!(q.validate().is_err());
    }
}
