//! Two [`Agent`]s on a virtual clock with a latency wire: IKE establishes the CHILD SAs,
//! traffic flows both ways through them, CHILD rekeys lose nothing, Deletes remove the
//! pairs on both sides. The manual-SA path next to IKE keeps working.

use esplab_esp::{Algorithm, SaParams};
use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{
    AddrRange, EndpointConfig, Identity, IkeEvent, IkePeerConfig, IkeSaState, Lifetime,
    TrafficSelector as IkeTs,
};
use esplab_node::{
    Agent, AgentConfig, AgentEvent, Inbound, LogLimits, NodeConfig, Outbound, PeerConfig,
    UnderlayEncap, HEADROOM, TAILROOM,
};
use esplab_sad::TrafficSelector;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Inner hosts behind A and B.
const A_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const B_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const LATENCY: Duration = Duration::from_millis(5);

fn net(o3: u8) -> IkeTs {
    IkeTs::any_port(AddrRange::V4 {
        start: Ipv4Addr::new(198, 19, o3, 0),
        end: Ipv4Addr::new(198, 19, o3, 255),
    })
}

fn peer_cfg(
    name: &str,
    local: Ipv4Addr,
    remote: Option<Ipv4Addr>,
    ids: (&str, &str),
    nets: (u8, u8),
    suites: (&str, &str),
) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        Identity::fqdn(ids.0),
        Some(Identity::fqdn(ids.1)),
        b"correct horse battery staple",
    );
    p.local_addr = Some(SocketAddr::new(local.into(), 500));
    p.remote_addr = remote.map(|r| SocketAddr::new(r.into(), 500));
    p.local_ts = vec![net(nets.0)];
    p.remote_ts = vec![net(nets.1)];
    p.ike_proposals = vec![ProposalSpec::parse_ike(suites.0).unwrap()];
    p.esp_proposals = vec![ProposalSpec::parse_esp(suites.1).unwrap()];
    p
}

fn node_cfg(name: &str, local: Ipv4Addr) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        local: local.into(),
        peers: Vec::new(),
        log_limits: LogLimits::default(),
        event_queue: 1024,
        retired_grace: Duration::from_secs(10),
    }
}

fn agent(node: NodeConfig, peer: IkePeerConfig, seed: u64, t0: Instant) -> Agent {
    Agent::new(
        AgentConfig {
            node,
            ike: EndpointConfig {
                peers: vec![peer],
                rng_seed: Some(seed),
                ..Default::default()
            },
            debug_keys: true,
            recovery: Default::default(),
        },
        t0,
    )
    .unwrap()
}

/// A datagram in flight: UDP from `src` to `dst`.
struct Dgram {
    at: Instant,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

struct Lab {
    now: Instant,
    a: Agent,
    b: Agent,
    wire: VecDeque<Dgram>,
    /// Inner packets delivered to A's and B's TUN.
    tun_a: Vec<Vec<u8>>,
    tun_b: Vec<Vec<u8>>,
    events_a: Vec<AgentEvent>,
    events_b: Vec<AgentEvent>,
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
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

impl Lab {
    fn new(a: Agent, b: Agent, t0: Instant) -> Self {
        Lab {
            now: t0,
            a,
            b,
            wire: VecDeque::new(),
            tun_a: vec![],
            tun_b: vec![],
            events_a: vec![],
            events_b: vec![],
        }
    }

    fn agent(&mut self, ip: IpAddr) -> (&mut Agent, &mut Vec<Vec<u8>>, bool) {
        if ip == IpAddr::V4(A_IP) {
            (&mut self.a, &mut self.tun_a, true)
        } else {
            (&mut self.b, &mut self.tun_b, false)
        }
    }

