//! Hex input as people paste it: an optional `0x` prefix, and whitespace, `:` or `-` between
//! bytes (Wireshark's "Copy as Hex Stream", tcpdump -X columns without the offsets, colon
//! separated dumps). Anything else is refused with the position of the first bad character.

use core::fmt;

/// Why a hex string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// No digits at all.
    #[error("empty hex string")]
    Empty,
    /// A character that is neither a hex digit nor an accepted separator.
    #[error("invalid hex character {ch:?} at position {pos}")]
    BadChar {
        /// The character.
        ch: char,
        /// Its 0-based character position in the input.
        pos: usize,
    },
    /// An odd number of digits (a half byte somewhere).
    #[error("odd number of hex digits ({0})")]
    OddLength(usize),
}

/// Decodes `s` to bytes (see the module doc for the accepted forms).
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let t = s.trim();
    let (skip, body) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(rest) => (2, rest),
        None => (0, t),
    };
    let lead = s.len() - s.trim_start().len();
    let mut out = Vec::with_capacity(body.len() / 2);
    let mut high: Option<u8> = None;
    let mut digits = 0usize;
    for (pos, ch) in body.chars().enumerate() {
        if ch.is_ascii_whitespace() || ch == ':' || ch == '-' {
            continue;
        }
        let v = ch.to_digit(16).ok_or(HexError::BadChar {
            ch,
            pos: pos + skip + lead,
        })? as u8;
        digits += 1;
        high = match high {
            None => Some(v),
            Some(h) => {
                out.push(h << 4 | v);
                None
            }
        };
    }
    if digits == 0 {
        return Err(HexError::Empty);
    }
    if high.is_some() {
        return Err(HexError::OddLength(digits));
    }
    Ok(out)
}

/// Lowercase hex of `bytes`, no separators.
pub fn encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Formats an SPI the way every output of this tool does: `0x` and 8 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spi(pub u32);

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        assert_eq!(decode("c0de086c").unwrap(), [0xc0, 0xde, 0x08, 0x6c]);
        assert_eq!(decode("0xC0DE").unwrap(), [0xc0, 0xde]);
        assert_eq!(decode(" c0:de 08-6c\n").unwrap(), [0xc0, 0xde, 0x08, 0x6c]);
    }

    #[test]
    fn refused_forms() {
        assert_eq!(decode(""), Err(HexError::Empty));
        assert_eq!(decode("0x"), Err(HexError::Empty));
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(decode("0xabzz"), Err(HexError::BadChar { ch: 'z', pos: 4 }));
        assert_eq!(decode(" é"), Err(HexError::BadChar { ch: 'é', pos: 1 }));
    }

    #[test]
    fn spi_format() {
        assert_eq!(Spi(0xc0de).to_string(), "0x0000c0de");
    }
}
