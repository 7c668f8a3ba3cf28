//! `esplab lab run --netns`: the shipped scenarios on real `esplab peer` processes in
//! network namespaces, compared with the simulator on the same (time-scaled) scenario
//! within the tolerances of docs/lab.md ("--netns"), and the cleanup on Ctrl-C and on a
//! killed driver.
//!
//! Needs root (namespaces, TUN devices); not root, the tests fail saying so unless
//! `ESPLAB_SKIP_NETNS=1`, which skips them. The refusal test needs neither. The
//! peer-reboot run's capture is decrypted with tshark (`ESPLAB_SKIP_TSHARK=1` skips that
//! part when tshark is missing).

#[path = "decrypt/tshark.rs"]
mod tshark;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ESPLAB: &str = env!("CARGO_BIN_EXE_esplab");

/// docs/lab.md: a recovered netns run's blackhole may exceed the simulator's by this much
/// (process and TUN start-up, scheduling on a loaded host).
const BLACKHOLE_SLACK_MS: f64 = 5000.0;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// False when the test must be skipped (and says why); panics when it may not be.
fn may_run() -> bool {
    if std::env::var("ESPLAB_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("skipped: ESPLAB_SKIP_NETNS=1");
        return false;
    }
    assert!(
        is_root(),
        "needs root for network namespaces; set ESPLAB_SKIP_NETNS=1 to skip"
    );
    true
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "esplab-lab-netns-test-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `esplab lab run ARGS --json --out DIR`: the report. Killed (its watchdog then cleans
/// up) and failed if it takes longer than two minutes.
fn lab_run(args: &[&str], dir: &Path) -> Value {
    use std::io::Read;
    let mut child = Command::new(ESPLAB)
        .args(["lab", "run"])
        .args(args)
        .args(["--json", "--out"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = o.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("esplab lab run {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "esplab lab run {args:?} failed: {err}");
    serde_json::from_slice(&out).unwrap()
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Runs `scenario` in the simulator and with `--netns` (same scaling) and checks that
/// they agree; returns the netns report.
fn compare(scenario: &str, recovery: &str, scale: &str, duration: &str) -> Value {
    compare_then(scenario, recovery, scale, duration, |_, _| {})
}

/// [`compare`], then `more(netns output directory, netns report)` before the outputs go.
fn compare_then(
    scenario: &str,
    recovery: &str,
    scale: &str,
    duration: &str,
    more: impl FnOnce(&Path, &Value),
) -> Value {
    let common = [
        scenario,
        "--recovery",
        recovery,
        "--time-scale",
        scale,
        "--duration",
        duration,
    ];
    let sim_dir = out_dir(&format!("{scenario}-sim"));
    let net_dir = out_dir(&format!("{scenario}-netns"));
    let sim = lab_run(&common, &sim_dir);
    let mut args = common.to_vec();
    args.push("--netns");
    let net = lab_run(&args, &net_dir);
    let show = || {
        format!(
            "{}\n--- sim ---\n{}",
            std::fs::read_to_string(net_dir.join("report.txt")).unwrap_or_default(),
            std::fs::read_to_string(sim_dir.join("report.txt")).unwrap_or_default()
        )
    };
    assert_eq!(net["driver"], "netns", "{}", show());
    assert_eq!(sim["driver"], "sim");
    for file in [
        "report.json",
        "report.txt",
        "plot.svg",
        "esp_sa",
        "ikev2_decryption_table",
    ] {
        assert!(net_dir.join(file).exists(), "{file} missing");
    }
    if has_dumpcap() {
        let pcaps: Vec<u64> = std::fs::read_dir(&net_dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("underlay") && n.ends_with(".pcap")
            })
            .map(|e| e.metadata().unwrap().len())
            .collect();
        assert!(
            !pcaps.is_empty() && pcaps.iter().all(|l| *l > 24),
            "{pcaps:?}"
        );
    }
    let logs = std::fs::read_dir(&net_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("peer-"))
        })
        .count();
    assert!(logs >= 2, "daemon logs missing");
    let (nr, sr) = (
        net["runs"].as_array().unwrap(),
        sim["runs"].as_array().unwrap(),
    );
    assert_eq!(nr.len(), sr.len());
    for (n, s) in nr.iter().zip(sr) {
        assert_eq!(n["recovery"], s["recovery"]);
        let (nm, sm) = (&n["metrics"], &s["metrics"]);
        let what = format!("{scenario} recovery {}", n["recovery"]);
        assert!(f(&nm["t_fault_ms"]).is_some(), "{what}: {}", show());
        assert!(f(&nm["t_first_drop_ms"]).is_some(), "{what}: {}", show());
        assert!(nm["sent"]["a_to_b"].as_u64().unwrap() > 0);
        assert!(nm["delivered"]["b_to_a"].as_u64().unwrap() > 0);
        assert_eq!(
            nm["recovered"],
            sm["recovered"],
            "{what}: recovered differs\n{}",
            show()
        );
        let (nb, sb) = (
            f(&nm["blackhole_ms"]).unwrap(),
            f(&sm["blackhole_ms"]).unwrap(),
        );
        if sm["recovered"] == true {
            assert!(f(&nm["t_recovered_ms"]).is_some());
            assert!(
                nb <= sb + BLACKHOLE_SLACK_MS,
                "{what}: blackhole {nb} ms vs {sb} ms\n{}",
                show()
            );
        } else {
            // Both run to the end of the run: they differ by when the fault landed.
            assert!(
                (nb - sb).abs() <= 1000.0,
                "{what}: {nb} vs {sb}\n{}",
                show()
            );
        }
        // The protocol's answer to the fault is the same.
        for k in ["ike_initiated", "deletes_sent", "notifies_sent"] {
            assert_eq!(nm[k], sm[k], "{what}: {k}\n{}", show());
        }
        assert_eq!(
            f(&nm["t_detect_ms"]).is_some(),
            f(&sm["t_detect_ms"]).is_some(),
            "{what}: t_detect\n{}",
            show()
        );
        assert_eq!(
            nm["log_lines"].as_u64().unwrap() > 0,
            sm["log_lines"].as_u64().unwrap() > 0,
            "{what}: log_lines\n{}",
            show()
        );
        assert!(n["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "fault"));
    }
    more(&net_dir, &net);
    let _ = std::fs::remove_dir_all(&sim_dir);
    let _ = std::fs::remove_dir_all(&net_dir);
    net
}

fn has_dumpcap() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("dumpcap").is_file()))
}

/// The key tables written to `dir` hold every key line either daemon logged, across the
/// restart (deduplicated); with dumpcap installed, the captures open fully decrypted with
/// them: every IKE_AUTH shows its IDs, every protected IKE message and every ESP packet
/// decrypts.
fn check_decryption(dir: &Path, net: &Value) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (esp, ike) = (
        tshark::uat_lines(&read("esp_sa")),
        tshark::uat_lines(&read("ikev2_decryption_table")),
    );
    let (mut logged_esp, mut logged_ike) = (Vec::new(), Vec::new());
    for log in [
        "peer-a-on.log",
        "peer-b-on.log",
        "peer-a-off.log",
        "peer-b-off.log",
    ] {
        let l = read(log);
        for x in tshark::logged_lines(&l, "esp_sa") {
            if !logged_esp.contains(&x) {
                logged_esp.push(x);
            }
        }
        for x in tshark::logged_lines(&l, "ikev2_decryption_table") {
            if !logged_ike.contains(&x) {
                logged_ike.push(x);
            }
        }
    }
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(&esp), sorted(&logged_esp), "esp_sa");
    assert_eq!(sorted(&ike), sorted(&logged_ike), "ikev2_decryption_table");
    // Recovery on: the first IKE SA and the one made after B's restart; off: one. Two
    // `esp_sa` lines (one per direction) per CHILD SA.
    assert!(ike.len() >= 3, "{ike:?}");
    assert!(esp.len() >= 6, "{esp:?}");
    assert_eq!(net["runs"][0]["recovery"], "on");
    if !has_dumpcap() {
        assert!(
            std::env::var("ESPLAB_SKIP_TSHARK").as_deref() == Ok("1"),
            "dumpcap (package tshark / wireshark-common) is not installed, or set ESPLAB_SKIP_TSHARK=1"
        );
        eprintln!("skipped the capture's decryption: dumpcap not installed (ESPLAB_SKIP_TSHARK=1)");
        return;
    }
    assert_eq!(
        std::fs::read(dir.join("underlay.pcap")).unwrap(),
        std::fs::read(dir.join("underlay-on.pcap")).unwrap(),
        "underlay.pcap is the first run's, as the simulator writes it"
    );
    if !tshark::tshark_usable() {
        return;
    }
    // The output directory as Wireshark's configuration directory (docs/lab.md).
    let t = tshark::Tables {
        config_dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    // dumpcap starts before the daemons, so no ESP precedes its key line: all of it must
    // decrypt. On: two IKE_AUTH exchanges (before and after the restart), two IKE SAs.
    let on = tshark::assert_fully_decrypted(&dir.join("underlay-on.pcap"), &t, 4, 2);
    let off = tshark::assert_fully_decrypted(&dir.join("underlay-off.pcap"), &t, 2, 1);
    eprintln!("decrypted: on {on:?}, off {off:?}");
}

