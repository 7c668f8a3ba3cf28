//! Batched socket I/O for the datapath: `recvmmsg(2)` / `sendmmsg(2)`, with UDP
//! segmentation offload (`UDP_SEGMENT`, "GSO") on send and UDP generic receive offload
//! (`UDP_GRO`) on receive (Linux `udp(7)`). The raw ESP socket uses the same calls without
//! the offloads (a raw IP socket has neither), one message per packet.
//!
//! Why: at 1400-byte packets the per-packet cost of the crypto is about 0.35 µs, while one
//! `sendto(2)`/`recvfrom(2)` round through the stack costs several µs. One system call per
//! batch, and (with GSO) one trip through the UDP/IP stack and the veth/NIC per run of
//! equal-sized datagrams to the same peer, leaves the CPU to the crypto.
//!
//! Everything here works on caller-owned buffers (a fixed pool made once at start): no
//! allocation per packet or per batch; the kernel descriptors (`mmsghdr`, `iovec`,
//! addresses, control messages) live in fixed-size arrays on the stack of each call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::RawFd;

/// Most datagrams (or GSO runs) handled by one `recvmmsg`/`sendmmsg` call.
pub const MAX_BATCH: usize = 64;

/// Most segments the kernel accepts in one `UDP_SEGMENT` send (`UDP_MAX_SEGMENTS` in
/// `include/linux/udp.h` is 64 before Linux 6.9, 128 since).
const MAX_GSO_SEGMENTS: usize = 64;

/// Largest UDP payload of one GSO send: the IP datagram limit minus IPv6 + UDP headers.
const MAX_GSO_BYTES: usize = 65_535 - 40 - 8;

/// Room for one control message carrying a `u16` or an `int` (`CMSG_SPACE(sizeof(int))`
/// is 24 on 64-bit Linux), rounded up and kept 8-byte aligned by the `u64` element type.
const CMSG_WORDS: usize = 4;

/// What one received datagram (or GRO run of datagrams) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received into the slot.
    pub len: usize,
    /// Who sent it.
    pub from: SocketAddr,
    /// With `UDP_GRO`: the size of each coalesced datagram (the last may be shorter);
    /// otherwise `len`.
    pub segment: usize,
}

impl RecvMeta {
    /// The datagrams in the slot, as ranges (one, unless the kernel coalesced several).
    pub fn segments(&self) -> impl Iterator<Item = Range<usize>> {
        let (len, seg) = (self.len, self.segment.max(1));
        (0..len.div_ceil(seg)).map(move |i| i * seg..((i + 1) * seg).min(len))
    }
}

/// Asks the kernel to hand coalesced runs of datagrams to this socket (`UDP_GRO`, Linux
/// 5.0+). Returns whether it agreed; when not, every datagram arrives on its own.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is a socket the caller owns; `on` is a live `c_int` whose address and
    // size are passed together, and the kernel only reads that many bytes.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Receives up to `slots.len()` (at most [`MAX_BATCH`]) datagrams without waiting, each
/// into its own slot; `meta[i]` describes `slots[i]`. Returns how many were received
/// (`WouldBlock` when none were queued). A datagram longer than its slot is cut short
/// by the kernel, exactly as `recvfrom(2)` would; slots should hold 65 535 bytes.
pub fn recv_batch(fd: RawFd, slots: &mut [Box<[u8]>], meta: &mut [RecvMeta]) -> io::Result<usize> {
    let n = slots.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: an array of plain C structs, valid when all-zero (family 0, zero bytes).
    let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above (null pointers, zero lengths).
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    let mut cmsgs = [[0u64; CMSG_WORDS]; MAX_BATCH];
    // SAFETY: as above (null pointers, zero lengths and flags).
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for i in 0..n {
        iovs[i].iov_base = slots[i].as_mut_ptr().cast();
        iovs[i].iov_len = slots[i].len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = cmsgs[i].as_mut_ptr().cast();
        h.msg_controllen = size_of::<[u64; CMSG_WORDS]>() as _;
    }
    // SAFETY: `hdrs[..n]` point only at live locals of this frame (addresses, iovecs,
    // control buffers) and at `slots[..n]`, which stay borrowed mutably for the call; each
    // length passed is the size of the memory it describes, so the kernel writes in bounds.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = r as usize;
    for i in 0..got {
        let len = hdrs[i].msg_len as usize;
        let from = sockaddr_to_std(&addrs[i])
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let segment = gro_segment(&hdrs[i].msg_hdr).unwrap_or(len);
        meta[i] = RecvMeta {
            len: len.min(slots[i].len()),
            from,
            segment: if segment == 0 { len } else { segment },
        };
    }
    Ok(got)
}

