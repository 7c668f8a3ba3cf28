//! PSK AUTH (RFC 7296 §2.15), NAT detection hashes (§2.23) and Child SA keys driving the
//! esplab ESP engine (§2.17).

use esplab_ike::crypto::{
    nat_detection_hash, psk_auth, signed_octets, verify_psk_auth, Direction, IkeSaKeys,
    KeyExchange, Role, KEY_PAD,
};
use esplab_ike::proposal::{offer, select_esp, select_ike, ProposalSpec};
use esplab_ike::{CryptoError, Identity, NotifyType, Prf};
use std::net::IpAddr;

/// Hand-checked example. The expected AUTH was computed independently with Python's
/// hmac/hashlib:
///
/// ```text
/// h = lambda k, d: hmac.new(k, d, hashlib.sha256).digest()
/// msg = bytes(range(40)); nonce = b'\x11' * 32; skp = b'\x22' * 32
/// idb = bytes([2, 0, 0, 0]) + b'moon.example'
/// h(h(b'esplab-psk', b'Key Pad for IKEv2'), msg + nonce + h(skp, idb)).hex()
/// ```
#[test]
fn psk_auth_known_answer() {
    let msg: Vec<u8> = (0..40).collect();
    let nonce = [0x11u8; 32];
    let sk_p = [0x22u8; 32];
    let id_body = Identity::fqdn("moon.example").body();
    assert_eq!(id_body[..4], [2, 0, 0, 0]);
    assert_eq!(KEY_PAD.len(), 17);
    let octets = signed_octets(Prf::HmacSha256, &sk_p, &msg, &nonce, &id_body);
    assert_eq!(octets.len(), 40 + 32 + 32);
    let auth = psk_auth(Prf::HmacSha256, b"esplab-psk", &octets);
    assert_eq!(
        hex::encode(&auth),
        "21abbc1feea7f2a5fcbdc73f2276eafc68c8f0b6f5cdf830ab3611cd65767cb5"
    );
    assert!(verify_psk_auth(Prf::HmacSha256, b"esplab-psk", &octets, &auth).is_ok());
    let err = verify_psk_auth(Prf::HmacSha256, b"wrong", &octets, &auth).unwrap_err();
    assert_eq!(err, CryptoError::AuthenticationFailed);
    assert_eq!(err.notify_type(), Some(NotifyType::AUTHENTICATION_FAILED));
    // Truncated AUTH data fails too (no length leak, no panic).
    assert!(verify_psk_auth(Prf::HmacSha256, b"esplab-psk", &octets, &auth[..31]).is_err());
    assert!(verify_psk_auth(Prf::HmacSha256, b"esplab-psk", &octets, &[]).is_err());
}

#[test]
fn both_roles_authenticate_each_other() {
    let mut rng = rand::thread_rng();
    let spec = ProposalSpec::parse_ike("aes256gcm16-prfsha256-x25519").unwrap();
    let specs = [spec];
    let suite = select_ike(&specs, &offer(&specs, &[])).unwrap().suite;
    let i = KeyExchange::generate(suite.dh, &mut rng).unwrap();
    let r = KeyExchange::generate(suite.dh, &mut rng).unwrap();
    let (ni, nr) = ([0xa1u8; 32], [0xb2u8; 32]);
    let ki = IkeSaKeys::from_shared_secret(
        suite,
        i.shared_secret(r.public_value()).unwrap().as_bytes(),
        &ni,
        &nr,
        1,
        2,
    )
    .unwrap();
    let kr = IkeSaKeys::from_shared_secret(
        suite,
        r.shared_secret(i.public_value()).unwrap().as_bytes(),
        &ni,
        &nr,
        1,
        2,
    )
    .unwrap();
    let msg1 = b"IKE_SA_INIT request bytes".to_vec();
    let msg2 = b"IKE_SA_INIT response bytes".to_vec();
    let idi = Identity::fqdn("sun.example").body();
    let idr = Identity::fqdn("moon.example").body();
    let psk = b"shared secret";
    // The initiator signs RealMessage1 | Nr | prf(SK_pi, IDi'); the responder checks it.
    let auth_i = ki.psk_auth(Role::Initiator, psk, &msg1, &nr, &idi);
    assert!(kr
        .verify_psk_auth(Role::Initiator, psk, &msg1, &nr, &idi, &auth_i)
        .is_ok());
    // The responder signs RealMessage2 | Ni | prf(SK_pr, IDr').
    let auth_r = kr.psk_auth(Role::Responder, psk, &msg2, &ni, &idr);
    assert!(ki
        .verify_psk_auth(Role::Responder, psk, &msg2, &ni, &idr, &auth_r)
        .is_ok());
    // A reflected AUTH does not verify for the other role (SK_pi ≠ SK_pr).
    assert!(ki
        .verify_psk_auth(Role::Responder, psk, &msg1, &nr, &idi, &auth_i)
        .is_err());
    // Any change to the signed inputs breaks it.
    assert!(kr
        .verify_psk_auth(Role::Initiator, psk, &msg2, &nr, &idi, &auth_i)
        .is_err());
    assert!(kr
        .verify_psk_auth(Role::Initiator, psk, &msg1, &ni, &idi, &auth_i)
        .is_err());
    assert!(kr
        .verify_psk_auth(Role::Initiator, psk, &msg1, &nr, &idr, &auth_i)
        .is_err());
}

