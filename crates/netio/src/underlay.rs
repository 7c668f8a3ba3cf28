//! The underlay sockets: UDP on the NAT-T port (RFC 3948) and raw IP protocol 50 (RFC 4303).
//!
//! Both are non-blocking and registered with tokio; the datapath drains them with `try_*`
//! calls so one wakeup handles every datagram already queued.
//!
//! A raw IPv4 socket hands us the whole datagram, IP header included (Linux `raw(7)`), so
//! the node parses the outer header itself (`Node::inbound_ip`). A raw IPv6 socket hands us
//! only the payload (`raw(7)`, IPv6 has no `IP_HDRINCL`-style delivery): the source comes
//! from `recvfrom` and the destination is the address the socket is bound to.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// IP protocol number of ESP (IANA; RFC 4303 §2).
pub const IPPROTO_ESP: i32 = 50;

/// Receive buffer asked of the kernel per socket: bursts wait here while the datapath is
/// busy with the other direction. The kernel caps it at `net.core.rmem_max`.
const SOCKET_RCVBUF: usize = 4 << 20;

/// Why an underlay socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{what} on {addr}: {source}")]
pub struct UnderlayError {
    /// Which socket (`UDP socket`, `raw ESP socket`).
    pub what: &'static str,
    /// The local address it was to be bound to.
    pub addr: String,
    /// The OS error.
    pub source: io::Error,
}

/// The open underlay sockets.
#[derive(Debug)]
pub struct Underlay {
    /// Our underlay address.
    pub local: IpAddr,
    /// Our NAT-T port.
    pub port: u16,
    /// UDP-encapsulated ESP, when some peer uses it.
    pub udp: Option<UdpSocket>,
    /// Raw ESP, when some peer uses it.
    pub raw: Option<AsyncFd<Socket>>,
}

