//! `esplab lab`: run desync scenarios in the deterministic simulator and write the reports.

use clap::{Args, Subcommand, ValueEnum};
use esplab_lab::report::write_outputs;
use esplab_lab::scenario::NOT_YET;
use esplab_lab::{run_scenario_with_progress, RecoveryMode, Scenario, ScenarioError, BUILTIN};
use std::io::Write;
use std::path::PathBuf;

/// Options of `esplab lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// `esplab lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// List the shipped scenarios.
    List,
    /// Run a scenario (shipped name or a .toml file) in the simulator.
    Run(RunArgs),
    /// The netns driver's traffic probe (run inside a namespace by `lab run --netns`).
    #[command(hide = true)]
    Probe(crate::lab_netns::probe::ProbeArgs),
    /// The netns driver's cleanup watchdog (reads what to remove on stdin).
    #[command(hide = true)]
    NetnsReaper,
}

/// Which recovery settings to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecoveryArg {
    /// Invalid-SPI recovery enabled.
    On,
    /// Vendor default.
    Off,
    /// Both, side by side.
    Both,
}

/// Options of `esplab lab run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Shipped scenario name (see `esplab lab list`) or a scenario file.
    pub scenario: String,
    /// Recovery on, off, or both runs side by side (default: the scenario's choice).
    #[arg(long, value_enum)]
    pub recovery: Option<RecoveryArg>,
    /// Seed of all randomness: the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run length of virtual time (`90`, `90s`, `5m`, `1h`), overriding the scenario.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<f64>,
    /// Output directory (default `lab-out/SCENARIO-TIMESTAMP/`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print report.json instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Run on real `esplab peer` processes in network namespaces instead of the simulator
    /// (root; docs/lab.md, "--netns").
    #[arg(long)]
    pub netns: bool,
    /// Multiply every time of the scenario given in seconds (fault times, durations, DPD,
    /// hold-down) by this factor before running; `--duration` applies after it.
    #[arg(long, value_name = "F", value_parser = parse_scale)]
    pub time_scale: Option<f64>,
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!("not a time scale in (0, 100]: {s:?}")),
    }
}

/// Why `esplab lab` failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The scenario could not be loaded.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The output directory could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing to stdout failed.
    #[error("writing results: {0}")]
    Stdout(#[from] std::io::Error),
    /// The netns driver failed.
    #[error(transparent)]
    Netns(#[from] crate::lab_netns::NetnsError),
    /// The netns probe failed.
    #[error(transparent)]
    Probe(#[from] crate::lab_netns::probe::ProbeError),
}

fn parse_duration(s: &str) -> Result<f64, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 90s, 5m, 1h)"))?;
    let v = v * mult;
    if v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err("duration must be in (0, 24h]".into())
    }
}

/// UTC `YYYYMMDD-HHMMSS` for the default output directory.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, public facts).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Runs `esplab lab ...`.
pub fn run(args: LabArgs, out: &mut dyn Write) -> Result<(), LabError> {
    match args.command {
        LabCommand::List => {
            for (name, text) in BUILTIN {
                let desc = Scenario::from_toml(name, text)
                    .map(|s| s.description)
                    .unwrap_or_else(|e| format!("(broken: {e})"));
                writeln!(out, "{name:<16} {desc}")?;
            }
            for (name, why) in NOT_YET {
                writeln!(out, "{name:<16} (not yet: {why})")?;
            }
            Ok(())
        }
        LabCommand::Run(a) => {
            let mut sc = Scenario::load(&a.scenario)?;
            if let Some(f) = a.time_scale {
                crate::lab_netns::time_scale(&mut sc, f);
            }
            if let Some(d) = a.duration {
                sc.duration_s = d;
                sc.faults.retain(|f| f.at <= d);
            }
            let mode = match a.recovery {
                Some(RecoveryArg::On) => RecoveryMode::On,
                Some(RecoveryArg::Off) => RecoveryMode::Off,
                Some(RecoveryArg::Both) => RecoveryMode::Both,
                None => sc.recovery,
            };
            let dir = a.out.unwrap_or_else(|| {
                PathBuf::from("lab-out").join(format!("{}-{}", sc.name, timestamp()))
            });
            let (outcome, extra) = if a.netns {
                crate::lab_netns::run(&sc, a.seed, &mode.runs(), &dir)?
            } else {
                let mut bar = crate::lab_render::Progress::new(&sc.name);
                let o =
                    run_scenario_with_progress(&sc, a.seed, &mode.runs(), &mut |f| bar.update(f));
                bar.finish();
                (o, Vec::new())
            };
            let mut files = write_outputs(&dir, &outcome).map_err(|source| LabError::Write {
                path: dir.display().to_string(),
                source,
            })?;
            files.extend(extra);
            let png = crate::lab_render::write_png(&dir, &outcome.report.to_svg());
            files.extend(png.map_err(|source| LabError::Write {
                path: dir.display().to_string(),
                source,
            })?);
            if a.json {
                out.write_all(outcome.report.to_json().as_bytes())?;
            } else {
                out.write_all(outcome.report.summary().as_bytes())?;
                writeln!(out, "\nwrote {}/{{{}}}", dir.display(), files.join(","))?;
            }
            Ok(())
        }
        LabCommand::Probe(p) => Ok(crate::lab_netns::probe::run(p, out)?),
        LabCommand::NetnsReaper => {
            crate::lab_netns::topo::reaper(&mut std::io::stdin().lock());
            Ok(())
        }
    }
}
