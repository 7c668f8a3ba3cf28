//! IKE_SA_INIT + IKE_AUTH between two endpoints on the in-memory wire: both suites,
//! both roles, the wire format of the first message, and the refusals
//! (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, AUTHENTICATION_FAILED, TS_UNACCEPTABLE).

mod common;

use common::*;
use esplab_ike::crypto::nat_detection_hash;
use esplab_ike::proposal::{offer, ProposalSpec};
use esplab_ike::{
    AuthFailure, DhGroup, ExchangeType, Flags, Identity, IkeEvent, IkeHeader, IkeSaState,
    KePayload, Message, Notify, NotifyType, Payload, Role,
};

const CBC_IKE: &str = "aes128-sha256-x25519";

fn establish_and_check(ike: &str, esp: &str) -> Wire {
    let mut w = pair(ike, esp);
    w.establish();
    let now = w.now;
    assert_eq!(assert_pairs_match(&w), 1);
    for (node, role) in [(&w.a, Role::Initiator), (&w.b, Role::Responder)] {
        let sas = node.ep.ike_sas(now);
        assert_eq!(sas.len(), 1);
        let s = &sas[0];
        assert_eq!(s.state, IkeSaState::Established);
        assert_eq!(s.role, role);
        assert_eq!(s.children.len(), 1);
        assert!(node
            .events()
            .iter()
            .any(|e| matches!(e, IkeEvent::AuthSucceeded { role: r, .. } if *r == role)));
        assert!(node
            .events()
            .iter()
            .any(|e| matches!(e, IkeEvent::ChildEstablished { .. })));
        assert!(s.outstanding_request.is_none());
    }
    let a = &w.a.ep.ike_sas(now)[0];
    let b = &w.b.ep.ike_sas(now)[0];
    assert_eq!((a.spi_i, a.spi_r), (b.spi_i, b.spi_r));
    assert_eq!(a.suite, b.suite);
    // §2.2: IKE_SA_INIT was 0, IKE_AUTH 1; the responder's own requests start at 0.
    assert_eq!(a.next_message_id, 2);
    assert_eq!(b.peer_next_message_id, 2);
    assert_eq!(b.next_message_id, 0);
    // Both sides installed exactly one pair; the initiator after the response.
    assert_eq!(w.a.installs().len(), 1);
    assert_eq!(w.b.installs().len(), 1);
    assert!(w.a.installs()[0].outbound_active && w.b.installs()[0].outbound_active);
    assert!(w.a.installs()[0].rekey_of.is_none());
    // Four messages in all, no retransmissions.
    assert_eq!(w.history.len(), 4);
    w
}

#[test]
fn establish_gcm_suite() {
    let w = establish_and_check(GCM_IKE, "aes128gcm16");
    let s = &w.a.ep.ike_sas(w.now)[0];
    assert_eq!(s.suite.as_deref(), Some("aes128gcm16-prfsha256-x25519"));
    assert_eq!(s.children[0].suite, "aes128gcm16-noesn");
    let json = serde_json::to_value(w.a.ep.ike_sas(w.now)).unwrap();
    assert_eq!(json[0]["state"], "established");
    assert_eq!(json[0]["role"], "initiator");
    assert_eq!(json[0]["spi_i"].as_str().unwrap().len(), 16);
}

#[test]
fn establish_cbc_suite() {
    let w = establish_and_check(CBC_IKE, "aes128-sha256");
    let s = &w.b.ep.ike_sas(w.now)[0];
    assert_eq!(s.suite.as_deref(), Some("aes128-sha256-prfsha256-x25519"));
    assert_eq!(s.children[0].suite, "aes128-sha256-noesn");
}

#[test]
fn establish_mixed_suites_and_esn() {
    establish_and_check(GCM_IKE, "aes256-sha256-esn");
    establish_and_check("aes256gcm16-prfsha512-x25519", "aes256gcm16");
}

#[test]
fn b_initiates_to_a() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.b.ep.initiate(w.now, "sun", &mut w.b.spis).unwrap();
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    assert_eq!(w.b.ep.ike_sas(w.now)[0].role, Role::Initiator);
    assert_eq!(w.a.ep.ike_sas(w.now)[0].role, Role::Responder);
    // Selectors: host to host, mirrored.
    let a = &w.a.installed.values().next().unwrap();
    assert_eq!(
        esplab_ike::output::ts_to_string(&a.local_ts[0]),
        "10.0.0.1/32"
    );
}

