//! tshark checks shared by tests/decrypt_tables.rs and tests/ike_decrypt_interop.rs
//! (included with `#[path]`; in a subdirectory, so not a test target of its own): does a
//! capture open fully decrypted with the Wireshark `esp_sa` and `ikev2_decryption_table`
//! lines esplab wrote or logged?

// Each including test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// False (with a message) when ESPLAB_SKIP_TSHARK=1 and tshark is missing; panics when
/// it is missing otherwise.
pub fn tshark_usable() -> bool {
    let ok = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var("ESPLAB_SKIP_TSHARK").as_deref() == Ok("1") {
        eprintln!("skipped: tshark not installed (ESPLAB_SKIP_TSHARK=1)");
        return false;
    }
    panic!("tshark is not installed (apt-get install tshark), or set ESPLAB_SKIP_TSHARK=1");
}

/// The key tables to decrypt with.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// `esp_sa` UAT lines.
    pub esp: Vec<String>,
    /// `ikev2_decryption_table` UAT lines.
    pub ike: Vec<String>,
    /// Instead of `-o uat:` options: a directory holding files named `esp_sa` and
    /// `ikev2_decryption_table`, used as the Wireshark configuration directory.
    pub config_dir: Option<std::path::PathBuf>,
}

/// The UAT lines of a file's text (comments and blank lines skipped).
pub fn uat_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The UAT lines a daemon log holds after `debug-keys <table>: `.
pub fn logged_lines(log: &str, table: &str) -> Vec<String> {
    let tag = format!("debug-keys {table}: ");
    let mut v: Vec<String> = Vec::new();
    for l in log.lines() {
        if let Some(i) = l.find(&tag) {
            let line = l[i + tag.len()..].trim().to_string();
            if !v.contains(&line) {
                v.push(line);
            }
        }
    }
    v
}

/// `tshark -n -r pcap` with ESP decryption on and the tables of `t`.
fn tshark(pcap: &Path, t: &Tables) -> Command {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "esp.enable_encryption_decode:TRUE"]);
    let dir = t.config_dir.clone().unwrap_or_else(|| {
        // An empty configuration directory: no user tables or preferences leak in.
        let empty = std::env::temp_dir().join(format!("esplab-ws-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        empty
    });
    cmd.env("WIRESHARK_CONFIG_DIR", dir);
    for l in &t.esp {
        cmd.args(["-o", &format!("uat:esp_sa:{l}")]);
    }
    for l in &t.ike {
        cmd.args(["-o", &format!("uat:ikev2_decryption_table:{l}")]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What tshark made of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrypted {
    /// IKE_AUTH messages.
    pub ike_auth: usize,
    /// IKE_AUTH messages whose decrypted IDi/IDr shows an FQDN.
    pub ike_auth_with_id: usize,
    /// Protected IKE messages (IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL).
    pub protected: usize,
    /// Protected IKE messages decrypted with a correct ICV / integrity checksum.
    pub protected_ok: usize,
    /// Distinct IKE SAs (initiator SPIs) among the decrypted protected messages.
    pub ike_sas: usize,
    /// ESP packets.
    pub esp: usize,
    /// ESP packets whose inner IP packet was decoded.
    pub esp_ok: usize,
}

/// Decrypts `pcap` with `t` and counts (one tshark run).
pub fn decrypt(pcap: &Path, t: &Tables) -> Decrypted {
    let cols = [
        "isakmp.exchangetype",
        "isakmp.enc.decrypted",
        "isakmp.ikev2.integrity_checksum",
        "isakmp.id.data.fqdn",
        "isakmp.ispi",
        "esp.spi",
        "ip.src",
        "ipv6.src",
    ];
    let mut cmd = tshark(pcap, t);
    cmd.args(["-Y", "isakmp || esp", "-T", "fields", "-E", "occurrence=a"]);
    for c in cols {
        cmd.args(["-e", c]);
    }
    let o = cmd.output().expect("run tshark");
    // tshark says "Running as user root ..." on stderr: only the status and stdout matter.
    assert!(
        o.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut d = Decrypted {
        ike_auth: 0,
        ike_auth_with_id: 0,
        protected: 0,
        protected_ok: 0,
        ike_sas: 0,
        esp: 0,
        esp_ok: 0,
    };
    let mut spis: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("").trim();
        // Protected exchanges: IKE_AUTH (35), CREATE_CHILD_SA (36), INFORMATIONAL (37).
        let exch: Option<u32> = get(0).split(',').next().and_then(|x| x.parse().ok());
        if let Some(x @ 35..=37) = exch {
            d.protected += 1;
            let ok = !get(1).is_empty() && get(2).is_empty();
            if ok {
                d.protected_ok += 1;
                let spi = get(4).to_string();
                if !spis.contains(&spi) {
                    spis.push(spi);
                }
            }
            if x == 35 {
                d.ike_auth += 1;
                if ok && !get(3).is_empty() {
                    d.ike_auth_with_id += 1;
                }
            }
        }
        if !get(5).is_empty() {
            d.esp += 1;
            // Decrypted ESP shows the inner IP header: a second ip.src / ipv6.src.
            let n = |s: &str| s.split(',').filter(|x| !x.is_empty()).count();
            if n(get(6)) + n(get(7)) >= 2 {
                d.esp_ok += 1;
            }
        }
    }
    d.ike_sas = spis.len();
    d
}

/// Asserts that every protected IKE message and every ESP packet of `pcap` decrypts with
/// `t`, that at least `min_auth` IKE_AUTH messages and `min_sas` IKE SAs were seen, and
/// that without the tables nothing decrypts (so the check means something).
pub fn assert_fully_decrypted(
    pcap: &Path,
    t: &Tables,
    min_auth: usize,
    min_sas: usize,
) -> Decrypted {
    let d = decrypt(pcap, t);
    let what = format!(
        "{}: {d:?}\nesp_sa:\n{:?}\nikev2:\n{:?}",
        pcap.display(),
        t.esp,
        t.ike
    );
    assert!(d.ike_auth >= min_auth, "too few IKE_AUTH messages: {what}");
    assert_eq!(
        d.ike_auth_with_id, d.ike_auth,
        "IKE_AUTH not decrypted: {what}"
    );
    assert_eq!(
        d.protected_ok, d.protected,
        "protected IKE messages not decrypted: {what}"
    );
    assert!(d.ike_sas >= min_sas, "too few IKE SAs decrypted: {what}");
    assert!(d.esp > 0, "no ESP in the capture: {what}");
    assert_eq!(d.esp_ok, d.esp, "ESP not decrypted: {what}");
    let none = decrypt(pcap, &Tables::default());
    assert_eq!(
        (none.ike_auth_with_id, none.protected_ok, none.esp_ok),
        (0, 0, 0),
        "decrypts without keys?! {none:?}"
    );
    d
}
