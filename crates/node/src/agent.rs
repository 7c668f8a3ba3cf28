//! One peer with its control plane: the datapath [`Node`] plus an IKEv2
//! [`esplab_ike::Endpoint`], glued together sans-IO.
//!
//! The agent routes underlay datagrams (ESP to the node, IKE to the endpoint), applies the
//! endpoint's SA outputs to the node (install, activate, remove with linger) and queues the
//! IKE datagrams to send. The daemon and the lab simulator drive the same code: every call
//! takes `now`, nothing here owns a socket, a clock or a thread.
//!
//! ESP stays verdict-style and allocation-free ([`Agent::handle_tun`],
//! [`Agent::handle_underlay_udp`] return the node's [`Outbound`]/[`Inbound`]); IKE
//! datagrams (rare, control plane) come out of [`Agent::poll_transmit`] as owned buffers.

use crate::event::Event;
use crate::node::{
    ChildInstall, Inbound, Node, NodeConfig, NodeError, Outbound, PeerConfig, UdpDatagram,
    UdpLookup, BATCH,
};
use crate::recovery::{
    Action, DpdAction, OnInvalidSpi, PeerInfo, PeerRecoveryStatus, Recovery, RecoveryEvent,
    RecoveryStats,
};
use crate::UnderlayEncap;
use esplab_esp::wire;
use esplab_esp::{Algorithm, Encap, SaParams, Underlay};
use esplab_ike::output::{esp_suite_name, ts_to_string};
use esplab_ike::{
    AddrRange, ChildSa, CommandError, ConfigError, DeleteReason, Endpoint, EndpointConfig,
    IkeEvent, IkeSaId, IkeSaInfo, InvalidSpiAction, Output, PeerAction, ProtocolId, SpiAllocator,
};
use esplab_sad::TrafficSelector;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

/// The IKE port (RFC 7296 §2): messages on it carry no non-ESP marker.
pub const IKE_PORT: u16 = 500;

/// RFC 3948 §2.2: an IKE message on the NAT-T port is preceded by four zero octets (the
/// non-ESP marker) so it cannot be taken for ESP (SPI 0 is never used).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// An IKE datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Our address and port to send from.
    pub local: SocketAddr,
    /// The destination.
    pub remote: SocketAddr,
    /// The UDP payload, with the non-ESP marker already in front when `local` is not port
    /// 500.
    pub data: Vec<u8>,
}

/// What the agent reports (for logs, `follow` and the recovery logic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A datapath event.
    Node(Event),
    /// An IKE event.
    Ike(IkeEvent),
    /// A negotiated CHILD SA pair went into the node.
    ChildInstalled {
        /// Peer name.
        peer: String,
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
        /// Algorithms, proposal syntax.
        suite: String,
        /// Our selectors.
        local_ts: Vec<String>,
        /// The peer's selectors.
        remote_ts: Vec<String>,
        /// Outer destination of our ESP.
        remote: SocketAddr,
        /// Whether the outbound SA is used at once.
        active: bool,
        /// The pair it replaces (CHILD SA rekey).
        rekey_of: Option<u32>,
        /// Wireshark `esp_sa` UAT lines for both SAs; empty unless `debug_keys`.
        uat: Vec<String>,
    },
    /// The outbound SA of a pair is now in use (rekey responder, make-before-break).
    ChildActivated {
        /// Peer name.
        peer: String,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// A pair was removed from the node (the inbound SA lingers `linger`).
    ChildRemoved {
        /// Peer name.
        peer: String,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
        /// How long late packets still decrypt.
        linger: Duration,
    },
    /// The node refused a negotiated pair (the endpoint still believes it exists).
    InstallFailed {
        /// Peer name.
        peer: String,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Why.
        error: String,
    },
    /// An invalid-SPI recovery / liveness step (see [`crate::recovery`]).
    Recovery(RecoveryEvent),
    /// The keys of a new IKE SA (first one or rekeyed), only with `debug_keys`.
    IkeKeys {
        /// Peer name.
        peer: String,
        /// The IKE SA.
        ike_sa: IkeSaId,
        /// The IKE SA it replaces (IKE SA rekey).
        rekey_of: Option<IkeSaId>,
        /// IKE SA initiator's SPI.
        spi_i: u64,
        /// IKE SA responder's SPI.
        spi_r: u64,
        /// Wireshark `ikev2_decryption_table` UAT line (key material!).
        uat: String,
    },
}

