//! One SA's ESP processing: outbound encapsulation and inbound decapsulation, in place.
//!
//! Packet layout (RFC 4303 §2):
//! ```text
//! | SPI (4) | Seq (4) | IV (8 GCM / 16 CBC) | payload | padding | pad len | next hdr | ICV (16) |
//!                                           \____________ encrypted _____________/
//! ```
//! Encapsulation needs `header_len()` bytes of headroom before the payload and
//! `max_trailer_len()` bytes of tailroom after it; nothing is allocated when the buffer has
//! them.

use crate::error::{EspError, KeyError};
use crate::replay::ReplayWindow;
use crate::transform::{Algorithm, Backend, Cipher};
use crate::wire::{EspPacket, ESP_HEADER_LEN, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use bytes::BytesMut;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// Everything needed to key one direction of an SA.
#[derive(Clone)]
pub struct SaParams {
    /// Security Parameters Index.
    pub spi: u32,
    /// Algorithm suite.
    pub alg: Algorithm,
    /// AEAD implementation.
    pub backend: Backend,
    /// Encryption keying material (GCM: key‖salt).
    pub enc_key: zeroize::Zeroizing<Vec<u8>>,
    /// Integrity key (CBC suites only).
    pub integ_key: zeroize::Zeroizing<Vec<u8>>,
    /// Extended (64-bit) sequence numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    /// Anti-replay window (inbound only); 0 disables the check.
    pub replay_window: u32,
}

impl core::fmt::Debug for SaParams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SaParams")
            .field("spi", &format_args!("0x{:08x}", self.spi))
            .field("alg", &self.alg)
            .field("esn", &self.esn)
            .field("replay_window", &self.replay_window)
            .finish_non_exhaustive()
    }
}

impl SaParams {
    /// Parameters with the default backend, no ESN and the default replay window.
    pub fn new(spi: u32, alg: Algorithm, enc_key: &[u8], integ_key: &[u8]) -> Self {
        Self {
            spi,
            alg,
            backend: Backend::default(),
            enc_key: zeroize::Zeroizing::new(enc_key.to_vec()),
            integ_key: zeroize::Zeroizing::new(integ_key.to_vec()),
            esn: false,
            replay_window: crate::replay::DEFAULT_WINDOW,
        }
    }

    fn cipher(&self) -> Result<Cipher, KeyError> {
        Cipher::new(self.alg, self.backend, &self.enc_key, &self.integ_key)
    }
}

/// Result of a successful encapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encapped {
    /// Where the ESP packet lies in the buffer.
    pub esp: Range<usize>,
    /// The full sequence number used.
    pub seq: u64,
    /// Padding bytes added.
    pub pad_len: u8,
}

/// Result of a successful decapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapped {
    /// The full (inferred) sequence number.
    pub seq: u64,
    /// Next header from the trailer.
    pub next_header: u8,
    /// Pad length from the trailer.
    pub pad_len: u8,
    /// Where the decrypted payload lies in the ESP buffer.
    pub payload: Range<usize>,
}

/// Smallest ESP packet this transform can produce: header, IV, pad length, next header, ICV.
fn min_len(cipher: &Cipher) -> usize {
    ESP_HEADER_LEN + cipher.iv_len() + 2 + cipher.icv_len()
}

/// Outbound (sending) SA: keys and the sequence counter.
///
/// Encapsulation takes `&self`: the counter is atomic, so a sending thread of its own can
/// share the SA with the thread that installed it (`show sa` reads the counter) and two
/// threads encrypting on one SA would still never reuse a number.
#[derive(Debug)]
pub struct OutboundSa {
    spi: u32,
    esn: bool,
    cipher: Cipher,
    /// The last sequence number sent (0 = none yet).
    last_seq: AtomicU64,
}

impl OutboundSa {
    /// Keys an outbound SA; the first packet gets sequence number 1 (RFC 4303 §3.3.3).
    pub fn new(p: &SaParams) -> Result<Self, KeyError> {
        Ok(Self {
            spi: p.spi,
            esn: p.esn,
            cipher: p.cipher()?,
            last_seq: AtomicU64::new(0),
        })
    }

