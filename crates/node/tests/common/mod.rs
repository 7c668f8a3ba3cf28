//! Two-[`Agent`] harness on a virtual clock with a latency wire, shared by `agent.rs` and
//! `recovery.rs` (`mod common;`; a `tests/` subdirectory is not a test target of its own).
//!
//! A at 198.18.0.1 and B at 198.18.0.2 exchange UDP datagrams that arrive `LATENCY` after
//! they are sent; `run_until` advances the clock, delivering datagrams and firing timers
//! in time order. What a TUN keeps per delivered packet is the test's choice (`Arrival`).

// Each including test binary uses a different subset.
#![allow(dead_code)]

use esplab_ike::{AddrRange, IkeSaState, TrafficSelector as IkeTs};
use esplab_node::{
    Agent, AgentEvent, Inbound, LogLimits, NodeConfig, Outbound, UnderlayEncap, HEADROOM, TAILROOM,
};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Inner hosts behind A and B.
pub const A_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
pub const B_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
pub const LATENCY: Duration = Duration::from_millis(5);
/// The "port" of a raw ESP packet on the wire (a real UDP port is never 0).
pub const RAW_ESP: u16 = 0;

/// 198.19.`o3`.0/24, any port.
pub fn net(o3: u8) -> IkeTs {
    IkeTs::any_port(AddrRange::V4 {
        start: Ipv4Addr::new(198, 19, o3, 0),
        end: Ipv4Addr::new(198, 19, o3, 255),
    })
}

pub fn node_cfg(name: &str, local: Ipv4Addr) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        local: local.into(),
        peers: Vec::new(),
        log_limits: LogLimits::default(),
        event_queue: 1024,
        retired_grace: Duration::from_secs(10),
    }
}

/// A 28-byte IPv4/UDP packet `src` → `dst` with IP id `id`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&8u16.to_be_bytes());
    p
}

/// Number of established IKE SAs of `ag`.
pub fn established(ag: &Agent, now: Instant) -> usize {
    ag.ike_sas(now)
        .iter()
        .filter(|s| s.state == IkeSaState::Established)
        .count()
}

/// What a TUN records for one delivered inner packet.
pub trait Arrival {
    fn arrival(at: Instant, packet: Vec<u8>) -> Self;
}

/// Just the packet.
impl Arrival for Vec<u8> {
    fn arrival(_at: Instant, packet: Vec<u8>) -> Self {
        packet
    }
}

/// The packet with its arrival time.
impl Arrival for (Instant, Vec<u8>) {
    fn arrival(at: Instant, packet: Vec<u8>) -> Self {
        (at, packet)
    }
}

/// A datagram in flight: UDP from `src` to `dst`; raw ESP (IP protocol 50) when both
/// ports are [`RAW_ESP`].
pub struct Dgram {
    pub at: Instant,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

pub struct Lab<T> {
    pub now: Instant,
    pub a: Agent,
    pub b: Agent,
    pub wire: VecDeque<Dgram>,
    /// Inner packets delivered to A's and B's TUN.
    pub tun_a: Vec<T>,
    pub tun_b: Vec<T>,
    pub events_a: Vec<AgentEvent>,
    pub events_b: Vec<AgentEvent>,
    /// Inner packet id counter (for tests that number their packets here).
    pub id: u16,
    /// Datagrams sent to addresses other than A and B (they vanish after being recorded).
    pub elsewhere: Vec<Dgram>,
    /// A port-translating NAT in front of A (0: none): UDP from A leaves with its source
    /// port plus this, UDP to a port at least this reaches A at the port minus it. Raw
    /// ESP passes untranslated.
    pub nat_a: u16,
    /// How the last packet [`Lab::send_packet`] sent travelled.
    pub last_encap: Option<UnderlayEncap>,
}

impl<T: Arrival> Lab<T> {
    pub fn new(a: Agent, b: Agent, t0: Instant) -> Self {
        Lab {
            now: t0,
            a,
            b,
            wire: VecDeque::new(),
            tun_a: vec![],
            tun_b: vec![],
            events_a: vec![],
            events_b: vec![],
            id: 0,
            elsewhere: vec![],
            nat_a: 0,
            last_encap: None,
        }
    }

