//! The fuzz target bodies (issue #8). Every function takes the fuzzer's bytes, never
//! panics on its own account, and asserts an invariant of the code under test: a panic
//! (a failed assertion, an out-of-bounds index, an overflow) is a finding.
//!
//! The same file is compiled twice: by the `esplab-fuzz` crate for cargo-fuzz, and by the
//! root package's `tests/fuzz_targets.rs` (`#[path]`), which runs every target on stable
//! Rust over the seed corpus and over random inputs. So it may only use crates that both
//! have (esplab-esp, -sad, -ike, -node, -netio, aes-gcm, pcap-file, thiserror) and must not
//! use `crate::` paths.

use esplab_esp::wire::{self, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use esplab_esp::{Algorithm, DropReason, EspError, InboundSa, Underlay};
use esplab_ike::crypto::SkCipher;
use esplab_ike::{
    Encr, Endpoint, EndpointConfig, Flags, IkeHeader, IkePeerConfig, IkeSaState, Integ, Message,
    Output, PayloadType, SpiAllocator,
};
use esplab_node::{Dir, Inbound, LogLimits, Node, NodeConfig, PeerConfig, UnderlayEncap};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The capture reader of the `esplab` binary (the root package is a binary, so its module
/// is compiled in here rather than exposed from a library).
#[path = "known.rs"]
mod known;
pub use known::{build_known, known_sa, FUZZ_SPI};

#[path = "../../src/pcap_io.rs"]
#[allow(dead_code)]
pub mod pcap_io;

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of the cargo-fuzz binaries and corpus directories).
pub const TARGETS: [(&str, Target); 7] = [
    ("esp_decap", esp_decap),
    ("esp_known_sa", esp_known_sa),
    ("ike_message", ike_message),
    ("sk_decrypt", sk_decrypt),
    ("ike_state", ike_state),
    ("config", config),
    ("pcap", pcap),
];

/// Reads structured values off the fuzzer's bytes; past the end everything is zero, so
/// every input means something and no read fails.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------------------
// ESP
// ---------------------------------------------------------------------------------------

const PEER: &str = "198.18.0.2";
const LOCAL: &str = "198.18.0.1";

/// A node with one peer (inner 198.19.1.0/24 ↔ 198.19.2.0/24) and the known inbound SA.
fn fuzz_node(alg: Algorithm, esn: bool, window: u32) -> Node {
    let cfg = NodeConfig {
        name: "fuzz".into(),
        local: LOCAL.parse().expect("address"),
        peers: vec![PeerConfig {
            name: "peer".into(),
            address: PEER.parse().expect("address"),
            encap: UnderlayEncap::Udp,
            port: 4500,
            local_ts: vec!["198.19.1.0/24".parse().expect("selector")],
            remote_ts: vec!["198.19.2.0/24".parse().expect("selector")],
        }],
        log_limits: LogLimits::default(),
        event_queue: 16,
        retired_grace: Duration::from_secs(5),
    };
    let mut node = Node::new(cfg, Some(1));
    node.install_inbound(0, &known_sa(alg, esn, window), t0())
        .expect("install the known SA");
    node
}

/// Outcomes a node has counted: every datagram must add exactly one.
fn outcomes(n: &Node) -> u64 {
    let c = n.counters();
    c.total_drops(Dir::In) + c.in_packets + c.keepalives + c.ike_in
}

/// Raw bytes into the ESP engine and the node, no valid ICV expected. Byte 0 picks the
/// algorithm, ESN and the entry point (UDP payload, whole IP datagram, bare ESP to
/// `InboundSa::decap`); byte 1 whether the SPI is forced to the known SA's (so the input
/// reaches the cipher instead of the SAD miss path).
pub fn esp_decap(data: &[u8]) {
    let mut c = Cursor(data);
    let sel = c.u8();
    let force_spi = c.u8() & 1 == 1;
    let alg = Algorithm::ALL[(sel & 3) as usize];
    let esn = sel & 4 != 0;
    let mut buf = c.rest().to_vec();
    if force_spi && buf.len() >= 4 {
        buf[..4].copy_from_slice(&FUZZ_SPI.to_be_bytes());
    }
    let n = buf.len();
    match (sel >> 3) % 3 {
        0 => {
            let mut node = fuzz_node(alg, esn, 64);
            let (src, dst) = (PEER.parse().expect("a"), LOCAL.parse().expect("a"));
            let v = node.inbound_udp(t0(), src, 4500, dst, 4500, &mut buf, 0..n);
            check_verdict(&v, n);
            assert_eq!(outcomes(&node), 1, "one datagram, one counted outcome");
            if !matches!(v, Inbound::Deliver(_)) {
                // A refused packet leaves the SA as it was (RFC 4303 §3.4.3: the window
                // moves only after the ICV passed).
                assert_eq!(node.sa_info(t0())[0].seq, 0);
            }
        }
        1 => {
            let mut node = fuzz_node(alg, esn, 64);
            let v = node.inbound_ip(t0(), &mut buf);
            check_verdict(&v, n);
            assert_eq!(outcomes(&node), 1, "one datagram, one counted outcome");
            let _ = wire::parse_underlay(&buf);
        }
        _ => {
            let mut sa = InboundSa::new(&known_sa(alg, esn, 64)).expect("known SA");
            match sa.decap(&mut buf) {
                Ok(d) => assert!(d.payload.end <= n && d.payload.start <= d.payload.end),
                Err(e) => {
                    let _ = e.reason().as_str();
                    assert_eq!(
                        sa.replay().right_edge(),
                        0,
                        "refused packet moved the window"
                    );
                }
            }
        }
    }
}

fn check_verdict(v: &Inbound, n: usize) {
    match v {
        Inbound::Deliver(r) | Inbound::Ike(r) => assert!(r.start <= r.end && r.end <= n),
        Inbound::Keepalive => {}
        Inbound::Drop(r) => {
            assert!(DropReason::ALL.contains(r));
        }
    }
}

/// The known-SA ESP target: the ICV is genuine (the packet is sealed with the SA's keys
/// from fuzzer-chosen plaintext), so the fuzzer explores what lies behind the ICV check:
/// trailer parsing (padding, Pad Length, Next Header), the inner-packet policy check and
/// the anti-replay window with ESN inference, over a sequence of packets.
///
/// Layout: byte 0 = algorithm / ESN / window choice; then packets, each: flags(1), seq
/// (4, plus 4 more high bits when ESN), text length (1), text, and — when flags say so —
/// one byte XORed into the sealed packet at a chosen offset (the ICV must then fail).
///
/// Invariants: no sequence number is ever accepted twice (RFC 4303 §3.4.3); an accepted
/// packet's trailer is well formed (§2.4) and its inner packet within the SA's selectors
/// (RFC 4301 §5.2); a tampered packet is always refused; each packet is counted once.
pub fn esp_known_sa(data: &[u8]) {
    let mut c = Cursor(data);
    let sel = c.u8();
    let alg = Algorithm::ALL[(sel & 3) as usize];
    let esn = sel & 4 != 0;
    let window = [0u32, 32, 64, 1024][((sel >> 3) & 3) as usize];
    let params = known_sa(alg, esn, window);
    let mut node = fuzz_node(alg, esn, window);
    let (src, dst): (IpAddr, IpAddr) = (PEER.parse().expect("a"), LOCAL.parse().expect("a"));
    let mut accepted = BTreeSet::new();
    let mut sent = 0u64;
    // The right edge after the previous packet (one `sa_info` per packet: it allocates).
    let mut edge_before = node.sa_info(t0())[0].seq;
    while !c.is_empty() && sent < 64 {
        let flags = c.u8();
        let lo = c.u32();
        let hi = if esn && flags & 1 != 0 { c.u32() } else { 0 };
        let seq = (u64::from(hi) << 32) | u64::from(lo);
        let len = c.u8() as usize;
        let text = c.take(len);
        let mut esp = build_known(&params, seq, flags, text);
        let tamper = flags & 2 != 0;
        if tamper {
            let at = c.u16() as usize % esp.len();
            let x = c.u8() | 1;
            esp[at] ^= x;
        }
        let n = esp.len();
        let v = node.inbound_udp(t0(), src, 4500, dst, 4500, &mut esp, 0..n);
        sent += 1;
        assert_eq!(outcomes(&node), sent, "one packet, one counted outcome");
        let edge_after = node.sa_info(t0())[0].seq;
        assert!(edge_after >= edge_before, "the window moved left");
        match v {
            Inbound::Deliver(r) => {
                assert!(!tamper, "a tampered packet was delivered");
                let inner = &esp[r.clone()];
                assert!(matches!(inner.first().map(|b| b >> 4), Some(4 | 6)));
                // The decrypted trailer: Pad Length and the padding it names (§2.4).
                let text_end = n - 16;
                let pad_len = esp[text_end - 2] as usize;
                assert_eq!(r.end + pad_len, text_end - 2);
                for (i, b) in esp[r.end..text_end - 2].iter().enumerate() {
                    assert_eq!(*b as usize, i + 1, "accepted bad padding");
                }
                assert!(matches!(
                    esp[text_end - 1],
                    NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6
                ));
                // With a window the same number is never accepted twice; the inferred
                // 64-bit number is the right edge now or was left of it before.
                if window > 0 {
                    let inferred = if esn { seq } else { u64::from(lo) };
                    assert!(
                        accepted.insert(inferred),
                        "sequence {inferred} accepted twice"
                    );
                }
            }
            // Refused after the ICV verified (RFC 4303 §2.6 dummy, an unsupported next
            // header, RFC 4301 §5.2 selectors): the packet was authentic, so the window
            // took its number (§3.4.3) and it was not tampered with.
            Inbound::Drop(
                DropReason::DummyPacket
                | DropReason::UnsupportedNextHeader
                | DropReason::PolicyMismatch,
            ) => assert!(!tamper),
            Inbound::Drop(r) => {
                assert_eq!(
                    edge_after, edge_before,
                    "a refused packet ({r}) moved the window"
                );
            }
            other => panic!("ESP with a known SPI classified as {other:?}"),
        }
        edge_before = edge_after;
    }
    // The same SA through the bare engine: typed errors only.
    let mut sa = InboundSa::new(&params).expect("known SA");
    let mut again = build_known(&params, 1, 0, c.rest());
    if let Err(e) = sa.decap_tunnel(&mut again) {
        let _: EspError = e;
    }
}

// ---------------------------------------------------------------------------------------
// IKE codec and SK payload
// ---------------------------------------------------------------------------------------

/// The IKE message parser: whole messages, bare payload chains behind any first type.
/// Invariant: whatever parses re-emits to bytes that parse to the same message.
pub fn ike_message(data: &[u8]) {
    if let Ok(m) = Message::parse(data) {
        let _ = m.notifies().count();
        if let Ok(bytes) = m.try_emit() {
            let again = Message::parse(&bytes).expect("an emitted message parses");
            assert_eq!(again, m, "parse ∘ emit ∘ parse differs from parse");
        }
    }
    if let Some((first, rest)) = data.split_first() {
        let _ = esplab_ike::parse_payloads(PayloadType(*first), rest);
        for p in esplab_ike::RawPayloads::new(PayloadType(*first), rest).take(1000) {
            if p.is_err() {
                break;
            }
        }
    }
}

/// Known SK keys for [`sk_decrypt`]: GCM-128 (SK_e = key‖salt) and CBC-128 +
/// HMAC-SHA-256-128.
pub fn sk_keys(gcm: bool) -> (Vec<u8>, Vec<u8>) {
    if gcm {
        ((0u8..20).map(|i| i ^ 0x3c).collect(), Vec::new())
    } else {
        (
            (0u8..16).map(|i| i ^ 0x3c).collect(),
            (0u8..32).map(|i| i ^ 0xc3).collect(),
        )
    }
}

fn sk_cipher(gcm: bool) -> SkCipher {
    let (e, a) = sk_keys(gcm);
    if gcm {
        SkCipher::new(Encr::AesGcm128, None, &e, &a).expect("GCM SK keys")
    } else {
        SkCipher::new(Encr::AesCbc128, Some(Integ::HmacSha256_128), &e, &a).expect("CBC SK keys")
    }
}

/// Seals fuzzer-chosen SK plaintext (inner payload chain, padding and Pad Length as they
/// are) into a complete message with the known GCM keys (RFC 5282 §5: AAD = IKE header
/// through the SK payload header; nonce = salt‖IV), so the fuzzer reaches the
/// post-ICV parsing.
pub fn seal_sk_gcm(first_inner: u8, message_id: u32, plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let (key, _) = sk_keys(true);
    let header = IkeHeader {
        spi_i: 0x0102_0304_0506_0708,
        spi_r: 0x1112_1314_1516_1718,
        exchange_type: esplab_ike::ExchangeType::INFORMATIONAL,
        flags: Flags::INITIATOR,
        message_id,
    };
    let iv = [0x42u8; 8];
    let total = 28 + 4 + 8 + plaintext.len() + 16;
    let mut out = header.encode(PayloadType::SK, total as u32).to_vec();
    out.extend_from_slice(&[first_inner, 0]);
    out.extend_from_slice(&((total - 28) as u16).to_be_bytes());
    let aad = out.clone();
    out.extend_from_slice(&iv);
    let mut text = plaintext.to_vec();
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&key[16..]);
    nonce[4..].copy_from_slice(&iv);
    let tag = aes_gcm::Aes128Gcm::new_from_slice(&key[..16])
        .expect("key")
        .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &aad, &mut text)
        .expect("seal");
    out.extend_from_slice(&text);
    out.extend_from_slice(&tag);
    out
}

