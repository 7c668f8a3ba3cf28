//! The Security Association payload: proposals, transforms, attributes (RFC 7296 §3.3).
//!
//! This module is the wire form only; what the values mean and how a responder chooses
//! among them lives in [`crate::transform`] and [`crate::proposal`].

use crate::codes::{registry, ProtocolId};
use crate::error::{EmitError, ParseError};
use crate::reader::{fit_u16, fit_u8, patch_len16, Reader};

registry! {
    /// Transform type (RFC 7296 §3.3.2).
    TransformType(u8) {
        /// Encryption algorithm (ENCR).
        ENCR = 1,
        /// Pseudorandom function (PRF).
        PRF = 2,
        /// Integrity algorithm (INTEG).
        INTEG = 3,
        /// Diffie-Hellman group (D-H; "Key Exchange Method" since RFC 9370).
        DH = 4,
        /// Extended Sequence Numbers (ESN).
        ESN = 5,
    }
}

/// Attribute type of the Key Length attribute (RFC 7296 §3.3.5), always in TV form.
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Last Substruc value of a proposal followed by another (RFC 7296 §3.3.1).
const MORE_PROPOSALS: u8 = 2;
/// Last Substruc value of a transform followed by another (RFC 7296 §3.3.2).
const MORE_TRANSFORMS: u8 = 3;
/// The Attribute Format bit: set = TV (value in the length field), clear = TLV (§3.3.5).
const AF_BIT: u16 = 0x8000;

/// The SA payload: one or more proposals (RFC 7296 §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SaPayload {
    /// Proposals in the order sent (the initiator's preference order, §2.7).
    pub proposals: Vec<Proposal>,
}

/// A Proposal substructure (RFC 7296 §3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal Num: 1, 2, ... in an offer; the accepted number in a reply (§3.3.1).
    pub number: u8,
    /// IKE, AH or ESP.
    pub protocol_id: ProtocolId,
    /// The sender's SPI: empty in IKE_SA_INIT, 8 octets when rekeying an IKE SA, 4 for
    /// ESP/AH (§3.3.1).
    pub spi: Vec<u8>,
    /// Transforms in the order sent.
    pub transforms: Vec<Transform>,
}

/// A Transform substructure (RFC 7296 §3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// Transform type.
    pub transform_type: TransformType,
    /// Transform ID within the type (see [`crate::transform`] for the known ones).
    pub transform_id: u16,
    /// Attributes (in practice only Key Length).
    pub attributes: Vec<Attribute>,
}

/// A transform attribute (RFC 7296 §3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute type (15 bits; the AF bit is implied by `value`).
    pub attr_type: u16,
    /// The value.
    pub value: AttributeValue,
}

/// The two attribute encodings (RFC 7296 §3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// AF = 1: a two-octet value in place of the length (Type/Value).
    Tv(u16),
    /// AF = 0: a length and a variable value (Type/Length/Value).
    Tlv(Vec<u8>),
}

impl Transform {
    /// A transform without attributes.
    pub fn new(transform_type: TransformType, transform_id: u16) -> Self {
        Transform {
            transform_type,
            transform_id,
            attributes: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute (in bits; §3.3.5).
    pub fn with_key_length(transform_type: TransformType, transform_id: u16, bits: u16) -> Self {
        Transform {
            transform_type,
            transform_id,
            attributes: vec![Attribute {
                attr_type: ATTR_KEY_LENGTH,
                value: AttributeValue::Tv(bits),
            }],
        }
    }

    /// The Key Length attribute, if present in TV form.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a.value {
            AttributeValue::Tv(v) if a.attr_type == ATTR_KEY_LENGTH => Some(v),
            _ => None,
        })
    }

    /// True if every attribute is one this crate understands (only Key Length in TV
    /// form). RFC 7296 §3.3.6: a transform with an attribute the responder does not
    /// understand is not acceptable.
    pub fn attributes_understood(&self) -> bool {
        self.attributes
            .iter()
            .all(|a| a.attr_type == ATTR_KEY_LENGTH && matches!(a.value, AttributeValue::Tv(_)))
    }
}

