//! Invalid-SPI recovery on a virtual clock: two [`Agent`]s and a latency wire (the
//! harness of `agent.rs`), plus a third address that injects forged traffic. Counts are
//! exact: each scenario says how many Deletes, initiations and events it allows.

use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{
    EndpointConfig, ExchangeType, Flags, Identity, IkeEvent, IkeHeader, IkePeerConfig, Message,
    Notify, NotifyType, PeerAction, Retransmit,
};
use esplab_node::{
    Agent, AgentConfig, AgentEvent, DpdAction, NodeConfig, OnInvalidSpi, PeerRecovery,
    RecoveryConfig, RecoveryKind, SuppressWhy,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

mod common;
use common::{ipv4_packet, net, node_cfg, A_HOST, A_IP, B_HOST, B_IP};

/// Not a configured peer of anyone.
const C_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const RTT: Duration = Duration::from_millis(10);

fn peer_cfg(
    name: &str,
    local: Ipv4Addr,
    remote: Option<Ipv4Addr>,
    ids: (&str, &str),
    nets: (u8, u8),
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
    p.ike_proposals = vec![ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap()];
    p.esp_proposals = vec![ProposalSpec::parse_esp("aes128gcm16").unwrap()];
    p.on_peer_delete = PeerAction::Restart;
    p
}

/// A short retransmission schedule (1, 2, 4 s: dead after 7 s) so DPD is quick.
fn retransmit() -> Retransmit {
    Retransmit {
        tries: 2,
        timeout: Duration::from_secs(1),
        base: 2.0,
        limit: None,
    }
}

fn agent(
    node: NodeConfig,
    peer: IkePeerConfig,
    recovery: RecoveryConfig,
    seed: u64,
    t0: Instant,
) -> Agent {
    Agent::new(
        AgentConfig {
            node,
            ike: EndpointConfig {
                peers: vec![peer],
                rng_seed: Some(seed),
                retransmit: retransmit(),
                ..Default::default()
            },
            debug_keys: false,
            recovery,
        },
        t0,
    )
    .unwrap()
}

/// (arrival, packet) at A's and B's TUN.
type Lab = common::Lab<(Instant, Vec<u8>)>;

/// A forged UDP-encapsulated ESP packet (RFC 3948: the SPI is the first word).
fn forged_esp(spi: u32, seq: u32) -> Vec<u8> {
    let mut v = vec![0u8; 64];
    v[0..4].copy_from_slice(&spi.to_be_bytes());
    v[4..8].copy_from_slice(&seq.to_be_bytes());
    v
}

impl Lab {
    fn send_inner(&mut self, from_a: bool) -> bool {
        self.id = self.id.wrapping_add(1);
        let pkt = if from_a {
            ipv4_packet(A_HOST, B_HOST, self.id)
        } else {
            ipv4_packet(B_HOST, A_HOST, self.id)
        };
        self.send_packet(from_a, &pkt)
    }

    /// Delivers a datagram to A or B at once (forged traffic).
    fn inject(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.deliver(src, dst, data);
        self.collect();
    }

    /// Both sides send one packet every `every` for `dur`.
    fn traffic(&mut self, dur: Duration, every: Duration) {
        let end = self.now + dur;
        while self.now < end {
            self.send_inner(true);
            self.send_inner(false);
            self.step(every);
        }
    }

    fn established(ag: &Agent, now: Instant) -> usize {
        common::established(ag, now)
    }

    /// First arrival at B's TUN after `t`.
    fn first_at_b_after(&self, t: Instant) -> Option<Instant> {
        self.tun_b.iter().map(|(at, _)| *at).find(|at| *at > t)
    }
}

fn recovery(on: bool) -> RecoveryConfig {
    RecoveryConfig {
        default: PeerRecovery {
            invalid_spi_recovery: on,
            ..PeerRecovery::default()
        },
        ..RecoveryConfig::default()
    }
}

fn b_agent(b_dynamic: bool, rec: RecoveryConfig, seed: u64, t0: Instant) -> Agent {
    let remote = if b_dynamic { None } else { Some(A_IP) };
    let pb = peer_cfg("a", B_IP, remote, ("b.example", "a.example"), (2, 1));
    agent(node_cfg("b", B_IP), pb, rec, seed, t0)
}

/// A initiates; both sides established with traffic flowing.
fn lab(rec_a: RecoveryConfig, rec_b: RecoveryConfig, b_dynamic: bool) -> Lab {
    let t0 = Instant::now();
    let mut pa = peer_cfg("b", A_IP, Some(B_IP), ("a.example", "b.example"), (1, 2));
    pa.start = true;
    let a = agent(node_cfg("a", A_IP), pa, rec_a, 1, t0);
    let b = b_agent(b_dynamic, rec_b, 2, t0);
    let mut l = Lab::new(a, b, t0);
    l.step(Duration::from_secs(1));
    assert_eq!(Lab::established(&l.a, l.now), 1);
    assert_eq!(Lab::established(&l.b, l.now), 1);
    l.traffic(Duration::from_millis(100), Duration::from_millis(10));
    assert!(!l.tun_b.is_empty() && !l.tun_a.is_empty());
    l
}

fn count(ev: &[AgentEvent], f: impl Fn(&RecoveryKind) -> bool) -> usize {
    ev.iter()
        .filter(|e| matches!(e, AgentEvent::Recovery(r) if f(&r.kind)))
        .count()
}

fn initial_contacts(ev: &[AgentEvent]) -> usize {
    ev.iter()
        .filter(|e| matches!(e, AgentEvent::Ike(IkeEvent::MessageSent { exchange, payloads, response: false, retransmit: false, .. })
            if *exchange == ExchangeType::IKE_AUTH && payloads.contains("INITIAL_CONTACT")))
        .count()
}

/// B forgets its CHILD SAs (datapath only, IKE SA kept): rule 1, always on.
#[test]
fn child_sa_lost_one_delete_and_traffic_resumes() {
    for on in [true, false] {
        let mut l = lab(recovery(false), recovery(on), false);
        let n = l.b.node_mut().clear_all(l.now);
        assert!(n >= 2);
        let t_loss = l.now;
        l.events_b.clear();
        l.traffic(Duration::from_secs(2), Duration::from_millis(10));
        let s = l.b.recovery_stats();
        assert_eq!(s.deletes_sent, 1, "recovery {on}: exactly one Delete");
        assert_eq!(s.notifies_sent, 0);
        assert_eq!(s.ike_initiated, 0);
        assert_eq!(count(&l.events_b, |k| *k == RecoveryKind::DeleteSent), 1);
        let a = l.a.recovery_stats();
        assert_eq!(
            a.stale_sa_deleted, 1,
            "A dropped its stale SA on B's Delete"
        );
        // Both still have one IKE SA; the pair is new and traffic flows again.
        assert_eq!(Lab::established(&l.a, l.now), 1);
        let resumed = l.first_at_b_after(t_loss).expect("traffic resumes");
        let blackhole = resumed - t_loss;
        // First packet (≤10 ms) + Delete exchange (1 RTT) + CREATE_CHILD_SA (1 RTT) + a
        // packet interval and its latency.
        assert!(
            blackhole <= Duration::from_millis(60),
            "blackhole {blackhole:?}"
        );
        eprintln!("child-sa-lost (recovery {on}): blackhole {blackhole:?}");
        let n_b = l.tun_b.len();
        l.traffic(Duration::from_millis(100), Duration::from_millis(10));
        assert_eq!(l.tun_b.len(), n_b + 10);
    }
}

/// B reboots (a fresh agent) while A keeps sending: with recovery on, B builds one IKE
/// SA with INITIAL_CONTACT and traffic resumes within a few RTTs.
#[test]
fn peer_reboot_recovery_on() {
    let mut l = lab(recovery(false), recovery(true), false);
    let t = l.now;
    l.b = b_agent(false, recovery(true), 3, t);
    l.events_b.clear();
    let t_loss = l.now;
    l.traffic(Duration::from_secs(3), Duration::from_millis(10));
    let s = l.b.recovery_stats();
    assert_eq!(s.ike_initiated, 1, "exactly one initiation");
    assert_eq!(s.ike_established, 1);
    assert_eq!(initial_contacts(&l.events_b), 1);
    assert_eq!(
        s.deletes_sent, 1,
        "the stale SPI is deleted over the new IKE SA"
    );
    assert_eq!(count(&l.events_b, |k| *k == RecoveryKind::IkeInitiated), 1);
    assert_eq!(
        count(&l.events_b, |k| *k == RecoveryKind::IkeEstablished),
        1
    );
    // A: INITIAL_CONTACT replaced the old IKE SA.
    assert_eq!(Lab::established(&l.a, l.now), 1);
    assert_eq!(Lab::established(&l.b, l.now), 1);
    let resumed = l.first_at_b_after(t_loss).expect("traffic resumes");
    let blackhole = resumed - t_loss;
    assert!(
        blackhole <= 5 * RTT + Duration::from_millis(20),
        "blackhole {blackhole:?}"
    );
    eprintln!("peer-reboot recovery on: blackhole {blackhole:?}");
    let n_b = l.tun_b.len();
    l.traffic(Duration::from_millis(100), Duration::from_millis(10));
    assert_eq!(l.tun_b.len(), n_b + 10);
}

/// Same with recovery off: a blackhole until A's DPD declares B dead (and restarts).
#[test]
fn peer_reboot_recovery_off_waits_for_dpd() {
    let mut rec_a = recovery(false);
    rec_a.default.dpd_delay = Some(Duration::from_secs(5));
    rec_a.default.dpd_action = DpdAction::Restart;
    let mut l = lab(rec_a, recovery(false), false);
    let t = l.now;
    l.b = b_agent(false, recovery(false), 3, t);
    l.events_b.clear();
    let t_loss = l.now;
    l.traffic(Duration::from_secs(4), Duration::from_millis(100));
    assert!(l.first_at_b_after(t_loss).is_none(), "blackhole before DPD");
    l.traffic(Duration::from_secs(20), Duration::from_millis(100));
    let s = l.b.recovery_stats();
    assert_eq!(s.ike_initiated, 0, "B never initiates");
    assert_eq!(initial_contacts(&l.events_b), 0);
    assert_eq!(
        count(&l.events_b, |k| *k
            == RecoveryKind::Suppressed {
                why: SuppressWhy::RecoveryOff
            }),
        // One per hold-down (10 s) until A's restart at ~12 s ends the unknown SPIs.
        2
    );
    assert_eq!(l.a.recovery_stats().peers_dead, 1);
    let resumed = l.first_at_b_after(t_loss).expect("A restarts after DPD");
    let blackhole = resumed - t_loss;
    // dpd_delay (5 s after the last IKE message) + 7 s of retransmissions.
    assert!(
        blackhole >= Duration::from_secs(7),
        "recovery only after DPD: {blackhole:?}"
    );
    eprintln!("peer-reboot recovery off: blackhole {blackhole:?}");
}

/// B knows A only as a dynamic peer: recovery is impossible, said once per hold-down.
#[test]
fn dynamic_peer_no_initiation() {
    let mut l = lab(recovery(false), recovery(true), true);
    let t = l.now;
    l.b = b_agent(true, recovery(true), 3, t);
    l.events_b.clear();
    l.traffic(Duration::from_secs(5), Duration::from_millis(10));
    let s = l.b.recovery_stats();
    assert_eq!(s.ike_initiated, 0);
    assert_eq!(
        count(&l.events_b, |k| *k
            == RecoveryKind::Suppressed {
                why: SuppressWhy::DynamicPeer
            }),
        1
    );
    l.traffic(Duration::from_secs(6), Duration::from_millis(10));
    assert_eq!(
        count(&l.events_b, |k| *k
            == RecoveryKind::Suppressed {
                why: SuppressWhy::DynamicPeer
            }),
        2,
        "again after the hold-down"
    );
    assert_eq!(l.b.recovery_stats().ike_initiated, 0);
}

fn unprotected(notify: NotifyType, data: Vec<u8>, spi_i: u64) -> Vec<u8> {
    let mut m = Message::new(IkeHeader {
        spi_i,
        spi_r: 0x1111_2222_3333_4444,
        exchange_type: ExchangeType::INFORMATIONAL,
        flags: Flags::INITIATOR,
        message_id: 0,
    });
    m.payloads
        .push(esplab_ike::Payload::Notify(Notify::new(notify, data)));
    m.emit()
}

/// Unprotected INVALID_SPI / INVALID_IKE_SPI / Delete (§2.21.4) never change SA state.
#[test]
fn spoofed_notify_changes_nothing() {
    let mut l = lab(recovery(true), recovery(true), false);
    let a_spis = l.a.node().sa_info(l.now).len();
    let a_ike = l.a.ike_sas(l.now)[0].spi_i;
    let a_ike_r = l.a.ike_sas(l.now)[0].spi_r;
    let b_in: Vec<u32> =
        l.b.node()
            .sa_info(l.now)
            .iter()
            .filter(|s| s.direction == "in")
            .map(|s| s.spi)
            .collect();
    let dst = SocketAddr::new(A_IP.into(), 500);
    for (i, src_ip) in [C_IP, B_IP].into_iter().enumerate() {
        let src = SocketAddr::new(src_ip.into(), 500);
        for k in 0..50u32 {
            let spi = b_in[0];
            l.inject(
                src,
                dst,
                unprotected(NotifyType::INVALID_SPI, spi.to_be_bytes().to_vec(), a_ike),
            );
            l.inject(
                src,
                dst,
                unprotected(NotifyType::INVALID_IKE_SPI, vec![], a_ike ^ u64::from(k)),
            );
            // A Delete of the real IKE SA and of B's inbound SA (A's outbound), with the
            // real IKE SPIs but outside any SK payload.
            let mut m = Message::new(IkeHeader {
                spi_i: a_ike,
                spi_r: a_ike_r,
                exchange_type: ExchangeType::INFORMATIONAL,
                flags: Flags::NONE,
                message_id: 1 + k,
            });
            m.payloads
                .push(esplab_ike::Payload::Delete(esplab_ike::Delete {
                    protocol_id: esplab_ike::ProtocolId::ESP,
                    spis: vec![spi],
                }));
            m.payloads
                .push(esplab_ike::Payload::Delete(esplab_ike::Delete {
                    protocol_id: esplab_ike::ProtocolId::IKE,
                    spis: vec![],
                }));
            l.inject(src, dst, m.emit());
            l.step(Duration::from_millis(10));
        }
        let s = l.a.recovery_stats();
        // From C: no IKE SA there, nothing to check. From B's address: one check per
        // hold-down (the check itself succeeds: B is alive).
        assert_eq!(s.liveness_checks, i as u64, "from {src_ip}");
        assert_eq!(s.stale_sa_deleted, 0);
        assert_eq!(l.a.node().sa_info(l.now).len(), a_spis, "no SA deleted");
        assert_eq!(Lab::established(&l.a, l.now), 1);
    }
    l.step(Duration::from_secs(10));
    assert_eq!(l.a.recovery_stats().peers_dead, 0);
    assert_eq!(Lab::established(&l.a, l.now), 1);
}

/// 10^4 random SPIs from an unconfigured address and from the (rebooted) peer's address.
#[test]
fn spi_flood_is_bounded() {
    let mut rec = recovery(true);
    rec.max_tracked = 512;
    let mut l = lab(recovery(false), rec.clone(), false);
    let t = l.now;
    l.b = b_agent(false, rec.clone(), 3, t);
    l.events_b.clear();
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        // xorshift32: deterministic "random" SPIs.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x.max(256)
    };
    let dst = SocketAddr::new(B_IP.into(), 4500);
    for i in 0..10_000u32 {
        let spi = next();
        l.inject(SocketAddr::new(C_IP.into(), 4500), dst, forged_esp(spi, i));
        let spi = next();
        l.inject(SocketAddr::new(A_IP.into(), 4500), dst, forged_esp(spi, i));
        if i % 10 == 0 {
            l.step(Duration::from_millis(2));
        }
        assert!(l.b.recovery_tracked() <= rec.max_tracked);
    }
    l.step(Duration::from_secs(1));
    let s = l.b.recovery_stats();
    eprintln!("spi-flood: {s:?}, took {:?}", l.now - t);
    assert_eq!(
        s.ike_initiated, 1,
        "one initiation for the peer, none for C"
    );
    assert_eq!(s.ike_established, 1);
    // Deletes share the per-minute budget with the initiation (the flood lasts < 1 min).
    assert!(s.deletes_sent + s.ike_initiated <= u64::from(rec.global_per_minute));
    assert!(s.deletes_sent >= 1);
    assert_eq!(
        count(&l.events_b, |k| *k
            == RecoveryKind::Suppressed {
                why: SuppressWhy::NotConfigured
            }),
        1,
        "C is reported once per hold-down"
    );
    assert!(l.b.recovery_tracked() <= rec.max_tracked);
    // No initiation or message was ever sent to C.
    assert!(!l.events_b.iter().any(|e| matches!(e, AgentEvent::Ike(IkeEvent::MessageSent { remote, .. }) if remote.ip() == IpAddr::V4(C_IP))));
    let _ = OnInvalidSpi::Delete;
}

