//! Shared pieces of tests/attack_netns.rs: esplab daemons with IKE configs in the two
//! namespaces of `harness::Lab` (started here so that the tests know their PIDs and can pass
//! extra command-line flags and top-level config keys), a third namespace C wired to B, the
//! attack packets, and the helper processes that send and count them inside a namespace.
//!
//! Addresses: A 198.18.0.1, B 198.18.0.2 (the veth of `harness::Lab`), protected
//! 198.19.1.1 / 198.19.2.1; C 198.18.1.3/24 on a second veth pair into B (198.18.1.2/24)
//! and, for spoofing, A's underlay address 198.18.0.1/32 too (B does no reverse-path
//! filtering, so C's packets "from A" reach B's sockets).

// Each test uses a different subset.
#![allow(dead_code)]

use crate::harness::{ip, run, Lab, ESPLAB, PSK};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUITES: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
pub const C_ADDR: &str = "198.18.1.3";
pub const A_ADDR: &str = "198.18.0.1";
pub const B_ADDR: &str = "198.18.0.2";
/// B's protected address (the probe stream's destination).
pub const B_INNER: &str = "198.19.2.1";
pub const A_INNER: &str = "198.19.1.1";

/// What one daemon's config and command line say beyond the common part.
#[derive(Clone, Default)]
pub struct Opts {
    /// Top-level keys (before any table), e.g. `user = "nobody"`.
    pub top: String,
    /// Extra `[log]` keys.
    pub log: String,
    /// Extra tables between `[recovery]` and `[[peer]]`.
    pub sections: String,
    /// Extra `[[peer]]` keys.
    pub peer_extra: String,
    /// `secret = ...` or `secret_file = ...`; the inline PSK when empty.
    pub secret: String,
    /// Initiates on its own.
    pub start: bool,
    /// Extra `esplab peer` arguments.
    pub args: Vec<String>,
    /// Runs in a session of its own (`setsid`), so that [`isolate`] can give it its own
    /// scheduling group.
    pub own_session: bool,
}

/// A daemon started by [`Attack::start`].
pub struct Daemon {
    pub name: String,
    pub side: usize,
    pub opts: Opts,
    child: Option<Child>,
}

impl Daemon {
    /// Its PID (`ip netns exec` execs esplab, so this is the daemon's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not running").id()
    }
}

/// `harness::Lab` plus the daemons (by PID) and namespace C. Drop order: daemons, C, then
/// the lab (A, B and the files).
pub struct Attack {
    pub daemons: Vec<Daemon>,
    pub ns_c: Option<String>,
    pub lab: Lab,
}

impl Drop for Attack {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            stop(d.child.take(), "-TERM");
        }
        if let Some(c) = &self.ns_c {
            let _ = Command::new("ip").args(["netns", "del", c]).status();
        }
    }
}

