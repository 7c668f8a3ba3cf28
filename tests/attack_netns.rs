//! esplab under attack, in network namespaces (issue #8, "Under attack" and "Key and
//! process hygiene"): two IKE-negotiating daemons A and B with invalid-SPI recovery on, and a
//! third namespace C that floods and forges. Numbers go to docs/RELIABILITY.md.
//!
//! Root only (namespaces, TUN devices); `ESPLAB_SKIP_NETNS=1` skips when not root. The tests
//! run one at a time (`SERIAL`) and bound every wait; `attack::Attack` stops its processes by
//! PID and deletes the namespaces even when an assertion fails. No timing assertions: the
//! throughput check counts delivered datagrams of a fixed-rate probe stream, and the
//! recovery bound is the documented worst case, far above what is measured.

#[path = "attack/mod.rs"]
mod attack;
#[path = "interop/harness.rs"]
mod harness;

use attack::{
    cpu_ms, helper_result, probe, rss_kib, spawn_helper, spawn_helper_on, uids, Attack, Rng,
    A_ADDR, B_ADDR, C_ADDR,
};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Not a test: the packet sender/counter run inside a namespace (`attack::run_helper`).
#[test]
#[ignore = "helper process of the attack tests"]
fn helper() {
    if let Ok(job) = std::env::var(attack::HELPER_ENV) {
        attack::run_helper(&job);
    }
}

/// `[recovery] hold_down` of the lab configs.
const HOLD_DOWN: Duration = Duration::from_secs(2);
/// `[log] invalid_spi_global_max` (the default) and the window set for these tests.
const GLOBAL_MAX: u64 = 10;
const GLOBAL_WINDOW_SECS: u64 = 4;
/// `events::AGENT_LINES_PER_SECOND`: IKE and recovery log lines a second.
const AGENT_LINES_PER_SECOND: u64 = 100;
/// `log.events_per_second` (the default).
const EVENTS_PER_SECOND: u64 = 200;