impl Underlay {
    /// Opens the sockets asked for. Must run inside a tokio runtime.
    pub fn open(local: IpAddr, port: u16, udp: bool, raw: bool) -> Result<Self, UnderlayError> {
        let domain = Domain::for_address(SocketAddr::new(local, 0));
        let udp = if udp {
            let addr = SocketAddr::new(local, port);
            let err = |source| UnderlayError {
                what: "UDP socket",
                addr: addr.to_string(),
                source,
            };
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
            // Best effort: a smaller buffer still works, it only drops sooner under bursts.
            let _ = s.set_recv_buffer_size(SOCKET_RCVBUF);
            s.set_nonblocking(true).map_err(err)?;
            s.bind(&addr.into()).map_err(err)?;
            Some(UdpSocket::from_std(s.into()).map_err(err)?)
        } else {
            None
        };
        let raw = if raw {
            let err = |source| UnderlayError {
                what: "raw ESP socket (IP protocol 50)",
                addr: local.to_string(),
                source,
            };
            let s =
                Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_ESP))).map_err(err)?;
            let _ = s.set_recv_buffer_size(SOCKET_RCVBUF);
            s.set_nonblocking(true).map_err(err)?;
            // Binding a raw socket filters on the destination address (raw(7)).
            s.bind(&SocketAddr::new(local, 0).into()).map_err(err)?;
            // SAFETY: `s` is a freshly opened `socket2::Socket`, which owns its descriptor and
            // closes it only when dropped; its `as_raw_fd` always returns that descriptor, and
            // this module never takes the socket back out of the `AsyncFd` (no `get_mut`,
            // no `into_inner`), so the registered descriptor stays open and the same for the
            // `AsyncFd`'s whole life.
            let fd = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) };
            Some(fd.map_err(|e| err(e.into()))?)
        } else {
            None
        };
        Ok(Self {
            local,
            port,
            udp,
            raw,
        })
    }

    /// Waits until the UDP socket may have data (forever when there is none).
    pub async fn udp_readable(&self) -> io::Result<()> {
        match &self.udp {
            Some(s) => s.readable().await,
            None => std::future::pending().await,
        }
    }

    /// Waits until the raw socket may have data (forever when there is none). The readiness
    /// stays set until a `try_recv_raw` sees `WouldBlock`.
    pub async fn raw_readable(&self) -> io::Result<()> {
        match &self.raw {
            Some(s) => s.readable().await.map(|_guard| ()),
            None => std::future::pending().await,
        }
    }

    /// Takes one datagram from the raw socket, without waiting. IPv4: `buf` gets the whole
    /// IP datagram and the source is read from it later (returned here as `None`); IPv6:
    /// `buf` gets the ESP packet and the source is returned.
    pub fn try_recv_raw(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        let Some(raw) = &self.raw else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        raw.try_io(Interest::READABLE, |s| {
            if self.local.is_ipv4() {
                let mut r: &Socket = s;
                r.read(buf).map(|n| (n, None))
            } else {
                let (n, from) = s.recv_from(as_uninit(buf))?;
                Ok((n, from.as_socket().map(|a| a.ip())))
            }
        })
    }

    /// Sends an ESP packet to `dst` over raw IP (the kernel writes the IP header, protocol 50,
    /// source = our bound address). Never waits: a full socket buffer is `WouldBlock`.
    pub fn try_send_raw(&self, esp: &[u8], dst: IpAddr) -> io::Result<usize> {
        let Some(raw) = &self.raw else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no raw ESP socket (no peer uses encap = \"esp\")",
            ));
        };
        // The port of the address is ignored for raw IPv4; raw IPv6 takes 0 as "the socket's
        // protocol" (raw(7), ipv6(7)).
        let to = SockAddr::from(SocketAddr::new(dst, 0));
        raw.get_ref().send_to(esp, &to)
    }

    /// Sends an ESP packet in UDP to `dst`:`port`. Never waits.
    pub fn try_send_udp(&self, esp: &[u8], dst: IpAddr, port: u16) -> io::Result<usize> {
        let Some(udp) = &self.udp else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no UDP socket (no peer uses encap = \"udp\")",
            ));
        };
        udp.try_send_to(esp, SocketAddr::new(dst, port))
    }
}

/// Whether the daemon needs the UDP socket on the NAT-T port, given its peers'
/// encapsulations and whether it has IKE peers. Every IKE peer needs it whatever its
/// `encap`: IKE moves to the NAT-T port behind a NAT (RFC 7296 §2.23), and the node sends
/// negotiated CHILD SAs UDP-encapsulated (RFC 3948) — without this socket an
/// `encap = "esp"` IKE peer negotiated SAs that carried nothing.
pub fn needs_udp(
    encaps: impl IntoIterator<Item = esplab_node::UnderlayEncap>,
    ike_peers: bool,
) -> bool {
    ike_peers
        || encaps
            .into_iter()
            .any(|e| e == esplab_node::UnderlayEncap::Udp)
}

/// Views an initialised byte buffer as possibly-uninitialised, for socket2's receive calls.
fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the same size, alignment and layout as `u8`, so the
    // pointer cast keeps the slice's length and bounds. The only writer through the new
    // slice is the `recvfrom(2)` call in socket2, which writes initialised bytes (received
    // data) and never de-initialises any, so `buf` is still fully initialised afterwards.
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

#[cfg(test)]
mod socket_choice_tests {
    use super::needs_udp;
    use esplab_node::UnderlayEncap::{Raw, Udp};

    #[test]
    fn ike_peers_always_get_the_nat_t_socket() {
        // An IKE peer with encap = "esp": its negotiated SAs and NAT-T IKE use UDP 4500.
        assert!(needs_udp([Raw], true));
        assert!(needs_udp([], true));
        // Manually keyed peers: only what they use.
        assert!(!needs_udp([Raw], false));
        assert!(needs_udp([Raw, Udp], false));
        assert!(!needs_udp([], false));
    }
}
