//! Protection of the Encrypted payload "SK" (RFC 7296 §3.14; AES-GCM per RFC 5282).
//!
//! ```text
//! IKE header | [unencrypted payloads] | SK header | IV | ciphertext | ICV
//!                                                      \_ E(payloads | padding | pad length)
//! ```
//! AES-CBC + HMAC-SHA-256-128: the IV is one cipher block, the plaintext is padded to the
//! block size, and the ICV is the truncated HMAC over the whole message from the first
//! header octet to the end of the ciphertext (§3.14). AES-GCM-16: 8-octet IV, nonce =
//! salt ‖ IV (RFC 5282 §4), the AAD is the message from the first header octet through the
//! SK payload's generic header (RFC 5282 §5.1), and the 16-octet tag is the ICV.

use crate::codes::PayloadType;
use crate::error::{CryptoError, EmitError, ParseError};
use crate::header::{IkeHeader, HEADER_LEN};
use crate::message::message_body;
use crate::payload::{emit_payloads, parse_payloads, Payload, RawPayloads, GENERIC_HEADER_LEN};
use crate::transform::{Encr, Integ, GCM_SALT_LEN};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const AES_BLOCK: usize = 16;
const GCM_ICV_LEN: usize = 16;

/// SK payload protection for one direction (one of SK_ei/SK_ai or SK_er/SK_ar).
pub struct SkCipher {
    inner: Inner,
}

enum Inner {
    Gcm128 {
        aead: Box<Aes128Gcm>,
        salt: Zeroizing<[u8; GCM_SALT_LEN]>,
    },
    Gcm256 {
        aead: Box<Aes256Gcm>,
        salt: Zeroizing<[u8; GCM_SALT_LEN]>,
    },
    Cbc {
        encr: Encr,
        key: Zeroizing<Vec<u8>>,
        integ: Integ,
        integ_key: Zeroizing<Vec<u8>>,
    },
}

impl core::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match &self.inner {
            Inner::Gcm128 { .. } => "AES-GCM-16-128",
            Inner::Gcm256 { .. } => "AES-GCM-16-256",
            Inner::Cbc {
                encr: Encr::AesCbc256,
                ..
            } => "AES-CBC-256+HMAC-SHA-256-128",
            Inner::Cbc { .. } => "AES-CBC-128+HMAC-SHA-256-128",
        };
        f.debug_struct("SkCipher")
            .field("alg", &name)
            .finish_non_exhaustive()
    }
}

/// A decrypted SK payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message header (authenticated).
    pub header: IkeHeader,
    /// Type of the first inner payload.
    pub first_payload: PayloadType,
    /// The inner payload chain, padding and Pad Length removed.
    pub plaintext: Vec<u8>,
}

impl Opened {
    /// The inner payloads. An error here comes from an authenticated peer, so it may be
    /// answered (INVALID_SYNTAX or UNSUPPORTED_CRITICAL_PAYLOAD, see
    /// [`ParseError::notify_type`]).
    pub fn payloads(&self) -> Result<Vec<Payload>, ParseError> {
        parse_payloads(self.first_payload, &self.plaintext)
    }

    /// The inner chain as raw payloads (for the ID payload bytes AUTH covers, §2.15).
    pub fn raw_payloads(&self) -> RawPayloads<'_> {
        RawPayloads::new(self.first_payload, &self.plaintext)
    }
}

fn key_len_err(what: &'static str, expected: usize, got: usize) -> CryptoError {
    CryptoError::KeyLength {
        what,
        expected,
        got,
    }
}

impl SkCipher {
    /// A cipher for `encr` (+ `integ` for non-AEAD). `enc_key` is SK_e* (for GCM key ‖
    /// salt), `integ_key` SK_a* (empty for GCM).
    pub fn new(
        encr: Encr,
        integ: Option<Integ>,
        enc_key: &[u8],
        integ_key: &[u8],
    ) -> Result<Self, CryptoError> {
        if enc_key.len() != encr.keymat_len() {
            return Err(key_len_err("SK_e", encr.keymat_len(), enc_key.len()));
        }
        let inner =
            match (encr, integ) {
                (Encr::AesGcm128 | Encr::AesGcm256, None) => {
                    if !integ_key.is_empty() {
                        return Err(key_len_err("SK_a (AEAD)", 0, integ_key.len()));
                    }
                    let (key, salt_bytes) = enc_key.split_at(enc_key.len() - GCM_SALT_LEN);
                    let mut salt = Zeroizing::new([0u8; GCM_SALT_LEN]);
                    salt.copy_from_slice(salt_bytes);
                    if encr == Encr::AesGcm128 {
                        let aead = Aes128Gcm::new_from_slice(key)
                            .map_err(|_| key_len_err("AES key", 16, key.len()))?;
                        Inner::Gcm128 {
                            aead: Box::new(aead),
                            salt,
                        }
                    } else {
                        let aead = Aes256Gcm::new_from_slice(key)
                            .map_err(|_| key_len_err("AES key", 32, key.len()))?;
                        Inner::Gcm256 {
                            aead: Box::new(aead),
                            salt,
                        }
                    }
                }
                (Encr::AesCbc128 | Encr::AesCbc256, Some(integ)) => {
                    if integ_key.len() != integ.key_len() {
                        return Err(key_len_err("SK_a", integ.key_len(), integ_key.len()));
                    }
                    Inner::Cbc {
                        encr,
                        key: Zeroizing::new(enc_key.to_vec()),
                        integ,
                        integ_key: Zeroizing::new(integ_key.to_vec()),
                    }
                }
                _ => return Err(CryptoError::UnsupportedSuite(
                    "AEAD ciphers take no integrity algorithm and others need one (RFC 5282 §8)",
                )),
            };
        Ok(SkCipher { inner })
    }

