//! Writing decrypted packets to the TUN device without copying them: TCP segments (and UDP
//! datagrams) of one flow are coalesced into one GSO super-packet, described by a
//! `virtio_net_hdr` and written with `writev(2)` straight from the receive buffers they were
//! decrypted in.
//!
//! With `IFF_VNET_HDR` every write to the device starts with a `virtio_net_hdr` (the Linux
//! UAPI `struct virtio_net_hdr`, 10 bytes, little-endian fields). A super-packet carries the
//! first segment's IP and TCP headers (lengths fixed up), then every segment's payload, and
//! asks the kernel to segment it again if it must (`gso_type` TCPv4/TCPv6, `gso_size` = the
//! MSS) and to complete the TCP checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, with the
//! pseudo-header sum in the checksum field). The kernel's TCP receiver then handles one
//! large packet instead of many, as it would after its own GRO.
//!
//! Only what the kernel's own TCP GRO would merge is merged (net/ipv4/tcp_offload.c,
//! `tcp_gro_receive`): same addresses, ports, ACK number, window, flags and TCP options;
//! consecutive sequence numbers; every segment the size of the first except a shorter last
//! one; PSH ends a super-packet; SYN, FIN, RST, URG, CWR and ECE segments and segments
//! without data go alone. IPv4
//! segments need DF, no options, no fragmentation, the same TOS and TTL; IPv6 ones TCP as
//! the next header and the same traffic class, flow label and hop limit. Each segment's
//! TCP checksum is verified before it is merged (the merged packet's is recomputed by the
//! kernel, so a bad one would otherwise go unnoticed); a segment that fails goes alone and
//! the kernel drops it. Other TCP segments are written on their own behind an all-zero
//! header.
//!
//! UDP datagrams are coalesced the same way when the device accepts UDP segmentation
//! offload (`TUN_F_USO4`/`TUN_F_USO6`, Linux 6.2+; [`Gro::set_udp`]): same addresses,
//! ports and IP fields as above, every datagram the size of the first but a shorter last,
//! each UDP checksum verified (an IPv4 datagram without one goes alone), and the super-packet
//! carries `VIRTIO_NET_HDR_GSO_UDP_L4`; the kernel splits it back into the same datagrams
//! (net/ipv4/udp_offload.c, `__udp_gso_segment`). Without USO, UDP is left to the caller
//! like every packet that is neither TCP nor UDP (the daemon hands those to tun-rs's
//! writer).
//!
//! The coalescer ([`Gro`]) is sans-IO: it records byte ranges of the caller's buffers and
//! builds headers; [`Gro::flush`] hands each packet's pieces to a writer.

use std::io;
use std::ops::Range;

/// `sizeof(struct virtio_net_hdr)` (linux/virtio_net.h), without `num_buffers`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, stored at `+ csum_offset`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation, IPv4 or IPv6.
const GSO_UDP_L4: u8 = 5;
/// Offset of the checksum in a TCP header (RFC 9293 §3.1).
const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum in a UDP header (RFC 768).
const UDP_CSUM_OFFSET: usize = 6;
/// IP protocol numbers.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Most segments in one super-packet (as many as a 64 KiB packet of 1000-byte segments;
/// the kernel's `gso_max_segs` is far above).
pub const MAX_SEGS: usize = 64;
/// Largest IP packet: IPv4 total length and IPv6 payload length are 16 bits.
const MAX_IP_LEN: usize = 65_535;
/// Flows with a super-packet open at once; a packet of another flow closes the oldest.
const MAX_OPEN: usize = 8;
/// Room for the header prefix of a super-packet: vnet header, IPv6 header (40, the larger),
/// TCP header with options (at most 60).
const PREFIX: usize = VNET_HDR_LEN + 40 + 60;

/// TCP flags (RFC 9293 §3.1).
#[cfg(test)]
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// One packet to write: a prefix (vnet header, and for super-packets the rewritten IP and
/// TCP headers) and pieces of the caller's buffers.
#[derive(Debug)]
struct Out {
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Index range into [`Gro::pieces`].
    pieces: Range<usize>,
    /// What identifies a segment that may join, for open super-packets.
    flow: Option<Flow>,
}

/// An open super-packet's merge state.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Flow {
    v6: bool,
    udp: bool,
    /// Addresses (IPv4 in the first 8 bytes).
    addrs: [u8; 32],
    ports: [u8; 4],
    /// IP + TCP header length of every segment.
    hdr_len: usize,
    ip_len: usize,
    mss: usize,
    next_seq: u32,
    payload: usize,
    segs: usize,
    /// Set once a segment shorter than `mss` or with PSH joined: nothing more may.
    closed: bool,
}

/// Coalesces the packets of one receive burst; see the module documentation.
#[derive(Debug)]
pub struct Gro {
    outs: Vec<Out>,
    /// `(buffer, byte range)` of each piece; each [`Out`]'s are contiguous.
    pieces: Vec<(usize, Range<usize>)>,
    /// `lists[k]`: the pieces of the super-packet `open[k]` while it is open (moved into
    /// `pieces` when it closes); the lists past `open.len()` are spares.
    lists: Vec<Vec<(usize, Range<usize>)>>,
    /// `outs` indexes of the open super-packets, oldest first.
    open: Vec<usize>,
    /// UDP is queued and coalesced (the device takes `GSO_UDP_L4`).
    udp: bool,
    /// Counted since the last [`Gro::take_stats`].
    stats: GroStats,
}