/// Settings of an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The datapath. IKE peers missing from `node.peers` (matched by name) are added.
    pub node: NodeConfig,
    /// The IKE endpoint (its `rng_seed` also seeds the SAD's SPI choice).
    pub ike: EndpointConfig,
    /// Put Wireshark `esp_sa` UAT lines (key material!) into [`AgentEvent::ChildInstalled`]
    /// and report every IKE SA's `ikev2_decryption_table` line ([`AgentEvent::IkeKeys`];
    /// turns on `ike.export_ike_keys`).
    pub debug_keys: bool,
    /// Invalid-SPI recovery and liveness policy.
    pub recovery: crate::recovery::RecoveryConfig,
}

/// Why an agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The IKE configuration.
    #[error(transparent)]
    Ike(#[from] ConfigError),
}

/// The node's SAD as the endpoint's SPI allocator (RFC 4301 §4.1: the receiver chooses
/// the SPI of an inbound SA). Reserved SPIs look `Unknown` until installed.
struct SadSpis<'a> {
    node: &'a mut Node,
    now: Instant,
}

impl SpiAllocator for SadSpis<'_> {
    fn allocate_inbound_spi(&mut self) -> u32 {
        // A full SAD: 0 (reserved, RFC 4303 §2.1); installing it fails later and says
        // so (InstallFailed) instead of colliding with a live SA.
        self.node.reserve_spi().unwrap_or_default()
    }

    fn release_inbound_spi(&mut self, spi: u32) {
        self.node.release_spi(spi, self.now);
    }
}

