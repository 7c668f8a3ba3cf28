//! Payloads and the payload chain (RFC 7296 §3.2, §3.4–§3.16).
//!
//! Two layers: [`RawPayloads`] walks a chain of generic payload headers and yields each
//! body as a slice (checking every length against the buffer), and [`Payload::from_raw`]
//! turns one body into a typed value. The exchange layer needs the raw layer too: AUTH is
//! computed over the ID payload body exactly as received (§2.15).

use crate::codes::{AuthMethod, CfgType, IdType, PayloadType, ProtocolId};
use crate::error::{EmitError, ParseError};
use crate::notify::NotifyType;
use crate::reader::{fit_u16, fit_u8, patch_len16, Reader};
use crate::sa::SaPayload;
use crate::transform::DhGroup;
use crate::ts::TsPayload;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of the generic payload header (§3.2).
pub const GENERIC_HEADER_LEN: usize = 4;

/// The critical bit of the generic payload header (§3.2).
const CRITICAL: u8 = 0x80;

/// Minimum and maximum Nonce Data length (RFC 7296 §3.9).
pub const NONCE_MIN: usize = 16;
/// See [`NONCE_MIN`].
pub const NONCE_MAX: usize = 256;

/// A typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Security Association (§3.3).
    Sa(SaPayload),
    /// Key Exchange (§3.4).
    Ke(KePayload),
    /// Identification - Initiator (§3.5).
    IdI(Identity),
    /// Identification - Responder (§3.5).
    IdR(Identity),
    /// Certificate (§3.6), opaque.
    Cert(CertPayload),
    /// Certificate Request (§3.7), opaque.
    CertReq(CertPayload),
    /// Authentication (§3.8).
    Auth(AuthPayload),
    /// Nonce Data (§3.9), 16 to 256 octets.
    Nonce(Vec<u8>),
    /// Notify (§3.10).
    Notify(Notify),
    /// Delete (§3.11).
    Delete(Delete),
    /// Vendor ID (§3.12).
    VendorId(Vec<u8>),
    /// Traffic Selector - Initiator (§3.13).
    TsI(TsPayload),
    /// Traffic Selector - Responder (§3.13).
    TsR(TsPayload),
    /// Encrypted and Authenticated, still encrypted (§3.14); see [`crate::crypto::SkCipher`].
    Encrypted(Encrypted),
    /// Configuration (§3.15), attributes kept opaque.
    Cp(CpPayload),
    /// EAP (§3.16), opaque.
    Eap(Vec<u8>),
    /// A payload type this codec does not know, with the critical bit clear: kept so a
    /// relay can re-emit it, skipped by everything else (§2.5).
    Unknown {
        /// The payload type.
        payload_type: PayloadType,
        /// The body.
        data: Vec<u8>,
    },
}

/// Key Exchange payload body (§3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KePayload {
    /// Diffie-Hellman Group Num; must match the DH transform of the proposal (§3.4).
    pub group: DhGroup,
    /// Key Exchange Data (for group 31: the 32-octet X25519 public value, RFC 8031 §3.1).
    pub data: Vec<u8>,
}

/// An identity (§3.5). The identity-bearing types are typed; others stay opaque.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_FQDN: the name octets (no terminator, §3.5).
    Fqdn(Vec<u8>),
    /// ID_RFC822_ADDR: the address octets.
    Rfc822(Vec<u8>),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_KEY_ID: opaque octets.
    KeyId(Vec<u8>),
    /// Any other ID type (DER_ASN1_DN, ...), opaque. Never one of the types above.
    Other {
        /// The ID type.
        id_type: IdType,
        /// The Identification Data.
        data: Vec<u8>,
    },
}

/// CERT / CERTREQ body (§3.6, §3.7), not interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPayload {
    /// Certificate Encoding.
    pub encoding: u8,
    /// Certificate Data / Certification Authority.
    pub data: Vec<u8>,
}

/// AUTH body (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPayload {
    /// Auth Method.
    pub method: AuthMethod,
    /// Authentication Data.
    pub data: Vec<u8>,
}

