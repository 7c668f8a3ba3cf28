//! What the two engines ([`crate::sim`], two peers; [`crate::hub`], hub and spokes) share:
//! virtual time, the event queue, the datagram type, the link model and the pcap capture.
//! Kept in one place so both engines schedule, lose, delay and capture datagrams the same
//! way (and consume the seeded rng in the same order).

use crate::pcap::PcapBuf;
use crate::report::Metrics;
use crate::scenario::{DpdActionSpec, Link, Scenario};
use esplab_esp::wire::{emit_outer, finish_udp6_checksum, OuterParams};
use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{EndpointConfig, IkePeerConfig, PeerAction};
use esplab_node::{
    Agent, AgentConfig, DpdAction, LogLimits, NodeConfig, OnInvalidSpi, PeerRecovery,
    RecoveryConfig,
};
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Virtual time in microseconds since the start of the run.
pub(crate) type Us = u64;

pub(crate) const SEC: Us = 1_000_000;
/// The IKE port and the NAT-T port (RFC 7296 §2, RFC 3948).
pub(crate) const IKE_PORT: u16 = 500;
pub(crate) const NAT_T_PORT: u16 = 4500;
/// Generator packets are UDP to this port; the payload says direction and sequence number.
pub(crate) const GEN_PORT: u16 = 9;
/// Largest timeline kept per run (floods would otherwise fill it).
pub(crate) const TIMELINE_MAX: usize = 5000;

pub(crate) fn us(secs: f64) -> Us {
    (secs.max(0.0) * 1e6).round() as Us
}

pub(crate) fn ms(t: Us) -> f64 {
    t as f64 / 1000.0
}

/// A UDP datagram in flight; `origin` (engine-specific) is for the metrics only, the agents
/// never see it.
#[derive(Debug)]
pub(crate) struct Dgram<O> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
    pub origin: O,
}

/// The event queue: events ordered by virtual time, ties broken by scheduling order (the
/// sequence number), so a run is deterministic.
#[derive(Debug)]
pub(crate) struct Queue<E> {
    heap: BinaryHeap<Reverse<(Us, u64)>>,
    pending: BTreeMap<u64, E>,
    seq: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    pub fn schedule(&mut self, at: Us, ev: E) {
        let s = self.seq;
        self.seq += 1;
        self.heap.push(Reverse((at, s)));
        self.pending.insert(s, ev);
    }

    /// Time of the next event.
    pub fn peek_time(&self) -> Option<Us> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next event and its time.
    pub fn pop(&mut self) -> Option<(Us, Option<E>)> {
        let Reverse((t, s)) = self.heap.pop()?;
        Some((t, self.pending.remove(&s)))
    }

    /// The link model, last part: schedules the delivery of `d` after `delay`, plus a copy
    /// one microsecond later when the link duplicates it (the copy is scheduled first,
    /// which fixes the tie order).
    pub fn send<O: Copy>(
        &mut self,
        now: Us,
        delay: Us,
        link: &Link,
        rng: &mut StdRng,
        d: Dgram<O>,
        deliver: fn(Dgram<O>) -> E,
    ) {
        if link.duplicate > 0.0 && rng.gen_bool(link.duplicate) {
            let copy = Dgram {
                src: d.src,
                dst: d.dst,
                data: d.data.clone(),
                origin: d.origin,
            };
            self.schedule(now + delay + 1, deliver(copy));
        }
        self.schedule(now + delay, deliver(d));
    }
}

/// The link model, first part (the last is [`Queue::send`]): `None` when the datagram is lost, else its delay (base
/// delay, jitter, reordering). Draws from `rng` in a fixed order.
pub(crate) fn link_delay(l: &Link, rng: &mut StdRng) -> Option<Us> {
    if l.loss > 0.0 && rng.gen_bool(l.loss) {
        return None;
    }
    let mut delay = us(l.delay_ms / 1000.0);
    if l.jitter_ms > 0.0 {
        delay += us(rng.gen_range(0.0..l.jitter_ms) / 1000.0);
    }
    if l.reorder > 0.0 && rng.gen_bool(l.reorder) {
        delay += us(l.reorder_ms / 1000.0);
    }
    Some(delay)
}

