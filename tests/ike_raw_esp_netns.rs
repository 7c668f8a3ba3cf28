//! IKE peers configured with `encap = "esp"` (raw ESP, IP protocol 50) in network
//! namespaces (esplab issue #5/#8): the negotiated CHILD SAs must carry traffic both
//! ways. Before the fix the daemon opened only the raw ESP socket for such a peer while
//! the negotiated SAs went out as UDP 4500 (RFC 3948), so the tunnel carried nothing.
//! Without a NAT the ESP on the wire must be raw IP protocol 50, not UDP 4500 (issue #4,
//! RFC 7296 §2.23): `dumpcap` on A's veth counts both.
//!
//! Needs root (namespaces, veth, TUN); fails without root unless `ESPLAB_SKIP_NETNS=1`.
//! Needs `dumpcap` (package wireshark-common) unless `ESPLAB_SKIP_TSHARK=1`.
//! Namespaces and the temporary directory are per process and removed in `Drop`.

#[path = "interop/harness.rs"]
mod harness;

#[path = "decrypt/dumpcap.rs"]
mod dumpcap;

use dumpcap::{has_dumpcap, Dumpcap};
use harness::{may_run, EsplabNode, Lab};
use std::path::PathBuf;
use std::time::Duration;

const GCM: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");

/// What the wire checks count: raw ESP and UDP 4500 (RFC 3948), nothing else.
const WIRE_ESP: &str = "ip proto 50 or udp port 4500";

#[test]
fn ike_peer_with_raw_esp_encap_carries_traffic() {
    if !may_run(false) {
        return;
    }
    let mut lab = Lab::new("erx", "esplab-ike-raw-esp", "r");
    let tag = lab.tag.clone();
    for (side, start) in [(1, false), (0, true)] {
        let name = ["a", "b"][side];
        let tun = format!("erx{tag}{name}");
        lab.start_esplab(&EsplabNode {
            side,
            name,
            tun: &tun,
            suites: GCM,
            start,
            sections: "",
            peer_extra: "encap = \"esp\"\n",
        });
    }
    lab.wait(
        "the CHILD SA pair on both sides",
        Duration::from_secs(20),
        |l| l.esplab_sas("a") >= 2 && l.esplab_sas("b") >= 2,
    );
    let cap = capture_esp(&lab);
    // Traffic both ways through the negotiated SAs (a lost first probe while the
    // responder installs its pair is retried: poll, do not time).
    let mut ok = false;
    for _ in 0..5 {
        let pings = [lab.spawn_ping(0, 3, "0.2"), lab.spawn_ping(1, 3, "0.2")];
        let lost: u32 = pings.into_iter().map(|p| p.finish().lost()).sum();
        if lost == 0 {
            ok = true;
            break;
        }
    }
    assert!(ok, "no traffic over the raw-ESP IKE peer\n{}", lab.logs());
    let Some((esp, udp)) = esp_on_wire(cap) else {
        return;
    };
    // dumpcap may not have written the last packets before it stopped: some raw ESP
    // and no UDP 4500 at all (UDP encapsulation would put every packet there).
    assert!(
        esp > 0 && udp == 0,
        "expected raw ESP only on the wire: {esp} protocol-50, {udp} UDP 4500 packets\n{}",
        lab.logs()
    );
}

/// The same esplab peer against strongSwan: kernel-libipsec forces UDP encapsulation by
/// faking NAT detection (RFC 7296 §2.23), so the negotiated SAs stay UDP 4500 and
/// traffic flows.
#[test]
fn raw_esp_ike_peer_stays_udp_with_strongswan() {
    if !may_run(true) {
        return;
    }
    let mut lab = Lab::new("erx", "esplab-ike-raw-esp", "s");
    let tag = lab.tag.clone();
    lab.strongswan(GCM, false, None);
    let tun = format!("erx{tag}a");
    lab.start_esplab(&EsplabNode {
        side: 0,
        name: "a",
        tun: &tun,
        suites: GCM,
        start: true,
        sections: "",
        peer_extra: "encap = \"esp\"\n",
    });
    lab.wait(
        "the CHILD SA pair with strongSwan",
        Duration::from_secs(20),
        |l| l.esplab_sas("a") == 2 && l.sw_children() == 1,
    );
    let cap = capture_esp(&lab);
    lab.ping_both_ways_n(3);
    let Some((esp, udp)) = esp_on_wire(cap) else {
        return;
    };
    assert!(
        esp == 0 && udp > 0,
        "expected UDP 4500 only on the wire: {esp} protocol-50, {udp} UDP 4500 packets\n{}",
        lab.logs()
    );
}

/// A capture of ESP (raw or UDP 4500) on A's veth, when dumpcap is installed.
fn capture_esp(lab: &Lab) -> Option<(Dumpcap, PathBuf)> {
    let pcap = lab.dir.join("a-veth.pcap");
    has_dumpcap().then(|| {
        let dev = format!("{}a", lab.tag);
        (
            Dumpcap::start(&lab.ns[0], &dev, Some(WIRE_ESP), &pcap),
            pcap,
        )
    })
}

/// Stops the capture and counts (protocol-50, UDP 4500) packets in it; None (the wire
/// check skipped) without dumpcap.
fn esp_on_wire(cap: Option<(Dumpcap, PathBuf)>) -> Option<(usize, usize)> {
    let Some((mut c, pcap)) = cap else {
        eprintln!("wire check skipped: no dumpcap (ESPLAB_SKIP_TSHARK=1)");
        return None;
    };
    c.stop();
    Some(count_protocols(&std::fs::read(&pcap).unwrap()))
}

/// (IPv4 protocol-50 packets, IPv4 UDP packets) in a classic pcap of an Ethernet link.
fn count_protocols(pcap: &[u8]) -> (usize, usize) {
    assert!(pcap.len() >= 24, "truncated pcap");
    let le = match pcap[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |b: &[u8], i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    assert_eq!(u32_at(pcap, 20), 1, "expected an Ethernet capture");
    let (mut esp, mut udp, mut at) = (0, 0, 24);
    while at + 16 <= pcap.len() {
        let len = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        // Ethernet II, IPv4 (0x0800): the protocol is byte 9 of the IP header.
        if frame.len() > 23 && frame[12..14] == [0x08, 0x00] {
            match frame[23] {
                50 => esp += 1,
                17 => udp += 1,
                _ => {}
            }
        }
        at += 16 + len;
    }
    (esp, udp)
}
