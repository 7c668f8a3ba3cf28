//! The negotiated pseudorandom function and prf+ (RFC 7296 §2.13).

use super::SecretBytes;
use crate::error::CryptoError;
use crate::transform::Prf;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};

fn hmac_parts<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> SecretBytes {
    // HMAC takes keys of any length (RFC 2104 §2: longer ones are hashed first), so
    // construction cannot fail.
    let mut m = <M as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    SecretBytes::from_slice(&m.finalize().into_bytes())
}

impl Prf {
    /// prf(key, data₁ | data₂ | …): the parts are MACed as one concatenated string.
    pub fn compute(self, key: &[u8], parts: &[&[u8]]) -> SecretBytes {
        match self {
            Prf::HmacSha1 => hmac_parts::<Hmac<sha1::Sha1>>(key, parts),
            Prf::HmacSha256 => hmac_parts::<Hmac<sha2::Sha256>>(key, parts),
            Prf::HmacSha384 => hmac_parts::<Hmac<sha2::Sha384>>(key, parts),
            Prf::HmacSha512 => hmac_parts::<Hmac<sha2::Sha512>>(key, parts),
        }
    }

    /// The most prf+ can produce: 255 blocks (§2.13: the counter is one octet and the
    /// construction is undefined past 255).
    pub const fn prf_plus_max(self) -> usize {
        255 * self.output_len()
    }

    /// prf+(key, seed) truncated to `len` bytes (RFC 7296 §2.13):
    /// T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), output T1 | T2 | ….
    pub fn prf_plus(
        self,
        key: &[u8],
        seed: &[&[u8]],
        len: usize,
    ) -> Result<SecretBytes, CryptoError> {
        if len > self.prf_plus_max() {
            return Err(CryptoError::PrfPlusTooLong {
                requested: len,
                max: self.prf_plus_max(),
            });
        }
        let mut out = SecretBytes::default();
        let mut t = SecretBytes::default();
        let mut n: u8 = 1;
        while out.len() < len {
            let counter = [n];
            let mut parts: Vec<&[u8]> = Vec::with_capacity(seed.len() + 2);
            parts.push(t.as_bytes());
            parts.extend_from_slice(seed);
            parts.push(&counter);
            let next = self.compute(key, &parts);
            out.extend_from_slice(next.as_bytes());
            t = next;
            n = n.wrapping_add(1);
        }
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2_through_parts() {
        // RFC 4231 §4.3 test case 2: key "Jefe", data "what do ya want for nothing?".
        let out = Prf::HmacSha256.compute(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            out.as_bytes(),
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
                0x64, 0xec, 0x38, 0x43
            ]
        );
    }

    #[test]
    fn prf_plus_structure() {
        let k = b"key";
        let s: &[&[u8]] = &[b"seed"];
        let out = Prf::HmacSha256.prf_plus(k, s, 70).unwrap();
        let t1 = Prf::HmacSha256.compute(k, &[b"seed", &[1]]);
        let t2 = Prf::HmacSha256.compute(k, &[t1.as_bytes(), b"seed", &[2]]);
        let t3 = Prf::HmacSha256.compute(k, &[t2.as_bytes(), b"seed", &[3]]);
        assert_eq!(&out.as_bytes()[..32], t1.as_bytes());
        assert_eq!(&out.as_bytes()[32..64], t2.as_bytes());
        assert_eq!(&out.as_bytes()[64..], &t3.as_bytes()[..6]);
        assert_eq!(Prf::HmacSha256.prf_plus(k, s, 0).unwrap().len(), 0);
        assert!(Prf::HmacSha256.prf_plus(k, s, 255 * 32).is_ok());
        assert!(matches!(
            Prf::HmacSha256.prf_plus(k, s, 255 * 32 + 1),
            Err(CryptoError::PrfPlusTooLong { .. })
        ));
    }
}
