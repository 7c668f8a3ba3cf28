//! The TUN → ESP direction: read inner packets from the TUN device (offloaded
//! super-packets split by tun-rs), encrypt each in place, send the ESP in batched
//! `sendmmsg` calls: UDP GSO runs on the NAT-T socket, one message per packet on the raw
//! socket (raw IP has no segmentation offload).
//!
//! [`TxPath`] is that work with its buffers. The daemon runs it on its datapath task, or,
//! with `[datapath] tx_thread = true`, on a thread of its own ([`TxThread`]), which holds
//! the node's [`TxHandle`] (the outbound half of the node, see `esplab_node::outbound`),
//! its own duplicates of the underlay sockets and its own flight-recorder ring. The two
//! threads share no lock on the packet path: the handle reads the node's published
//! policies, the recorder ring is locked once per wakeup (and by the datapath only when
//! it writes a dump), and the counters are single-writer atomics.

use crate::batch::SendQueue;
use crate::capture::{Direction, Ring, Transport};
use crate::clock::WallClock;
use crate::pool::{Knobs, TunReader, TUN_READ_ROOM, TUN_SEGMENTS};
use crate::underlay::Underlay;
use esplab_node::{Outbound, TxHandle, UnderlayEncap, HEADROOM};
use socket2::{SockAddr, Socket};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tun_rs::{AsyncDevice, DeviceImpl, SyncDevice};

/// TUN reads per wakeup before the loop looks at anything else.
const BATCH: usize = 64;

/// At most one I/O error line per this interval per thread; the counters have the exact
/// numbers.
pub(crate) const IO_NOTE_INTERVAL: Duration = Duration::from_secs(10);

/// Rate limit of I/O error lines.
#[derive(Debug, Default)]
pub(crate) struct IoNotes {
    /// When the last line was printed, and how many errors since.
    last: Option<(Instant, u64)>,
}

impl IoNotes {
    /// The line to print for this error now, if any. `what` is formatted only then: a
    /// failing underlay under load errs on every batch, and held errors cost no allocation.
    pub(crate) fn line(
        &mut self,
        now: Instant,
        what: std::fmt::Arguments<'_>,
        e: &io::Error,
    ) -> Option<String> {
        match &mut self.last {
            Some((last, held)) if now.duration_since(*last) < IO_NOTE_INTERVAL => {
                *held += 1;
                None
            }
            note => {
                let held = note.map(|(_, h)| h).unwrap_or(0);
                let more = if held > 0 {
                    format!(" ({held} more I/O errors since the last note)")
                } else {
                    String::new()
                };
                *note = Some((now, 0));
                Some(format!("{what}: {e}{more}"))
            }
        }
    }
}

/// What turns an inner packet into ESP: the agent (datapath task) or the node's
/// [`TxHandle`] (sending thread).
pub(crate) trait Encrypt {
    fn encrypt(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound;
}

impl Encrypt for esplab_node::Agent {
    fn encrypt(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound {
        self.handle_tun(now, buf, payload)
    }
}

impl Encrypt for TxHandle {
    fn encrypt(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound {
        self.outbound(now, buf, payload)
    }
}

/// Where sent ESP is recorded for the invalid-SPI dumps (nowhere with `capture.ring = 0`).
pub(crate) trait RecordOut {
    /// The ring sent packets go into, if any.
    fn ring(&mut self) -> Option<&mut Ring>;