#[test]
fn initiate_twice_returns_the_same_sa() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    let id = w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    assert_eq!(w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap(), id);
    w.run();
    assert_eq!(w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap(), id);
    assert_eq!(assert_pairs_match(&w), 1);
    assert!(matches!(
        w.a.ep.initiate(w.now, "nobody", &mut w.a.spis),
        Err(esplab_ike::CommandError::UnknownPeer(_))
    ));
}

/// RFC 7296 §1.2: HDR, SA, KEi, Ni, then the NAT detection notifications (§2.23).
#[test]
fn ike_sa_init_request_structure() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let p = w.pop().unwrap();
    assert_eq!(p.src, addr(A_ADDR));
    assert_eq!(p.dst, addr(B_ADDR));
    let m = Message::parse(&p.data).unwrap();
    assert_eq!(m.header.exchange_type, ExchangeType::IKE_SA_INIT);
    assert_eq!(m.header.flags, Flags::INITIATOR);
    assert_eq!(m.header.message_id, 0);
    assert_eq!(m.header.spi_r, 0);
    assert_ne!(m.header.spi_i, 0);
    assert_eq!(
        payload_types(&p.data),
        [
            "SA",
            "KE",
            "NONCE",
            "N(NAT_DETECTION_SOURCE_IP)",
            "N(NAT_DETECTION_DESTINATION_IP)"
        ]
    );
    let Payload::Sa(sa) = &m.payloads[0] else {
        unreachable!()
    };
    assert_eq!(sa.proposals.len(), 1);
    assert_eq!(sa.proposals[0].number, 1);
    assert!(sa.proposals[0].spi.is_empty());
    let Payload::Ke(ke) = &m.payloads[1] else {
        unreachable!()
    };
    assert_eq!(ke.group, DhGroup::CURVE25519);
    assert_eq!(ke.data.len(), 32);
    let Payload::Nonce(n) = &m.payloads[2] else {
        unreachable!()
    };
    assert_eq!(n.len(), 32);
    let src = nat_detection_hash(m.header.spi_i, 0, addr(A_ADDR).ip(), 4500);
    let dst = nat_detection_hash(m.header.spi_i, 0, addr(B_ADDR).ip(), 4500);
    assert_eq!(
        m.notify(NotifyType::NAT_DETECTION_SOURCE_IP).unwrap().data,
        src
    );
    assert_eq!(
        m.notify(NotifyType::NAT_DETECTION_DESTINATION_IP)
            .unwrap()
            .data,
        dst
    );
    // The response mirrors it: SA, KE, Nr, NAT_D_S, NAT_D_D, SPIr set, R flag.
    w.deliver(&p);
    let r = w.pop().unwrap();
    let rm = Message::parse(&r.data).unwrap();
    assert_eq!(rm.header.flags, Flags::RESPONSE);
    assert_ne!(rm.header.spi_r, 0);
    assert_eq!(payload_types(&r.data).len(), 5);
    assert!(
        w.a.ep.ike_sas(w.now)[0].nat
            == esplab_ike::NatInfo {
                detection: false,
                local_behind_nat: false,
                remote_behind_nat: false
            }
    );
    w.deliver(&r);
    w.run();
    let s = &w.a.ep.ike_sas(w.now)[0];
    assert!(s.nat.detection && !s.nat.local_behind_nat && !s.nat.remote_behind_nat);
}

#[test]
fn ike_no_proposal_chosen() {
    let (a, _) = gcm_configs();
    let (_, b) = configs(CBC_IKE, GCM_ESP);
    let mut w = Wire::of(a, b);
    w.establish();
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::NoProposalChosen {
            by_us: true,
            exchange: ExchangeType::IKE_SA_INIT,
            ..
        }
    )));
    assert!(w
        .a
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::NoProposalChosen { by_us: false, .. })));
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::SaInitFailed {
            notify: Some(NotifyType::NO_PROPOSAL_CHOSEN),
            ..
        }
    )));
    assert!(w.a.installs().is_empty() && w.b.installs().is_empty());
    assert_eq!(w.a.ep.poll_timeout(), None, "nothing left to retransmit");
}

