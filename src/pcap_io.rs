//! Captures in and out: classic pcap and pcapng frames in, their IP packets found through the
//! link layer; a classic pcap of raw IP packets out.
//!
//! Files are read whole and parsed from memory with `pcap-file`'s slice parsers, so a file
//! cut short is reported with the frame it cuts, before any packet is processed. Two things
//! `pcap-file` 2.0 does are worked around here: its pcap packet check refuses `orig_len >
//! snaplen` (normal for a capture taken with a short snap length), so the raw records are
//! read instead; and it reads a pcapng EPB timestamp as nanoseconds whatever the
//! interface's `if_tsresol` (default microseconds), so the raw count is rescaled here.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// LINKTYPE_RAW: each record is an IPv4 or IPv6 packet, no link header.
pub const LINKTYPE_RAW: u32 = 101;
/// Snap length written in the header of output files: larger than any IP packet.
const OUT_SNAPLEN: u32 = 262_144;

/// A capture file that cannot be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Fewer bytes than any capture header.
    #[error("file is too short to be a capture ({0} bytes)")]
    TooShort(usize),
    /// The magic number is neither pcap's nor pcapng's.
    #[error("not a pcap or pcapng file (starts with 0x{0:08x})")]
    NotACapture(u32),
    /// The file ends inside a header or a record.
    #[error("truncated capture: {0} is cut short")]
    Truncated(Part),
    /// A record the parser refuses.
    #[error("malformed capture at {part}: {why}")]
    Malformed {
        /// Where.
        part: Part,
        /// The parser's complaint.
        why: String,
    },
    /// A classic pcap whose link type holds no IP we can find.
    #[error("unsupported link type {0} (supported: Ethernet 1, raw IP 101/228/229, Linux cooked SLL 113 and SLL2 276, BSD loopback 0/108)")]
    UnsupportedLinkType(u32),
    /// Writing the output file failed.
    #[error("{0}")]
    Write(String),
}

/// A place in a capture file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The file (or section) header.
    Header,
    /// The n-th packet record (1-based, like Wireshark's frame numbers).
    Frame(u64),
    /// A non-packet pcapng block after the given number of frames.
    BlockAfter(u64),
}

impl core::fmt::Display for Part {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Part::Header => f.write_str("the file header"),
            Part::Frame(n) => write!(f, "frame {n}"),
            Part::BlockAfter(0) => f.write_str("a block before the first frame"),
            Part::BlockAfter(n) => write!(f, "a block after frame {n}"),
        }
    }
}

fn parse_error(part: Part, e: PcapError) -> CaptureError {
    match e {
        PcapError::IncompleteBuffer => CaptureError::Truncated(part),
        e => CaptureError::Malformed {
            part,
            why: e.to_string(),
        },
    }
}

/// Link layers we can take apart down to IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// BSD loopback (0): 4-byte address family in the capturing host's byte order.
    Null,
    /// Ethernet (1), with any number of 802.1Q / 802.1ad tags.
    Ethernet,
    /// Raw IP (101): IPv4 or IPv6 by the version nibble.
    Raw,
    /// OpenBSD loopback (108): 4-byte address family in network byte order.
    Loop,
    /// Linux cooked capture v1 (113): 16-byte header, protocol at offset 14.
    LinuxSll,
    /// Raw IPv4 (228).
    Ipv4,
    /// Raw IPv6 (229).
    Ipv6,
    /// Linux cooked capture v2 (276): 20-byte header, protocol at offset 0.
    LinuxSll2,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad, and the pre-standard QinQ tag.
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];

