//! One IKE SA's state: keys, Message ID windows (RFC 7296 §2.3), the outstanding
//! request and its retransmission state (§2.1), queued requests, the cached last
//! response, and the CHILD SAs it owns.
//!
//! The exchange in progress is typed: [`Request`] holds exactly what the response to
//! the outstanding request needs (our KE private value and nonce, the SPI offered, ...),
//! and [`SaState`] what each phase of the IKE SA needs (the IKE_SA_INIT messages until
//! AUTH is verified).

use crate::codes::ExchangeType;
use crate::config::{InvalidSpiAction, Mode};
use crate::crypto::{IkeSaKeys, KeyExchange, Role};
use crate::header::{Flags, IkeHeader};
use crate::output::{ChildSaState, DeleteReason, IkeSaId, IkeSaState, NatInfo};
use crate::payload::Identity;
use crate::proposal::ProposalSpec;
use crate::timer::Expiry;
use crate::transform::{DhGroup, EspSuite};
use crate::ts::TrafficSelector;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// The IKE_SA_INIT messages and nonces AUTH covers (§2.15) and the first CHILD SA's
/// keys use (§2.17).
#[derive(Clone, Debug)]
pub(crate) struct AuthContext {
    /// The initiator's IKE_SA_INIT request as sent.
    pub msg1: Vec<u8>,
    /// The responder's IKE_SA_INIT response as sent.
    pub msg2: Vec<u8>,
    /// Ni.
    pub ni: Vec<u8>,
    /// Nr.
    pub nr: Vec<u8>,
}

/// Phase of an IKE SA.
#[derive(Clone, Debug)]
pub(crate) enum SaState {
    /// Initiator: IKE_SA_INIT request outstanding ([`Request::Init`]).
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open).
    InitResponded(AuthContext),
    /// Initiator: IKE_AUTH request outstanding.
    AuthSent(AuthContext),
    /// Authenticated.
    Established,
    /// Replaced by an IKE SA rekey (§2.18); only the Delete of this SA remains.
    Rekeyed {
        /// The new IKE SA.
        successor: IkeSaId,
    },
    /// Our Delete of this IKE SA is outstanding.
    Deleting,
}

/// A CHILD SA pair owned by an IKE SA.
#[derive(Clone, Debug)]
pub(crate) struct Child {
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub suite: EspSuite,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub mode: Mode,
    pub created: Instant,
    pub expiry: Expiry,
    pub state: ChildState,
    pub outbound_active: bool,
    /// A rekey of this pair by the peer that we answered while our own rekey of it was
    /// outstanding (§2.8.1 collision), to be resolved when our response arrives.
    pub peer_rekey: Option<PeerRekey>,
}

/// CHILD SA phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildState {
    Installed,
    /// Our CREATE_CHILD_SA rekeying it is outstanding.
    Rekeying,
    /// Replaced by `successor` (an inbound SPI); the Delete of this pair is pending.
    Rekeyed {
        successor: u32,
    },
}

/// The peer's side of a rekey collision: its nonces and the pair it created.
#[derive(Clone, Debug)]
pub(crate) struct PeerRekey {
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub new_inbound: u32,
}

/// Our request in flight (window size 1, §2.3).
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub message_id: u32,
    pub exchange: ExchangeType,
    /// The message as sent: retransmitted byte for byte (§2.1).
    pub bytes: Vec<u8>,
    pub retransmits: u32,
    pub deadline: Instant,
    pub kind: Request,
    /// Payload summary for log events.
    pub summary: String,
}

/// What the outstanding request was and what its response needs.
#[derive(Clone, Debug)]
pub(crate) enum Request {
    Init(InitRequest),
    Auth(ChildProposal),
    CreateChild(ChildRequest),
    RekeyIke(IkeRekeyRequest),
    Delete(DeleteRequest),
    Liveness,
    InvalidSpi,
}

#[derive(Clone, Debug)]
pub(crate) struct InitRequest {
    pub ke: KeyExchange,
    pub ni: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    /// IKE_SA_INIT restarts so far (COOKIE, INVALID_KE_PAYLOAD).
    pub restarts: u8,
}

/// The CHILD SA we proposed.
#[derive(Clone, Debug)]
pub(crate) struct ChildProposal {
    pub inbound_spi: u32,
    pub specs: Vec<ProposalSpec>,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub mode: Mode,
}

#[derive(Clone, Debug)]
pub(crate) struct ChildRequest {
    pub proposal: ChildProposal,
    pub rekey_of: Option<u32>,
    pub ni: Vec<u8>,
    pub ke: Option<KeyExchange>,
}

#[derive(Clone, Debug)]
pub(crate) struct IkeRekeyRequest {
    pub new_spi: u64,
    pub ni: Vec<u8>,
    pub ke: KeyExchange,
}

#[derive(Clone, Debug)]
pub(crate) struct DeleteRequest {
    /// Delete of the IKE SA itself (else ESP SPIs).
    pub ike: bool,
    pub reason: DeleteReason,
}

/// A request waiting for the window.
#[derive(Clone, Debug)]
pub(crate) enum Task {
    CreateChild {
        inbound_spi: u32,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        mode: Mode,
        pfs: Option<DhGroup>,
    },
    RekeyChild {
        old_inbound: u32,
        inbound_spi: u32,
        pfs: Option<DhGroup>,
    },
    RekeyIke {
        group: Option<DhGroup>,
    },
    DeleteChildren {
        spis: Vec<u32>,
        reason: DeleteReason,
    },
    DeleteIke {
        reason: DeleteReason,
    },
    Liveness,
    InvalidSpi {
        spi: u32,
        action: InvalidSpiAction,
    },
}

