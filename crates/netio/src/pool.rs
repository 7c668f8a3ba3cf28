//! The datapath's buffer pool and batched TUN I/O: every buffer a packet passes through is
//! made once at start and reused, so forwarding allocates nothing per packet.
//!
//! * [`TunReader`]: reads from the TUN device. With offload on (`IFF_VNET_HDR`, see
//!   [`crate::tun`]), one read can return a TCP/UDP "super-packet" of up to 64 KiB that the
//!   kernel did not segment (GSO); tun-rs splits it into MTU-sized packets, each landing in
//!   its own buffer with the node's [`HEADROOM`] in front and [`TAILROOM`] behind, ready
//!   to be encrypted in place.
//! * [`TunWriter`]: collects decrypted packets and writes them in one go; with offload on,
//!   tun-rs first coalesces consecutive segments of a TCP/UDP flow into one super-packet
//!   (GRO), so the kernel's stack handles one packet where there were dozens.
//! * [`UdpRx`]: the slots `recvmmsg(2)` fills (see [`crate::batch`]).
//! * [`Knobs`]: switches for each optimisation, so each can be measured on its own.

use crate::batch::{RecvMeta, MAX_BATCH};
use esplab_node::{HEADROOM, TAILROOM};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use tun_rs::{AsyncDevice, DeviceImpl, GROTable, VIRTIO_NET_HDR_LEN};

/// Largest IP packet (and largest UDP datagram, and largest TUN super-packet).
pub const MAX_PACKET: usize = 65_535;

/// Packet buffers of the TUN reader. One super-packet of 64 KiB at the smallest TCP MSS
/// we expect (536, RFC 9293 §3.7.1) is 123 segments, so a read is only attempted with at
/// least [`TUN_READ_ROOM`] buffers free, and the batch is sent once fewer remain.
pub const TUN_SEGMENTS: usize = 192;

/// Free segment buffers needed before another TUN read.
pub const TUN_READ_ROOM: usize = 128;

/// Decrypted packets a [`TunWriter`] holds before it must be flushed.
pub const TUN_WRITE_BATCH: usize = 128;

/// Which datapath optimisations are on. All are by default; `ESPLAB_DATAPATH` switches
/// them off for measurements (a comma-separated list of `no-tun-offload`, `no-udp-gso`,
/// `no-udp-gro`, `no-batch`, `no-sad-batch`), see docs/PERFORMANCE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// TUN offload (virtio-net header, TSO/GSO reads, GRO writes).
    pub tun_offload: bool,
    /// `UDP_SEGMENT` sends.
    pub udp_gso: bool,
    /// `UDP_GRO` receives.
    pub udp_gro: bool,
    /// `recvmmsg`/`sendmmsg` on the UDP and raw ESP sockets (off: one datagram per call,
    /// as before batching).
    pub batch: bool,
    /// Underlay bursts through the agent's batch entry (SPIs of a burst looked up in one
    /// pass; off: one `handle_underlay_udp` per datagram).
    pub sad_batch: bool,
    /// The TUN → ESP direction on a thread of its own (off by default; also
    /// `datapath.tx_thread` in the config).
    pub tx_thread: bool,
    /// Decrypted packets of a burst written with `writev` from the buffers they were
    /// received in, TCP segments coalesced by esplab ([`crate::gro`]); off: copied into
    /// [`TunWriter`] and coalesced by tun-rs. Needs `tun_offload` and `sad_batch`.
    pub tun_writev: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
            batch: true,
            sad_batch: true,
            tx_thread: false,
            tun_writev: true,
        }
    }
}

