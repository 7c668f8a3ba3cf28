//! Property tests of the codec: arbitrary message → emit → parse is the identity, and no
//! input — random, random behind a valid header, or a mutated valid message — panics.

use esplab_ike::crypto::SkCipher;
use esplab_ike::payload::{emit_payloads, parse_payloads};
use esplab_ike::sa::{Attribute, AttributeValue};
use esplab_ike::ts::{AddrRange, TrafficSelector, TsPayload};
use esplab_ike::{
    AuthMethod, AuthPayload, CertPayload, CfgType, Delete, DhGroup, Encr, Encrypted, ExchangeType,
    Flags, IdType, Identity, IkeHeader, Integ, KePayload, Message, Notify, NotifyType, Payload,
    PayloadType, Proposal, ProtocolId, SaPayload, Transform, TransformType,
};
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn attribute() -> impl Strategy<Value = Attribute> {
    (
        0u16..0x8000,
        prop_oneof![
            any::<u16>().prop_map(AttributeValue::Tv),
            bytes(12).prop_map(AttributeValue::Tlv)
        ],
    )
        .prop_map(|(attr_type, value)| Attribute { attr_type, value })
}

fn transform() -> impl Strategy<Value = Transform> {
    (any::<u8>(), any::<u16>(), vec(attribute(), 0..3)).prop_map(|(t, id, attributes)| Transform {
        transform_type: TransformType(t),
        transform_id: id,
        attributes,
    })
}

fn sa() -> impl Strategy<Value = SaPayload> {
    vec(
        (any::<u8>(), any::<u8>(), bytes(8), vec(transform(), 0..5)).prop_map(
            |(number, proto, spi, transforms)| Proposal {
                number,
                protocol_id: ProtocolId(proto),
                spi,
                transforms,
            },
        ),
        1..4,
    )
    .prop_map(|proposals| SaPayload { proposals })
}

fn identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Identity::Ipv4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| Identity::Ipv6(Ipv6Addr::from(a))),
        bytes(40).prop_map(Identity::Fqdn),
        bytes(40).prop_map(Identity::Rfc822),
        bytes(40).prop_map(Identity::KeyId),
        (
            any::<u8>().prop_filter("typed ID types", |t| ![1, 2, 3, 5, 11].contains(t)),
            bytes(40)
        )
            .prop_map(|(t, data)| Identity::Other {
                id_type: IdType(t),
                data
            }),
    ]
}

fn selector() -> impl Strategy<Value = TrafficSelector> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, e)| AddrRange::V4 {
                start: s.into(),
                end: e.into()
            }),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, e)| AddrRange::V6 {
                start: s.into(),
                end: e.into()
            }),
        ],
    )
        .prop_map(
            |(ip_protocol, start_port, end_port, range)| TrafficSelector {
                ip_protocol,
                start_port,
                end_port,
                range,
            },
        )
}

fn notify() -> impl Strategy<Value = Notify> {
    (
        any::<u8>(),
        prop_oneof![Just(0usize), Just(4), Just(8)],
        any::<u16>(),
        bytes(30),
    )
        .prop_map(|(proto, spi_len, t, data)| Notify {
            protocol_id: if spi_len == 0 {
                ProtocolId::NONE
            } else {
                ProtocolId(proto)
            },
            spi: vec![0x5a; spi_len],
            notify_type: NotifyType(t),
            data,
        })
}

fn delete() -> impl Strategy<Value = Delete> {
    prop_oneof![
        Just(Delete {
            protocol_id: ProtocolId::IKE,
            spis: vec![]
        }),
        (
            prop_oneof![Just(ProtocolId::AH), Just(ProtocolId::ESP)],
            vec(any::<u32>(), 0..6)
        )
            .prop_map(|(protocol_id, spis)| Delete { protocol_id, spis }),
    ]
}

fn unknown_type() -> impl Strategy<Value = PayloadType> {
    prop_oneof![1u8..=32, 49u8..=255].prop_map(PayloadType)
}

