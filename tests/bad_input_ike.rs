//! The IKE rows of the bad-input catalogue (docs/RELIABILITY.md), through two `Agent`s
//! (node + IKE endpoint) on a virtual clock: each bad message ends in a typed drop reason
//! or error notification, the node counts it (`IN_IKE_MESSAGES`), nothing panics, and the
//! target's IKE SAs, CHILD SAs and datapath SAs are exactly as before.

use esplab_ike::proposal::{offer, ProposalSpec};
use esplab_ike::{
    AuthFailure, DhGroup, EndpointConfig, ExchangeType, Flags, Identity, IkeEvent, IkeHeader,
    IkePeerConfig, IkeSaState, KePayload, Message, NotifyType, Payload, PayloadType,
};
use esplab_node::counters::IkeDropCounters;
use esplab_node::{Agent, AgentConfig, AgentEvent, LogLimits, NamedCounter, NodeConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GCM_IKE: &str = "aes128gcm16-prfsha256-x25519";

fn a_addr() -> SocketAddr {
    SocketAddr::new(A_IP.into(), 500)
}

fn b_addr() -> SocketAddr {
    SocketAddr::new(B_IP.into(), 500)
}

fn net(o3: u8) -> esplab_ike::TrafficSelector {
    esplab_ike::TrafficSelector::any_port(esplab_ike::AddrRange::V4 {
        start: Ipv4Addr::new(198, 19, o3, 0),
        end: Ipv4Addr::new(198, 19, o3, 255),
    })
}

fn peer(
    name: &str,
    me: Ipv4Addr,
    them: Ipv4Addr,
    ids: (&str, &str),
    nets: (u8, u8),
) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        Identity::fqdn(ids.0),
        Some(Identity::fqdn(ids.1)),
        b"bad input catalogue psk",
    );
    p.local_addr = Some(SocketAddr::new(me.into(), 500));
    p.remote_addr = Some(SocketAddr::new(them.into(), 500));
    p.local_ts = vec![net(nets.0)];
    p.remote_ts = vec![net(nets.1)];
    p.ike_proposals = vec![ProposalSpec::parse_ike(GCM_IKE).unwrap()];
    p.esp_proposals = vec![ProposalSpec::parse_esp("aes128gcm16").unwrap()];
    p.ike_lifetime = None;
    p.child_lifetime = None;
    p
}

fn agent(name: &str, local: Ipv4Addr, peer: IkePeerConfig, seed: u64, t0: Instant) -> Agent {
    Agent::new(
        AgentConfig {
            node: NodeConfig {
                name: name.into(),
                local: local.into(),
                peers: Vec::new(),
                log_limits: LogLimits::default(),
                event_queue: 1024,
                retired_grace: Duration::from_secs(10),
            },
            ike: EndpointConfig {
                peers: vec![peer],
                rng_seed: Some(seed),
                ..Default::default()
            },
            debug_keys: false,
            recovery: Default::default(),
        },
        t0,
    )
    .unwrap()
}

/// Two agents, A ("a.example", 198.19.1.0/24) and B ("b.example", 198.19.2.0/24); the
/// wire delivers at once and records every datagram.
struct Duo {
    now: Instant,
    a: Agent,
    b: Agent,
    /// (to B, datagram), in order.
    history: Vec<(bool, Vec<u8>)>,
    /// When false, what A sends is recorded but not delivered.
    deliver_a: bool,
    held: Vec<Vec<u8>>,
    events_a: Vec<AgentEvent>,
    events_b: Vec<AgentEvent>,
    /// The last IKE drop reason of B, in full (`Debug`).
    last_reason: String,
}

impl Duo {
    fn new(pa: IkePeerConfig, pb: IkePeerConfig) -> Self {
        let t0 = Instant::now();
        Duo {
            now: t0,
            a: agent("a", A_IP, pa, 1, t0),
            b: agent("b", B_IP, pb, 2, t0),
            history: Vec::new(),
            deliver_a: true,
            held: Vec::new(),
            events_a: Vec::new(),
            events_b: Vec::new(),
            last_reason: String::new(),
        }
    }

    fn standard() -> Self {
        Duo::new(
            peer("b", A_IP, B_IP, ("a.example", "b.example"), (1, 2)),
            peer("a", B_IP, A_IP, ("b.example", "a.example"), (2, 1)),
        )
    }

