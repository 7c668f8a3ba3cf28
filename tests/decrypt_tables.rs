//! Captures open fully decrypted in tshark with the key tables esplab writes (issues
//! #4–#6): the lab's `esp_sa` + `ikev2_decryption_table` beside its pcap, and the flight
//! recorder's `.uat` + `.ikev2_decryption_table` beside its dump. "Fully" means every
//! protected IKE message (IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL) decrypts with a
//! correct ICV, the IKE_AUTH ones show their identities, and every ESP packet shows its
//! inner packet; without the tables none of that decrypts.
//!
//! Needs `tshark` (else fails unless `ESPLAB_SKIP_TSHARK=1`); the flight-recorder test
//! also needs root for network namespaces (else fails unless `ESPLAB_SKIP_NETNS=1`).

#[path = "decrypt/tshark.rs"]
mod tshark;

#[path = "interop/harness.rs"]
mod harness;

use harness::{may_run, EsplabNode, Lab};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tshark::{assert_fully_decrypted, logged_lines, tshark_usable, uat_lines, Tables};

fn esplab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_esplab"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `scenario` (a shipped name or a .toml file) with recovery on into `out`.
fn lab_run(scenario: &str, out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    let o = esplab(&[
        "lab",
        "run",
        scenario,
        "--recovery",
        "on",
        "--duration",
        "40s",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "esplab lab run {scenario}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_lines(p: &Path) -> Vec<String> {
    uat_lines(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Every `ikev2_decryption_table` line has the UAT's eight columns, the algorithms named
/// as Wireshark names them.
fn check_ike_lines(lines: &[String], encr: &str, integ: &str) {
    for l in lines {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols.len(), 8, "{l}");
        assert_eq!(cols[0].len(), 16, "{l}");
        assert_eq!(cols[1].len(), 16, "{l}");
        assert_eq!(cols[4], format!("\"{encr}\""), "{l}");
        assert_eq!(cols[7], format!("\"{integ}\""), "{l}");
    }
}

#[test]
fn lab_pcaps_decrypt_with_the_written_tables() {
    if !tshark_usable() {
        return;
    }
    let base = std::env::temp_dir().join(format!("esplab-decrypt-lab-{}", std::process::id()));
    // peer-reboot: B loses its state and a second IKE SA is made, so the table must hold
    // both. GCM (the default suite); the output directory is used as the Wireshark
    // configuration directory as it is: the files are named like a profile's.
    let gcm = base.join("gcm");
    lab_run("peer-reboot", &gcm);
    let ike = read_lines(&gcm.join("ikev2_decryption_table"));
    assert!(ike.len() >= 2, "{ike:?}");
    check_ike_lines(
        &ike,
        "AES-GCM-128 with 16 octet ICV [RFC5282]",
        "NONE [RFC4306]",
    );
    let t = Tables {
        config_dir: Some(gcm.clone()),
        ..Default::default()
    };
    let d = assert_fully_decrypted(&gcm.join("underlay.pcap"), &t, 4, 2);
    eprintln!("gcm: {d:?}");

    // The same scenario with AES-CBC + HMAC-SHA-256 for IKE and ESP, tables as `-o`.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/lab/scenarios/peer-reboot.toml"
    ))
    .unwrap();
    assert!(text.contains("[topology]\n"), "{text}");
    let text = text.replace(
        "[topology]\n",
        "[topology]\nike_proposal = \"aes128-sha256-x25519\"\nesp_proposal = \"aes128-sha256\"\n",
    );
    std::fs::create_dir_all(&base).unwrap();
    let file = base.join("peer-reboot-cbc.toml");
    std::fs::write(&file, text).unwrap();
    let cbc = base.join("cbc");
    lab_run(file.to_str().unwrap(), &cbc);
    let ike = read_lines(&cbc.join("ikev2_decryption_table"));
    assert!(ike.len() >= 2, "{ike:?}");
    check_ike_lines(&ike, "AES-CBC-128 [RFC3602]", "HMAC_SHA2_256_128 [RFC4868]");
    let t = Tables {
        esp: read_lines(&cbc.join("esp_sa")),
        ike,
        config_dir: None,
    };
    let d = assert_fully_decrypted(&cbc.join("underlay.pcap"), &t, 4, 2);
    eprintln!("cbc: {d:?}");
    let _ = std::fs::remove_dir_all(&base);
}

/// Files in `dir` with extension `ext`.
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

const LIMIT: Duration = Duration::from_secs(20);

/// Two `esplab peer` daemons negotiate with IKEv2; B (debug keys, flight recorder) loses
/// its inbound SA and dumps on the invalid SPI that follows. The dump must decrypt with
/// the tables beside it — IKE_AUTH included — and hold the same lines B logged.
#[test]
fn flight_recorder_dump_decrypts_ike_and_esp() {
    if !may_run(false) {
        return;
    }
    let mut lab = Lab::new("edt", "esplab-decrypt-tables", "fr");
    let cap = lab.dir.join("capture");
    let sections = format!(
        "[log]\ndebug_keys = true\n\n[capture]\nring = 500\nmin_interval = \"60s\"\ndir = \"{}\"\n\n",
        cap.display()
    );
    for (side, start, sections) in [(1, false, sections.as_str()), (0, true, "")] {
        let tun = format!("{}t{side}", lab.tag);
        lab.start_esplab(&EsplabNode {
            side,
            name: ["a", "b"][side],
            tun: &tun,
            suites: ("aes128-sha256-x25519", "aes128gcm16"),
            start,
            sections,
            peer_extra: "",
        });
    }
    lab.wait("the CHILD SA", LIMIT, |l| {
        l.esplab_sas("a") >= 2 && l.esplab_sas("b") >= 2
    });
    lab.ping_both_ways_n(2);
    // B forgets its inbound SA: A's next packets hit an unknown SPI.
    let sas: serde_json::Value =
        serde_json::from_str(lab.esplab_ctl("b", &["show", "sa", "--json"]).trim()).unwrap();
    let inbound = sas["sas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["direction"] == "in")
        .and_then(|s| s["spi"].as_str())
        .unwrap()
        .to_string();
    lab.esplab_ctl("b", &["clear", "sa", "--spi", &inbound]);
    let _ = lab.spawn_ping(0, 2, "0.2").finish();
    lab.wait("the dump", LIMIT, |_| !files(&cap, "pcap").is_empty());
    let pcap = files(&cap, "pcap").remove(0);
    let ike_file = pcap.with_extension("ikev2_decryption_table");
    lab.wait("the dump's key files", LIMIT, |_| {
        ike_file.exists() && pcap.with_extension("uat").exists()
    });
    let t = Tables {
        esp: read_lines(&pcap.with_extension("uat")),
        ike: read_lines(&ike_file),
        config_dir: None,
    };
    assert_eq!(t.ike.len(), 1, "one IKE SA: {:?}", t.ike);
    check_ike_lines(
        &t.ike,
        "AES-CBC-128 [RFC3602]",
        "HMAC_SHA2_256_128 [RFC4868]",
    );
    // The daemon logged the same line (log.debug_keys).
    let log = lab.log("b");
    assert_eq!(
        logged_lines(&log, "ikev2_decryption_table"),
        t.ike,
        "{}",
        lab.logs()
    );
    if tshark_usable() {
        let d = assert_fully_decrypted(&pcap, &t, 2, 1);
        eprintln!("flight recorder: {d:?}");
    }
}