/// Receiving side: a protected N(INVALID_SPI) alone (Notify-only policy at B) removes
/// the pair at A and A re-creates it (on_peer_delete = restart).
#[test]
fn protected_invalid_spi_notify_acts_as_delete() {
    let mut rec_b = recovery(false);
    rec_b.default.on_invalid_spi = OnInvalidSpi::Notify;
    let mut l = lab(recovery(false), rec_b, false);
    l.b.node_mut().clear_all(l.now);
    let t_loss = l.now;
    l.traffic(Duration::from_secs(1), Duration::from_millis(10));
    let s = l.b.recovery_stats();
    assert_eq!((s.deletes_sent, s.notifies_sent), (0, 1));
    assert_eq!(l.a.recovery_stats().stale_sa_deleted, 1);
    assert!(
        l.first_at_b_after(t_loss).is_some(),
        "A re-created the pair"
    );
}

/// DPD counts ESP too (RFC 7296 §2.4): no probe while protected traffic arrives, a probe
/// once it stops for `dpd_delay`.
#[test]
fn dpd_waits_for_esp_silence() {
    let mut rec_a = recovery(false);
    rec_a.default.dpd_delay = Some(Duration::from_secs(2));
    let mut l = lab(rec_a, recovery(false), false);
    let probes = |ev: &[AgentEvent]| {
        ev.iter()
            .filter(|e| matches!(e, AgentEvent::Ike(IkeEvent::MessageSent { exchange, response: false, retransmit: false, .. }) if *exchange == ExchangeType::INFORMATIONAL))
            .count()
    };
    l.events_a.clear();
    // Only B→A traffic: A hears ESP from B all the time.
    let end = l.now + Duration::from_secs(10);
    while l.now < end {
        l.send_inner(false);
        l.step(Duration::from_millis(100));
    }
    assert_eq!(probes(&l.events_a), 0, "ESP from B is proof of liveness");
    l.step(Duration::from_secs(3));
    assert_eq!(probes(&l.events_a), 1, "silence: one liveness check");
    assert_eq!(l.a.recovery_stats().peers_dead, 0);
}