/// A node plus its IKE endpoint. See the module docs.
pub struct Agent {
    node: Node,
    ike: Endpoint,
    transmits: VecDeque<Transmit>,
    events: VecDeque<AgentEvent>,
    nat_t_port: u16,
    debug_keys: bool,
    recovery: Recovery,
    /// Peers with liveness checks: (node peer index, name), for ESP-aware DPD.
    dpd_peers: Vec<(usize, String)>,
    node_events_dropped: u64,
    /// SPIs the peer's last protected Delete(ESP) (`true`) or known N(INVALID_SPI)
    /// (`false`) named, until the endpoint's outputs for that message are applied: only
    /// those whose pair is then actually removed count as stale (RFC 7296 §1.4.1).
    peer_deletes: Vec<(u32, bool)>,
    /// IKE messages the endpoint dropped, by reason (`IN_IKE_DROP_*`).
    ike_drops: crate::counters::IkeDropCounters,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// An IKE traffic selector as the SAD's (None for an inverted range, which the endpoint
/// never negotiates).
pub fn sad_ts(t: &esplab_ike::TrafficSelector) -> Option<TrafficSelector> {
    let (s, e): (IpAddr, IpAddr) = match t.range {
        AddrRange::V4 { start, end } => (start.into(), end.into()),
        AddrRange::V6 { start, end } => (start.into(), end.into()),
    };
    TrafficSelector::new(s, e, t.ip_protocol, t.start_port..=t.end_port).ok()
}

/// A SAD traffic selector as IKE's (for building `IkePeerConfig` from a node peer).
pub fn ike_ts(t: &TrafficSelector) -> esplab_ike::TrafficSelector {
    let range = match (t.start_addr(), t.end_addr()) {
        (IpAddr::V4(start), IpAddr::V4(end)) => AddrRange::V4 { start, end },
        (IpAddr::V6(start), IpAddr::V6(end)) => AddrRange::V6 { start, end },
        // TrafficSelector::new refuses mixed families.
        (IpAddr::V4(start), IpAddr::V6(_)) => AddrRange::V4 { start, end: start },
        (IpAddr::V6(start), IpAddr::V4(_)) => AddrRange::V6 { start, end: start },
    };
    let ports = t.ports();
    esplab_ike::TrafficSelector {
        ip_protocol: t.protocol(),
        start_port: *ports.start(),
        end_port: *ports.end(),
        range,
    }
}

/// Wireshark `esp_sa` UAT line for one SA (Edit → Preferences → Protocols → ESP).
pub fn esp_sa_uat_line(src: IpAddr, dst: IpAddr, p: &SaParams) -> String {
    let fam = if src.is_ipv4() { "IPv4" } else { "IPv6" };
    let (enc, auth) = match p.alg {
        Algorithm::AesGcm128 | Algorithm::AesGcm256 => {
            ("AES-GCM with 16 octet ICV [RFC4106]", "NULL")
        }
        Algorithm::AesCbc128HmacSha256 | Algorithm::AesCbc256HmacSha256 => {
            ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]")
        }
    };
    let hex = |b: &[u8]| {
        if b.is_empty() {
            String::new()
        } else {
            let mut s = String::from("0x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
    };
    format!(
        "\"{fam}\",\"{src}\",\"{dst}\",\"0x{:08x}\",\"{enc}\",\"{}\",\"{auth}\",\"{}\"",
        p.spi,
        hex(&p.enc_key),
        hex(&p.integ_key)
    )
}

impl Agent {
    /// An agent with no SAs. Peers with `start` initiate at the first
    /// [`Agent::handle_timeout`].
    pub fn new(mut cfg: AgentConfig, now: Instant) -> Result<Self, AgentError> {
        // Liveness policy of the recovery config goes to the endpoint, which runs the
        // probes and the retransmission schedule that decides death (RFC 7296 §2.4).
        for p in cfg.ike.peers.iter_mut() {
            let r = cfg.recovery.for_peer(&p.name);
            if r.dpd_delay.is_some() {
                p.dpd_delay = r.dpd_delay;
            }
            if r.dpd_action == DpdAction::Restart {
                p.on_dead = PeerAction::Restart;
            }
        }
        let infos: Vec<PeerInfo> = cfg
            .ike
            .peers
            .iter()
            .map(|p| PeerInfo {
                name: p.name.clone(),
                addr: p.remote_addr.map(|a| a.ip()),
                // Peers may have their own retransmission schedule: a recovery attempt
                // fails when that one runs out, not the node-wide one.
                attempt_timeout: p.retransmit.map(|r| r.total()),
                restart_on_peer_delete: p.on_peer_delete == PeerAction::Restart,
            })
            .collect();
        // Debug keys cover the IKE SAs too (Wireshark needs both tables to decrypt a capture).
        cfg.ike.export_ike_keys |= cfg.debug_keys;
        let recovery = Recovery::new(cfg.recovery.clone(), &infos, cfg.ike.retransmit.total());
        let seed = cfg.ike.rng_seed.map(|s| s ^ 0x5ad5_5ad5_5ad5_5ad5);
        let nat_t_port = cfg.ike.nat_t_port;
        let mut node = Node::new(cfg.node, seed);
        for p in &cfg.ike.peers {
            if node.peer_index(&p.name).is_none() {
                let address = p
                    .remote_addr
                    .map(|a| a.ip())
                    .or(p.local_addr.map(|a| match a.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    }))
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                node.add_peer(PeerConfig {
                    name: p.name.clone(),
                    address,
                    encap: UnderlayEncap::Udp,
                    port: nat_t_port,
                    local_ts: p.local_ts.iter().filter_map(sad_ts).collect(),
                    remote_ts: p.remote_ts.iter().filter_map(sad_ts).collect(),
                });
            }
        }
        let dpd_peers = cfg
            .ike
            .peers
            .iter()
            .filter(|p| p.dpd_delay.is_some())
            .filter_map(|p| node.peer_index(&p.name).map(|i| (i, p.name.clone())))
            .collect();
        let ike = Endpoint::new(cfg.ike, now)?;
        Ok(Agent {
            node,
            ike,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            nat_t_port,
            debug_keys: cfg.debug_keys,
            recovery,
            dpd_peers,
            node_events_dropped: 0,
            peer_deletes: Vec::new(),
            ike_drops: Default::default(),
        })
    }

    /// The datapath (counters, `sa_info`, `clear_spi`, ...).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The datapath, mutable (manual SAs, `clear_spi`, counters).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The IKE endpoint (read-only: commands go through the agent so outputs are applied).
    pub fn endpoint(&self) -> &Endpoint {
        &self.ike
    }

    /// A UDP datagram received on `local` (port 500 or the NAT-T port) from `remote`;
    /// its payload is `buf[payload]`. IKE goes to the endpoint (the verdict is then
    /// `Inbound::Ike`, nothing left to do), ESP to the node.
    pub fn handle_underlay_udp(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Inbound {
        if local.port() == IKE_PORT {
            // RFC 7296 §2: port 500 carries bare IKE messages, never ESP.
            self.node.count_ike_in();
            self.ike_datagram(now, local, remote, &buf[payload.clone()]);
            return Inbound::Ike(payload);
        }
        let v = self.node.inbound_udp(
            now,
            remote.ip(),
            remote.port(),
            local.ip(),
            local.port(),
            buf,
            payload,
        );
        if let Inbound::Ike(r) = &v {
            self.ike_datagram(now, local, remote, &buf[r.clone()]);
        }
        self.drain_node_events(now);
        v
    }

    /// The batched form of [`handle_underlay_udp`](Self::handle_underlay_udp), for a burst
    /// received on the NAT-T socket (one `recvmmsg`, GRO runs split): `out[i]` receives the
    /// verdict of `batch[i]` (its `dst`/`dport` are our address and port, `src`/`sport`
    /// the remote's). The SPIs of each group of up to [`crate::BATCH`] datagrams are looked
    /// up in one pass against one SAD snapshot ([`Node::lookup_udp_batch`]); everything
    /// else happens per datagram, in order, exactly as [`handle_underlay_udp`] does: IKE
    /// behind the non-ESP marker goes to the endpoint (and if that changes the SAD, the rest
    /// of the group is looked up again), node events (invalid-SPI recovery) are handled
    /// before the next datagram.
    ///
    /// [`handle_underlay_udp`]: Self::handle_underlay_udp
    ///
    /// # Panics
    /// If `out` is shorter than `batch`.
    pub fn handle_underlay_udp_batch(
        &mut self,
        now: Instant,
        batch: &mut [UdpDatagram<'_>],
        out: &mut [Inbound],
    ) {
        assert!(
            out.len() >= batch.len(),
            "handle_underlay_udp_batch: out too short"
        );
        let mut lk = UdpLookup::new();
        for (group, outs) in batch.chunks_mut(BATCH).zip(out.chunks_mut(BATCH)) {
            self.node.lookup_udp_batch(group, &mut lk);
            for (i, (d, o)) in group.iter_mut().zip(outs.iter_mut()).enumerate() {
                let local = SocketAddr::new(d.dst, d.dport);
                let remote = SocketAddr::new(d.src, d.sport);
                if d.dport == IKE_PORT {
                    // RFC 7296 §2: port 500 carries bare IKE messages, never ESP.
                    *o = self.handle_underlay_udp(now, local, remote, d.buf, d.payload.clone());
                    continue;
                }
                let v = self.node.inbound_udp_looked(now, &mut lk, i, d);
                if let Inbound::Ike(r) = &v {
                    self.ike_datagram(now, local, remote, &d.buf[r.clone()]);
                }
                self.drain_node_events(now);
                *o = v;
            }
        }
    }

    /// A whole underlay IP datagram (raw socket, capture): raw ESP to the node; an IKE
    /// message in UDP (a capture) to the endpoint.
    pub fn handle_underlay_ip(&mut self, now: Instant, buf: &mut [u8]) -> Inbound {
        let v = self.node.inbound_ip(now, buf);
        if let Inbound::Ike(r) = &v {
            // Rare (raw sockets only see protocol 50): parse the outer header again for
            // the addresses.
            if let Ok(Underlay::Ike(o)) = wire::parse_underlay(buf) {
                if let Encap::Udp { sport, dport } = o.encap {
                    let local = SocketAddr::new(o.dst, dport);
                    let remote = SocketAddr::new(o.src, sport);
                    let r = r.clone();
                    self.ike_datagram(now, local, remote, &buf[r]);
                }
            }
        }
        self.drain_node_events(now);
        v
    }

    /// A raw ESP packet at `buf[esp]` (IPv6 raw sockets give no outer header).
    pub fn handle_underlay_esp(
        &mut self,
        now: Instant,
        src: IpAddr,
        dst: IpAddr,
        buf: &mut [u8],
        esp: Range<usize>,
    ) -> Inbound {
        let v = self.node.inbound_esp(now, src, dst, Encap::Raw, buf, esp);
        self.drain_node_events(now);
        v
    }

    /// An inner packet read from the TUN device at `buf[payload]` (with
    /// [`crate::HEADROOM`] before and [`crate::TAILROOM`] after): negotiated CHILD SAs
    /// by selector first, then the manual SAs.
    pub fn handle_tun(&mut self, now: Instant, buf: &mut [u8], payload: Range<usize>) -> Outbound {
        self.node.outbound(now, buf, payload)
    }

    /// Timers: IKE retransmissions, rekeys, DPD, lingering inbound SAs, and the node's
    /// periodic work. Call at [`Agent::poll_timeout`] and about once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.drain_node_events(now);
        for (pi, name) in &self.dpd_peers {
            if let Some(at) = self.node.last_inbound(*pi) {
                self.ike.note_protected_traffic(name, at);
            }
        }
        let mut spis = SadSpis {
            node: &mut self.node,
            now,
        };
        self.ike.handle_timeout(now, &mut spis);
        self.apply_outputs(now);
        self.recovery.handle_timeout(now);
        let ike = &self.ike;
        let restarts = self.recovery.due_restarts(now, |p| ike.has_sa_for_peer(p));
        for peer in restarts {
            if self.initiate(now, &peer).is_err() {
                self.recovery.initiated(now, &peer, false);
            }
        }
        self.drain_recovery_events();
    }

    /// When [`Agent::handle_timeout`] is due next (may be in the past: call it at once).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ike.poll_timeout(),
            self.node.next_timeout(),
            self.recovery.next_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next IKE datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event: datapath events first, then IKE and SA events in order.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        if let Some(e) = self.node.poll_event() {
            return Some(AgentEvent::Node(e));
        }
        self.events.pop_front()
    }

    /// Starts an IKE SA (and its CHILD SA) with `peer` (no-op if one is up or coming).
    pub fn initiate(&mut self, now: Instant, peer: &str) -> Result<IkeSaId, CommandError> {
        let mut spis = SadSpis {
            node: &mut self.node,
            now,
        };
        let r = self.ike.initiate(now, peer, &mut spis);
        self.recovery.on_local_initiate(peer);
        self.apply_outputs(now);
        r
    }

    /// Deletes every IKE SA with `peer` (INFORMATIONAL Delete) and its CHILD SAs.
    pub fn terminate(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let r = self.ike.terminate(now, peer);
        // Our own terminate is final: `on_peer_delete = "restart"` does not bring it back.
        self.recovery.on_local_terminate(peer);
        self.apply_outputs(now);
        r
    }

    /// Rekeys the CHILD SA pair with this (inbound or outbound) SPI.
    pub fn rekey_child(&mut self, now: Instant, spi: u32) -> Result<(), CommandError> {
        let mut spis = SadSpis {
            node: &mut self.node,
            now,
        };
        let r = self.ike.rekey_child(now, spi, &mut spis);
        self.apply_outputs(now);
        r
    }

    /// Rekeys `peer`'s CHILD SA pairs (only the one with `spi`, inbound or outbound, when
    /// given). Returns the inbound SPIs of the pairs concerned (a pair already being
    /// rekeyed is left alone, see [`esplab_ike::Endpoint::rekey_child`]).
    pub fn rekey_peer_children(
        &mut self,
        now: Instant,
        peer: &str,
        spi: Option<u32>,
    ) -> Result<Vec<u32>, CommandError> {
        if !self.ike.config().peers.iter().any(|p| p.name == peer) {
            return Err(CommandError::UnknownPeer(peer.to_string()));
        }
        let pairs: Vec<u32> = self
            .ike
            .ike_sas(now)
            .iter()
            .filter(|s| s.peer == peer)
            .flat_map(|s| s.children.iter())
            .filter(|c| match spi {
                Some(x) => x == c.inbound_spi || x == c.outbound_spi,
                // A replaced pair only waits for its Delete.
                None => c.state != esplab_ike::ChildSaState::Rekeyed,
            })
            .map(|c| c.inbound_spi)
            .collect();
        if pairs.is_empty() {
            return Err(match spi {
                Some(s) => CommandError::UnknownChild(s),
                None => CommandError::NoIkeSa(peer.to_string()),
            });
        }
        for &s in &pairs {
            self.rekey_child(now, s)?;
        }
        Ok(pairs)
    }

    /// Rekeys the IKE SA with `peer`.
    pub fn rekey_ike(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let r = self.ike.rekey_ike(now, peer);
        self.apply_outputs(now);
        r
    }

    /// Deletes the CHILD SA pair with this SPI (INFORMATIONAL Delete).
    pub fn delete_child(&mut self, now: Instant, spi: u32) -> Result<(), CommandError> {
        let r = self.ike.delete_child(now, spi);
        self.apply_outputs(now);
        r
    }

    /// Sends a liveness check to `peer`.
    pub fn send_liveness(&mut self, now: Instant, peer: &str) -> Result<(), CommandError> {
        let r = self.ike.send_liveness(now, peer);
        self.apply_outputs(now);
        r
    }

    /// Tells the peer at `peer_ip` that `spi` is unknown here (invalid-SPI recovery).
    pub fn notify_invalid_spi(
        &mut self,
        now: Instant,
        peer_ip: IpAddr,
        spi: u32,
    ) -> Result<(), esplab_ike::NoIkeSa> {
        let r = self.ike.notify_invalid_spi(now, peer_ip, spi);
        self.apply_outputs(now);
        r
    }

    /// IKE messages dropped by the endpoint, by reason.
    pub fn ike_drops(&self) -> &crate::counters::IkeDropCounters {
        &self.ike_drops
    }

    /// Every counter for `show counters`: the node's, then the IKE drop counters.
    pub fn counters_named(&self) -> Vec<crate::NamedCounter> {
        let mut v = self.node.counters_total().named();
        v.extend(self.ike_drops.named());
        v
    }

    /// Zeroes the node's counters and the IKE drop counters (`clear counters`).
    pub fn clear_counters(&mut self) {
        self.node.clear_counters();
        self.ike_drops = Default::default();
    }

    /// Recovery counters.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery.stats()
    }

