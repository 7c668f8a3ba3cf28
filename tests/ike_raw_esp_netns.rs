//! IKE peers configured with `encap = "esp"` (raw ESP, IP protocol 50) in network
//! namespaces (esplab issue #5/#8): the negotiated CHILD SAs must carry traffic both
//! ways. Before the fix the daemon opened only the raw ESP socket for such a peer while
//! the negotiated SAs went out as UDP 4500 (RFC 3948), so the tunnel carried nothing.
//!
//! Needs root (namespaces, veth, TUN); fails without root unless `ESPLAB_SKIP_NETNS=1`.
//! Namespaces and the temporary directory are per process and removed in `Drop`.

#[path = "interop/harness.rs"]
mod harness;

use harness::{may_run, EsplabNode, Lab};
use std::time::Duration;

const GCM: (&str, &str) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");

#[test]
fn ike_peer_with_raw_esp_encap_carries_traffic() {
    if !may_run(false) {
        return;
    }
    let mut lab = Lab::new("erx", "esplab-ike-raw-esp", "r");
    let tag = lab.tag.clone();
    for (side, start) in [(1, false), (0, true)] {
        let name = ["a", "b"][side];
        let tun = format!("erx{tag}{name}");
        lab.start_esplab(&EsplabNode {
            side,
            name,
            tun: &tun,
            suites: GCM,
            start,
            sections: "",
            peer_extra: "encap = \"esp\"\n",
        });
    }
    lab.wait(
        "the CHILD SA pair on both sides",
        Duration::from_secs(20),
        |l| l.esplab_sas("a") >= 2 && l.esplab_sas("b") >= 2,
    );
    // Traffic both ways through the negotiated SAs (a lost first probe while the
    // responder installs its pair is retried: poll, do not time).
    let mut ok = false;
    for _ in 0..5 {
        let pings = [lab.spawn_ping(0, 3, "0.2"), lab.spawn_ping(1, 3, "0.2")];
        let lost: u32 = pings.into_iter().map(|p| p.finish().lost()).sum();
        if lost == 0 {
            ok = true;
            break;
        }
    }
    assert!(ok, "no traffic over the raw-ESP IKE peer\n{}", lab.logs());
}
