//! Untrusted input never panics an endpoint and never changes an authenticated SA:
//! random datagrams and mutations of real messages (from a full exchange: IKE_SA_INIT,
//! IKE_AUTH, CHILD rekey, IKE rekey, liveness, Delete) are fed to snapshots of both
//! endpoints taken after every step of that exchange (RFC 7296 §2.21).

mod common;

use common::*;
use esplab_ike::{Endpoint, IkeSaState, Output};
use proptest::prelude::*;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Transcript {
    /// (A, B, now) after each delivered packet.
    snapshots: Vec<(Endpoint, Endpoint, Instant)>,
    packets: Vec<Packet>,
}

fn transcript() -> &'static Transcript {
    static T: OnceLock<Transcript> = OnceLock::new();
    T.get_or_init(|| {
        let mut w = pair(
            "aes128-sha256-x25519,aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
        );
        let mut snapshots = vec![(w.a.ep.clone(), w.b.ep.clone(), w.now)];
        let mut step = |w: &mut Wire| {
            while w.step() {
                snapshots.push((w.a.ep.clone(), w.b.ep.clone(), w.now));
            }
        };
        w.a.ep.initiate(w.now, "moon", &mut w.a.spis).unwrap();
        step(&mut w);
        let spi = *w.a.installed.keys().next().unwrap();
        w.a.ep.rekey_child(w.now, spi, &mut w.a.spis).unwrap();
        step(&mut w);
        w.b.ep.rekey_ike(w.now, "sun").unwrap();
        step(&mut w);
        w.now += Duration::from_secs(1);
        w.a.ep.send_liveness(w.now, "moon").unwrap();
        step(&mut w);
        let spi = *w.b.installed.keys().next().unwrap();
        w.b.ep.delete_child(w.now, spi).unwrap();
        step(&mut w);
        w.a.ep.terminate(w.now, "moon").unwrap();
        step(&mut w);
        Transcript {
            snapshots,
            packets: w.history.clone(),
        }
    })
}

/// What must not change: every authenticated IKE SA, its SPIs, state, Message IDs and
/// CHILD SAs.
fn fingerprint(ep: &Endpoint, now: Instant) -> Vec<String> {
    ep.ike_sas(now)
        .into_iter()
        .filter(|s| !matches!(s.state, IkeSaState::Connecting | IkeSaState::Authenticating))
        .map(|s| {
            let children: Vec<_> = s
                .children
                .iter()
                .map(|c| (c.inbound_spi, c.outbound_spi, c.state))
                .collect();
            format!(
                "{:?} {:?} {:x} {:x} {} {} {:?}",
                s.id,
                s.state,
                s.spi_i,
                s.spi_r,
                s.next_message_id,
                s.peer_next_message_id,
                children
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Input {
    Random(Vec<u8>),
    Mutated {
        packet: usize,
        flips: Vec<(usize, u8)>,
        truncate: Option<usize>,
        append: Vec<u8>,
    },
    /// A real header (SPIs of a live SA) followed by random bytes.
    Headed {
        packet: usize,
        body: Vec<u8>,
    },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Input::Random),
        (
            any::<prop::sample::Index>(),
            proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
            proptest::option::of(any::<usize>()),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(i, flips, truncate, append)| Input::Mutated {
                packet: i.index(usize::MAX),
                flips,
                truncate,
                append
            }),
        (
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(i, body)| Input::Headed {
                packet: i.index(usize::MAX),
                body
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics_nor_changes_authenticated_sas(
        snap in any::<prop::sample::Index>(),
        to_a in any::<bool>(),
        inp in input(),
    ) {
        let t = transcript();
        let (a, b, now) = &t.snapshots[snap.index(t.snapshots.len())];
        let mut ep = if to_a { a.clone() } else { b.clone() };
        let (local, remote): (SocketAddr, SocketAddr) = if to_a {
            (addr(A_ADDR), addr(B_ADDR))
        } else {
            (addr(B_ADDR), addr(A_ADDR))
        };
        let (data, original) = match inp {
            Input::Random(d) => (d, None),
            Input::Mutated { packet, flips, truncate, append } => {
                let p = &t.packets[packet % t.packets.len()];
                let mut d = p.data.clone();
                for (pos, x) in flips {
                    if !d.is_empty() {
                        let n = d.len();
                        d[pos % n] ^= x;
                    }
                }
                if let Some(n) = truncate {
                    let n = n % (d.len() + 1);
                    d.truncate(n);
                }
                d.extend(append);
                (d, Some(p.data.clone()))
            }
            Input::Headed { packet, body } => {
                let p = &t.packets[packet % t.packets.len()];
                let mut d = p.data[..28].to_vec();
                d.extend(body);
                (d, Some(p.data.clone()))
            }
        };
        prop_assume!(original.as_ref() != Some(&data));
        let before = fingerprint(&ep, *now);
        let mut spis = Spis { next: 0xf000_0000, released: vec![] };
        ep.handle_datagram(*now, local, remote, &data, &mut spis);
        let mut sent = 0;
        while let Some(o) = ep.poll_output() {
            match o {
                Output::InstallChild(_) | Output::RemoveChild { .. } | Output::ActivateOutbound { .. } => {
                    prop_assert!(false, "SAD change from an unauthenticated datagram: {o:?}");
                }
                Output::Send { .. } => sent += 1,
                Output::Event(_) => {}
                Output::IkeKeys(_) => {}
            }
        }
        prop_assert_eq!(fingerprint(&ep, *now), before);
        // At most one answer (an IKE_SA_INIT response or a cached one).
        prop_assert!(sent <= 1);
        // And the endpoint still runs its timers.
        let later = *now + Duration::from_secs(3600);
        ep.handle_timeout(later, &mut spis);
        while ep.poll_output().is_some() {}
    }
}

#[test]
fn transcript_covers_every_exchange() {
    let t = transcript();
    let kinds: std::collections::BTreeSet<_> = t
        .packets
        .iter()
        .map(|p| (p.exchange().0, p.is_response()))
        .collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    assert!(t.snapshots.len() > 12);
}
