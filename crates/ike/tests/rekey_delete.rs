//! CREATE_CHILD_SA (CHILD and IKE rekey, collisions), INFORMATIONAL (Delete, invalid
//! SPI), INITIAL_CONTACT, dynamic peers and lifetimes.

mod common;

use common::*;
use esplab_ike::{DeleteReason, IkeEvent, IkeSaState, Message, Output, PeerAction, ProtocolId};
use std::time::Duration;

fn established(esp: &str) -> Wire {
    let mut w = pair(GCM_IKE, esp);
    w.establish();
    assert_eq!(assert_pairs_match(&w), 1);
    w
}

/// Position in the node's log of the first output matching `f`.
fn pos(n: &Node, f: impl Fn(&Output) -> bool) -> Option<usize> {
    n.log.iter().position(f)
}

fn check_child_rekey(by_a: bool, esp: &str) {
    let mut w = established(esp);
    let (a_in, a_out) = only_pair(&w.a);
    let log_a = w.a.log.len();
    let log_b = w.b.log.len();
    if by_a {
        w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
    } else {
        // By the outbound SPI works too.
        w.b.ep.rekey_child(w.now, a_in, &mut w.b.spis).unwrap();
    }
    w.drain();
    let (init, resp) = if by_a { (&w.a, &w.b) } else { (&w.b, &w.a) };
    let _ = (init, resp);
    // Deliver the request: the responder installs the new pair BEFORE sending its
    // response (make-before-break), with the outbound half inactive.
    let req = w.pop().unwrap();
    assert_eq!(req.exchange(), esplab_ike::ExchangeType::CREATE_CHILD_SA);
    w.deliver(&req);
    {
        let (resp, start) = if by_a { (&w.b, log_b) } else { (&w.a, log_a) };
        let log = &resp.log[start..];
        let install = log
            .iter()
            .position(|o| matches!(o, Output::InstallChild(c) if c.rekey_of.is_some()))
            .expect("responder installs");
        let send = log
            .iter()
            .position(|o| matches!(o, Output::Send { .. }))
            .expect("responder answers");
        assert!(install < send, "install before the response");
        let Output::InstallChild(c) = &log[install] else {
            unreachable!()
        };
        assert!(!c.outbound_active);
    }
    // The initiator has not installed anything yet.
    {
        let (init, start) = if by_a { (&w.a, log_a) } else { (&w.b, log_b) };
        assert!(!init.log[start..]
            .iter()
            .any(|o| matches!(o, Output::InstallChild(_))));
    }
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    let (na_in, na_out) = only_pair(&w.a);
    assert_ne!(na_in, a_in);
    assert_ne!(na_out, a_out);
    // Both removed the old pair with the configured linger, and the responder switched
    // its outbound traffic to the new pair once the old one was deleted.
    for (n, old_in) in [(&w.a, a_in), (&w.b, a_out)] {
        let rm = n.removes();
        assert_eq!(rm.len(), 1);
        assert_eq!(rm[0].0, old_in);
        assert_eq!(rm[0].2, Duration::from_secs(2));
        assert!(n.active.values().all(|a| *a), "outbound active everywhere");
        assert!(n
            .events()
            .iter()
            .any(|e| matches!(e, IkeEvent::ChildRekeyed { old_inbound_spi, .. } if *old_inbound_spi == old_in)));
        let installs = n.installs();
        assert_eq!(installs.last().unwrap().rekey_of, Some(old_in));
    }
    let resp = if by_a { &w.b } else { &w.a };
    let act = pos(resp, |o| matches!(o, Output::ActivateOutbound { .. })).unwrap();
    let rm = pos(resp, |o| matches!(o, Output::RemoveChild { .. })).unwrap();
    assert!(act < rm);
    let info = &w.a.ep.ike_sas(w.now)[0];
    assert_eq!(info.children.len(), 1);
    assert_eq!(info.children[0].inbound_spi, na_in);
}

#[test]
fn child_rekey_by_initiator() {
    check_child_rekey(true, "aes128gcm16");
}

#[test]
fn child_rekey_by_responder() {
    check_child_rekey(false, "aes128-sha256");
}

#[test]
fn child_rekey_with_pfs() {
    check_child_rekey(true, "aes128gcm16-x25519");
    // The request carried a KE payload.
    let mut w = established("aes128gcm16-x25519");
    let (a_in, _) = only_pair(&w.a);
    w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
    w.run();
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent { payloads, response: false, .. } if payloads.contains("KE")
    )));
}

