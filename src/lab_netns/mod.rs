//! `esplab lab run SCENARIO --netns`: the scenario on real processes.
//!
//! Per run (recovery on / off): two namespaces joined by a veth pair (198.18.0.1/2,
//! protected hosts 198.19.1.1 / 198.19.2.1 on loopback), one `esplab peer` (this very
//! binary) with IKE in each, generated from the scenario; a probe (`esplab lab probe`) in
//! each namespace sending numbered UDP datagrams through the tunnel; the fault schedule
//! applied to the processes (restart = SIGKILL and start again with empty state,
//! clear-child = `clear sa --all` over the control socket, cut = a blackhole route at the
//! sender). The report is the simulator's (`esplab_lab::report`), with `"driver": "netns"`;
//! metrics come from the probes' records and the daemons' logs and event files; the
//! underlay is captured with `dumpcap` and the key lines the daemons log (`debug_keys`)
//! become the `esp_sa` / `ikev2_decryption_table` tables that decrypt it (docs/lab.md,
//! "--netns").

pub mod metrics;
pub mod probe;
pub mod topo;

use esplab_lab::report::{Outcome, Report, RunReport};
use esplab_lab::scenario::{Direction, DpdActionSpec, Family, FaultKind, Scenario};
use metrics::{RunData, Sample};
use probe::{now_us, ProbeLog};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use topo::{Netns, TopoError};

/// Why a netns run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not root.
    #[error("--netns needs root (network namespaces, TUN devices, routes)")]
    NotRoot,
    /// The scenario asks for something the driver cannot do.
    #[error("--netns cannot run {scenario}: {what}. {SUPPORTED}")]
    Unsupported {
        /// Scenario name.
        scenario: String,
        /// What is missing.
        what: String,
    },
    /// Setting up or running the namespaces or processes failed.
    #[error(transparent)]
    Topo(#[from] TopoError),
}

/// What the driver can do, for the refusal message.
pub const SUPPORTED: &str =
    "The netns driver supports: IPv4 or IPv6 underlay, static or dynamic B, \
no NAT; a lossless link (the veth: link.delay_ms is not emulated, loss/jitter/reorder/duplicate \
must be 0); faults restart, clear-child and cut; traffic.rate up to 10000/s.";

/// Multiplies every time of the scenario given in seconds by `f` (fault times, durations,
/// traffic start, DPD delay, hold-down, log interval, lifetimes); millisecond values (link
/// delays, IKE/ESP delays, spoof intervals) stay: they model the network, which a real veth
/// cannot make faster.
pub fn time_scale(sc: &mut Scenario, f: f64) {
    sc.duration_s *= f;
    sc.traffic.start_s *= f;
    if let Some(d) = &mut sc.dpd.delay_s {
        *d *= f;
    }
    sc.policy.hold_down_s *= f;
    sc.policy.log_per_flow_s *= f;
    let t = &mut sc.topology;
    for v in [&mut t.child_lifetime_s, &mut t.child_linger_s]
        .into_iter()
        .flatten()
    {
        *v *= f;
    }
    t.retired_grace_s *= f;
    for fault in &mut sc.faults {
        fault.at *= f;
        match &mut fault.kind {
            FaultKind::Cut { duration_s, .. } | FaultKind::Flood { duration_s, .. } => {
                *duration_s *= f;
            }
            _ => {}
        }
    }
}

/// Refuses what the driver cannot do, naming it.
pub fn check(sc: &Scenario) -> Result<(), NetnsError> {
    let no = |what: &str| {
        Err(NetnsError::Unsupported {
            scenario: sc.name.clone(),
            what: what.into(),
        })
    };
    if sc.topology.nat_b {
        return no("topology.nat_b (no NAT in the namespaces)");
    }
    if sc.topology.spokes > 0 {
        return no("topology.spokes (the netns driver runs two peers, not a hub)");
    }
    if sc.topology.child_linger_s.is_some() {
        return no("topology.child_linger_s (the daemon has no such setting)");
    }
    let l = &sc.link;
    if l.loss > 0.0 || l.jitter_ms > 0.0 || l.reorder > 0.0 || l.duplicate > 0.0 {
        return no("link loss/jitter/reorder/duplicate (no netem on the veth)");
    }
    if sc.traffic.rate > 10_000 {
        return no("traffic.rate above 10000/s");
    }
    for f in &sc.faults {
        let name = match &f.kind {
            FaultKind::Restart { .. } | FaultKind::ClearChild { .. } | FaultKind::Cut { .. } => {
                continue
            }
            // By name, so faults added to the simulator later are refused too.
            other => kebab(&format!("{other:?}")),
        };
        return no(&format!("fault action {name:?} at {} s", f.at));
    }
    Ok(())
}

