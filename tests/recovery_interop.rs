//! Invalid-SPI recovery against strongSwan in network namespaces (docs/recovery.md):
//!
//! (b) esplab keeps its IKE SA but `esplab clear sa --all` drops its CHILD SAs: the next
//!     ESP from strongSwan makes esplab send Delete(ESP, [spi]); strongSwan drops its stale
//!     pair and (close_action = start) re-creates it. The blackhole is measured.
//! (a) esplab is killed -9 and restarted with `invalid_spi_recovery = true` while
//!     strongSwan keeps pinging: esplab builds a new IKE SA with INITIAL_CONTACT and pings
//!     resume without waiting for strongSwan's DPD (which is off here).
//! (c) the same crash with recovery off (`invalid_spi_recovery = false`, the default) and
//!     strongSwan's DPD on (2 s, `dpd_action = restart`): esplab only logs the invalid SPI
//!     and initiates nothing; the blackhole lasts until strongSwan's DPD declares esplab
//!     dead and strongSwan initiates again.
//!
//! Same rules as tests/ike_interop.rs: root, `/usr/lib/ipsec/charon` (or the
//! ESPLAB_SKIP_NETNS / ESPLAB_SKIP_STRONGSWAN escapes), serial, cleanup in `Drop`.

#[path = "interop/harness.rs"]
mod harness;

use harness::{may_run, run, EsplabNode, Lab};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

const SUITES: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
/// The one esplab daemon, on side A (198.18.0.1); charon is on side B (198.18.0.2).
const A: &str = "a";

impl Lab {
    fn start_esplab_a(&mut self, start: bool) {
        self.start_esplab_a_with(start, true);
    }

    fn start_esplab_a_with(&mut self, start: bool, recovery: bool) {
        let tun = format!("{}t", self.tag);
        self.start_esplab(&EsplabNode {
            side: 0,
            name: A,
            tun: &tun,
            suites: SUITES,
            start,
            sections: "[recovery]\nhold_down = \"5s\"\n",
            peer_extra: if recovery {
                "on_invalid_spi = \"delete\"\n\
                 invalid_spi_recovery = true\n\
                 on_peer_delete = \"restart\"\n"
            } else {
                "on_invalid_spi = \"delete\"\n\
                 invalid_spi_recovery = false\n\
                 on_peer_delete = \"restart\"\n"
            },
        });
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.esplab_ctl(A, args)
    }

    fn recovery(&self) -> serde_json::Value {
        let out = self.ctl(&["show", "recovery", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["recovery"]["stats"].clone()
    }

    /// One ping from strongSwan's side (B → A), 1 s timeout.
    fn ping_from_b(&self) -> bool {
        let (ok, out) = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns[1],
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "198.19.2.1",
            "198.19.1.1",
        ]));
        ok && out.contains(" 0% packet loss")
    }

    /// Pings from B until one passes; the time it took (the blackhole as seen by B).
    fn blackhole(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.ping_from_b() {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "pings did not resume within {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn established(tag: &str) -> Lab {
    let mut lab = Lab::new("elr", "esplab-recovery-interop", tag);
    lab.strongswan(SUITES, false, Some("start"));
    lab.start_esplab_a(true);
    lab.wait("CHILD SA with strongSwan", Duration::from_secs(15), |l| {
        l.esplab_sas(A) == 2 && l.sw_children() == 1
    });
    assert!(lab.ping_from_b(), "ping before the desync");
    lab
}

#[test]
fn strongswan_child_sa_lost_delete_recovers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(true) {
        return;
    }
    let lab = established("rb");
    lab.ctl(&["clear", "sa", "--all"]);
    assert_eq!(lab.esplab_sas(A), 0);
    let b = lab.blackhole(Duration::from_secs(20));
    eprintln!("recovery-interop (b) child SA lost: blackhole {b:?}");
    let s = lab.recovery();
    assert_eq!(s["deletes_sent"], 1, "{s}");
    assert_eq!(s["ike_initiated"], 0, "{s}");
    lab.wait("new pair on both", Duration::from_secs(10), |l| {
        l.esplab_sas(A) == 2 && l.sw_children() == 1
    });
    let logs = lab.log(A);
    assert!(logs.contains("INV_SPI_RECOVERY"), "{logs}");
}