    /// Offers a sent ESP packet to the recorder (sampled per SPI, see `Ring::offer`).
    fn record_out(
        &mut self,
        now: Instant,
        at: SystemTime,
        src: IpAddr,
        dst: IpAddr,
        t: Transport,
        pkt: &[u8],
    ) {
        if let Some(r) = self.ring() {
            r.offer(now, at, Direction::Out, src, dst, t, pkt);
        }
    }
}

impl RecordOut for Option<crate::capture::Capture> {
    fn ring(&mut self) -> Option<&mut Ring> {
        self.as_mut().map(crate::capture::Capture::ring_mut)
    }
}

impl RecordOut for Option<std::sync::MutexGuard<'_, Ring>> {
    fn ring(&mut self) -> Option<&mut Ring> {
        self.as_deref_mut()
    }
}

/// Where the TUN device is read from.
pub(crate) enum TunSource<'a> {
    /// Through tokio's readiness (the datapath task).
    Async(&'a AsyncDevice),
    /// Straight from the non-blocking descriptor (the sending thread).
    Sync(&'a DeviceImpl),
}

/// Why the direction cannot go on: the TUN device failed.
#[derive(Debug)]
pub(crate) struct TunFailed(pub io::Error);

/// The underlay sockets, duplicated for sending (same sockets, descriptors of their own,
/// so the sending thread needs nothing of tokio's).
pub(crate) struct TxSockets {
    udp: Option<UdpSocket>,
    raw: Option<Socket>,
    local: IpAddr,
    port: u16,
}

impl TxSockets {
    pub(crate) fn dup(u: &Underlay) -> io::Result<Self> {
        Ok(Self {
            udp: match &u.udp {
                Some(s) => Some(UdpSocket::from(s.as_fd().try_clone_to_owned()?)),
                None => None,
            },
            raw: match &u.raw {
                Some(s) => Some(s.get_ref().try_clone()?),
                None => None,
            },
            local: u.local,
            port: u.port,
        })
    }
}

/// The TUN → ESP direction with its buffers (all made at start).
pub(crate) struct TxPath {
    /// One buffer per packet of a batch (HEADROOM, packet, TAILROOM).
    tun_rx: TunReader,
    /// Encrypted packets waiting for one `sendmmsg` (they stay in `tun_rx` until then).
    udp_tx: SendQueue,
    /// The same for raw ESP (`encap = "esp"`): never GSO.
    raw_tx: SendQueue,
    /// `sendmmsg` batching on (otherwise one send per packet).
    batch: bool,
    socks: TxSockets,
    pub(crate) counters: TxCounters,
    name: String,
}

impl TxPath {
    pub(crate) fn new(
        mtu: usize,
        slack: usize,
        knobs: &Knobs,
        socks: TxSockets,
        name: &str,
    ) -> Self {
        Self {
            tun_rx: TunReader::new(mtu, slack),
            udp_tx: SendQueue::new(TUN_SEGMENTS, knobs.udp_gso),
            raw_tx: SendQueue::new(TUN_SEGMENTS, false),
            batch: knobs.batch,
            socks,
            counters: TxCounters::default(),
            name: name.to_string(),
        }
    }

    /// Inner packets from the kernel: encrypt and send to the peer. Each TUN read may
    /// yield many packets (a GSO super-packet split by tun-rs); they are encrypted in
    /// place in their own buffers and leave in batched sends. `note` gets
    /// each I/O error that lost packets. Returns whether anything was read.
    pub(crate) fn tun_to_net(
        &mut self,
        tun: TunSource<'_>,
        enc: &mut impl Encrypt,
        rec: &mut impl RecordOut,
        clock: &WallClock,
        note: &mut impl FnMut(std::fmt::Arguments<'_>, &io::Error),
    ) -> Result<bool, TunFailed> {
        // Buffers [0, used) hold packets of this batch (queued in `udp_tx`/`raw_tx` or
        // dropped).
        let mut used = 0;
        let mut any = false;
        for _ in 0..BATCH {
            if TUN_SEGMENTS - used < TUN_READ_ROOM {
                self.flush_tx(note);
                used = 0;
            }
            let r = match tun {
                TunSource::Async(d) => self.tun_rx.read(d, used),
                TunSource::Sync(d) => self.tun_rx.read_sync(d, used),
            };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) if source.raw_os_error().is_some() => return Err(TunFailed(source)),
                Err(e) => {
                    // tun-rs refused what the kernel handed over (a malformed offload
                    // header): that packet is lost, the device is fine.
                    self.counters.tun_rx_errors += 1;
                    note(format_args!("reading from {}", self.name), &e);
                    continue;
                }
            };
            any = true;
            let now = Instant::now();
            for i in used..used + n {
                let payload = HEADROOM..HEADROOM + self.tun_rx.sizes[i];
                let Outbound::Send {
                    esp,
                    dst,
                    port,
                    encap,
                } = enc.encrypt(now, &mut self.tun_rx.segs[i], payload)
                else {
                    // Drops were counted by the node.
                    continue;
                };
                let pkt = &self.tun_rx.segs[i][esp.clone()];
                let t = match encap {
                    UnderlayEncap::Udp => Transport::Udp {
                        sport: self.socks.port,
                        dport: port,
                    },
                    UnderlayEncap::Raw => Transport::Esp,
                };
                rec.record_out(now, clock.wall(now), self.socks.local, dst, t, pkt);
                // Queued packets leave with the batch's `sendmmsg` (`flush_tx`); without
                // batching each is a send of its own.
                let r = match (encap, &self.socks.udp, &self.socks.raw) {
                    (UnderlayEncap::Udp, Some(_), _) if self.batch => {
                        self.udp_tx.push(i, esp, SocketAddr::new(dst, port));
                        continue;
                    }
                    (UnderlayEncap::Udp, Some(s), _) => {
                        self.counters.underlay_tx_calls += 1;
                        s.send_to(pkt, SocketAddr::new(dst, port))
                    }
                    // The port of the address is ignored for raw IPv4; raw IPv6 takes 0 as
                    // "the socket's protocol" (raw(7), ipv6(7)).
                    (UnderlayEncap::Raw, _, Some(_)) if self.batch => {
                        self.raw_tx.push(i, esp, SocketAddr::new(dst, 0));
                        continue;
                    }
                    (UnderlayEncap::Raw, _, Some(s)) => {
                        self.counters.underlay_tx_calls += 1;
                        s.send_to(pkt, &SockAddr::from(SocketAddr::new(dst, 0)))
                    }
                    (UnderlayEncap::Udp, None, _) => Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no UDP socket (no peer uses encap = \"udp\")",
                    )),
                    (UnderlayEncap::Raw, _, None) => Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no raw ESP socket (no peer uses encap = \"esp\")",
                    )),
                };
                if let Err(e) = r {
                    // A full socket buffer drops the packet like a full NIC queue would.
                    self.counters.underlay_tx_errors += 1;
                    note(format_args!("sending to {dst}"), &e);
                }
            }
            used += n;
        }
        self.flush_tx(note);
        Ok(any)
    }