    /// Moves datagrams until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            while let Some(e) = self.a.poll_event() {
                self.events_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.events_b.push(e);
            }
            while let Some(t) = self.a.poll_transmit() {
                self.history.push((true, t.data.clone()));
                if self.deliver_a {
                    let mut d = t.data;
                    let n = d.len();
                    self.b
                        .handle_underlay_udp(self.now, t.remote, t.local, &mut d, 0..n);
                    moved = true;
                } else {
                    self.held.push(t.data);
                }
            }
            while let Some(t) = self.b.poll_transmit() {
                self.history.push((false, t.data.clone()));
                let mut d = t.data;
                let n = d.len();
                self.a
                    .handle_underlay_udp(self.now, t.remote, t.local, &mut d, 0..n);
                moved = true;
            }
            if !moved {
                while let Some(e) = self.a.poll_event() {
                    self.events_a.push(e);
                }
                while let Some(e) = self.b.poll_event() {
                    self.events_b.push(e);
                }
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    fn established() -> Self {
        let mut d = Duo::standard();
        d.a.initiate(d.now, "b").unwrap();
        d.pump();
        assert_eq!(state(&d.b, d.now).0.len(), 1);
        assert_eq!(d.b.node().sa_info(d.now).len(), 2, "one CHILD SA pair");
        d
    }

    /// A datagram from A's address to B. Returns B's answers and B's IKE drop reasons.
    fn inject_b(&mut self, data: &[u8]) -> (Vec<Vec<u8>>, Vec<String>) {
        self.events_b.clear();
        let mut d = data.to_vec();
        let n = d.len();
        let v = self
            .b
            .handle_underlay_udp(self.now, b_addr(), a_addr(), &mut d, 0..n);
        assert_eq!(v, esplab_node::Inbound::Ike(0..n));
        let mut sent = Vec::new();
        while let Some(t) = self.b.poll_transmit() {
            sent.push(t.data);
        }
        let mut reasons = Vec::new();
        while let Some(e) = self.b.poll_event() {
            if let AgentEvent::Ike(IkeEvent::MessageDropped { reason, .. }) = &e {
                reasons.push(reason.as_str().to_string());
                self.last_reason = format!("{reason:?}");
            }
            self.events_b.push(e);
        }
        (sent, reasons)
    }

    /// Checks the catalogue contract for one bad datagram to B: the expected IKE drop
    /// reason, `IN_IKE_MESSAGES` + 1, its `IN_IKE_DROP_<REASON>` counter + 1 (and no other
    /// IKE drop counter), no answer unless `answers`, and B's state unchanged.
    fn expect_drop(&mut self, data: &[u8], reason: &str, answers: usize) -> Vec<Vec<u8>> {
        let before = state(&self.b, self.now);
        let ike_in = self.b.node().counters().ike_in;
        let drops_before = self.b.counters_named();
        let (sent, reasons) = self.inject_b(data);
        assert_eq!(reasons, vec![reason.to_string()], "drop reason");
        assert_eq!(
            self.b.node().counters().ike_in,
            ike_in + 1,
            "IN_IKE_MESSAGES"
        );
        let counter = IkeDropCounters::name(reason);
        for (b, a) in drops_before.iter().zip(self.b.counters_named()) {
            assert_eq!(b.name, a.name);
            if !a.name.starts_with("IN_IKE_DROP") {
                continue;
            }
            let plus = u64::from(a.name == counter || a.name == "IN_IKE_DROPS");
            assert_eq!(a.value, b.value + plus, "{}", a.name);
        }
        assert_eq!(
            self.b.ike_drops().get(reason),
            drops_before_of(&drops_before, &counter) + 1
        );
        assert_eq!(sent.len(), answers, "answers");
        assert_eq!(state(&self.b, self.now), before, "state changed");
        sent
    }

    /// The last datagram A sent of this exchange type (request or response).
    fn last_from_a(&self, exchange: ExchangeType, response: bool) -> Vec<u8> {
        self.history
            .iter()
            .rev()
            .find(|(to_b, d)| *to_b && d[18] == exchange.0 && (d[19] & 0x20 != 0) == response)
            .map(|(_, d)| d.clone())
            .expect("no such message")
    }
}

/// The value of a named counter in a `counters_named()` list.
fn drops_before_of(list: &[NamedCounter], name: &str) -> u64 {
    list.iter()
        .find(|c| c.name == name)
        .map(|c| c.value)
        .expect("no such counter")
}

