//! Reliability (RFC 7296 §2.1–§2.4): retransmission, cached responses, peer death,
//! half-open timeouts, COOKIEs under load (§2.6), unprotected messages (§2.21.4) and
//! NAT detection with port floating (§2.23).

mod common;

use common::*;
use esplab_ike::{
    DeleteReason, DropReason, ExchangeType, Flags, IkeEvent, IkeHeader, Message, Notify,
    NotifyType, Output, Payload, Retransmit,
};
use std::time::{Duration, Instant};

#[test]
fn dropped_request_is_retransmitted() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    // Lose the first IKE_AUTH request.
    let mut lost = 0;
    w.run_dropping(|p| {
        let drop = p.exchange() == ExchangeType::IKE_AUTH && !p.is_response() && lost == 0;
        lost += drop as usize;
        drop
    });
    assert_eq!(lost, 1);
    assert!(w.a.installed.is_empty());
    // 4 s later (strongSwan's first timeout) it goes again, byte for byte.
    let deadline = w.a.ep.poll_timeout().unwrap();
    assert_eq!(deadline - w.now, Duration::from_secs(4));
    w.now = deadline;
    w.timeout();
    let re = w.in_flight.front().unwrap().clone();
    let first_auth = w
        .history
        .iter()
        .find(|p| p.exchange() == ExchangeType::IKE_AUTH)
        .unwrap();
    assert_eq!(re.data, first_auth.data);
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent {
            retransmit: true,
            exchange: ExchangeType::IKE_AUTH,
            ..
        }
    )));
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
}

#[test]
fn dropped_response_is_answered_from_cache() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    // Lose B's first IKE_AUTH response: A retransmits, B answers from its cache.
    let mut lost = 0;
    w.run_dropping(|p| {
        let drop = p.exchange() == ExchangeType::IKE_AUTH && p.is_response() && lost == 0;
        lost += drop as usize;
        drop
    });
    assert_eq!(w.b.installs().len(), 1);
    w.now = w.a.ep.poll_timeout().unwrap();
    w.timeout();
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    assert_eq!(w.b.installs().len(), 1, "B did not process IKE_AUTH twice");
    let responses: Vec<_> = w
        .history
        .iter()
        .filter(|p| p.exchange() == ExchangeType::IKE_AUTH && p.is_response())
        .collect();
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].data, responses[1].data);
}

#[test]
fn duplicated_request_is_not_processed_twice() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.establish();
    let (a_in, _) = only_pair(&w.a);
    w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
    let req = w.pop().unwrap();
    let installs_before = w.b.installs().len();
    w.deliver(&req);
    let resp1 = w.pop().unwrap();
    // The network duplicates the request.
    w.deliver(&req);
    let resp2 = w.pop().unwrap();
    assert_eq!(resp1.data, resp2.data, "the cached response, unchanged");
    assert_eq!(w.b.installs().len(), installs_before + 1);
    assert!(w.b.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageSent {
            retransmit: true,
            response: true,
            exchange: ExchangeType::CREATE_CHILD_SA,
            ..
        }
    )));
    // Both copies of the response reach A: the second matches no request and is dropped.
    w.deliver(&resp1);
    w.deliver(&resp2);
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::MessageDropped {
            reason: DropReason::UnexpectedResponse,
            ..
        }
    )));
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
    // A duplicate of a duplicate of the IKE_SA_INIT request also gets the cached answer.
    let init = w.history[0].clone();
    let n = w.b.ep.ike_sas(w.now).len();
    w.deliver(&init);
    assert_eq!(w.b.ep.ike_sas(w.now).len(), n);
}

#[test]
fn duplicated_init_request_gets_the_cached_response() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let init = w.pop().unwrap();
    w.deliver(&init);
    let r1 = w.pop().unwrap();
    w.deliver(&init);
    let r2 = w.pop().unwrap();
    assert_eq!(r1.data, r2.data);
    assert_eq!(w.b.ep.ike_sas(w.now).len(), 1);
    w.deliver(&r1);
    w.deliver(&r2);
    w.run();
    assert_eq!(assert_pairs_match(&w), 1);
}