/// SK payload decryption with a known key. Byte 0 picks the mode: raw bytes opened with
/// the GCM or the CBC keys (framing, lengths and the ICV check), or fuzzer plaintext sealed
/// with the GCM keys (the ICV passes; Pad Length and the inner payload chain are fuzzed).
/// Invariants: raw bytes never open (a forged ICV would be a finding), sealed ones always
/// do, and whatever opens has a plaintext no longer than the ciphertext.
pub fn sk_decrypt(data: &[u8]) {
    let mut c = Cursor(data);
    let mode = c.u8();
    match mode % 3 {
        0 | 1 => {
            let gcm = mode % 3 == 0;
            let msg = c.rest();
            if let Ok(o) = sk_cipher(gcm).open(msg) {
                // Only possible for a message someone sealed with these keys: the seeds
                // contain such messages, and a mutation that keeps them valid is fine.
                assert!(o.plaintext.len() <= msg.len());
                let _ = o.payloads();
            }
        }
        _ => {
            let first = c.u8();
            let mid = c.u32();
            let plain = c.rest();
            let msg = seal_sk_gcm(first, mid, plain);
            match sk_cipher(true).open(&msg) {
                Ok(o) => {
                    assert!(o.plaintext.len() < plain.len().max(1));
                    assert_eq!(o.header.message_id, mid);
                    let _ = o.payloads();
                }
                Err(e) => {
                    // Only the Pad Length can be wrong in a message we sealed ourselves,
                    // or the ciphertext be empty (no room for the Pad Length, §3.14).
                    assert!(
                        matches!(e, esplab_ike::CryptoError::BadPadding { .. })
                            || (plain.is_empty()
                                && matches!(
                                    e,
                                    esplab_ike::CryptoError::BadCiphertextLength { .. }
                                )),
                        "sealed message refused: {e}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// IKE state machines
// ---------------------------------------------------------------------------------------

struct Spis(u32);

impl SpiAllocator for Spis {
    fn allocate_inbound_spi(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(1).max(256);
        self.0
    }
}

const A_ADDR: &str = "198.18.0.1:4500";
const B_ADDR: &str = "198.18.0.2:4500";

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ike_peer(name: &str, me: &str, them: &str, local: &str, remote: &str) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        esplab_ike::Identity::fqdn(me),
        Some(esplab_ike::Identity::fqdn(them)),
        b"esplab fuzz secret",
    );
    p.local_addr = Some(sock(local));
    p.remote_addr = Some(sock(remote));
    p.ike_lifetime = None;
    p.child_lifetime = None;
    p
}

/// A real exchange between two endpoints: snapshots of both after every delivered
/// message, and every message sent (with whether it went to A).
pub struct Transcript {
    /// (A, B, now) after each step.
    pub snapshots: Vec<(Endpoint, Endpoint, Instant)>,
    /// (to A, datagram).
    pub packets: Vec<(bool, Vec<u8>)>,
    /// The datagrams of `packets` as a set (built once, not per fuzz input).
    pub real: BTreeSet<Vec<u8>>,
}

/// IKE_SA_INIT, IKE_AUTH, a CHILD SA rekey, an IKE SA rekey, a liveness check, a CHILD
/// SA delete and the IKE SA delete, between "sun" (A) and "moon" (B).
pub fn transcript() -> &'static Transcript {
    static T: OnceLock<Transcript> = OnceLock::new();
    T.get_or_init(|| {
        let now = t0();
        let ep = |peer, seed| {
            Endpoint::new(
                EndpointConfig {
                    peers: vec![peer],
                    rng_seed: Some(seed),
                    ..Default::default()
                },
                now,
            )
            .expect("endpoint")
        };
        let mut a = ep(ike_peer("moon", "sun", "moon", A_ADDR, B_ADDR), 1);
        let mut b = ep(ike_peer("sun", "moon", "sun", B_ADDR, A_ADDR), 2);
        let (mut sa, mut sb) = (Spis(0xa000_0000), Spis(0xb000_0000));
        let mut t = Transcript {
            snapshots: vec![(a.clone(), b.clone(), now)],
            packets: Vec::new(),
            real: BTreeSet::new(),
        };
        let mut installed_a = Vec::new();
        let mut installed_b = Vec::new();
        a.initiate(now, "moon", &mut sa).expect("initiate");
        run(
            now,
            (&mut a, &mut b),
            (&mut sa, &mut sb),
            &mut t,
            (&mut installed_a, &mut installed_b),
        );
        if let Some(spi) = installed_a.first().copied() {
            let _ = a.rekey_child(now, spi, &mut sa);
            run(
                now,
                (&mut a, &mut b),
                (&mut sa, &mut sb),
                &mut t,
                (&mut installed_a, &mut installed_b),
            );
        }
        let _ = b.rekey_ike(now, "sun");
        run(
            now,
            (&mut a, &mut b),
            (&mut sa, &mut sb),
            &mut t,
            (&mut installed_a, &mut installed_b),
        );
        let _ = a.send_liveness(now, "moon");
        run(
            now,
            (&mut a, &mut b),
            (&mut sa, &mut sb),
            &mut t,
            (&mut installed_a, &mut installed_b),
        );
        if let Some(spi) = installed_b.last().copied() {
            let _ = b.delete_child(now, spi);
            run(
                now,
                (&mut a, &mut b),
                (&mut sa, &mut sb),
                &mut t,
                (&mut installed_a, &mut installed_b),
            );
        }
        let _ = a.terminate(now, "moon");
        run(
            now,
            (&mut a, &mut b),
            (&mut sa, &mut sb),
            &mut t,
            (&mut installed_a, &mut installed_b),
        );
        t.real = t.packets.iter().map(|(_, d)| d.clone()).collect();
        t
    })
}

/// Delivers every message the two endpoints send until both are quiet, recording each and
/// a snapshot after it; CHILD SAs installed are noted per side.
fn run(
    now: Instant,
    (a, b): (&mut Endpoint, &mut Endpoint),
    (sa, sb): (&mut Spis, &mut Spis),
    t: &mut Transcript,
    (ia, ib): (&mut Vec<u32>, &mut Vec<u32>),
) {
    for _ in 0..64 {
        let mut wire = Vec::new();
        for (ep, to_a, inst) in [(&mut *a, false, &mut *ia), (&mut *b, true, &mut *ib)] {
            while let Some(o) = ep.poll_output() {
                match o {
                    Output::Send { data, .. } => wire.push((to_a, data)),
                    Output::InstallChild(c) => inst.push(c.inbound.spi),
                    _ => {}
                }
            }
        }
        if wire.is_empty() {
            return;
        }
        for (to_a, data) in wire {
            if to_a {
                a.handle_datagram(now, sock(A_ADDR), sock(B_ADDR), &data, sa);
            } else {
                b.handle_datagram(now, sock(B_ADDR), sock(A_ADDR), &data, sb);
            }
            t.packets.push((to_a, data));
            t.snapshots.push((a.clone(), b.clone(), now));
        }
    }
}

/// What an unauthenticated datagram must not change: every IKE SA past authentication,
/// its SPIs, state, Message IDs and CHILD SAs (RFC 7296 §2.21).
pub fn fingerprint(ep: &Endpoint, now: Instant) -> Vec<String> {
    ep.ike_sas(now)
        .into_iter()
        .filter(|s| !matches!(s.state, IkeSaState::Connecting | IkeSaState::Authenticating))
        .map(|s| {
            let children: Vec<_> = s
                .children
                .iter()
                .map(|c| (c.inbound_spi, c.outbound_spi, c.state))
                .collect();
            format!(
                "{:?} {:?} {:x} {:x} {} {} {:?}",
                s.id,
                s.state,
                s.spi_i,
                s.spi_r,
                s.next_message_id,
                s.peer_next_message_id,
                children
            )
        })
        .collect()
}

/// IKE state machines fed datagram sequences: byte 0 picks a snapshot of a real exchange
/// (both endpoints); then ops, each one byte: random bytes, a real message with bytes
/// flipped / cut / appended, a real message as it was (replays, reordering), or time
/// passing. Invariants: no panic; a datagram that is not one of the real messages never
/// installs, activates or removes a CHILD SA nor changes an authenticated IKE SA, and is
/// answered at most once.
pub fn ike_state(data: &[u8]) {
    let t = transcript();
    let mut c = Cursor(data);
    let (a, b, t_snap) = &t.snapshots[c.u8() as usize % t.snapshots.len()];
    let (mut a, mut b, mut now) = (a.clone(), b.clone(), *t_snap);
    // The snapshot still holds the outputs of the real message it was taken after.
    while a.poll_output().is_some() {}
    while b.poll_output().is_some() {}
    let mut spis = Spis(0xf000_0000);
    // The fingerprints of A and B, computed when first needed. A forged datagram must
    // leave its endpoint's fingerprint as it was (asserted below), so the one taken after
    // it stands for the next op's "before"; a real message or time passing may change an
    // endpoint legitimately and drops its entry. (`ike_sas` formats every SA: calling it
    // twice per op was an eighth of the target's time.)
    let mut prints: [Option<Vec<String>>; 2] = [None, None];
    let mut ops = 0;
    while !c.is_empty() && ops < 32 {
        ops += 1;
        let op = c.u8();
        let to_a = op & 0x10 != 0;
        let datagram: Vec<u8> = match op % 4 {
            0 => {
                let n = c.u16() as usize % 1500;
                c.take(n).to_vec()
            }
            1 | 2 => {
                let (dir, p) = &t.packets[c.u8() as usize % t.packets.len()];
                let mut d = p.clone();
                if op % 4 == 2 {
                    // Verbatim: to where it really went.
                    let (local, remote) = if *dir {
                        (sock(A_ADDR), sock(B_ADDR))
                    } else {
                        (sock(B_ADDR), sock(A_ADDR))
                    };
                    let ep = if *dir { &mut a } else { &mut b };
                    prints[usize::from(!*dir)] = None;
                    ep.handle_datagram(now, local, remote, &d, &mut spis);
                    while ep.poll_output().is_some() {}
                    continue;
                }
                for _ in 0..(c.u8() % 4) + 1 {
                    if d.is_empty() {
                        break;
                    }
                    let at = c.u16() as usize % d.len();
                    d[at] ^= c.u8();
                }
                let cut = c.u8();
                if cut & 0x80 != 0 {
                    let keep = c.u16() as usize % (d.len() + 1);
                    d.truncate(keep);
                }
                let extra = (cut & 3) as usize;
                d.extend_from_slice(c.take(extra));
                d
            }
            _ => {
                now += Duration::from_secs(u64::from(c.u8()));
                a.handle_timeout(now, &mut spis);
                b.handle_timeout(now, &mut spis);
                while a.poll_output().is_some() {}
                while b.poll_output().is_some() {}
                prints = [None, None];
                continue;
            }
        };
        let verbatim = t.real.contains(datagram.as_slice());
        let (ep, local, remote) = if to_a {
            (&mut a, sock(A_ADDR), sock(B_ADDR))
        } else {
            (&mut b, sock(B_ADDR), sock(A_ADDR))
        };
        let slot = &mut prints[usize::from(!to_a)];
        let before = match slot.take() {
            Some(p) => p,
            None => fingerprint(ep, now),
        };
        ep.handle_datagram(now, local, remote, &datagram, &mut spis);
        let mut sent = 0;
        while let Some(o) = ep.poll_output() {
            match o {
                Output::Send { .. } => sent += 1,
                Output::Event(_) => {}
                o => assert!(verbatim, "SAD change from a forged datagram: {o:?}"),
            }
        }
        if !verbatim {
            let after = fingerprint(ep, now);
            assert_eq!(after, before, "forged datagram changed an SA");
            assert!(sent <= 1, "{sent} answers to one forged datagram");
            *slot = Some(after);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Config and capture files
// ---------------------------------------------------------------------------------------

/// A config path in a directory that does not exist: relative secret-file names resolve
/// under it and fail to open (the directory must exist for `..` to climb out of it).
const CONFIG_PATH: &str = "/nonexistent-esplab-fuzz/peer.toml";

/// The TOML config parser (`esplab peer --config`). Invariants: every error names the
/// file and a line within the text (0 = the whole file), and has a non-empty message.
///
/// The parser reads secret files; to keep the fuzzer off the real filesystem (a config
/// naming `/dev/zero` would block it), inputs that could name an absolute or escaped path
/// in a file key are skipped.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\\') || (text.contains("file") && text.contains('/')) {
        return;
    }
    let _ = esplab_netio::config::parse_duration(text);
    let _ = esplab_netio::config::parse_identity(text);
    match esplab_netio::config::Config::parse(Path::new(CONFIG_PATH), text) {
        Ok(cfg) => assert_eq!(cfg.path, Path::new(CONFIG_PATH)),
        Err(e) => {
            assert_eq!(e.file, CONFIG_PATH);
            let lines = text.bytes().filter(|b| *b == b'\n').count() + 1;
            assert!(e.line <= lines, "error line {} of {lines}: {e}", e.line);
            // The fuzzer found "\rN" giving an empty message ("FILE:1: "); every error
            // must say something.
            assert!(!e.msg.trim().is_empty(), "empty message: {e}");
        }
    }
}

/// The capture reader (`esplab esp decrypt --pcap`): pcap and pcapng, then each frame's
/// link layer down to IP and the underlay classification. Invariants: frames are numbered
/// 1, 2, ...; the IP length is within the frame.
pub fn pcap(data: &[u8]) {
    let Ok(frames) = pcap_io::read_capture(data) else {
        return;
    };
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.number, i as u64 + 1);
        let Some(link) = pcap_io::LinkType::from_code(f.link) else {
            continue;
        };
        let Some(ip) = link.ip_packet(&f.data) else {
            continue;
        };
        if let Some(n) = pcap_io::ip_len(ip) {
            assert!(n <= ip.len());
            match wire::parse_underlay(&ip[..n]) {
                Ok(Underlay::Esp(o)) | Ok(Underlay::Ike(o)) | Ok(Underlay::Keepalive(o)) => {
                    assert!(o.payload.end <= n);
                }
                Err(_) => {}
            }
        }
    }
}
