//! One peer's datapath: SAD + policies + per-SA state + counters + events + rate limits.
//!
//! Fast-path calls take `now` and a buffer and return a verdict; nothing here touches a
//! socket, a TUN device, a clock or a thread, so the daemon and the simulator drive the same
//! code. The node owns its mutable per-SA state (replay windows, counters) in a slab indexed
//! by the value the SAD returns, so a packet costs one SAD lookup, one slab index and one
//! cipher call.

use crate::counters::{Counters, Dir};
use crate::event::{Event, EventQueue, InvalidSpi};
use crate::outbound::{ChildOut, OutPlane, OutSa, PeerOut, TxHandle, TxPublisher};
use crate::rate_limit::{LogLimiter, LogLimits};
use esplab_esp::wire::{self, ESP_HEADER_LEN, NEXT_HEADER_NONE};
use esplab_esp::{
    DropReason, Encap, EspError, Family, InboundSa, KeyError, OutboundSa, SaParams, Underlay,
};
use esplab_sad::{Lookup, Sad, SadConfig, SadError, SadReader, TrafficSelector};
use serde::Serialize;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How ESP travels to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnderlayEncap {
    /// UDP-encapsulated ESP, RFC 3948 (port 4500 by default).
    Udp,
    /// Raw ESP, IP protocol 50.
    Raw,
}

/// A statically configured peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Name used in commands and output.
    pub name: String,
    /// Underlay address.
    pub address: IpAddr,
    /// How ESP is carried to it.
    pub encap: UnderlayEncap,
    /// UDP port for encapsulated ESP.
    pub port: u16,
    /// Our protected networks (inner source of what we send to this peer).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's protected networks.
    pub remote_ts: Vec<TrafficSelector>,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Name (for logs).
    pub name: String,
    /// Our underlay address.
    pub local: IpAddr,
    /// Configured peers.
    pub peers: Vec<PeerConfig>,
    /// Invalid-SPI log limits.
    pub log_limits: LogLimits,
    /// Capacity of the event queue.
    pub event_queue: usize,
    /// How long a removed SPI is classified `retired` rather than `unknown`.
    pub retired_grace: Duration,
}

/// Why a control-plane request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad keys or parameters.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The SAD refused (duplicate SPI, full, ...).
    #[error(transparent)]
    Sad(#[from] SadError),
    /// No such peer.
    #[error("no peer {0}")]
    NoPeer(usize),
}

/// What to do with an underlay datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Write `buf[range]` (the inner IP packet) to the TUN device.
    Deliver(Range<usize>),
    /// An IKE message at `buf[range]` for the control plane.
    Ike(Range<usize>),
    /// A NAT-keepalive; nothing to do.
    Keepalive,
    /// Dropped (already counted).
    Drop(DropReason),
}

/// What to do with a packet read from the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Send `buf[esp]` to the peer.
    Send {
        /// The ESP packet in the buffer.
        esp: Range<usize>,
        /// Peer underlay address.
        dst: IpAddr,
        /// UDP port (for `UnderlayEncap::Udp`).
        port: u16,
        /// Raw or UDP.
        encap: UnderlayEncap,
    },
    /// Dropped (already counted).
    Drop(DropReason),
}

/// Headroom an outbound buffer should leave before the inner packet: outer IPv6 + UDP +
/// ESP header + the largest IV.
pub const HEADROOM: usize = 40 + 8 + ESP_HEADER_LEN + 16;
/// Tailroom an outbound buffer should leave after the inner packet.
pub const TAILROOM: usize = 15 + 2 + 16;

/// An SAD lookup result without the borrow of the snapshot (the slab index is `Copy`).
#[derive(Clone, Copy)]
enum Found {
    Hit(SaIndex),
    Retired,
    Unknown,
}

/// What the SAD holds for an inbound SA: its index in `Node::in_sas`, plus one. The SAD
/// stores values inline next to the SPI, and a 4-byte value with a niche (0 never occurs)
/// keeps that entry at 8 bytes: a hit reads one word-sized slot, like a bare array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SaIndex(NonZeroU32);

impl SaIndex {
    fn new(i: usize) -> Self {
        let v = u32::try_from(i)
            .ok()
            .and_then(|i| i.checked_add(1))
            .and_then(NonZeroU32::new)
            .expect("fewer than 2^32 - 1 inbound SAs");
        Self(v)
    }

    fn get(self) -> usize {
        self.0.get() as usize - 1
    }
}

impl From<Lookup<'_, SaIndex>> for Found {
    #[inline(always)]
    fn from(l: Lookup<'_, SaIndex>) -> Self {
        match l {
            Lookup::Hit(&i) => Found::Hit(i),
            Lookup::Retired => Found::Retired,
            Lookup::Unknown => Found::Unknown,
        }
    }
}

/// One datagram of a batch received on the NAT-T port (what one `recvmmsg` slot holds).
#[derive(Debug)]
pub struct UdpDatagram<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// The buffer holding the UDP payload.
    pub buf: &'a mut [u8],
    /// Where the UDP payload lies in `buf`.
    pub payload: Range<usize>,
}

/// Largest batch [`Node::inbound_udp_batch`] looks up in one pass.
pub const BATCH: usize = esplab_sad::BATCH;

/// The SPIs of up to [`BATCH`] datagrams and what the SAD said about them, from
/// [`Node::lookup_udp_batch`] (pass 1 of a batch) for [`Node::inbound_udp_looked`] (pass 2).
/// Lives on the caller's stack: nothing is allocated.
pub struct UdpLookup {
    spis: [u32; BATCH],
    found: [Found; BATCH],
    n: usize,
    /// [`Node`]'s SAD generation when `found` was filled.
    sad_gen: u64,
}

impl UdpLookup {
    /// An empty one (looks nothing up).
    pub fn new() -> Self {
        Self {
            spis: [0; BATCH],
            found: [Found::Unknown; BATCH],
            n: 0,
            sad_gen: 0,
        }
    }
}

impl Default for UdpLookup {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for UdpLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpLookup")
            .field("spis", &&self.spis[..self.n])
            .finish_non_exhaustive()
    }
}

/// The SPI of a UDP payload that can be ESP, else 0 (a non-ESP marker, keepalive or runt).
#[inline(always)]
fn esp_spi(p: &[u8]) -> u32 {
    if p.len() >= ESP_HEADER_LEN {
        u32::from_be_bytes([p[0], p[1], p[2], p[3]])
    } else {
        0
    }
}

/// Most NAT-followed pairs (see [`Node::follow_peer_address`]).
const MAX_FOLLOW: usize = 256;

/// A pair whose peer's NAT mapping we follow.
#[derive(Debug, Clone, Copy)]
struct Follow {
    inbound_spi: u32,
    peer: usize,
    remote: (IpAddr, u16),
    top_seq: u64,
}

/// Most reserved-but-not-installed SPIs remembered (exchanges in flight; a failed one that
/// never released its SPI is forgotten eventually).
const MAX_PENDING_SPIS: usize = 256;

struct InSa {
    sa: InboundSa,
    peer: usize,
    /// Selectors of a negotiated (IKE) SA; manual SAs use their peer's.
    ts: Option<Box<(Vec<TrafficSelector>, Vec<TrafficSelector>)>>,
    created: Instant,
    last: Option<Instant>,
    packets: u64,
    bytes: u64,
}

/// A negotiated CHILD SA pair to install (see [`Node::install_child`]).
#[derive(Debug, Clone, Copy)]
pub struct ChildInstall<'a> {
    /// Node peer index.
    pub peer: usize,
    /// Inbound SA; its SPI must have come from [`Node::reserve_spi`].
    pub inbound: &'a SaParams,
    /// Outbound SA.
    pub outbound: &'a SaParams,
    /// Our side's selectors.
    pub local_ts: &'a [TrafficSelector],
    /// The peer's side's selectors.
    pub remote_ts: &'a [TrafficSelector],
    /// Outer destination of the ESP.
    pub dst: IpAddr,
    /// Its UDP port (for `UnderlayEncap::Udp`).
    pub port: u16,
    /// How the ESP travels: RFC 3948 UDP encapsulation, or raw IP protocol 50 (only when
    /// no NAT was detected, RFC 7296 §2.23; the agent decides).
    pub encap: UnderlayEncap,
    /// Send on the outbound SA at once (false for the responder of a CHILD rekey).
    pub active: bool,
}

/// One SA as `show sa` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SaInfo {
    /// Peer name.
    pub peer: String,
    /// `in` or `out`.
    pub direction: &'static str,
    /// SPI.
    pub spi: u32,
    /// Algorithm name.
    pub alg: &'static str,
    /// ESN on?
    pub esn: bool,
    /// Packets through this SA.
    pub packets: u64,
    /// Inner bytes through this SA.
    pub bytes: u64,
    /// Inbound: replay window size; outbound: 0.
    pub replay_window: u32,
    /// Inbound: right edge of the replay window; outbound: last sequence number sent.
    pub seq: u64,
    /// Seconds since installed.
    pub age_secs: f64,
    /// Seconds since last used (None: never).
    pub idle_secs: Option<f64>,
    /// How the SA's ESP travels: RFC 3948 UDP encapsulation or raw IP protocol 50.
    pub encap: UnderlayEncap,
    /// The peer's UDP port for UDP-encapsulated ESP (a NAT may have moved it from 4500,
    /// RFC 7296 §2.23); None for raw ESP, which has no port.
    pub udp_port: Option<u16>,
}