/// `DelayIke { .. }` → `delay-ike` (the scenario file's spelling of a fault action).
fn kebab(debug: &str) -> String {
    let word = debug.split([' ', '{', '(']).next().unwrap_or(debug);
    let mut o = String::new();
    for (k, c) in word.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if k > 0 {
                o.push('-');
            }
            o.push(c.to_ascii_lowercase());
        } else {
            o.push(c);
        }
    }
    o
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Underlay addresses of A and B (RFC 2544 / RFC 5180 benchmarking ranges).
const ADDR4: [&str; 2] = ["198.18.0.1", "198.18.0.2"];
const ADDR6: [&str; 2] = ["2001:2::1", "2001:2::2"];

fn addrs(f: Family) -> [&'static str; 2] {
    match f {
        Family::Ipv4 => ADDR4,
        Family::Ipv6 => ADDR6,
    }
}
const INNER: [&str; 2] = ["198.19.1.1", "198.19.2.1"];
const NET: [&str; 2] = ["198.19.1.0/24", "198.19.2.0/24"];
const NAME: [&str; 2] = ["a", "b"];

fn dur(secs: f64) -> String {
    format!("{}ms", (secs * 1000.0).round().max(0.0) as u64)
}

/// The `esplab peer` config of side `i` (docs/peer.md, docs/ike.md, docs/recovery.md).
fn peer_config(sc: &Scenario, i: usize, recovery: bool, tun: &str, dir: &Path) -> String {
    let t = &sc.topology;
    let other = 1 - i;
    let dynamic = i == 1 && t.b_dynamic;
    let mut p = format!(
        r#"name = "{me}"
[underlay]
local = "{local}"
encap = "udp"
[tun]
name = "{tun}"
mtu = 1400
[control]
socket = "{sock}"
[log]
events_file = "{events}"
debug_keys = true
invalid_spi_flow_interval = "{flow}"
invalid_spi_global_max = {gmax}
retired_spi_grace = "{grace}"
[recovery]
hold_down = "{hold}"
[capture]
ring = 0
[[peer]]
name = "{peer}"
"#,
        me = NAME[i],
        local = addrs(t.family)[i],
        sock = dir.join(format!("{}.sock", NAME[i])).display(),
        events = dir.join(format!("{}-events.jsonl", NAME[i])).display(),
        flow = dur(sc.policy.log_per_flow_s),
        gmax = sc.policy.log_global_max,
        grace = dur(t.retired_grace_s),
        hold = dur(sc.policy.hold_down_s),
        peer = NAME[other],
    );
    if dynamic {
        p.push_str("dynamic = true\n");
    } else {
        p.push_str(&format!("address = \"{}\"\n", addrs(t.family)[other]));
    }
    p.push_str(&format!(
        r#"local_ts = ["{lnet}"]
remote_ts = ["{rnet}"]
auth = "psk"
local_id = "{me}.lab.example"
remote_id = "{peer}.lab.example"
secret = {psk}
ike_proposals = [{ike}]
esp_proposals = [{esp}]
start = {start}
on_invalid_spi = "{oninv}"
"#,
        lnet = NET[i],
        rnet = NET[other],
        me = NAME[i],
        peer = NAME[other],
        psk = toml_str(&t.psk),
        ike = toml_str(&t.ike_proposal),
        esp = toml_str(&t.esp_proposal),
        start = t.initiator.idx() == i && !dynamic,
        oninv = sc.policy.on_invalid_spi,
    ));
    if !dynamic {
        // Rule 2 and the restart actions need a static address (docs/recovery.md).
        p.push_str(&format!(
            "invalid_spi_recovery = {recovery}\non_peer_delete = \"{}\"\ndpd_action = \"{}\"\n",
            sc.policy.on_peer_delete,
            match sc.dpd.action {
                DpdActionSpec::Restart => "restart",
                DpdActionSpec::Clear => "clear",
            }
        ));
    }
    if let Some(d) = sc.dpd.delay_s {
        p.push_str(&format!("dpd_delay = \"{}\"\n", dur(d)));
    }
    if let Some(l) = t.child_lifetime_s {
        // The simulator rekeys a third before the hard lifetime.
        p.push_str(&format!(
            "child_lifetime = \"{}\"\nrekey_margin = \"{}\"\n",
            dur(l),
            dur(l / 3.0)
        ));
    }
    p
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Where the tools are; PATH search without a shell.
fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            f.is_file()
        })
    })
}