/// §2.8.1: both sides rekey the same pair at once; in the end each side has exactly one
/// pair, the same one, and exactly one side won.
#[test]
fn simultaneous_child_rekey() {
    for seed in 0..8u64 {
        let (a, b) = gcm_configs();
        let mut w = Wire::seeded(a, b, (10 + seed, 100 + seed));
        w.establish();
        let (a_in, a_out) = only_pair(&w.a);
        w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
        w.b.ep.rekey_child(w.now, a_out, &mut w.b.spis).unwrap();
        w.drain();
        assert_eq!(w.in_flight.len(), 2, "both requests cross");
        w.run();
        assert_eq!(assert_pairs_match(&w), 1, "seed {seed}");
        let (n_in, _) = only_pair(&w.a);
        assert_ne!(n_in, a_in);
        let won = |n: &Node| {
            n.events().iter().find_map(|e| match e {
                IkeEvent::RekeyCollision { won, .. } => Some(*won),
                _ => None,
            })
        };
        let (wa, wb) = (won(&w.a).unwrap(), won(&w.b).unwrap());
        assert_ne!(wa, wb, "exactly one winner");
        assert!(w.a.active.values().all(|a| *a) && w.b.active.values().all(|a| *a));
        // Nothing left over: no requests in flight, no queued work.
        for n in [&w.a, &w.b] {
            let s = &n.ep.ike_sas(w.now)[0];
            assert!(s.outstanding_request.is_none() && s.queued_requests == 0);
            assert_eq!(s.children.len(), 1);
            assert_eq!(s.children[0].state, esplab_ike::ChildSaState::Installed);
        }
    }
}