/// A peer's datapath state.
pub struct Node {
    cfg: NodeConfig,
    sad: Sad<SaIndex>,
    reader: SadReader<SaIndex>,
    in_sas: Vec<Option<InSa>>,
    /// Policies and outbound SAs: the manual SA per peer and the outbound halves of
    /// negotiated CHILD SAs.
    out: OutPlane,
    /// Set once the outbound direction has a thread of its own ([`Node::split_tx`]).
    tx: Option<TxPublisher>,
    /// Inbound SPIs of removed CHILD SAs still accepting late packets, with the moment
    /// they are retired (then the SAD's grace applies).
    lingering: Vec<(Instant, u32)>,
    /// Last successfully decrypted packet per peer (liveness / recovery input).
    peer_last_in: Vec<Option<Instant>>,
    /// Pairs whose peer is behind a NAT (and we are not): their outbound destination
    /// follows the source of new, authenticated ESP (at most `MAX_FOLLOW`).
    follow: Vec<Follow>,
    /// SPIs reserved for an exchange in flight, not installed yet (at most
    /// `MAX_PENDING_SPIS`, oldest forgotten first).
    pending_spis: Vec<u32>,
    /// Bumped whenever the SAD changes, so a batch looked up earlier knows its results are
    /// stale ([`UdpLookup`]).
    sad_gen: u64,
    counters: Counters,
    events: EventQueue,
    limiter: LogLimiter<(IpAddr, IpAddr, u32)>,
    last_summary: Option<Instant>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn family_of(a: IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// Inner packet addresses (src, dst, family) of an IPv4 or IPv6 packet, if it is one.
pub(crate) fn inner_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some((
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?),
        )),
        6 if p.len() >= 40 => Some((
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?),
        )),
        _ => None,
    }
}

pub(crate) fn covers(ts: &[TrafficSelector], a: IpAddr) -> bool {
    ts.iter().any(|t| t.contains_addr(a))
}

/// A configured peer's outbound policy (no SA yet).
fn peer_out(p: &PeerConfig) -> PeerOut {
    PeerOut {
        local_ts: p.local_ts.clone(),
        remote_ts: p.remote_ts.clone(),
        dst: p.address,
        port: p.port,
        encap: p.encap,
        sa: None,
    }
}

impl Node {
    /// A node with no SAs. `seed` makes SPI allocation reproducible (simulator).
    pub fn new(cfg: NodeConfig, seed: Option<u64>) -> Self {
        let sad = Sad::new(SadConfig {
            grace_period: cfg.retired_grace,
            rng_seed: seed,
            ..SadConfig::default()
        });
        let reader = sad.reader();
        let npeers = cfg.peers.len();
        Self {
            limiter: LogLimiter::new(cfg.log_limits),
            events: EventQueue::new(cfg.event_queue),
            sad,
            reader,
            in_sas: Vec::new(),
            out: OutPlane {
                children: Vec::new(),
                peers: cfg.peers.iter().map(peer_out).collect(),
            },
            tx: None,
            lingering: Vec::new(),
            peer_last_in: vec![None; npeers],
            pending_spis: Vec::new(),
            follow: Vec::new(),
            sad_gen: 0,
            counters: Counters::default(),
            last_summary: None,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Installs an inbound SA for `peer` under the SPI in `params` (manual keying: the SPI
    /// was chosen by the config, so it goes to the SAD's fallback map).
    pub fn install_inbound(
        &mut self,
        peer: usize,
        params: &SaParams,
        now: Instant,
    ) -> Result<(), NodeError> {
        if peer >= self.cfg.peers.len() {
            return Err(NodeError::NoPeer(peer));
        }
        let sa = InboundSa::new(params)?;
        let idx = match self.in_sas.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.in_sas.push(None);
                self.in_sas.len() - 1
            }
        };
        self.sad.insert_foreign(params.spi, SaIndex::new(idx))?;
        self.sad_changed();
        self.in_sas[idx] = Some(InSa {
            sa,
            peer,
            ts: None,
            created: now,
            last: None,
            packets: 0,
            bytes: 0,
        });
        Ok(())
    }

    /// Installs (or replaces) the outbound SA towards `peer`.
    pub fn install_outbound(
        &mut self,
        peer: usize,
        params: &SaParams,
        now: Instant,
    ) -> Result<(), NodeError> {
        if peer >= self.cfg.peers.len() {
            return Err(NodeError::NoPeer(peer));
        }
        self.out.peers[peer].sa = Some(OutSa::new(OutboundSa::new(params)?, now));
        self.out_changed();
        Ok(())
    }

    /// Removes every SA (inbound or outbound) with this SPI, without telling anyone — the
    /// way to cause a desync on purpose. Returns how many were removed.
    pub fn remove_spi(&mut self, spi: u32, now: Instant) -> usize {
        let (n, out) = self.remove_spi_quietly(spi, now);
        if out > 0 {
            self.out_changed();
        }
        n
    }

    /// [`remove_spi`](Self::remove_spi) without publishing the outbound half; returns the
    /// SAs removed in all and outbound.
    fn remove_spi_quietly(&mut self, spi: u32, now: Instant) -> (usize, usize) {
        let mut n = 0;
        if let Some(idx) = self.sad.remove(spi, now) {
            self.in_sas[idx.get()] = None;
            n += 1;
        }
        self.sad_changed();
        let mut out = 0;
        for p in self.out.peers.iter_mut() {
            if p.sa.as_ref().is_some_and(|s| s.sa.spi() == spi) {
                p.sa = None;
                out += 1;
            }
        }
        let before = self.out.children.len();
        self.out.children.retain(|c| c.out.sa.spi() != spi);
        out += before - self.out.children.len();
        self.lingering.retain(|(_, s)| *s != spi);
        (n + out, out)
    }

    /// Like [`remove_spi`](Self::remove_spi) but with no grace period: the SPI is unknown
    /// at once, as after a vendor's `clear crypto sa`, so the very next packet for it is an
    /// invalid-SPI event. This is what `esplab clear sa` does to provoke a desync.
    pub fn clear_spi(&mut self, spi: u32, now: Instant) -> usize {
        // Retire it with a deadline that has already passed, then purge.
        let past = now.checked_sub(self.cfg.retired_grace).unwrap_or(now);
        let n = self.remove_spi(spi, past);
        self.sad.purge(now);
        self.sad_changed();
        n
    }

    /// [`clear_spi`](Self::clear_spi) for every SA. Returns how many were removed.
    pub fn clear_all(&mut self, now: Instant) -> usize {
        let past = now.checked_sub(self.cfg.retired_grace).unwrap_or(now);
        let n = self.remove_all(past);
        self.sad.purge(now);
        self.sad_changed();
        n
    }

    /// Removes every SA. Returns how many were removed.
    pub fn remove_all(&mut self, now: Instant) -> usize {
        let spis: Vec<u32> = self
            .in_sas
            .iter()
            .flatten()
            .map(|s| s.sa.spi())
            .chain(
                self.out
                    .peers
                    .iter()
                    .filter_map(|p| Some(p.sa.as_ref()?.sa.spi())),
            )
            .chain(self.out.children.iter().map(|c| c.out.sa.spi()))
            .collect();
        // One publication at the end: a copy of the plane per SA would make clearing N
        // pairs O(N^2).
        let (mut n, mut out) = (0, 0);
        for s in spis {
            let (a, o) = self.remove_spi_quietly(s, now);
            n += a;
            out += o;
        }
        if out > 0 {
            self.out_changed();
        }
        n
    }

    /// The counters this node's own thread keeps. Once the outbound direction has a
    /// thread of its own ([`Node::split_tx`]), its counts are in
    /// [`Node::counters_total`] only.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// All counters: the node's, plus its sending thread's if it has one.
    pub fn counters_total(&self) -> Counters {
        match &self.tx {
            None => self.counters.clone(),
            Some(t) => self.counters.clone().plus(&t.counters()),
        }
    }

    /// Gives the outbound direction (TUN → ESP) a thread of its own: the returned handle
    /// encrypts with the same policies, SAs and counters as [`Node::outbound`], and the
    /// node publishes every later change to it (see [`crate::outbound`]). Call it once;
    /// afterwards only the handle should encrypt (the sequence numbers stay unique either
    /// way, but the per-SA counters expect one writer).
    pub fn split_tx(&mut self) -> TxHandle {
        // A second handle would see nothing: only the last publisher is kept.
        assert!(self.tx.is_none(), "split_tx called twice");
        let (p, h) = TxPublisher::new(&self.out);
        self.tx = Some(p);
        h
    }

    /// Hands the sending thread, if any, the changed outbound half.
    fn out_changed(&mut self) {
        if let Some(t) = &self.tx {
            t.publish(&self.out);
        }
    }

    /// Zeroes the counters (node-wide and per SA).
    pub fn clear_counters(&mut self) {
        self.counters = Counters::default();
        for s in self.in_sas.iter_mut().flatten() {
            s.packets = 0;
            s.bytes = 0;
        }
        for s in self.out.peers.iter().filter_map(|p| p.sa.as_ref()) {
            s.clear();
        }
        for c in &self.out.children {
            c.out.clear();
        }
        if let Some(t) = &mut self.tx {
            t.clear_counters();
        }
    }

    /// Takes the next event for the control side.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        // The node's own queue inline, the sending thread's channel out of line: as one
        // out-of-line function (the `or_else` form) every event was copied once more on
        // return: +26 to +130 instructions per packet on the drop paths (callgrind).
        match self.events.pop() {
            Some(e) => Some(e),
            None if self.tx.is_some() => self.poll_tx_event(),
            None => None,
        }
    }

