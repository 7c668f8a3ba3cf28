//! The algorithms this crate implements, their IKEv2 Transform IDs (RFC 7296 §3.3.2 and
//! the IANA registry) and the negotiated suites.

use crate::codes::{registry, ProtocolId};
use crate::sa::{Proposal, Transform, TransformType};

/// Transform IDs for Transform Type 1, ENCR.
pub mod encr_id {
    /// ENCR_AES_CBC (RFC 3602), needs Key Length.
    pub const AES_CBC: u16 = 12;
    /// ENCR_AES_GCM_16 (RFC 4106 / RFC 5282), needs Key Length.
    pub const AES_GCM_16: u16 = 20;
}

/// Transform IDs for Transform Type 2, PRF.
pub mod prf_id {
    /// PRF_HMAC_SHA1 (RFC 2104).
    pub const HMAC_SHA1: u16 = 2;
    /// PRF_HMAC_SHA2_256 (RFC 4868).
    pub const HMAC_SHA2_256: u16 = 5;
    /// PRF_HMAC_SHA2_384 (RFC 4868).
    pub const HMAC_SHA2_384: u16 = 6;
    /// PRF_HMAC_SHA2_512 (RFC 4868).
    pub const HMAC_SHA2_512: u16 = 7;
}

/// Transform IDs for Transform Type 3, INTEG.
pub mod integ_id {
    /// NONE (for AEAD ciphers).
    pub const NONE: u16 = 0;
    /// AUTH_HMAC_SHA2_256_128 (RFC 4868).
    pub const HMAC_SHA2_256_128: u16 = 12;
}

/// Transform IDs for Transform Type 5, ESN.
pub mod esn_id {
    /// No Extended Sequence Numbers.
    pub const NO: u16 = 0;
    /// Extended Sequence Numbers.
    pub const YES: u16 = 1;
}

registry! {
    /// Diffie-Hellman group / Transform Type 4 ID (RFC 7296 §3.3.2, IANA). Only
    /// [`DhGroup::CURVE25519`] is implemented ([`DhGroup::is_supported`]).
    DhGroup(u16) {
        /// NONE (no PFS).
        NONE = 0,
        /// 1024-bit MODP (RFC 7296 App. B.2).
        MODP_1024 = 2,
        /// 2048-bit MODP (RFC 3526).
        MODP_2048 = 14,
        /// 3072-bit MODP (RFC 3526).
        MODP_3072 = 15,
        /// 256-bit random ECP (RFC 5903).
        ECP_256 = 19,
        /// 384-bit random ECP (RFC 5903).
        ECP_384 = 20,
        /// Curve25519 / X25519 (RFC 8031).
        CURVE25519 = 31,
        /// Curve448 / X448 (RFC 8031).
        CURVE448 = 32,
    }
}

impl DhGroup {
    /// True for the groups [`crate::crypto::KeyExchange`] implements.
    pub const fn is_supported(self) -> bool {
        matches!(self, DhGroup::CURVE25519)
    }

    /// Key Exchange Data length for a supported group.
    pub const fn public_len(self) -> Option<usize> {
        match self {
            DhGroup::CURVE25519 => Some(32),
            _ => None,
        }
    }
}

/// An encryption algorithm with its key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encr {
    /// ENCR_AES_CBC, 128-bit key.
    AesCbc128,
    /// ENCR_AES_CBC, 256-bit key.
    AesCbc256,
    /// ENCR_AES_GCM_16 (16-octet ICV), 128-bit key.
    AesGcm128,
    /// ENCR_AES_GCM_16 (16-octet ICV), 256-bit key.
    AesGcm256,
}

/// Salt length for AES-GCM keying material (RFC 5282 §7.1, RFC 4106 §8.1).
pub const GCM_SALT_LEN: usize = 4;

impl Encr {
    /// Every implemented encryption algorithm.
    pub const ALL: [Encr; 4] = [
        Encr::AesCbc128,
        Encr::AesCbc256,
        Encr::AesGcm128,
        Encr::AesGcm256,
    ];

    /// Transform ID.
    pub const fn id(self) -> u16 {
        match self {
            Encr::AesCbc128 | Encr::AesCbc256 => encr_id::AES_CBC,
            Encr::AesGcm128 | Encr::AesGcm256 => encr_id::AES_GCM_16,
        }
    }

    /// Key Length attribute value in bits.
    pub const fn key_bits(self) -> u16 {
        match self {
            Encr::AesCbc128 | Encr::AesGcm128 => 128,
            Encr::AesCbc256 | Encr::AesGcm256 => 256,
        }
    }

