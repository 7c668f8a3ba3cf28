//! INFORMATIONAL (RFC 7296 §1.4): Delete of CHILD SAs (§1.4.1) and of the IKE SA,
//! notifications (INVALID_SPI, §1.5), and the empty request of a liveness check.
//!
//! ```text
//! Initiator                         Responder
//! HDR, SK {[N,] [D,] ...}  -->
//!                                   <--  HDR, SK {[N,] [D,] ...}
//! ```
//! Deleting ESP SAs: the request names the sender's inbound SPIs, the response the
//! responder's inbound SPIs of the same pairs (§1.4.1). If both sides delete the same pair
//! at once, each removes it on the other's request and leaves it out of its response.

use crate::codes::{ExchangeType, ProtocolId};
use crate::config::{InvalidSpiAction, PeerAction};
use crate::endpoint::{Endpoint, Received, SpiAllocator};
use crate::ike_sa::{AwaitDelete, Child, ChildState, IkeSa, Request, SaState};
use crate::notify::NotifyType;
use crate::output::{DeleteReason, IkeEvent};
use crate::payload::{Delete, Notify, Payload};
use std::time::{Duration, Instant};

impl Endpoint {
    /// Linger of an inbound SA closed by a Delete exchange (late packets still count).
    fn delete_linger(&self, sa: &IkeSa, reason: DeleteReason) -> Duration {
        match reason {
            DeleteReason::Expired | DeleteReason::PeerDead | DeleteReason::InitialContact => {
                Duration::ZERO
            }
            _ => self.config.peers[sa.peer].child_linger,
        }
    }

    /// Sends Delete(ESP, our inbound SPIs) and removes those pairs here.
    pub(crate) fn start_delete_children(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        spis: Vec<u32>,
        reason: DeleteReason,
    ) {
        if spis.is_empty() {
            return;
        }
        let linger = self.delete_linger(sa, reason);
        for spi in &spis {
            if let Some(i) = sa.child_by_inbound(*spi) {
                self.remove_child(sa, i, linger, reason);
            }
        }
        let payloads = vec![Payload::Delete(Delete {
            protocol_id: ProtocolId::ESP,
            spis,
        })];
        self.send_request(
            sa,
            now,
            ExchangeType::INFORMATIONAL,
            payloads,
            Request::Delete(AwaitDelete { ike: false, reason }),
        );
    }

    /// Sends Delete(IKE): the CHILD SAs go at once, the SA when answered (or given up).
    pub(crate) fn start_delete_ike(&mut self, sa: &mut IkeSa, now: Instant, reason: DeleteReason) {
        for t in sa.queue.drain(..) {
            if let Some(s) = t.reserved_spi() {
                self.released.push(s);
            }
        }
        while !sa.children.is_empty() {
            self.remove_child(sa, 0, Duration::ZERO, reason);
        }
        sa.state = SaState::Deleting;
        let payloads = vec![Payload::Delete(Delete {
            protocol_id: ProtocolId::IKE,
            spis: vec![],
        })];
        self.send_request(
            sa,
            now,
            ExchangeType::INFORMATIONAL,
            payloads,
            Request::Delete(AwaitDelete { ike: true, reason }),
        );
    }

    /// An empty INFORMATIONAL request: the liveness check of §1.4.
    pub(crate) fn start_liveness(&mut self, sa: &mut IkeSa, now: Instant) {
        self.send_request(
            sa,
            now,
            ExchangeType::INFORMATIONAL,
            vec![],
            Request::Liveness,
        );
    }

