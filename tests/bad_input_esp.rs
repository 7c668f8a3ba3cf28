//! The ESP rows of the bad-input catalogue (docs/RELIABILITY.md): every class of bad
//! packet goes through the `Node` datapath and must end in a typed drop reason, bump
//! exactly its counter (`IN_US_V4_PKT_*`), not panic, and leave the SA as it was (replay
//! window right edge, per-SA packet count, delivered-packet counter).

#[path = "../fuzz/src/known.rs"]
#[allow(dead_code)]
mod known;

use esplab_esp::{Algorithm, DropReason, Family, OutboundSa};
use esplab_node::{Counters, Dir, Inbound, Node};
use known::{build_known, known_sa, FUZZ_SPI};
use std::net::IpAddr;
use std::time::Instant;

const PEER: &str = "198.18.0.2";
const LOCAL: &str = "198.18.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A 28-byte IPv4/UDP packet 198.19.2.1 → 198.19.1.1 (inside the SA's selectors).
fn inner(id: u8) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[5] = id;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 19, 2, 1]);
    p[16..20].copy_from_slice(&[198, 19, 1, 1]);
    p
}

/// payload‖padding 1, 2, ...‖Pad Length‖Next Header for `alg`'s alignment.
fn text(alg: Algorithm, payload: &[u8], nh: u8) -> Vec<u8> {
    let align = if alg.is_aead() { 4 } else { 16 };
    let pad = (align - (payload.len() + 2) % align) % align;
    let mut t = payload.to_vec();
    t.extend(1..=pad as u8);
    t.push(pad as u8);
    t.push(nh);
    t
}

/// The node under test: one peer, the known inbound SA `FUZZ_SPI`.
struct Rig {
    node: Node,
    alg: Algorithm,
    esn: bool,
    now: Instant,
}

/// What "no state change" compares: the SA's replay right edge and packet count, and the
/// node's delivered packets.
#[derive(Debug, PartialEq, Eq)]
struct State {
    edge: u64,
    sa_packets: u64,
    in_packets: u64,
}

impl Rig {
    fn new(alg: Algorithm, esn: bool) -> Self {
        let now = Instant::now();
        let cfg = esplab_node::NodeConfig {
            name: "rx".into(),
            local: ip(LOCAL),
            peers: vec![esplab_node::PeerConfig {
                name: "peer".into(),
                address: ip(PEER),
                encap: esplab_node::UnderlayEncap::Udp,
                port: 4500,
                local_ts: vec!["198.19.1.0/24".parse().unwrap()],
                remote_ts: vec!["198.19.2.0/24".parse().unwrap()],
            }],
            log_limits: esplab_node::LogLimits::default(),
            event_queue: 64,
            retired_grace: std::time::Duration::from_secs(5),
        };
        let mut node = Node::new(cfg, Some(7));
        node.install_inbound(0, &known_sa(alg, esn, 64), now)
            .unwrap();
        Rig {
            node,
            alg,
            esn,
            now,
        }
    }

    fn gcm() -> Self {
        Self::new(Algorithm::AesGcm128, false)
    }

    fn state(&self) -> State {
        let sa = &self.node.sa_info(self.now)[0];
        State {
            edge: sa.seq,
            sa_packets: sa.packets,
            in_packets: self.node.counters().in_packets,
        }
    }

    /// An authentic packet with sequence number `seq` around `text`.
    fn packet(&self, seq: u64, text: &[u8]) -> Vec<u8> {
        build_known(&known_sa(self.alg, self.esn, 64), seq, 0x33, text)
    }

    fn good(&self, seq: u64) -> Vec<u8> {
        self.packet(seq, &text(self.alg, &inner(seq as u8), 4))
    }

    fn udp(&mut self, pkt: &mut [u8]) -> Inbound {
        let n = pkt.len();
        self.node
            .inbound_udp(self.now, ip(PEER), 4500, ip(LOCAL), 4500, pkt, 0..n)
    }

    fn deliver(&mut self, seq: u64) {
        let mut p = self.good(seq);
        assert!(
            matches!(self.udp(&mut p), Inbound::Deliver(_)),
            "seq {seq} not delivered"
        );
    }

    /// Sends `pkt` as a UDP-encapsulated ESP packet and checks the catalogue contract:
    /// the verdict is `Drop(reason)`, exactly that counter moved by one, nothing else in
    /// the SA or node did.
    fn expect_drop(&mut self, mut pkt: Vec<u8>, reason: DropReason) {
        let before = (self.state(), self.node.counters().clone());
        let v = self.udp(&mut pkt);
        self.check(v, reason, before);
    }