    /// Collects transmits and events of both agents.
    fn collect(&mut self) {
        let at = self.now + LATENCY;
        for (ag, ev) in [
            (&mut self.a, &mut self.events_a),
            (&mut self.b, &mut self.events_b),
        ] {
            while let Some(t) = ag.poll_transmit() {
                self.wire.push_back(Dgram {
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
    }

    /// Sends an inner packet into `from`'s TUN.
    fn send_inner(&mut self, from_a: bool, pkt: &[u8]) -> bool {
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
                assert_eq!(encap, UnderlayEncap::Udp);
                self.wire.push_back(Dgram {
                    at: self.now + LATENCY,
                    src: SocketAddr::new(src_ip.into(), 4500),
                    dst: SocketAddr::new(dst, port),
                    data: buf[esp].to_vec(),
                });
                true
            }
            Outbound::Drop(_) => false,
        }
    }

    /// Advances the clock to `until`, delivering datagrams and firing timers on the way.
    fn run_until(&mut self, until: Instant) {
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
                        let now = self.now;
                        let (ag, tun, _) = self.agent(d.dst.ip());
                        let mut buf = d.data;
                        let n = buf.len();
                        if let Inbound::Deliver(r) =
                            ag.handle_underlay_udp(now, d.dst, d.src, &mut buf, 0..n)
                        {
                            tun.push(buf[r].to_vec());
                        }
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

    fn step(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn established(&self, ag: &Agent) -> usize {
        ag.ike_sas(self.now)
            .iter()
            .filter(|s| s.state == IkeSaState::Established)
            .count()
    }
}

fn pair(suites: (&str, &str), a_starts: bool) -> Lab {
    let t0 = Instant::now();
    let mut pa = peer_cfg(
        "b",
        A_IP,
        Some(B_IP),
        ("a.example", "b.example"),
        (1, 2),
        suites,
    );
    let mut pb = peer_cfg(
        "a",
        B_IP,
        Some(A_IP),
        ("b.example", "a.example"),
        (2, 1),
        suites,
    );
    pa.start = a_starts;
    pb.start = !a_starts;
    let a = agent(node_cfg("a", A_IP), pa, 1, t0);
    let b = agent(node_cfg("b", B_IP), pb, 2, t0);
    Lab::new(a, b, t0)
}

fn out_spis(ag: &Agent, now: Instant) -> Vec<u32> {
    ag.node()
        .sa_info(now)
        .iter()
        .filter(|s| s.direction == "out")
        .map(|s| s.spi)
        .collect()
}

fn in_spis(ag: &Agent, now: Instant) -> Vec<u32> {
    ag.node()
        .sa_info(now)
        .iter()
        .filter(|s| s.direction == "in")
        .map(|s| s.spi)
        .collect()
}

#[test]
fn establish_and_traffic_both_suites_both_roles() {
    for suites in [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes128-sha256-x25519", "aes128-sha256"),
    ] {
        for a_starts in [true, false] {
            let mut lab = pair(suites, a_starts);
            // No SA yet: traffic is dropped, not sent in clear.
            assert!(!lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 0)));
            lab.step(Duration::from_secs(1));
            assert_eq!(lab.established(&lab.a), 1, "{suites:?}");
            assert_eq!(lab.established(&lab.b), 1);
            // One pair each, mirrored.
            let (now, a, b) = (lab.now, &lab.a, &lab.b);
            assert_eq!(out_spis(a, now), in_spis(b, now));
            assert_eq!(out_spis(b, now), in_spis(a, now));
            assert!(lab.events_a.iter().any(|e| matches!(
                e,
                AgentEvent::ChildInstalled { uat, .. } if uat.len() == 2
            )));
            for i in 0..10u16 {
                let p = ipv4_packet(A_HOST, B_HOST, i);
                assert!(lab.send_inner(true, &p));
                let q = ipv4_packet(B_HOST, A_HOST, i);
                assert!(lab.send_inner(false, &q));
            }
            lab.step(Duration::from_millis(50));
            assert_eq!(lab.tun_b.len(), 10);
            assert_eq!(lab.tun_a.len(), 10);
            assert_eq!(lab.tun_b[3], ipv4_packet(A_HOST, B_HOST, 3));
            assert_eq!(lab.tun_a[9], ipv4_packet(B_HOST, A_HOST, 9));
            // Outside the selectors: dropped.
            assert!(!lab.send_inner(true, &ipv4_packet(A_HOST, Ipv4Addr::new(198, 19, 3, 1), 0)));
            // Last inbound activity is recorded per peer.
            let pi = lab.b.node().peer_index("a").unwrap();
            assert!(lab.b.node().last_inbound(pi).is_some());
        }
    }
}

/// Pings every 10 ms in both directions across several CHILD rekeys (started by either
/// side): nothing is lost, and the SPIs did change.
#[test]
fn child_rekey_loses_nothing() {
    let mut lab = pair(("aes128gcm16-prfsha256-x25519", "aes128gcm16"), true);
    lab.step(Duration::from_secs(1));
    let first = out_spis(&lab.a, lab.now);
    assert_eq!(first.len(), 1);
    // Rekey by A, then by B, through the command API; then by lifetime below.
    let mut sent = 0usize;
    for round in 0..3000u32 {
        if round == 500 {
            let spi = out_spis(&lab.a, lab.now)[0];
            lab.a.rekey_child(lab.now, spi).unwrap();
        }
        if round == 1500 {
            let spi = out_spis(&lab.b, lab.now)[0];
            lab.b.rekey_child(lab.now, spi).unwrap();
        }
        if round == 2200 {
            lab.a.rekey_ike(lab.now, "b").unwrap();
        }
        assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, round as u16)));
        assert!(lab.send_inner(false, &ipv4_packet(B_HOST, A_HOST, round as u16)));
        sent += 1;
        lab.step(Duration::from_millis(10));
    }
    lab.step(Duration::from_secs(1));
    assert_eq!(lab.tun_b.len(), sent, "A→B losses");
    assert_eq!(lab.tun_a.len(), sent, "B→A losses");
    let rekeys = lab
        .events_a
        .iter()
        .filter(|e| matches!(e, AgentEvent::Ike(IkeEvent::ChildRekeyed { .. })))
        .count();
    assert!(rekeys >= 2, "{rekeys} rekeys");
    let now_spis = out_spis(&lab.a, lab.now);
    assert_eq!(now_spis.len(), 1);
    assert_ne!(now_spis, first);
    // Old inbound SAs lingered, then went: one inbound SA left per side.
    lab.step(Duration::from_secs(5));
    assert_eq!(in_spis(&lab.a, lab.now).len(), 1);
    assert_eq!(in_spis(&lab.b, lab.now).len(), 1);
    assert_eq!(lab.established(&lab.a), 1);
}

#[test]
fn lifetime_rekey_loses_nothing() {
    let t0 = Instant::now();
    let suites = ("aes128-sha256-x25519", "aes128-sha256");
    let mut pa = peer_cfg(
        "b",
        A_IP,
        Some(B_IP),
        ("a.example", "b.example"),
        (1, 2),
        suites,
    );
    let pb = peer_cfg(
        "a",
        B_IP,
        Some(A_IP),
        ("b.example", "a.example"),
        (2, 1),
        suites,
    );
    pa.start = true;
    pa.child_lifetime = Some(Lifetime::new(
        Duration::from_secs(8),
        Duration::from_secs(3),
        Duration::from_secs(1),
    ));
    let mut lab = Lab::new(
        agent(node_cfg("a", A_IP), pa, 7, t0),
        agent(node_cfg("b", B_IP), pb, 8, t0),
        t0,
    );
    lab.step(Duration::from_secs(1));
    for i in 0..3000u32 {
        assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, i as u16)));
        assert!(lab.send_inner(false, &ipv4_packet(B_HOST, A_HOST, i as u16)));
        lab.step(Duration::from_millis(10));
    }
    lab.step(Duration::from_secs(1));
    assert_eq!(lab.tun_b.len(), 3000);
    assert_eq!(lab.tun_a.len(), 3000);
    let rekeys = lab
        .events_a
        .iter()
        .filter(|e| matches!(e, AgentEvent::Ike(IkeEvent::ChildRekeyed { .. })))
        .count();
    assert!(
        rekeys >= 4,
        "{rekeys} rekeys in 30 s with a 5-7 s rekey time"
    );
}

