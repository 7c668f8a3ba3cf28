//! Routes for the protected networks through the TUN device, via `ip route`.
//!
//! Each peer's `remote_ts` is routed through the TUN device with, as preferred source, the
//! first address of the host that lies in the peer's `local_ts` (so a ping from the host
//! leaves with an address the peer's selectors accept). The routes are removed when the
//! [`Routes`] guard drops; the kernel would also drop them with the device.

use esplab_node::PeerConfig;
use esplab_sad::TrafficSelector;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

/// A route we added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpAddr,
    /// Its prefix length.
    pub len: u8,
    /// Preferred source address, if the host has one inside the local selectors.
    pub src: Option<IpAddr>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dst, self.len)?;
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        Ok(())
    }
}

/// Why a route could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("ip {args}: {msg}")]
pub struct RouteError {
    /// The `ip` arguments.
    pub args: String,
    /// What went wrong (its stderr, or why it could not run).
    pub msg: String,
}

fn ip(args: &[String]) -> Result<String, RouteError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RouteError {
            args: args.join(" "),
            msg: format!("cannot run ip: {e}"),
        })?;
    if !out.status.success() {
        return Err(RouteError {
            args: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every address configured on the host (all interfaces), from `ip -o addr show`.
pub fn host_addresses() -> Result<Vec<IpAddr>, RouteError> {
    let text = ip(&["-o".into(), "addr".into(), "show".into()])?;
    Ok(parse_ip_addr_output(&text))
}

/// Addresses in `ip -o addr show` output (`2: eth0    inet 198.18.0.1/24 brd ... scope global eth0`).
fn parse_ip_addr_output(text: &str) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                if let Some(a) = words.next().and_then(|a| a.split('/').next()) {
                    if let Ok(a) = a.parse() {
                        v.push(a);
                    }
                }
                break;
            }
        }
    }
    v
}

/// The routes a config calls for: every peer's `remote_ts` as CIDR blocks.
pub fn plan(peers: &[PeerConfig], host: &[IpAddr]) -> Vec<Route> {
    let mut v: Vec<Route> = Vec::new();
    for p in peers {
        for ts in &p.remote_ts {
            let family_v4 = ts.start_addr().is_ipv4();
            let src = host.iter().copied().find(|a| {
                a.is_ipv4() == family_v4 && p.local_ts.iter().any(|l| l.contains_addr(*a))
            });
            for (dst, len) in cidrs(ts) {
                if !v.iter().any(|r| r.dst == dst && r.len == len) {
                    v.push(Route { dst, len, src });
                }
            }
        }
    }
    v
}