    /// True for combined-mode (AEAD) ciphers (RFC 5282).
    pub const fn is_aead(self) -> bool {
        matches!(self, Encr::AesGcm128 | Encr::AesGcm256)
    }

    /// Bytes of keying material taken for this cipher: the AES key, plus the 4-octet salt
    /// for GCM (RFC 5282 §7.1: KEYMAT = key ‖ salt).
    pub const fn keymat_len(self) -> usize {
        let key = self.key_bits() as usize / 8;
        if self.is_aead() {
            key + GCM_SALT_LEN
        } else {
            key
        }
    }

    /// IV length in the Encrypted payload: the block size for CBC (RFC 7296 §3.14), 8 for
    /// GCM (RFC 5282 §3.1).
    pub const fn iv_len(self) -> usize {
        if self.is_aead() {
            8
        } else {
            16
        }
    }

    /// The transform, with its mandatory Key Length attribute (§3.3.5).
    pub fn transform(self) -> Transform {
        Transform::with_key_length(TransformType::ENCR, self.id(), self.key_bits())
    }

    /// The algorithm a transform names, if implemented and if every attribute is
    /// understood (§3.3.6). AES needs the Key Length attribute.
    pub fn from_transform(t: &Transform) -> Option<Encr> {
        if t.transform_type != TransformType::ENCR || !t.attributes_understood() {
            return None;
        }
        Encr::ALL
            .into_iter()
            .find(|e| e.id() == t.transform_id && Some(e.key_bits()) == t.key_length())
    }
}

/// A pseudorandom function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA1 (kept for the SP 800-135 vectors and old peers).
    HmacSha1,
    /// PRF_HMAC_SHA2_256.
    HmacSha256,
    /// PRF_HMAC_SHA2_384.
    HmacSha384,
    /// PRF_HMAC_SHA2_512.
    HmacSha512,
}

impl Prf {
    /// Every implemented PRF.
    pub const ALL: [Prf; 4] = [
        Prf::HmacSha1,
        Prf::HmacSha256,
        Prf::HmacSha384,
        Prf::HmacSha512,
    ];

    /// Transform ID.
    pub const fn id(self) -> u16 {
        match self {
            Prf::HmacSha1 => prf_id::HMAC_SHA1,
            Prf::HmacSha256 => prf_id::HMAC_SHA2_256,
            Prf::HmacSha384 => prf_id::HMAC_SHA2_384,
            Prf::HmacSha512 => prf_id::HMAC_SHA2_512,
        }
    }

    /// Output length, which for HMAC is also the preferred key length used for SK_d,
    /// SK_pi and SK_pr (RFC 7296 §2.14; RFC 4868 §2.1.2).
    pub const fn output_len(self) -> usize {
        match self {
            Prf::HmacSha1 => 20,
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// The transform.
    pub fn transform(self) -> Transform {
        Transform::new(TransformType::PRF, self.id())
    }

    /// The PRF a transform names, if implemented.
    pub fn from_transform(t: &Transform) -> Option<Prf> {
        if t.transform_type != TransformType::PRF || !t.attributes.is_empty() {
            return None;
        }
        Prf::ALL.into_iter().find(|p| p.id() == t.transform_id)
    }
}

/// An integrity algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integ {
    /// AUTH_HMAC_SHA2_256_128: HMAC-SHA-256 truncated to 128 bits, 32-octet key (RFC 4868).
    HmacSha256_128,
}

impl Integ {
    /// Transform ID.
    pub const fn id(self) -> u16 {
        match self {
            Integ::HmacSha256_128 => integ_id::HMAC_SHA2_256_128,
        }
    }

    /// Key length (RFC 4868 §2.1.1: the hash output length).
    pub const fn key_len(self) -> usize {
        32
    }

    /// ICV length (RFC 4868 §2.3).
    pub const fn icv_len(self) -> usize {
        16
    }

    /// The transform.
    pub fn transform(self) -> Transform {
        Transform::new(TransformType::INTEG, self.id())
    }

    /// The algorithm a transform names, if implemented.
    pub fn from_transform(t: &Transform) -> Option<Integ> {
        (t.transform_type == TransformType::INTEG
            && t.attributes.is_empty()
            && t.transform_id == integ_id::HMAC_SHA2_256_128)
            .then_some(Integ::HmacSha256_128)
    }
}

/// The algorithms of an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption of the SK payload.
    pub encr: Encr,
    /// Integrity of the SK payload; `None` exactly when `encr` is AEAD (RFC 5282 §8).
    pub integ: Option<Integ>,
    /// The PRF for key derivation and AUTH.
    pub prf: Prf,
    /// The Diffie-Hellman group.
    pub dh: DhGroup,
}

