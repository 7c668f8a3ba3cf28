//! One IKE SA's state: keys, Message ID windows (RFC 7296 §2.3), the outstanding
//! request and its retransmission state (§2.1), queued requests, the cached last
//! response, and the CHILD SAs it owns.
//!
//! The state machine is in the types (rustls style): an IKE SA whose IKE_SA_INIT
//! response has not arrived is an [`InitiatingSa`] — it has no keys, and nothing that
//! needs keys (sealing, AUTH, KEYMAT, rekeying) accepts it. Only the IKE_SA_INIT
//! response handler consumes it, by value, and turns it into an [`IkeSa`], whose
//! [`IkeSaKeys`] are a plain field (every phase after IKE_SA_INIT has them).
//!
//! Each awaited response has its own type holding exactly what its handler needs
//! ([`AwaitInitResponse`], [`AwaitAuthResponse`], [`AwaitCreateChild`],
//! [`AwaitIkeRekey`], [`AwaitDelete`]); the handler takes it by value out of the
//! outstanding request ([`Request`]), so a response can only be processed by the handler
//! of the request it answers. [`SaState`] holds what the phase itself needs (the
//! responder's IKE_SA_INIT messages until AUTH is verified).

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

/// Phase of a keyed IKE SA (IKE_SA_INIT done). The phase before, an initiator waiting
/// for the IKE_SA_INIT response, is the separate type [`InitiatingSa`].
#[derive(Clone, Debug)]
pub(crate) enum SaState {
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open).
    InitResponded(AuthContext),
    /// Initiator: IKE_AUTH request outstanding ([`Request::Auth`] holds its context).
    AuthSent,
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
    /// outstanding (§2.8.1 collision), to be resolved when our response arrives — or
    /// earlier, by the peer's Delete of its pair (it lost) or of this one (it won).
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
    /// The peer's pair of a rekey collision our exchange won (RFC 7296 §2.8.1): the
    /// peer, which created it, deletes it; that Delete is not a reason to restart.
    Redundant,
}

/// The peer's side of a rekey collision: its nonces and the pair it created.
#[derive(Clone, Debug)]
pub(crate) struct PeerRekey {
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub new_inbound: u32,
}

/// Our request in flight (window size 1, §2.3); `kind` is what its response needs.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding<K = Request> {
    pub message_id: u32,
    pub exchange: ExchangeType,
    /// The message as sent: retransmitted byte for byte (§2.1).
    pub bytes: Vec<u8>,
    pub retransmits: u32,
    pub deadline: Instant,
    pub kind: K,
    /// Payload summary for log events.
    pub summary: String,
}

/// What the outstanding request of a keyed IKE SA was and what its response needs.
/// (The IKE_SA_INIT request is not here: only an [`InitiatingSa`] awaits it.)
#[derive(Clone, Debug)]
pub(crate) enum Request {
    Auth(AwaitAuthResponse),
    CreateChild(AwaitCreateChild),
    RekeyIke(AwaitIkeRekey),
    Delete(AwaitDelete),
    Liveness,
    InvalidSpi,
}

/// The IKE_SA_INIT request in flight: what the response needs to make the keys.
#[derive(Clone, Debug)]
pub(crate) struct AwaitInitResponse {
    pub ke: KeyExchange,
    pub ni: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    /// IKE_SA_INIT restarts so far (COOKIE, INVALID_KE_PAYLOAD).
    pub restarts: u8,
}

