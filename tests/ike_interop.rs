//! IKEv2 end to end in network namespaces: esplab ↔ esplab and esplab ↔ strongSwan
//! (charon with kernel-libipsec), both roles, both suite pairs. For each lab, in sequence:
//! pings pass both ways through the negotiated CHILD SAs; a CHILD SA rekey started by
//! each side and an IKE SA rekey started by each side lose no ping (both sides ping each
//! other every 10 ms across the rekey); a Delete from either side removes the pair on both
//! (`esplab show sa`, `swanctl --list-sas`); the IKE events appear in `esplab show events`.
//! One more lab runs esplab ↔ esplab and esplab ↔ strongSwan over an IPv6 underlay.
//!
//! Needs root (namespaces, veth, TUN). Without root the tests fail unless
//! `ESPLAB_SKIP_NETNS=1`; the strongSwan tests fail when `/usr/lib/ipsec/charon` is missing
//! unless `ESPLAB_SKIP_STRONGSWAN=1`. They run one at a time (a global mutex), each in its
//! own namespaces (198.18.0.1/2 underlay, 198.19.1.0/24 and 198.19.2.0/24 protected; IPv6:
//! 2001:2::1/2, 2001:2:0:1::/64 and 2001:2:0:2::/64), and clean up in `Drop` (processes by
//! PID, then `ip netns del`).

#[path = "interop/harness.rs"]
mod harness;

use harness::{may_run, run, EsplabNode, Lab, ESPLAB};
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
/// Pings per direction across a rekey, 10 ms apart: 3 s of traffic, far longer than a
/// rekey between two namespaces takes (the test checks that it ended first).
const RUN: u32 = 300;

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

    /// Three pings from A's protected address to B's and three the other way.
    fn ping_both_ways(&self) {
        self.ping_both_ways_n(3);
    }
}

/// The other end of esplab A.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Other {
    Esplab,
    StrongSwan,
}

/// What esplab shows when it has exactly one established IKE SA with exactly one
/// installed CHILD SA: (SPIi, SPIr, inbound SPI, outbound SPI), hex without `0x`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settled {
    spi_i: String,
    spi_r: String,
    inbound: String,
    outbound: String,
}