/// §2.8.1 with reordering: both sides rekey the same pair at once and both requests are
/// answered, but the answer to `held`'s request is delayed until the other side has
/// finished its rekey, settled the collision and sent its Delete — of its own redundant
/// pair if it lost, of the old pair if it won. That Delete is part of the collision, not
/// a pair the peer wants gone: with `on_peer_delete = restart` nothing is recreated, and
/// each side ends with exactly one new pair (the old one deleted).
#[test]
fn simultaneous_child_rekey_delete_overtakes_response() {
    let mut outcomes = [0u32; 2];
    for seed in 0..8u64 {
        for held_is_a in [true, false] {
            let (mut a, mut b) = gcm_configs();
            a.on_peer_delete = PeerAction::Restart;
            b.on_peer_delete = PeerAction::Restart;
            let mut w = Wire::seeded(a, b, (10 + seed, 100 + seed));
            w.establish();
            let (a_in, a_out) = only_pair(&w.a);
            let starts = (w.a.log.len(), w.b.log.len());
            w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
            w.b.ep.rekey_child(w.now, a_out, &mut w.b.spis).unwrap();
            w.drain();
            assert_eq!(w.in_flight.len(), 2, "both requests cross");
            let (r1, r2) = (w.pop().unwrap(), w.pop().unwrap());
            w.deliver(&r1);
            w.deliver(&r2);
            let (p1, p2) = (w.pop().unwrap(), w.pop().unwrap());
            assert!(p1.is_response() && p2.is_response() && w.in_flight.is_empty());
            let held_ip = if held_is_a { w.a.ip } else { w.b.ip };
            let (held, other) = if p1.dst.ip() == held_ip {
                (p1, p2)
            } else {
                (p2, p1)
            };
            w.deliver(&other);
            // The other side finished its rekey and settled the collision: its Delete
            // (and the answer to it) go through before the held response.
            let del = w.pop().expect("the collision's Delete");
            assert_eq!(del.exchange(), esplab_ike::ExchangeType::INFORMATIONAL);
            assert_eq!(del.dst.ip(), held_ip);
            w.deliver(&del);
            w.run();
            w.deliver(&held);
            w.run();
            let ctx = format!("seed {seed}, held {}", if held_is_a { "A" } else { "B" });
            assert_eq!(assert_pairs_match(&w), 1, "{ctx}");
            let (n_in, n_out) = only_pair(&w.a);
            assert!(n_in != a_in && n_out != a_out, "{ctx}");
            let won = |n: &Node, start: usize| {
                let v: Vec<bool> = n.log[start..]
                    .iter()
                    .filter_map(|o| match o {
                        Output::Event(IkeEvent::RekeyCollision { won, .. }) => Some(*won),
                        _ => None,
                    })
                    .collect();
                assert_eq!(v.len(), 1, "{ctx}: one collision settled");
                v[0]
            };
            let (wa, wb) = (won(&w.a, starts.0), won(&w.b, starts.1));
            assert_ne!(wa, wb, "{ctx}: exactly one winner");
            outcomes[usize::from(wa == held_is_a)] += 1;
            for (n, start) in [(&w.a, starts.0), (&w.b, starts.1)] {
                let log = &n.log[start..];
                // No pair was taken for one the peer wants gone, and none recreated.
                assert!(
                    !log.iter().any(|o| matches!(
                        o,
                        Output::Event(IkeEvent::ChildDeleted {
                            reason: DeleteReason::Peer,
                            ..
                        })
                    )),
                    "{ctx}: {log:#?}"
                );
                let creates = log
                    .iter()
                    .filter(|o| {
                        matches!(o, Output::Event(IkeEvent::MessageSent { exchange, response: false, .. })
                            if *exchange == esplab_ike::ExchangeType::CREATE_CHILD_SA)
                    })
                    .count();
                assert_eq!(creates, 1, "{ctx}: only the rekey itself");
                // Three pairs existed (old + one per exchange); two went, with the
                // collision's reasons.
                let reasons: Vec<DeleteReason> = log
                    .iter()
                    .filter_map(|o| match o {
                        Output::Event(IkeEvent::ChildDeleted { reason, .. }) => Some(*reason),
                        _ => None,
                    })
                    .collect();
                assert_eq!(reasons.len(), 2, "{ctx}: {reasons:?}");
                assert!(reasons.contains(&DeleteReason::Rekeyed), "{ctx}");
                assert!(reasons.contains(&DeleteReason::RekeyCollision), "{ctx}");
                assert!(n.active.values().all(|a| *a), "{ctx}");
                let s = &n.ep.ike_sas(w.now)[0];
                assert!(s.outstanding_request.is_none() && s.queued_requests == 0);
                assert_eq!(s.children.len(), 1);
                assert_eq!(s.children[0].state, esplab_ike::ChildSaState::Installed);
            }
            // Nothing happens later either (no retransmission, no retry).
            let deadline = w.now + Duration::from_secs(120);
            let sent = w.history.len();
            w.run_until(deadline);
            assert_eq!(w.history.len(), sent, "{ctx}");
        }
    }
    // Both orderings were met: the held side won (the loser's Delete overtook the
    // winner's response) and lost (the winner's Delete of the old pair overtook it).
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

fn check_ike_rekey(by_a: bool) {
    let mut w = established("aes128gcm16");
    let old = w.a.ep.ike_sas(w.now)[0].clone();
    let pair_before = only_pair(&w.a);
    if by_a {
        w.a.ep.rekey_ike(w.now, "moon").unwrap();
    } else {
        w.b.ep.rekey_ike(w.now, "sun").unwrap();
    }
    w.drain();
    w.run();
    for n in [&w.a, &w.b] {
        let sas = n.ep.ike_sas(w.now);
        assert_eq!(sas.len(), 1, "the old IKE SA is deleted");
        let s = &sas[0];
        assert_eq!(s.state, IkeSaState::Established);
        assert_ne!(s.id, old.id);
        assert_ne!((s.spi_i, s.spi_r), (old.spi_i, old.spi_r));
        assert_eq!(s.children.len(), 1, "CHILD SAs moved");
        assert!(n
            .events()
            .iter()
            .any(|e| matches!(e, IkeEvent::IkeRekeyed { .. })));
        assert!(n.removes().is_empty(), "no CHILD SA was touched");
        // The rekey initiator is the new SA's original initiator (§2.18).
        assert_eq!(
            s.role,
            if std::ptr::eq(n, &w.a) == by_a {
                esplab_ike::Role::Initiator
            } else {
                esplab_ike::Role::Responder
            }
        );
    }
    assert_eq!(only_pair(&w.a), pair_before);
    let a = &w.a.ep.ike_sas(w.now)[0];
    let b = &w.b.ep.ike_sas(w.now)[0];
    assert_eq!((a.spi_i, a.spi_r), (b.spi_i, b.spi_r));
    // The new SA works: rekey the CHILD SA over it.
    let (a_in, _) = only_pair(&w.a);
    w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    assert_ne!(only_pair(&w.a).0, a_in);
    // …and its Message IDs started from zero.
    let a = &w.a.ep.ike_sas(w.now)[0];
    assert!(a.next_message_id <= 2, "{}", a.next_message_id);
}

#[test]
fn ike_rekey_by_initiator() {
    check_ike_rekey(true);
}

#[test]
fn ike_rekey_by_responder() {
    check_ike_rekey(false);
}

/// §2.8.2: both sides rekey the IKE SA at once. Both requests are answered (no
/// TEMPORARY_FAILURE, no retry), both new IKE SAs are made; the one from the exchange with
/// the lowest nonce is deleted by its initiator, the other exchange's initiator deletes
/// the old SA, and the CHILD SA ends up, untouched, on the same survivor on both sides.
#[test]
fn simultaneous_ike_rekey_follows_the_nonce_rule() {
    // [A's exchange lost, B's exchange lost]
    let mut outcomes = [0u32; 2];
    for seed in 0..12u64 {
        let t0 = std::time::Instant::now();
        let (a, b) = gcm_configs();
        // A exports its IKE SA keys, so the test can read the nonces of both exchanges.
        let ea = endpoint_with(vec![a], 20 + seed, t0, |c| c.export_ike_keys = true);
        let mut w = Wire::new(t0, ea, endpoint(vec![b], 200 + seed, t0));
        w.establish();
        let old = w.a.ep.ike_sas(w.now)[0].clone();
        let old_keys =
            w.a.log
                .iter()
                .find_map(|o| match o {
                    Output::IkeKeys(k) if k.rekey_of.is_none() => Some(k.keys.clone()),
                    _ => None,
                })
                .expect("keys of the first IKE SA");
        let history_start = w.history.len();
        let pair_before = only_pair(&w.a);
        w.a.ep.rekey_ike(w.now, "moon").unwrap();
        w.b.ep.rekey_ike(w.now, "sun").unwrap();
        w.drain();
        assert_eq!(w.in_flight.len(), 2, "both requests cross");
        let start = w.now;
        w.run();
        assert_eq!(w.now, start, "settled without any retry (seed {seed})");
        for n in [&w.a, &w.b] {
            let sas = n.ep.ike_sas(w.now);
            assert_eq!(sas.len(), 1, "seed {seed}: {sas:#?}");
            let s = &sas[0];
            assert_eq!(s.state, IkeSaState::Established);
            assert_ne!(s.id, old.id);
            assert_ne!((s.spi_i, s.spi_r), (old.spi_i, old.spi_r));
            assert_eq!(s.children.len(), 1, "CHILD SA on the survivor");
            assert!(s.outstanding_request.is_none() && s.queued_requests == 0);
            assert!(n.removes().is_empty(), "no CHILD SA was touched");
            assert!(!n.events().iter().any(|e| matches!(
                e,
                IkeEvent::MessageSent { payloads, .. } if payloads.contains("TEMPORARY_FAILURE")
            )));
        }
        let a = w.a.ep.ike_sas(w.now)[0].clone();
        let b = w.b.ep.ike_sas(w.now)[0].clone();
        assert_eq!((a.spi_i, a.spi_r), (b.spi_i, b.spi_r), "seed {seed}");
        assert_eq!(only_pair(&w.a), pair_before);
        assert_eq!(assert_pairs_match(&w), 1);
        // Exactly one side deleted the redundant SA it created, and the survivor's
        // original initiator is the other side (§2.18: the rekey initiator is the new
        // SA's initiator).
        let lost = |n: &Node| {
            n.events().iter().any(|e| {
                matches!(
                    e,
                    IkeEvent::IkeSaDeleted {
                        reason: DeleteReason::RekeyCollision,
                        ..
                    }
                )
            })
        };
        let (a_lost, b_lost) = (lost(&w.a), lost(&w.b));
        assert_ne!(a_lost, b_lost, "seed {seed}: exactly one redundant SA");
        // The loser is the exchange that carried the lowest of the four nonces: read
        // them from the two CREATE_CHILD_SA exchanges on the old SA.
        let nonce_of = |from_a: bool, response: bool| -> Vec<u8> {
            let p = w.history[history_start..]
                .iter()
                .find(|p| {
                    let h = esplab_ike::IkeHeader::decode(&p.data).unwrap().header;
                    p.exchange() == esplab_ike::ExchangeType::CREATE_CHILD_SA
                        && (h.spi_i, h.spi_r) == (old.spi_i, old.spi_r)
                        && (p.src.ip() == w.a.ip) == from_a
                        && p.is_response() == response
                })
                .expect("exchange message");
            // A is the old SA's original initiator: its messages use SK_ei/SK_ai.
            let sender = if from_a {
                esplab_ike::Role::Initiator
            } else {
                esplab_ike::Role::Responder
            };
            let opened = old_keys.sk_cipher(sender).unwrap().open(&p.data).unwrap();
            opened
                .payloads()
                .unwrap()
                .into_iter()
                .find_map(|x| match x {
                    esplab_ike::Payload::Nonce(n) => Some(n),
                    _ => None,
                })
                .expect("nonce")
        };
        // A's exchange: A's request, B's response; B's: B's request, A's response.
        let a_min = nonce_of(true, false).min(nonce_of(false, true));
        let b_min = nonce_of(false, false).min(nonce_of(true, true));
        assert_eq!(a_lost, a_min < b_min, "seed {seed}: the lowest nonce loses");
        assert_eq!(a.role == esplab_ike::Role::Initiator, b_lost, "seed {seed}");
        outcomes[usize::from(b_lost)] += 1;
        // The survivor works: rekey the CHILD SA over it, then delete it.
        let (a_in, _) = only_pair(&w.a);
        w.b.ep.rekey_child(w.now, a_in, &mut w.b.spis).unwrap();
        w.run();
        assert_eq!(assert_pairs_match(&w), 1);
        assert_ne!(only_pair(&w.a).0, a_in);
        w.a.ep.terminate(w.now, "moon").unwrap();
        w.run();
        assert!(w.a.ep.ike_sas(w.now).is_empty() && w.b.ep.ike_sas(w.now).is_empty());
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "both sides win sometimes: {outcomes:?}"
    );
}

/// §2.8.2 with reordering: both requests cross, but A gets B's answer to its own
/// request before B's request. A finishes a plain rekey and refuses B's request on the old
/// SA; B, whose answer to A already made A's new SA, keeps that one and does not retry.
#[test]
fn crossed_ike_rekey_with_reordering() {
    let mut w = established("aes128gcm16");
    let pair_before = only_pair(&w.a);
    w.a.ep.rekey_ike(w.now, "moon").unwrap();
    w.b.ep.rekey_ike(w.now, "sun").unwrap();
    w.drain();
    let (p1, p2) = (w.pop().unwrap(), w.pop().unwrap());
    let (req_a, req_b) = if p1.dst.ip() == w.b.ip {
        (p1, p2)
    } else {
        (p2, p1)
    };
    w.deliver(&req_a);
    let resp_a = w.pop().unwrap();
    assert!(resp_a.is_response());
    w.deliver(&resp_a);
    w.deliver(&req_b);
    let start = w.now;
    w.run();
    assert_eq!(w.now, start);
    let a = w.a.ep.ike_sas(w.now);
    let b = w.b.ep.ike_sas(w.now);
    assert_eq!((a.len(), b.len()), (1, 1), "{a:#?} {b:#?}");
    assert_eq!((a[0].spi_i, a[0].spi_r), (b[0].spi_i, b[0].spi_r));
    assert_eq!(a[0].role, esplab_ike::Role::Initiator);
    assert!(b[0].outstanding_request.is_none() && b[0].queued_requests == 0);
    // A refused B's request on the old SA (whose Delete then reached B first).
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent { payloads, response: true, .. } if payloads.contains("TEMPORARY_FAILURE")
    )));
    assert_eq!(only_pair(&w.a), pair_before);
    assert_eq!(assert_pairs_match(&w), 1);
    // Nothing is retried later.
    let deadline = w.now + Duration::from_secs(100);
    w.run_until(deadline);
    assert_eq!(w.a.ep.ike_sas(w.now)[0].id, a[0].id);
    assert_eq!(w.b.ep.ike_sas(w.now).len(), 1);
}

