//! Diffie-Hellman for the KE payload: X25519 (RFC 7748, used in IKEv2 per RFC 8031).

use super::SecretBytes;
use crate::error::CryptoError;
use crate::payload::KePayload;
use crate::transform::DhGroup;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

/// The raw X25519 function of RFC 7748 §5: clamps the scalar and masks the top bit of
/// the u-coordinate (RFC 8031 §3.2 requires the masking on receipt).
pub fn x25519(scalar: [u8; 32], u: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(scalar, u)
}

/// Our half of one Diffie-Hellman exchange. The private value is zeroized on drop and
/// never printed. Cloning copies the private value (the exchange layer snapshots whole
/// endpoints in tests and simulations).
#[derive(Clone)]
pub struct KeyExchange {
    group: DhGroup,
    secret: StaticSecret,
    public: PublicKey,
}

impl core::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .field("public", &self.public.as_bytes())
            .finish_non_exhaustive()
    }
}

impl KeyExchange {
    /// A fresh key pair for `group`.
    pub fn generate<R: RngCore + CryptoRng>(
        group: DhGroup,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        match group {
            DhGroup::CURVE25519 => Ok(Self::from_x25519_secret(StaticSecret::random_from_rng(rng))),
            other => Err(CryptoError::UnsupportedGroup(other.0)),
        }
    }

    /// An X25519 key pair from a known private scalar (test vectors, reproducible runs).
    pub fn x25519_from_private(private: [u8; 32]) -> Self {
        Self::from_x25519_secret(StaticSecret::from(private))
    }

    fn from_x25519_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        KeyExchange {
            group: DhGroup::CURVE25519,
            secret,
            public,
        }
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value: the Key Exchange Data (RFC 8031 §3.1: the 32-octet u-coordinate).
    pub fn public_value(&self) -> &[u8] {
        self.public.as_bytes()
    }

    /// Our KE payload.
    pub fn ke_payload(&self) -> KePayload {
        KePayload {
            group: self.group,
            data: self.public_value().to_vec(),
        }
    }

    /// g^ir from the peer's KE payload: checks the group (RFC 7296 §1.2: a different
    /// group is answered with INVALID_KE_PAYLOAD) and the data.
    pub fn shared_secret_with(&self, peer: &KePayload) -> Result<SecretBytes, CryptoError> {
        if peer.group != self.group {
            return Err(CryptoError::GroupMismatch {
                expected: self.group.0,
                got: peer.group.0,
            });
        }
        self.shared_secret(&peer.data)
    }

    /// g^ir from the peer's Key Exchange Data.
    ///
    /// RFC 8031 §3.1 fixes the length at 32 octets. The result is refused when it is all
    /// zeros, which happens exactly when the peer sent a low-order point: RFC 7748 §6.1
    /// describes the check, and since RFC 8031 §2 uses the X25519 output directly as g^ir
    /// (§2.14 of RFC 7296), a peer must not be able to force it to a known value.
    pub fn shared_secret(&self, peer: &[u8]) -> Result<SecretBytes, CryptoError> {
        let raw: [u8; 32] = peer
            .try_into()
            .map_err(|_| CryptoError::KeyExchangeLength {
                group: self.group.0,
                expected: 32,
                got: peer.len(),
            })?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(raw));
        if bool::from(shared.as_bytes().ct_eq(&[0u8; 32])) {
            return Err(CryptoError::ZeroSharedSecret);
        }
        Ok(SecretBytes::from_slice(shared.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree() {
        let mut rng = rand::thread_rng();
        let a = KeyExchange::generate(DhGroup::CURVE25519, &mut rng).unwrap();
        let b = KeyExchange::generate(DhGroup::CURVE25519, &mut rng).unwrap();
        let ab = a.shared_secret_with(&b.ke_payload()).unwrap();
        let ba = b.shared_secret_with(&a.ke_payload()).unwrap();
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert!(!format!("{a:?}").contains("secret:"));
    }

    #[test]
    fn rejects_bad_peers() {
        let a = KeyExchange::x25519_from_private([7; 32]);
        assert!(matches!(
            a.shared_secret(&[1; 31]),
            Err(CryptoError::KeyExchangeLength { got: 31, .. })
        ));
        // u = 0 and u = 1 are low-order points: the result is all zeros.
        assert_eq!(
            a.shared_secret(&[0; 32]).unwrap_err(),
            CryptoError::ZeroSharedSecret
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            a.shared_secret(&one).unwrap_err(),
            CryptoError::ZeroSharedSecret
        );
        let wrong = KePayload {
            group: DhGroup::MODP_2048,
            data: vec![0; 256],
        };
        assert!(matches!(
            a.shared_secret_with(&wrong),
            Err(CryptoError::GroupMismatch {
                expected: 31,
                got: 14
            })
        ));
        assert_eq!(
            KeyExchange::generate(DhGroup::ECP_256, &mut rand::thread_rng()).unwrap_err(),
            CryptoError::UnsupportedGroup(19)
        );
    }
}
