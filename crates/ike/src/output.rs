//! What an [`crate::Endpoint`] hands back to its caller: datagrams to send, CHILD SAs to
//! install and remove, and typed events; plus the serializable status snapshot.

use crate::codes::{AuthMethod, ExchangeType, ProtocolId};
use crate::config::Mode;
use crate::crypto::{ikev2_decryption_table_line, IkeSaKeys, Role};
use crate::error::{CryptoError, ParseError};
use crate::notify::NotifyType;
use crate::payload::Identity;
use crate::proposal::ProposalSpec;
use crate::transform::{DhGroup, EspSuite, IkeSuite};
use crate::ts::{AddrRange, TrafficSelector};
use esplab_esp::SaParams;
use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::time::Duration;

/// Identifies one IKE SA of an endpoint for its whole life. A rekeyed IKE SA gets a new
/// id (its CHILD SAs move to it: [`IkeEvent::IkeRekeyed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IkeSaId(pub u64);

impl core::fmt::Display for IkeSaId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// NAT detection result of an IKE SA (RFC 7296 §2.23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NatInfo {
    /// The peer sent NAT detection payloads.
    pub detection: bool,
    /// Our address as the peer saw it is not ours: we are behind a NAT (its
    /// NAT_DETECTION_DESTINATION_IP did not match).
    pub local_behind_nat: bool,
    /// The peer's address is not what it claims (no NAT_DETECTION_SOURCE_IP matched).
    /// strongSwan fakes this to force UDP encapsulation (`encap = yes`); that is accepted.
    pub remote_behind_nat: bool,
}

impl NatInfo {
    /// A NAT on either side: ESP must be UDP-encapsulated (RFC 3948).
    pub fn any(&self) -> bool {
        self.local_behind_nat || self.remote_behind_nat
    }
}

/// Work for the caller, drained with [`crate::Endpoint::poll_output`], in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send an IKE message. `data` has no RFC 3948 non-ESP marker: on port 4500 the caller
    /// prepends the four zero octets.
    Send {
        /// Our address and port to send from.
        local: SocketAddr,
        /// Destination.
        remote: SocketAddr,
        /// The IKE message.
        data: Vec<u8>,
    },
    /// Install a CHILD SA pair in the SAD.
    InstallChild(Box<ChildSa>),
    /// Start sending on this pair's outbound SA. Emitted for the responder of a CHILD SA
    /// rekey once the initiator deleted the old pair (make-before-break: until then the
    /// old outbound SA stays in use, see [`ChildSa::outbound_active`]).
    ActivateOutbound {
        /// Peer name.
        peer: String,
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// The pair's inbound SPI.
        inbound_spi: u32,
        /// The outbound SPI to use from now on.
        outbound_spi: u32,
    },
    /// Remove a CHILD SA pair: the outbound SA at once, the inbound SA after `linger`
    /// (late packets of a rekeyed or deleted pair still decrypt meanwhile).
    RemoveChild {
        /// Peer name.
        peer: String,
        /// The IKE SA it belonged to.
        ike_sa: IkeSaId,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI (the peer's inbound).
        outbound_spi: u32,
        /// How long to keep the inbound SA.
        linger: Duration,
    },
    /// Something happened; for logs and for the recovery logic.
    Event(IkeEvent),
    /// The keys of a new IKE SA, for decrypting captures. Only emitted with
    /// [`crate::EndpointConfig::export_ike_keys`].
    IkeKeys(Box<IkeSaKeyExport>),
}

/// An IKE SA's keys handed out for debugging ([`Output::IkeKeys`]): emitted when the keys
/// exist (our IKE_SA_INIT done, or an IKE SA rekey, RFC 7296 §2.18), so even a failing
/// IKE_AUTH can be decrypted. The keys stay in zeroizing storage until rendered with
/// [`IkeSaKeyExport::ikev2_decryption_table_line`]; `Debug` does not show them.
#[derive(Debug, Clone)]
pub struct IkeSaKeyExport {
    /// Peer name (for a responder before IKE_AUTH: the tentative one).
    pub peer: String,
    /// The IKE SA.
    pub ike_sa: IkeSaId,
    /// The IKE SA it replaces (IKE SA rekey).
    pub rekey_of: Option<IkeSaId>,
    /// Our role in this IKE SA (for a rekeyed SA: in the rekey exchange, §2.18).
    pub role: Role,
    /// IKE SA initiator's SPI.
    pub spi_i: u64,
    /// IKE SA responder's SPI.
    pub spi_r: u64,
    /// Our address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The keys (SK_d, SK_a*, SK_e*, SK_p*) and their suite.
    pub keys: IkeSaKeys,
}