/// Everything a bad message must not change: authenticated IKE SAs (SPIs, state, Message
/// IDs, CHILD SAs), the datapath SAs and the delivered-packet counter.
fn state(ag: &Agent, now: Instant) -> (Vec<String>, Vec<String>, u64) {
    let ike = ag
        .ike_sas(now)
        .into_iter()
        .map(|s| {
            let ch: Vec<_> = s
                .children
                .iter()
                .map(|c| (c.inbound_spi, c.outbound_spi, c.state))
                .collect();
            format!(
                "{:?} {:?} {:x} {:x} {} {} {:?}",
                s.id, s.state, s.spi_i, s.spi_r, s.next_message_id, s.peer_next_message_id, ch
            )
        })
        .collect();
    let sas = ag
        .node()
        .sa_info(now)
        .into_iter()
        .map(|s| format!("{} {:x} {} {}", s.direction, s.spi, s.seq, s.packets))
        .collect();
    (ike, sas, ag.node().counters().in_packets)
}

fn init_request(spi_i: u64, ke_group: DhGroup, ke: Vec<u8>, groups: &[DhGroup]) -> Message {
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
                data: ke,
            }),
            Payload::Nonce(vec![1; 32]),
        ],
    }
}

fn good_init(spi_i: u64) -> Vec<u8> {
    init_request(
        spi_i,
        DhGroup::CURVE25519,
        vec![9; 32],
        &[DhGroup::CURVE25519],
    )
    .emit()
}

#[test]
fn bad_lengths() {
    let mut d = Duo::established();
    let auth = d.last_from_a(ExchangeType::IKE_AUTH, false);
    // Shorter than the IKE header.
    d.expect_drop(&auth[..27], "malformed", 0);
    // The header's Length says more, or less, than the datagram holds (RFC 7296 §3.1):
    // the framing around the SK payload is checked before its ICV, as a parse error.
    for delta in [1i64, -1, -100, 1000] {
        let mut m = auth.clone();
        let len = (m.len() as i64 + delta) as u32;
        m[24..28].copy_from_slice(&len.to_be_bytes());
        d.expect_drop(&m, "integrity", 0);
        assert!(d.last_reason.contains("Parse("), "{}", d.last_reason);
    }
    // A datagram cut anywhere inside the SK payload, its Length field following.
    for cut in [28, 29, 31, 32, 40, auth.len() - 1] {
        let mut m = auth[..cut].to_vec();
        m[24..28].copy_from_slice(&(cut as u32).to_be_bytes());
        d.expect_drop(&m, "integrity", 0);
        assert!(d.last_reason.contains("Truncated"), "{}", d.last_reason);
    }
    // `Agent::clear_counters` (`esplab clear counters`) zeroes the IKE drop counters
    // with the node's.
    assert_eq!(d.b.ike_drops().get("integrity"), 10);
    assert_eq!(d.b.ike_drops().total(), 11);
    d.b.clear_counters();
    assert_eq!(d.b.ike_drops().total(), 0);
    assert!(
        d.b.counters_named().iter().all(|c| c.value == 0),
        "not cleared"
    );
}

#[test]
fn payload_chains_that_loop_or_overrun() {
    let mut d = Duo::established();
    let good = good_init(0x0bad_0001);
    // A payload length pointing past the end of the message.
    let mut m = good.clone();
    m[28 + 2..28 + 4].copy_from_slice(&0xfff0u16.to_be_bytes());
    d.expect_drop(&m, "malformed", 0);
    // A payload length below the generic header (4): a chain that would never advance.
    let mut m = good.clone();
    m[28 + 2..28 + 4].copy_from_slice(&2u16.to_be_bytes());
    d.expect_drop(&m, "malformed", 0);
    let mut m = good.clone();
    m[28 + 2..28 + 4].copy_from_slice(&0u16.to_be_bytes());
    d.expect_drop(&m, "malformed", 0);
    // A chain that "loops": 2,000 unknown non-critical payloads each naming another one
    // as next, the last still naming one when the bytes end. The chain is walked by
    // offset, so it ends with the message (Truncated), in linear time.
    let mut m = IkeHeader {
        spi_i: 0x0bad_0002,
        spi_r: 0,
        exchange_type: ExchangeType::IKE_SA_INIT,
        flags: Flags::INITIATOR,
        message_id: 0,
    }
    .encode(PayloadType(200), 28 + 4 * 2000)
    .to_vec();
    for _ in 0..2000 {
        m.extend_from_slice(&[200, 0, 0, 4]);
    }
    d.expect_drop(&m, "malformed", 0);
}

