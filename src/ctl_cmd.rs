//! `esplab show ...` and `esplab clear ...`: ask a running `esplab peer` over its control
//! socket. The protocol, client and renderings live in `esplab_netio::{control, render}`.

use clap::{Args, Subcommand};
use esplab_netio::config::{control_socket_of, ConfigError};
use esplab_netio::control::{parse_spi, Client, ClientError, Request, Response, DEFAULT_SOCKET};
use esplab_netio::render;
use std::io::Write;
use std::path::PathBuf;

/// Which daemon to talk to.
#[derive(Debug, Args)]
pub struct Target {
    /// The daemon's control socket [default: the one --config names, else /run/esplab/esplab.sock].
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "config")]
    pub socket: Option<PathBuf>,
    /// Take the control socket from this peer config file (`control.socket`).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl Target {
    fn path(&self) -> Result<PathBuf, CtlError> {
        Ok(match (&self.socket, &self.config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => control_socket_of(c)?,
            (None, None) => PathBuf::from(DEFAULT_SOCKET),
        })
    }

    fn connect(&self) -> Result<Client, CtlError> {
        Ok(Client::connect(&self.path()?)?)
    }
}

/// `esplab show`: state of a running peer.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Which daemon.
    #[command(flatten)]
    pub target: Target,
    /// What to show.
    #[command(subcommand)]
    pub what: ShowCommand,
}

/// What `esplab show` shows.
#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// Every SA, like `show crypto ipsec sa` (REPLAY/SEQ: inbound window/highest seq, outbound last seq sent).
    Sa {
        /// Print the daemon's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Datapath counters (non-zero ones unless --all).
    Counters {
        /// Also list counters that are zero.
        #[arg(long)]
        all: bool,
        /// Print the daemon's JSON answer instead of NAME VALUE lines.
        #[arg(long)]
        json: bool,
    },
    /// IKE SAs (SPIs, role, state, peer, age, next rekey) and their CHILD SAs.
    Ike {
        /// Print the daemon's JSON answer instead of the listing.
        #[arg(long)]
        json: bool,
    },
    /// Invalid-SPI recovery: counters and, per peer, state, last initiation, hold-down left.
    Recovery {
        /// Print the daemon's JSON answer instead of the listing.
        #[arg(long)]
        json: bool,
    },
    /// Recent events (invalid SPIs as the vendor log line), oldest first.
    Events {
        /// Keep printing new events as they happen (until interrupted).
        #[arg(long, short)]
        follow: bool,
        /// Print JSON (with --follow: one event object per line).
        #[arg(long)]
        json: bool,
    },
}

/// `esplab clear`: change a running peer's state.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Which daemon.
    #[command(flatten)]
    pub target: Target,
    /// What to clear.
    #[command(subcommand)]
    pub what: ClearCommand,
}

/// What `esplab clear` clears.
#[derive(Debug, Subcommand)]
pub enum ClearCommand {
    /// Remove SAs WITHOUT telling the peer (causes an invalid-SPI desync on purpose).
    Sa(ClearSaArgs),
    /// Zero every counter.
    Counters,
}

/// Which SAs `esplab clear sa` removes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ClearSaArgs {
    /// The SAs with this SPI (inbound and outbound), e.g. 0xc0de0001.
    #[arg(long, value_name = "SPI", value_parser = parse_spi)]
    pub spi: Option<u32>,
    /// Every SA.
    #[arg(long)]
    pub all: bool,
}

/// Why a `show` or `clear` failed. Printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The daemon could not be reached, or refused the request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The config named by --config could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing results failed (a closed pipe ends the command quietly).
    #[error("writing results: {0}")]
    Stdout(#[from] std::io::Error),
}

impl CtlError {
    /// True when the reader of our output went away (`esplab show events -f | head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CtlError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn json_line(out: &mut dyn Write, r: &Response) -> Result<(), CtlError> {
    // A Response always serialises (plain data, string keys).
    let line = serde_json::to_string(r).unwrap_or_default();
    writeln!(out, "{line}")?;
    Ok(())
}