/// The algorithms of an ESP Child SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspSuite {
    /// Encryption.
    pub encr: Encr,
    /// Integrity; `None` exactly when `encr` is AEAD.
    pub integ: Option<Integ>,
    /// Extended Sequence Numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    /// The PFS group of a CREATE_CHILD_SA exchange, if any.
    pub dh: Option<DhGroup>,
}

impl IkeSuite {
    /// SK_ai / SK_ar length (0 for AEAD: RFC 5282 §7 — no integrity keys).
    pub fn integ_key_len(&self) -> usize {
        self.integ.map_or(0, Integ::key_len)
    }

    /// The single proposal that says this suite (a responder's reply, §2.7). Transform
    /// order is ENCR, INTEG, PRF, DH, as strongSwan sends them.
    pub fn to_proposal(&self, number: u8, spi: &[u8]) -> Proposal {
        let mut transforms = vec![self.encr.transform()];
        transforms.extend(self.integ.map(Integ::transform));
        transforms.push(self.prf.transform());
        transforms.push(Transform::new(TransformType::DH, self.dh.0));
        Proposal {
            number,
            protocol_id: ProtocolId::IKE,
            spi: spi.to_vec(),
            transforms,
        }
    }
}

impl EspSuite {
    /// Integrity key length (0 for AEAD).
    pub fn integ_key_len(&self) -> usize {
        self.integ.map_or(0, Integ::key_len)
    }

    /// The single proposal that says this suite; ESN is always present (mandatory for ESP,
    /// RFC 7296 §3.3.3).
    pub fn to_proposal(&self, number: u8, spi: u32) -> Proposal {
        let mut transforms = vec![self.encr.transform()];
        transforms.extend(self.integ.map(Integ::transform));
        if let Some(dh) = self.dh {
            transforms.push(Transform::new(TransformType::DH, dh.0));
        }
        transforms.push(Transform::new(
            TransformType::ESN,
            if self.esn { esn_id::YES } else { esn_id::NO },
        ));
        Proposal {
            number,
            protocol_id: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }

    /// The matching `esplab-esp` algorithm: ESP with these keys is exactly what the
    /// datapath engine runs.
    pub fn esp_algorithm(&self) -> Option<esplab_esp::Algorithm> {
        use esplab_esp::Algorithm as A;
        match (self.encr, self.integ) {
            (Encr::AesGcm128, None) => Some(A::AesGcm128),
            (Encr::AesGcm256, None) => Some(A::AesGcm256),
            (Encr::AesCbc128, Some(Integ::HmacSha256_128)) => Some(A::AesCbc128HmacSha256),
            (Encr::AesCbc256, Some(Integ::HmacSha256_128)) => Some(A::AesCbc256HmacSha256),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_round_trips() {
        for e in Encr::ALL {
            assert_eq!(Encr::from_transform(&e.transform()), Some(e));
        }
        for p in Prf::ALL {
            assert_eq!(Prf::from_transform(&p.transform()), Some(p));
        }
        let i = Integ::HmacSha256_128;
        assert_eq!(Integ::from_transform(&i.transform()), Some(i));
        // AES without a Key Length attribute is not something we can use.
        let bare = Transform::new(TransformType::ENCR, encr_id::AES_CBC);
        assert_eq!(Encr::from_transform(&bare), None);
        // AES-192 is not implemented.
        let t = Transform::with_key_length(TransformType::ENCR, encr_id::AES_GCM_16, 192);
        assert_eq!(Encr::from_transform(&t), None);
    }

    #[test]
    fn key_lengths() {
        assert_eq!(Encr::AesGcm128.keymat_len(), 20);
        assert_eq!(Encr::AesGcm256.keymat_len(), 36);
        assert_eq!(Encr::AesCbc256.keymat_len(), 32);
        assert_eq!(Encr::AesGcm128.iv_len(), 8);
        assert_eq!(Encr::AesCbc128.iv_len(), 16);
        let esp = EspSuite {
            encr: Encr::AesGcm128,
            integ: None,
            esn: false,
            dh: None,
        };
        let alg = esp.esp_algorithm().unwrap();
        // The ESP engine wants exactly the KEYMAT slice this crate derives.
        assert_eq!(alg.enc_key_len(), esp.encr.keymat_len());
        assert_eq!(alg.integ_key_len(), esp.integ_key_len());
        let cbc = EspSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha256_128),
            esn: true,
            dh: None,
        };
        let alg = cbc.esp_algorithm().unwrap();
        assert_eq!(alg.enc_key_len(), cbc.encr.keymat_len());
        assert_eq!(alg.integ_key_len(), cbc.integ_key_len());
    }
}
