//! Namespaces, veth, processes — and their guaranteed removal.
//!
//! Cleanup has two layers:
//! * [`Netns`]'s `Drop` stops every process it started (SIGTERM, then SIGKILL, by PID) and
//!   deletes the namespaces and the state directory: normal end, errors and panics;
//! * a watchdog (`esplab lab netns-reaper`, hidden), started first in a process group of its
//!   own, learns every namespace, PID and directory over a pipe. When the pipe closes
//!   without `done` — the driver was killed by Ctrl-C (SIGINT to the terminal's foreground
//!   group, which the watchdog is not in), SIGTERM or even SIGKILL — it does the same
//!   cleanup. So no signal handler (and no `unsafe`) is needed.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why setting up or running the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// A command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{cmd} failed: {output}")]
    Failed {
        /// The command.
        cmd: String,
        /// Its stderr and stdout.
        output: String,
    },
    /// A file in the state directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A daemon did not come up or a condition did not hold in time.
    #[error("{0}")]
    Timeout(String),
}

/// Runs `cmd` to completion; stdout on success.
pub fn run(cmd: &mut Command) -> Result<String, TopoError> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TopoError::Spawn {
            cmd: what.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
        output.push_str(String::from_utf8_lossy(&out.stdout).trim());
        Err(TopoError::Failed { cmd: what, output })
    }
}

fn ip(args: &[&str]) -> Result<String, TopoError> {
    run(Command::new("ip").args(args))
}

/// `kill -SIG PID` (the `kill` utility: the root binary stays free of `unsafe`).
fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// This very binary for the processes we start (daemons, probes, watchdog), also from
/// inside `ip netns exec`: `/proc/PID/exe` of the driver, which still works when the file
/// was replaced by a rebuild while the run goes on (`current_exe` then names a deleted
/// file).
pub fn self_exe() -> String {
    format!("/proc/{}/exe", std::process::id())
}

/// The two namespaces of one run, joined by a veth pair, and what runs in them.
pub struct Netns {
    /// `[A, B]` namespace names.
    pub ns: [String; 2],
    /// `[A, B]` veth names (each inside its namespace).
    pub veth: [String; 2],
    /// State directory (configs, logs, sockets).
    pub dir: PathBuf,
    /// Running children, by a label (`a`, `b`, `probe-a`, `dumpcap`, ...).
    children: Vec<(String, Child)>,
    reaper: Option<(Child, ChildStdin)>,
}

