//! IKE_SA_INIT (RFC 7296 §1.2): negotiation of the IKE SA's algorithms, the
//! Diffie-Hellman exchange, nonces, NAT detection (§2.23), the COOKIE defence (§2.6) and
//! the INVALID_KE_PAYLOAD retry (§1.2, §2.7).
//!
//! ```text
//! Initiator                         Responder
//! HDR, SA, KEi, Ni,
//!   N(NAT_DETECTION_SOURCE_IP),
//!   N(NAT_DETECTION_DESTINATION_IP)  -->
//!                                   <--  HDR, SA, KEr, Nr, N(NAT_D_S), N(NAT_D_D)
//! ```

use super::{error_notify, ke, nonce, notify, sa_payload};
use crate::codes::ExchangeType;
use crate::crypto::{nat_detection_hash, IkeSaKeys, KeyExchange, Role};
use crate::endpoint::{summarize, CommandError, Endpoint, SpiAllocator};
use crate::header::{Flags, IkeHeader};
use crate::ike_sa::{
    AuthContext, AwaitInitResponse, CachedResponse, IkeSa, InitiatingSa, Outstanding, SaState,
};
use crate::message::Message;
use crate::notify::NotifyType;
use crate::output::{DropReason, IkeEvent, IkeSaId, NatInfo};
use crate::payload::{Notify, Payload};
use crate::proposal::{accept_ike_reply, offer, select_ike};
use crate::sa::SaPayload;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The IKE port that triggers NAT-T port floating (RFC 7296 §2.23).
const IKE_PORT: u16 = 500;

fn nat_notify(t: NotifyType, spi_i: u64, spi_r: u64, addr: SocketAddr) -> Payload {
    Payload::Notify(Notify::new(
        t,
        nat_detection_hash(spi_i, spi_r, addr.ip(), addr.port()).to_vec(),
    ))
}

/// RFC 7296 §2.23: compare the peer's NAT detection hashes with what we see. The hashes
/// use the SPIs of the message that carries them (SPIr = 0 in the first request).
fn nat_check(
    payloads: &[Payload],
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
) -> NatInfo {
    let of = |t| {
        payloads.iter().filter_map(move |p| match p {
            Payload::Notify(n) if n.notify_type == t => Some(n.data.as_slice()),
            _ => None,
        })
    };
    let mut src = of(NotifyType::NAT_DETECTION_SOURCE_IP).peekable();
    let mut dst = of(NotifyType::NAT_DETECTION_DESTINATION_IP).peekable();
    if src.peek().is_none() && dst.peek().is_none() {
        return NatInfo::default();
    }
    let want_src = nat_detection_hash(spi_i, spi_r, remote.ip(), remote.port());
    let want_dst = nat_detection_hash(spi_i, spi_r, local.ip(), local.port());
    let has_dst = dst.peek().is_some();
    NatInfo {
        detection: true,
        // Several SOURCE_IP payloads are allowed (multihomed senders): any match will do.
        remote_behind_nat: src.peek().is_some() && !src.any(|d| d == want_src),
        local_behind_nat: has_dst && !dst.any(|d| d == want_dst),
    }
}

impl Endpoint {
    /// Starts a new IKE SA with peer `idx`: sends the IKE_SA_INIT request.
    pub(crate) fn start_ike_sa(
        &mut self,
        now: Instant,
        idx: usize,
    ) -> Result<IkeSaId, CommandError> {
        let cfg = &self.config.peers[idx];
        let name = cfg.name.clone();
        let remote = cfg
            .remote_addr
            .ok_or_else(|| CommandError::NoRemoteAddress(name.clone()))?;
        let local = cfg
            .local_addr
            .ok_or_else(|| CommandError::NoLocalAddress(name.clone()))?;
        // Validated at configuration time: there is an implemented group.
        let group = cfg
            .ike_ke_group()
            .ok_or_else(|| CommandError::NoUsableGroup(name.clone()))?;
        let ke = KeyExchange::generate(group, &mut self.rng)
            .map_err(|_| CommandError::NoUsableGroup(name.clone()))?;
        let ni = self.nonce();
        let spi_i = self.fresh_ike_spi();
        let id = self.next_sa_id();
        let mut isa = InitiatingSa {
            id,
            peer: idx,
            spi_i,
            local,
            remote,
            created: now,
            outstanding: Outstanding {
                message_id: 0,
                exchange: ExchangeType::IKE_SA_INIT,
                bytes: Vec::new(),
                retransmits: 0,
                deadline: now,
                kind: AwaitInitResponse {
                    ke,
                    ni,
                    cookie: None,
                    restarts: 0,
                },
                summary: String::new(),
            },
        };
        self.by_spi.insert(spi_i, id);
        self.event(IkeEvent::SaInitSent {
            ike_sa: id,
            peer: name,
            remote,
        });
        self.send_init_request(&mut isa, now);
        self.initiating.insert(id, isa);
        Ok(id)
    }

