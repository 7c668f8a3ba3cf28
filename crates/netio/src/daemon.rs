//! `esplab peer`: one node on a TUN device and the underlay sockets.
//!
//! Runtime: tokio current-thread. The node is a single piece of mutable state and a
//! packet's work is a short burst of crypto, so one task owns it and runs the datapath:
//! no locks, no `Sync` node. The control connections are other tasks on the same thread;
//! they only run between packet batches and reach the node through a bounded channel.
//!
//! Loop: wait until the TUN device, a socket, the control channel, the 1 s tick or a
//! signal is ready; drain the ready source with non-blocking batched reads (up to [`BATCH`]
//! TUN reads, each possibly a 64 KiB offloaded super-packet; one `recvmmsg` of up to 64
//! datagrams or GRO runs, handed to the agent in groups whose SPIs are looked up in one
//! pass, `Agent::handle_underlay_udp_batch`; one `recvmmsg` of up to 64 packets on the
//! raw ESP socket) into buffers made once at start (pool.rs); send the results in batched
//! writes (`sendmmsg`, with UDP GSO on the UDP socket, tx.rs; decrypted TCP and
//! UDP coalesced by gro.rs into GSO super-packets, each one `writev` from the receive
//! buffers; anything else through tun-rs's `send_multiple`); then hand the node's events
//! to the log, the ring, followers and the events file.
//!
//! With `[datapath] tx_thread = true` the TUN → ESP direction (tx.rs: TUN read, encrypt,
//! `sendmmsg`) runs on a thread of its own with the node's outbound half
//! (`Node::split_tx`), and this task keeps everything else: ESP → TUN, IKE, recovery,
//! timers and the control socket. Off by default: on the 2-core machine it was measured on,
//! both cores are busy during a transfer and a second thread per daemon gains nothing
//! (docs/PERFORMANCE.md, "End to end over TUN").