#[test]
fn unknown_critical_payload() {
    let mut d = Duo::established();
    // RFC 7296 §2.5: an unknown payload with the critical bit set rejects the message,
    // and the response carries N(UNSUPPORTED_CRITICAL_PAYLOAD) naming the payload type.
    // For an IKE_SA_INIT request it is a stateless, unprotected answer: no IKE SA, no
    // half-open state (B's state is unchanged), counted as `malformed`.
    let mut m = init_request(
        0x0bad_0003,
        DhGroup::CURVE25519,
        vec![9; 32],
        &[DhGroup::CURVE25519],
    );
    m.payloads.push(Payload::Unknown {
        payload_type: PayloadType(222),
        data: vec![1, 2, 3],
    });
    let mut bytes = m.emit();
    // The codec never emits the critical bit on an unknown payload: set it by hand in the
    // last payload's generic header (4 bytes + 3 of body from the end).
    let at = bytes.len() - 7 + 1;
    bytes[at] |= 0x80;
    let half_open = d.b.ike_sas(d.now).len();
    let sent = d.expect_drop(&bytes, "malformed", 1);
    assert!(
        d.last_reason
            .contains("UnsupportedCritical { payload_type: 222 }"),
        "{}",
        d.last_reason
    );
    let answer = Message::parse(&sent[0]).unwrap();
    assert_eq!(
        answer.header,
        IkeHeader {
            spi_i: 0x0bad_0003,
            spi_r: 0,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::RESPONSE,
            message_id: 0,
        }
    );
    match answer.payloads.as_slice() {
        [Payload::Notify(n)] => {
            assert_eq!(n.notify_type, NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD);
            assert_eq!(n.data, vec![222]);
            assert!(n.spi.is_empty());
        }
        p => panic!("{p:?}"),
    }
    assert!(sent[0].len() <= bytes.len(), "the answer amplifies");
    // Retransmitted, it is answered again from nothing (no state was kept).
    d.expect_drop(&bytes, "malformed", 1);
    assert_eq!(
        d.b.ike_sas(d.now).len(),
        half_open,
        "a half-open SA was made"
    );
    // Bounded like the other stateless answers: never larger than the request (a bare
    // header + critical payload, 32 octets, would get 37 back) ...
    let mut tiny = IkeHeader {
        spi_i: 0x0bad_0005,
        spi_r: 0,
        exchange_type: ExchangeType::IKE_SA_INIT,
        flags: Flags::INITIATOR,
        message_id: 0,
    }
    .encode(PayloadType(222), 32)
    .to_vec();
    tiny.extend_from_slice(&[0, 0x80, 0, 4]);
    d.expect_drop(&tiny, "malformed", 0);
    assert!(
        d.last_reason.contains("UnsupportedCritical"),
        "{}",
        d.last_reason
    );
    // ... never to a source without a peer configuration ...
    let stranger = SocketAddr::new(Ipv4Addr::new(198, 18, 0, 9).into(), 500);
    let mut x = bytes.clone();
    let n = x.len();
    let v =
        d.b.handle_underlay_udp(d.now, b_addr(), stranger, &mut x, 0..n);
    assert_eq!(v, esplab_node::Inbound::Ike(0..n));
    assert!(d.b.poll_transmit().is_none(), "answered an unknown source");
    assert_eq!(d.b.ike_drops().get("malformed"), 4);
    while d.b.poll_event().is_some() {}
    // ... and never for a Message ID other than 0 (not an IKE_SA_INIT request, §2.2).
    let mut mid = bytes.clone();
    mid[20..24].copy_from_slice(&5u32.to_be_bytes());
    d.expect_drop(&mid, "malformed", 0);
    // The same payload without the critical bit is skipped: B answers normally and holds
    // a half-open SA (not authenticated, so not in the contract's state).
    m.header.spi_i = 0x0bad_0004;
    let (sent, reasons) = d.inject_b(&m.emit());
    assert!(reasons.is_empty());
    assert_eq!(sent.len(), 1);
}