    /// Per-peer recovery state (`esplab show recovery`).
    pub fn recovery_status(&self, now: Instant) -> Vec<PeerRecoveryStatus> {
        self.recovery.status(now)
    }

    /// Entries in the largest recovery tracking table (bounded by `max_tracked`).
    pub fn recovery_tracked(&self) -> usize {
        self.recovery.tracked()
    }

    /// Datapath events are consumed here (the node's queue is bounded and never waits
    /// for us): unknown SPIs go through the recovery policy, then everything is passed on.
    fn drain_node_events(&mut self, now: Instant) {
        while let Some(e) = self.node.poll_event() {
            if let Event::InvalidSpi(i) = &e {
                let (src, dst, spi, encap) = (i.src, i.dst, i.spi, i.encap);
                self.on_invalid_spi(now, src, dst, spi, encap);
            }
            // The node's queue bound carries over: datapath events beyond it (a flood the
            // caller does not poll) are dropped and counted; IKE and recovery events never.
            let cap = self.node.config().event_queue.max(1);
            if self.events.len() >= cap {
                self.node_events_dropped += 1;
                continue;
            }
            self.events.push_back(AgentEvent::Node(e));
        }
    }

    /// Datapath events dropped because [`Agent::poll_event`] was not called often enough
    /// (the agent's queue holds at most the node's `event_queue`).
    pub fn node_events_dropped(&self) -> u64 {
        self.node_events_dropped
    }

