//! The endpoint: all IKE SAs of one node, sans-IO (quinn-proto style).
//!
//! Inputs are datagrams ([`Endpoint::handle_datagram`]), the clock
//! ([`Endpoint::handle_timeout`]) and commands ([`Endpoint::initiate`], ...); outputs are
//! drained with [`Endpoint::poll_output`], and [`Endpoint::poll_timeout`] says when to
//! call `handle_timeout` next. Time only moves when the caller passes a new `now`, so a
//! simulator can run the protocol on a virtual clock; with
//! [`EndpointConfig::rng_seed`] set, a run is fully reproducible.
//!
//! ```
//! use esplab_ike::{Endpoint, EndpointConfig, IkePeerConfig, Identity, Output, SpiAllocator};
//! use std::time::Instant;
//!
//! struct Counter(u32);
//! impl SpiAllocator for Counter {
//!     fn allocate_inbound_spi(&mut self) -> u32 {
//!         self.0 += 1;
//!         self.0
//!     }
//! }
//!
//! let now = Instant::now();
//! let mut peer = IkePeerConfig::new("moon", Identity::fqdn("sun"), None, b"secret");
//! peer.local_addr = Some("192.0.2.1:4500".parse().unwrap());
//! peer.remote_addr = Some("192.0.2.2:4500".parse().unwrap());
//! let config = EndpointConfig { peers: vec![peer], rng_seed: Some(1), ..Default::default() };
//! let mut ep = Endpoint::new(config, now).unwrap();
//! let mut spis = Counter(0x1000);
//! ep.initiate(now, "moon", &mut spis).unwrap();
//! let mut sent = 0;
//! while let Some(out) = ep.poll_output() {
//!     if let Output::Send { remote, data, .. } = out {
//!         assert_eq!(remote.port(), 4500); // the caller adds the non-ESP marker
//!         assert_eq!(data[18], 34); // IKE_SA_INIT
//!         sent += 1;
//!     }
//! }
//! assert_eq!(sent, 1);
//! assert!(ep.poll_timeout().is_some()); // the retransmission timer
//! ```

use crate::codes::{ExchangeType, ProtocolId};
use crate::config::{ConfigError, EndpointConfig, IkePeerConfig, Mode};
use crate::cookie::CookieJar;
use crate::crypto::{ChildSaKeys, Direction, Role};
use crate::error::CryptoError;
use crate::header::IkeHeader;
use crate::ike_sa::{Child, ChildState, IkeSa, InitiatingSa, Outstanding, Request, SaState, Task};
use crate::message::Message;
use crate::notify::NotifyType;
use crate::output::{
    esp_suite_name, ike_suite_name, ts_to_string, ChildSa, ChildSaInfo, DeleteReason, DropReason,
    IkeEvent, IkeSaId, IkeSaInfo, Output,
};
use crate::payload::{Identity, Notify, Payload};
use crate::selectors::host_selector;
use crate::timer::{due, earliest, Expiry};
use crate::transform::EspSuite;
use crate::ts::TrafficSelector;
use esplab_esp::SaParams;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Chooses inbound CHILD SA SPIs. The node's SAD implements it, so that it can shape
/// SPIs for its lookup structure (the SPI of an inbound SA is chosen by the receiver,
/// RFC 4301 §4.1).
pub trait SpiAllocator {
    /// A fresh SPI, unique among the node's inbound SAs and not in 0..=255 (RFC 4303
    /// §2.1 reserves those).
    fn allocate_inbound_spi(&mut self) -> u32;

    /// An allocated SPI that will not be installed after all (the exchange failed).
    fn release_inbound_spi(&mut self, spi: u32) {
        let _ = spi;
    }
}

/// A command that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No peer configuration has this name.
    #[error("unknown peer '{0}'")]
    UnknownPeer(String),
    /// The peer is dynamic (no `remote_addr`): we never initiate to it.
    #[error("peer '{0}' has no remote address (responder only)")]
    NoRemoteAddress(String),
    /// The peer has no `local_addr` to initiate from.
    #[error("peer '{0}' has no local address")]
    NoLocalAddress(String),
    /// No (established) IKE SA with this peer.
    #[error("no IKE SA with peer '{0}'")]
    NoIkeSa(String),
    /// No CHILD SA has this SPI (inbound or outbound).
    #[error("no CHILD SA with SPI {0:08x}")]
    UnknownChild(u32),
    /// The peer's IKE proposals name no Diffie-Hellman group this crate implements.
    #[error("peer '{0}' has no usable Diffie-Hellman group")]
    NoUsableGroup(String),
}

/// [`Endpoint::notify_invalid_spi`] found no established IKE SA with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no established IKE SA with {0}")]
pub struct NoIkeSa(pub IpAddr);

/// All IKE SAs of one node. See the module documentation.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) config: EndpointConfig,
    pub(crate) rng: StdRng,
    /// Keyed IKE SAs (IKE_SA_INIT done).
    pub(crate) sas: BTreeMap<IkeSaId, IkeSa>,
    /// IKE SAs we initiated that await the IKE_SA_INIT response (no keys yet). An id is
    /// in one of the two maps, never both.
    pub(crate) initiating: BTreeMap<IkeSaId, InitiatingSa>,
    /// Our SPI → SA. BTreeMap: the key comes off the wire.
    pub(crate) by_spi: BTreeMap<u64, IkeSaId>,
    /// Responder: (source, SPIi) of IKE_SA_INIT requests → SA, to answer retransmissions.
    pub(crate) init_index: BTreeMap<(SocketAddr, u64), IkeSaId>,
    pub(crate) next_id: u64,
    pub(crate) out: VecDeque<Output>,
    pub(crate) cookies: CookieJar,
    /// Scheduled IKE SA starts (`start`, restarts).
    pub(crate) starts: Vec<(Instant, usize)>,
    /// Allocated SPIs to hand back at the next call that has the allocator.
    pub(crate) released: Vec<u32>,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.config.peers.len())
            .field("ike_sas", &(self.sas.len() + self.initiating.len()))
            .field("pending_outputs", &self.out.len())
            .finish_non_exhaustive()
    }
}

/// A decrypted, parsed protected message.
pub(crate) struct Received {
    pub header: IkeHeader,
    pub payloads: Vec<Payload>,
    /// IDi / IDr bodies exactly as received (AUTH covers them, §2.15).
    pub raw_idi: Option<Vec<u8>>,
    pub raw_idr: Option<Vec<u8>>,
}

/// A CHILD SA pair about to be installed.
pub(crate) struct NewChild {
    pub inbound: SaParams,
    pub outbound: SaParams,
    pub suite: EspSuite,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub mode: Mode,
    pub rekey_of: Option<u32>,
    pub outbound_active: bool,
}

