//! Key derivation: SKEYSEED and the IKE SA keys (RFC 7296 §2.14), IKE SA rekey (§2.18),
//! Child SA KEYMAT (§2.17).

use super::{auth, SecretBytes, SkCipher};
use crate::error::CryptoError;
use crate::transform::{Encr, EspSuite, IkeSuite, Integ, Prf};

/// A side of the IKE SA. For SK_e*/SK_a*/SK_p* this is the *original* initiator or
/// responder of the IKE SA (RFC 7296 §2.14), whoever starts a later exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The original initiator.
    Initiator,
    /// The original responder.
    Responder,
}

/// Direction of Child SA traffic, relative to the exchange that created it (RFC 7296
/// §2.17: "initiator" there is the initiator of that IKE_AUTH or CREATE_CHILD_SA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the exchange initiator to the responder.
    InitiatorToResponder,
    /// From the exchange responder to the initiator.
    ResponderToInitiator,
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14). For HMAC PRFs the whole of Ni | Nr is
/// the key (the half-and-half rule of §2.14 is for fixed-key-size PRFs only).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> SecretBytes {
    let mut key = SecretBytes::default();
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.compute(key.as_bytes(), &[g_ir])
}

/// SKEYSEED of a rekeyed IKE SA = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18),
/// with the *old* IKE SA's PRF, because the rekeying exchange belongs to the old SA.
pub fn rekey_skeyseed(
    old_prf: Prf,
    old_sk_d: &[u8],
    g_ir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> SecretBytes {
    old_prf.compute(old_sk_d, &[g_ir_new, ni, nr])
}

/// The seven secrets of an IKE SA (RFC 7296 §2.14) and the suite they were made for.
#[derive(Clone)]
pub struct IkeSaKeys {
    suite: IkeSuite,
    sk_d: SecretBytes,
    sk_ai: SecretBytes,
    sk_ar: SecretBytes,
    sk_ei: SecretBytes,
    sk_er: SecretBytes,
    sk_pi: SecretBytes,
    sk_pr: SecretBytes,
}

impl core::fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSaKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl IkeSaKeys {
    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr |
    /// SPIi | SPIr) (RFC 7296 §2.14). SK_d/SK_pi/SK_pr have the PRF's key length; SK_a*
    /// are empty for AEAD ciphers and SK_e* then include the 4-octet salt (RFC 5282 §7).
    pub fn derive(
        suite: IkeSuite,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, CryptoError> {
        let prf = suite.prf;
        let p = prf.output_len();
        let a = suite.integ_key_len();
        let e = suite.encr.keymat_len();
        let total = 3 * p + 2 * a + 2 * e;
        let dkm = prf.prf_plus(
            skeyseed,
            &[ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()],
            total,
        )?;
        let mut cut = Cutter::new(dkm.as_bytes());
        Ok(IkeSaKeys {
            suite,
            sk_d: cut.take(p),
            sk_ai: cut.take(a),
            sk_ar: cut.take(a),
            sk_ei: cut.take(e),
            sk_er: cut.take(e),
            sk_pi: cut.take(p),
            sk_pr: cut.take(p),
        })
    }

    /// The keys of a new IKE SA from its IKE_SA_INIT: SKEYSEED from g^ir, then
    /// [`IkeSaKeys::derive`].
    pub fn from_shared_secret(
        suite: IkeSuite,
        g_ir: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, CryptoError> {
        let seed = skeyseed(suite.prf, ni, nr, g_ir);
        Self::derive(suite, seed.as_bytes(), ni, nr, spi_i, spi_r)
    }

    /// The keys of the IKE SA that replaces this one in a CREATE_CHILD_SA rekey (RFC 7296
    /// §2.18): SKEYSEED from our SK_d and our PRF, the rest with the new suite. `ni`/`nr`
    /// are the rekey exchange's nonces, `spi_i`/`spi_r` the new SA's SPIs.
    pub fn rekey(
        &self,
        new_suite: IkeSuite,
        g_ir_new: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, CryptoError> {
        let seed = rekey_skeyseed(self.suite.prf, self.sk_d.as_bytes(), g_ir_new, ni, nr);
        Self::derive(new_suite, seed.as_bytes(), ni, nr, spi_i, spi_r)
    }

    /// KEYMAT for a Child SA made on this IKE SA (RFC 7296 §2.17).
    pub fn child_sa_keys(
        &self,
        suite: &EspSuite,
        g_ir_new: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<ChildSaKeys, CryptoError> {
        ChildSaKeys::derive(
            self.suite.prf,
            self.sk_d.as_bytes(),
            suite,
            g_ir_new,
            ni,
            nr,
        )
    }

    /// The SK payload cipher for messages *sent by* `sender` (SK_ei/SK_ai for the original
    /// initiator, SK_er/SK_ar for the original responder, §2.14). Each side seals with its
    /// own role and opens with the peer's.
    pub fn sk_cipher(&self, sender: Role) -> Result<SkCipher, CryptoError> {
        let (e, a) = match sender {
            Role::Initiator => (&self.sk_ei, &self.sk_ai),
            Role::Responder => (&self.sk_er, &self.sk_ar),
        };
        SkCipher::new(
            self.suite.encr,
            self.suite.integ,
            e.as_bytes(),
            a.as_bytes(),
        )
    }

    /// The PSK AUTH value `signer` sends (RFC 7296 §2.15): `real_message` is the signer's
    /// IKE_SA_INIT message as sent, `peer_nonce` the other side's Ni/Nr, `id_body` the
    /// signer's ID payload body (ID Type ‖ RESERVED ‖ data).
    pub fn psk_auth(
        &self,
        signer: Role,
        psk: &[u8],
        real_message: &[u8],
        peer_nonce: &[u8],
        id_body: &[u8],
    ) -> Vec<u8> {
        let octets = auth::signed_octets(
            self.suite.prf,
            self.sk_p(signer),
            real_message,
            peer_nonce,
            id_body,
        );
        auth::psk_auth(self.suite.prf, psk, &octets)
    }

    /// Checks a received PSK AUTH from `signer` in constant time (RFC 7296 §2.15).
    pub fn verify_psk_auth(
        &self,
        signer: Role,
        psk: &[u8],
        real_message: &[u8],
        peer_nonce: &[u8],
        id_body: &[u8],
        received: &[u8],
    ) -> Result<(), CryptoError> {
        let octets = auth::signed_octets(
            self.suite.prf,
            self.sk_p(signer),
            real_message,
            peer_nonce,
            id_body,
        );
        auth::verify_psk_auth(self.suite.prf, psk, &octets, received)
    }

    /// The suite.
    pub fn suite(&self) -> IkeSuite {
        self.suite
    }

    /// SK_pi for the initiator, SK_pr for the responder.
    pub fn sk_p(&self, role: Role) -> &[u8] {
        match role {
            Role::Initiator => self.sk_pi.as_bytes(),
            Role::Responder => self.sk_pr.as_bytes(),
        }
    }

    /// SK_d: the seed of Child SA keys and of the next IKE SA.
    pub fn sk_d(&self) -> &[u8] {
        self.sk_d.as_bytes()
    }

    /// SK_ai.
    pub fn sk_ai(&self) -> &[u8] {
        self.sk_ai.as_bytes()
    }

    /// SK_ar.
    pub fn sk_ar(&self) -> &[u8] {
        self.sk_ar.as_bytes()
    }

    /// SK_ei.
    pub fn sk_ei(&self) -> &[u8] {
        self.sk_ei.as_bytes()
    }

    /// SK_er.
    pub fn sk_er(&self) -> &[u8] {
        self.sk_er.as_bytes()
    }

    /// SK_pi.
    pub fn sk_pi(&self) -> &[u8] {
        self.sk_pi.as_bytes()
    }

    /// SK_pr.
    pub fn sk_pr(&self) -> &[u8] {
        self.sk_pr.as_bytes()
    }
}

/// Wireshark's name (`vs_ikev2_encr_algs`, the "Encryption algorithm" column of the
/// `ikev2_decryption_table` UAT) for an SK payload cipher. Checked against tshark 4.0.
pub fn wireshark_encr_name(e: Encr) -> &'static str {
    match e {
        Encr::AesCbc128 => "AES-CBC-128 [RFC3602]",
        Encr::AesCbc256 => "AES-CBC-256 [RFC3602]",
        Encr::AesGcm128 => "AES-GCM-128 with 16 octet ICV [RFC5282]",
        Encr::AesGcm256 => "AES-GCM-256 with 16 octet ICV [RFC5282]",
    }
}

/// Wireshark's name (`vs_ikev2_auth_algs`, the "Integrity algorithm" column) for an SK
/// payload integrity algorithm; AEAD ciphers have none (RFC 5282 §8).
pub fn wireshark_integ_name(i: Option<Integ>) -> &'static str {
    match i {
        None => "NONE [RFC4306]",
        Some(Integ::HmacSha256_128) => "HMAC_SHA2_256_128 [RFC4868]",
    }
}

/// One line of Wireshark's `ikev2_decryption_table` UAT (Preferences → Protocols → ISAKMP
/// → IKEv2 Decryption Table; tshark `-o 'uat:ikev2_decryption_table:LINE'`), in its column
/// order: SPIi, SPIr, SK_ei, SK_er, encryption algorithm, SK_ai, SK_ar, integrity
/// algorithm. SPIs and keys are unquoted hex octets, the algorithms quoted names. SK_e*
/// of GCM include the 4-octet salt (RFC 5282 §7.1), which is what Wireshark expects.
///
/// The result is key material in clear: only for debug output the user asked for.
pub fn ikev2_decryption_table_line(spi_i: u64, spi_r: u64, keys: &IkeSaKeys) -> String {
    let suite = keys.suite();
    let mut s = String::with_capacity(256);
    push_hex(&mut s, &spi_i.to_be_bytes());
    s.push(',');
    push_hex(&mut s, &spi_r.to_be_bytes());
    s.push(',');
    push_hex(&mut s, keys.sk_ei());
    s.push(',');
    push_hex(&mut s, keys.sk_er());
    s.push_str(",\"");
    s.push_str(wireshark_encr_name(suite.encr));
    s.push_str("\",");
    push_hex(&mut s, keys.sk_ai());
    s.push(',');
    push_hex(&mut s, keys.sk_ar());
    s.push_str(",\"");
    s.push_str(wireshark_integ_name(suite.integ));
    s.push('"');
    s
}

fn push_hex(s: &mut String, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 0xf)]));
    }
}