impl Netns {
    /// Namespaces `esplab-lab{PID}-{run}-a|b` with `underlay` (198.18.0.1 and 198.18.0.2,
    /// /24, or 2001:2::1 and 2001:2::2, /64) on the veth and the protected hosts
    /// 198.19.1.1 / 198.19.2.1 on loopback; state under `$TMP/esplab-lab{PID}-{run}`.
    pub fn new(run_idx: usize, underlay: [&str; 2]) -> Result<Netns, TopoError> {
        let pid = std::process::id();
        let tag = format!("{pid}-{run_idx}");
        let ns = [format!("esplab-lab{tag}-a"), format!("esplab-lab{tag}-b")];
        // IFNAMSIZ: at most 15 bytes ("el" + 7-digit PID + run + side fits).
        let veth = [format!("el{pid}{run_idx}a"), format!("el{pid}{run_idx}b")];
        let dir = std::env::temp_dir().join(format!("esplab-lab{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| TopoError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut me = Netns {
            ns,
            veth,
            dir,
            children: Vec::new(),
            reaper: None,
        };
        me.start_reaper()?;
        let d = me.dir.display().to_string();
        me.tell(&format!("dir {d}"));
        for n in me.ns.clone() {
            me.tell(&format!("ns {n}"));
            // A namespace of an earlier process with our PID: ours now.
            let _ = ip(&["netns", "del", &n]);
            ip(&["netns", "add", &n])?;
        }
        let [a, b] = &me.ns;
        let [va, vb] = &me.veth;
        ip(&[
            "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b,
        ])?;
        for (n, v, addr) in [(a, va, underlay[0]), (b, vb, underlay[1])] {
            if addr.contains(':') {
                // nodad: usable at once, not after duplicate address detection.
                let a = format!("{addr}/64");
                ip(&["-n", n, "addr", "add", &a, "dev", v, "nodad"])?;
            } else {
                let a = format!("{addr}/24");
                ip(&["-n", n, "addr", "add", &a, "dev", v])?;
            }
        }
        ip(&["-n", a, "addr", "add", "198.19.1.1/32", "dev", "lo"])?;
        ip(&["-n", b, "addr", "add", "198.19.2.1/32", "dev", "lo"])?;
        for (n, v) in [(a, va), (b, vb)] {
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
        }
        Ok(me)
    }

    fn start_reaper(&mut self) -> Result<(), TopoError> {
        let mut child = Command::new(self_exe())
            .args(["lab", "netns-reaper"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: Ctrl-C at the terminal does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|source| TopoError::Spawn {
                cmd: "esplab lab netns-reaper".into(),
                source,
            })?;
        let stdin = child.stdin.take().ok_or_else(|| TopoError::Spawn {
            cmd: "esplab lab netns-reaper".into(),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        self.reaper = Some((child, stdin));
        Ok(())
    }

    fn tell(&mut self, line: &str) {
        if let Some((_, w)) = &mut self.reaper {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }

    /// `ip netns exec NS PROG ARGS...` (exec'd: the child's PID is PROG's).
    pub fn spawn(
        &mut self,
        label: &str,
        side: usize,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<u32, TopoError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns[side]])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().map_err(|source| TopoError::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })?;
        let pid = child.id();
        self.tell(&format!("pid {pid}"));
        self.children.push((label.to_string(), child));
        Ok(pid)
    }

    /// The running child called `label`, taken out of the guard's list.
    fn take(&mut self, label: &str) -> Option<Child> {
        let k = self.children.iter().position(|(l, _)| l == label)?;
        Some(self.children.remove(k).1)
    }

    /// Waits for the child `label` to exit by itself and returns what it printed.
    pub fn output(&mut self, label: &str) -> Option<std::io::Result<std::process::Output>> {
        let c = self.take(label)?;
        let pid = c.id();
        let out = c.wait_with_output();
        self.tell(&format!("gone {pid}"));
        Some(out)
    }

    /// Whether the child `label` was started and has exited.
    pub fn exited(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// SIGKILL of the child `label` (a crash: no Delete, no cleanup), reaped.
    pub fn crash(&mut self, label: &str) {
        if let Some(mut c) = self.take(label) {
            let _ = c.kill();
            let _ = c.wait();
            self.tell(&format!("gone {}", c.id()));
        }
    }

    /// SIGTERM of the child `label`, SIGKILL after `grace`; reaped.
    pub fn stop(&mut self, label: &str, grace: Duration) {
        if let Some(c) = self.take(label) {
            let pid = c.id();
            stop_child(c, grace);
            self.tell(&format!("gone {pid}"));
        }
    }

    /// Runs `ip -n NS ARGS` (route changes for cuts).
    pub fn ip_in(&self, side: usize, args: &[&str]) -> Result<String, TopoError> {
        let mut v = vec!["-n", self.ns[side].as_str()];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// A path in the state directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn stop_child(mut c: Child, grace: Duration) {
    kill("-TERM", c.id());
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, c) in std::mem::take(&mut self.children) {
            stop_child(c, Duration::from_secs(3));
        }
        for n in &self.ns {
            let _ = ip(&["netns", "del", n]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Everything is gone: the watchdog may exit without doing anything (the PIDs it
        // knows could be reused by now).
        self.tell("done");
        if let Some((mut c, w)) = self.reaper.take() {
            drop(w);
            let _ = c.wait();
        }
    }
}

/// The watchdog (`esplab lab netns-reaper`): reads `pid N`, `gone N` (reaped by the
/// driver: the PID may be reused), `ns NAME`, `dir PATH` and `done` lines from stdin; at end of input without `done`, kills the PIDs and deletes the
/// namespaces and the directory.
pub fn reaper(input: &mut dyn BufRead) {
    let (mut pids, mut nss, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = line.trim_end();
        if l == "done" {
            return;
        }
        if let Some(p) = l.strip_prefix("pid ") {
            if let Ok(p) = p.parse::<u32>() {
                pids.push(p);
            }
        } else if let Some(p) = l.strip_prefix("gone ") {
            pids.retain(|x| Some(*x) != p.parse::<u32>().ok());
        } else if let Some(n) = l.strip_prefix("ns ") {
            nss.push(n.to_string());
        } else if let Some(d) = l.strip_prefix("dir ") {
            dirs.push(PathBuf::from(d));
        }
    }
    // The driver is gone. Its children were started by it (not by us), so they are not
    // ours to wait for: signal by PID, give them a moment to remove their TUN devices,
    // then make sure.
    for &p in &pids {
        kill("-TERM", p);
    }
    std::thread::sleep(Duration::from_millis(500));
    for &p in &pids {
        if Path::new(&format!("/proc/{p}")).exists() {
            kill("-KILL", p);
        }
    }
    for n in &nss {
        let _ = ip(&["netns", "del", n]);
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    eprintln!(
        "esplab lab: the netns driver went away; cleaned up {} process(es), {} namespace(s)",
        pids.len(),
        nss.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaper_does_nothing_after_done() {
        let d = std::env::temp_dir().join(format!("esplab-reaper-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let input = format!("dir {}\ndone\n", d.display());
        reaper(&mut input.as_bytes());
        assert!(d.exists());
        // Without `done` (the driver died), the directory goes.
        let input = format!("dir {}\n", d.display());
        reaper(&mut input.as_bytes());
        assert!(!d.exists());
    }
}
