//! IKE SA rekey with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18).
//!
//! ```text
//! Initiator                         Responder
//! HDR, SK {SA, Ni, KEi}  -->
//!                                   <--  HDR, SK {SA, Nr, KEr}
//! ```
//! The SA proposals carry the new IKE SPIs (8 octets). The new SA's keys come from the
//! old SK_d (§2.18); the rekey initiator becomes the new SA's original initiator; the
//! CHILD SAs move to the new SA; the rekey initiator then deletes the old SA.
//!
//! Simultaneous rekeys (§2.8.2): a rekey request arriving while our own IKE rekey is in
//! flight is answered normally, so both new IKE SAs exist once our response arrives.
//! The exchange that carried the lowest of the four nonces made the redundant SA; its
//! initiator deletes it, the other exchange's initiator deletes the old SA, and the CHILD
//! SAs end up on the surviving one on both sides. A rekey request arriving while a CHILD
//! SA exchange of ours is in flight is still answered TEMPORARY_FAILURE (§2.25): the pair
//! it creates or rekeys would be caught between two IKE SAs.

use super::{error_notify, ke, nonce, sa_payload};
use crate::codes::ExchangeType;
use crate::crypto::{IkeSaKeys, KeyExchange, Role};
use crate::endpoint::{Endpoint, Received};
use crate::ike_sa::{AwaitIkeRekey, ChildState, IkeSa, PeerIkeRekey, Request, SaState, Task};
use crate::notify::NotifyType;
use crate::output::{DeleteReason, IkeEvent, IkeSaId};
use crate::payload::{Notify, Payload};
use crate::proposal::{accept_ike_reply, offer, select_ike};
use crate::sa::SaPayload;
use crate::timer::Expiry;
use crate::transform::DhGroup;
use std::time::Instant;