impl SaPayload {
    /// Parses the SA payload body (after the generic payload header).
    pub fn parse(body: &[u8]) -> Result<SaPayload, ParseError> {
        let mut r = Reader::new(body, "SA payload");
        let mut proposals = Vec::new();
        loop {
            let last = r.u8()?;
            let _reserved = r.u8()?;
            let len = r.u16()? as usize;
            // Fixed part: Last Substruc, RESERVED, Length, Num, Protocol, SPI Size, #Transforms.
            if len < 8 {
                return Err(ParseError::BadLength {
                    what: "proposal",
                    length: len,
                });
            }
            let mut p = Reader::new(r.take(len - 4)?, "proposal");
            proposals.push(parse_proposal(&mut p)?);
            // RFC 7296 §3.3.1: Last Substruc is 0 on the last proposal and 2 otherwise;
            // it must agree with what the length fields say.
            match (last, r.is_empty()) {
                (0, true) => break,
                (0, false) => {
                    return Err(ParseError::TrailingData {
                        what: "SA payload",
                        count: r.remaining(),
                    })
                }
                (MORE_PROPOSALS, false) => continue,
                (MORE_PROPOSALS, true) => {
                    return Err(ParseError::Truncated {
                        what: "SA payload (another proposal announced)",
                        needed: 8,
                        available: 0,
                    })
                }
                (other, _) => {
                    return Err(ParseError::InvalidField {
                        field: "proposal Last Substruc",
                        value: other.into(),
                    })
                }
            }
        }
        Ok(SaPayload { proposals })
    }

    /// Appends the SA payload body.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        for (i, p) in self.proposals.iter().enumerate() {
            let start = out.len();
            let last = if i + 1 == self.proposals.len() {
                0
            } else {
                MORE_PROPOSALS
            };
            out.extend_from_slice(&[last, 0, 0, 0]);
            out.push(p.number);
            out.push(p.protocol_id.0);
            out.push(fit_u8(p.spi.len(), "proposal SPI size")?);
            out.push(fit_u8(p.transforms.len(), "number of transforms")?);
            out.extend_from_slice(&p.spi);
            for (j, t) in p.transforms.iter().enumerate() {
                let tstart = out.len();
                let tlast = if j + 1 == p.transforms.len() {
                    0
                } else {
                    MORE_TRANSFORMS
                };
                out.extend_from_slice(&[tlast, 0, 0, 0, t.transform_type.0, 0]);
                out.extend_from_slice(&t.transform_id.to_be_bytes());
                for a in &t.attributes {
                    if a.attr_type & AF_BIT != 0 {
                        return Err(EmitError::InvalidField {
                            field: "attribute type",
                            value: a.attr_type.into(),
                        });
                    }
                    match &a.value {
                        AttributeValue::Tv(v) => {
                            out.extend_from_slice(&(a.attr_type | AF_BIT).to_be_bytes());
                            out.extend_from_slice(&v.to_be_bytes());
                        }
                        AttributeValue::Tlv(v) => {
                            out.extend_from_slice(&a.attr_type.to_be_bytes());
                            out.extend_from_slice(
                                &fit_u16(v.len(), "attribute length")?.to_be_bytes(),
                            );
                            out.extend_from_slice(v);
                        }
                    }
                }
                patch_len16(out, tstart, 2, "transform length")?;
            }
            patch_len16(out, start, 2, "proposal length")?;
        }
        Ok(())
    }
}

fn parse_proposal(p: &mut Reader<'_>) -> Result<Proposal, ParseError> {
    let number = p.u8()?;
    let protocol_id = ProtocolId(p.u8()?);
    let spi_size = p.u8()? as usize;
    let count = p.u8()? as usize;
    let spi = p.take(spi_size)?.to_vec();
    let mut transforms = Vec::with_capacity(count);
    for i in 0..count {
        if p.is_empty() {
            return Err(ParseError::CountMismatch {
                what: "transforms in proposal",
                declared: count,
                found: i,
            });
        }
        let last = p.u8()?;
        let _reserved = p.u8()?;
        let len = p.u16()? as usize;
        if len < 8 {
            return Err(ParseError::BadLength {
                what: "transform",
                length: len,
            });
        }
        let mut t = Reader::new(p.take(len - 4)?, "transform");
        let transform_type = TransformType(t.u8()?);
        let _reserved = t.u8()?;
        let transform_id = t.u16()?;
        let attributes = parse_attributes(&mut t)?;
        // RFC 7296 §3.3.2: Last Substruc is 0 on the last transform and 3 otherwise.
        let want = if i + 1 == count { 0 } else { MORE_TRANSFORMS };
        if last != want {
            return Err(ParseError::InvalidField {
                field: "transform Last Substruc",
                value: last.into(),
            });
        }
        transforms.push(Transform {
            transform_type,
            transform_id,
            attributes,
        });
    }
    if !p.is_empty() {
        // More bytes than the announced transforms: the count field lies.
        return Err(ParseError::TrailingData {
            what: "proposal (after the announced transforms)",
            count: p.remaining(),
        });
    }
    Ok(Proposal {
        number,
        protocol_id,
        spi,
        transforms,
    })
}

