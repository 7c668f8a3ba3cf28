//! IKE_AUTH (RFC 7296 §1.2): identities, PSK authentication (§2.15), the first CHILD SA
//! with traffic selector narrowing (§2.9), INITIAL_CONTACT (§2.4).
//!
//! ```text
//! Initiator                         Responder
//! HDR, SK {IDi, [IDr,] AUTH, [N(INITIAL_CONTACT),]
//!          [N(USE_TRANSPORT_MODE),] SA, TSi, TSr}  -->
//!                                   <--  HDR, SK {IDr, AUTH, [N(USE_TRANSPORT_MODE),]
//!                                                 SA, TSi, TSr}
//! ```
//! A responder that cannot make the CHILD SA still establishes the IKE SA and answers
//! IDr, AUTH and the error notification instead of SA/TSi/TSr (§1.2).

use super::{auth, error_notify, idi, idr, notify};
use crate::codes::{AuthMethod, ExchangeType};
use crate::config::Mode;
use crate::crypto::Role;
use crate::endpoint::{Endpoint, Received, SpiAllocator};
use crate::ike_sa::{AuthContext, AwaitAuthResponse, ChildProposal, IkeSa, Request, SaState};
use crate::notify::NotifyType;
use crate::output::{AuthFailure, DeleteReason, IkeEvent};
use crate::payload::{AuthPayload, Identity, Notify, Payload};
use crate::proposal::{offer, ProposalSpec};
use crate::timer::Expiry;
use crate::ts::TsPayload;
use std::time::Instant;