    fn on_invalid_spi(&mut self, now: Instant, src: IpAddr, dst: IpAddr, spi: u32, encap: Encap) {
        if self.node.is_pending_spi(spi) {
            // RFC 7296 §2.8: we offered this SPI in a CREATE_CHILD_SA still in flight, and
            // the peer already sends on it (it switched before our response arrived, or
            // the response is late). Logged and counted by the node; reporting it as
            // stale would delete the brand-new SA.
            return;
        }
        let up = self.ike.has_established_sa(src);
        let ike = &self.ike;
        let action = self
            .recovery
            .on_invalid_spi(now, src, spi, up, |p| ike.has_sa_for_peer(p));
        match action {
            Action::None => {}
            Action::Report { src, spi, what } => {
                if self.report(now, src, spi, what) {
                    self.recovery.reported(now, src, spi, what);
                }
            }
            Action::Initiate(peer) => {
                let ok = self.initiate(now, &peer).is_ok();
                self.recovery.initiated(now, &peer, ok);
            }
            Action::Hint { src, spi } => {
                // RFC 7296 §1.5: back to where the ESP came from: IKE port 500 for raw
                // ESP, the NAT-T port (with the non-ESP marker, added by apply_outputs)
                // to the packet's source port for UDP-encapsulated ESP (RFC 3948).
                let (local, remote) = match encap {
                    Encap::Udp { sport, .. } => (
                        SocketAddr::new(dst, self.nat_t_port),
                        SocketAddr::new(src, sport),
                    ),
                    Encap::Raw => (
                        SocketAddr::new(dst, IKE_PORT),
                        SocketAddr::new(src, IKE_PORT),
                    ),
                };
                self.ike.send_invalid_spi_hint(local, remote, spi);
                self.apply_outputs(now);
            }
        }
        self.drain_recovery_events();
    }