/// Notify body (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Protocol ID of the SA the notification is about; [`ProtocolId::NONE`] when `spi`
    /// is empty (§3.10: then it is sent as zero and ignored on receipt, so the parser
    /// normalizes it to zero).
    pub protocol_id: ProtocolId,
    /// SPI (empty, or 4 octets for ESP/AH, 8 for IKE).
    pub spi: Vec<u8>,
    /// Notify Message Type.
    pub notify_type: NotifyType,
    /// Notification Data.
    pub data: Vec<u8>,
}

/// Delete body (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// IKE (then `spis` is empty: the IKE SA is the one the message belongs to) or ESP/AH.
    pub protocol_id: ProtocolId,
    /// The SPIs to delete (ESP/AH: the sender's inbound SPIs, §1.4.1).
    pub spis: Vec<u32>,
}

/// Encrypted payload as received (§3.14): not yet decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// Type of the first payload inside (the SK payload's Next Payload field, §3.14).
    pub first_payload: PayloadType,
    /// IV ‖ ciphertext (with padding and Pad Length) ‖ ICV.
    pub data: Vec<u8>,
}

/// Configuration payload body (§3.15), attributes opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpPayload {
    /// CFG type.
    pub cfg_type: CfgType,
    /// The configuration attributes, unparsed.
    pub attributes: Vec<u8>,
}

impl Notify {
    /// A notification about the IKE SA as a whole (no SPI).
    pub fn new(notify_type: NotifyType, data: Vec<u8>) -> Self {
        Notify {
            protocol_id: ProtocolId::NONE,
            spi: Vec::new(),
            notify_type,
            data,
        }
    }

    /// A notification about an ESP SA with this SPI (e.g. REKEY_SA, §1.3.3).
    pub fn for_esp_spi(notify_type: NotifyType, spi: u32, data: Vec<u8>) -> Self {
        Notify {
            protocol_id: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            notify_type,
            data,
        }
    }

    /// INVALID_SPI carries the offending ESP SPI in its data (§1.5, §3.10.1); this reads
    /// it, if the notification is one and the data is four octets.
    pub fn invalid_spi(&self) -> Option<u32> {
        if self.notify_type != NotifyType::INVALID_SPI {
            return None;
        }
        <[u8; 4]>::try_from(self.data.as_slice())
            .ok()
            .map(u32::from_be_bytes)
    }

    /// The group INVALID_KE_PAYLOAD asks for (§1.2: two-octet data).
    pub fn wanted_group(&self) -> Option<DhGroup> {
        if self.notify_type != NotifyType::INVALID_KE_PAYLOAD {
            return None;
        }
        <[u8; 2]>::try_from(self.data.as_slice())
            .ok()
            .map(|b| DhGroup(u16::from_be_bytes(b)))
    }
}

impl Identity {
    /// An ID_FQDN identity.
    pub fn fqdn(name: &str) -> Self {
        Identity::Fqdn(name.as_bytes().to_vec())
    }

    /// An ID_RFC822_ADDR identity.
    pub fn rfc822(addr: &str) -> Self {
        Identity::Rfc822(addr.as_bytes().to_vec())
    }

    /// The ID Type.
    pub fn id_type(&self) -> IdType {
        match self {
            Identity::Ipv4(_) => IdType::IPV4_ADDR,
            Identity::Fqdn(_) => IdType::FQDN,
            Identity::Rfc822(_) => IdType::RFC822_ADDR,
            Identity::Ipv6(_) => IdType::IPV6_ADDR,
            Identity::KeyId(_) => IdType::KEY_ID,
            Identity::Other { id_type, .. } => *id_type,
        }
    }

    /// The Identification Data octets.
    pub fn data(&self) -> Vec<u8> {
        match self {
            Identity::Ipv4(a) => a.octets().to_vec(),
            Identity::Ipv6(a) => a.octets().to_vec(),
            Identity::Fqdn(d) | Identity::Rfc822(d) | Identity::KeyId(d) => d.clone(),
            Identity::Other { data, .. } => data.clone(),
        }
    }