/// Runs `esplab show ...`, writing to `out`.
pub fn run_show(args: ShowArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = args.target.connect()?;
    match args.what {
        ShowCommand::Sa { json } => {
            let r = client.call(&Request::ShowSa)?;
            if json {
                return json_line(out, &r);
            }
            write!(
                out,
                "{}",
                render::sa_table(r.sas.as_deref().unwrap_or_default())
            )?;
        }
        ShowCommand::Counters { all, json } => {
            let r = client.call(&Request::ShowCounters)?;
            if json {
                return json_line(out, &r);
            }
            let c = r.counters.as_deref().unwrap_or_default();
            write!(out, "{}", render::counter_lines(c, all))?;
        }
        ShowCommand::Ike { json } => {
            let r = client.call(&Request::ShowIke)?;
            if json {
                return json_line(out, &r);
            }
            write!(out, "{}", ike_listing(r.ike.as_deref().unwrap_or_default()))?;
        }
        ShowCommand::Recovery { json } => {
            let r = client.call(&Request::ShowRecovery)?;
            if json {
                return json_line(out, &r);
            }
            write!(
                out,
                "{}",
                recovery_listing(r.recovery.as_ref().unwrap_or(&serde_json::Value::Null))
            )?;
        }
        ShowCommand::Events {
            follow: false,
            json,
        } => {
            let r = client.call(&Request::ShowEvents)?;
            if json {
                return json_line(out, &r);
            }
            for e in r.events.as_deref().unwrap_or_default() {
                writeln!(out, "{}", e.log_line())?;
            }
        }
        ShowCommand::Events { follow: true, json } => {
            let (first, stream) = client.follow()?;
            for e in first.events.as_deref().unwrap_or_default() {
                if json {
                    let line = serde_json::to_string(e).unwrap_or_default();
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", e.log_line())?;
                }
            }
            out.flush()?;
            for item in stream {
                let (e, line) = item?;
                if json {
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", e.log_line())?;
                }
                // Followed output goes out as it happens, not when a buffer fills.
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// Runs `esplab clear ...`, writing a one-line summary to `out`.
pub fn run_clear(args: ClearArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = args.target.connect()?;
    match args.what {
        ClearCommand::Sa(sa) => {
            let r = client.call(&Request::ClearSa {
                spi: sa.spi,
                all: sa.all,
            })?;
            let n = r.removed.unwrap_or(0);
            let node = r.node.as_deref().unwrap_or("?");
            let plural = if n == 1 { "" } else { "s" };
            match sa.spi {
                Some(spi) => writeln!(
                    out,
                    "{node}: removed {n} SA{plural} with SPI 0x{spi:08x} (the peer was not told)"
                )?,
                None => writeln!(
                    out,
                    "{node}: removed {n} SA{plural} (the peer was not told)"
                )?,
            }
        }
        ClearCommand::Counters => {
            let r = client.call(&Request::ClearCounters)?;
            writeln!(
                out,
                "{}: counters cleared",
                r.node.as_deref().unwrap_or("?")
            )?;
        }
    }
    Ok(())
}

/// `esplab initiate PEER` / `esplab terminate PEER`: start or delete IKE SAs.
#[derive(Debug, Args)]
pub struct IkeCmdArgs {
    /// Which daemon.
    #[command(flatten)]
    pub target: Target,
    /// The peer name (`name` of its `[[peer]]`).
    pub peer: String,
}

/// Runs `esplab initiate PEER`.
pub fn run_initiate(args: IkeCmdArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = args.target.connect()?;
    let r = client.call(&Request::Initiate {
        peer: args.peer.clone(),
    })?;
    writeln!(
        out,
        "{}: initiating IKE SA with {} (see `esplab show ike`)",
        r.node.as_deref().unwrap_or("?"),
        args.peer
    )?;
    Ok(())
}

/// Runs `esplab terminate PEER`.
pub fn run_terminate(args: IkeCmdArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = args.target.connect()?;
    let r = client.call(&Request::Terminate {
        peer: args.peer.clone(),
    })?;
    writeln!(
        out,
        "{}: deleting IKE SAs with {}",
        r.node.as_deref().unwrap_or("?"),
        args.peer
    )?;
    Ok(())
}

/// `esplab rekey PEER [--ike] [--spi SPI]`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// Which daemon.
    #[command(flatten)]
    pub target: Target,
    /// The peer name (`name` of its `[[peer]]`).
    pub peer: String,
    /// Rekey the IKE SA (its CHILD SAs move to the new one) instead of CHILD SAs.
    #[arg(long, conflicts_with = "spi")]
    pub ike: bool,
    /// Only the CHILD SA pair with this inbound or outbound SPI, e.g. 0xc0de0001.
    #[arg(long, value_name = "SPI", value_parser = parse_spi)]
    pub spi: Option<u32>,
}

/// Runs `esplab rekey`: starts the rekey and returns (it completes in the background;
/// `esplab show ike` / `show events` tell when it is done).
pub fn run_rekey(args: RekeyArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = args.target.connect()?;
    let r = client.call(&Request::Rekey {
        peer: args.peer.clone(),
        ike: args.ike,
        spi: args.spi,
    })?;
    let node = r.node.as_deref().unwrap_or("?");
    match &r.rekeying {
        Some(spis) if !args.ike => writeln!(
            out,
            "{node}: rekeying CHILD SA {} with {} (see `esplab show ike`)",
            spis.join(", "),
            args.peer
        )?,
        _ => writeln!(
            out,
            "{node}: rekeying the IKE SA with {} (see `esplab show ike`)",
            args.peer
        )?,
    }
    Ok(())
}

fn secs(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|s| format!("{s:.0}s"))
        .unwrap_or_else(|| "-".into())
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        o => o.to_string(),
    }
}

/// `show recovery` listing: the counters, then one line per peer.
fn recovery_listing(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(stats) = v.get("stats").and_then(|x| x.as_object()) {
        for (k, n) in stats {
            let _ = writeln!(s, "{k:<22} {n}");
        }
    }
    let peers = v
        .get("peers")
        .and_then(|x| x.as_array())
        .cloned()
        .unwrap_or_default();
    if !peers.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<12} {:<16} {:<11} {:<8} {:<7} {:>9} {:>9} {:>8} PENDING",
            "PEER", "ADDRESS", "STATE", "RECOVERY", "ON-SPI", "LAST-INIT", "HOLD-LEFT", "FAILURES"
        );
    }
    for p in peers {
        let txt = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        let secs = |k: &str| {
            p.get(k)
                .and_then(|x| x.as_f64())
                .map(|f| format!("{f:.1}s"))
                .unwrap_or_else(|| "-".into())
        };
        let addr = p
            .get("address")
            .and_then(|x| x.as_str())
            .unwrap_or("dynamic")
            .to_string();
        let recovery = if p.get("invalid_spi_recovery").and_then(|x| x.as_bool()) == Some(true) {
            "on"
        } else {
            "off"
        };
        let pending: Vec<String> = p
            .get("pending_spis")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<12} {:<16} {:<11} {:<8} {:<7} {:>9} {:>9} {:>8} {}",
            txt("peer"),
            addr,
            txt("state"),
            recovery,
            txt("on_invalid_spi"),
            secs("last_initiation_secs_ago"),
            secs("hold_down_remaining_secs"),
            p.get("failures").and_then(|x| x.as_u64()).unwrap_or(0),
            if pending.is_empty() {
                "-".to_string()
            } else {
                pending.join(",")
            }
        );
    }
    s
}