fn check_delete_child(by_a: bool) {
    let mut w = established("aes128gcm16");
    let (a_in, a_out) = only_pair(&w.a);
    if by_a {
        w.a.ep.delete_child(w.now, a_in).unwrap();
    } else {
        w.b.ep.delete_child(w.now, a_in).unwrap();
    }
    w.drain();
    w.run();
    assert!(w.a.installed.is_empty() && w.b.installed.is_empty());
    assert_eq!(w.a.removes(), [(a_in, a_out, Duration::from_secs(2))]);
    assert_eq!(w.b.removes(), [(a_out, a_in, Duration::from_secs(2))]);
    let receiver = if by_a { &w.b } else { &w.a };
    assert!(receiver.events().iter().any(|e| matches!(
        e,
        IkeEvent::DeleteReceived {
            protocol: ProtocolId::ESP,
            ..
        }
    )));
    // The IKE SA stays.
    assert_eq!(w.a.established(w.now), 1);
    assert_eq!(w.b.established(w.now), 1);
    assert!(matches!(
        w.a.ep.delete_child(w.now, a_in),
        Err(esplab_ike::CommandError::UnknownChild(_))
    ));
}

#[test]
fn delete_child_from_a() {
    check_delete_child(true);
}

#[test]
fn delete_child_from_b() {
    check_delete_child(false);
}