    #[inline(never)]
    fn poll_tx_event(&mut self) -> Option<Event> {
        self.tx.as_ref().and_then(|t| t.poll_event())
    }

    /// Periodic work (call about once a second): forget retired SPIs past their grace
    /// period, forget stale rate-limit flows, and emit the "N messages suppressed" summary
    /// once per global window.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.retire_lingering(now);
        self.sad.purge(now);
        self.sad_changed();
        // Move the reader to the current snapshot even with no packet to look up: a large
        // SAD withholds the slots purge freed until no older snapshot is held, and an idle
        // node's reader would otherwise hold one until the next packet.
        let _ = self.reader.view();
        let window = self.cfg.log_limits.global_window;
        let due = match self.last_summary {
            None => {
                self.last_summary = Some(now);
                false
            }
            Some(t) => now.saturating_duration_since(t) >= window,
        };
        if due {
            self.last_summary = Some(now);
            self.limiter.evict(now);
            let n = self.limiter.take_suppressed();
            if n > 0 {
                self.push_event(Event::InvalidSpiSuppressed {
                    at: now,
                    count: n,
                    window,
                });
            }
        }
    }

    /// Marks every earlier batch lookup stale (see [`UdpLookup`]).
    fn sad_changed(&mut self) {
        self.sad_gen = self.sad_gen.wrapping_add(1);
    }

    fn push_event(&mut self, e: Event) {
        if !self.events.push(e) {
            self.counters.events_dropped += 1;
        }
    }

    /// A whole underlay IP datagram (as a raw IPv4 socket or a capture gives it).
    pub fn inbound_ip(&mut self, now: Instant, buf: &mut [u8]) -> Inbound {
        match wire::parse_underlay(buf) {
            Ok(Underlay::Esp(o)) => self.inbound_esp(now, o.src, o.dst, o.encap, buf, o.payload),
            Ok(Underlay::Ike(o)) => {
                self.counters.ike_in += 1;
                Inbound::Ike(o.payload)
            }
            Ok(Underlay::Keepalive(_)) => {
                self.counters.keepalives += 1;
                Inbound::Keepalive
            }
            Err(e) => {
                let fam = match buf.first().map(|b| b >> 4) {
                    Some(6) => Family::V6,
                    _ => Family::V4,
                };
                self.counters.drop(Dir::In, e.reason(), fam);
                Inbound::Drop(e.reason())
            }
        }
    }

    /// The payload of a UDP datagram received on the NAT-T port (RFC 3948 §2): ESP, an IKE
    /// message behind the non-ESP marker, or a keepalive.
    #[allow(clippy::too_many_arguments)]
    pub fn inbound_udp(
        &mut self,
        now: Instant,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Inbound {
        match wire::classify_udp_encap(&buf[payload.clone()]) {
            Ok(wire::UdpKind::Esp) => {
                self.inbound_esp(now, src, dst, Encap::Udp { sport, dport }, buf, payload)
            }
            Ok(wire::UdpKind::Ike) => {
                self.counters.ike_in += 1;
                Inbound::Ike(payload.start + 4..payload.end)
            }
            Ok(wire::UdpKind::Keepalive) => {
                self.counters.keepalives += 1;
                Inbound::Keepalive
            }
            Err(e) => {
                self.counters.drop(Dir::In, e.reason(), family_of(src));
                Inbound::Drop(e.reason())
            }
        }
    }

    /// The batched form of [`inbound_udp`](Self::inbound_udp): `out[i]` receives the verdict
    /// of `batch[i]`. The SPIs of each group of up to [`BATCH`] ESP datagrams are looked up
    /// in one pass against one SAD snapshot (the SAD's prefetching batch lookup), so their
    /// cache misses overlap; then each packet is processed exactly as a single one would be
    /// ([`lookup_udp_batch`](Self::lookup_udp_batch) and
    /// [`inbound_udp_looked`](Self::inbound_udp_looked), which callers that must act
    /// between packets, like the agent, use directly).
    ///
    /// # Panics
    /// If `out` is shorter than `batch`.
    pub fn inbound_udp_batch(
        &mut self,
        now: Instant,
        batch: &mut [UdpDatagram<'_>],
        out: &mut [Inbound],
    ) {
        assert!(out.len() >= batch.len(), "inbound_udp_batch: out too short");
        let mut lk = UdpLookup::new();
        for (group, outs) in batch.chunks_mut(BATCH).zip(out.chunks_mut(BATCH)) {
            self.lookup_udp_batch(group, &mut lk);
            // The whole group shares `now`: once the log budget for `now` is spent (a
            // flood), it stays spent for the rest of the group (`LogLimiter::spent`).
            // Asked at the first unknown SPI, where `allow` would roll the window, not
            // before: rolling it earlier would move the window's start.
            let mut quiet = false;
            for (i, (d, o)) in group.iter_mut().zip(outs.iter_mut()).enumerate() {
                // `lk.spis[i]` is `d`'s SPI: pass 1 read it from this very datagram and
                // handling another datagram cannot write into this one's buffer, so the
                // re-read and re-check `inbound_udp_looked` does for its callers is skipped.
                // Each verdict is stored in its own branch: one store merged after the
                // branches went through a stack copy of the whole `Inbound`, field by field.
                let spi = lk.spis[i];
                if spi <= 255 {
                    *o = self.inbound_udp(
                        now,
                        d.src,
                        d.sport,
                        d.dst,
                        d.dport,
                        d.buf,
                        d.payload.clone(),
                    );
                    continue;
                }
                let found = self.found_at(&mut lk, i);
                if let Found::Unknown = found {
                    if !quiet {
                        quiet = self.limiter.spent(now);
                    }
                    *o = self.unknown_spi_udp(now, spi, d, quiet);
                    continue;
                }
                *o = self.inbound_udp_found(now, d, spi, found);
            }
        }
    }

    /// Pass 1 of a batch: reads the SPI of each of the first [`BATCH`] datagrams of `batch`
    /// that is ESP and looks them all up in one pass against one SAD snapshot, into `lk`.
    /// Pass 2 is [`inbound_udp_looked`](Self::inbound_udp_looked) on each datagram.
    pub fn lookup_udp_batch(&mut self, batch: &[UdpDatagram<'_>], lk: &mut UdpLookup) {
        let n = batch.len().min(BATCH);
        lk.n = n;
        // The SPI of every datagram that is ESP (0 marks "not ESP": SPI 0 can never be an
        // SA, RFC 4303 §2.1, and is the non-ESP marker, RFC 3948 §2.2).
        for (d, spi) in batch.iter().zip(lk.spis.iter_mut()).take(n) {
            *spi = esp_spi(&d.buf[d.payload.clone()]);
        }
        self.relookup(lk, 0);
    }

    /// Looks up `lk.spis[from..lk.n]` again, against the current snapshot.
    fn relookup(&mut self, lk: &mut UdpLookup, from: usize) {
        let n = lk.n;
        // Straight into the node's 8-byte answers: no 16-byte `Lookup`s to convert after.
        self.reader
            .lookup_batch_map(&lk.spis[from..n], &mut lk.found[from..n], Found::from);
        lk.sad_gen = self.sad_gen;
    }

    /// Pass 2 of a batch: datagram `d`, which was `batch[i]` of the
    /// [`lookup_udp_batch`](Self::lookup_udp_batch) that filled `lk`. The verdict, counters
    /// and events are exactly those of [`inbound_udp`](Self::inbound_udp) on it now: if the
    /// SAD changed since the lookup (an IKE message earlier in the burst installed or
    /// removed an SA), the rest of the burst is looked up again first; a datagram whose SPI
    /// is not the one looked up (a caller's mix-up) is looked up on its own.
    pub fn inbound_udp_looked(
        &mut self,
        now: Instant,
        lk: &mut UdpLookup,
        i: usize,
        d: &mut UdpDatagram<'_>,
    ) -> Inbound {
        let spi = esp_spi(&d.buf[d.payload.clone()]);
        if spi <= 255 {
            // Markers, keepalives, reserved SPIs, runts: the single path sorts them.
            return self.inbound_udp(
                now,
                d.src,
                d.sport,
                d.dst,
                d.dport,
                d.buf,
                d.payload.clone(),
            );
        }
        let found = if i < lk.n && lk.spis[i] == spi {
            self.found_at(lk, i)
        } else {
            Found::from(self.reader.lookup(spi))
        };
        self.inbound_udp_found(now, d, spi, found)
    }

    /// What the SAD said about `lk.spis[i]`, looked up again (with the rest of the burst)
    /// if the SAD changed since.
    #[inline(always)]
    fn found_at(&mut self, lk: &mut UdpLookup, i: usize) -> Found {
        if lk.sad_gen != self.sad_gen {
            self.relookup(lk, i);
        }
        lk.found[i]
    }

    /// ESP datagram `d` with SPI `spi` (> 255) that the SAD answered `found` for.
    #[inline(always)]
    fn inbound_udp_found(
        &mut self,
        now: Instant,
        d: &mut UdpDatagram<'_>,
        spi: u32,
        found: Found,
    ) -> Inbound {
        if let Found::Unknown = found {
            return self.unknown_spi_udp(now, spi, d, false);
        }
        let encap = Encap::Udp {
            sport: d.sport,
            dport: d.dport,
        };
        self.inbound_esp_found(
            now,
            d.src,
            d.dst,
            encap,
            d.buf,
            d.payload.clone(),
            spi,
            found,
        )
    }

    /// An ESP packet at `buf[esp]` (SPI to ICV), received from `src` for `dst`.
    #[inline(always)]
    pub fn inbound_esp(
        &mut self,
        now: Instant,
        src: IpAddr,
        dst: IpAddr,
        encap: Encap,
        buf: &mut [u8],
        esp: Range<usize>,
    ) -> Inbound {
        let fam = family_of(src);
        let pkt = &mut buf[esp.clone()];
        if pkt.len() < ESP_HEADER_LEN {
            return self.drop_in(DropReason::TooShort, fam);
        }
        let spi = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        // RFC 4303 §2.1: SPIs 1..=255 are reserved and 0 is for local use; none can name an SA.
        if spi <= 255 {
            return self.drop_in(DropReason::ReservedSpi, fam);
        }
        let found = Found::from(self.reader.lookup(spi));
        self.inbound_esp_found(now, src, dst, encap, buf, esp, spi, found)
    }

    /// The rest of [`inbound_esp`](Self::inbound_esp) once the SPI has been looked up
    /// (singly, or by [`inbound_udp_batch`](Self::inbound_udp_batch)).
    ///
    /// Inlined into both callers: as a call, passing its eight arguments cost more
    /// instructions than the whole invalid-SPI drop it leads to (callgrind).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn inbound_esp_found(
        &mut self,
        now: Instant,
        src: IpAddr,
        dst: IpAddr,
        encap: Encap,
        buf: &mut [u8],
        esp: Range<usize>,
        spi: u32,
        found: Found,
    ) -> Inbound {
        let fam = family_of(src);
        let pkt = &mut buf[esp.clone()];
        let idx = match found {
            Found::Hit(i) => i.get(),
            Found::Retired => return self.drop_in(DropReason::RetiredSpi, fam),
            Found::Unknown => return self.unknown_spi(now, spi, pkt, &src, &dst, encap),
        };
        let Some(s) = self.in_sas.get_mut(idx).and_then(Option::as_mut) else {
            return self.drop_in(DropReason::UnknownSpi, fam);
        };
        let d = match s.sa.decap(pkt) {
            Ok(d) => d,
            Err(e) => return self.drop_in(e.reason(), fam),
        };
        if d.next_header == NEXT_HEADER_NONE {
            // RFC 4303 §2.6: dummy packets are discarded silently.
            return self.drop_in(DropReason::DummyPacket, fam);
        }
        if d.next_header != wire::NEXT_HEADER_IPV4 && d.next_header != wire::NEXT_HEADER_IPV6 {
            return self.drop_in(EspError::UnsupportedNextHeader(d.next_header).reason(), fam);
        }
        let inner = &pkt[d.payload.clone()];
        // RFC 4301 §5.2 step 4: the decrypted packet's addresses must match the SA's selectors.
        let peer = &self.cfg.peers[s.peer];
        let (local_ts, remote_ts) = match &s.ts {
            Some(ts) => (&ts.0, &ts.1),
            None => (&peer.local_ts, &peer.remote_ts),
        };
        match inner_addrs(inner) {
            Some((isrc, idst)) if covers(remote_ts, isrc) && covers(local_ts, idst) => {}
            _ => return self.drop_in(DropReason::PolicyMismatch, fam),
        }
        let n = d.payload.len() as u64;
        s.packets += 1;
        s.bytes += n;
        s.last = Some(now);
        if let Some(t) = self.peer_last_in.get_mut(s.peer) {
            *t = Some(now);
        }
        self.counters.in_packets += 1;
        self.counters.in_bytes += n;
        let (seq, payload) = (d.seq, d.payload);
        if !self.follow.is_empty() {
            if let Encap::Udp { sport, .. } = encap {
                self.follow_source(spi, seq, src, sport);
            }
        }
        Inbound::Deliver(esp.start + payload.start..esp.start + payload.end)
    }

    fn drop_in(&mut self, r: DropReason, fam: Family) -> Inbound {
        self.counters.drop(Dir::In, r, fam);
        Inbound::Drop(r)
    }

    /// The drop of ESP packet `pkt` (SPI to ICV, at least [`ESP_HEADER_LEN`] bytes) whose
    /// SPI the SAD does not know. Written out rather than through
    /// [`unknown_spi_with`](Self::unknown_spi_with): closures over these by-value locals
    /// made the compiler store them all on the stack on every packet (+17 instructions).
    #[inline(always)]
    fn unknown_spi(
        &mut self,
        now: Instant,
        spi: u32,
        pkt: &[u8],
        src: &IpAddr,
        dst: &IpAddr,
        encap: Encap,
    ) -> Inbound {
        let fam = family_of(*src);
        self.counters.drop(Dir::In, DropReason::UnknownSpi, fam);
        // As in `unknown_spi_with` (see there).
        let logged = self.limiter.allow_with(now, || (*src, *dst, spi));
        self.count_log_decision(logged);
        if self.events.is_full() {
            self.count_event_dropped();
        } else {
            self.events.push(Event::InvalidSpi(InvalidSpi {
                at: now,
                spi,
                src: *src,
                dst: *dst,
                seq: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
                family: fam,
                encap,
                flow_label: 0,
                len: pkt.len(),
                logged,
            }));
        }
        Inbound::Drop(DropReason::UnknownSpi)
    }

    #[inline(always)]
    fn count_log_decision(&mut self, logged: bool) {
        if logged {
            self.counters.invalid_spi_logged += 1;
        } else {
            self.counters.invalid_spi_suppressed += 1;
        }
    }

    /// A full queue counts the event as dropped, as `push_event` does.
    #[inline(always)]
    fn count_event_dropped(&mut self) {
        self.events.count_dropped();
        self.counters.events_dropped += 1;
    }

    /// [`unknown_spi`](Self::unknown_spi) for datagram `d` (its SPI is `spi`): the payload
    /// is sliced and the ports, addresses, sequence number and length read only when a
    /// log key or an event needs them, which in a flood is never. `quiet`: the limiter
    /// said its budget for `now` is spent (`LogLimiter::spent`).
    #[inline(always)]
    fn unknown_spi_udp(
        &mut self,
        now: Instant,
        spi: u32,
        d: &UdpDatagram<'_>,
        quiet: bool,
    ) -> Inbound {
        self.unknown_spi_with(
            now,
            spi,
            quiet,
            family_of(d.src),
            || (d.src, d.dst),
            |logged| {
                let pkt = &d.buf[d.payload.clone()];
                InvalidSpi {
                    at: now,
                    spi,
                    src: d.src,
                    dst: d.dst,
                    seq: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
                    family: family_of(d.src),
                    encap: Encap::Udp {
                        sport: d.sport,
                        dport: d.dport,
                    },
                    flow_label: 0,
                    len: pkt.len(),
                    logged,
                }
            },
        )
    }

    /// The invalid-SPI drop: counter, log decision, event. `addrs` (the log key's source
    /// and destination) and `event` are called only when needed; `quiet`: the log budget
    /// for `now` is known to be spent (the limiter then only counts a suppressed line).
    #[inline(always)]
    fn unknown_spi_with(
        &mut self,
        now: Instant,
        spi: u32,
        quiet: bool,
        fam: Family,
        addrs: impl FnOnce() -> (IpAddr, IpAddr),
        event: impl FnOnce(bool) -> InvalidSpi,
    ) -> Inbound {
        self.counters.drop(Dir::In, DropReason::UnknownSpi, fam);
        // `allow` skips the flow table once the minute's log budget is spent: in a flood of
        // random SPIs that is every packet but the first few, and no SipHash is paid.
        let logged = if quiet {
            self.limiter.note_suppressed();
            false
        } else {
            self.limiter.allow_with(now, || {
                let (src, dst) = addrs();
                (src, dst, spi)
            })
        };
        self.count_log_decision(logged);
        // One event per packet (the control side counts and correlates them); built only if
        // the queue has room. The room test comes first and alone: with the event's fields
        // gathered in a closure (`EventQueue::push_with`) the compiler stored them all on
        // every packet, full queue or not.
        if self.events.is_full() {
            self.count_event_dropped();
        } else {
            self.events.push(Event::InvalidSpi(event(logged)));
        }
        Inbound::Drop(DropReason::UnknownSpi)
    }

    /// An inner packet at `buf[payload]` read from the TUN device. `buf` must have
    /// [`HEADROOM`] bytes before and [`TAILROOM`] after the payload.
    pub fn outbound(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound {
        let (v, exhausted) = self.out.outbound(&mut self.counters, now, buf, payload);
        if let Some(s) = exhausted {
            // One event per SA (see `OutPlane::outbound`); a full queue tries again on the
            // next refused packet.
            if self.events.push(Event::SequenceExhausted {
                at: now,
                spi: s.sa.spi(),
            }) {
                s.exhaustion_reported();
            } else {
                self.counters.events_dropped += 1;
            }
        }
        v
    }

    /// Every SA, for `show sa`.
    pub fn sa_info(&self, now: Instant) -> Vec<SaInfo> {
        let secs = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let udp_port = |encap: UnderlayEncap, port: u16| match encap {
            UnderlayEncap::Udp => Some(port),
            UnderlayEncap::Raw => None,
        };
        // A negotiated inbound SA travels like the outbound half of its pair (which NAT
        // following and NAT-T floating update); a static one, or one whose outbound half is
        // gone (lingering after a rekey), like its peer's config. Indexed once so that
        // thousands of pairs do not make this quadratic.
        let mut pair_encap = std::collections::BTreeMap::new();
        for c in &self.out.children {
            pair_encap
                .entry((c.peer, c.inbound_spi))
                .or_insert((c.encap, c.port));
        }
        let mut v = Vec::new();
        for (pi, p) in self.cfg.peers.iter().enumerate() {
            for s in self.in_sas.iter().flatten().filter(|s| s.peer == pi) {
                let (encap, port) = pair_encap
                    .get(&(pi, s.sa.spi()))
                    .copied()
                    .unwrap_or((p.encap, p.port));
                v.push(SaInfo {
                    peer: p.name.clone(),
                    direction: "in",
                    spi: s.sa.spi(),
                    alg: s.sa.cipher().algorithm().name(),
                    esn: s.sa.replay().esn(),
                    packets: s.packets,
                    bytes: s.bytes,
                    replay_window: s.sa.replay().size(),
                    seq: s.sa.replay().right_edge(),
                    age_secs: secs(s.created),
                    idle_secs: s.last.map(secs),
                    encap,
                    udp_port: udp_port(encap, port),
                });
            }
            for c in self.out.children.iter().filter(|c| c.peer == pi) {
                let s = &c.out;
                v.push(SaInfo {
                    peer: p.name.clone(),
                    direction: "out",
                    spi: s.sa.spi(),
                    alg: s.sa.cipher().algorithm().name(),
                    esn: s.sa.esn(),
                    packets: s.packets(),
                    bytes: s.bytes(),
                    replay_window: 0,
                    seq: s.sa.last_seq(),
                    age_secs: secs(s.created),
                    idle_secs: s.last().map(secs),
                    encap: c.encap,
                    udp_port: udp_port(c.encap, c.port),
                });
            }
            if let Some(s) = &self.out.peers[pi].sa {
                v.push(SaInfo {
                    peer: p.name.clone(),
                    direction: "out",
                    spi: s.sa.spi(),
                    alg: s.sa.cipher().algorithm().name(),
                    esn: s.sa.esn(),
                    packets: s.packets(),
                    bytes: s.bytes(),
                    replay_window: 0,
                    seq: s.sa.last_seq(),
                    age_secs: secs(s.created),
                    idle_secs: s.last().map(secs),
                    encap: p.encap,
                    udp_port: udp_port(p.encap, p.port),
                });
            }
        }
        v
    }

    /// Flows tracked by the invalid-SPI rate limiter (bounded).
    pub fn tracked_flows(&self) -> usize {
        self.limiter.tracked_flows()
    }

    /// Adds a peer at run time (an IKE peer the static config did not list); returns its
    /// index.
    pub fn add_peer(&mut self, peer: PeerConfig) -> usize {
        self.out.peers.push(peer_out(&peer));
        self.cfg.peers.push(peer);
        self.peer_last_in.push(None);
        self.out_changed();
        self.cfg.peers.len() - 1
    }

    /// Counts an IKE message that arrived on port 500 (the agent hands it over directly).
    pub fn count_ike_in(&mut self) {
        self.counters.ike_in += 1;
    }

    /// The index of the peer with this name.
    pub fn peer_index(&self, name: &str) -> Option<usize> {
        self.cfg.peers.iter().position(|p| p.name == name)
    }

    /// How the peer's configuration says ESP travels to it (None: no such peer).
    pub fn peer_encap(&self, peer: usize) -> Option<UnderlayEncap> {
        self.cfg.peers.get(peer).map(|p| p.encap)
    }

    /// When the last packet from this peer decrypted and passed the policy check.
    pub fn last_inbound(&self, peer: usize) -> Option<Instant> {
        self.peer_last_in.get(peer).copied().flatten()
    }

    /// Reserves a fresh inbound SPI in the SAD (an IKE exchange offers it before the keys
    /// exist; lookups say `Unknown` until [`Node::install_child`]).
    pub fn reserve_spi(&mut self) -> Result<u32, NodeError> {
        let spi = self.sad.reserve_spi()?;
        self.sad_changed();
        if self.pending_spis.len() >= MAX_PENDING_SPIS {
            self.pending_spis.remove(0);
        }
        self.pending_spis.push(spi);
        Ok(spi)
    }

    /// Whether `spi` was reserved for an exchange still in flight (offered, not installed
    /// yet). A packet for it is the peer switching early, not a desync: RFC 7296 §2.8
    /// lets the rekey responder's packets on the new SA race the response.
    pub fn is_pending_spi(&self, spi: u32) -> bool {
        self.pending_spis.contains(&spi)
    }

    /// Reserves `n` inbound SPIs in one SAD transaction, appending each to `out` as it is
    /// reserved: one published snapshot instead of `n` (each publication copies the chunk
    /// pointer array, so `n` single reservations at 1Mi SAs would take minutes). For bulk
    /// setup (benchmarks, large simulations). Unlike [`Node::reserve_spi`] they are not
    /// marked as offered in an exchange ([`Node::is_pending_spi`]). On error (`Full`) the
    /// SPIs already in `out` stay reserved.
    pub fn reserve_spis(&mut self, n: usize, out: &mut Vec<u32>) -> Result<(), NodeError> {
        let r = self.sad.update(|t| {
            for _ in 0..n {
                out.push(t.reserve_spi()?);
            }
            Ok(())
        });
        self.sad_changed();
        r
    }

    /// Lets the outbound destination of `peer`'s pairs follow the source address and port
    /// of new, authenticated ESP arriving on inbound SA `inbound_spi`, now sent to
    /// `remote`. Only for a peer behind a NAT when we are not behind one (RFC 7296 §2.23:
    /// the NAT may rebind; a host behind a NAT must not follow, an attacker could move it
    /// with one packet).
    pub fn follow_peer_address(&mut self, inbound_spi: u32, peer: usize, remote: (IpAddr, u16)) {
        if self.follow.len() >= MAX_FOLLOW {
            self.follow.remove(0);
        }
        self.follow.push(Follow {
            inbound_spi,
            peer,
            remote,
            top_seq: 0,
        });
    }

    /// RFC 7296 §2.23: a packet whose integrity check passed, from another address or port
    /// than the SA's, moves all traffic to the peer there — but only a packet newer than
    /// every one before (the anti-replay window let it through; an old one replayed from
    /// elsewhere must not move us back).
    fn follow_source(&mut self, spi: u32, seq: u64, src: IpAddr, sport: u16) {
        let Some(f) = self.follow.iter_mut().find(|f| f.inbound_spi == spi) else {
            return;
        };
        if seq <= f.top_seq {
            return;
        }
        f.top_seq = seq;
        if f.remote == (src, sport) {
            return;
        }
        let peer = f.peer;
        for g in self.follow.iter_mut().filter(|g| g.peer == peer) {
            g.remote = (src, sport);
        }
        self.set_child_destination(peer, src, sport);
        self.counters.peer_address_followed += 1;
    }

    /// Gives back a reserved SPI that will not be installed (the exchange failed). It is
    /// withheld for the SAD's grace period like any retired SPI.
    pub fn release_spi(&mut self, spi: u32, now: Instant) {
        self.pending_spis.retain(|s| *s != spi);
        self.sad.remove(spi, now);
        self.sad_changed();
    }

    /// Installs a negotiated CHILD SA pair: the inbound SA under its reserved SPI, the
    /// outbound SA in the selector-matched list.
    pub fn install_child(&mut self, c: ChildInstall<'_>, now: Instant) -> Result<(), NodeError> {
        if c.peer >= self.cfg.peers.len() {
            return Err(NodeError::NoPeer(c.peer));
        }
        self.pending_spis.retain(|s| *s != c.inbound.spi);
        let in_sa = InboundSa::new(c.inbound)?;
        let out_sa = OutboundSa::new(c.outbound)?;
        let idx = match self.in_sas.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.in_sas.push(None);
                self.in_sas.len() - 1
            }
        };
        self.sad.install(c.inbound.spi, SaIndex::new(idx))?;
        self.sad_changed();
        self.in_sas[idx] = Some(InSa {
            sa: in_sa,
            peer: c.peer,
            ts: Some(Box::new((c.local_ts.to_vec(), c.remote_ts.to_vec()))),
            created: now,
            last: None,
            packets: 0,
            bytes: 0,
        });
        self.out.children.push(Arc::new(ChildOut {
            peer: c.peer,
            inbound_spi: c.inbound.spi,
            local_ts: c.local_ts.to_vec(),
            remote_ts: c.remote_ts.to_vec(),
            dst: c.dst,
            port: c.port,
            encap: c.encap,
            active: c.active,
            out: OutSa::new(out_sa, now),
        }));
        self.out_changed();
        Ok(())
    }

    /// Starts sending on the outbound SA of the pair `inbound_spi`/`outbound_spi`
    /// (make-before-break CHILD rekey, RFC 7296 §2.8). Returns whether it was found.
    pub fn activate_child(&mut self, inbound_spi: u32, outbound_spi: u32) -> bool {
        let mut found = false;
        for c in self
            .out
            .children
            .iter_mut()
            .filter(|c| c.inbound_spi == inbound_spi && c.out.sa.spi() == outbound_spi)
        {
            Arc::make_mut(c).active = true;
            found = true;
        }
        if found {
            self.out_changed();
        }
        found
    }

    /// Removes a negotiated pair: the outbound SA at once, the inbound SA after `linger`
    /// (late packets still decrypt; afterwards the SAD's retired grace applies).
    pub fn remove_child(
        &mut self,
        inbound_spi: u32,
        outbound_spi: u32,
        linger: Duration,
        now: Instant,
    ) {
        let before = self.out.children.len();
        self.out
            .children
            .retain(|c| !(c.inbound_spi == inbound_spi && c.out.sa.spi() == outbound_spi));
        if self.out.children.len() != before {
            self.out_changed();
        }
        self.follow.retain(|f| f.inbound_spi != inbound_spi);
        if linger.is_zero() {
            self.retire_inbound(inbound_spi, now);
        } else if let Some(at) = now.checked_add(linger) {
            self.lingering.push((at, inbound_spi));
        }
    }

    /// Moves the outer destination of every negotiated SA of `peer` (NAT mapping or port
    /// floating, RFC 7296 §2.23).
    pub fn set_child_destination(&mut self, peer: usize, dst: IpAddr, port: u16) {
        let mut changed = false;
        for c in self.out.children.iter_mut().filter(|c| c.peer == peer) {
            if (c.dst, c.port) != (dst, port) {
                let c = Arc::make_mut(c);
                c.dst = dst;
                c.port = port;
                changed = true;
            }
        }
        if changed {
            self.out_changed();
        }
    }

    /// Switches every negotiated SA of `peer` to RFC 3948 UDP encapsulation (the IKE SA
    /// floated to the NAT-T port, RFC 7296 §2.23: the path now may cross a NAT).
    pub fn set_child_udp(&mut self, peer: usize) {
        let mut changed = false;
        for c in self.out.children.iter_mut().filter(|c| c.peer == peer) {
            if c.encap != UnderlayEncap::Udp {
                Arc::make_mut(c).encap = UnderlayEncap::Udp;
                changed = true;
            }
        }
        if changed {
            self.out_changed();
        }
    }

    /// The next moment [`Node::handle_timeout`] has per-SA work (a lingering inbound SA to
    /// retire), if any. The periodic work (purge, log summaries) wants about one call a
    /// second on top of this.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.lingering.iter().map(|(t, _)| *t).min()
    }

    fn retire_lingering(&mut self, now: Instant) {
        if self.lingering.iter().all(|(t, _)| *t > now) {
            return;
        }
        let due: Vec<u32> = self
            .lingering
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, s)| *s)
            .collect();
        self.lingering.retain(|(t, _)| *t > now);
        for spi in due {
            self.retire_inbound(spi, now);
        }
    }

    fn retire_inbound(&mut self, spi: u32, now: Instant) {
        if let Some(idx) = self.sad.remove(spi, now) {
            if let Some(slot) = self.in_sas.get_mut(idx.get()) {
                *slot = None;
            }
        }
        self.sad_changed();
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::*;

    fn node() -> Node {
        let ip = |s: &str| s.parse().unwrap();
        Node::new(
            NodeConfig {
                name: "b".into(),
                local: ip("198.18.0.2"),
                peers: vec![],
                log_limits: LogLimits::default(),
                event_queue: 16,
                retired_grace: Duration::from_secs(5),
            },
            Some(3),
        )
    }

    #[test]
    fn reserve_spis_reserves_distinct_unknown_spis_in_one_go() {
        let mut n = node();
        let mut spis = vec![7];
        n.reserve_spis(3000, &mut spis).unwrap();
        assert_eq!(spis.len(), 3001, "appends, keeps what was there");
        let mut sorted = spis[1..].to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3000);
        assert!(sorted[0] > 255);
        let stats = n.sad.stats();
        assert_eq!((stats.reserved, stats.live), (3000, 0));
        assert!(stats.slots >= 6000, "grew past the initial 1Ki slots");
        // Reserved means no keys: a packet for one is an unknown SPI, with its event.
        let t = Instant::now();
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let mut pkt = [0u8; 32];
        pkt[..4].copy_from_slice(&spis[1].to_be_bytes());
        assert_eq!(
            n.inbound_udp(t, a, 4500, b, 4500, &mut pkt, 0..32),
            Inbound::Drop(DropReason::UnknownSpi)
        );
        assert!(matches!(n.poll_event(), Some(Event::InvalidSpi(e)) if e.spi == spis[1]));
        // A single reservation afterwards still avoids all of them.
        let one = n.reserve_spi().unwrap();
        assert!(!spis.contains(&one));
    }

    /// A large (fingerprinted) SAD withholds slots freed by purge while an older snapshot
    /// lives. A node that saw no packet since keeps its reader's old snapshot; the periodic
    /// tick must let it go, or SPI churn with no traffic (rekeys of idle tunnels) fills the
    /// table with withheld slots and makes it grow.
    #[test]
    fn idle_node_lets_purged_slots_be_reused() {
        let mut n = node();
        let mut spis = Vec::new();
        n.reserve_spis(30_000, &mut spis).unwrap();
        let slots = n.sad.stats().slots;
        assert_eq!(slots, 1 << 16, "fingerprinted table, under half full");
        // One packet: the reader now holds the current snapshot, then the node goes idle.
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let mut pkt = [0u8; 32];
        pkt[..4].copy_from_slice(&0x0bad_0001u32.to_be_bytes());
        n.inbound_udp(t0, a, 4500, b, 4500, &mut pkt, 0..32);
        // Churn: 20 rounds of 500 SPIs released, purged after the grace period, replaced.
        let mut now = t0;
        let mut live: std::collections::VecDeque<u32> = spis.into();
        for _ in 0..20 {
            for _ in 0..500 {
                let spi = live.pop_front().unwrap();
                n.release_spi(spi, now);
            }
            now += Duration::from_secs(6);
            n.handle_timeout(now);
            n.reserve_spis(500, &mut Vec::new()).unwrap();
            n.handle_timeout(now);
        }
        assert_eq!(n.sad.stats().reserved, 30_000);
        assert_eq!(
            n.sad.stats().slots,
            slots,
            "grew: purged slots stayed withheld"
        );
    }

    #[test]
    fn reserved_spi_is_pending_until_released() {
        let mut n = node();
        let a = n.reserve_spi().unwrap();
        let b = n.reserve_spi().unwrap();
        assert!(n.is_pending_spi(a) && n.is_pending_spi(b));
        assert!(!n.is_pending_spi(a ^ 1));
        n.release_spi(a, Instant::now());
        assert!(!n.is_pending_spi(a) && n.is_pending_spi(b));
        // Bounded: the oldest is forgotten first.
        for _ in 0..MAX_PENDING_SPIS {
            n.reserve_spi().unwrap();
        }
        assert!(!n.is_pending_spi(b));
        assert_eq!(n.pending_spis.len(), MAX_PENDING_SPIS);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use esplab_esp::Algorithm;

    const X: u32 = 0xc0de_0001;
    const Y: u32 = 0xc0de_0002;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, local: &str, peer: &str, lts: &str, rts: &str) -> Node {
        Node::new(
            NodeConfig {
                name: name.into(),
                local: ip(local),
                peers: vec![PeerConfig {
                    name: "peer".into(),
                    address: ip(peer),
                    encap: UnderlayEncap::Udp,
                    port: 4500,
                    local_ts: vec![lts.parse().unwrap()],
                    remote_ts: vec![rts.parse().unwrap()],
                }],
                log_limits: LogLimits::default(),
                event_queue: 16,
                retired_grace: Duration::from_secs(5),
            },
            Some(3),
        )
    }

    fn sa(spi: u32) -> SaParams {
        SaParams::new(spi, Algorithm::AesGcm128, &[spi as u8; 20], &[])
    }

    /// A (198.18.0.1, protecting 198.19.1.0/24) and B (198.18.0.2, 198.19.2.0/24).
    fn pair() -> (Node, Node) {
        (
            node(
                "a",
                "198.18.0.1",
                "198.18.0.2",
                "198.19.1.0/24",
                "198.19.2.0/24",
            ),
            node(
                "b",
                "198.18.0.2",
                "198.18.0.1",
                "198.19.2.0/24",
                "198.19.1.0/24",
            ),
        )
    }

    /// A sends ESP on `spi` (installed on A first); returns the ESP packets.
    fn esp(a: &mut Node, spi: u32, count: usize, t: Instant) -> Vec<Vec<u8>> {
        a.install_outbound(0, &sa(spi), t).unwrap();
        (0..count)
            .map(|i| {
                let mut buf = vec![0u8; HEADROOM + 40 + TAILROOM];
                let p = &mut buf[HEADROOM..HEADROOM + 40];
                p[0] = 0x45;
                p[2..4].copy_from_slice(&40u16.to_be_bytes());
                p[8] = 64;
                p[9] = 17;
                p[12..16].copy_from_slice(&[198, 19, 1, 1 + i as u8]);
                p[16..20].copy_from_slice(&[198, 19, 2, 1]);
                match a.outbound(t, &mut buf, HEADROOM..HEADROOM + 40) {
                    Outbound::Send { esp, .. } => buf[esp].to_vec(),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    fn dgram(buf: &mut [u8]) -> UdpDatagram<'_> {
        let n = buf.len();
        UdpDatagram {
            src: ip("198.18.0.1"),
            sport: 4500,
            dst: ip("198.18.0.2"),
            dport: 4500,
            buf,
            payload: 0..n,
        }
    }

    /// A burst looked up before the SAD changed (an SA installed or removed between
    /// datagrams, as an IKE message earlier in the burst does) is looked up again: the
    /// verdicts are those of the SAD at each datagram's turn, not at the lookup.
    #[test]
    fn sad_change_mid_batch_relooks_up_the_rest() {
        let t = Instant::now();
        let (mut a, mut b) = pair();
        let mut pkts = esp(&mut a, X, 3, t);
        let mut it = pkts.iter_mut();
        let mut batch: Vec<UdpDatagram<'_>> = (0..3).map(|_| dgram(it.next().unwrap())).collect();
        let mut lk = UdpLookup::new();
        b.lookup_udp_batch(&batch, &mut lk);
        // Not installed at lookup time: looked up as unknown.
        assert!(matches!(lk.found[0], Found::Unknown));
        b.install_inbound(0, &sa(X), t).unwrap();
        for (i, d) in batch.iter_mut().take(2).enumerate() {
            let v = b.inbound_udp_looked(t, &mut lk, i, d);
            assert!(matches!(v, Inbound::Deliver(_)), "{i}: {v:?}");
        }
        // Removed before the third: retired now, whatever the lookup said.
        b.remove_spi(X, t);
        assert_eq!(
            b.inbound_udp_looked(t, &mut lk, 2, &mut batch[2]),
            Inbound::Drop(DropReason::RetiredSpi)
        );
        assert_eq!(b.counters().in_packets, 2);
        assert!(b.poll_event().is_none(), "no invalid-SPI event");
    }

    /// The invalid-SPI drop reads a datagram's addresses, ports, sequence number and length
    /// lazily on the batch path, and a batch asks the limiter once whether the log budget
    /// is spent: its events, log decisions and counters must be exactly those of the
    /// single path. Three rounds of 20 datagrams: the first fills the queue (16 events)
    /// and spends the budget (10 lines) midway, the second (same instant) starts spent and
    /// full, the third (a minute later, queue drained) starts a new window; IPv4 and IPv6
    /// sources, various ports, payloads not at the buffer's start.
    #[test]
    fn unknown_spi_batch_events_equal_single() {
        let t0 = Instant::now();
        let mut bufs: Vec<Vec<u8>> = (0..20u32)
            .map(|i| {
                let off = (i % 3) as usize;
                let mut b = vec![0xa5; off + 8 + i as usize * 3];
                b[off..off + 4].copy_from_slice(&(0x7000_0000 + i).to_be_bytes());
                b[off + 4..off + 8].copy_from_slice(&(1000 + i * 7).to_be_bytes());
                b
            })
            .collect();
        fn dgrams(bufs: &mut [Vec<u8>]) -> Vec<UdpDatagram<'_>> {
            let v6 = |i: usize| IpAddr::from([0x2001, 2, 0, 0, 0, 0, 0, i as u16 + 1]);
            bufs.iter_mut()
                .enumerate()
                .map(|(i, b)| {
                    let v = i % 4 == 3;
                    UdpDatagram {
                        src: if v { v6(i) } else { ip("198.18.0.9") },
                        sport: 4500 + (i % 5) as u16,
                        dst: if v { v6(99) } else { ip("198.18.0.2") },
                        dport: 4500 - (i % 2) as u16,
                        payload: (i % 3)..b.len(),
                        buf: &mut b[..],
                    }
                })
                .collect()
        }
        let drain = |n: &mut Node| std::iter::from_fn(|| n.poll_event()).collect::<Vec<_>>();
        let ((_, mut single), (_, mut batched), (_, mut looked)) = (pair(), pair(), pair());
        for (round, t) in [t0, t0, t0 + Duration::from_secs(61)]
            .into_iter()
            .enumerate()
        {
            let mut copies = bufs.clone();
            let single_v: Vec<Inbound> = dgrams(&mut copies)
                .into_iter()
                .map(|d| single.inbound_udp(t, d.src, d.sport, d.dst, d.dport, d.buf, d.payload))
                .collect();
            let mut copies = bufs.clone();
            let mut batch = dgrams(&mut copies);
            let mut out = vec![Inbound::Keepalive; batch.len()];
            batched.inbound_udp_batch(t, &mut batch, &mut out);
            // Pass 2 driven one datagram at a time, as the agent does.
            let mut batch = dgrams(&mut bufs);
            let mut lk = UdpLookup::new();
            looked.lookup_udp_batch(&batch, &mut lk);
            let v: Vec<Inbound> = batch
                .iter_mut()
                .enumerate()
                .map(|(i, d)| looked.inbound_udp_looked(t, &mut lk, i, d))
                .collect();
            assert_eq!(out, single_v, "round {round}");
            assert_eq!(v, single_v, "round {round}");
            let single_ev = drain(&mut single);
            assert_eq!(single_ev.len(), 16, "round {round}");
            // Round 1 met a full queue: what it holds is what round 0 left.
            let invalid = single_ev
                .iter()
                .filter(|e| matches!(e, Event::InvalidSpi(_)))
                .count();
            assert_eq!(invalid, if round == 1 { 0 } else { 16 }, "round {round}");
            assert_eq!(drain(&mut batched), single_ev, "round {round}");
            assert_eq!(drain(&mut looked), single_ev, "round {round}");
            let c = single.counters();
            assert_eq!(batched.counters().named(), c.named(), "round {round}");
            assert_eq!(looked.counters().named(), c.named(), "round {round}");
            if round == 0 {
                // Round 1 starts with a full queue.
                for n in [&mut single, &mut batched, &mut looked] {
                    for _ in 0..16 {
                        n.push_event(Event::SequenceExhausted { at: t, spi: 1 });
                    }
                }
            }
        }
        let c = single.counters();
        assert_eq!((c.invalid_spi_logged, c.invalid_spi_suppressed), (20, 40));
        assert_eq!(c.events_dropped, 4 + 20 + 4);
    }

    /// A batch without unknown SPIs leaves the log limiter's window alone: the window
    /// starts at the first invalid SPI after the last one ended, as on the single path.
    #[test]
    fn batch_without_unknown_spis_does_not_move_the_log_window() {
        let limits = LogLimits {
            global_max: 1,
            ..LogLimits::default()
        };
        let (mut single, mut batched) = (pair().1, pair().1);
        single.limiter = LogLimiter::new(limits);
        batched.limiter = LogLimiter::new(limits);
        let t = Instant::now();
        // Unknown SPI at 0 s (logged), a keepalive at 70 s, unknown SPIs at 100 s (a new
        // window: logged) and 150 s (same window: suppressed).
        for (secs, pkt) in [
            (0, vec![0x70, 0, 0, 1, 0, 0, 0, 1]),
            (70, vec![0xff]),
            (100, vec![0x70, 0, 0, 2, 0, 0, 0, 1]),
            (150, vec![0x70, 0, 0, 3, 0, 0, 0, 1]),
        ] {
            let now = t + Duration::from_secs(secs);
            let (mut a, mut b) = (pkt.clone(), pkt);
            let n = a.len();
            let (src, dst) = (ip("198.18.0.1"), ip("198.18.0.2"));
            let v = single.inbound_udp(now, src, 4500, dst, 4500, &mut a, 0..n);
            let mut out = [Inbound::Keepalive];
            batched.inbound_udp_batch(now, &mut [dgram(&mut b)], &mut out);
            assert_eq!(out[0], v, "{secs}");
        }
        let c = single.counters();
        assert_eq!((c.invalid_spi_logged, c.invalid_spi_suppressed), (2, 1));
        assert_eq!(batched.counters().named(), c.named());
    }

    /// A datagram handed to pass 2 under another index than it had in pass 1 is looked up
    /// on its own, not given another datagram's result.
    #[test]
    fn mismatched_index_is_looked_up_singly() {
        let t = Instant::now();
        let (mut a, mut b) = pair();
        b.install_inbound(0, &sa(X), t).unwrap();
        let mut good = esp(&mut a, X, 1, t).remove(0);
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&Y.to_be_bytes());
        let mut lk = UdpLookup::new();
        {
            let batch = [dgram(&mut bad), dgram(&mut good)];
            b.lookup_udp_batch(&batch, &mut lk);
        }
        // `good` as index 0 (where Y, unknown, was looked up): still delivered.
        let v = b.inbound_udp_looked(t, &mut lk, 0, &mut dgram(&mut good));
        assert!(matches!(v, Inbound::Deliver(_)), "{v:?}");
        // Past the end of the lookup: looked up singly too.
        let v = b.inbound_udp_looked(t, &mut lk, BATCH + 5, &mut dgram(&mut bad));
        assert_eq!(v, Inbound::Drop(DropReason::UnknownSpi));
    }
}

