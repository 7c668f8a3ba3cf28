//! ESP transforms: AES-GCM-16 (RFC 4106) and AES-CBC (RFC 3602) + HMAC-SHA-256-128 (RFC 4868).
//!
//! The AEAD sits behind one small trait, [`AeadBackend`], with two implementations: `ring`
//! (the default: fastest on this CPU, see `docs/PERFORMANCE.md`) and RustCrypto `aes-gcm`.
//! Both pass every test vector. Raw key bytes live in [`Zeroizing`] buffers and are wiped on
//! drop; the `aes`/`aes-gcm` key schedules are wiped by their `zeroize` features. ring does
//! not expose its key schedule for wiping (documented limitation, `docs/esp.md`).

use crate::error::{EspError, KeyError};
use aes::cipher::{
    block_padding::NoPadding, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of the GCM ICV (RFC 4106 §6: AES-GCM-16 carries a 16-octet ICV).
pub const GCM_ICV_LEN: usize = 16;
/// Length of the GCM explicit IV on the wire (RFC 4106 §3.1).
pub const GCM_IV_LEN: usize = 8;
/// Length of the GCM salt at the end of the keying material (RFC 4106 §8.1).
pub const GCM_SALT_LEN: usize = 4;
/// AES block size; the CBC IV length (RFC 3602 §2.1).
pub const AES_BLOCK: usize = 16;
/// HMAC-SHA-256-128 ICV length (RFC 4868 §2.3).
pub const HMAC_ICV_LEN: usize = 16;
/// HMAC-SHA-256-128 key length (RFC 4868 §2.1.1: the key is the hash output length).
pub const HMAC_KEY_LEN: usize = 32;

/// An ESP algorithm suite as the CLI and configs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// AES-GCM with a 16-octet ICV, 128-bit key (RFC 4106). IKEv2 ENCR_AES_GCM_16, 128.
    AesGcm128,
    /// AES-GCM with a 16-octet ICV, 256-bit key (RFC 4106).
    AesGcm256,
    /// AES-CBC-128 (RFC 3602) with HMAC-SHA-256-128 (RFC 4868).
    AesCbc128HmacSha256,
    /// AES-CBC-256 (RFC 3602) with HMAC-SHA-256-128 (RFC 4868).
    AesCbc256HmacSha256,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::AesGcm128,
        Algorithm::AesGcm256,
        Algorithm::AesCbc128HmacSha256,
        Algorithm::AesCbc256HmacSha256,
    ];

    /// The CLI/config name.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::AesGcm128 => "aes-gcm-128",
            Algorithm::AesGcm256 => "aes-gcm-256",
            Algorithm::AesCbc128HmacSha256 => "aes-cbc-128-hmac-sha256",
            Algorithm::AesCbc256HmacSha256 => "aes-cbc-256-hmac-sha256",
        }
    }

    /// Parses a CLI/config name (also accepts the strongSwan spellings `aes128gcm16`,
    /// `aes256gcm16`, `aes128-sha256`, `aes256-sha256`).
    pub fn from_name(name: &str) -> Result<Self, KeyError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "aes-gcm-128" | "aes128gcm16" | "aes128gcm128" => Algorithm::AesGcm128,
            "aes-gcm-256" | "aes256gcm16" | "aes256gcm128" => Algorithm::AesGcm256,
            "aes-cbc-128-hmac-sha256" | "aes128-sha256" => Algorithm::AesCbc128HmacSha256,
            "aes-cbc-256-hmac-sha256" | "aes256-sha256" => Algorithm::AesCbc256HmacSha256,
            _ => return Err(KeyError::UnknownAlgorithm(name.to_string())),
        })
    }

    /// True for the combined-mode (AEAD) suites.
    pub const fn is_aead(self) -> bool {
        matches!(self, Algorithm::AesGcm128 | Algorithm::AesGcm256)
    }

    /// Length of the encryption keying material (for GCM: key‖salt, RFC 4106 §8.1).
    pub const fn enc_key_len(self) -> usize {
        match self {
            Algorithm::AesGcm128 => 16 + GCM_SALT_LEN,
            Algorithm::AesGcm256 => 32 + GCM_SALT_LEN,
            Algorithm::AesCbc128HmacSha256 => 16,
            Algorithm::AesCbc256HmacSha256 => 32,
        }
    }

    /// Length of the integrity key (0 for AEAD).
    pub const fn integ_key_len(self) -> usize {
        if self.is_aead() {
            0
        } else {
            HMAC_KEY_LEN
        }
    }

    /// Bytes of IV on the wire.
    pub const fn iv_len(self) -> usize {
        if self.is_aead() {
            GCM_IV_LEN
        } else {
            AES_BLOCK
        }
    }

    /// ICV length.
    pub const fn icv_len(self) -> usize {
        if self.is_aead() {
            GCM_ICV_LEN
        } else {
            HMAC_ICV_LEN
        }
    }

    /// What payload‖padding‖pad-length‖next-header is padded to: the cipher block (16 for
    /// CBC, RFC 3602 §2.4), or 4 for GCM (a stream mode; RFC 4303 §2.4 still requires the
    /// trailer to end on a 4-byte boundary).
    pub const fn pad_align(self) -> usize {
        if self.is_aead() {
            4
        } else {
            AES_BLOCK
        }
    }
}