/// The unprotected N(INVALID_SPI) hints (RFC 7296 §1.5) B sent to `to`: checked to be
/// one-way INFORMATIONALs without SK payload, each naming its SPI; returns those SPIs.
fn hints_to(l: &Lab, to: Ipv4Addr) -> Vec<u32> {
    l.elsewhere
        .iter()
        .filter(|d| d.dst.ip() == IpAddr::V4(to))
        .map(|d| {
            assert_eq!(d.src, SocketAddr::new(B_IP.into(), 4500));
            assert_eq!(d.dst.port(), 4500);
            // NAT-T port: the non-ESP marker first (RFC 3948 §2.2).
            assert_eq!(&d.data[..4], &[0, 0, 0, 0]);
            let m = Message::parse(&d.data[4..]).unwrap();
            assert_eq!(m.header.exchange_type, ExchangeType::INFORMATIONAL);
            assert!(!m.header.flags.is_response());
            assert_eq!(m.header.message_id, 0);
            assert!(m.encrypted().is_none(), "no SK payload");
            assert_eq!(m.payloads.len(), 1);
            let n = m.notify(NotifyType::INVALID_SPI).expect("N(INVALID_SPI)");
            u32::from_be_bytes(n.data[..].try_into().unwrap())
        })
        .collect()
}

