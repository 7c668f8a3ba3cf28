//! A whole IKE message: header plus payload chain (RFC 7296 §3).

use crate::codes::PayloadType;
use crate::error::{EmitError, ParseError};
use crate::header::{IkeHeader, HEADER_LEN};
use crate::notify::NotifyType;
use crate::payload::{emit_payloads, parse_payloads, Encrypted, Notify, Payload, RawPayloads};

/// An IKE message. An SK payload stays encrypted ([`Payload::Encrypted`]) until
/// [`crate::crypto::SkCipher::open`] decrypts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header (Next Payload and Length are derived on emit).
    pub header: IkeHeader,
    /// The payloads in order.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// A message with no payloads yet.
    pub fn new(header: IkeHeader) -> Self {
        Message {
            header,
            payloads: Vec::new(),
        }
    }

    /// Parses a whole datagram (without the RFC 3948 non-ESP marker). The Length field
    /// must equal `bytes.len()`; the chain must end exactly at the end.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let d = IkeHeader::decode(bytes)?;
        let body = message_body(bytes, d.length)?;
        Ok(Message {
            header: d.header,
            payloads: parse_payloads(d.next_payload, body)?,
        })
    }

    /// The raw payload walk over a datagram (checks header and Length like
    /// [`Message::parse`]).
    pub fn raw_payloads(bytes: &[u8]) -> Result<RawPayloads<'_>, ParseError> {
        let d = IkeHeader::decode(bytes)?;
        let body = message_body(bytes, d.length)?;
        Ok(RawPayloads::new(d.next_payload, body))
    }

    /// Serializes the message.
    pub fn try_emit(&self) -> Result<Vec<u8>, EmitError> {
        let mut out = vec![0u8; HEADER_LEN];
        let first = emit_payloads(&self.payloads, &mut out)?;
        let len = u32::try_from(out.len()).map_err(|_| EmitError::TooLong {
            what: "IKE message length",
            len: out.len(),
            max: u32::MAX as usize,
        })?;
        out[..HEADER_LEN].copy_from_slice(&self.header.encode(first, len));
        Ok(out)
    }

    /// Serializes the message.
    ///
    /// # Panics
    /// If a field does not fit its wire width (a payload over 65535 bytes, an SPI over 255
    /// bytes, ...) or an Encrypted payload is not last: local programming errors. Use
    /// [`Message::try_emit`] to get them as [`EmitError`].
    pub fn emit(&self) -> Vec<u8> {
        match self.try_emit() {
            Ok(v) => v,
            Err(e) => panic!("IKE message cannot be emitted: {e}"),
        }
    }

    /// The Encrypted payload, if any.
    pub fn encrypted(&self) -> Option<&Encrypted> {
        self.payloads.iter().find_map(|p| match p {
            Payload::Encrypted(e) => Some(e),
            _ => None,
        })
    }

    /// All Notify payloads.
    pub fn notifies(&self) -> impl Iterator<Item = &Notify> {
        self.payloads.iter().filter_map(|p| match p {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
    }

    /// The first Notify of a type.
    pub fn notify(&self, t: NotifyType) -> Option<&Notify> {
        self.notifies().find(|n| n.notify_type == t)
    }

    /// The first payload of a type.
    pub fn payload(&self, t: PayloadType) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.payload_type() == t)
    }
}

/// The bytes after the header, once Length is checked against the datagram.
pub(crate) fn message_body(bytes: &[u8], length: u32) -> Result<&[u8], ParseError> {
    let length = length as usize;
    if length > bytes.len() {
        return Err(ParseError::Truncated {
            what: "IKE message",
            needed: length,
            available: bytes.len(),
        });
    }
    if length < bytes.len() {
        return Err(ParseError::TrailingData {
            what: "IKE message",
            count: bytes.len() - length,
        });
    }
    Ok(&bytes[HEADER_LEN..length])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::ExchangeType;
    use crate::header::Flags;
    use crate::payload::KePayload;
    use crate::proposal::{offer, ProposalSpec};
    use crate::transform::DhGroup;

    fn init_request() -> Message {
        let spec = ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap();
        Message {
            header: IkeHeader {
                spi_i: 0x1122_3344_5566_7788,
                spi_r: 0,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::INITIATOR,
                message_id: 0,
            },
            payloads: vec![
                Payload::Sa(offer(&[spec], &[])),
                Payload::Ke(KePayload {
                    group: DhGroup::CURVE25519,
                    data: vec![9; 32],
                }),
                Payload::Nonce(vec![1; 32]),
                Payload::Notify(Notify::new(
                    NotifyType::NAT_DETECTION_SOURCE_IP,
                    vec![2; 20],
                )),
            ],
        }
    }

    #[test]
    fn init_request_round_trip() {
        let m = init_request();
        let b = m.emit();
        assert_eq!(
            b.len() as u32,
            u32::from_be_bytes(b[24..28].try_into().unwrap())
        );
        assert_eq!(b[16], PayloadType::SA.0);
        let back = Message::parse(&b).unwrap();
        assert_eq!(back, m);
        assert!(back.notify(NotifyType::NAT_DETECTION_SOURCE_IP).is_some());
        assert!(back.payload(PayloadType::KE).is_some());
        assert_eq!(Message::raw_payloads(&b).unwrap().count(), 4);
    }

    #[test]
    fn length_must_match_datagram() {
        let b = init_request().emit();
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            Message::parse(&longer),
            Err(ParseError::TrailingData { .. })
        ));
        assert!(matches!(
            Message::parse(&b[..b.len() - 1]),
            Err(ParseError::Truncated { .. })
        ));
        // A payload length that runs past the message length.
        let mut bad = b.clone();
        bad[28 + 2] = 0xff;
        assert!(matches!(
            Message::parse(&bad),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn empty_message_is_valid() {
        // An INFORMATIONAL with no payloads (outside SK it would not be protected, but the
        // codec does not judge that).
        let m = Message::new(IkeHeader {
            spi_i: 1,
            spi_r: 2,
            exchange_type: ExchangeType::INFORMATIONAL,
            flags: Flags::RESPONSE,
            message_id: 7,
        });
        let b = m.emit();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(Message::parse(&b).unwrap(), m);
    }
}
