//! The virtual-time simulator: two agents (A, B) and an optional third host on a seeded
//! network model, a sequence-numbered traffic generator both ways, and the fault schedule.
//!
//! One event queue ordered by (time, insertion number) and one seeded RNG make a run a
//! pure function of (scenario, seed, recovery). Nothing ticks per millisecond: packets,
//! timers and faults are scheduled events, so an hour of virtual time is cheap.

use crate::net::{
    agent_config, agent_rng_seed, apply_peer_policy, blackhole_ms, count_traffic_drop, counter_map,
    gen_words, link_delay, ms, plot_marks, sent_lost, us, Capture, Queue, Us, IKE_PORT, NAT_T_PORT,
    SEC, TIMELINE_MAX,
};
use crate::pcap::PcapBuf;
use crate::report::{Bins, Metrics, RunReport, TimelineEntry};
use crate::scenario::{exchange_number, Direction, Family, FaultKind, Scenario, SpoofKind};
use esplab_ike::{
    AddrRange, ExchangeType, Identity, IkeEvent, IkePeerConfig, Lifetime, TrafficSelector as IkeTs,
};
use esplab_node::{
    invalid_spi_log_line, suppressed_log_line, Agent, AgentEvent, Event, Inbound, Outbound,
    HEADROOM, TAILROOM,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Inner (protected) hosts: 198.19.1.1 behind A, 198.19.2.1 behind B.
const INNER: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 2, 1)];
/// Underlay addresses of A, B, the third host X, and B's NAT public address.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    peer: [IpAddr; 2],
    third: IpAddr,
    nat: IpAddr,
}

impl Addrs {
    fn new(f: Family) -> Self {
        match f {
            Family::Ipv4 => Addrs {
                peer: [
                    Ipv4Addr::new(198, 18, 0, 1).into(),
                    Ipv4Addr::new(198, 18, 0, 2).into(),
                ],
                third: Ipv4Addr::new(198, 18, 0, 3).into(),
                nat: Ipv4Addr::new(198, 18, 1, 2).into(),
            },
            Family::Ipv6 => Addrs {
                peer: [
                    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1).into(),
                    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2).into(),
                ],
                third: Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 3).into(),
                nat: Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2).into(),
            },
        }
    }
}

/// Who put a datagram on the wire (for the metrics; the agents never see this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Generator packet `seq` in direction `dir` (0 = A→B).
    Traffic {
        dir: usize,
        seq: u32,
    },
    Ike,
    Attack,
}

type Dgram = crate::net::Dgram<Origin>;

#[derive(Debug)]
enum Ev {
    Deliver(Dgram),
    Traffic(usize),
    Tick(usize),
    Fault(usize),
    Flood {
        to: usize,
        left: u64,
        gap: Us,
    },
    Spoof {
        to: usize,
        kind: SpoofKind,
        left: u32,
        gap: Us,
    },
}

/// Per-direction bookkeeping of the generator.
#[derive(Debug, Default)]
struct Flow {
    next_seq: u32,
    /// Send time of every packet (index = seq).
    sent_at: Vec<Us>,
    delivered: Vec<bool>,
    first_drop_after_fault: Option<Us>,
}

/// The whole simulated world of one run.
struct World<'s> {
    sc: &'s Scenario,
    recovery: bool,
    seed: u64,
    t0: Instant,
    now: Us,
    end: Us,
    t_fault: Option<Us>,
    rng: StdRng,
    queue: Queue<Ev>,
    addrs: Addrs,
    agents: Vec<Agent>,
    restarts: [u64; 2],
    last_timer: [Option<Us>; 2],
    flows: [Flow; 2],
    // Fault state.
    drop_ike: [(u32, Option<u8>, Option<bool>); 2],
    /// The early-switch rekey bug is armed on this peer.
    early_switch: [bool; 2],
    delay_ike: [(u32, Us, Option<u8>); 2],
    delay_esp: [(u32, Us); 2],
    cuts: Vec<(Direction, Us, Us)>,
    nat_offset: u16,
    // Outputs.
    cap: Capture,
    uat: Vec<String>,
    /// Wireshark `ikev2_decryption_table` lines of every IKE SA (first and rekeyed).
    ike_uat: Vec<String>,
    timeline: Vec<TimelineEntry>,
    timeline_dropped: u64,
    m: Metrics,
    bins: Bins,
    detected: bool,
    act_recovery: Option<Us>,
    act_msg: Option<Us>,
    counters_before: [BTreeMap<String, u64>; 2],
    snapped: bool,
    recovered_dir: [Option<Us>; 2],
    recovery_kinds: BTreeMap<String, u64>,
    cost_msgs: Vec<(Us, bool, bool)>,
    init_times: Vec<Us>,
    last_delivery: [Option<Us>; 2],
    /// Told the fraction of virtual time done (progress bar), at most every 1 %.
    progress: &'s mut dyn FnMut(f64),
    reported: f64,
}