#[test]
fn simultaneous_child_delete() {
    let mut w = established("aes128gcm16");
    let (a_in, a_out) = only_pair(&w.a);
    w.a.ep.delete_child(w.now, a_in).unwrap();
    w.b.ep.delete_child(w.now, a_out).unwrap();
    w.drain();
    w.run();
    assert!(w.a.installed.is_empty() && w.b.installed.is_empty());
    assert_eq!(w.a.removes().len(), 1);
    assert_eq!(w.b.removes().len(), 1);
}

fn check_delete_ike(by_a: bool) {
    let mut w = established("aes128gcm16");
    if by_a {
        w.a.ep.terminate(w.now, "moon").unwrap();
    } else {
        w.b.ep.terminate(w.now, "sun").unwrap();
    }
    w.drain();
    w.run();
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w.a.installed.is_empty() && w.b.installed.is_empty());
    let receiver = if by_a { &w.b } else { &w.a };
    assert!(receiver.events().iter().any(|e| matches!(
        e,
        IkeEvent::DeleteReceived {
            protocol: ProtocolId::IKE,
            ..
        }
    )));
    assert!(receiver.events().iter().any(|e| matches!(
        e,
        IkeEvent::IkeSaDeleted {
            reason: DeleteReason::Peer,
            ..
        }
    )));
    assert_eq!(w.a.ep.poll_timeout(), None);
    assert_eq!(w.b.ep.poll_timeout(), None);
}

