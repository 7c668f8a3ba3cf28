//! The `--sa` SPEC: one SA written as comma-separated `key=value` pairs, e.g.
//! `spi=0xc0de086c,alg=aes-gcm-128,key=<40 hex digits>`. See `docs/esp-tool.md` for the
//! reference; this module only turns the text into [`SaSpec`] and refuses anything that could
//! not key an SA, before any packet is read.

use crate::hexin::{self, HexError, Spi};
use esplab_esp::replay::DEFAULT_WINDOW;
use esplab_esp::{
    Algorithm, Backend, Cipher, InboundSa, KeyError, OutboundSa, ReplayWindow, SaParams,
};

/// The keys a SPEC may hold, for error messages.
const KEYS: &str = "spi, alg, key, integ-key, esn, seq-high, window, backend";

/// Why a SPEC was refused. Displayed after `--sa: ` as a one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A comma-separated item without `=`.
    #[error("{0:?}: expected key=value")]
    NotKeyValue(String),
    /// A key this tool does not know.
    #[error("unknown key {0:?} (expected one of: {KEYS})")]
    UnknownKey(String),
    /// The same key twice.
    #[error("key {0:?} given twice")]
    Duplicate(&'static str),
    /// A required key is absent.
    #[error("missing {0}=")]
    Missing(&'static str),
    /// A number that does not parse or is out of range.
    #[error("{key}={value:?}: {why}")]
    BadNumber {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A boolean that is not true/false.
    #[error("{key}={value:?}: expected true or false")]
    BadBool {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// Malformed hex in a key.
    #[error("{key}: {source}")]
    Hex {
        /// The key.
        key: &'static str,
        /// The decoding error.
        source: HexError,
    },
    /// An SPI that never appears on the wire.
    #[error("spi {0}: SPI values 0 to 255 are reserved (RFC 4303 §2.1)")]
    ReservedSpi(Spi),
    /// `backend=` other than ring or rustcrypto.
    #[error("backend={0:?}: expected ring or rustcrypto")]
    BadBackend(String),
    /// `seq-high` without ESN (the high half exists only with ESN).
    #[error("seq-high needs esn=true (without ESN the sequence number has no high half)")]
    SeqHighWithoutEsn,
    /// The engine refused the keys, algorithm or window.
    #[error("{0}{hint}", hint = key_hint(.0))]
    Key(KeyError),
}

/// The usual mistake with GCM keys is leaving the salt off; say what the bytes are.
fn key_hint(e: &KeyError) -> &'static str {
    match e {
        KeyError::EncKeyLength { alg, .. } if alg.starts_with("aes-gcm") => {
            " (key= is the AES key followed by the 4-byte salt, RFC 4106 §8.1)"
        }
        _ => "",
    }
}

/// One parsed `--sa`.
#[derive(Clone)]
pub struct SaSpec {
    /// Engine parameters (SPI, algorithm, keys, ESN, replay window).
    pub params: SaParams,
    /// With ESN: the high half of the first received packet's sequence number.
    pub seq_high: u32,
}

impl core::fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SaParams' Debug never prints keys.
        f.debug_struct("SaSpec")
            .field("params", &self.params)
            .field("seq_high", &self.seq_high)
            .finish()
    }
}

