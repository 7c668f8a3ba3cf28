//! Invalid-SPI recovery against strongSwan in network namespaces (docs/recovery.md):
//!
//! (b) esplab keeps its IKE SA but `esplab clear sa --all` drops its CHILD SAs: the next
//!     ESP from strongSwan makes esplab send Delete(ESP, [spi]); strongSwan drops its stale
//!     pair and (close_action = start) re-creates it. The blackhole is measured.
//! (a) esplab is killed -9 and restarted with `invalid_spi_recovery = true` while
//!     strongSwan keeps pinging: esplab builds a new IKE SA with INITIAL_CONTACT and pings
//!     resume without waiting for strongSwan's DPD (which is off here).
//!
//! Same rules as tests/ike_interop.rs: root, `/usr/lib/ipsec/charon` (or the
//! ESPLAB_SKIP_NETNS / ESPLAB_SKIP_STRONGSWAN escapes), serial, cleanup in `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

const ESPLAB: &str = env!("CARGO_BIN_EXE_esplab");
const CHARON: &str = "/usr/lib/ipsec/charon";
const PSK: &str = "interop-test-psk-only";
const SUITES: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn may_run() -> bool {
    if !is_root() {
        if std::env::var("ESPLAB_SKIP_NETNS").as_deref() == Ok("1") {
            eprintln!("skipped: not root (ESPLAB_SKIP_NETNS=1)");
            return false;
        }
        panic!("needs root for network namespaces; set ESPLAB_SKIP_NETNS=1 to skip");
    }
    if !Path::new(CHARON).exists() {
        if std::env::var("ESPLAB_SKIP_STRONGSWAN").as_deref() == Ok("1") {
            eprintln!("skipped: {CHARON} missing (ESPLAB_SKIP_STRONGSWAN=1)");
            return false;
        }
        panic!("{CHARON} missing; set ESPLAB_SKIP_STRONGSWAN=1 to skip");
    }
    true
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn must(cmd: &mut Command) -> String {
    let dbg = format!("{cmd:?}");
    let (ok, s) = run(cmd);
    assert!(ok, "{dbg} failed: {s}");
    s
}

fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

/// esplab on side A (198.18.0.1), charon on side B (198.18.0.2).
struct Lab {
    tag: String,
    ns: [String; 2],
    dir: PathBuf,
    esplab: Option<Child>,
    charon: bool,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id() % 100_000;
        let tag = format!("{tag}{id}");
        let ns = [format!("elr-{tag}-a"), format!("elr-{tag}-b")];
        let dir = std::env::temp_dir().join(format!("esplab-recovery-interop-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in &ns {
            let _ = run(Command::new("ip").args(["netns", "del", n]));
        }
        let lab = Lab {
            tag,
            ns,
            dir,
            esplab: None,
            charon: false,
        };
        let [a, b] = &lab.ns;
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        let (va, vb) = (format!("{}a", lab.tag), format!("{}b", lab.tag));
        ip(&[
            "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", "198.18.0.1/24", "dev", &va]);
        ip(&["-n", b, "addr", "add", "198.18.0.2/24", "dev", &vb]);
        ip(&["-n", a, "addr", "add", "198.19.1.1/32", "dev", "lo"]);
        ip(&["-n", b, "addr", "add", "198.19.2.1/32", "dev", "lo"]);
        for (n, v) in [(a, &va), (b, &vb)] {
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        lab
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("a.sock")
    }

    fn start_esplab(&mut self, start: bool) {
        let cfg = format!(
            r#"name = "a"
[underlay]
local = "198.18.0.1"
encap = "udp"
[tun]
name = "{tag}t"
mtu = 1400
[control]
socket = "{sock}"
[ike]
retransmit_tries = 2
retransmit_timeout = "1s"
[recovery]
hold_down = "5s"
[[peer]]
name = "peer"
address = "198.18.0.2"
local_ts = ["198.19.1.0/24"]
remote_ts = ["198.19.2.0/24"]
auth = "psk"
local_id = "esplab.esplab.test"
remote_id = "sw.esplab.test"
secret = "{PSK}"
ike_proposals = ["{ike}"]
esp_proposals = ["{esp}"]
start = {start}
on_invalid_spi = "delete"
invalid_spi_recovery = true
on_peer_delete = "restart"
"#,
            tag = self.tag,
            sock = self.sock().display(),
            ike = SUITES.0,
            esp = SUITES.1,
        );
        let path = self.dir.join("a.toml");
        std::fs::write(&path, cfg).unwrap();
        let _ = std::fs::remove_file(self.sock());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("a.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[0], ESPLAB, "peer", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.esplab = Some(child);
        let t0 = Instant::now();
        while !self.sock().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "esplab did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 (no Delete, no cleanup: a crash).
    fn crash_esplab(&mut self) {
        if let Some(mut c) = self.esplab.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("a.log")).unwrap_or_default()
    }

    fn charon_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/charon.sh")
    }

    fn strongswan(&mut self) {
        self.charon = true;
        let dir = self.dir.join("charon");
        std::fs::create_dir_all(&dir).unwrap();
        must(
            Command::new(Self::charon_script())
                .env("PSK", PSK)
                .env("CLOSE_ACTION", "start")
                .arg("start")
                .arg(&dir)
                .args([
                    self.ns[1].as_str(),
                    "198.18.0.2",
                    "198.18.0.1",
                    "198.19.2.0/24",
                    "198.19.1.0/24",
                    SUITES.0,
                    SUITES.1,
                    "no",
                ]),
        );
    }

    fn swanctl(&self, args: &[&str]) -> String {
        must(
            Command::new(Self::charon_script())
                .arg("swanctl")
                .arg(self.dir.join("charon"))
                .args(args),
        )
    }

    fn ctl(&self, args: &[&str]) -> String {
        must(
            Command::new(ESPLAB)
                .args(args)
                .arg("--socket")
                .arg(self.sock()),
        )
    }

    fn esplab_sas(&self) -> usize {
        let out = self.ctl(&["show", "sa", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["sas"].as_array().map(|a| a.len()).unwrap_or(0)
    }

    fn recovery(&self) -> serde_json::Value {
        let out = self.ctl(&["show", "recovery", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["recovery"]["stats"].clone()
    }

    fn sw_children(&self) -> usize {
        self.swanctl(&["--list-sas"]).matches("INSTALLED").count()
    }

    fn wait(&self, what: &str, limit: Duration, f: impl Fn(&Lab) -> bool) {
        let t0 = Instant::now();
        while !f(self) {
            if t0.elapsed() > limit {
                let sw =
                    std::fs::read_to_string(self.dir.join("charon/charon.log")).unwrap_or_default();
                panic!(
                    "timed out waiting for {what}\n--- esplab ---\n{}\n--- charon ---\n{sw}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One ping from strongSwan's side (B → A), 1 s timeout.
    fn ping_from_b(&self) -> bool {
        let (ok, out) = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns[1],
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "198.19.2.1",
            "198.19.1.1",
        ]));
        ok && out.contains(" 0% packet loss")
    }

    /// Pings from B until one passes; the time it took (the blackhole as seen by B).
    fn blackhole(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.ping_from_b() {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "pings did not resume within {limit:?}\n--- esplab ---\n{}\n--- charon ---\n{}",
                self.log(),
                std::fs::read_to_string(self.dir.join("charon/charon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.esplab.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
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

fn established(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    lab.strongswan();
    lab.start_esplab(true);
    lab.wait("CHILD SA with strongSwan", Duration::from_secs(15), |l| {
        l.esplab_sas() == 2 && l.sw_children() == 1
    });
    assert!(lab.ping_from_b(), "ping before the desync");
    lab
}

#[test]
fn strongswan_child_sa_lost_delete_recovers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run() {
        return;
    }
    let lab = established("rb");
    lab.ctl(&["clear", "sa", "--all"]);
    assert_eq!(lab.esplab_sas(), 0);
    let b = lab.blackhole(Duration::from_secs(20));
    eprintln!("recovery-interop (b) child SA lost: blackhole {b:?}");
    let s = lab.recovery();
    assert_eq!(s["deletes_sent"], 1, "{s}");
    assert_eq!(s["ike_initiated"], 0, "{s}");
    lab.wait("new pair on both", Duration::from_secs(10), |l| {
        l.esplab_sas() == 2 && l.sw_children() == 1
    });
    let logs = lab.log();
    assert!(logs.contains("INV_SPI_RECOVERY"), "{logs}");
}

#[test]
fn strongswan_esplab_crash_recovers_without_dpd() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run() {
        return;
    }
    let mut lab = established("ra");
    lab.crash_esplab();
    // Restarted, not starting on its own: only the invalid SPI may bring it up.
    lab.start_esplab(false);
    let b = lab.blackhole(Duration::from_secs(20));
    eprintln!("recovery-interop (a) esplab crash + restart: blackhole {b:?} (after restart)");
    let s = lab.recovery();
    assert_eq!(s["ike_initiated"], 1, "{s}");
    assert_eq!(s["ike_established"], 1, "{s}");
    lab.wait("one IKE SA at strongSwan", Duration::from_secs(10), |l| {
        l.swanctl(&["--list-sas"]).matches("ESTABLISHED").count() == 1
    });
}