impl Task {
    /// The inbound SPI reserved for this task, released if it never runs.
    pub fn reserved_spi(&self) -> Option<u32> {
        match self {
            Task::CreateChild { inbound_spi, .. } | Task::RekeyChild { inbound_spi, .. } => {
                Some(*inbound_spi)
            }
            _ => None,
        }
    }
}

/// The last response we sent, for retransmitted requests (§2.1).
#[derive(Clone, Debug)]
pub(crate) struct CachedResponse {
    pub message_id: u32,
    pub exchange: ExchangeType,
    pub bytes: Vec<u8>,
    pub summary: String,
}

/// One IKE SA.
#[derive(Clone, Debug)]
pub(crate) struct IkeSa {
    pub id: IkeSaId,
    /// Index of the peer configuration (the responder may switch it in IKE_AUTH).
    pub peer: usize,
    /// Responder: the configurations the IKE_SA_INIT source address matched.
    pub candidates: Vec<usize>,
    /// Original initiator or responder (§2.14: decides which keys are ours).
    pub role: Role,
    pub spi_i: u64,
    pub spi_r: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: SaState,
    pub created: Instant,
    pub keys: Option<IkeSaKeys>,
    pub nat: NatInfo,
    pub remote_id: Option<Identity>,
    pub children: Vec<Child>,
    /// Message ID of our next request (§2.2).
    pub next_msg_id: u32,
    /// Message ID the peer's next request must carry.
    pub peer_next_msg_id: u32,
    pub outstanding: Option<Outstanding>,
    pub queue: VecDeque<Task>,
    pub last_response: Option<CachedResponse>,
    pub last_heard: Instant,
    pub expiry: Expiry,
    pub half_open_deadline: Option<Instant>,
    /// Responder: the (source, SPIi) key of the IKE_SA_INIT index.
    pub init_key: Option<(SocketAddr, u64)>,
    /// Set when the SA is finished; the endpoint forgets it after the current step.
    pub dead: bool,
}

impl IkeSa {
    pub fn new(
        id: IkeSaId,
        peer: usize,
        role: Role,
        (spi_i, spi_r): (u64, u64),
        (local, remote): (SocketAddr, SocketAddr),
        state: SaState,
        now: Instant,
    ) -> Self {
        IkeSa {
            id,
            peer,
            candidates: vec![peer],
            role,
            spi_i,
            spi_r,
            local,
            remote,
            state,
            created: now,
            keys: None,
            nat: NatInfo::default(),
            remote_id: None,
            children: Vec::new(),
            next_msg_id: 0,
            peer_next_msg_id: 0,
            outstanding: None,
            queue: VecDeque::new(),
            last_response: None,
            last_heard: now,
            expiry: Expiry::default(),
            half_open_deadline: None,
            init_key: None,
            dead: false,
        }
    }

    /// Our SPI: the one the peer's messages carry in our slot.
    pub fn local_spi(&self) -> u64 {
        match self.role {
            Role::Initiator => self.spi_i,
            Role::Responder => self.spi_r,
        }
    }

    /// The peer's SPI.
    pub fn remote_spi(&self) -> u64 {
        match self.role {
            Role::Initiator => self.spi_r,
            Role::Responder => self.spi_i,
        }
    }

    /// The peer's role (whose keys protect what it sends).
    pub fn peer_role(&self) -> Role {
        match self.role {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }

    /// A header for a message we send: the I flag says we are the original initiator,
    /// the R flag a response (§3.1).
    pub fn header(&self, exchange: ExchangeType, message_id: u32, response: bool) -> IkeHeader {
        let mut flags = if self.role == Role::Initiator {
            Flags::INITIATOR
        } else {
            Flags::NONE
        };
        if response {
            flags = flags | Flags::RESPONSE;
        }
        IkeHeader {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            exchange_type: exchange,
            flags,
            message_id,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, SaState::Established)
    }

    pub fn child_by_inbound(&self, spi: u32) -> Option<usize> {
        self.children.iter().position(|c| c.inbound_spi == spi)
    }

    pub fn child_by_outbound(&self, spi: u32) -> Option<usize> {
        self.children.iter().position(|c| c.outbound_spi == spi)
    }

    pub fn public_state(&self) -> IkeSaState {
        match self.state {
            SaState::InitSent => IkeSaState::Connecting,
            SaState::InitResponded(_) | SaState::AuthSent(_) => IkeSaState::Authenticating,
            SaState::Established => IkeSaState::Established,
            SaState::Rekeyed { .. } => IkeSaState::Rekeyed,
            SaState::Deleting => IkeSaState::Deleting,
        }
    }

    /// True if a rekey of the IKE SA is queued or in flight.
    pub fn ike_rekey_pending(&self) -> bool {
        matches!(
            self.outstanding.as_ref().map(|o| &o.kind),
            Some(Request::RekeyIke(_))
        ) || self
            .queue
            .iter()
            .any(|t| matches!(t, Task::RekeyIke { .. }))
    }

    /// True if our Delete of the IKE SA is queued or in flight.
    pub fn ike_delete_pending(&self) -> bool {
        matches!(self.state, SaState::Deleting)
            || self
                .queue
                .iter()
                .any(|t| matches!(t, Task::DeleteIke { .. }))
    }
}

impl Child {
    pub fn public_state(&self) -> ChildSaState {
        match self.state {
            ChildState::Installed => ChildSaState::Installed,
            ChildState::Rekeying => ChildSaState::Rekeying,
            ChildState::Rekeyed { .. } => ChildSaState::Rekeyed,
        }
    }
}