#[cfg(test)]
mod sa_info_tests {
    use super::*;
    use esplab_esp::Algorithm;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(name: &str, addr: &str, encap: UnderlayEncap, rts: &str) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            address: ip(addr),
            encap,
            port: 4500,
            local_ts: vec!["198.19.1.0/24".parse().unwrap()],
            remote_ts: vec![rts.parse().unwrap()],
        }
    }

    fn sa(spi: u32) -> SaParams {
        SaParams::new(spi, Algorithm::AesGcm128, &[spi as u8; 20], &[])
    }

    /// (direction, spi) -> (encap, udp_port) of every SA of `peer`.
    fn encaps(
        n: &Node,
        peer: &str,
        t: Instant,
    ) -> Vec<(&'static str, u32, UnderlayEncap, Option<u16>)> {
        let mut v: Vec<_> = n
            .sa_info(t)
            .into_iter()
            .filter(|s| s.peer == peer)
            .map(|s| (s.direction, s.spi, s.encap, s.udp_port))
            .collect();
        v.sort_by_key(|e| (e.0, e.1));
        v
    }

    /// Every SA kind says how it travels: static SAs as their peer's config, negotiated
    /// outbound SAs as their own (after NAT following / NAT-T floating), negotiated inbound
    /// SAs as the outbound half of their pair, and a lingering inbound SA whose pair is gone
    /// as its peer's config again.
    #[test]
    fn sa_info_reports_encapsulation_of_every_sa_kind() {
        use UnderlayEncap::{Raw, Udp};
        let t = Instant::now();
        let mut n = Node::new(
            NodeConfig {
                name: "a".into(),
                local: ip("198.18.0.1"),
                peers: vec![
                    peer("raw", "198.18.0.2", Raw, "198.19.2.0/24"),
                    peer("nat", "198.18.0.3", Udp, "198.19.3.0/24"),
                ],
                log_limits: LogLimits::default(),
                event_queue: 16,
                retired_grace: Duration::from_secs(5),
            },
            Some(3),
        );
        // Static SAs: the peer's config.
        n.install_inbound(0, &sa(0x1000), t).unwrap();
        n.install_outbound(0, &sa(0x1001), t).unwrap();
        n.install_inbound(1, &sa(0x2000), t).unwrap();
        n.install_outbound(1, &sa(0x2001), t).unwrap();
        assert_eq!(
            encaps(&n, "raw", t),
            [("in", 0x1000, Raw, None), ("out", 0x1001, Raw, None)]
        );
        assert_eq!(
            encaps(&n, "nat", t),
            [
                ("in", 0x2000, Udp, Some(4500)),
                ("out", 0x2001, Udp, Some(4500))
            ]
        );

        // Negotiated pairs: their own encapsulation, not the peer's config.
        let install = |n: &mut Node, peer: usize, out_spi: u32, encap| {
            let in_spi = n.reserve_spi().unwrap();
            let rts = ["198.19.2.0/24".parse().unwrap()];
            let lts = ["198.19.1.0/24".parse().unwrap()];
            n.install_child(
                ChildInstall {
                    peer,
                    inbound: &sa(in_spi),
                    outbound: &sa(out_spi),
                    local_ts: &lts,
                    remote_ts: &rts,
                    dst: ip("198.18.0.9"),
                    port: 4500,
                    encap,
                    active: true,
                },
                t,
            )
            .unwrap();
            in_spi
        };
        let raw_in = install(&mut n, 0, 0x3001, Raw);
        let nat_in = install(&mut n, 1, 0x4001, Udp);
        // The NAT in front of "nat" rebinds (RFC 7296 §2.23); the raw-ESP pair of "raw"
        // floats to UDP while its peer's config still says raw.
        n.set_child_destination(1, ip("198.18.0.9"), 31000);
        let raw_in_2 = install(&mut n, 0, 0x3002, Raw);
        n.set_child_udp(0);
        let raw = encaps(&n, "raw", t);
        assert!(raw.contains(&("in", raw_in, Udp, Some(4500))), "{raw:?}");
        assert!(raw.contains(&("out", 0x3001, Udp, Some(4500))), "{raw:?}");
        assert!(raw.contains(&("in", raw_in_2, Udp, Some(4500))), "{raw:?}");
        assert!(raw.contains(&("in", 0x1000, Raw, None)), "static unchanged");
        let nat = encaps(&n, "nat", t);
        assert!(nat.contains(&("in", nat_in, Udp, Some(31000))), "{nat:?}");
        assert!(nat.contains(&("out", 0x4001, Udp, Some(31000))), "{nat:?}");
        assert!(
            nat.contains(&("out", 0x2001, Udp, Some(4500))),
            "static unchanged"
        );

        // Outbound half removed, inbound lingering: back to the peer's config.
        n.remove_child(raw_in, 0x3001, Duration::from_secs(60), t);
        let raw = encaps(&n, "raw", t);
        assert!(raw.contains(&("in", raw_in, Raw, None)), "{raw:?}");
        assert!(!raw.iter().any(|e| e.1 == 0x3001), "{raw:?}");
    }
}

