//! IKEv2 end to end in network namespaces: esplab ↔ esplab and esplab ↔ strongSwan
//! (charon with kernel-libipsec), both roles, both suite pairs. Pings must pass both ways
//! through the negotiated CHILD SAs, and a Delete from either side must remove the pair on
//! both (`esplab show sa`, `swanctl --list-sas`).
//!
//! Needs root (namespaces, veth, TUN). Without root the tests fail unless
//! `ESPLAB_SKIP_NETNS=1`; the strongSwan tests fail when `/usr/lib/ipsec/charon` is missing
//! unless `ESPLAB_SKIP_STRONGSWAN=1`. They run one at a time (a global mutex), each in its
//! own namespaces (198.18.0.1/2 underlay, 198.19.1.0/24 and 198.19.2.0/24 protected), and
//! clean up in `Drop` (processes by PID, then `ip netns del`).

#[path = "interop/harness.rs"]
mod harness;

use harness::{may_run, run, EsplabNode, Lab};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

const GCM: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
const CBC: (&str, &str) = ("aes128-sha256-x25519", "aes128-sha256");
/// Every `wait` here allows 15 s.
const LIMIT: Duration = Duration::from_secs(15);
/// esplab daemons are named after their side.
const SIDE: [&str; 2] = ["0", "1"];

fn lab(tag: &str) -> Lab {
    Lab::new("eli", "esplab-ike-interop", tag)
}

impl Lab {
    /// Starts `esplab peer` on side 0 (A) or 1 (B) with an IKE peer for the other side.
    fn esplab(&mut self, side: usize, suites: (&str, &str), start: bool) {
        let tun = format!("{}t{side}", self.tag);
        self.start_esplab(&EsplabNode {
            side,
            name: SIDE[side],
            tun: &tun,
            suites,
            start,
            sections: "",
            peer_extra: "",
        });
    }

    /// Pings B's protected address from A's and the other way round.
    fn ping_both_ways(&self) {
        for (ns, src, dst) in [
            (&self.ns[0], "198.19.1.1", "198.19.2.1"),
            (&self.ns[1], "198.19.2.1", "198.19.1.1"),
        ] {
            let (ok, out) = run(Command::new("ip").args([
                "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst,
            ]));
            assert!(
                ok && out.contains(" 0% packet loss"),
                "ping {src} -> {dst}: {out}\n--- A ---\n{}",
                self.log(SIDE[0])
            );
        }
    }
}

#[test]
fn esplab_to_esplab() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(false) {
        return;
    }
    for (i, suites) in [GCM, CBC].into_iter().enumerate() {
        let mut lab = lab(&format!("ee{i}"));
        lab.esplab(1, suites, false);
        lab.esplab(0, suites, true);
        lab.wait("CHILD SA on both", LIMIT, |l| {
            l.esplab_sas(SIDE[0]) == 2 && l.esplab_sas(SIDE[1]) == 2
        });
        lab.ping_both_ways();
        let ike = lab.esplab_ctl(SIDE[0], &["show", "ike"]);
        assert!(ike.contains("ESTABLISHED"), "{ike}");
        // Delete from A, then re-establish from B and delete from B.
        lab.esplab_ctl(SIDE[0], &["terminate", "peer"]);
        lab.wait("pair gone on both", LIMIT, |l| {
            l.esplab_sas(SIDE[0]) == 0 && l.esplab_sas(SIDE[1]) == 0
        });
        lab.esplab_ctl(SIDE[1], &["initiate", "peer"]);
        lab.wait("CHILD SA again", LIMIT, |l| {
            l.esplab_sas(SIDE[0]) == 2 && l.esplab_sas(SIDE[1]) == 2
        });
        lab.ping_both_ways();
        lab.esplab_ctl(SIDE[1], &["terminate", "peer"]);
        lab.wait("pair gone on both", LIMIT, |l| {
            l.esplab_sas(SIDE[0]) == 0 && l.esplab_sas(SIDE[1]) == 0
        });
    }
}

fn strongswan_case(tag: &str, suites: (&str, &str), esplab_initiates: bool) {
    let mut lab = lab(tag);
    lab.strongswan(suites, !esplab_initiates, None);
    lab.esplab(0, suites, esplab_initiates);
    lab.wait("CHILD SA with strongSwan", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 2 && l.sw_children() == 1
    });
    lab.ping_both_ways();
    // Delete from esplab: strongSwan drops the pair too.
    lab.esplab_ctl(SIDE[0], &["terminate", "peer"]);
    lab.wait("pair gone on both (esplab's Delete)", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 0 && l.sw_children() == 0
    });
    // Up again, then delete from strongSwan.
    lab.esplab_ctl(SIDE[0], &["initiate", "peer"]);
    lab.wait("CHILD SA again", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 2 && l.sw_children() == 1
    });
    lab.ping_both_ways();
    lab.swanctl(&["--terminate", "--ike", "lab"]);
    lab.wait("pair gone on both (strongSwan's Delete)", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 0 && l.sw_children() == 0
    });
}

#[test]
fn esplab_with_strongswan() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(true) {
        return;
    }
    for (i, suites) in [GCM, CBC].into_iter().enumerate() {
        strongswan_case(&format!("si{i}"), suites, true);
        strongswan_case(&format!("sr{i}"), suites, false);
    }
}