    fn check(&mut self, v: Inbound, reason: DropReason, before: (State, Counters)) {
        assert_eq!(v, Inbound::Drop(reason));
        let c = self.node.counters();
        assert_eq!(
            c.drops(Dir::In, reason, Family::V4),
            before.1.drops(Dir::In, reason, Family::V4) + 1,
            "counter {}",
            Counters::drop_name(Dir::In, reason, Family::V4)
        );
        assert_eq!(c.total_drops(Dir::In), before.1.total_drops(Dir::In) + 1);
        assert_eq!(self.state(), before.0, "state changed by a {reason} drop");
    }
}

#[test]
fn truncated_at_every_length() {
    for alg in Algorithm::ALL {
        let mut r = Rig::new(alg, false);
        r.deliver(1);
        let good = r.good(2);
        let min = 8 + alg.iv_len() + 2 + 16;
        for len in 0..good.len() {
            let cut = good[..len].to_vec();
            let reason = if len < min {
                DropReason::TooShort
            } else if !alg.is_aead() && (len - 8 - 16 - 16) % 16 != 0 {
                DropReason::BadBlockLength
            } else {
                DropReason::IcvMismatch
            };
            r.expect_drop(cut, reason);
        }
        // The whole packet still decrypts afterwards: nothing was consumed.
        r.deliver(2);
    }
}

#[test]
fn outer_header_truncated_at_every_length_and_lengths_beyond_the_buffer() {
    let mut r = Rig::gcm();
    let esp = r.good(1);
    let mut dgram = vec![0u8; 28];
    dgram[0] = 0x45;
    dgram[2..4].copy_from_slice(&((28 + esp.len()) as u16).to_be_bytes());
    dgram[8] = 64;
    dgram[9] = 17;
    dgram[12..16].copy_from_slice(&[198, 18, 0, 2]);
    dgram[16..20].copy_from_slice(&[198, 18, 0, 1]);
    dgram[20..22].copy_from_slice(&4500u16.to_be_bytes());
    dgram[22..24].copy_from_slice(&4500u16.to_be_bytes());
    dgram[24..26].copy_from_slice(&((8 + esp.len()) as u16).to_be_bytes());
    dgram.extend_from_slice(&esp);
    for len in 0..dgram.len() {
        let mut cut = dgram[..len].to_vec();
        let before = (r.state(), r.node.counters().clone());
        let v = r.node.inbound_ip(r.now, &mut cut);
        // An empty buffer has no version nibble; any other cut leaves the IPv4 total
        // length pointing beyond the buffer.
        let reason = if len == 0 {
            DropReason::TooShort
        } else {
            DropReason::BadOuterHeader
        };
        r.check(v, reason, before);
    }
    // UDP length beyond the IP payload, IPv4 total length beyond the buffer, IPv6 payload
    // length beyond the buffer.
    let mut bad = dgram.clone();
    bad[24..26].copy_from_slice(&u16::MAX.to_be_bytes());
    let before = (r.state(), r.node.counters().clone());
    let v = r.node.inbound_ip(r.now, &mut bad);
    r.check(v, DropReason::BadOuterHeader, before);
    let mut bad = dgram.clone();
    bad[2..4].copy_from_slice(&u16::MAX.to_be_bytes());
    let before = (r.state(), r.node.counters().clone());
    let v = r.node.inbound_ip(r.now, &mut bad);
    r.check(v, DropReason::BadOuterHeader, before);
    let mut v6 = vec![0u8; 40];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&1000u16.to_be_bytes());
    v6[6] = 50;
    let before = r
        .node
        .counters()
        .drops(Dir::In, DropReason::BadOuterHeader, Family::V6);
    assert_eq!(
        r.node.inbound_ip(r.now, &mut v6),
        Inbound::Drop(DropReason::BadOuterHeader)
    );
    assert_eq!(
        r.node
            .counters()
            .drops(Dir::In, DropReason::BadOuterHeader, Family::V6),
        before + 1
    );
    // And the ESP length beyond what was received: the engine only sees the bytes it got.
    r.deliver(1);
}

