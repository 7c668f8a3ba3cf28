//! Traffic Selector payloads (RFC 7296 §3.13).

use crate::codes::TsType;
use crate::error::{EmitError, ParseError};
use crate::reader::{fit_u8, Reader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A TSi or TSr payload body: the selectors in order (RFC 7296 §3.13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TsPayload {
    /// The traffic selectors.
    pub selectors: Vec<TrafficSelector>,
}

/// One traffic selector (RFC 7296 §3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol (0 = any).
    pub ip_protocol: u8,
    /// First port (0 for any; for ICMP, type and code).
    pub start_port: u16,
    /// Last port (65535 for any).
    pub end_port: u16,
    /// The address range; its family decides the TS type.
    pub range: AddrRange,
}

/// An inclusive address range of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrRange {
    /// TS_IPV4_ADDR_RANGE.
    V4 {
        /// Starting address.
        start: Ipv4Addr,
        /// Ending address.
        end: Ipv4Addr,
    },
    /// TS_IPV6_ADDR_RANGE.
    V6 {
        /// Starting address.
        start: Ipv6Addr,
        /// Ending address.
        end: Ipv6Addr,
    },
}

impl AddrRange {
    /// Start address.
    pub fn start(&self) -> IpAddr {
        match *self {
            AddrRange::V4 { start, .. } => start.into(),
            AddrRange::V6 { start, .. } => start.into(),
        }
    }

    /// End address.
    pub fn end(&self) -> IpAddr {
        match *self {
            AddrRange::V4 { end, .. } => end.into(),
            AddrRange::V6 { end, .. } => end.into(),
        }
    }
}

impl TrafficSelector {
    /// All protocols and ports over one address range.
    pub fn any_port(range: AddrRange) -> Self {
        TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            range,
        }
    }

    /// The TS type the range implies.
    pub fn ts_type(&self) -> TsType {
        match self.range {
            AddrRange::V4 { .. } => TsType::IPV4_ADDR_RANGE,
            AddrRange::V6 { .. } => TsType::IPV6_ADDR_RANGE,
        }
    }

    /// Selector Length on the wire: 16 for IPv4, 40 for IPv6 (§3.13.1).
    pub fn wire_len(&self) -> usize {
        match self.range {
            AddrRange::V4 { .. } => 16,
            AddrRange::V6 { .. } => 40,
        }
    }
}

impl TsPayload {
    /// Parses a TSi/TSr body.
    pub fn parse(body: &[u8]) -> Result<TsPayload, ParseError> {
        let mut r = Reader::new(body, "TS payload");
        let count = r.u8()? as usize;
        let _reserved: [u8; 3] = r.array()?;
        let mut selectors = Vec::with_capacity(count);
        for i in 0..count {
            if r.is_empty() {
                return Err(ParseError::CountMismatch {
                    what: "traffic selectors",
                    declared: count,
                    found: i,
                });
            }
            let ts_type = TsType(r.u8()?);
            let ip_protocol = r.u8()?;
            let len = r.u16()? as usize;
            let want = match ts_type {
                TsType::IPV4_ADDR_RANGE => 16,
                TsType::IPV6_ADDR_RANGE => 40,
                other => return Err(ParseError::UnsupportedTsType { ts_type: other.0 }),
            };
            if len != want {
                return Err(ParseError::BadLength {
                    what: "traffic selector",
                    length: len,
                });
            }
            let mut s = Reader::new(r.take(len - 4)?, "traffic selector");
            let start_port = s.u16()?;
            let end_port = s.u16()?;
            let range = if ts_type == TsType::IPV4_ADDR_RANGE {
                AddrRange::V4 {
                    start: Ipv4Addr::from(s.array::<4>()?),
                    end: Ipv4Addr::from(s.array::<4>()?),
                }
            } else {
                AddrRange::V6 {
                    start: Ipv6Addr::from(s.array::<16>()?),
                    end: Ipv6Addr::from(s.array::<16>()?),
                }
            };
            selectors.push(TrafficSelector {
                ip_protocol,
                start_port,
                end_port,
                range,
            });
        }
        r.finish()?;
        Ok(TsPayload { selectors })
    }

    /// Appends the TSi/TSr body.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        out.push(fit_u8(self.selectors.len(), "number of TSs")?);
        out.extend_from_slice(&[0, 0, 0]);
        for ts in &self.selectors {
            out.push(ts.ts_type().0);
            out.push(ts.ip_protocol);
            out.extend_from_slice(&(ts.wire_len() as u16).to_be_bytes());
            out.extend_from_slice(&ts.start_port.to_be_bytes());
            out.extend_from_slice(&ts.end_port.to_be_bytes());
            match ts.range {
                AddrRange::V4 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
                AddrRange::V6 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_layout_and_round_trip() {
        let ts = TsPayload {
            selectors: vec![TrafficSelector::any_port(AddrRange::V4 {
                start: Ipv4Addr::new(10, 0, 0, 0),
                end: Ipv4Addr::new(10, 0, 0, 255),
            })],
        };
        let mut out = Vec::new();
        ts.emit(&mut out).unwrap();
        assert_eq!(
            out,
            [1, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 10, 0, 0, 0, 10, 0, 0, 255]
        );
        assert_eq!(TsPayload::parse(&out).unwrap(), ts);
    }

    #[test]
    fn rejects_bad_selectors() {
        // Unknown TS type (TS_FC_ADDR_RANGE = 9).
        let b = [
            1, 0, 0, 0, 9, 0, 0, 16, 0, 0, 0xff, 0xff, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        assert_eq!(
            TsPayload::parse(&b),
            Err(ParseError::UnsupportedTsType { ts_type: 9 })
        );
        // IPv4 selector with an IPv6 length.
        let b = [
            1, 0, 0, 0, 7, 0, 0, 40, 0, 0, 0xff, 0xff, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        assert!(matches!(
            TsPayload::parse(&b),
            Err(ParseError::BadLength { .. })
        ));
        // Count says two, one present.
        let b = [
            2, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        assert!(matches!(
            TsPayload::parse(&b),
            Err(ParseError::CountMismatch { .. })
        ));
        // Trailing bytes.
        let b = [
            1, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 1, 1, 1, 1, 2, 2, 2, 2, 9,
        ];
        assert!(matches!(
            TsPayload::parse(&b),
            Err(ParseError::TrailingData { .. })
        ));
    }
}