#[test]
fn esp_no_proposal_chosen_keeps_the_ike_sa() {
    let (a, _) = gcm_configs();
    let (_, b) = configs(GCM_IKE, "aes256-sha256");
    let mut w = Wire::of(a, b);
    w.establish();
    // §1.2: the IKE SA is established even though the CHILD SA is not.
    assert_eq!(w.a.established(w.now), 1);
    assert_eq!(w.b.established(w.now), 1);
    assert!(w.a.installs().is_empty() && w.b.installs().is_empty());
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::ChildFailed {
            notify: NotifyType::NO_PROPOSAL_CHOSEN,
            by_us: false,
            ..
        }
    )));
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::ChildFailed {
            notify: NotifyType::NO_PROPOSAL_CHOSEN,
            by_us: true,
            ..
        }
    )));
    // The SPI A reserved for the CHILD SA went back to the allocator.
    assert_eq!(w.a.spis.released.len(), 1);
}

#[test]
fn ts_unacceptable() {
    let (mut a, b) = gcm_configs();
    // A wants a subnet behind B that B's policy (its own host) does not cover.
    a.remote_ts = vec![esplab_ike::selectors::host_selector(
        "192.0.2.99".parse().unwrap(),
    )];
    let mut w = Wire::of(a, b);
    w.establish();
    assert_eq!(w.a.established(w.now), 1);
    assert!(w.a.installs().is_empty() && w.b.installs().is_empty());
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::ChildFailed {
            notify: NotifyType::TS_UNACCEPTABLE,
            ..
        }
    )));
}

#[test]
fn ts_narrowing_to_the_responder_policy() {
    use esplab_ike::ts::{AddrRange, TrafficSelector};
    let net = |a: [u8; 4], b: [u8; 4]| {
        TrafficSelector::any_port(AddrRange::V4 {
            start: a.into(),
            end: b.into(),
        })
    };
    let (mut a, mut b) = gcm_configs();
    a.local_ts = vec![net([10, 1, 0, 0], [10, 1, 255, 255])];
    a.remote_ts = vec![net([10, 2, 0, 0], [10, 2, 255, 255])];
    b.local_ts = vec![net([10, 2, 1, 0], [10, 2, 1, 255])];
    b.remote_ts = vec![net([10, 1, 0, 0], [10, 1, 255, 255])];
    let mut w = Wire::of(a, b);
    w.establish();
    assert_eq!(assert_pairs_match(&w), 1);
    let c = w.a.installed.values().next().unwrap();
    assert_eq!(c.local_ts, [net([10, 1, 0, 0], [10, 1, 255, 255])]);
    assert_eq!(c.remote_ts, [net([10, 2, 1, 0], [10, 2, 1, 255])]);
}

#[test]
fn transport_mode() {
    let (mut a, mut b) = gcm_configs();
    a.mode = esplab_ike::Mode::Transport;
    b.mode = esplab_ike::Mode::Transport;
    let mut w = Wire::of(a, b);
    w.establish();
    assert_eq!(assert_pairs_match(&w), 1);
    assert_eq!(w.a.installs()[0].mode, esplab_ike::Mode::Transport);
}

#[test]
fn wrong_psk_authentication_failed() {
    let (a, mut b) = gcm_configs();
    b.psk = esplab_ike::crypto::SecretBytes::from_slice(b"another secret");
    let mut w = Wire::of(a, b);
    w.establish();
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::AuthFailed {
            why: AuthFailure::BadAuth,
            ..
        }
    )));
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::AuthFailed {
            why: AuthFailure::RejectedByPeer,
            ..
        }
    )));
    assert!(w.a.installs().is_empty() && w.b.installs().is_empty());
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert_eq!(w.a.spis.released.len(), 1);
    assert_eq!(w.a.ep.poll_timeout(), None);
    assert_eq!(w.b.ep.poll_timeout(), None);
}

#[test]
fn wrong_identity_is_refused() {
    let (a, mut b) = gcm_configs();
    // B expects another identity than the one A presents.
    b.remote_id = Some(Identity::fqdn("mercury"));
    let mut w = Wire::of(a, b);
    w.establish();
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::AuthFailed {
            why: AuthFailure::UnknownIdentity(_),
            ..
        }
    )));
    assert!(w.a.ep.ike_sas(w.now).is_empty());
}