impl LinkType {
    /// The link type of a LINKTYPE_ code (the upper bits of a pcap header's field carry FCS
    /// information and are ignored).
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code & 0xffff {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            _ => return None,
        })
    }

    /// The IP packet a frame carries (it may have link-layer trailer bytes after it), or
    /// `None` when the frame holds something other than IPv4/IPv6 or is too short.
    pub fn ip_packet(self, frame: &[u8]) -> Option<&[u8]> {
        let be16 = |o: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*frame.get(o)?, *frame.get(o + 1)?]))
        };
        let (want, ip) = match self {
            LinkType::Raw => (None, frame),
            LinkType::Ipv4 => (Some(4), frame),
            LinkType::Ipv6 => (Some(6), frame),
            LinkType::Ethernet => {
                let mut ethertype = be16(12)?;
                let mut off = 14;
                // Each tag is TCI(2) + the next EtherType(2); the loop ends when the frame does.
                while ETHERTYPE_VLAN.contains(&ethertype) {
                    ethertype = be16(off + 2)?;
                    off += 4;
                }
                (Some(ethertype_version(ethertype)?), frame.get(off..)?)
            }
            LinkType::LinuxSll => (Some(ethertype_version(be16(14)?)?), frame.get(16..)?),
            LinkType::LinuxSll2 => (Some(ethertype_version(be16(0)?)?), frame.get(20..)?),
            LinkType::Null | LinkType::Loop => {
                let b: [u8; 4] = frame.get(..4)?.try_into().ok()?;
                // DLT_NULL is in the writer's byte order: a small value read one way is the
                // family, and AF_ values are all small.
                let le = u32::from_le_bytes(b);
                let family = if le < 256 { le } else { u32::from_be_bytes(b) };
                let v = match family {
                    2 => 4,
                    // AF_INET6 is 10 on Linux, 24 on NetBSD/OpenBSD, 28 on FreeBSD, 30 on macOS.
                    10 | 24 | 28 | 30 => 6,
                    _ => return None,
                };
                (Some(v), &frame[4..])
            }
        };
        let version = ip.first()? >> 4;
        match want {
            Some(w) if w != version => None,
            _ if version == 4 || version == 6 => Some(ip),
            _ => None,
        }
    }
}

fn ethertype_version(ethertype: u16) -> Option<u8> {
    match ethertype {
        ETHERTYPE_IPV4 => Some(4),
        ETHERTYPE_IPV6 => Some(6),
        _ => None,
    }
}

/// The length an IP packet's header claims (IPv4 total length, IPv6 40 + payload length),
/// if the buffer holds that much: cuts off Ethernet padding and FCS.
pub fn ip_len(ip: &[u8]) -> Option<usize> {
    let len = match ip.first()? >> 4 {
        4 => u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize,
        6 => 40 + u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize,
        _ => return None,
    };
    (len <= ip.len() && len >= 20).then_some(len)
}

/// One packet record of a capture.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// 1-based position among the file's packet records.
    pub number: u64,
    /// Capture time since the Unix epoch.
    pub timestamp: Duration,
    /// LINKTYPE_ code of the interface it was captured on.
    pub link: u32,
    /// The captured bytes, link header included.
    pub data: Cow<'a, [u8]>,
}

/// Reads every packet record of a pcap or pcapng file held in `bytes` (format told by the
/// magic number).
pub fn read_capture(bytes: &[u8]) -> Result<Vec<Frame<'_>>, CaptureError> {
    let magic: [u8; 4] = bytes
        .get(..4)
        .and_then(|m| m.try_into().ok())
        .ok_or(CaptureError::TooShort(bytes.len()))?;
    match u32::from_be_bytes(magic) {
        0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => read_pcap(bytes),
        // The pcapng Section Header Block type is a palindrome: same in both byte orders.
        0x0a0d_0d0a => read_pcapng(bytes),
        m => Err(CaptureError::NotACapture(m)),
    }
}

fn read_pcap(bytes: &[u8]) -> Result<Vec<Frame<'_>>, CaptureError> {
    let (mut rest, parser) = PcapParser::new(bytes).map_err(|e| parse_error(Part::Header, e))?;
    let header = parser.header();
    let link = u32::from(header.datalink);
    LinkType::from_code(link).ok_or(CaptureError::UnsupportedLinkType(link))?;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let number = frames.len() as u64 + 1;
        let (r, raw) = parser
            .next_raw_packet(rest)
            .map_err(|e| parse_error(Part::Frame(number), e))?;
        rest = r;
        let nanos = match header.ts_resolution {
            TsResolution::MicroSecond => raw.ts_frac as u64 * 1000,
            TsResolution::NanoSecond => raw.ts_frac as u64,
        };
        frames.push(Frame {
            number,
            // An out-of-range fraction carries into the seconds instead of failing.
            timestamp: Duration::from_secs(raw.ts_sec as u64) + Duration::from_nanos(nanos),
            link,
            data: raw.data,
        });
    }
    Ok(frames)
}