/// With no answers at all, the peer is declared dead after exactly the sum of the
/// backoff schedule (4 · 1.8ⁿ for n = 0..=5 with the defaults).
#[test]
fn peer_dead_after_the_retransmission_schedule() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.establish();
    let (a_in, a_out) = {
        let c = w.a.installed.values().next().unwrap();
        (c.inbound.spi, c.outbound.spi)
    };
    let start = w.now;
    w.a.ep.send_liveness(w.now, "moon").unwrap();
    let end = start + Duration::from_secs(1000);
    w.run_until_with(end, |_| true);
    let dead_at =
        w.a.log
            .iter()
            .position(|o| matches!(o, Output::Event(IkeEvent::PeerDead { .. })))
            .expect("peer dead");
    // The wire clock when PeerDead was emitted: count the sends before it.
    let sends = w.a.log[..dead_at]
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Event(IkeEvent::MessageSent {
                    exchange: ExchangeType::INFORMATIONAL,
                    ..
                })
            )
        })
        .count();
    assert_eq!(sends, 6, "original + 5 retransmissions");
    let r = Retransmit::default();
    let expected: f64 = (0..=5).map(|n| 4.0 * 1.8f64.powi(n)).sum();
    assert!((r.total().as_secs_f64() - expected).abs() < 1e-6);
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.a.installed.is_empty());
    assert!(w.a.removes().contains(&(a_in, a_out, Duration::ZERO)));
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::RetransmitTimeout {
            exchange: ExchangeType::INFORMATIONAL,
            message_id: 2,
            ..
        }
    )));
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::IkeSaDeleted {
            reason: DeleteReason::PeerDead,
            ..
        }
    )));
}

#[test]
fn peer_dead_timing_is_exact() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.establish();
    let start = w.now;
    w.a.ep.send_liveness(w.now, "moon").unwrap();
    w.drain();
    w.in_flight.clear();
    // Step timer by timer; record when each retransmission and the death happen.
    let mut times = vec![];
    while let Some(t) = w.a.ep.poll_timeout() {
        w.now = t;
        w.a.ep.handle_timeout(t, &mut w.a.spis);
        w.drain();
        w.in_flight.clear();
        times.push(t - start);
        if w.a.ep.ike_sas(w.now).is_empty() {
            break;
        }
    }
    let r = Retransmit::default();
    let want: Vec<Duration> = (1..=6u32)
        .map(|k| (0..k).map(|n| r.wait(n)).sum())
        .collect();
    assert_eq!(times, want);
    assert_eq!(*times.last().unwrap(), r.total());
    assert!((r.total().as_secs_f64() - 165.06).abs() < 0.01);
}

#[test]
fn initiator_gives_up_without_any_answer() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let start = w.now;
    let end = start + Duration::from_secs(1000);
    w.run_until_with(end, |_| true);
    assert!(w.a.ep.ike_sas(w.now).is_empty());
    assert!(w.a.events().iter().any(|e| matches!(
        e,
        IkeEvent::RetransmitTimeout {
            exchange: ExchangeType::IKE_SA_INIT,
            ..
        }
    )));
    assert_eq!(w.a.ep.poll_timeout(), None);
}

#[test]
fn restart_after_peer_death() {
    let (mut a, b) = gcm_configs();
    a.on_dead = esplab_ike::PeerAction::Restart;
    let mut w = Wire::of(a, b);
    w.establish();
    w.a.ep.send_liveness(w.now, "moon").unwrap();
    // B is unreachable for 170 s, then back.
    let outage_end = w.now + Duration::from_secs(170);
    w.run_until_with(outage_end, |_| true);
    assert!(w
        .a
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::PeerDead { .. })));
    let end = w.now + Duration::from_secs(30);
    w.run_until(end);
    // A started over; B took the INITIAL_CONTACT and dropped the stale SA.
    assert_eq!(w.a.ep.ike_sas(w.now).len(), 1);
    assert_eq!(w.b.ep.ike_sas(w.now).len(), 1);
    assert_eq!(assert_pairs_match(&w), 1);
}

