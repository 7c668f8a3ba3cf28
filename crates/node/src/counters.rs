//! Datapath counters: totals, and drops by reason, direction and address family.
//!
//! Names follow the vendor where it has one (`IN_US_V4_PKT_SA_NOT_FOUND_SPI`,
//! `IN_US_V6_PKT_SA_NOT_FOUND_SPI`, from the source note) and the same shape for the rest
//! (`IN_US_V4_PKT_ICV_FAIL`, ...), so one `grep IN_US_V4` shows every inbound IPv4 drop.
//! `DropReason` is the single source: adding a reason adds its counters.

use esplab_esp::{DropReason, Family};
use esplab_ike::output::DropReason as IkeDropReason;
use serde::Serialize;

const N: usize = DropReason::ALL.len();

/// Direction of a packet through the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Underlay → TUN (decapsulation).
    In,
    /// TUN → underlay (encapsulation).
    Out,
}

/// All counters of one node.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets decapsulated and delivered.
    pub in_packets: u64,
    /// Inner bytes delivered.
    pub in_bytes: u64,
    /// Packets encapsulated and sent.
    pub out_packets: u64,
    /// Inner bytes encapsulated.
    pub out_bytes: u64,
    /// NAT-keepalives received (RFC 3948 §2.3).
    pub keepalives: u64,
    /// IKE messages received on the underlay (handed to the control plane).
    pub ike_in: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Times a NAT'ed peer's new address/port was followed (RFC 7296 §2.23).
    pub peer_address_followed: u64,
    /// Invalid-SPI log lines printed.
    pub invalid_spi_logged: u64,
    /// Invalid-SPI log lines suppressed by the rate limits.
    pub invalid_spi_suppressed: u64,
    drops: [[[u64; 2]; N]; 2],
}

/// One named counter value, for `show counters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedCounter {
    /// Counter name.
    pub name: String,
    /// Value.
    pub value: u64,
}

fn fam_idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Counters {
    /// Counts one dropped packet.
    #[inline]
    pub fn drop(&mut self, dir: Dir, reason: DropReason, family: Family) {
        self.drops[dir as usize][reason.index()][fam_idx(family)] += 1;
    }

    /// Adds `n` drops at once (merging a sending thread's counters).
    pub(crate) fn add_drops(&mut self, dir: Dir, reason: DropReason, family: Family, n: u64) {
        self.drops[dir as usize][reason.index()][fam_idx(family)] += n;
    }

    /// Every counter of `self` plus `other`'s.
    pub(crate) fn plus(mut self, other: &Counters) -> Counters {
        self.zip(other, u64::wrapping_add);
        self
    }

    /// Every counter of `self` minus `other`'s (what was counted since `other` was taken).
    pub(crate) fn minus(mut self, other: &Counters) -> Counters {
        self.zip(other, u64::wrapping_sub);
        self
    }

    fn zip(&mut self, o: &Counters, f: fn(u64, u64) -> u64) {
        let Counters {
            in_packets,
            in_bytes,
            out_packets,
            out_bytes,
            keepalives,
            ike_in,
            events_dropped,
            peer_address_followed,
            invalid_spi_logged,
            invalid_spi_suppressed,
            drops,
        } = self;
        for (a, b) in [
            (in_packets, o.in_packets),
            (in_bytes, o.in_bytes),
            (out_packets, o.out_packets),
            (out_bytes, o.out_bytes),
            (keepalives, o.keepalives),
            (ike_in, o.ike_in),
            (events_dropped, o.events_dropped),
            (peer_address_followed, o.peer_address_followed),
            (invalid_spi_logged, o.invalid_spi_logged),
            (invalid_spi_suppressed, o.invalid_spi_suppressed),
        ] {
            *a = f(*a, b);
        }
        for (a, b) in drops
            .iter_mut()
            .flatten()
            .flatten()
            .zip(o.drops.iter().flatten().flatten())
        {
            *a = f(*a, *b);
        }
    }

    /// Drops counted for a reason, direction and family.
    pub fn drops(&self, dir: Dir, reason: DropReason, family: Family) -> u64 {
        self.drops[dir as usize][reason.index()][fam_idx(family)]
    }

    /// Sum of all drops in one direction.
    pub fn total_drops(&self, dir: Dir) -> u64 {
        self.drops[dir as usize].iter().flatten().sum()
    }

    /// The counter name for a drop (vendor names where they exist).
    pub fn drop_name(dir: Dir, reason: DropReason, family: Family) -> String {
        let fam = match family {
            Family::V4 => "V4",
            Family::V6 => "V6",
        };
        let what = match reason {
            DropReason::UnknownSpi => "SA_NOT_FOUND_SPI".to_string(),
            DropReason::IcvMismatch => "ICV_FAIL".to_string(),
            r => r.as_str().to_ascii_uppercase().replace('-', "_"),
        };
        match dir {
            Dir::In => format!("IN_US_{fam}_PKT_{what}"),
            Dir::Out => format!("OUT_US_{fam}_PKT_{what}"),
        }
    }

    /// Every counter by name, zero ones included (stable order).
    pub fn named(&self) -> Vec<NamedCounter> {
        let mut v = vec![
            nc("IN_PACKETS", self.in_packets),
            nc("IN_BYTES", self.in_bytes),
            nc("OUT_PACKETS", self.out_packets),
            nc("OUT_BYTES", self.out_bytes),
            nc("IN_DROPS", self.total_drops(Dir::In)),
            nc("OUT_DROPS", self.total_drops(Dir::Out)),
            nc("IN_NAT_KEEPALIVES", self.keepalives),
            nc("IN_IKE_MESSAGES", self.ike_in),
            nc("EVENTS_DROPPED_QUEUE_FULL", self.events_dropped),
            nc("INVALID_SPI_LOG_LINES", self.invalid_spi_logged),
            nc("INVALID_SPI_LOG_SUPPRESSED", self.invalid_spi_suppressed),
        ];
        for dir in [Dir::In, Dir::Out] {
            for r in DropReason::ALL {
                for f in [Family::V4, Family::V6] {
                    v.push(NamedCounter {
                        name: Self::drop_name(dir, r, f),
                        value: self.drops(dir, r, f),
                    });
                }
            }
        }
        v
    }
}