/// What [`Gro`] coalesced: super-packets written and the packets they carried, by
/// transport (packets written alone are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroStats {
    /// TCP super-packets written.
    pub tcp_super_packets: u64,
    /// TCP segments they carried.
    pub tcp_coalesced: u64,
    /// UDP super-packets written.
    pub udp_super_packets: u64,
    /// UDP datagrams they carried.
    pub udp_coalesced: u64,
}

impl std::ops::AddAssign for GroStats {
    fn add_assign(&mut self, o: GroStats) {
        self.tcp_super_packets += o.tcp_super_packets;
        self.tcp_coalesced += o.tcp_coalesced;
        self.udp_super_packets += o.udp_super_packets;
        self.udp_coalesced += o.udp_coalesced;
    }
}

impl Default for Gro {
    fn default() -> Self {
        Self::new()
    }
}

impl Gro {
    /// Empty; grows to the largest burst once and then no more.
    pub fn new() -> Self {
        Self {
            outs: Vec::new(),
            pieces: Vec::new(),
            lists: (0..MAX_OPEN)
                .map(|_| Vec::with_capacity(MAX_SEGS))
                .collect(),
            open: Vec::with_capacity(MAX_OPEN),
            udp: false,
            stats: GroStats::default(),
        }
    }

    /// What was coalesced since the last call.
    pub fn take_stats(&mut self) -> GroStats {
        std::mem::take(&mut self.stats)
    }

    /// Queue and coalesce UDP datagrams too; only for a device with UDP segmentation
    /// offload enabled (tun-rs: `udp_gso()`), which otherwise rejects the super-packets.
    pub fn set_udp(&mut self, on: bool) {
        self.udp = on;
    }

    /// Packets queued (super-packets count once).
    pub fn len(&self) -> usize {
        self.outs.len()
    }

