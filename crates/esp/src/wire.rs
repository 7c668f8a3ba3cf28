//! Wire formats: the ESP header (RFC 4303 §2), the outer IPv4/IPv6 header, and UDP
//! encapsulation framing (RFC 3948).
//!
//! Views follow smoltcp's pattern: `new_unchecked` wraps a buffer, `new_checked` wraps it
//! only after `check_len` proved every accessor in range, so no accessor can panic on a
//! checked view. Parsing functions return typed errors, never panic, and never read past a
//! length field.

use crate::error::EspError;
use core::ops::Range;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of ESP (RFC 4303 §2).
pub const IPPROTO_ESP: u8 = 50;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Next header for an IPv4 packet inside a tunnel-mode SA.
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next header for an IPv6 packet inside a tunnel-mode SA.
pub const NEXT_HEADER_IPV6: u8 = 41;
/// Next header of an RFC 4303 §2.6 dummy packet (No Next Header): dropped silently.
pub const NEXT_HEADER_NONE: u8 = 59;
/// IKE and UDP-encapsulated ESP port (RFC 3948 §2, RFC 7296 §2.23).
pub const NAT_T_PORT: u16 = 4500;
/// IKE port (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;
/// The ESP header: SPI and sequence number.
pub const ESP_HEADER_LEN: usize = 8;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// A read (or read/write) view of an ESP packet starting at the SPI.
#[derive(Debug, Clone, Copy)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than the header.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, EspError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the header accessors are in range.
    pub fn check_len(&self) -> Result<(), EspError> {
        let len = self.buffer.as_ref().len();
        if len < ESP_HEADER_LEN {
            Err(EspError::TooShort {
                len,
                min: ESP_HEADER_LEN,
            })
        } else {
            Ok(())
        }
    }

    /// Security Parameters Index (RFC 4303 §2.1).
    pub fn spi(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Low 32 bits of the sequence number (RFC 4303 §2.2).
    pub fn seq(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// Everything after the header: IV, ciphertext, ICV.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ESP_HEADER_LEN..]
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EspPacket<T> {
    /// Sets the SPI.
    pub fn set_spi(&mut self, spi: u32) {
        self.buffer.as_mut()[0..4].copy_from_slice(&spi.to_be_bytes());
    }

    /// Sets the low 32 bits of the sequence number.
    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&seq.to_be_bytes());
    }
}

/// The fields of an ESP header (smoltcp `Repr` style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspRepr {
    /// SPI.
    pub spi: u32,
    /// Low 32 bits of the sequence number.
    pub seq: u32,
}

impl EspRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(p: &EspPacket<T>) -> Self {
        Self {
            spi: p.spi(),
            seq: p.seq(),
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        ESP_HEADER_LEN
    }

    /// Writes the header into a checked view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut EspPacket<T>) {
        p.set_spi(self.spi);
        p.set_seq(self.seq);
    }
}

/// Address family of the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// `"ipv4"` or `"ipv6"`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// How ESP is carried on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// IP protocol 50.
    Raw,
    /// UDP-encapsulated (RFC 3948), with the ports seen.
    Udp {
        /// UDP source port.
        sport: u16,
        /// UDP destination port.
        dport: u16,
    },
}

/// What a UDP payload on port 4500 is (RFC 3948 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpKind {
    /// ESP: the first four bytes are a non-zero SPI.
    Esp,
    /// An IKE message behind the 4-byte non-ESP marker (RFC 3948 §2.2); the IKE message
    /// starts 4 bytes in.
    Ike,
    /// A NAT-keepalive: one byte 0xFF (RFC 3948 §2.3).
    Keepalive,
}