/// The initiator offers a group it does not implement first: it sends its KE for the
/// first group it can compute, and the exchange works.
#[test]
fn unsupported_group_first_in_the_offer() {
    let (mut a, b) = gcm_configs();
    a.ike_proposals[0].dh = vec![DhGroup::ECP_256, DhGroup::CURVE25519];
    let mut w = Wire::of(a, b);
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let p = w.pop().unwrap();
    let m = Message::parse(&p.data).unwrap();
    let Some(Payload::Ke(ke)) = m.payloads.get(1) else {
        unreachable!()
    };
    assert_eq!(ke.group, DhGroup::CURVE25519);
    w.deliver(&p);
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
}

fn hand_init_request(spi_i: u64, ke_group: DhGroup, ke_len: usize, groups: &[DhGroup]) -> Vec<u8> {
    let mut spec = ProposalSpec::parse_ike(GCM_IKE).unwrap();
    spec.dh = groups.to_vec();
    Message {
        header: IkeHeader {
            spi_i,
            spi_r: 0,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
        },
        payloads: vec![
            Payload::Sa(offer(&[spec], &[])),
            Payload::Ke(KePayload {
                group: ke_group,
                data: vec![7; ke_len],
            }),
            Payload::Nonce(vec![1; 32]),
        ],
    }
    .emit()
}

/// §1.2: a KE for a group the responder did not choose is answered with
/// INVALID_KE_PAYLOAD naming the chosen group; the responder keeps no state.
#[test]
fn responder_sends_invalid_ke_payload() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    let req = hand_init_request(
        0x1122_3344_5566_7788,
        DhGroup::ECP_256,
        64,
        &[DhGroup::ECP_256, DhGroup::CURVE25519],
    );
    w.b.ep
        .handle_datagram(w.now, addr(B_ADDR), addr(A_ADDR), &req, &mut w.b.spis);
    w.drain();
    let r = w.in_flight.pop_front().unwrap();
    let m = Message::parse(&r.data).unwrap();
    assert_eq!(m.header.spi_i, 0x1122_3344_5566_7788);
    assert_eq!(m.header.spi_r, 0);
    assert!(m.header.flags.is_response());
    let n = m.notify(NotifyType::INVALID_KE_PAYLOAD).unwrap();
    assert_eq!(n.wanted_group(), Some(DhGroup::CURVE25519));
    assert_eq!(m.payloads.len(), 1);
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::InvalidKeSent {
            group: DhGroup::CURVE25519,
            ..
        }
    )));
}

/// The initiator side of INVALID_KE_PAYLOAD: a group we cannot compute ends the attempt
/// (a group we implement and offered would be retried with a new KE, §1.2).
#[test]
fn initiator_handles_invalid_ke_payload() {
    for wanted in [DhGroup::ECP_256, DhGroup::CURVE25519] {
        let mut w = pair(GCM_IKE, "aes128gcm16");
        w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
        let req = w.pop().unwrap();
        let spi_i = Message::parse(&req.data).unwrap().header.spi_i;
        let resp = Message {
            header: IkeHeader {
                spi_i,
                spi_r: 0,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::RESPONSE,
                message_id: 0,
            },
            payloads: vec![Payload::Notify(Notify::new(
                NotifyType::INVALID_KE_PAYLOAD,
                wanted.0.to_be_bytes().to_vec(),
            ))],
        }
        .emit();
        w.a.ep
            .handle_datagram(w.now, addr(A_ADDR), addr(B_ADDR), &resp, &mut w.a.spis);
        w.drain();
        assert!(w.a.events().iter().any(|e| matches!(
            e,
            IkeEvent::InvalidKeRequested { group, retry: false, .. } if *group == wanted
        )));
        assert!(w.a.events().iter().any(|e| matches!(
            e,
            IkeEvent::SaInitFailed {
                notify: Some(NotifyType::INVALID_KE_PAYLOAD),
                ..
            }
        )));
        assert!(w.a.ep.ike_sas(w.now).is_empty());
        assert!(w.in_flight.is_empty());
    }
}

#[test]
fn responder_drops_bad_ke_data() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    // Right group, wrong length: INVALID_SYNTAX, no state.
    let req = hand_init_request(42, DhGroup::CURVE25519, 31, &[DhGroup::CURVE25519]);
    w.b.ep
        .handle_datagram(w.now, addr(B_ADDR), addr(A_ADDR), &req, &mut w.b.spis);
    w.drain();
    let r = w.in_flight.pop_front().unwrap();
    let m = Message::parse(&r.data).unwrap();
    assert!(m.notify(NotifyType::INVALID_SYNTAX).is_some());
    assert!(w.b.ep.ike_sas(w.now).is_empty());
}