    /// Queues Delete/Notify for `spi` over the IKE SA with `src`.
    fn report(&mut self, now: Instant, src: IpAddr, spi: u32, what: OnInvalidSpi) -> bool {
        let action = match what {
            OnInvalidSpi::Delete => InvalidSpiAction::Delete,
            OnInvalidSpi::Notify => InvalidSpiAction::Notify,
            OnInvalidSpi::Both => InvalidSpiAction::Both,
            OnInvalidSpi::None => return false,
        };
        let r = self.ike.notify_invalid_spi_with(now, src, spi, action);
        self.apply_outputs(now);
        r.is_ok()
    }

    fn drain_recovery_events(&mut self) {
        while let Some(e) = self.recovery.poll_event() {
            self.events.push_back(AgentEvent::Recovery(e));
        }
    }

    /// Recovery reactions to IKE events (after the endpoint's outputs are applied).
    fn recovery_on_ike(&mut self, now: Instant, e: &IkeEvent) {
        match e {
            IkeEvent::AuthSucceeded { peer, remote, .. } => {
                let (spis, what) = self.recovery.on_ike_established(now, peer, remote.ip());
                for spi in spis {
                    if self.report(now, remote.ip(), spi, what) {
                        self.recovery.reported(now, remote.ip(), spi, what);
                    }
                }
            }
            IkeEvent::PeerDead { peer, .. } => self.recovery.on_ike_failed(now, peer, true),
            IkeEvent::AuthFailed { peer, .. } => self.recovery.on_ike_failed(now, peer, false),
            IkeEvent::SaInitFailed { peer, .. } => self.recovery.on_ike_failed(now, peer, false),
            IkeEvent::InvalidSpiNotifyReceived {
                spi, known: true, ..
            } => self.peer_deletes.push((*spi, false)),
            IkeEvent::DeleteReceived { protocol, spis, .. } if *protocol == ProtocolId::ESP => {
                // Counted when the pair really goes (ChildDeleted below), not per SPI
                // named: a peer may name SPIs we never had.
                self.peer_deletes.extend(spis.iter().map(|s| (*s, true)));
            }
            IkeEvent::DeleteReceived { peer, protocol, .. } if *protocol == ProtocolId::IKE => {
                // RFC 7296 §2.18: after an IKE SA rekey the old SA is deleted the same way;
                // the new one is up, so there is nothing to restart.
                let replaced = self
                    .ike
                    .ike_sas(now)
                    .iter()
                    .any(|s| s.peer == *peer && s.state == esplab_ike::IkeSaState::Established);
                if !replaced {
                    self.recovery.on_peer_deleted_ike(now, peer);
                }
            }
            IkeEvent::ChildDeleted {
                peer,
                outbound_spi,
                reason,
                ..
            } => {
                let named = self.peer_deletes.len();
                self.peer_deletes.retain(|(s, _)| s != outbound_spi);
                // A rekeyed pair the peer deletes is routine, not a stale SA.
                if self.peer_deletes.len() < named && *reason == DeleteReason::Peer {
                    self.recovery.on_stale_reported(now, peer, *outbound_spi);
                }
            }
            IkeEvent::UnprotectedNotify { remote, .. } => {
                let up = self.ike.has_established_sa(remote.ip());
                if let Some(peer) = self.recovery.on_unprotected(now, remote.ip(), up) {
                    let _ = self.ike.send_liveness(now, &peer);
                    self.apply_outputs(now);
                }
            }
            _ => {}
        }
        self.drain_recovery_events();
    }

