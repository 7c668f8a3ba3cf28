//! Bulk TCP through two `esplab peer`s in network namespaces (the two-peers lab of
//! tests/peer_netns.rs): the batched, offloaded datapath must deliver a byte stream intact.
//!
//! A TCP transfer is what makes every fast-path piece work: the kernel hands A's TUN reads
//! unsegmented super-packets (TSO/GSO) that tun-rs splits, A sends the ESP packets of one
//! super-packet as one UDP GSO send, B receives them as one UDP GRO run, decrypts each in
//! place and coalesces them again (esplab's own GRO, `crates/netio/src/gro.rs`) into one
//! TUN write gathered from the receive buffers (tun-rs's GRO with
//! `ESPLAB_DATAPATH=no-tun-writev`). The test checks the bytes (count and
//! hash at both ends), that nothing was dropped, and that the TUN devices did see fewer,
//! larger packets than the daemons encrypted and decrypted (so the offload was in use).
//! A burst of UDP datagrams takes the same way back into B's TUN as UDP super-packets
//! (`GSO_UDP_L4`), which B's kernel splits into the datagrams again: each must arrive
//! once, whole and unchanged.
//!
//! Needs root, `ip` and `ping` (see tests/peer_netns.rs; `ESPLAB_SKIP_NETNS=1` skips).
//! Traffic stays in 198.18.0.0/15 (RFC 2544).

#[path = "peer_netns/lab.rs"]
#[allow(dead_code)]
mod lab;

use lab::{netns_available, run, Encap, Lab, Peer};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes sent: enough for many full-size super-packets, small enough for a debug build.
const BYTES: u64 = 16 << 20;
const PORT: u16 = 5301;
const HELPER_ENV: &str = "ESPLAB_TEST_TCP_HELPER";

/// FNV-1a, 64 bit: enough to tell a corrupted or reordered stream.
fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The stream's byte at offset `i` (not periodic at any packet size).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 20) as u8
}

/// Datagrams of the UDP burst, and their size: [`UDP_SIZE`] bytes, but every 50th shorter
/// (a shorter datagram ends a UDP super-packet).
const DATAGRAMS: u64 = 6000;
const UDP_SIZE: usize = 1200;

fn udp_len(seq: u64) -> usize {
    if seq % 50 == 49 {
        300
    } else {
        UDP_SIZE
    }
}

/// Datagram `seq`: its number, then pattern bytes that depend on it.
fn udp_fill(seq: u64, buf: &mut [u8]) -> usize {
    let n = udp_len(seq);
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    for (j, b) in buf[8..n].iter_mut().enumerate() {
        *b = pattern(seq * 7919 + j as u64);
    }
    n
}

/// Runs inside a namespace: `sink ADDR:PORT` accepts one connection and prints the byte
/// count and hash; `source DST:PORT BYTES` connects (retrying while the sink starts) and
/// sends. `udpsink ADDR:PORT` takes datagrams until none came for 2 s and prints how many
/// arrived intact, how many were damaged or duplicated; `udpsource DST:PORT` sends
/// [`DATAGRAMS`] in bursts of 32. Without its environment variable it does nothing.
#[test]
#[ignore = "helper process of the bulk TCP and UDP burst tests"]
fn helper_tcp() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split_whitespace().collect();
    let addr: SocketAddr = f[1].parse().unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut n = 0u64;
    match f[0] {
        "udpsink" => {
            let s = UdpSocket::bind(addr).unwrap();
            println!("LISTENING");
            std::io::stdout().flush().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut seen = vec![false; DATAGRAMS as usize];
            let (mut bad, mut dup) = (0u64, 0u64);
            let mut buf = vec![0u8; 1 << 16];
            let mut want = vec![0u8; UDP_SIZE];
            while let Ok(k) = s.recv(&mut buf) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let seq = buf[..k.min(8)]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                if seq >= DATAGRAMS || k != udp_fill(seq, &mut want) || buf[..k] != want[..k] {
                    bad += 1;
                } else if std::mem::replace(&mut seen[seq as usize], true) {
                    dup += 1;
                } else {
                    n += 1;
                }
            }
            println!("UDP got={n} bad={bad} dup={dup}");
            return;
        }
        "udpsource" => {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut buf = vec![0u8; UDP_SIZE];
            for seq in 0..DATAGRAMS {
                let k = udp_fill(seq, &mut buf);
                s.send_to(&buf[..k], addr).unwrap();
                if seq % 32 == 31 {
                    // Paced, so that B's socket keeps up; each burst still reaches B as
                    // one receive batch.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            println!("UDP sent={DATAGRAMS}");
            return;
        }
        "sink" => {
            let l = TcpListener::bind(addr).unwrap();
            println!("LISTENING");
            std::io::stdout().flush().unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = s.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                fnv(&mut h, &buf[..k]);
                n += k as u64;
            }
        }
        "source" => {
            let total: u64 = f[2].parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("connect: {e}, retrying");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("connect {addr}: {e}"),
                }
            };
            s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while n < total {
                let k = (total - n).min(buf.len() as u64) as usize;
                for (j, b) in buf[..k].iter_mut().enumerate() {
                    *b = pattern(n + j as u64);
                }
                s.write_all(&buf[..k]).unwrap();
                fnv(&mut h, &buf[..k]);
                n += k as u64;
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for the sink to close: every byte was taken.
            let _ = s.read(&mut [0u8; 1]);
        }
        other => panic!("unknown helper mode {other}"),
    }
    println!("TCP bytes={n} hash={h:016x}");
}

