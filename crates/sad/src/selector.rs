//! IKEv2-style traffic selectors (RFC 7296 §3.13.1) and the flow key outbound lookup matches.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use thiserror::Error;

/// Why a traffic selector could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    /// Start and end address are of different IP versions (RFC 7296 §3.13.1 has one TS type
    /// per family: TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE).
    #[error("start and end address are of different IP families")]
    FamilyMismatch,
    /// The start address is above the end address.
    #[error("start address is above end address")]
    AddressOrder,
    /// The start port is above the end port.
    #[error("start port is above end port")]
    PortOrder,
    /// A prefix length longer than the address.
    #[error("prefix length {0} too long for the address family")]
    PrefixLength(u8),
    /// Text that is neither `addr`, `addr/len` nor `start-end`.
    #[error("cannot parse traffic selector {0:?}")]
    Parse(String),
}

/// One IKEv2 traffic selector (RFC 7296 §3.13.1): an inclusive address range, an IP protocol
/// (0 = any) and an inclusive port range (0..=65535 = any port).
///
/// Invariants (checked by every constructor): both addresses are of the same family,
/// `start <= end`, `start_port <= end_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    start: IpAddr,
    end: IpAddr,
    protocol: u8,
    start_port: u16,
    end_port: u16,
}

impl TrafficSelector {
    /// A selector from its RFC 7296 §3.13.1 fields.
    pub fn new(
        start: IpAddr,
        end: IpAddr,
        protocol: u8,
        ports: RangeInclusive<u16>,
    ) -> Result<Self, SelectorError> {
        if start.is_ipv4() != end.is_ipv4() {
            return Err(SelectorError::FamilyMismatch);
        }
        // `IpAddr`'s order within one family is numeric (big-endian octets).
        if start > end {
            return Err(SelectorError::AddressOrder);
        }
        let (start_port, end_port) = ports.into_inner();
        if start_port > end_port {
            return Err(SelectorError::PortOrder);
        }
        Ok(Self {
            start,
            end,
            protocol,
            start_port,
            end_port,
        })
    }

    /// All addresses of `addr/len`, any protocol, any port. Host bits in `addr` are ignored,
    /// so `198.19.1.7/24` and `198.19.1.0/24` give the same selector.
    pub fn from_prefix(addr: IpAddr, len: u8) -> Result<Self, SelectorError> {
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(SelectorError::PrefixLength(len));
                }
                let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                let a = u32::from(a);
                (
                    IpAddr::V4(Ipv4Addr::from(a & !host)),
                    IpAddr::V4(Ipv4Addr::from(a | host)),
                )
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(SelectorError::PrefixLength(len));
                }
                let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                let a = u128::from(a);
                (
                    IpAddr::V6(Ipv6Addr::from(a & !host)),
                    IpAddr::V6(Ipv6Addr::from(a | host)),
                )
            }
        };
        Ok(Self {
            start,
            end,
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        })
    }

    /// Exactly one address, any protocol, any port.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            start: addr,
            end: addr,
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    /// Every IPv4 address, protocol and port (`0.0.0.0/0`).
    pub fn any_ipv4() -> Self {
        Self::from_prefix(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("length 0 is valid")
    }

    /// Every IPv6 address, protocol and port (`::/0`).
    pub fn any_ipv6() -> Self {
        Self::from_prefix(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("length 0 is valid")
    }

    /// The same range restricted to one IP protocol (0 = any, RFC 7296 §3.13.1).
    pub fn with_protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same range restricted to a port range.
    pub fn with_ports(mut self, ports: RangeInclusive<u16>) -> Result<Self, SelectorError> {
        let (s, e) = ports.into_inner();
        if s > e {
            return Err(SelectorError::PortOrder);
        }
        self.start_port = s;
        self.end_port = e;
        Ok(self)
    }

    /// First address of the range.
    pub fn start_addr(&self) -> IpAddr {
        self.start
    }

    /// Last address of the range (inclusive).
    pub fn end_addr(&self) -> IpAddr {
        self.end
    }

    /// IP protocol number, 0 meaning any.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Inclusive port range; `0..=65535` means any port.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.start_port..=self.end_port
    }

    /// `true` if `addr` lies in the address range (an address of the other family never does).
    #[inline]
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.start.is_ipv4() && self.start <= addr && addr <= self.end
    }

    /// `true` if a packet with this address, protocol and port falls under the selector.
    /// Protocols without ports should pass port 0; a selector narrowed to other ports then
    /// does not match, as for any other port outside its range.
    #[inline]
    pub fn matches(&self, addr: IpAddr, protocol: u8, port: u16) -> bool {
        (self.protocol == 0 || self.protocol == protocol)
            && self.start_port <= port
            && port <= self.end_port
            && self.contains_addr(addr)
    }

    /// The prefix length if the range is exactly one CIDR prefix.
    fn prefix_len(&self) -> Option<u8> {
        let (span, low, bits) = match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => {
                let (s, e) = (u128::from(u32::from(s)), u128::from(u32::from(e)));
                (s ^ e, s, 32)
            }
            (IpAddr::V6(s), IpAddr::V6(e)) => {
                let (s, e) = (u128::from(s), u128::from(e));
                (s ^ e, s, 128)
            }
            _ => return None,
        };
        // A prefix has span = 2^k - 1 (all host bits differ) and no host bits set in `low`.
        if span & span.wrapping_add(1) != 0 || low & span != 0 {
            return None;
        }
        Some(bits - (128 - span.leading_zeros()) as u8)
    }
}

impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len() {
            Some(len) => write!(f, "{}/{}", self.start, len)?,
            None => write!(f, "{}-{}", self.start, self.end)?,
        }
        if self.protocol != 0 {
            write!(f, " proto {}", self.protocol)?;
        }
        if (self.start_port, self.end_port) != (0, u16::MAX) {
            write!(f, " port {}-{}", self.start_port, self.end_port)?;
        }
        Ok(())
    }
}

/// Parses `addr`, `addr/len` or `start-end` (any protocol, any port).
impl FromStr for TrafficSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SelectorError::Parse(s.to_owned());
        if let Some((addr, len)) = s.split_once('/') {
            let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
            let len: u8 = len.trim().parse().map_err(|_| bad())?;
            Self::from_prefix(addr, len)
        } else if let Some((a, b)) = s.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
            Self::new(a, b, 0, 0..=u16::MAX)
        } else {
            Ok(Self::host(s.trim().parse().map_err(|_| bad())?))
        }
    }
}

/// The two selectors of a CHILD SA as seen from this end: `local` covers the source of
/// outbound packets, `remote` their destination (RFC 7296 §2.9 negotiates them as TSi/TSr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SelectorPair {
    /// Selector for our side (source of outbound traffic).
    pub local: TrafficSelector,
    /// Selector for the peer's side (destination of outbound traffic).
    pub remote: TrafficSelector,
}

impl SelectorPair {
    /// A pair from the local and remote selector.
    pub fn new(local: TrafficSelector, remote: TrafficSelector) -> Self {
        Self { local, remote }
    }

    /// `true` if an outbound packet with this flow key is covered by the pair.
    #[inline]
    pub fn matches(&self, flow: &FlowKey) -> bool {
        self.local.matches(flow.src, flow.protocol, flow.src_port)
            && self.remote.matches(flow.dst, flow.protocol, flow.dst_port)
    }
}

impl fmt::Display for SelectorPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} === {}", self.local, self.remote)
    }
}

/// The packet fields outbound selector matching looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address of the cleartext packet.
    pub src: IpAddr,
    /// Destination address of the cleartext packet.
    pub dst: IpAddr,
    /// IP protocol (next header) number.
    pub protocol: u8,
    /// Source port, or 0 for protocols without ports.
    pub src_port: u16,
    /// Destination port, or 0 for protocols without ports.
    pub dst_port: u16,
}

impl FlowKey {
    /// A flow key from its five fields.
    pub fn new(src: IpAddr, dst: IpAddr, protocol: u8, src_port: u16, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_bounds() {
        let ts: TrafficSelector = "198.19.1.7/24".parse().unwrap();
        assert_eq!(ts.start_addr(), ip("198.19.1.0"));
        assert_eq!(ts.end_addr(), ip("198.19.1.255"));
        assert_eq!(ts.to_string(), "198.19.1.0/24");
        assert!(ts.contains_addr(ip("198.19.1.255")));
        assert!(!ts.contains_addr(ip("198.19.2.0")));
        assert!(!ts.contains_addr(ip("::ffff:198.19.1.1")));
        let v6: TrafficSelector = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6.end_addr(), ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert_eq!(TrafficSelector::any_ipv4().to_string(), "0.0.0.0/0");
        assert_eq!(TrafficSelector::any_ipv6().to_string(), "::/0");
        assert_eq!(
            "10.0.0.1".parse::<TrafficSelector>().unwrap().to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn invalid() {
        assert_eq!(
            "10.0.0.0/33".parse::<TrafficSelector>(),
            Err(SelectorError::PrefixLength(33))
        );
        assert_eq!(
            "10.0.0.9-10.0.0.1".parse::<TrafficSelector>(),
            Err(SelectorError::AddressOrder)
        );
        assert_eq!(
            "10.0.0.1-::1".parse::<TrafficSelector>(),
            Err(SelectorError::FamilyMismatch)
        );
        assert!(matches!(
            "nope".parse::<TrafficSelector>(),
            Err(SelectorError::Parse(_))
        ));
        assert_eq!(
            TrafficSelector::any_ipv4().with_ports(RangeInclusive::new(9, 8)),
            Err(SelectorError::PortOrder)
        );
    }

    #[test]
    fn range_display_and_protocol_ports() {
        let ts = "10.0.0.1-10.0.0.9"
            .parse::<TrafficSelector>()
            .unwrap()
            .with_protocol(6)
            .with_ports(443..=443)
            .unwrap();
        assert_eq!(ts.to_string(), "10.0.0.1-10.0.0.9 proto 6 port 443-443");
        assert!(ts.matches(ip("10.0.0.5"), 6, 443));
        assert!(!ts.matches(ip("10.0.0.5"), 17, 443));
        assert!(!ts.matches(ip("10.0.0.5"), 6, 80));
        assert!(!ts.matches(ip("10.0.0.10"), 6, 443));
    }
}
