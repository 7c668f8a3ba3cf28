//! NIST SP 800-135 IKEv2 KDF component vectors (tests/vectors/ikev2-kdf-sp800-135.json):
//! SKEYSEED, DKM, Child SA KEYMAT with and without PFS, and the rekeyed SKEYSEED, run
//! through the public API for every PRF the file uses (HMAC-SHA-256 and HMAC-SHA-1).

use esplab_ike::crypto::{rekey_skeyseed, skeyseed, IkeSaKeys};
use esplab_ike::{DhGroup, Encr, IkeSuite, Integ, Prf};
use serde_json::Value;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/ikev2-kdf-sp800-135.json"
));

struct Vector {
    id: String,
    prf: Prf,
    ni: Vec<u8>,
    nr: Vec<u8>,
    spi_i: u64,
    spi_r: u64,
    g_ir: Vec<u8>,
    g_ir_new: Vec<u8>,
    skeyseed: Vec<u8>,
    dkm: Vec<u8>,
    dkm_child_sa: Vec<u8>,
    dkm_child_dh: Vec<u8>,
    skeyseed_rekey: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let h = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
            let spi = |k: &str| u64::from_be_bytes(h(k).try_into().unwrap());
            Vector {
                id: v["id"].as_str().unwrap().to_string(),
                prf: match v["prf"].as_str().unwrap() {
                    "PRF_HMAC_SHA2_256" => Prf::HmacSha256,
                    "PRF_HMAC_SHA1" => Prf::HmacSha1,
                    other => panic!("unexpected PRF {other}"),
                },
                ni: h("ni"),
                nr: h("nr"),
                spi_i: spi("spi_i"),
                spi_r: spi("spi_r"),
                g_ir: h("g_ir"),
                g_ir_new: h("g_ir_new"),
                skeyseed: h("skeyseed"),
                dkm: h("dkm"),
                dkm_child_sa: h("dkm_child_sa"),
                dkm_child_dh: h("dkm_child_dh"),
                skeyseed_rekey: h("skeyseed_rekey"),
            }
        })
        .collect()
}

#[test]
fn file_has_the_expected_sets() {
    let v = vectors();
    assert_eq!(v.len(), 3);
    assert_eq!(v.iter().filter(|v| v.prf == Prf::HmacSha256).count(), 2);
}

#[test]
fn skeyseed_matches() {
    for v in vectors() {
        let s = skeyseed(v.prf, &v.ni, &v.nr, &v.g_ir);
        assert_eq!(s.as_bytes(), v.skeyseed, "{}", v.id);
    }
}

#[test]
fn dkm_matches_prf_plus() {
    for v in vectors() {
        let seed: [&[u8]; 4] = [&v.ni, &v.nr, &v.spi_i.to_be_bytes(), &v.spi_r.to_be_bytes()];
        let dkm = v.prf.prf_plus(&v.skeyseed, &seed, v.dkm.len()).unwrap();
        assert_eq!(dkm.as_bytes(), v.dkm, "{}", v.id);
    }
}

#[test]
fn ike_sa_key_split_follows_dkm() {
    // §2.14 order: SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr. Checked for a
    // CBC+HMAC suite (integrity keys present) and a GCM suite (none, salted SK_e*).
    for v in vectors() {
        let p = v.prf.output_len();
        for (encr, integ) in [
            (Encr::AesCbc256, Some(Integ::HmacSha256_128)),
            (Encr::AesGcm128, None),
        ] {
            let suite = IkeSuite {
                encr,
                integ,
                prf: v.prf,
                dh: DhGroup::CURVE25519,
            };
            let a = suite.integ_key_len();
            let e = encr.keymat_len();
            if 3 * p + 2 * a + 2 * e > v.dkm.len() {
                continue;
            }
            let k = IkeSaKeys::derive(suite, &v.skeyseed, &v.ni, &v.nr, v.spi_i, v.spi_r).unwrap();
            let mut at = 0;
            let mut next = |n: usize| {
                let s = &v.dkm[at..at + n];
                at += n;
                s.to_vec()
            };
            assert_eq!(k.sk_d(), next(p), "{} SK_d", v.id);
            assert_eq!(k.sk_ai(), next(a), "{} SK_ai", v.id);
            assert_eq!(k.sk_ar(), next(a), "{} SK_ar", v.id);
            assert_eq!(k.sk_ei(), next(e), "{} SK_ei", v.id);
            assert_eq!(k.sk_er(), next(e), "{} SK_er", v.id);
            assert_eq!(k.sk_pi(), next(p), "{} SK_pi", v.id);
            assert_eq!(k.sk_pr(), next(p), "{} SK_pr", v.id);
            // from_shared_secret is SKEYSEED + derive.
            let k2 = IkeSaKeys::from_shared_secret(suite, &v.g_ir, &v.ni, &v.nr, v.spi_i, v.spi_r)
                .unwrap();
            assert_eq!(k2.sk_pr(), k.sk_pr());
        }
    }
}