#[test]
fn half_open_sa_times_out() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let init = w.pop().unwrap();
    w.deliver(&init);
    w.in_flight.clear();
    assert_eq!(w.b.ep.ike_sas(w.now).len(), 1);
    let t = w.b.ep.poll_timeout().unwrap();
    assert_eq!(t - w.now, Duration::from_secs(30));
    w.now = t;
    w.b.ep.handle_timeout(t, &mut w.b.spis);
    w.drain();
    assert!(w.b.ep.ike_sas(w.now).is_empty());
    assert!(w
        .b
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::HalfOpenTimeout { .. })));
}

/// §2.6: above the half-open threshold the responder answers with a COOKIE; the
/// initiator retries with it as the first payload and gets through.
#[test]
fn cookie_under_half_open_load() {
    let t0 = Instant::now();
    let (a, b) = gcm_configs();
    let mut rw = peer("rw", B_ADDR, None, "moon", "any");
    rw.remote_id = None;
    let eb = endpoint_with(vec![b, rw], 2, t0, |c| c.half_open_limit = 2);
    let mut w = Wire::new(t0, endpoint(vec![a], 1, t0), eb);
    // Two half-open SAs from other initiators that never continue.
    for (i, ip) in ["192.0.2.10", "192.0.2.11"].iter().enumerate() {
        let mut other = peer("moon", &format!("{ip}:4500"), Some(B_ADDR), "x", "moon");
        other.remote_id = None;
        let mut e = endpoint(vec![other], 50 + i as u64, t0);
        let mut spis = Spis {
            next: 1,
            released: vec![],
        };
        e.initiate(t0, "moon", &mut spis).unwrap();
        while let Some(o) = e.poll_output() {
            if let Output::Send {
                local,
                remote,
                data,
            } = o
            {
                w.b.ep
                    .handle_datagram(t0, remote, local, &data, &mut w.b.spis);
            }
        }
    }
    w.drain();
    w.in_flight.clear();
    assert_eq!(w.b.ep.ike_sas(w.now).len(), 2);
    w.establish();
    assert!(w
        .b
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::CookieSent { .. })));
    assert!(w
        .a
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::CookieRequested { .. })));
    let inits: Vec<_> = w
        .history
        .iter()
        .filter(|p| p.exchange() == ExchangeType::IKE_SA_INIT && !p.is_response())
        .collect();
    assert_eq!(inits.len(), 2);
    let first = Message::parse(&inits[0].data).unwrap();
    let second = Message::parse(&inits[1].data).unwrap();
    assert_eq!(payload_types(&inits[1].data)[0], "N(COOKIE)");
    assert_eq!(first.header.spi_i, second.header.spi_i);
    // Everything else unchanged (§2.6).
    assert_eq!(&second.payloads[1..], &first.payloads[..]);
    // The cookie answer was stateless: SPIr 0, just the notification.
    let cookie_resp = w
        .history
        .iter()
        .find(|p| {
            p.exchange() == ExchangeType::IKE_SA_INIT && p.is_response() && p.dst == addr(A_ADDR)
        })
        .unwrap();
    assert_eq!(payload_types(&cookie_resp.data), ["N(COOKIE)"]);
    assert_eq!(assert_pairs_match(&w), 1);
    // A forged cookie does not pass.
    let mut forged = second.clone();
    forged.header.spi_i ^= 1;
    let bytes = forged.emit();
    let before = w.b.ep.ike_sas(w.now).len();
    w.b.ep
        .handle_datagram(w.now, addr(B_ADDR), addr(A_ADDR), &bytes, &mut w.b.spis);
    w.drain();
    assert_eq!(w.b.ep.ike_sas(w.now).len(), before);
}

fn informational(spi_i: u64, spi_r: u64, flags: Flags, n: Notify) -> Vec<u8> {
    Message {
        header: IkeHeader {
            spi_i,
            spi_r,
            exchange_type: ExchangeType::INFORMATIONAL,
            flags,
            message_id: 9,
        },
        payloads: vec![Payload::Notify(n)],
    }
    .emit()
}

