//! `esplab lab` from the command line: list, run with options, JSON output, errors.

use std::process::Command;

fn esplab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_esplab"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn list_names_the_shipped_scenarios() {
    let o = esplab(&["lab", "list"]);
    assert!(o.status.success());
    let s = String::from_utf8(o.stdout).unwrap();
    for name in [
        "peer-reboot",
        "child-sa-lost",
        "dynamic-peer",
        "spi-flood",
        "late-packets",
        "ipv6",
        "nat-t",
        "spoofed-notify",
        "one-way-cut",
        "rekey-early-switch",
        "rekey-collision",
        "hub-reboot",
        "nat-rebind",
    ] {
        assert!(s.contains(name), "{name} missing from:\n{s}");
    }
    assert!(!s.contains("not yet"), "{s}");
}

#[test]
fn run_writes_the_outputs_and_prints_json() {
    let dir = std::env::temp_dir().join(format!("esplab-cli-lab-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let o = esplab(&[
        "lab",
        "run",
        "child-sa-lost",
        "--recovery",
        "on",
        "--duration",
        "40s",
        "--seed",
        "5",
        "--out",
        d,
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scenario"], "child-sa-lost");
    assert_eq!(v["seed"], 5);
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["runs"][0]["recovery"], "on");
    let on_disk = std::fs::read(dir.join("report.json")).unwrap();
    assert_eq!(on_disk, o.stdout);
    for f in [
        "report.txt",
        "plot.svg",
        "underlay.pcap",
        "esp_sa",
        "plot.png",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // The plot rendered: a PNG of the SVG's size (960 wide, one 240-high panel per run).
    let png = std::fs::read(dir.join("plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 960);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 280);
    // The summary names both runs side by side.
    let o = esplab(&["lab", "run", "ipv6", "--duration", "35", "--out", d]);
    assert!(o.status.success());
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.contains("recovery on") && s.contains("recovery off") && s.contains("verdict:"));
    assert!(s.contains("plot.png"), "{s}");
    // Not a terminal: no progress bar on stderr.
    assert!(!String::from_utf8_lossy(&o.stderr).contains('['));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_scenario_and_bad_duration_fail() {
    let o = esplab(&["lab", "run", "no-such-thing"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("esplab lab list"));
    let o = esplab(&["lab", "run", "ipv6", "--duration", "forever"]);
    assert_eq!(o.status.code(), Some(2));
}