impl IkeSaKeyExport {
    /// The Wireshark `ikev2_decryption_table` UAT line of this SA (key material in clear).
    pub fn ikev2_decryption_table_line(&self) -> String {
        ikev2_decryption_table_line(self.spi_i, self.spi_r, &self.keys)
    }
}

impl crate::Endpoint {
    /// Queues [`Output::IkeKeys`] for `sa` if the configuration asks for it.
    pub(crate) fn export_ike_keys(&mut self, sa: &crate::ike_sa::IkeSa, rekey_of: Option<IkeSaId>) {
        if !self.config.export_ike_keys {
            return;
        }
        let export = IkeSaKeyExport {
            peer: self.peer_name(sa),
            ike_sa: sa.id,
            rekey_of,
            role: sa.role,
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            local: sa.local,
            remote: sa.remote,
            keys: sa.keys.clone(),
        };
        self.out.push_back(Output::IkeKeys(Box::new(export)));
    }
}

/// A negotiated CHILD SA pair, ready for the SAD.
#[derive(Debug, Clone)]
pub struct ChildSa {
    /// Peer name.
    pub peer: String,
    /// The IKE SA that negotiated it.
    pub ike_sa: IkeSaId,
    /// Our IKE address and port (after NAT-T port floating: the 4500 one).
    pub local_addr: SocketAddr,
    /// The peer's IKE address and port: the outer destination of UDP-encapsulated ESP.
    pub remote_addr: SocketAddr,
    /// Inbound SA: our SPI, the peer's keys for traffic to us.
    pub inbound: SaParams,
    /// Outbound SA: the peer's SPI, our keys for traffic to it.
    pub outbound: SaParams,
    /// The negotiated algorithms.
    pub suite: EspSuite,
    /// Our side's traffic selectors (after narrowing).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's traffic selectors.
    pub remote_ts: Vec<TrafficSelector>,
    /// Tunnel or transport.
    pub mode: Mode,
    /// NAT detection result of the IKE SA.
    pub nat: NatInfo,
    /// `Some(old inbound SPI)` when this pair replaces another (CHILD SA rekey).
    pub rekey_of: Option<u32>,
    /// Whether to send on `outbound` right away. False only for the responder of a
    /// rekey: it keeps sending on the old pair until the initiator deletes it, then gets
    /// [`Output::ActivateOutbound`] (so packets never reach the initiator before its
    /// inbound SA exists).
    pub outbound_active: bool,
    /// Hard lifetime, if any (the endpoint deletes the pair then; informational).
    pub lifetime: Option<Duration>,
}

/// Why an SA went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteReason {
    /// A local command (terminate, delete_child).
    Local,
    /// The peer sent a Delete.
    Peer,
    /// Replaced by a rekey.
    Rekeyed,
    /// The redundant SA of a simultaneous rekey (RFC 7296 §2.8.1).
    RekeyCollision,
    /// Hard lifetime reached.
    Expired,
    /// The peer sent INITIAL_CONTACT in a new IKE SA (RFC 7296 §2.4).
    InitialContact,
    /// Retransmissions exhausted.
    PeerDead,
    /// Deleted on behalf of the invalid-SPI recovery ([`crate::Endpoint::notify_invalid_spi`]).
    InvalidSpi,
    /// The peer no longer knows it (CHILD_SA_NOT_FOUND) or it could not be completed.
    Failed,
}