    /// The ID payload body, ID Type ‖ RESERVED ‖ data: what §2.15 calls
    /// RestOfInitIDPayload / RestOfRespIDPayload when this identity is *sent*. For a
    /// received ID use the raw body ([`RawPayload::body`]) so AUTH covers the reserved
    /// octets as the peer sent them.
    pub fn body(&self) -> Vec<u8> {
        let mut out = vec![self.id_type().0, 0, 0, 0];
        out.extend_from_slice(&self.data());
        out
    }

    /// Parses an ID payload body.
    pub fn parse(body: &[u8]) -> Result<Identity, ParseError> {
        let mut r = Reader::new(body, "ID payload");
        let id_type = IdType(r.u8()?);
        let _reserved: [u8; 3] = r.array()?;
        let data = r.rest();
        let fixed = |n: usize, what: &'static str| {
            if data.len() == n {
                Ok(())
            } else {
                Err(ParseError::BadLength {
                    what,
                    length: data.len(),
                })
            }
        };
        Ok(match id_type {
            IdType::IPV4_ADDR => {
                fixed(4, "ID_IPV4_ADDR")?;
                let mut a = [0u8; 4];
                a.copy_from_slice(data);
                Identity::Ipv4(a.into())
            }
            IdType::IPV6_ADDR => {
                fixed(16, "ID_IPV6_ADDR")?;
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                Identity::Ipv6(a.into())
            }
            IdType::FQDN => Identity::Fqdn(data.to_vec()),
            IdType::RFC822_ADDR => Identity::Rfc822(data.to_vec()),
            IdType::KEY_ID => Identity::KeyId(data.to_vec()),
            other => Identity::Other {
                id_type: other,
                data: data.to_vec(),
            },
        })
    }
}

impl core::fmt::Display for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(d) | Identity::Rfc822(d) => f.write_str(&String::from_utf8_lossy(d)),
            Identity::KeyId(d) => write!(f, "keyid:{}", hex_string(d)),
            Identity::Other { id_type, data } => write!(f, "{id_type}:{}", hex_string(data)),
        }
    }
}

fn hex_string(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One payload as found in a chain, before typed parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    /// This payload's type (from the previous Next Payload field).
    pub payload_type: PayloadType,
    /// This payload's Next Payload field (for SK: the first inner payload's type).
    pub next_payload: PayloadType,
    /// The critical bit (§3.2).
    pub critical: bool,
    /// The body after the generic header.
    pub body: &'a [u8],
    /// Offset of the generic header within the buffer handed to [`RawPayloads::new`].
    pub offset: usize,
}

/// Walks a payload chain (§3.2), checking each Payload Length against the buffer.
///
/// The walk always advances by at least the 4-byte generic header, so it cannot loop; it
/// stops at Next Payload = 0 (and then requires the buffer to be used up) or after an
/// Encrypted payload (which §3.14 requires to be last: its Next Payload field names the
/// first *inner* payload). After the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct RawPayloads<'a> {
    buf: &'a [u8],
    pos: usize,
    next: PayloadType,
    done: bool,
}

impl<'a> RawPayloads<'a> {
    /// A walk over `buf` whose first payload has type `first` (from the IKE header or
    /// the SK payload).
    pub fn new(first: PayloadType, buf: &'a [u8]) -> Self {
        RawPayloads {
            buf,
            pos: 0,
            next: first,
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<RawPayload<'a>>, ParseError> {
        let left = self.buf.len() - self.pos;
        if self.next == PayloadType::NONE {
            self.done = true;
            if left != 0 {
                return Err(ParseError::TrailingData {
                    what: "payload chain",
                    count: left,
                });
            }
            return Ok(None);
        }
        let mut r = Reader::new(&self.buf[self.pos..], "generic payload header");
        let next_payload = PayloadType(r.u8()?);
        let flags = r.u8()?;
        let len = r.u16()? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(ParseError::BadLength {
                what: "payload",
                length: len,
            });
        }
        if len > left {
            return Err(ParseError::Truncated {
                what: "payload",
                needed: len,
                available: left,
            });
        }
        let raw = RawPayload {
            payload_type: self.next,
            next_payload,
            critical: flags & CRITICAL != 0,
            body: &self.buf[self.pos + GENERIC_HEADER_LEN..self.pos + len],
            offset: self.pos,
        };
        self.pos += len;
        if raw.payload_type == PayloadType::SK {
            // RFC 7296 §3.14: the Encrypted payload MUST be the last payload.
            self.done = true;
            if self.pos != self.buf.len() {
                return Err(ParseError::EncryptedNotLast);
            }
        } else {
            self.next = next_payload;
        }
        Ok(Some(raw))
    }
}

