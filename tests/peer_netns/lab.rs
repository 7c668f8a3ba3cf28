//! The harness of `tests/peer_netns.rs`: a two-peer lab built by `examples/two-peers/run.sh`
//! in namespaces of its own, commands with deadlines, and the daemons' JSON answers.
//!
//! Every lab gets names no one else uses (`esplab-t<PID>-<scenario>-a`, state and control
//! sockets under `/tmp/esplab-t<PID>-<scenario>`), so the tests neither collide with each
//! other nor with a lab someone started by hand. [`Lab`]'s `Drop` stops the daemons and
//! deletes the namespaces even when a test panics; labs left behind by a test process that
//! was killed outright are swept by the next run ([`sweep_stale`]).

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const ESPLAB: &str = env!("CARGO_BIN_EXE_esplab");

/// The lab script.
pub const RUN_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-peers/run.sh");

/// Prefix of every namespace and state directory these tests create.
const PREFIX: &str = "esplab-t";

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// True when it exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd` to completion, killing it and panicking if it takes longer than `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Readers on their own threads: a chatty child must not block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}; killed it");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs `cmd` and panics with its output unless it exits with status 0.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let o = run(cmd, limit);
    assert!(
        o.ok(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.code,
        o.stdout,
        o.stderr
    );
    o
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10));
}

/// Effective user id, from `/proc/self/status` (no libc needed).
fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether `prog` is an executable somewhere on `PATH`.
fn on_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(prog))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether the namespace tests can run here. `false` (after printing "skipped") when
/// `ESPLAB_SKIP_NETNS=1`; panics with what is missing otherwise (not root, no `ip`, no
/// `ping`), so a CI machine that lost a capability fails loudly instead of passing quietly.
pub fn netns_available(test: &str) -> bool {
    if std::env::var("ESPLAB_SKIP_NETNS").as_deref() == Ok("1") {
        // Straight to stderr, past libtest's capture of eprintln!, so the skip is seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{test}: skipped (ESPLAB_SKIP_NETNS=1)");
        return false;
    }
    match euid() {
        Some(0) => {}
        Some(uid) => panic!(
            "{test} needs root (network namespaces, TUN devices, raw sockets) but runs as uid {uid}: \
             run the tests as root, or set ESPLAB_SKIP_NETNS=1 to skip them"
        ),
        None => panic!("{test}: cannot read the effective uid from /proc/self/status"),
    }
    assert!(
        on_path("ip"),
        "{test}: no `ip` command on PATH: install iproute2"
    );
    assert!(
        on_path("ping"),
        "{test}: no `ping` command on PATH: install iputils-ping"
    );
    true
}

/// Process ids whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

/// SIGKILLs every `esplab peer` started with a config from `state` (the last resort, when a
/// PID file is missing). `kill` is the shell's builtin: no procps needed.
fn kill_daemons_of(state: &Path) {
    let needle = format!("peer --config {}/", state.display());
    for pid in pids_with_cmdline(&needle) {
        let _ = run(
            Command::new("sh").args(["-c", &format!("kill -KILL {pid}")]),
            Duration::from_secs(5),
        );
    }
}

fn namespaces() -> Vec<String> {
    let o = run(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(10),
    );
    o.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Removes the labs of test processes that no longer exist (killed by a CI timeout, say):
/// their daemons, namespaces and state directories.
pub fn sweep_stale() {
    let me = std::process::id();
    let dead = |pid: u32| pid != me && !Path::new(&format!("/proc/{pid}")).exists();
    // `esplab-t<PID>-<scenario>[-a|-b|-c]` → PID.
    let owner =
        |name: &str| -> Option<u32> { name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok() };
    if let Ok(dir) = std::fs::read_dir("/tmp") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(dead) && e.path().is_dir() {
                kill_daemons_of(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for ns in namespaces() {
        if owner(&ns).is_some_and(dead) {
            let _ = run(
                Command::new("ip").args(["netns", "del", &ns]),
                Duration::from_secs(10),
            );
        }
    }
}

/// Underlay encapsulation (run.sh `ENCAP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// RFC 3948 UDP 4500.
    Udp,
    /// IP protocol 50.
    Esp,
}

impl Encap {
    /// The `ENCAP` value, and the `encap` field of invalid-SPI events.
    pub fn name(self) -> &'static str {
        match self {
            Encap::Udp => "udp",
            Encap::Esp => "esp",
        }
    }
}

/// One of the two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// 198.19.1.1 behind it; sends on SPI 0xc0de0001.
    A,
    /// 198.19.2.1 behind it; sends on SPI 0xc0de0002.
    B,
}