impl DeleteReason {
    /// Stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Local => "local",
            DeleteReason::Peer => "peer",
            DeleteReason::Rekeyed => "rekeyed",
            DeleteReason::RekeyCollision => "rekey-collision",
            DeleteReason::Expired => "expired",
            DeleteReason::InitialContact => "initial-contact",
            DeleteReason::PeerDead => "peer-dead",
            DeleteReason::InvalidSpi => "invalid-spi",
            DeleteReason::Failed => "failed",
        }
    }
}

/// Why IKE_AUTH failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No peer configuration accepts this IDi (or its IDr is not our identity).
    UnknownIdentity(Identity),
    /// The responder's IDr is not the configured remote identity.
    IdentityMismatch {
        /// Configured.
        expected: Identity,
        /// Received.
        got: Identity,
    },
    /// The AUTH payload does not verify (wrong PSK).
    BadAuth,
    /// An AUTH method other than Shared Key MIC.
    UnsupportedMethod(AuthMethod),
    /// IDi/IDr or AUTH missing or malformed.
    Malformed,
    /// The peer answered AUTHENTICATION_FAILED.
    RejectedByPeer,
}

impl core::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AuthFailure::UnknownIdentity(id) => write!(f, "no peer config for identity {id}"),
            AuthFailure::IdentityMismatch { expected, got } => {
                write!(f, "peer identity {got}, expected {expected}")
            }
            AuthFailure::BadAuth => f.write_str("AUTH payload verification failed"),
            AuthFailure::UnsupportedMethod(m) => write!(f, "unsupported auth method {m}"),
            AuthFailure::Malformed => f.write_str("IDi/IDr or AUTH missing or malformed"),
            AuthFailure::RejectedByPeer => f.write_str("peer sent AUTHENTICATION_FAILED"),
        }
    }
}

/// Why a received datagram was dropped without effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The message does not parse.
    Malformed(ParseError),
    /// No IKE SA has the SPI (RFC 7296 §2.21.4).
    UnknownSpi,
    /// The SA was found but the other SPI or the I flag does not match.
    SpiMismatch,
    /// The SK payload does not verify or decrypt (RFC 7296 §2.21.2: silently dropped).
    Integrity(CryptoError),
    /// A response to no outstanding request (§2.3).
    UnexpectedResponse,
    /// A request outside the window (§2.3).
    OutOfWindow {
        /// The message ID we expect next.
        expected: u32,
        /// The received one.
        got: u32,
    },
    /// Not acceptable in the SA's current state.
    WrongState,
    /// An exchange type we do not handle here.
    UnsupportedExchange(ExchangeType),
    /// A required payload is missing or the payloads are inconsistent.
    MissingPayload(&'static str),
    /// No peer configuration for the sender (IKE_SA_INIT from an unknown address with
    /// no dynamic peer).
    NoPeerConfig,
}

impl DropReason {
    /// How many reasons there are (one counter each).
    pub const COUNT: usize = 10;

    /// Every stable name ([`DropReason::as_str`]), in [`DropReason::index`] order, for
    /// per-reason counters.
    pub const NAMES: [&'static str; Self::COUNT] = [
        "malformed",
        "unknown-spi",
        "spi-mismatch",
        "integrity",
        "unexpected-response",
        "out-of-window",
        "wrong-state",
        "unsupported-exchange",
        "missing-payload",
        "no-peer-config",
    ];

    /// Position of the reason in [`DropReason::NAMES`] (dense, for counter arrays).
    pub fn index(&self) -> usize {
        match self {
            DropReason::Malformed(_) => 0,
            DropReason::UnknownSpi => 1,
            DropReason::SpiMismatch => 2,
            DropReason::Integrity(_) => 3,
            DropReason::UnexpectedResponse => 4,
            DropReason::OutOfWindow { .. } => 5,
            DropReason::WrongState => 6,
            DropReason::UnsupportedExchange(_) => 7,
            DropReason::MissingPayload(_) => 8,
            DropReason::NoPeerConfig => 9,
        }
    }