#[test]
fn delete_from_either_side_removes_both_halves() {
    // CHILD delete by B, then IKE delete (terminate) by A.
    let mut lab = pair(("aes128gcm16-prfsha256-x25519", "aes128gcm16"), true);
    lab.step(Duration::from_secs(1));
    let spi = out_spis(&lab.b, lab.now)[0];
    lab.b.delete_child(lab.now, spi).unwrap();
    lab.step(Duration::from_secs(1));
    assert!(out_spis(&lab.a, lab.now).is_empty());
    assert!(out_spis(&lab.b, lab.now).is_empty());
    assert!(!lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 1)));
    lab.step(Duration::from_secs(5));
    assert!(in_spis(&lab.a, lab.now).is_empty());
    assert!(in_spis(&lab.b, lab.now).is_empty());
    assert_eq!(lab.established(&lab.a), 1);

    // Re-initiate a CHILD SA by restarting the IKE SA: terminate, then initiate.
    lab.a.terminate(lab.now, "b").unwrap();
    lab.step(Duration::from_secs(1));
    assert!(lab.a.ike_sas(lab.now).is_empty());
    assert!(lab.b.ike_sas(lab.now).is_empty());
    lab.b.initiate(lab.now, "a").unwrap();
    lab.step(Duration::from_secs(1));
    assert_eq!(out_spis(&lab.a, lab.now).len(), 1);
    assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 2)));
    lab.step(Duration::from_secs(1));
    assert_eq!(lab.tun_b.last().unwrap(), &ipv4_packet(A_HOST, B_HOST, 2));
    lab.b.terminate(lab.now, "a").unwrap();
    lab.step(Duration::from_secs(5));
    for ag in [&lab.a, &lab.b] {
        assert!(ag.ike_sas(lab.now).is_empty());
        assert!(ag.node().sa_info(lab.now).is_empty());
    }
}