/// Runs `sc` once with recovery on or off and returns the run's report, plus the pcap and
/// the UAT lines (`esp_sa`, `ikev2_decryption_table`).
pub fn simulate(
    sc: &Scenario,
    seed: u64,
    recovery: bool,
) -> (RunReport, PcapBuf, Vec<String>, Vec<String>) {
    simulate_with_progress(sc, seed, recovery, &mut |_| {})
}

/// [`simulate`], telling `progress` the fraction of virtual time done as it goes. Hub
/// topologies (`topology.spokes > 0`) run in [`crate::hub`].
pub fn simulate_with_progress(
    sc: &Scenario,
    seed: u64,
    recovery: bool,
    progress: &mut dyn FnMut(f64),
) -> (RunReport, PcapBuf, Vec<String>, Vec<String>) {
    if sc.topology.spokes > 0 {
        return crate::hub::simulate_hub(sc, seed, recovery, progress);
    }
    let t0 = Instant::now();
    let addrs = Addrs::new(sc.topology.family);
    let end = us(sc.duration_s);
    let bin_us = (end / 240).max(SEC / 2);
    let mut w = World {
        sc,
        recovery,
        seed,
        t0,
        now: 0,
        end,
        t_fault: sc.t_fault().map(us),
        rng: StdRng::seed_from_u64(seed),
        queue: Queue::default(),
        addrs,
        agents: Vec::new(),
        restarts: [0; 2],
        last_timer: [None; 2],
        flows: Default::default(),
        drop_ike: [(0, None, None); 2],
        early_switch: [false; 2],
        delay_ike: [(0, 0, None); 2],
        delay_esp: [(0, 0); 2],
        cuts: Vec::new(),
        nat_offset: 0,
        cap: Capture::default(),
        uat: Vec::new(),
        ike_uat: Vec::new(),
        timeline: Vec::new(),
        timeline_dropped: 0,
        m: Metrics::default(),
        bins: Bins::new(bin_us, end),
        detected: false,
        act_recovery: None,
        act_msg: None,
        counters_before: Default::default(),
        snapped: false,
        recovered_dir: [None; 2],
        recovery_kinds: BTreeMap::new(),
        cost_msgs: Vec::new(),
        init_times: Vec::new(),
        last_delivery: [None; 2],
        progress,
        reported: 0.0,
    };
    w.agents = vec![w.new_agent(0), w.new_agent(1)];
    w.run();
    w.finish()
}

fn net(side: usize) -> IkeTs {
    let o = INNER[side].octets();
    IkeTs::any_port(AddrRange::V4 {
        start: Ipv4Addr::new(o[0], o[1], o[2], 0),
        end: Ipv4Addr::new(o[0], o[1], o[2], 255),
    })
}

fn side_name(i: usize) -> &'static str {
    ["a", "b"][i]
}

fn peer_label(i: usize) -> &'static str {
    ["A", "B", "X"][i.min(2)]
}

/// The inner generator packet: IPv4/UDP with the direction and sequence number as payload.
fn gen_packet(dir: usize, seq: u32) -> Vec<u8> {
    crate::net::gen_packet(INNER[dir], INNER[1 - dir], seq, &[dir as u32, seq])
}

/// (direction, seq) of a delivered generator packet.
fn parse_gen(p: &[u8]) -> Option<(usize, u32)> {
    let [dir, seq] = gen_words::<2>(p)?;
    (dir < 2).then_some((dir as usize, seq))
}

