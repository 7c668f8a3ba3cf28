//! Two [`Agent`]s on a virtual clock with a latency wire: IKE establishes the CHILD SAs,
//! traffic flows both ways through them, CHILD rekeys lose nothing, Deletes remove the
//! pairs on both sides. The manual-SA path next to IKE keeps working.

use esplab_esp::{Algorithm, SaParams};
use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{EndpointConfig, Identity, IkeEvent, IkePeerConfig, Lifetime};
use esplab_node::{Agent, AgentConfig, AgentEvent, NodeConfig, PeerConfig, UnderlayEncap};
use esplab_sad::TrafficSelector;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

mod common;
use common::{ipv4_packet, net, node_cfg, A_HOST, A_IP, B_HOST, B_IP};

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

type Lab = common::Lab<Vec<u8>>;

impl Lab {
    /// Sends an inner packet into A's (`from_a`) or B's TUN.
    fn send_inner(&mut self, from_a: bool, pkt: &[u8]) -> bool {
        self.send_packet(from_a, pkt)
    }

    fn established(&self, ag: &Agent) -> usize {
        common::established(ag, self.now)
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
            // debug_keys also reports the IKE SA's ikev2_decryption_table line, the same
            // on both sides.
            let ike_lines = |ev: &[AgentEvent]| -> Vec<String> {
                ev.iter()
                    .filter_map(|e| match e {
                        AgentEvent::IkeKeys { uat, .. } => Some(uat.clone()),
                        _ => None,
                    })
                    .collect()
            };
            let la = ike_lines(&lab.events_a);
            assert_eq!(la.len(), 1, "{la:?}");
            assert_eq!(la, ike_lines(&lab.events_b));
            for i in 0..10u16 {
                let p = ipv4_packet(A_HOST, B_HOST, i);
                assert!(lab.send_inner(true, &p));
                let q = ipv4_packet(B_HOST, A_HOST, i);
                assert!(lab.send_inner(false, &q));
            }
            // The peers' default encapsulation: RFC 3948 UDP.
            assert_eq!(lab.last_encap, Some(UnderlayEncap::Udp));
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

/// Both peers configured with `encap = "esp"` (raw ESP, IP protocol 50), A behind a
/// port-translating NAT when `nat`; `float` false sets `nat_t_port = 500` (no floating).
fn raw_esp_pair(nat: bool, float: bool) -> Lab {
    let t0 = Instant::now();
    let suites = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let raw = |name: &str, peer_ip: Ipv4Addr, l: u8, r: u8| PeerConfig {
        name: name.into(),
        address: peer_ip.into(),
        encap: UnderlayEncap::Raw,
        port: 4500,
        local_ts: vec![
            TrafficSelector::from_prefix(Ipv4Addr::new(198, 19, l, 0).into(), 24).unwrap(),
        ],
        remote_ts: vec![
            TrafficSelector::from_prefix(Ipv4Addr::new(198, 19, r, 0).into(), 24).unwrap(),
        ],
    };
    let mut na = node_cfg("a", A_IP);
    na.peers.push(raw("b", B_IP, 1, 2));
    let mut nb = node_cfg("b", B_IP);
    nb.peers.push(raw("a", A_IP, 2, 1));
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
    let agent = |node, peer, seed| {
        Agent::new(
            AgentConfig {
                node,
                ike: EndpointConfig {
                    peers: vec![peer],
                    rng_seed: Some(seed),
                    nat_t_port: if float { 4500 } else { 500 },
                    ..Default::default()
                },
                debug_keys: false,
                recovery: Default::default(),
            },
            t0,
        )
        .unwrap()
    };
    let mut lab = Lab::new(agent(na, pa, 5), agent(nb, pb, 6), t0);
    if nat {
        lab.nat_a = 30000;
    }
    lab.step(Duration::from_secs(1));
    assert_eq!(lab.established(&lab.a), 1);
    assert_eq!(lab.established(&lab.b), 1);
    lab
}

/// Sends `n` packets each way and returns how A's and B's went (they must all arrive).
fn traffic(lab: &mut Lab, n: u16) -> (UnderlayEncap, UnderlayEncap) {
    let (ta, tb) = (lab.tun_a.len(), lab.tun_b.len());
    let mut sent = (None, None);
    for i in 0..n {
        assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, i)));
        sent.0 = lab.last_encap;
        assert!(lab.send_inner(false, &ipv4_packet(B_HOST, A_HOST, i)));
        sent.1 = lab.last_encap;
    }
    lab.step(Duration::from_millis(50));
    assert_eq!(lab.tun_b.len() - tb, usize::from(n));
    assert_eq!(lab.tun_a.len() - ta, usize::from(n));
    (sent.0.unwrap(), sent.1.unwrap())
}