/// A manual peer next to an IKE peer: the manual SA pair keeps working unchanged.
#[test]
fn manual_sas_next_to_ike() {
    let t0 = Instant::now();
    let manual = |peer_ip: Ipv4Addr, l: u8, r: u8| PeerConfig {
        name: "manual".into(),
        address: peer_ip.into(),
        encap: UnderlayEncap::Udp,
        port: 4500,
        local_ts: vec![
            TrafficSelector::from_prefix(Ipv4Addr::new(198, 19, l, 0).into(), 24).unwrap(),
        ],
        remote_ts: vec![
            TrafficSelector::from_prefix(Ipv4Addr::new(198, 19, r, 0).into(), 24).unwrap(),
        ],
    };
    let mut na = node_cfg("a", A_IP);
    na.peers.push(manual(B_IP, 11, 12));
    let mut nb = node_cfg("b", B_IP);
    nb.peers.push(manual(A_IP, 12, 11));
    let suites = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let mut pa = peer_cfg(
        "b",
        A_IP,
        Some(B_IP),
        ("a.example", "b.example"),
        (1, 2),
        suites,
    );
    pa.start = true;
    let pb = peer_cfg(
        "a",
        B_IP,
        Some(A_IP),
        ("b.example", "a.example"),
        (2, 1),
        suites,
    );
    let mut lab = Lab::new(agent(na, pa, 3, t0), agent(nb, pb, 4, t0), t0);
    let key = [7u8; 20];
    let ab = SaParams::new(0x1000, Algorithm::AesGcm128, &key, &[]);
    let ba = SaParams::new(0x2000, Algorithm::AesGcm128, &key, &[]);
    lab.a.node_mut().install_outbound(0, &ab, t0).unwrap();
    lab.a.node_mut().install_inbound(0, &ba, t0).unwrap();
    lab.b.node_mut().install_outbound(0, &ba, t0).unwrap();
    lab.b.node_mut().install_inbound(0, &ab, t0).unwrap();
    lab.step(Duration::from_secs(1));
    let (m_a, m_b) = (Ipv4Addr::new(198, 19, 11, 1), Ipv4Addr::new(198, 19, 12, 1));
    assert!(lab.send_inner(true, &ipv4_packet(m_a, m_b, 1)));
    assert!(lab.send_inner(false, &ipv4_packet(m_b, m_a, 2)));
    assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 3)));
    lab.step(Duration::from_millis(50));
    assert_eq!(
        lab.tun_b,
        vec![ipv4_packet(m_a, m_b, 1), ipv4_packet(A_HOST, B_HOST, 3)]
    );
    assert_eq!(lab.tun_a, vec![ipv4_packet(m_b, m_a, 2)]);
}
