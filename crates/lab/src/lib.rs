//! The desync lab: scenarios as data (TOML), a deterministic virtual-time simulator that
//! runs two (or three) [`esplab_node::Agent`]s over a seeded network model, and the reports
//! (JSON, text, SVG plot, pcap with its Wireshark decryption table).
//!
//! Everything here is sans-IO except [`report::write_outputs`], which writes the output
//! directory. The same scenario and seed give byte-identical `report.json`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hub;
mod net;
pub mod pcap;
pub mod report;
pub mod scenario;
pub mod sim;

pub use report::{Report, RunReport};
pub use scenario::{RecoveryMode, Scenario, ScenarioError, BUILTIN};
pub use sim::{run_scenario, run_scenario_with_progress, simulate};