impl Peer {
    /// `a` or `b`, as run.sh names it.
    pub fn name(self) -> &'static str {
        match self {
            Peer::A => "a",
            Peer::B => "b",
        }
    }

    /// The other one.
    pub fn other(self) -> Peer {
        match self {
            Peer::A => Peer::B,
            Peer::B => Peer::A,
        }
    }

    /// The address on its loopback, in its protected network.
    pub fn inner(self) -> &'static str {
        match self {
            Peer::A => "198.19.1.1",
            Peer::B => "198.19.2.1",
        }
    }
}

/// Result of a `ping` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Echo replies received.
    pub received: u64,
}

/// A running two-peer lab; torn down on drop.
#[derive(Debug)]
pub struct Lab {
    /// Namespace of peer A.
    pub ns_a: String,
    /// Namespace of peer B.
    pub ns_b: String,
    /// A third namespace the test added (deleted on drop too).
    pub ns_extra: Vec<String>,
    /// run.sh's `STATE`.
    pub state: PathBuf,
    /// run.sh's `SOCKDIR`.
    pub sockdir: PathBuf,
    /// Underlay encapsulation.
    pub encap: Encap,
    /// Underlay family, 4 or 6.
    pub family: u8,
    /// Extra environment for run.sh and so for the daemons (`ESPLAB_DATAPATH=...`).
    pub env: Vec<(String, String)>,
}

impl Lab {
    /// Builds the lab with `run.sh up`. `scenario` makes the names unique (short: it ends
    /// up in namespace names).
    pub fn up(scenario: &str, encap: Encap, family: u8) -> Lab {
        Self::up_env(scenario, encap, family, &[])
    }

