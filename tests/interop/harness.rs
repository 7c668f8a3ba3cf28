//! Network-namespace lab shared by tests/ike_interop.rs and tests/recovery_interop.rs
//! (included with `#[path = "interop/harness.rs"] mod harness;`; being in a subdirectory
//! it is not a test target of its own).
//!
//! Two namespaces, A and B, joined by a veth pair (198.18.0.1/2 underlay, 198.19.1.1 and
//! 198.19.2.1 on loopback as the protected addresses; with [`Lab::new_v6`] 2001:2::1/2
//! and 2001:2:0:1::1 / 2001:2:0:2::1), with `esplab peer` daemons and/or
//! charon (via tests/interop/charon.sh) running in them. Needs root; `may_run` decides
//! whether a test runs, fails or is skipped (ESPLAB_SKIP_NETNS / ESPLAB_SKIP_STRONGSWAN).
//! Dropping the `Lab` stops the processes by PID and deletes the namespaces.

// Each including test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ESPLAB: &str = env!("CARGO_BIN_EXE_esplab");
pub const CHARON: &str = "/usr/lib/ipsec/charon";
pub const PSK: &str = "interop-test-psk-only";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// False when the test must be skipped (and says why); panics when it may not be.
pub fn may_run(strongswan: bool) -> bool {
    if !is_root() {
        if std::env::var("ESPLAB_SKIP_NETNS").as_deref() == Ok("1") {
            eprintln!("skipped: not root (ESPLAB_SKIP_NETNS=1)");
            return false;
        }
        panic!("needs root for network namespaces; set ESPLAB_SKIP_NETNS=1 to skip");
    }
    if strongswan && !Path::new(CHARON).exists() {
        if std::env::var("ESPLAB_SKIP_STRONGSWAN").as_deref() == Ok("1") {
            eprintln!("skipped: {CHARON} missing (ESPLAB_SKIP_STRONGSWAN=1)");
            return false;
        }
        panic!(
            "{CHARON} missing: apt-get install strongswan-charon strongswan-swanctl \
             libcharon-extra-plugins libstrongswan-standard-plugins \
             libstrongswan-extra-plugins, or set ESPLAB_SKIP_STRONGSWAN=1"
        );
    }
    true
}

pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

pub fn must(cmd: &mut Command) -> String {
    let dbg = format!("{cmd:?}");
    let (ok, s) = run(cmd);
    assert!(ok, "{dbg} failed: {s}");
    s
}

pub fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