/// An unprotected IKE INFORMATIONAL request (RFC 7296 §3.1 header, §3.10 Notify, §3.11
/// Delete) with random IKE SPIs, as an off-path attacker can forge it.
fn spoofed_ike(kind: SpoofKind, rng: &mut StdRng) -> Vec<u8> {
    let mut body = Vec::new();
    let next = match kind {
        SpoofKind::InvalidSpi | SpoofKind::InvalidIkeSpi => {
            // Notify: protocol ESP (3) with a 4-byte SPI for INVALID_SPI (11), none for
            // INVALID_IKE_SPI (4).
            let (proto, spi_len, ty): (u8, u8, u16) = match kind {
                SpoofKind::InvalidSpi => (3, 4, 11),
                _ => (0, 0, 4),
            };
            let len = 8 + spi_len as u16;
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(&[proto, spi_len]);
            body.extend_from_slice(&ty.to_be_bytes());
            if spi_len == 4 {
                body.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
            }
            41u8
        }
        SpoofKind::Delete => {
            // Delete: protocol ESP, SPI size 4, one SPI.
            body.extend_from_slice(&[0, 0, 0, 12, 3, 4, 0, 1]);
            body.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
            42u8
        }
    };
    let mut m = Vec::with_capacity(28 + body.len());
    m.extend_from_slice(&rng.gen::<u64>().to_be_bytes());
    m.extend_from_slice(&rng.gen::<u64>().to_be_bytes());
    m.push(next);
    m.push(0x20); // version 2.0
    m.push(37); // INFORMATIONAL
    m.push(0x08); // initiator
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

impl World<'_> {
    fn instant(&self, t: Us) -> Instant {
        self.t0 + Duration::from_micros(t)
    }

    fn us_of(&self, i: Instant) -> Us {
        i.saturating_duration_since(self.t0).as_micros() as Us
    }

    fn schedule(&mut self, at: Us, ev: Ev) {
        self.queue.schedule(at, ev);
    }

    fn new_agent(&self, i: usize) -> Agent {
        let sc = self.sc;
        let topo = &sc.topology;
        let me = self.addrs.peer[i];
        let other = if i == 0 && topo.nat_b {
            self.addrs.nat
        } else {
            self.addrs.peer[1 - i]
        };
        let ids = [
            format!("{}.lab.example", side_name(i)),
            format!("{}.lab.example", side_name(1 - i)),
        ];
        let mut p = IkePeerConfig::new(
            side_name(1 - i),
            Identity::fqdn(&ids[0]),
            Some(Identity::fqdn(&ids[1])),
            topo.psk.as_bytes(),
        );
        p.local_addr = Some(SocketAddr::new(me, IKE_PORT));
        let dynamic = i == 1 && topo.b_dynamic;
        p.remote_addr = (!dynamic).then_some(SocketAddr::new(other, IKE_PORT));
        p.local_ts = vec![net(i)];
        p.remote_ts = vec![net(1 - i)];
        apply_peer_policy(&mut p, sc, dynamic);
        p.start = topo.initiator.idx() == i && !dynamic;
        if let Some(l) = topo.child_lifetime_s {
            let hard = Duration::from_secs_f64(l);
            p.child_lifetime = Some(Lifetime::new(hard, hard / 3, hard / 10));
        }
        let rng_seed = agent_rng_seed(self.seed, i, self.restarts[i]);
        let cfg = agent_config(
            sc,
            self.recovery,
            side_name(i).into(),
            me,
            vec![p],
            rng_seed,
            true,
        );
        // The configuration is built from validated values only.
        Agent::new(cfg, self.instant(self.now)).expect("lab agent configuration")
    }

    fn note(&mut self, peer: usize, kind: &str, text: String) {
        if self.timeline.len() >= TIMELINE_MAX {
            self.timeline_dropped += 1;
            return;
        }
        self.timeline.push(TimelineEntry {
            t_ms: ms(self.now),
            peer: peer_label(peer).into(),
            kind: kind.into(),
            text,
        });
    }

    fn after_fault(&self) -> bool {
        self.t_fault.is_some_and(|f| self.now >= f)
    }

    fn run(&mut self) {
        let tr = &self.sc.traffic;
        if tr.rate > 0 {
            let start = us(tr.start_s);
            self.schedule(start, Ev::Traffic(0));
            // The other direction half a period later, so the two never tie.
            self.schedule(start + SEC / u64::from(tr.rate) / 2, Ev::Traffic(1));
        }
        self.schedule(0, Ev::Tick(0));
        self.schedule(0, Ev::Tick(1));
        for (k, f) in self.sc.faults.iter().enumerate() {
            self.schedule(us(f.at), Ev::Fault(k));
        }
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps.is_multiple_of(4096) {
                let f = self.now as f64 / self.end.max(1) as f64;
                if f >= self.reported + 0.01 {
                    self.reported = f;
                    (self.progress)(f);
                }
            }
            let next_q = self.queue.peek_time();
            let mut next_timer: Option<(Us, usize)> = None;
            for i in 0..2 {
                if let Some(t) = self.agents[i].poll_timeout() {
                    let mut t = self.us_of(t);
                    // A timer that stays due after being served waits a millisecond, so a
                    // stuck deadline cannot spin the loop.
                    if let Some(l) = self.last_timer[i] {
                        if t <= l {
                            t = l + 1000;
                        }
                    }
                    let t = t.max(self.now);
                    if next_timer.is_none_or(|(b, _)| t < b) {
                        next_timer = Some((t, i));
                    }
                }
            }
            let timer_first = match (next_q, next_timer) {
                (Some(q), Some((t, _))) => t < q,
                (None, Some(_)) => true,
                _ => false,
            };
            if timer_first {
                let (t, i) = next_timer.expect("checked");
                if t > self.end {
                    break;
                }
                self.now = t;
                self.last_timer[i] = Some(t);
                let now = self.instant(t);
                self.agents[i].handle_timeout(now);
                self.drain(i);
                continue;
            }
            let Some((t, ev)) = self.queue.pop() else {
                break;
            };
            if t > self.end {
                break;
            }
            self.now = self.now.max(t);
            let Some(ev) = ev else {
                continue;
            };
            self.dispatch(ev);
        }
        self.now = self.end;
    }

    fn snapshot_counters(&self, i: usize) -> BTreeMap<String, u64> {
        counter_map(&self.agents[i])
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(d) => self.deliver(d),
            Ev::Tick(i) => {
                let now = self.instant(self.now);
                self.agents[i].handle_timeout(now);
                self.drain(i);
                self.schedule(self.now + SEC, Ev::Tick(i));
            }
            Ev::Traffic(dir) => {
                self.send_traffic(dir);
                let gap = SEC / u64::from(self.sc.traffic.rate.max(1));
                self.schedule(self.now + gap.max(1), Ev::Traffic(dir));
            }
            Ev::Fault(k) => self.fault(k),
            Ev::Flood { to, left, gap } => {
                let mut data = vec![0u8; 8 + 64];
                let spi: u32 = self.rng.gen_range(256..=u32::MAX);
                data[..4].copy_from_slice(&spi.to_be_bytes());
                let seq: u32 = self.rng.gen_range(1..=u32::MAX);
                data[4..8].copy_from_slice(&seq.to_be_bytes());
                self.rng.fill(&mut data[8..]);
                let src = SocketAddr::new(self.addrs.third, NAT_T_PORT);
                let dst = SocketAddr::new(self.public_addr(to), NAT_T_PORT);
                self.put_on_wire(2, src, dst, data, Origin::Attack);
                if left > 1 {
                    self.schedule(
                        self.now + gap,
                        Ev::Flood {
                            to,
                            left: left - 1,
                            gap,
                        },
                    );
                }
            }
            Ev::Spoof {
                to,
                kind,
                left,
                gap,
            } => {
                let data = spoofed_ike(kind, &mut self.rng);
                // Spoofs the other peer's address: an off-path attacker's best guess.
                let src = SocketAddr::new(self.public_addr(1 - to), IKE_PORT);
                let dst = SocketAddr::new(self.public_addr(to), IKE_PORT);
                self.put_on_wire(2, src, dst, data, Origin::Attack);
                if left > 1 {
                    self.schedule(
                        self.now + gap,
                        Ev::Spoof {
                            to,
                            kind,
                            left: left - 1,
                            gap,
                        },
                    );
                }
            }
        }
    }

    /// The address the other side sees for peer `i` (B's NAT address when behind NAT).
    fn public_addr(&self, i: usize) -> IpAddr {
        if i == 1 && self.sc.topology.nat_b {
            self.addrs.nat
        } else {
            self.addrs.peer[i]
        }
    }

    fn fault(&mut self, k: usize) {
        let f = self.sc.faults[k].clone();
        if !self.snapped && self.after_fault() {
            self.snapped = true;
            self.counters_before = [self.snapshot_counters(0), self.snapshot_counters(1)];
        }
        let now = self.instant(self.now);
        let text = format!("{:?}", f.kind);
        match f.kind {
            FaultKind::Restart { peer } => {
                let i = peer.idx();
                self.restarts[i] += 1;
                self.last_timer[i] = None;
                self.agents[i] = self.new_agent(i);
                self.note(
                    i,
                    "fault",
                    format!("restart: {} loses all state", peer_label(i)),
                );
                self.drain(i);
            }
            FaultKind::ClearChild { peer } => {
                let i = peer.idx();
                let n = self.agents[i].node_mut().clear_all(now);
                self.note(
                    i,
                    "fault",
                    format!("clear CHILD SAs: {n} SAs forgotten, peer not told, IKE SA kept"),
                );
                self.drain(i);
            }
            FaultKind::Rekey { peer } => {
                let i = peer.idx();
                let spi = self.agents[i]
                    .node()
                    .sa_info(now)
                    .iter()
                    .find(|s| s.direction == "out")
                    .map(|s| s.spi);
                let r = match spi {
                    Some(spi) => self.agents[i]
                        .rekey_child(now, spi)
                        .map_err(|e| e.to_string()),
                    None => Err("no outbound SA".into()),
                };
                self.note(i, "fault", format!("rekey now: {r:?}"));
                self.drain(i);
            }
            FaultKind::DropIke {
                from,
                count,
                exchange,
                response,
            } => {
                self.drop_ike[from.idx()] = (
                    count,
                    exchange.as_deref().and_then(exchange_number),
                    response,
                );
                self.note(from.idx(), "fault", text);
            }
            FaultKind::EarlySwitch { peer } => {
                self.early_switch[peer.idx()] = true;
                self.note(peer.idx(), "fault", text);
            }
            FaultKind::DelayIke {
                from,
                count,
                delay_ms,
                exchange,
            } => {
                self.delay_ike[from.idx()] = (
                    count,
                    us(delay_ms / 1000.0),
                    exchange.as_deref().and_then(exchange_number),
                );
                self.note(from.idx(), "fault", text);
            }
            FaultKind::DelayEsp {
                from,
                count,
                delay_ms,
            } => {
                self.delay_esp[from.idx()] = (count, us(delay_ms / 1000.0));
                self.note(from.idx(), "fault", text);
            }
            FaultKind::Cut { dir, duration_s } => {
                self.cuts.push((dir, self.now, self.now + us(duration_s)));
                let p = if dir == Direction::AToB { 0 } else { 1 };
                self.note(p, "fault", text);
            }
            FaultKind::NatRebind => {
                self.nat_offset = self.nat_offset.wrapping_add(1000);
                self.note(
                    1,
                    "fault",
                    format!("NAT rebinding: B's public ports +{}", self.nat_offset),
                );
            }
            FaultKind::Flood {
                to,
                rate,
                duration_s,
            } => {
                let left = (f64::from(rate) * duration_s) as u64;
                let gap = (SEC / u64::from(rate.max(1))).max(1);
                self.note(2, "fault", text);
                if left > 0 {
                    self.schedule(
                        self.now,
                        Ev::Flood {
                            to: to.idx(),
                            left,
                            gap,
                        },
                    );
                }
            }
            FaultKind::Spoof {
                to,
                kind,
                count,
                interval_ms,
            } => {
                self.note(2, "fault", text);
                if count > 0 {
                    let gap = us(interval_ms / 1000.0).max(1);
                    self.schedule(
                        self.now,
                        Ev::Spoof {
                            to: to.idx(),
                            kind,
                            left: count,
                            gap,
                        },
                    );
                }
            }
        }
    }

    fn send_traffic(&mut self, dir: usize) {
        let seq = self.flows[dir].next_seq;
        self.flows[dir].next_seq += 1;
        self.flows[dir].sent_at.push(self.now);
        self.flows[dir].delivered.push(false);
        let pkt = gen_packet(dir, seq);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let now = self.instant(self.now);
        let v = self.agents[dir].handle_tun(now, &mut buf, HEADROOM..HEADROOM + pkt.len());
        match v {
            Outbound::Send { esp, dst, port, .. } => {
                let src = SocketAddr::new(self.addrs.peer[dir], NAT_T_PORT);
                let data = buf[esp].to_vec();
                self.put_on_wire(
                    dir,
                    src,
                    SocketAddr::new(dst, port),
                    data,
                    Origin::Traffic { dir, seq },
                );
            }
            Outbound::Drop(_) => self.traffic_dropped(dir),
        }
        self.drain(dir);
    }

    fn traffic_dropped(&mut self, dir: usize) {
        self.bins.dropped(dir, self.now);
        if self.after_fault() && self.flows[dir].first_drop_after_fault.is_none() {
            self.flows[dir].first_drop_after_fault = Some(self.now);
        }
    }

    /// Sends a datagram from `from` (0 A, 1 B, 2 third host): NAT, capture, faults, link.
    fn put_on_wire(
        &mut self,
        from: usize,
        mut src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
        origin: Origin,
    ) {
        if from == 1 && self.sc.topology.nat_b {
            src = SocketAddr::new(self.addrs.nat, src.port().wrapping_add(self.nat_offset));
        }
        self.capture(src, dst, &data);
        if from < 2 {
            // RFC 7296 §3.1: the exchange type is octet 18 of the IKE header, after the
            // RFC 3948 non-ESP marker on the NAT-T port.
            let exch = (origin == Origin::Ike)
                .then(|| {
                    data.get(18 + if src.port() == IKE_PORT { 0 } else { 4 })
                        .copied()
                })
                .flatten();
            // RFC 7296 §3.1: the Response flag is bit 0x20 of the flags octet (19).
            let is_response = (origin == Origin::Ike)
                .then(|| data.get(19 + if src.port() == IKE_PORT { 0 } else { 4 }))
                .flatten()
                .map(|f| f & 0x20 != 0);
            let (n, want, want_resp) = self.drop_ike[from];
            if exch.is_some()
                && n > 0
                && (want.is_none() || want == exch)
                && (want_resp.is_none() || want_resp == is_response)
            {
                self.drop_ike[from].0 -= 1;
                self.note(
                    from,
                    "link",
                    format!(
                        "IKE message (exchange {}) dropped (fault)",
                        exch.unwrap_or(0)
                    ),
                );
                return;
            }
            let to_other = dst.ip() == self.public_addr(1 - from);
            let dir = if from == 0 {
                Direction::AToB
            } else {
                Direction::BToA
            };
            if to_other
                && self
                    .cuts
                    .iter()
                    .any(|&(d, a, b)| d == dir && self.now >= a && self.now < b)
            {
                if let Origin::Traffic { dir, .. } = origin {
                    self.traffic_dropped(dir);
                }
                return;
            }
        }
        let Some(mut delay) = link_delay(&self.sc.link, &mut self.rng) else {
            return;
        };
        if from < 2 {
            match origin {
                Origin::Ike => {
                    let exch = data
                        .get(18 + if src.port() == IKE_PORT { 0 } else { 4 })
                        .copied();
                    let h = &mut self.delay_ike[from];
                    if h.0 > 0 && (h.2.is_none() || h.2 == exch) {
                        h.0 -= 1;
                        delay += h.1;
                    }
                }
                Origin::Traffic { .. } => {
                    let h = &mut self.delay_esp[from];
                    if h.0 > 0 {
                        h.0 -= 1;
                        delay += h.1;
                    }
                }
                Origin::Attack => {}
            }
        }
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
        let mut dst = d.dst;
        let i = if dst.ip() == self.addrs.peer[0] {
            0
        } else if dst.ip() == self.addrs.peer[1] && !self.sc.topology.nat_b {
            1
        } else if self.sc.topology.nat_b && dst.ip() == self.addrs.nat {
            // Port-preserving NAT shifted by the rebinding offset; stale mappings drop.
            let inner = dst.port().wrapping_sub(self.nat_offset);
            if inner != IKE_PORT && inner != NAT_T_PORT {
                if let Origin::Traffic { dir, .. } = d.origin {
                    self.traffic_dropped(dir);
                }
                return;
            }
            dst = SocketAddr::new(self.addrs.peer[1], inner);
            1
        } else {
            return;
        };
        let now = self.instant(self.now);
        let mut buf = d.data;
        let n = buf.len();
        let v = self.agents[i].handle_underlay_udp(now, dst, d.src, &mut buf, 0..n);
        match v {
            Inbound::Deliver(r) => {
                if let Some((dir, seq)) = parse_gen(&buf[r]) {
                    let f = &mut self.flows[dir];
                    if let Some(slot) = f.delivered.get_mut(seq as usize) {
                        *slot = true;
                    }
                    self.bins.delivered(dir, self.now);
                    self.gap(dir);
                    self.on_delivered(dir, seq);
                }
            }
            Inbound::Drop(reason) => {
                if let Origin::Traffic { dir, .. } = d.origin {
                    count_traffic_drop(&mut self.m, reason.as_str());
                    self.traffic_dropped(dir);
                }
            }
            Inbound::Ike(_) | Inbound::Keepalive => {}
        }
        self.drain(i);
    }

    /// Longest time without a delivery in one direction since the fault.
    fn gap(&mut self, dir: usize) {
        let Some(f) = self.t_fault else { return };
        if self.now < f {
            self.last_delivery[dir] = Some(self.now);
            return;
        }
        let from = self.last_delivery[dir].unwrap_or(f).max(f);
        let g = ms(self.now - from);
        if g > self.m.longest_gap_ms {
            self.m.longest_gap_ms = g;
        }
        self.last_delivery[dir] = Some(self.now);
    }

    /// Recovery: the first instant after the first post-fault drop at which both directions
    /// have delivered a packet sent after that drop.
    fn on_delivered(&mut self, dir: usize, seq: u32) {
        if self.m.t_recovered_ms.is_some() {
            return;
        }
        let Some(fd) = [
            self.flows[0].first_drop_after_fault,
            self.flows[1].first_drop_after_fault,
        ]
        .into_iter()
        .flatten()
        .min() else {
            return;
        };
        let sent = self.flows[dir]
            .sent_at
            .get(seq as usize)
            .copied()
            .unwrap_or(0);
        if sent > fd && self.recovered_dir[dir].is_none() {
            self.recovered_dir[dir] = Some(self.now);
        }
        if let [Some(a), Some(b)] = self.recovered_dir {
            let t = a.max(b);
            self.m.t_recovered_ms = Some(ms(t));
            self.note(
                0,
                "recovered",
                "traffic flows again in both directions".into(),
            );
        }
    }
}