#[test]
fn delete_ike_from_a() {
    check_delete_ike(true);
}

#[test]
fn delete_ike_from_b() {
    check_delete_ike(false);
}

/// The recovery step: A got ESP for an SPI it does not know and reports it; B closes
/// exactly that pair and, configured to restart, negotiates a new one.
#[test]
fn notify_invalid_spi_deletes_exactly_that_pair_and_restarts() {
    let (a, mut b) = gcm_configs();
    b.on_peer_delete = PeerAction::Restart;
    let mut w = Wire::of(a, b);
    w.establish();
    // A second pair, to check only one goes.
    let (a_in, a_out) = only_pair(&w.a);
    w.a.ep.delete_child(w.now, a_in).unwrap();
    w.run();
    // (B restarted the deleted pair: that is the on_peer_delete behaviour too.)
    assert_eq!(assert_pairs_match(&w), 1);
    let keep = only_pair(&w.a);
    assert_ne!(keep.0, a_in);
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    w.run();
    assert_eq!(assert_pairs_match(&w), 1, "initiate does not duplicate");
    let _ = a_out;

    // Now the invalid SPI: B keeps sending on `keep`'s outbound SA, whose inbound SA A
    // has lost (say, a SAD reset). A reports the SPI.
    let (lost_in, lost_out) = keep;
    let removes_b = w.b.removes().len();
    w.a.ep
        .notify_invalid_spi(w.now, addr(B_ADDR).ip(), lost_in)
        .unwrap();
    w.drain();
    let req = w.pop().unwrap();
    assert_eq!(req.exchange(), esplab_ike::ExchangeType::INFORMATIONAL);
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent { payloads, .. } if payloads.contains("D(ESP") && payloads.contains("N(INVALID_SPI)")
    )));
    w.deliver(&req);
    let rm_b = &w.b.removes()[removes_b..];
    assert_eq!(rm_b.len(), 1);
    assert_eq!((rm_b[0].0, rm_b[0].1), (lost_out, lost_in));
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::InvalidSpiNotifyReceived { spi, known: true, .. } if *spi == lost_in
    )));
    w.run();
    // B restarted: a new pair exists on both sides, and it is a different one.
    assert_eq!(assert_pairs_match(&w), 1);
    assert_ne!(only_pair(&w.a).0, lost_in);
    let creates = w
        .history
        .iter()
        .filter(|p| p.exchange() == esplab_ike::ExchangeType::CREATE_CHILD_SA && !p.is_response())
        .count();
    assert_eq!(creates, 2, "one restart per deleted pair");
    // No IKE SA: an error.
    assert!(w
        .a
        .ep
        .notify_invalid_spi(w.now, "192.0.2.1".parse().unwrap(), 1)
        .is_err());
}

#[test]
fn notify_invalid_spi_variants() {
    for action in [
        esplab_ike::InvalidSpiAction::Delete,
        esplab_ike::InvalidSpiAction::Notify,
    ] {
        let t0 = std::time::Instant::now();
        let (a, b) = gcm_configs();
        let ea = endpoint_with(vec![a], 1, t0, |c| c.invalid_spi_action = action);
        let mut w = Wire::new(t0, ea, endpoint(vec![b], 2, t0));
        w.establish();
        // An SPI neither side knows: nothing is removed anywhere.
        w.a.ep
            .notify_invalid_spi(w.now, addr(B_ADDR).ip(), 0xdead_beef)
            .unwrap();
        w.run();
        assert!(w.a.removes().is_empty() && w.b.removes().is_empty());
        let got_notify = w.b.events().iter().any(|e| {
            matches!(
                e,
                IkeEvent::InvalidSpiNotifyReceived {
                    spi: 0xdead_beef,
                    known: false,
                    ..
                }
            )
        });
        let got_delete = w.b.events().iter().any(|e| matches!(
            e,
            IkeEvent::DeleteReceived { protocol: ProtocolId::ESP, spis, .. } if spis == &[0xdead_beef]
        ));
        assert_eq!(got_notify, action == esplab_ike::InvalidSpiAction::Notify);
        assert_eq!(got_delete, action == esplab_ike::InvalidSpiAction::Delete);
        assert_eq!(assert_pairs_match(&w), 1);
    }
}