    /// Sends the IKE_SA_INIT request of `isa` (again from scratch after a COOKIE or
    /// INVALID_KE_PAYLOAD answer): new retransmission schedule, same SPIi and Ni (the
    /// cookie covers them, §2.6).
    fn send_init_request(&mut self, isa: &mut InitiatingSa, now: Instant) {
        let msg = self.init_request_message(isa);
        let o = &mut isa.outstanding;
        o.bytes = self.send_plain(Some(isa.id), isa.local, isa.remote, &msg);
        o.summary = summarize(&msg.payloads, false);
        o.retransmits = 0;
        o.deadline = now + self.retransmit_of(isa.peer).wait(0);
    }

    /// HDR, [N(COOKIE),] SA, KEi, Ni, N(NAT_D_S), N(NAT_D_D) — §1.2, §2.6 (the cookie
    /// goes first), §2.23.
    fn init_request_message(&self, sa: &InitiatingSa) -> Message {
        let req = &sa.outstanding.kind;
        let cfg = &self.config.peers[sa.peer];
        let mut payloads = Vec::with_capacity(6);
        if let Some(c) = &req.cookie {
            payloads.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.clone())));
        }
        payloads.push(Payload::Sa(offer(&cfg.ike_proposals, &[])));
        payloads.push(Payload::Ke(req.ke.ke_payload()));
        payloads.push(Payload::Nonce(req.ni.clone()));
        payloads.push(nat_notify(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            sa.spi_i,
            0,
            sa.local,
        ));
        payloads.push(nat_notify(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            sa.spi_i,
            0,
            sa.remote,
        ));
        Message {
            header: IkeHeader {
                spi_i: sa.spi_i,
                spi_r: 0,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::INITIATOR,
                message_id: 0,
            },
            payloads,
        }
    }

    /// The (changed) IKE_SA_INIT request goes out again; the SA keeps waiting.
    fn restart_init(&mut self, mut isa: InitiatingSa, now: Instant) {
        self.send_init_request(&mut isa, now);
        self.initiating.insert(isa.id, isa);
    }

    /// The response does not complete the exchange: keep waiting for a proper one.
    fn keep_waiting(&mut self, isa: InitiatingSa) {
        self.initiating.insert(isa.id, isa);
    }

    fn init_failed(&mut self, isa: InitiatingSa, notify: Option<NotifyType>, reason: &str) {
        let peer = self.config.peers[isa.peer].name.clone();
        self.event(IkeEvent::SaInitFailed {
            ike_sa: isa.id,
            peer,
            notify,
            reason: reason.to_string(),
        });
        self.forget_initiating(isa);
    }

    /// Initiator: the IKE_SA_INIT response (or an error / COOKIE answer).
    pub(crate) fn handle_init_response(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        h: &IkeHeader,
        spis: &mut dyn SpiAllocator,
    ) {
        let Some(&id) = self.by_spi.get(&h.spi_i) else {
            return self.dropped(local, remote, DropReason::UnknownSpi);
        };
        // Only an SA of the initiating kind awaits this response (a keyed one is past
        // it), and it always does.
        if h.message_id != 0 || !self.initiating.contains_key(&id) {
            return self.dropped(local, remote, DropReason::UnexpectedResponse);
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => return self.dropped(local, remote, DropReason::Malformed(e)),
        };
        if let Some(isa) = self.initiating.remove(&id) {
            self.init_response(isa, now, local, remote, data, msg, spis);
        }
    }

    /// Consumes the waiting SA: it comes back waiting (restart, unusable answer), ends,
    /// or becomes a keyed [`IkeSa`] that sends IKE_AUTH.
    #[allow(clippy::too_many_arguments)]
    fn init_response(
        &mut self,
        mut isa: InitiatingSa,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
        spis: &mut dyn SpiAllocator,
    ) {
        self.event(IkeEvent::MessageReceived {
            ike_sa: Some(isa.id),
            local,
            remote,
            exchange: ExchangeType::IKE_SA_INIT,
            message_id: 0,
            response: true,
            payloads: summarize(&msg.payloads, false),
        });
        let p = &msg.payloads;
        let max = self.config.max_init_restarts;
        let peer = self.config.peers[isa.peer].name.clone();
        let id = isa.id;
        // §2.6: retry with the cookie as the first payload, everything else unchanged.
        if let Some(c) = notify(p, NotifyType::COOKIE) {
            let req = &mut isa.outstanding.kind;
            if c.data.is_empty() || c.data.len() > 64 || req.restarts >= max {
                return self.init_failed(
                    isa,
                    Some(NotifyType::COOKIE),
                    "cookie loop or bad cookie",
                );
            }
            req.cookie = Some(c.data.clone());
            req.restarts += 1;
            self.event(IkeEvent::CookieRequested { ike_sa: id, peer });
            return self.restart_init(isa, now);
        }
        // §1.2: the responder wants another group; retry if we offered and implement it.
        if let Some(n) = notify(p, NotifyType::INVALID_KE_PAYLOAD) {
            let Some(group) = n.wanted_group() else {
                return self.init_failed(isa, Some(n.notify_type), "malformed INVALID_KE_PAYLOAD");
            };
            let offered = self.config.peers[isa.peer]
                .ike_proposals
                .iter()
                .any(|s| s.dh.contains(&group));
            let req = &isa.outstanding.kind;
            let retry =
                group.is_supported() && offered && group != req.ke.group() && req.restarts < max;
            self.event(IkeEvent::InvalidKeRequested {
                ike_sa: id,
                peer,
                group,
                retry,
            });
            if !retry {
                return self.init_failed(
                    isa,
                    Some(NotifyType::INVALID_KE_PAYLOAD),
                    &format!("responder wants DH group {group}, which we cannot use"),
                );
            }
            let Ok(ke) = KeyExchange::generate(group, &mut self.rng) else {
                return self.init_failed(
                    isa,
                    Some(NotifyType::INVALID_KE_PAYLOAD),
                    "key generation",
                );
            };
            let req = &mut isa.outstanding.kind;
            req.ke = ke;
            req.restarts += 1;
            return self.restart_init(isa, now);
        }
        if let Some(n) = error_notify(p) {
            let t = n.notify_type;
            if t == NotifyType::NO_PROPOSAL_CHOSEN {
                self.event(IkeEvent::NoProposalChosen {
                    ike_sa: Some(id),
                    peer: Some(peer),
                    exchange: ExchangeType::IKE_SA_INIT,
                    by_us: false,
                });
            }
            return self.init_failed(isa, Some(t), "responder refused IKE_SA_INIT");
        }
        let (Some(sa_p), Some(ke_p), Some(nr)) = (sa_payload(p), ke(p), nonce(p)) else {
            // Unauthenticated and incomplete: keep waiting for a proper answer.
            self.keep_waiting(isa);
            return self.dropped(local, remote, DropReason::MissingPayload("SA, KE or Nonce"));
        };
        if msg.header.spi_r == 0 {
            self.keep_waiting(isa);
            return self.dropped(local, remote, DropReason::SpiMismatch);
        }
        let chosen = match accept_ike_reply(&self.config.peers[isa.peer].ike_proposals, sa_p) {
            Ok(c) => c,
            Err(_) => {
                self.event(IkeEvent::NoProposalChosen {
                    ike_sa: Some(id),
                    peer: Some(peer),
                    exchange: ExchangeType::IKE_SA_INIT,
                    by_us: true,
                });
                return self.init_failed(isa, None, "responder chose a proposal we did not offer");
            }
        };
        let req = &isa.outstanding.kind;
        if ke_p.group != chosen.suite.dh || ke_p.group != req.ke.group() {
            return self.init_failed(isa, None, "KE payload group differs from the chosen one");
        }
        let g = match req.ke.shared_secret_with(ke_p) {
            Ok(g) => g,
            Err(e) => return self.init_failed(isa, None, &e.to_string()),
        };
        let spi_r = msg.header.spi_r;
        let keys = match IkeSaKeys::from_shared_secret(
            chosen.suite,
            g.as_bytes(),
            &req.ni,
            nr,
            isa.spi_i,
            spi_r,
        ) {
            Ok(k) => k,
            Err(e) => return self.init_failed(isa, None, &e.to_string()),
        };
        // The transition: the waiting SA is consumed and a keyed one takes its place
        // (same id, SPIi and creation time); its IKE_AUTH request goes out below.
        let InitiatingSa {
            id,
            peer: idx,
            spi_i,
            local: sa_local,
            remote: sa_remote,
            created,
            outstanding,
        } = isa;
        let mut sa = IkeSa::new(
            id,
            idx,
            Role::Initiator,
            (spi_i, spi_r),
            (sa_local, sa_remote),
            SaState::AuthSent,
            keys,
            created,
        );
        sa.next_msg_id = 1;
        self.export_ike_keys(&sa, None);
        sa.nat = nat_check(p, spi_i, spi_r, local, remote);
        sa.last_heard = now;
        // §2.23: with a NAT in the path, everything after IKE_SA_INIT goes over the NAT-T
        // port (and ESP is UDP-encapsulated there).
        let port = self.config.nat_t_port;
        if sa.nat.any() && sa.remote.port() == IKE_PORT && port != IKE_PORT {
            sa.remote.set_port(port);
            sa.local.set_port(port);
            self.event(IkeEvent::PeerAddressChanged {
                ike_sa: sa.id,
                peer,
                local: sa.local,
                remote: sa.remote,
            });
        }
        let ctx = AuthContext {
            msg1: outstanding.bytes,
            msg2: data.to_vec(),
            ni: outstanding.kind.ni,
            nr: nr.to_vec(),
        };
        self.send_auth_request(&mut sa, now, ctx, spis);
        self.finish(sa, now);
    }

    /// The peer configurations an IKE_SA_INIT from `ip` may belong to: those with that
    /// remote address, else the dynamic ones.
    fn candidates_for(&self, ip: IpAddr) -> Vec<usize> {
        let by_addr: Vec<usize> = self
            .config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.remote_addr.is_some_and(|a| a.ip() == ip))
            .map(|(i, _)| i)
            .collect();
        if !by_addr.is_empty() {
            return by_addr;
        }
        self.config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_dynamic())
            .map(|(i, _)| i)
            .collect()
    }

    /// A stateless IKE_SA_INIT answer carrying one notification (SPIr = 0).
    fn init_error(&mut self, local: SocketAddr, remote: SocketAddr, spi_i: u64, n: Notify) {
        let msg = Message {
            header: IkeHeader {
                spi_i,
                spi_r: 0,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::RESPONSE,
                message_id: 0,
            },
            payloads: vec![Payload::Notify(n)],
        };
        self.send_plain(None, local, remote, &msg);
    }

    /// Responder: an IKE_SA_INIT request naming an unknown payload type with the critical
    /// bit set. RFC 7296 §2.5: the whole message is rejected and the response carries
    /// N(UNSUPPORTED_CRITICAL_PAYLOAD) with the one-octet payload type as data. It is
    /// answered like the other stateless IKE_SA_INIT errors (INVALID_KE_PAYLOAD,
    /// NO_PROPOSAL_CHOSEN): unprotected, SPIr = 0, no IKE SA or half-open state, at most
    /// one answer per request, and only to a source we have a peer configuration for. It
    /// is also never larger than the request, so it cannot amplify a spoofed flood (a
    /// real IKE_SA_INIT request, with SA, KE and Nonce, is always larger). The drop is
    /// still reported, so it is counted with the other malformed messages.
    fn reject_critical(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        e: crate::error::ParseError,
    ) {
        let answer = match (IkeHeader::decode(data), e.notify_type()) {
            (Ok(d), Some(t)) if d.header.message_id == 0 => {
                Some((d.header.spi_i, Notify::new(t, e.notify_data())))
            }
            _ => None,
        };
        self.dropped(local, remote, DropReason::Malformed(e));
        let Some((spi_i, n)) = answer else {
            return;
        };
        if self.candidates_for(remote.ip()).is_empty() {
            return;
        }
        // Header + Notify (8 octets + data): no amplification.
        if crate::header::HEADER_LEN + 8 + n.data.len() > data.len() {
            return;
        }
        self.init_error(local, remote, spi_i, n);
    }

    /// Responder: an IKE_SA_INIT request.
    pub(crate) fn handle_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        _spis: &mut dyn SpiAllocator,
    ) {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e @ crate::error::ParseError::UnsupportedCritical { .. }) => {
                return self.reject_critical(local, remote, data, e)
            }
            Err(e) => return self.dropped(local, remote, DropReason::Malformed(e)),
        };
        let h = msg.header;
        if h.message_id != 0 {
            return self.dropped(
                local,
                remote,
                DropReason::OutOfWindow {
                    expected: 0,
                    got: h.message_id,
                },
            );
        }
        // §2.1: a retransmitted request gets the same response, without new state.
        if let Some(&id) = self.init_index.get(&(remote, h.spi_i)) {
            let cached = self.sas.get(&id).and_then(|sa| match sa.state {
                SaState::InitResponded(_) => sa.last_response.clone(),
                _ => None,
            });
            match cached {
                Some(c) if c.message_id == 0 => {
                    self.out.push_back(crate::output::Output::Send {
                        local,
                        remote,
                        data: c.bytes,
                    });
                    self.event(IkeEvent::MessageSent {
                        ike_sa: Some(id),
                        local,
                        remote,
                        exchange: ExchangeType::IKE_SA_INIT,
                        message_id: 0,
                        response: true,
                        retransmit: true,
                        payloads: c.summary,
                    });
                }
                _ => self.dropped(local, remote, DropReason::WrongState),
            }
            return;
        }
        let candidates = self.candidates_for(remote.ip());
        let Some(&idx) = candidates.first() else {
            return self.dropped(local, remote, DropReason::NoPeerConfig);
        };
        self.event(IkeEvent::MessageReceived {
            ike_sa: None,
            local,
            remote,
            exchange: ExchangeType::IKE_SA_INIT,
            message_id: 0,
            response: false,
            payloads: summarize(&msg.payloads, false),
        });
        let p = &msg.payloads;
        let Some(ni) = nonce(p) else {
            return self.dropped(local, remote, DropReason::MissingPayload("Nonce"));
        };
        // §2.6: above the half-open threshold, only requests returning our cookie (as the
        // first payload) create state.
        let half_open = self
            .sas
            .values()
            .filter(|s| matches!(s.state, SaState::InitResponded(_)))
            .count();
        if half_open >= self.config.half_open_limit {
            self.cookies
                .maybe_rotate(now, self.config.cookie_secret_lifetime, &mut self.rng);
            let valid = matches!(p.first(), Some(Payload::Notify(n))
                if n.notify_type == NotifyType::COOKIE
                    && self.cookies.check(&n.data, ni, remote.ip(), h.spi_i));
            if !valid {
                let cookie = self.cookies.make(ni, remote.ip(), h.spi_i);
                self.init_error(
                    local,
                    remote,
                    h.spi_i,
                    Notify::new(NotifyType::COOKIE, cookie),
                );
                self.event(IkeEvent::CookieSent { remote });
                return;
            }
        }
        let (Some(sa_p), Some(ke_p)) = (sa_payload(p), ke(p)) else {
            return self.dropped(local, remote, DropReason::MissingPayload("SA or KE"));
        };
        let name = self.config.peers[idx].name.clone();
        let chosen = match select_ike(&self.config.peers[idx].ike_proposals, sa_p) {
            Ok(c) => c,
            Err(e) => {
                self.init_error(local, remote, h.spi_i, Notify::new(e.notify_type(), vec![]));
                self.event(IkeEvent::NoProposalChosen {
                    ike_sa: None,
                    peer: Some(name),
                    exchange: ExchangeType::IKE_SA_INIT,
                    by_us: true,
                });
                return;
            }
        };
        let group = chosen.suite.dh;
        if ke_p.group != group {
            // §1.2: the KE is for a group we did not choose; name the one we want.
            self.init_error(
                local,
                remote,
                h.spi_i,
                Notify::new(
                    NotifyType::INVALID_KE_PAYLOAD,
                    group.0.to_be_bytes().to_vec(),
                ),
            );
            self.event(IkeEvent::InvalidKeSent { remote, group });
            return;
        }
        let Ok(ke_r) = KeyExchange::generate(group, &mut self.rng) else {
            return self.dropped(
                local,
                remote,
                DropReason::MissingPayload("implemented DH group"),
            );
        };
        let g = match ke_r.shared_secret_with(ke_p) {
            Ok(g) => g,
            Err(e) => {
                let t = e.notify_type().unwrap_or(NotifyType::INVALID_SYNTAX);
                self.init_error(local, remote, h.spi_i, Notify::new(t, vec![]));
                return;
            }
        };
        let nr = self.nonce();
        let spi_r = self.fresh_ike_spi();
        let Ok(keys) =
            IkeSaKeys::from_shared_secret(chosen.suite, g.as_bytes(), ni, &nr, h.spi_i, spi_r)
        else {
            return self.dropped(local, remote, DropReason::MissingPayload("usable suite"));
        };
        let nat = nat_check(p, h.spi_i, 0, local, remote);
        let id = self.next_sa_id();
        let response = Message {
            header: IkeHeader {
                spi_i: h.spi_i,
                spi_r,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::RESPONSE,
                message_id: 0,
            },
            payloads: vec![
                Payload::Sa(SaPayload {
                    proposals: vec![chosen.suite.to_proposal(chosen.proposal_number, &[])],
                }),
                Payload::Ke(ke_r.ke_payload()),
                Payload::Nonce(nr.clone()),
                nat_notify(NotifyType::NAT_DETECTION_SOURCE_IP, h.spi_i, spi_r, local),
                nat_notify(
                    NotifyType::NAT_DETECTION_DESTINATION_IP,
                    h.spi_i,
                    spi_r,
                    remote,
                ),
            ],
        };
        let bytes = self.send_plain(Some(id), local, remote, &response);
        let ctx = AuthContext {
            msg1: data.to_vec(),
            msg2: bytes.clone(),
            ni: ni.to_vec(),
            nr,
        };
        let mut sa = IkeSa::new(
            id,
            idx,
            Role::Responder,
            (h.spi_i, spi_r),
            (local, remote),
            SaState::InitResponded(ctx),
            keys,
            now,
        );
        sa.candidates = candidates;
        self.export_ike_keys(&sa, None);
        sa.nat = nat;
        sa.peer_next_msg_id = 1;
        sa.last_response = Some(CachedResponse {
            message_id: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            bytes,
            summary: summarize(&response.payloads, false),
        });
        sa.half_open_deadline = Some(now + self.config.half_open_timeout);
        sa.init_key = Some((remote, h.spi_i));
        self.by_spi.insert(spi_r, id);
        self.init_index.insert((remote, h.spi_i), id);
        self.sas.insert(id, sa);
        self.event(IkeEvent::SaInitReceived {
            ike_sa: id,
            peer: name,
            remote,
        });
    }
}