/// The IKE_AUTH request in flight: the IKE_SA_INIT messages and nonces AUTH and the
/// first CHILD SA's KEYMAT use, and that CHILD SA's proposal.
#[derive(Clone, Debug)]
pub(crate) struct AwaitAuthResponse {
    pub ctx: AuthContext,
    pub child: ChildProposal,
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
pub(crate) struct AwaitCreateChild {
    pub proposal: ChildProposal,
    pub rekey_of: Option<u32>,
    pub ni: Vec<u8>,
    pub ke: Option<KeyExchange>,
    /// The peer's side of a §2.8.1 collision whose old pair the peer deleted (it won)
    /// before this response arrived: the old [`Child`] and its `peer_rekey` are gone,
    /// so the response handler learns from here that our pair may be redundant.
    pub collision: Option<PeerRekey>,
}

#[derive(Clone, Debug)]
pub(crate) struct AwaitIkeRekey {
    pub new_spi: u64,
    pub ni: Vec<u8>,
    pub ke: KeyExchange,
}

#[derive(Clone, Debug)]
pub(crate) struct AwaitDelete {
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

/// An IKE SA we initiated, awaiting the IKE_SA_INIT response: no keys exist yet, so
/// it has no key field and is kept apart from keyed SAs ([`IkeSa`]). Its only request
/// is the IKE_SA_INIT one, always outstanding.
#[derive(Clone, Debug)]
pub(crate) struct InitiatingSa {
    pub id: IkeSaId,
    /// Index of the peer configuration.
    pub peer: usize,
    pub spi_i: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub created: Instant,
    pub outstanding: Outstanding<AwaitInitResponse>,
}

/// One keyed IKE SA (IKE_SA_INIT done).
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
    /// SK_d, SK_a*, SK_e*, SK_p* (§2.14): present in every phase of a keyed SA.
    pub keys: IkeSaKeys,
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
    /// A rekey of this IKE SA by the peer that we answered while our own was outstanding
    /// (§2.8.2 collision), to be resolved when our response arrives.
    pub peer_ike_rekey: Option<PeerIkeRekey>,
}

/// The peer's side of an IKE SA rekey collision: its exchange's nonces and the IKE SA
/// it created.
#[derive(Clone, Debug)]
pub(crate) struct PeerIkeRekey {
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub new: IkeSaId,
}

impl IkeSa {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: IkeSaId,
        peer: usize,
        role: Role,
        (spi_i, spi_r): (u64, u64),
        (local, remote): (SocketAddr, SocketAddr),
        state: SaState,
        keys: IkeSaKeys,
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
            keys,
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
            peer_ike_rekey: None,
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
            SaState::InitResponded(_) | SaState::AuthSent => IkeSaState::Authenticating,
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
            ChildState::Rekeyed { .. } | ChildState::Redundant => ChildSaState::Rekeyed,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The phase split: an SA awaiting the IKE_SA_INIT response lives in
    //! `Endpoint::initiating` (no keys) and becomes a keyed `IkeSa` in `Endpoint::sas`
    //! when the response is processed.
    use crate::codes::ExchangeType;
    use crate::header::{Flags, IkeHeader};
    use crate::message::Message;
    use crate::output::{DeleteReason, DropReason, IkeEvent, IkeSaState, Output};
    use crate::{Endpoint, EndpointConfig, Identity, IkePeerConfig, SpiAllocator};
    use std::net::SocketAddr;
    use std::time::Instant;

    struct Counter(u32);
    impl SpiAllocator for Counter {
        fn allocate_inbound_spi(&mut self) -> u32 {
            self.0 += 1;
            self.0
        }
    }

    const A: &str = "192.0.2.1:500";
    const B: &str = "192.0.2.2:500";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn endpoint(me: &str, them: &str, local: &str, remote: &str, seed: u64) -> Endpoint {
        let mut p = IkePeerConfig::new(
            them,
            Identity::fqdn(me),
            Some(Identity::fqdn(them)),
            b"secret",
        );
        p.local_addr = Some(addr(local));
        p.remote_addr = Some(addr(remote));
        let config = EndpointConfig {
            peers: vec![p],
            rng_seed: Some(seed),
            ..Default::default()
        };
        Endpoint::new(config, Instant::now()).expect("valid config")
    }

    /// Drains `ep`, returning the datagrams and the events.
    fn drain(ep: &mut Endpoint) -> (Vec<Vec<u8>>, Vec<IkeEvent>) {
        let (mut sent, mut events) = (vec![], vec![]);
        while let Some(o) = ep.poll_output() {
            match o {
                Output::Send { data, .. } => sent.push(data),
                Output::Event(e) => events.push(e),
                _ => {}
            }
        }
        (sent, events)
    }