/// The pcap of a run: every captured datagram with its outer IP/UDP header.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    pub pcap: PcapBuf,
    ip_id: u16,
}

impl Capture {
    pub fn capture(&mut self, now: Us, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let params = OuterParams {
            src: src.ip(),
            dst: dst.ip(),
            udp: Some((src.port(), dst.port())),
            ip_id: self.ip_id,
            ttl: 64,
        };
        self.ip_id = self.ip_id.wrapping_add(1);
        let h = params.header_len();
        let mut pkt = vec![0u8; h + data.len()];
        pkt[h..].copy_from_slice(data);
        if emit_outer(&mut pkt, &params, data.len()).is_ok() {
            // RFC 8200 §8.1: the UDP checksum is mandatory over IPv6.
            if src.is_ipv6() {
                finish_udp6_checksum(&mut pkt);
            }
            self.pcap.push(now, &pkt);
        }
    }
}

/// Sets what every lab peer configuration takes from the scenario: proposals, linger, DPD
/// and the reactions to a peer's Delete and to a dead peer. A `dynamic` (responder-only)
/// peer cannot initiate, so it never restarts.
pub(crate) fn apply_peer_policy(p: &mut IkePeerConfig, sc: &Scenario, dynamic: bool) {
    let topo = &sc.topology;
    // Proposals were validated when the scenario was loaded; fall back to the defaults.
    p.ike_proposals = ProposalSpec::parse_ike(&topo.ike_proposal)
        .or_else(|_| ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519"))
        .into_iter()
        .collect();
    p.esp_proposals = ProposalSpec::parse_esp(&topo.esp_proposal)
        .or_else(|_| ProposalSpec::parse_esp("aes128gcm16"))
        .into_iter()
        .collect();
    if let Some(l) = topo.child_linger_s {
        p.child_linger = Duration::from_secs_f64(l);
    }
    p.dpd_delay = sc.dpd.delay_s.map(Duration::from_secs_f64);
    p.on_peer_delete = match sc.policy.on_peer_delete.as_str() {
        "restart" if !dynamic => PeerAction::Restart,
        _ => PeerAction::None,
    };
    p.on_dead = match sc.dpd.action {
        DpdActionSpec::Restart if !dynamic => PeerAction::Restart,
        _ => PeerAction::None,
    };
}

/// The IKE rng seed of agent `k` in its `restarts`-th life: distinct per agent and per
/// restart, all derived from the run's seed.
pub(crate) fn agent_rng_seed(seed: u64, k: usize, restarts: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(k as u64 * 2 + 1)
        .wrapping_add(restarts << 32)
}

/// An agent's configuration from the scenario's policy, with recovery on or off.
pub(crate) fn agent_config(
    sc: &Scenario,
    recovery: bool,
    name: String,
    local: IpAddr,
    peers: Vec<IkePeerConfig>,
    rng_seed: u64,
    debug_keys: bool,
) -> AgentConfig {
    let recovery = RecoveryConfig {
        default: PeerRecovery {
            on_invalid_spi: match sc.policy.on_invalid_spi.as_str() {
                "notify" => OnInvalidSpi::Notify,
                "both" => OnInvalidSpi::Both,
                "none" => OnInvalidSpi::None,
                _ => OnInvalidSpi::Delete,
            },
            invalid_spi_recovery: recovery,
            dpd_delay: sc.dpd.delay_s.map(Duration::from_secs_f64),
            dpd_action: match sc.dpd.action {
                DpdActionSpec::Restart => DpdAction::Restart,
                DpdActionSpec::Clear => DpdAction::Clear,
            },
        },
        hold_down: Duration::from_secs_f64(sc.policy.hold_down_s),
        global_per_minute: sc.policy.global_per_minute,
        ..Default::default()
    };
    let node = NodeConfig {
        name,
        local,
        peers: Vec::new(),
        log_limits: LogLimits {
            per_flow_interval: Duration::from_secs_f64(sc.policy.log_per_flow_s),
            global_max: sc.policy.log_global_max,
            ..LogLimits::default()
        },
        event_queue: 1 << 16,
        retired_grace: Duration::from_secs_f64(sc.topology.retired_grace_s),
    };
    AgentConfig {
        node,
        ike: EndpointConfig {
            peers,
            rng_seed: Some(rng_seed),
            ..Default::default()
        },
        debug_keys,
        recovery,
    }
}

/// An inner generator packet: IPv4/UDP from `src` to `dst` (port [`GEN_PORT`] both ways),
/// IP ID = low bits of `seq`, payload = `words` in network order. The UDP checksum is left
/// zero (RFC 768: no checksum over IPv4).
pub(crate) fn gen_packet(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, words: &[u32]) -> Vec<u8> {
    let len = 20 + 8 + 4 * words.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    // RFC 791 §3.1: the one's complement of the one's complement sum of the header.
    let mut sum = 0u32;
    for c in p[..20].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&GEN_PORT.to_be_bytes());
    p[22..24].copy_from_slice(&GEN_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + 4 * words.len()) as u16).to_be_bytes());
    for (k, w) in words.iter().enumerate() {
        p[28 + 4 * k..32 + 4 * k].copy_from_slice(&w.to_be_bytes());
    }
    p
}