impl<'a> Iterator for RawPayloads<'a> {
    type Item = Result<RawPayload<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Parses a whole chain into typed payloads.
pub fn parse_payloads(first: PayloadType, buf: &[u8]) -> Result<Vec<Payload>, ParseError> {
    RawPayloads::new(first, buf)
        .map(|r| r.and_then(|raw| Payload::from_raw(&raw)))
        .collect()
}

/// Emits a chain; returns the type of the first payload (for the IKE header or the SK
/// payload's Next Payload field), [`PayloadType::NONE`] for an empty chain.
pub fn emit_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> Result<PayloadType, EmitError> {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            Payload::Encrypted(e) => {
                if i + 1 != payloads.len() {
                    return Err(EmitError::EncryptedNotLast);
                }
                e.first_payload
            }
            _ => payloads
                .get(i + 1)
                .map_or(PayloadType::NONE, Payload::payload_type),
        };
        let start = out.len();
        // Critical bit clear: RFC 7296 §3.2 says it MUST be zero for the payload types
        // the RFC defines, and unknown payloads are only kept when it was clear.
        out.extend_from_slice(&[next.0, 0, 0, 0]);
        p.emit_body(out)?;
        patch_len16(out, start, 2, "payload length")?;
    }
    Ok(payloads
        .first()
        .map_or(PayloadType::NONE, Payload::payload_type))
}