    #[test]
    fn initiating_sa_has_no_keyed_state_until_the_init_response() {
        let now = Instant::now();
        let mut a = endpoint("sun", "moon", A, B, 1);
        let mut b = endpoint("moon", "sun", B, A, 2);
        let (mut sa_spis, mut sb_spis) = (Counter(0x1000), Counter(0x2000));
        let id = a.initiate(now, "moon", &mut sa_spis).expect("initiate");
        assert!(a.sas.is_empty());
        assert_eq!(a.initiating.len(), 1);
        let info = &a.ike_sas(now)[0];
        assert_eq!(info.id, id);
        assert_eq!(info.state, IkeSaState::Connecting);
        assert_eq!((info.spi_r, info.suite.as_deref()), (0, None));
        assert_eq!(info.outstanding_request, Some(0));
        assert_eq!(info.next_message_id, 1);
        assert!(a.has_sa_for_peer("moon"));
        let (init, _) = drain(&mut a);
        b.handle_datagram(now, addr(B), addr(A), &init[0], &mut sb_spis);
        let (resp, _) = drain(&mut b);
        a.handle_datagram(now, addr(A), addr(B), &resp[0], &mut sa_spis);
        // The same SA, now keyed and sending IKE_AUTH.
        assert!(a.initiating.is_empty());
        let sa = &a.sas[&id];
        assert!(matches!(sa.state, super::SaState::AuthSent));
        assert!(matches!(
            sa.outstanding.as_ref().map(|o| &o.kind),
            Some(super::Request::Auth(_))
        ));
        let info = &a.ike_sas(now)[0];
        assert_eq!(info.state, IkeSaState::Authenticating);
        assert!(info.suite.is_some() && info.spi_r != 0);
        // A second copy of the IKE_SA_INIT response is no longer awaited.
        drain(&mut a);
        a.handle_datagram(now, addr(A), addr(B), &resp[0], &mut sa_spis);
        let (_, events) = drain(&mut a);
        assert!(events.iter().any(|e| matches!(
            e,
            IkeEvent::MessageDropped {
                reason: DropReason::UnexpectedResponse,
                ..
            }
        )));
    }

    #[test]
    fn protected_message_for_initiating_sa_is_dropped_without_keys() {
        let now = Instant::now();
        let mut a = endpoint("sun", "moon", A, B, 3);
        let mut spis = Counter(0x1000);
        a.initiate(now, "moon", &mut spis).expect("initiate");
        drain(&mut a);
        let spi_i = a.initiating.values().next().expect("initiating").spi_i;
        let msg = |spi_r| {
            Message::new(IkeHeader {
                spi_i,
                spi_r,
                exchange_type: ExchangeType::INFORMATIONAL,
                flags: Flags::RESPONSE,
                message_id: 1,
            })
            .emit()
        };
        for (spi_r, want) in [(0, DropReason::WrongState), (7, DropReason::SpiMismatch)] {
            a.handle_datagram(now, addr(A), addr(B), &msg(spi_r), &mut spis);
            let (sent, events) = drain(&mut a);
            assert!(sent.is_empty());
            assert!(
                events.iter().any(
                    |e| matches!(e, IkeEvent::MessageDropped { reason, .. } if *reason == want)
                ),
                "{events:?}"
            );
            assert_eq!(a.initiating.len(), 1);
        }
    }

    #[test]
    fn terminate_while_initiating_forgets_the_sa() {
        let now = Instant::now();
        let mut a = endpoint("sun", "moon", A, B, 4);
        let mut spis = Counter(0x1000);
        let id = a.initiate(now, "moon", &mut spis).expect("initiate");
        drain(&mut a);
        a.terminate(now, "moon").expect("terminate");
        let (_, events) = drain(&mut a);
        assert!(events.iter().any(|e| matches!(
            e,
            IkeEvent::IkeSaDeleted { ike_sa, reason: DeleteReason::Local, .. } if *ike_sa == id
        )));
        assert!(a.initiating.is_empty() && a.by_spi.is_empty());
        assert!(a.ike_sas(now).is_empty());
        assert_eq!(a.poll_timeout(), None);
        assert!(!a.has_sa_for_peer("moon"));
    }
}
