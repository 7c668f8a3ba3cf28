//! End-to-end test of the invalid-SPI flight recorder (`[capture]`, docs/recovery.md): two
//! `esplab peer` daemons from `examples/two-peers/run.sh`, B restarted with capture, debug
//! keys and an `on_event` script, then B's inbound SA cleared and A's pings sent into the
//! void. B must dump a pcap and a `.uat` file, the pcap must decrypt in tshark with those
//! lines, and the script must have run with the event in its environment. With per-SPI
//! sampling, over UDP and raw ESP, the dump must still hold the packets with the stale SPI.
//!
//! Needs root, `ip` and `ping` (else fails unless `ESPLAB_SKIP_NETNS=1`) and `tshark` (else
//! fails unless `ESPLAB_SKIP_TSHARK=1`, which skips only the decryption check).

#[path = "peer_netns/lab.rs"]
#[allow(dead_code)]
mod lab;

use lab::{netns_available, run, Encap, Lab, Peer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A's outbound SPI (B's inbound), as in examples/two-peers/{a,b}.toml.
const SPI_A: &str = "0xc0de0001";

fn tshark_available() -> bool {
    if std::env::var("ESPLAB_SKIP_TSHARK").as_deref() == Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "tshark check: skipped (ESPLAB_SKIP_TSHARK=1)"
        );
        return false;
    }
    let ok = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no working `tshark` on PATH: install it, or set ESPLAB_SKIP_TSHARK=1 to skip the decryption check"
    );
    true
}

/// Files in `dir` ending with `ext`.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn invalid_spi_dumps_pcap_uat_and_runs_on_event() {
    let test = "invalid_spi_dumps_pcap_uat_and_runs_on_event";
    if !netns_available(test) {
        return;
    }
    dumps_pcap_uat_and_runs_on_event(Lab::up("cap", Encap::Udp, 4));
}

/// The same with B's TUN → ESP direction on a thread of its own: that thread records
/// what it sends in a ring of its own, and the dump merges both rings in time order, so
/// B's echo replies (sent by that thread) are in it, each after its request.
#[test]
fn dump_merges_the_sending_threads_ring() {
    let test = "dump_merges_the_sending_threads_ring";
    if !netns_available(test) {
        return;
    }
    let lab = Lab::up_env("captx", Encap::Udp, 4, &[("ESPLAB_DATAPATH", "tx-thread")]);
    dumps_pcap_uat_and_runs_on_event(lab);
}

/// B restarted with `[capture]` (ring of 200, `extra` lines appended to the table) and an
/// `on_event` script writing its environment; returns the dump directory and the file the
/// script writes.
fn restart_b_with_capture(lab: &Lab, extra: &str) -> (PathBuf, PathBuf) {
    let cap = lab.state.join("capture");
    let hook = lab.state.join("hook.sh");
    let env_file = lab.state.join("hook.env");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nenv | grep '^ESPLAB_' > {0}.tmp && mv {0}.tmp {0}\n",
            env_file.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // run.sh ends the generated config with a [log] table: extend it, add [capture], and
    // restart B to read it.
    let cfg = lab.state.join("b.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.trim_end().ends_with(".jsonl\""),
        "run.sh's generated config no longer ends in [log]: {text}"
    );
    text.push_str(&format!(
        "debug_keys = true\n\n[capture]\nring = 200\nmin_interval = \"60s\"\ndir = \"{}\"\non_event = \"{}\"\n{extra}",
        cap.display(),
        hook.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    lab.restart(Peer::B);
    wait_for("B's capture line", Duration::from_secs(10), || {
        lab.log(Peer::B).contains("capture: recording the last 200")
    });
    (cap, env_file)
}

/// `before` pings A -> B, then B forgets A's SA and two more pings hit the unknown SPI;
/// returns the one dump B writes into `cap`.
fn desync_and_dump(lab: &Lab, cap: &Path, before: u32) -> PathBuf {
    let p = lab.ping(Peer::A, before);
    assert_eq!(
        p.received,
        u64::from(before),
        "A -> B before the clear: {p:?}"
    );
    lab.esplab(Peer::B, &["clear", "sa", "--spi", SPI_A]);
    let p = lab.ping(Peer::A, 2);
    assert_eq!(p.received, 0, "A -> B after B cleared {SPI_A}: {p:?}");
    wait_for("a pcap in the capture dir", Duration::from_secs(10), || {
        !files(cap, "pcap").is_empty()
    });
    let pcaps = files(cap, "pcap");
    assert_eq!(pcaps.len(), 1, "one dump per min_interval: {pcaps:?}");
    pcaps[0].clone()
}

fn dumps_pcap_uat_and_runs_on_event(lab: Lab) {
    let (cap, env_file) = restart_b_with_capture(&lab, "");

    let pcap = &desync_and_dump(&lab, &cap, 2);
    let name = pcap.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("invalid-spi-") && name.ends_with("-spi-c0de0001.pcap"),
        "{name}"
    );
    let uat = pcap.with_extension("uat");
    let uat_text = std::fs::read_to_string(&uat).unwrap();
    let lines: Vec<&str> = uat_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("\"0xc0de0001\"")),
        "{uat_text}"
    );
    let log = lab.log(Peer::B);
    assert!(
        log.contains("capture: wrote ") && log.contains(&pcap.display().to_string()),
        "{log}"
    );

    wait_for("the on_event script", Duration::from_secs(10), || {
        env_file.exists()
    });
    let env = std::fs::read_to_string(&env_file).unwrap();
    for want in [
        "ESPLAB_EVENT=invalid-spi".to_string(),
        "ESPLAB_SPI=0xc0de0001".to_string(),
        "ESPLAB_SRC=198.18.0.1".to_string(),
        "ESPLAB_DST=198.18.0.2".to_string(),
        "ESPLAB_FAMILY=ipv4".to_string(),
        "ESPLAB_ENCAP=udp/4500/4500".to_string(),
        "ESPLAB_NODE=b".to_string(),
        format!("ESPLAB_PCAP={}", pcap.display()),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }
    assert!(env.contains("ESPLAB_SEQ="), "{env}");

    if tshark_available() {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r")
            .arg(pcap)
            .args(["-o", "esp.enable_encryption_decode:TRUE"]);
        for l in &lines {
            cmd.args(["-o", &format!("uat:esp_sa:{l}")]);
        }
        let o = run(&mut cmd, Duration::from_secs(60));
        assert!(o.ok(), "tshark: {:?}\n{}{}", o.code, o.stdout, o.stderr);
        // A's echo requests, before and after the clear, decrypt to ICMP.
        let requests = o
            .stdout
            .lines()
            .filter(|l| l.contains("Echo (ping) request"))
            .count();
        assert!(requests >= 3, "tshark decoded no pings:\n{}", o.stdout);
        // B's replies to the two pings before the clear, recorded as B sent them (by the
        // sending thread when it has one), each after its request in the merged dump.
        let replies: Vec<usize> = o
            .stdout
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("Echo (ping) reply"))
            .map(|(i, _)| i)
            .collect();
        assert!(replies.len() >= 2, "no replies in the dump:\n{}", o.stdout);
        let first_request = o
            .stdout
            .lines()
            .position(|l| l.contains("Echo (ping) request"))
            .unwrap();
        assert!(replies[0] > first_request, "out of order:\n{}", o.stdout);
    }
}

