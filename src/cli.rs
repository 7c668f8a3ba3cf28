//! The command line: top-level subcommands, the error every subcommand returns, and the
//! exit status rule. Each subcommand lives in its own module and only adds a variant here.

use crate::esp_cmd::{self, EspCommand};
use crate::hexin::{HexError, Spi};
use crate::pcap_io::CaptureError;
use crate::sa_spec::SpecError;
use clap::{Parser, Subcommand};
use esplab_esp::EspError;
use std::io::Write;

/// Userspace IPsec ESP datapath emulator with invalid-SPI recovery.
#[derive(Debug, Parser)]
#[command(name = "esplab", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Encrypt or decrypt ESP packets (hex or pcap) with SAs given on the command line.
    #[command(subcommand)]
    Esp(EspCommand),
    /// Run one IPsec peer (TUN device + underlay sockets + control socket) until SIGINT/SIGTERM.
    Peer(crate::peer_cmd::PeerArgs),
    /// Show a running peer's SAs, counters or events (over its control socket).
    Show(crate::ctl_cmd::ShowArgs),
    /// Clear a running peer's SAs (without telling the other side) or counters.
    Clear(crate::ctl_cmd::ClearArgs),
    /// Start an IKE SA (and its CHILD SA) with a peer of a running `esplab peer`.
    Initiate(crate::ctl_cmd::IkeCmdArgs),
    /// Delete the IKE SAs (and CHILD SAs) with a peer, telling it (INFORMATIONAL Delete).
    Terminate(crate::ctl_cmd::IkeCmdArgs),
    /// Rekey with a peer: its CHILD SAs (CREATE_CHILD_SA), one pair (--spi) or the IKE SA (--ike).
    Rekey(crate::ctl_cmd::RekeyArgs),
    /// The desync lab: run SA-desync scenarios in a deterministic simulator, with reports.
    Lab(crate::lab_cmd::LabArgs),
}

impl Command {
    /// Runs the subcommand, writing its results to `out`.
    pub fn run(self, out: &mut dyn Write) -> Result<Status, CliError> {
        match self {
            Command::Esp(c) => esp_cmd::run(c, out),
            Command::Peer(a) => crate::peer_cmd::run(a)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Show(a) => crate::ctl_cmd::run_show(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Clear(a) => crate::ctl_cmd::run_clear(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Initiate(a) => crate::ctl_cmd::run_initiate(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Terminate(a) => crate::ctl_cmd::run_terminate(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Rekey(a) => crate::ctl_cmd::run_rekey(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
            Command::Lab(a) => crate::lab_cmd::run(a, out)
                .map(|()| Status::Success)
                .map_err(CliError::from),
        }
    }
}

/// How a command that ran to the end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every packet went through (exit status 0).
    Success,
    /// At least one packet was dropped (exit status 2, like a bad input).
    Failed,
}

impl Status {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Failed => EXIT_FAILURE,
        }
    }
}

/// Exit status of a failed run: clap uses 2 for usage errors, and everything else that goes
/// wrong (bad input or a dropped packet) uses it too.
pub const EXIT_FAILURE: u8 = 2;

/// Why a command stopped. Printed as one line after `esplab: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `--sa` SPEC was refused.
    #[error("--sa: {0}")]
    Spec(#[from] SpecError),
    /// Two `--sa` with one SPI.
    #[error("--sa: two SAs with SPI {0}")]
    DuplicateSpi(Spi),
    /// Malformed hex in an option.
    #[error("{flag}: {source}")]
    Hex {
        /// The option (with its position when repeated).
        flag: String,
        /// What is wrong with the hex.
        source: HexError,
    },
    /// A file could not be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The option naming the file.
        flag: &'static str,
        /// The path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A capture file could not be parsed or written.
    #[error("{flag} {path}: {source}")]
    Capture {
        /// The option naming the file.
        flag: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong.
        source: CaptureError,
    },
    /// Options that do not fit together, or a bad option value.
    #[error("{0}")]
    Usage(String),
    /// `esplab peer` could not start (config error: `a.toml:14: key: ...`) or failed.
    #[error(transparent)]
    Peer(#[from] crate::peer_cmd::PeerError),
    /// `esplab show|clear` could not reach the daemon, or it refused.
    #[error(transparent)]
    Ctl(#[from] crate::ctl_cmd::CtlError),
    /// `esplab lab` failed.
    #[error(transparent)]
    Lab(#[from] crate::lab_cmd::LabError),
    /// The engine refused to build a packet.
    #[error("packet {index}: {reason}: {source}", reason = source.reason())]
    Encap {
        /// 1-based packet number.
        index: usize,
        /// The engine's error.
        source: EspError,
    },
    /// Writing results failed (a closed pipe ends the run quietly).
    #[error("writing results: {0}")]
    Stdout(std::io::Error),
}

impl CliError {
    /// True when the reader of our output went away (`esplab ... | head`): nothing to report.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Stdout(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            CliError::Lab(crate::lab_cmd::LabError::Stdout(e)) => {
                e.kind() == std::io::ErrorKind::BrokenPipe
            }
            CliError::Ctl(e) => e.is_broken_pipe(),
            _ => false,
        }
    }
}

/// A remark on stderr that does not change the outcome (skipped packets and the like).
/// Losing it when stderr is closed is fine, so its write error is ignored.
pub fn note(msg: core::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "esplab: {msg}");
}