    /// The IKE SAs, for `show ike`.
    pub fn ike_sas(&self, now: Instant) -> Vec<IkeSaInfo> {
        self.ike.ike_sas(now)
    }

    fn ike_datagram(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let mut spis = SadSpis {
            node: &mut self.node,
            now,
        };
        self.ike
            .handle_datagram(now, local, remote, data, &mut spis);
        self.apply_outputs(now);
    }

    /// How a negotiated pair's ESP travels. RFC 7296 §2.23 / RFC 3948 §2: UDP
    /// encapsulation is for NAT traversal, so a peer configured for raw ESP (IP protocol
    /// 50) gets it when the IKE SA detected no NAT on either side and never left port 500
    /// (floating to the NAT-T port means the path may cross a NAT). strongSwan forces
    /// encapsulation by faking NAT detection: that is "detected" and stays UDP.
    fn child_encap(&self, peer: usize, c: &ChildSa) -> UnderlayEncap {
        let raw = self.node.peer_encap(peer) == Some(UnderlayEncap::Raw)
            && !c.nat.any()
            && c.remote_addr.port() == IKE_PORT
            && c.local_addr.port() == IKE_PORT;
        if raw {
            UnderlayEncap::Raw
        } else {
            UnderlayEncap::Udp
        }
    }

    /// The UDP port UDP-encapsulated ESP to an IKE peer goes to: its IKE port after NAT-T
    /// floating, else the NAT-T port.
    fn esp_port(&self, remote: SocketAddr) -> u16 {
        if remote.port() == IKE_PORT {
            self.nat_t_port
        } else {
            remote.port()
        }
    }

