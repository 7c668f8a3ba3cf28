//! CHILD SA negotiation: the parts shared by IKE_AUTH and CREATE_CHILD_SA (proposal
//! selection, TS narrowing §2.9, PFS, KEYMAT §2.17), and the CREATE_CHILD_SA exchange for
//! new CHILD SAs (§1.3.1) and CHILD SA rekeys (§1.3.3) with the collision rule of §2.8.1.
//!
//! ```text
//! Initiator                         Responder
//! HDR, SK {[N(REKEY_SA),] SA, Ni, [KEi,] TSi, TSr}  -->
//!                                   <--  HDR, SK {SA, Nr, [KEr,] TSi, TSr}
//! ```
//! Make-before-break: the responder installs the new pair before it sends the response
//! (its outbound half stays unused until the initiator deletes the old pair); the
//! initiator installs it when the response arrives, then deletes the old pair (§2.8).

use super::{error_notify, ke, nonce, notify, sa_payload, tsi, tsr};
use crate::codes::ExchangeType;
use crate::config::Mode;
use crate::crypto::KeyExchange;
use crate::endpoint::{Endpoint, NewChild, Received, SpiAllocator};
use crate::ike_sa::{AwaitCreateChild, ChildProposal, ChildState, IkeSa, PeerRekey, Request, Task};
use crate::notify::NotifyType;
use crate::output::{DeleteReason, IkeEvent};
use crate::payload::{KePayload, Notify, Payload};
use crate::proposal::{accept_esp_reply, offer, select_esp, ProposalSpec};
use crate::sa::SaPayload;
use crate::selectors::{is_narrowing_of, narrow};
use crate::transform::DhGroup;
use crate::ts::{TrafficSelector, TsPayload};
use std::time::{Duration, Instant};

/// What the responder accepted: the reply payloads (minus Nonce) and the new SPIs.
pub(crate) struct ChildAccept {
    pub sa: SaPayload,
    pub ke: Option<KePayload>,
    pub tsi: Vec<TrafficSelector>,
    pub tsr: Vec<TrafficSelector>,
    pub transport: bool,
    pub inbound_spi: u32,
    pub outbound_spi: u32,
}

impl ChildAccept {
    /// `[N(USE_TRANSPORT_MODE),] SA, [Nr,] [KEr,] TSi, TSr`.
    pub fn payloads(self, nr: Option<Vec<u8>>) -> Vec<Payload> {
        let mut v = Vec::with_capacity(6);
        if self.transport {
            v.push(Payload::Notify(Notify::new(
                NotifyType::USE_TRANSPORT_MODE,
                vec![],
            )));
        }
        v.push(Payload::Sa(self.sa));
        if let Some(n) = nr {
            v.push(Payload::Nonce(n));
        }
        if let Some(k) = self.ke {
            v.push(Payload::Ke(k));
        }
        v.push(Payload::TsI(TsPayload {
            selectors: self.tsi,
        }));
        v.push(Payload::TsR(TsPayload {
            selectors: self.tsr,
        }));
        v
    }
}

fn spi4(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes)
}

fn invalid_ke(group: DhGroup) -> Notify {
    Notify::new(
        NotifyType::INVALID_KE_PAYLOAD,
        group.0.to_be_bytes().to_vec(),
    )
}