/// `show ike` listing, strongSwan `--list-sas` style: one block per IKE SA.
fn ike_listing(sas: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if sas.is_empty() {
        s.push_str("no IKE SAs\n");
    }
    for sa in sas {
        let _ = writeln!(
            s,
            "{}: IKE SA #{} {}, {} {}...{} [{}...{}]",
            text(&sa["peer"]),
            text(&sa["id"]),
            text(&sa["state"]).to_uppercase(),
            text(&sa["role"]).to_lowercase(),
            text(&sa["local"]),
            text(&sa["remote"]),
            text(&sa["local_id"]),
            text(&sa["remote_id"]),
        );
        let _ = writeln!(
            s,
            "  spi_i {} spi_r {}  {}  age {}, rekey in {}, expire in {}",
            text(&sa["spi_i"]),
            text(&sa["spi_r"]),
            text(&sa["suite"]),
            secs(&sa["age_secs"]),
            secs(&sa["rekey_in_secs"]),
            secs(&sa["expire_in_secs"]),
        );
        for c in sa["children"].as_array().into_iter().flatten() {
            let ts = |k: &str| {
                c[k].as_array()
                    .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                s,
                "  CHILD {} in {} out {}{}  {}  {}  age {}, rekey in {}\n    {} === {}",
                text(&c["mode"]).to_uppercase(),
                text(&c["inbound_spi"]),
                text(&c["outbound_spi"]),
                if c["outbound_active"].as_bool() == Some(false) {
                    " (outbound inactive)"
                } else {
                    ""
                },
                text(&c["suite"]),
                text(&c["state"]).to_uppercase(),
                secs(&c["age_secs"]),
                secs(&c["rekey_in_secs"]),
                ts("local_ts"),
                ts("remote_ts"),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_listing_shape() {
        let v = serde_json::json!({
            "stats": {"deletes_sent": 1, "ike_initiated": 0},
            "peers": [{
                "peer": "b", "address": "198.18.0.2", "state": "idle",
                "invalid_spi_recovery": true, "on_invalid_spi": "delete",
                "last_initiation_secs_ago": null, "hold_down_remaining_secs": 0.0,
                "backoff_secs": 10.0, "failures": 0, "pending_spis": ["0x0000abcd"]
            }]
        });
        let s = recovery_listing(&v);
        assert!(s.contains("deletes_sent           1"), "{s}");
        assert!(s.contains("PEER"), "{s}");
        let row = s.lines().last().unwrap();
        assert!(row.starts_with("b "), "{row}");
        assert!(
            row.contains("198.18.0.2") && row.contains(" on ") && row.ends_with("0x0000abcd"),
            "{row}"
        );
    }
}