impl SaSpec {
    /// Parses a SPEC and checks it can key an SA (key lengths, window range).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut spi = None;
        let mut alg = None;
        let mut key = None;
        let mut integ = None;
        let mut esn = None;
        let mut seq_high = None;
        let mut window = None;
        let mut backend = None;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(item.to_string()))?;
            let (k, v) = (k.trim(), v.trim());
            match k.to_ascii_lowercase().as_str() {
                "spi" => set(&mut spi, "spi", parse_u32("spi", v)?)?,
                "alg" => set(
                    &mut alg,
                    "alg",
                    Algorithm::from_name(v).map_err(SpecError::Key)?,
                )?,
                "key" => set(&mut key, "key", parse_hex("key", v)?)?,
                "integ-key" => set(&mut integ, "integ-key", parse_hex("integ-key", v)?)?,
                "esn" => set(&mut esn, "esn", parse_bool("esn", v)?)?,
                "seq-high" => set(&mut seq_high, "seq-high", parse_u32("seq-high", v)?)?,
                "window" => set(&mut window, "window", parse_u32("window", v)?)?,
                "backend" => set(&mut backend, "backend", parse_backend(v)?)?,
                _ => return Err(SpecError::UnknownKey(k.to_string())),
            }
        }
        let spi = spi.ok_or(SpecError::Missing("spi"))?;
        // RFC 4303 §2.1: 1..=255 are reserved by IANA and 0 is for local use only; no
        // peer puts them on the wire.
        if spi <= 255 {
            return Err(SpecError::ReservedSpi(Spi(spi)));
        }
        let alg = alg.ok_or(SpecError::Missing("alg"))?;
        let key = key.ok_or(SpecError::Missing("key"))?;
        let esn = esn.unwrap_or(false);
        if seq_high.is_some() && !esn {
            return Err(SpecError::SeqHighWithoutEsn);
        }
        let mut params = SaParams::new(spi, alg, &key, integ.as_deref().unwrap_or(&[]));
        params.esn = esn;
        params.backend = backend.unwrap_or_default();
        params.replay_window = window.unwrap_or(DEFAULT_WINDOW);
        let spec = SaSpec {
            params,
            seq_high: seq_high.unwrap_or(0),
        };
        // Key now, so a bad key is reported before any packet is read.
        spec.inbound()?;
        Ok(spec)
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.params.spi
    }

    /// A receiving SA whose replay window starts fresh at `seq-high`.
    pub fn inbound(&self) -> Result<InboundSa, SpecError> {
        let p = &self.params;
        let cipher =
            Cipher::new(p.alg, p.backend, &p.enc_key, &p.integ_key).map_err(SpecError::Key)?;
        let window = ReplayWindow::with_initial_high(p.replay_window, p.esn, self.seq_high)
            .map_err(SpecError::Key)?;
        Ok(InboundSa::with_parts(p.spi, cipher, window))
    }

    /// A sending SA (its sequence counter is set by the caller).
    pub fn outbound(&self) -> Result<OutboundSa, SpecError> {
        OutboundSa::new(&self.params).map_err(SpecError::Key)
    }
}

fn set<T>(slot: &mut Option<T>, key: &'static str, v: T) -> Result<(), SpecError> {
    if slot.replace(v).is_some() {
        return Err(SpecError::Duplicate(key));
    }
    Ok(())
}

/// Decimal or `0x` hex.
pub fn parse_u64(key: &'static str, v: &str) -> Result<u64, SpecError> {
    let bad = |why| SpecError::BadNumber {
        key,
        value: v.to_string(),
        why,
    };
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad("expected a decimal or 0x-hex number"));
    }
    u64::from_str_radix(digits, radix).map_err(|_| bad("too large"))
}

fn parse_u32(key: &'static str, v: &str) -> Result<u32, SpecError> {
    let n = parse_u64(key, v)?;
    u32::try_from(n).map_err(|_| SpecError::BadNumber {
        key,
        value: v.to_string(),
        why: "must fit in 32 bits",
    })
}

fn parse_hex(key: &'static str, v: &str) -> Result<Vec<u8>, SpecError> {
    hexin::decode(v).map_err(|source| SpecError::Hex { key, source })
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, SpecError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(SpecError::BadBool {
            key,
            value: v.to_string(),
        }),
    }
}