/// Classifies a UDP payload received on port 4500 (RFC 3948 §2).
pub fn classify_udp_encap(payload: &[u8]) -> Result<UdpKind, EspError> {
    match payload {
        [0xff] => Ok(UdpKind::Keepalive),
        // RFC 3948 §2.2: the non-ESP marker is four zero octets where an SPI would be; SPI 0
        // is reserved (RFC 4303 §2.1) so it cannot start an ESP packet.
        [0, 0, 0, 0, ..] => Ok(UdpKind::Ike),
        p if p.len() < ESP_HEADER_LEN => Err(EspError::TooShort {
            len: p.len(),
            min: ESP_HEADER_LEN,
        }),
        _ => Ok(UdpKind::Esp),
    }
}

/// An IP datagram taken apart down to its ESP (or IKE) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outer {
    /// Outer source address.
    pub src: IpAddr,
    /// Outer destination address.
    pub dst: IpAddr,
    /// Raw ESP or UDP.
    pub encap: Encap,
    /// Where the ESP packet (SPI onwards), or the IKE message, lies in the datagram.
    pub payload: Range<usize>,
}

impl Outer {
    /// IPv4 or IPv6.
    pub fn family(&self) -> Family {
        match self.src {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// What an underlay datagram carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Underlay {
    /// ESP, raw or UDP-encapsulated.
    Esp(Outer),
    /// IKE on UDP 500, or on UDP 4500 behind the non-ESP marker (payload excludes the marker).
    Ike(Outer),
    /// A NAT-keepalive on UDP 4500.
    Keepalive(Outer),
}

/// Parses an IPv4 or IPv6 datagram carrying ESP (protocol 50), UDP-encapsulated ESP or IKE
/// (UDP 4500 or 500). Length fields are checked against the buffer; trailing bytes beyond the
/// IP total length (Ethernet padding) are ignored.
pub fn parse_underlay(datagram: &[u8]) -> Result<Underlay, EspError> {
    let (src, dst, proto, body) = parse_ip(datagram)?;
    match proto {
        IPPROTO_ESP => Ok(Underlay::Esp(Outer {
            src,
            dst,
            encap: Encap::Raw,
            payload: body,
        })),
        IPPROTO_UDP => {
            let udp = &datagram[body.clone()];
            if udp.len() < UDP_HEADER_LEN {
                return Err(EspError::BadOuterHeader("truncated UDP header"));
            }
            let sport = u16::from_be_bytes([udp[0], udp[1]]);
            let dport = u16::from_be_bytes([udp[2], udp[3]]);
            let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
            if ulen < UDP_HEADER_LEN || ulen > udp.len() {
                return Err(EspError::BadOuterHeader("UDP length out of range"));
            }
            let start = body.start + UDP_HEADER_LEN;
            let end = body.start + ulen;
            let outer = |payload| Outer {
                src,
                dst,
                encap: Encap::Udp { sport, dport },
                payload,
            };
            if dport == NAT_T_PORT || sport == NAT_T_PORT {
                match classify_udp_encap(&datagram[start..end])? {
                    UdpKind::Esp => Ok(Underlay::Esp(outer(start..end))),
                    UdpKind::Ike => Ok(Underlay::Ike(outer(start + 4..end))),
                    UdpKind::Keepalive => Ok(Underlay::Keepalive(outer(start..end))),
                }
            } else if dport == IKE_PORT || sport == IKE_PORT {
                Ok(Underlay::Ike(outer(start..end)))
            } else {
                Err(EspError::NotEsp("UDP port is neither 4500 nor 500"))
            }
        }
        _ => Err(EspError::NotEsp("IP protocol is not ESP or UDP")),
    }
}

/// Parses the IP header: (src, dst, upper protocol, upper-layer byte range).
/// IPv6 extension headers hop-by-hop, routing and destination options are skipped;
/// fragments are refused (reassembly is the OS's job before a packet reaches us).
pub fn parse_ip(d: &[u8]) -> Result<(IpAddr, IpAddr, u8, Range<usize>), EspError> {
    let first = *d.first().ok_or(EspError::TooShort { len: 0, min: 1 })?;
    match first >> 4 {
        4 => {
            if d.len() < IPV4_HEADER_LEN {
                return Err(EspError::BadOuterHeader("truncated IPv4 header"));
            }
            let ihl = (first & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([d[2], d[3]]) as usize;
            if ihl < IPV4_HEADER_LEN || total < ihl || total > d.len() {
                return Err(EspError::BadOuterHeader(
                    "IPv4 header/total length out of range",
                ));
            }
            let frag = u16::from_be_bytes([d[6], d[7]]);
            if frag & 0x3fff != 0 {
                return Err(EspError::BadOuterHeader("IPv4 fragment"));
            }
            let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
            let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
            Ok((src.into(), dst.into(), d[9], ihl..total))
        }
        6 => {
            if d.len() < IPV6_HEADER_LEN {
                return Err(EspError::BadOuterHeader("truncated IPv6 header"));
            }
            let plen = u16::from_be_bytes([d[4], d[5]]) as usize;
            let end = IPV6_HEADER_LEN + plen;
            if end > d.len() {
                return Err(EspError::BadOuterHeader("IPv6 payload length out of range"));
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&d[8..24]).expect("16 bytes"));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&d[24..40]).expect("16 bytes"));
            let mut next = d[6];
            let mut off = IPV6_HEADER_LEN;
            // Bounded: each extension header is at least 8 bytes and `off` only grows.
            loop {
                match next {
                    0 | 43 | 60 => {
                        if off + 2 > end {
                            return Err(EspError::BadOuterHeader("truncated IPv6 extension"));
                        }
                        let len = (d[off + 1] as usize + 1) * 8;
                        next = d[off];
                        off += len;
                        if off > end {
                            return Err(EspError::BadOuterHeader("IPv6 extension overruns"));
                        }
                    }
                    44 => return Err(EspError::BadOuterHeader("IPv6 fragment")),
                    _ => break,
                }
            }
            Ok((src.into(), dst.into(), next, off..end))
        }
        _ => Err(EspError::NotEsp("not an IPv4 or IPv6 packet")),
    }
}

