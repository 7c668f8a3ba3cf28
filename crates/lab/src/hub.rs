//! The hub-and-spokes simulator (`topology.spokes = N`): peer A is a hub with N spokes,
//! every spoke a static peer of the hub and the hub a static peer of every spoke (the
//! spokes initiate). The generator sends `traffic.rate` packets per second each way
//! between the hub and every spoke.
//!
//! Same model as [`crate::sim`] (one event queue ordered by (time, insertion number), one
//! seeded RNG, real agents on a virtual clock) but built for many agents: each agent's
//! timer is an entry in the event queue, re-armed after every call into the agent, instead
//! of asking every agent for its deadline at every step. Direction `a_to_b` of the metrics
//! is hub → spokes, `b_to_a` spokes → hub; `t_recovered` is when the last affected spoke
//! has traffic flowing both ways again.
//!
//! To keep the outputs readable at 1000 spokes, the timeline shows the hub, spoke 1 and the
//! milestones; the pcap holds every IKE datagram but only spoke 1's ESP; `esp_sa` has
//! spoke 1's SAs.

use crate::net::{
    agent_config, agent_rng_seed, apply_peer_policy, blackhole_ms, count_traffic_drop, counter_map,
    gen_words, link_delay, ms, plot_marks, sent_lost, us, Capture, Queue, Us, IKE_PORT, NAT_T_PORT,
    SEC, TIMELINE_MAX,
};
use crate::pcap::PcapBuf;
use crate::report::{Bins, HubMetrics, Metrics, RunReport, TimelineEntry};
use crate::scenario::{FaultKind, Scenario};
use crate::sim::{is_recovery_action, scrub};
use esplab_ike::{AddrRange, Identity, IkeEvent, IkePeerConfig, TrafficSelector as IkeTs};
use esplab_node::{
    invalid_spi_log_line, Agent, AgentEvent, Event, Inbound, Outbound, HEADROOM, TAILROOM,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The hub's underlay address.
const HUB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Underlay address of agent `k` (0 = hub; spoke k in 198.18.16.0/19, 250 per /24).
fn underlay(k: usize) -> Ipv4Addr {
    if k == 0 {
        HUB
    } else {
        Ipv4Addr::new(198, 18, 16 + (k / 250) as u8, (k % 250) as u8 + 1)
    }
}

/// Agent index of an underlay address (inverse of [`underlay`]).
fn agent_of(a: IpAddr, n: usize) -> Option<usize> {
    let IpAddr::V4(a) = a else { return None };
    if a == HUB {
        return Some(0);
    }
    let o = a.octets();
    if o[0] != 198 || o[1] != 18 || o[2] < 16 || o[3] == 0 || o[3] > 250 {
        return None;
    }
    let k = usize::from(o[2] - 16) * 250 + usize::from(o[3]) - 1;
    (1..=n).contains(&k).then_some(k)
}

/// Protected network of agent `k`: the hub 198.19.1.0/24, spoke k a /29 in 198.19.128.0/17.
fn inner_net(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    if k == 0 {
        (Ipv4Addr::new(198, 19, 1, 0), Ipv4Addr::new(198, 19, 1, 255))
    } else {
        let (c, d) = (128 + (k / 32) as u8, ((k % 32) * 8) as u8);
        (
            Ipv4Addr::new(198, 19, c, d),
            Ipv4Addr::new(198, 19, c, d + 7),
        )
    }
}

/// The generator host of agent `k`.
fn inner_host(k: usize) -> Ipv4Addr {
    let o = inner_net(k).0.octets();
    Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1)
}

fn ts(k: usize) -> IkeTs {
    let (start, end) = inner_net(k);
    IkeTs::any_port(AddrRange::V4 { start, end })
}

/// IPv4/UDP generator packet between the hub and `spoke`; payload: direction, spoke, seq.
fn gen_packet(dir: usize, spoke: usize, seq: u32) -> Vec<u8> {
    let (src, dst) = if dir == 0 {
        (inner_host(0), inner_host(spoke))
    } else {
        (inner_host(spoke), inner_host(0))
    };
    crate::net::gen_packet(src, dst, seq, &[dir as u32, spoke as u32, seq])
}

