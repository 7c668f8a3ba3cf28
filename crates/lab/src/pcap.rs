//! Classic pcap writer (LINKTYPE_RAW: every record is a bare IPv4/IPv6 packet).

/// LINKTYPE_RAW (101): the packet begins with the IP header, version from its first nibble.
const LINKTYPE_RAW: u32 = 101;

/// Virtual time zero in the capture (2026-01-01T00:00:00Z), so timestamps look like dates
/// yet stay deterministic.
pub const EPOCH_SECS: u64 = 1_767_225_600;

/// An in-memory pcap file.
#[derive(Debug, Default, Clone)]
pub struct PcapBuf {
    records: Vec<u8>,
    count: usize,
}

impl PcapBuf {
    /// Appends one packet captured at `t_us` microseconds of virtual time.
    pub fn push(&mut self, t_us: u64, packet: &[u8]) {
        let secs = EPOCH_SECS + t_us / 1_000_000;
        let len = packet.len() as u32;
        self.records.extend_from_slice(&(secs as u32).to_le_bytes());
        self.records
            .extend_from_slice(&((t_us % 1_000_000) as u32).to_le_bytes());
        self.records.extend_from_slice(&len.to_le_bytes());
        self.records.extend_from_slice(&len.to_le_bytes());
        self.records.extend_from_slice(packet);
        self.count += 1;
    }

    /// Packets captured.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The whole file: global header then the records.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.records.len());
        v.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&0i32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&65535u32.to_le_bytes());
        v.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        v.extend_from_slice(&self.records);
        v
    }
}