/// Stops one child by PID: `sig`, then SIGKILL after 5 s.
fn stop(child: Option<Child>, sig: &str) {
    let Some(mut c) = child else { return };
    let _ = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Attack {
    pub fn new(tag: &str) -> Attack {
        Attack {
            daemons: Vec::new(),
            ns_c: None,
            lab: Lab::new("eat", "esplab-attack", tag),
        }
    }

    fn config(&self, side: usize, name: &str, o: &Opts) -> String {
        let (local, remote, lnet, rnet) = if side == 0 {
            (A_ADDR, B_ADDR, "198.19.1.0/24", "198.19.2.0/24")
        } else {
            (B_ADDR, A_ADDR, "198.19.2.0/24", "198.19.1.0/24")
        };
        let (lid, rid) = if side == 0 {
            ("a.esplab.test", "b.esplab.test")
        } else {
            ("b.esplab.test", "a.esplab.test")
        };
        let secret = if o.secret.is_empty() {
            format!("secret = \"{PSK}\"")
        } else {
            o.secret.clone()
        };
        let tun = format!("{}{}", self.lab.tag, ["ta", "tb"][side]);
        format!(
            r#"{top}
name = "{name}"
[underlay]
local = "{local}"
encap = "udp"
[tun]
name = "{tun}"
mtu = 1400
[control]
socket = "{sock}"
[log]
events_file = "{name}.events"
{log}
[ike]
retransmit_tries = 2
retransmit_timeout = "1s"
half_open_timeout = "5s"
[recovery]
hold_down = "2s"
{sections}
[[peer]]
name = "peer"
address = "{remote}"
local_ts = ["{lnet}"]
remote_ts = ["{rnet}"]
auth = "psk"
local_id = "{lid}"
remote_id = "{rid}"
{secret}
ike_proposals = ["{ike}"]
esp_proposals = ["{esp}"]
start = {start}
{peer_extra}"#,
            top = o.top,
            tun = tun,
            sock = self.lab.sock(name).display(),
            log = o.log,
            sections = o.sections,
            ike = SUITES.0,
            esp = SUITES.1,
            start = o.start,
            peer_extra = o.peer_extra,
        )
    }

    /// Starts `esplab peer` on `side` and waits for its control socket.
    pub fn start(&mut self, side: usize, name: &str, opts: Opts) {
        let text = self.config(side, name, &opts);
        self.start_text(side, name, &text, opts);
    }

    /// A manually keyed peer (no IKE) over raw ESP (IP protocol 50), with `top` keys.
    pub fn start_manual_esp(&mut self, side: usize, name: &str, top: &str) {
        let text = self.manual_esp_config(side, name, top);
        self.start_text(side, name, &text, Opts::default());
    }

    /// Runs `esplab peer` with the manual config and `args` until it exits by itself (at
    /// most 15 s); its success and its output.
    pub fn run_manual_esp(&self, side: usize, name: &str, args: &[&str]) -> (bool, String) {
        let path = self.lab.dir.join(format!("{name}.toml"));
        std::fs::write(&path, self.manual_esp_config(side, name, "")).unwrap();
        let mut c = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.ns[side],
                ESPLAB,
                "peer",
                "--config",
            ])
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = c.wait_with_output().unwrap();
        let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), out)
    }

    fn manual_esp_config(&self, side: usize, name: &str, top: &str) -> String {
        let (local, remote, lnet, rnet) = if side == 0 {
            (A_ADDR, B_ADDR, "198.19.1.0/24", "198.19.2.0/24")
        } else {
            (B_ADDR, A_ADDR, "198.19.2.0/24", "198.19.1.0/24")
        };
        // Fixed test keys (20 bytes: AES-128 key + 4-byte salt, RFC 4106 §8.1).
        let (k1, k2) = (
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafc0c1c2c3",
            "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfd0d1d2d3",
        );
        let (out, inb) = if side == 0 {
            (("0xc0de0001", k1), ("0xc0de0002", k2))
        } else {
            (("0xc0de0002", k2), ("0xc0de0001", k1))
        };
        format!(
            r#"{top}
name = "{name}"
[underlay]
local = "{local}"
encap = "esp"
[tun]
name = "{tag}m{side}"
mtu = 1400
[control]
socket = "{sock}"
[[peer]]
name = "peer"
address = "{remote}"
local_ts = ["{lnet}"]
remote_ts = ["{rnet}"]
[[peer.sa]]
direction = "out"
spi = "{os}"
alg = "aes-gcm-128"
key = "{ok}"
[[peer.sa]]
direction = "in"
spi = "{is}"
alg = "aes-gcm-128"
key = "{ik}"
replay_window = 64
"#,
            tag = self.lab.tag,
            sock = self.lab.sock(name).display(),
            os = out.0,
            ok = out.1,
            is = inb.0,
            ik = inb.1,
        )
    }

    fn start_text(&mut self, side: usize, name: &str, text: &str, opts: Opts) {
        let path = self.lab.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let sock = self.lab.sock(name);
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.dir.join(format!("{name}.log")))
            .unwrap();
        // `setsid` execs the daemon (the child is no process group leader), so the PID is
        // still the daemon's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.ns[side]]);
        if opts.own_session {
            cmd.arg("setsid");
        }
        let child = cmd
            .args([ESPLAB, "peer", "--config"])
            .arg(&path)
            .args(&opts.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "esplab {name} did not come up:\n{}",
                self.lab.log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.daemons.iter_mut().find(|d| d.name == name) {
            Some(d) => {
                d.child = Some(child);
                d.opts = opts;
            }
            None => self.daemons.push(Daemon {
                name: name.into(),
                side,
                opts,
                child: Some(child),
            }),
        }
    }

    pub fn daemon(&self, name: &str) -> &Daemon {
        self.daemons.iter().find(|d| d.name == name).unwrap()
    }

    /// kill -9 (a crash: no Delete, no cleanup) and reap.
    pub fn crash(&mut self, name: &str) {
        let d = self.daemons.iter_mut().find(|d| d.name == name).unwrap();
        if let Some(mut c) = d.child.take() {
            // SIGKILL straight from this process (no `kill` to spawn: the moment matters).
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `name` again with the options of its last start.
    pub fn restart(&mut self, name: &str) {
        let d = self.daemon(name);
        let (side, opts) = (d.side, d.opts.clone());
        self.start(side, name, opts);
    }

    /// Stops `name` with SIGTERM (a clean exit) and returns whether it exited by itself.
    pub fn stop(&mut self, name: &str) -> bool {
        let d = self.daemons.iter_mut().find(|d| d.name == name).unwrap();
        let Some(mut c) = d.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The standard pair: A initiates, B answers; B has invalid-SPI recovery on (it
    /// rebuilds the IKE SA when A's ESP arrives after B lost its state) and A restarts
    /// when its IKE SA dies. Waits for the CHILD SA and a ping.
    pub fn pair(&mut self, a: Opts, b: Opts) {
        self.start(1, "b", b);
        self.start(0, "a", a);
        self.lab
            .wait("CHILD SA a<->b", Duration::from_secs(20), |l| {
                l.esplab_sas("a") == 2 && l.esplab_sas("b") == 2
            });
        let t0 = Instant::now();
        while !self.ping(0) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no ping over a fresh tunnel\n{}",
                self.logs()
            );
        }
    }

    /// The default options of A in [`Attack::pair`].
    pub fn a_opts() -> Opts {
        Opts {
            start: true,
            peer_extra: "dpd_action = \"restart\"\non_peer_delete = \"restart\"\n".into(),
            ..Opts::default()
        }
    }

    /// The default options of B in [`Attack::pair`].
    pub fn b_opts() -> Opts {
        Opts {
            start: false,
            peer_extra: "invalid_spi_recovery = true\non_invalid_spi = \"delete\"\n".into(),
            ..Opts::default()
        }
    }

    /// One ping from `side`'s protected address to the other's, 1 s timeout.
    pub fn ping(&self, side: usize) -> bool {
        let (src, dst) = if side == 0 {
            (A_INNER, B_INNER)
        } else {
            (B_INNER, A_INNER)
        };
        let (ok, out) = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.lab.ns[side],
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            src,
            dst,
        ]));
        ok && out.contains(" 0% packet loss")
    }

    pub fn ctl_json(&self, name: &str, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.lab.esplab_ctl(name, &a);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"))
    }

    /// Polls `name`'s log from byte `from` until it contains `pat` (every 0.2 ms: the
    /// crash test aims at exchanges that take milliseconds). False after `limit`.
    pub fn wait_log(&self, name: &str, from: usize, pat: &str, limit: Duration) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.lab.dir.join(format!("{name}.log"));
        let t0 = Instant::now();
        let mut buf = String::new();
        while t0.elapsed() < limit {
            buf.clear();
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(SeekFrom::Start(from as u64)).is_ok()
                    && f.read_to_string(&mut buf).is_ok()
                    && buf.contains(pat)
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }

    /// One raw JSON-lines request on `name`'s control socket; the answer.
    pub fn ctl_raw(&self, name: &str, request: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.lab.sock(name)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null)
    }

    pub fn sas(&self, name: &str) -> Vec<serde_json::Value> {
        self.ctl_json(name, &["show", "sa"])["sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn ike_sas(&self, name: &str) -> Vec<serde_json::Value> {
        self.ctl_json(name, &["show", "ike"])["ike"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn recovery_stats(&self, name: &str) -> serde_json::Value {
        self.ctl_json(name, &["show", "recovery"])["recovery"]["stats"].clone()
    }

    pub fn counters(&self, name: &str) -> std::collections::BTreeMap<String, u64> {
        self.ctl_json(name, &["show", "counters"])["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["value"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            s.push_str(&format!(
                "--- esplab {} ---\n{}\n",
                d.name,
                tail(&self.lab.log(&d.name), 150)
            ));
        }
        s
    }

    pub fn events_file(&self, name: &str) -> PathBuf {
        self.lab.dir.join(format!("{name}.events"))
    }

    /// Namespace C: 198.18.1.3/24 (and A's 198.18.0.1/32, for spoofing) on a veth pair
    /// into B (198.18.1.2/24), routed to B's underlay address.
    pub fn add_c(&mut self) -> String {
        let c = format!("eat-{}-c", self.lab.tag);
        let _ = run(Command::new("ip").args(["netns", "del", &c]));
        ip(&["netns", "add", &c]);
        self.ns_c = Some(c.clone());
        let b = self.lab.ns[1].clone();
        let (vc, vb) = (format!("{}c", self.lab.tag), format!("{}bc", self.lab.tag));
        ip(&[
            "link", "add", &vc, "netns", &c, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        ip(&["-n", &c, "addr", "add", "198.18.1.3/24", "dev", &vc]);
        ip(&["-n", &c, "addr", "add", "198.18.0.1/32", "dev", &vc]);
        ip(&["-n", &b, "addr", "add", "198.18.1.2/24", "dev", &vb]);
        for (n, v) in [(&c, &vc), (&b, &vb)] {
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        ip(&[
            "-n",
            &c,
            "route",
            "add",
            "198.18.0.2/32",
            "via",
            "198.18.1.2",
        ]);
        // Reverse-path filtering would drop C's packets "from A" arriving on this veth;
        // it is off by default in a new namespace, and made sure of here (B only).
        for k in ["all", "default", vb.as_str()] {
            let _ = run(Command::new("ip").args([
                "netns",
                "exec",
                &b,
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{k}.rp_filter=0"),
            ]));
        }
        // Resolves the neighbour before the first flood packet.
        let (ok, out) = run(Command::new("ip").args([
            "netns", "exec", &c, "ping", "-n", "-q", "-c", "1", "-w", "5", "-I", C_ADDR, B_ADDR,
        ]));
        assert!(ok, "C cannot reach B: {out}");
        c
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` in /proc/self/status, e.g.
/// `0-1` or `0,2-3`); empty if it cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// (attacker CPU, victim CPU): two different CPUs of [`allowed_cpus`], or `None` on a
/// single CPU. A flood from another machine does not take the victim's CPU time; on one
/// machine, binding the senders to one CPU and the victim to another models that.
pub fn split_cpus() -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    match (cpus.first(), cpus.last()) {
        (Some(&a), Some(&v)) if a != v => Some((a, v)),
        _ => None,
    }
}

/// Binds every thread of process `pid` to CPU `cpu` (`taskset -a -p -c`) at nice
/// [`ISOLATED_NICE`] (`renice` per thread: on Linux the nice value is a thread's), and its
/// scheduling autogroup too ([`autogroup_nice`]).
pub fn isolate(pid: u32, cpu: usize) {
    let (ok, out) =
        run(Command::new("taskset").args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()]));
    assert!(ok, "taskset {pid} to CPU {cpu}: {out}");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("threads of the daemon");
    for tid in tasks.flatten() {
        let tid = tid.file_name().to_string_lossy().into_owned();
        let (ok, out) =
            run(Command::new("renice").args(["-n", &ISOLATED_NICE.to_string(), "-p", &tid]));
        assert!(ok, "renice {pid}/{tid}: {out}");
    }
    autogroup_nice(pid);
}

/// With `kernel.sched_autogroup_enabled`, the scheduler first shares the CPUs between
/// sessions (autogroups), and a thread's nice value only counts inside its session: a
/// process started with `setsid` ([`Opts::own_session`], [`spawn_helper_on`]) has a group
/// of its own, set here to [`ISOLATED_NICE`]. Only once `pid` leads its own session (it may
/// not have reached `setsid` yet): the group is shared until then, with this test and
/// whatever else runs in its session. Nothing to do without autogroups.
pub fn autogroup_nice(pid: u32) {
    let t0 = Instant::now();
    while session_of(pid) != Some(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "process {pid} did not start a session of its own"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::write(format!("/proc/{pid}/autogroup"), ISOLATED_NICE.to_string());
}

/// The session ID of process `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // After the ')': state, ppid, pgrp, session.
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// The CPU affinity list of process `pid` as `taskset -p -c` shows it (e.g. `1`).
pub fn affinity(pid: u32) -> String {
    let (_, out) = run(Command::new("taskset").args(["-p", "-c", &pid.to_string()]));
    out.rsplit(':').next().unwrap_or("").trim().to_string()
}

/// CPU time of process `pid` (all threads, user + system) in milliseconds, from
/// /proc/PID/stat (0 if it cannot be read).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the ')'), in clock ticks
    // (USER_HZ, 100 on Linux).
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10
}

pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// (real, effective, saved, fs) uid of a process.
pub fn uids(pid: u32) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// splitmix64: reproducible pseudo-random numbers from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---- attack packets (built by hand: the test must not trust esplab's own encoder) ----

/// An ESP-in-UDP packet for `spi` (never one of ours: > 255, random).
pub fn esp_packet(spi: u32, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..4].copy_from_slice(&spi.to_be_bytes());
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].fill(seq as u8);
    p
}

/// RFC 7296 §3.1 header; `len` is the whole message.
fn ike_header(spi_i: u64, spi_r: u64, next: u8, exchange: u8, flags: u8, mid: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(&spi_i.to_be_bytes());
    h.extend_from_slice(&spi_r.to_be_bytes());
    h.extend_from_slice(&[next, 0x20, exchange, flags]);
    h.extend_from_slice(&mid.to_be_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

fn set_len(m: &mut [u8]) {
    let n = m.len() as u32;
    m[24..28].copy_from_slice(&n.to_be_bytes());
}

fn payload(next: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![next, 0];
    p.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// An IKE_SA_INIT request (§1.2) offering aes128gcm16-prfsha256-x25519 with a random
/// X25519 value and nonce: what a real initiator sends, so that the responder would create
/// a half-open IKE SA for it.
pub fn ike_sa_init(rng: &mut Rng) -> Vec<u8> {
    const SA: u8 = 33;
    const KE: u8 = 34;
    const NONCE: u8 = 40;
    let spi_i = rng.next() | 1;
    let mut m = ike_header(spi_i, 0, SA, 34, 0x08, 0);
    // Transforms (§3.3.2): ENCR 20 (AES-GCM-16) with Key Length 128, PRF 5 (HMAC-SHA-256),
    // D-H 31 (Curve25519).
    let mut t = Vec::new();
    t.extend_from_slice(&[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 0, 128]);
    t.extend_from_slice(&[3, 0, 0, 8, 2, 0, 0, 5]);
    t.extend_from_slice(&[0, 0, 0, 8, 4, 0, 0, 31]);
    let mut prop = vec![0, 0];
    prop.extend_from_slice(&((8 + t.len()) as u16).to_be_bytes());
    prop.extend_from_slice(&[1, 1, 0, 3]);
    prop.extend_from_slice(&t);
    m.extend_from_slice(&payload(KE, &prop));
    let mut ke = vec![0, 31, 0, 0];
    for _ in 0..4 {
        ke.extend_from_slice(&rng.next().to_be_bytes());
    }
    m.extend_from_slice(&payload(NONCE, &ke));
    let mut n = Vec::new();
    for _ in 0..4 {
        n.extend_from_slice(&rng.next().to_be_bytes());
    }
    m.extend_from_slice(&payload(0, &n));
    set_len(&mut m);
    m
}

/// Unprotected INFORMATIONAL messages (§1.4, §2.21.4) naming the victim's real SPIs: the
/// notifications and Delete payloads a forger would send. None may change SA state.
/// `ike` = (SPIi, SPIr) of the victim's IKE SA; `esp` = its CHILD SA SPIs.
pub fn spoofed_informationals(ike: (u64, u64), esp: &[u32], mid: u32) -> Vec<Vec<u8>> {
    const N: u8 = 41;
    const D: u8 = 42;
    let mut out = Vec::new();
    for &spi in esp {
        // N(INVALID_SPI) (11): protocol ESP, SPI size 0, data = the SPI (§3.10.1).
        let mut body = vec![3, 0, 0, 11];
        body.extend_from_slice(&spi.to_be_bytes());
        for flags in [0x08, 0x20, 0x00] {
            let mut m = ike_header(ike.0, ike.1, N, 37, flags, mid);
            m.extend_from_slice(&payload(0, &body));
            set_len(&mut m);
            out.push(m);
        }
        // Delete(ESP, [spi]) in the clear (§3.11): protocol 3, SPI size 4, 1 SPI.
        let mut body = vec![3, 4, 0, 1];
        body.extend_from_slice(&spi.to_be_bytes());
        let mut m = ike_header(ike.0, ike.1, D, 37, 0x08, mid);
        m.extend_from_slice(&payload(0, &body));
        set_len(&mut m);
        out.push(m);
    }
    // N(INVALID_IKE_SPI) (4), as an answer and as a request, and Delete(IKE) in the clear.
    for (flags, spis) in [
        (0x20, ike),
        (0x08, ike),
        (0x20, (ike.0, 0)),
        (0x08, (0x1234_5678_9abc_def0, 0)),
    ] {
        let mut m = ike_header(spis.0, spis.1, N, 37, flags, mid);
        m.extend_from_slice(&payload(0, &[1, 0, 0, 4]));
        set_len(&mut m);
        out.push(m);
    }
    let mut m = ike_header(ike.0, ike.1, D, 37, 0x08, mid);
    m.extend_from_slice(&payload(0, &[1, 0, 0, 0]));
    set_len(&mut m);
    out.push(m);
    out
}

// ---- helper processes (the test binary re-run inside a namespace) ----

/// Environment variable carrying a helper's job.
pub const HELPER_ENV: &str = "ESPLAB_ATTACK_HELPER";

/// Starts the helper test `helper` of this test binary in namespace `ns` with `job`.
pub fn spawn_helper(ns: &str, job: &str) -> Child {
    spawn_helper_on(ns, job, None)
}

/// Scheduling priority of processes that model a machine of their own ([`isolate`],
/// [`spawn_helper_on`]): ahead of unrelated jobs on the test machine (parallel builds),
/// which another machine would not run.
pub const ISOLATED_NICE: i32 = -10;

/// [`spawn_helper`], if `cpu` is given isolated like [`isolate`]: in a session of its own,
/// bound to that CPU, at nice [`ISOLATED_NICE`] (`setsid`, `nice` and `taskset -c` exec
/// the helper, so the child's PID is still the helper's).
pub fn spawn_helper_on(ns: &str, job: &str, cpu: Option<usize>) -> Child {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if let Some(cpu) = cpu {
        c.args(["setsid", "nice", "-n", &ISOLATED_NICE.to_string()]);
        c.args(["taskset", "-c", &cpu.to_string()]);
    }
    c.arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, job)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a helper (at most `limit`) and returns its `RESULT k=v ...` fields.
pub fn helper_result(mut c: Child, limit: Duration) -> std::collections::BTreeMap<String, u64> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("helper did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find_map(|l| l.find("RESULT ").map(|i| &l[i + 7..]))
        .unwrap_or_else(|| {
            panic!(
                "helper said nothing:\n{out}\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Runs a helper job in this process (called by the `helper` test). Jobs:
/// * `spi-flood SRC DST MS SEED`: ESP-in-UDP for random SPIs, as fast as possible.
/// * `init-flood SRC DST COUNT SEED`: IKE_SA_INIT requests with random SPIs.
/// * `send-file SRC DST FILE REPEAT`: the datagrams in FILE (u16 length + bytes each).
/// * `probe-send SRC DST PPS MS`: the probe stream, `PPS` datagrams a second.
/// * `probe-recv BIND MS`: counts probe datagrams for `MS` milliseconds.
pub fn run_helper(job: &str) {
    let f: Vec<&str> = job.split_whitespace().collect();
    let n = |i: usize| -> u64 { f[i].parse().unwrap() };
    match f[0] {
        "spi-flood" => {
            let sock = std::net::UdpSocket::bind(f[1]).unwrap();
            sock.set_nonblocking(true).unwrap();
            let dst: std::net::SocketAddr = f[2].parse().unwrap();
            let (ms, mut rng) = (n(3), Rng(n(4)));
            let t0 = Instant::now();
            let (mut sent, mut full, mut replies, mut i) = (0u64, 0u64, 0u64, 0u32);
            let mut buf = [0u8; 2048];
            while t0.elapsed() < Duration::from_millis(ms) {
                for _ in 0..256 {
                    let spi = (rng.next() as u32) | 0x100;
                    i = i.wrapping_add(1);
                    match sock.send_to(&esp_packet(spi, i), dst) {
                        Ok(_) => sent += 1,
                        // A full socket buffer: the machine's limit; try again.
                        Err(_) => full += 1,
                    }
                }
                while sock.recv_from(&mut buf).is_ok() {
                    replies += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            while sock.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
            println!(
                "RESULT sent={sent} full={full} replies={replies} ms={}",
                t0.elapsed().as_millis()
            );
        }
        "init-flood" => {
            let sock = std::net::UdpSocket::bind(f[1]).unwrap();
            let dst: std::net::SocketAddr = f[2].parse().unwrap();
            let (count, mut rng) = (n(3), Rng(n(4)));
            let t0 = Instant::now();
            let mut sent = 0u64;
            for _ in 0..count {
                if sock.send_to(&ike_sa_init(&mut rng), dst).is_ok() {
                    sent += 1;
                }
            }
            println!("RESULT sent={sent} ms={}", t0.elapsed().as_millis());
        }
        "send-file" => {
            let sock = std::net::UdpSocket::bind(f[1]).unwrap();
            let dst: std::net::SocketAddr = f[2].parse().unwrap();
            let data = std::fs::read(f[3]).unwrap();
            let mut sent = 0u64;
            for _ in 0..n(4) {
                let mut rest = &data[..];
                while rest.len() >= 2 {
                    let l = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if sock.send_to(&rest[2..2 + l], dst).is_ok() {
                        sent += 1;
                    }
                    rest = &rest[2 + l..];
                }
            }
            println!("RESULT sent={sent}");
        }
        "probe-send" => {
            let sock = std::net::UdpSocket::bind(f[1]).unwrap();
            let dst: std::net::SocketAddr = f[2].parse().unwrap();
            let (pps, ms) = (n(3), n(4));
            let total = pps * ms / 1000;
            let t0 = Instant::now();
            let mut sent = 0u64;
            for k in 0..total {
                // Absolute schedule: a late wakeup sends the missed datagrams at once, so
                // the offered load is PPS whatever the scheduler does.
                let due = t0 + Duration::from_micros(k * 1_000_000 / pps);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let mut p = *b"ESPLAB-PROBE\0\0\0\0\0\0\0\0";
                p[12..20].copy_from_slice(&k.to_be_bytes());
                if sock.send_to(&p, dst).is_ok() {
                    sent += 1;
                }
            }
            println!("RESULT sent={sent} ms={}", t0.elapsed().as_millis());
        }
        "probe-recv" => {
            let sock = std::net::UdpSocket::bind(f[1]).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let t0 = Instant::now();
            let mut got = 0u64;
            let mut buf = [0u8; 2048];
            while t0.elapsed() < Duration::from_millis(n(2)) {
                if let Ok(l) = sock.recv(&mut buf) {
                    if buf[..l].starts_with(b"ESPLAB-PROBE") {
                        got += 1;
                    }
                }
            }
            println!("RESULT got={got}");
        }
        other => panic!("unknown helper job {other}"),
    }
}

/// Sends a fixed-rate probe stream A → B through the tunnel (`pps` for `ms`) and returns
/// (sent, delivered). The receiver starts first and listens for `ms` + 2 s.
pub fn probe(lab: &Lab, port: u16, pps: u64, ms: u64) -> (u64, u64) {
    let rx = spawn_helper(
        &lab.ns[1],
        &format!("probe-recv {B_INNER}:{port} {}", ms + 2000),
    );
    // The receiver's socket must exist before the first datagram.
    std::thread::sleep(Duration::from_millis(300));
    let tx = spawn_helper(
        &lab.ns[0],
        &format!("probe-send {A_INNER}:0 {B_INNER}:{port} {pps} {ms}"),
    );
    let s = helper_result(tx, Duration::from_millis(ms + 30_000));
    let r = helper_result(rx, Duration::from_millis(ms + 30_000));
    (s["sent"], r["got"])
}