/// The `UDP_GRO` segment size the kernel attached to a received message, if any.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: `h` was filled by `recvmmsg`: `msg_control`/`msg_controllen` describe our
    // control buffer and the bytes the kernel wrote into it, which is exactly what the
    // CMSG_* macros walk; each data read is of an `int` inside a message whose `cmsg_len`
    // covers it (`CMSG_LEN(sizeof(int))` checked), read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// One datagram waiting in a [`SendQueue`]: `bufs[buf][range]` to `to`.
#[derive(Debug, Clone)]
struct Pending {
    buf: usize,
    range: Range<usize>,
    to: SocketAddr,
}

/// What a [`SendQueue::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams dropped because the socket refused them (full buffer, no route, ...).
    pub dropped: usize,
    /// The first error seen, if any (the kind is enough for the log line).
    pub error: Option<io::ErrorKind>,
    /// System calls made.
    pub calls: usize,
}

/// Datagrams to send in one go. Consecutive datagrams to the same destination with the
/// same length (the last of a run may be shorter) go out as one `UDP_SEGMENT` send when
/// GSO is on; the runs (or single datagrams) of a flush share one `sendmmsg` call.
#[derive(Debug)]
pub struct SendQueue {
    pending: Vec<Pending>,
    gso: bool,
}

impl SendQueue {
    /// An empty queue holding up to `capacity` datagrams (allocated once, here).
    pub fn new(capacity: usize, gso: bool) -> Self {
        Self {
            pending: Vec::with_capacity(capacity),
            gso,
        }
    }

    /// Whether GSO sends are used (it switches itself off if the kernel refuses them).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Nothing queued?
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether another datagram fits without growing the queue.
    pub fn is_full(&self) -> bool {
        self.pending.len() == self.pending.capacity()
    }

    /// Queues `bufs[buf][range]` for `to` (the buffers are passed again to `flush`).
    /// A full queue must be flushed first; pushing anyway grows it (one allocation).
    pub fn push(&mut self, buf: usize, range: Range<usize>, to: SocketAddr) {
        self.pending.push(Pending { buf, range, to });
    }