fn spi8(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

impl Endpoint {
    /// Starts the rekey of `sa` (KE for `group`, else the current group).
    pub(crate) fn start_rekey_ike(&mut self, sa: &mut IkeSa, now: Instant, group: Option<DhGroup>) {
        let group = group.unwrap_or(sa.keys.suite().dh);
        let Ok(ke) = KeyExchange::generate(group, &mut self.rng) else {
            return;
        };
        let new_spi = self.fresh_ike_spi();
        let ni = self.nonce();
        let specs = &self.config.peers[sa.peer].ike_proposals;
        let payloads = vec![
            Payload::Sa(offer(specs, &new_spi.to_be_bytes())),
            Payload::Nonce(ni.clone()),
            Payload::Ke(ke.ke_payload()),
        ];
        self.send_request(
            sa,
            now,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyIke(AwaitIkeRekey { new_spi, ni, ke }),
        );
    }

    /// Creates the IKE SA replacing `old` and moves the CHILD SAs and queued requests.
    fn make_rekeyed_sa(
        &mut self,
        old: &mut IkeSa,
        now: Instant,
        role: Role,
        spis: (u64, u64),
        keys: IkeSaKeys,
    ) -> IkeSaId {
        let id = self.next_sa_id();
        let mut n = IkeSa::new(
            id,
            old.peer,
            role,
            spis,
            (old.local, old.remote),
            SaState::Established,
            keys,
            now,
        );
        n.candidates = old.candidates.clone();
        // §2.18: the new IKE SA has new SPIs and keys; a capture needs both tables.
        self.export_ike_keys(&n, Some(old.id));
        n.nat = old.nat;
        n.remote_id = old.remote_id.clone();
        n.children = std::mem::take(&mut old.children);
        let (keep, moved): (Vec<Task>, Vec<Task>) = old
            .queue
            .drain(..)
            .partition(|t| matches!(t, Task::DeleteIke { .. }));
        // A pending local terminate applies to the replacement too.
        let terminate = keep.iter().any(|t| {
            matches!(
                t,
                Task::DeleteIke {
                    reason: DeleteReason::Local
                }
            )
        });
        old.queue = keep.into();
        n.queue = moved
            .into_iter()
            .filter(|t| !matches!(t, Task::RekeyIke { .. }))
            .collect();
        if terminate {
            n.queue.push_front(Task::DeleteIke {
                reason: DeleteReason::Local,
            });
        }
        let lifetime = self.config.peers[old.peer].ike_lifetime;
        n.expiry = Expiry::schedule(lifetime.as_ref(), now, &mut self.rng);
        old.state = SaState::Rekeyed { successor: id };
        old.expiry = Expiry::default();
        let peer = self.peer_name(old);
        self.by_spi.insert(n.local_spi(), id);
        self.sas.insert(id, n);
        self.event(IkeEvent::IkeRekeyed {
            old: old.id,
            new: id,
            peer,
        });
        id
    }

    /// Responder: a CREATE_CHILD_SA whose SA proposes protocol IKE.
    pub(crate) fn respond_rekey_ike(&mut self, sa: &mut IkeSa, now: Instant, msg: &Received) {
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
        let collision = match sa.outstanding.as_ref().map(|o| &o.kind) {
            // §2.8.2: both sides rekey the IKE SA; answer, decide when our response comes.
            Some(Request::RekeyIke(_)) => true,
            Some(Request::CreateChild(_)) => {
                return answer(self, sa, Notify::new(NotifyType::TEMPORARY_FAILURE, vec![]));
            }
            _ => false,
        };
        let (Some(sa_p), Some(ni)) = (sa_payload(p), nonce(p)) else {
            return answer(self, sa, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
        };
        let chosen = match select_ike(&self.config.peers[sa.peer].ike_proposals, sa_p) {
            Ok(c) => c,
            Err(e) => {
                let peer = self.peer_name(sa);
                self.event(IkeEvent::NoProposalChosen {
                    ike_sa: Some(sa.id),
                    peer: Some(peer),
                    exchange: ExchangeType::CREATE_CHILD_SA,
                    by_us: true,
                });
                return answer(self, sa, Notify::new(e.notify_type(), vec![]));
            }
        };
        let Some(their_spi) = spi8(&chosen.spi).filter(|s| *s != 0) else {
            return answer(self, sa, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
        };
        let group = chosen.suite.dh;
        let Some(kei) = ke(p).filter(|k| k.group == group) else {
            let n = Notify::new(
                NotifyType::INVALID_KE_PAYLOAD,
                group.0.to_be_bytes().to_vec(),
            );
            return answer(self, sa, n);
        };
        let Ok(ker) = KeyExchange::generate(group, &mut self.rng) else {
            return answer(
                self,
                sa,
                Notify::new(NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
            );
        };
        let Ok(g) = ker.shared_secret_with(kei) else {
            return answer(self, sa, Notify::new(NotifyType::INVALID_SYNTAX, vec![]));
        };
        let nr = self.nonce();
        let new_spi = self.fresh_ike_spi();
        let Ok(keys) = sa
            .keys
            .rekey(chosen.suite, g.as_bytes(), ni, &nr, their_spi, new_spi)
        else {
            return answer(
                self,
                sa,
                Notify::new(NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
            );
        };
        // Our own queued IKE rekey is moot now.
        sa.queue.retain(|t| !matches!(t, Task::RekeyIke { .. }));
        let new = self.make_rekeyed_sa(sa, now, Role::Responder, (their_spi, new_spi), keys);
        if collision {
            sa.peer_ike_rekey = Some(PeerIkeRekey {
                ni: ni.to_vec(),
                nr: nr.clone(),
                new,
            });
        }
        // Keep the old SA for the initiator's Delete (and retransmissions); delete it
        // ourselves if that never comes.
        sa.expiry.hard = Some(now + self.config.rekeyed_ike_grace);
        let payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen
                    .suite
                    .to_proposal(chosen.proposal_number, &new_spi.to_be_bytes())],
            }),
            Payload::Nonce(nr),
            Payload::Ke(ker.ke_payload()),
        ];
        self.send_response(sa, ExchangeType::CREATE_CHILD_SA, mid, payloads);
    }

    /// Initiator: the response to our IKE rekey.
    pub(crate) fn handle_rekey_ike_response(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        req: AwaitIkeRekey,
    ) {
        let p = &msg.payloads;
        let collision = sa.peer_ike_rekey.take();
        // The peer's rekey of this SA went through meanwhile: if ours fails, theirs stands
        // (the SA is already `Rekeyed`, the peer deletes it), nothing to retry.
        let peer_rekeyed = collision.is_some();
        let failed = |ep: &mut Self, sa: &mut IkeSa, t: NotifyType| {
            if t == NotifyType::NO_PROPOSAL_CHOSEN {
                ep.event(IkeEvent::NoProposalChosen {
                    ike_sa: Some(sa.id),
                    peer: Some(ep.peer_name(sa)),
                    exchange: ExchangeType::CREATE_CHILD_SA,
                    by_us: false,
                });
            }
            ep.event(IkeEvent::IkeRekeyFailed {
                ike_sa: sa.id,
                peer: ep.peer_name(sa),
                notify: t,
            });
            if peer_rekeyed {
                return;
            }
            let at = ep.retry_at(now);
            sa.expiry.soft = Some(sa.expiry.hard.map_or(at, |h| h.min(at)));
        };
        if let Some(n) = error_notify(p) {
            let t = n.notify_type;
            if let Some(g) = n.wanted_group() {
                let offered = self.config.peers[sa.peer]
                    .ike_proposals
                    .iter()
                    .any(|s| s.dh.contains(&g));
                if g.is_supported() && offered && g != req.ke.group() && !peer_rekeyed {
                    sa.queue.push_front(Task::RekeyIke { group: Some(g) });
                    return;
                }
            }
            return failed(self, sa, t);
        }
        let (Some(sa_p), Some(nr), Some(ker)) = (sa_payload(p), nonce(p), ke(p)) else {
            return failed(self, sa, NotifyType::INVALID_SYNTAX);
        };
        let Ok(chosen) = accept_ike_reply(&self.config.peers[sa.peer].ike_proposals, sa_p) else {
            return failed(self, sa, NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let Some(their_spi) = spi8(&chosen.spi).filter(|s| *s != 0) else {
            return failed(self, sa, NotifyType::INVALID_SYNTAX);
        };
        if ker.group != chosen.suite.dh || ker.group != req.ke.group() {
            return failed(self, sa, NotifyType::INVALID_KE_PAYLOAD);
        }
        let Ok(g) = req.ke.shared_secret_with(ker) else {
            return failed(self, sa, NotifyType::INVALID_SYNTAX);
        };
        let Ok(keys) = sa.keys.rekey(
            chosen.suite,
            g.as_bytes(),
            &req.ni,
            nr,
            req.new_spi,
            their_spi,
        ) else {
            return failed(self, sa, NotifyType::NO_PROPOSAL_CHOSEN);
        };
        let ours = self.make_rekeyed_sa(sa, now, Role::Initiator, (req.new_spi, their_spi), keys);
        match collision {
            Some(pr) => self.settle_ike_rekey_collision(sa, now, ours, (&req.ni, nr), pr),
            None => {
                // §2.18: the rekey initiator deletes the old IKE SA.
                sa.queue.push_front(Task::DeleteIke {
                    reason: DeleteReason::Rekeyed,
                });
            }
        }
    }

    /// Both sides rekeyed `old` (§2.8.2): `ours` came from our exchange (nonces `ni`,
    /// `nr`), `pr.new` from the peer's. Keeps one, hands it the CHILD SAs and queued work
    /// of the other, and schedules the Deletes that are ours to send.
    fn settle_ike_rekey_collision(
        &mut self,
        old: &mut IkeSa,
        now: Instant,
        ours: IkeSaId,
        (ni, nr): (&[u8], &[u8]),
        pr: PeerIkeRekey,
    ) {
        // RFC 7296 §2.8.2: "The SA that was created with the lowest of the four nonces
        // used in the two exchanges" is redundant and is deleted by the endpoint that
        // created it (the initiator of that exchange); the initiator of the surviving
        // exchange deletes the old IKE SA. Nonces compare as octet strings.
        let ours_min = ni.min(nr);
        let theirs_min = pr.ni.as_slice().min(pr.nr.as_slice());
        let we_lost = ours_min < theirs_min;
        let (survivor, redundant) = if we_lost {
            (pr.new, ours)
        } else {
            (ours, pr.new)
        };
        let (mut children, queue) = match self.sas.get_mut(&redundant) {
            Some(r) => {
                let children = std::mem::take(&mut r.children);
                let queue: Vec<Task> = r
                    .queue
                    .drain(..)
                    .filter(|t| !matches!(t, Task::RekeyIke { .. }))
                    .collect();
                (children, queue)
            }
            None => (Vec::new(), Vec::new()),
        };
        let retry = self.retry_at(now);
        for c in &mut children {
            // A CHILD SA rekey started on the redundant SA never completes for the
            // survivor: put the pair back to normal and retry it later.
            if c.state == ChildState::Rekeying {
                c.state = ChildState::Installed;
                c.peer_rekey = None;
                c.expiry.soft = Some(c.expiry.hard.map_or(retry, |h| h.min(retry)));
            }
        }
        if let Some(s) = self.sas.get_mut(&survivor) {
            s.children.extend(children);
            s.queue.extend(queue);
        }
        old.state = SaState::Rekeyed {
            successor: survivor,
        };
        let grace = now + self.config.rekeyed_ike_grace;
        if let Some(r) = self.sas.get_mut(&redundant) {
            if we_lost {
                r.queue.push_front(Task::DeleteIke {
                    reason: DeleteReason::RekeyCollision,
                });
            } else {
                // The peer deletes it; if its Delete never comes, we do.
                r.state = SaState::Rekeyed {
                    successor: survivor,
                };
                r.expiry = Expiry::default();
                r.expiry.hard = Some(grace);
            }
        }
        if we_lost {
            // The peer (initiator of the surviving exchange) deletes the old SA.
            old.expiry.hard = Some(grace);
        } else {
            old.queue.push_front(Task::DeleteIke {
                reason: DeleteReason::Rekeyed,
            });
        }
    }
}
