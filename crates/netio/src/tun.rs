//! The TUN device: created on start (name, MTU, optional address, up), removed by the kernel
//! when its file descriptor closes (it is not made persistent).

use crate::config::TunConfig;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use tun_rs::{AsyncDevice, DeviceBuilder, DeviceImpl, SyncDevice};

/// The open device.
pub enum Tun {
    /// Read and written by the datapath task (tokio tracks its readiness).
    Async(AsyncDevice),
    /// Read by the sending thread (which waits on it with `poll(2)`) and written by the
    /// datapath task, both without waiting (the descriptor is non-blocking). No tokio
    /// registration: the datapath's event loop must not wake on each packet the other
    /// thread reads.
    Shared(Arc<SyncDevice>),
}

impl Tun {
    /// The device itself, for the synchronous batched reads and writes.
    pub fn device(&self) -> &DeviceImpl {
        match self {
            Tun::Async(d) => d,
            Tun::Shared(d) => d,
        }
    }
}

/// Why the TUN device could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot create TUN device {name}: {source}{hint}")]
pub struct TunError {
    /// The device name.
    pub name: String,
    /// The OS error.
    pub source: io::Error,
    /// What to check, if we can tell.
    pub hint: &'static str,
}

/// Creates, configures and brings up the device. With `ipv6 == false` (no IPv6 address and
/// no IPv6 selector), IPv6 is switched off on it, so the kernel's own router solicitations
/// and MLD reports do not show up as outbound drops.
///
/// With `offload`, the device is opened with a virtio-net header on every packet
/// (`IFF_VNET_HDR`) and TCP/UDP segmentation offload switched on (`TUNSETOFFLOAD`): the
/// kernel hands over unsegmented TCP/UDP "super-packets" of up to 64 KiB and accepts
/// coalesced ones, so its stack works per 64 KiB instead of per packet. Every read and
/// write must then go through tun-rs's `recv_multiple`/`send_multiple` (see
/// [`crate::pool`]), which add and strip that header.
///
/// With `shared`, the device is made for a sending thread of its own ([`Tun::Shared`]).
pub fn open(cfg: &TunConfig, ipv6: bool, offload: bool, shared: bool) -> Result<Tun, TunError> {
    let err = |source: io::Error| {
        let hint = match source.kind() {
            io::ErrorKind::PermissionDenied => " (needs CAP_NET_ADMIN: run as root)",
            io::ErrorKind::NotFound => " (is /dev/net/tun there? modprobe tun)",
            _ if source.raw_os_error() == Some(16) => {
                " (EBUSY: another process holds a device of that name)"
            }
            _ => "",
        };
        TunError {
            name: cfg.name.clone(),
            source,
            hint,
        }
    };
    // The config checks 576..=9000, so this never saturates.
    let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX);
    let mut b = DeviceBuilder::new()
        .name(cfg.name.clone())
        .mtu(mtu)
        .offload(offload);
    match cfg.address {
        Some((IpAddr::V4(a), len)) => b = b.ipv4(a, len, None),
        Some((IpAddr::V6(a), len)) => b = b.ipv6(a, len),
        None => {}
    }
    // Created down, so IPv6 can be switched off before the kernel sends anything on it.
    let dev = if shared {
        let d = b.enable(false).build_sync().map_err(err)?;
        d.set_nonblocking(true).map_err(err)?;
        Tun::Shared(Arc::new(d))
    } else {
        Tun::Async(b.enable(false).build_async().map_err(err)?)
    };
    if !ipv6 {
        // Best effort: a kernel without IPv6 has no such file, which is just as good.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.name),
            "1",
        );
    }
    // The queue of packets waiting for our reads (the kernel drops, and counts as the
    // device's tx_dropped, what does not fit while the daemon is off the CPU).
    dev.device()
        .set_tx_queue_len(cfg.tx_queue_len)
        .map_err(err)?;
    dev.device().enabled(true).map_err(err)?;
    Ok(dev)
}