fn count(log: &str, pat: &str) -> u64 {
    log.lines().filter(|l| l.contains(pat)).count() as u64
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The SPIs a daemon shows (both directions).
fn spi_set(t: &Attack, name: &str) -> BTreeSet<String> {
    t.sas(name)
        .iter()
        .map(|s| format!("{}:{}", s["direction"], s["spi"]))
        .collect()
}

/// An unpaced SPI flood from a third namespace: logs within the limits, no IKE initiations
/// towards unknown addresses, bounded memory, no SA touched, and the tunnel keeps at least
/// 80% of a 1000 pps probe stream.
/// The attacker models another machine: both unpaced senders run on one CPU and B's daemon
/// on another, each in a scheduling group of its own ahead of unrelated jobs
/// (`attack::isolate`, `attack::spawn_helper_on`; one sending CPU offers 120 000 - 150 000
/// datagrams a second here). The flood and the tunnel's ESP-in-UDP share B's one UDP 4500
/// socket: when B cannot shed the flood as fast as it comes, the socket overflows and the
/// kernel drops tunnel packets in proportion. With the workspace crates unoptimised B needed
/// 6 - 8.5 us per packet and kept 64 - 85%; the dev profile therefore builds the datapath
/// crates at `opt-level = 2` (Cargo.toml), and B keeps 100% (docs/RELIABILITY.md, "Under
/// attack").
#[test]
fn spi_flood_from_a_third_namespace() {
    spi_flood("fl", true);
}

fn spi_flood(tag: &str, assert_throughput: bool) {
    let _s = serial();
    if !harness::may_run(false) {
        return;
    }
    let mut t = Attack::new(tag);
    let mut b = Attack::b_opts();
    b.log = format!("invalid_spi_global_window = \"{GLOBAL_WINDOW_SECS}s\"\n");
    b.own_session = true;
    t.pair(Attack::a_opts(), b);
    let c = t.add_c();

    // Baseline: the probe stream without the flood.
    const PPS: u64 = 1000;
    const MS: u64 = 3000;
    let (sent0, got0) = probe(&t.lab, 9000, PPS, MS);

    let pid = t.daemon("b").pid();
    // The attacker is another machine: its sending CPU is not B's. Both flood senders run
    // on one CPU, B's daemon on another, all ahead of unrelated jobs on the test machine
    // (`attack::ISOLATED_NICE`); A and the probe stream are not bound.
    let cpus = attack::split_cpus();
    if let Some((_, victim)) = cpus {
        attack::isolate(pid, victim);
    } else {
        eprintln!("one CPU only: the flood senders and B share it");
    }
    let rss0 = rss_kib(pid);
    let rec0 = t.recovery_stats("b");
    let log0 = t.lab.log("b").len();
    let log_a0 = t.lab.log("a").len();
    let events0 = std::fs::read_to_string(t.events_file("b"))
        .unwrap_or_default()
        .lines()
        .count() as u64;
    let spis0 = spi_set(&t, "b");
    let spis_a0 = spi_set(&t, "a");
    let rec_a0 = t.recovery_stats("a");

    // Two unpaced floods for the whole probe: one from C's own address, one forging A's
    // (address and NAT-T port), each with fresh random SPIs.
    let attacker = cpus.map(|(a, _)| a);
    let cpu0 = cpu_ms(pid);
    let t0 = Instant::now();
    let flood_ms = MS + 1500;
    let f1 = spawn_helper_on(
        &c,
        &format!("spi-flood {C_ADDR}:0 {B_ADDR}:4500 {flood_ms} 1"),
        attacker,
    );
    let f2 = spawn_helper_on(
        &c,
        &format!("spi-flood {A_ADDR}:4500 {B_ADDR}:4500 {flood_ms} 2"),
        attacker,
    );
    if attacker.is_some() {
        attack::autogroup_nice(f1.id());
        attack::autogroup_nice(f2.id());
    }
    std::thread::sleep(Duration::from_millis(500));
    let (sent1, got1) = probe(&t.lab, 9001, PPS, MS);
    let r1 = helper_result(f1, Duration::from_secs(60));
    let r2 = helper_result(f2, Duration::from_secs(60));
    let elapsed = t0.elapsed();
    let b_cpu = cpu_ms(pid) - cpu0;
    // Let B drain its socket before reading counters and memory.
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kib(pid);
    let rec1 = t.recovery_stats("b");
    let counters = t.counters("b");
    let log = t.lab.log("b")[log0..].to_string();
    let log_a = t.lab.log("a")[log_a0..].to_string();
    let events: Vec<serde_json::Value> = std::fs::read_to_string(t.events_file("b"))
        .unwrap()
        .lines()
        .skip(events0 as usize)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let secs = elapsed.as_secs_f64();
    let flood_sent = r1["sent"] + r2["sent"];
    let not_found = counters
        .get("IN_US_V4_PKT_SA_NOT_FOUND_SPI")
        .copied()
        .unwrap_or(0);
    let inv_lines = count(&log, "%CRYPTO-4-RECVD_PKT_INV_SPI: decaps:");
    let held: u64 = events
        .iter()
        .filter(|e| e["type"] == "events-suppressed")
        .map(|e| u(&e["count"]))
        .sum();
    // The senders' own time: their rate is the offered load.
    let flood_secs = r1["ms"].max(r2["ms"]).max(1) as f64 / 1000.0;
    eprintln!(
        "UNDER ATTACK spi-flood: {flood_sent} datagrams in {flood_secs:.1} s (offered {:.0}/s; \
         {} + {} socket-full retries; senders on CPU {attacker:?}, B on {}), \
         B counted {not_found} unknown-SPI packets (shed {:.0}/s, B on a CPU {b_cpu} ms of {:.0}); \
         probe {PPS} pps x {MS} ms: baseline {got0}/{sent0}, \
         under flood {got1}/{sent1}; B VmRSS {rss0} -> {rss1} KiB; B log +{} lines ({inv_lines} invalid-SPI), \
         events file +{} records ({held} held back by the rate limit); recovery before {rec0} after {rec1}",
        flood_sent as f64 / flood_secs,
        r1["full"],
        r2["full"],
        attack::affinity(pid),
        not_found as f64 / flood_secs,
        secs * 1000.0,
        log.lines().count(),
        events.len(),
    );

    // The tunnel kept at least 80% of the probe stream.
    assert!(
        !assert_throughput || got1 * 10 >= sent1 * 8,
        "probe under flood: {got1} of {sent1} delivered (baseline {got0}/{sent0})\n{}",
        t.logs()
    );
    // Zero packets towards the unknown address (no IKE, no hint: unprotected_hint is off).
    assert_eq!(r1["replies"], 0, "B answered the flood's own address");
    assert_eq!(
        count(&log, C_ADDR) - count(&log, "srcaddr=198.18.1.3"),
        0,
        "{log}"
    );
    // IKE initiations: none to unknown addresses; to A at most one per hold-down (A has an
    // IKE SA, so none at all is expected).
    let initiated = u(&rec1["ike_initiated"]) - u(&rec0["ike_initiated"]);
    assert!(
        initiated <= 1 + (secs / HOLD_DOWN.as_secs_f64()) as u64,
        "{initiated} IKE initiations in {secs:.1} s"
    );
    assert_eq!(count(&log, "sent IKE_SA_INIT"), 0, "{log}");
    assert_eq!(count(&log_a, "received IKE_SA_INIT"), 0, "{log_a}");
    // Recovery actions towards A stay within the global budget of 60 a minute.
    let actions = u(&rec1["deletes_sent"]) + u(&rec1["notifies_sent"])
        - u(&rec0["deletes_sent"])
        - u(&rec0["notifies_sent"]);
    assert!(actions <= 60, "{actions} recovery actions in {secs:.1} s");
    // Log lines: the invalid-SPI cap per window and its summaries, and the IKE/recovery lines
    // (`events::AGENT_LINES_PER_SECOND`, plus one summary a second).
    let windows = 2 + (secs as u64 + 1) / GLOBAL_WINDOW_SECS;
    assert!(
        inv_lines <= GLOBAL_MAX * windows,
        "{inv_lines} invalid-SPI lines"
    );
    let lines = log.lines().count() as u64;
    assert!(
        lines <= GLOBAL_MAX * windows + windows + (AGENT_LINES_PER_SECOND + 1) * (secs as u64 + 3),
        "{lines} log lines during the flood:\n{}",
        attack::tail(&log, 80)
    );
    // The events file: at most the rate limit per second, plus one summary per second.
    let seconds = secs.ceil() as u64 + 2;
    assert!(
        events.len() as u64 <= (EVENTS_PER_SECOND + 1) * seconds,
        "{} event records in {secs:.1} s",
        events.len()
    );
    if not_found > EVENTS_PER_SECOND * seconds {
        assert!(
            held > 0,
            "no events-suppressed record after {not_found} events"
        );
    }
    // Memory: bounded tables and rings only.
    assert!(
        rss1 < rss0 + 8192,
        "B's RSS grew from {rss0} to {rss1} KiB under the flood"
    );
    // No SA was touched (A got up to 60 protected Deletes naming the flood's SPIs from B:
    // none is one of its SAs), and the tunnel works.
    let rec_a1 = t.recovery_stats("a");
    eprintln!("A's recovery stats before {rec_a0} after {rec_a1}");
    assert_eq!(spi_set(&t, "b"), spis0);
    assert_eq!(spi_set(&t, "a"), spis_a0);
    assert!(t.ping(0), "ping after the flood\n{}", t.logs());
}

#[test]
fn spoofed_notifications_and_ike_sa_init_flood_delete_nothing() {
    let _s = serial();
    if !harness::may_run(false) {
        return;
    }
    let mut t = Attack::new("sp");
    t.pair(Attack::a_opts(), Attack::b_opts());
    let c = t.add_c();
    let spis_a = spi_set(&t, "a");
    let spis_b = spi_set(&t, "b");
    let ike_b = t.ike_sas("b");
    assert_eq!(ike_b.len(), 1, "{ike_b:?}");
    let hex64 = |v: &serde_json::Value| u64::from_str_radix(v.as_str().unwrap(), 16).unwrap();
    let ike = (hex64(&ike_b[0]["spi_i"]), hex64(&ike_b[0]["spi_r"]));
    let esp: Vec<u32> = t
        .sas("b")
        .iter()
        .map(|s| {
            let v = &s["spi"];
            v.as_u64().map(|n| n as u32).unwrap_or_else(|| {
                u32::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
            })
        })
        .collect();
    let rec0 = t.recovery_stats("b");
    let (log0, log_a0) = (t.lab.log("b").len(), t.lab.log("a").len());

    // 1. Forged unprotected INFORMATIONALs "from A" (its address and port 500): N(INVALID_SPI)
    //    for each real SPI, N(INVALID_IKE_SPI), Delete(ESP) and Delete(IKE) in the clear, with
    //    the real IKE SPIs and a few Message IDs; also on 4500 behind the non-ESP marker.
    let mut file = Vec::new();
    let mut file4500 = Vec::new();
    for mid in [0u32, 1, 2, 7, 1000] {
        for m in attack::spoofed_informationals(ike, &esp, mid) {
            file.extend_from_slice(&(m.len() as u16).to_be_bytes());
            file.extend_from_slice(&m);
            file4500.extend_from_slice(&(m.len() as u16 + 4).to_be_bytes());
            file4500.extend_from_slice(&[0; 4]);
            file4500.extend_from_slice(&m);
        }
    }
    let (p500, p4500) = (t.lab.dir.join("forged500"), t.lab.dir.join("forged4500"));
    std::fs::write(&p500, &file).unwrap();
    std::fs::write(&p4500, &file4500).unwrap();
    let t0 = Instant::now();
    let r500 = helper_result(
        spawn_helper(
            &c,
            &format!("send-file {A_ADDR}:500 {B_ADDR}:500 {} 20", p500.display()),
        ),
        Duration::from_secs(60),
    );
    let r4500 = helper_result(
        spawn_helper(
            &c,
            &format!(
                "send-file {A_ADDR}:4500 {B_ADDR}:4500 {} 20",
                p4500.display()
            ),
        ),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let forged_secs = t0.elapsed().as_secs_f64();
    let rec1 = t.recovery_stats("b");
    assert_eq!(
        spi_set(&t, "b"),
        spis_b,
        "B's SAs changed after forged packets"
    );
    assert_eq!(
        spi_set(&t, "a"),
        spis_a,
        "A's SAs changed after forged packets"
    );
    let ike_now = t.ike_sas("b");
    assert_eq!(ike_now.len(), 1);
    assert_eq!(ike_now[0]["spi_i"], ike_b[0]["spi_i"]);
    assert_eq!(ike_now[0]["state"], "established");
    let liveness = u(&rec1["liveness_checks"]) - u(&rec0["liveness_checks"]);
    assert!(
        liveness <= 1 + (forged_secs / HOLD_DOWN.as_secs_f64()) as u64,
        "{liveness} liveness checks for forged notifications in {forged_secs:.1} s"
    );
    assert!(t.ping(0), "ping after forged notifications\n{}", t.logs());

    // 2. IKE_SA_INIT flood "from A" (a configured peer, so each one is a candidate for a
    //    half-open SA) with random SPIs: above the half-open limit only COOKIEs go back.
    const INITS: u64 = 3000;
    let log1 = t.lab.log("b").len();
    let mut flood = spawn_helper(
        &c,
        &format!("init-flood {A_ADDR}:500 {B_ADDR}:500 {INITS} 3"),
    );
    let half_open = |t: &Attack| {
        t.ike_sas("b")
            .iter()
            .filter(|s| s["state"] != "established")
            .count()
    };
    let mut max_half_open = 0;
    let t1 = Instant::now();
    // Sampled while the flood runs (and once more after).
    while flood.try_wait().unwrap().is_none() && t1.elapsed() < Duration::from_secs(60) {
        max_half_open = max_half_open.max(half_open(&t));
        std::thread::sleep(Duration::from_millis(30));
    }
    let r = helper_result(flood, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    max_half_open = max_half_open.max(half_open(&t));
    let log = t.lab.log("b")[log1..].to_string();
    let cookies = count(&log, "N(COOKIE)");
    let received = count(&log, "received IKE_SA_INIT request");
    eprintln!(
        "UNDER ATTACK forged: {} datagrams on 500 + {} on 4500, liveness checks {liveness}; \
         IKE_SA_INIT flood: {} sent in {} ms, B logged {received} received, {cookies} COOKIE answers, \
         at most {max_half_open} half-open IKE SAs seen; B log +{} lines",
        r500["sent"],
        r4500["sent"],
        r["sent"],
        r["ms"],
        log.lines().count()
    );
    // ike.half_open_limit default 10 (RFC 7296 §2.6), plus the real IKE SA not counted.
    assert!(max_half_open <= 10, "{max_half_open} half-open IKE SAs");
    assert!(
        cookies > 0,
        "no COOKIE answers:\n{}",
        attack::tail(&log, 40)
    );
    // Half-open SAs expire (ike.half_open_timeout = 5s).
    t.lab
        .wait("half-open SAs to expire", Duration::from_secs(20), |_| {
            half_open(&t) == 0
        });
    // Zero SAs deleted on either side, and the tunnel still works.
    assert_eq!(
        spi_set(&t, "b"),
        spis_b,
        "B's SAs changed after the INIT flood"
    );
    assert_eq!(
        spi_set(&t, "a"),
        spis_a,
        "A's SAs changed after the INIT flood"
    );
    let all_b = t.lab.log("b")[log0..].to_string();
    let all_a = t.lab.log("a")[log_a0..].to_string();
    assert_eq!(count(&all_b, "CHILD SA removed"), 0, "{all_b}");
    assert_eq!(count(&all_a, "CHILD SA removed"), 0, "{all_a}");
    assert!(t.ping(0), "ping after the INIT flood\n{}", t.logs());
}

/// The recovery bound of docs/RELIABILITY.md ("Crash-restart") for these configs: B's
/// recovery initiation failing once costs the IKE retransmission schedule (1 s + 1.8 s +
/// 3.24 s with retransmit_tries = 2, timeout 1 s, base 1.8) and a hold-down (2 s) before the
/// next attempt; plus 2 s for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(11);

/// A's `child_lifetime` and the inbound linger after a pair is removed.
const CHILD_LIFETIME: f64 = 3.0;
const LINGER: f64 = 2.0;

#[test]
fn crash_restart_fifty_times_recovers_every_time() {
    let _s = serial();
    if !harness::may_run(false) {
        return;
    }
    let mut t = Attack::new("cr");
    let mut a = Attack::a_opts();
    a.peer_extra
        .push_str("child_lifetime = \"3s\"\nrekey_margin = \"1s\"\n");
    t.pair(a, Attack::b_opts());
    let mut rng = Rng(0x00c0_ffee_8008);
    let phases = ["idle", "traffic", "ike", "rekey"];
    let mut worst = [Duration::ZERO; 4];
    let mut total = [Duration::ZERO; 4];
    let mut hits = [0u32; 4];
    let mut rekey_cmds = 0;
    let t_all = Instant::now();
    for i in 0..50 {
        let phase = i % 4;
        let mut mark = t.lab.log("b").len();
        let mut traffic = None;
        match phase {
            0 => std::thread::sleep(Duration::from_millis(rng.below(200))),
            1 => {
                traffic = Some(spawn_helper(
                    &t.lab.ns[0],
                    &format!(
                        "probe-send {}:0 {}:9 1000 800",
                        attack::A_INNER,
                        attack::B_INNER
                    ),
                ));
                std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
            }
            2 => {
                // During the recovery IKE SA: a crash, a restart, and A's next packet (a ping
                // every 10 ms) makes B build a new IKE SA (IKE_SA_INIT + IKE_AUTH with
                // INITIAL_CONTACT, a few milliseconds here); B dies again in the middle.
                traffic = Some(
                    Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &t.lab.ns[0],
                            "ping",
                            "-n",
                            "-q",
                            "-i",
                            "0.01",
                        ])
                        .args(["-w", "3", "-I", attack::A_INNER, attack::B_INNER])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap(),
                );
                std::thread::sleep(Duration::from_millis(50));
                t.crash("b");
                t.restart("b");
                mark = t.lab.log("b").len();
                // B's IKE_SA_INIT is out: IKE_AUTH follows within a few milliseconds.
                t.wait_log("b", mark, "sent IKE_SA_INIT", Duration::from_secs(2));
                std::thread::sleep(Duration::from_micros(rng.below(2_000)));
            }
            _ => {
                // During a CHILD SA rekey started by A (`rekey` control request; A also
                // rekeys on its own every 1.5 to 2 s).
                let mark_a = t.lab.log("a").len();
                let r = t.ctl_raw("a", r#"{"cmd":"rekey","peer":"peer"}"#);
                if r["ok"] == true {
                    rekey_cmds += 1;
                    t.wait_log(
                        "a",
                        mark_a,
                        "sent CREATE_CHILD_SA request",
                        Duration::from_secs(2),
                    );
                } else {
                    // No rekey command in this build: wait for A's own rekey instead.
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_secs(5) {
                        let due = t
                            .ike_sas("a")
                            .iter()
                            .flat_map(|s| s["children"].as_array().cloned().unwrap_or_default())
                            .filter_map(|c| c["rekey_in_secs"].as_f64())
                            .fold(f64::MAX, f64::min);
                        if due < 0.05 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                std::thread::sleep(Duration::from_micros(rng.below(1_500)));
            }
        }
        t.crash("b");
        // Did the kill land where it was aimed? (For the report.) The exchange had not
        // finished at B when it died.
        let since = t.lab.log("b")[mark..].to_string();
        let landed = match phase {
            2 => since.contains("sent IKE_SA_INIT") && !since.contains("established"),
            // The old pair is removed at B when A's Delete for it arrives: the last step.
            3 => !since.contains("CHILD SA removed"),
            _ => true,
        };
        hits[phase] += u32::from(landed);
        if let Some(mut c) = traffic {
            // The pinger has done its job; the probe sender ends on its own within 1 s.
            if phase == 2 {
                let _ = c.kill();
            }
            let _ = c.wait_with_output();
        }
        t.restart("b");
        let t0 = Instant::now();
        // Pings every 100 ms until one passes (at most 20 s, then the bound check fails).
        let (ok, out) = harness::run(Command::new("ip").args([
            "netns",
            "exec",
            &t.lab.ns[0],
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-i",
            "0.1",
            "-w",
            "20",
            "-I",
            attack::A_INNER,
            attack::B_INNER,
        ]));
        let took = t0.elapsed();
        assert!(
            ok && took <= RECOVERY_BOUND,
            "crash {i} ({}): traffic not back within {RECOVERY_BOUND:?} ({took:?}): {out}\n{}",
            phases[phase],
            t.logs()
        );
        worst[phase] = worst[phase].max(took);
        total[phase] += took;
        // No SA outlives its lifetime (A's 3 s; an inbound SA lingers 2 s after removal).
        for name in ["a", "b"] {
            for sa in t.sas(name) {
                let age = sa["age_secs"].as_f64().unwrap();
                assert!(
                    age <= CHILD_LIFETIME + LINGER + 2.0,
                    "crash {i}: {name} has an SA {age:.1} s old: {sa}\n{}",
                    t.logs()
                );
            }
        }
    }
    let loop_time = t_all.elapsed();
    let mut summary = String::new();
    for p in 0..4 {
        let n = (0..50).filter(|i| i % 4 == p).count() as u32;
        summary.push_str(&format!(
            "{}: {} kills ({} landed in the aimed exchange), recovery mean {:.2} s max {:.2} s; ",
            phases[p],
            n,
            hits[p],
            total[p].as_secs_f64() / f64::from(n),
            worst[p].as_secs_f64()
        ));
    }
    eprintln!(
        "UNDER ATTACK crash-restart x50 in {loop_time:.1?}: {summary}({rekey_cmds} rekeys by control request)"
    );

    // Clean exits, nothing left behind: no process in the namespaces, then no namespaces.
    assert!(t.stop("a") && t.stop("b"), "a daemon ignored SIGTERM");
    for ns in t.lab.ns.clone() {
        let pids = harness::must(Command::new("ip").args(["netns", "pids", &ns]));
        assert!(pids.trim().is_empty(), "processes left in {ns}: {pids}");
    }
    let names = t.lab.ns.clone();
    drop(t);
    let list = harness::must(Command::new("ip").args(["netns", "list"]));
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind");
    }
}

/// The hex bytes of every key in `debug-keys esp_sa:` lines (Wireshark UAT: quoted
/// `"0x..."` fields).
fn logged_keys(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("debug-keys esp_sa:"))
        .flat_map(|l| l.split('"').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|f| f.strip_prefix("0x").map(|h| h.to_ascii_lowercase()))
        .filter(|h| h.len() >= 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

#[test]
fn hygiene_privileges_dropped_socket_0600_psk_file_warning_no_keys_in_log() {
    let _s = serial();
    if !harness::may_run(false) {
        return;
    }
    let Ok(nobody) = passwd_uid("nobody") else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let mut t = Attack::new("hy");
    // B: PSK in a file readable by others (warned about), `user = "nobody"` in its config.
    let psk_file = t.lab.dir.join("b.psk");
    std::fs::write(&psk_file, format!("{}\n", harness::PSK)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&psk_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = Attack::b_opts();
    b.top = "user = \"nobody\"".into();
    b.secret = "secret_file = \"b.psk\"".into();
    // A: `--user nobody` on the command line, and debug keys on (so the test knows the
    // negotiated ESP keys and can look for them in B's log, which must not have them).
    let mut a = Attack::a_opts();
    a.args = vec!["--user".into(), "nobody".into(), "--debug-keys".into()];
    t.pair(a, b);

    for name in ["a", "b"] {
        let pid = t.daemon(name).pid();
        assert_eq!(
            uids(pid),
            vec![nobody; 4],
            "{name} still runs with other ids"
        );
        let log = t.lab.log(name);
        assert!(
            log.contains(&format!("privileges dropped: now uid {nobody}")),
            "{log}"
        );
        let mode = std::fs::metadata(t.lab.sock(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "control socket of {name}");
    }
    let log_b = t.lab.log("b");
    assert!(
        log_b.contains("warning: secret file") && log_b.contains("readable by group or others"),
        "{log_b}"
    );
    assert!(!t.lab.log("a").contains("readable by group"));

    // Traffic still flows both ways and through a rekey-free CHILD SA of the dropped
    // daemons; a CHILD SA made after the drop works too (terminate + initiate).
    assert!(t.ping(0) && t.ping(1), "{}", t.logs());
    t.lab.esplab_ctl("a", &["terminate", "peer"]);
    t.lab.esplab_ctl("a", &["initiate", "peer"]);
    t.lab.wait(
        "new CHILD SA after the drop",
        Duration::from_secs(20),
        |l| l.esplab_sas("a") >= 2 && l.esplab_sas("b") >= 2,
    );
    let t0 = Instant::now();
    while !t.ping(0) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", t.logs());
    }

    // Keys: A (debug keys) logged them; B (default) has none of them, nor the PSK, in its
    // log or events file.
    let keys = logged_keys(&t.lab.log("a"));
    assert!(keys.len() >= 4, "A logged no keys:\n{}", t.lab.log("a"));
    let events_b = std::fs::read_to_string(t.events_file("b")).unwrap_or_default();
    let log_b = t.lab.log("b").to_ascii_lowercase();
    for k in &keys {
        assert!(!log_b.contains(k.as_str()), "B logged key {k}");
        assert!(!events_b.to_ascii_lowercase().contains(k.as_str()));
    }
    assert!(!log_b.contains(&harness::PSK.to_ascii_lowercase()));
    assert!(!log_b.contains("debug-keys"));
    eprintln!(
        "HYGIENE: uid {nobody} after start for both daemons; {} ESP keys logged by A (debug), none by B",
        keys.len()
    );

    // A clean stop still works without root (the kernel removes the TUN device and its
    // routes; the socket file in root's directory may stay and is replaced at the next
    // start).
    assert!(t.stop("a") && t.stop("b"));
    assert!(t.lab.log("b").contains("SIGTERM: stopping"));
}

/// Raw ESP needs CAP_NET_RAW when its socket is created: opened before the drop, it keeps
/// working after it (manually keyed peers: IKE-negotiated CHILD SAs always use UDP 4500).
#[test]
fn privilege_drop_keeps_the_raw_esp_socket_working() {
    let _s = serial();
    if !harness::may_run(false) {
        return;
    }
    let Ok(nobody) = passwd_uid("nobody") else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let mut t = Attack::new("hr");
    t.start_manual_esp(1, "b", "user = \"nobody\"");
    t.start_manual_esp(0, "a", "user = \"nobody\"");
    for name in ["a", "b"] {
        assert_eq!(uids(t.daemon(name).pid()), vec![nobody; 4], "{name}");
        assert!(t.lab.log(name).contains("+esp") || t.lab.log(name).contains(" esp,"));
    }
    let t0 = Instant::now();
    while !(t.ping(0) && t.ping(1)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no ping over raw ESP after the drop\n{}",
            t.logs()
        );
    }
    let sas = t.sas("b");
    assert!(
        sas.iter()
            .any(|s| s["direction"] == "in" && s["packets"].as_u64() >= Some(1)),
        "{sas:?}"
    );
    assert!(t.stop("a") && t.stop("b"));

    // An unknown user: the daemon refuses to run (one clear line), and undoes what it set up
    // (the control socket is gone, the TUN device too).
    let (ok, out) = t.run_manual_esp(0, "bad", &["--user", "no-such-user-esplab"]);
    assert!(!ok, "ran as an unknown user: {out}");
    assert!(
        out.contains("dropping privileges to user \"no-such-user-esplab\"")
            && out.contains("no such user"),
        "{out}"
    );
    assert!(!t.lab.sock("bad").exists(), "control socket left behind");
    let links = harness::must(Command::new("ip").args(["-n", &t.lab.ns[0], "link"]));
    assert!(!links.contains(&format!("{}m0", t.lab.tag)), "{links}");
}

/// uid of `name` from /etc/passwd (the test does not link esplab-netio).
fn passwd_uid(name: &str) -> Result<u32, ()> {
    let p = std::fs::read_to_string("/etc/passwd").map_err(|_| ())?;
    p.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
        .ok_or(())
}