/// Rule 3 option off (the default): nothing ever goes to an unconfigured sender.
#[test]
fn unprotected_hint_off_sends_nothing() {
    let mut l = lab(recovery(false), recovery(false), false);
    let dst = SocketAddr::new(B_IP.into(), 4500);
    for i in 0..100u32 {
        l.inject(
            SocketAddr::new(C_IP.into(), 4500),
            dst,
            forged_esp(0xC0DE_0001, i),
        );
        l.step(Duration::from_millis(100));
    }
    assert!(hints_to(&l, C_IP).is_empty());
    assert_eq!(l.b.recovery_stats().hints_sent, 0);
    assert!(l.elsewhere.is_empty(), "nothing at all to C");
}

/// Rule 3 option on: one hint per source per hold-down whatever the flood, none to the
/// static peer (it gets rule 1/2), none beyond the global budget.
#[test]
fn unprotected_hint_once_per_hold_down() {
    let mut rec = recovery(false);
    rec.unprotected_hint = true;
    rec.hold_down = Duration::from_secs(10);
    let mut l = lab(recovery(false), rec.clone(), false);
    let t = l.now;
    l.b = b_agent(false, rec.clone(), 3, t);
    l.events_b.clear();
    let dst = SocketAddr::new(B_IP.into(), 4500);
    // 1000 packets with varying SPIs from C, and from A (static, recovery off) in 5 s.
    for i in 0..1000u32 {
        l.inject(
            SocketAddr::new(C_IP.into(), 4500),
            dst,
            forged_esp(0xC0DE_0000 + (i % 7), i),
        );
        l.inject(
            SocketAddr::new(A_IP.into(), 4500),
            dst,
            forged_esp(0xA000_0000 + i, i),
        );
        l.step(Duration::from_millis(5));
    }
    let hints = hints_to(&l, C_IP);
    assert_eq!(
        hints,
        vec![0xC0DE_0000],
        "exactly one hint, naming the first SPI"
    );
    assert_eq!(l.b.recovery_stats().hints_sent, 1);
    assert_eq!(count(&l.events_b, |k| *k == RecoveryKind::HintSent), 1);
    assert!(
        l.elsewhere.iter().all(|d| d.dst.ip() == IpAddr::V4(C_IP)),
        "only C gets hints"
    );
    assert!(!l
        .events_b
        .iter()
        .any(|e| matches!(e, AgentEvent::Recovery(r)
        if r.kind == RecoveryKind::HintSent && r.src == Some(IpAddr::V4(A_IP)))));
    // After the hold-down: one more.
    l.step(Duration::from_secs(6));
    l.inject(
        SocketAddr::new(C_IP.into(), 4500),
        dst,
        forged_esp(0xC0DE_0042, 1),
    );
    l.step(Duration::from_millis(10));
    assert_eq!(hints_to(&l, C_IP), vec![0xC0DE_0000, 0xC0DE_0042]);

    // Many sources: the global budget caps the hints.
    let mut rec = recovery(false);
    rec.unprotected_hint = true;
    rec.global_per_minute = 5;
    let t = l.now;
    l.b = b_agent(false, rec, 4, t);
    l.elsewhere.clear();
    for i in 0..50u8 {
        let src = SocketAddr::new(Ipv4Addr::new(203, 0, 113, 100 + i).into(), 4500);
        l.inject(src, dst, forged_esp(0xD000_0000 + u32::from(i), 1));
        l.step(Duration::from_millis(1));
    }
    assert_eq!(l.elsewhere.len(), 5, "global budget");
    assert_eq!(l.b.recovery_stats().hints_sent, 5);
}