    /// Puts a datagram on the wire, through the NAT in front of A.
    fn push(&mut self, mut d: Dgram) {
        if self.nat_a != 0 && d.src.ip() == IpAddr::V4(A_IP) && d.src.port() != RAW_ESP {
            d.src.set_port(d.src.port().wrapping_add(self.nat_a));
        }
        self.wire.push_back(d);
    }

    /// The agent at `ip` and its TUN; `None` for any other address.
    fn side(&mut self, ip: IpAddr) -> Option<(&mut Agent, &mut Vec<T>)> {
        if ip == IpAddr::V4(A_IP) {
            Some((&mut self.a, &mut self.tun_a))
        } else if ip == IpAddr::V4(B_IP) {
            Some((&mut self.b, &mut self.tun_b))
        } else {
            None
        }
    }

    /// Collects transmits and events of both agents.
    pub fn collect(&mut self) {
        let at = self.now + LATENCY;
        let mut sent = Vec::new();
        for (ag, ev) in [
            (&mut self.a, &mut self.events_a),
            (&mut self.b, &mut self.events_b),
        ] {
            while let Some(t) = ag.poll_transmit() {
                sent.push(Dgram {
                    at,
                    src: t.local,
                    dst: t.remote,
                    data: t.data,
                });
            }
            while let Some(e) = ag.poll_event() {
                ev.push(e);
            }
        }
        for d in sent {
            self.push(d);
        }
    }

    /// Sends an inner packet into A's (`from_a`) or B's TUN; false when it is dropped.
    pub fn send_packet(&mut self, from_a: bool, pkt: &[u8]) -> bool {
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
        let (ag, src_ip) = if from_a {
            (&mut self.a, A_IP)
        } else {
            (&mut self.b, B_IP)
        };
        match ag.handle_tun(self.now, &mut buf, HEADROOM..HEADROOM + pkt.len()) {
            Outbound::Send {
                esp,
                dst,
                port,
                encap,
            } => {
                self.last_encap = Some(encap);
                let (sport, dport) = match encap {
                    UnderlayEncap::Udp => (4500, port),
                    UnderlayEncap::Raw => (RAW_ESP, RAW_ESP),
                };
                self.push(Dgram {
                    at: self.now + LATENCY,
                    src: SocketAddr::new(src_ip.into(), sport),
                    dst: SocketAddr::new(dst, dport),
                    data: buf[esp].to_vec(),
                });
                true
            }
            Outbound::Drop(_) => false,
        }
    }

    /// Hands a datagram to A or B now (datagrams to other addresses are only recorded in
    /// `elsewhere`).
    pub fn deliver(&mut self, src: SocketAddr, mut dst: SocketAddr, mut data: Vec<u8>) {
        let now = self.now;
        if self.nat_a != 0 && dst.ip() == IpAddr::V4(A_IP) && dst.port() >= self.nat_a {
            dst.set_port(dst.port().wrapping_sub(self.nat_a));
        }
        if let Some((ag, tun)) = self.side(dst.ip()) {
            let n = data.len();
            let v = if dst.port() == RAW_ESP {
                ag.handle_underlay_esp(now, src.ip(), dst.ip(), &mut data, 0..n)
            } else {
                ag.handle_underlay_udp(now, dst, src, &mut data, 0..n)
            };
            if let Inbound::Deliver(r) = v {
                tun.push(T::arrival(now, data[r].to_vec()));
            }
        } else {
            self.elsewhere.push(Dgram {
                at: now,
                src,
                dst,
                data,
            });
        }
    }

    /// Advances the clock to `until`, delivering datagrams and firing timers on the way.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.collect();
            let next_wire = self.wire.iter().map(|d| d.at).min();
            let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let next = [next_wire, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    if next_wire.is_some_and(|w| w <= self.now) {
                        let i = self.wire.iter().position(|d| d.at <= self.now).unwrap();
                        let d = self.wire.remove(i).unwrap();
                        self.deliver(d.src, d.dst, d.data);
                    } else {
                        let now = self.now;
                        if self.a.poll_timeout().is_some_and(|t| t <= now) {
                            self.a.handle_timeout(now);
                        }
                        if self.b.poll_timeout().is_some_and(|t| t <= now) {
                            self.b.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = until.max(self.now);
                    return;
                }
            }
        }
    }

    pub fn step(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }
}