/// (direction, spoke, seq) of a delivered generator packet.
fn parse_gen(p: &[u8]) -> Option<(usize, usize, u32)> {
    let [dir, spoke, seq] = gen_words::<3>(p)?;
    (dir < 2).then_some((dir as usize, spoke as usize, seq))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Traffic { dir: usize, spoke: usize },
    Ike,
}

type Dgram = crate::net::Dgram<Origin>;

#[derive(Debug)]
enum Ev {
    Deliver(Dgram),
    /// Generator packet between the hub and a spoke, in a direction.
    Traffic {
        dir: usize,
        spoke: usize,
    },
    /// The agent's own timer, valid while it is still the armed one.
    Timer(usize, Us),
    /// The once-a-second housekeeping call of an agent.
    Tick(usize),
    Fault(usize),
}

/// Per-spoke bookkeeping.
#[derive(Debug, Default, Clone)]
struct SpokeState {
    first_drop: Option<Us>,
    /// Per direction: delivered a packet sent after `first_drop`.
    recovered_dir: [Option<Us>; 2],
    recovered: Option<Us>,
}

struct Hub<'s> {
    sc: &'s Scenario,
    recovery: bool,
    seed: u64,
    n: usize,
    t0: Instant,
    now: Us,
    end: Us,
    t_fault: Option<Us>,
    rng: StdRng,
    queue: Queue<Ev>,
    agents: Vec<Agent>,
    restarts: Vec<u64>,
    armed: Vec<Option<Us>>,
    last_timer: Vec<Option<Us>>,
    /// Per direction: send time and delivered flag of every generator packet (index =
    /// the global sequence number of the direction).
    sent_at: [Vec<Us>; 2],
    delivered: [Vec<bool>; 2],
    spokes: Vec<SpokeState>,
    cap: Capture,
    uat: Vec<String>,
    ike_uat: Vec<String>,
    timeline: Vec<TimelineEntry>,
    timeline_dropped: u64,
    m: Metrics,
    hub_m: HubMetrics,
    bins: Bins,
    counters_before: [BTreeMap<String, u64>; 2],
    snapped: bool,
    act: Option<Us>,
    /// IKE datagrams sent or received by the hub, per second of virtual time.
    hub_ike_per_s: Vec<u32>,
    last_delivery: [Option<Us>; 2],
    progress: &'s mut dyn FnMut(f64),
    reported: f64,
}

/// Runs a hub scenario once. `progress` is told the fraction of virtual time done.
pub fn simulate_hub(
    sc: &Scenario,
    seed: u64,
    recovery: bool,
    progress: &mut dyn FnMut(f64),
) -> (RunReport, PcapBuf, Vec<String>, Vec<String>) {
    let n = sc.topology.spokes as usize;
    let end = us(sc.duration_s);
    let mut h = Hub {
        sc,
        recovery,
        seed,
        n,
        t0: Instant::now(),
        now: 0,
        end,
        t_fault: sc.t_fault().map(us),
        rng: StdRng::seed_from_u64(seed),
        queue: Queue::default(),
        agents: Vec::with_capacity(n + 1),
        restarts: vec![0; n + 1],
        armed: vec![None; n + 1],
        last_timer: vec![None; n + 1],
        sent_at: Default::default(),
        delivered: Default::default(),
        spokes: vec![SpokeState::default(); n + 1],
        cap: Capture::default(),
        uat: Vec::new(),
        ike_uat: Vec::new(),
        timeline: Vec::new(),
        timeline_dropped: 0,
        m: Metrics::default(),
        hub_m: HubMetrics {
            spokes: n as u64,
            ..Default::default()
        },
        bins: Bins::new((end / 240).max(SEC / 2), end),
        counters_before: Default::default(),
        snapped: false,
        act: None,
        hub_ike_per_s: vec![0; (end / SEC) as usize + 1],
        last_delivery: [None; 2],
        progress,
        reported: 0.0,
    };
    for k in 0..=n {
        let a = h.new_agent(k);
        h.agents.push(a);
    }
    h.run();
    h.finish()
}

