//! `Agent::handle_underlay_udp_batch` (the daemon's path for a `recvmmsg` burst on the
//! NAT-T socket) behaves exactly like `Agent::handle_underlay_udp` on each datagram in
//! turn, including when an IKE message early in the burst installs the SA that later ESP
//! in the same burst uses.

use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{EndpointConfig, Identity, IkePeerConfig};
use esplab_node::{Agent, AgentConfig, AgentEvent, Inbound, NamedCounter, UdpDatagram};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

mod common;
use common::{ipv4_packet, net, node_cfg, Dgram, A_HOST, A_IP, B_HOST, B_IP};

type Lab = common::Lab<Vec<u8>>;

fn peer_cfg(name: &str, local: Ipv4Addr, remote: Ipv4Addr, ids: (&str, &str)) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        Identity::fqdn(ids.0),
        Some(Identity::fqdn(ids.1)),
        b"correct horse battery staple",
    );
    p.local_addr = Some(SocketAddr::new(local.into(), 500));
    p.remote_addr = Some(SocketAddr::new(remote.into(), 500));
    p.ike_proposals = vec![ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap()];
    p.esp_proposals = vec![ProposalSpec::parse_esp("aes128gcm16").unwrap()];
    p
}

fn agent(name: &str, local: Ipv4Addr, peer: IkePeerConfig, seed: u64, t0: Instant) -> Agent {
    Agent::new(
        AgentConfig {
            node: node_cfg(name, local),
            ike: EndpointConfig {
                peers: vec![peer],
                rng_seed: Some(seed),
                ..Default::default()
            },
            debug_keys: false,
            recovery: Default::default(),
        },
        t0,
    )
    .unwrap()
}

/// B initiates to A, which is behind a NAT (so IKE floats to the NAT-T port, RFC 7296
/// §2.23). Everything for B's NAT-T socket is held back from the moment A has installed
/// the CHILD SA: A's IKE_AUTH response (behind the non-ESP marker), then ESP on the new SA,
/// then a keepalive, an unknown SPI and a runt. Returns the lab and that burst.
fn burst(t0: Instant) -> (Lab, Vec<Dgram>) {
    let mut pa = peer_cfg("b", A_IP, B_IP, ("a.example", "b.example"));
    pa.local_ts = vec![net(1)];
    pa.remote_ts = vec![net(2)];
    let mut pb = peer_cfg("a", B_IP, A_IP, ("b.example", "a.example"));
    pb.local_ts = vec![net(2)];
    pb.remote_ts = vec![net(1)];
    pb.start = true;
    let mut lab = Lab::new(
        agent("a", A_IP, pa, 11, t0),
        agent("b", B_IP, pb, 12, t0),
        t0,
    );
    lab.nat_a = 30000;
    let b_nat_t = SocketAddr::new(B_IP.into(), 4500);
    let mut held = Vec::new();
    for _ in 0..20 {
        let now = lab.now;
        for ag in [&mut lab.a, &mut lab.b] {
            if ag.poll_timeout().is_some_and(|t| t <= now) {
                ag.handle_timeout(now);
            }
        }
        lab.collect();
        let a_has_child = lab
            .a
            .node()
            .sa_info(now)
            .iter()
            .any(|s| s.direction == "out");
        for d in lab.wire.drain(..).collect::<Vec<_>>() {
            if a_has_child && d.dst == b_nat_t {
                held.push(d);
            } else {
                lab.deliver(d.src, d.dst, d.data);
            }
        }
        if a_has_child {
            break;
        }
    }
    assert_eq!(held.len(), 1, "A's IKE_AUTH response");
    assert_eq!(held[0].data[..4], [0; 4], "IKE behind the non-ESP marker");
    for i in 0..3 {
        assert!(lab.send_packet(true, &ipv4_packet(A_HOST, B_HOST, i)));
    }
    held.extend(lab.wire.drain(..));
    assert_eq!(held.len(), 4);
    let from = held[1].src;
    let mut junk = |data: Vec<u8>| {
        held.push(Dgram {
            at: lab.now,
            src: from,
            dst: b_nat_t,
            data,
        })
    };
    junk(vec![0xff]);
    let mut unknown = vec![0u8; 64];
    unknown[..4].copy_from_slice(&0x7777_0001u32.to_be_bytes());
    junk(unknown);
    junk(vec![1, 2, 3]);
    (lab, held)
}

type Outcome = (
    Vec<Inbound>,
    Vec<Vec<u8>>,
    Vec<NamedCounter>,
    Vec<AgentEvent>,
);

fn outcome(b: &mut Agent, v: Vec<Inbound>, bufs: &[Vec<u8>]) -> Outcome {
    let inner = v
        .iter()
        .zip(bufs)
        .filter_map(|(v, b)| match v {
            Inbound::Deliver(r) => Some(b[r.clone()].to_vec()),
            _ => None,
        })
        .collect();
    let mut events = Vec::new();
    while let Some(e) = b.poll_event() {
        events.push(e);
    }
    (v, inner, b.counters_named(), events)
}

#[test]
fn batch_equals_single_across_an_ike_install() {
    let t0 = Instant::now();
    // Per datagram, as before.
    let (mut lab, held) = burst(t0);
    let now = lab.now;
    let mut bufs: Vec<Vec<u8>> = held.iter().map(|d| d.data.clone()).collect();
    let v: Vec<Inbound> = held
        .iter()
        .zip(bufs.iter_mut())
        .map(|(d, buf)| {
            let n = buf.len();
            lab.b.handle_underlay_udp(now, d.dst, d.src, buf, 0..n)
        })
        .collect();
    let single = outcome(&mut lab.b, v, &bufs);

    // The same burst, batched.
    let (mut lab, held) = burst(t0);
    let mut bufs: Vec<Vec<u8>> = held.iter().map(|d| d.data.clone()).collect();
    let mut batch: Vec<UdpDatagram<'_>> = held
        .iter()
        .zip(bufs.iter_mut())
        .map(|(d, buf)| {
            let n = buf.len();
            UdpDatagram {
                src: d.src.ip(),
                sport: d.src.port(),
                dst: d.dst.ip(),
                dport: d.dst.port(),
                buf,
                payload: 0..n,
            }
        })
        .collect();
    let mut out = vec![Inbound::Keepalive; batch.len()];
    lab.b.handle_underlay_udp_batch(now, &mut batch, &mut out);
    drop(batch);
    let batched = outcome(&mut lab.b, out, &bufs);

    // The IKE_AUTH response installed B's SA: the ESP behind it in the burst decrypts.
    assert_eq!(
        single.1,
        (0..3)
            .map(|i| ipv4_packet(A_HOST, B_HOST, i))
            .collect::<Vec<_>>()
    );
    assert!(matches!(single.0[0], Inbound::Ike(_)));
    assert_eq!(single.0[4], Inbound::Keepalive);
    assert!(single
        .3
        .iter()
        .any(|e| matches!(e, AgentEvent::ChildInstalled { .. })));
    assert_eq!(batched, single);
    assert_eq!(
        lab.b.node().counters().in_packets,
        3,
        "{:?}",
        lab.b.node().counters()
    );
}
