//! Shared-key AUTH (RFC 7296 §2.15, Auth Method 2).

use crate::error::CryptoError;
use crate::transform::Prf;
use subtle::ConstantTimeEq;

/// The 17 ASCII octets of the key pad, without terminator (RFC 7296 §2.15).
pub const KEY_PAD: &[u8; 17] = b"Key Pad for IKEv2";

/// The octets the signer vouches for (RFC 7296 §2.15):
/// InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload), and
/// the responder's mirror RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload).
///
/// `real_message` is the signer's first message (its IKE_SA_INIT request or response) byte
/// for byte as sent; `peer_nonce` is the *other* side's Nonce Data; `sk_p` is the signer's
/// SK_pi/SK_pr; `id_body` is the signer's ID payload from the ID Type octet to the end.
pub fn signed_octets(
    prf: Prf,
    sk_p: &[u8],
    real_message: &[u8],
    peer_nonce: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.compute(sk_p, &[id_body]);
    let mut out = Vec::with_capacity(real_message.len() + peer_nonce.len() + maced_id.len());
    out.extend_from_slice(real_message);
    out.extend_from_slice(peer_nonce);
    out.extend_from_slice(maced_id.as_bytes());
    out
}

/// AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), `<SignedOctets>`) (RFC 7296 §2.15).
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Vec<u8> {
    let pad_key = prf.compute(psk, &[KEY_PAD]);
    prf.compute(pad_key.as_bytes(), &[signed_octets])
        .as_bytes()
        .to_vec()
}

/// Compares a received AUTH with the expected one in constant time.
pub fn verify_psk_auth(
    prf: Prf,
    psk: &[u8],
    signed_octets: &[u8],
    received: &[u8],
) -> Result<(), CryptoError> {
    let expected = psk_auth(prf, psk, signed_octets);
    // ct_eq on slices of different lengths is false without looking at the contents.
    if bool::from(expected.as_slice().ct_eq(received)) {
        Ok(())
    } else {
        Err(CryptoError::AuthenticationFailed)
    }
}