    /// Nothing queued?
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }

    /// Queues the IP packet `bufs[buf][range]` (`pkt` is that slice) if it is a TCP
    /// segment, or a UDP datagram with [`Gro::set_udp`]; returns `false`, queueing nothing,
    /// for anything else (the caller writes it another way: other flows' order does not
    /// matter, and every packet of a flow goes the same way).
    pub fn push(&mut self, buf: usize, range: Range<usize>, pkt: &[u8]) -> bool {
        debug_assert_eq!(pkt.len(), range.len());
        let Some(seg) = Seg::parse(pkt) else {
            return false;
        };
        if seg.udp && !self.udp {
            return false;
        }
        if seg.mergeable {
            self.push_mergeable(buf, range, pkt, &seg);
        } else {
            // A segment that goes alone still ends its flow's open super-packet, so that
            // nothing after it in the flow is written before it.
            if let Some(k) = self.open_for(pkt, &seg) {
                self.close(k);
            }
            self.single(buf, range);
        }
        true
    }

    fn single(&mut self, buf: usize, range: Range<usize>) {
        let at = self.pieces.len();
        self.pieces.push((buf, range));
        self.outs.push(Out {
            prefix: [0; PREFIX],
            prefix_len: VNET_HDR_LEN,
            pieces: at..at + 1,
            flow: None,
        });
    }

    /// Position in `open` of the open super-packet of this segment's flow.
    fn open_for(&self, pkt: &[u8], seg: &Seg) -> Option<usize> {
        let (addrs, ports) = seg.key(pkt);
        self.open.iter().position(|&o| {
            let f = self.outs[o].flow.as_ref().expect("open outs have a flow");
            f.v6 == seg.v6 && f.udp == seg.udp && f.addrs == addrs && f.ports == ports
        })
    }

    fn push_mergeable(&mut self, buf: usize, range: Range<usize>, pkt: &[u8], seg: &Seg) {
        let payload = range.start + seg.hdr_len..range.end;
        if let Some(k) = self.open_for(pkt, seg) {
            let o = self.open[k];
            if self.joins(o, pkt, seg) {
                let out = &mut self.outs[o];
                let f = out.flow.as_mut().expect("open");
                f.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                f.payload += seg.payload;
                f.segs += 1;
                let psh = !seg.udp && seg.flags & PSH != 0;
                f.closed = seg.payload < f.mss || psh;
                let (closed, ip_len) = (f.closed, f.ip_len);
                if psh {
                    // The super-packet carries PSH when its last segment did.
                    out.prefix[VNET_HDR_LEN + ip_len + 13] |= PSH;
                }
                self.lists[k].push((buf, payload));
                if closed {
                    self.close(k);
                }
                return;
            }
            self.close(k);
        }
        if !seg.udp && seg.flags & PSH != 0 {
            self.single(buf, range);
            return;
        }
        if self.open.len() == MAX_OPEN {
            self.close(0);
        }
        // A new super-packet: this segment's headers become its prefix.
        let mut prefix = [0; PREFIX];
        prefix[VNET_HDR_LEN..VNET_HDR_LEN + seg.hdr_len].copy_from_slice(&pkt[..seg.hdr_len]);
        let (addrs, ports) = seg.key(pkt);
        let o = self.outs.len();
        self.outs.push(Out {
            prefix,
            prefix_len: VNET_HDR_LEN + seg.hdr_len,
            pieces: 0..0,
            flow: Some(Flow {
                v6: seg.v6,
                udp: seg.udp,
                addrs,
                ports,
                hdr_len: seg.hdr_len,
                ip_len: seg.ip_len,
                mss: seg.payload,
                next_seq: seg.seq.wrapping_add(seg.payload as u32),
                payload: seg.payload,
                segs: 1,
                closed: false,
            }),
        });
        let k = self.open.len();
        self.open.push(o);
        self.lists[k].clear();
        self.lists[k].push((buf, payload));
    }

    /// Whether `seg` may join the open super-packet `outs[o]`.
    fn joins(&self, o: usize, pkt: &[u8], seg: &Seg) -> bool {
        let out = &self.outs[o];
        let f = out.flow.as_ref().expect("open");
        let first = &out.prefix[VNET_HDR_LEN..VNET_HDR_LEN + f.hdr_len];
        let (ip, tcp) = (f.ip_len, f.hdr_len - f.ip_len);
        let fits = !f.closed
            && seg.hdr_len == f.hdr_len
            && seg.payload <= f.mss
            && f.segs < MAX_SEGS
            && f.hdr_len + f.payload + seg.payload <= MAX_IP_LEN;
        // IPv4: TOS (byte 1) and TTL (byte 8) as the first segment's (the rest of the header
        // was checked by `Seg::parse` or is rewritten). IPv6: version, traffic class and
        // flow label (bytes 0-3) and hop limit (byte 7).
        let ip_fields = if seg.v6 {
            pkt[..4] == first[..4] && pkt[7] == first[7]
        } else {
            pkt[1] == first[1] && pkt[8] == first[8]
        };
        // A UDP datagram needs nothing more (`open_for` matched addresses and ports).
        fits && ip_fields
            && (seg.udp
                || seg.seq == f.next_seq
                // TCP: ACK number (bytes 8-11), data offset, flags and window (12-15; PSH
                // may differ), options (20..).
                && pkt[ip + 8..ip + 12] == first[ip + 8..ip + 12]
                && pkt[ip + 12] == first[ip + 12]
                && pkt[ip + 13] & !PSH == first[ip + 13] & !PSH
                && pkt[ip + 14..ip + 16] == first[ip + 14..ip + 16]
                && pkt[ip + 20..ip + tcp] == first[ip + 20..ip + tcp])
    }

    /// Closes `open[k]`: its pieces move to `pieces` and its headers are finished.
    fn close(&mut self, k: usize) {
        let o = self.open.remove(k);
        let list = self.lists.remove(k);
        let at = self.pieces.len();
        self.pieces.extend(list.iter().cloned());
        self.lists.push(list);
        let out = &mut self.outs[o];
        out.pieces = at..self.pieces.len();
        let f = out.flow.take().expect("open");
        if f.segs == 1 {
            // One segment after all: write it as it came (its own checksum, no GSO).
            out.prefix[..VNET_HDR_LEN].fill(0);
            return;
        }
        let (n, segs) = if f.udp {
            (
                &mut self.stats.udp_super_packets,
                &mut self.stats.udp_coalesced,
            )
        } else {
            (
                &mut self.stats.tcp_super_packets,
                &mut self.stats.tcp_coalesced,
            )
        };
        *n += 1;
        *segs += f.segs as u64;
        finish(&mut out.prefix, &f);
    }

    /// Writes everything queued, oldest first: `write(bufs, prefix, pieces)` gets each
    /// packet's header prefix and its pieces. Returns how many writes failed and the last
    /// error; everything is gone afterwards either way.
    pub fn flush<B: AsRef<[u8]>>(
        &mut self,
        bufs: &[B],
        mut write: impl FnMut(&[u8], &mut dyn Iterator<Item = &[u8]>) -> io::Result<()>,
    ) -> (u64, Option<io::Error>) {
        while !self.open.is_empty() {
            self.close(0);
        }
        let (mut errors, mut last) = (0, None);
        for out in &self.outs {
            let mut pieces = self.pieces[out.pieces.clone()]
                .iter()
                .map(|(b, r)| &bufs[*b].as_ref()[r.clone()]);
            if let Err(e) = write(&out.prefix[..out.prefix_len], &mut pieces) {
                errors += 1;
                last = Some(e);
            }
        }
        self.outs.clear();
        self.pieces.clear();
        (errors, last)
    }
}