fn helper(ns: &str, spec: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", "helper_tcp", "--ignored", "--nocapture"])
        .env(HELPER_ENV, spec);
    c
}

fn result_line(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.starts_with("TCP bytes="))
        .map(str::to_string)
}

/// RX and TX packet counts of a link in a namespace.
fn link_packets(ns: &str, dev: &str) -> (u64, u64) {
    let path = |d: &str| format!("/sys/class/net/{dev}/statistics/{d}_packets");
    let o = run(
        Command::new("ip").args(["netns", "exec", ns, "cat", &path("rx"), &path("tx")]),
        Duration::from_secs(10),
    );
    assert!(o.ok(), "reading {dev} statistics in {ns}: {}", o.stderr);
    let v: Vec<u64> = o
        .stdout
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

#[test]
fn bulk_tcp_through_the_offloaded_datapath() {
    if !netns_available("bulk_tcp_through_the_offloaded_datapath") {
        return;
    }
    bulk_tcp(Lab::up("offl", Encap::Udp, 4));
}

/// The same transfer over raw ESP (IP protocol 50): A sends with `sendmmsg` (one message
/// per packet, raw IP has no GSO), B reads with `recvmmsg`, each packet into a receive slot
/// of its own, and writes the TCP segments coalesced and gathered from those slots as on
/// the UDP path.
#[test]
fn bulk_tcp_over_raw_esp() {
    if !netns_available("bulk_tcp_over_raw_esp") {
        return;
    }
    bulk_tcp(Lab::up("offesp", Encap::Esp, 4));
}

/// The raw ESP transfer with batching off (`ESPLAB_DATAPATH=no-batch`): one `read` and one
/// `sendto` per packet, which the call counters show.
#[test]
fn bulk_tcp_over_raw_esp_without_batching() {
    if !netns_available("bulk_tcp_over_raw_esp_without_batching") {
        return;
    }
    let lab = Lab::up_env("offesp1", Encap::Esp, 4, &[("ESPLAB_DATAPATH", "no-batch")]);
    let t = bulk_tcp_on(&lab);
    assert_eq!(t.tx_calls_a, t.out_a, "A: one send per ESP packet");
    assert_eq!(t.rx_calls_b, t.in_b, "B: one receive per ESP packet");
}

/// The UDP transfer with the decrypted packets copied into tun-rs's writer and coalesced
/// by tun-rs (`ESPLAB_DATAPATH=no-tun-writev`, the path before esplab's own GRO).
#[test]
fn bulk_tcp_through_tun_rs_gro() {
    if !netns_available("bulk_tcp_through_tun_rs_gro") {
        return;
    }
    let lab = Lab::up_env(
        "offrs",
        Encap::Udp,
        4,
        &[("ESPLAB_DATAPATH", "no-tun-writev")],
    );
    bulk_tcp_on(&lab).assert_batched();
    assert_eq!(lab.counter(Peer::B, "TUN_TCP_SUPER_PACKETS"), 0);
    assert!(
        lab.log(Peer::B).contains("no-tun-writev"),
        "{}",
        lab.log(Peer::B)
    );
}

/// The same transfer with the TUN → ESP direction on a thread of its own
/// (`ESPLAB_DATAPATH=tx-thread`, what `[datapath] tx_thread = true` does): the bytes,
/// the counters (kept by that thread, reported by the daemon) and the offload all as above,
/// and the outbound SA's own numbers in `show sa` too.
#[test]
fn bulk_tcp_with_a_sending_thread() {
    if !netns_available("bulk_tcp_with_a_sending_thread") {
        return;
    }
    let lab = Lab::up_env("offtx", Encap::Udp, 4, &[("ESPLAB_DATAPATH", "tx-thread")]);
    let out_before = lab.counter(Peer::A, "OUT_PACKETS");
    let t = bulk_tcp_on(&lab);
    t.assert_batched();
    let out_a = t.out_a;
    for p in [Peer::A, Peer::B] {
        assert!(
            lab.log(p).contains("TUN -> ESP on a thread of its own"),
            "{}",
            lab.log(p)
        );
    }
    let sa_out: u64 = lab
        .sas(Peer::A)
        .iter()
        .filter(|s| s["direction"] == "out")
        .map(|s| s["packets"].as_u64().unwrap())
        .sum();
    assert!(
        sa_out >= out_before + out_a,
        "show sa: {sa_out} outbound packets, counters {out_before} + {out_a}"
    );
}

fn bulk_tcp(lab: Lab) {
    bulk_tcp_on(&lab).assert_batched();
    // esplab's own GRO wrote the TCP super-packets.
    let n = lab.counter(Peer::B, "TUN_TCP_SUPER_PACKETS");
    assert!(
        n > 0,
        "B wrote no TCP super-packets: {:?}",
        lab.counters(Peer::B)
    );
}

/// UDP datagrams A → B: B writes them to its TUN coalesced (`GSO_UDP_L4`, when the device
/// has USO: Linux 6.2+), and its kernel hands each datagram to the socket as it was sent.
#[test]
fn udp_burst_through_the_offloaded_datapath() {
    if !netns_available("udp_burst_through_the_offloaded_datapath") {
        return;
    }
    let lab = Lab::up("offudp", Encap::Udp, 4);
    tunnel_carries(&lab);
    let b0 = lab.counters(Peer::B);
    let tun_b0 = link_packets(&lab.ns_b, "esplab-b");
    let (mut sink, sink_addr) = spawn_sink(&lab, "udpsink");
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l == "LISTENING"),
        "the UDP sink did not start"
    );
    let src = run(
        &mut helper(&lab.ns_a, &format!("udpsource {sink_addr}")),
        Duration::from_secs(120),
    );
    assert!(src.ok(), "source failed:\n{}\n{}", src.stdout, src.stderr);
    let got = lines
        .map_while(Result::ok)
        .find(|l| l.starts_with("UDP got="))
        .unwrap_or_else(|| panic!("the UDP sink printed no result"));
    let _ = sink.wait();
    let field = |k: &str| -> u64 {
        got.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {got:?}"))
    };
    // Every datagram that arrived is whole and came once; UDP may lose some to the
    // sink's socket buffer on a loaded machine, the tunnel may not.
    assert_eq!((field("bad="), field("dup=")), (0, 0), "{got}");
    let b1 = lab.counters(Peer::B);
    let d = |k: &str| delta(&b1, &b0, k);
    for k in ["IN_DROPS", "TUN_TX_ERRORS", "UNDERLAY_RX_ERRORS"] {
        assert_eq!(d(k), 0, "B {k}: {b1:?}");
    }
    let in_b = d("IN_PACKETS");
    assert!(in_b >= DATAGRAMS, "B decrypted {in_b} of {DATAGRAMS}");
    assert!(
        field("got=") >= DATAGRAMS * 9 / 10,
        "{got}; B decrypted {in_b}"
    );
    // esplab's GRO wrote UDP super-packets (the kernel has USO from 6.2 on): B's TUN took
    // fewer packets than B decrypted.
    let written_b = link_packets(&lab.ns_b, "esplab-b").0 - tun_b0.0;
    let (supers, coalesced) = (d("TUN_UDP_SUPER_PACKETS"), d("TUN_UDP_COALESCED"));
    assert!(
        supers > 0 && coalesced > supers && written_b < in_b,
        "B's TUN took {written_b} packets for {in_b} decrypted; {supers} UDP super-packets \
         with {coalesced} datagrams: no UDP coalescing\n{}",
        lab.log(Peer::B)
    );
    eprintln!(
        "{got}; B decrypted {in_b}, wrote {written_b} to its TUN: {supers} UDP \
         super-packets carrying {coalesced}"
    );
}