/// Any payload except Encrypted (which must be last).
fn plain_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        sa().prop_map(Payload::Sa),
        (any::<u16>(), bytes(64)).prop_map(|(g, data)| Payload::Ke(KePayload {
            group: DhGroup(g),
            data
        })),
        identity().prop_map(Payload::IdI),
        identity().prop_map(Payload::IdR),
        (any::<u8>(), bytes(40))
            .prop_map(|(encoding, data)| Payload::Cert(CertPayload { encoding, data })),
        (any::<u8>(), bytes(40))
            .prop_map(|(encoding, data)| Payload::CertReq(CertPayload { encoding, data })),
        (any::<u8>(), bytes(64)).prop_map(|(m, data)| Payload::Auth(AuthPayload {
            method: AuthMethod(m),
            data
        })),
        vec(any::<u8>(), 16..=256).prop_map(Payload::Nonce),
        notify().prop_map(Payload::Notify),
        delete().prop_map(Payload::Delete),
        bytes(40).prop_map(Payload::VendorId),
        vec(selector(), 0..4).prop_map(|selectors| Payload::TsI(TsPayload { selectors })),
        vec(selector(), 0..4).prop_map(|selectors| Payload::TsR(TsPayload { selectors })),
        (any::<u8>(), bytes(40)).prop_map(|(t, attributes)| Payload::Cp(esplab_ike::CpPayload {
            cfg_type: CfgType(t),
            attributes
        })),
        bytes(40).prop_map(Payload::Eap),
        (unknown_type(), bytes(40))
            .prop_map(|(payload_type, data)| Payload::Unknown { payload_type, data }),
    ]
}

fn header() -> impl Strategy<Value = IkeHeader> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
        0u8..8,
        any::<u32>(),
    )
        .prop_map(|(spi_i, spi_r, x, f, message_id)| IkeHeader {
            spi_i,
            spi_r,
            exchange_type: ExchangeType(x),
            flags: Flags::from_bits_truncate(f << 3),
            message_id,
        })
}

fn message() -> impl Strategy<Value = Message> {
    (
        header(),
        vec(plain_payload(), 0..8),
        proptest::option::of((any::<u8>(), bytes(80))),
    )
        .prop_map(|(header, mut payloads, sk)| {
            if let Some((first, data)) = sk {
                payloads.push(Payload::Encrypted(Encrypted {
                    first_payload: PayloadType(first),
                    data,
                }));
            }
            Message { header, payloads }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trip(m in message()) {
        let wire = m.emit();
        let back = Message::parse(&wire).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.emit(), wire);
    }

    #[test]
    fn chain_round_trip(p in vec(plain_payload(), 0..8)) {
        let mut out = Vec::new();
        let first = emit_payloads(&p, &mut out).unwrap();
        prop_assert_eq!(parse_payloads(first, &out).unwrap(), p);
    }

    #[test]
    fn parse_never_panics_on_random_bytes(b in bytes(600), first in any::<u8>()) {
        let _ = Message::parse(&b);
        let _ = parse_payloads(PayloadType(first), &b);
        let _ = IkeHeader::decode(&b);
        for c in sk_ciphers() {
            let _ = c.open(&b);
        }
    }

    #[test]
    fn parse_never_panics_behind_a_valid_header(h in header(), first in any::<u8>(), tail in bytes(600)) {
        let mut wire = h.encode(PayloadType(first), (28 + tail.len()) as u32).to_vec();
        wire.extend_from_slice(&tail);
        if let Ok(m) = Message::parse(&wire) {
            // Anything accepted re-emits to something that parses to the same value.
            prop_assert_eq!(Message::parse(&m.emit()).unwrap(), m);
        }
        for c in sk_ciphers() {
            let _ = c.open(&wire);
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_messages(
        m in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut wire = m.emit();
        for (i, x) in flips {
            let i = i.index(wire.len());
            wire[i] ^= x;
        }
        if truncate {
            let n = cut.index(wire.len() + 1);
            wire.truncate(n);
        }
        if let Ok(m2) = Message::parse(&wire) {
            prop_assert_eq!(Message::parse(&m2.emit()).unwrap(), m2);
        }
        for c in sk_ciphers() {
            let _ = c.open(&wire);
        }
    }
}

fn sk_ciphers() -> Vec<SkCipher> {
    vec![
        SkCipher::new(Encr::AesGcm128, None, &[1; 20], &[]).unwrap(),
        SkCipher::new(
            Encr::AesCbc256,
            Some(Integ::HmacSha256_128),
            &[2; 32],
            &[3; 32],
        )
        .unwrap(),
    ]
}

#[test]
fn critical_unknown_payload_is_reported_with_its_type() {
    // A whole message: Nonce, then unknown type 77 with the critical bit.
    let m = Message {
        header: IkeHeader {
            spi_i: 1,
            spi_r: 0,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
        },
        payloads: vec![
            Payload::Nonce(vec![0; 16]),
            Payload::Unknown {
                payload_type: PayloadType(77),
                data: vec![1, 2, 3],
            },
        ],
    };
    let mut wire = m.emit();
    assert!(Message::parse(&wire).is_ok());
    wire[28 + 20 + 1] = 0x80;
    let err = Message::parse(&wire).unwrap_err();
    assert_eq!(
        err,
        esplab_ike::ParseError::UnsupportedCritical { payload_type: 77 }
    );
    assert_eq!(
        err.notify_type(),
        Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
    );
    assert_eq!(err.notify_data(), vec![77]);
}