/// `(source, SPI)` of each ESP record (in UDP or raw) of a classic pcap with IPv4
/// `LINKTYPE_RAW` records (what the recorder writes), in file order.
fn esp_records(pcap: &Path) -> Vec<(String, u32)> {
    let b = std::fs::read(pcap).unwrap();
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let len = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let rec = &b[at + 16..at + 16 + len];
        at += 16 + len;
        let ihl = usize::from(rec[0] & 0x0f) * 4;
        let esp = match rec[9] {
            17 => ihl + 8,
            50 => ihl,
            _ => continue,
        };
        if rec.len() < esp + 8 {
            continue;
        }
        let spi = u32::from_be_bytes(rec[esp..esp + 4].try_into().unwrap());
        if spi != 0 {
            let src = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&rec[12..16]).unwrap());
            out.push((src.to_string(), spi));
        }
    }
    out
}

/// Per-SPI sampling (`per_spi_interval`, here an hour so that only the first packet of each
/// SPI is kept): of A's pings before the clear and B's replies, one packet each; after the
/// clear the packet with the now unknown SPI, sampled out on arrival, is recorded after all
/// once the SAD lookup failed, so the dump holds what caused it.
#[test]
fn sampled_dump_keeps_the_packets_with_the_unknown_spi() {
    let test = "sampled_dump_keeps_the_packets_with_the_unknown_spi";
    if !netns_available(test) {
        return;
    }
    sampled_dump(Lab::up("capsm", Encap::Udp, 4));
}

/// The same over raw ESP (IP protocol 50), which the datapath reads on its own path.
#[test]
fn sampled_dump_keeps_the_raw_esp_packets_with_the_unknown_spi() {
    let test = "sampled_dump_keeps_the_raw_esp_packets_with_the_unknown_spi";
    if !netns_available(test) {
        return;
    }
    sampled_dump(Lab::up("capsmr", Encap::Esp, 4));
}

fn sampled_dump(lab: Lab) {
    let (cap, _) = restart_b_with_capture(&lab, "per_spi_interval = \"1h\"\n");
    let recs = esp_records(&desync_and_dump(&lab, &cap, 3));
    let spi_a = u32::from_str_radix(SPI_A.trim_start_matches("0x"), 16).unwrap();
    let from_a = recs
        .iter()
        .filter(|(src, spi)| src == "198.18.0.1" && *spi == spi_a)
        .count();
    let from_b = recs.iter().filter(|(src, _)| src == "198.18.0.2").count();
    // The first ping (kept on arrival) and at least the packet that fired the dump (kept
    // late); without the late record there would be one.
    assert!(
        from_a >= 2,
        "A's packets with {SPI_A} in the dump: {recs:x?}"
    );
    assert_eq!(from_b, 1, "B's replies are sampled to one: {recs:x?}");
    let log = lab.log(Peer::B);
    assert!(
        log.contains("ESP sampled, one packet per SPI per 3600s"),
        "{log}"
    );
}