/// esplab issue #4, RFC 7296 §2.23 / RFC 3948: a raw-ESP peer without a NAT sends its
/// negotiated SAs' ESP as IP protocol 50 (not UDP 4500), and receives it; a NAT seen
/// later on an IKE request (the peer's IKE moved off port 500) switches to UDP.
#[test]
fn raw_esp_peer_without_nat_sends_protocol_50() {
    let mut lab = raw_esp_pair(false, true);
    assert!(lab
        .a
        .ike_sas(lab.now)
        .iter()
        .all(|s| s.local.port() == 500 && s.remote.port() == 500));
    assert_eq!(
        traffic(&mut lab, 5),
        (UnderlayEncap::Raw, UnderlayEncap::Raw)
    );
    assert!(lab.wire.is_empty());
    // A NAT appears in front of A: its next request reaches B from port 30500.
    lab.nat_a = 30000;
    lab.a.send_liveness(lab.now, "b").unwrap();
    lab.step(Duration::from_millis(50));
    assert!(lab.events_b.iter().any(|e| matches!(
        e,
        AgentEvent::Ike(IkeEvent::PeerAddressChanged { remote, .. }) if remote.port() == 30500
    )));
    assert!(lab.send_inner(false, &ipv4_packet(B_HOST, A_HOST, 99)));
    assert_eq!(lab.last_encap, Some(UnderlayEncap::Udp));
    let d = lab.wire.back().unwrap();
    assert_eq!(d.dst, SocketAddr::new(A_IP.into(), 30500));
    // A saw no change: it still sends raw ESP.
    assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 99)));
    assert_eq!(lab.last_encap, Some(UnderlayEncap::Raw));
}

/// The same raw-ESP peers with a NAT detected (RFC 7296 §2.23): UDP-encapsulated ESP
/// (RFC 3948) on the floated ports, both ways.
#[test]
fn raw_esp_peer_behind_nat_sends_udp() {
    let mut lab = raw_esp_pair(true, true);
    let now = lab.now;
    assert!(lab.a.ike_sas(now).iter().all(|s| s.nat.local_behind_nat));
    assert!(lab.b.ike_sas(now).iter().all(|s| s.nat.remote_behind_nat));
    assert_eq!(
        traffic(&mut lab, 5),
        (UnderlayEncap::Udp, UnderlayEncap::Udp)
    );
}

/// A NAT detected while IKE stays on port 500 (no NAT-T port to float to): the detection
/// alone makes the pairs UDP-encapsulated (RFC 7296 §2.23), as with strongSwan's faked
/// NAT.
#[test]
fn raw_esp_peer_with_nat_detected_on_port_500_sends_udp() {
    let mut lab = raw_esp_pair(true, false);
    let now = lab.now;
    assert!(lab
        .b
        .ike_sas(now)
        .iter()
        .all(|s| s.nat.remote_behind_nat && s.local.port() == 500));
    assert!(lab.send_inner(true, &ipv4_packet(A_HOST, B_HOST, 1)));
    assert_eq!(lab.last_encap, Some(UnderlayEncap::Udp));
    assert!(lab.send_inner(false, &ipv4_packet(B_HOST, A_HOST, 1)));
    assert_eq!(lab.last_encap, Some(UnderlayEncap::Udp));
}