/// A ping from A reaches B through the tunnel.
fn tunnel_carries(lab: &Lab) {
    let p = lab.ping(Peer::A, 3);
    assert!(p.received > 0, "no traffic through the tunnel: {p:?}");
}

/// Starts the helper's `mode` sink (`sink`, `udpsink`) on B's inner address; returns it
/// (stdout and stderr piped) and that address.
fn spawn_sink(lab: &Lab, mode: &str) -> (std::process::Child, String) {
    let addr = format!("{}:{PORT}", Peer::B.inner());
    let sink = helper(&lab.ns_b, &format!("{mode} {addr}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (sink, addr)
}

/// How much counter `k` grew from `before` to `after`.
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after[k] - before[k]
}

/// Sends [`BYTES`] of TCP from A to B through `lab` and checks them; returns what the
/// daemons counted meanwhile.
fn bulk_tcp_on(lab: &Lab) -> Transfer {
    tunnel_carries(lab);
    let a0 = lab.counters(Peer::A);
    let b0 = lab.counters(Peer::B);
    let tun_a0 = link_packets(&lab.ns_a, "esplab-a");
    let tun_b0 = link_packets(&lab.ns_b, "esplab-b");

    let (mut sink, sink_addr) = spawn_sink(lab, "sink");
    let src = run(
        &mut helper(&lab.ns_a, &format!("source {sink_addr} {BYTES}")),
        Duration::from_secs(180),
    );
    // The sink ends when the source closes (or its own 60 s read timeout fires).
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if sink.try_wait().unwrap().is_none() {
        let _ = sink.kill();
    }
    let out = sink.wait_with_output().unwrap();
    let sink_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        src.ok(),
        "source failed:\n{}\n{}\nsink:\n{sink_out}\n{}",
        src.stdout,
        src.stderr,
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = result_line(&src.stdout).expect("source printed no result");
    let got = result_line(&sink_out).unwrap_or_else(|| {
        panic!(
            "sink printed no result:\n{sink_out}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(got, sent, "the byte stream arrived changed");
    assert!(sent.starts_with(&format!("TCP bytes={BYTES} ")), "{sent}");

    // Nothing dropped by either daemon, and what A encrypted B decrypted (TCP may have
    // retransmitted, so at least the stream's worth of packets went each way it flowed).
    let a1 = lab.counters(Peer::A);
    let b1 = lab.counters(Peer::B);
    let d = delta;
    for k in [
        "IN_DROPS",
        "UNDERLAY_TX_ERRORS",
        "UNDERLAY_RX_ERRORS",
        "TUN_TX_ERRORS",
        "TUN_RX_ERRORS",
    ] {
        assert_eq!(d(&a1, &a0, k), 0, "A {k}: {a1:?}");
        assert_eq!(d(&b1, &b0, k), 0, "B {k}: {b1:?}");
    }
    let out_a = d(&a1, &a0, "OUT_PACKETS");
    let in_b = d(&b1, &b0, "IN_PACKETS");
    assert!(out_a >= BYTES / 1400, "A sent {out_a} ESP packets");
    assert!(in_b >= BYTES / 1400, "B decrypted {in_b} ESP packets");

    // Offload at work: A's TUN handed over fewer (larger) packets than A encrypted, and
    // B's TUN took fewer (coalesced) packets than B decrypted.
    let tun_a1 = link_packets(&lab.ns_a, "esplab-a");
    let tun_b1 = link_packets(&lab.ns_b, "esplab-b");
    let read_a = tun_a1.1 - tun_a0.1; // the kernel's TX is the daemon's read
    let written_b = tun_b1.0 - tun_b0.0; // the kernel's RX is the daemon's write
    assert!(
        read_a < out_a,
        "A's TUN gave {read_a} packets for {out_a} ESP packets: no TSO/GSO super-packets"
    );
    assert!(
        written_b < in_b,
        "B's TUN took {written_b} packets for {in_b} decrypted: no GRO coalescing"
    );
    Transfer {
        out_a,
        in_b,
        tx_calls_a: d(&a1, &a0, "UNDERLAY_TX_CALLS"),
        rx_calls_b: d(&b1, &b0, "UNDERLAY_RX_CALLS"),
    }
}

/// What a bulk transfer moved, from the daemons' counters.
#[derive(Clone, Copy)]
struct Transfer {
    /// ESP packets A sent, and B decrypted.
    out_a: u64,
    in_b: u64,
    /// System calls that sent them (A), and that received them (B).
    tx_calls_a: u64,
    rx_calls_b: u64,
}

impl Transfer {
    /// Batched system calls on the underlay (`sendmmsg`/`recvmmsg`, on the raw ESP socket
    /// as on UDP): fewer calls than packets on both sides.
    fn assert_batched(&self) {
        let Self {
            out_a,
            in_b,
            tx_calls_a,
            rx_calls_b,
        } = *self;
        assert!(
            tx_calls_a > 0 && tx_calls_a < out_a,
            "A: {tx_calls_a} send calls for {out_a} ESP packets"
        );
        assert!(
            rx_calls_b > 0 && rx_calls_b < in_b,
            "B: {rx_calls_b} receive calls for {in_b} ESP packets"
        );
    }
}