    /// Sends the queued ESP packets: `sendmmsg` on each socket (GSO runs on UDP).
    fn flush_tx(&mut self, note: &mut impl FnMut(std::fmt::Arguments<'_>, &io::Error)) {
        let queues = [
            (
                &mut self.udp_tx,
                self.socks.udp.as_ref().map(|s| s.as_raw_fd()),
            ),
            (
                &mut self.raw_tx,
                self.socks.raw.as_ref().map(|s| s.as_raw_fd()),
            ),
        ];
        for (queue, fd) in queues {
            // A queue only fills while its socket exists.
            let Some(fd) = fd.filter(|_| !queue.is_empty()) else {
                continue;
            };
            // Straight to the descriptor: a send never waits, and what the socket refuses
            // is dropped.
            let f = queue.flush(fd, &self.tun_rx.segs);
            self.counters.underlay_tx_calls += f.calls as u64;
            if f.dropped > 0 {
                self.counters.underlay_tx_errors += f.dropped as u64;
                let e = io::Error::from(f.error.unwrap_or(io::ErrorKind::Other));
                note(format_args!("sending {} ESP packets", f.dropped), &e);
            }
        }
    }
}

/// What the sending thread tells the datapath task.
#[derive(Debug)]
pub(crate) enum TxNote {
    /// A (rate-limited) I/O error line for the log.
    Line(String),
    /// The TUN device failed; the thread has stopped.
    Failed(io::Error),
}

/// The I/O counters of the TUN → ESP direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxCounters {
    /// Sends the socket refused (counted per datagram).
    pub(crate) underlay_tx_errors: u64,
    /// Reads tun-rs refused (a malformed offload header; the device is fine).
    pub(crate) tun_rx_errors: u64,
    /// Send system calls for ESP (`sendmmsg` batches count once).
    pub(crate) underlay_tx_calls: u64,
}

impl TxCounters {
    /// What changed since `base` (counters only grow, so this is exact across wrapping).
    pub(crate) fn since(self, base: Self) -> Self {
        Self {
            underlay_tx_errors: self
                .underlay_tx_errors
                .wrapping_sub(base.underlay_tx_errors),
            tun_rx_errors: self.tun_rx_errors.wrapping_sub(base.tun_rx_errors),
            underlay_tx_calls: self.underlay_tx_calls.wrapping_sub(base.underlay_tx_calls),
        }
    }
}

/// The sending thread's counters, read by `show counters` (single writer: the thread).
#[derive(Debug, Default)]
pub(crate) struct TxStatus {
    underlay_tx_errors: AtomicU64,
    tun_rx_errors: AtomicU64,
    underlay_tx_calls: AtomicU64,
}

impl TxStatus {
    pub(crate) fn load(&self) -> TxCounters {
        TxCounters {
            underlay_tx_errors: self.underlay_tx_errors.load(Relaxed),
            tun_rx_errors: self.tun_rx_errors.load(Relaxed),
            underlay_tx_calls: self.underlay_tx_calls.load(Relaxed),
        }
    }