/// §2.4: A restarts (new endpoint, no state) and connects again with INITIAL_CONTACT; B
/// drops the old IKE SA of that identity and its CHILD SAs.
#[test]
fn initial_contact_replaces_the_old_ike_sa() {
    let mut w = established("aes128gcm16");
    let (old_b_in, _) = only_pair(&w.b);
    let old_id = w.b.ep.ike_sas(w.now)[0].id;
    let (a, _) = gcm_configs();
    w.a = Node::new(endpoint(vec![a], 77, w.now), "10.0.0.1", 0xa100_0000);
    w.establish();
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent { payloads, .. } if payloads.contains("N(INITIAL_CONTACT)")
    )));
    let sas = w.b.ep.ike_sas(w.now);
    assert_eq!(sas.len(), 1);
    assert_ne!(sas[0].id, old_id);
    assert!(w.b.removes().iter().any(|r| r.0 == old_b_in));
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::IkeSaDeleted { ike_sa, reason: DeleteReason::InitialContact, .. } if *ike_sa == old_id
    )));
    assert_eq!(assert_pairs_match(&w), 1);
}

#[test]
fn no_initial_contact_when_disabled() {
    let (mut a, b) = gcm_configs();
    a.initial_contact = false;
    let mut w = Wire::of(a, b);
    w.establish();
    assert!(!w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent { payloads, .. } if payloads.contains("INITIAL_CONTACT")
    )));
}

/// A responder-only peer accepts an unknown address and never initiates.
#[test]
fn dynamic_peer() {
    let t0 = std::time::Instant::now();
    let far = "198.51.100.7:4500";
    // A at an address B has no static config for.
    let far_a = || {
        let (mut a, _) = gcm_configs();
        a.local_addr = Some(addr(far));
        a
    };
    let a = far_a();
    let mut b = peer("roadwarrior", B_ADDR, None, "moon", "sun");
    b.remote_id = None;
    b.local_addr = None;
    b.start = true;
    let eb = endpoint(vec![b], 2, t0);
    assert_eq!(eb.poll_timeout(), None, "a dynamic peer is never started");
    let mut w = Wire::new(t0, endpoint(vec![a], 1, t0), eb);
    w.a.ip = addr(far).ip();
    assert!(matches!(
        w.b.ep.initiate(w.now, "roadwarrior", &mut w.b.spis),
        Err(esplab_ike::CommandError::NoRemoteAddress(_))
    ));
    w.establish();
    assert_eq!(assert_pairs_match(&w), 1);
    let s = &w.b.ep.ike_sas(w.now)[0];
    assert_eq!(s.peer, "roadwarrior");
    assert_eq!(s.remote, addr(far));
    assert_eq!(s.remote_id.as_deref(), Some("sun"));
    // An address with no config and no dynamic peer is not answered.
    let b = peer("sun", B_ADDR, Some(A_ADDR), "moon", "sun");
    let mut w = Wire::of(far_a(), b);
    w.a.ip = addr(far).ip();
    w.establish();
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageDropped {
            reason: esplab_ike::DropReason::NoPeerConfig,
            ..
        }
    )));
}

#[test]
fn start_at_first_timeout() {
    let t0 = std::time::Instant::now();
    let (mut a, b) = gcm_configs();
    a.start = true;
    let ea = endpoint(vec![a], 1, t0);
    assert_eq!(ea.poll_timeout(), Some(t0));
    let mut w = Wire::new(t0, ea, endpoint(vec![b], 2, t0));
    w.timeout();
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
}

