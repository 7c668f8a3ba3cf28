//! Traffic selector arithmetic for CHILD SA negotiation (RFC 7296 §2.9): intersection
//! (the responder's narrowing) and containment (the initiator's check of the reply).

use crate::ts::{AddrRange, TrafficSelector};
use std::net::IpAddr;

/// The selector covering exactly one host, all protocols and ports (strongSwan's
/// `%dynamic`: what an empty `local_ts`/`remote_ts` means).
pub fn host_selector(ip: IpAddr) -> TrafficSelector {
    TrafficSelector::any_port(match ip {
        IpAddr::V4(a) => AddrRange::V4 { start: a, end: a },
        IpAddr::V6(a) => AddrRange::V6 { start: a, end: a },
    })
}

/// The intersection of two selectors, if not empty. Protocol 0 means any (§3.13.1), so
/// it yields to a specific one; port and address ranges intersect as intervals.
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port {
        return None;
    }
    let range = match (a.range, b.range) {
        (AddrRange::V4 { start: s1, end: e1 }, AddrRange::V4 { start: s2, end: e2 }) => {
            let (start, end) = (s1.max(s2), e1.min(e2));
            if start > end {
                return None;
            }
            AddrRange::V4 { start, end }
        }
        (AddrRange::V6 { start: s1, end: e1 }, AddrRange::V6 { start: s2, end: e2 }) => {
            let (start, end) = (s1.max(s2), e1.min(e2));
            if start > end {
                return None;
            }
            AddrRange::V6 { start, end }
        }
        _ => return None,
    };
    Some(TrafficSelector {
        ip_protocol,
        start_port,
        end_port,
        range,
    })
}

/// RFC 7296 §2.9: the responder narrows the offered selectors to its policy. The result
/// is every non-empty intersection of an offered selector with a policy selector, without
/// duplicates, in offer order. Empty means TS_UNACCEPTABLE.
pub fn narrow(offered: &[TrafficSelector], policy: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for o in offered {
        for p in policy {
            if let Some(ts) = intersect(o, p) {
                if !out.contains(&ts) {
                    out.push(ts);
                }
            }
        }
    }
    out
}

/// True if `inner` lies completely within `outer`.
pub fn contains(outer: &TrafficSelector, inner: &TrafficSelector) -> bool {
    intersect(outer, inner).as_ref() == Some(inner)
}

/// The initiator's check of a narrowed reply: non-empty, and every returned selector
/// lies within one we proposed (a responder may only narrow, §2.9).
pub fn is_narrowing_of(reply: &[TrafficSelector], proposed: &[TrafficSelector]) -> bool {
    !reply.is_empty()
        && reply
            .iter()
            .all(|r| proposed.iter().any(|p| contains(p, r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
        TrafficSelector::any_port(AddrRange::V4 {
            start: Ipv4Addr::from(a),
            end: Ipv4Addr::from(b),
        })
    }

    #[test]
    fn narrowing() {
        let offered = [v4([10, 0, 0, 0], [10, 0, 255, 255])];
        let policy = [
            v4([10, 0, 1, 0], [10, 0, 1, 255]),
            v4([192, 0, 2, 0], [192, 0, 2, 9]),
        ];
        assert_eq!(
            narrow(&offered, &policy),
            [v4([10, 0, 1, 0], [10, 0, 1, 255])]
        );
        assert!(narrow(&offered, &policy[1..]).is_empty());
        // Protocol and ports.
        let mut udp = v4([10, 0, 1, 5], [10, 0, 1, 5]);
        udp.ip_protocol = 17;
        udp.start_port = 500;
        udp.end_port = 4500;
        let n = narrow(&offered, &[udp]);
        assert_eq!(n, [udp]);
        let mut tcp = udp;
        tcp.ip_protocol = 6;
        assert!(intersect(&udp, &tcp).is_none());
        // Families never meet.
        let six = host_selector("2001:db8::1".parse().unwrap());
        assert!(intersect(&six, &offered[0]).is_none());
        assert!(is_narrowing_of(&n, &offered));
        assert!(!is_narrowing_of(&offered, &n));
        assert!(!is_narrowing_of(&[], &offered));
    }
}