/// §2.21.4: notifications outside any protection are reported and change nothing.
#[test]
fn unprotected_informational_changes_nothing() {
    let mut w = pair(GCM_IKE, "aes128gcm16");
    w.establish();
    let s = w.a.ep.ike_sas(w.now)[0].clone();
    let spi = w.a.installed.values().next().unwrap().inbound.spi;
    let n = Notify::new(NotifyType::INVALID_SPI, spi.to_be_bytes().to_vec());
    for (i, r) in [(s.spi_i, s.spi_r), (1, 2), (s.spi_i, 0)] {
        let m = informational(i, r, Flags::NONE, n.clone());
        let before = w.a.log.len();
        w.a.ep
            .handle_datagram(w.now, addr(A_ADDR), addr(B_ADDR), &m, &mut w.a.spis);
        w.drain();
        let new = &w.a.log[before..];
        assert!(new.iter().any(|o| matches!(
            o,
            Output::Event(IkeEvent::UnprotectedNotify {
                notify: NotifyType::INVALID_SPI,
                ..
            })
        )));
        assert!(new.iter().all(|o| matches!(o, Output::Event(_))), "{new:?}");
    }
    assert!(w.in_flight.is_empty());
    let after = w.a.ep.ike_sas(w.now)[0].clone();
    assert_eq!(after.next_message_id, s.next_message_id);
    assert_eq!(after.peer_next_message_id, s.peer_next_message_id);
    assert_eq!(assert_pairs_match(&w), 1);
}

/// §2.23: A sits behind a NAT that rewrites its address. Both sides detect it, A floats
/// from port 500 to 4500 after IKE_SA_INIT, B follows A's new address, and the CHILD SA
/// carries the NAT flags and the post-NAT addresses.
#[test]
fn nat_detection_and_port_floating() {
    let inside = "192.168.1.10";
    let outside = "203.0.113.5";
    let a = with_suites(
        peer(
            "moon",
            &format!("{inside}:500"),
            Some("10.0.0.2:500"),
            "sun",
            "moon",
        ),
        GCM_IKE,
        "aes128gcm16",
    );
    let mut b = with_suites(
        peer("sun", "10.0.0.2:500", None, "moon", "sun"),
        GCM_IKE,
        "aes128gcm16",
    );
    b.local_addr = None;
    let mut w = Wire::of(a, b);
    w.a.ip = outside.parse().unwrap();
    w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
    let nat = |p: &mut Packet| {
        if p.src.ip().to_string() == inside {
            p.src.set_ip(outside.parse().unwrap());
        }
    };
    for _ in 0..100 {
        let Some(mut p) = w.pop() else { break };
        nat(&mut p);
        if p.dst.ip().to_string() == outside {
            // Into the NAT: back to the inside address.
            let inner = Packet {
                dst: format!("{inside}:{}", p.dst.port()).parse().unwrap(),
                ..p.clone()
            };
            w.a.ep
                .handle_datagram(w.now, inner.dst, inner.src, &inner.data, &mut w.a.spis);
            w.drain();
        } else {
            w.deliver(&p);
        }
    }
    assert_eq!(assert_pairs_match(&w), 1);
    let sa = &w.a.ep.ike_sas(w.now)[0];
    assert!(sa.nat.local_behind_nat && !sa.nat.remote_behind_nat);
    assert_eq!(sa.remote.port(), 4500);
    assert_eq!(sa.local.port(), 4500);
    let sb = &w.b.ep.ike_sas(w.now)[0];
    assert!(sb.nat.remote_behind_nat && !sb.nat.local_behind_nat);
    assert_eq!(sb.remote, format!("{outside}:4500").parse().unwrap());
    let cb = w.b.installed.values().next().unwrap();
    assert!(cb.nat.any());
    assert_eq!(cb.remote_addr.port(), 4500);
    // IKE_AUTH went over 4500.
    let auth = w
        .history
        .iter()
        .find(|p| p.exchange() == ExchangeType::IKE_AUTH)
        .unwrap();
    assert_eq!(auth.dst.port(), 4500);
    assert!(w
        .b
        .events()
        .iter()
        .any(|e| matches!(e, IkeEvent::PeerAddressChanged { .. })));
}