    /// [`Lab::up`] with extra environment for the daemons (kept for restarts).
    pub fn up_env(scenario: &str, encap: Encap, family: u8, env: &[(&str, &str)]) -> Lab {
        sweep_stale();
        let tag = format!("{PREFIX}{}-{scenario}", std::process::id());
        let state = PathBuf::from("/tmp").join(&tag);
        let _ = std::fs::remove_dir_all(&state);
        let lab = Lab {
            ns_a: format!("{tag}-a"),
            ns_b: format!("{tag}-b"),
            ns_extra: Vec::new(),
            sockdir: state.join("sock"),
            state,
            encap,
            family,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // Made before `up` runs, so a half-built lab is torn down too.
        let o = run(lab.run_sh().arg("up"), Duration::from_secs(30));
        assert!(
            o.ok(),
            "run.sh up failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            o.code,
            o.stdout,
            o.stderr
        );
        lab
    }

    /// `run.sh` with this lab's environment.
    pub fn run_sh(&self) -> Command {
        let mut c = Command::new("bash");
        c.arg(RUN_SH)
            .env("ESPLAB", ESPLAB)
            .env("STATE", &self.state)
            .env("SOCKDIR", &self.sockdir)
            .env("NS_A", &self.ns_a)
            .env("NS_B", &self.ns_b)
            .env("ENCAP", self.encap.name())
            .env("FAMILY", self.family.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The namespace of `p`.
    pub fn ns(&self, p: Peer) -> &str {
        match p {
            Peer::A => &self.ns_a,
            Peer::B => &self.ns_b,
        }
    }

    /// Underlay address of `p`.
    pub fn underlay(&self, p: Peer) -> &'static str {
        match (self.family, p) {
            (4, Peer::A) => "198.18.0.1",
            (4, Peer::B) => "198.18.0.2",
            (_, Peer::A) => "2001:2::1",
            (_, Peer::B) => "2001:2::2",
        }
    }

    /// `V4` or `V6`, as in the counter names, for the underlay.
    pub fn fam(&self) -> &'static str {
        if self.family == 4 {
            "V4"
        } else {
            "V6"
        }
    }

    /// Control socket of `p`.
    pub fn socket(&self, p: Peer) -> PathBuf {
        self.sockdir.join(format!("{}.sock", p.name()))
    }

    /// `p`'s log (stderr of the daemon, across restarts).
    pub fn log(&self, p: Peer) -> String {
        std::fs::read_to_string(self.state.join(format!("{}.log", p.name()))).unwrap_or_default()
    }

    /// `p`'s JSON-lines events file.
    pub fn events_file(&self, p: Peer) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state.join(format!("{}-events.jsonl", p.name())))
            .unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad events line {l:?}: {e}"))
            })
            .collect()
    }

    /// PID of `p`'s daemon.
    pub fn pid(&self, p: Peer) -> u32 {
        let f = self.state.join(format!("{}.pid", p.name()));
        let s = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
    }

    /// Resident memory of `p`'s daemon, in KiB.
    pub fn rss_kib(&self, p: Peer) -> u64 {
        let pid = self.pid(p);
        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("peer {} (pid {pid}) is gone: {e}", p.name()));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS line")
    }

    /// `esplab ARGS --socket <p's socket>`, which must succeed; its stdout.
    pub fn esplab(&self, p: Peer, args: &[&str]) -> String {
        let o = run_ok(
            Command::new(ESPLAB)
                .args(args)
                .arg("--socket")
                .arg(self.socket(p)),
            Duration::from_secs(15),
        );
        o.stdout
    }

    fn json(&self, p: Peer, args: &[&str]) -> Value {
        let out = self.esplab(p, args);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("esplab {args:?}: not JSON ({e}): {out}"));
        assert_eq!(v["ok"], true, "{out}");
        assert_eq!(v["node"], p.name(), "{out}");
        v
    }

    /// `show sa --json`: the SAs.
    pub fn sas(&self, p: Peer) -> Vec<Value> {
        self.json(p, &["show", "sa", "--json"])["sas"]
            .as_array()
            .expect("sas array")
            .clone()
    }

    /// The SA of `p` with this direction and SPI (panics if there is none).
    pub fn sa(&self, p: Peer, dir: &str, spi: &str) -> Value {
        let sas = self.sas(p);
        sas.iter()
            .find(|s| s["direction"] == dir && s["spi"] == spi)
            .unwrap_or_else(|| panic!("peer {} has no {dir} SA {spi}: {sas:?}", p.name()))
            .clone()
    }

    /// `show counters --json`: every counter by name.
    pub fn counters(&self, p: Peer) -> BTreeMap<String, u64> {
        let v = self.json(p, &["show", "counters", "--json"]);
        v["counters"]
            .as_array()
            .expect("counters array")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("name").to_string(),
                    c["value"].as_u64().expect("value"),
                )
            })
            .collect()
    }

    /// One counter (panics if the daemon does not print it).
    pub fn counter(&self, p: Peer, name: &str) -> u64 {
        *self
            .counters(p)
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Polls `counter` until it equals `want` (at most `limit`); returns the last value.
    pub fn counter_settles(&self, p: Peer, name: &str, want: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.counter(p, name);
            if v == want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `show events --json`: the recent events.
    pub fn events(&self, p: Peer) -> Vec<Value> {
        self.json(p, &["show", "events", "--json"])["events"]
            .as_array()
            .expect("events array")
            .clone()
    }

    /// `ping -c count` from `from`'s protected address to the other side's.
    pub fn ping(&self, from: Peer, count: u32) -> Ping {
        let to = from.other().inner();
        let limit = Duration::from_millis(u64::from(count) * 200 + 10_000);
        let o = run(
            Command::new("ip").args([
                "netns",
                "exec",
                self.ns(from),
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                to,
            ]),
            limit,
        );
        // "3 packets transmitted, 3 received, 0% packet loss, time 406ms"
        let line = o
            .stdout
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary:\n{}\n{}", o.stdout, o.stderr));
        let num = |w: &str| -> u64 {
            let i = line.find(w).expect(w);
            line[..i]
                .split_whitespace()
                .last()
                .unwrap()
                .parse()
                .unwrap()
        };
        Ping {
            transmitted: num(" packets transmitted"),
            received: num(" received"),
        }
    }

    /// `run.sh restart p`.
    pub fn restart(&self, p: Peer) {
        run_ok(
            self.run_sh().args(["restart", p.name()]),
            Duration::from_secs(30),
        );
    }

    /// `ip netns add name` and remember to delete it.
    pub fn add_namespace(&mut self, name: String) {
        ip(&["netns", "add", &name]);
        self.ns_extra.push(name);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let o = run(self.run_sh().arg("down"), Duration::from_secs(30));
        if !o.ok() {
            eprintln!("run.sh down: {:?}\n{}{}", o.code, o.stdout, o.stderr);
        }
        // If a PID file was missing, run.sh could not find that daemon.
        kill_daemons_of(&self.state);
        let left = namespaces();
        for ns in self.ns_extra.iter().chain([&self.ns_a, &self.ns_b]) {
            if left.contains(ns) {
                let _ = run(
                    Command::new("ip").args(["netns", "del", ns]),
                    Duration::from_secs(10),
                );
            }
        }
        if failing {
            // Keep the logs for whoever reads the failure.
            for p in [Peer::A, Peer::B] {
                let log = self.log(p);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- last lines of {}/{}.log:",
                    self.state.display(),
                    p.name()
                );
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            eprintln!("(state kept in {})", self.state.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// The contents of `path` as seen inside namespace `ns` (its own /proc/net, /sys/class/net).
pub fn read_in(ns: &str, path: &str) -> String {
    run_ok(
        Command::new("ip").args(["netns", "exec", ns, "cat", path]),
        Duration::from_secs(10),
    )
    .stdout
}

/// The `Udp:` counters of `/proc/net/snmp` inside namespace `ns`.
pub fn udp_snmp(ns: &str) -> BTreeMap<String, u64> {
    let snmp = read_in(ns, "/proc/net/snmp");
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    assert_eq!(udp.len(), 2, "{snmp}");
    udp[0]
        .split_whitespace()
        .skip(1)
        .zip(udp[1].split_whitespace().skip(1))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}