fn read_pcapng(bytes: &[u8]) -> Result<Vec<Frame<'_>>, CaptureError> {
    let (mut rest, mut parser) =
        PcapNgParser::new(bytes).map_err(|e| parse_error(Part::Header, e))?;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let number = frames.len() as u64 + 1;
        // A block that fails to parse is named by the frame it would have been if it is a
        // packet block; we cannot know its kind, so say "frame N" only for truncation.
        let (r, block) = parser.next_block(rest).map_err(|e| match e {
            PcapError::IncompleteBuffer => CaptureError::Truncated(Part::Frame(number)),
            e => parse_error(Part::BlockAfter(number - 1), e),
        })?;
        rest = r;
        let (iface, units, data) = match block {
            Block::EnhancedPacket(b) => {
                // pcap-file stored the raw timestamp count as nanoseconds: undo that.
                let units = b.timestamp.as_nanos() as u64;
                (b.interface_id, units, b.data)
            }
            Block::Packet(b) => (b.interface_id as u32, b.timestamp, b.data),
            Block::SimplePacket(b) => {
                // The SPB body is padded to 4 bytes; the original length says where the
                // packet ends (the snap length may cut it shorter still).
                let snap = parser.interfaces().first().map_or(0, |i| i.snaplen);
                let mut len = b.original_len as usize;
                if snap != 0 {
                    len = len.min(snap as usize);
                }
                let data = match b.data {
                    Cow::Borrowed(d) => Cow::Borrowed(&d[..len.min(d.len())]),
                    Cow::Owned(mut d) => {
                        d.truncate(len);
                        Cow::Owned(d)
                    }
                };
                (0, 0, data)
            }
            _ => continue,
        };
        let idb =
            parser
                .interfaces()
                .get(iface as usize)
                .ok_or_else(|| CaptureError::Malformed {
                    part: Part::Frame(number),
                    why: format!("packet of undeclared interface {iface}"),
                })?;
        frames.push(Frame {
            number,
            timestamp: ng_timestamp(units, idb).ok_or_else(|| CaptureError::Malformed {
                part: Part::Frame(number),
                why: "interface if_tsresol out of range".into(),
            })?,
            link: u32::from(idb.linktype),
            data,
        });
    }
    Ok(frames)
}

/// A pcapng timestamp: `units` of the interface's resolution (`if_tsresol`: 10^-n or 2^-n
/// seconds, default 10^-6) plus its `if_tsoffset` seconds.
fn ng_timestamp(units: u64, idb: &InterfaceDescriptionBlock) -> Option<Duration> {
    let mut resol = 6u8;
    let mut offset = 0u64;
    for o in &idb.options {
        match o {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(s) => offset = *s,
            _ => {}
        }
    }
    let per_sec: u128 = if resol & 0x80 == 0 {
        10u128.checked_pow(resol as u32)?
    } else {
        1u128.checked_shl((resol & 0x7f) as u32)?
    };
    let units = units as u128;
    let secs = u64::try_from(units / per_sec).ok()?;
    let nanos = (units % per_sec * 1_000_000_000 / per_sec) as u32;
    Some(Duration::new(secs.saturating_add(offset), nanos))
}