/// The addresses of a lab, per side (0 = A, 1 = B).
#[derive(Debug)]
pub struct Addrs {
    /// Underlay (veth) addresses.
    pub under: [&'static str; 2],
    /// Underlay prefix length.
    pub under_len: &'static str,
    /// Protected addresses (on loopback).
    pub prot: [&'static str; 2],
    /// Protected networks (the traffic selectors).
    pub nets: [&'static str; 2],
}

pub const V4: Addrs = Addrs {
    under: ["198.18.0.1", "198.18.0.2"],
    under_len: "24",
    prot: ["198.19.1.1", "198.19.2.1"],
    nets: ["198.19.1.0/24", "198.19.2.0/24"],
};

pub const V6: Addrs = Addrs {
    under: ["2001:2::1", "2001:2::2"],
    under_len: "64",
    prot: ["2001:2:0:1::1", "2001:2:0:2::1"],
    nets: ["2001:2:0:1::/64", "2001:2:0:2::/64"],
};

/// What a finished `ping -q` reported.
#[derive(Debug)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    pub output: String,
}

impl PingResult {
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }
}

/// A `ping` running in the background (see [`Lab::spawn_ping`]).
pub struct Ping {
    /// `None` once finished.
    child: Option<Child>,
    pub what: String,
}

impl Ping {
    /// Whether it is still sending.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for it and parses the summary line
    /// (`N packets transmitted, M received, ...`).
    pub fn finish(mut self) -> PingResult {
        let child = self.child.take().expect("not finished yet");
        let out = child.wait_with_output().expect("ping");
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let line = output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{}: no ping summary in {output:?}", self.what));
        let num = |key: &str| -> u32 {
            line.split(',')
                .find(|f| f.contains(key))
                .and_then(|f| f.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: cannot parse {line:?}", self.what))
        };
        PingResult {
            transmitted: num("transmitted"),
            received: num("received"),
            output,
        }
    }
}

impl Drop for Ping {
    fn drop(&mut self) {
        // Only when a test fails mid-run: do not leave pings behind.
        if let Some(c) = &mut self.child {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// One `esplab peer` daemon: which side it runs on and what its config says beyond the
/// common part.
pub struct EsplabNode<'a> {
    /// 0 = A (198.18.0.1, 198.19.1.0/24), 1 = B (198.18.0.2, 198.19.2.0/24).
    pub side: usize,
    /// Daemon name; also the stem of its .toml, .log and .sock files in the lab dir.
    pub name: &'a str,
    /// TUN interface name.
    pub tun: &'a str,
    /// (IKE proposal, ESP proposal).
    pub suites: (&'a str, &'a str),
    /// Whether the peer initiates on its own (`start`).
    pub start: bool,
    /// Extra top-level sections, placed between `[ike]` and `[[peer]]`.
    pub sections: &'a str,
    /// Extra lines for the `[[peer]]` table.
    pub peer_extra: &'a str,
}

/// Two namespaces joined by a veth pair, with what runs in them. Dropping it stops the
/// processes (by PID) and deletes the namespaces.
pub struct Lab {
    pub tag: String,
    pub ns: [String; 2],
    pub dir: PathBuf,
    /// The addresses (IPv4 or IPv6 lab).
    pub addrs: &'static Addrs,
    /// Running daemons, in start order.
    peers: Vec<Child>,
    /// Names of every esplab started (for diagnostics), without repeats.
    names: Vec<String>,
    charon: bool,
}

impl Lab {
    /// Namespaces `{ns_prefix}-{tag}{pid}-a/-b`, files under `$TMP/{dir_prefix}-{tag}{pid}`.
    pub fn new(ns_prefix: &str, dir_prefix: &str, tag: &str) -> Lab {
        Self::with_addrs(ns_prefix, dir_prefix, tag, &V4)
    }

    /// [`Lab::new`] with an IPv6 underlay and IPv6 protected networks ([`V6`]).
    pub fn new_v6(ns_prefix: &str, dir_prefix: &str, tag: &str) -> Lab {
        Self::with_addrs(ns_prefix, dir_prefix, tag, &V6)
    }

    fn with_addrs(ns_prefix: &str, dir_prefix: &str, tag: &str, addrs: &'static Addrs) -> Lab {
        let id = std::process::id() % 100_000;
        let tag = format!("{tag}{id}");
        let ns = [
            format!("{ns_prefix}-{tag}-a"),
            format!("{ns_prefix}-{tag}-b"),
        ];
        let dir = std::env::temp_dir().join(format!("{dir_prefix}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in &ns {
            let _ = run(Command::new("ip").args(["netns", "del", n]));
        }
        let lab = Lab {
            tag,
            ns,
            dir,
            addrs,
            peers: Vec::new(),
            names: Vec::new(),
            charon: false,
        };
        let [a, b] = &lab.ns;
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        let (va, vb) = (format!("{}a", lab.tag), format!("{}b", lab.tag));
        ip(&[
            "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
        ]);
        let v6 = addrs.under[0].contains(':');
        let host_len = if v6 { "128" } else { "32" };
        for (side, (n, v)) in [(a, &va), (b, &vb)].into_iter().enumerate() {
            let under = format!("{}/{}", addrs.under[side], addrs.under_len);
            let prot = format!("{}/{host_len}", addrs.prot[side]);
            // nodad: usable at once instead of after duplicate address detection.
            let mut args = vec!["-n", n, "addr", "add", under.as_str(), "dev", v.as_str()];
            if v6 {
                args.push("nodad");
            }
            ip(&args);
            ip(&["-n", n, "addr", "add", prot.as_str(), "dev", "lo"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        lab
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn charon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon/charon.log")).unwrap_or_default()
    }

    /// Starts `esplab peer` on `node.side` with an IKE peer for the other side, and waits
    /// for its control socket. The log is appended to, so a restarted daemon keeps the
    /// earlier run's lines.
    pub fn start_esplab(&mut self, node: &EsplabNode) {
        let side = node.side;
        let a = self.addrs;
        let (local, remote, lnet, rnet) = (
            a.under[side],
            a.under[1 - side],
            a.nets[side],
            a.nets[1 - side],
        );
        // esplab ↔ esplab uses its own ids; against charon ours is "esplab.esplab.test".
        let (lid, rid) = if side == 0 {
            ("esplab.esplab.test", "sw.esplab.test")
        } else {
            ("sw.esplab.test", "esplab.esplab.test")
        };
        let name = node.name;
        let sock = self.sock(name);
        let cfg = format!(
            r#"name = "{name}"
[underlay]
local = "{local}"
encap = "udp"
[tun]
name = "{tun}"
mtu = 1400
[control]
socket = "{sock}"
[ike]
retransmit_tries = 2
retransmit_timeout = "1s"
{sections}[[peer]]
name = "peer"
address = "{remote}"
local_ts = ["{lnet}"]
remote_ts = ["{rnet}"]
auth = "psk"
local_id = "{lid}"
remote_id = "{rid}"
secret = "{PSK}"
ike_proposals = ["{ike}"]
esp_proposals = ["{esp}"]
start = {start}
{peer_extra}"#,
            tun = node.tun,
            sock = sock.display(),
            sections = node.sections,
            ike = node.suites.0,
            esp = node.suites.1,
            start = node.start,
            peer_extra = node.peer_extra,
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[side], ESPLAB, "peer", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.peers.push(child);
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_owned());
        }
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "esplab {name} did not come up: {}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the most recently started esplab (no Delete, no cleanup: a crash).
    pub fn crash_last_esplab(&mut self) {
        if let Some(mut c) = self.peers.pop() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn charon_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/charon.sh")
    }

    /// Starts charon on side B; `close_action` sets the CHILD SA's close_action (the
    /// script's default is none).
    pub fn strongswan(&mut self, suites: (&str, &str), start: bool, close_action: Option<&str>) {
        self.strongswan_env(suites, start, close_action, &[]);
    }

    /// [`Lab::strongswan`] with extra environment for charon.sh (`DPD_DELAY`,
    /// `DPD_ACTION`).
    pub fn strongswan_env(
        &mut self,
        suites: (&str, &str),
        start: bool,
        close_action: Option<&str>,
        env: &[(&str, &str)],
    ) {
        self.charon = true;
        let dir = self.dir.join("charon");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(Self::charon_script());
        cmd.env("PSK", PSK);
        cmd.envs(env.iter().copied());
        if let Some(action) = close_action {
            cmd.env("CLOSE_ACTION", action);
        }
        let a = self.addrs;
        must(cmd.arg("start").arg(&dir).args([
            self.ns[1].as_str(),
            a.under[1],
            a.under[0],
            a.nets[1],
            a.nets[0],
            suites.0,
            suites.1,
            if start { "yes" } else { "no" },
        ]));
    }

    pub fn swanctl(&self, args: &[&str]) -> String {
        must(
            Command::new(Self::charon_script())
                .arg("swanctl")
                .arg(self.dir.join("charon"))
                .args(args),
        )
    }

    /// `esplab ARGS --socket` against the daemon called `name`.
    pub fn esplab_ctl(&self, name: &str, args: &[&str]) -> String {
        must(
            Command::new(ESPLAB)
                .args(args)
                .arg("--socket")
                .arg(self.sock(name)),
        )
    }

    /// Number of CHILD SAs (both directions) the daemon `name` shows.
    pub fn esplab_sas(&self, name: &str) -> usize {
        let out = self.esplab_ctl(name, &["show", "sa", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["sas"].as_array().map(|a| a.len()).unwrap_or(0)
    }

    /// Number of installed CHILD SAs at charon.
    pub fn sw_children(&self) -> usize {
        self.swanctl(&["--list-sas"]).matches("INSTALLED").count()
    }

    /// Number of established IKE SAs at charon.
    pub fn sw_ike_sas(&self) -> usize {
        self.swanctl(&["--list-sas"]).matches("ESTABLISHED").count()
    }

    /// `esplab show ike --json` of the daemon `name`: its IKE SAs.
    pub fn esplab_ike(&self, name: &str) -> Vec<serde_json::Value> {
        let out = self.esplab_ctl(name, &["show", "ike", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["ike"].as_array().cloned().unwrap_or_default()
    }

    /// `esplab show events --json` of the daemon `name`: the recent events' types.
    pub fn esplab_event_types(&self, name: &str) -> Vec<String> {
        let out = self.esplab_ctl(name, &["show", "events", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["type"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `count` pings `interval` seconds apart from `side`'s protected address to
    /// the other side's (root may go below 0.2 s). A reply counts if it arrives within
    /// 5 s after the last probe: with only `-c`, ping waits just twice the largest round
    /// trip seen for the last replies, and a loaded machine would turn that into losses.
    pub fn spawn_ping(&self, side: usize, count: u32, interval: &str) -> Ping {
        let (src, dst) = (self.addrs.prot[side], self.addrs.prot[1 - side]);
        let secs: f64 = interval.parse().expect("interval in seconds");
        let deadline = (f64::from(count) * secs).ceil() as u64 + 5;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[side], "ping", "-n", "-q", "-c"])
            .arg(count.to_string())
            .args(["-w", &deadline.to_string()])
            .args(["-i", interval, "-I", src, dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        Ping {
            child: Some(child),
            what: format!("ping {src} -> {dst}"),
        }
    }

    /// Pings from each side's protected address to the other's: `count` each, 0.2 s apart.
    pub fn ping_both_ways_n(&self, count: u32) {
        let pings = [
            self.spawn_ping(0, count, "0.2"),
            self.spawn_ping(1, count, "0.2"),
        ];
        for p in pings {
            let what = p.what.clone();
            let r = p.finish();
            assert!(
                r.transmitted == count && r.lost() == 0,
                "{what}: {}\n{}",
                r.output,
                self.logs()
            );
        }
    }

    /// Every esplab log, then charon's (when it ran), for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.names {
            s.push_str(&format!("--- esplab {n} ---\n{}\n", self.log(n)));
        }
        if self.charon {
            s.push_str(&format!("--- charon ---\n{}", self.charon_log()));
        }
        s
    }

    /// Waits until `f` holds (at most `limit`).
    pub fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Lab) -> bool) {
        let t0 = Instant::now();
        while !f(self) {
            if t0.elapsed() > limit {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.peers {
            // `ip netns exec` execs esplab: this PID is the daemon's.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.peers {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.charon {
            let _ = Command::new(Self::charon_script())
                .arg("stop")
                .arg(self.dir.join("charon"))
                .status();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}