impl Knobs {
    /// Parses an `ESPLAB_DATAPATH` value; unknown words are returned as the error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut k = Self::default();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "no-tun-offload" => k.tun_offload = false,
                "no-udp-gso" => k.udp_gso = false,
                "no-udp-gro" => k.udp_gro = false,
                "no-batch" => k.batch = false,
                "no-sad-batch" => k.sad_batch = false,
                "tx-thread" => k.tx_thread = true,
                "no-tun-writev" => k.tun_writev = false,
                other => return Err(other.to_string()),
            }
        }
        if !k.batch {
            // GSO and GRO ride on the batched calls.
            k.udp_gso = false;
            k.udp_gro = false;
        }
        // The vnet header it writes exists only with offload; the burst path carries the
        // buffer positions it needs.
        k.tun_writev &= k.tun_offload && k.sad_batch;
        Ok(k)
    }

    /// The switches that are off, for the start-up log line.
    pub fn describe(&self) -> String {
        let on = |b: bool, name: &str| {
            if b {
                name.to_string()
            } else {
                format!("no-{name}")
            }
        };
        let mut v = vec![
            on(self.tun_offload, "tun-offload"),
            on(self.batch, "batch"),
            on(self.udp_gso, "udp-gso"),
            on(self.udp_gro, "udp-gro"),
            on(self.sad_batch, "sad-batch"),
            on(self.tun_writev, "tun-writev"),
        ];
        if self.tx_thread {
            v.push("tx-thread".into());
        }
        v.join(",")
    }
}

/// Buffers for reading the TUN device.
pub struct TunReader {
    /// The raw read: virtio-net header + the (possibly unsegmented) packet.
    raw: Box<[u8]>,
    /// One packet each, at [`HEADROOM`], with [`TAILROOM`] spare behind the largest.
    pub segs: Vec<Vec<u8>>,
    /// `sizes[i]`: length of the packet in `segs[i]`.
    pub sizes: Vec<usize>,
}

impl TunReader {
    /// Buffers for packets of up to `mtu + slack` bytes.
    pub fn new(mtu: usize, slack: usize) -> Self {
        Self {
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            segs: (0..TUN_SEGMENTS)
                .map(|_| vec![0; HEADROOM + mtu + slack + TAILROOM])
                .collect(),
            sizes: vec![0; TUN_SEGMENTS],
        }
    }

    /// One read, without waiting, into the buffers from `first` on; returns how many
    /// packets it yielded (`WouldBlock` when none is queued). Errors with an OS error code
    /// are the device's; others are tun-rs refusing a malformed super-packet.
    pub fn read(&mut self, dev: &AsyncDevice, first: usize) -> io::Result<usize> {
        self.read_with(first, |raw, views, sizes| {
            dev.try_recv_multiple(raw, views, sizes, HEADROOM)
        })
    }

    /// [`read`](Self::read) straight from the descriptor, for a thread that waits on it
    /// itself (no tokio readiness to consult or clear).
    pub fn read_sync(&mut self, dev: &DeviceImpl, first: usize) -> io::Result<usize> {
        self.read_with(first, |raw, views, sizes| {
            dev.recv_multiple(raw, views, sizes, HEADROOM)
        })
    }

