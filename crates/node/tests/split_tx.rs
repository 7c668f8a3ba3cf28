//! A node whose outbound direction runs on a thread of its own (`Node::split_tx`): the
//! handle encrypts with the node's SAs and policies, follows its changes, and the node
//! still reports the counters and per-SA numbers.

use esplab_esp::{Algorithm, DropReason, SaParams};
use esplab_node::{
    Inbound, LogLimits, Node, NodeConfig, Outbound, PeerConfig, UnderlayEncap, HEADROOM, TAILROOM,
};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

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
            event_queue: 64,
            retired_grace: Duration::from_secs(5),
        },
        Some(1),
    )
}

fn params(spi: u32) -> SaParams {
    SaParams::new(spi, Algorithm::AesGcm128, &[spi as u8; 20], &[])
}

/// An inner IPv4 packet 198.19.1.1 → 198.19.2.1 with `id` in its payload, in a buffer
/// with room for ESP around it.
fn buf(id: u32) -> Vec<u8> {
    let mut b = vec![0u8; HEADROOM + 64 + TAILROOM];
    let p = &mut b[HEADROOM..HEADROOM + 64];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 19, 1, 1]);
    p[16..20].copy_from_slice(&[198, 19, 2, 1]);
    p[20..24].copy_from_slice(&id.to_be_bytes());
    b
}

/// The ESP packet of a verdict, or the drop reason.
fn esp(v: Outbound, b: &[u8]) -> Result<Vec<u8>, DropReason> {
    match v {
        Outbound::Send { esp, .. } => Ok(b[esp].to_vec()),
        Outbound::Drop(r) => Err(r),
    }
}

#[test]
fn sending_thread_uses_the_nodes_sas_and_follows_its_changes() {
    let t0 = Instant::now();
    let mut a = node(
        "a",
        "198.18.0.1",
        "198.18.0.2",
        "198.19.1.0/24",
        "198.19.2.0/24",
    );
    let mut b = node(
        "b",
        "198.18.0.2",
        "198.18.0.1",
        "198.19.2.0/24",
        "198.19.1.0/24",
    );
    a.install_outbound(0, &params(0x100), t0).unwrap();
    b.install_inbound(0, &params(0x100), t0).unwrap();
    b.install_inbound(0, &params(0x200), t0).unwrap();
    let mut h = a.split_tx();

    // The handle runs on its own thread; the node answers questions on this one.
    let (to_main, from_tx) = mpsc::channel();
    let (go, wait) = mpsc::channel::<u32>();
    let tx = std::thread::spawn(move || {
        while let Ok(n) = wait.recv() {
            let mut out = Vec::new();
            for id in 0..n {
                let mut b = buf(id);
                let v = h.outbound(t0, &mut b, HEADROOM..HEADROOM + 64);
                out.push(esp(v, &b));
            }
            to_main.send(out).unwrap();
        }
    });
    let mut deliver = |pkts: Vec<Result<Vec<u8>, DropReason>>| {
        pkts.into_iter()
            .map(|p| {
                let mut p = p?;
                let n = p.len();
                match b.inbound_udp(
                    t0,
                    ip("198.18.0.1"),
                    4500,
                    ip("198.18.0.2"),
                    4500,
                    &mut p,
                    0..n,
                ) {
                    Inbound::Deliver(_) => Ok(u32::from_be_bytes(p[..4].try_into().unwrap())),
                    other => panic!("{other:?}"),
                }
            })
            .collect::<Vec<Result<u32, DropReason>>>()
    };

    go.send(1000).unwrap();
    let got = deliver(from_tx.recv().unwrap());
    assert!(
        got.iter().all(|r| *r == Ok(0x100)),
        "all on the manual SA, all delivered"
    );
    assert_eq!(
        a.counters().out_packets,
        0,
        "the node's own thread sent nothing"
    );
    let c = a.counters_total();
    assert_eq!((c.out_packets, c.out_bytes), (1000, 64_000));
    let out = a
        .sa_info(t0)
        .into_iter()
        .find(|s| s.direction == "out")
        .unwrap();
    assert_eq!((out.spi, out.packets, out.seq), (0x100, 1000, 1000));

    // Replaced: the next packet leaves on the new SA, numbered from 1.
    a.install_outbound(0, &params(0x200), t0).unwrap();
    go.send(3).unwrap();
    assert_eq!(deliver(from_tx.recv().unwrap()), vec![Ok(0x200); 3]);
    let out = a
        .sa_info(t0)
        .into_iter()
        .find(|s| s.direction == "out")
        .unwrap();
    assert_eq!((out.spi, out.packets, out.seq), (0x200, 3, 3));

    // Counters cleared on the node's side: the sender's count starts again.
    a.clear_counters();
    assert_eq!(a.counters_total().out_packets, 0);
    go.send(2).unwrap();
    assert_eq!(deliver(from_tx.recv().unwrap()).len(), 2);
    assert_eq!(a.counters_total().out_packets, 2);
    let out = a
        .sa_info(t0)
        .into_iter()
        .find(|s| s.direction == "out")
        .unwrap();
    assert_eq!((out.packets, out.seq), (2, 5));

    // Removed: no SA from the very next packet on, and the drop is counted.
    assert_eq!(a.remove_spi(0x200, t0), 1);
    go.send(1).unwrap();
    assert_eq!(from_tx.recv().unwrap(), vec![Err(DropReason::NoOutboundSa)]);
    assert_eq!(
        a.counters_total().drops(
            esplab_node::Dir::Out,
            DropReason::NoOutboundSa,
            esplab_esp::Family::V4
        ),
        1
    );
    drop(go);
    tx.join().unwrap();
}

/// The node swaps SAs as fast as it can while the sending thread encrypts without pause:
/// no packet goes out twice under one SPI and sequence number (RFC 4303 §3.3.3), every
/// verdict is a send (there is always an SA), and the per-SA counts add up.
#[test]
fn sas_swapped_under_a_busy_sender_never_repeat_a_sequence_number() {
    let t0 = Instant::now();
    let mut a = node(
        "a",
        "198.18.0.1",
        "198.18.0.2",
        "198.19.1.0/24",
        "198.19.2.0/24",
    );
    a.install_outbound(0, &params(1), t0).unwrap();
    let mut h = a.split_tx();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let tx = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut b = buf(0);
        while !stop2.load(Ordering::Relaxed) || seen.len() < 10_000 {
            match h.outbound(t0, &mut b, HEADROOM..HEADROOM + 64) {
                Outbound::Send { esp, .. } => {
                    let e = &b[esp];
                    seen.push((
                        u32::from_be_bytes(e[..4].try_into().unwrap()),
                        u32::from_be_bytes(e[4..8].try_into().unwrap()),
                    ));
                }
                Outbound::Drop(r) => panic!("{r:?}"),
            }
            b = buf(0);
        }
        seen
    });
    let mut spi = 1;
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        spi += 1;
        a.install_outbound(0, &params(spi), t0).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = tx.join().unwrap();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a (SPI, sequence number) pair repeated"
    );
    assert!(
        seen.iter().map(|(s, _)| s).collect::<HashSet<_>>().len() > 1,
        "the sender saw at least one swap"
    );
    let last = a
        .sa_info(t0)
        .into_iter()
        .find(|s| s.direction == "out")
        .unwrap();
    assert_eq!(
        last.packets as usize,
        seen.iter().filter(|(s, _)| *s == last.spi).count()
    );
    assert_eq!(a.counters_total().out_packets as usize, seen.len());
}