impl World<'_> {
    /// Moves the agent's IKE datagrams onto the wire and its events into the metrics.
    fn drain(&mut self, i: usize) {
        while let Some(t) = self.agents[i].poll_transmit() {
            self.put_on_wire(i, t.local, t.remote, t.data, Origin::Ike);
        }
        while let Some(e) = self.agents[i].poll_event() {
            self.on_event(i, e);
        }
    }

    fn on_event(&mut self, i: usize, e: AgentEvent) {
        let after = self.after_fault();
        match e {
            AgentEvent::Node(Event::InvalidSpi(ev)) => {
                self.m.invalid_spi_events += 1;
                if ev.logged {
                    self.m.log_lines += 1;
                    self.note(i, "invalid-spi", invalid_spi_log_line(&ev));
                } else {
                    self.m.suppressed += 1;
                }
                if after && self.m.t_detect_ms.is_none() {
                    self.m.t_detect_ms = Some(ms(self.now));
                    self.detected = true;
                }
            }
            AgentEvent::Node(Event::InvalidSpiSuppressed { count, window, .. }) => {
                self.note(
                    i,
                    "suppressed",
                    suppressed_log_line(count, window.as_secs()),
                );
            }
            AgentEvent::Node(Event::RetiredSpi { spi, src, .. }) => {
                self.m.retired_spi_events += 1;
                self.note(
                    i,
                    "retired-spi",
                    format!("late packet for retired SPI 0x{spi:08X} from {src} (not a desync)"),
                );
            }
            AgentEvent::Node(other) => self.note(i, "node", scrub(&format!("{other:?}"))),
            AgentEvent::Ike(ev) => self.on_ike(i, ev, after),
            AgentEvent::ChildInstalled {
                inbound_spi,
                outbound_spi,
                suite,
                uat,
                rekey_of,
                active,
                ..
            } => {
                if self.early_switch[i] && rekey_of.is_some() && !active {
                    // The emulated vendor bug: the rekey responder sends on its new
                    // outbound SA at once, before the initiator has the response (and so
                    // the new inbound SA). RFC 7296 §2.8 wants make-before-break.
                    self.early_switch[i] = false;
                    self.agents[i]
                        .node_mut()
                        .activate_child(inbound_spi, outbound_spi);
                    self.note(
                        i,
                        "fault",
                        format!("early switch: outbound 0x{outbound_spi:08x} used at once (bug)"),
                    );
                }
                for l in uat {
                    if !self.uat.contains(&l) {
                        self.uat.push(l);
                    }
                }
                let re = rekey_of
                    .map(|s| format!(" (rekey of 0x{s:08x})"))
                    .unwrap_or_default();
                self.note(
                    i,
                    "child-installed",
                    format!("CHILD SA installed in 0x{inbound_spi:08x} out 0x{outbound_spi:08x} {suite}{re}"),
                );
            }
            AgentEvent::IkeKeys { uat, .. } => {
                // Key material: into the UAT file only, never the timeline.
                if !self.ike_uat.contains(&uat) {
                    self.ike_uat.push(uat);
                }
            }
            AgentEvent::ChildRemoved {
                inbound_spi,
                outbound_spi,
                ..
            } => self.note(
                i,
                "child-removed",
                format!("CHILD SA removed in 0x{inbound_spi:08x} out 0x{outbound_spi:08x}"),
            ),
            other => {
                let text = scrub(&format!("{other:?}"));
                // Recovery events (the policy's own reports) arrive as a variant this crate
                // may predate: recognised by name so both old and new agents work.
                if text.starts_with("Recovery") {
                    self.m.recovery_events += 1;
                    if after && self.act_recovery.is_none() && is_recovery_action(&text) {
                        self.act_recovery = Some(self.now);
                    }
                    // The first few of each kind: a flood repeats the same ones.
                    let kind = text
                        .split("kind: ")
                        .nth(1)
                        .and_then(|k| k.split([' ', ',', '{']).next())
                        .unwrap_or("")
                        .to_string();
                    let seen = self.recovery_kinds.entry(kind).or_insert(0);
                    *seen += 1;
                    if *seen <= 3 {
                        self.note(i, "recovery", text);
                    }
                } else {
                    self.note(i, "agent", text);
                }
            }
        }
    }

    fn on_ike(&mut self, i: usize, ev: IkeEvent, after: bool) {
        match &ev {
            IkeEvent::MessageSent {
                exchange,
                response,
                retransmit,
                payloads,
                message_id,
                ..
            } => {
                let informational = *exchange == ExchangeType::INFORMATIONAL && !*response;
                let delete = informational && payloads.contains("D(ESP");
                let notify = payloads.contains("N(INVALID_SPI)");
                // Rekeys send Deletes too: only those at or after the detection count as
                // recovery cost (decided at the end: the agent may report the message
                // before the invalid-SPI event of the same instant).
                if after && !*retransmit && (delete || notify) {
                    self.cost_msgs.push((self.now, delete, notify));
                }
                let r = if *response { "response" } else { "request" };
                let re = if *retransmit { " (retransmit)" } else { "" };
                self.note(
                    i,
                    "ike-sent",
                    format!("{exchange} {r} #{message_id} {payloads}{re}"),
                );
            }
            IkeEvent::MessageReceived {
                exchange,
                response,
                payloads,
                message_id,
                ..
            } => {
                let r = if *response { "response" } else { "request" };
                self.note(
                    i,
                    "ike-received",
                    format!("{exchange} {r} #{message_id} {payloads}"),
                );
            }
            IkeEvent::SaInitSent { peer, remote, .. } => {
                if after {
                    self.m.ike_initiated += 1;
                    self.init_times.push(self.now);
                }
                self.note(
                    i,
                    "ike",
                    format!("IKE_SA_INIT started to {peer} at {remote}"),
                );
            }
            other => {
                let text = scrub(&format!("{other:?}"));
                let kind = text
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or("ike")
                    .to_string();
                self.note(i, &format!("ike:{kind}"), text);
            }
        }
    }

    fn finish(mut self) -> (RunReport, PcapBuf, Vec<String>, Vec<String>) {
        if !self.snapped {
            self.counters_before = [self.snapshot_counters(0), self.snapshot_counters(1)];
        }
        let mut m = std::mem::take(&mut self.m);
        m.t_fault_ms = self.t_fault.map(ms);
        m.t_first_drop_ms = [
            self.flows[0].first_drop_after_fault,
            self.flows[1].first_drop_after_fault,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(ms);
        if let Some(d) = m.t_detect_ms.map(|d| (d * 1000.0).round() as Us) {
            for &(t, del, not) in self.cost_msgs.iter().filter(|c| c.0 >= d) {
                m.deletes_sent += u64::from(del);
                m.notifies_sent += u64::from(not);
                self.act_msg = Some(self.act_msg.map_or(t, |a| a.min(t)));
            }
            if let Some(&t) = self.init_times.iter().find(|t| **t >= d) {
                self.act_msg = Some(self.act_msg.map_or(t, |a| a.min(t)));
            }
        }
        m.t_action_ms = self.act_recovery.or(self.act_msg).map(ms);
        m.recovered = m.t_recovered_ms.is_some();
        m.blackhole_ms = blackhole_ms(&m, self.end);
        if let Some(f) = self.t_fault {
            // Packets sent in the last second may still be in flight: not counted.
            let horizon = self.end.saturating_sub(SEC);
            for dir in 0..2 {
                let fl = &self.flows[dir];
                let (sent, lost) = sent_lost(&fl.sent_at, &fl.delivered, f, horizon);
                m.sent_after_fault[dir] = sent;
                m.lost[dir] = lost;
            }
        }
        for dir in 0..2 {
            let fl = &self.flows[dir];
            m.sent[dir] = fl.sent_at.len() as u64;
            m.delivered[dir] = fl.delivered.iter().filter(|d| **d).count() as u64;
        }
        m.timeline_truncated = self.timeline_dropped;
        if let Some(f) = self.t_fault {
            // Gaps still open at the end of the run.
            for dir in 0..2 {
                let from = self.last_delivery[dir].unwrap_or(f).max(f);
                m.longest_gap_ms = m.longest_gap_ms.max(ms(self.end.saturating_sub(from)));
            }
        }
        let mut counters = BTreeMap::new();
        for i in 0..2 {
            counters.insert(
                format!("{}_before", side_name(i)),
                self.counters_before[i].clone(),
            );
            counters.insert(format!("{}_after", side_name(i)), self.snapshot_counters(i));
        }
        let marks = plot_marks(self.sc, &m, "recovered");
        let run = RunReport {
            recovery: if self.recovery { "on" } else { "off" }.into(),
            metrics: m,
            timeline: std::mem::take(&mut self.timeline),
            counters,
            plot: self.bins.finish(marks),
        };
        (run, self.cap.pcap, self.uat, self.ike_uat)
    }
}