    /// Wraps an already keyed transform.
    pub fn with_cipher(spi: u32, esn: bool, cipher: Cipher) -> Self {
        Self {
            spi,
            esn,
            cipher,
            last_seq: AtomicU64::new(0),
        }
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The transform.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// Whether ESN is on.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The last sequence number sent.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// Makes the next packet use sequence number `next` (tools and tests; `next` ≥ 1).
    pub fn set_next_seq(&mut self, next: u64) {
        *self.last_seq.get_mut() = next.saturating_sub(1);
    }

    /// Bytes of headroom needed before the payload: SPI, sequence number, IV.
    pub fn header_len(&self) -> usize {
        ESP_HEADER_LEN + self.cipher.iv_len()
    }

    /// Largest trailer added after the payload: padding, pad length, next header, ICV.
    pub fn max_trailer_len(&self) -> usize {
        self.cipher.pad_align() - 1 + 2 + self.cipher.icv_len()
    }

    /// Padding for a payload of `len` bytes: the smallest count making
    /// payload‖padding‖pad length‖next header a multiple of the alignment (RFC 4303 §2.4).
    pub fn pad_len_for(&self, len: usize) -> usize {
        let a = self.cipher.pad_align();
        (a - (len + 2) % a) % a
    }

    fn next_seq(&self) -> Result<u64, EspError> {
        // RFC 4303 §3.3.3: the counter MUST NOT cycle; the SA must be rekeyed first. One
        // read-modify-write, so concurrent senders get distinct numbers. Relaxed: the number
        // orders nothing else in memory.
        let limit = if self.esn { u64::MAX } else { u32::MAX as u64 };
        self.last_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < limit).then(|| l + 1)
            })
            .map(|l| l + 1)
            .map_err(|_| EspError::SequenceExhausted)
    }

    /// Encapsulates `buf[payload]` in place. `buf[payload.start - header_len()..payload.start]`
    /// receives the header and IV, and the trailer and ICV go right after the payload, so
    /// `buf` must extend at least `max_trailer_len()` past it. `iv` overrides the default IV
    /// (tests make output deterministic with it).
    pub fn encap_slice(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
        iv: Option<&[u8]>,
    ) -> Result<Encapped, EspError> {
        let hdr = self.header_len();
        if payload.start < hdr || payload.end < payload.start || payload.end > buf.len() {
            return Err(EspError::NoRoom("header"));
        }
        let pad = self.pad_len_for(payload.len());
        let icv = self.cipher.icv_len();
        let end = payload.end + pad + 2 + icv;
        if end > buf.len() {
            return Err(EspError::NoRoom("trailer"));
        }
        if let Some(iv) = iv {
            if iv.len() != self.cipher.iv_len() {
                return Err(EspError::NoRoom("IV (wrong length)"));
            }
        }
        let seq = self.next_seq()?;
        let start = payload.start - hdr;
        let esp = &mut buf[start..end];
        {
            let mut p = EspPacket::new_unchecked(&mut esp[..]);
            p.set_spi(self.spi);
            p.set_seq(seq as u32);
        }
        match iv {
            Some(iv) => esp[ESP_HEADER_LEN..hdr].copy_from_slice(iv),
            None => self.cipher.default_iv(seq, &mut esp[ESP_HEADER_LEN..hdr]),
        }
        // RFC 4303 §2.4: padding bytes are 1, 2, 3, ... (monotonically increasing).
        let t = payload.len() + hdr;
        for i in 0..pad {
            esp[t + i] = (i + 1) as u8;
        }
        esp[t + pad] = pad as u8;
        esp[t + pad + 1] = next_header;
        let hi = self.esn.then_some((seq >> 32) as u32);
        self.cipher.seal(esp, hi);
        Ok(Encapped {
            esp: start..end,
            seq,
            pad_len: pad as u8,
        })
    }

    /// [`encap_slice`](Self::encap_slice) on a `BytesMut` whose first `payload_offset` bytes
    /// are headroom and whose remaining bytes are the payload. The buffer grows by the trailer
    /// (no allocation while its capacity allows) and returns where the ESP packet starts; the
    /// bytes in front of it are still free for an outer header.
    pub fn encap(
        &self,
        buf: &mut BytesMut,
        payload_offset: usize,
        next_header: u8,
        iv: Option<&[u8]>,
    ) -> Result<Encapped, EspError> {
        let payload = payload_offset..buf.len();
        if payload_offset > buf.len() {
            return Err(EspError::NoRoom("header"));
        }
        let pad = self.pad_len_for(payload.len());
        let grow = pad + 2 + self.cipher.icv_len();
        buf.resize(buf.len() + grow, 0);
        let r = self.encap_slice(&mut buf[..], payload, next_header, iv);
        if r.is_err() {
            let len = buf.len() - grow;
            buf.truncate(len);
        }
        r
    }
}