/// An inclusive address range as the fewest CIDR blocks covering exactly it.
pub fn cidrs(ts: &TrafficSelector) -> Vec<(IpAddr, u8)> {
    match (ts.start_addr(), ts.end_addr()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            range_blocks(u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
                .into_iter()
                .map(|(n, l)| (IpAddr::V4(Ipv4Addr::from(n as u32)), l))
                .collect()
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => range_blocks(u128::from(a), u128::from(b), 128)
            .into_iter()
            .map(|(n, l)| (IpAddr::V6(Ipv6Addr::from(n)), l))
            .collect(),
        // A selector's two ends are always of one family (TrafficSelector's invariant).
        _ => Vec::new(),
    }
}

/// Splits `[lo, hi]` of a `bits`-wide space into maximal aligned blocks.
fn range_blocks(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
    // Last address of the block of 2^size_log addresses starting at `lo`.
    let last = |lo: u128, size_log: u32| -> Option<u128> {
        match size_log {
            128 => (lo == 0).then_some(u128::MAX),
            n => lo.checked_add((1u128 << n) - 1),
        }
    };
    let mut v = Vec::new();
    loop {
        // Largest block that starts at `lo` (alignment) and stays within `hi`.
        let mut size_log = lo.trailing_zeros().min(bits);
        while size_log > 0 {
            match last(lo, size_log) {
                Some(l) if l <= hi => break,
                _ => size_log -= 1,
            }
        }
        v.push((lo, (bits - size_log) as u8));
        match last(lo, size_log).and_then(|l| l.checked_add(1)) {
            Some(n) if n <= hi => lo = n,
            _ => break,
        }
    }
    v
}

/// Routes added through a device; removed again on drop.
#[derive(Debug)]
pub struct Routes {
    dev: String,
    added: Vec<Route>,
}

impl Routes {
    /// Adds (or replaces) each route through `dev`. On failure the ones already added are
    /// removed again.
    pub fn add(dev: &str, routes: &[Route]) -> Result<Self, RouteError> {
        let mut me = Self {
            dev: dev.to_string(),
            added: Vec::new(),
        };
        for r in routes {
            let mut args = vec![
                "route".to_string(),
                "replace".into(),
                format!("{}/{}", r.dst, r.len),
                "dev".into(),
                dev.to_string(),
            ];
            if let Some(s) = r.src {
                args.push("src".into());
                args.push(s.to_string());
            }
            ip(&args)?;
            me.added.push(r.clone());
        }
        Ok(me)
    }

    /// The routes in place.
    pub fn routes(&self) -> &[Route] {
        &self.added
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for r in self.added.drain(..) {
            // Already gone (device removed by hand) is fine: nothing to report at exit.
            let _ = ip(&[
                "route".into(),
                "del".into(),
                format!("{}/{}", r.dst, r.len),
                "dev".into(),
                self.dev.clone(),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> TrafficSelector {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_stay_prefixes() {
        assert_eq!(
            cidrs(&ts("198.19.2.0/24")),
            vec![("198.19.2.0".parse().unwrap(), 24)]
        );
        assert_eq!(
            cidrs(&ts("0.0.0.0/0")),
            vec![("0.0.0.0".parse().unwrap(), 0)]
        );
        assert_eq!(cidrs(&ts("::/0")), vec![("::".parse().unwrap(), 0)]);
        assert_eq!(
            cidrs(&ts("2001:db8::/64")),
            vec![("2001:db8::".parse().unwrap(), 64)]
        );
        assert_eq!(
            cidrs(&ts("198.19.2.1")),
            vec![("198.19.2.1".parse().unwrap(), 32)]
        );
    }

    #[test]
    fn ranges_split_into_blocks() {
        let got = cidrs(&ts("198.19.2.1-198.19.2.6"));
        let want: Vec<(IpAddr, u8)> = vec![
            ("198.19.2.1".parse().unwrap(), 32),
            ("198.19.2.2".parse().unwrap(), 31),
            ("198.19.2.4".parse().unwrap(), 31),
            ("198.19.2.6".parse().unwrap(), 32),
        ];
        assert_eq!(got, want);
        let top = cidrs(&ts("255.255.255.254-255.255.255.255"));
        assert_eq!(top, vec![("255.255.255.254".parse().unwrap(), 31)]);
    }

    #[test]
    fn parses_ip_addr_output() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    1: lo    inet 198.19.1.1/32 scope global lo\\       valid_lft forever\n\
                    1: lo    inet6 ::1/128 scope host noprefixroute \\       valid_lft forever\n\
                    3: esplab-va    inet6 2001:2::1/64 scope global \\       valid_lft forever\n";
        let a = parse_ip_addr_output(text);
        assert_eq!(
            a,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "198.19.1.1".parse().unwrap(),
                "::1".parse().unwrap(),
                "2001:2::1".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn plan_picks_source_in_local_selectors() {
        let peer = PeerConfig {
            name: "b".into(),
            address: "198.18.0.2".parse().unwrap(),
            encap: esplab_node::UnderlayEncap::Udp,
            port: 4500,
            local_ts: vec![ts("198.19.1.0/24")],
            remote_ts: vec![ts("198.19.2.0/24")],
        };
        let host: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "198.19.1.1".parse().unwrap()];
        let r = plan(std::slice::from_ref(&peer), &host);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to_string(), "198.19.2.0/24 src 198.19.1.1");
        let r = plan(&[peer], &host[..1]);
        assert_eq!(r[0].to_string(), "198.19.2.0/24");
    }
}