/// The keys of one ESP Child SA pair (RFC 7296 §2.17).
#[derive(Clone)]
pub struct ChildSaKeys {
    suite: EspSuite,
    enc_ir: SecretBytes,
    integ_ir: SecretBytes,
    enc_ri: SecretBytes,
    integ_ri: SecretBytes,
}

impl core::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChildSaKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl ChildSaKeys {
    /// KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (RFC
    /// 7296 §2.17). The keys are taken in the order §2.17 fixes: initiator-to-responder
    /// before responder-to-initiator, and within a direction the encryption key first
    /// (for GCM: key ‖ salt, RFC 5282 §7.1 / RFC 4106 §8.1) then the integrity key.
    pub fn derive(
        prf: Prf,
        sk_d: &[u8],
        suite: &EspSuite,
        g_ir_new: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<Self, CryptoError> {
        let e = suite.encr.keymat_len();
        let a = suite.integ_key_len();
        let keymat = match g_ir_new {
            Some(g) => prf.prf_plus(sk_d, &[g, ni, nr], 2 * (e + a))?,
            None => prf.prf_plus(sk_d, &[ni, nr], 2 * (e + a))?,
        };
        let mut cut = Cutter::new(keymat.as_bytes());
        Ok(ChildSaKeys {
            suite: *suite,
            enc_ir: cut.take(e),
            integ_ir: cut.take(a),
            enc_ri: cut.take(e),
            integ_ri: cut.take(a),
        })
    }

    /// The suite.
    pub fn suite(&self) -> EspSuite {
        self.suite
    }

    /// Encryption keying material for one direction (GCM: key ‖ salt).
    pub fn enc_key(&self, dir: Direction) -> &[u8] {
        match dir {
            Direction::InitiatorToResponder => self.enc_ir.as_bytes(),
            Direction::ResponderToInitiator => self.enc_ri.as_bytes(),
        }
    }

    /// Integrity key for one direction (empty for AEAD).
    pub fn integ_key(&self, dir: Direction) -> &[u8] {
        match dir {
            Direction::InitiatorToResponder => self.integ_ir.as_bytes(),
            Direction::ResponderToInitiator => self.integ_ri.as_bytes(),
        }
    }

    /// `esplab-esp` parameters for the SA carrying `dir` traffic. `spi` is the SPI the
    /// *receiver* of that traffic chose (its inbound SPI, RFC 4301 §4.1).
    pub fn sa_params(&self, dir: Direction, spi: u32) -> Result<esplab_esp::SaParams, CryptoError> {
        let alg = self
            .suite
            .esp_algorithm()
            .ok_or(CryptoError::UnsupportedSuite(
                "no ESP engine algorithm for this suite",
            ))?;
        let mut p = esplab_esp::SaParams::new(spi, alg, self.enc_key(dir), self.integ_key(dir));
        p.esn = self.suite.esn;
        Ok(p)
    }
}

/// Takes consecutive slices of derived keying material.
struct Cutter<'a> {
    buf: &'a [u8],
}