#[test]
fn child_keymat_without_and_with_pfs() {
    for v in vectors() {
        let sk_d = &v.dkm[..v.prf.output_len()];
        let km = v
            .prf
            .prf_plus(sk_d, &[&v.ni, &v.nr], v.dkm_child_sa.len())
            .unwrap();
        assert_eq!(km.as_bytes(), v.dkm_child_sa, "{} child", v.id);
        let km = v
            .prf
            .prf_plus(sk_d, &[&v.g_ir_new, &v.ni, &v.nr], v.dkm_child_dh.len())
            .unwrap();
        assert_eq!(km.as_bytes(), v.dkm_child_dh, "{} child PFS", v.id);
    }
}

#[test]
fn child_sa_keys_are_the_keymat_prefix() {
    use esplab_ike::crypto::{ChildSaKeys, Direction};
    use esplab_ike::EspSuite;
    for v in vectors() {
        let sk_d = &v.dkm[..v.prf.output_len()];
        let suite = EspSuite {
            encr: Encr::AesCbc128,
            integ: Some(Integ::HmacSha256_128),
            esn: false,
            dh: Some(DhGroup::CURVE25519),
        };
        for (g, want) in [
            (None, &v.dkm_child_sa),
            (Some(v.g_ir_new.as_slice()), &v.dkm_child_dh),
        ] {
            let c = ChildSaKeys::derive(v.prf, sk_d, &suite, g, &v.ni, &v.nr).unwrap();
            // §2.17: encryption i→r, integrity i→r, encryption r→i, integrity r→i.
            assert_eq!(c.enc_key(Direction::InitiatorToResponder), &want[0..16]);
            assert_eq!(c.integ_key(Direction::InitiatorToResponder), &want[16..48]);
            assert_eq!(c.enc_key(Direction::ResponderToInitiator), &want[48..64]);
            assert_eq!(c.integ_key(Direction::ResponderToInitiator), &want[64..96]);
        }
    }
}

#[test]
fn rekeyed_skeyseed_matches() {
    for v in vectors() {
        let sk_d = &v.dkm[..v.prf.output_len()];
        let s = rekey_skeyseed(v.prf, sk_d, &v.g_ir_new, &v.ni, &v.nr);
        assert_eq!(s.as_bytes(), v.skeyseed_rekey, "{}", v.id);
    }
}

#[test]
fn rekey_via_ike_sa_keys() {
    // IkeSaKeys::rekey uses the old SA's SK_d and PRF (§2.18); with the vector's inputs its
    // SK_d must be the first block of prf+(SKEYSEED_rekey, Ni | Nr | SPIi | SPIr).
    for v in vectors().into_iter().filter(|v| v.prf == Prf::HmacSha256) {
        let suite = IkeSuite {
            encr: Encr::AesGcm256,
            integ: None,
            prf: v.prf,
            dh: DhGroup::CURVE25519,
        };
        let old = IkeSaKeys::derive(suite, &v.skeyseed, &v.ni, &v.nr, v.spi_i, v.spi_r).unwrap();
        assert_eq!(old.sk_d(), &v.dkm[..32]);
        let new = old.rekey(suite, &v.g_ir_new, &v.ni, &v.nr, 1, 2).unwrap();
        let expect = v
            .prf
            .prf_plus(
                &v.skeyseed_rekey,
                &[&v.ni, &v.nr, &1u64.to_be_bytes(), &2u64.to_be_bytes()],
                32,
            )
            .unwrap();
        assert_eq!(new.sk_d(), expect.as_bytes(), "{}", v.id);
    }
}