#[test]
fn strongswan_esplab_crash_recovers_without_dpd() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(true) {
        return;
    }
    let mut lab = established("ra");
    lab.crash_last_esplab();
    // Restarted, not starting on its own: only the invalid SPI may bring it up.
    lab.start_esplab_a(false);
    let b = lab.blackhole(Duration::from_secs(20));
    eprintln!("recovery-interop (a) esplab crash + restart: blackhole {b:?} (after restart)");
    let s = lab.recovery();
    assert_eq!(s["ike_initiated"], 1, "{s}");
    assert_eq!(s["ike_established"], 1, "{s}");
    lab.wait("one IKE SA at strongSwan", Duration::from_secs(10), |l| {
        l.swanctl(&["--list-sas"]).matches("ESTABLISHED").count() == 1
    });
}

/// strongSwan's DPD for case (c): checks after 2 s without inbound traffic; with the
/// charon.sh retransmission schedule (2 tries, 1 s timeout, base 1.5: 1 + 1.5 + 2.25 s) it
/// declares the peer dead 6.75 s after the first check at the earliest.
const SW_DPD_DELAY: Duration = Duration::from_secs(2);
const SW_RETRANSMITS: Duration = Duration::from_millis(4750);

#[test]
fn strongswan_esplab_crash_recovery_off_waits_for_dpd() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(true) {
        return;
    }
    let mut lab = Lab::new("elr", "esplab-recovery-interop", "rc");
    lab.strongswan_env(
        SUITES,
        false,
        Some("start"),
        &[("DPD_DELAY", "2s"), ("DPD_ACTION", "restart")],
    );
    lab.start_esplab_a_with(true, false);
    lab.wait("CHILD SA with strongSwan", Duration::from_secs(15), |l| {
        l.esplab_sas(A) == 2 && l.sw_children() == 1
    });
    assert!(lab.ping_from_b(), "ping before the desync");
    let crash = Instant::now();
    lab.crash_last_esplab();
    lab.start_esplab_a_with(false, false);
    let b = lab.blackhole(Duration::from_secs(30));
    let since_crash = crash.elapsed();
    eprintln!(
        "recovery-interop (c) esplab crash + restart, recovery off, strongSwan DPD 2 s: \
         blackhole {b:?} (after restart), {since_crash:?} after the crash"
    );
    let s = lab.recovery();
    assert_eq!(s["ike_initiated"], 0, "{s}");
    assert!(
        s["invalid_spi_packets"].as_u64().unwrap_or(0) >= 1,
        "{s}\n{}",
        lab.logs()
    );
    let logs = lab.log(A);
    assert!(logs.contains("RECVD_PKT_INV_SPI"), "{logs}");
    // Case (a) resumes after about one lost ping; here only strongSwan's DPD ends it: at
    // least one DPD delay plus the retransmission schedule after the last inbound packet
    // strongSwan saw (just before the crash), with a second of slack for ping timing.
    assert!(b > Duration::from_secs(3), "blackhole {b:?}");
    assert!(
        since_crash + Duration::from_secs(1) >= SW_DPD_DELAY + SW_RETRANSMITS,
        "blackhole {since_crash:?} shorter than strongSwan's DPD"
    );
    let charon = lab.charon_log();
    assert!(
        charon.contains("giving up after") || charon.contains("DPD"),
        "{charon}"
    );
    lab.wait("one IKE SA at strongSwan", Duration::from_secs(10), |l| {
        l.swanctl(&["--list-sas"]).matches("ESTABLISHED").count() == 1
    });
}