impl core::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Algorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Algorithm::from_name(s)
    }
}

/// Which AEAD implementation runs AES-GCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// `ring` (BoringSSL assembly). The datapath default: 2-3x faster here.
    #[default]
    Ring,
    /// RustCrypto `aes-gcm` (pure Rust with AES-NI/CLMUL intrinsics).
    RustCrypto,
}

impl Backend {
    /// Both backends, for tests and benchmarks.
    pub const ALL: [Backend; 2] = [Backend::Ring, Backend::RustCrypto];

    /// Name for output.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::RustCrypto => "rustcrypto",
        }
    }
}

/// The one operation pair an ESP AEAD needs: in-place seal/open with a 12-byte nonce and a
/// 16-byte tag stored right after the text (ESP's layout: ciphertext‖ICV).
pub trait AeadBackend: Send + Sync {
    /// Encrypts `text` in place and returns the tag.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], text: &mut [u8]) -> [u8; 16];
    /// Verifies `tag` and decrypts `text` in place. On failure `text` is unspecified.
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch>;
}

/// The AEAD tag did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagMismatch;

struct RingGcm(ring::aead::LessSafeKey);

impl AeadBackend for RingGcm {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], text: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                text,
            )
            // ring only fails when the text exceeds GCM's 64 GiB limit: never for a packet.
            .expect("packet within GCM length limit");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch> {
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                tag,
                text,
                0..,
            )
            .map(|_| ())
            .map_err(|_| TagMismatch)
    }
}

enum RustCryptoGcm {
    Aes128(Box<aes_gcm::Aes128Gcm>),
    Aes256(Box<aes_gcm::Aes256Gcm>),
}

impl AeadBackend for RustCryptoGcm {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], text: &mut [u8]) -> [u8; 16] {
        use aes_gcm::aead::AeadInPlace;
        let n = aes_gcm::Nonce::from_slice(nonce);
        let tag = match self {
            RustCryptoGcm::Aes128(c) => c.encrypt_in_place_detached(n, aad, text),
            RustCryptoGcm::Aes256(c) => c.encrypt_in_place_detached(n, aad, text),
        }
        .expect("packet within GCM length limit");
        tag.into()
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch> {
        use aes_gcm::aead::AeadInPlace;
        let n = aes_gcm::Nonce::from_slice(nonce);
        let t = aes_gcm::Tag::from_slice(tag);
        match self {
            RustCryptoGcm::Aes128(c) => c.decrypt_in_place_detached(n, aad, text, t),
            RustCryptoGcm::Aes256(c) => c.decrypt_in_place_detached(n, aad, text, t),
        }
        .map_err(|_| TagMismatch)
    }
}

enum AesKey {
    Aes128(Box<aes::Aes128>),
    Aes256(Box<aes::Aes256>),
}

impl AesKey {
    fn new(key: &[u8]) -> Self {
        match key.len() {
            16 => AesKey::Aes128(Box::new(aes::Aes128::new(key.into()))),
            _ => AesKey::Aes256(Box::new(aes::Aes256::new(key.into()))),
        }
    }

    fn encrypt_block(&self, block: &mut [u8; 16]) {
        let b = aes::Block::from_mut_slice(block);
        match self {
            AesKey::Aes128(k) => k.encrypt_block(b),
            AesKey::Aes256(k) => k.encrypt_block(b),
        }
    }