    /// Stable kebab-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Malformed(_) => "malformed",
            DropReason::UnknownSpi => "unknown-spi",
            DropReason::SpiMismatch => "spi-mismatch",
            DropReason::Integrity(_) => "integrity",
            DropReason::UnexpectedResponse => "unexpected-response",
            DropReason::OutOfWindow { .. } => "out-of-window",
            DropReason::WrongState => "wrong-state",
            DropReason::UnsupportedExchange(_) => "unsupported-exchange",
            DropReason::MissingPayload(_) => "missing-payload",
            DropReason::NoPeerConfig => "no-peer-config",
        }
    }
}

/// Something an endpoint reports. `peer` is the peer configuration name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IkeEvent {
    /// A message was sent (log line material).
    MessageSent {
        /// The IKE SA, if one exists (stateless IKE_SA_INIT answers have none).
        ike_sa: Option<IkeSaId>,
        /// Our address.
        local: SocketAddr,
        /// The peer's address.
        remote: SocketAddr,
        /// Exchange type.
        exchange: ExchangeType,
        /// Message ID.
        message_id: u32,
        /// A response (else a request).
        response: bool,
        /// A retransmission of an earlier request, or a cached response resent.
        retransmit: bool,
        /// The payload types in strongSwan's notation, inner payloads of SK included
        /// (`SA KE No N(NAT_DETECTION_SOURCE_IP) ...`).
        payloads: String,
    },
    /// A message was received and accepted for processing.
    MessageReceived {
        /// The IKE SA, if any.
        ike_sa: Option<IkeSaId>,
        /// Our address.
        local: SocketAddr,
        /// The sender.
        remote: SocketAddr,
        /// Exchange type.
        exchange: ExchangeType,
        /// Message ID.
        message_id: u32,
        /// A response (else a request).
        response: bool,
        /// Payload types (decrypted when protected).
        payloads: String,
    },
    /// A datagram was dropped without effect on any SA.
    MessageDropped {
        /// Our address.
        local: SocketAddr,
        /// The sender.
        remote: SocketAddr,
        /// Why.
        reason: DropReason,
    },
    /// We started an IKE SA.
    SaInitSent {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Peer address.
        remote: SocketAddr,
    },
    /// We answered an IKE_SA_INIT request and hold a half-open IKE SA.
    SaInitReceived {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Tentative peer name (the final one is chosen by IDi in IKE_AUTH).
        peer: String,
        /// Peer address.
        remote: SocketAddr,
    },
    /// IKE_SA_INIT failed on our side as initiator (error notification, bad reply).
    SaInitFailed {
        /// The IKE SA (now gone).
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The error notification received, if that was the reason.
        notify: Option<NotifyType>,
        /// Human-readable reason.
        reason: String,
    },
    /// The responder asked for a cookie; we retry with it (§2.6).
    CookieRequested {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
    },
    /// We asked an initiator for a cookie (half-open limit reached).
    CookieSent {
        /// The initiator.
        remote: SocketAddr,
    },
    /// The responder wants another DH group (INVALID_KE_PAYLOAD, §1.2).
    InvalidKeRequested {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The group it wants.
        group: DhGroup,
        /// Whether we retry with it.
        retry: bool,
    },
    /// We answered INVALID_KE_PAYLOAD naming `group`.
    InvalidKeSent {
        /// The initiator.
        remote: SocketAddr,
        /// The group we want.
        group: DhGroup,
    },
    /// No proposal was acceptable.
    NoProposalChosen {
        /// The IKE SA, if any.
        ike_sa: Option<IkeSaId>,
        /// Peer name, if known.
        peer: Option<String>,
        /// The exchange.
        exchange: ExchangeType,
        /// True when we found nothing acceptable, false when the peer said so.
        by_us: bool,
    },
    /// IKE_AUTH succeeded: the IKE SA is established.
    AuthSucceeded {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Our role.
        role: Role,
        /// The authenticated peer identity.
        remote_id: Identity,
        /// Peer address.
        remote: SocketAddr,
        /// NAT detection result.
        nat: NatInfo,
    },
    /// IKE_AUTH failed; the IKE SA is gone and no CHILD SA was made.
    AuthFailed {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Why.
        why: AuthFailure,
    },
    /// A new CHILD SA pair (IKE_AUTH or CREATE_CHILD_SA).
    ChildEstablished {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// A CHILD SA pair was replaced (§1.3.3).
    ChildRekeyed {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The old pair's inbound SPI.
        old_inbound_spi: u32,
        /// The new pair's inbound SPI.
        new_inbound_spi: u32,
        /// The new pair's outbound SPI.
        new_outbound_spi: u32,
        /// We initiated the rekey.
        initiator: bool,
    },
    /// Both sides rekeyed the same CHILD SA (§2.8.1); `won` tells whether our exchange's
    /// pair survives (the other is deleted by its creator).
    RekeyCollision {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The rekeyed pair's inbound SPI.
        old_inbound_spi: u32,
        /// Our exchange won.
        won: bool,
    },
    /// Creating or rekeying a CHILD SA failed; `notify` is the error notification sent or
    /// received (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, TEMPORARY_FAILURE, ...).
    ChildFailed {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The error.
        notify: NotifyType,
        /// The pair being rekeyed, for a failed rekey.
        rekey_of: Option<u32>,
        /// True when we refused, false when the peer did.
        by_us: bool,
    },
    /// A CHILD SA pair is gone (the matching [`Output::RemoveChild`] precedes this).
    ChildDeleted {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
        /// Why.
        reason: DeleteReason,
    },
    /// The IKE SA was rekeyed (§2.18); its CHILD SAs now belong to `new`.
    IkeRekeyed {
        /// The old IKE SA.
        old: IkeSaId,
        /// The new one.
        new: IkeSaId,
        /// Peer name.
        peer: String,
    },
    /// Our IKE SA rekey failed (error notification or unusable reply); retried after
    /// `rekey_retry`.
    IkeRekeyFailed {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The error.
        notify: NotifyType,
    },
    /// An IKE SA is gone.
    IkeSaDeleted {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Why.
        reason: DeleteReason,
    },
    /// The peer sent a Delete payload (protected).
    DeleteReceived {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// IKE or ESP.
        protocol: ProtocolId,
        /// For ESP: the peer's inbound SPIs (our outbound ones).
        spis: Vec<u32>,
    },
    /// The peer sent N(INVALID_SPI) in a protected INFORMATIONAL (§1.5). `spi` is the
    /// SPI it did not know: one of our outbound SPIs if `known`.
    InvalidSpiNotifyReceived {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The SPI.
        spi: u32,
        /// It is the outbound SPI of one of our CHILD SAs.
        known: bool,
    },
    /// Another notification in a protected INFORMATIONAL request.
    NotifyReceived {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The type.
        notify: NotifyType,
    },
    /// A notification outside any protection (unknown SPIs or no SK payload, §2.21.4).
    /// Never changes SA state; the recovery logic may rate-limit a liveness check on it.
    UnprotectedNotify {
        /// Our address.
        local: SocketAddr,
        /// The sender.
        remote: SocketAddr,
        /// The type.
        notify: NotifyType,
        /// Header SPIs.
        spi_i: u64,
        /// Header SPIs.
        spi_r: u64,
        /// Notification data (e.g. the SPI of INVALID_SPI).
        data: Vec<u8>,
    },
    /// No response after the whole retransmission schedule.
    RetransmitTimeout {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// The request's exchange.
        exchange: ExchangeType,
        /// Its message ID.
        message_id: u32,
    },
    /// The peer is declared dead; the IKE SA and its CHILD SAs are gone.
    PeerDead {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
    },
    /// A half-open responder IKE SA timed out.
    HalfOpenTimeout {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// The initiator.
        remote: SocketAddr,
    },
    /// The peer's address or port changed (NAT, §2.23, or our port floating to 4500):
    /// UDP-encapsulated ESP must follow.
    PeerAddressChanged {
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Peer name.
        peer: String,
        /// Our address now.
        local: SocketAddr,
        /// The peer's address now.
        remote: SocketAddr,
    },
}