/// One run's driver state.
struct Run<'a> {
    sc: &'a Scenario,
    recovery: bool,
    exe: String,
    lab: Netns,
    t0: u64,
    /// dumpcap runs: the daemons send without UDP GSO (see `start_daemon`).
    capture: bool,
}

impl Run<'_> {
    fn sock(&self, i: usize) -> String {
        self.lab
            .path(&format!("{}.sock", NAME[i]))
            .display()
            .to_string()
    }

    fn start_daemon(&mut self, i: usize) -> Result<(), NetnsError> {
        let cfg = self.lab.path(&format!("{}.toml", NAME[i]));
        let tun = format!("{}t", self.lab.veth[i]);
        let text = peer_config(self.sc, i, self.recovery, &tun, &self.lab.dir);
        std::fs::write(&cfg, text).map_err(|source| TopoError::Io {
            path: cfg.display().to_string(),
            source,
        })?;
        let log_path = self.lab.path(&format!("{}.log", NAME[i]));
        // Appended: a restarted daemon keeps the earlier lines.
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|source| TopoError::Io {
                    path: log_path.display().to_string(),
                    source,
                })
        };
        let (o, e) = (open()?, open()?);
        let cfg_s = cfg.display().to_string();
        let exe = self.exe.clone();
        let mut args = Vec::new();
        let knobs;
        if self.capture {
            // With UDP GSO a run of ESP packets leaves as one super-datagram that the
            // kernel splits only at the receiver; a capture on the veth would show it
            // unsplit (several ESP packets in one UDP datagram, which no dissector can
            // take apart). Without it the capture is what a wire would carry. `env`
            // exec's, so the PID stays the daemon's.
            knobs = match std::env::var("ESPLAB_DATAPATH") {
                Ok(v) if !v.trim().is_empty() => format!("ESPLAB_DATAPATH={v},no-udp-gso"),
                _ => "ESPLAB_DATAPATH=no-udp-gso".to_string(),
            };
            args.extend(["env", knobs.as_str()]);
        }
        args.extend([exe.as_str(), "peer", "--config", &cfg_s]);
        self.lab.spawn(NAME[i], i, &args, o.into(), e.into())?;
        Ok(())
    }

    fn ctl(&self, i: usize, args: &[&str]) -> Result<serde_json::Value, TopoError> {
        let out = topo::run(Command::new(&self.exe).args(args).args([
            "--json",
            "--socket",
            &self.sock(i),
        ]))?;
        serde_json::from_str(out.trim()).map_err(|e| TopoError::Failed {
            cmd: format!("esplab {}", args.join(" ")),
            output: format!("not JSON ({e}): {out}"),
        })
    }

    fn sa_count(&self, i: usize) -> usize {
        self.ctl(i, &["show", "sa"])
            .ok()
            .and_then(|v| v["sas"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn counters(&self, i: usize) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        if let Ok(v) = self.ctl(i, &["show", "counters"]) {
            for c in v["counters"].as_array().into_iter().flatten() {
                if let (Some(n), Some(x)) = (c["name"].as_str(), c["value"].as_u64()) {
                    m.insert(n.to_string(), x);
                }
            }
        }
        m
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.lab.path(&format!("{}.log", NAME[i]))).unwrap_or_default()
    }

    /// Waits for `f` at most `limit`, failing with the daemons' logs.
    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        f: impl Fn(&mut Self) -> bool,
    ) -> Result<(), NetnsError> {
        let t = now_us() + limit.as_micros() as u64;
        while !f(self) {
            for (i, name) in NAME.iter().enumerate() {
                if self.lab.exited(name) {
                    return Err(TopoError::Timeout(format!(
                        "esplab peer {name} exited:\n{}",
                        self.log(i)
                    ))
                    .into());
                }
            }
            if now_us() > t {
                return Err(TopoError::Timeout(format!(
                    "timed out waiting for {what}\n--- a ---\n{}\n--- b ---\n{}",
                    self.log(0),
                    self.log(1)
                ))
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn at(&self, t_s: f64) -> u64 {
        self.t0 + (t_s.max(0.0) * 1e6) as u64
    }
}

fn sleep_until(t_us: u64) {
    let now = now_us();
    if t_us > now {
        std::thread::sleep(Duration::from_micros(t_us - now));
    }
}

/// A timed step of the schedule.
#[derive(Debug, Clone)]
enum Step {
    Fault(usize),
    Heal(Direction),
}

/// (namespace side, host route) of a cut: a cut of A→B gives A's kernel a blackhole route
/// to B (and the other way round).
fn route_side(d: Direction, f: Family) -> (usize, String) {
    let (side, dst) = match d {
        Direction::AToB => (0, addrs(f)[1]),
        Direction::BToA => (1, addrs(f)[0]),
    };
    let len = if f == Family::Ipv4 { 32 } else { 128 };
    (side, format!("{dst}/{len}"))
}

/// Starts `dumpcap` on A's side of the veth (everything between the peers: with UDP
/// encapsulation that is all of IKE and ESP) writing classic pcap to `pcap`, and waits
/// until it captures. False, with a note, when it does not start: the run goes on
/// without a capture.
fn start_capture(lab: &mut Netns, pcap: &Path) -> Result<bool, NetnsError> {
    let err_path = lab.path("dumpcap.err");
    let err = std::fs::File::create(&err_path).map_err(|source| TopoError::Io {
        path: err_path.display().to_string(),
        source,
    })?;
    let pcap_s = pcap.display().to_string();
    let veth = lab.veth[0].clone();
    // -P: classic pcap, as the simulator writes; -q: no packet count on stderr.
    lab.spawn(
        "dumpcap",
        0,
        &[
            "dumpcap", "-i", &veth, "-f", "udp", "-s", "0", "-P", "-q", "-w", &pcap_s,
        ],
        Stdio::null(),
        err.into(),
    )?;
    // dumpcap writes the 24-byte file header once the interface is open: from then on
    // every datagram is caught (the daemons start after this).
    let limit = now_us() + 10_000_000;
    loop {
        if std::fs::metadata(pcap).is_ok_and(|m| m.len() >= 24) {
            return Ok(true);
        }
        let exited = lab.exited("dumpcap");
        if exited || now_us() > limit {
            lab.stop("dumpcap", Duration::from_secs(1));
            let said = std::fs::read_to_string(&err_path).unwrap_or_default();
            crate::cli::note(format_args!(
                "no underlay capture: dumpcap {}: {}",
                if exited {
                    "failed"
                } else {
                    "did not start in 10 s"
                },
                said.trim()
            ));
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names run `k` of `runs`' capture is written under, as the simulator's
/// `write_outputs` names its captures: `underlay.pcap` for the first run and, when both
/// ran, `underlay-on.pcap` / `underlay-off.pcap` for each.
fn pcap_names(runs: &[bool], k: usize) -> Vec<String> {
    let mut v = Vec::new();
    if k == 0 {
        v.push("underlay.pcap".to_string());
    }
    if runs.len() > 1 {
        v.push(format!(
            "underlay-{}.pcap",
            if runs[k] { "on" } else { "off" }
        ));
    }
    v
}

/// Copies a capture out of the state directory, readable by all as the other outputs
/// (dumpcap makes its file owner-only).
fn copy_out(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))
}

/// One run with recovery on or off. `tag` names the logs of this run, `pcaps` its
/// capture.
fn run_one(
    sc: &Scenario,
    recovery: bool,
    run_idx: usize,
    out_dir: &Path,
    tag: &str,
    pcaps: &[String],
) -> Result<(RunReport, metrics::Keys, Vec<String>), NetnsError> {
    let exe = topo::self_exe();
    let lab = Netns::new(run_idx, addrs(sc.topology.family))?;
    crate::cli::note(format_args!(
        "netns run with recovery {}: namespaces {} and {}, {} s",
        if recovery { "on" } else { "off" },
        lab.ns[0],
        lab.ns[1],
        sc.duration_s
    ));
    let mut r = Run {
        sc,
        recovery,
        exe,
        lab,
        t0: 0,
        capture: false,
    };
    let mut files = Vec::new();
    let pcap_tmp = r.lab.path("underlay.pcap");
    r.capture = have("dumpcap") && start_capture(&mut r.lab, &pcap_tmp)?;
    let init = sc.topology.initiator.idx();
    let resp = 1 - init;
    // t = 0: the daemons start (the simulator starts both agents at 0). The responder goes
    // first so that the initiator's IKE_SA_INIT finds it listening.
    r.t0 = now_us();
    r.start_daemon(resp)?;
    let s = r.sock(resp);
    r.wait(
        "the responder's control socket",
        Duration::from_secs(20),
        |_| Path::new(&s).exists(),
    )?;
    r.start_daemon(init)?;
    r.wait("the CHILD SA", Duration::from_secs(30), |r| {
        r.sa_count(0) >= 2 && r.sa_count(1) >= 2
    })?;
    let t_up = now_us();
    let end = r.at(sc.duration_s);
    let start = r.at(sc.traffic.start_s).max(t_up);
    if sc.traffic.rate > 0 && start < end {
        for i in 0..2 {
            let args = [
                r.exe.clone(),
                "lab".into(),
                "probe".into(),
                "--bind".into(),
                INNER[i].into(),
                "--to".into(),
                INNER[1 - i].into(),
                "--dir".into(),
                i.to_string(),
                "--rate".into(),
                sc.traffic.rate.to_string(),
                "--start-us".into(),
                start.to_string(),
                "--stop-us".into(),
                end.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            r.lab.spawn(
                &format!("probe-{}", NAME[i]),
                i,
                &args,
                Stdio::piped(),
                Stdio::piped(),
            )?;
        }
    }
    // The schedule: faults and the end of cuts.
    let mut steps: Vec<(u64, Step)> = Vec::new();
    for (k, f) in sc.faults.iter().enumerate() {
        steps.push((r.at(f.at), Step::Fault(k)));
        if let FaultKind::Cut { dir, duration_s } = f.kind {
            steps.push((r.at(f.at + duration_s), Step::Heal(dir)));
        }
    }
    steps.sort_by_key(|s| s.0);
    let mut samples: Vec<Sample> = Vec::new();
    let mut t_fault: Option<u64> = None;
    let mut before: [BTreeMap<String, u64>; 2] = Default::default();
    let mut snapped = false;
    for (t, step) in steps {
        if t >= end {
            break;
        }
        sleep_until(t);
        if !snapped && matches!(step, Step::Fault(_)) {
            before = [r.counters(0), r.counters(1)];
            snapped = true;
        }
        let now = now_us();
        match step {
            Step::Fault(k) => {
                t_fault.get_or_insert(now);
                let f = &sc.faults[k];
                match f.kind {
                    FaultKind::Restart { peer } => {
                        let i = peer.idx();
                        r.lab.crash(NAME[i]);
                        samples.push(Sample::note(
                            now,
                            i,
                            "fault",
                            format!(
                                "restart: SIGKILL of esplab peer {}, started again with empty state",
                                NAME[i]
                            ),
                        ));
                        r.start_daemon(i)?;
                    }
                    FaultKind::ClearChild { peer } => {
                        let i = peer.idx();
                        // `b: removed 2 SAs (the peer was not told)`
                        let said = topo::run(Command::new(&r.exe).args([
                            "clear",
                            "sa",
                            "--all",
                            "--socket",
                            &r.sock(i),
                        ]))?;
                        samples.push(Sample::note(
                            now,
                            i,
                            "fault",
                            format!(
                                "clear CHILD SAs (`esplab clear sa --all`, IKE SA kept): {}",
                                said.trim()
                            ),
                        ));
                    }
                    FaultKind::Cut { dir, duration_s } => {
                        let (i, dst) = route_side(dir, sc.topology.family);
                        r.lab.ip_in(i, &["route", "add", "blackhole", &dst])?;
                        samples.push(Sample::note(
                            now,
                            i,
                            "fault",
                            format!("cut {dir:?} for {duration_s} s: blackhole route to {dst}"),
                        ));
                    }
                    // Refused by `check`.
                    _ => {}
                }
            }
            Step::Heal(dir) => {
                let (i, dst) = route_side(dir, sc.topology.family);
                r.lab.ip_in(i, &["route", "del", "blackhole", &dst])?;
                samples.push(Sample::note(now, i, "fault", format!("cut {dir:?} healed")));
            }
        }
    }
    sleep_until(end);
    let mut probes: [ProbeLog; 2] = Default::default();
    for (i, p) in probes.iter_mut().enumerate() {
        if let Some(out) = r.lab.output(&format!("probe-{}", NAME[i])) {
            let out = out.map_err(|source| TopoError::Spawn {
                cmd: "esplab lab probe".into(),
                source,
            })?;
            if !out.status.success() {
                return Err(TopoError::Failed {
                    cmd: format!("esplab lab probe in {}", r.lab.ns[i]),
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                }
                .into());
            }
            *p = probe::parse(&String::from_utf8_lossy(&out.stdout));
        }
    }
    if !snapped {
        before = [r.counters(0), r.counters(1)];
    }
    let after = [r.counters(0), r.counters(1)];
    for name in NAME {
        r.lab.stop(name, Duration::from_secs(5));
    }
    if r.capture {
        // SIGTERM: dumpcap writes what it still holds and closes the file; `stop` waits
        // for it to exit, so the copy is whole.
        r.lab.stop("dumpcap", Duration::from_secs(5));
        for name in pcaps {
            if copy_out(&pcap_tmp, &out_dir.join(name)).is_ok() {
                files.push(name.clone());
            }
        }
    }
    let logs = [r.log(0), r.log(1)];
    for (i, l) in logs.iter().enumerate() {
        let name = format!("peer-{}{tag}.log", NAME[i]);
        if std::fs::write(out_dir.join(&name), l).is_ok() {
            files.push(name);
        }
    }
    let events = [0, 1].map(|i| {
        std::fs::read_to_string(r.lab.path(&format!("{}-events.jsonl", NAME[i])))
            .unwrap_or_default()
    });
    let data = RunData {
        t0_us: r.t0,
        end_us: end,
        t_fault_us: t_fault,
        fault_at_us: sc
            .faults
            .iter()
            .map(|f| r.at(f.at))
            .filter(|t| *t < end)
            .collect(),
        probes,
        logs,
        events,
        notes: samples,
        counters_before: before,
        counters_after: after,
    };
    let (run, uat) = metrics::compute(&data, recovery);
    Ok((run, uat, files))
}

/// Runs `sc` once per recovery setting in `runs` on real processes; writes the captures
/// and daemon logs into `out_dir` and returns the outcome (without in-memory pcaps) and
/// the names of those files.
pub fn run(
    sc: &Scenario,
    seed: u64,
    runs: &[bool],
    out_dir: &Path,
) -> Result<(Outcome, Vec<String>), NetnsError> {
    check(sc)?;
    if !is_root() {
        return Err(NetnsError::NotRoot);
    }
    std::fs::create_dir_all(out_dir).map_err(|source| TopoError::Io {
        path: out_dir.display().to_string(),
        source,
    })?;
    let mut report = Report {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        expect: sc.expect.clone(),
        seed,
        driver: "netns".into(),
        duration_s: sc.duration_s,
        runs: Vec::new(),
    };
    let mut uat = Vec::new();
    let mut ike_uat = Vec::new();
    let mut files = Vec::new();
    for (k, &on) in runs.iter().enumerate() {
        // Logs: `peer-a.log` for one run, `-on`/`-off` names for two.
        let tag = if runs.len() > 1 {
            if on {
                "-on"
            } else {
                "-off"
            }
        } else {
            ""
        };
        let (r, u, f) = run_one(sc, on, k, out_dir, tag, &pcap_names(runs, k))?;
        report.runs.push(r);
        for l in u.esp {
            if !uat.contains(&l) {
                uat.push(l);
            }
        }
        for l in u.ike {
            if !ike_uat.contains(&l) {
                ike_uat.push(l);
            }
        }
        files.extend(f);
    }
    Ok((
        Outcome {
            report,
            pcaps: Vec::new(),
            uat,
            ike_uat,
        },
        files,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> Scenario {
        Scenario::load(name).unwrap()
    }

    #[test]
    fn time_scale_scales_seconds_not_milliseconds() {
        let mut sc = load("peer-reboot");
        time_scale(&mut sc, 0.2);
        assert!((sc.duration_s - 48.0).abs() < 1e-9);
        assert!((sc.faults[0].at - 6.0).abs() < 1e-9);
        assert!((sc.dpd.delay_s.unwrap() - 6.0).abs() < 1e-9);
        assert!((sc.policy.hold_down_s - 2.0).abs() < 1e-9);
        assert!((sc.traffic.start_s - 0.4).abs() < 1e-9);
        assert!((sc.link.delay_ms - 5.0).abs() < 1e-9);
        let mut cut = load("one-way-cut");
        time_scale(&mut cut, 0.5);
        match cut.faults[0].kind {
            FaultKind::Cut { duration_s, .. } => assert!((duration_s - 20.0).abs() < 1e-9),
            _ => panic!("not a cut"),
        }
    }

    #[test]
    fn captures_are_named_as_the_simulator_names_them() {
        assert_eq!(pcap_names(&[true], 0), ["underlay.pcap"]);
        assert_eq!(pcap_names(&[false], 0), ["underlay.pcap"]);
        assert_eq!(
            pcap_names(&[true, false], 0),
            ["underlay.pcap", "underlay-on.pcap"]
        );
        assert_eq!(pcap_names(&[true, false], 1), ["underlay-off.pcap"]);
    }

    #[test]
    fn kebab_spells_fault_actions_as_the_file_does() {
        assert_eq!(kebab("DelayIke { from: A }"), "delay-ike");
        assert_eq!(kebab("NatRebind"), "nat-rebind");
    }

    #[test]
    fn check_refuses_what_it_cannot_do_and_says_what_it_can() {
        for ok in [
            "peer-reboot",
            "child-sa-lost",
            "one-way-cut",
            "dynamic-peer",
        ] {
            let sc = load(ok);
            assert!(check(&sc).is_ok(), "{ok}: {:?}", check(&sc).err());
        }
        for (bad, why) in [
            ("spi-flood", "\"flood\""),
            ("spoofed-notify", "\"spoof\""),
            ("nat-t", "nat_b"),
            ("late-packets", "child_linger_s"),
            ("hub-reboot", "topology.spokes"),
        ] {
            let e = check(&load(bad)).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("supports: "), "{e}");
        }
        let sc = Scenario::from_toml(
            "x",
            "name = \"x\"\n[[fault]]\nat = 1\naction = \"delay-esp\"\nfrom = \"a\"\ncount = 1\ndelay_ms = 5\n",
        )
        .unwrap();
        let e = check(&sc).unwrap_err().to_string();
        assert!(e.contains("fault action \"delay-esp\" at 1 s"), "{e}");
    }

    #[test]
    fn peer_config_follows_the_scenario() {
        // Only the names and paths of the lab are used: no namespaces are made here.
        let sc = load("peer-reboot");
        let c = config_for_test(&sc, 0, true);
        assert!(c.contains("address = \"198.18.0.2\""), "{c}");
        assert!(c.contains("start = true"));
        assert!(c.contains("invalid_spi_recovery = true"));
        assert!(c.contains("dpd_delay = \"30000ms\""));
        assert!(c.contains("dpd_action = \"restart\""));
        assert!(c.contains("hold_down = \"10000ms\""));
        assert!(c.contains("secret = \"esplab desync lab\""));
        let b = config_for_test(&sc, 1, false);
        assert!(b.contains("start = false"));
        assert!(b.contains("invalid_spi_recovery = false"));
        let mut dynamic = load("dynamic-peer");
        dynamic.topology.b_dynamic = true;
        let b = config_for_test(&dynamic, 1, true);
        assert!(b.contains("dynamic = true"));
        assert!(!b.contains("invalid_spi_recovery"));
        // The daemon's own parser accepts every generated config.
        let mut odd = load("child-sa-lost");
        odd.topology.psk = "q\"uote\\d".into();
        odd.topology.child_lifetime_s = Some(30.0);
        let v6 = config_for_test(&load("ipv6"), 1, true);
        assert!(v6.contains("local = \"2001:2::2\""), "{v6}");
        assert!(v6.contains("address = \"2001:2::1\""), "{v6}");
        assert_eq!(
            route_side(Direction::BToA, Family::Ipv6),
            (1, "2001:2::1/128".to_string())
        );
        assert_eq!(
            route_side(Direction::AToB, Family::Ipv4),
            (0, "198.18.0.2/32".to_string())
        );
        for cfg in [c, b, v6, config_for_test(&odd, 0, true)] {
            esplab_netio::config::Config::parse(Path::new("/tmp/x.toml"), &cfg)
                .unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        }
    }

    fn config_for_test(sc: &Scenario, i: usize, recovery: bool) -> String {
        peer_config(sc, i, recovery, "elt0a", Path::new("/tmp/esplab-lab-test"))
    }
}