fn parse_attributes(t: &mut Reader<'_>) -> Result<Vec<Attribute>, ParseError> {
    let mut attributes = Vec::new();
    while !t.is_empty() {
        let raw_type = t.u16()?;
        let value = if raw_type & AF_BIT != 0 {
            AttributeValue::Tv(t.u16()?)
        } else {
            let len = t.u16()? as usize;
            AttributeValue::Tlv(t.take(len)?.to_vec())
        };
        attributes.push(Attribute {
            attr_type: raw_type & !AF_BIT,
            value,
        });
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IKE proposal as strongSwan sends it for aes128gcm16-prfsha256-x25519, written
    /// out by hand from RFC 7296 §3.3.1/§3.3.2.
    const ONE_PROPOSAL: [u8; 36] = [
        0, 0, 0, 36, // last, reserved, proposal length
        1, 1, 0, 3, // num 1, IKE, SPI size 0, 3 transforms
        3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 0, 128, // ENCR AES_GCM_16, key length 128
        3, 0, 0, 8, 2, 0, 0, 5, // PRF HMAC_SHA2_256
        0, 0, 0, 8, 4, 0, 0, 31, // DH 31
    ];

    #[test]
    fn parses_hand_built_proposal() {
        let sa = SaPayload::parse(&ONE_PROPOSAL).unwrap();
        assert_eq!(sa.proposals.len(), 1);
        let p = &sa.proposals[0];
        assert_eq!(p.number, 1);
        assert_eq!(p.protocol_id, ProtocolId::IKE);
        assert!(p.spi.is_empty());
        assert_eq!(p.transforms.len(), 3);
        assert_eq!(p.transforms[0].key_length(), Some(128));
        assert_eq!(p.transforms[2].transform_type, TransformType::DH);
        assert_eq!(p.transforms[2].transform_id, 31);
        let mut out = Vec::new();
        sa.emit(&mut out).unwrap();
        assert_eq!(out, ONE_PROPOSAL);
    }

    #[test]
    fn rejects_inconsistent_structure() {
        let b = ONE_PROPOSAL.to_vec();
        // Wrong Last Substruc on the first transform.
        let mut bad = b.clone();
        bad[8] = 0;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::InvalidField { .. })
        ));
        // Proposal says "more follow" but nothing does.
        let mut bad = b.clone();
        bad[0] = 2;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::Truncated { .. })
        ));
        // Transform count too high: the last transform's Last Substruc (0) then
        // disagrees with the count before the bytes run out.
        let mut bad = b.clone();
        bad[7] = 4;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::InvalidField { .. })
        ));
        // ... and with the Last Substruc saying "more", the missing transform is noticed.
        let mut bad = b.clone();
        bad[7] = 4;
        bad[28] = 3;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::CountMismatch { .. })
        ));
        // Transform count too low.
        let mut bad = b.clone();
        bad[7] = 2;
        assert!(SaPayload::parse(&bad).is_err());
        // Proposal length beyond the payload.
        let mut bad = b.clone();
        bad[3] = 200;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::Truncated { .. })
        ));
        // Proposal length below its fixed part.
        let mut bad = b;
        bad[3] = 4;
        assert!(matches!(
            SaPayload::parse(&bad),
            Err(ParseError::BadLength { .. })
        ));
        assert!(SaPayload::parse(&[]).is_err());
    }

    #[test]
    fn tlv_attribute_round_trip_and_understood() {
        let t = Transform {
            transform_type: TransformType::ENCR,
            transform_id: 12,
            attributes: vec![
                Attribute {
                    attr_type: ATTR_KEY_LENGTH,
                    value: AttributeValue::Tv(256),
                },
                Attribute {
                    attr_type: 99,
                    value: AttributeValue::Tlv(vec![1, 2, 3]),
                },
            ],
        };
        assert!(!t.attributes_understood());
        let sa = SaPayload {
            proposals: vec![Proposal {
                number: 1,
                protocol_id: ProtocolId::ESP,
                spi: vec![1, 2, 3, 4],
                transforms: vec![t],
            }],
        };
        let mut out = Vec::new();
        sa.emit(&mut out).unwrap();
        assert_eq!(SaPayload::parse(&out).unwrap(), sa);
    }
}
