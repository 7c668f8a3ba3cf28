//! Property tests of the ESP engine (`esplab-esp`): round trips for every algorithm and
//! backend, tamper detection, robustness on garbage input, the anti-replay window against a
//! reference model, and sequence number exhaustion.
//!
//! Case counts are kept moderate (tests run unoptimised by default); raise them with the
//! `PROPTEST_CASES` environment variable for a longer run.

use bytes::BytesMut;
use esplab_esp::{
    Algorithm, Backend, DropReason, EspError, EspPacket, InboundSa, OutboundSa, ReplayWindow,
    SaParams,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// Strategies and helpers

/// Keys and identifiers of one SA (both directions use the same).
#[derive(Debug, Clone)]
struct Keys {
    alg: Algorithm,
    /// Backend of the sender; the receiver may use the other one (GCM interop).
    tx_backend: Backend,
    rx_backend: Backend,
    enc_key: Vec<u8>,
    integ_key: Vec<u8>,
    spi: u32,
}

impl Keys {
    fn params(&self, backend: Backend, esn: bool) -> SaParams {
        let mut p = SaParams::new(self.spi, self.alg, &self.enc_key, &self.integ_key);
        p.backend = backend;
        p.esn = esn;
        p
    }

    fn outbound(&self, esn: bool) -> OutboundSa {
        OutboundSa::new(&self.params(self.tx_backend, esn)).expect("valid keys")
    }

    fn inbound(&self, window: ReplayWindow) -> InboundSa {
        let esn = window.esn();
        let mut rx = InboundSa::new(&self.params(self.rx_backend, esn)).expect("valid keys");
        rx.set_replay(window);
        rx
    }
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    proptest::sample::select(Algorithm::ALL.to_vec())
}

fn backend() -> impl Strategy<Value = Backend> {
    proptest::sample::select(Backend::ALL.to_vec())
}

/// Random keys of the right lengths for a given algorithm (GCM: key‖salt, no integrity key).
fn keys_for(alg: Algorithm) -> impl Strategy<Value = Keys> {
    (
        backend(),
        backend(),
        proptest::collection::vec(any::<u8>(), alg.enc_key_len()),
        proptest::collection::vec(any::<u8>(), alg.integ_key_len()),
        // SPIs 1..=255 are reserved (RFC 4303 §2.1).
        256u32..=u32::MAX,
    )
        .prop_map(
            move |(tx_backend, rx_backend, enc_key, integ_key, spi)| Keys {
                alg,
                tx_backend,
                rx_backend,
                enc_key,
                integ_key,
                spi,
            },
        )
}

fn keys() -> impl Strategy<Value = Keys> {
    algorithm().prop_flat_map(keys_for)
}

/// Payload sizes 0..=9000, with small sizes (padding boundaries) drawn more often.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..=48),
        1 => proptest::collection::vec(any::<u8>(), 0..=9000),
    ]
}

/// What RFC 4303 §2.4 and RFC 3602 §2.4 require the padding to align to: the 16-byte AES
/// block for CBC, 4 bytes for GCM (a stream mode; the ESP trailer still ends on 32 bits).
fn align_of(alg: Algorithm) -> usize {
    match alg {
        Algorithm::AesGcm128 | Algorithm::AesGcm256 => 4,
        Algorithm::AesCbc128HmacSha256 | Algorithm::AesCbc256HmacSha256 => 16,
    }
}

/// Encapsulates `payload` into a fresh buffer; returns the ESP bytes.
fn seal(tx: &mut OutboundSa, payload: &[u8], nh: u8) -> Vec<u8> {
    let hdr = tx.header_len();
    let mut buf = vec![0u8; hdr + payload.len() + tx.max_trailer_len()];
    buf[hdr..hdr + payload.len()].copy_from_slice(payload);
    let e = tx
        .encap_slice(&mut buf, hdr..hdr + payload.len(), nh, None)
        .expect("encap");
    buf[e.esp].to_vec()
}