// ---------------------------------------------------------------------------------------
// Peer Deletes (esplab issue #5/#8 findings): only pairs actually removed count as stale;
// a Delete(IKE) of the peer re-creates the IKE SA with `on_peer_delete = "restart"`; each
// peer's own retransmission schedule bounds a recovery attempt.
// ---------------------------------------------------------------------------------------

/// Advances `l` by `dur` in steps shorter than the wire latency, dropping every datagram
/// for which `drop` holds before it can arrive.
fn step_dropping(l: &mut Lab, dur: Duration, drop: impl Fn(&common::Dgram) -> bool) {
    let end = l.now + dur;
    while l.now < end {
        l.collect();
        l.wire.retain(|d| !drop(d));
        let next = (l.now + Duration::from_millis(4)).min(end);
        l.run_until(next);
    }
    l.collect();
    l.wire.retain(|d| !drop(d));
}

fn to(ip: Ipv4Addr) -> impl Fn(&common::Dgram) -> bool {
    move |d| d.dst.ip() == IpAddr::V4(ip)
}

/// RFC 7296 §1.4.1 / §3.11: a protected Delete(ESP) naming SPIs A never had deletes
/// nothing; A neither logs nor counts a removed pair for them (it did, 60 times, in the
/// attack flood test), only the debug counter `unknown_spi_deletes`.
#[test]
fn peer_delete_of_unknown_spis_counts_no_removed_pair() {
    let mut l = lab(recovery(false), recovery(false), false);
    let before = l.a.node().sa_info(l.now).len();
    l.events_a.clear();
    for i in 0..5u32 {
        let now = l.now;
        l.b.notify_invalid_spi(now, A_IP.into(), 0xBAD0_0000 + i)
            .unwrap();
        l.step(Duration::from_millis(50));
    }
    let s = l.a.recovery_stats();
    assert_eq!(s.stale_sa_deleted, 0, "no pair was removed");
    assert_eq!(s.unknown_spi_deletes, 5);
    assert_eq!(
        count(&l.events_a, |k| *k
            == RecoveryKind::StaleSaDeletedOnPeerRequest),
        0
    );
    assert!(!l
        .events_a
        .iter()
        .any(|e| matches!(e, AgentEvent::ChildRemoved { .. })));
    assert_eq!(l.a.node().sa_info(l.now).len(), before);
    let n_b = l.tun_b.len();
    l.traffic(Duration::from_millis(100), Duration::from_millis(10));
    assert_eq!(l.tun_b.len(), n_b + 10, "the tunnel is untouched");

    // A routine CHILD SA rekey: the Delete of the replaced pair is no stale SA either.
    let spi = l.a.ike_sas(l.now)[0].children[0].inbound_spi;
    let now = l.now;
    l.a.rekey_child(now, spi).unwrap();
    l.step(Duration::from_secs(1));
    assert!(l
        .events_b
        .iter()
        .any(|e| matches!(e, AgentEvent::ChildRemoved { .. })));
    assert_eq!(l.a.recovery_stats().stale_sa_deleted, 0);
    assert_eq!(l.b.recovery_stats().stale_sa_deleted, 0);
    assert_eq!(l.b.recovery_stats().unknown_spi_deletes, 0);
}