/// Inbound (receiving) SA: keys and the anti-replay window.
#[derive(Debug)]
pub struct InboundSa {
    spi: u32,
    cipher: Cipher,
    replay: ReplayWindow,
}

impl InboundSa {
    /// Keys an inbound SA with a fresh replay window.
    pub fn new(p: &SaParams) -> Result<Self, KeyError> {
        Ok(Self {
            spi: p.spi,
            cipher: p.cipher()?,
            replay: ReplayWindow::new(p.replay_window, p.esn)?,
        })
    }

    /// Wraps an already keyed transform and a (possibly seeded) replay window.
    pub fn with_parts(spi: u32, cipher: Cipher, replay: ReplayWindow) -> Self {
        Self {
            spi,
            cipher,
            replay,
        }
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The transform.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// The replay window.
    pub fn replay(&self) -> &ReplayWindow {
        &self.replay
    }

    /// Replaces the replay window (restored state, tests).
    pub fn set_replay(&mut self, w: ReplayWindow) {
        self.replay = w;
    }

    /// Decapsulates the ESP packet `esp` (SPI to ICV) in place, RFC 4303 §3.4: length and SPI
    /// checks, sequence number inference and replay pre-check (§3.4.3), ICV verification and
    /// decryption (§3.4.4), trailer checks (§2.4), and only then the replay window update.
    pub fn decap(&mut self, esp: &mut [u8]) -> Result<Decapped, EspError> {
        decap(&self.cipher, self.spi, &mut self.replay, esp)
    }

    /// Decapsulates and checks the next header is a tunnel-mode one (4 or 41).
    pub fn decap_tunnel(&mut self, esp: &mut [u8]) -> Result<Decapped, EspError> {
        let d = self.decap(esp)?;
        match d.next_header {
            NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6 => Ok(d),
            nh => Err(EspError::UnsupportedNextHeader(nh)),
        }
    }
}

/// The decapsulation steps, usable with the cipher and the replay state held apart (the
/// datapath keeps the immutable cipher shared and the window per SA).
pub fn decap(
    cipher: &Cipher,
    spi: u32,
    replay: &mut ReplayWindow,
    esp: &mut [u8],
) -> Result<Decapped, EspError> {
    let min = min_len(cipher);
    if esp.len() < min {
        return Err(EspError::TooShort {
            len: esp.len(),
            min,
        });
    }
    let (got, seq_lo) = {
        let p = EspPacket::new_unchecked(&esp[..]);
        (p.spi(), p.seq())
    };
    if got != spi {
        return Err(EspError::BadSpi { expected: spi, got });
    }
    // RFC 4303 §3.4.3: infer the high half (Appendix A2.2) and reject duplicates and
    // too-old numbers before spending a cipher call on them.
    let seq = replay
        .infer(seq_lo)
        .ok_or(EspError::ReplayTooOld { seq: seq_lo as u64 })?;
    // Sequence number 0 is never sent (§3.3.3), but a packet carrying it is first held to
    // its ICV: a corrupted sequence field (or a wrong ESN high half) is an integrity failure,
    // and only an authentic 0 is a replay-window matter.
    if seq != 0 {
        replay.check(seq)?;
    }
    let hi = replay.esn().then_some((seq >> 32) as u32);
    cipher.open(esp, hi)?;
    if seq == 0 {
        return Err(EspError::ReplayTooOld { seq });
    }
    let text_start = ESP_HEADER_LEN + cipher.iv_len();
    let text_end = esp.len() - cipher.icv_len();
    let pad_len = esp[text_end - 2];
    let next_header = esp[text_end - 1];
    let available = text_end - 2 - text_start;
    if pad_len as usize > available {
        return Err(EspError::BadPadLength { pad_len, available });
    }
    let payload_end = text_end - 2 - pad_len as usize;
    // RFC 4303 §2.4: the receiver SHOULD check the padding is 1, 2, 3, ... when the default
    // padding scheme is in use; we always are.
    for (i, b) in esp[payload_end..text_end - 2].iter().enumerate() {
        if *b != (i + 1) as u8 {
            return Err(EspError::BadPadding);
        }
    }
    // Only now, with the ICV verified, may the window move (RFC 4303 §3.4.3).
    replay.commit(seq);
    Ok(Decapped {
        seq,
        next_header,
        pad_len,
        payload: text_start..payload_end,
    })
}