/// Fills in a super-packet's vnet header and fixes its IP and TCP (UDP) headers for the
/// whole length.
fn finish(prefix: &mut [u8; PREFIX], f: &Flow) {
    let total = f.hdr_len + f.payload;
    let l4_len = total - f.ip_len;
    let (h, rest) = prefix.split_at_mut(VNET_HDR_LEN);
    let (gso, csum_offset, proto) = match (f.udp, f.v6) {
        (true, _) => (GSO_UDP_L4, UDP_CSUM_OFFSET, IPPROTO_UDP),
        (false, true) => (GSO_TCPV6, TCP_CSUM_OFFSET, IPPROTO_TCP),
        (false, false) => (GSO_TCPV4, TCP_CSUM_OFFSET, IPPROTO_TCP),
    };
    h[0] = F_NEEDS_CSUM;
    h[1] = gso;
    h[2..4].copy_from_slice(&(f.hdr_len as u16).to_le_bytes());
    h[4..6].copy_from_slice(&(f.mss as u16).to_le_bytes());
    h[6..8].copy_from_slice(&(f.ip_len as u16).to_le_bytes());
    h[8..10].copy_from_slice(&(csum_offset as u16).to_le_bytes());
    if f.udp {
        // RFC 768: the UDP length covers header and data; the kernel rewrites it per
        // datagram when it segments.
        let at = f.ip_len + 4;
        rest[at..at + 2].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let pseudo = if f.v6 {
        // Payload length (RFC 8200 §3): everything after the fixed header.
        rest[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        sum(&rest[8..40], u64::from(proto) + l4_len as u64)
    } else {
        rest[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        rest[10..12].fill(0);
        let c = !fold(sum(&rest[..20], 0));
        rest[10..12].copy_from_slice(&c.to_be_bytes());
        sum(&rest[12..20], u64::from(proto) + l4_len as u64)
    };
    // NEEDS_CSUM: the field holds the pseudo-header sum, not complemented; the kernel (or a
    // NIC) adds the rest (virtio spec, "Packet Transmission").
    let at = f.ip_len + csum_offset;
    rest[at..at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
}

/// A parsed TCP segment or UDP datagram (`Seg::parse` returns `None` for anything else).
#[derive(Debug)]
struct Seg {
    v6: bool,
    udp: bool,
    ip_len: usize,
    /// IP + TCP (UDP) header length.
    hdr_len: usize,
    payload: usize,
    /// TCP only (0 for UDP).
    seq: u32,
    flags: u8,
    /// May be merged: the IP header allows it, it carries data, the transport checksum
    /// verifies, and for TCP only ACK (and PSH) are set.
    mergeable: bool,
}

impl Seg {
    /// The TCP segment or UDP datagram in `pkt`, an IPv4 or IPv6 packet; `None` for
    /// anything else.
    fn parse(pkt: &[u8]) -> Option<Seg> {
        let v6 = match pkt.first()? >> 4 {
            4 => false,
            6 => true,
            _ => return None,
        };
        // The transport right after the IP header (IPv6: no extension headers), whose
        // length the IP header gives; `pseudo` is the pseudo-header sum without the protocol.
        let (proto, ip_len, ip_ok, pseudo) = if v6 {
            let plen = usize::from(u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]));
            if pkt.len() != 40 + plen {
                return None;
            }
            (pkt[6], 40, true, sum(&pkt[8..40], plen as u64))
        } else {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            if ihl < 20 || total != pkt.len() || pkt.len() < ihl {
                return None;
            }
            // DF set, MF clear, offset 0 (RFC 791): not a fragment, may be segmented again.
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            let ok = ihl == 20 && frag == 0x4000;
            (pkt[9], ihl, ok, sum(&pkt[12..20], (total - ihl) as u64))
        };
        let l4 = &pkt[ip_len..];
        // RFC 9293 §3.1, RFC 768: the one's complement sum over pseudo-header and segment,
        // checksum included, is all ones when it verifies.
        let verifies = || fold(sum(l4, pseudo + u64::from(proto))) == 0xffff;
        match proto {
            IPPROTO_TCP => {
                let off = usize::from(*l4.get(12)? >> 4) * 4;
                if off < 20 || l4.len() < off {
                    return None;
                }
                let flags = l4[13];
                // A segment without payload (a pure ACK) is never merged: folded into a
                // super-packet it would vanish, and duplicate ACKs drive fast retransmit
                // (RFC 5681).
                let mergeable =
                    ip_ok && l4.len() > off && (flags == ACK || flags == ACK | PSH) && verifies();
                Some(Seg {
                    v6,
                    udp: false,
                    ip_len,
                    hdr_len: ip_len + off,
                    payload: l4.len() - off,
                    seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                    flags,
                    mergeable,
                })
            }
            IPPROTO_UDP => {
                if l4.len() < 8 {
                    return None;
                }
                // A UDP length that disagrees with the IP header's is written as it came.
                let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
                // RFC 768: an IPv4 datagram may go without a checksum (0); merged, it would
                // get one, and a corrupted payload would pass. It goes alone. (Over IPv6 a
                // zero checksum is invalid, RFC 8200 §8.1: alone too, for the kernel to drop.)
                let csum = u16::from_be_bytes([l4[6], l4[7]]);
                let mergeable =
                    ip_ok && ulen == l4.len() && l4.len() > 8 && csum != 0 && verifies();
                Some(Seg {
                    v6,
                    udp: true,
                    ip_len,
                    hdr_len: ip_len + 8,
                    payload: l4.len() - 8,
                    seq: 0,
                    flags: 0,
                    mergeable,
                })
            }
            _ => None,
        }
    }

    /// Addresses and ports: what names the flow (with the family and the protocol).
    fn key(&self, pkt: &[u8]) -> ([u8; 32], [u8; 4]) {
        let mut addrs = [0; 32];
        if self.v6 {
            addrs.copy_from_slice(&pkt[8..40]);
        } else {
            addrs[..8].copy_from_slice(&pkt[12..20]);
        }
        let p = &pkt[self.ip_len..self.ip_len + 4];
        (addrs, [p[0], p[1], p[2], p[3]])
    }
}

/// Adds `data` (as big-endian 16-bit words, an odd last byte padded with zero) to `acc`, a
/// one's complement sum not yet folded (RFC 1071).
fn sum(data: &[u8], mut acc: u64) -> u64 {
    // Four bytes at a time into a 64-bit accumulator: cannot overflow below 2^32 words.
    // Native-endian words give the byte-swapped sum on little-endian machines (RFC 1071
    // §2(B)), undone below by reading the folded result the same way.
    let mut native = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        native += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let f = fold(native);
    acc += u64::from(u16::from_be_bytes(f.to_ne_bytes()));
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a one's complement sum to 16 bits (end-around carries).
fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TCP or UDP checksum field of a packet (RFC 9293 §3.1, RFC 768), by the
    /// protocol its IP header names.
    fn l4_checksum(pkt: &mut [u8]) {
        let v6 = pkt[0] >> 4 == 6;
        let (ip, proto) = if v6 { (40, pkt[6]) } else { (20, pkt[9]) };
        let at = ip
            + if proto == IPPROTO_UDP {
                UDP_CSUM_OFFSET
            } else {
                TCP_CSUM_OFFSET
            };
        pkt[at..at + 2].fill(0);
        let len = u64::from(proto) + (pkt.len() - ip) as u64;
        let pseudo = if v6 {
            sum(&pkt[8..40], len)
        } else {
            sum(&pkt[12..20], len)
        };
        let c = !fold(sum(&pkt[ip..], pseudo));
        pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// An IPv4 (or IPv6) TCP segment with `len` payload bytes, TCP options `opts`.
    fn seg(v6: bool, sport: u16, seq: u32, flags: u8, len: usize) -> Vec<u8> {
        let opts = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
        let tcp_len = 20 + opts.len() + len;
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&"2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
            h[24..40].copy_from_slice(&"2001:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // some ID
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&[198, 18, 1, 1]);
            h[16..20].copy_from_slice(&[198, 18, 2, 1]);
            let c = !fold(sum(&h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        };
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = ((20 + opts.len()) / 4) as u8 * 16;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        p.extend(t);
        p.extend(opts);
        p.extend((0..len).map(|i| (seq as usize + i) as u8));
        l4_checksum(&mut p);
        p
    }

    /// A UDP datagram with `len` payload bytes from port `sport` (IPv4 ID `id`).
    fn dgram(v6: bool, sport: u16, id: u16, len: usize) -> Vec<u8> {
        let mut p = seg(v6, sport, u32::from(id), ACK, 0);
        let ip = if v6 { 40 } else { 20 };
        p.truncate(ip);
        let ulen = 8 + len;
        if v6 {
            p[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
            p[6] = IPPROTO_UDP;
        } else {
            p[2..4].copy_from_slice(&((20 + ulen) as u16).to_be_bytes());
            p[9] = IPPROTO_UDP;
            p[10..12].fill(0);
            let c = !fold(sum(&p, 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p.extend(sport.to_be_bytes());
        p.extend(5201u16.to_be_bytes());
        p.extend((ulen as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend((0..len).map(|i| (usize::from(id) * 3 + i) as u8));
        l4_checksum(&mut p);
        p
    }

    /// What `flush` writes, each as (vnet header, the rest).
    fn written(g: &mut Gro, bufs: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![];
        let (errors, _) = g.flush(bufs, |prefix, pieces| {
            let mut rest = prefix[VNET_HDR_LEN..].to_vec();
            for p in pieces {
                rest.extend_from_slice(p);
            }
            out.push((prefix[..VNET_HDR_LEN].to_vec(), rest));
            Ok(())
        });
        assert_eq!(errors, 0);
        out
    }

    /// Splits a super-packet as the kernel would (`gso_size` payload per segment, headers
    /// copied, sequence numbers advanced, lengths and checksums recomputed); a packet behind
    /// a zero header comes back as it is.
    fn resegment(hdr: &[u8], pkt: &[u8]) -> Vec<Vec<u8>> {
        if hdr[1] == 0 {
            assert_eq!(hdr, [0; VNET_HDR_LEN]);
            return vec![pkt.to_vec()];
        }
        let udp = hdr[1] == GSO_UDP_L4;
        let v6 = pkt[0] >> 4 == 6;
        if !udp {
            assert_eq!(hdr[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        }
        let hdr_len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        let mss = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        let ip = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let (csum, proto) = if udp { (6, 17) } else { (16, 6) };
        assert_eq!(hdr[0], F_NEEDS_CSUM);
        assert_eq!(usize::from(u16::from_le_bytes([hdr[8], hdr[9]])), csum);
        // The partial checksum: completing it over the whole segment must verify.
        let mut whole = pkt.to_vec();
        let c = !fold(sum(&whole[ip..], 0));
        let at = ip + csum;
        whole[at..at + 2].copy_from_slice(&c.to_be_bytes());
        let l4_len = (whole.len() - ip) as u64;
        if udp {
            assert_eq!(
                u64::from(u16::from_be_bytes([pkt[ip + 4], pkt[ip + 5]])),
                l4_len
            );
        }
        let pseudo = if v6 {
            sum(&whole[8..40], proto + l4_len)
        } else {
            assert_eq!(fold(sum(&whole[..20], 0)), 0xffff, "IPv4 header checksum");
            sum(&whole[12..20], proto + l4_len)
        };
        assert_eq!(
            fold(sum(&whole[ip..], pseudo)),
            0xffff,
            "super-packet checksum"
        );
        let seq0 = u32::from_be_bytes(pkt[ip + 4..ip + 8].try_into().unwrap());
        let mut out = vec![];
        for (i, chunk) in pkt[hdr_len..].chunks(mss).enumerate() {
            let mut s = pkt[..hdr_len].to_vec();
            s.extend_from_slice(chunk);
            if udp {
                let l = (8 + chunk.len()) as u16;
                s[ip + 4..ip + 6].copy_from_slice(&l.to_be_bytes());
            } else {
                let seq = seq0.wrapping_add((i * mss) as u32);
                s[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
            }
            if v6 {
                let l = (s.len() - 40) as u16;
                s[4..6].copy_from_slice(&l.to_be_bytes());
            } else {
                let l = s.len() as u16;
                s[2..4].copy_from_slice(&l.to_be_bytes());
            }
            // PSH only on the last segment.
            if !udp && (i + 1) * mss < pkt.len() - hdr_len {
                s[ip + 13] &= !PSH;
            }
            out.push(s);
        }
        out
    }

    /// Segment for segment, ignoring what the kernel rewrites (IPv4 ID and header
    /// checksum, TCP or UDP checksum).
    fn same(a: &[u8], b: &[u8]) -> bool {
        let strip = |p: &[u8]| {
            let mut p = p.to_vec();
            let ip = if p[0] >> 4 == 6 { 40 } else { 20 };
            let udp = p[if ip == 40 { 6 } else { 9 }] == IPPROTO_UDP;
            if ip == 20 {
                p[4..6].fill(0);
                p[10..12].fill(0);
            }
            let c = ip + if udp { 6 } else { 16 };
            p[c..c + 2].fill(0);
            p
        };
        strip(a) == strip(b)
    }

    fn check(bufs: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut g = Gro::new();
        g.set_udp(true);
        check_with(&mut g, bufs)
    }

    /// Pushes `bufs` into `g`, flushes, resegments what was written and compares.
    fn check_with(g: &mut Gro, bufs: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        for (i, b) in bufs.iter().enumerate() {
            assert!(g.push(i, 0..b.len(), b));
        }
        let w = written(g, bufs);
        let back: Vec<Vec<u8>> = w.iter().flat_map(|(h, p)| resegment(h, p)).collect();
        // Every packet comes back, flows in order (flows may interleave differently).
        let key = |p: &[u8]| Seg::parse(p).map(|s| (s.udp, s.key(p)));
        let mut want = bufs.to_vec();
        let mut got = back.clone();
        want.sort_by_key(|p| key(p));
        got.sort_by_key(|p| key(p));
        assert_eq!(want.len(), got.len(), "{w:?}");
        for (a, b) in want.iter().zip(&got) {
            assert!(same(a, b), "{a:?}\n{b:?}");
        }
        w
    }

    #[test]
    fn one_flow_becomes_one_super_packet() {
        for v6 in [false, true] {
            let bufs: Vec<Vec<u8>> = (0..10u32)
                .map(|i| seg(v6, 40000, 1000 + i * 1300, ACK, 1300))
                .collect();
            let w = check(&bufs);
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].0[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        }
    }

    #[test]
    fn short_last_and_psh_end_a_super_packet() {
        let mut bufs: Vec<Vec<u8>> = (0..4u32)
            .map(|i| seg(false, 1, i * 100, ACK, 100))
            .collect();
        bufs.push(seg(false, 1, 400, ACK, 50));
        bufs.push(seg(false, 1, 450, ACK, 100));
        bufs.push(seg(false, 1, 550, ACK | PSH, 100));
        bufs.push(seg(false, 1, 650, ACK, 100));
        let w = check(&bufs);
        // [0..5) with the short one last; [5, 6] ending in PSH; [7] alone.
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[1].1[20 + 13], ACK | PSH);
        assert_eq!(w[2].0, [0; VNET_HDR_LEN]);
    }

    #[test]
    fn interleaved_flows_each_coalesce() {
        let bufs: Vec<Vec<u8>> = (0..12u32)
            .map(|i| seg(false, 1 + (i % 3) as u16, (i / 3) * 200, ACK, 200))
            .collect();
        assert_eq!(check(&bufs).len(), 3);
    }

    #[test]
    fn what_must_not_merge_goes_alone() {
        let base = |seq| seg(false, 9, seq, ACK, 100);
        let mut gap = vec![base(0), base(100), base(300)];
        assert_eq!(check(&gap).len(), 2, "sequence gap");
        gap[2] = base(200);
        assert_eq!(check(&gap).len(), 1);
        // A pure ACK right after the data (same sequence number, as in a bidirectional
        // flow) is not folded in: it would vanish, and duplicate ACKs count (RFC 5681).
        let ack = vec![base(0), base(100), seg(false, 9, 200, ACK, 0)];
        assert_eq!(check(&ack).len(), 2);
        // FIN, SYN, RST, a bad checksum, a different window / ACK / TTL / options, no DF,
        // IPv4 options: the packet goes alone and the flow's super-packet ends before it.
        type Mutation = (&'static str, fn(&mut Vec<u8>));
        let muts: [Mutation; 8] = [
            ("fin", |p| p[33] |= FIN),
            ("syn", |p| p[33] |= 0x02),
            ("window", |p| p[34] ^= 1),
            ("ack", |p| p[28] ^= 1),
            ("ttl", |p| p[8] ^= 1),
            ("options", |p| p[44] ^= 1),
            ("no df", |p| p[6] = 0),
            ("checksum", |p| p[36] ^= 1),
        ];
        for (what, m) in muts {
            let mut bufs = vec![base(0), base(100), base(200), base(300)];
            m(&mut bufs[2]);
            if what != "checksum" && what != "no df" && what != "ttl" {
                // Keep the checksum right, so that only the field under test differs.
                l4_checksum(&mut bufs[2]);
            }
            if what == "no df" || what == "ttl" {
                bufs[2][10..12].fill(0);
                let c = !fold(sum(&bufs[2][..20], 0));
                bufs[2][10..12].copy_from_slice(&c.to_be_bytes());
            }
            let mut g = Gro::new();
            for (i, b) in bufs.iter().enumerate() {
                g.push(i, 0..b.len(), b);
            }
            let w = written(&mut g, &bufs);
            // [0, 1], [2] alone, [3]: three writes; the odd one keeps its own bytes.
            assert_eq!(w.len(), 3, "{what}: {w:?}");
            assert_eq!(w[1].0, [0; VNET_HDR_LEN], "{what}");
            assert_eq!(w[1].1, bufs[2], "{what}");
        }
    }

    #[test]
    fn non_tcp_and_malformed_pass_through() {
        let mut udp = seg(false, 1, 0, ACK, 10);
        udp[9] = 17;
        let mut icmp = udp.clone();
        icmp[9] = 1;
        let bufs = vec![
            udp.clone(),
            vec![0x45, 0, 0],
            vec![],
            vec![0x60; 30],
            udp,
            icmp,
        ];
        let mut g = Gro::new();
        for (i, b) in bufs.iter().enumerate() {
            assert!(!g.push(i, 0..b.len(), b), "{b:?}");
        }
        assert!(g.is_empty());
        assert!(written(&mut g, &bufs).is_empty());
        // With UDP on, the UDP one (its UDP length is off) is queued and written as it came.
        g.set_udp(true);
        assert!(g.push(0, 0..bufs[0].len(), &bufs[0]));
        assert!(!g.push(5, 0..bufs[5].len(), &bufs[5]), "ICMP");
        let w = written(&mut g, &bufs);
        assert_eq!(w, vec![(vec![0; VNET_HDR_LEN], bufs[0].clone())]);
        // TCP that may not be merged (IPv4 options here) is queued, written as it came.
        let mut opts = seg(false, 1, 0, ACK, 10);
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 0]);
        let total = opts.len() as u16;
        opts[2..4].copy_from_slice(&total.to_be_bytes());
        let bufs = vec![opts];
        assert!(g.push(0, 0..bufs[0].len(), &bufs[0]));
        let w = written(&mut g, &bufs);
        assert_eq!(w, vec![(vec![0; VNET_HDR_LEN], bufs[0].clone())]);
    }

    #[test]
    fn limits_split_long_runs() {
        // 100 segments of 1000 bytes: 64 per super-packet at most, and under 64 KiB.
        let bufs: Vec<Vec<u8>> = (0..100u32)
            .map(|i| seg(false, 1, i * 1000, ACK, 1000))
            .collect();
        let w = check(&bufs);
        assert!(w.iter().all(|(_, p)| p.len() <= MAX_IP_LEN), "{}", w.len());
        assert_eq!(w.len(), 2);
        // More open flows than MAX_OPEN: still every packet, in order per flow.
        let bufs: Vec<Vec<u8>> = (0..40u32)
            .map(|i| seg(false, (i % 10) as u16, (i / 10) * 100, ACK, 100))
            .collect();
        check(&bufs);
    }

    #[test]
    fn udp_datagrams_coalesce_with_uso() {
        for v6 in [false, true] {
            // 20 equal datagrams and a shorter last: one GSO_UDP_L4 super-packet.
            let mut bufs: Vec<Vec<u8>> = (0..20u16).map(|i| dgram(v6, 7, i, 1200)).collect();
            bufs.push(dgram(v6, 7, 20, 500));
            let mut g = Gro::new();
            g.set_udp(true);
            let w = check_with(&mut g, &bufs);
            assert_eq!(w.len(), 1, "{v6}");
            assert_eq!(w[0].0[1], GSO_UDP_L4);
            let stats = g.take_stats();
            assert_eq!((stats.udp_super_packets, stats.udp_coalesced), (1, 21));
            assert_eq!((stats.tcp_super_packets, stats.tcp_coalesced), (0, 0));
            assert_eq!(g.take_stats(), GroStats::default());
            assert_eq!(u16::from_le_bytes([w[0].0[4], w[0].0[5]]), 1200);
        }
        // After a shorter datagram the super-packet is closed; a larger one starts another.
        let bufs = vec![
            dgram(false, 7, 0, 100),
            dgram(false, 7, 1, 50),
            dgram(false, 7, 2, 100),
            dgram(false, 7, 3, 200),
        ];
        assert_eq!(check(&bufs).len(), 3);
        // A TCP flow with the same addresses and ports is another flow.
        let mut bufs: Vec<Vec<u8>> = (0..3u16).map(|i| dgram(false, 5201, i, 100)).collect();
        bufs.insert(1, seg(false, 5201, 0, ACK, 100));
        bufs.push(seg(false, 5201, 100, ACK, 100));
        assert_eq!(check(&bufs).len(), 2);
    }

    #[test]
    fn udp_that_must_not_merge_goes_alone() {
        type Mutation = (&'static str, fn(&mut Vec<u8>));
        let muts: [Mutation; 5] = [
            ("checksum", |p| p[30] ^= 1),
            ("no checksum", |p| p[26..28].fill(0)),
            ("ttl", |p| p[8] ^= 1),
            ("no df", |p| p[6] = 0),
            ("empty", |p| *p = dgram(false, 7, 2, 0)),
        ];
        for (what, m) in muts {
            let mut bufs: Vec<Vec<u8>> = (0..4u16).map(|i| dgram(false, 7, i, 100)).collect();
            m(&mut bufs[2]);
            if what == "ttl" || what == "no df" {
                bufs[2][10..12].fill(0);
                let c = !fold(sum(&bufs[2][..20], 0));
                bufs[2][10..12].copy_from_slice(&c.to_be_bytes());
            }
            let w = check(&bufs);
            assert_eq!(w.len(), 3, "{what}: {w:?}");
            assert_eq!(w[1], (vec![0; VNET_HDR_LEN], bufs[2].clone()), "{what}");
        }
        // Without USO on the device, UDP is not queued at all.
        let bufs = [dgram(true, 7, 0, 100)];
        assert!(!Gro::new().push(0, 0..bufs[0].len(), &bufs[0]));
    }

    /// One input packet of the property below: flow (3 is UDP), IPv6, flags, payload, a
    /// sequence gap, a broken checksum.
    type Spec = (u8, bool, u8, usize, bool, bool);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Decrypted packets are whatever the peer put in them: arbitrary bytes (often with
        /// a plausible IP/TCP start) never panic, and each comes out as written.
        #[test]
        fn arbitrary_bytes_pass_through(
            pkts in proptest::collection::vec(
                (proptest::sample::select(vec![0x45u8, 0x46, 0x60, 0x00]),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..120)),
                1..20,
            )
        ) {
            let bufs: Vec<Vec<u8>> = pkts
                .into_iter()
                .map(|(first, rest)| {
                    let mut p = vec![first];
                    p.extend(rest);
                    p
                })
                .collect();
            let mut g = Gro::new();
            g.set_udp(true);
            let mut queued = 0;
            for (i, b) in bufs.iter().enumerate() {
                if g.push(i, 0..b.len(), b) {
                    queued += b.len();
                }
            }
            let w = written(&mut g, &bufs);
            let total: usize = w.iter().map(|(_, p)| p.len()).sum();
            proptest::prop_assert!(total <= queued);
        }

        /// Whatever the mix (flows, families, flags, short segments, gaps, bad checksums),
        /// the kernel's segmentation of what is written gives back every packet, in order
        /// within its flow; a packet with a bad checksum is written alone, as it came.
        #[test]
        fn resegmenting_gives_back_every_packet(
            specs in proptest::collection::vec(
                (0u8..4, proptest::bool::ANY, 0u8..8, 0usize..6, proptest::bool::weighted(0.1),
                 proptest::bool::weighted(0.05)),
                1..80,
            )
        ) {
            let mut next = [[0u32; 2]; 4];
            let bufs: Vec<Vec<u8>> = specs
                .iter()
                .map(|&(f, v6, fl, size, gap, _): &Spec| {
                    let flags = match fl {
                        0 => ACK | PSH,
                        1 => ACK | FIN,
                        2 => 0x02,
                        _ => ACK,
                    };
                    let len = [300, 300, 300, 300, 120, 0][size];
                    let n = &mut next[usize::from(f)][usize::from(v6)];
                    if f == 3 {
                        *n += 1;
                        return dgram(v6, 100, *n as u16, len);
                    }
                    if gap {
                        *n = n.wrapping_add(7);
                    }
                    let p = seg(v6, 100 + u16::from(f), *n, flags, len);
                    *n = n.wrapping_add(len as u32);
                    p
                })
                .collect();
            let mut bufs = bufs;
            for (b, s) in bufs.iter_mut().zip(&specs) {
                if s.5 {
                    let ip = if s.1 { 40 } else { 20 };
                    b[ip + if s.0 == 3 { 6 } else { 16 }] ^= 0x55;
                }
            }
            let w = check(&bufs);
            for (b, s) in bufs.iter().zip(&specs) {
                if s.5 {
                    proptest::prop_assert!(
                        w.iter().any(|(h, p)| h == &[0; VNET_HDR_LEN] && p == b),
                        "a corrupted segment was merged"
                    );
                }
            }
        }
    }

    #[test]
    fn checksum_matches_a_plain_sum() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 63, 1000, 1001] {
            let d = &data[..len];
            let mut plain = 0u64;
            for c in d.chunks(2) {
                plain += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            assert_eq!(fold(sum(d, 5)), fold(plain + 5), "{len}");
        }
    }
}