/// B deletes its IKE SA (Delete(IKE)), re-initiates and crashes half-way; it comes back
/// empty and, like the RELIABILITY.md lab's B, does not initiate. A
/// (`on_peer_delete = "restart"`) must bring the IKE SA and the CHILD SA back.
#[test]
fn peer_delete_of_ike_sa_then_crash_is_restarted() {
    let mut l = lab(recovery(false), recovery(false), false);
    let now = l.now;
    l.b.terminate(now, "a").unwrap();
    l.b.initiate(now, "a").unwrap();
    // A gets the Delete(IKE) and B's IKE_SA_INIT; B crashes before A's answers arrive.
    l.step(Duration::from_millis(6));
    assert_eq!(Lab::established(&l.a, l.now), 0, "A took the Delete");
    step_dropping(&mut l, Duration::from_millis(50), to(B_IP));
    let t = l.now;
    l.b = b_agent(false, recovery(false), 3, t);
    l.events_a.clear();
    let t_crash = l.now;
    l.traffic(Duration::from_secs(120), Duration::from_millis(100));
    assert_eq!(Lab::established(&l.a, l.now), 1, "A initiated again");
    assert_eq!(Lab::established(&l.b, l.now), 1);
    let resumed = l.first_at_b_after(t_crash).expect("traffic resumes");
    // Bound: B's half-open IKE SA at A expires (30 s) + a hold-down (10 s) + one attempt.
    assert!(
        resumed - t_crash <= Duration::from_secs(60),
        "{:?}",
        resumed - t_crash
    );
    assert!(l.a.recovery_stats().ike_restarts >= 1);
    assert!(count(&l.events_a, |k| *k == RecoveryKind::IkeRestarted) >= 1);
    assert!(
        !l.a.recovery_status(l.now)[0].restart_pending,
        "done once up"
    );
}