    /// CBC-encrypts whole blocks in place (the caller padded to the block, RFC 3602 §2.4;
    /// `NoPadding` only tells the `cbc` crate not to add its own PKCS#7 padding).
    fn cbc_encrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        debug_assert!(data.len().is_multiple_of(AES_BLOCK));
        let len = data.len();
        let r = match self {
            AesKey::Aes128(k) => {
                cbc::Encryptor::<aes::Aes128>::inner_iv_init((**k).clone(), iv.into())
                    .encrypt_padded_mut::<NoPadding>(data, len)
                    .map(|_| ())
            }
            AesKey::Aes256(k) => {
                cbc::Encryptor::<aes::Aes256>::inner_iv_init((**k).clone(), iv.into())
                    .encrypt_padded_mut::<NoPadding>(data, len)
                    .map(|_| ())
            }
        };
        debug_assert!(r.is_ok());
    }

    /// CBC-decrypts whole blocks in place.
    fn cbc_decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        debug_assert!(data.len().is_multiple_of(AES_BLOCK));
        let r = match self {
            AesKey::Aes128(k) => {
                cbc::Decryptor::<aes::Aes128>::inner_iv_init((**k).clone(), iv.into())
                    .decrypt_padded_mut::<NoPadding>(data)
                    .map(|_| ())
            }
            AesKey::Aes256(k) => {
                cbc::Decryptor::<aes::Aes256>::inner_iv_init((**k).clone(), iv.into())
                    .decrypt_padded_mut::<NoPadding>(data)
                    .map(|_| ())
            }
        };
        debug_assert!(r.is_ok());
    }
}

enum Kind {
    Gcm {
        aead: Box<dyn AeadBackend>,
        salt: [u8; 4],
    },
    Cbc {
        aes: AesKey,
        /// Keyed HMAC state (ipad/opad already absorbed); cloned per packet so the key
        /// schedule is not recomputed. `None` only for the RFC 3602 encryption-only vectors.
        mac: Option<Hmac<Sha256>>,
    },
}

