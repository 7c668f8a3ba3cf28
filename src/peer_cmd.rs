//! `esplab peer --config FILE`: run one peer (TUN device + underlay sockets + control socket)
//! until SIGINT or SIGTERM. The daemon itself lives in `esplab_netio::daemon`.

use clap::Args;
use esplab_netio::config::{Config, ConfigError};
use esplab_netio::daemon::{self, DaemonError};
use std::path::PathBuf;

/// Options of `esplab peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Peer configuration (TOML): underlay, TUN device, peers and their SAs, control socket.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Log the key material of negotiated SAs (Wireshark `esp_sa` and
    /// `ikev2_decryption_table` UAT lines); same as `log.debug_keys = true`. Never on a
    /// real network.
    #[arg(long)]
    pub debug_keys: bool,
    /// Drop root to this user (name or uid) once the TUN device, sockets and files are
    /// open; overrides `user` in the config.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// Why `esplab peer` did not start, or stopped on an error. Printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The config file is wrong (`a.toml:14: peer[0].sa[1].key: ...`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Setting up or running the datapath failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Loads the config and runs the daemon; returns `Ok` after a clean shutdown on a signal.
pub fn run(args: PeerArgs) -> Result<(), PeerError> {
    let mut config = Config::load(&args.config)?;
    config.debug_keys |= args.debug_keys;
    if args.user.is_some() {
        config.user = args.user;
    }
    daemon::run(config)?;
    Ok(())
}