impl Payload {
    /// The payload type.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Encrypted(_) => PayloadType::SK,
            Payload::Cp(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
            Payload::Unknown { payload_type, .. } => *payload_type,
        }
    }

    /// Parses one raw payload. An unknown type with the critical bit set is
    /// [`ParseError::UnsupportedCritical`] (§2.5); with it clear, [`Payload::Unknown`].
    /// For known types the critical bit is ignored (§3.2).
    pub fn from_raw(raw: &RawPayload<'_>) -> Result<Payload, ParseError> {
        let body = raw.body;
        Ok(match raw.payload_type {
            PayloadType::SA => Payload::Sa(SaPayload::parse(body)?),
            PayloadType::KE => {
                let mut r = Reader::new(body, "KE payload");
                let group = DhGroup(r.u16()?);
                let _reserved = r.u16()?;
                Payload::Ke(KePayload {
                    group,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::IDI => Payload::IdI(Identity::parse(body)?),
            PayloadType::IDR => Payload::IdR(Identity::parse(body)?),
            PayloadType::CERT => Payload::Cert(parse_cert(body, "CERT payload")?),
            PayloadType::CERTREQ => Payload::CertReq(parse_cert(body, "CERTREQ payload")?),
            PayloadType::AUTH => {
                let mut r = Reader::new(body, "AUTH payload");
                let method = AuthMethod(r.u8()?);
                let _reserved: [u8; 3] = r.array()?;
                Payload::Auth(AuthPayload {
                    method,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::NONCE => {
                // RFC 7296 §3.9: Nonce Data is between 16 and 256 octets inclusive.
                if !(NONCE_MIN..=NONCE_MAX).contains(&body.len()) {
                    return Err(ParseError::BadLength {
                        what: "Nonce Data",
                        length: body.len(),
                    });
                }
                Payload::Nonce(body.to_vec())
            }
            PayloadType::NOTIFY => Payload::Notify(parse_notify(body)?),
            PayloadType::DELETE => Payload::Delete(parse_delete(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(TsPayload::parse(body)?),
            PayloadType::TSR => Payload::TsR(TsPayload::parse(body)?),
            PayloadType::SK => Payload::Encrypted(Encrypted {
                first_payload: raw.next_payload,
                data: body.to_vec(),
            }),
            PayloadType::CP => {
                let mut r = Reader::new(body, "CP payload");
                let cfg_type = CfgType(r.u8()?);
                let _reserved: [u8; 3] = r.array()?;
                Payload::Cp(CpPayload {
                    cfg_type,
                    attributes: r.rest().to_vec(),
                })
            }
            PayloadType::EAP => Payload::Eap(body.to_vec()),
            other if raw.critical => {
                return Err(ParseError::UnsupportedCritical {
                    payload_type: other.0,
                })
            }
            other => Payload::Unknown {
                payload_type: other,
                data: body.to_vec(),
            },
        })
    }

    /// Appends the body (everything after the generic header).
    pub fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        match self {
            Payload::Sa(sa) => sa.emit(out)?,
            Payload::Ke(ke) => {
                out.extend_from_slice(&ke.group.0.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&ke.data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Cert(c) | Payload::CertReq(c) => {
                out.push(c.encoding);
                out.extend_from_slice(&c.data);
            }
            Payload::Auth(a) => {
                out.extend_from_slice(&[a.method.0, 0, 0, 0]);
                out.extend_from_slice(&a.data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                let protocol = if n.spi.is_empty() {
                    ProtocolId::NONE
                } else {
                    n.protocol_id
                };
                out.push(protocol.0);
                out.push(fit_u8(n.spi.len(), "Notify SPI size")?);
                out.extend_from_slice(&n.notify_type.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                let spi_size = if d.protocol_id == ProtocolId::IKE {
                    if !d.spis.is_empty() {
                        return Err(EmitError::InvalidField {
                            field: "Delete of the IKE SA with SPIs",
                            value: d.spis.len() as u64,
                        });
                    }
                    0
                } else {
                    4
                };
                out.push(d.protocol_id.0);
                out.push(spi_size);
                out.extend_from_slice(&fit_u16(d.spis.len(), "Delete SPI count")?.to_be_bytes());
                for spi in &d.spis {
                    out.extend_from_slice(&spi.to_be_bytes());
                }
            }
            Payload::VendorId(v) => out.extend_from_slice(v),
            Payload::TsI(ts) | Payload::TsR(ts) => ts.emit(out)?,
            Payload::Encrypted(e) => out.extend_from_slice(&e.data),
            Payload::Cp(cp) => {
                out.extend_from_slice(&[cp.cfg_type.0, 0, 0, 0]);
                out.extend_from_slice(&cp.attributes);
            }
            Payload::Eap(d) => out.extend_from_slice(d),
            Payload::Unknown { data, .. } => out.extend_from_slice(data),
        }
        Ok(())
    }
}

fn parse_cert(body: &[u8], what: &'static str) -> Result<CertPayload, ParseError> {
    let mut r = Reader::new(body, what);
    Ok(CertPayload {
        encoding: r.u8()?,
        data: r.rest().to_vec(),
    })
}

fn parse_notify(body: &[u8]) -> Result<Notify, ParseError> {
    let mut r = Reader::new(body, "Notify payload");
    let protocol_id = ProtocolId(r.u8()?);
    let spi_size = r.u8()? as usize;
    let notify_type = NotifyType(r.u16()?);
    let spi = r.take(spi_size)?.to_vec();
    let protocol_id = if spi.is_empty() {
        ProtocolId::NONE
    } else {
        protocol_id
    };
    Ok(Notify {
        protocol_id,
        spi,
        notify_type,
        data: r.rest().to_vec(),
    })
}

fn parse_delete(body: &[u8]) -> Result<Delete, ParseError> {
    let mut r = Reader::new(body, "Delete payload");
    let protocol_id = ProtocolId(r.u8()?);
    let spi_size = r.u8()?;
    let count = r.u16()? as usize;
    // RFC 7296 §3.11: SPI Size is zero for IKE (the SA is the one in the header) and four
    // for AH and ESP.
    let want = match protocol_id {
        ProtocolId::IKE => 0,
        ProtocolId::AH | ProtocolId::ESP => 4,
        other => {
            return Err(ParseError::InvalidField {
                field: "Delete protocol ID",
                value: other.0.into(),
            })
        }
    };
    if spi_size != want {
        return Err(ParseError::InvalidField {
            field: "Delete SPI size",
            value: spi_size.into(),
        });
    }
    if want == 0 && count != 0 {
        return Err(ParseError::InvalidField {
            field: "Delete SPI count for IKE",
            value: count as u64,
        });
    }
    let mut spis = Vec::with_capacity(count.min(r.remaining() / 4));
    for i in 0..count {
        if r.remaining() < 4 {
            return Err(ParseError::CountMismatch {
                what: "Delete SPIs",
                declared: count,
                found: i,
            });
        }
        spis.push(r.u32()?);
    }
    r.finish()?;
    Ok(Delete { protocol_id, spis })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(payloads: &[Payload]) -> (PayloadType, Vec<u8>) {
        let mut out = Vec::new();
        let first = emit_payloads(payloads, &mut out).unwrap();
        (first, out)
    }

    #[test]
    fn generic_header_layout() {
        let (first, b) = chain(&[
            Payload::Nonce(vec![7; 16]),
            Payload::VendorId(b"esplab".to_vec()),
        ]);
        assert_eq!(first, PayloadType::NONCE);
        assert_eq!(&b[..4], &[43, 0, 0, 20]);
        assert_eq!(&b[20..24], &[0, 0, 0, 10]);
        assert_eq!(parse_payloads(first, &b).unwrap().len(), 2);
    }

    #[test]
    fn unknown_payloads_by_critical_bit() {
        // Nonce, then an unknown type 200 (critical clear), then another 201 (critical set).
        let mut b = vec![200, 0, 0, 20];
        b.extend_from_slice(&[1; 16]);
        b.extend_from_slice(&[201, 0, 0, 6, 0xaa, 0xbb]);
        b.extend_from_slice(&[0, 0x80, 0, 5, 0xcc]);
        let err = parse_payloads(PayloadType::NONCE, &b).unwrap_err();
        assert_eq!(err, ParseError::UnsupportedCritical { payload_type: 201 });
        // Clear the critical bit: both unknowns are kept.
        b[27] = 0;
        let p = parse_payloads(PayloadType::NONCE, &b).unwrap();
        assert_eq!(
            p[1],
            Payload::Unknown {
                payload_type: PayloadType(200),
                data: vec![0xaa, 0xbb]
            }
        );
        assert_eq!(p[2].payload_type(), PayloadType(201));
        // The critical bit on a known type is ignored (§3.2).
        b[1] = 0x80;
        assert!(parse_payloads(PayloadType::NONCE, &b).is_ok());
    }

    #[test]
    fn chain_overrun_and_zero_length_rejected() {
        let mut b = vec![0, 0, 0, 40];
        b.extend_from_slice(&[1; 16]);
        assert!(matches!(
            parse_payloads(PayloadType::NONCE, &b),
            Err(ParseError::Truncated { .. })
        ));
        // A length of zero would never advance: rejected instead of looping.
        let b = [40, 0, 0, 0, 40, 0, 0, 0];
        assert!(matches!(
            parse_payloads(PayloadType::NONCE, &b),
            Err(ParseError::BadLength { .. })
        ));
        // Next Payload says more, but the buffer ended.
        let mut b = vec![40, 0, 0, 20];
        b.extend_from_slice(&[1; 16]);
        assert!(matches!(
            parse_payloads(PayloadType::NONCE, &b),
            Err(ParseError::Truncated { .. })
        ));
        // Chain ended, bytes left.
        let mut b = vec![0, 0, 0, 20];
        b.extend_from_slice(&[1; 16]);
        b.push(0);
        assert!(matches!(
            parse_payloads(PayloadType::NONCE, &b),
            Err(ParseError::TrailingData { .. })
        ));
    }

    #[test]
    fn encrypted_must_be_last() {
        let enc = Payload::Encrypted(Encrypted {
            first_payload: PayloadType::IDI,
            data: vec![9; 40],
        });
        let (first, mut b) = chain(std::slice::from_ref(&enc));
        assert_eq!(first, PayloadType::SK);
        assert_eq!(b[0], PayloadType::IDI.0);
        assert_eq!(parse_payloads(first, &b).unwrap(), vec![enc.clone()]);
        b.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(parse_payloads(first, &b), Err(ParseError::EncryptedNotLast));
        let mut out = Vec::new();
        assert_eq!(
            emit_payloads(&[enc, Payload::VendorId(vec![])], &mut out),
            Err(EmitError::EncryptedNotLast)
        );
    }

    #[test]
    fn nonce_length_limits() {
        for (len, ok) in [(15, false), (16, true), (256, true), (257, false)] {
            let (first, b) = chain(&[Payload::Nonce(vec![1; len])]);
            assert_eq!(parse_payloads(first, &b).is_ok(), ok, "len {len}");
        }
    }

    #[test]
    fn notify_and_delete_forms() {
        let n = Notify::for_esp_spi(NotifyType::REKEY_SA, 0xc0de_0001, vec![]);
        let inv = Notify::new(
            NotifyType::INVALID_SPI,
            0x1234_5678u32.to_be_bytes().to_vec(),
        );
        assert_eq!(inv.invalid_spi(), Some(0x1234_5678));
        assert_eq!(n.invalid_spi(), None);
        let ke = Notify::new(NotifyType::INVALID_KE_PAYLOAD, vec![0, 31]);
        assert_eq!(ke.wanted_group(), Some(DhGroup::CURVE25519));
        let d = Delete {
            protocol_id: ProtocolId::ESP,
            spis: vec![1, 2],
        };
        let dike = Delete {
            protocol_id: ProtocolId::IKE,
            spis: vec![],
        };
        let (first, b) = chain(&[
            Payload::Notify(n.clone()),
            Payload::Notify(inv),
            Payload::Delete(d.clone()),
            Payload::Delete(dike),
        ]);
        assert_eq!(&b[4..12], &[3, 4, 0x40, 0x09, 0xc0, 0xde, 0, 1]);
        let p = parse_payloads(first, &b).unwrap();
        assert_eq!(p[0], Payload::Notify(n));
        assert_eq!(p[2], Payload::Delete(d));
        // Delete with an SPI size that does not fit ESP.
        let bad = [3, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(parse_delete(&bad).is_err());
        // Delete whose count overruns the body.
        let bad = [3, 4, 0, 3, 0, 0, 0, 1];
        assert!(matches!(
            parse_delete(&bad),
            Err(ParseError::CountMismatch { .. })
        ));
        // A Notify without an SPI normalizes its protocol ID to zero (§3.10).
        let n = parse_notify(&[3, 0, 0x40, 0x00]).unwrap();
        assert_eq!(n.protocol_id, ProtocolId::NONE);
    }

    #[test]
    fn identities() {
        let ids = [
            Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
            Identity::fqdn("moon.example"),
            Identity::rfc822("alice@example"),
            Identity::Ipv6("2001:db8::1".parse().unwrap()),
            Identity::KeyId(vec![1, 2, 3]),
            Identity::Other {
                id_type: IdType::DER_ASN1_DN,
                data: vec![0x30, 0],
            },
        ];
        for id in ids {
            let body = id.body();
            assert_eq!(body[0], id.id_type().0);
            assert_eq!(Identity::parse(&body).unwrap(), id);
        }
        assert!(Identity::parse(&[1, 0, 0, 0, 1, 2, 3]).is_err());
        assert_eq!(Identity::fqdn("moon").to_string(), "moon");
    }
}