#[cfg(test)]
mod publish_tests {
    use super::*;
    use esplab_esp::Algorithm;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(spi: u32) -> SaParams {
        SaParams::new(spi, Algorithm::AesGcm128, &[spi as u8; 20], &[])
    }

    /// Node "a" (198.18.0.1, 198.19.1.0/24) with one peer "b" (198.18.0.2, 198.19.2.0/24).
    fn node_a() -> Node {
        Node::new(
            NodeConfig {
                name: "a".into(),
                local: ip("198.18.0.1"),
                peers: vec![PeerConfig {
                    name: "b".into(),
                    address: ip("198.18.0.2"),
                    encap: UnderlayEncap::Udp,
                    port: 4500,
                    local_ts: vec!["198.19.1.0/24".parse().unwrap()],
                    remote_ts: vec!["198.19.2.0/24".parse().unwrap()],
                }],
                log_limits: LogLimits::default(),
                event_queue: 16,
                retired_grace: Duration::from_secs(5),
            },
            Some(3),
        )
    }

    /// Once the outbound half has a thread of its own, every change to it publishes a copy
    /// of the plane: bulk changes publish once (clearing N pairs one copy at a time was
    /// O(N^2): 4.5 s for 4000 pairs), and changes that leave it as it was publish nothing.
    #[test]
    fn outbound_changes_publish_once_and_only_when_the_outbound_half_moved() {
        let t = Instant::now();
        let mut n = node_a();
        let _h = n.split_tx();
        let published = |n: &Node| n.tx.as_ref().unwrap().generation();
        let lts = ["198.19.1.0/24".parse().unwrap()];
        let rts = ["198.19.2.0/24".parse().unwrap()];
        let mut pairs = Vec::new();
        for k in 0..40u32 {
            let in_spi = n.reserve_spi().unwrap();
            let out_spi = 0x5000 + k;
            n.install_child(
                ChildInstall {
                    peer: 0,
                    inbound: &sa(in_spi),
                    outbound: &sa(out_spi),
                    local_ts: &lts,
                    remote_ts: &rts,
                    dst: ip("198.18.0.2"),
                    port: 4500,
                    encap: UnderlayEncap::Udp,
                    active: k % 2 == 0,
                },
                t,
            )
            .unwrap();
            pairs.push((in_spi, out_spi));
        }
        assert_eq!(published(&n), 40);

        // Inbound-only changes, and changes that change nothing, publish nothing.
        n.install_inbound(0, &sa(0x9000), t).unwrap();
        assert_eq!(n.remove_spi(0x9000, t), 1);
        assert_eq!(n.remove_spi(0x9001, t), 0);
        assert!(!n.activate_child(0x1234, 0x5678));
        n.remove_child(0x1234, 0x5678, Duration::ZERO, t);
        n.set_child_destination(0, ip("198.18.0.2"), 4500);
        n.set_child_udp(0);
        assert_eq!(published(&n), 40);

        // Real changes publish one plane each, and copy only the pairs they touch.
        let (i, o) = pairs[1];
        assert!(n.activate_child(i, o));
        n.set_child_destination(0, ip("198.18.0.3"), 4501);
        let (i, o) = pairs[0];
        n.remove_child(i, o, Duration::ZERO, t);
        assert_eq!(published(&n), 43);
        let (i, _) = pairs[2];
        assert_eq!(n.remove_spi(i, t), 1); // the inbound half only
        assert_eq!(published(&n), 43);

        // Clearing everything: one plane, with nothing left in it.
        n.install_outbound(0, &sa(0x7000), t).unwrap();
        assert_eq!(published(&n), 44);
        assert_eq!(n.clear_all(t), 39 + 38 + 1);
        assert_eq!(published(&n), 45);
        assert!(n.out.children.is_empty() && n.out.peers[0].sa.is_none());
        assert_eq!(n.clear_all(t), 0);
        assert_eq!(published(&n), 45);
    }