    /// Sends everything queued on `fd` (non-blocking) and empties the queue. What the
    /// socket does not take (`EAGAIN`: full buffer) is dropped, like a full NIC queue.
    pub fn flush<B: AsRef<[u8]>>(&mut self, fd: RawFd, bufs: &[B]) -> Flushed {
        let mut out = Flushed::default();
        let mut start = 0;
        while start < self.pending.len() {
            match self.send_some(fd, bufs, start) {
                Ok((datagrams, calls)) => {
                    out.sent += datagrams;
                    out.calls += calls;
                    start += datagrams;
                }
                Err(e) => {
                    out.calls += 1;
                    let gso_refused = self.run_len(start) > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
                    if gso_refused {
                        // The egress device cannot checksum-offload, or the kernel has no
                        // UDP GSO: send datagram by datagram from now on.
                        self.gso = false;
                        continue;
                    }
                    // Drop the first datagram (or run) and carry on with the rest: one bad
                    // destination must not hold back the others.
                    let skip = self.run_len(start);
                    out.dropped += skip;
                    out.error.get_or_insert(e.kind());
                    start += skip;
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The buffer is full: everything else would fail the same way.
                        out.dropped += self.pending.len() - start;
                        break;
                    }
                }
            }
        }
        self.pending.clear();
        out
    }

    /// Length of the run of datagrams starting at `start` that can go out as one GSO
    /// send (1 without GSO).
    fn run_len(&self, start: usize) -> usize {
        let p = &self.pending;
        if !self.gso {
            return 1;
        }
        let first = &p[start];
        let size = first.range.len();
        let mut total = size;
        let mut n = 1;
        while start + n < p.len() && n < MAX_GSO_SEGMENTS {
            let q = &p[start + n];
            let len = q.range.len();
            if q.to != first.to || len > size || total + len > MAX_GSO_BYTES || len == 0 {
                break;
            }
            total += len;
            n += 1;
            if len < size {
                // The kernel's rule for UDP_SEGMENT (udp(7)): only the last segment may
                // be shorter than the segment size.
                break;
            }
        }
        n
    }

    /// One `sendmmsg` for as many runs from `start` as fit; returns (datagrams sent,
    /// calls made). An error is returned only when not even the first message went out.
    fn send_some<B: AsRef<[u8]>>(
        &self,
        fd: RawFd,
        bufs: &[B],
        start: usize,
    ) -> io::Result<(usize, usize)> {
        // SAFETY: an array of plain C structs, valid when all-zero (family 0, zero bytes).
        let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above (null pointers, zero lengths).
        let mut iovs: [libc::iovec; MAX_BATCH * 2] = unsafe { zeroed() };
        let mut cmsgs = [[0u64; CMSG_WORDS]; MAX_BATCH];
        // SAFETY: as above (null pointers, zero lengths and flags).
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let mut runs = [0usize; MAX_BATCH];
        let (mut m, mut iov_used, mut i) = (0, 0, start);
        while i < self.pending.len() && m < MAX_BATCH {
            let run = self.run_len(i);
            if iov_used + run > iovs.len() {
                break;
            }
            let first = &self.pending[i];
            for (k, p) in self.pending[i..i + run].iter().enumerate() {
                let bytes = &bufs[p.buf].as_ref()[p.range.clone()];
                // The kernel only reads through this pointer (`sendmmsg` takes a const
                // view of the data despite `iovec`'s `*mut`).
                iovs[iov_used + k].iov_base = bytes.as_ptr() as *mut libc::c_void;
                iovs[iov_used + k].iov_len = bytes.len();
            }
            let namelen = std_to_sockaddr(first.to, &mut addrs[m]);
            let h = &mut hdrs[m].msg_hdr;
            h.msg_name = (&mut addrs[m] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = namelen;
            h.msg_iov = &mut iovs[iov_used];
            h.msg_iovlen = run as _;
            if run > 1 {
                set_segment_cmsg(h, &mut cmsgs[m], first.range.len());
            }
            runs[m] = run;
            iov_used += run;
            m += 1;
            i += run;
        }
        // SAFETY: every header points at live locals of this frame (addresses, iovecs,
        // control buffers, each with its true length) and at bytes of `bufs`, which are
        // borrowed for the whole call; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), m as libc::c_uint, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let done = r as usize;
        Ok((runs[..done].iter().sum(), 1))
    }
}

/// Attaches a `UDP_SEGMENT` control message (segment size `size`) to `h`.
fn set_segment_cmsg(h: &mut libc::msghdr, buf: &mut [u64; CMSG_WORDS], size: usize) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size; it fits in `buf` (24 <= 32 bytes).
    h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: `msg_control` points at `buf`, which is 8-byte aligned, zeroed and at least
    // `msg_controllen` bytes long, so CMSG_FIRSTHDR returns a header inside it and the
    // `u16` written at CMSG_DATA lies within CMSG_LEN(2) <= msg_controllen bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        // Segments are at most 64 KiB (checked by the caller's MAX_GSO_BYTES).
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
    }
}

/// A kernel socket address as a std one (IPv4 and IPv6 only).
fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which is smaller
            // than `sockaddr_storage` and has no stricter alignment.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `a` into `s`; returns the length to pass as `msg_namelen`.