/// Internet checksum (RFC 1071) of `data`, folded, starting from `sum`.
pub fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Settings for outer headers this crate writes.
#[derive(Debug, Clone, Copy)]
pub struct OuterParams {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// `Some((sport, dport))` for RFC 3948 UDP encapsulation.
    pub udp: Option<(u16, u16)>,
    /// IPv4 identification.
    pub ip_id: u16,
    /// TTL / hop limit.
    pub ttl: u8,
}

impl OuterParams {
    /// Header bytes in front of the ESP packet.
    pub fn header_len(&self) -> usize {
        let ip = match self.src {
            IpAddr::V4(_) => IPV4_HEADER_LEN,
            IpAddr::V6(_) => IPV6_HEADER_LEN,
        };
        ip + if self.udp.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        }
    }
}

/// Writes the outer IP (and UDP) header in `buf[..params.header_len()]` for an ESP packet of
/// `esp_len` bytes that follows it. IPv4: DF clear, TOS 0. UDP checksum: 0 over IPv4
/// (RFC 3948 §2.1 "the UDP checksum SHOULD be transmitted as zero"); computed over IPv6, where
/// zero is not allowed for general UDP (RFC 8200 §8.1).
pub fn emit_outer(buf: &mut [u8], params: &OuterParams, esp_len: usize) -> Result<(), EspError> {
    let hlen = params.header_len();
    if buf.len() < hlen {
        return Err(EspError::NoRoom("outer header"));
    }
    let udp_len = if params.udp.is_some() {
        UDP_HEADER_LEN + esp_len
    } else {
        0
    };
    let proto = if params.udp.is_some() {
        IPPROTO_UDP
    } else {
        IPPROTO_ESP
    };
    let ip_len = match (params.src, params.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = hlen + esp_len;
            if total > u16::MAX as usize {
                return Err(EspError::NoRoom("IPv4 total length"));
            }
            let h = &mut buf[..IPV4_HEADER_LEN];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[4..6].copy_from_slice(&params.ip_id.to_be_bytes());
            h[6..8].copy_from_slice(&[0, 0]);
            h[8] = params.ttl;
            h[9] = proto;
            h[10..12].copy_from_slice(&[0, 0]);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum(0, h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            IPV4_HEADER_LEN
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let plen = hlen - IPV6_HEADER_LEN + esp_len;
            if plen > u16::MAX as usize {
                return Err(EspError::NoRoom("IPv6 payload length"));
            }
            let h = &mut buf[..IPV6_HEADER_LEN];
            h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
            h[6] = proto;
            h[7] = params.ttl;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            IPV6_HEADER_LEN
        }
        _ => return Err(EspError::BadOuterHeader("mixed address families")),
    };
    if let Some((sport, dport)) = params.udp {
        let u = &mut buf[ip_len..ip_len + UDP_HEADER_LEN];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
    }
    Ok(())
}