/// IKE messages dropped without effect, one counter per
/// [`esplab_ike::output::DropReason`] (the endpoint's `IkeEvent::MessageDropped`). Names:
/// `IN_IKE_DROP_<REASON>` (`IN_IKE_DROP_MALFORMED`, `IN_IKE_DROP_UNKNOWN_SPI`, ...) plus
/// the total `IN_IKE_DROPS`, so one `grep IN_IKE` shows every IKE counter. Kept by the
/// agent (the node only sees datagrams, not why the endpoint refused them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IkeDropCounters {
    drops: [u64; IkeDropReason::COUNT],
}

impl IkeDropCounters {
    /// Counts one dropped IKE message.
    pub fn count(&mut self, reason: &IkeDropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Drops counted under this reason's name (`reason.as_str()`, e.g. `malformed`).
    pub fn get(&self, reason: &str) -> u64 {
        IkeDropReason::NAMES
            .iter()
            .position(|n| *n == reason)
            .map_or(0, |i| self.drops[i])
    }

    /// All IKE drops.
    pub fn total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The counter name for a reason name (`malformed` → `IN_IKE_DROP_MALFORMED`).
    pub fn name(reason: &str) -> String {
        format!(
            "IN_IKE_DROP_{}",
            reason.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The total and every per-reason counter, zero ones included (stable order).
    pub fn named(&self) -> Vec<NamedCounter> {
        let mut v = vec![nc("IN_IKE_DROPS", self.total())];
        for (i, r) in IkeDropReason::NAMES.iter().enumerate() {
            v.push(NamedCounter {
                name: Self::name(r),
                value: self.drops[i],
            });
        }
        v
    }
}

fn nc(name: &str, value: u64) -> NamedCounter {
    NamedCounter {
        name: name.to_string(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_names() {
        assert_eq!(
            Counters::drop_name(Dir::In, DropReason::UnknownSpi, Family::V4),
            "IN_US_V4_PKT_SA_NOT_FOUND_SPI"
        );
        assert_eq!(
            Counters::drop_name(Dir::In, DropReason::UnknownSpi, Family::V6),
            "IN_US_V6_PKT_SA_NOT_FOUND_SPI"
        );
        assert_eq!(
            Counters::drop_name(Dir::In, DropReason::ReplayDuplicate, Family::V4),
            "IN_US_V4_PKT_REPLAY_DUPLICATE"
        );
    }

    #[test]
    fn ike_drop_counters() {
        let mut c = IkeDropCounters::default();
        c.count(&IkeDropReason::UnknownSpi);
        c.count(&IkeDropReason::UnknownSpi);
        c.count(&IkeDropReason::MissingPayload("Nonce"));
        assert_eq!(c.get("unknown-spi"), 2);
        assert_eq!(c.get("missing-payload"), 1);
        assert_eq!(c.get("malformed"), 0);
        assert_eq!(c.total(), 3);
        let named = c.named();
        assert_eq!(named.len(), IkeDropReason::COUNT + 1);
        assert_eq!(named[0], nc("IN_IKE_DROPS", 3));
        assert!(named.contains(&nc("IN_IKE_DROP_UNKNOWN_SPI", 2)));
        assert!(named.contains(&nc("IN_IKE_DROP_MISSING_PAYLOAD", 1)));
        assert!(named.contains(&nc("IN_IKE_DROP_NO_PEER_CONFIG", 0)));
        // Unique, and distinct from the datapath counters.
        let mut names: Vec<_> = named.iter().map(|n| n.name.clone()).collect();
        names.extend(Counters::default().named().into_iter().map(|n| n.name));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn counts_by_family() {
        let mut c = Counters::default();
        c.drop(Dir::In, DropReason::UnknownSpi, Family::V6);
        c.drop(Dir::In, DropReason::UnknownSpi, Family::V6);
        assert_eq!(c.drops(Dir::In, DropReason::UnknownSpi, Family::V6), 2);
        assert_eq!(c.drops(Dir::In, DropReason::UnknownSpi, Family::V4), 0);
        let named = c.named();
        let v6 = named
            .iter()
            .find(|n| n.name == "IN_US_V6_PKT_SA_NOT_FOUND_SPI")
            .unwrap();
        assert_eq!(v6.value, 2);
        // Names are unique.
        let mut names: Vec<_> = named.iter().map(|n| n.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), named.len());
    }
}