#[test]
fn wrong_message_ids_retransmissions_and_unexpected_responses() {
    let mut d = Duo::established();
    // Two liveness checks A → B (INFORMATIONAL requests with Message IDs n, n+1).
    d.a.send_liveness(d.now, "b").unwrap();
    d.pump();
    let first = d.last_from_a(ExchangeType::INFORMATIONAL, false);
    d.a.send_liveness(d.now, "b").unwrap();
    d.pump();
    let second = d.last_from_a(ExchangeType::INFORMATIONAL, false);
    assert_ne!(first, second);
    // A retransmitted request (the last one) is answered from the cache, once, with no
    // reprocessing (RFC 7296 §2.1).
    let before = state(&d.b, d.now);
    let (sent, reasons) = d.inject_b(&second);
    assert_eq!(sent.len(), 1);
    assert!(reasons.is_empty(), "{reasons:?}");
    assert!(d.events_b.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::MessageSent {
            retransmit: true,
            response: true,
            ..
        })
    )));
    assert_eq!(state(&d.b, d.now), before);
    // An older request, outside the window (§2.3): dropped.
    d.expect_drop(&first, "out-of-window", 0);
    // A response to no outstanding request: B asks A, delivers the answer, then gets the
    // same answer again.
    d.b.send_liveness(d.now, "a").unwrap();
    d.pump();
    let resp = d.last_from_a(ExchangeType::INFORMATIONAL, true);
    d.expect_drop(&resp, "unexpected-response", 0);
}

#[test]
fn unknown_ike_spis_and_sk_decryption_failures() {
    let mut d = Duo::established();
    // A fresh protected request from A, held back from B.
    d.deliver_a = false;
    d.a.send_liveness(d.now, "b").unwrap();
    d.pump();
    let req = d.held.pop().unwrap();
    // Unknown SPIs (RFC 7296 §2.21.4: no answer to an unprotected request we cannot
    // attribute... here it is protected and simply has no SA).
    let mut m = req.clone();
    m[0..8].copy_from_slice(&0x1111_2222_3333_4444u64.to_be_bytes());
    m[8..16].copy_from_slice(&0x5555_6666_7777_8888u64.to_be_bytes());
    d.expect_drop(&m, "unknown-spi", 0);
    // The initiator's SPI right, the responder's wrong.
    let mut m = req.clone();
    m[8..16].copy_from_slice(&0x5555_6666_7777_8888u64.to_be_bytes());
    let before = state(&d.b, d.now);
    let (sent, reasons) = d.inject_b(&m);
    assert!(sent.is_empty());
    assert!(
        reasons == ["unknown-spi"] || reasons == ["spi-mismatch"],
        "{reasons:?}"
    );
    assert_eq!(state(&d.b, d.now), before);
    // Every byte of the SK payload flipped in turn: the ICV fails, the message is dropped
    // without an answer (§2.21.2), and the Message ID is not consumed.
    for at in [32, 40, req.len() / 2, req.len() - 17, req.len() - 1] {
        let mut m = req.clone();
        m[at] ^= 0x40;
        d.expect_drop(&m, "integrity", 0);
    }
    // The original still goes through afterwards.
    let (sent, reasons) = d.inject_b(&req);
    assert!(reasons.is_empty());
    assert_eq!(sent.len(), 1);
}

#[test]
fn unacceptable_proposals() {
    // IKE: B only accepts CBC; A offers GCM. B answers NO_PROPOSAL_CHOSEN and keeps
    // nothing; no SA anywhere.
    let mut pb = peer("a", B_IP, A_IP, ("b.example", "a.example"), (2, 1));
    pb.ike_proposals = vec![ProposalSpec::parse_ike("aes128-sha256-x25519").unwrap()];
    let mut d = Duo::new(
        peer("b", A_IP, B_IP, ("a.example", "b.example"), (1, 2)),
        pb,
    );
    d.a.initiate(d.now, "b").unwrap();
    d.pump();
    assert!(d.events_b.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::NoProposalChosen { by_us: true, .. })
    )));
    assert!(d.b.ike_sas(d.now).is_empty());
    assert!(d.a.node().sa_info(d.now).is_empty() && d.b.node().sa_info(d.now).is_empty());
    // ESP: the IKE SA comes up, the CHILD SA does not (NO_PROPOSAL_CHOSEN in IKE_AUTH).
    let mut pb = peer("a", B_IP, A_IP, ("b.example", "a.example"), (2, 1));
    pb.esp_proposals = vec![ProposalSpec::parse_esp("aes256gcm16").unwrap()];
    let mut d = Duo::new(
        peer("b", A_IP, B_IP, ("a.example", "b.example"), (1, 2)),
        pb,
    );
    d.a.initiate(d.now, "b").unwrap();
    d.pump();
    assert!(d.events_a.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::ChildFailed {
            notify: NotifyType::NO_PROPOSAL_CHOSEN,
            ..
        })
    )));
    assert!(d.a.node().sa_info(d.now).is_empty() && d.b.node().sa_info(d.now).is_empty());
}