    fn apply_outputs(&mut self, now: Instant) {
        while let Some(o) = self.ike.poll_output() {
            match o {
                Output::Send {
                    local,
                    remote,
                    data,
                } => {
                    let data = if local.port() == IKE_PORT {
                        data
                    } else {
                        let mut v = Vec::with_capacity(NON_ESP_MARKER.len() + data.len());
                        v.extend_from_slice(&NON_ESP_MARKER);
                        v.extend_from_slice(&data);
                        v
                    };
                    self.transmits.push_back(Transmit {
                        local,
                        remote,
                        data,
                    });
                }
                Output::InstallChild(c) => self.install(now, &c),
                Output::IkeKeys(k) => {
                    // Rendered here and the secret copy dropped (zeroized) at once.
                    let uat = k.ikev2_decryption_table_line();
                    self.events.push_back(AgentEvent::IkeKeys {
                        peer: k.peer.clone(),
                        ike_sa: k.ike_sa,
                        rekey_of: k.rekey_of,
                        spi_i: k.spi_i,
                        spi_r: k.spi_r,
                        uat,
                    });
                }
                Output::ActivateOutbound {
                    peer,
                    inbound_spi,
                    outbound_spi,
                    ..
                } => {
                    self.node.activate_child(inbound_spi, outbound_spi);
                    self.events.push_back(AgentEvent::ChildActivated {
                        peer,
                        inbound_spi,
                        outbound_spi,
                    });
                }
                Output::RemoveChild {
                    peer,
                    inbound_spi,
                    outbound_spi,
                    linger,
                    ..
                } => {
                    self.node
                        .remove_child(inbound_spi, outbound_spi, linger, now);
                    self.events.push_back(AgentEvent::ChildRemoved {
                        peer,
                        inbound_spi,
                        outbound_spi,
                        linger,
                    });
                }
                Output::Event(e) => {
                    if let IkeEvent::PeerAddressChanged {
                        peer,
                        local,
                        remote,
                        ..
                    } = &e
                    {
                        if let Some(pi) = self.node.peer_index(peer) {
                            let port = self.esp_port(*remote);
                            self.node.set_child_destination(pi, remote.ip(), port);
                            // RFC 7296 §2.23: IKE off port 500 (floated, or a NAT rewrote
                            // it) means raw ESP may no longer get through.
                            if remote.port() != IKE_PORT || local.port() != IKE_PORT {
                                self.node.set_child_udp(pi);
                            }
                        }
                    }
                    if let IkeEvent::MessageDropped { reason, .. } = &e {
                        self.ike_drops.count(reason);
                    }
                    let seen = e.clone();
                    self.events.push_back(AgentEvent::Ike(e));
                    self.recovery_on_ike(now, &seen);
                }
            }
        }
        // Everything the last message did is applied: what its Delete named and no pair
        // matched was none of ours (RFC 7296 §1.4.1, ignored).
        for (_, from_delete) in self.peer_deletes.drain(..) {
            if from_delete {
                self.recovery.on_unknown_spi_deleted();
            }
        }
    }

    fn install(&mut self, now: Instant, c: &ChildSa) {
        let local_ts: Vec<TrafficSelector> = c.local_ts.iter().filter_map(sad_ts).collect();
        let remote_ts: Vec<TrafficSelector> = c.remote_ts.iter().filter_map(sad_ts).collect();
        let port = self.esp_port(c.remote_addr);
        let r = match self.node.peer_index(&c.peer) {
            Some(peer) => self.node.install_child(
                ChildInstall {
                    peer,
                    inbound: &c.inbound,
                    outbound: &c.outbound,
                    local_ts: &local_ts,
                    remote_ts: &remote_ts,
                    dst: c.remote_addr.ip(),
                    port,
                    encap: self.child_encap(peer, c),
                    active: c.outbound_active,
                },
                now,
            ),
            None => Err(NodeError::NoPeer(usize::MAX)),
        };
        match r {
            Ok(()) => {
                // RFC 7296 §2.23: the side not behind a NAT follows a rebound NAT mapping
                // of the peer on authenticated, new ESP (the node checks both).
                if c.nat.remote_behind_nat && !c.nat.local_behind_nat {
                    if let Some(pi) = self.node.peer_index(&c.peer) {
                        self.node.follow_peer_address(
                            c.inbound.spi,
                            pi,
                            (c.remote_addr.ip(), port),
                        );
                    }
                }
                let (l, rm) = (c.local_addr.ip(), c.remote_addr.ip());
                let uat = if self.debug_keys {
                    vec![
                        esp_sa_uat_line(rm, l, &c.inbound),
                        esp_sa_uat_line(l, rm, &c.outbound),
                    ]
                } else {
                    Vec::new()
                };
                self.events.push_back(AgentEvent::ChildInstalled {
                    peer: c.peer.clone(),
                    ike_sa: c.ike_sa,
                    inbound_spi: c.inbound.spi,
                    outbound_spi: c.outbound.spi,
                    suite: esp_suite_name(&c.suite),
                    local_ts: c.local_ts.iter().map(ts_to_string).collect(),
                    remote_ts: c.remote_ts.iter().map(ts_to_string).collect(),
                    remote: SocketAddr::new(c.remote_addr.ip(), port),
                    active: c.outbound_active,
                    rekey_of: c.rekey_of,
                    uat,
                });
            }
            Err(e) => self.events.push_back(AgentEvent::InstallFailed {
                peer: c.peer.clone(),
                inbound_spi: c.inbound.spi,
                error: e.to_string(),
            }),
        }
    }
}