impl Endpoint {
    /// An endpoint with these peers. Peers with `start` are initiated at the first
    /// [`Endpoint::handle_timeout`] (`poll_timeout` returns `now` for them).
    pub fn new(config: EndpointConfig, now: Instant) -> Result<Self, ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for p in &config.peers {
            p.validate()?;
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::DuplicatePeer(p.name.clone()));
            }
        }
        let mut rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let cookies = CookieJar::new(&mut rng, now);
        let starts = config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.start && p.remote_addr.is_some())
            .map(|(i, _)| (now, i))
            .collect();
        Ok(Endpoint {
            config,
            rng,
            sas: BTreeMap::new(),
            initiating: BTreeMap::new(),
            by_spi: BTreeMap::new(),
            init_index: BTreeMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            cookies,
            starts,
            released: Vec::new(),
        })
    }

    /// Adds a peer at run time (started at the next `handle_timeout` if `start`).
    pub fn add_peer(&mut self, now: Instant, peer: IkePeerConfig) -> Result<(), ConfigError> {
        peer.validate()?;
        if self.config.peers.iter().any(|p| p.name == peer.name) {
            return Err(ConfigError::DuplicatePeer(peer.name));
        }
        if peer.start && peer.remote_addr.is_some() {
            self.starts.push((now, self.config.peers.len()));
        }
        self.config.peers.push(peer);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next (may be in the past: then
    /// at once). `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.starts.iter().map(|(t, _)| *t).min();
        for isa in self.initiating.values() {
            t = earliest(t, Some(isa.outstanding.deadline));
        }
        for sa in self.sas.values() {
            t = earliest(t, sa.outstanding.as_ref().map(|o| o.deadline));
            t = earliest(t, sa.half_open_deadline);
            match sa.state {
                SaState::Established => {
                    t = earliest(t, sa.expiry.next());
                    for c in &sa.children {
                        t = earliest(t, c.expiry.next());
                    }
                    t = earliest(t, self.dpd_deadline(sa));
                }
                SaState::Rekeyed { .. } => t = earliest(t, sa.expiry.next()),
                _ => {}
            }
        }
        t
    }

    /// The retransmission schedule for requests to peer `peer` (its own, else the
    /// node-wide one).
    pub(crate) fn retransmit_of(&self, peer: usize) -> crate::config::Retransmit {
        self.config
            .peers
            .get(peer)
            .and_then(|p| p.retransmit)
            .unwrap_or(self.config.retransmit)
    }

    fn dpd_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let delay = self.config.peers[sa.peer].dpd_delay?;
        if sa.outstanding.is_some() || !sa.queue.is_empty() {
            return None;
        }
        sa.last_heard.checked_add(delay)
    }

    /// A received IKE datagram. `data` is the IKE message without the RFC 3948 non-ESP
    /// marker; `local` is the address it arrived on, `remote` its source.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        spis: &mut dyn SpiAllocator,
    ) {
        self.flush_released(spis);
        self.dispatch(now, local, remote, data, spis);
        self.pump_all(now);
        self.flush_released(spis);
    }

    /// Starts queued requests of every SA whose window is free (an exchange on one SA
    /// can queue work on another, e.g. the CHILD SAs moved by an IKE rekey).
    fn pump_all(&mut self, now: Instant) {
        let ids: Vec<IkeSaId> = self
            .sas
            .values()
            .filter(|sa| sa.outstanding.is_none() && !sa.queue.is_empty())
            .map(|sa| sa.id)
            .collect();
        for id in ids {
            self.with_sa(id, now, |_, _| {});
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        spis: &mut dyn SpiAllocator,
    ) {
        let h = match IkeHeader::decode(data) {
            Ok(d) => d.header,
            Err(e) => return self.dropped(local, remote, DropReason::Malformed(e)),
        };
        if h.exchange_type == ExchangeType::IKE_SA_INIT {
            match (h.flags.is_response(), h.flags.is_initiator()) {
                (false, true) if h.spi_r == 0 => {
                    self.handle_init_request(now, local, remote, data, spis)
                }
                (true, false) => self.handle_init_response(now, local, remote, data, &h, spis),
                _ => self.dropped(local, remote, DropReason::SpiMismatch),
            }
            return;
        }
        // The I flag names the sender's role (§3.1), so it says which SPI slot is ours.
        let ours = if h.flags.is_initiator() {
            h.spi_r
        } else {
            h.spi_i
        };
        let Some(&id) = self.by_spi.get(&ours) else {
            return self.unknown_spi(local, remote, data, &h, DropReason::UnknownSpi);
        };
        if let Some(isa) = self.initiating.get(&id) {
            // No keys yet (IKE_SA_INIT response outstanding): nothing protected can be
            // opened; the SPIr slot of a consistent message is still zero.
            if !spis_consistent(Role::Initiator, isa.spi_i, 0, ours, &h) {
                return self.unknown_spi(local, remote, data, &h, DropReason::SpiMismatch);
            }
            return self.dropped(local, remote, DropReason::WrongState);
        }
        let Some(sa) = self.sas.get(&id) else {
            return self.dropped(local, remote, DropReason::UnknownSpi);
        };
        if !spis_consistent(sa.role, sa.local_spi(), sa.remote_spi(), ours, &h) {
            return self.unknown_spi(local, remote, data, &h, DropReason::SpiMismatch);
        }
        let keys = &sa.keys;
        let opened = match keys.sk_cipher(sa.peer_role()).and_then(|c| c.open(data)) {
            Ok(o) => o,
            Err(CryptoError::NoEncryptedPayload) => {
                // §2.21.4 / §1.5: an unprotected message on a known SA never changes it.
                return self.unknown_spi(
                    local,
                    remote,
                    data,
                    &h,
                    DropReason::Integrity(CryptoError::NoEncryptedPayload),
                );
            }
            Err(e) => return self.dropped(local, remote, DropReason::Integrity(e)),
        };
        let raw = |t| {
            opened
                .raw_payloads()
                .filter_map(Result::ok)
                .find(|r| r.payload_type == t)
                .map(|r| r.body.to_vec())
        };
        let raw_idi = raw(crate::codes::PayloadType::IDI);
        let raw_idr = raw(crate::codes::PayloadType::IDR);
        let parsed = opened.payloads();
        self.with_sa(id, now, |ep, sa| {
            ep.handle_protected(sa, now, h, parsed, raw_idi, raw_idr, local, remote, spis)
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_protected(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        h: IkeHeader,
        parsed: Result<Vec<Payload>, crate::error::ParseError>,
        raw_idi: Option<Vec<u8>>,
        raw_idr: Option<Vec<u8>>,
        local: SocketAddr,
        remote: SocketAddr,
        spis: &mut dyn SpiAllocator,
    ) {
        // The message is authentic: the peer is alive.
        sa.last_heard = now;
        if h.flags.is_response() {
            // The response takes the request it answers out of the window: its handler
            // consumes what the request left for it (see `handle_response`).
            let Some(o) = sa
                .outstanding
                .take_if(|o| o.message_id == h.message_id && o.exchange == h.exchange_type)
            else {
                // §2.3: a response to no outstanding request is dropped.
                return self.dropped(local, remote, DropReason::UnexpectedResponse);
            };
            let payloads = match parsed {
                Ok(p) => p,
                Err(e) => {
                    // Not an answer we can use: the request stays outstanding.
                    sa.outstanding = Some(o);
                    return self.dropped(local, remote, DropReason::Malformed(e));
                }
            };
            self.event(IkeEvent::MessageReceived {
                ike_sa: Some(sa.id),
                local,
                remote,
                exchange: h.exchange_type,
                message_id: h.message_id,
                response: true,
                payloads: summarize(&payloads, true),
            });
            let msg = Received {
                header: h,
                payloads,
                raw_idi,
                raw_idr,
            };
            self.handle_response(sa, now, msg, o, spis);
            return;
        }
        // A request. §2.3 with window size 1: the next one, or the previous one again.
        if h.message_id != sa.peer_next_msg_id {
            let cached = sa
                .last_response
                .as_ref()
                .filter(|c| c.message_id == h.message_id && c.exchange == h.exchange_type)
                .cloned();
            match cached {
                Some(c) => {
                    // §2.1: a retransmitted request is answered with the same response,
                    // without processing it again.
                    self.out.push_back(Output::Send {
                        local: sa.local,
                        remote: sa.remote,
                        data: c.bytes,
                    });
                    self.event(IkeEvent::MessageSent {
                        ike_sa: Some(sa.id),
                        local: sa.local,
                        remote: sa.remote,
                        exchange: c.exchange,
                        message_id: c.message_id,
                        response: true,
                        retransmit: true,
                        payloads: c.summary,
                    });
                }
                None => self.dropped(
                    local,
                    remote,
                    DropReason::OutOfWindow {
                        expected: sa.peer_next_msg_id,
                        got: h.message_id,
                    },
                ),
            }
            return;
        }
        let supported = matches!(
            h.exchange_type,
            ExchangeType::IKE_AUTH | ExchangeType::CREATE_CHILD_SA | ExchangeType::INFORMATIONAL
        );
        if !supported {
            return self.dropped(
                local,
                remote,
                DropReason::UnsupportedExchange(h.exchange_type),
            );
        }
        // Only a half-open responder SA takes IKE_AUTH; it hands the handler the
        // IKE_SA_INIT context AUTH covers, so the handler cannot run without it.
        let auth_ctx = match (&sa.state, h.exchange_type) {
            (SaState::InitResponded(ctx), ExchangeType::IKE_AUTH) => Some(ctx.clone()),
            (_, ExchangeType::IKE_AUTH) => {
                return self.dropped(local, remote, DropReason::WrongState);
            }
            _ => None,
        };
        if (local, remote) != (sa.local, sa.remote) {
            // §2.23: the peer's (NATed or floated) address of the latest authentic request
            // is where our messages and its ESP go from now on.
            sa.local = local;
            sa.remote = remote;
            let peer = self.peer_name(sa);
            self.event(IkeEvent::PeerAddressChanged {
                ike_sa: sa.id,
                peer,
                local,
                remote,
            });
        }
        sa.peer_next_msg_id = sa.peer_next_msg_id.wrapping_add(1);
        let payloads = match parsed {
            Ok(p) => p,
            Err(e) => {
                // An authenticated peer sent a malformed chain: answer with the
                // suggested error (§2.21.2); a failed IKE_AUTH ends the IKE SA.
                self.event(IkeEvent::MessageReceived {
                    ike_sa: Some(sa.id),
                    local,
                    remote,
                    exchange: h.exchange_type,
                    message_id: h.message_id,
                    response: false,
                    payloads: "(malformed)".into(),
                });
                let t = e.notify_type().unwrap_or(NotifyType::INVALID_SYNTAX);
                let n = Notify::new(t, e.notify_data());
                self.send_response(sa, h.exchange_type, h.message_id, vec![Payload::Notify(n)]);
                if h.exchange_type == ExchangeType::IKE_AUTH {
                    sa.dead = true;
                }
                return;
            }
        };
        self.event(IkeEvent::MessageReceived {
            ike_sa: Some(sa.id),
            local,
            remote,
            exchange: h.exchange_type,
            message_id: h.message_id,
            response: false,
            payloads: summarize(&payloads, true),
        });
        let msg = Received {
            header: h,
            payloads,
            raw_idi,
            raw_idr,
        };
        match (auth_ctx, h.exchange_type) {
            (Some(ctx), _) => self.handle_auth_request(sa, now, msg, ctx, spis),
            (None, ExchangeType::CREATE_CHILD_SA) => {
                self.handle_create_child_request(sa, now, msg, spis)
            }
            (None, _) => self.handle_informational_request(sa, now, msg, spis),
        }
    }

    fn handle_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        o: Outstanding,
        spis: &mut dyn SpiAllocator,
    ) {
        match o.kind {
            Request::Auth(a) => self.handle_auth_response(sa, now, msg, a),
            Request::CreateChild(r) => self.handle_create_child_response(sa, now, msg, r, spis),
            Request::RekeyIke(r) => self.handle_rekey_ike_response(sa, now, msg, r),
            Request::Delete(d) => self.handle_delete_response(sa, now, msg, d),
            Request::Liveness | Request::InvalidSpi => self.handle_info_response(sa, now, msg),
        }
    }

    /// Time passed: retransmissions, expiries, liveness checks, scheduled starts.
    pub fn handle_timeout(&mut self, now: Instant, spis: &mut dyn SpiAllocator) {
        self.flush_released(spis);
        let (due_now, later): (Vec<_>, Vec<_>) = self.starts.iter().partition(|(t, _)| *t <= now);
        self.starts = later;
        for (_, idx) in due_now {
            if self.live_sa_for_peer(idx).is_none() {
                // A start that cannot happen (no local address) is reported by
                // `initiate`; here there is no one to report to but the event log.
                let _ = self.start_ike_sa(now, idx);
            }
        }
        // Both maps in id order, as one table of SAs.
        let mut ids: Vec<IkeSaId> = self
            .sas
            .keys()
            .chain(self.initiating.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(isa) = self.initiating.remove(&id) {
                self.initiating_timeout(isa, now);
            } else {
                self.with_sa(id, now, |ep, sa| ep.sa_timeout(sa, now, spis));
            }
        }
        self.pump_all(now);
        self.flush_released(spis);
    }

    fn sa_timeout(&mut self, sa: &mut IkeSa, now: Instant, spis: &mut dyn SpiAllocator) {
        // Retransmission (§2.1).
        if let Some(o) = sa.outstanding.as_mut() {
            if o.deadline <= now && !self.retransmit(sa.id, sa.peer, (sa.local, sa.remote), o, now)
            {
                let Some(o) = sa.outstanding.take() else {
                    return;
                };
                self.give_up(sa, now, o);
                return;
            }
        }
        if due(sa.half_open_deadline, now) {
            self.event(IkeEvent::HalfOpenTimeout {
                ike_sa: sa.id,
                remote: sa.remote,
            });
            sa.dead = true;
            return;
        }
        let established = sa.is_established();
        if due(sa.expiry.hard, now) {
            sa.expiry = Expiry::default();
            if !sa.ike_delete_pending()
                && matches!(sa.state, SaState::Established | SaState::Rekeyed { .. })
            {
                let reason = if established {
                    DeleteReason::Expired
                } else {
                    DeleteReason::Rekeyed
                };
                sa.queue.push_front(Task::DeleteIke { reason });
            }
            return;
        }
        if due(sa.expiry.soft, now) {
            sa.expiry.soft = None;
            if established && !sa.ike_rekey_pending() {
                sa.queue.push_back(Task::RekeyIke { group: None });
            }
        }
        if !established {
            return;
        }
        let mut i = 0;
        while i < sa.children.len() {
            let c = &mut sa.children[i];
            if due(c.expiry.hard, now) {
                let spi = c.inbound_spi;
                self.remove_child(sa, i, Duration::ZERO, DeleteReason::Expired);
                sa.queue.push_front(Task::DeleteChildren {
                    spis: vec![spi],
                    reason: DeleteReason::Expired,
                });
                continue;
            }
            if due(c.expiry.soft, now) {
                c.expiry.soft = None;
                if c.state == ChildState::Installed {
                    let old_inbound = c.inbound_spi;
                    let inbound_spi = spis.allocate_inbound_spi();
                    let pfs = self.config.peers[sa.peer].pfs_group();
                    sa.queue.push_back(Task::RekeyChild {
                        old_inbound,
                        inbound_spi,
                        pfs,
                    });
                }
            }
            i += 1;
        }
        if due(self.dpd_deadline(sa), now) {
            sa.queue.push_back(Task::Liveness);
        }
    }

    /// The timer of request `o` ran out: sends it again byte for byte (§2.1) and returns
    /// true, or returns false when the retransmission schedule is used up.
    fn retransmit<K>(
        &mut self,
        id: IkeSaId,
        peer: usize,
        (local, remote): (SocketAddr, SocketAddr),
        o: &mut Outstanding<K>,
        now: Instant,
    ) -> bool {
        let schedule = self.retransmit_of(peer);
        if o.retransmits >= schedule.tries {
            return false;
        }
        o.retransmits += 1;
        o.deadline = now + schedule.wait(o.retransmits);
        self.out.push_back(Output::Send {
            local,
            remote,
            data: o.bytes.clone(),
        });
        self.event(IkeEvent::MessageSent {
            ike_sa: Some(id),
            local,
            remote,
            exchange: o.exchange,
            message_id: o.message_id,
            response: false,
            retransmit: true,
            payloads: o.summary.clone(),
        });
        true
    }

    /// Time passed for an SA awaiting the IKE_SA_INIT response: retransmission, or the
    /// end of the schedule (§2.4: the peer is considered dead).
    fn initiating_timeout(&mut self, mut isa: InitiatingSa, now: Instant) {
        let o = &mut isa.outstanding;
        if o.deadline > now || self.retransmit(isa.id, isa.peer, (isa.local, isa.remote), o, now) {
            self.initiating.insert(isa.id, isa);
            return;
        }
        let peer = self.config.peers[isa.peer].name.clone();
        self.event(IkeEvent::RetransmitTimeout {
            ike_sa: isa.id,
            peer: peer.clone(),
            exchange: isa.outstanding.exchange,
            message_id: isa.outstanding.message_id,
        });
        self.event(IkeEvent::PeerDead {
            ike_sa: isa.id,
            peer,
        });
        let idx = isa.peer;
        self.kill_initiating(isa, DeleteReason::PeerDead);
        self.restart_if_configured(idx, now);
    }

    /// Ends an IKE SA still awaiting the IKE_SA_INIT response (it owns nothing else).
    pub(crate) fn kill_initiating(&mut self, isa: InitiatingSa, reason: DeleteReason) {
        let peer = self.config.peers[isa.peer].name.clone();
        self.event(IkeEvent::IkeSaDeleted {
            ike_sa: isa.id,
            peer,
            reason,
        });
        self.forget_initiating(isa);
    }

    /// Drops an SA awaiting the IKE_SA_INIT response from the SPI index.
    pub(crate) fn forget_initiating(&mut self, isa: InitiatingSa) {
        if self.by_spi.get(&isa.spi_i) == Some(&isa.id) {
            self.by_spi.remove(&isa.spi_i);
        }
    }

    /// `on_dead = restart`: schedules a new IKE SA with the peer.
    fn restart_if_configured(&mut self, peer: usize, now: Instant) {
        let cfg = &self.config.peers[peer];
        if cfg.on_dead == crate::config::PeerAction::Restart && cfg.remote_addr.is_some() {
            self.starts.push((now, peer));
        }
    }

    /// The retransmission schedule of `o` ran out (§2.4: the peer is considered dead).
    fn give_up(&mut self, sa: &mut IkeSa, now: Instant, o: Outstanding) {
        let peer = self.peer_name(sa);
        if let Request::Delete(d) = &o.kind {
            if d.ike {
                // Our Delete of the IKE SA went unanswered: it is gone anyway.
                self.event(IkeEvent::IkeSaDeleted {
                    ike_sa: sa.id,
                    peer,
                    reason: d.reason,
                });
                sa.dead = true;
                return;
            }
        }
        self.release_request_spi(&o.kind);
        self.event(IkeEvent::RetransmitTimeout {
            ike_sa: sa.id,
            peer: peer.clone(),
            exchange: o.exchange,
            message_id: o.message_id,
        });
        self.event(IkeEvent::PeerDead {
            ike_sa: sa.id,
            peer,
        });
        self.kill_sa(sa, DeleteReason::PeerDead);
        self.restart_if_configured(sa.peer, now);
    }

    /// Initiates an IKE SA (with its first CHILD SA) to `peer`. If an IKE SA with the
    /// peer exists already, returns it, after queuing a CREATE_CHILD_SA if it is
    /// established without any CHILD SA.
    pub fn initiate(
        &mut self,
        now: Instant,
        peer: &str,
        spis: &mut dyn SpiAllocator,
    ) -> Result<IkeSaId, CommandError> {
        self.flush_released(spis);
        let idx = self.peer_index(peer)?;
        if let Some(id) = self.live_sa_for_peer(idx) {
            let needs_child = self.sas.get(&id).is_some_and(|sa| {
                sa.is_established()
                    && sa.children.is_empty()
                    && !sa
                        .queue
                        .iter()
                        .any(|t| matches!(t, Task::CreateChild { .. }))
                    && !matches!(
                        sa.outstanding.as_ref().map(|o| &o.kind),
                        Some(Request::CreateChild(_))
                    )
            });
            if needs_child {
                let spi = spis.allocate_inbound_spi();
                self.with_sa(id, now, |ep, sa| ep.queue_new_child(sa, spi, None));
            }
            return Ok(id);
        }
        let r = self.start_ike_sa(now, idx);
        self.flush_released(spis);
        r
    }

    /// Deletes every IKE SA with `peer` (INFORMATIONAL Delete, §1.4.1) and with it
    /// all their CHILD SAs. IKE SAs still being set up are dropped silently.
    pub fn terminate(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let idx = self.peer_index(peer)?;
        self.starts.retain(|(_, i)| *i != idx);
        let mut ids: Vec<IkeSaId> = self
            .sas
            .values()
            .filter(|sa| sa.peer == idx)
            .map(|sa| sa.id)
            .chain(
                self.initiating
                    .values()
                    .filter(|s| s.peer == idx)
                    .map(|s| s.id),
            )
            .collect();
        if ids.is_empty() {
            return Err(CommandError::NoIkeSa(peer.to_string()));
        }
        ids.sort_unstable();
        for id in ids {
            if let Some(isa) = self.initiating.remove(&id) {
                self.kill_initiating(isa, DeleteReason::Local);
                continue;
            }
            self.with_sa(id, now, |ep, sa| match sa.state {
                SaState::Established | SaState::Rekeyed { .. } => {
                    if !sa.ike_delete_pending() {
                        sa.queue.push_front(Task::DeleteIke {
                            reason: DeleteReason::Local,
                        });
                    }
                }
                SaState::Deleting => {}
                _ => ep.kill_sa(sa, DeleteReason::Local),
            });
        }
        Ok(())
    }

    /// Rekeys the CHILD SA with this SPI (inbound or outbound) with CREATE_CHILD_SA
    /// (§1.3.3). A pair already being rekeyed is left alone.
    pub fn rekey_child(
        &mut self,
        now: Instant,
        child_spi: u32,
        spis: &mut dyn SpiAllocator,
    ) -> Result<(), CommandError> {
        self.flush_released(spis);
        let (id, i) = self
            .find_child(child_spi)
            .ok_or(CommandError::UnknownChild(child_spi))?;
        let sa = &self.sas[&id];
        let c = &sa.children[i];
        let already = c.state != ChildState::Installed
            || sa
                .queue
                .iter()
                .any(|t| matches!(t, Task::RekeyChild { old_inbound, .. } if *old_inbound == c.inbound_spi));
        if already {
            return Ok(());
        }
        let old_inbound = c.inbound_spi;
        let pfs = self.config.peers[sa.peer].pfs_group();
        let inbound_spi = spis.allocate_inbound_spi();
        self.with_sa(id, now, |_, sa| {
            sa.queue.push_back(Task::RekeyChild {
                old_inbound,
                inbound_spi,
                pfs,
            })
        });
        Ok(())
    }

    /// Rekeys the newest established IKE SA with `peer` (§1.3.2, §2.18).
    pub fn rekey_ike(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let id = self.established_sa(peer)?;
        self.with_sa(id, now, |_, sa| {
            if !sa.ike_rekey_pending() {
                sa.queue.push_back(Task::RekeyIke { group: None });
            }
        });
        Ok(())
    }

    /// Deletes the CHILD SA with this SPI (inbound or outbound) with an INFORMATIONAL
    /// Delete (§1.4.1).
    pub fn delete_child(&mut self, now: Instant, child_spi: u32) -> Result<(), CommandError> {
        let (id, i) = self
            .find_child(child_spi)
            .ok_or(CommandError::UnknownChild(child_spi))?;
        self.with_sa(id, now, |_, sa| {
            let spi = sa.children[i].inbound_spi;
            sa.queue.push_back(Task::DeleteChildren {
                spis: vec![spi],
                reason: DeleteReason::Local,
            });
        });
        Ok(())
    }

    /// Sends a liveness check (empty INFORMATIONAL, §1.4) on the newest established IKE
    /// SA with `peer`. No answer after the retransmission schedule → `PeerDead`.
    pub fn send_liveness(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let id = self.established_sa(peer)?;
        self.with_sa(id, now, |_, sa| {
            if !sa.queue.iter().any(|t| matches!(t, Task::Liveness)) {
                sa.queue.push_back(Task::Liveness);
            }
        });
        Ok(())
    }

    /// Invalid-SPI recovery: an ESP packet from `peer` carried `spi`, which is not an
    /// inbound SA of ours. Sends, in a protected INFORMATIONAL over the newest
    /// established IKE SA with that address, Delete(ESP, [spi]) and/or N(INVALID_SPI)
    /// ([`EndpointConfig::invalid_spi_action`], RFC 7296 §1.4.1, §1.5). The peer then
    /// closes the stale pair. Rate limiting is the caller's job.
    ///
    /// [`EndpointConfig::invalid_spi_action`]: crate::EndpointConfig::invalid_spi_action
    pub fn notify_invalid_spi(
        &mut self,
        now: Instant,
        peer: IpAddr,
        spi: u32,
    ) -> Result<(), NoIkeSa> {
        let action = self.config.invalid_spi_action;
        self.notify_invalid_spi_with(now, peer, spi, action)
    }

    /// [`Endpoint::notify_invalid_spi`] with the payloads chosen per call (per-peer
    /// recovery policy) instead of [`EndpointConfig::invalid_spi_action`].
    ///
    /// [`EndpointConfig::invalid_spi_action`]: crate::EndpointConfig::invalid_spi_action
    pub fn notify_invalid_spi_with(
        &mut self,
        now: Instant,
        peer: IpAddr,
        spi: u32,
        action: crate::config::InvalidSpiAction,
    ) -> Result<(), NoIkeSa> {
        let id = self
            .sas
            .values()
            .filter(|sa| sa.is_established() && sa.remote.ip() == peer && !sa.ike_delete_pending())
            .map(|sa| sa.id)
            .max()
            .ok_or(NoIkeSa(peer))?;
        self.with_sa(id, now, |_, sa| {
            let dup = sa
                .queue
                .iter()
                .any(|t| matches!(t, Task::InvalidSpi { spi: s, .. } if *s == spi));
            if !dup {
                sa.queue.push_back(Task::InvalidSpi { spi, action });
            }
        });
        Ok(())
    }

    /// Protected ESP traffic from `peer` arrived at `at` (the datapath knows, the endpoint
    /// does not). RFC 7296 §2.4: a liveness check is only needed when nothing
    /// cryptographically protected — IKE or ESP — came recently, so DPD waits from here.
    pub fn note_protected_traffic(&mut self, peer: &str, at: Instant) {
        let Ok(idx) = self.peer_index(peer) else {
            return;
        };
        for sa in self.sas.values_mut() {
            if sa.peer == idx && sa.is_established() && sa.last_heard < at {
                sa.last_heard = at;
            }
        }
    }

    /// Whether an established IKE SA (not being deleted) exists with the peer at `peer`.
    pub fn has_established_sa(&self, peer: IpAddr) -> bool {
        self.sas
            .values()
            .any(|sa| sa.is_established() && sa.remote.ip() == peer && !sa.ike_delete_pending())
    }

    /// Whether an IKE SA with the peer named `peer` exists or is being set up.
    pub fn has_sa_for_peer(&self, peer: &str) -> bool {
        self.peer_index(peer)
            .is_ok_and(|i| self.live_sa_for_peer(i).is_some())
    }

    /// A snapshot of all IKE SAs and their CHILD SAs.
    pub fn ike_sas(&self, now: Instant) -> Vec<IkeSaInfo> {
        let secs = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now).as_secs_f64());
        let initiating = self.initiating.values().map(|isa| {
            let cfg = &self.config.peers[isa.peer];
            IkeSaInfo {
                id: isa.id,
                peer: cfg.name.clone(),
                role: Role::Initiator,
                state: crate::output::IkeSaState::Connecting,
                successor: None,
                spi_i: isa.spi_i,
                spi_r: 0,
                local: isa.local,
                remote: isa.remote,
                local_id: cfg.local_id.to_string(),
                remote_id: None,
                suite: None,
                nat: crate::output::NatInfo::default(),
                age_secs: now.saturating_duration_since(isa.created).as_secs_f64(),
                rekey_in_secs: None,
                expire_in_secs: None,
                // Message ID 0 is the IKE_SA_INIT request; IKE_AUTH will be 1 (§2.2).
                next_message_id: 1,
                peer_next_message_id: 0,
                outstanding_request: Some(isa.outstanding.message_id),
                queued_requests: 0,
                children: Vec::new(),
            }
        });
        let mut all: Vec<IkeSaInfo> = self
            .sas
            .values()
            .map(|sa| {
                let cfg = &self.config.peers[sa.peer];
                IkeSaInfo {
                    id: sa.id,
                    peer: cfg.name.clone(),
                    role: sa.role,
                    state: sa.public_state(),
                    successor: match sa.state {
                        SaState::Rekeyed { successor } => Some(successor),
                        _ => None,
                    },
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    local: sa.local,
                    remote: sa.remote,
                    local_id: cfg.local_id.to_string(),
                    remote_id: sa.remote_id.as_ref().map(Identity::to_string),
                    suite: Some(ike_suite_name(&sa.keys.suite())),
                    nat: sa.nat,
                    age_secs: now.saturating_duration_since(sa.created).as_secs_f64(),
                    rekey_in_secs: secs(sa.expiry.soft),
                    expire_in_secs: secs(sa.expiry.hard),
                    next_message_id: sa.next_msg_id,
                    peer_next_message_id: sa.peer_next_msg_id,
                    outstanding_request: sa.outstanding.as_ref().map(|o| o.message_id),
                    queued_requests: sa.queue.len(),
                    children: sa
                        .children
                        .iter()
                        .map(|c| ChildSaInfo {
                            inbound_spi: c.inbound_spi,
                            outbound_spi: c.outbound_spi,
                            suite: esp_suite_name(&c.suite),
                            mode: c.mode,
                            state: c.public_state(),
                            outbound_active: c.outbound_active,
                            local_ts: c.local_ts.iter().map(ts_to_string).collect(),
                            remote_ts: c.remote_ts.iter().map(ts_to_string).collect(),
                            age_secs: now.saturating_duration_since(c.created).as_secs_f64(),
                            rekey_in_secs: secs(c.expiry.soft),
                            expire_in_secs: secs(c.expiry.hard),
                        })
                        .collect(),
                }
            })
            .chain(initiating)
            .collect();
        all.sort_by_key(|i| i.id);
        all
    }

    // ----- internals shared by the exchanges -----

    pub(crate) fn peer_index(&self, name: &str) -> Result<usize, CommandError> {
        self.config
            .peers
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| CommandError::UnknownPeer(name.to_string()))
    }

    /// The newest IKE SA with this peer that is not on its way out.
    pub(crate) fn live_sa_for_peer(&self, idx: usize) -> Option<IkeSaId> {
        self.sas
            .values()
            .filter(|sa| {
                sa.peer == idx
                    && !matches!(sa.state, SaState::Rekeyed { .. } | SaState::Deleting)
                    && !sa.ike_delete_pending()
            })
            .map(|sa| sa.id)
            .chain(
                self.initiating
                    .values()
                    .filter(|s| s.peer == idx)
                    .map(|s| s.id),
            )
            .max()
    }

    fn established_sa(&self, peer: &str) -> Result<IkeSaId, CommandError> {
        let idx = self.peer_index(peer)?;
        self.sas
            .values()
            .filter(|sa| sa.peer == idx && sa.is_established() && !sa.ike_delete_pending())
            .map(|sa| sa.id)
            .max()
            .ok_or_else(|| CommandError::NoIkeSa(peer.to_string()))
    }

    fn find_child(&self, spi: u32) -> Option<(IkeSaId, usize)> {
        let live = |sa: &&IkeSa| sa.is_established();
        self.sas
            .values()
            .filter(live)
            .find_map(|sa| sa.child_by_inbound(spi).map(|i| (sa.id, i)))
            .or_else(|| {
                self.sas
                    .values()
                    .filter(live)
                    .find_map(|sa| sa.child_by_outbound(spi).map(|i| (sa.id, i)))
            })
    }

    /// Runs `f` on the SA taken out of the map (so `f` may touch other SAs), then puts
    /// it back, starts queued requests, or forgets it if it died.
    pub(crate) fn with_sa<R>(
        &mut self,
        id: IkeSaId,
        now: Instant,
        f: impl FnOnce(&mut Self, &mut IkeSa) -> R,
    ) -> Option<R> {
        let mut sa = self.sas.remove(&id)?;
        let r = f(self, &mut sa);
        self.finish(sa, now);
        Some(r)
    }

    pub(crate) fn finish(&mut self, mut sa: IkeSa, now: Instant) {
        if !sa.dead {
            self.pump(&mut sa, now);
        }
        if sa.dead {
            self.forget(sa);
        } else {
            self.sas.insert(sa.id, sa);
        }
    }

    /// Drops a dead SA from the indexes and hands back SPIs reserved for its requests.
    pub(crate) fn forget(&mut self, sa: IkeSa) {
        if self.by_spi.get(&sa.local_spi()) == Some(&sa.id) {
            self.by_spi.remove(&sa.local_spi());
        }
        if let Some(k) = sa.init_key {
            if self.init_index.get(&k) == Some(&sa.id) {
                self.init_index.remove(&k);
            }
        }
        if let Some(o) = &sa.outstanding {
            self.release_request_spi(&o.kind);
        }
        for t in &sa.queue {
            if let Some(s) = t.reserved_spi() {
                self.released.push(s);
            }
        }
    }

    pub(crate) fn release_request_spi(&mut self, r: &Request) {
        match r {
            Request::Auth(a) => self.released.push(a.child.inbound_spi),
            Request::CreateChild(c) => self.released.push(c.proposal.inbound_spi),
            _ => {}
        }
    }

    fn flush_released(&mut self, spis: &mut dyn SpiAllocator) {
        for s in self.released.drain(..) {
            spis.release_inbound_spi(s);
        }
    }

    /// Starts queued requests while the window is free (§2.3, window size 1).
    fn pump(&mut self, sa: &mut IkeSa, now: Instant) {
        while sa.outstanding.is_none() && !sa.dead {
            let rekeyed = matches!(sa.state, SaState::Rekeyed { .. });
            if !sa.is_established() && !rekeyed {
                return;
            }
            let Some(task) = sa.queue.pop_front() else {
                return;
            };
            if rekeyed && !matches!(task, Task::DeleteIke { .. }) {
                // Everything else moved to the new IKE SA with the CHILD SAs.
                if let Some(s) = task.reserved_spi() {
                    self.released.push(s);
                }
                continue;
            }
            self.start_task(sa, now, task);
        }
    }

    fn start_task(&mut self, sa: &mut IkeSa, now: Instant, task: Task) {
        match task {
            Task::CreateChild {
                inbound_spi,
                local_ts,
                remote_ts,
                mode,
                pfs,
            } => self.start_create_child(sa, now, inbound_spi, local_ts, remote_ts, mode, pfs),
            Task::RekeyChild {
                old_inbound,
                inbound_spi,
                pfs,
            } => self.start_rekey_child(sa, now, old_inbound, inbound_spi, pfs),
            Task::RekeyIke { group } => self.start_rekey_ike(sa, now, group),
            Task::DeleteChildren { spis, reason } => {
                self.start_delete_children(sa, now, spis, reason)
            }
            Task::DeleteIke { reason } => self.start_delete_ike(sa, now, reason),
            Task::Liveness => self.start_liveness(sa, now),
            Task::InvalidSpi { spi, action } => self.start_invalid_spi(sa, now, spi, action),
        }
    }

    pub(crate) fn queue_new_child(
        &mut self,
        sa: &mut IkeSa,
        inbound_spi: u32,
        like: Option<&Child>,
    ) {
        let (local_ts, remote_ts, mode) = match like {
            Some(c) => (c.local_ts.clone(), c.remote_ts.clone(), c.mode),
            None => {
                let (l, r) = self.policy_ts(sa);
                (l, r, self.config.peers[sa.peer].mode)
            }
        };
        let pfs = self.config.peers[sa.peer].pfs_group();
        sa.queue.push_back(Task::CreateChild {
            inbound_spi,
            local_ts,
            remote_ts,
            mode,
            pfs,
        });
    }

    /// Our configured selectors, host selectors of the IKE addresses when empty.
    pub(crate) fn policy_ts(&self, sa: &IkeSa) -> (Vec<TrafficSelector>, Vec<TrafficSelector>) {
        let cfg = &self.config.peers[sa.peer];
        let local = if cfg.local_ts.is_empty() {
            vec![host_selector(sa.local.ip())]
        } else {
            cfg.local_ts.clone()
        };
        let remote = if cfg.remote_ts.is_empty() {
            vec![host_selector(sa.remote.ip())]
        } else {
            cfg.remote_ts.clone()
        };
        (local, remote)
    }

    pub(crate) fn event(&mut self, e: IkeEvent) {
        self.out.push_back(Output::Event(e));
    }

    pub(crate) fn dropped(&mut self, local: SocketAddr, remote: SocketAddr, reason: DropReason) {
        self.event(IkeEvent::MessageDropped {
            local,
            remote,
            reason,
        });
    }

    pub(crate) fn peer_name(&self, sa: &IkeSa) -> String {
        self.config.peers[sa.peer].name.clone()
    }

    pub(crate) fn next_sa_id(&mut self) -> IkeSaId {
        let id = IkeSaId(self.next_id);
        self.next_id += 1;
        id
    }

    /// RFC 7296 §1.5: an unprotected one-way N(INVALID_SPI) to the source of an ESP
    /// packet with an unknown SPI when there is no IKE SA with it. It is not part of any
    /// exchange (no retransmission, no IKE SA state): a fresh random initiator SPI, zero
    /// responder SPI, Message ID 0, the SPI as Notification Data (§3.10.1). The receiver
    /// may take it only as a hint (§2.21.4), so the caller rate-limits it.
    pub fn send_invalid_spi_hint(&mut self, local: SocketAddr, remote: SocketAddr, spi: u32) {
        let header = IkeHeader {
            spi_i: self.fresh_ike_spi(),
            spi_r: 0,
            exchange_type: ExchangeType::INFORMATIONAL,
            flags: crate::header::Flags::INITIATOR,
            message_id: 0,
        };
        let mut msg = Message::new(header);
        msg.payloads.push(Payload::Notify(Notify::new(
            NotifyType::INVALID_SPI,
            spi.to_be_bytes().to_vec(),
        )));
        self.send_plain(None, local, remote, &msg);
    }

    /// A random IKE SPI, never zero (§3.1) and unique among ours.
    pub(crate) fn fresh_ike_spi(&mut self) -> u64 {
        loop {
            let s = self.rng.next_u64();
            if s != 0 && !self.by_spi.contains_key(&s) {
                return s;
            }
        }
    }

    /// When to try a failed rekey again: `rekey_retry` plus up to half of it at random,
    /// so two peers that collided do not collide again at the same instant.
    pub(crate) fn retry_at(&mut self, now: Instant) -> Instant {
        let base = self.config.rekey_retry;
        let extra = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = if extra == 0 {
            0
        } else {
            rand::Rng::gen_range(&mut self.rng, 0..=extra)
        };
        now + base + Duration::from_millis(jitter)
    }

    /// A 32-octet nonce: at least half the PRF key size and ≥ 128 bits (§2.10).
    pub(crate) fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        self.rng.fill_bytes(&mut n);
        n
    }

    /// Sends an unprotected message (IKE_SA_INIT) and returns its bytes.
    pub(crate) fn send_plain(
        &mut self,
        ike_sa: Option<IkeSaId>,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &Message,
    ) -> Vec<u8> {
        let data = msg.emit();
        self.out.push_back(Output::Send {
            local,
            remote,
            data: data.clone(),
        });
        self.event(IkeEvent::MessageSent {
            ike_sa,
            local,
            remote,
            exchange: msg.header.exchange_type,
            message_id: msg.header.message_id,
            response: msg.header.flags.is_response(),
            retransmit: false,
            payloads: summarize(&msg.payloads, false),
        });
        data
    }

    fn seal(&mut self, sa: &IkeSa, header: &IkeHeader, payloads: &[Payload]) -> Option<Vec<u8>> {
        sa.keys
            .sk_cipher(sa.role)
            .and_then(|c| c.seal_random(header, payloads, &mut self.rng))
            .ok()
    }

    /// Sends a protected request; it becomes the outstanding one (window size 1).
    pub(crate) fn send_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        kind: Request,
    ) {
        let message_id = sa.next_msg_id;
        let header = sa.header(exchange, message_id, false);
        let Some(bytes) = self.seal(sa, &header, &payloads) else {
            // Only a local bug (a field too wide) gets here; nothing to send.
            self.release_request_spi(&kind);
            return;
        };
        sa.next_msg_id = sa.next_msg_id.wrapping_add(1);
        let summary = summarize(&payloads, true);
        self.emit_first_send(sa, exchange, message_id, false, &bytes, &summary);
        sa.outstanding = Some(Outstanding {
            message_id,
            exchange,
            bytes,
            retransmits: 0,
            deadline: now + self.retransmit_of(sa.peer).wait(0),
            kind,
            summary,
        });
    }

    /// Queues the first transmission of a protected message and its log event (both the
    /// request and the response paths; retransmissions go through their own path).
    fn emit_first_send(
        &mut self,
        sa: &IkeSa,
        exchange: ExchangeType,
        message_id: u32,
        response: bool,
        bytes: &[u8],
        summary: &str,
    ) {
        self.out.push_back(Output::Send {
            local: sa.local,
            remote: sa.remote,
            data: bytes.to_vec(),
        });
        self.event(IkeEvent::MessageSent {
            ike_sa: Some(sa.id),
            local: sa.local,
            remote: sa.remote,
            exchange,
            message_id,
            response,
            retransmit: false,
            payloads: summary.to_string(),
        });
    }

    /// Sends a protected response and caches it for retransmitted requests (§2.1).
    pub(crate) fn send_response(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        message_id: u32,
        payloads: Vec<Payload>,
    ) {
        let header = sa.header(exchange, message_id, true);
        let Some(bytes) = self.seal(sa, &header, &payloads) else {
            return;
        };
        let summary = summarize(&payloads, true);
        self.emit_first_send(sa, exchange, message_id, true, &bytes, &summary);
        sa.last_response = Some(crate::ike_sa::CachedResponse {
            message_id,
            exchange,
            bytes,
            summary,
        });
    }

    /// Records a new CHILD SA pair and hands it to the caller.
    pub(crate) fn install_child(&mut self, sa: &mut IkeSa, now: Instant, c: NewChild) {
        let cfg = &self.config.peers[sa.peer];
        let lifetime = cfg.child_lifetime;
        let expiry = Expiry::schedule(lifetime.as_ref(), now, &mut self.rng);
        let child = Child {
            inbound_spi: c.inbound.spi,
            outbound_spi: c.outbound.spi,
            suite: c.suite,
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            mode: c.mode,
            created: now,
            expiry,
            state: ChildState::Installed,
            outbound_active: c.outbound_active,
            peer_rekey: None,
        };
        sa.children.push(child);
        let out = ChildSa {
            peer: cfg.name.clone(),
            ike_sa: sa.id,
            local_addr: sa.local,
            remote_addr: sa.remote,
            inbound: c.inbound,
            outbound: c.outbound,
            suite: c.suite,
            local_ts: c.local_ts,
            remote_ts: c.remote_ts,
            mode: c.mode,
            nat: sa.nat,
            rekey_of: c.rekey_of,
            outbound_active: c.outbound_active,
            lifetime: lifetime.map(|l| l.hard),
        };
        self.out.push_back(Output::InstallChild(Box::new(out)));
    }

    /// Removes CHILD SA `i` from `sa` and tells the caller.
    pub(crate) fn remove_child(
        &mut self,
        sa: &mut IkeSa,
        i: usize,
        linger: Duration,
        reason: DeleteReason,
    ) -> Child {
        let c = sa.children.remove(i);
        let peer = self.peer_name(sa);
        self.out.push_back(Output::RemoveChild {
            peer: peer.clone(),
            ike_sa: sa.id,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            linger,
        });
        self.event(IkeEvent::ChildDeleted {
            ike_sa: sa.id,
            peer,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            reason,
        });
        c
    }

    pub(crate) fn activate_outbound(&mut self, sa: &mut IkeSa, i: usize) {
        let c = &mut sa.children[i];
        if c.outbound_active {
            return;
        }
        c.outbound_active = true;
        let (inbound_spi, outbound_spi) = (c.inbound_spi, c.outbound_spi);
        let peer = self.peer_name(sa);
        self.out.push_back(Output::ActivateOutbound {
            peer,
            ike_sa: sa.id,
            inbound_spi,
            outbound_spi,
        });
    }

    /// Ends an IKE SA without a message: its CHILD SAs are removed at once.
    pub(crate) fn kill_sa(&mut self, sa: &mut IkeSa, reason: DeleteReason) {
        while !sa.children.is_empty() {
            self.remove_child(sa, 0, Duration::ZERO, reason);
        }
        if let Some(o) = sa.outstanding.take() {
            self.release_request_spi(&o.kind);
        }
        let peer = self.peer_name(sa);
        self.event(IkeEvent::IkeSaDeleted {
            ike_sa: sa.id,
            peer,
            reason,
        });
        sa.dead = true;
    }

    /// Builds both SaParams of a pair from its KEYMAT (§2.17). `exchange_initiator`:
    /// we started the exchange that made it (so our inbound traffic is r→i).
    pub(crate) fn child_params(
        keys: &ChildSaKeys,
        exchange_initiator: bool,
        our_spi: u32,
        their_spi: u32,
    ) -> Result<(SaParams, SaParams), CryptoError> {
        let (in_dir, out_dir) = if exchange_initiator {
            (
                Direction::ResponderToInitiator,
                Direction::InitiatorToResponder,
            )
        } else {
            (
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            )
        };
        Ok((
            keys.sa_params(in_dir, our_spi)?,
            keys.sa_params(out_dir, their_spi)?,
        ))
    }

    /// A message for an SA we do not have (or an unprotected one on an SA we have):
    /// never acted upon (§2.21.4); its notifications are reported.
    fn unknown_spi(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        h: &IkeHeader,
        otherwise: DropReason,
    ) {
        if h.exchange_type == ExchangeType::INFORMATIONAL {
            if let Ok(m) = Message::parse(data) {
                let notifies: Vec<Notify> = m.notifies().cloned().collect();
                if !notifies.is_empty() {
                    for n in notifies {
                        self.event(IkeEvent::UnprotectedNotify {
                            local,
                            remote,
                            notify: n.notify_type,
                            spi_i: h.spi_i,
                            spi_r: h.spi_r,
                            data: n.data,
                        });
                    }
                    return;
                }
            }
        }
        self.dropped(local, remote, otherwise);
    }
}