impl<'a> Cutter<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cutter { buf }
    }

    fn take(&mut self, n: usize) -> SecretBytes {
        // The caller sized the buffer as the sum of the takes.
        let (head, tail) = self.buf.split_at(n.min(self.buf.len()));
        self.buf = tail;
        SecretBytes::from_slice(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::DhGroup;

    fn gcm_suite() -> IkeSuite {
        IkeSuite {
            encr: Encr::AesGcm128,
            integ: None,
            prf: Prf::HmacSha256,
            dh: DhGroup::CURVE25519,
        }
    }

    #[test]
    fn split_lengths() {
        let k =
            IkeSaKeys::from_shared_secret(gcm_suite(), &[1; 32], &[2; 32], &[3; 32], 1, 2).unwrap();
        assert_eq!(k.sk_d().len(), 32);
        assert!(k.sk_ai().is_empty() && k.sk_ar().is_empty());
        assert_eq!(k.sk_ei().len(), 20);
        assert_eq!(k.sk_er().len(), 20);
        assert_eq!(k.sk_pi().len(), 32);
        assert_eq!(k.sk_pr().len(), 32);
        let cbc = IkeSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha256_128),
            ..gcm_suite()
        };
        let k2 = IkeSaKeys::from_shared_secret(cbc, &[1; 32], &[2; 32], &[3; 32], 1, 2).unwrap();
        assert_eq!(k2.sk_ai().len(), 32);
        assert_eq!(k2.sk_ei().len(), 32);
        // Same prf+ stream: SK_d is identical, whatever follows it.
        assert_eq!(k.sk_d(), k2.sk_d());
        let dbg = format!("{k:?}");
        assert!(dbg.contains("AesGcm128") && !dbg.contains("sk_d"));
    }

    fn known_keys(suite: IkeSuite) -> IkeSaKeys {
        let seq = |start: u8, n: usize| -> SecretBytes {
            SecretBytes::from_slice(
                &(0..n)
                    .map(|i| start.wrapping_add(i as u8))
                    .collect::<Vec<_>>(),
            )
        };
        let e = suite.encr.keymat_len();
        let a = suite.integ_key_len();
        IkeSaKeys {
            suite,
            sk_d: seq(0xd0, 32),
            sk_ai: seq(0xa0, a),
            sk_ar: seq(0xb0, a),
            sk_ei: seq(0x00, e),
            sk_er: seq(0x40, e),
            sk_pi: seq(0xe0, 32),
            sk_pr: seq(0xf0, 32),
        }
    }

    #[test]
    fn wireshark_line_for_known_keys() {
        // GCM: SK_e* carry the salt (20 octets), no SK_a*, integrity NONE.
        let k = known_keys(gcm_suite());
        assert_eq!(
            ikev2_decryption_table_line(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, &k),
            "0123456789abcdef,fedcba9876543210,\
             000102030405060708090a0b0c0d0e0f10111213,\
             404142434445464748494a4b4c4d4e4f50515253,\
             \"AES-GCM-128 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\""
        );
        // CBC + HMAC: 16-octet SK_e*, 32-octet SK_a*.
        let cbc = IkeSuite {
            encr: Encr::AesCbc128,
            integ: Some(Integ::HmacSha256_128),
            ..gcm_suite()
        };
        let k = known_keys(cbc);
        assert_eq!(
            ikev2_decryption_table_line(1, 2, &k),
            "0000000000000001,0000000000000002,\
             000102030405060708090a0b0c0d0e0f,\
             404142434445464748494a4b4c4d4e4f,\
             \"AES-CBC-128 [RFC3602]\",\
             a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf,\
             b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf,\
             \"HMAC_SHA2_256_128 [RFC4868]\""
        );
        assert_eq!(
            wireshark_encr_name(Encr::AesCbc256),
            "AES-CBC-256 [RFC3602]"
        );
        assert_eq!(
            wireshark_encr_name(Encr::AesGcm256),
            "AES-GCM-256 with 16 octet ICV [RFC5282]"
        );
    }

    #[test]
    fn child_keys_order_and_esp_params() {
        let k =
            IkeSaKeys::from_shared_secret(gcm_suite(), &[1; 32], &[2; 32], &[3; 32], 1, 2).unwrap();
        let esp = EspSuite {
            encr: Encr::AesCbc128,
            integ: Some(Integ::HmacSha256_128),
            esn: true,
            dh: None,
        };
        let c = k.child_sa_keys(&esp, None, &[4; 32], &[5; 32]).unwrap();
        let keymat = Prf::HmacSha256
            .prf_plus(k.sk_d(), &[&[4; 32], &[5; 32]], 2 * (16 + 32))
            .unwrap();
        let km = keymat.as_bytes();
        assert_eq!(c.enc_key(Direction::InitiatorToResponder), &km[0..16]);
        assert_eq!(c.integ_key(Direction::InitiatorToResponder), &km[16..48]);
        assert_eq!(c.enc_key(Direction::ResponderToInitiator), &km[48..64]);
        assert_eq!(c.integ_key(Direction::ResponderToInitiator), &km[64..96]);
        let p = c
            .sa_params(Direction::ResponderToInitiator, 0xc0de_0001)
            .unwrap();
        assert_eq!(p.spi, 0xc0de_0001);
        assert!(p.esn);
        assert_eq!(&p.enc_key[..], &km[48..64]);
    }
}
