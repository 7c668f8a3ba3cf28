//! The fixed IKE header (RFC 7296 §3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Initiator's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Responder's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Message ID                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Length                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use crate::codes::{ExchangeType, PayloadType};
use crate::error::ParseError;
use crate::reader::Reader;

/// Length of the IKE header.
pub const HEADER_LEN: usize = 28;

/// The major version this implementation speaks (RFC 7296 §3.1).
pub const MAJOR_VERSION: u8 = 2;

/// The header flags (RFC 7296 §3.1: `|X|X|R|V|I|X|X|X|`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// I: set by the original initiator of the IKE SA.
    pub const INITIATOR: Flags = Flags(0x08);
    /// V: the sender can speak a higher major version.
    pub const VERSION: Flags = Flags(0x10);
    /// R: this message is a response.
    pub const RESPONSE: Flags = Flags(0x20);
    const KNOWN: u8 = 0x38;

    /// Flags from a received octet. The X bits are dropped: RFC 7296 §3.1 says they MUST
    /// be ignored on receipt (and cleared when sending).
    pub const fn from_bits_truncate(bits: u8) -> Flags {
        Flags(bits & Self::KNOWN)
    }

    /// The wire octet.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True if every flag of `other` is set here.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The I flag.
    pub const fn is_initiator(self) -> bool {
        self.contains(Flags::INITIATOR)
    }

    /// The R flag.
    pub const fn is_response(self) -> bool {
        self.contains(Flags::RESPONSE)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut names = Vec::new();
        if self.is_initiator() {
            names.push("I");
        }
        if self.contains(Flags::VERSION) {
            names.push("V");
        }
        if self.is_response() {
            names.push("R");
        }
        write!(f, "Flags({})", names.join("|"))
    }
}

/// The IKE header without the fields that are derived when a message is emitted (Next
/// Payload, version, Length): those come back from [`IkeHeader::decode`] in
/// [`DecodedHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeHeader {
    /// IKE SA Initiator's SPI (never zero on a valid message, §3.1; not enforced here).
    pub spi_i: u64,
    /// IKE SA Responder's SPI (zero in the first IKE_SA_INIT request, §3.1).
    pub spi_r: u64,
    /// Exchange type.
    pub exchange_type: ExchangeType,
    /// Flags.
    pub flags: Flags,
    /// Message ID (§2.2).
    pub message_id: u32,
}

/// Everything the fixed header says, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedHeader {
    /// The header proper.
    pub header: IkeHeader,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Minor version: RFC 7296 §3.1 says it MUST be ignored on receipt; kept for logs.
    pub minor_version: u8,
    /// The Length field: the whole message, header included.
    pub length: u32,
}

impl IkeHeader {
    /// Decodes the first 28 bytes of `bytes`. Checks the major version (RFC 7296 §3.1:
    /// anything but 2 is rejected; the caller answers INVALID_MAJOR_VERSION only for a
    /// higher one, see [`ParseError::notify_type`]) and that Length covers at least the
    /// header. It does not check Length against `bytes.len()`: [`crate::Message::parse`]
    /// does, and an early dispatcher may want the SPIs of a truncated datagram.
    pub fn decode(bytes: &[u8]) -> Result<DecodedHeader, ParseError> {
        let mut r = Reader::new(bytes, "IKE header");
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = PayloadType(r.u8()?);
        let version = r.u8()?;
        let exchange_type = ExchangeType(r.u8()?);
        let flags = Flags::from_bits_truncate(r.u8()?);
        let message_id = r.u32()?;
        let length = r.u32()?;
        let (major, minor) = (version >> 4, version & 0x0f);
        if major != MAJOR_VERSION {
            return Err(ParseError::BadVersion { major, minor });
        }
        if (length as usize) < HEADER_LEN {
            return Err(ParseError::BadLength {
                what: "IKE message",
                length: length as usize,
            });
        }
        Ok(DecodedHeader {
            header: IkeHeader {
                spi_i,
                spi_r,
                exchange_type,
                flags,
                message_id,
            },
            next_payload,
            minor_version: minor,
            length,
        })
    }

    /// The 28 header bytes for a message of `length` bytes whose first payload is
    /// `next_payload`; version 2.0 (§3.1: minor version MUST be sent as 0).
    pub fn encode(&self, next_payload: PayloadType, length: u32) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.spi_i.to_be_bytes());
        out[8..16].copy_from_slice(&self.spi_r.to_be_bytes());
        out[16] = next_payload.0;
        out[17] = MAJOR_VERSION << 4;
        out[18] = self.exchange_type.0;
        out[19] = self.flags.bits();
        out[20..24].copy_from_slice(&self.message_id.to_be_bytes());
        out[24..28].copy_from_slice(&length.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IkeHeader {
        IkeHeader {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
        }
    }

    #[test]
    fn encode_layout() {
        let b = sample().encode(PayloadType::SA, 300);
        assert_eq!(&b[0..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[16], 33);
        assert_eq!(b[17], 0x20);
        assert_eq!(b[18], 34);
        assert_eq!(b[19], 0x08);
        assert_eq!(&b[24..28], &300u32.to_be_bytes());
        let d = IkeHeader::decode(&b).unwrap();
        assert_eq!(d.header, sample());
        assert_eq!(d.next_payload, PayloadType::SA);
        assert_eq!(d.length, 300);
    }

    #[test]
    fn x_bits_ignored_and_minor_version_kept() {
        let mut b = sample().encode(PayloadType::SA, 28);
        b[19] = 0xff;
        b[17] = 0x21;
        let d = IkeHeader::decode(&b).unwrap();
        assert_eq!(
            d.header.flags,
            Flags::INITIATOR | Flags::VERSION | Flags::RESPONSE
        );
        assert_eq!(d.minor_version, 1);
    }

    #[test]
    fn rejects_other_versions_and_short_lengths() {
        let mut b = sample().encode(PayloadType::SA, 28);
        b[17] = 0x10;
        assert_eq!(
            IkeHeader::decode(&b),
            Err(ParseError::BadVersion { major: 1, minor: 0 })
        );
        b[17] = 0x30;
        assert!(matches!(
            IkeHeader::decode(&b),
            Err(ParseError::BadVersion { major: 3, .. })
        ));
        let b = sample().encode(PayloadType::SA, 27);
        assert!(matches!(
            IkeHeader::decode(&b),
            Err(ParseError::BadLength { .. })
        ));
        assert!(matches!(
            IkeHeader::decode(&b[..20]),
            Err(ParseError::Truncated { .. })
        ));
    }
}