fn settled(lab: &Lab, name: &str) -> Option<Settled> {
    let ike = lab.esplab_ike(name);
    let [s] = ike.as_slice() else { return None };
    let children = s["children"].as_array()?;
    let [c] = children.as_slice() else {
        return None;
    };
    if s["state"] != "established" || c["state"] != "installed" {
        return None;
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Some(Settled {
        spi_i: text(&s["spi_i"])?,
        spi_r: text(&s["spi_r"])?,
        inbound: text(&c["inbound_spi"])?,
        outbound: text(&c["outbound_spi"])?,
    })
}

/// A's settled state, when the other end agrees with it: the same IKE SPIs and the
/// mirror CHILD SA (esplab B), or exactly one IKE SA and one installed CHILD SA with
/// these SPIs (strongSwan), and A's datapath holds exactly that pair.
fn agreed(lab: &Lab, other: Other) -> Option<Settled> {
    let a = settled(lab, SIDE[0])?;
    let ok = match other {
        Other::Esplab => settled(lab, SIDE[1]).is_some_and(|b| {
            (&b.spi_i, &b.spi_r, &b.inbound, &b.outbound)
                == (&a.spi_i, &a.spi_r, &a.outbound, &a.inbound)
        }),
        Other::StrongSwan => {
            let list = lab.swanctl(&["--list-sas"]);
            list.matches("ESTABLISHED").count() == 1
                && list.matches("INSTALLED").count() == 1
                && [&a.spi_i, &a.spi_r, &a.inbound, &a.outbound]
                    .iter()
                    .all(|s| list.contains(s.as_str()))
        }
    };
    ok.then_some(a)
}

/// Starts `trigger` while both sides ping each other every 10 ms, waits (while the pings
/// still run) until `done` holds for the state both sides agree on, and requires that
/// not one ping was lost in either direction.
fn across(
    lab: &Lab,
    other: Other,
    what: &str,
    trigger: impl FnOnce(&Lab),
    done: impl Fn(&Settled) -> bool,
) {
    let mut pings = [
        lab.spawn_ping(0, RUN, "0.01"),
        lab.spawn_ping(1, RUN, "0.01"),
    ];
    trigger(lab);
    lab.wait(what, LIMIT, |l| agreed(l, other).is_some_and(|s| done(&s)));
    assert!(
        pings.iter_mut().all(|p| p.running()),
        "{what}: the pings ended before the rekey did (overloaded machine?)"
    );
    for p in pings {
        let name = p.what.clone();
        let r = p.finish();
        assert!(
            r.transmitted == RUN && r.lost() == 0,
            "{what}: {name} lost {} of {} pings:\n{}\n{}",
            r.lost(),
            r.transmitted,
            r.output,
            lab.logs()
        );
    }
}

/// CHILD SA rekeys started by A and by the other side, then IKE SA rekeys started by A
/// and by the other side, each under 10 ms pings both ways.
fn rekeys(lab: &Lab, other: Other) {
    let by_other = |l: &Lab, ike: bool| match (other, ike) {
        (Other::Esplab, false) => {
            l.esplab_ctl(SIDE[1], &["rekey", "peer"]);
        }
        (Other::Esplab, true) => {
            l.esplab_ctl(SIDE[1], &["rekey", "peer", "--ike"]);
        }
        (Other::StrongSwan, false) => {
            l.swanctl(&["--rekey", "--child", "net"]);
        }
        (Other::StrongSwan, true) => {
            l.swanctl(&["--rekey", "--ike", "lab"]);
        }
    };
    let state = |l: &Lab| {
        let mut s = None;
        l.wait("both sides settled", LIMIT, |l| {
            s = agreed(l, other);
            s.is_some()
        });
        s.unwrap()
    };
    for (by_a, ike) in [(true, false), (false, false), (true, true), (false, true)] {
        let before = state(lab);
        let what = format!(
            "{} SA rekey started by {}",
            if ike { "IKE" } else { "CHILD" },
            if by_a { "esplab A" } else { "the other side" }
        );
        let spi = format!("0x{}", before.inbound);
        let trigger = |l: &Lab| {
            if by_a {
                let out = match (ike, other) {
                    (true, _) => l.esplab_ctl(SIDE[0], &["rekey", "peer", "--ike"]),
                    // One pair by SPI, or all of the peer's pairs.
                    (false, Other::Esplab) => {
                        l.esplab_ctl(SIDE[0], &["rekey", "peer", "--spi", &spi])
                    }
                    (false, Other::StrongSwan) => l.esplab_ctl(SIDE[0], &["rekey", "peer"]),
                };
                let expect = if ike {
                    "IKE SA".to_string()
                } else {
                    spi.clone()
                };
                assert!(out.contains("rekeying") && out.contains(&expect), "{out}");
            } else {
                by_other(l, ike);
            }
        };
        across(lab, other, &what, trigger, |now| {
            let same_ike = (&now.spi_i, &now.spi_r) == (&before.spi_i, &before.spi_r);
            let same_child = (&now.inbound, &now.outbound) == (&before.inbound, &before.outbound);
            if ike {
                // §2.18: new IKE SPIs, the CHILD SA moved over unchanged.
                !same_ike && same_child
            } else {
                same_ike && now.inbound != before.inbound && now.outbound != before.outbound
            }
        });
    }
    let types = lab.esplab_event_types(SIDE[0]);
    for t in [
        "ike-sa-established",
        "child-sa-installed",
        "child-sa-rekeyed",
        "child-sa-deleted",
        "ike-sa-rekeyed",
        "ike-sa-deleted",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} event in {types:?}");
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
        // Refused rekeys: no such peer, no such SPI.
        for (args, err) in [
            (["rekey", "nosuch"].as_slice(), "unknown peer 'nosuch'"),
            (
                &["rekey", "peer", "--spi", "0x1"],
                "no CHILD SA with SPI 00000001",
            ),
        ] {
            let (ok, out) = run(Command::new(ESPLAB)
                .args(args)
                .arg("--socket")
                .arg(lab.sock(SIDE[0])));
            assert!(!ok && out.contains(err), "{args:?}: {out}");
        }
        rekeys(&lab, Other::Esplab);
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
    rekeys(&lab, Other::StrongSwan);
    // Delete from esplab: strongSwan drops the pair too.
    lab.esplab_ctl(SIDE[0], &["terminate", "peer"]);
    lab.wait("pair gone on both (esplab's Delete)", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 0 && l.sw_children() == 0 && l.sw_ike_sas() == 0
    });
    // Up again, then delete from strongSwan.
    lab.esplab_ctl(SIDE[0], &["initiate", "peer"]);
    lab.wait("CHILD SA again", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 2 && l.sw_children() == 1
    });
    lab.ping_both_ways();
    lab.swanctl(&["--terminate", "--ike", "lab"]);
    lab.wait("pair gone on both (strongSwan's Delete)", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 0 && l.sw_children() == 0 && l.esplab_ike(SIDE[0]).is_empty()
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

/// IKE and ESP over an IPv6 underlay (2001:2::/48): esplab ↔ esplab, then esplab ↔
/// strongSwan (when installed), with IPv6 protected networks.
#[test]
fn ipv6_underlay() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(false) {
        return;
    }
    let mut lab = Lab::new_v6("eli", "esplab-ike-interop", "e6");
    lab.esplab(1, GCM, false);
    lab.esplab(0, GCM, true);
    lab.wait("CHILD SA on both (IPv6)", LIMIT, |l| {
        agreed(l, Other::Esplab).is_some()
    });
    lab.ping_both_ways();
    let ike = lab.esplab_ike(SIDE[0]);
    assert!(
        ike[0]["remote"]
            .as_str()
            .is_some_and(|r| r.contains("2001:2::2")),
        "{ike:?}"
    );
    lab.esplab_ctl(SIDE[1], &["terminate", "peer"]);
    lab.wait("pair gone on both (IPv6)", LIMIT, |l| {
        l.esplab_sas(SIDE[0]) == 0 && l.esplab_sas(SIDE[1]) == 0
    });
    drop(lab);
    if !may_run(true) {
        return;
    }
    let mut lab = Lab::new_v6("eli", "esplab-ike-interop", "s6");
    lab.strongswan(CBC, false, None);
    lab.esplab(0, CBC, true);
    lab.wait("CHILD SA with strongSwan (IPv6)", LIMIT, |l| {
        agreed(l, Other::StrongSwan).is_some()
    });
    lab.ping_both_ways();
}
