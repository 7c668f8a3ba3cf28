//! Outbound SAs by peer and selectors, and packet matching.

use std::net::IpAddr;

use esplab_sad::{FlowKey, Sad, SadConfig, SelectorPair, TrafficSelector};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ts(s: &str) -> TrafficSelector {
    s.parse().unwrap()
}

fn flow(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey::new(ip(src), ip(dst), proto, sport, dport)
}

#[test]
fn insert_get_match_remove() {
    let sad: Sad<u32, &str> = Sad::new(SadConfig {
        rng_seed: Some(1),
        ..SadConfig::default()
    });
    let peer_a = ip("192.0.2.1");
    let peer_b = ip("192.0.2.2");
    let web = SelectorPair::new(
        ts("198.19.1.0/24"),
        ts("198.19.2.0/24")
            .with_protocol(6)
            .with_ports(443..=443)
            .unwrap(),
    );
    let net_a = SelectorPair::new(ts("198.19.1.0/24"), ts("198.19.2.0/24"));
    let net_b = SelectorPair::new(ts("198.19.1.0/24"), ts("198.19.3.0/24"));
    let v6 = SelectorPair::new(ts("2001:db8:1::/48"), ts("2001:db8:2::/48"));

    assert!(sad.insert_outbound(peer_a, web, "a-web").is_none());
    assert!(sad.insert_outbound(peer_a, net_a, "a-net").is_none());
    assert!(sad.insert_outbound(peer_b, net_b, "b-net").is_none());
    assert!(sad.insert_outbound(peer_b, v6, "b-v6").is_none());
    assert_eq!(sad.stats().outbound, 4);
    assert_eq!(sad.get_outbound(peer_a, &net_a).as_deref(), Some(&"a-net"));
    assert_eq!(sad.get_outbound(peer_b, &net_a), None, "keyed by peer too");

    let mut r = sad.reader();
    // First match in installation order: the narrower HTTPS policy was installed first.
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.2.9", 6, 5555, 443)),
        Some(&"a-web")
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.2.9", 6, 5555, 80)),
        Some(&"a-net")
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.2.9", 17, 53, 443)),
        Some(&"a-net")
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.3.1", 1, 0, 0)),
        Some(&"b-net")
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.9.5", "198.19.3.1", 1, 0, 0)),
        None,
        "src"
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.3.1", "198.19.1.5", 1, 0, 0)),
        None,
        "reversed"
    );
    assert_eq!(
        r.outbound_match(&flow("2001:db8:1::7", "2001:db8:2::9", 58, 0, 0)),
        Some(&"b-v6")
    );
    assert_eq!(
        r.outbound_match(&flow("2001:db8:1::7", "198.19.2.9", 6, 1, 443)),
        None
    );

    // Replace keeps the position; remove drops it.
    assert_eq!(
        sad.insert_outbound(peer_a, web, "a-web-2").as_deref(),
        Some(&"a-web")
    );
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.2.9", 6, 1, 443)),
        Some(&"a-web-2")
    );
    assert_eq!(
        sad.remove_outbound(peer_a, &web).as_deref(),
        Some(&"a-web-2")
    );
    assert_eq!(sad.remove_outbound(peer_a, &web), None);
    assert_eq!(
        r.outbound_match(&flow("198.19.1.5", "198.19.2.9", 6, 1, 443)),
        Some(&"a-net")
    );
    let order: Vec<&str> = sad.snapshot().outbound().iter().map(|e| *e.sa).collect();
    assert_eq!(order, ["a-net", "b-net", "b-v6"]);
    assert_eq!(
        sad.snapshot().outbound()[0].selectors.to_string(),
        "198.19.1.0/24 === 198.19.2.0/24"
    );
}

#[test]
fn outbound_does_not_touch_inbound() {
    let sad: Sad<u32, u32> = Sad::default();
    let spi = sad.allocate(1).unwrap();
    let any = SelectorPair::new(TrafficSelector::any_ipv4(), TrafficSelector::any_ipv4());
    sad.insert_outbound(ip("192.0.2.1"), any, 2);
    assert_eq!(sad.get(spi).as_ref(), Some(&1));
    assert_eq!(sad.len(), 1);
    let mut r = sad.reader();
    assert_eq!(
        r.outbound_match(&flow("10.0.0.1", "10.0.0.2", 17, 1, 2)),
        Some(&2)
    );
    assert_eq!(r.outbound_match(&flow("::1", "::2", 17, 1, 2)), None);
}
