//! A `dumpcap` capture inside a network namespace, shared by tests/ike_decrypt_interop.rs
//! and tests/ike_raw_esp_netns.rs (included with `#[path]`; in a subdirectory, so not a
//! test target of its own).

// Each including test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dumpcap may take to start writing (a loaded 2-core machine is slow).
const START_LIMIT: Duration = Duration::from_secs(20);

/// Whether `dumpcap` is on PATH; panics when it is not, unless `ESPLAB_SKIP_TSHARK=1`.
pub fn has_dumpcap() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("dumpcap").is_file()));
    if !found && std::env::var("ESPLAB_SKIP_TSHARK").as_deref() != Ok("1") {
        panic!("dumpcap missing: apt-get install wireshark-common, or set ESPLAB_SKIP_TSHARK=1");
    }
    found
}

/// The `ip netns exec … dumpcap` arguments: a pcap (`-P`) of `dev` into `file`, with a
/// capture filter when one is given.
fn args(ns: &str, dev: &str, filter: Option<&str>, file: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = ["netns", "exec", ns, "dumpcap", "-q", "-P", "-i", dev]
        .iter()
        .map(Into::into)
        .collect();
    if let Some(f) = filter {
        v.push("-f".into());
        v.push(f.into());
    }
    v.push("-w".into());
    v.push(file.into());
    v
}

/// `dumpcap` on an interface inside a namespace; stopped (SIGINT, so the file is
/// complete) by PID, at the latest on drop.
pub struct Dumpcap {
    child: Child,
}

impl Dumpcap {
    /// Starts capturing everything on `dev` in `ns` into `file` (or only what the
    /// BPF capture `filter` selects); returns once the capture runs.
    pub fn start(ns: &str, dev: &str, filter: Option<&str>, file: &Path) -> Dumpcap {
        let child = Command::new("ip")
            .args(args(ns, dev, filter, file))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dumpcap");
        let mut d = Dumpcap { child };
        // The pcap header is written once the capture runs.
        let t0 = Instant::now();
        while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) < 24 {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("dumpcap on {dev} in {ns} exited: {st}");
            }
            assert!(t0.elapsed() < START_LIMIT, "dumpcap did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Stops the capture and waits for dumpcap to finish the file.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // `ip netns exec` execs dumpcap: this PID is dumpcap's.
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Dumpcap {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The arguments are what the two callers relied on: the filter only when asked, the
/// output file last. (Runs as a unit test of each including test binary.)
#[test]
fn dumpcap_arguments() {
    let f = Path::new("/tmp/x.pcap");
    let plain: Vec<String> = args("ns1", "veth0", None, f)
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        plain,
        [
            "netns",
            "exec",
            "ns1",
            "dumpcap",
            "-q",
            "-P",
            "-i",
            "veth0",
            "-w",
            "/tmp/x.pcap"
        ]
    );
    let filtered: Vec<String> = args("ns1", "veth0", Some("ip proto 50"), f)
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(filtered[8..], ["-f", "ip proto 50", "-w", "/tmp/x.pcap"]);
}