/// RFC 7296 §2.18: the Delete(IKE) of the old IKE SA after an IKE SA rekey is no peer
/// delete to restart from.
#[test]
fn ike_sa_rekey_delete_is_no_restart() {
    let mut l = lab(recovery(false), recovery(false), false);
    let now = l.now;
    l.a.rekey_ike(now, "b").unwrap();
    l.step(Duration::from_secs(1));
    assert!(l.events_b.iter().any(|e| matches!(e,
        AgentEvent::Ike(IkeEvent::DeleteReceived { protocol, .. })
            if *protocol == esplab_ike::ProtocolId::IKE)));
    for ag in [&l.a, &l.b] {
        assert_eq!(Lab::established(ag, l.now), 1);
        assert!(!ag.recovery_status(l.now)[0].restart_pending);
    }
    l.step(Duration::from_secs(60));
    assert_eq!(l.b.recovery_stats().ike_restarts, 0);
    assert_eq!(l.a.recovery_stats().ike_restarts, 0);
}

/// The restart is bounded: with B gone for good, A retries once per hold-down at most,
/// then with a doubling backoff; and a `terminate` on our side is never undone.
#[test]
fn peer_delete_of_ike_sa_restart_backs_off_and_terminate_is_final() {
    let mut l = lab(recovery(false), recovery(false), false);
    let now = l.now;
    l.b.terminate(now, "a").unwrap();
    // A gets the Delete(IKE) (and initiates at once); then B is gone.
    l.step(Duration::from_millis(6));
    assert_eq!(Lab::established(&l.a, l.now), 0);
    assert!(l.a.recovery_status(l.now)[0].restart_pending);
    step_dropping(&mut l, Duration::from_secs(600), to(B_IP));
    let s = l.a.recovery_stats();
    // Hold-down 10 s, backoff 20, 40, 80, 160, 300 s: at most ~7 attempts in 10 minutes.
    assert!(
        (2..=8).contains(&s.ike_restarts),
        "{} restarts in 10 minutes",
        s.ike_restarts
    );
    let starts: Vec<Instant> = l
        .events_a
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Recovery(r) if r.kind == RecoveryKind::IkeRestarted => Some(r.at),
            _ => None,
        })
        .collect();
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(10), "{starts:?}");
    }

    // Our own terminate: no restart however long we wait (B does not initiate either:
    // nothing arrives from it).
    let mut l = lab(recovery(false), recovery(false), false);
    let now = l.now;
    l.a.terminate(now, "b").unwrap();
    l.b.terminate(now, "a").unwrap();
    step_dropping(&mut l, Duration::from_secs(120), to(B_IP));
    assert_eq!(l.a.recovery_stats().ike_restarts, 0);
    assert!(l.a.ike_sas(l.now).is_empty());
}

