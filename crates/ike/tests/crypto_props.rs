//! Property tests of the crypto layer: SK seal/open round trips for arbitrary inner
//! payloads and IVs, and proposal selection agreeing with itself.

use esplab_ike::crypto::{IkeSaKeys, Role};
use esplab_ike::proposal::{
    accept_esp_reply, accept_ike_reply, offer, select_esp, select_ike, ProposalSpec,
};
use esplab_ike::{
    DhGroup, Encr, ExchangeType, Flags, IkeHeader, IkeSuite, Integ, Notify, NotifyType, Payload,
    Prf, SaPayload,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn suite() -> impl Strategy<Value = IkeSuite> {
    (
        prop::sample::select(Encr::ALL.to_vec()),
        prop::sample::select(Prf::ALL.to_vec()),
    )
        .prop_map(|(encr, prf)| IkeSuite {
            encr,
            integ: (!encr.is_aead()).then_some(Integ::HmacSha256_128),
            prf,
            dh: DhGroup::CURVE25519,
        })
}

fn inner() -> impl Strategy<Value = Vec<Payload>> {
    vec(
        prop_oneof![
            (any::<u16>(), vec(any::<u8>(), 0..40))
                .prop_map(|(t, d)| Payload::Notify(Notify::new(NotifyType(t), d))),
            vec(any::<u8>(), 16..=64).prop_map(Payload::Nonce),
            vec(any::<u8>(), 0..64).prop_map(Payload::VendorId),
        ],
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sk_round_trip(
        s in suite(),
        payloads in inner(),
        iv in any::<[u8; 16]>(),
        mid in any::<u32>(),
        role in prop::bool::ANY,
        g in any::<[u8; 32]>(),
    ) {
        let keys = IkeSaKeys::from_shared_secret(s, &g, &[1; 16], &[2; 16], 3, 4).unwrap();
        let sender = if role { Role::Initiator } else { Role::Responder };
        let c = keys.sk_cipher(sender).unwrap();
        let h = IkeHeader {
            spi_i: 3,
            spi_r: 4,
            exchange_type: ExchangeType::CREATE_CHILD_SA,
            flags: if role { Flags::INITIATOR } else { Flags::RESPONSE },
            message_id: mid,
        };
        let wire = c.seal(&h, &payloads, &iv[..c.iv_len()]).unwrap();
        let o = keys.sk_cipher(sender).unwrap().open(&wire).unwrap();
        prop_assert_eq!(o.header, h);
        prop_assert_eq!(o.payloads().unwrap(), payloads);
    }

    #[test]
    fn selection_accepts_own_offer(
        encr in vec(prop::sample::select(vec!["aes128gcm16", "aes256gcm16"]), 1..3),
        cbc in vec(prop::sample::select(vec!["aes128", "aes256"]), 1..3),
        prf in vec(prop::sample::select(vec!["prfsha1", "prfsha256", "prfsha384", "prfsha512"]), 1..3),
        esn in vec(prop::sample::select(vec!["esn", "noesn"]), 0..3),
        pfs in any::<bool>(),
    ) {
        let ike_gcm = format!("{}-{}-x25519", encr.join("-"), prf.join("-"));
        let ike_cbc = format!("{}-sha256-x25519", cbc.join("-"));
        let specs = ProposalSpec::parse_ike_list(&format!("{ike_gcm},{ike_cbc}")).unwrap();
        let sa = offer(&specs, &[]);
        let c = select_ike(&specs, &sa).unwrap();
        // The responder takes its first proposal and its first choice in each type.
        prop_assert_eq!(c.proposal_number, 1);
        prop_assert_eq!(c.suite.encr, specs[0].encr[0]);
        prop_assert_eq!(c.suite.prf, specs[0].prf[0]);
        let reply = SaPayload { proposals: vec![c.suite.to_proposal(c.proposal_number, &[])] };
        prop_assert_eq!(accept_ike_reply(&specs, &reply).unwrap().suite, c.suite);

        let mut esp = cbc.join("-") + "-sha256";
        if !esn.is_empty() {
            esp = format!("{esp}-{}", esn.join("-"));
        }
        if pfs {
            esp += "-x25519";
        }
        let spec = ProposalSpec::parse_esp(&esp).unwrap();
        let spi = 0xdead_beefu32;
        let specs = std::slice::from_ref(&spec);
        let c = select_esp(specs, &offer(specs, &spi.to_be_bytes())).unwrap();
        prop_assert_eq!(c.suite.esn, spec.esn[0]);
        prop_assert_eq!(c.suite.dh.is_some(), pfs);
        let reply = SaPayload { proposals: vec![c.suite.to_proposal(c.proposal_number, 7)] };
        prop_assert_eq!(accept_esp_reply(&[spec], &reply).unwrap().suite, c.suite);
    }
}