    /// Events the sending thread raises come out of the node's `poll_event` once the
    /// node's own queue is empty (the fast path only looks at the channel when a sending
    /// thread exists).
    #[test]
    fn poll_event_hands_over_the_sending_threads_events() {
        let t = Instant::now();
        let mut n = node_a();
        assert!(n.poll_event().is_none());
        let mut h = n.split_tx();
        let mut out = OutboundSa::new(&sa(0x7000)).unwrap();
        out.set_next_seq(u32::MAX as u64);
        n.out.peers[0].sa = Some(OutSa::new(out, t));
        n.out_changed();
        let packet = crate::outbound::tests::packet;
        let mut b = packet();
        assert!(matches!(
            h.outbound(t, &mut b, HEADROOM..HEADROOM + 40),
            Outbound::Send { .. }
        ));
        let mut b = packet();
        assert_eq!(
            h.outbound(t, &mut b, HEADROOM..HEADROOM + 40),
            Outbound::Drop(DropReason::SequenceExhausted)
        );
        assert!(matches!(
            n.poll_event(),
            Some(Event::SequenceExhausted { spi: 0x7000, .. })
        ));
        assert!(n.poll_event().is_none());
    }

    #[test]
    #[should_panic(expected = "split_tx called twice")]
    fn split_tx_twice_is_a_bug() {
        let mut n = Node::new(
            NodeConfig {
                name: "a".into(),
                local: ip("198.18.0.1"),
                peers: vec![],
                log_limits: LogLimits::default(),
                event_queue: 16,
                retired_grace: Duration::from_secs(5),
            },
            Some(3),
        );
        let _a = n.split_tx();
        let _b = n.split_tx();
    }
}