/// First sequence number of a stream: with ESN near a 2^32 multiple (so the stream crosses
/// into a new high half), without ESN anywhere the 32-bit space allows `room` more packets.
fn start_seq(esn: bool, room: u64) -> BoxedStrategy<u64> {
    if esn {
        prop_oneof![
            (0u64..8).prop_map(|k| (1u64 << 32) - k),
            (1u64..=u32::MAX as u64, 0u64..8).prop_map(|(hi, k)| (hi << 32) - k),
            1u64..1000,
        ]
        .boxed()
    } else {
        prop_oneof![
            Just(1u64),
            1u64..=u32::MAX as u64 - room,
            Just(u32::MAX as u64 - room),
        ]
        .boxed()
    }
}

/// A receiver window that is fresh and takes `first`'s high half for its first packet.
fn fresh_window(size: u32, esn: bool, first: u64) -> ReplayWindow {
    ReplayWindow::with_initial_high(size, esn, (first >> 32) as u32).expect("window size")
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[derive(Debug, Clone)]
struct RoundTrip {
    keys: Keys,
    esn: bool,
    start: u64,
    payloads: Vec<(Vec<u8>, u8)>,
    /// `None`: `encap_slice` on a Vec; `Some(extra)`: `encap` on a BytesMut with `extra`
    /// bytes of headroom in front of the ESP header.
    bytes_mut: Option<usize>,
}

fn round_trip_case() -> impl Strategy<Value = RoundTrip> {
    (keys(), any::<bool>()).prop_flat_map(|(keys, esn)| {
        (
            Just(keys),
            Just(esn),
            start_seq(esn, 4),
            proptest::collection::vec((payload(), any::<u8>()), 1..=3),
            proptest::option::of(0usize..64),
        )
            .prop_map(|(keys, esn, start, payloads, bytes_mut)| RoundTrip {
                keys,
                esn,
                start,
                payloads,
                bytes_mut,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// encap → decap gives back payload, next header and sequence number, for every
    /// algorithm, both backends (also mixed: GCM sender and receiver on different backends),
    /// with and without ESN, through both encapsulation APIs.
    #[test]
    fn encap_decap_round_trip(c in round_trip_case()) {
        let k = &c.keys;
        let mut tx = k.outbound(c.esn);
        tx.set_next_seq(c.start);
        let mut rx = k.inbound(fresh_window(64, c.esn, c.start));
        let hdr = tx.header_len();
        let align = align_of(k.alg);
        let mut ivs = BTreeSet::new();
        for (i, (payload, nh)) in c.payloads.iter().enumerate() {
            let seq = c.start + i as u64;
            let (mut buf, e) = match c.bytes_mut {
                None => {
                    let mut buf = vec![0u8; hdr + payload.len() + tx.max_trailer_len()];
                    buf[hdr..hdr + payload.len()].copy_from_slice(payload);
                    let e = tx.encap_slice(&mut buf, hdr..hdr + payload.len(), *nh, None);
                    (buf, e.expect("encap_slice"))
                }
                Some(extra) => {
                    let cap = extra + hdr + payload.len() + tx.max_trailer_len();
                    let mut bm = BytesMut::with_capacity(cap);
                    bm.resize(extra + hdr, 0);
                    bm.extend_from_slice(payload);
                    let ptr = bm.as_ptr();
                    let e = tx.encap(&mut bm, extra + hdr, *nh, None).expect("encap");
                    prop_assert_eq!(e.esp.start, extra);
                    prop_assert_eq!(e.esp.end, bm.len());
                    prop_assert_eq!(bm.as_ptr(), ptr, "BytesMut reallocated");
                    (bm.to_vec(), e)
                }
            };
            prop_assert_eq!(e.seq, seq);
            prop_assert_eq!(tx.last_seq(), seq);
            // RFC 4303 §2.4: the smallest padding that aligns payload‖pad‖2 bytes.
            let pad = e.pad_len as usize;
            prop_assert!(pad < align);
            prop_assert_eq!((payload.len() + pad + 2) % align, 0);
            prop_assert_eq!(e.esp.len(), hdr + payload.len() + pad + 2 + k.alg.icv_len());
            let esp = &mut buf[e.esp.clone()];
            {
                let view = EspPacket::new_checked(&esp[..]).unwrap();
                prop_assert_eq!(view.spi(), k.spi);
                prop_assert_eq!(view.seq(), seq as u32);
            }
            // RFC 4106 §3.1 / RFC 3602 §2.3: never the same IV twice under one key.
            prop_assert!(ivs.insert(esp[8..hdr].to_vec()), "IV repeated");

            let d = rx.decap(esp).map_err(|e| TestCaseError::fail(format!("decap seq {seq}: {e}")))?;
            prop_assert_eq!(d.seq, seq);
            prop_assert_eq!(d.next_header, *nh);
            prop_assert_eq!(d.pad_len, e.pad_len);
            prop_assert_eq!(d.payload.clone(), hdr..hdr + payload.len());
            prop_assert_eq!(&esp[d.payload], &payload[..]);
            prop_assert_eq!(rx.replay().right_edge(), seq);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any single-bit flip anywhere in an ESP packet (SPI to ICV) is rejected, the window
    /// does not move, and the untouched packet is still accepted afterwards.
    #[test]
    fn any_single_bit_flip_is_rejected(
        k in keys(),
        esn in any::<bool>(),
        start in prop_oneof![Just(1u64), 1u64..=u32::MAX as u64 - 2],
        first in proptest::collection::vec(any::<u8>(), 0..=64),
        second in proptest::collection::vec(any::<u8>(), 0..=600),
        bit in any::<Index>(),
    ) {
        let mut tx = k.outbound(esn);
        tx.set_next_seq(start);
        let mut rx = k.inbound(fresh_window(64, esn, start));
        // One packet accepted first, so the window has state a forgery could disturb.
        let mut p1 = seal(&mut tx, &first, 4);
        rx.decap(&mut p1).expect("first packet");
        let good = seal(&mut tx, &second, 41);
        let edge = rx.replay().right_edge();
        prop_assert_eq!(edge, start);

        let bit = bit.index(good.len() * 8);
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let err = match rx.decap(&mut bad) {
            Ok(d) => return Err(TestCaseError::fail(format!("flip of bit {bit} accepted: {d:?}"))),
            Err(e) => e,
        };
        let reason = err.reason();
        if bit < 32 {
            prop_assert_eq!(reason, DropReason::BadSpi, "bit {}", bit);
        } else if bit < 64 {
            // A changed sequence number may be refused by the window before the ICV.
            prop_assert!(
                matches!(
                    reason,
                    DropReason::IcvMismatch | DropReason::ReplayDuplicate | DropReason::ReplayTooOld
                ),
                "bit {}: {:?}", bit, err
            );
        } else {
            // IV, ciphertext, ICV: the ICV is checked before anything is decrypted
            // (RFC 4303 §3.4.4), so it is never a padding or trailer error.
            prop_assert_eq!(reason, DropReason::IcvMismatch, "bit {}: {:?}", bit, err);
        }
        prop_assert_eq!(rx.replay().right_edge(), edge, "window moved on a rejected packet");
        let mut ok = good.clone();
        let d = rx.decap(&mut ok).map_err(|e| TestCaseError::fail(format!("intact packet: {e}")))?;
        prop_assert_eq!(d.seq, start + 1);
        prop_assert_eq!(&ok[d.payload], &second[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Garbage input

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes (optionally behind the SA's own SPI, and behind a plausible sequence
    /// number) never panic, are never accepted and never move the window.
    #[test]
    fn random_bytes_are_rejected(
        k in keys(),
        esn in any::<bool>(),
        prefix in 0usize..3,
        seq_lo in any::<u32>(),
        top in prop_oneof![Just(0u64), 1u64..=u32::MAX as u64],
        data in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = Vec::with_capacity(data.len() + 8);
        if prefix >= 1 {
            bytes.extend_from_slice(&k.spi.to_be_bytes());
        }
        if prefix == 2 {
            bytes.extend_from_slice(&seq_lo.to_be_bytes());
        }
        bytes.extend_from_slice(&data);
        let window = if top == 0 {
            ReplayWindow::new(64, esn)
        } else {
            ReplayWindow::with_right_edge(64, esn, top)
        }
        .unwrap();
        let mut rx = k.inbound(window);
        let r = rx.decap(&mut bytes);
        prop_assert!(r.is_err(), "random bytes accepted: {:?}", r);
        prop_assert_eq!(rx.replay().right_edge(), top);
        let r = rx.decap_tunnel(&mut bytes);
        prop_assert!(r.is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Anti-replay window against a reference model

/// RFC 4303 §3.4.3 in its simplest form: a set of accepted numbers and the highest one.
#[derive(Debug, Default)]
struct Model {
    seen: BTreeSet<u64>,
    top: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Duplicate,
    TooOld,
}

impl Model {
    fn judge(&self, size: u64, seq: u64) -> Verdict {
        if seq == 0 {
            Verdict::TooOld
        } else if seq > self.top {
            Verdict::Accept
        } else if self.top - seq >= size {
            Verdict::TooOld
        } else if self.seen.contains(&seq) {
            Verdict::Duplicate
        } else {
            Verdict::Accept
        }
    }

    fn accept(&mut self, seq: u64) {
        self.seen.insert(seq);
        self.top = self.top.max(seq);
    }
}

#[derive(Debug, Clone)]
struct ReplayCase {
    keys: Keys,
    size: u32,
    esn: bool,
    /// Sequence numbers are `base + i` for the delivered `i` (all ≥ 1).
    base: u64,
    deliveries: Vec<u64>,
}

/// Arrival orders of the indices 1..=n.
fn arrivals(size: u32) -> BoxedStrategy<Vec<u64>> {
    let w = size as u64;
    prop_oneof![
        // A permutation of 1..=n with some duplicates mixed in.
        (1u64..=300).prop_flat_map(
            |n| proptest::collection::vec(1..=n, 0..=(n as usize / 4 + 1)).prop_flat_map(
                move |dups| {
                    let mut all: Vec<u64> = (1..=n).collect();
                    all.extend(dups);
                    Just(all).prop_shuffle()
                }
            )
        ),
        // A random multiset of 1..=n (duplicates, gaps), in random order; n may exceed the
        // window, so some numbers end up too old.
        (1u64..=2 * w + 200).prop_flat_map(|n| proptest::collection::vec(1..=n, 1..=400)),
        // Roughly in order with reordering up to twice the window: each index is delayed by
        // a random amount, then sorted by arrival time.
        (1u64..=(3 * w).min(10_000))
            .prop_flat_map(move |n| proptest::collection::vec(0..2 * w, n as usize))
            .prop_map(|delays| {
                let mut order: Vec<(u64, u64)> = delays
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (i as u64 + 1 + d, i as u64 + 1))
                    .collect();
                order.sort_unstable();
                order.into_iter().map(|(_, i)| i).collect()
            }),
        // Bursts separated by jumps of up to four windows: each burst is a shuffled run of
        // consecutive numbers. A jump past the whole bitmap must forget every old bit, or a
        // number of the next burst that shares a bit position looks like a duplicate.
        proptest::collection::vec(
            (
                0..4 * w,
                proptest::collection::vec(any::<u32>(), 1..=(w as usize).min(300)),
            ),
            1..=6,
        )
        .prop_map(|bursts| {
            let mut out = Vec::new();
            let mut cursor = 0u64;
            for (gap, keys) in bursts {
                cursor += gap;
                // The random keys give the burst's arrival order.
                let mut run: Vec<(u32, u64)> = keys
                    .iter()
                    .enumerate()
                    .map(|(j, k)| (*k, cursor + 1 + j as u64))
                    .collect();
                run.sort_unstable();
                out.extend(run.into_iter().map(|(_, i)| i));
                cursor += keys.len() as u64;
            }
            out
        }),
    ]
    .boxed()
}

fn replay_case() -> impl Strategy<Value = ReplayCase> {
    (
        keys(),
        proptest::sample::select(vec![32u32, 64, 1024, 4096]),
        any::<bool>(),
    )
        .prop_flat_map(|(keys, size, esn)| {
            let base = if esn {
                prop_oneof![
                    Just(0u64),
                    // Crossing 2^32 (and other high-half boundaries) somewhere in the stream.
                    (0u64..2000).prop_map(|k| (1u64 << 32) - k),
                    (1u64..=u32::MAX as u64 - 1, 0u64..2000).prop_map(|(hi, k)| (hi << 32) - k),
                ]
                .boxed()
            } else {
                // Without ESN the whole stream must fit under 2^32: start at 0, or end at
                // the top of the space.
                prop_oneof![Just(0u64), Just(u32::MAX as u64 - 200_000)].boxed()
            };
            (Just(keys), Just(size), Just(esn), base, arrivals(size))
        })
        .prop_map(|(keys, size, esn, base, deliveries)| ReplayCase {
            keys,
            size,
            esn,
            base,
            deliveries,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Real packets, encrypted once each, delivered in a random order with duplicates: the
    /// engine accepts exactly what the reference model accepts, the right edge follows the
    /// model, and every accepted packet decrypts to its own payload.
    #[test]
    fn replay_window_matches_reference_model(c in replay_case()) {
        let k = &c.keys;
        let w = c.size as u64;
        let mut tx = k.outbound(c.esn);
        // Encrypt every distinct number once, in increasing order (as a sender would).
        let distinct: BTreeSet<u64> = c.deliveries.iter().copied().collect();
        let mut packets = BTreeMap::new();
        for &i in &distinct {
            let seq = c.base + i;
            tx.set_next_seq(seq);
            packets.insert(i, seal(&mut tx, &seq.to_be_bytes(), 4));
        }
        let first = c.base + c.deliveries[0];
        let mut rx = k.inbound(fresh_window(c.size, c.esn, first));
        let mut model = Model::default();
        for (step, &i) in c.deliveries.iter().enumerate() {
            let seq = c.base + i;
            let expect = model.judge(w, seq);
            let mut esp = packets[&i].clone();
            let r = rx.decap(&mut esp);
            match (&expect, r) {
                (Verdict::Accept, Ok(d)) => {
                    prop_assert_eq!(d.seq, seq, "step {}", step);
                    prop_assert_eq!(&esp[d.payload], &seq.to_be_bytes()[..]);
                    model.accept(seq);
                }
                (Verdict::Duplicate, Err(e)) => {
                    prop_assert_eq!(e, EspError::ReplayDuplicate { seq }, "step {}", step);
                }
                (Verdict::TooOld, Err(e)) if !c.esn => {
                    prop_assert_eq!(e, EspError::ReplayTooOld { seq }, "step {}", step);
                }
                (Verdict::TooOld, Err(e)) => {
                    // With ESN a number left of the window is inferred into the next high
                    // half (RFC 4303 Appendix A2.2) and then fails the ICV instead.
                    prop_assert!(
                        matches!(e.reason(), DropReason::ReplayTooOld | DropReason::IcvMismatch),
                        "step {}: {:?}", step, e
                    );
                }
                (v, r) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: seq {seq} (top {}, window {w}): model says {v:?}, engine {r:?}",
                        model.top
                    )));
                }
            }
            prop_assert_eq!(rx.replay().right_edge(), model.top, "step {}", step);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sequence number exhaustion (RFC 4303 §3.3.3: the counter must not cycle)

#[test]
fn sequence_number_exhaustion() {
    for alg in Algorithm::ALL {
        for backend in Backend::ALL {
            let ctx = format!("{} [{}]", alg.name(), backend.name());
            let keys = Keys {
                alg,
                tx_backend: backend,
                rx_backend: backend,
                enc_key: vec![0x11; alg.enc_key_len()],
                integ_key: vec![0x22; alg.integ_key_len()],
                spi: 0xc0de_0001,
            };
            for (esn, last) in [(false, u32::MAX as u64), (true, u64::MAX)] {
                let ctx = format!("{ctx} esn={esn}");
                let mut tx = keys.outbound(esn);
                tx.set_next_seq(last);
                let mut rx = keys.inbound(fresh_window(64, esn, last));
                let hdr = tx.header_len();

                // The last number is still sent, and received.
                let mut esp = seal(&mut tx, b"last", 4);
                assert_eq!(tx.last_seq(), last, "{ctx}");
                let d = rx.decap(&mut esp).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(d.seq, last, "{ctx}");

                // Then the counter is exhausted, through both APIs, and the buffers are left
                // as they were.
                let mut buf = vec![0xa5u8; hdr + 4 + tx.max_trailer_len()];
                let copy = buf.clone();
                assert_eq!(
                    tx.encap_slice(&mut buf, hdr..hdr + 4, 4, None),
                    Err(EspError::SequenceExhausted),
                    "{ctx}"
                );
                assert_eq!(buf, copy, "{ctx}: buffer written on failure");
                let mut bm = BytesMut::with_capacity(64);
                bm.resize(hdr, 0);
                bm.extend_from_slice(b"more");
                let before = bm.clone();
                let e = tx.encap(&mut bm, hdr, 4, None).unwrap_err();
                assert_eq!(e.reason(), DropReason::SequenceExhausted, "{ctx}");
                assert_eq!(bm, before, "{ctx}: BytesMut changed on failure");
                assert_eq!(tx.last_seq(), last, "{ctx}");
                // Still exhausted on a second try.
                assert_eq!(
                    tx.encap(&mut bm, hdr, 4, None).unwrap_err(),
                    EspError::SequenceExhausted,
                    "{ctx}"
                );
            }

            // With ESN, 2^32 - 1 is an ordinary number: the stream goes on into high half 1.
            let mut tx = keys.outbound(true);
            tx.set_next_seq(u32::MAX as u64);
            let mut rx = keys.inbound(fresh_window(64, true, u32::MAX as u64));
            for seq in [u32::MAX as u64, 1 << 32, (1 << 32) + 1] {
                let mut esp = seal(&mut tx, b"wrap", 4);
                assert_eq!(rx.decap(&mut esp).unwrap().seq, seq, "{ctx}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sequence number 0 with a valid ICV

/// Builds an ESP packet by hand, outside the engine (RFC 4303 §2 layout, RFC 4106 §4–5 nonce
/// and AAD for GCM, RFC 3602 + RFC 4868 for CBC), so it can carry a sequence number the
/// engine's sender never produces.
fn craft(keys: &Keys, seq_lo: u32, seq_hi: Option<u32>, iv: &[u8], payload: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let align = align_of(keys.alg);
    let pad = (align - (payload.len() + 2) % align) % align;
    let mut text = payload.to_vec();
    text.extend((1..=pad).map(|b| b as u8));
    text.extend_from_slice(&[pad as u8, 4]);
    let mut esp = keys.spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&seq_lo.to_be_bytes());
    esp.extend_from_slice(iv);
    match keys.alg {
        Algorithm::AesGcm128 | Algorithm::AesGcm256 => {
            let (key, salt) = keys.enc_key.split_at(keys.enc_key.len() - 4);
            let nonce = [salt, iv].concat();
            let mut aad = keys.spi.to_be_bytes().to_vec();
            if let Some(hi) = seq_hi {
                aad.extend_from_slice(&hi.to_be_bytes());
            }
            aad.extend_from_slice(&seq_lo.to_be_bytes());
            let nonce = aes_gcm::Nonce::from_slice(&nonce);
            let tag = if key.len() == 16 {
                aes_gcm::Aes128Gcm::new_from_slice(key)
                    .unwrap()
                    .encrypt_in_place_detached(nonce, &aad, &mut text)
            } else {
                aes_gcm::Aes256Gcm::new_from_slice(key)
                    .unwrap()
                    .encrypt_in_place_detached(nonce, &aad, &mut text)
            }
            .unwrap();
            esp.extend_from_slice(&text);
            esp.extend_from_slice(&tag);
        }
        Algorithm::AesCbc128HmacSha256 | Algorithm::AesCbc256HmacSha256 => {
            let iv16: [u8; 16] = iv.try_into().unwrap();
            esplab_esp::transform::aes_cbc_encrypt(&keys.enc_key, &iv16, &mut text).unwrap();
            esp.extend_from_slice(&text);
            let mut covered = esp.clone();
            if let Some(hi) = seq_hi {
                covered.extend_from_slice(&hi.to_be_bytes());
            }
            let mac = esplab_esp::transform::hmac_sha256(&keys.integ_key, &covered);
            esp.extend_from_slice(&mac[..16]);
        }
    }
    esp
}

/// A packet carrying sequence number 0 with a valid ICV (never sent by a conforming peer,
/// RFC 4303 §3.3.3) is refused as replay-too-old, after the ICV check, without moving the
/// window; the hand-built packets are first shown to be right by a seq-1 twin that the
/// engine builds byte-identically and accepts.
#[test]
fn authentic_sequence_number_zero() {
    for alg in Algorithm::ALL {
        for backend in Backend::ALL {
            for esn in [false, true] {
                let ctx = format!("{} [{}] esn={esn}", alg.name(), backend.name());
                let keys = Keys {
                    alg,
                    tx_backend: backend,
                    rx_backend: backend,
                    enc_key: (0..alg.enc_key_len() as u8).collect(),
                    integ_key: (0..alg.integ_key_len() as u8).map(|b| !b).collect(),
                    spi: 0xc0de_0000,
                };
                let iv: Vec<u8> = (0..alg.iv_len() as u8).map(|b| b ^ 0x5a).collect();
                let payload = b"\x45\x00\x00\x14 sequence zero";
                let hi = esn.then_some(0);

                // The twin with seq 1: the hand-built bytes equal the engine's.
                let one = craft(&keys, 1, hi, &iv, payload);
                let tx = keys.outbound(esn);
                let hdr = tx.header_len();
                let mut buf = vec![0u8; hdr + payload.len() + tx.max_trailer_len()];
                buf[hdr..hdr + payload.len()].copy_from_slice(payload);
                let e = tx
                    .encap_slice(&mut buf, hdr..hdr + payload.len(), 4, Some(&iv))
                    .unwrap();
                assert_eq!(buf[e.esp].to_vec(), one, "{ctx}: hand-built packet differs");

                let mut rx = keys.inbound(fresh_window(64, esn, 0));
                let mut zero = craft(&keys, 0, hi, &iv, payload);
                assert_eq!(
                    rx.decap(&mut zero),
                    Err(EspError::ReplayTooOld { seq: 0 }),
                    "{ctx}: fresh window"
                );
                assert_eq!(rx.replay().right_edge(), 0, "{ctx}");
                let d = rx.decap(&mut one.clone()).unwrap();
                assert_eq!(d.seq, 1, "{ctx}");
                // And again once the window holds something.
                let mut zero = craft(&keys, 0, hi, &iv, payload);
                assert_eq!(
                    rx.decap(&mut zero).unwrap_err().reason(),
                    DropReason::ReplayTooOld,
                    "{ctx}: after seq 1"
                );
                assert_eq!(rx.replay().right_edge(), 1, "{ctx}");
                // The same bytes with a corrupted ICV are an integrity failure instead.
                let mut forged = craft(&keys, 0, hi, &iv, payload);
                *forged.last_mut().unwrap() ^= 1;
                assert_eq!(rx.decap(&mut forged), Err(EspError::IcvMismatch), "{ctx}");
            }
        }
    }
}
