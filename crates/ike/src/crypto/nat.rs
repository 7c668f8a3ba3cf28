//! NAT detection hashes (RFC 7296 §2.23).

use sha1::{Digest, Sha1};
use std::net::IpAddr;

/// SHA-1(SPIi | SPIr | IP | Port): the data of NAT_DETECTION_SOURCE_IP (our address and
/// port) and NAT_DETECTION_DESTINATION_IP (the peer's), RFC 7296 §2.23. IPv4 addresses
/// are 4 octets, IPv6 16; the port is in network order. In the first IKE_SA_INIT request
/// SPIr is zero.
pub fn nat_detection_hash(spi_i: u64, spi_r: u64, addr: IpAddr, port: u16) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(port.to_be_bytes());
    h.finalize().into()
}