    fn read_with(
        &mut self,
        first: usize,
        recv: impl FnOnce(&mut [u8], &mut [&mut [u8]], &mut [usize]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let Self { raw, segs, sizes } = self;
        // Cut the packet buffers short by TAILROOM, so encryption always has its room
        // behind even the largest packet a read can put there.
        let end = segs[first].len() - TAILROOM;
        let mut views: [&mut [u8]; TUN_SEGMENTS] = [(); TUN_SEGMENTS].map(|_| &mut [][..]);
        let n = segs.len() - first;
        for (v, s) in views.iter_mut().zip(segs[first..].iter_mut()) {
            *v = &mut s[..end];
        }
        recv(raw, &mut views[..n], &mut sizes[first..])
    }
}

/// Decrypted packets waiting to be written to the TUN device.
pub struct TunWriter {
    /// `bufs[i]`: virtio-net header room, then the packet (the length is the end).
    bufs: Vec<Vec<u8>>,
    n: usize,
    gro: GROTable,
}

/// Where a packet starts in a [`TunWriter`] buffer: tun-rs writes the virtio-net header in
/// front of it when offload is on.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;

impl Default for TunWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TunWriter {
    /// Empty, with its buffers made: each can grow to one full coalesced super-packet.
    pub fn new() -> Self {
        Self {
            bufs: (0..TUN_WRITE_BATCH)
                .map(|_| Vec::with_capacity(TUN_OFFSET + MAX_PACKET))
                .collect(),
            n: 0,
            gro: GROTable::new(),
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Nothing waiting?
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether another packet needs a flush first.
    pub fn is_full(&self) -> bool {
        self.n == self.bufs.len()
    }

    /// Copies `pkt` in (the caller flushes first when [`is_full`](Self::is_full)).
    pub fn push(&mut self, pkt: &[u8]) {
        let b = &mut self.bufs[self.n];
        b.clear();
        // Within capacity (TUN_OFFSET + MAX_PACKET >= any IP packet): no allocation.
        b.resize(TUN_OFFSET, 0);
        b.extend_from_slice(pkt);
        self.n += 1;
    }

    /// Writes every waiting packet (coalesced when offload is on). Returns how many writes
    /// failed, with the last error; the packets are gone either way.
    pub fn flush(&mut self, dev: &DeviceImpl) -> (u64, Option<io::Error>) {
        if self.n == 0 {
            return (0, None);
        }
        // The device's own (synchronous) batched write under the async wrapper: the
        // descriptor is non-blocking and a TUN write never waits for a peer (the kernel
        // queues the packet or drops it), so this cannot stall the loop.
        let r = dev.send_multiple(&mut self.gro, &mut self.bufs[..self.n], TUN_OFFSET);
        self.n = 0;
        match r {
            Ok(_) => (0, None),
            Err(e) => (1, Some(e)),
        }
    }
}

/// Slots for batched UDP receives.
pub struct UdpRx {
    /// One datagram (or GRO run) each.
    pub slots: Vec<Box<[u8]>>,
    /// What `recvmmsg` put in each slot.
    pub meta: Vec<RecvMeta>,
}

impl UdpRx {
    /// No slots (allocates nothing): a placeholder while the real ones are lent out.
    pub fn none() -> Self {
        Self {
            slots: Vec::new(),
            meta: Vec::new(),
        }
    }

    /// `count` slots of 64 KiB (a GRO run can fill one).
    pub fn new(count: usize) -> Self {
        let count = count.clamp(1, MAX_BATCH);
        Self {
            slots: (0..count)
                .map(|_| vec![0; MAX_PACKET].into_boxed_slice())
                .collect(),
            meta: vec![
                RecvMeta {
                    len: 0,
                    from: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                    segment: 0,
                };
                count
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse() {
        assert_eq!(Knobs::parse("").unwrap(), Knobs::default());
        let k = Knobs::parse("no-tun-offload, no-udp-gso").unwrap();
        assert!(!k.tun_offload && !k.udp_gso && k.udp_gro && k.batch);
        let k = Knobs::parse("no-batch").unwrap();
        assert!(!k.batch && !k.udp_gso && !k.udp_gro && k.tun_offload);
        assert_eq!(Knobs::parse("no-such").unwrap_err(), "no-such");
        assert_eq!(
            Knobs::default().describe(),
            "tun-offload,batch,udp-gso,udp-gro,sad-batch,tun-writev"
        );
        let k = Knobs::parse("no-tun-writev").unwrap();
        assert!(!k.tun_writev && k.tun_offload);
        assert!(!Knobs::parse("no-tun-offload").unwrap().tun_writev);
        assert!(!Knobs::parse("no-sad-batch").unwrap().tun_writev);
        let k = Knobs::parse("no-sad-batch").unwrap();
        assert!(!k.sad_batch && k.batch && k.udp_gro);
        let k = Knobs::parse("tx-thread").unwrap();
        assert!(k.tx_thread && k.batch && k.sad_batch);
        assert!(k.describe().ends_with(",sad-batch,tun-writev,tx-thread"));
    }

    #[test]
    fn writer_fills_and_empties_without_growing() {
        let mut w = TunWriter::new();
        let caps: Vec<usize> = w.bufs.iter().map(Vec::capacity).collect();
        for i in 0..TUN_WRITE_BATCH {
            assert!(!w.is_full());
            w.push(&[i as u8; 1400]);
        }
        assert!(w.is_full());
        assert_eq!(w.len(), TUN_WRITE_BATCH);
        assert_eq!(&w.bufs[3][TUN_OFFSET..], &[3u8; 1400][..]);
        let after: Vec<usize> = w.bufs.iter().map(Vec::capacity).collect();
        assert_eq!(caps, after, "push must not reallocate");
    }
}