/// Keyed transform of one SA: encrypt/decrypt and ICV, no sequence or replay state.
pub struct Cipher {
    alg: Algorithm,
    backend: Backend,
    kind: Kind,
    /// The raw keying material, kept for display in debug tools only and wiped on drop.
    _enc_key: Zeroizing<Vec<u8>>,
    _integ_key: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print keys.
        f.debug_struct("Cipher")
            .field("alg", &self.alg)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Cipher {
    /// Keys a transform. For GCM `enc_key` is key‖salt (RFC 4106 §8.1) and `integ_key` must be
    /// empty; for CBC `integ_key` is the 32-byte HMAC-SHA-256 key.
    pub fn new(
        alg: Algorithm,
        backend: Backend,
        enc_key: &[u8],
        integ_key: &[u8],
    ) -> Result<Self, KeyError> {
        if enc_key.len() != alg.enc_key_len() {
            return Err(KeyError::EncKeyLength {
                alg: alg.name(),
                expected: alg.enc_key_len(),
                got: enc_key.len(),
            });
        }
        let kind = if alg.is_aead() {
            if !integ_key.is_empty() {
                return Err(KeyError::UnexpectedIntegKey(alg.name()));
            }
            let (key, salt) = enc_key.split_at(enc_key.len() - GCM_SALT_LEN);
            let aead: Box<dyn AeadBackend> = match backend {
                Backend::Ring => {
                    let algo = if key.len() == 16 {
                        &ring::aead::AES_128_GCM
                    } else {
                        &ring::aead::AES_256_GCM
                    };
                    let unbound =
                        ring::aead::UnboundKey::new(algo, key).expect("key length checked above");
                    Box::new(RingGcm(ring::aead::LessSafeKey::new(unbound)))
                }
                Backend::RustCrypto => {
                    use aes_gcm::KeyInit as _;
                    Box::new(if key.len() == 16 {
                        RustCryptoGcm::Aes128(Box::new(
                            aes_gcm::Aes128Gcm::new_from_slice(key).expect("length checked"),
                        ))
                    } else {
                        RustCryptoGcm::Aes256(Box::new(
                            aes_gcm::Aes256Gcm::new_from_slice(key).expect("length checked"),
                        ))
                    })
                }
            };
            let mut s = [0u8; 4];
            s.copy_from_slice(salt);
            Kind::Gcm { aead, salt: s }
        } else {
            if integ_key.is_empty() {
                return Err(KeyError::MissingIntegKey(alg.name()));
            }
            if integ_key.len() != HMAC_KEY_LEN {
                return Err(KeyError::IntegKeyLength {
                    alg: alg.name(),
                    expected: HMAC_KEY_LEN,
                    got: integ_key.len(),
                });
            }
            Kind::Cbc {
                aes: AesKey::new(enc_key),
                mac: Some(
                    <Hmac<Sha256> as Mac>::new_from_slice(integ_key).expect("HMAC takes any key"),
                ),
            }
        };
        Ok(Self {
            alg,
            backend,
            kind,
            _enc_key: Zeroizing::new(enc_key.to_vec()),
            _integ_key: Zeroizing::new(integ_key.to_vec()),
        })
    }

    /// AES-CBC without integrity protection (RFC 4303 §3.2 "confidentiality-only"), only for
    /// the RFC 3602 §4 ESP test vectors, which carry no ICV. Not reachable from configs.
    pub fn cbc_encryption_only(enc_key: &[u8]) -> Result<Self, KeyError> {
        let alg = match enc_key.len() {
            16 => Algorithm::AesCbc128HmacSha256,
            32 => Algorithm::AesCbc256HmacSha256,
            got => {
                return Err(KeyError::EncKeyLength {
                    alg: "aes-cbc",
                    expected: 16,
                    got,
                })
            }
        };
        Ok(Self {
            alg,
            backend: Backend::Ring,
            kind: Kind::Cbc {
                aes: AesKey::new(enc_key),
                mac: None,
            },
            _enc_key: Zeroizing::new(enc_key.to_vec()),
            _integ_key: Zeroizing::new(Vec::new()),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The AEAD backend (meaningful for GCM only).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// IV bytes on the wire.
    pub fn iv_len(&self) -> usize {
        self.alg.iv_len()
    }

    /// ICV bytes on the wire (0 for the encryption-only test mode).
    pub fn icv_len(&self) -> usize {
        match &self.kind {
            Kind::Cbc { mac: None, .. } => 0,
            _ => self.alg.icv_len(),
        }
    }

    /// Padding alignment of the encrypted part.
    pub fn pad_align(&self) -> usize {
        self.alg.pad_align()
    }

    /// The default IV for sequence number `seq`, written into `iv` (`iv_len` bytes).
    ///
    /// GCM: the 64-bit sequence number, which is unique per key as RFC 4106 §3.1 requires
    /// (and never repeats because the outbound counter never wraps, RFC 4303 §3.3.3).
    /// CBC: RFC 3602 §2.3 wants an unpredictable IV; NIST SP 800-38A Appendix C gives a
    /// deterministic way: encrypt a nonce (here the sequence number) under the same key.
    pub fn default_iv(&self, seq: u64, iv: &mut [u8]) {
        match &self.kind {
            Kind::Gcm { .. } => iv.copy_from_slice(&seq.to_be_bytes()),
            Kind::Cbc { aes, .. } => {
                let mut block = [0u8; 16];
                block[8..].copy_from_slice(&seq.to_be_bytes());
                // A domain byte keeps the IV input apart from any first ciphertext block input.
                block[0] = 0x49;
                aes.encrypt_block(&mut block);
                iv.copy_from_slice(&block);
            }
        }
    }

    /// Encrypts and authenticates the ESP packet `esp` = SPI‖seq‖IV‖text‖ICV in place: `text`
    /// (payload‖padding‖pad length‖next header) is encrypted and the ICV field filled in.
    /// `seq_hi` is `Some` with ESN (RFC 4303 §2.2.1). The IV must already be in place.
    pub(crate) fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        let iv_len = self.iv_len();
        let icv_len = self.icv_len();
        let text_end = esp.len() - icv_len;
        match &self.kind {
            Kind::Gcm { aead, salt } => {
                let (nonce, aad, aad_len) = gcm_nonce_aad(esp, salt, seq_hi);
                let (head, rest) = esp.split_at_mut(8 + iv_len);
                let _ = head;
                let (text, icv) = rest.split_at_mut(text_end - 8 - iv_len);
                let tag = aead.seal(&nonce, &aad[..aad_len], text);
                icv.copy_from_slice(&tag);
            }
            Kind::Cbc { aes, mac } => {
                let mut iv = [0u8; 16];
                iv.copy_from_slice(&esp[8..24]);
                aes.cbc_encrypt(&iv, &mut esp[24..text_end]);
                if let Some(mac) = mac {
                    let tag = hmac_icv(mac, &esp[..text_end], seq_hi);
                    esp[text_end..].copy_from_slice(&tag);
                }
            }
        }
    }

    /// Verifies the ICV of `esp` (SPI‖seq‖IV‖ciphertext‖ICV) and decrypts the ciphertext in
    /// place. The ICV is checked before anything is decrypted (RFC 4303 §3.4.4); HMAC tags are
    /// compared in constant time.
    pub(crate) fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> Result<(), EspError> {
        let iv_len = self.iv_len();
        let icv_len = self.icv_len();
        let text_end = esp.len() - icv_len;
        match &self.kind {
            Kind::Gcm { aead, salt } => {
                let (nonce, aad, aad_len) = gcm_nonce_aad(esp, salt, seq_hi);
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&esp[text_end..]);
                aead.open(
                    &nonce,
                    &aad[..aad_len],
                    &mut esp[8 + iv_len..text_end],
                    &tag,
                )
                .map_err(|TagMismatch| EspError::IcvMismatch)
            }
            Kind::Cbc { aes, mac } => {
                let ct_len = text_end - 8 - iv_len;
                if ct_len == 0 || !ct_len.is_multiple_of(AES_BLOCK) {
                    return Err(EspError::BadBlockLength {
                        len: ct_len,
                        block: AES_BLOCK,
                    });
                }
                if let Some(mac) = mac {
                    let tag = hmac_icv(mac, &esp[..text_end], seq_hi);
                    if !bool::from(tag.ct_eq(&esp[text_end..])) {
                        return Err(EspError::IcvMismatch);
                    }
                }
                let mut iv = [0u8; 16];
                iv.copy_from_slice(&esp[8..24]);
                aes.cbc_decrypt(&iv, &mut esp[24..text_end]);
                Ok(())
            }
        }
    }
}

/// RFC 4106 §4: nonce = salt‖explicit IV. §5: AAD = SPI‖seq (8 bytes), or with ESN
/// SPI‖seq-high‖seq-low (12 bytes).
fn gcm_nonce_aad(esp: &[u8], salt: &[u8; 4], seq_hi: Option<u32>) -> ([u8; 12], [u8; 12], usize) {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(salt);
    nonce[4..].copy_from_slice(&esp[8..16]);
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&esp[..4]);
    let len = match seq_hi {
        Some(hi) => {
            aad[4..8].copy_from_slice(&hi.to_be_bytes());
            aad[8..12].copy_from_slice(&esp[4..8]);
            12
        }
        None => {
            aad[4..8].copy_from_slice(&esp[4..8]);
            8
        }
    };
    (nonce, aad, len)
}

/// RFC 4868 §2.3 / RFC 4303 §2.2.1: HMAC-SHA-256 over SPI‖seq‖IV‖ciphertext, with the ESN
/// high half appended (not transmitted), truncated to 128 bits.
fn hmac_icv(mac: &Hmac<Sha256>, covered: &[u8], seq_hi: Option<u32>) -> [u8; 16] {
    let mut m = mac.clone();
    m.update(covered);
    if let Some(hi) = seq_hi {
        m.update(&hi.to_be_bytes());
    }
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Raw AES-CBC (no ESP framing), for the RFC 3602 §4 vectors and tools.
pub fn aes_cbc_encrypt(key: &[u8], iv: &[u8; 16], data: &mut [u8]) -> Result<(), KeyError> {
    check_aes_key(key)?;
    if !data.len().is_multiple_of(AES_BLOCK) {
        return Err(KeyError::IvLength {
            expected: AES_BLOCK,
            got: data.len() % AES_BLOCK,
        });
    }
    AesKey::new(key).cbc_encrypt(iv, data);
    Ok(())
}

/// Raw AES-CBC decryption, see [`aes_cbc_encrypt`].
pub fn aes_cbc_decrypt(key: &[u8], iv: &[u8; 16], data: &mut [u8]) -> Result<(), KeyError> {
    check_aes_key(key)?;
    if !data.len().is_multiple_of(AES_BLOCK) {
        return Err(KeyError::IvLength {
            expected: AES_BLOCK,
            got: data.len() % AES_BLOCK,
        });
    }
    AesKey::new(key).cbc_decrypt(iv, data);
    Ok(())
}

fn check_aes_key(key: &[u8]) -> Result<(), KeyError> {
    if key.len() == 16 || key.len() == 32 {
        Ok(())
    } else {
        Err(KeyError::EncKeyLength {
            alg: "aes-cbc",
            expected: 16,
            got: key.len(),
        })
    }
}

/// HMAC-SHA-256 of `data` (full 32 bytes), for the RFC 4231/4868 vectors.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().into()
}
