//! A tiny in-memory "wire" between two endpoints on a virtual clock, for the exchange
//! tests: it moves `Output::Send` datagrams to the endpoint owning the destination IP,
//! records everything else, and lets a test drop, duplicate or hold chosen messages.
#![allow(dead_code)]

use esplab_esp::{InboundSa, OutboundSa};
use esplab_ike::proposal::ProposalSpec;
use esplab_ike::{
    ChildSa, Endpoint, EndpointConfig, ExchangeType, Identity, IkeEvent, IkePeerConfig, IkeSaState,
    Message, Output, SpiAllocator,
};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Hands out SPIs from a per-node range and remembers releases.
#[derive(Debug, Clone)]
pub struct Spis {
    pub next: u32,
    pub released: Vec<u32>,
}

impl SpiAllocator for Spis {
    fn allocate_inbound_spi(&mut self) -> u32 {
        self.next += 1;
        self.next
    }
    fn release_inbound_spi(&mut self, spi: u32) {
        self.released.push(spi);
    }
}

/// One endpoint and what it has output so far.
pub struct Node {
    pub ep: Endpoint,
    pub ip: std::net::IpAddr,
    pub spis: Spis,
    /// Every output in order (Send included).
    pub log: Vec<Output>,
    /// Installed CHILD SA pairs by inbound SPI (RemoveChild takes them out).
    pub installed: BTreeMap<u32, ChildSa>,
    /// Inbound SPIs whose outbound half is in use.
    pub active: BTreeMap<u32, bool>,
}

impl Node {
    pub fn new(ep: Endpoint, ip: &str, spi_base: u32) -> Self {
        Node {
            ep,
            ip: ip.parse().unwrap(),
            spis: Spis {
                next: spi_base,
                released: vec![],
            },
            log: vec![],
            installed: BTreeMap::new(),
            active: BTreeMap::new(),
        }
    }

    pub fn events(&self) -> Vec<IkeEvent> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn installs(&self) -> Vec<ChildSa> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::InstallChild(c) => Some((**c).clone()),
                _ => None,
            })
            .collect()
    }

    pub fn removes(&self) -> Vec<(u32, u32, Duration)> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::RemoveChild {
                    inbound_spi,
                    outbound_spi,
                    linger,
                    ..
                } => Some((*inbound_spi, *outbound_spi, *linger)),
                _ => None,
            })
            .collect()
    }

    pub fn established(&self, now: Instant) -> usize {
        self.ep
            .ike_sas(now)
            .iter()
            .filter(|s| s.state == IkeSaState::Established)
            .count()
    }
}

/// A datagram on the wire.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

impl Packet {
    pub fn exchange(&self) -> ExchangeType {
        ExchangeType(self.data[18])
    }
    pub fn is_response(&self) -> bool {
        self.data[19] & 0x20 != 0
    }
    pub fn message_id(&self) -> u32 {
        u32::from_be_bytes(self.data[20..24].try_into().unwrap())
    }
}

pub struct Wire {
    pub now: Instant,
    pub a: Node,
    pub b: Node,
    pub in_flight: VecDeque<Packet>,
    /// Everything ever sent, in order.
    pub history: Vec<Packet>,
}

pub const A_ADDR: &str = "10.0.0.1:4500";
pub const B_ADDR: &str = "10.0.0.2:4500";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A peer configuration with host-to-host selectors and no automatic lifetimes.
pub fn peer(name: &str, local: &str, remote: Option<&str>, me: &str, them: &str) -> IkePeerConfig {
    let mut p = IkePeerConfig::new(
        name,
        Identity::fqdn(me),
        Some(Identity::fqdn(them)),
        b"esplab shared secret",
    );
    p.local_addr = Some(addr(local));
    p.remote_addr = remote.map(addr);
    p.ike_lifetime = None;
    p.child_lifetime = None;
    p
}

pub fn with_suites(mut p: IkePeerConfig, ike: &str, esp: &str) -> IkePeerConfig {
    p.ike_proposals = ProposalSpec::parse_ike_list(ike).unwrap();
    p.esp_proposals = ProposalSpec::parse_esp_list(esp).unwrap();
    p
}

pub fn endpoint(peers: Vec<IkePeerConfig>, seed: u64, t0: Instant) -> Endpoint {
    endpoint_with(peers, seed, t0, |_| {})
}

/// [`endpoint`] with endpoint-wide settings changed by `tweak`.
pub fn endpoint_with(
    peers: Vec<IkePeerConfig>,
    seed: u64,
    t0: Instant,
    tweak: impl FnOnce(&mut EndpointConfig),
) -> Endpoint {
    let mut cfg = EndpointConfig {
        peers,
        rng_seed: Some(seed),
        ..Default::default()
    };
    tweak(&mut cfg);
    Endpoint::new(cfg, t0).unwrap()
}