/// Soft expiry rekeys, hard expiry deletes — all on the virtual clock.
#[test]
fn lifetimes_drive_rekeys() {
    let life = esplab_ike::Lifetime::new(
        Duration::from_secs(100),
        Duration::from_secs(20),
        Duration::from_secs(10),
    );
    let ike_life = esplab_ike::Lifetime::new(
        Duration::from_secs(250),
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    let (mut a, mut b) = gcm_configs();
    a.child_lifetime = Some(life);
    b.child_lifetime = Some(life);
    a.ike_lifetime = Some(ike_life);
    b.ike_lifetime = Some(ike_life);
    let mut w = Wire::of(a, b);
    w.establish();
    let first = only_pair(&w.a);
    let end = w.now + Duration::from_secs(1000);
    w.run_until(end);
    assert_eq!(assert_pairs_match(&w), 1);
    assert_ne!(only_pair(&w.a), first);
    let rekeys = |n: &Node| {
        n.events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    IkeEvent::ChildRekeyed {
                        initiator: true,
                        ..
                    }
                )
            })
            .count()
    };
    // About one rekey per 70–80 s over 1000 s, by whoever hit the soft expiry first.
    let total = rekeys(&w.a) + rekeys(&w.b);
    assert!((10..=16).contains(&total), "{total} rekeys");
    assert!(w
        .a
        .events()
        .iter()
        .chain(w.b.events().iter())
        .any(|e| matches!(e, IkeEvent::IkeRekeyed { .. })));
    for n in [&w.a, &w.b] {
        assert!(!n.events().iter().any(|e| matches!(
            e,
            IkeEvent::ChildDeleted {
                reason: DeleteReason::Expired,
                ..
            }
        )));
        assert_eq!(n.ep.ike_sas(w.now).len(), 1);
    }
}

/// With a hard lifetime but no chance to rekey (B never answers), the pair is deleted.
#[test]
fn hard_expiry_deletes() {
    let life = esplab_ike::Lifetime::new(
        Duration::from_secs(100),
        Duration::from_secs(20),
        Duration::ZERO,
    );
    let (mut a, b) = gcm_configs();
    a.child_lifetime = Some(life);
    let mut w = Wire::of(a, b);
    w.establish();
    let start = w.now;
    // From now on B hears nothing.
    let end = start + Duration::from_secs(101);
    w.run_until_with(end, |p| p.dst.ip() == addr(B_ADDR).ip());
    assert!(w.a.installed.is_empty());
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::ChildDeleted {
            reason: DeleteReason::Expired,
            ..
        }
    )));
}

#[test]
fn dpd_liveness_checks() {
    let (mut a, b) = gcm_configs();
    a.dpd_delay = Some(Duration::from_secs(30));
    let mut w = Wire::of(a, b);
    w.establish();
    let n0 = w.history.len();
    let end = w.now + Duration::from_secs(100);
    w.run_until(end);
    let checks: Vec<_> = w.history[n0..]
        .iter()
        .filter(|p| !p.is_response())
        .map(|p| Message::parse(&p.data).unwrap().header.message_id)
        .collect();
    assert_eq!(checks, [2, 3, 4], "one empty INFORMATIONAL every 30 s");
    assert_eq!(assert_pairs_match(&w), 1);
}

/// A terminate issued while an IKE rekey is in flight also takes the new IKE SA down.
#[test]
fn terminate_during_ike_rekey() {
    let mut w = established("aes128gcm16");
    w.a.ep.rekey_ike(w.now, "moon").unwrap();
    w.a.ep.terminate(w.now, "moon").unwrap();
    w.drain();
    w.run();
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w.a.installed.is_empty() && w.b.installed.is_empty());
}

/// A peer's own retransmission schedule overrides the endpoint's (§2.1): 3 transmissions
/// 1 s, 2 s and 4 s apart-waits, dead after 7 s instead of the default ~150 s; the
/// IKE_SA_INIT request follows it too.
#[test]
fn per_peer_retransmit_schedule() {
    let (mut a, b) = gcm_configs();
    a.retransmit = Some(esplab_ike::Retransmit {
        tries: 2,
        timeout: Duration::from_secs(1),
        base: 2.0,
        limit: None,
    });
    let mut w = Wire::seeded(a, b, (5, 6));
    // B keeps the endpoint default: its first wait is 4 s.
    assert_eq!(w.b.ep.config().retransmit.timeout, Duration::from_secs(4));
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    assert_eq!(w.a.ep.poll_timeout(), Some(w.now + Duration::from_secs(1)));
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    let start = w.now;
    w.a.ep.send_liveness(w.now, "moon").unwrap();
    w.drain();
    assert_eq!(w.a.ep.poll_timeout(), Some(start + Duration::from_secs(1)));
    w.run_until_with(start + Duration::from_millis(6900), |_| true);
    assert_eq!(w.a.ep.ike_sas(w.now).len(), 1, "alive before 1 + 2 + 4 s");
    w.run_until_with(start + Duration::from_secs(7), |_| true);
    assert!(w.a.ep.ike_sas(w.now).is_empty(), "dead at 7 s");
    let sends =
        w.a.events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    IkeEvent::MessageSent {
                        exchange: esplab_ike::ExchangeType::INFORMATIONAL,
                        response: false,
                        ..
                    }
                )
            })
            .count();
    assert_eq!(sends, 3, "original + 2 retransmissions");
    assert!(w
        .a
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::PeerDead { .. })));
}