/// State of an IKE SA as shown in [`IkeSaInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IkeSaState {
    /// Initiator: IKE_SA_INIT sent.
    Connecting,
    /// IKE_SA_INIT done, IKE_AUTH in progress (responder: half-open).
    Authenticating,
    /// Established.
    Established,
    /// Replaced by a rekey, waiting for the old SA's Delete.
    Rekeyed,
    /// Our Delete is outstanding.
    Deleting,
}

/// State of a CHILD SA as shown in [`ChildSaInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChildSaState {
    /// In use.
    Installed,
    /// Our rekey is in progress.
    Rekeying,
    /// Replaced; waiting for the Delete of the old pair.
    Rekeyed,
}

/// One IKE SA, for status displays (`ike_sas`). SPIs are hex strings in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct IkeSaInfo {
    /// Id.
    pub id: IkeSaId,
    /// Peer name.
    pub peer: String,
    /// Our role (original initiator or responder).
    pub role: Role,
    /// State.
    pub state: IkeSaState,
    /// The IKE SA that replaced this one (state `rekeyed`).
    pub successor: Option<IkeSaId>,
    /// IKE SA initiator's SPI.
    #[serde(serialize_with = "hex64")]
    pub spi_i: u64,
    /// IKE SA responder's SPI.
    #[serde(serialize_with = "hex64")]
    pub spi_r: u64,
    /// Our address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Our identity.
    pub local_id: String,
    /// The authenticated peer identity.
    pub remote_id: Option<String>,
    /// Negotiated IKE algorithms in proposal syntax.
    pub suite: Option<String>,
    /// NAT detection.
    pub nat: NatInfo,
    /// Seconds since creation.
    pub age_secs: f64,
    /// Seconds until the rekey, if scheduled.
    pub rekey_in_secs: Option<f64>,
    /// Seconds until the hard expiry, if any.
    pub expire_in_secs: Option<f64>,
    /// Our next request's Message ID.
    pub next_message_id: u32,
    /// The Message ID we expect in the peer's next request.
    pub peer_next_message_id: u32,
    /// Message ID of our outstanding request.
    pub outstanding_request: Option<u32>,
    /// Requests queued behind it.
    pub queued_requests: usize,
    /// CHILD SAs.
    pub children: Vec<ChildSaInfo>,
}