/// The suites most tests negotiate.
pub const GCM_IKE: &str = "aes128gcm16-prfsha256-x25519";
pub const GCM_ESP: &str = "aes128gcm16";

/// A's peer config for B (A is "sun" at [`A_ADDR`], its peer is named "moon") and B's for
/// A (B is "moon" at [`B_ADDR`], its peer is named "sun"), using these suites.
pub fn configs(ike: &str, esp: &str) -> (IkePeerConfig, IkePeerConfig) {
    (
        with_suites(peer("moon", A_ADDR, Some(B_ADDR), "sun", "moon"), ike, esp),
        with_suites(peer("sun", B_ADDR, Some(A_ADDR), "moon", "sun"), ike, esp),
    )
}

/// [`configs`] with [`GCM_IKE`] and [`GCM_ESP`].
pub fn gcm_configs() -> (IkePeerConfig, IkePeerConfig) {
    configs(GCM_IKE, GCM_ESP)
}

/// A ("sun", 10.0.0.1) and B ("moon", 10.0.0.2), each with a peer config for the other
/// using these suites.
pub fn pair(ike: &str, esp: &str) -> Wire {
    let (a, b) = configs(ike, esp);
    Wire::of(a, b)
}

/// The only installed CHILD SA pair of a node: (inbound SPI, outbound SPI).
pub fn only_pair(n: &Node) -> (u32, u32) {
    assert_eq!(n.installed.len(), 1, "{:x?}", n.installed.keys());
    let c = n.installed.values().next().unwrap();
    (c.inbound.spi, c.outbound.spi)
}

impl Wire {
    /// A and B with one peer config each, RNG seeds 1 and 2, the clock starting now.
    pub fn of(a: IkePeerConfig, b: IkePeerConfig) -> Self {
        Self::seeded(a, b, (1, 2))
    }

    /// [`Wire::of`] with these RNG seeds for A and B.
    pub fn seeded(a: IkePeerConfig, b: IkePeerConfig, (seed_a, seed_b): (u64, u64)) -> Self {
        let t0 = Instant::now();
        Wire::new(
            t0,
            endpoint(vec![a], seed_a, t0),
            endpoint(vec![b], seed_b, t0),
        )
    }

    pub fn new(now: Instant, a: Endpoint, b: Endpoint) -> Self {
        Wire {
            now,
            a: Node::new(a, "10.0.0.1", 0xa000_0000),
            b: Node::new(b, "10.0.0.2", 0xb000_0000),
            in_flight: VecDeque::new(),
            history: vec![],
        }
    }

    fn drain_node(node: &mut Node, in_flight: &mut VecDeque<Packet>, history: &mut Vec<Packet>) {
        while let Some(o) = node.ep.poll_output() {
            match &o {
                Output::Send {
                    local,
                    remote,
                    data,
                } => {
                    let p = Packet {
                        src: *local,
                        dst: *remote,
                        data: data.clone(),
                    };
                    history.push(p.clone());
                    in_flight.push_back(p);
                }
                Output::InstallChild(c) => {
                    node.active.insert(c.inbound.spi, c.outbound_active);
                    node.installed.insert(c.inbound.spi, (**c).clone());
                }
                Output::RemoveChild { inbound_spi, .. } => {
                    node.installed.remove(inbound_spi);
                    node.active.remove(inbound_spi);
                }
                Output::ActivateOutbound { inbound_spi, .. } => {
                    node.active.insert(*inbound_spi, true);
                }
                Output::Event(_) => {}
                Output::IkeKeys(_) => {}
            }
            node.log.push(o);
        }
    }

    /// Collects both endpoints' outputs.
    pub fn drain(&mut self) {
        Self::drain_node(&mut self.a, &mut self.in_flight, &mut self.history);
        Self::drain_node(&mut self.b, &mut self.in_flight, &mut self.history);
    }

    /// Takes the next packet off the wire without delivering it.
    pub fn pop(&mut self) -> Option<Packet> {
        self.drain();
        self.in_flight.pop_front()
    }

    /// Delivers a packet to the node owning its destination IP.
    pub fn deliver(&mut self, p: &Packet) {
        let now = self.now;
        let node = if p.dst.ip() == self.a.ip {
            &mut self.a
        } else if p.dst.ip() == self.b.ip {
            &mut self.b
        } else {
            return;
        };
        node.ep
            .handle_datagram(now, p.dst, p.src, &p.data, &mut node.spis);
        self.drain();
    }