fn parse_backend(v: &str) -> Result<Backend, SpecError> {
    match v.to_ascii_lowercase().as_str() {
        "ring" => Ok(Backend::Ring),
        "rustcrypto" | "rust-crypto" => Ok(Backend::RustCrypto),
        _ => Err(SpecError::BadBackend(v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCM_KEY: &str = "c69d16455327789af9a9161ac6b3985d5123f20b";
    const CBC_KEY: &str = "d96b9b5c956a8a53461eb7d276ab8468";
    const INTEG: &str = "3ee220f693eef40d6e8b7d725503237c45f4a21ba2211282596ebe42801e15f8";

    fn err(s: &str) -> String {
        SaSpec::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn gcm_minimal() {
        let s = SaSpec::parse(&format!("spi=0xc0de086c,alg=aes-gcm-128,key={GCM_KEY}")).unwrap();
        assert_eq!(s.spi(), 0xc0de086c);
        assert_eq!(s.params.alg, Algorithm::AesGcm128);
        assert!(!s.params.esn);
        assert_eq!(s.params.replay_window, 64);
        assert_eq!(s.params.backend, Backend::Ring);
        assert_eq!(s.seq_high, 0);
    }

    #[test]
    fn cbc_all_keys_decimal_spi_and_spaces() {
        let s = SaSpec::parse(&format!(
            " spi=3235807549 , alg=aes-cbc-128-hmac-sha256, key={CBC_KEY},integ-key={INTEG},\
             esn=true,seq-high=0x1,window=0,backend=rustcrypto,"
        ))
        .unwrap();
        assert_eq!(s.spi(), 0xc0de813d);
        assert!(s.params.esn);
        assert_eq!(s.seq_high, 1);
        assert_eq!(s.params.replay_window, 0);
        assert_eq!(s.params.backend, Backend::RustCrypto);
        assert_eq!(s.inbound().unwrap().replay().infer(5), Some((1 << 32) | 5));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            err("spi=0x1000,alg=aes-gcm-128,key=00112233445566778899aabbccddeeff"),
            "aes-gcm-128: encryption key must be 20 bytes, got 16 \
             (key= is the AES key followed by the 4-byte salt, RFC 4106 §8.1)"
        );
        assert!(err(&format!("spi=0x1000,alg=aes-gcm-129,key={GCM_KEY}"))
            .starts_with("unknown algorithm \"aes-gcm-129\""));
        assert_eq!(err("spi=0x1000,alg=aes-gcm-128"), "missing key=");
        assert_eq!(
            err(&format!("alg=aes-gcm-128,key={GCM_KEY}")),
            "missing spi="
        );
        assert_eq!(err(&format!("spi=0x1000,key={GCM_KEY}")), "missing alg=");
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-cbc-128-hmac-sha256,key={CBC_KEY}"
            )),
            "aes-cbc-128-hmac-sha256: an integrity key is required"
        );
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-gcm-128,key={GCM_KEY},integ-key={INTEG}"
            )),
            "aes-gcm-128: combined-mode algorithm takes no integrity key"
        );
        assert_eq!(
            err("spi=0x1000,alg=aes-gcm-128,key=zz"),
            "key: invalid hex character 'z' at position 0"
        );
        assert_eq!(err("spi"), "\"spi\": expected key=value");
        assert!(err("spi=1,foo=2").starts_with("unknown key \"foo\""));
        assert_eq!(err("spi=0x1000,spi=0x1001"), "key \"spi\" given twice");
        assert_eq!(
            err(&format!("spi=0x100000000,alg=aes-gcm-128,key={GCM_KEY}")),
            "spi=\"0x100000000\": must fit in 32 bits"
        );
        assert_eq!(
            err(&format!("spi=12ab,alg=aes-gcm-128,key={GCM_KEY}")),
            "spi=\"12ab\": expected a decimal or 0x-hex number"
        );
        assert_eq!(
            err(&format!("spi=255,alg=aes-gcm-128,key={GCM_KEY}")),
            "spi 0x000000ff: SPI values 0 to 255 are reserved (RFC 4303 §2.1)"
        );
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-gcm-128,key={GCM_KEY},esn=maybe"
            )),
            "esn=\"maybe\": expected true or false"
        );
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-gcm-128,key={GCM_KEY},seq-high=1"
            )),
            "seq-high needs esn=true (without ESN the sequence number has no high half)"
        );
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-gcm-128,key={GCM_KEY},window=70000"
            )),
            "replay window must be between 0 and 65536, got 70000"
        );
        assert_eq!(
            err(&format!(
                "spi=0x1000,alg=aes-gcm-128,key={GCM_KEY},backend=openssl"
            )),
            "backend=\"openssl\": expected ring or rustcrypto"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("n", "0x10").unwrap(), 16);
        assert_eq!(parse_u64("n", "18446744073709551615").unwrap(), u64::MAX);
        assert!(parse_u64("n", "18446744073709551616").is_err());
        assert!(parse_u64("n", "-1").is_err());
        assert!(parse_u64("n", "+1").is_err());
        assert!(parse_u64("n", "").is_err());
    }
}