#[test]
fn child_sa_lost_agrees_with_the_simulator() {
    if !may_run() {
        return;
    }
    // Fault at 6 s, 12 s run: B forgets its CHILD SAs; rule 1 (Delete over the IKE SA)
    // repairs it with and without recovery.
    compare("child-sa-lost", "on", "0.2", "12");
}

#[test]
fn peer_reboot_agrees_with_the_simulator() {
    if !may_run() {
        return;
    }
    // Fault at 6 s, DPD 6 s, 12 s run: recovery on recovers within a second; off stays
    // black-holed to the end (DPD's retransmissions need far longer), in both drivers.
    // Its captures decrypt with the written key tables.
    compare_then("peer-reboot", "both", "0.2", "12", check_decryption);
}

#[test]
fn one_way_cut_agrees_with_the_simulator() {
    if !may_run() {
        return;
    }
    // A→B cut from 3 s to 7 s (a blackhole route at A), 12 s run.
    compare("one-way-cut", "on", "0.1", "12");
}

#[test]
fn ipv6_underlay_agrees_with_the_simulator() {
    if !may_run() {
        return;
    }
    // child-sa-lost over 2001:2::1 <-> 2001:2::2: the V6 counter counts.
    let net = compare("ipv6", "on", "0.2", "12");
    let b = &net["runs"][0]["counters"]["b_after"];
    assert!(
        b["IN_US_V6_PKT_SA_NOT_FOUND_SPI"].as_u64().unwrap() > 0,
        "{b}"
    );
}