use crate::batch;
use crate::capture::{Capture, Direction, Transport};
use crate::clock::WallClock;
use crate::config::{Config, SaDirection};
use crate::control::{CounterRow, EventRecord, Request, Response, SaRow};
use crate::events::EventSink;
use crate::gro::{self, Gro, GroStats};
use crate::log::Logger;
use crate::pool::{Knobs, TunWriter, UdpRx};
use crate::route::{self, RouteError, Routes};
use crate::server::{self, ControlError, Ctl};
use crate::tun::{self, Tun, TunError};
use crate::tx::{IoNotes, TunFailed, TunSource, TxCounters, TxNote, TxPath, TxSockets, TxThread};
use crate::underlay::{Underlay, UnderlayError};
use esplab_esp::{DropReason, Encap};
use esplab_node::{
    Agent, AgentConfig, AgentError, AgentEvent, Event, Inbound, NodeError, UdpDatagram,
    UnderlayEncap, BATCH as NODE_BATCH,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Packets taken from one source per wakeup before the others get a turn.
pub const BATCH: usize = 64;

/// Room past the MTU in the TUN read buffer, so an oversized read is seen, not truncated.
const TUN_SLACK: usize = 64;

/// Underlay receive buffer: the largest IP datagram. A peer with a larger MTU than ours
/// still gets its packets decrypted (they may then be too big for our TUN, which says so).
const UNDERLAY_BUF: usize = 65_535;

/// Why the daemon could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The node refused a configured SA.
    #[error("installing {dir} SA 0x{spi:08x} for peer {peer}: {source}")]
    Install {
        /// `inbound` or `outbound`.
        dir: &'static str,
        /// The SPI.
        spi: u32,
        /// Peer name.
        peer: String,
        /// Why.
        source: NodeError,
    },
    /// The IKE configuration.
    #[error("IKE: {0}")]
    Ike(#[from] AgentError),
    /// The IKE socket (UDP 500).
    #[error("IKE socket {addr}: {source}")]
    IkeSocket {
        /// Its address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The TUN device.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// Reading the TUN device failed (it was removed under us?).
    #[error("reading from TUN device {name}: {source}")]
    TunIo {
        /// Device name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// An underlay socket.
    #[error(transparent)]
    Underlay(#[from] UnderlayError),
    /// Routing.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A log or events file.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// `log.file` or `log.events_file`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot start: {0}")]
    Runtime(io::Error),
    /// `ESPLAB_DATAPATH` names a switch that does not exist.
    #[error("ESPLAB_DATAPATH: unknown switch {0:?} (known: no-tun-offload, no-udp-gso, no-udp-gro, no-batch, no-sad-batch, no-tun-writev, tx-thread)")]
    Knobs(String),
}

/// Runs the daemon until SIGINT or SIGTERM (then returns `Ok`), or until a fatal error.
/// Everything it set up (routes, TUN device, control socket) is undone before it returns.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(serve(config))
}

fn encap_name(e: UnderlayEncap, port: u16) -> String {
    match e {
        UnderlayEncap::Udp => format!("udp/{port}"),
        UnderlayEncap::Raw => "esp".into(),
    }
}

async fn serve(config: Config) -> Result<(), DaemonError> {
    // Refuse first if another daemon answers on the control socket: it most likely owns
    // this TUN device and these addresses too.
    if std::os::unix::net::UnixStream::connect(&config.control_socket).is_ok() {
        return Err(ControlError::AlreadyRunning(config.control_socket.clone()).into());
    }
    let name = config.node.name.clone();
    let mut log =
        Logger::new(&name, config.log_file.as_deref()).map_err(|source| DaemonError::File {
            what: "log.file",
            path: config.log_file.clone().unwrap_or_default(),
            source,
        })?;
    let clock = WallClock::new();
    let events = EventSink::new(&name, clock, config.events_file.as_deref())
        .map(|e| e.with_rate_limit(config.events_per_second))
        .map_err(|source| DaemonError::File {
            what: "log.events_file",
            path: config.events_file.clone().unwrap_or_default(),
            source,
        })?;
    for w in &config.warnings {
        log.line(&format!("warning: {w}"));
    }

    // The node first: a bad SA stops us before anything on the host changes.
    let now = Instant::now();
    let mut agent = Agent::new(
        AgentConfig {
            node: config.node.clone(),
            ike: config.ike.clone().unwrap_or_default(),
            debug_keys: config.debug_keys,
            recovery: config.recovery.clone(),
        },
        now,
    )?;
    let node = agent.node_mut();
    let peers = &config.node.peers;
    for sa in &config.sas {
        let p = &peers[sa.peer];
        let spi = sa.params.spi;
        let (dir, r) = match sa.direction {
            SaDirection::In => ("inbound", node.install_inbound(sa.peer, &sa.params, now)),
            SaDirection::Out => ("outbound", node.install_outbound(sa.peer, &sa.params, now)),
        };
        r.map_err(|source| DaemonError::Install {
            dir,
            spi,
            peer: p.name.clone(),
            source,
        })?;
        let esn = if sa.params.esn { ", esn" } else { "" };
        let what = match sa.direction {
            SaDirection::In => format!(
                "from peer {} ({} {}), replay window {}{esn}",
                p.name,
                p.address,
                encap_name(p.encap, p.port),
                sa.params.replay_window
            ),
            SaDirection::Out => format!(
                "to peer {} ({} {}){esn}",
                p.name,
                p.address,
                encap_name(p.encap, p.port)
            ),
        };
        log.line(&format!(
            "SA installed: {dir} spi 0x{spi:08x} {} {what}",
            sa.params.alg.name()
        ));
    }

    let v6 = matches!(config.tun.address, Some((IpAddr::V6(_), _)))
        || peers
            .iter()
            .flat_map(|p| p.local_ts.iter().chain(&p.remote_ts))
            .any(|t| t.start_addr().is_ipv6());
    // Datapath optimisations, all on unless switched off for a measurement (pool.rs).
    let mut knobs = match std::env::var("ESPLAB_DATAPATH") {
        Ok(v) => Knobs::parse(&v).map_err(DaemonError::Knobs)?,
        Err(_) => Knobs::default(),
    };
    knobs.tx_thread |= config.tx_thread;
    let tun = tun::open(&config.tun, v6, knobs.tun_offload, knobs.tx_thread)?;
    let local = config.node.local;
    let port = peers
        .first()
        .map(|p| p.port)
        .unwrap_or(esplab_esp::wire::NAT_T_PORT);
    // IKE (RFC 7296 §2): UDP 500 and, behind the non-ESP marker, the NAT-T socket.
    let ike_sock = if config.ike.is_some() {
        let addr = SocketAddr::new(local, esplab_node::agent::IKE_PORT);
        let err = |source| DaemonError::IkeSocket { addr, source };
        let s = std::net::UdpSocket::bind(addr).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        Some(tokio::net::UdpSocket::from_std(s).map_err(err)?)
    } else {
        None
    };
    let underlay = Underlay::open(
        local,
        port,
        crate::underlay::needs_udp(peers.iter().map(|p| p.encap), config.ike.is_some()),
        peers.iter().any(|p| p.encap == UnderlayEncap::Raw),
    )?;
    let routes = if config.tun.routes {
        let plan = route::plan(peers, &route::host_addresses()?);
        Routes::add(&config.tun.name, &plan)?
    } else {
        Routes::add(&config.tun.name, &[])?
    };
    let (listener, socket_file) = server::bind(&config.control_socket)?;
    // The last privileged step was above: from here on, no root (privs.rs).
    let dropped = crate::privs::drop_if_configured(config.user.as_deref());
    if let Some(l) = dropped.map_err(DaemonError::Runtime)? {
        log.line(&l);
    }
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let server = tokio::spawn(server::serve(listener, ctl_tx, name.clone()));

    let mut encaps: Vec<String> = Vec::new();
    if ike_sock.is_some() {
        encaps.push("ike/500".into());
    }
    if underlay.udp.is_some() {
        encaps.push(format!("udp/{port}"));
    }
    if underlay.raw.is_some() {
        encaps.push("esp".into());
    }
    let route_list: Vec<String> = routes.routes().iter().map(|r| r.to_string()).collect();
    log.line(&format!(
        "up: tun {} mtu {}{}, underlay {local} {}, routes [{}], control {}",
        config.tun.name,
        config.tun.mtu,
        config
            .tun
            .address
            .map(|(a, l)| format!(" address {a}/{l}"))
            .unwrap_or_default(),
        encaps.join("+"),
        route_list.join(", "),
        config.control_socket.display()
    ));

    let mtu = config.tun.mtu as usize;
    if config.debug_keys {
        log.line("debug-keys: key material of every negotiated SA will be logged");
    }
    // Manual SAs: their keys are in the config; lines for the dumps' .uat files.
    let manual_uat = config
        .sas
        .iter()
        .map(|sa| {
            let peer = peers[sa.peer].address;
            let (src, dst) = match sa.direction {
                SaDirection::In => (peer, local),
                SaDirection::Out => (local, peer),
            };
            esplab_node::agent::esp_sa_uat_line(src, dst, &sa.params)
        })
        .collect();
    let capture = Capture::new(
        config.capture.clone(),
        &name,
        mtu,
        manual_uat,
        config.debug_keys,
    );
    if let Some(c) = &capture {
        log.line(&format!(
            "capture: recording the last {} underlay packets{}; on invalid SPI, dumps to {} (at most one per {:?}){}",
            c.ring().capacity(),
            match config.capture.per_spi_interval {
                i if i.is_zero() => String::new(),
                i => format!(" (ESP: one per SPI per {i:?})"),
            },
            config.capture.dir.display(),
            config.capture.min_interval,
            config
                .capture
                .on_event
                .as_ref()
                .map(|p| format!(", then runs {}", p.display()))
                .unwrap_or_default()
        ));
    }
    // UDP GRO needs the kernel's consent (Linux 5.0+); without it datagrams come one by one.
    let udp_gro = knobs.udp_gro
        && underlay
            .udp
            .as_ref()
            .is_some_and(|u| batch::enable_gro(u.as_raw_fd()));
    log.line(&format!(
        "datapath: {}{}",
        knobs.describe(),
        if knobs.udp_gro && !udp_gro {
            " (UDP GRO refused by the kernel)"
        } else {
            ""
        }
    ));
    let socks = TxSockets::dup(&underlay).map_err(DaemonError::Runtime)?;
    let tx_path = TxPath::new(mtu, TUN_SLACK, &knobs, socks, &config.tun.name);
    let mut capture = capture;
    let (tx_path, tx_thread) = match &tun {
        Tun::Async(_) => (Some(tx_path), None),
        Tun::Shared(dev) => {
            // The TUN → ESP direction on a thread of its own (tx.rs): it takes the node's
            // outbound half, the read buffers, duplicated sockets and a recorder ring.
            let handle = agent.node_mut().split_tx();
            let ring = capture.as_ref().map(Capture::make_tx_ring);
            let t = TxThread::spawn(dev.clone(), tx_path, handle, ring, clock)
                .map_err(DaemonError::Runtime)?;
            if let (Some(c), Some(r)) = (&mut capture, &t.ring) {
                c.set_tx_ring(r.clone());
            }
            log.line("datapath: TUN -> ESP on a thread of its own (esplab-tx)");
            (None, Some(t))
        }
    };
    let mut gro = Gro::new();
    // UDP super-packets need USO on the device (Linux 6.2+; tun-rs asks for it).
    gro.set_udp(tun.device().udp_gso());
    let mut dp = Datapath {
        agent,
        ike_sock,
        tun,
        tun_name: config.tun.name.clone(),
        underlay,
        log,
        events,
        io: IoCounters::default(),
        io_notes: IoNotes::default(),
        tx: tx_path,
        tx_thread,
        tx_base: TxCounters::default(),
        tun_tx: TunWriter::new(),
        gro,
        udp_rx: UdpRx::new(if knobs.batch { batch::MAX_BATCH } else { 1 }),
        knobs,
        to_tun: vec![0; UNDERLAY_BUF],
        capture,
        clock,
    };
    let result = dp.run(ctl_rx).await;
    if let Some(t) = &mut dp.tx_thread {
        t.stop();
    }
    server.abort();
    let _ = server.await;
    let msg = match &result {
        Ok(sig) => format!("{sig}: stopping"),
        Err(e) => format!("stopping on error: {e}"),
    };
    dp.log.line(&msg);
    let Datapath { tun, mut log, .. } = dp;
    drop(routes);
    drop(tun);
    drop(socket_file);
    log.line(&format!(
        "stopped: routes removed, tun {} closed, control socket removed",
        config.tun.name
    ));
    result.map(|_| ())
}

/// I/O failures the node cannot see (it only returns verdicts).
#[derive(Debug, Default, Clone, Copy)]
struct IoCounters {
    underlay_tx_errors: u64,
    underlay_rx_errors: u64,
    tun_tx_errors: u64,
    tun_rx_errors: u64,
    /// Send and receive system calls on the underlay sockets (batches count once).
    underlay_tx_calls: u64,
    underlay_rx_calls: u64,
    /// esplab's GRO on the TUN writes (`gro.rs`).
    gro: GroStats,
}

impl IoCounters {
    fn named(&self) -> [CounterRow; 10] {
        let c = |name: &str, value| CounterRow {
            name: name.into(),
            value,
        };
        [
            c("UNDERLAY_TX_ERRORS", self.underlay_tx_errors),
            c("UNDERLAY_RX_ERRORS", self.underlay_rx_errors),
            c("TUN_TX_ERRORS", self.tun_tx_errors),
            c("TUN_RX_ERRORS", self.tun_rx_errors),
            c("UNDERLAY_TX_CALLS", self.underlay_tx_calls),
            c("UNDERLAY_RX_CALLS", self.underlay_rx_calls),
            c("TUN_TCP_SUPER_PACKETS", self.gro.tcp_super_packets),
            c("TUN_TCP_COALESCED", self.gro.tcp_coalesced),
            c("TUN_UDP_SUPER_PACKETS", self.gro.udp_super_packets),
            c("TUN_UDP_COALESCED", self.gro.udp_coalesced),
        ]
    }

    fn add_tx(&mut self, t: TxCounters) {
        self.underlay_tx_errors += t.underlay_tx_errors;
        self.tun_rx_errors += t.tun_rx_errors;
        self.underlay_tx_calls += t.underlay_tx_calls;
    }
}

/// What a receive call on an ESP socket gave ([`Datapath::received`]).
enum Received<T> {
    Data(T),
    /// Interrupted by a signal: call again.
    Again,
    /// Nothing queued, or an error (counted and logged): stop reading for now.
    Done,
}

enum Wake {
    Tun(io::Result<()>),
    Udp(io::Result<()>),
    Raw(io::Result<()>),
    Ike(io::Result<()>),
    Timer,
    Ctl(Option<Ctl>),
    Tick,
    Stop(&'static str),
}

struct Datapath {
    agent: Agent,
    /// UDP 500, when some peer uses IKE.
    ike_sock: Option<tokio::net::UdpSocket>,
    tun: Tun,
    tun_name: String,
    underlay: Underlay,
    log: Logger,
    events: EventSink,
    io: IoCounters,
    /// Rate limit of I/O error lines.
    io_notes: IoNotes,
    /// TUN → underlay, when this task runs it (`None`: the sending thread has it).
    tx: Option<TxPath>,
    /// The sending thread, with `datapath.tx_thread`.
    tx_thread: Option<TxThread>,
    /// The sending thread's I/O counters at the last `clear counters`.
    tx_base: TxCounters,
    /// Underlay → TUN: decrypted packets waiting for one batched write.
    tun_tx: TunWriter,
    /// Underlay → TUN with `tun_writev`: packets of the burst being handled, coalesced and
    /// written from the receive slots.
    gro: Gro,
    /// Underlay → TUN: the `recvmmsg` slots of the NAT-T socket.
    udp_rx: UdpRx,
    /// Which datapath optimisations are on.
    knobs: Knobs,
    /// Underlay → TUN: decrypted in place.
    to_tun: Vec<u8>,
    /// The invalid-SPI flight recorder (`None` when `capture.ring = 0`).
    capture: Option<Capture>,
    /// Wall time for recorded packets.
    clock: WallClock,
}

/// Offers a UDP datagram received from `from` on `local` to the recorder, before it is
/// decrypted in place; whether it was recorded (ESP is sampled per SPI). With `late` the
/// datagram was sampled out and turned out to carry an SPI trouble: recorded regardless.
fn record_udp(
    c: &mut Capture,
    clock: &WallClock,
    now: Instant,
    from: SocketAddr,
    local: SocketAddr,
    bytes: &[u8],
    late: bool,
) -> bool {
    let (at, t) = (
        clock.wall(now),
        Transport::Udp {
            sport: from.port(),
            dport: local.port(),
        },
    );
    if late {
        c.record(at, Direction::In, from.ip(), local.ip(), t, bytes);
        return true;
    }
    c.ring_mut()
        .offer(now, at, Direction::In, from.ip(), local.ip(), t, bytes)
}

/// Writes one packet to the TUN device from its pieces: `writev(2)` gathers the header
/// prefix and the payloads from where they lie, so the bytes are copied once, by the kernel.
fn tun_writev(fd: RawFd, prefix: &[u8], pieces: &mut dyn Iterator<Item = &[u8]>) -> io::Result<()> {
    const NONE: libc::iovec = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let iovec = |p: &[u8]| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    };
    let mut iov = [NONE; gro::MAX_SEGS + 1];
    iov[0] = iovec(prefix);
    let mut n = 1;
    for p in pieces {
        let Some(v) = iov.get_mut(n) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many pieces",
            ));
        };
        *v = iovec(p);
        n += 1;
    }
    // SAFETY: the `n` iovecs point into slices borrowed for the whole call; writev(2) only
    // reads through them, and `n` is at most the array's length.
    let r = unsafe { libc::writev(fd, iov.as_ptr(), n as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an inbound packet the recorder sampled out is recorded after its verdict: drops
/// for its SPI (an invalid-SPI dump must show the packets that caused it). These are
/// decided before any decryption, so the buffer still holds the packet as received.
fn record_late(v: &Inbound) -> bool {
    matches!(
        v,
        Inbound::Drop(DropReason::UnknownSpi | DropReason::RetiredSpi | DropReason::ReservedSpi)
    )
}

/// Waits on an optional channel (forever once it is gone).
async fn recv_ctl(rx: &mut Option<mpsc::Receiver<Ctl>>) -> Option<Ctl> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Datapath {
    async fn run(&mut self, ctl: mpsc::Receiver<Ctl>) -> Result<&'static str, DaemonError> {
        let mut ctl = Some(ctl);
        let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.agent.poll_timeout();
            let ike_sock = self.ike_sock.as_ref();
            let wake = tokio::select! {
                r = async {
                    match ike_sock {
                        Some(s) => s.readable().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Ike(r),
                _ = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Timer,
                r = async {
                    match &self.tun {
                        Tun::Async(d) => d.readable().await,
                        // The sending thread reads it.
                        Tun::Shared(_) => std::future::pending().await,
                    }
                } => Wake::Tun(r),
                r = self.underlay.udp_readable() => Wake::Udp(r),
                r = self.underlay.raw_readable() => Wake::Raw(r),
                m = recv_ctl(&mut ctl) => Wake::Ctl(m),
                _ = tick.tick() => Wake::Tick,
                _ = sigint.recv() => Wake::Stop("SIGINT"),
                _ = sigterm.recv() => Wake::Stop("SIGTERM"),
            };
            match wake {
                Wake::Tun(r) => {
                    r.map_err(|source| DaemonError::TunIo {
                        name: self.tun_name.clone(),
                        source,
                    })?;
                    self.tun_to_net()?;
                }
                Wake::Udp(r) => {
                    if let Err(e) = r {
                        self.io_error(format_args!("UDP socket"), &e);
                    }
                    self.udp_to_tun();
                }
                Wake::Raw(r) => {
                    if let Err(e) = r {
                        self.io_error(format_args!("raw ESP socket"), &e);
                    }
                    self.raw_to_tun();
                }
                Wake::Ike(r) => {
                    if let Err(e) = r {
                        self.io_error(format_args!("IKE socket"), &e);
                    }
                    self.ike_in();
                }
                Wake::Timer => self.agent.handle_timeout(Instant::now()),
                Wake::Ctl(Some(c)) => self.control(c),
                Wake::Ctl(None) => {
                    // The control server is gone (it only stops with the daemon): keep
                    // forwarding packets.
                    ctl = None;
                }
                Wake::Tick => {
                    self.tx_notes()?;
                    self.agent.handle_timeout(Instant::now());
                    // Finished on_event scripts must not stay zombies.
                    if let Some(c) = &mut self.capture {
                        c.reap();
                    }
                }
                Wake::Stop(sig) => return Ok(sig),
            }
            self.flush_ike();
            self.drain_events();
        }
    }

    /// IKE datagrams on UDP 500.
    fn ike_in(&mut self) {
        let local = SocketAddr::new(self.underlay.local, esplab_node::agent::IKE_PORT);
        for _ in 0..BATCH {
            let Some(s) = &self.ike_sock else { return };
            let (n, from) = match s.try_recv_from(&mut self.to_tun) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.io.underlay_rx_errors += 1;
                    self.io_error(format_args!("receiving on the IKE socket"), &e);
                    return;
                }
            };
            let now = Instant::now();
            self.record(now, Direction::In, from, local, |b| &b[..n]);
            self.agent
                .handle_underlay_udp(now, local, from, &mut self.to_tun, 0..n);
        }
    }

    /// Sends the IKE datagrams the agent queued: from port 500 or from the NAT-T socket.
    fn flush_ike(&mut self) {
        while let Some(t) = self.agent.poll_transmit() {
            let r = if t.local.port() == esplab_node::agent::IKE_PORT {
                match &self.ike_sock {
                    Some(s) => s.try_send_to(&t.data, t.remote),
                    None => Err(io::Error::new(io::ErrorKind::NotConnected, "no IKE socket")),
                }
            } else {
                match &self.underlay.udp {
                    Some(s) => s.try_send_to(&t.data, t.remote),
                    None => Err(io::Error::new(io::ErrorKind::NotConnected, "no UDP socket")),
                }
            };
            if let Some(c) = &mut self.capture {
                let local = if t.local.ip().is_unspecified() {
                    SocketAddr::new(self.underlay.local, t.local.port())
                } else {
                    t.local
                };
                c.record(
                    self.clock.wall(Instant::now()),
                    Direction::Out,
                    local.ip(),
                    t.remote.ip(),
                    Transport::Udp {
                        sport: local.port(),
                        dport: t.remote.port(),
                    },
                    &t.data,
                );
            }
            if let Err(e) = r {
                self.io.underlay_tx_errors += 1;
                self.io_error(format_args!("sending IKE to {}", t.remote), &e);
            }
        }
    }

    fn drain_events(&mut self) {
        let mut any = false;
        while let Some(ev) = self.agent.poll_event() {
            self.capture_event(&ev);
            match &ev {
                AgentEvent::Node(e) => self.events.node_event(e, &mut self.log),
                other => {
                    // IKE and recovery lines are rate-limited there.
                    self.events.agent_log(other, &mut self.log);
                    self.events.agent_event(other);
                }
            }
            any = true;
        }
        // The rate limit's "events-suppressed" summary also comes when the flood is over.
        any |= self.events.tick(Instant::now(), &mut self.log);
        if any {
            self.events.flush();
        }
    }

    /// Records an underlay datagram received from `from` on `local` (UDP), before the node
    /// decrypts it in place.
    fn record(
        &mut self,
        now: Instant,
        dir: Direction,
        from: SocketAddr,
        local: SocketAddr,
        bytes: impl FnOnce(&[u8]) -> &[u8],
    ) {
        if let Some(c) = &mut self.capture {
            c.record(
                self.clock.wall(now),
                dir,
                from.ip(),
                local.ip(),
                Transport::Udp {
                    sport: from.port(),
                    dport: local.port(),
                },
                bytes(&self.to_tun),
            );
        }
    }

    /// Feeds the recorder: negotiated keys, and a dump (plus `on_event`) on invalid SPI.
    fn capture_event(&mut self, ev: &AgentEvent) {
        let Some(c) = &mut self.capture else { return };
        match ev {
            AgentEvent::ChildInstalled { uat, .. } => c.add_uat(uat),
            AgentEvent::IkeKeys { uat, .. } => c.add_ike_sa_uat(uat),
            AgentEvent::Node(Event::InvalidSpi(e)) => {
                // Rare (rate-limited) file I/O on the datapath thread: a dump of the default
                // ring is about 1.5 MB, written once a minute at most.
                let now = Instant::now();
                match c.on_invalid_spi(now, self.clock.wall(now), e) {
                    Ok(Some(r)) => {
                        let sampling = if r.per_spi_interval.is_zero() {
                            String::new()
                        } else {
                            format!(
                                "; ESP sampled, one packet per SPI per {:?}, {} left out so far",
                                r.per_spi_interval, r.sampled_out
                            )
                        };
                        self.log.line(&format!(
                            "capture: wrote {} packets to {} (keys: {}, {}{sampling})",
                            r.packets,
                            r.pcap.display(),
                            r.uat.display(),
                            r.ike_uat.display()
                        ));
                        if let Some(err) = r.script_error {
                            self.log.line(&format!("capture: {err}"));
                        }
                    }
                    Ok(None) => {}
                    Err(err) => self.log.line(&format!("capture: {err}")),
                }
            }
            _ => c.reap(),
        }
    }

    fn io_error(&mut self, what: std::fmt::Arguments<'_>, e: &io::Error) {
        if let Some(l) = self.io_notes.line(Instant::now(), what, e) {
            self.log.line(&l);
        }
    }

    /// Counts one receive call on an ESP socket (`on`: which) and sorts its result: data,
    /// interrupted (try again), or nothing more for now (drained, or an error, counted and
    /// logged).
    fn received<T>(&mut self, r: io::Result<T>, on: &str) -> Received<T> {
        match r {
            Ok(x) => {
                self.io.underlay_rx_calls += 1;
                Received::Data(x)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Received::Again,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::Done,
            Err(e) => {
                self.io.underlay_rx_errors += 1;
                self.io_error(format_args!("receiving on the {on}"), &e);
                Received::Done
            }
        }
    }

    /// Inner packets from the kernel: encrypted and sent (tx.rs), when this task has the
    /// TUN → ESP direction.
    fn tun_to_net(&mut self) -> Result<(), DaemonError> {
        let Self {
            tx,
            tun,
            agent,
            capture,
            clock,
            log,
            io_notes,
            ..
        } = self;
        let (Some(tx), Tun::Async(dev)) = (tx, &*tun) else {
            return Ok(());
        };
        let mut note = |what: std::fmt::Arguments<'_>, e: &io::Error| {
            if let Some(l) = io_notes.line(Instant::now(), what, e) {
                log.line(&l);
            }
        };
        match tx.tun_to_net(TunSource::Async(dev), agent, capture, clock, &mut note) {
            Ok(_) => Ok(()),
            Err(TunFailed(source)) => Err(DaemonError::TunIo {
                name: self.tun_name.clone(),
                source,
            }),
        }
    }

    /// The sending thread's I/O counters, all time.
    fn tx_thread_io(&self) -> TxCounters {
        self.tx_thread
            .as_ref()
            .map_or(TxCounters::default(), |t| t.status.load())
    }

    /// I/O counters of both directions, wherever they run.
    fn io_counters(&self) -> IoCounters {
        let mut c = self.io;
        if let Some(tx) = &self.tx {
            c.add_tx(tx.counters);
        }
        c.add_tx(self.tx_thread_io().since(self.tx_base));
        c
    }

    /// What the sending thread said since the last tick: log lines, or that the TUN
    /// device failed under it (then the daemon stops, as it would on its own read error).
    fn tx_notes(&mut self) -> Result<(), DaemonError> {
        let Some(t) = &self.tx_thread else {
            return Ok(());
        };
        // Read before the notes: a thread that has ended sent its last note already.
        let died = t.died();
        let mut lines = Vec::new();
        let mut failed = None;
        while let Ok(n) = t.notes.try_recv() {
            match n {
                TxNote::Line(l) => lines.push(l),
                TxNote::Failed(e) => failed = Some(e),
            }
        }
        if failed.is_none() && died {
            failed = Some(std::io::Error::other(
                "the sending thread (esplab-tx) stopped",
            ));
        }
        for l in lines {
            self.log.line(&l);
        }
        match failed {
            None => Ok(()),
            Some(source) => Err(DaemonError::TunIo {
                name: self.tun_name.clone(),
                source,
            }),
        }
    }

    /// What to do with a verdict on an underlay packet in `buf`: a decrypted packet is
    /// queued for the batched TUN write.
    fn deliver(&mut self, verdict: Inbound, buf: &[u8]) {
        // IKE went to the agent already (Inbound::Ike); keepalives and drops need nothing
        // more (counted by the node).
        if let Inbound::Deliver(r) = verdict {
            if r.is_empty() {
                // Nothing to write; an empty buffer would also make tun-rs refuse the
                // whole batch it sits in.
                return;
            }
            if self.tun_tx.is_full() {
                self.flush_tun_tx();
            }
            self.tun_tx.push(&buf[r]);
        }
    }

    /// Writes the packets [`Self::gro`] holds, from the receive slots they point into.
    fn flush_gro(&mut self, slots: &[Box<[u8]>]) {
        if self.gro.is_empty() {
            return;
        }
        let fd = self.tun.device().as_raw_fd();
        let (errors, e) = self
            .gro
            .flush(slots, |prefix, pieces| tun_writev(fd, prefix, pieces));
        self.io.gro += self.gro.take_stats();
        self.tun_write_errors(errors, e);
    }

    /// Writes the queued decrypted packets to the TUN device (coalesced with offload).
    fn flush_tun_tx(&mut self) {
        let (errors, e) = self.tun_tx.flush(self.tun.device());
        self.tun_write_errors(errors, e);
    }

    /// Counts (and logs, rate-limited) failed TUN writes.
    fn tun_write_errors(&mut self, errors: u64, e: Option<io::Error>) {
        if let Some(e) = e {
            self.io.tun_tx_errors += errors;
            let name = &self.tun_name;
            if let Some(l) =
                self.io_notes
                    .line(Instant::now(), format_args!("writing to {name}"), &e)
            {
                self.log.line(&l);
            }
        }
    }

    fn udp_to_tun(&mut self) {
        if self.underlay.udp.is_none() {
            return;
        }
        let local = SocketAddr::new(self.underlay.local, self.underlay.port);
        // The slots leave `self` for the loop (swapped with empty vectors, which do not
        // allocate), so the node, the recorder and the TUN writer can be borrowed too.
        let mut rx = std::mem::replace(&mut self.udp_rx, UdpRx::none());
        // Without batching, one datagram per call as before: up to BATCH calls.
        let rounds = if rx.slots.len() > 1 { 1 } else { BATCH };
        for _ in 0..rounds {
            let Some(udp) = &self.underlay.udp else {
                break;
            };
            let fd = udp.as_raw_fd();
            let r = udp.try_io(Interest::READABLE, || {
                batch::recv_batch(fd, &mut rx.slots, &mut rx.meta)
            });
            let got = match self.received(r, "UDP socket") {
                Received::Data(n) => n,
                Received::Again => continue,
                Received::Done => break,
            };
            let now = Instant::now();
            if self.knobs.sad_batch {
                self.udp_burst(now, local, &mut rx.slots[..got], &rx.meta[..got]);
                // Before the slots are read into again.
                self.flush_gro(&rx.slots);
            } else {
                for (slot, m) in rx.slots.iter_mut().zip(&rx.meta).take(got) {
                    // One datagram, or a run the kernel coalesced (UDP GRO): each on its own.
                    for seg in m.segments() {
                        let kept = match &mut self.capture {
                            Some(c) => {
                                let b = &slot[seg.clone()];
                                record_udp(c, &self.clock, now, m.from, local, b, false)
                            }
                            None => true,
                        };
                        let v = self.agent.handle_underlay_udp(
                            now,
                            local,
                            m.from,
                            &mut slot[..],
                            seg.clone(),
                        );
                        if !kept && record_late(&v) {
                            if let Some(c) = &mut self.capture {
                                record_udp(c, &self.clock, now, m.from, local, &slot[seg], true);
                            }
                        }
                        self.deliver(v, &slot[..]);
                    }
                }
            }
            if got < rx.slots.len() && rounds == 1 {
                // Drained.
                break;
            }
        }
        self.udp_rx = rx;
        self.flush_tun_tx();
    }

    /// One `recvmmsg` burst through the agent's batch entry: its datagrams (GRO runs split
    /// into their segments) go in groups of [`NODE_BATCH`], each group's SPIs looked up in
    /// one pass against one SAD snapshot. Each is recorded before it is decrypted in place.
    fn udp_burst(
        &mut self,
        now: Instant,
        local: SocketAddr,
        slots: &mut [Box<[u8]>],
        meta: &[batch::RecvMeta],
    ) {
        let mut group: [UdpDatagram<'_>; NODE_BATCH] = std::array::from_fn(|_| UdpDatagram {
            src: local.ip(),
            sport: 0,
            dst: local.ip(),
            dport: local.port(),
            buf: &mut [],
            payload: 0..0,
        });
        let mut out = [const { Inbound::Keepalive }; NODE_BATCH];
        // Bit k: datagram k of the group was sampled out by the recorder.
        const _: () = assert!(NODE_BATCH <= u64::BITS as usize);
        let mut skipped = 0u64;
        // `origin[k]`: slot and offset of group datagram k, where `gro` finds it again.
        let mut origin = [(0usize, 0usize); NODE_BATCH];
        let mut n = 0;
        for (i, (slot, m)) in slots.iter_mut().zip(meta).enumerate() {
            // One datagram, or a run the kernel coalesced (UDP GRO): each on its own. The
            // segments are consecutive, so the slot splits into disjoint buffers.
            let mut rest: &mut [u8] = &mut slot[..];
            let mut at = 0;
            for seg in m.segments() {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(seg.start - at);
                let (this, tail) = tail.split_at_mut(seg.len());
                rest = tail;
                at = seg.end;
                if let Some(c) = &mut self.capture {
                    if !record_udp(c, &self.clock, now, m.from, local, this, false) {
                        skipped |= 1 << n;
                    }
                }
                origin[n] = (i, seg.start);
                let d = &mut group[n];
                d.src = m.from.ip();
                d.sport = m.from.port();
                d.payload = 0..this.len();
                d.buf = this;
                n += 1;
                if n == NODE_BATCH {
                    self.udp_group(now, local, &mut group, &mut out, skipped, &origin);
                    n = 0;
                    skipped = 0;
                }
            }
        }
        self.udp_group(now, local, &mut group[..n], &mut out[..n], skipped, &origin);
    }

    /// One group of a burst through the agent, then each verdict delivered (and, for the
    /// datagrams in `skipped`, recorded late when [`record_late`] says so). With
    /// `tun_writev` decrypted TCP segments (and UDP datagrams, with USO) are queued in `gro`
    /// by their place in the receive slots (`origin`: slot and offset of each datagram), not
    /// copied.
    fn udp_group(
        &mut self,
        now: Instant,
        local: SocketAddr,
        group: &mut [UdpDatagram<'_>],
        out: &mut [Inbound],
        skipped: u64,
        origin: &[(usize, usize)],
    ) {
        self.agent.handle_underlay_udp_batch(now, group, out);
        for (k, (d, v)) in group.iter().zip(out).enumerate() {
            if skipped & (1 << k) != 0 && record_late(v) {
                if let Some(c) = &mut self.capture {
                    let from = SocketAddr::new(d.src, d.sport);
                    record_udp(
                        c,
                        &self.clock,
                        now,
                        from,
                        local,
                        &d.buf[d.payload.clone()],
                        true,
                    );
                }
            }
            match std::mem::replace(v, Inbound::Keepalive) {
                Inbound::Deliver(r) if self.knobs.tun_writev && !r.is_empty() => {
                    let (slot, at) = origin[k];
                    let range = at + r.start..at + r.end;
                    if !self.gro.push(slot, range, &d.buf[r.clone()]) {
                        // Neither TCP nor UDP (nor UDP without USO): tun-rs's writer.
                        self.deliver(Inbound::Deliver(r), d.buf);
                    }
                }
                v => self.deliver(v, d.buf),
            }
        }
    }

    fn raw_to_tun(&mut self) {
        let Some(raw) = &self.underlay.raw else {
            return;
        };
        // Batched: one `recvmmsg` into the UDP path's receive slots (free between its
        // bursts, which run on this task too; lent out as there), each packet in a slot of
        // its own; with `tun_writev` they stay there until the gathered write at the end.
        // Otherwise one `read` per packet into one buffer, the decrypted packets copied into
        // tun-rs's writer.
        let mut rx = std::mem::replace(&mut self.udp_rx, UdpRx::none());
        if rx.slots.len() > 1 {
            let fd = raw.as_raw_fd();
            let r = raw.try_io(Interest::READABLE, |_| {
                batch::recv_batch(fd, &mut rx.slots, &mut rx.meta)
            });
            // Interrupted: the readiness stays set and the loop comes back here.
            let got = match self.received(r, "raw ESP socket") {
                Received::Data(n) => n,
                Received::Again | Received::Done => 0,
            };
            let now = Instant::now();
            let v6 = self.underlay.local.is_ipv6();
            let gather = self.knobs.tun_writev;
            for (i, (slot, m)) in rx.slots.iter_mut().zip(&rx.meta).take(got).enumerate() {
                let src = v6.then_some(m.from.ip());
                self.raw_packet(now, &mut slot[..], m.len, src, gather.then_some(i));
            }
            // Before the slots are read into again.
            self.flush_gro(&rx.slots);
        } else {
            let mut one = std::mem::take(&mut self.to_tun);
            for _ in 0..BATCH {
                let r = self.underlay.try_recv_raw(&mut one);
                let (n, src) = match self.received(r, "raw ESP socket") {
                    Received::Data(x) => x,
                    Received::Again => continue,
                    Received::Done => break,
                };
                self.raw_packet(Instant::now(), &mut one, n, src, None);
            }
            self.to_tun = one;
        }
        self.udp_rx = rx;
        self.flush_tun_tx();
    }

    /// One packet from the raw ESP socket, `buf[..n]`: IPv4 the whole IP datagram (`src`
    /// is `None`, the node reads the outer header), IPv6 the ESP packet alone, from `src`.
    /// With `slot` (the receive slot `buf` is), decrypted TCP/UDP joins the gathered TUN
    /// writes, so `buf` must stay as it is until `flush_gro`.
    fn raw_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        n: usize,
        src: Option<IpAddr>,
        slot: Option<usize>,
    ) {
        let local = self.underlay.local;
        let (from, t) = match src {
            None => (local, Transport::Ip),
            Some(src) => (src, Transport::Esp),
        };
        let kept = match &mut self.capture {
            Some(c) => {
                let wall = self.clock.wall(now);
                c.ring_mut()
                    .offer(now, wall, Direction::In, from, local, t, &buf[..n])
            }
            None => true,
        };
        let v = match src {
            None => self.agent.handle_underlay_ip(now, &mut buf[..n]),
            Some(src) => self
                .agent
                .node_mut()
                .inbound_esp(now, src, local, Encap::Raw, buf, 0..n),
        };
        if !kept && record_late(&v) {
            if let Some(c) = &mut self.capture {
                let wall = self.clock.wall(now);
                c.record(wall, Direction::In, from, local, t, &buf[..n]);
            }
        }
        match (v, slot) {
            (Inbound::Deliver(r), Some(i)) if !r.is_empty() => {
                if !self.gro.push(i, r.clone(), &buf[r.clone()]) {
                    self.deliver(Inbound::Deliver(r), buf);
                }
            }
            (v, _) => self.deliver(v, buf),
        }
    }

    fn control(&mut self, c: Ctl) {
        match c {
            Ctl::Call(req, reply) => {
                let resp = self.answer(req);
                // The client may have gone; nothing to do then.
                let _ = reply.send(resp);
            }
            Ctl::Follow(reply) => {
                let mut r = Response::ok(self.log.node());
                r.events = Some(self.events.recent());
                let _ = reply.send((r, self.events.subscribe()));
            }
        }
    }

    fn answer(&mut self, req: Request) -> Response {
        let now = Instant::now();
        let node = self.log.node().to_string();
        let mut r = Response::ok(&node);
        match req {
            Request::ShowSa => {
                r.sas = Some(
                    self.agent
                        .node()
                        .sa_info(now)
                        .into_iter()
                        .map(SaRow::from)
                        .collect(),
                );
            }
            Request::ShowCounters => {
                let mut v: Vec<CounterRow> = self
                    .agent
                    .counters_named()
                    .into_iter()
                    .map(|c| CounterRow {
                        name: c.name,
                        value: c.value,
                    })
                    .collect();
                v.extend(self.io_counters().named());
                r.counters = Some(v);
            }
            Request::ShowEvents => r.events = Some(self.events.recent()),
            Request::FollowEvents => {
                return Response::error(&node, "follow-events is answered by the control server")
            }
            Request::ClearSa { spi, all } => {
                let (n, what) = match (spi, all) {
                    (Some(spi), false) => {
                        let n = self.agent.node_mut().clear_spi(spi, now);
                        if n == 0 {
                            return Response::error(&node, format!("no SA with SPI 0x{spi:08x}"));
                        }
                        (n, format!("SA 0x{spi:08x}"))
                    }
                    (None, true) => (self.agent.node_mut().clear_all(now), "all SAs".to_string()),
                    _ => {
                        return Response::error(
                            &node,
                            "clear-sa needs either \"spi\" or \"all\": true",
                        )
                    }
                };
                let msg = format!(
                    "cleared {what} by control request: {n} removed, the peer was not told"
                );
                self.log.line(&msg);
                let mut ev =
                    EventRecord::new(self.events.clock().rfc3339(now), &node, "sa-cleared", msg);
                ev.spi = spi;
                ev.count = Some(n as u64);
                self.events.push(ev);
                self.events.flush();
                r.removed = Some(n);
            }
            Request::ShowIke => {
                r.ike = Some(
                    self.agent
                        .ike_sas(now)
                        .iter()
                        .filter_map(|s| serde_json::to_value(s).ok())
                        .collect(),
                );
            }
            Request::ShowRecovery => {
                r.recovery = Some(serde_json::json!({
                    "stats": self.agent.recovery_stats(),
                    "peers": self.agent.recovery_status(now),
                }));
            }
            Request::Initiate { peer } => {
                if let Err(e) = self.agent.initiate(now, &peer) {
                    return Response::error(&node, e.to_string());
                }
                self.log
                    .line(&format!("initiate {peer}: by control request"));
            }
            Request::Terminate { peer } => {
                if let Err(e) = self.agent.terminate(now, &peer) {
                    return Response::error(&node, e.to_string());
                }
                self.log
                    .line(&format!("terminate {peer}: by control request"));
            }
            Request::Rekey { peer, ike, spi } => {
                let what = if ike {
                    self.agent
                        .rekey_ike(now, &peer)
                        .map(|()| "IKE SA".to_string())
                } else {
                    self.agent.rekey_peer_children(now, &peer, spi).map(|v| {
                        let v: Vec<String> = v.iter().map(|s| format!("0x{s:08x}")).collect();
                        let w = format!("CHILD SA {}", v.join(", "));
                        r.rekeying = Some(v);
                        w
                    })
                };
                match what {
                    Ok(w) => self
                        .log
                        .line(&format!("rekey {peer} {w}: by control request")),
                    Err(e) => return Response::error(&node, e.to_string()),
                }
            }
            Request::ClearCounters => {
                self.agent.clear_counters();
                self.io = IoCounters::default();
                if let Some(tx) = &mut self.tx {
                    tx.counters = TxCounters::default();
                }
                self.tx_base = self.tx_thread_io();
                self.log.line("counters cleared by control request");
            }
        }
        r
    }
}
