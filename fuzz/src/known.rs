//! Packets for a known ESP SA with genuine ICVs, sealed outside the engine (its sealing
//! is crate-private): the `esp_known_sa` fuzz target and `tests/bad_input_esp.rs` use
//! them to reach what lies behind the ICV check. Compiled into both through `#[path]`.

use esplab_esp::{Algorithm, SaParams};

/// The SPI of the SA every ESP target installs.
pub const FUZZ_SPI: u32 = 0xc0de_f022;

/// Fixed keys of the known SA, per algorithm.
pub fn known_sa(alg: Algorithm, esn: bool, window: u32) -> SaParams {
    let enc: Vec<u8> = (0..alg.enc_key_len() as u8).map(|i| i ^ 0x5a).collect();
    let integ: Vec<u8> = (0..alg.integ_key_len() as u8).map(|i| i ^ 0xa5).collect();
    let mut p = SaParams::new(FUZZ_SPI, alg, &enc, &integ);
    p.esn = esn;
    p.replay_window = window;
    p
}

/// Seals `esp` = SPI‖seq‖IV‖text‖ICV-space with the known SA's keys, independently of the
/// engine's own (crate-private) sealing: RFC 4106 §4/§5 for GCM, RFC 4303 §2.2.1 and RFC
/// 4868 for CBC + HMAC-SHA-256-128. `seq_hi` is the ESN high half.
pub fn seal_known(p: &SaParams, esp: &mut [u8], seq_hi: Option<u32>) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let icv_len = 16;
    let iv_len = p.alg.iv_len();
    let text_end = esp.len() - icv_len;
    if p.alg.is_aead() {
        let klen = p.enc_key.len() - 4;
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&p.enc_key[klen..]);
        nonce[4..].copy_from_slice(&esp[8..16]);
        let mut aad = Vec::with_capacity(12);
        aad.extend_from_slice(&esp[..4]);
        if let Some(hi) = seq_hi {
            aad.extend_from_slice(&hi.to_be_bytes());
        }
        aad.extend_from_slice(&esp[4..8]);
        let (head, rest) = esp.split_at_mut(8 + iv_len);
        let _ = head;
        let (text, icv) = rest.split_at_mut(text_end - 8 - iv_len);
        let nonce = aes_gcm::Nonce::from_slice(&nonce);
        let tag = if klen == 16 {
            aes_gcm::Aes128Gcm::new_from_slice(&p.enc_key[..klen])
                .expect("key")
                .encrypt_in_place_detached(nonce, &aad, text)
        } else {
            aes_gcm::Aes256Gcm::new_from_slice(&p.enc_key[..klen])
                .expect("key")
                .encrypt_in_place_detached(nonce, &aad, text)
        }
        .expect("GCM seal");
        icv.copy_from_slice(&tag);
    } else {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&esp[8..24]);
        esplab_esp::transform::aes_cbc_encrypt(&p.enc_key, &iv, &mut esp[24..text_end])
            .expect("CBC key");
        let mut covered = esp[..text_end].to_vec();
        if let Some(hi) = seq_hi {
            covered.extend_from_slice(&hi.to_be_bytes());
        }
        let tag = esplab_esp::transform::hmac_sha256(&p.integ_key, &covered);
        esp[text_end..].copy_from_slice(&tag[..icv_len]);
    }
}

/// Builds an authentic ESP packet for the known SA around fuzzer-chosen `text` (payload,
/// padding, Pad Length and Next Header bytes as they are, right or wrong). For CBC the
/// text is cut to whole blocks (at least one) so the ICV is computed over a well-formed
/// ciphertext.
pub fn build_known(p: &SaParams, seq: u64, iv_byte: u8, text: &[u8]) -> Vec<u8> {
    let iv_len = p.alg.iv_len();
    let mut text = text.to_vec();
    if !p.alg.is_aead() {
        let blocks = (text.len() / 16).max(1);
        text.resize(blocks * 16, 0);
    } else if text.len() < 2 {
        text.resize(2, 0);
    }
    let mut esp = Vec::with_capacity(8 + iv_len + text.len() + 16);
    esp.extend_from_slice(&p.spi.to_be_bytes());
    esp.extend_from_slice(&(seq as u32).to_be_bytes());
    esp.extend(std::iter::repeat_n(iv_byte, iv_len));
    esp.extend_from_slice(&text);
    esp.extend_from_slice(&[0u8; 16]);
    seal_known(p, &mut esp, p.esn.then_some((seq >> 32) as u32));
    esp
}