/// Fills in the UDP checksum of an IPv6/UDP datagram written by [`emit_outer`] (the ESP bytes
/// must already follow the header).
pub fn finish_udp6_checksum(packet: &mut [u8]) {
    if packet.len() < IPV6_HEADER_LEN + UDP_HEADER_LEN || packet[0] >> 4 != 6 {
        return;
    }
    let udp_len = packet.len() - IPV6_HEADER_LEN;
    let mut sum = 0u32;
    for c in packet[8..40].chunks_exact(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum += udp_len as u32 + IPPROTO_UDP as u32;
    let c = checksum(sum, &packet[IPV6_HEADER_LEN..]);
    let c = if c == 0 { 0xffff } else { c };
    packet[IPV6_HEADER_LEN + 6..IPV6_HEADER_LEN + 8].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify() {
        assert_eq!(classify_udp_encap(&[0xff]), Ok(UdpKind::Keepalive));
        assert_eq!(classify_udp_encap(&[0, 0, 0, 0, 1]), Ok(UdpKind::Ike));
        assert_eq!(
            classify_udp_encap(&[1, 2, 3, 4, 0, 0, 0, 1]),
            Ok(UdpKind::Esp)
        );
        assert!(classify_udp_encap(&[1, 2, 3]).is_err());
    }

    #[test]
    fn emit_then_parse_v4_udp() {
        let p = OuterParams {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            udp: Some((4500, 4500)),
            ip_id: 1,
            ttl: 64,
        };
        let mut buf = vec![0u8; p.header_len() + 16];
        buf[p.header_len()..p.header_len() + 4].copy_from_slice(&[0xc0, 0xde, 0, 1]);
        emit_outer(&mut buf, &p, 16).unwrap();
        assert_eq!(checksum(0, &buf[..20]), 0);
        match parse_underlay(&buf).unwrap() {
            Underlay::Esp(o) => {
                assert_eq!(o.payload, 28..44);
                assert_eq!(
                    o.encap,
                    Encap::Udp {
                        sport: 4500,
                        dport: 4500
                    }
                );
                assert_eq!(o.family(), Family::V4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn emit_then_parse_v6_raw() {
        let p = OuterParams {
            src: "2001:2::1".parse().unwrap(),
            dst: "2001:2::2".parse().unwrap(),
            udp: None,
            ip_id: 0,
            ttl: 64,
        };
        let mut buf = vec![0u8; p.header_len() + 24];
        buf[40] = 1;
        emit_outer(&mut buf, &p, 24).unwrap();
        match parse_underlay(&buf).unwrap() {
            Underlay::Esp(o) => {
                assert_eq!(o.payload, 40..64);
                assert_eq!(o.family(), Family::V6);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_underlay(&data);
        }

        #[test]
        fn parse_never_panics_v4ish(mut data in proptest::collection::vec(any::<u8>(), 20..120), udp in any::<bool>()) {
            data[0] = 0x45;
            data[9] = if udp { 17 } else { 50 };
            let _ = parse_underlay(&data);
            data[0] = 0x60;
            data[6] = if udp { 17 } else { 0 };
            let _ = parse_underlay(&data);
        }
    }
}