impl Endpoint {
    /// Responder side of a CHILD SA: select, narrow, key, install. `pfs`: a KE payload
    /// may be used (CREATE_CHILD_SA; not IKE_AUTH). Returns the error notification to
    /// send instead on failure.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond_child(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        p: &[Payload],
        ni: &[u8],
        nr: &[u8],
        pfs: bool,
        rekey_of: Option<u32>,
        outbound_active: bool,
        spis: &mut dyn SpiAllocator,
    ) -> Result<ChildAccept, Notify> {
        let err = |t| Notify::new(t, vec![]);
        let cfg = &self.config.peers[sa.peer];
        let specs: Vec<ProposalSpec> = if pfs {
            cfg.esp_proposals.clone()
        } else {
            cfg.esp_proposals.iter().map(|s| s.without_dh()).collect()
        };
        let (Some(sa_p), Some(ts_i), Some(ts_r)) = (sa_payload(p), tsi(p), tsr(p)) else {
            return Err(err(NotifyType::INVALID_SYNTAX));
        };
        let chosen = select_esp(&specs, sa_p).map_err(|_| err(NotifyType::NO_PROPOSAL_CHOSEN))?;
        let their_spi = spi4(&chosen.spi).ok_or_else(|| err(NotifyType::INVALID_SYNTAX))?;
        // §1.3.1: transport mode only when asked for and configured; a transport-only
        // policy refuses tunnel mode.
        let cfg_remote_dynamic = cfg.remote_ts.is_empty();
        let asked = notify(p, NotifyType::USE_TRANSPORT_MODE).is_some();
        let transport = match (cfg.mode, asked) {
            (Mode::Transport, true) => true,
            (Mode::Transport, false) => return Err(err(NotifyType::NO_PROPOSAL_CHOSEN)),
            (Mode::Tunnel, _) => false,
        };
        // §2.9: narrow to our policy; TSi is the initiator's (the peer's) side.
        let (local_pol, mut remote_pol) = self.policy_ts(sa);
        if cfg_remote_dynamic && sa.nat.remote_behind_nat {
            // The peer is behind a NAT and our policy for it is "its address": that is
            // its private address, which only its TSi tells (strongSwan's %dynamic does
            // the same). Single hosts only.
            remote_pol.extend(
                ts_i.iter()
                    .filter(|t| t.range.start() == t.range.end())
                    .copied(),
            );
        }
        let n_tsi = narrow(ts_i, &remote_pol);
        let n_tsr = narrow(ts_r, &local_pol);
        if n_tsi.is_empty() || n_tsr.is_empty() {
            return Err(err(NotifyType::TS_UNACCEPTABLE));
        }
        let (ke_out, g) = match chosen.suite.dh {
            Some(group) => {
                // §1.3.1 / §1.2: the KE must be for the chosen group.
                let Some(kei) = ke(p).filter(|k| k.group == group) else {
                    return Err(invalid_ke(group));
                };
                let ker = KeyExchange::generate(group, &mut self.rng)
                    .map_err(|_| err(NotifyType::NO_PROPOSAL_CHOSEN))?;
                let g = ker
                    .shared_secret_with(kei)
                    .map_err(|_| err(NotifyType::INVALID_SYNTAX))?;
                (Some(ker.ke_payload()), Some(g))
            }
            None => (None, None),
        };
        let child_keys = sa
            .keys
            .child_sa_keys(&chosen.suite, g.as_ref().map(|g| g.as_bytes()), ni, nr)
            .map_err(|_| err(NotifyType::NO_PROPOSAL_CHOSEN))?;
        let inbound_spi = spis.allocate_inbound_spi();
        let (inbound, outbound) =
            match Self::child_params(&child_keys, false, inbound_spi, their_spi) {
                Ok(pair) => pair,
                Err(_) => {
                    spis.release_inbound_spi(inbound_spi);
                    return Err(err(NotifyType::NO_PROPOSAL_CHOSEN));
                }
            };
        let mode = if transport {
            Mode::Transport
        } else {
            Mode::Tunnel
        };
        self.install_child(
            sa,
            now,
            NewChild {
                inbound,
                outbound,
                suite: chosen.suite,
                local_ts: n_tsr.clone(),
                remote_ts: n_tsi.clone(),
                mode,
                rekey_of,
                outbound_active,
            },
        );
        Ok(ChildAccept {
            sa: SaPayload {
                proposals: vec![chosen
                    .suite
                    .to_proposal(chosen.proposal_number, inbound_spi)],
            },
            ke: ke_out,
            tsi: n_tsi,
            tsr: n_tsr,
            transport,
            inbound_spi,
            outbound_spi: their_spi,
        })
    }

    /// Initiator side: check the responder's choice (§2.7, §2.9) and install the pair.
    /// Returns (inbound, outbound) SPIs, or the reason the reply is unusable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete_child(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        p: &[Payload],
        prop: &ChildProposal,
        ni: &[u8],
        nr: &[u8],
        our_ke: Option<&KeyExchange>,
        rekey_of: Option<u32>,
    ) -> Result<(u32, u32), NotifyType> {
        let sa_p = sa_payload(p).ok_or(NotifyType::INVALID_SYNTAX)?;
        let chosen =
            accept_esp_reply(&prop.specs, sa_p).map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
        let their_spi = spi4(&chosen.spi).ok_or(NotifyType::INVALID_SYNTAX)?;
        let (Some(ts_i), Some(ts_r)) = (tsi(p), tsr(p)) else {
            return Err(NotifyType::TS_UNACCEPTABLE);
        };
        // §2.9: the responder may only narrow what we proposed.
        if !is_narrowing_of(ts_i, &prop.local_ts) || !is_narrowing_of(ts_r, &prop.remote_ts) {
            return Err(NotifyType::TS_UNACCEPTABLE);
        }
        let confirmed = notify(p, NotifyType::USE_TRANSPORT_MODE).is_some();
        if prop.mode == Mode::Transport && !confirmed {
            return Err(NotifyType::NO_PROPOSAL_CHOSEN);
        }
        let g = match chosen.suite.dh {
            Some(group) => {
                let ours = our_ke
                    .filter(|k| k.group() == group)
                    .ok_or(NotifyType::INVALID_KE_PAYLOAD)?;
                let theirs = ke(p)
                    .filter(|k| k.group == group)
                    .ok_or(NotifyType::INVALID_KE_PAYLOAD)?;
                Some(
                    ours.shared_secret_with(theirs)
                        .map_err(|_| NotifyType::INVALID_SYNTAX)?,
                )
            }
            None => None,
        };
        let child_keys = sa
            .keys
            .child_sa_keys(&chosen.suite, g.as_ref().map(|g| g.as_bytes()), ni, nr)
            .map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
        let (inbound, outbound) =
            Self::child_params(&child_keys, true, prop.inbound_spi, their_spi)
                .map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
        self.install_child(
            sa,
            now,
            NewChild {
                inbound,
                outbound,
                suite: chosen.suite,
                local_ts: ts_i.to_vec(),
                remote_ts: ts_r.to_vec(),
                mode: prop.mode,
                rekey_of,
                outbound_active: true,
            },
        );
        Ok((prop.inbound_spi, their_spi))
    }

    /// We refused the peer's CHILD SA.
    pub(crate) fn child_refused(&mut self, sa: &IkeSa, n: &Notify, rekey_of: Option<u32>) {
        self.child_failure_events(sa, n.notify_type, rekey_of, true);
    }

    /// The peer refused ours.
    pub(crate) fn child_rejected(&mut self, sa: &IkeSa, n: &Notify, rekey_of: Option<u32>) {
        self.child_failure_events(sa, n.notify_type, rekey_of, false);
    }

    fn child_failure_events(
        &mut self,
        sa: &IkeSa,
        t: NotifyType,
        rekey_of: Option<u32>,
        by_us: bool,
    ) {
        let peer = self.peer_name(sa);
        if t == NotifyType::NO_PROPOSAL_CHOSEN {
            self.event(IkeEvent::NoProposalChosen {
                ike_sa: Some(sa.id),
                peer: Some(peer.clone()),
                exchange: ExchangeType::CREATE_CHILD_SA,
                by_us,
            });
        }
        self.event(IkeEvent::ChildFailed {
            ike_sa: sa.id,
            peer,
            notify: t,
            rekey_of,
            by_us,
        });
    }

    /// The responder made a pair we cannot use: tell it to delete its half (§1.4.1).
    pub(crate) fn child_reply_unusable(
        &mut self,
        sa: &mut IkeSa,
        p: &[Payload],
        prop: &ChildProposal,
        t: NotifyType,
        rekey_of: Option<u32>,
    ) {
        self.released.push(prop.inbound_spi);
        self.child_failure_events(sa, t, rekey_of, true);
        if sa_present(p) {
            sa.queue.push_front(Task::DeleteChildren {
                spis: vec![prop.inbound_spi],
                reason: DeleteReason::Failed,
            });
        }
    }

    /// Starts CREATE_CHILD_SA for a new pair.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_create_child(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        inbound_spi: u32,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        mode: Mode,
        pfs: Option<DhGroup>,
    ) {
        let proposal = ChildProposal {
            inbound_spi,
            specs: self.config.peers[sa.peer].esp_proposals.clone(),
            local_ts,
            remote_ts,
            mode,
        };
        self.send_child_request(sa, now, proposal, None, pfs);
    }

    /// Starts CREATE_CHILD_SA rekeying the pair whose inbound SPI is `old_inbound`.
    pub(crate) fn start_rekey_child(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        old_inbound: u32,
        inbound_spi: u32,
        pfs: Option<DhGroup>,
    ) {
        let Some(i) = sa.child_by_inbound(old_inbound) else {
            self.released.push(inbound_spi);
            return;
        };
        let c = &mut sa.children[i];
        if c.state != ChildState::Installed {
            self.released.push(inbound_spi);
            return;
        }
        c.state = ChildState::Rekeying;
        // §2.8: the new SA SHOULD NOT differ in selectors or algorithms.
        let proposal = ChildProposal {
            inbound_spi,
            specs: self.config.peers[sa.peer].esp_proposals.clone(),
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            mode: c.mode,
        };
        self.send_child_request(sa, now, proposal, Some(old_inbound), pfs);
    }

    fn send_child_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        proposal: ChildProposal,
        rekey_of: Option<u32>,
        pfs: Option<DhGroup>,
    ) {
        let ni = self.nonce();
        let ke = pfs.and_then(|g| KeyExchange::generate(g, &mut self.rng).ok());
        let mut payloads = Vec::with_capacity(7);
        if let Some(old) = rekey_of {
            // §1.3.3: the SPI is the one we expect in inbound packets of the old SA.
            payloads.push(Payload::Notify(Notify::for_esp_spi(
                NotifyType::REKEY_SA,
                old,
                vec![],
            )));
        }
        if proposal.mode == Mode::Transport {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::USE_TRANSPORT_MODE,
                vec![],
            )));
        }
        payloads.push(Payload::Sa(offer(
            &proposal.specs,
            &proposal.inbound_spi.to_be_bytes(),
        )));
        payloads.push(Payload::Nonce(ni.clone()));
        if let Some(k) = &ke {
            payloads.push(Payload::Ke(k.ke_payload()));
        }
        payloads.push(Payload::TsI(TsPayload {
            selectors: proposal.local_ts.clone(),
        }));
        payloads.push(Payload::TsR(TsPayload {
            selectors: proposal.remote_ts.clone(),
        }));
        self.send_request(
            sa,
            now,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::CreateChild(AwaitCreateChild {
                proposal,
                rekey_of,
                ni,
                ke,
                collision: None,
            }),
        );
    }

    /// Responder: a CREATE_CHILD_SA request (new CHILD SA, CHILD rekey or IKE rekey).
    pub(crate) fn handle_create_child_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        spis: &mut dyn SpiAllocator,
    ) {
        let mid = msg.header.message_id;
        let p = &msg.payloads;
        let answer = |ep: &mut Self, sa: &mut IkeSa, n: Notify| {
            ep.send_response(
                sa,
                ExchangeType::CREATE_CHILD_SA,
                mid,
                vec![Payload::Notify(n)],
            );
        };
        // §2.25.2: no new SAs on an IKE SA that is going away.
        if !sa.is_established() || sa.ike_delete_pending() {
            return answer(self, sa, Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]));
        }
        let (Some(sa_p), Some(ni)) = (sa_payload(p), nonce(p)) else {
            return answer(self, sa, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
        };
        if sa_p
            .proposals
            .first()
            .is_some_and(|x| x.protocol_id == crate::codes::ProtocolId::IKE)
        {
            return self.respond_rekey_ike(sa, now, &msg);
        }
        let mut rekey_of = None;
        if let Some(n) = notify(p, NotifyType::REKEY_SA) {
            let Some(spi) = spi4(&n.spi) else {
                return answer(self, sa, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
            };
            // The SPI is the initiator's inbound one: our outbound.
            let Some(i) = sa.child_by_outbound(spi) else {
                // §2.25: the pair is already gone here.
                let n = Notify::for_esp_spi(NotifyType::CHILD_SA_NOT_FOUND, spi, vec![]);
                return answer(self, sa, n);
            };
            if matches!(
                sa.children[i].state,
                ChildState::Rekeyed { .. } | ChildState::Redundant
            ) {
                // Already replaced (we won a collision or finished our own rekey), or
                // about to be deleted by the peer (§2.8.1).
                return answer(self, sa, Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]));
            }
            rekey_of = Some(sa.children[i].inbound_spi);
        }
        let nr = self.nonce();
        // Make-before-break: a rekey responder does not send on the new pair before the
        // initiator (which installs it on our response) deleted the old one.
        let outbound_active = rekey_of.is_none();
        match self.respond_child(sa, now, p, ni, &nr, true, rekey_of, outbound_active, spis) {
            Err(n) => {
                self.child_refused(sa, &n, rekey_of);
                answer(self, sa, n);
            }
            Ok(acc) => {
                let peer = self.peer_name(sa);
                match rekey_of {
                    Some(old) => {
                        if let Some(i) = sa.child_by_inbound(old) {
                            let c = &mut sa.children[i];
                            if c.state == ChildState::Rekeying {
                                // §2.8.1: our own rekey of this pair is in flight; decide
                                // when its response arrives.
                                c.peer_rekey = Some(PeerRekey {
                                    ni: ni.to_vec(),
                                    nr: nr.clone(),
                                    new_inbound: acc.inbound_spi,
                                });
                            } else {
                                c.state = ChildState::Rekeyed {
                                    successor: acc.inbound_spi,
                                };
                            }
                        }
                        self.event(IkeEvent::ChildRekeyed {
                            ike_sa: sa.id,
                            peer,
                            old_inbound_spi: old,
                            new_inbound_spi: acc.inbound_spi,
                            new_outbound_spi: acc.outbound_spi,
                            initiator: false,
                        });
                    }
                    None => self.event(IkeEvent::ChildEstablished {
                        ike_sa: sa.id,
                        peer,
                        inbound_spi: acc.inbound_spi,
                        outbound_spi: acc.outbound_spi,
                    }),
                }
                let payloads = acc.payloads(Some(nr));
                self.send_response(sa, ExchangeType::CREATE_CHILD_SA, mid, payloads);
            }
        }
    }

    /// Initiator: the CREATE_CHILD_SA response for a CHILD SA.
    pub(crate) fn handle_create_child_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        req: AwaitCreateChild,
        _spis: &mut dyn SpiAllocator,
    ) {
        let p = &msg.payloads;
        if let Some(n) = error_notify(p) {
            let n = n.clone();
            return self.child_request_failed(sa, now, req, &n);
        }
        let Some(nr) = nonce(p) else {
            self.child_reply_unusable(
                sa,
                p,
                &req.proposal,
                NotifyType::INVALID_SYNTAX,
                req.rekey_of,
            );
            return self.rekey_failed(sa, now, req.rekey_of, false);
        };
        let result = self.complete_child(
            sa,
            now,
            p,
            &req.proposal,
            &req.ni,
            nr,
            req.ke.as_ref(),
            req.rekey_of,
        );
        match (result, req.rekey_of) {
            (Err(t), rekey_of) => {
                self.child_reply_unusable(sa, p, &req.proposal, t, rekey_of);
                self.rekey_failed(sa, now, rekey_of, false);
            }
            (Ok((inbound_spi, outbound_spi)), None) => {
                let peer = self.peer_name(sa);
                self.event(IkeEvent::ChildEstablished {
                    ike_sa: sa.id,
                    peer,
                    inbound_spi,
                    outbound_spi,
                });
            }
            (Ok((new_in, new_out)), Some(old)) => {
                self.finish_rekey(sa, old, (new_in, new_out), (&req.ni, nr), req.collision)
            }
        }
    }

    /// The peer answered our CHILD SA request with an error notification.
    fn child_request_failed(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        req: AwaitCreateChild,
        n: &Notify,
    ) {
        let t = n.notify_type;
        // §1.3 / §2.7: the responder wants another PFS group; retry once with it.
        if t == NotifyType::INVALID_KE_PAYLOAD {
            if let Some(g) = n.wanted_group() {
                let offered = req.proposal.specs.iter().any(|s| s.dh.contains(&g));
                let current = req.ke.as_ref().map(KeyExchange::group);
                if g.is_supported() && offered && current != Some(g) {
                    let task = match req.rekey_of {
                        Some(old_inbound) => {
                            if let Some(i) = sa.child_by_inbound(old_inbound) {
                                sa.children[i].state = ChildState::Installed;
                            }
                            Task::RekeyChild {
                                old_inbound,
                                inbound_spi: req.proposal.inbound_spi,
                                pfs: Some(g),
                            }
                        }
                        None => Task::CreateChild {
                            inbound_spi: req.proposal.inbound_spi,
                            local_ts: req.proposal.local_ts,
                            remote_ts: req.proposal.remote_ts,
                            mode: req.proposal.mode,
                            pfs: Some(g),
                        },
                    };
                    sa.queue.push_front(task);
                    return;
                }
            }
        }
        self.released.push(req.proposal.inbound_spi);
        self.child_rejected(sa, n, req.rekey_of);
        let gone = t == NotifyType::CHILD_SA_NOT_FOUND;
        self.rekey_failed(sa, now, req.rekey_of, gone);
    }

    /// Our rekey of `old` did not happen: the pair goes back to normal and tries again
    /// later, unless the peer no longer has it (`gone`) or won a collision meanwhile.
    fn rekey_failed(&mut self, sa: &mut IkeSa, now: Instant, old: Option<u32>, gone: bool) {
        let Some(old) = old else {
            return;
        };
        let Some(i) = sa.child_by_inbound(old) else {
            return;
        };
        if gone {
            let linger = Duration::ZERO;
            self.remove_child(sa, i, linger, DeleteReason::Failed);
            return;
        }
        let at = self.retry_at(now);
        let c = &mut sa.children[i];
        if let Some(pr) = c.peer_rekey.take() {
            // The peer's rekey of the same pair went through: it stands.
            c.state = ChildState::Rekeyed {
                successor: pr.new_inbound,
            };
            return;
        }
        if c.state == ChildState::Rekeying {
            c.state = ChildState::Installed;
        }
        c.expiry.soft = Some(c.expiry.hard.map_or(at, |h| h.min(at)));
    }

    /// Our rekey of `old` succeeded: settle a collision (§2.8.1) and delete the pair
    /// that must go.
    fn finish_rekey(
        &mut self,
        sa: &mut IkeSa,
        old: u32,
        (new_in, new_out): (u32, u32),
        (ni, nr): (&[u8], &[u8]),
        collision: Option<PeerRekey>,
    ) {
        let peer = self.peer_name(sa);
        let Some(i) = sa.child_by_inbound(old) else {
            // The old pair was deleted meanwhile. If the peer deleted it as the winner
            // of a collision (§2.8.1), our pair is the redundant one and we delete it;
            // otherwise the new one simply stands.
            if let Some(pr) = collision {
                let we_lost = collision_lost((ni, nr), &pr);
                self.event(IkeEvent::RekeyCollision {
                    ike_sa: sa.id,
                    peer: peer.clone(),
                    old_inbound_spi: old,
                    won: !we_lost,
                });
                if we_lost {
                    sa.queue.push_front(Task::DeleteChildren {
                        spis: vec![new_in],
                        reason: DeleteReason::RekeyCollision,
                    });
                    return;
                }
                mark_redundant(sa, pr.new_inbound);
            }
            self.event(IkeEvent::ChildEstablished {
                ike_sa: sa.id,
                peer,
                inbound_spi: new_in,
                outbound_spi: new_out,
            });
            return;
        };
        let c = &mut sa.children[i];
        if let Some(pr) = c.peer_rekey.take() {
            let we_lost = collision_lost((ni, nr), &pr);
            self.event(IkeEvent::RekeyCollision {
                ike_sa: sa.id,
                peer: peer.clone(),
                old_inbound_spi: old,
                won: !we_lost,
            });
            if we_lost {
                c.state = ChildState::Rekeyed {
                    successor: pr.new_inbound,
                };
                sa.queue.push_front(Task::DeleteChildren {
                    spis: vec![new_in],
                    reason: DeleteReason::RekeyCollision,
                });
                return;
            }
            mark_redundant(sa, pr.new_inbound);
        }
        sa.children[i].state = ChildState::Rekeyed { successor: new_in };
        sa.queue.push_front(Task::DeleteChildren {
            spis: vec![old],
            reason: DeleteReason::Rekeyed,
        });
        self.event(IkeEvent::ChildRekeyed {
            ike_sa: sa.id,
            peer,
            old_inbound_spi: old,
            new_inbound_spi: new_in,
            new_outbound_spi: new_out,
            initiator: true,
        });
    }
}

/// §2.8.1: of two simultaneous rekeys of one CHILD SA, the exchange with the lowest of
/// the four nonces made the redundant pair and its initiator deletes that pair; the
/// winner's initiator deletes the old one. True if our exchange (`ni`, `nr`) lost.
fn collision_lost((ni, nr): (&[u8], &[u8]), theirs: &PeerRekey) -> bool {
    ni.min(nr) < theirs.ni.as_slice().min(theirs.nr.as_slice())
}

/// §2.8.1: we won a collision, so the peer's pair (our inbound SPI `spi`) is the
/// redundant one, which the peer deletes: its Delete then is no reason to restart.
fn mark_redundant(sa: &mut IkeSa, spi: u32) {
    if let Some(j) = sa.child_by_inbound(spi) {
        sa.children[j].state = ChildState::Redundant;
    }
}

fn sa_present(p: &[Payload]) -> bool {
    sa_payload(p).is_some()
}