#[test]
fn wrong_dh_group_and_all_zero_x25519() {
    let mut d = Duo::established();
    // A KE for a group B did not choose: INVALID_KE_PAYLOAD naming X25519 (RFC 7296
    // §1.2), no half-open SA kept.
    let m = init_request(
        0x0bad_0005,
        DhGroup::ECP_256,
        vec![7; 64],
        &[DhGroup::ECP_256, DhGroup::CURVE25519],
    );
    let before_sas = d.b.ike_sas(d.now).len();
    let (sent, _) = d.inject_b(&m.emit());
    assert_eq!(sent.len(), 1);
    let r = Message::parse(&sent[0]).unwrap();
    let n = r.notify(NotifyType::INVALID_KE_PAYLOAD).unwrap();
    assert_eq!(n.wanted_group(), Some(DhGroup::CURVE25519));
    assert!(d
        .events_b
        .iter()
        .any(|e| matches!(e, AgentEvent::Ike(IkeEvent::InvalidKeSent { .. }))));
    assert_eq!(d.b.ike_sas(d.now).len(), before_sas);
    // An X25519 public value that makes the shared secret all zeros (a low-order point,
    // RFC 7748 §6.1; RFC 8031 §2): refused with INVALID_SYNTAX, no SA kept.
    for ke in [vec![0u8; 32], {
        let mut one = vec![0u8; 32];
        one[0] = 1;
        one
    }] {
        let m = init_request(0x0bad_0006, DhGroup::CURVE25519, ke, &[DhGroup::CURVE25519]);
        let (sent, _) = d.inject_b(&m.emit());
        assert_eq!(sent.len(), 1);
        let r = Message::parse(&sent[0]).unwrap();
        assert!(
            r.notify(NotifyType::INVALID_SYNTAX).is_some(),
            "{:?}",
            r.payloads
        );
        assert_eq!(d.b.ike_sas(d.now).len(), before_sas);
    }
    // Wrong KE length for the group: same.
    let m = init_request(
        0x0bad_0007,
        DhGroup::CURVE25519,
        vec![9; 31],
        &[DhGroup::CURVE25519],
    );
    let (sent, _) = d.inject_b(&m.emit());
    assert!(Message::parse(&sent[0])
        .unwrap()
        .notify(NotifyType::INVALID_SYNTAX)
        .is_some());
    assert_eq!(d.b.ike_sas(d.now).len(), before_sas);
}

#[test]
fn wrong_psk_authentication_failed() {
    let mut pb = peer("a", B_IP, A_IP, ("b.example", "a.example"), (2, 1));
    pb.psk = esplab_ike::crypto::SecretBytes::from_slice(b"another secret");
    let mut d = Duo::new(
        peer("b", A_IP, B_IP, ("a.example", "b.example"), (1, 2)),
        pb,
    );
    d.a.initiate(d.now, "b").unwrap();
    d.pump();
    // B cannot verify A's AUTH (RFC 7296 §2.15) and answers AUTHENTICATION_FAILED.
    assert!(d.events_b.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::AuthFailed {
            why: AuthFailure::BadAuth,
            ..
        })
    )));
    assert!(d
        .events_a
        .iter()
        .any(|e| matches!(e, AgentEvent::Ike(IkeEvent::AuthFailed { .. }))));
    for ag in [&d.a, &d.b] {
        assert!(ag
            .ike_sas(d.now)
            .iter()
            .all(|s| s.state != IkeSaState::Established));
        assert!(ag.node().sa_info(d.now).is_empty());
    }
}

#[test]
fn traffic_selectors_that_do_not_match() {
    // A asks for 198.19.9.0/24 behind B; B's policy covers only 198.19.2.0/24 (RFC 7296
    // §2.9: TS_UNACCEPTABLE). The IKE SA is up, no CHILD SA is installed.
    let mut pa = peer("b", A_IP, B_IP, ("a.example", "b.example"), (1, 9));
    pa.remote_ts = vec![net(9)];
    let mut d = Duo::new(
        pa,
        peer("a", B_IP, A_IP, ("b.example", "a.example"), (2, 1)),
    );
    d.a.initiate(d.now, "b").unwrap();
    d.pump();
    assert!(d.events_a.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::ChildFailed {
            notify: NotifyType::TS_UNACCEPTABLE,
            ..
        })
    )));
    assert!(d.a.node().sa_info(d.now).is_empty() && d.b.node().sa_info(d.now).is_empty());
}