#[test]
fn dynamic_peer_agrees_with_the_simulator() {
    if !may_run() {
        return;
    }
    // B knows A only as a dynamic peer: no recovery from B, black-holed to the end.
    compare("dynamic-peer", "on", "0.2", "12");
}

#[test]
fn unsupported_scenarios_are_refused() {
    let out = Command::new(ESPLAB)
        .args(["lab", "run", "spi-flood", "--netns", "--out"])
        .arg(out_dir("refused"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"flood\""), "{err}");
    assert!(err.contains("supports: "), "{err}");
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_pids(ns: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The process exited (a zombie nobody reaped yet counts: it holds no namespace).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `PID (COMM) STATE ...`: COMM may hold spaces, the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a netns run in a process group of its own, waits until both daemons run, sends
/// `signal` to the group (`group`, as a terminal's Ctrl-C does) or to the driver alone,
/// and checks that the namespaces, the processes in them and the state directory go.
fn interrupted(signal: &str, group: bool) {
    let dir = out_dir(&format!("interrupted{signal}"));
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(ESPLAB)
            .args([
                "lab",
                "run",
                "child-sa-lost",
                "--netns",
                "--recovery",
                "on",
                "--out",
            ])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let pid = child.id();
    let ns = [
        format!("esplab-lab{pid}-0-a"),
        format!("esplab-lab{pid}-0-b"),
    ];
    let state = std::env::temp_dir().join(format!("esplab-lab{pid}-0"));
    // Both daemons up (and dumpcap in A, when installed).
    wait_for("the daemons", Duration::from_secs(30), || {
        !ns_pids(&ns[0]).is_empty() && !ns_pids(&ns[1]).is_empty()
    });
    let pids: Vec<u32> = ns.iter().flat_map(|n| ns_pids(n)).collect();
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let st = Command::new("kill")
        .args([signal, "--", &target])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.wait();
    wait_for("the cleanup", Duration::from_secs(20), || {
        let l = netns_list();
        !ns.iter().any(|n| l.contains(n.as_str()))
            && !state.exists()
            && pids.iter().all(|&p| gone(p))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_or_a_killed_driver_leaves_nothing_behind() {
    if !may_run() {
        return;
    }
    // Ctrl-C at a terminal: SIGINT to the whole foreground process group.
    interrupted("-INT", true);
    // The driver killed outright: only the watchdog can clean up.
    interrupted("-KILL", false);
}