    fn store(&self, c: &TxCounters) {
        self.underlay_tx_errors.store(c.underlay_tx_errors, Relaxed);
        self.tun_rx_errors.store(c.tun_rx_errors, Relaxed);
        self.underlay_tx_calls.store(c.underlay_tx_calls, Relaxed);
    }
}

/// The TUN → ESP direction on a thread of its own.
pub(crate) struct TxThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    pub(crate) status: Arc<TxStatus>,
    pub(crate) notes: Receiver<TxNote>,
    /// Its flight-recorder ring (`None` with `capture.ring = 0`).
    pub(crate) ring: Option<Arc<Mutex<Ring>>>,
}

/// How long the thread sleeps in `poll(2)` at most, so a stop is seen.
const POLL_MS: i32 = 100;

impl TxThread {
    /// Starts the thread.
    pub(crate) fn spawn(
        tun: Arc<SyncDevice>,
        mut path: TxPath,
        mut handle: TxHandle,
        ring: Option<Ring>,
        clock: WallClock,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(TxStatus::default());
        let ring = ring.map(|r| Arc::new(Mutex::new(r)));
        let (note_tx, notes) = std::sync::mpsc::sync_channel(16);
        let (s, st, rg) = (stop.clone(), status.clone(), ring.clone());
        let join = std::thread::Builder::new()
            .name("esplab-tx".into())
            .spawn(move || {
                run(
                    &tun,
                    &mut path,
                    &mut handle,
                    rg.as_deref(),
                    clock,
                    &s,
                    &st,
                    note_tx,
                )
            })?;
        Ok(Self {
            stop,
            join: Some(join),
            status,
            notes,
            ring,
        })
    }

    /// Whether the thread has ended without being asked to (a TUN failure whose note was
    /// lost to a full channel, or a panic).
    pub(crate) fn died(&self) -> bool {
        !self.stop.load(Relaxed) && self.join.as_ref().is_some_and(|j| j.is_finished())
    }

    /// Stops the thread and waits for it (at most about [`POLL_MS`]).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for TxThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `fd` is readable or `ms` passed; `Ok(false)` on timeout.
fn wait_readable(fd: i32, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid, initialised pollfd that outlives the call, and the count
    // passed is 1.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    match r {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => Err(io::Error::last_os_error()),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    tun: &SyncDevice,
    path: &mut TxPath,
    handle: &mut TxHandle,
    ring: Option<&Mutex<Ring>>,
    clock: WallClock,
    stop: &AtomicBool,
    status: &TxStatus,
    notes: SyncSender<TxNote>,
) {
    let mut io_notes = IoNotes::default();
    let fd = tun.as_raw_fd();
    while !stop.load(Relaxed) {
        match wait_readable(fd, POLL_MS) {
            Ok(false) => {
                // Idle: drop our hold on SAs (and keys) the node has removed since.
                handle.refresh();
                continue;
            }
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = notes.try_send(TxNote::Failed(e));
                return;
            }
        }
        // Locked once per wakeup (up to BATCH reads), never per packet; the datapath task
        // takes it only to write a dump.
        let mut rec = ring.map(|r| r.lock().unwrap_or_else(|e| e.into_inner()));
        let mut note = |what: std::fmt::Arguments<'_>, e: &io::Error| {
            if let Some(l) = io_notes.line(Instant::now(), what, e) {
                let _ = notes.try_send(TxNote::Line(l));
            }
        };
        let r = path.tun_to_net(TunSource::Sync(tun), handle, &mut rec, &clock, &mut note);
        drop(rec);
        status.store(&path.counters);
        if let Err(TunFailed(e)) = r {
            let _ = notes.try_send(TxNote::Failed(e));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per interval; the errors held in between are counted into the next line.
    #[test]
    fn io_notes_rate_limit_and_count_held_errors() {
        let t = Instant::now();
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let mut n = IoNotes::default();
        let first = n.line(t, format_args!("sending to {}", "198.18.0.2"), &e);
        assert!(first.unwrap().starts_with("sending to 198.18.0.2: "));
        for k in 1..=3 {
            let at = t + IO_NOTE_INTERVAL / 4 * k;
            assert_eq!(n.line(at, format_args!("sending to x"), &e), None);
        }
        let next = n
            .line(t + IO_NOTE_INTERVAL, format_args!("reading"), &e)
            .unwrap();
        assert!(
            next.ends_with("(3 more I/O errors since the last note)"),
            "{next}"
        );
    }
}