/// One CHILD SA pair in [`IkeSaInfo`].
#[derive(Debug, Clone, Serialize)]
pub struct ChildSaInfo {
    /// Our inbound SPI.
    #[serde(serialize_with = "hex32")]
    pub inbound_spi: u32,
    /// Our outbound SPI.
    #[serde(serialize_with = "hex32")]
    pub outbound_spi: u32,
    /// Algorithms in proposal syntax.
    pub suite: String,
    /// Tunnel or transport.
    pub mode: Mode,
    /// State.
    pub state: ChildSaState,
    /// Whether outbound traffic uses this pair.
    pub outbound_active: bool,
    /// Our selectors.
    pub local_ts: Vec<String>,
    /// The peer's selectors.
    pub remote_ts: Vec<String>,
    /// Seconds since installation.
    pub age_secs: f64,
    /// Seconds until the rekey.
    pub rekey_in_secs: Option<f64>,
    /// Seconds until the hard expiry.
    pub expire_in_secs: Option<f64>,
}

fn hex64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

fn hex32<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:08x}"))
}

/// An IKE suite in proposal-string syntax (`aes128gcm16-prfsha256-x25519`).
pub fn ike_suite_name(s: &IkeSuite) -> String {
    ProposalSpec {
        protocol_id: ProtocolId::IKE,
        encr: vec![s.encr],
        integ: s.integ.into_iter().collect(),
        prf: vec![s.prf],
        dh: vec![s.dh],
        esn: Vec::new(),
    }
    .to_string()
}

/// An ESP suite in proposal-string syntax (`aes128gcm16-noesn`).
pub fn esp_suite_name(s: &EspSuite) -> String {
    ProposalSpec {
        protocol_id: ProtocolId::ESP,
        encr: vec![s.encr],
        integ: s.integ.into_iter().collect(),
        prf: Vec::new(),
        dh: s.dh.into_iter().collect(),
        esn: vec![s.esn],
    }
    .to_string()
}

