//! `esplab`: userspace IPsec ESP datapath emulator with invalid-SPI recovery.
//!
//! This file only parses the command line and turns the outcome into an exit status; each
//! subcommand lives in its own module (see `cli::Command`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cli;
mod ctl_cmd;
mod esp_cmd;
mod hexin;
mod lab_cmd;
mod lab_netns;
mod lab_render;
mod pcap_io;
mod peer_cmd;
mod sa_spec;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with status 2.
    let cli = cli::Cli::parse();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = cli
        .command
        .run(&mut out)
        .and_then(|status| out.flush().map(|()| status).map_err(cli::CliError::Stdout));
    match result {
        Ok(status) => ExitCode::from(status.code()),
        Err(e) if e.is_broken_pipe() => ExitCode::from(cli::EXIT_FAILURE),
        Err(e) => {
            // Whatever was printed before the error still goes out first.
            let _ = out.flush();
            let _ = writeln!(std::io::stderr(), "esplab: {e}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