/// Debug text without `Instant { .. }` values: their absolute numbers depend on the host
/// clock, and the event time is already in the timeline entry (determinism).
pub(crate) fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(k) = rest.find("Instant {") {
        out.push_str(&rest[..k]);
        match rest[k..].find('}') {
            Some(e) => {
                out.push_str("Instant");
                rest = &rest[k + e + 1..];
            }
            None => {
                rest = &rest[k..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.replace("at: Instant, ", "")
}

/// A recovery event that is an action on the wire (Delete / Notify sent, IKE initiated),
/// not an observation or a decision to hold back. Matched by name: the event type may be
/// newer than this crate.
pub(crate) fn is_recovery_action(debug: &str) -> bool {
    ["DeleteSent", "NotifySent", "IkeInitiated", "HintSent"]
        .iter()
        .any(|k| debug.contains(k))
}

/// One run per recovery setting, side by side.
pub fn run_scenario(sc: &Scenario, seed: u64, runs: &[bool]) -> crate::report::Outcome {
    run_scenario_with_progress(sc, seed, runs, &mut |_| {})
}

/// [`run_scenario`], telling `progress` the fraction of all runs done (0.0 to 1.0).
pub fn run_scenario_with_progress(
    sc: &Scenario,
    seed: u64,
    runs: &[bool],
    progress: &mut dyn FnMut(f64),
) -> crate::report::Outcome {
    let mut report = crate::report::Report {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        expect: sc.expect.clone(),
        seed,
        driver: "sim".into(),
        duration_s: sc.duration_s,
        runs: Vec::new(),
    };
    let mut pcaps = Vec::new();
    let mut uat = Vec::new();
    let mut ike_uat = Vec::new();
    let total = runs.len().max(1) as f64;
    for (k, &on) in runs.iter().enumerate() {
        let (r, p, u, iu) = simulate_with_progress(sc, seed, on, &mut |f| {
            progress((k as f64 + f) / total);
        });
        report.runs.push(r);
        pcaps.push(p);
        for l in u {
            if !uat.contains(&l) {
                uat.push(l);
            }
        }
        for l in iu {
            if !ike_uat.contains(&l) {
                ike_uat.push(l);
            }
        }
    }
    crate::report::Outcome {
        report,
        pcaps,
        uat,
        ike_uat,
    }
}