    /// Invalid-SPI recovery: Delete(ESP, [spi]) and/or N(INVALID_SPI, spi).
    pub(crate) fn start_invalid_spi(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        spi: u32,
        action: InvalidSpiAction,
    ) {
        let mut payloads = Vec::with_capacity(2);
        if matches!(action, InvalidSpiAction::Delete | InvalidSpiAction::Both) {
            // If the pair is still ours too, it goes like any deleted pair.
            if let Some(i) = sa.child_by_inbound(spi) {
                let linger = self.delete_linger(sa, DeleteReason::InvalidSpi);
                self.remove_child(sa, i, linger, DeleteReason::InvalidSpi);
            }
            payloads.push(Payload::Delete(Delete {
                protocol_id: ProtocolId::ESP,
                spis: vec![spi],
            }));
        }
        if matches!(action, InvalidSpiAction::Notify | InvalidSpiAction::Both) {
            // §1.5 / §3.10.1: the notification data is the SPI.
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::INVALID_SPI,
                spi.to_be_bytes().to_vec(),
            )));
        }
        self.send_request(
            sa,
            now,
            ExchangeType::INFORMATIONAL,
            payloads,
            Request::InvalidSpi,
        );
    }

    /// Responder: an INFORMATIONAL request.
    pub(crate) fn handle_informational_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        msg: Received,
        spis: &mut dyn SpiAllocator,
    ) {
        let mid = msg.header.message_id;
        let p = &msg.payloads;
        let peer = self.peer_name(sa);
        let deletes_ike = p
            .iter()
            .any(|x| matches!(x, Payload::Delete(d) if d.protocol_id == ProtocolId::IKE));
        if deletes_ike {
            // §1.4.1: answer (empty), then the IKE SA and all its CHILD SAs are gone.
            // §2.25.2: our own requests on it are forgotten.
            self.event(IkeEvent::DeleteReceived {
                ike_sa: sa.id,
                peer,
                protocol: ProtocolId::IKE,
                spis: vec![],
            });
            self.send_response(sa, ExchangeType::INFORMATIONAL, mid, vec![]);
            let was_established = sa.is_established();
            self.kill_sa(sa, DeleteReason::Peer);
            let cfg = &self.config.peers[sa.peer];
            if was_established
                && cfg.on_peer_delete == PeerAction::Restart
                && cfg.remote_addr.is_some()
            {
                self.starts.push((now, sa.peer));
            }
            return;
        }
        // Notifications first: INVALID_SPI's `known` refers to the state before any
        // Delete in the same message.
        let mut invalid_known = Vec::new();
        for n in p.iter().filter_map(|x| match x {
            Payload::Notify(n) => Some(n),
            _ => None,
        }) {
            if let Some(spi) = n.invalid_spi() {
                let known = sa.child_by_outbound(spi).is_some();
                if known {
                    invalid_known.push(spi);
                }
                self.event(IkeEvent::InvalidSpiNotifyReceived {
                    ike_sa: sa.id,
                    peer: peer.clone(),
                    spi,
                    known,
                });
            } else {
                self.event(IkeEvent::NotifyReceived {
                    ike_sa: sa.id,
                    peer: peer.clone(),
                    notify: n.notify_type,
                });
            }
        }
        let mut ours = Vec::new();
        let mut restart: Vec<Child> = Vec::new();
        for d in p.iter().filter_map(|x| match x {
            Payload::Delete(d) if d.protocol_id == ProtocolId::ESP => Some(d),
            _ => None,
        }) {
            self.event(IkeEvent::DeleteReceived {
                ike_sa: sa.id,
                peer: peer.clone(),
                protocol: ProtocolId::ESP,
                spis: d.spis.clone(),
            });
            for &spi in &d.spis {
                // The peer names its inbound SPI: our outbound one.
                let Some(i) = sa.child_by_outbound(spi) else {
                    continue;
                };
                let state = sa.children[i].state;
                let reason = if let ChildState::Rekeyed { successor } = state {
                    // Make-before-break, rekey responder: the old pair is gone, so the
                    // new one carries our traffic from now on.
                    if let Some(j) = sa.child_by_inbound(successor) {
                        self.activate_outbound(sa, j);
                    }
                    DeleteReason::Rekeyed
                } else {
                    self.collision_delete(sa, i)
                };
                let linger = self.delete_linger(sa, reason);
                let c = self.remove_child(sa, i, linger, reason);
                ours.push(c.inbound_spi);
                if reason == DeleteReason::Peer {
                    restart.push(c);
                }
            }
        }
        // §1.5: the peer has no inbound SA for this outbound SPI of ours — the pair is
        // useless, so it goes exactly as if the peer had deleted it (unless a Delete in
        // the same message already removed it).
        for spi in invalid_known {
            let Some(i) = sa.child_by_outbound(spi) else {
                continue;
            };
            match sa.children[i].state {
                ChildState::Rekeyed { .. } => continue,
                ChildState::Redundant => {
                    // The peer already dropped the collision's redundant pair (§2.8.1).
                    let linger = self.delete_linger(sa, DeleteReason::RekeyCollision);
                    self.remove_child(sa, i, linger, DeleteReason::RekeyCollision);
                    continue;
                }
                ChildState::Installed | ChildState::Rekeying => {}
            }
            let linger = self.delete_linger(sa, DeleteReason::Peer);
            let c = self.remove_child(sa, i, linger, DeleteReason::Peer);
            restart.push(c);
        }
        let mut response = Vec::new();
        if !ours.is_empty() {
            response.push(Payload::Delete(Delete {
                protocol_id: ProtocolId::ESP,
                spis: ours,
            }));
        }
        self.send_response(sa, ExchangeType::INFORMATIONAL, mid, response);
        if self.config.peers[sa.peer].on_peer_delete == PeerAction::Restart {
            for c in restart {
                let spi = spis.allocate_inbound_spi();
                self.queue_new_child(sa, spi, Some(&c));
            }
        }
    }

    /// Why the peer deletes pair `i`, a pair not (yet) replaced here, when that is part
    /// of settling a CHILD SA rekey collision (RFC 7296 §2.8.1) that our own outstanding
    /// rekey is still in: the peer's Delete may overtake its response to our request.
    /// Such a Delete is no reason to create a replacement (`on_peer_delete`).
    fn collision_delete(&mut self, sa: &mut IkeSa, i: usize) -> DeleteReason {
        if sa.children[i].state == ChildState::Redundant {
            // The loser's Delete after our rekey won and completed.
            return DeleteReason::RekeyCollision;
        }
        let inbound = sa.children[i].inbound_spi;
        let peer = self.peer_name(sa);
        // §2.8.1: the loser deletes the pair its own exchange made — the one we created
        // answering its request (`peer_rekey.new_inbound` of the old pair). Its exchange
        // lost, so ours wins; our rekey then completes as a plain one.
        let loser_of = sa.children.iter().position(|c| {
            c.peer_rekey
                .as_ref()
                .is_some_and(|pr| pr.new_inbound == inbound)
        });
        if let Some(j) = loser_of {
            sa.children[j].peer_rekey = None;
            let old_inbound_spi = sa.children[j].inbound_spi;
            self.event(IkeEvent::RekeyCollision {
                ike_sa: sa.id,
                peer,
                old_inbound_spi,
                won: true,
            });
            return DeleteReason::RekeyCollision;
        }
        // §2.8.1: the winner deletes the old pair. The peer's pair replaces it (and now
        // carries our traffic); ours, when its response arrives, is the redundant one.
        if let Some(pr) = sa.children[i].peer_rekey.take() {
            if let Some(j) = sa.child_by_inbound(pr.new_inbound) {
                self.activate_outbound(sa, j);
            }
            if let Some(Request::CreateChild(req)) = sa.outstanding.as_mut().map(|o| &mut o.kind) {
                if req.rekey_of == Some(inbound) {
                    req.collision = Some(pr);
                }
            }
            return DeleteReason::Rekeyed;
        }
        DeleteReason::Peer
    }

    /// The response's Delete payloads name the peer's inbound SPIs of pairs it closed:
    /// whatever of those we still hold goes too.
    fn apply_response_deletes(&mut self, sa: &mut IkeSa, p: &[Payload], reason: DeleteReason) {
        let spis: Vec<u32> = p
            .iter()
            .filter_map(|x| match x {
                Payload::Delete(d) if d.protocol_id == ProtocolId::ESP => Some(d.spis.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        for spi in spis {
            if let Some(i) = sa.child_by_outbound(spi) {
                let linger = self.delete_linger(sa, reason);
                self.remove_child(sa, i, linger, reason);
            }
        }
    }

    /// Initiator: the response to our Delete.
    pub(crate) fn handle_delete_response(
        &mut self,
        sa: &mut IkeSa,
        _now: Instant,
        msg: Received,
        d: AwaitDelete,
    ) {
        if d.ike {
            let peer = self.peer_name(sa);
            self.event(IkeEvent::IkeSaDeleted {
                ike_sa: sa.id,
                peer,
                reason: d.reason,
            });
            sa.dead = true;
            return;
        }
        self.apply_response_deletes(sa, &msg.payloads, d.reason);
    }

    /// Initiator: the response to a liveness check or an invalid-SPI report.
    pub(crate) fn handle_info_response(&mut self, sa: &mut IkeSa, _now: Instant, msg: Received) {
        self.apply_response_deletes(sa, &msg.payloads, DeleteReason::InvalidSpi);
    }
}