    /// Delivers the next packet; false when the wire is empty.
    pub fn step(&mut self) -> bool {
        match self.pop() {
            Some(p) => {
                self.deliver(&p);
                true
            }
            None => false,
        }
    }

    /// Delivers until the wire is empty.
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    /// Delivers until empty, dropping packets `drop` selects.
    pub fn run_dropping(&mut self, mut drop: impl FnMut(&Packet) -> bool) {
        for _ in 0..10_000 {
            let Some(p) = self.pop() else { return };
            if !drop(&p) {
                self.deliver(&p);
            }
        }
        panic!("the exchange does not settle");
    }

    /// Runs the clock to `deadline`, firing timers and delivering packets (through
    /// `drop`, which may discard them) as they come.
    pub fn run_until_with(&mut self, deadline: Instant, mut drop: impl FnMut(&Packet) -> bool) {
        for _ in 0..100_000 {
            self.run_dropping(&mut drop);
            let next = [self.a.ep.poll_timeout(), self.b.ep.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= deadline => {
                    self.now = self.now.max(t);
                    self.timeout();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return;
                }
            }
        }
        panic!("timers do not settle");
    }

    pub fn run_until(&mut self, deadline: Instant) {
        self.run_until_with(deadline, |_| false)
    }

    /// Fires both endpoints' timers at the current time.
    pub fn timeout(&mut self) {
        let now = self.now;
        self.a.ep.handle_timeout(now, &mut self.a.spis);
        self.b.ep.handle_timeout(now, &mut self.b.spis);
        self.drain();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.timeout();
    }

    /// A initiates to B and everything is delivered.
    pub fn establish(&mut self) {
        self.a
            .ep
            .initiate(self.now, "moon", &mut self.a.spis)
            .unwrap();
        self.run();
    }
}

/// Checks that the two nodes hold mirror-image CHILD SA pairs (the inbound SA of one is
/// the outbound SA of the other: same SPI, same keys) and that they really protect
/// traffic both ways with the ESP engine. Returns the number of pairs.
pub fn assert_pairs_match(w: &Wire) -> usize {
    assert_eq!(
        w.a.installed.len(),
        w.b.installed.len(),
        "pair counts differ: {:x?} vs {:x?}",
        w.a.installed.keys().collect::<Vec<_>>(),
        w.b.installed.keys().collect::<Vec<_>>()
    );
    for (spi, ca) in &w.a.installed {
        let cb =
            w.b.installed
                .values()
                .find(|c| c.outbound.spi == *spi)
                .unwrap_or_else(|| panic!("B has no outbound SA {spi:08x}"));
        assert_eq!(cb.inbound.spi, ca.outbound.spi);
        for (tx, rx) in [(&cb.outbound, &ca.inbound), (&ca.outbound, &cb.inbound)] {
            assert_eq!(tx.spi, rx.spi);
            assert_eq!(tx.alg, rx.alg);
            assert_eq!(*tx.enc_key, *rx.enc_key);
            assert_eq!(*tx.integ_key, *rx.integ_key);
            assert_eq!(tx.esn, rx.esn);
            esp_round_trip(tx, rx);
        }
        assert_eq!(ca.local_ts, cb.remote_ts);
        assert_eq!(ca.remote_ts, cb.local_ts);
        assert_eq!(ca.mode, cb.mode);
    }
    w.a.installed.len()
}

/// Encrypts a packet with `tx` and decrypts it with `rx` (esplab-esp).
pub fn esp_round_trip(tx: &esplab_esp::SaParams, rx: &esplab_esp::SaParams) {
    let out = OutboundSa::new(tx).unwrap();
    let mut inb = InboundSa::new(rx).unwrap();
    let payload = b"\x45\x00\x00\x14inner packet through the tunnel";
    let start = out.header_len();
    let mut buf = vec![0u8; start + payload.len() + out.max_trailer_len()];
    buf[start..start + payload.len()].copy_from_slice(payload);
    let e = out
        .encap_slice(&mut buf, start..start + payload.len(), 4, None)
        .unwrap();
    let d = inb.decap(&mut buf[e.esp.clone()]).unwrap();
    assert_eq!(&buf[e.esp][d.payload], payload);
}

/// The payload types of a plaintext message (IKE_SA_INIT).
pub fn payload_types(data: &[u8]) -> Vec<String> {
    Message::parse(data)
        .unwrap()
        .payloads
        .iter()
        .map(|p| match p {
            esplab_ike::Payload::Notify(n) => format!("N({})", n.notify_type),
            other => format!("{}", other.payload_type()),
        })
        .collect()
}
