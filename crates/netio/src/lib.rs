//! The only esplab crate that touches the operating system: config files, the TUN device,
//! the underlay sockets, routes, the control socket and the `esplab peer` daemon built from
//! them (`daemon::run`), plus the control client `esplab show|clear` uses.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
pub mod capture;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod gro;
pub mod ike_log;
pub mod log;
pub mod pool;
pub mod privs;
pub mod render;
pub mod route;
pub mod server;
pub mod tun;
pub mod tx;
pub mod underlay;