impl Endpoint {
    /// Initiator: sends IKE_AUTH right after a good IKE_SA_INIT response (`sa` is the
    /// keyed SA that response made, in [`SaState::AuthSent`]).
    pub(crate) fn send_auth_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        ctx: AuthContext,
        spis: &mut dyn SpiAllocator,
    ) {
        let inbound_spi = spis.allocate_inbound_spi();
        let (local_ts, remote_ts) = self.policy_ts(sa);
        // §2.4: INITIAL_CONTACT only when we hold no other IKE SA with this peer.
        let others = self.sas.values().any(|o| {
            o.peer == sa.peer && matches!(o.state, SaState::Established | SaState::Rekeyed { .. })
        });
        let cfg = &self.config.peers[sa.peer];
        let mode = cfg.mode;
        // §1.2: the SA of IKE_AUTH has no KE payload to go with a DH transform.
        let specs: Vec<ProposalSpec> = cfg.esp_proposals.iter().map(|p| p.without_dh()).collect();
        let idi = cfg.local_id.clone();
        let auth_data = sa.keys.psk_auth(
            Role::Initiator,
            cfg.psk.as_bytes(),
            &ctx.msg1,
            &ctx.nr,
            &idi.body(),
        );
        let mut payloads = vec![Payload::IdI(idi)];
        if let Some(r) = &cfg.remote_id {
            payloads.push(Payload::IdR(r.clone()));
        }
        payloads.push(Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: auth_data,
        }));
        if cfg.initial_contact && !others {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::INITIAL_CONTACT,
                vec![],
            )));
        }
        if mode == Mode::Transport {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::USE_TRANSPORT_MODE,
                vec![],
            )));
        }
        payloads.push(Payload::Sa(offer(&specs, &inbound_spi.to_be_bytes())));
        payloads.push(Payload::TsI(TsPayload {
            selectors: local_ts.clone(),
        }));
        payloads.push(Payload::TsR(TsPayload {
            selectors: remote_ts.clone(),
        }));
        self.send_request(
            sa,
            now,
            ExchangeType::IKE_AUTH,
            payloads,
            Request::Auth(AwaitAuthResponse {
                ctx,
                child: ChildProposal {
                    inbound_spi,
                    specs,
                    local_ts,
                    remote_ts,
                    mode,
                },
            }),
        );
    }

    fn auth_succeeded(&mut self, sa: &mut IkeSa, now: Instant, remote_id: Identity) {
        sa.state = SaState::Established;
        sa.half_open_deadline = None;
        sa.remote_id = Some(remote_id.clone());
        let lifetime = self.config.peers[sa.peer].ike_lifetime;
        sa.expiry = Expiry::schedule(lifetime.as_ref(), now, &mut self.rng);
        let peer = self.peer_name(sa);
        self.event(IkeEvent::AuthSucceeded {
            ike_sa: sa.id,
            peer,
            role: sa.role,
            remote_id,
            remote: sa.remote,
            nat: sa.nat,
        });
    }

    /// §2.4: INITIAL_CONTACT — the peer has no other state with us, so every other IKE
    /// SA with the same authenticated identity (and their CHILD SAs) is stale.
    fn honour_initial_contact(&mut self, sa: &IkeSa, id: &Identity, now: Instant) {
        let victims: Vec<_> = self
            .sas
            .values()
            .filter(|o| o.id != sa.id && o.remote_id.as_ref() == Some(id))
            .map(|o| o.id)
            .collect();
        for v in victims {
            if let Some(mut old) = self.sas.remove(&v) {
                self.kill_sa(&mut old, DeleteReason::InitialContact);
                self.finish(old, now);
            }
        }
    }

    fn auth_failed(&mut self, sa: &mut IkeSa, why: AuthFailure) {
        let peer = self.peer_name(sa);
        self.event(IkeEvent::AuthFailed {
            ike_sa: sa.id,
            peer,
            why,
        });
        sa.dead = true;
    }

    /// Responder: the IKE_AUTH request on a half-open SA; `ctx` is the IKE_SA_INIT
    /// context of its [`SaState::InitResponded`] phase.
    pub(crate) fn handle_auth_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        ctx: AuthContext,
        spis: &mut dyn SpiAllocator,
    ) {
        let mid = msg.header.message_id;
        let p = &msg.payloads;
        let reject = |ep: &mut Self, sa: &mut IkeSa, why: AuthFailure| {
            // §2.21.2: AUTHENTICATION_FAILED, protected, then the IKE SA is gone.
            let n = Notify::new(NotifyType::AUTHENTICATION_FAILED, vec![]);
            ep.send_response(sa, ExchangeType::IKE_AUTH, mid, vec![Payload::Notify(n)]);
            ep.auth_failed(sa, why);
        };
        let (Some(id_i), Some(auth_p), Some(raw_idi)) = (idi(p), auth(p), msg.raw_idi.as_deref())
        else {
            return reject(self, sa, AuthFailure::Malformed);
        };
        let wanted_r = idr(p);
        let chosen = sa.candidates.iter().copied().find(|&c| {
            let cfg = &self.config.peers[c];
            cfg.remote_id.as_ref().is_none_or(|r| r == id_i)
                && wanted_r.is_none_or(|r| *r == cfg.local_id)
        });
        let Some(idx) = chosen else {
            return reject(self, sa, AuthFailure::UnknownIdentity(id_i.clone()));
        };
        if auth_p.method != AuthMethod::SHARED_KEY_MIC {
            return reject(self, sa, AuthFailure::UnsupportedMethod(auth_p.method));
        }
        let keys = &sa.keys;
        let cfg = &self.config.peers[idx];
        // §2.15: the initiator signs its IKE_SA_INIT request, our nonce and its ID.
        let verified = keys
            .verify_psk_auth(
                Role::Initiator,
                cfg.psk.as_bytes(),
                &ctx.msg1,
                &ctx.nr,
                raw_idi,
                &auth_p.data,
            )
            .is_ok();
        let auth_r = keys.psk_auth(
            Role::Responder,
            cfg.psk.as_bytes(),
            &ctx.msg2,
            &ctx.ni,
            &cfg.local_id.body(),
        );
        let local_id = cfg.local_id.clone();
        if !verified {
            return reject(self, sa, AuthFailure::BadAuth);
        }
        sa.peer = idx;
        self.auth_succeeded(sa, now, id_i.clone());
        if notify(p, NotifyType::INITIAL_CONTACT).is_some() {
            self.honour_initial_contact(sa, id_i, now);
        }
        let mut resp = vec![
            Payload::IdR(local_id),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: auth_r,
            }),
        ];
        match self.respond_child(sa, now, p, &ctx.ni, &ctx.nr, false, None, true, spis) {
            Ok(acc) => {
                let peer = self.peer_name(sa);
                self.event(IkeEvent::ChildEstablished {
                    ike_sa: sa.id,
                    peer,
                    inbound_spi: acc.inbound_spi,
                    outbound_spi: acc.outbound_spi,
                });
                resp.extend(acc.payloads(None));
            }
            Err(n) => {
                self.child_refused(sa, &n, None);
                resp.push(Payload::Notify(n));
            }
        }
        self.send_response(sa, ExchangeType::IKE_AUTH, mid, resp);
    }

    /// Initiator: the IKE_AUTH response; consumes what the request left for it.
    pub(crate) fn handle_auth_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        req: AwaitAuthResponse,
    ) {
        let AwaitAuthResponse {
            ctx,
            child: proposal,
        } = req;
        let p = &msg.payloads;
        // §2.21.2: AUTHENTICATION_FAILED in the response is final.
        if notify(p, NotifyType::AUTHENTICATION_FAILED).is_some() {
            self.released.push(proposal.inbound_spi);
            return self.auth_failed(sa, AuthFailure::RejectedByPeer);
        }
        let (Some(id_r), Some(auth_p), Some(raw_idr)) = (idr(p), auth(p), msg.raw_idr.as_deref())
        else {
            self.released.push(proposal.inbound_spi);
            return self.auth_failed(sa, AuthFailure::Malformed);
        };
        let cfg = &self.config.peers[sa.peer];
        if let Some(expected) = &cfg.remote_id {
            if expected != id_r {
                let why = AuthFailure::IdentityMismatch {
                    expected: expected.clone(),
                    got: id_r.clone(),
                };
                self.released.push(proposal.inbound_spi);
                return self.auth_failed(sa, why);
            }
        }
        if auth_p.method != AuthMethod::SHARED_KEY_MIC {
            self.released.push(proposal.inbound_spi);
            return self.auth_failed(sa, AuthFailure::UnsupportedMethod(auth_p.method));
        }
        let verified = sa
            .keys
            .verify_psk_auth(
                Role::Responder,
                cfg.psk.as_bytes(),
                &ctx.msg2,
                &ctx.ni,
                raw_idr,
                &auth_p.data,
            )
            .is_ok();
        if !verified {
            self.released.push(proposal.inbound_spi);
            return self.auth_failed(sa, AuthFailure::BadAuth);
        }
        self.auth_succeeded(sa, now, id_r.clone());
        if notify(p, NotifyType::INITIAL_CONTACT).is_some() {
            self.honour_initial_contact(sa, id_r, now);
        }
        if let Some(n) = error_notify(p) {
            let n = n.clone();
            self.released.push(proposal.inbound_spi);
            return self.child_rejected(sa, &n, None);
        }
        match self.complete_child(sa, now, p, &proposal, &ctx.ni, &ctx.nr, None, None) {
            Ok((inbound_spi, outbound_spi)) => {
                let peer = self.peer_name(sa);
                self.event(IkeEvent::ChildEstablished {
                    ike_sa: sa.id,
                    peer,
                    inbound_spi,
                    outbound_spi,
                });
            }
            Err(t) => self.child_reply_unusable(sa, p, &proposal, t, None),
        }
    }
}