fn std_to_sockaddr(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(a) => {
            // SAFETY: `sockaddr_in` fits in `sockaddr_storage` with compatible alignment;
            // every field is written below (the rest stays zero).
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Receives until `want` datagrams (GRO runs split back) arrived or 10 s passed.
    fn recv_all(b: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut slots: Vec<Box<[u8]>> = (0..8).map(|_| vec![0u8; 65_535].into()).collect();
        let mut meta = [RecvMeta {
            len: 0,
            from: "0.0.0.0:0".parse().unwrap(),
            segment: 0,
        }; 8];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want && Instant::now() < deadline {
            match recv_batch(b.as_raw_fd(), &mut slots, &mut meta) {
                Ok(n) => {
                    for (s, m) in slots.iter().zip(&meta).take(n) {
                        for r in m.segments() {
                            got.push((s[r].to_vec(), m.from));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("recv_batch: {e}"),
            }
        }
        got
    }

    fn datagrams() -> Vec<Vec<u8>> {
        // Three of 1000 bytes, one of 300 (a GSO run), then one of 1200 (a new run: it is
        // longer than the segment size), to a single destination.
        let mut v: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        v.push(vec![7; 300]);
        v.push(vec![9; 1200]);
        v
    }

    fn send_and_check(gso: bool, gro: bool) {
        let (a, b) = pair();
        if gro {
            // Loopback may or may not coalesce; either way the datagrams must come back
            // exactly as sent.
            enable_gro(b.as_raw_fd());
        }
        let to = b.local_addr().unwrap();
        let bufs = datagrams();
        let mut q = SendQueue::new(16, gso);
        for (i, d) in bufs.iter().enumerate() {
            q.push(i, 0..d.len(), to);
        }
        let f = q.flush(a.as_raw_fd(), &bufs);
        assert_eq!(f.sent, bufs.len(), "{f:?}");
        assert_eq!(f.dropped, 0);
        assert!(q.is_empty());
        let got = recv_all(&b, bufs.len());
        let from = a.local_addr().unwrap();
        assert_eq!(got.len(), bufs.len());
        for (g, want) in got.iter().zip(&bufs) {
            assert_eq!(&g.0, want);
            assert_eq!(g.1, from);
        }
    }

    #[test]
    fn sendmmsg_then_recvmmsg_round_trip() {
        send_and_check(false, false);
    }

    #[test]
    fn gso_runs_arrive_as_the_datagrams_sent() {
        send_and_check(true, false);
    }

    #[test]
    fn gso_with_gro_receiver_splits_back() {
        send_and_check(true, true);
    }

    #[test]
    fn runs_group_equal_sizes_to_one_destination() {
        let to1: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let to2: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut q = SendQueue::new(16, true);
        for _ in 0..3 {
            q.push(0, 0..100, to1);
        }
        q.push(0, 0..50, to1); // shorter: ends the run
        q.push(0, 0..100, to1); // new run
        q.push(0, 0..100, to2); // other destination: new run
        assert_eq!(q.run_len(0), 4);
        assert_eq!(q.run_len(4), 1);
        assert_eq!(q.run_len(5), 1);
        let no = SendQueue {
            pending: q.pending.clone(),
            gso: false,
        };
        assert_eq!(no.run_len(0), 1);
    }

    #[test]
    fn run_never_exceeds_the_kernel_limits() {
        let to: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut q = SendQueue::new(200, true);
        for _ in 0..200 {
            q.push(0, 0..100, to);
        }
        assert_eq!(q.run_len(0), MAX_GSO_SEGMENTS);
        let mut q = SendQueue::new(100, true);
        for _ in 0..100 {
            q.push(0, 0..1400, to);
        }
        // 46 * 1400 = 64 400 <= 65 487 < 47 * 1400.
        assert_eq!(q.run_len(0), 46);
    }

    #[test]
    fn segments_split_a_gro_slot() {
        let m = RecvMeta {
            len: 2500,
            from: "127.0.0.1:1".parse().unwrap(),
            segment: 1000,
        };
        let v: Vec<_> = m.segments().collect();
        assert_eq!(v, vec![0..1000, 1000..2000, 2000..2500]);
        let one = RecvMeta { segment: 2500, ..m };
        assert_eq!(one.segments().count(), 1);
        let empty = RecvMeta { len: 0, ..m };
        assert_eq!(empty.segments().count(), 0);
    }

    #[test]
    fn flush_to_a_refused_destination_drops_and_continues() {
        let (a, b) = pair();
        let good = b.local_addr().unwrap();
        // Port 0 is refused by sendmsg(2) with EINVAL.
        let bad: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bufs = [vec![1u8; 10], vec![2u8; 10]];
        let mut q = SendQueue::new(4, false);
        q.push(0, 0..10, bad);
        q.push(1, 0..10, good);
        let f = q.flush(a.as_raw_fd(), &bufs);
        assert_eq!((f.sent, f.dropped), (1, 1), "{f:?}");
        assert!(f.error.is_some());
        let got = recv_all(&b, 1);
        assert_eq!(got[0].0, vec![2u8; 10]);
    }
}
