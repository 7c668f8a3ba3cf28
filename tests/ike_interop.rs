//! IKEv2 end to end in network namespaces: esplab ↔ esplab and esplab ↔ strongSwan
//! (charon with kernel-libipsec), both roles, both suite pairs. Pings must pass both ways
//! through the negotiated CHILD SAs, and a Delete from either side must remove the pair on
//! both (`esplab show sa`, `swanctl --list-sas`).
//!
//! Needs root (namespaces, veth, TUN). Without root the tests fail unless
//! `ESPLAB_SKIP_NETNS=1`; the strongSwan tests fail when `/usr/lib/ipsec/charon` is missing
//! unless `ESPLAB_SKIP_STRONGSWAN=1`. They run one at a time (a global mutex), each in its
//! own namespaces (198.18.0.1/2 underlay, 198.19.1.0/24 and 198.19.2.0/24 protected), and
//! clean up in `Drop` (processes by PID, then `ip netns del`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

const ESPLAB: &str = env!("CARGO_BIN_EXE_esplab");
const CHARON: &str = "/usr/lib/ipsec/charon";
const PSK: &str = "interop-test-psk-only";
const GCM: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
const CBC: (&str, &str) = ("aes128-sha256-x25519", "aes128-sha256");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// False when the test must be skipped (and says why); panics when it may not be.
fn may_run(strongswan: bool) -> bool {
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

/// Two namespaces joined by a veth pair, with what runs in them. Dropping it stops the
/// processes (by PID) and deletes the namespaces.
struct Lab {
    tag: String,
    ns: [String; 2],
    dir: PathBuf,
    peers: Vec<Child>,
    charon: bool,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id() % 100_000;
        let tag = format!("{tag}{id}");
        let ns = [format!("eli-{tag}-a"), format!("eli-{tag}-b")];
        let dir = std::env::temp_dir().join(format!("esplab-ike-interop-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in &ns {
            let _ = run(Command::new("ip").args(["netns", "del", n]));
        }
        let lab = Lab {
            tag,
            ns,
            dir,
            peers: Vec::new(),
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

    fn sock(&self, side: usize) -> PathBuf {
        self.dir.join(format!("{side}.sock"))
    }

    /// Starts `esplab peer` on side 0 (A) or 1 (B) with an IKE peer for the other side.
    fn esplab(&mut self, side: usize, suites: (&str, &str), start: bool) {
        let (local, remote, lnet, rnet) = if side == 0 {
            ("198.18.0.1", "198.18.0.2", "198.19.1.0/24", "198.19.2.0/24")
        } else {
            ("198.18.0.2", "198.18.0.1", "198.19.2.0/24", "198.19.1.0/24")
        };
        // esplab ↔ esplab uses its own ids; against charon ours is "esplab.esplab.test".
        let (lid, rid) = if side == 0 {
            ("esplab.esplab.test", "sw.esplab.test")
        } else {
            ("sw.esplab.test", "esplab.esplab.test")
        };
        let cfg = format!(
            r#"name = "{side}"
[underlay]
local = "{local}"
encap = "udp"
[tun]
name = "{tag}t{side}"
mtu = 1400
[control]
socket = "{sock}"
[ike]
retransmit_tries = 2
retransmit_timeout = "1s"
[[peer]]
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
"#,
            tag = self.tag,
            sock = self.sock(side).display(),
            ike = suites.0,
            esp = suites.1,
        );
        let path = self.dir.join(format!("{side}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{side}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[side], ESPLAB, "peer", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.peers.push(child);
        let t0 = Instant::now();
        while !self.sock(side).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "esplab {side} did not come up: {}",
                self.log(side)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, side: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{side}.log"))).unwrap_or_default()
    }

    fn charon_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/charon.sh")
    }

    /// Starts charon on side B.
    fn strongswan(&mut self, suites: (&str, &str), start: bool) {
        self.charon = true;
        let dir = self.dir.join("charon");
        std::fs::create_dir_all(&dir).unwrap();
        must(
            Command::new(Self::charon_script())
                .env("PSK", PSK)
                .arg("start")
                .arg(&dir)
                .args([
                    self.ns[1].as_str(),
                    "198.18.0.2",
                    "198.18.0.1",
                    "198.19.2.0/24",
                    "198.19.1.0/24",
                    suites.0,
                    suites.1,
                    if start { "yes" } else { "no" },
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

    fn esplab_ctl(&self, side: usize, args: &[&str]) -> String {
        must(
            Command::new(ESPLAB)
                .args(args)
                .arg("--socket")
                .arg(self.sock(side)),
        )
    }

    fn esplab_sas(&self, side: usize) -> usize {
        let out = self.esplab_ctl(side, &["show", "sa", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["sas"].as_array().map(|a| a.len()).unwrap_or(0)
    }

    fn sw_children(&self) -> usize {
        self.swanctl(&["--list-sas"]).matches("INSTALLED").count()
    }

    /// Waits until `f` holds (at most 15 s).
    fn wait(&self, what: &str, f: impl Fn(&Lab) -> bool) {
        let t0 = Instant::now();
        while !f(self) {
            if t0.elapsed() > Duration::from_secs(15) {
                let sw = if self.charon {
                    std::fs::read_to_string(self.dir.join("charon/charon.log")).unwrap_or_default()
                } else {
                    self.log(1)
                };
                panic!(
                    "timed out waiting for {what}\n--- esplab A ---\n{}\n--- B ---\n{sw}",
                    self.log(0)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pings B's protected address from A's and the other way round.
    fn ping_both_ways(&self) {
        for (ns, src, dst) in [
            (&self.ns[0], "198.19.1.1", "198.19.2.1"),
            (&self.ns[1], "198.19.2.1", "198.19.1.1"),
        ] {
            let (ok, out) = run(Command::new("ip").args([
                "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst,
            ]));
            assert!(
                ok && out.contains(" 0% packet loss"),
                "ping {src} -> {dst}: {out}\n--- A ---\n{}",
                self.log(0)
            );
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

#[test]
fn esplab_to_esplab() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(false) {
        return;
    }
    for (i, suites) in [GCM, CBC].into_iter().enumerate() {
        let mut lab = Lab::new(&format!("ee{i}"));
        lab.esplab(1, suites, false);
        lab.esplab(0, suites, true);
        lab.wait("CHILD SA on both", |l| {
            l.esplab_sas(0) == 2 && l.esplab_sas(1) == 2
        });
        lab.ping_both_ways();
        let ike = lab.esplab_ctl(0, &["show", "ike"]);
        assert!(ike.contains("ESTABLISHED"), "{ike}");
        // Delete from A, then re-establish from B and delete from B.
        lab.esplab_ctl(0, &["terminate", "peer"]);
        lab.wait("pair gone on both", |l| {
            l.esplab_sas(0) == 0 && l.esplab_sas(1) == 0
        });
        lab.esplab_ctl(1, &["initiate", "peer"]);
        lab.wait("CHILD SA again", |l| {
            l.esplab_sas(0) == 2 && l.esplab_sas(1) == 2
        });
        lab.ping_both_ways();
        lab.esplab_ctl(1, &["terminate", "peer"]);
        lab.wait("pair gone on both", |l| {
            l.esplab_sas(0) == 0 && l.esplab_sas(1) == 0
        });
    }
}

fn strongswan_case(tag: &str, suites: (&str, &str), esplab_initiates: bool) {
    let mut lab = Lab::new(tag);
    lab.strongswan(suites, !esplab_initiates);
    lab.esplab(0, suites, esplab_initiates);
    lab.wait("CHILD SA with strongSwan", |l| {
        l.esplab_sas(0) == 2 && l.sw_children() == 1
    });
    lab.ping_both_ways();
    // Delete from esplab: strongSwan drops the pair too.
    lab.esplab_ctl(0, &["terminate", "peer"]);
    lab.wait("pair gone on both (esplab's Delete)", |l| {
        l.esplab_sas(0) == 0 && l.sw_children() == 0
    });
    // Up again, then delete from strongSwan.
    lab.esplab_ctl(0, &["initiate", "peer"]);
    lab.wait("CHILD SA again", |l| {
        l.esplab_sas(0) == 2 && l.sw_children() == 1
    });
    lab.ping_both_ways();
    lab.swanctl(&["--terminate", "--ike", "lab"]);
    lab.wait("pair gone on both (strongSwan's Delete)", |l| {
        l.esplab_sas(0) == 0 && l.sw_children() == 0
    });
}

#[test]
fn esplab_with_strongswan() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run(true) {
        return;
    }
    for (i, suites) in [GCM, CBC].into_iter().enumerate() {
        strongswan_case(&format!("si{i}"), suites, true);
        strongswan_case(&format!("sr{i}"), suites, false);
    }
}
