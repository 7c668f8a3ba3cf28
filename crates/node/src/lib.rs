//! One esplab peer's brain, sans-IO: the SAD, the policies (traffic selectors → outbound
//! SA), per-SA state, counters, typed events and the invalid-SPI rate limits.
//!
//! `Node::inbound_*` and `Node::outbound` take `now` and a buffer and return a verdict;
//! the daemon (`crates/netio`) and the lab simulator drive the same code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod counters;
pub mod event;
pub mod node;
pub mod outbound;
pub mod rate_limit;
pub mod recovery;

pub use agent::{Agent, AgentConfig, AgentError, AgentEvent, Transmit};
pub use counters::{Counters, Dir, NamedCounter};
pub use event::{invalid_spi_log_line, suppressed_log_line, Event, EventQueue, InvalidSpi};
pub use node::{
    ChildInstall, Inbound, Node, NodeConfig, NodeError, Outbound, PeerConfig, SaInfo, UdpDatagram,
    UdpLookup, UnderlayEncap, BATCH, HEADROOM, TAILROOM,
};
pub use outbound::TxHandle;
pub use rate_limit::{Decision, LogLimiter, LogLimits};
pub use recovery::{
    recovery_log_line, DpdAction, OnInvalidSpi, PeerRecovery, PeerRecoveryStatus, RecoveryConfig,
    RecoveryEvent, RecoveryKind, RecoveryStats, SuppressWhy,
};