/// A recovery attempt counts as failed when the peer's own retransmission schedule
/// (`IkePeerConfig::retransmit`) runs out, not the node-wide one (7 s here).
#[test]
fn recovery_attempt_uses_the_peers_retransmission_schedule() {
    let mut l = lab(recovery(false), recovery(true), false);
    // B reboots with a peer schedule of 1+2+4+8+16 = 31 s.
    let mut pb = peer_cfg("a", B_IP, Some(A_IP), ("b.example", "a.example"), (2, 1));
    pb.retransmit = Some(Retransmit {
        tries: 4,
        ..retransmit()
    });
    let t = l.now;
    l.b = agent(node_cfg("b", B_IP), pb, recovery(true), 3, t);
    // A's ESP makes B initiate; B's first messages are lost for 10 s (beyond the node-wide
    // 7 s, within B's own 31 s).
    let end = l.now + Duration::from_secs(10);
    while l.now < end {
        l.send_inner(true);
        step_dropping(&mut l, Duration::from_millis(100), to(A_IP));
    }
    let s = l.b.recovery_stats();
    assert_eq!(s.ike_initiated, 1);
    assert_eq!(s.recovery_failed, 0, "the attempt is still running");
    l.traffic(Duration::from_secs(10), Duration::from_millis(100));
    let s = l.b.recovery_stats();
    assert_eq!((s.ike_established, s.recovery_failed), (1, 0));
    assert_eq!(Lab::established(&l.b, l.now), 1);
}