/// The `N` payload words of a generator packet, or `None` when `p` is not one.
pub(crate) fn gen_words<const N: usize>(p: &[u8]) -> Option<[u32; N]> {
    if p.len() < 28 + 4 * N || p[0] != 0x45 || p[9] != 17 || p[22..24] != GEN_PORT.to_be_bytes() {
        return None;
    }
    let mut w = [0u32; N];
    for (k, x) in w.iter_mut().enumerate() {
        *x = u32::from_be_bytes(p[28 + 4 * k..32 + 4 * k].try_into().ok()?);
    }
    Some(w)
}

/// Counts a generator packet the receiving datapath dropped, by reason.
pub(crate) fn count_traffic_drop(m: &mut Metrics, reason: &str) {
    *m.drop_reasons.entry(reason.to_string()).or_insert(0) += 1;
    if reason == "retired-spi" {
        m.retired_spi_drops += 1;
    }
}

/// An agent's datapath counters by name, as both simulators' reports show them.
pub(crate) fn counter_map(a: &Agent) -> BTreeMap<String, u64> {
    let c = a.node().counters();
    let mut m: BTreeMap<String, u64> = c.named().into_iter().map(|n| (n.name, n.value)).collect();
    m.insert("in_packets".into(), c.in_packets);
    m.insert("out_packets".into(), c.out_packets);
    m.insert("ike_in".into(), c.ike_in);
    m.insert("peer_address_followed".into(), c.peer_address_followed);
    m.insert("events_dropped".into(), c.events_dropped);
    m.insert("invalid_spi_logged".into(), c.invalid_spi_logged);
    m.insert("invalid_spi_suppressed".into(), c.invalid_spi_suppressed);
    m
}

/// How long traffic was black-holed: from the fault to recovery (or the end of the run when
/// it never recovered); zero when nothing was dropped after the fault.
pub(crate) fn blackhole_ms(m: &Metrics, end: Us) -> Option<f64> {
    match (m.t_fault_ms, m.t_first_drop_ms, m.t_recovered_ms) {
        (Some(f), Some(_), Some(r)) => Some(r - f),
        (Some(f), Some(_), None) => Some(ms(end) - f),
        (Some(_), None, _) => Some(0.0),
        _ => None,
    }
}

/// (sent, lost) of the generator packets of one direction sent in `[from, to)`.
pub(crate) fn sent_lost(sent_at: &[Us], delivered: &[bool], from: Us, to: Us) -> (u64, u64) {
    let (mut sent, mut lost) = (0u64, 0u64);
    for (k, &t) in sent_at.iter().enumerate() {
        if t >= from && t < to {
            sent += 1;
            lost += u64::from(!delivered[k]);
        }
    }
    (sent, lost)
}