/// Writes `packets` (timestamp, raw IP packet) as a classic pcap with LINKTYPE_RAW,
/// microsecond timestamps. The file appears whole or not at all: it is written next to
/// `path` as `<path>.tmp` and renamed.
pub fn write_raw_pcap(path: &Path, packets: &[(Duration, Vec<u8>)]) -> Result<(), CaptureError> {
    let mut tmp = PathBuf::from(path);
    let mut name = tmp.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    tmp.set_file_name(name);
    let result = write_to(&tmp, packets)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| CaptureError::Write(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(tmp: &Path, packets: &[(Duration, Vec<u8>)]) -> Result<(), CaptureError> {
    let werr = |e: &dyn std::fmt::Display| CaptureError::Write(e.to_string());
    let file = std::fs::File::create(tmp).map_err(|e| werr(&e))?;
    let header = PcapHeader {
        snaplen: OUT_SNAPLEN,
        datalink: DataLink::from(LINKTYPE_RAW),
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let mut w =
        PcapWriter::with_header(std::io::BufWriter::new(file), header).map_err(|e| werr(&e))?;
    for (ts, data) in packets {
        let len = u32::try_from(data.len()).map_err(|e| werr(&e))?;
        w.write_packet(&PcapPacket::new(*ts, len, data))
            .map_err(|e| werr(&e))?;
    }
    let mut inner = w.into_writer();
    inner.flush().map_err(|e| werr(&e))?;
    inner
        .into_inner()
        .map_err(|e| werr(&e.error().to_string()))?
        .sync_all()
        .map_err(|e| werr(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use proptest::prelude::*;

    const IP4: [u8; 20] = [
        0x45, 0, 0, 20, 0, 1, 0, 0, 64, 50, 0, 0, 192, 0, 2, 1, 198, 51, 100, 2,
    ];

    fn ip6() -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 50, 64];
        p.extend([0u8; 32]);
        p
    }

    #[test]
    fn link_codes() {
        for (code, lt) in [
            (0, LinkType::Null),
            (1, LinkType::Ethernet),
            (101, LinkType::Raw),
            (108, LinkType::Loop),
            (113, LinkType::LinuxSll),
            (228, LinkType::Ipv4),
            (229, LinkType::Ipv6),
            (276, LinkType::LinuxSll2),
            // FCS length bits above the link type are ignored.
            (0x1000_0001, LinkType::Ethernet),
        ] {
            assert_eq!(LinkType::from_code(code), Some(lt), "{code}");
        }
        assert_eq!(LinkType::from_code(105), None); // 802.11
    }

    #[test]
    fn ethernet_plain_and_vlan() {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        f.extend(IP4);
        assert_eq!(LinkType::Ethernet.ip_packet(&f), Some(&IP4[..]));
        // Two tags (QinQ): 88a8 then 8100, then IPv6.
        let mut f = vec![0u8; 12];
        f.extend([0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7, 0x86, 0xdd]);
        f.extend(ip6());
        assert_eq!(LinkType::Ethernet.ip_packet(&f), Some(&ip6()[..]));
        // ARP, a truncated tag, an EtherType/version mismatch: not IP.
        let mut arp = vec![0u8; 12];
        arp.extend([0x08, 0x06, 0, 1]);
        assert_eq!(LinkType::Ethernet.ip_packet(&arp), None);
        let mut cut = vec![0u8; 12];
        cut.extend([0x81, 0x00, 0]);
        assert_eq!(LinkType::Ethernet.ip_packet(&cut), None);
        let mut wrong = vec![0u8; 12];
        wrong.extend([0x86, 0xdd]);
        wrong.extend(IP4);
        assert_eq!(LinkType::Ethernet.ip_packet(&wrong), None);
        assert_eq!(LinkType::Ethernet.ip_packet(&[0u8; 5]), None);
    }

    #[test]
    fn cooked_and_loopback() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend(IP4);
        assert_eq!(LinkType::LinuxSll.ip_packet(&sll), Some(&IP4[..]));
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        sll2.extend(ip6());
        assert_eq!(LinkType::LinuxSll2.ip_packet(&sll2), Some(&ip6()[..]));
        let mut null_le = vec![2, 0, 0, 0];
        null_le.extend(IP4);
        assert_eq!(LinkType::Null.ip_packet(&null_le), Some(&IP4[..]));
        let mut loop_be = vec![0, 0, 0, 24];
        loop_be.extend(ip6());
        assert_eq!(LinkType::Loop.ip_packet(&loop_be), Some(&ip6()[..]));
        assert_eq!(LinkType::Null.ip_packet(&[7, 0, 0, 0, 0x45]), None);
    }

    #[test]
    fn raw_kinds() {
        assert_eq!(LinkType::Raw.ip_packet(&IP4), Some(&IP4[..]));
        assert_eq!(LinkType::Raw.ip_packet(&ip6()), Some(&ip6()[..]));
        assert_eq!(LinkType::Ipv4.ip_packet(&ip6()), None);
        assert_eq!(LinkType::Ipv6.ip_packet(&ip6()), Some(&ip6()[..]));
        assert_eq!(LinkType::Raw.ip_packet(&[0x12, 0]), None);
        assert_eq!(LinkType::Raw.ip_packet(&[]), None);
    }

    #[test]
    fn ip_lengths() {
        let mut padded = IP4.to_vec();
        padded.extend([0u8; 26]);
        assert_eq!(ip_len(&padded), Some(20));
        assert_eq!(ip_len(&ip6()), Some(40));
        assert_eq!(ip_len(&IP4[..19]), None);
        assert_eq!(ip_len(&[0x45, 0, 0, 10]), None);
    }

    #[test]
    fn classic_roundtrip_keeps_timestamps() {
        let dir = std::env::temp_dir().join(format!("esplab-pcapio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rt.pcap");
        let pkts = vec![
            (Duration::new(1_700_000_000, 123_456_000), IP4.to_vec()),
            (Duration::new(1_700_000_001, 0), ip6()),
        ];
        write_raw_pcap(&path, &pkts).unwrap();
        assert!(!dir.join("rt.pcap.tmp").exists());
        let bytes = std::fs::read(&path).unwrap();
        let frames = read_capture(&bytes).unwrap();
        assert_eq!(frames.len(), 2);
        for (f, (ts, data)) in frames.iter().zip(&pkts) {
            assert_eq!(f.link, LINKTYPE_RAW);
            assert_eq!(&f.timestamp, ts);
            assert_eq!(&f.data[..], &data[..]);
        }
        assert_eq!(frames[1].number, 2);
        // Cut inside the second record.
        match read_capture(&bytes[..bytes.len() - 3]) {
            Err(CaptureError::Truncated(Part::Frame(2))) => {}
            other => panic!("{other:?}"),
        }
        match read_capture(&bytes[..10]) {
            Err(CaptureError::Truncated(Part::Header)) => {}
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_non_captures() {
        assert!(matches!(
            read_capture(b"hello world, this is text"),
            Err(CaptureError::NotACapture(0x6865_6c6c))
        ));
        assert!(matches!(
            read_capture(b"ab"),
            Err(CaptureError::TooShort(2))
        ));
        // Classic pcap with an 802.11 link type.
        let mut h = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        h.extend([0u8; 8]);
        h.extend(65535u32.to_le_bytes());
        h.extend(105u32.to_le_bytes());
        assert!(matches!(
            read_capture(&h),
            Err(CaptureError::UnsupportedLinkType(105))
        ));
    }

    fn pcapng_with(idb: InterfaceDescriptionBlock<'static>, units: u64, data: &[u8]) -> Vec<u8> {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(idb).unwrap();
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            // pcap-file writes this Duration's nanosecond count as the raw unit count.
            timestamp: Duration::from_nanos(units),
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })
        .unwrap();
        w.into_inner()
    }

    #[test]
    fn pcapng_default_microseconds() {
        let mut eth = vec![0u8; 12];
        eth.extend([0x08, 0x00]);
        eth.extend(IP4);
        let file = pcapng_with(
            InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0),
            1_700_000_000_250_000,
            &eth,
        );
        let frames = read_capture(&file).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            frames[0].timestamp,
            Duration::new(1_700_000_000, 250_000_000)
        );
        assert_eq!(frames[0].link, 1);
        assert_eq!(
            LinkType::from_code(frames[0].link)
                .unwrap()
                .ip_packet(&frames[0].data),
            Some(&IP4[..])
        );
        assert!(matches!(
            read_capture(&file[..file.len() - 4]),
            Err(CaptureError::Truncated(Part::Frame(1)))
        ));
    }

    #[test]
    fn pcapng_tsresol_and_offset() {
        let mut idb = InterfaceDescriptionBlock::new(DataLink::RAW, 0);
        idb.options = vec![
            InterfaceDescriptionOption::IfTsResol(9),
            InterfaceDescriptionOption::IfTsOffset(10),
        ];
        let file = pcapng_with(idb, 1_500_000_001, &IP4);
        let f = read_capture(&file).unwrap();
        assert_eq!(f[0].timestamp, Duration::new(11, 500_000_001));
        let mut idb = InterfaceDescriptionBlock::new(DataLink::RAW, 0);
        idb.options = vec![InterfaceDescriptionOption::IfTsResol(0x80 | 10)];
        let file = pcapng_with(idb, 3 * 1024 + 512, &IP4);
        let f = read_capture(&file).unwrap();
        assert_eq!(f[0].timestamp, Duration::new(3, 500_000_000));
    }

    #[test]
    fn esp_positive_pcap_reads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/pcaps/esp_positive.pcap"
        );
        let bytes = std::fs::read(path).unwrap();
        let frames = read_capture(&bytes).unwrap();
        assert_eq!(frames.len(), 44);
        for f in &frames {
            let lt = LinkType::from_code(f.link).unwrap();
            assert!(lt.ip_packet(&f.data).is_some());
        }
    }

    proptest! {
        #[test]
        fn mangled_files_never_panic(
            cut in 0usize..2000,
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..8),
            ng in any::<bool>(),
        ) {
            let mut bytes = if ng {
                let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
                idb.options = vec![InterfaceDescriptionOption::IfTsResol(6)];
                let mut eth = vec![0u8; 12];
                eth.extend([0x81, 0x00, 0, 1, 0x08, 0x00]);
                eth.extend(IP4);
                pcapng_with(idb, 5, &eth)
            } else {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/pcaps/esp_positive.pcap");
                std::fs::read(path).unwrap()[..2000].to_vec()
            };
            for (i, x) in flips {
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= x;
                }
            }
            bytes.truncate(cut);
            if let Ok(frames) = read_capture(&bytes) {
                for f in frames {
                    if let Some(lt) = LinkType::from_code(f.link) {
                        let _ = lt.ip_packet(&f.data).map(ip_len);
                    }
                }
            }
        }
    }
}