/// Whether the SPIs and I flag of `h` fit an IKE SA of ours with this role and SPIs
/// (`ours`: the SPI slot the I flag says is ours, §3.1).
fn spis_consistent(role: Role, local_spi: u64, remote_spi: u64, ours: u64, h: &IkeHeader) -> bool {
    let sender_is_initiator = role == Role::Responder;
    let theirs = if h.flags.is_initiator() {
        h.spi_i
    } else {
        h.spi_r
    };
    local_spi == ours && remote_spi == theirs && h.flags.is_initiator() == sender_is_initiator
}

/// Payload types in strongSwan's log notation; `protected` wraps them in `SK{...}`.
pub(crate) fn summarize(payloads: &[Payload], protected: bool) -> String {
    let words: Vec<String> = payloads
        .iter()
        .map(|p| match p {
            Payload::Sa(_) => "SA".into(),
            Payload::Ke(_) => "KE".into(),
            Payload::IdI(_) => "IDi".into(),
            Payload::IdR(_) => "IDr".into(),
            Payload::Cert(_) => "CERT".into(),
            Payload::CertReq(_) => "CERTREQ".into(),
            Payload::Auth(_) => "AUTH".into(),
            Payload::Nonce(_) => "No".into(),
            Payload::Notify(n) => format!("N({})", n.notify_type),
            Payload::Delete(d) => match d.protocol_id {
                ProtocolId::IKE => "D(IKE)".into(),
                _ => format!(
                    "D({}:{})",
                    d.protocol_id,
                    d.spis
                        .iter()
                        .map(|s| format!("{s:08x}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            },
            Payload::VendorId(_) => "V".into(),
            Payload::TsI(_) => "TSi".into(),
            Payload::TsR(_) => "TSr".into(),
            Payload::Encrypted(_) => "SK".into(),
            Payload::Cp(_) => "CP".into(),
            Payload::Eap(_) => "EAP".into(),
            Payload::Unknown { payload_type, .. } => format!("UNKNOWN({})", payload_type.0),
        })
        .collect();
    if protected {
        format!("SK{{{}}}", words.join(" "))
    } else {
        words.join(" ")
    }
}