/// The plot's vertical marks: the faults, detection, action and `recovered` (its label).
pub(crate) fn plot_marks(sc: &Scenario, m: &Metrics, recovered: &str) -> Vec<(f64, String)> {
    let mut marks = Vec::new();
    for f in &sc.faults {
        marks.push((ms(us(f.at)), "fault".to_string()));
    }
    if let Some(t) = m.t_detect_ms {
        marks.push((t, "detect".into()));
    }
    if let Some(t) = m.t_action_ms {
        marks.push((t, "action".into()));
    }
    if let Some(t) = m.t_recovered_ms {
        marks.push((t, recovered.into()));
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn queue_orders_by_time_then_by_scheduling_order() {
        let mut q = Queue::default();
        q.schedule(20, "c");
        q.schedule(10, "a");
        q.schedule(10, "b");
        assert_eq!(q.peek_time(), Some(10));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(10, Some("a")), (10, Some("b")), (20, Some("c"))]);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn link_model_loss_delay_and_duplicate() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut l = Link {
            loss: 1.0,
            ..Link::default()
        };
        assert_eq!(link_delay(&l, &mut rng), None);
        l.loss = 0.0;
        l.reorder = 1.0;
        assert_eq!(link_delay(&l, &mut rng), Some(us(0.025)));
        l.reorder = 0.0;
        l.jitter_ms = 2.0;
        let d = link_delay(&l, &mut rng).unwrap();
        assert!((us(0.005)..us(0.007)).contains(&d), "{d}");

        l.duplicate = 1.0;
        let mut q: Queue<Dgram<u8>> = Queue::default();
        let a: SocketAddr = "198.18.0.1:500".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:500".parse().unwrap();
        let dg = Dgram {
            src: a,
            dst: b,
            data: vec![1, 2, 3],
            origin: 9,
        };
        q.send(100, 50, &l, &mut rng, dg, |d| d);
        let (t1, d1) = q.pop().unwrap();
        let (t2, d2) = q.pop().unwrap();
        assert_eq!((t1, t2), (150, 151));
        let (d1, d2) = (d1.unwrap(), d2.unwrap());
        assert_eq!((d1.data, d1.origin), (d2.data, d2.origin));
        assert!(q.pop().is_none());
    }

    #[test]
    fn generator_packet_round_trips_and_rejects_others() {
        let (a, b) = (Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 2, 1));
        let p = gen_packet(a, b, 0x1_0005, &[1, 42]);
        assert_eq!(p.len(), 36);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 16);
        assert_eq!(&p[4..6], &[0, 5]);
        assert_eq!(gen_words::<2>(&p), Some([1, 42]));
        assert_eq!(gen_words::<3>(&p), None, "too short for 3 words");
        let mut q = p.clone();
        q[22] ^= 1;
        assert_eq!(gen_words::<2>(&q), None, "not the generator port");
        // RFC 791 §3.1: the header with its checksum sums to 0xffff.
        let mut sum = 0u32;
        for c in p[..20].chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn capture_finishes_the_udp6_checksum_and_counts_ip_ids() {
        let mut c = Capture::default();
        let a: SocketAddr = "[2001:2::1]:500".parse().unwrap();
        let b: SocketAddr = "[2001:2::2]:500".parse().unwrap();
        c.capture(1, a, b, &[7u8; 8]);
        let v4: SocketAddr = "198.18.0.1:500".parse().unwrap();
        c.capture(2, v4, v4, &[7u8; 8]);
        assert_eq!(c.ip_id, 2);
        assert_eq!(c.pcap.len(), 2);
        let params = OuterParams {
            src: a.ip(),
            dst: b.ip(),
            udp: Some((500, 500)),
            ip_id: 0,
            ttl: 64,
        };
        let mut pkt = vec![0u8; params.header_len() + 8];
        let h = params.header_len();
        pkt[h..].fill(7);
        emit_outer(&mut pkt, &params, 8).unwrap();
        let unfinished = pkt.clone();
        finish_udp6_checksum(&mut pkt);
        assert_ne!(unfinished, pkt, "the checksum was filled in");
        let bytes = c.pcap.to_bytes();
        let has = |p: &[u8]| bytes.windows(p.len()).any(|w| w == p);
        assert!(has(&pkt) && !has(&unfinished));
    }
}