#[test]
fn spi_zero_and_reserved_spis() {
    let mut r = Rig::gcm();
    let good = r.good(1);
    for spi in 1..=255u32 {
        let mut p = good.clone();
        p[..4].copy_from_slice(&spi.to_be_bytes());
        r.expect_drop(p, DropReason::ReservedSpi);
    }
    // SPI 0 on raw ESP (IP protocol 50) is reserved too (RFC 4303 §2.1); on UDP 4500 it
    // is the non-ESP marker (see `non_esp_marker_and_keepalives_in_odd_places`).
    let mut p = good.clone();
    p[..4].copy_from_slice(&0u32.to_be_bytes());
    let before = (r.state(), r.node.counters().clone());
    let n = p.len();
    let v = r.node.inbound_esp(
        r.now,
        ip(PEER),
        ip(LOCAL),
        esplab_esp::Encap::Raw,
        &mut p,
        0..n,
    );
    r.check(v, DropReason::ReservedSpi, before);
    r.deliver(1);
}

#[test]
fn unknown_spi_is_counted_and_reported_but_changes_no_sa() {
    let mut r = Rig::gcm();
    let mut p = r.good(1);
    p[..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    r.expect_drop(p, DropReason::UnknownSpi);
    assert!(matches!(
        r.node.poll_event(),
        Some(esplab_node::Event::InvalidSpi(e)) if e.spi == 0xdead_beef
    ));
}

#[test]
fn wrong_icv() {
    for alg in Algorithm::ALL {
        let mut r = Rig::new(alg, false);
        let good = r.good(1);
        // Every byte after the SPI: a flip in the sequence number, IV, ciphertext or ICV
        // fails the ICV (RFC 4303 §3.4.4).
        for at in 4..good.len() {
            let mut p = good.clone();
            p[at] ^= 0x01;
            r.expect_drop(p, DropReason::IcvMismatch);
        }
        r.deliver(1);
    }
}

#[test]
fn bad_padding_and_pad_length_beyond_the_payload() {
    for alg in Algorithm::ALL {
        let mut r = Rig::new(alg, false);
        let mut t = text(alg, &inner(1), 4);
        let n = t.len();
        // The padding must be 1, 2, 3, ... (RFC 4303 §2.4): make the pad length claim
        // bytes of the inner packet as padding.
        t[n - 2] = 3;
        let p = r.packet(1, &t);
        r.expect_drop(p, DropReason::BadPadding);
        let mut t = text(alg, &inner(1), 4);
        t[n - 2] = 255;
        let p = r.packet(2, &t);
        r.expect_drop(p, DropReason::BadPadLength);
        r.deliver(3);
    }
}

#[test]
fn next_header_unsupported_and_dummy_packets() {
    let mut r = Rig::gcm();
    for (seq, nh, reason) in [
        (1, 17, DropReason::UnsupportedNextHeader),
        (2, 6, DropReason::UnsupportedNextHeader),
        (3, 0, DropReason::UnsupportedNextHeader),
        (4, 59, DropReason::DummyPacket),
    ] {
        let p = r.packet(seq, &text(Algorithm::AesGcm128, &inner(1), nh));
        let before_c = r.node.counters().clone();
        let before_in = before_c.in_packets;
        let mut p = p;
        let v = r.udp(&mut p);
        assert_eq!(v, Inbound::Drop(reason));
        let c = r.node.counters();
        assert_eq!(
            c.drops(Dir::In, reason, Family::V4),
            before_c.drops(Dir::In, reason, Family::V4) + 1
        );
        assert_eq!(c.in_packets, before_in);
        // The packet was authentic, so the replay window did take its sequence number
        // (RFC 4303 §3.4.3: the window moves once the ICV verified), but nothing was
        // delivered and the SA counted no packet.
        assert_eq!(r.node.sa_info(r.now)[0].packets, 0);
    }
}

#[test]
fn inner_packet_outside_the_selectors() {
    let mut r = Rig::gcm();
    let mut other = inner(1);
    other[12..16].copy_from_slice(&[203, 0, 113, 9]);
    let p = r.packet(1, &text(Algorithm::AesGcm128, &other, 4));
    let mut p = p;
    let before = r.node.counters().clone();
    assert_eq!(r.udp(&mut p), Inbound::Drop(DropReason::PolicyMismatch));
    assert_eq!(
        r.node
            .counters()
            .drops(Dir::In, DropReason::PolicyMismatch, Family::V4),
        before.drops(Dir::In, DropReason::PolicyMismatch, Family::V4) + 1
    );
    assert_eq!(r.node.counters().in_packets, before.in_packets);
}

#[test]
fn replayed_and_too_old_sequence_numbers() {
    let mut r = Rig::gcm();
    r.deliver(1);
    r.deliver(100);
    let p = r.good(100);
    r.expect_drop(p, DropReason::ReplayDuplicate);
    let p = r.good(1);
    r.expect_drop(p, DropReason::ReplayTooOld);
    // 50 is inside the 64-packet window and new: accepted.
    r.deliver(50);
    let p = r.good(50);
    r.expect_drop(p, DropReason::ReplayDuplicate);
    // An authentic sequence number 0 is never sent (RFC 4303 §3.3.3).
    let p = r.good(0);
    r.expect_drop(p, DropReason::ReplayTooOld);
}

#[test]
fn esn_wrap() {
    for alg in [Algorithm::AesGcm128, Algorithm::AesCbc128HmacSha256] {
        let mut r = Rig::new(alg, true);
        r.deliver(0xffff_fff0);
        // Across the 2^32 boundary: the receiver infers the high half (RFC 4303
        // Appendix A2.2) and the ICV covers it.
        r.deliver((1 << 32) | 5);
        assert_eq!(r.state().edge, (1 << 32) | 5);
        // A low half under the old high half that the window places after the wrap: its
        // ICV was computed with hi = 0, the inferred hi = 1 makes it fail.
        let p = r.good(6);
        r.expect_drop(p, DropReason::IcvMismatch);
        // A pre-wrap number still in the window, replayed: duplicate.
        let p = r.good(0xffff_fff0);
        r.expect_drop(p, DropReason::ReplayDuplicate);
        // Far left of the window before the wrap: too old.
        let p = r.good(0x1000);
        let before = (r.state(), r.node.counters().clone());
        let mut p = p;
        let v = r.udp(&mut p);
        // Low half 0x1000 is inferred into the next epoch (hi = 1, ahead of the window)
        // and then fails the ICV sealed with hi = 0.
        r.check(v, DropReason::IcvMismatch, before);
    }
    // Without ESN, the 32-bit counter does not wrap: after 2^32 - 1 a packet with a
    // smaller number is too old.
    let mut r = Rig::new(Algorithm::AesGcm128, false);
    r.deliver(0xffff_ffff);
    let p = r.good(1);
    r.expect_drop(p, DropReason::ReplayTooOld);
}

#[test]
fn outbound_sequence_exhaustion_is_a_typed_error() {
    // The outbound side of the wrap: a non-ESN SA refuses to send past 2^32 - 1 (RFC 4303
    // §3.3.3) instead of wrapping. (The node does not expose the outbound counter, so
    // this row is tested on the engine.)
    let mut tx = OutboundSa::new(&known_sa(Algorithm::AesGcm128, false, 64)).unwrap();
    tx.set_next_seq(u32::MAX as u64);
    let payload = inner(1);
    let start = tx.header_len();
    let mut buf = vec![0u8; start + payload.len() + tx.max_trailer_len()];
    buf[start..start + payload.len()].copy_from_slice(&payload);
    let range = start..start + payload.len();
    assert!(tx.encap_slice(&mut buf, range.clone(), 4, None).is_ok());
    let e = tx.encap_slice(&mut buf, range, 4, None).unwrap_err();
    assert_eq!(e.reason(), DropReason::SequenceExhausted);
    assert_eq!(tx.last_seq(), u32::MAX as u64);
}

#[test]
fn oversized_packets() {
    let mut r = Rig::gcm();
    // A 65,535-byte authentic packet (largest a UDP datagram holds) decrypts; the same
    // with one flipped byte is an ICV failure. Neither needs more memory than the buffer.
    let big = vec![0x45u8; 65_535 - 8 - 8 - 16 - 2 - 8];
    let mut t = inner(1);
    t.extend_from_slice(&big[28..]);
    let len = t.len() as u16;
    t[2..4].copy_from_slice(&len.to_be_bytes());
    let t = text(Algorithm::AesGcm128, &t, 4);
    let p = r.packet(1, &t);
    let mut bad = p.clone();
    bad[1000] ^= 0x80;
    r.expect_drop(bad, DropReason::IcvMismatch);
    let mut p = p;
    assert!(matches!(r.udp(&mut p), Inbound::Deliver(_)));
    // An outer datagram with more bytes than its IPv4 total length (Ethernet padding, or
    // a runt claim): only the claimed bytes are parsed.
    let mut dgram = vec![0u8; 28];
    dgram[0] = 0x45;
    dgram[2..4].copy_from_slice(&28u16.to_be_bytes());
    dgram[9] = 17;
    dgram[20..22].copy_from_slice(&4500u16.to_be_bytes());
    dgram[22..24].copy_from_slice(&4500u16.to_be_bytes());
    dgram[24..26].copy_from_slice(&8u16.to_be_bytes());
    dgram.extend(vec![0xab; 70_000]);
    let before = r.node.counters().clone();
    // An empty UDP payload on 4500 is a runt ESP packet.
    assert_eq!(
        r.node.inbound_ip(r.now, &mut dgram),
        Inbound::Drop(DropReason::TooShort)
    );
    assert_eq!(
        r.node
            .counters()
            .drops(Dir::In, DropReason::TooShort, Family::V4),
        before.drops(Dir::In, DropReason::TooShort, Family::V4) + 1
    );
}

#[test]
fn non_esp_marker_and_keepalives_in_odd_places() {
    let mut r = Rig::gcm();
    r.deliver(1);
    let before = (r.state(), r.node.counters().clone());
    // A keepalive is one 0xFF byte (RFC 3948 §2.3): counted, not a drop.
    let mut ka = vec![0xff];
    assert_eq!(r.udp(&mut ka), Inbound::Keepalive);
    assert_eq!(r.node.counters().keepalives, before.1.keepalives + 1);
    // 0xFF followed by anything is not a keepalive: a runt, or ESP with an unknown SPI.
    r.expect_drop(vec![0xff, 0xff], DropReason::TooShort);
    r.expect_drop(vec![0xff; 40], DropReason::UnknownSpi);
    // A keepalive on raw ESP (IP protocol 50) is a runt ESP packet.
    let mut raw = vec![0xff];
    let b = (r.state(), r.node.counters().clone());
    let v = r.node.inbound_esp(
        r.now,
        ip(PEER),
        ip(LOCAL),
        esplab_esp::Encap::Raw,
        &mut raw,
        0..1,
    );
    r.check(v, DropReason::TooShort, b);
    // The non-ESP marker (four zeros, RFC 3948 §2.2) hands the rest to IKE, even when
    // nothing follows; fewer than four zeros is a runt.
    let mut m = vec![0, 0, 0, 0];
    assert_eq!(r.udp(&mut m), Inbound::Ike(4..4));
    r.expect_drop(vec![0, 0, 0], DropReason::TooShort);
    // The marker inside an ESP packet (where the sequence number is) is just ESP: ICV.
    let mut p = r.good(2);
    p[4..8].copy_from_slice(&[0, 0, 0, 0]);
    r.expect_drop(p, DropReason::IcvMismatch);
    assert_eq!(r.state(), before.0);
    assert_eq!(r.node.counters().ike_in, before.1.ike_in + 1);
    r.deliver(2);
}

#[test]
fn counter_names_are_the_catalogue_names() {
    for (reason, name) in [
        (DropReason::TooShort, "IN_US_V4_PKT_TOO_SHORT"),
        (DropReason::BadOuterHeader, "IN_US_V4_PKT_BAD_OUTER_HEADER"),
        (DropReason::ReservedSpi, "IN_US_V4_PKT_RESERVED_SPI"),
        (DropReason::UnknownSpi, "IN_US_V4_PKT_SA_NOT_FOUND_SPI"),
        (DropReason::IcvMismatch, "IN_US_V4_PKT_ICV_FAIL"),
        (DropReason::BadBlockLength, "IN_US_V4_PKT_BAD_BLOCK_LENGTH"),
        (DropReason::BadPadding, "IN_US_V4_PKT_BAD_PADDING"),
        (DropReason::BadPadLength, "IN_US_V4_PKT_BAD_PAD_LENGTH"),
        (
            DropReason::UnsupportedNextHeader,
            "IN_US_V4_PKT_UNSUPPORTED_NEXT_HEADER",
        ),
        (DropReason::DummyPacket, "IN_US_V4_PKT_DUMMY_PACKET"),
        (DropReason::PolicyMismatch, "IN_US_V4_PKT_POLICY_MISMATCH"),
        (DropReason::ReplayDuplicate, "IN_US_V4_PKT_REPLAY_DUPLICATE"),
        (DropReason::ReplayTooOld, "IN_US_V4_PKT_REPLAY_TOO_OLD"),
        (DropReason::NotEsp, "IN_US_V4_PKT_NOT_ESP"),
    ] {
        assert_eq!(Counters::drop_name(Dir::In, reason, Family::V4), name);
    }
    let _ = FUZZ_SPI;
}