    /// IV length on the wire.
    pub fn iv_len(&self) -> usize {
        match self.inner {
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } => Encr::AesGcm128.iv_len(),
            Inner::Cbc { .. } => AES_BLOCK,
        }
    }

    /// ICV length on the wire.
    pub fn icv_len(&self) -> usize {
        match &self.inner {
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } => GCM_ICV_LEN,
            Inner::Cbc { integ, .. } => integ.icv_len(),
        }
    }

    fn block_len(&self) -> usize {
        match self.inner {
            // A stream mode: no padding needed, only the Pad Length octet (RFC 5282 §3).
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } => 1,
            Inner::Cbc { .. } => AES_BLOCK,
        }
    }

    /// Builds a complete protected message: `header`, then one SK payload holding
    /// `inner` (possibly none, e.g. a liveness check, §1.4).
    ///
    /// The IV must be `iv_len()` bytes. For CBC it MUST be unpredictable (§3.14); for GCM
    /// it MUST never repeat under one key (RFC 5282 §3.1) — a counter suffices. Use
    /// [`SkCipher::seal_random`] to draw it from an RNG.
    pub fn seal(
        &self,
        header: &IkeHeader,
        inner: &[Payload],
        iv: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if iv.len() != self.iv_len() {
            return Err(CryptoError::IvLength {
                expected: self.iv_len(),
                got: iv.len(),
            });
        }
        let mut plain = Zeroizing::new(Vec::new());
        let first = emit_payloads(inner, &mut plain)?;
        // RFC 7296 §3.14: payloads | padding | Pad Length is a multiple of the block size.
        let bs = self.block_len();
        let pad = (bs - (plain.len() + 1) % bs) % bs;
        let padded = plain.len() + pad;
        plain.resize(padded, 0);
        plain.push(pad as u8);

        let icv_len = self.icv_len();
        let mut out =
            Vec::with_capacity(HEADER_LEN + GENERIC_HEADER_LEN + iv.len() + plain.len() + icv_len);
        out.resize(HEADER_LEN, 0);
        let sk_start = out.len();
        out.extend_from_slice(&[first.0, 0, 0, 0]);
        let total = HEADER_LEN + GENERIC_HEADER_LEN + iv.len() + plain.len() + icv_len;
        let total32 = u32::try_from(total).map_err(|_| EmitError::TooLong {
            what: "IKE message length",
            len: total,
            max: u32::MAX as usize,
        })?;
        out[..HEADER_LEN].copy_from_slice(&header.encode(PayloadType::SK, total32));
        // The SK payload length is known before encrypting: the AAD/ICV cover it.
        let sk_len = total - sk_start;
        let sk_len16 = u16::try_from(sk_len).map_err(|_| EmitError::TooLong {
            what: "payload length",
            len: sk_len,
            max: u16::MAX as usize,
        })?;
        out[sk_start + 2..sk_start + 4].copy_from_slice(&sk_len16.to_be_bytes());
        let aad_end = out.len();
        out.extend_from_slice(iv);
        let ct_start = out.len();
        out.extend_from_slice(&plain);

        match &self.inner {
            Inner::Gcm128 { aead, salt } => {
                let nonce = gcm_nonce(salt, iv);
                let (aad, rest) = out.split_at_mut(aad_end);
                let tag = aead
                    .encrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        aad,
                        &mut rest[ct_start - aad_end..],
                    )
                    .map_err(|_| CryptoError::UnsupportedSuite("AES-GCM refused the input"))?;
                out.extend_from_slice(&tag);
            }
            Inner::Gcm256 { aead, salt } => {
                let nonce = gcm_nonce(salt, iv);
                let (aad, rest) = out.split_at_mut(aad_end);
                let tag = aead
                    .encrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        aad,
                        &mut rest[ct_start - aad_end..],
                    )
                    .map_err(|_| CryptoError::UnsupportedSuite("AES-GCM refused the input"))?;
                out.extend_from_slice(&tag);
            }
            Inner::Cbc { key, integ_key, .. } => {
                let n = out.len() - ct_start;
                cbc_encrypt(key, iv, &mut out[ct_start..], n)?;
                let icv = hmac_icv(integ_key, &out, icv_len);
                out.extend_from_slice(&icv);
            }
        }
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// [`SkCipher::seal`] with an IV drawn from `rng`.
    pub fn seal_random<R: RngCore + CryptoRng>(
        &self,
        header: &IkeHeader,
        inner: &[Payload],
        rng: &mut R,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut iv = [0u8; AES_BLOCK];
        let iv = &mut iv[..self.iv_len()];
        rng.fill_bytes(iv);
        self.seal(header, inner, iv)
    }

    /// Verifies and decrypts the SK payload of a received message. The header and the
    /// payload chain up to the SK payload are checked for framing; the ICV/tag is checked
    /// before anything in the ciphertext is looked at, and in constant time. Unencrypted
    /// payloads before SK (rare) are authenticated but not returned.
    pub fn open(&self, message: &[u8]) -> Result<Opened, CryptoError> {
        let d = IkeHeader::decode(message)?;
        let body = message_body(message, d.length)?;
        let mut sk = None;
        for raw in RawPayloads::new(d.next_payload, body) {
            let raw = raw?;
            if raw.payload_type == PayloadType::SK {
                sk = Some(raw);
            }
        }
        let sk = sk.ok_or(CryptoError::NoEncryptedPayload)?;
        let body_start = HEADER_LEN + sk.offset + GENERIC_HEADER_LEN;
        let iv_len = self.iv_len();
        let icv_len = self.icv_len();
        let len = sk.body.len();
        // At least IV, one block of ciphertext (it holds the Pad Length) and the ICV.
        if len < iv_len + self.block_len() + icv_len {
            return Err(CryptoError::BadCiphertextLength { len });
        }
        let iv = &sk.body[..iv_len];
        let ct_range = body_start + iv_len..message.len() - icv_len;
        let icv = &message[message.len() - icv_len..];

        let mut plain = match &self.inner {
            Inner::Gcm128 { aead, salt } => {
                let mut buf = message[ct_range].to_vec();
                aead.decrypt_in_place_detached(
                    Nonce::from_slice(&gcm_nonce(salt, iv)),
                    &message[..body_start],
                    &mut buf,
                    Tag::from_slice(icv),
                )
                .map_err(|_| CryptoError::IntegrityCheckFailed)?;
                buf
            }
            Inner::Gcm256 { aead, salt } => {
                let mut buf = message[ct_range].to_vec();
                aead.decrypt_in_place_detached(
                    Nonce::from_slice(&gcm_nonce(salt, iv)),
                    &message[..body_start],
                    &mut buf,
                    Tag::from_slice(icv),
                )
                .map_err(|_| CryptoError::IntegrityCheckFailed)?;
                buf
            }
            Inner::Cbc { key, integ_key, .. } => {
                let want = hmac_icv(integ_key, &message[..message.len() - icv_len], icv_len);
                if !bool::from(want.as_slice().ct_eq(icv)) {
                    return Err(CryptoError::IntegrityCheckFailed);
                }
                if ct_range.len() % AES_BLOCK != 0 {
                    return Err(CryptoError::BadCiphertextLength { len });
                }
                let mut buf = message[ct_range].to_vec();
                cbc_decrypt(key, iv, &mut buf)?;
                buf
            }
        };
        // RFC 7296 §3.14: the receiver accepts any padding that fits.
        let pad_len = plain.last().copied().unwrap_or(0);
        let total = plain.len();
        if pad_len as usize + 1 > total {
            return Err(CryptoError::BadPadding {
                pad_len,
                len: total,
            });
        }
        plain.truncate(total - 1 - pad_len as usize);
        Ok(Opened {
            header: d.header,
            first_payload: sk.next_payload,
            plaintext: plain,
        })
    }
}

fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..GCM_SALT_LEN].copy_from_slice(salt);
    n[GCM_SALT_LEN..].copy_from_slice(iv);
    n
}

fn hmac_icv(key: &[u8], covered: &[u8], icv_len: usize) -> Vec<u8> {
    // RFC 4868 §2.3: HMAC-SHA-256 truncated to its first 128 bits.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(covered);
    m.finalize().into_bytes()[..icv_len].to_vec()
}

fn cbc_encrypt(key: &[u8], iv: &[u8], buf: &mut [u8], len: usize) -> Result<(), CryptoError> {
    let bad_key = |_| key_len_err("AES-CBC key", 16, key.len());
    let done = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|c| c.len()),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|c| c.len()),
    };
    match done {
        Ok(n) if n == len => Ok(()),
        _ => Err(CryptoError::BadCiphertextLength { len }),
    }
}

fn cbc_decrypt(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
    let len = buf.len();
    let bad_key = |_| key_len_err("AES-CBC key", 16, key.len());
    let done = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|p| p.len()),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|p| p.len()),
    };
    match done {
        Ok(n) if n == len => Ok(()),
        _ => Err(CryptoError::BadCiphertextLength { len }),
    }
}
