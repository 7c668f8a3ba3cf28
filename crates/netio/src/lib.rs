//! The only esplab crate that touches the operating system: config files, and (next) tokio,
//! the TUN device, UDP/raw sockets and the control socket.
#![warn(missing_docs)]

pub mod config;