impl Hub<'_> {
    fn instant(&self, t: Us) -> Instant {
        self.t0 + Duration::from_micros(t)
    }

    fn schedule(&mut self, at: Us, ev: Ev) {
        self.queue.schedule(at, ev);
    }

    fn after_fault(&self) -> bool {
        self.t_fault.is_some_and(|f| self.now >= f)
    }

    fn new_agent(&self, k: usize) -> Agent {
        let sc = self.sc;
        let topo = &sc.topology;
        let name = |k: usize| {
            if k == 0 {
                "hub".to_string()
            } else {
                format!("s{k}")
            }
        };
        let peer = |me: usize, other: usize| {
            let mut p = IkePeerConfig::new(
                &name(other),
                Identity::fqdn(&format!("{}.lab.example", name(me))),
                Some(Identity::fqdn(&format!("{}.lab.example", name(other)))),
                topo.psk.as_bytes(),
            );
            p.local_addr = Some(SocketAddr::new(underlay(me).into(), IKE_PORT));
            p.remote_addr = Some(SocketAddr::new(underlay(other).into(), IKE_PORT));
            p.local_ts = vec![ts(me)];
            p.remote_ts = vec![ts(other)];
            apply_peer_policy(&mut p, sc, false);
            p.start = me != 0;
            p
        };
        let peers: Vec<IkePeerConfig> = if k == 0 {
            (1..=self.n).map(|s| peer(0, s)).collect()
        } else {
            vec![peer(k, 0)]
        };
        let rng_seed = agent_rng_seed(self.seed, k, self.restarts[k]);
        // Key material only for spoke 1, whose ESP is in the pcap.
        let cfg = agent_config(
            sc,
            self.recovery,
            name(k),
            underlay(k).into(),
            peers,
            rng_seed,
            k == 1,
        );
        // Built from validated values only.
        Agent::new(cfg, self.instant(self.now)).expect("lab hub agent configuration")
    }

    /// Whether agent `k`'s events go to the timeline (the hub and spoke 1).
    fn shown(&self, k: usize) -> bool {
        k <= 1
    }

    fn note(&mut self, k: usize, kind: &str, text: String) {
        if self.timeline.len() >= TIMELINE_MAX {
            self.timeline_dropped += 1;
            return;
        }
        let peer = if k == 0 {
            "A".to_string()
        } else {
            format!("S{k}")
        };
        self.timeline.push(TimelineEntry {
            t_ms: ms(self.now),
            peer,
            kind: kind.into(),
            text,
        });
    }

    /// Re-arms agent `k`'s timer after a call into it.
    fn arm(&mut self, k: usize) {
        let Some(t) = self.agents[k].poll_timeout() else {
            self.armed[k] = None;
            return;
        };
        let mut t = t.saturating_duration_since(self.t0).as_micros() as Us;
        // A timer that stays due after being served waits a millisecond, so a stuck
        // deadline cannot spin the loop.
        if let Some(l) = self.last_timer[k] {
            if t <= l {
                t = l + 1000;
            }
        }
        let t = t.max(self.now);
        if self.armed[k] != Some(t) {
            self.armed[k] = Some(t);
            self.schedule(t, Ev::Timer(k, t));
        }
    }

    fn run(&mut self) {
        if let Some(gap) = SEC.checked_div(u64::from(self.sc.traffic.rate)) {
            let start = us(self.sc.traffic.start_s);
            // Spread the spokes over one period so their packets never tie.
            for s in 1..=self.n {
                let off = gap * s as u64 / (self.n as u64 + 1);
                self.schedule(start + off, Ev::Traffic { dir: 0, spoke: s });
                self.schedule(start + off + gap / 2, Ev::Traffic { dir: 1, spoke: s });
            }
        }
        for k in 0..=self.n {
            // The housekeeping ticks spread over the first second too.
            self.schedule(SEC * k as u64 / (self.n as u64 + 1), Ev::Tick(k));
        }
        for k in 0..self.sc.faults.len() {
            self.schedule(us(self.sc.faults[k].at), Ev::Fault(k));
        }
        let mut steps = 0u64;
        while let Some((t, ev)) = self.queue.pop() {
            if t > self.end {
                break;
            }
            self.now = self.now.max(t);
            let Some(ev) = ev else {
                continue;
            };
            self.dispatch(ev);
            steps += 1;
            if steps.is_multiple_of(4096) {
                let f = self.now as f64 / self.end.max(1) as f64;
                if f >= self.reported + 0.01 {
                    self.reported = f;
                    (self.progress)(f);
                }
            }
        }
        self.now = self.end;
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(d) => self.deliver(d),
            Ev::Traffic { dir, spoke } => {
                self.send_traffic(dir, spoke);
                let gap = SEC / u64::from(self.sc.traffic.rate.max(1));
                self.schedule(self.now + gap.max(1), Ev::Traffic { dir, spoke });
            }
            Ev::Timer(k, t) => {
                if self.armed[k] != Some(t) {
                    return;
                }
                self.armed[k] = None;
                self.last_timer[k] = Some(t);
                let now = self.instant(self.now);
                self.agents[k].handle_timeout(now);
                self.drain(k);
            }
            Ev::Tick(k) => {
                let now = self.instant(self.now);
                self.agents[k].handle_timeout(now);
                self.drain(k);
                self.schedule(self.now + SEC, Ev::Tick(k));
            }
            Ev::Fault(f) => self.fault(f),
        }
    }

    /// The agents a fault applies to: `a` is the hub, `b` every spoke.
    fn targets(&self, side: crate::scenario::Side) -> std::ops::RangeInclusive<usize> {
        match side {
            crate::scenario::Side::A => 0..=0,
            crate::scenario::Side::B => 1..=self.n,
        }
    }

    fn fault(&mut self, f: usize) {
        if !self.snapped && self.after_fault() {
            self.snapped = true;
            self.counters_before = self.snapshot();
        }
        let now = self.instant(self.now);
        match self.sc.faults[f].kind.clone() {
            FaultKind::Restart { peer } => {
                let r = self.targets(peer);
                self.note(
                    *r.start(),
                    "fault",
                    format!("restart: {} agent(s) lose all state", r.clone().count()),
                );
                for k in r {
                    self.restarts[k] += 1;
                    self.last_timer[k] = None;
                    self.agents[k] = self.new_agent(k);
                    self.drain(k);
                }
            }
            FaultKind::ClearChild { peer } => {
                let r = self.targets(peer);
                let mut n = 0;
                for k in r.clone() {
                    n += self.agents[k].node_mut().clear_all(now);
                    self.drain(k);
                }
                self.note(
                    *r.start(),
                    "fault",
                    format!("clear CHILD SAs: {n} SAs forgotten, peers not told, IKE SAs kept"),
                );
            }
            // Refused when the scenario was loaded.
            _ => {}
        }
    }

    fn send_traffic(&mut self, dir: usize, spoke: usize) {
        let seq = self.sent_at[dir].len() as u32;
        self.sent_at[dir].push(self.now);
        self.delivered[dir].push(false);
        let pkt = gen_packet(dir, spoke, seq);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let k = if dir == 0 { 0 } else { spoke };
        let now = self.instant(self.now);
        match self.agents[k].handle_tun(now, &mut buf, HEADROOM..HEADROOM + pkt.len()) {
            Outbound::Send { esp, dst, port, .. } => {
                let src = SocketAddr::new(underlay(k).into(), NAT_T_PORT);
                let data = buf[esp].to_vec();
                self.put_on_wire(
                    src,
                    SocketAddr::new(dst, port),
                    data,
                    Origin::Traffic { dir, spoke },
                );
            }
            Outbound::Drop(_) => self.traffic_dropped(dir, spoke),
        }
        self.drain_if(k, false);
    }

    fn traffic_dropped(&mut self, dir: usize, spoke: usize) {
        self.bins.dropped(dir, self.now);
        if self.after_fault() {
            if self.m.t_first_drop_ms.is_none() {
                self.m.t_first_drop_ms = Some(ms(self.now));
            }
            let s = &mut self.spokes[spoke];
            if s.first_drop.is_none() {
                s.first_drop = Some(self.now);
                self.hub_m.spokes_affected += 1;
            }
        }
    }

    fn put_on_wire(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>, origin: Origin) {
        let hub_ike = origin == Origin::Ike;
        if hub_ike && (src.ip() == IpAddr::V4(HUB) || dst.ip() == IpAddr::V4(HUB)) {
            if let Some(c) = self.hub_ike_per_s.get_mut((self.now / SEC) as usize) {
                *c += 1;
            }
        }
        let spoke1: IpAddr = underlay(1).into();
        if hub_ike || src.ip() == spoke1 || dst.ip() == spoke1 {
            self.capture(src, dst, &data);
        }
        let Some(delay) = link_delay(&self.sc.link, &mut self.rng) else {
            return;
        };
        let d = Dgram {
            src,
            dst,
            data,
            origin,
        };
        let (link, rng) = (&self.sc.link, &mut self.rng);
        self.queue.send(self.now, delay, link, rng, d, Ev::Deliver);
    }

    fn capture(&mut self, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.cap.capture(self.now, src, dst, data);
    }

    fn deliver(&mut self, d: Dgram) {
        let Some(k) = agent_of(d.dst.ip(), self.n) else {
            return;
        };
        let now = self.instant(self.now);
        let mut buf = d.data;
        let len = buf.len();
        match self.agents[k].handle_underlay_udp(now, d.dst, d.src, &mut buf, 0..len) {
            Inbound::Deliver(r) => {
                if let Some((dir, spoke, seq)) = parse_gen(&buf[r]) {
                    if let Some(slot) = self.delivered[dir].get_mut(seq as usize) {
                        *slot = true;
                    }
                    self.bins.delivered(dir, self.now);
                    self.on_delivered(dir, spoke, seq);
                }
            }
            Inbound::Drop(reason) => {
                if let Origin::Traffic { dir, spoke } = d.origin {
                    count_traffic_drop(&mut self.m, reason.as_str());
                    self.traffic_dropped(dir, spoke);
                }
            }
            // Hub IKE traffic was counted when it was put on the wire.
            Inbound::Ike(_) | Inbound::Keepalive => {}
        }
        let esp = matches!(d.origin, Origin::Traffic { .. });
        self.drain_if(k, !esp);
    }

    fn on_delivered(&mut self, dir: usize, spoke: usize, seq: u32) {
        if let Some(f) = self.t_fault {
            if self.now >= f {
                let from = self.last_delivery[dir].unwrap_or(f).max(f);
                self.m.longest_gap_ms = self.m.longest_gap_ms.max(ms(self.now - from));
            }
        }
        self.last_delivery[dir] = Some(self.now);
        let Some(s) = self.spokes.get_mut(spoke) else {
            return;
        };
        let Some(fd) = s.first_drop else { return };
        if s.recovered.is_some() {
            return;
        }
        let sent = self.sent_at[dir].get(seq as usize).copied().unwrap_or(0);
        if sent > fd && s.recovered_dir[dir].is_none() {
            s.recovered_dir[dir] = Some(self.now);
        }
        if let [Some(a), Some(b)] = s.recovered_dir {
            s.recovered = Some(a.max(b));
            self.hub_m.spokes_recovered += 1;
            if spoke == 1 {
                self.note(
                    1,
                    "recovered",
                    "spoke 1: traffic flows again both ways".into(),
                );
            }
            if self.hub_m.spokes_recovered == self.hub_m.spokes_affected {
                self.note(0, "recovered", "every affected spoke flows again".into());
            }
        }
    }

    /// After a call into agent `k`: its datagrams onto the wire, its events into the
    /// metrics, and its timer re-armed.
    fn drain(&mut self, k: usize) {
        self.drain_if(k, true);
    }

    /// [`Hub::drain`], re-arming the timer only if `force` or the agent did more than the
    /// datapath. An ESP packet that decrypts or is dropped (or a generator packet) changes
    /// no timer: IKE, recovery and SA timers move only with IKE messages (datagrams out)
    /// and SA changes (agent events); datapath and recovery observations alone (invalid
    /// SPI seen, suppressed) move none, and a recovery initiation sends IKE_SA_INIT.
    /// Asking the hub for its deadline costs O(spokes), so the datapath skips it.
    fn drain_if(&mut self, k: usize, force: bool) {
        let mut busy = force;
        while let Some(t) = self.agents[k].poll_transmit() {
            busy = true;
            self.put_on_wire(t.local, t.remote, t.data, Origin::Ike);
        }
        while let Some(e) = self.agents[k].poll_event() {
            busy |= !matches!(e, AgentEvent::Node(_) | AgentEvent::Recovery(_));
            self.on_event(k, e);
        }
        if busy {
            self.arm(k);
        }
    }

    fn on_event(&mut self, k: usize, e: AgentEvent) {
        let after = self.after_fault();
        let shown = self.shown(k);
        match e {
            AgentEvent::Node(Event::InvalidSpi(ev)) => {
                self.m.invalid_spi_events += 1;
                if ev.logged {
                    self.m.log_lines += 1;
                    if shown {
                        self.note(k, "invalid-spi", invalid_spi_log_line(&ev));
                    }
                } else {
                    self.m.suppressed += 1;
                }
                if after && self.m.t_detect_ms.is_none() {
                    self.m.t_detect_ms = Some(ms(self.now));
                }
            }
            AgentEvent::Node(Event::RetiredSpi { .. }) => self.m.retired_spi_events += 1,
            AgentEvent::Recovery(r) => {
                self.m.recovery_events += 1;
                let text = scrub(&format!("{r:?}"));
                if after && is_recovery_action(&text) {
                    self.act.get_or_insert(self.now);
                }
                if shown {
                    self.note(k, "recovery", text);
                }
            }
            AgentEvent::Ike(ev) => {
                match &ev {
                    IkeEvent::SaInitSent { .. } if after => {
                        self.m.ike_initiated += 1;
                        if k == 0 {
                            self.hub_m.hub_initiated += 1;
                        }
                    }
                    IkeEvent::MessageSent {
                        exchange,
                        response: false,
                        retransmit: false,
                        payloads,
                        ..
                    } if after && *exchange == esplab_ike::ExchangeType::INFORMATIONAL => {
                        if payloads.contains("D(ESP") {
                            self.m.deletes_sent += 1;
                        }
                        if payloads.contains("N(INVALID_SPI)") {
                            self.m.notifies_sent += 1;
                        }
                    }
                    _ => {}
                }
                if shown {
                    let text = scrub(&format!("{ev:?}"));
                    let kind = text
                        .split([' ', '{', '('])
                        .next()
                        .unwrap_or("ike")
                        .to_string();
                    self.note(k, &format!("ike:{kind}"), text);
                }
            }
            AgentEvent::ChildInstalled {
                inbound_spi,
                outbound_spi,
                uat,
                ..
            } => {
                if k == 1 {
                    for l in uat {
                        if !self.uat.contains(&l) {
                            self.uat.push(l);
                        }
                    }
                }
                if shown {
                    self.note(
                        k,
                        "child-installed",
                        format!(
                            "CHILD SA installed in 0x{inbound_spi:08x} out 0x{outbound_spi:08x}"
                        ),
                    );
                }
            }
            AgentEvent::IkeKeys { uat, .. } => {
                // Key material: into the UAT file only (spoke 1's, as in the pcap).
                if k == 1 && !self.ike_uat.contains(&uat) {
                    self.ike_uat.push(uat);
                }
            }
            other => {
                if shown {
                    self.note(k, "agent", scrub(&format!("{other:?}")));
                }
            }
        }
    }

    /// Named counters of the hub (`a`) and the sum over the spokes (`b`).
    fn snapshot(&self) -> [BTreeMap<String, u64>; 2] {
        // The same counters as the two-peer report, `events_dropped` included.
        let mut spokes = BTreeMap::new();
        for a in &self.agents[1..] {
            for (k, v) in counter_map(a) {
                *spokes.entry(k).or_insert(0) += v;
            }
        }
        [counter_map(&self.agents[0]), spokes]
    }

    fn finish(mut self) -> (RunReport, PcapBuf, Vec<String>, Vec<String>) {
        if !self.snapped {
            self.counters_before = self.snapshot();
        }
        let mut m = std::mem::take(&mut self.m);
        let mut hm = std::mem::take(&mut self.hub_m);
        m.t_fault_ms = self.t_fault.map(ms);
        m.t_action_ms = self.act.map(ms);
        let rec: Vec<Us> = self.spokes.iter().filter_map(|s| s.recovered).collect();
        m.recovered = hm.spokes_affected > 0 && hm.spokes_recovered == hm.spokes_affected;
        if m.recovered {
            m.t_recovered_ms = rec.iter().max().copied().map(ms);
        }
        if let Some(f) = self.t_fault {
            let mut sorted: Vec<Us> = rec.iter().map(|r| r.saturating_sub(f)).collect();
            sorted.sort_unstable();
            hm.median_recovery_ms = sorted.get(sorted.len() / 2).copied().map(ms);
            // IKE rate at the hub from the fault to the end of the run.
            let from = (f / SEC) as usize;
            let window = &self.hub_ike_per_s[from.min(self.hub_ike_per_s.len())..];
            hm.hub_ike_max_per_s = window.iter().copied().max().unwrap_or(0);
            let total: u64 = window.iter().map(|&c| u64::from(c)).sum();
            hm.hub_ike_msgs_after_fault = total;
            let span = m.t_recovered_ms.map_or(ms(self.end), |r| r) - ms(f);
            hm.hub_ike_avg_per_s = if span > 0.0 {
                (total as f64 / (span / 1000.0) * 10.0).round() / 10.0
            } else {
                0.0
            };
        }
        m.blackhole_ms = blackhole_ms(&m, self.end);
        if let Some(f) = self.t_fault {
            let horizon = self.end.saturating_sub(SEC);
            for dir in 0..2 {
                let (sent, lost) = sent_lost(&self.sent_at[dir], &self.delivered[dir], f, horizon);
                m.sent_after_fault[dir] = sent;
                m.lost[dir] = lost;
                let from = self.last_delivery[dir].unwrap_or(f).max(f);
                m.longest_gap_ms = m.longest_gap_ms.max(ms(self.end.saturating_sub(from)));
            }
        }
        for dir in 0..2 {
            m.sent[dir] = self.sent_at[dir].len() as u64;
            m.delivered[dir] = self.delivered[dir].iter().filter(|d| **d).count() as u64;
        }
        m.timeline_truncated = self.timeline_dropped;
        m.hub = Some(hm);
        let after = self.snapshot();
        let mut counters = BTreeMap::new();
        for (i, side) in ["a", "b"].iter().enumerate() {
            counters.insert(format!("{side}_before"), self.counters_before[i].clone());
            counters.insert(format!("{side}_after"), after[i].clone());
        }
        let marks = plot_marks(self.sc, &m, "all recovered");
        let mut timeline = std::mem::take(&mut self.timeline);
        // Notes are pushed in event order already; keep it stable.
        timeline.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        let run = RunReport {
            recovery: if self.recovery { "on" } else { "off" }.into(),
            metrics: m,
            timeline,
            counters,
            plot: self.bins.finish(marks),
        };
        (run, self.cap.pcap, self.uat, self.ike_uat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for k in [0usize, 1, 249, 250, 251, 999, 1000, 4000] {
            assert_eq!(agent_of(underlay(k).into(), 4000), Some(k), "{k}");
        }
        assert_eq!(agent_of(underlay(11).into(), 10), None);
        assert_eq!(agent_of(Ipv4Addr::new(198, 18, 0, 2).into(), 10), None);
        // Protected nets do not overlap.
        assert_ne!(inner_net(31), inner_net(32));
        assert_eq!(inner_net(4000).1, Ipv4Addr::new(198, 19, 253, 7));
        let p = gen_packet(1, 77, 12345);
        assert_eq!(parse_gen(&p), Some((1, 77, 12345)));
    }

    /// The hub's counter report names the same counters as the two-peer report
    /// (`events_dropped` included), before and after, for the hub and the spokes' sum.
    #[test]
    fn counters_match_the_two_peer_report() {
        let hub = Scenario::from_toml("h", "name = \"h\"\n[topology]\nspokes = 2\n").unwrap();
        let two = Scenario::from_toml("p", "name = \"p\"\n").unwrap();
        let (h, ..) = simulate_hub(&hub, 1, true, &mut |_| {});
        let runs = crate::sim::run_scenario(&two, 1, &[true]).report.runs;
        for k in ["a_before", "a_after", "b_before", "b_after"] {
            let names = |c: &BTreeMap<String, BTreeMap<String, u64>>| -> Vec<String> {
                c[k].keys().cloned().collect()
            };
            assert_eq!(names(&h.counters), names(&runs[0].counters), "{k}");
            assert!(h.counters[k].contains_key("events_dropped"), "{k}");
        }
    }
}