/// Expected hashes computed with Python's hashlib:
/// `sha1(spi_i ‖ spi_r ‖ addr ‖ port.to_bytes(2, 'big')).hexdigest()`.
#[test]
fn nat_detection_known_answers() {
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(
        hex::encode(nat_detection_hash(0x0102_0304_0506_0708, 0, v4, 500)),
        "644b4575455bd6fcc1efe2be8162a9218e448e5f"
    );
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        hex::encode(nat_detection_hash(
            0x0102_0304_0506_0708,
            0x1112_1314_1516_1718,
            v6,
            4500
        )),
        "1ee24423bf8f59515e0265c6d0f08be3d038f7e5"
    );
}

#[test]
fn child_sa_keys_drive_the_esp_engine() {
    use esplab_esp::{InboundSa, OutboundSa};
    let ike = ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap();
    let ikes = [ike];
    let suite = select_ike(&ikes, &offer(&ikes, &[])).unwrap().suite;
    let keys = IkeSaKeys::from_shared_secret(suite, &[5; 32], &[6; 32], &[7; 32], 1, 2).unwrap();
    for s in [
        "aes128gcm16",
        "aes256gcm16",
        "aes128-sha256",
        "aes256-sha256-esn",
    ] {
        let spec = ProposalSpec::parse_esp(s).unwrap();
        let specs = [spec];
        let chosen = select_esp(&specs, &offer(&specs, &0x1000_0001u32.to_be_bytes())).unwrap();
        // Both peers derive the same KEYMAT; the initiator's outbound SA is keyed with the
        // i→r keys and the responder's SPI, and the responder's inbound SA likewise.
        let child = keys
            .child_sa_keys(&chosen.suite, None, &[8; 32], &[9; 32])
            .unwrap();
        let twin = keys
            .child_sa_keys(&chosen.suite, None, &[8; 32], &[9; 32])
            .unwrap();
        let spi_r = 0x2000_0002;
        let tx_params = child
            .sa_params(Direction::InitiatorToResponder, spi_r)
            .unwrap();
        let rx_params = twin
            .sa_params(Direction::InitiatorToResponder, spi_r)
            .unwrap();
        assert_eq!(tx_params.esn, s.ends_with("-esn"));
        let tx = OutboundSa::new(&tx_params).unwrap();
        let mut rx = InboundSa::new(&rx_params).unwrap();
        let payload = b"\x45\x00inner packet";
        let mut buf = vec![0u8; tx.header_len() + payload.len() + tx.max_trailer_len()];
        let start = tx.header_len();
        buf[start..start + payload.len()].copy_from_slice(payload);
        let out = tx
            .encap_slice(&mut buf, start..start + payload.len(), 4, None)
            .unwrap();
        let d = rx.decap(&mut buf[out.esp.clone()]).unwrap();
        assert_eq!(&buf[out.esp][d.payload], payload, "{s}");
        // The other direction's keys do not decrypt it.
        let wrong = twin
            .sa_params(Direction::ResponderToInitiator, spi_r)
            .unwrap();
        let mut rx_wrong = InboundSa::new(&wrong).unwrap();
        let mut buf2 = vec![0u8; tx.header_len() + payload.len() + tx.max_trailer_len()];
        buf2[start..start + payload.len()].copy_from_slice(payload);
        let out = tx
            .encap_slice(&mut buf2, start..start + payload.len(), 4, None)
            .unwrap();
        assert!(rx_wrong.decap(&mut buf2[out.esp]).is_err(), "{s}");
    }
}