/// A traffic selector as `10.0.0.0/24`, `10.0.0.1-10.0.0.9`, with `[proto/port-port]`
/// when not "any".
pub fn ts_to_string(ts: &TrafficSelector) -> String {
    let addr = match ts.range {
        AddrRange::V4 { start, end } => range_text(
            u32::from(start).into(),
            u32::from(end).into(),
            32,
            &start,
            &end,
        ),
        AddrRange::V6 { start, end } => {
            range_text(u128::from(start), u128::from(end), 128, &start, &end)
        }
    };
    if ts.ip_protocol == 0 && ts.start_port == 0 && ts.end_port == u16::MAX {
        addr
    } else if ts.start_port == ts.end_port {
        format!("{addr}[{}/{}]", ts.ip_protocol, ts.start_port)
    } else {
        format!(
            "{addr}[{}/{}-{}]",
            ts.ip_protocol, ts.start_port, ts.end_port
        )
    }
}

fn range_text(
    s: u128,
    e: u128,
    bits: u32,
    start: &dyn core::fmt::Display,
    end: &dyn core::fmt::Display,
) -> String {
    if s > e {
        return format!("{start}-{end}");
    }
    // A prefix iff start has the host bits clear and end = start | hostmask.
    let span = e - s;
    if span.checked_add(1).is_some_and(|n| n.is_power_of_two()) || span == u128::MAX {
        let host_bits = if span == u128::MAX {
            128
        } else {
            (span + 1).trailing_zeros()
        };
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if s & mask == 0 && host_bits <= bits {
            return format!("{start}/{}", bits - host_bits);
        }
    }
    format!("{start}-{end}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn drop_reason_index_and_names_agree() {
        let all = [
            DropReason::Malformed(ParseError::UnsupportedCritical { payload_type: 222 }),
            DropReason::UnknownSpi,
            DropReason::SpiMismatch,
            DropReason::Integrity(CryptoError::NoEncryptedPayload),
            DropReason::UnexpectedResponse,
            DropReason::OutOfWindow {
                expected: 1,
                got: 7,
            },
            DropReason::WrongState,
            DropReason::UnsupportedExchange(ExchangeType(99)),
            DropReason::MissingPayload("Nonce"),
            DropReason::NoPeerConfig,
        ];
        assert_eq!(all.len(), DropReason::COUNT);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert_eq!(DropReason::NAMES[i], r.as_str(), "{r:?}");
        }
    }

    #[test]
    fn selector_text() {
        let ts = TrafficSelector::any_port(AddrRange::V4 {
            start: Ipv4Addr::new(10, 0, 0, 0),
            end: Ipv4Addr::new(10, 0, 0, 255),
        });
        assert_eq!(ts_to_string(&ts), "10.0.0.0/24");
        let host = TrafficSelector::any_port(AddrRange::V4 {
            start: Ipv4Addr::new(10, 0, 0, 1),
            end: Ipv4Addr::new(10, 0, 0, 1),
        });
        assert_eq!(ts_to_string(&host), "10.0.0.1/32");
        let odd = TrafficSelector {
            ip_protocol: 17,
            start_port: 53,
            end_port: 53,
            range: AddrRange::V4 {
                start: Ipv4Addr::new(10, 0, 0, 1),
                end: Ipv4Addr::new(10, 0, 0, 9),
            },
        };
        assert_eq!(ts_to_string(&odd), "10.0.0.1-10.0.0.9[17/53]");
        let all6 = TrafficSelector::any_port(AddrRange::V6 {
            start: "::".parse().unwrap(),
            end: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        });
        assert_eq!(ts_to_string(&all6), "::/0");
    }

    #[test]
    fn info_serializes_spis_as_hex() {
        let info = ChildSaInfo {
            inbound_spi: 0xc0de_0001,
            outbound_spi: 1,
            suite: "aes128gcm16-noesn".into(),
            mode: Mode::Tunnel,
            state: ChildSaState::Installed,
            outbound_active: true,
            local_ts: vec![],
            remote_ts: vec![],
            age_secs: 1.0,
            rekey_in_secs: None,
            expire_in_secs: None,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["inbound_spi"], "c0de0001");
        assert_eq!(v["outbound_spi"], "00000001");
        assert_eq!(v["mode"], "tunnel");
    }
}
