//! `EndpointConfig::export_ike_keys`: the keys of every IKE SA (first and rekeyed) come
//! out as `Output::IkeKeys`, only when asked, and they really open the SA's messages.

mod common;

use common::*;
use esplab_ike::{ExchangeType, IkeSaKeyExport, Output, Role};
use std::time::Instant;

fn wire(ike: &str, esp: &str, export: bool) -> Wire {
    let t0 = Instant::now();
    let (a, b) = configs(ike, esp);
    let ep = |p, seed| endpoint_with(vec![p], seed, t0, |c| c.export_ike_keys = export);
    Wire::new(t0, ep(a, 1), ep(b, 2))
}

fn exports(n: &Node) -> Vec<IkeSaKeyExport> {
    n.log
        .iter()
        .filter_map(|o| match o {
            Output::IkeKeys(k) => Some((**k).clone()),
            _ => None,
        })
        .collect()
}

fn spis(p: &Packet) -> (u64, u64) {
    (
        u64::from_be_bytes(p.data[0..8].try_into().unwrap()),
        u64::from_be_bytes(p.data[8..16].try_into().unwrap()),
    )
}

/// Opens every protected message of the exported SA seen on the wire with the exported
/// keys (the sender's by the header's Initiator flag, RFC 7296 §3.1); returns how many.
fn opens_all(w: &Wire, k: &IkeSaKeyExport) -> usize {
    let mut n = 0;
    for p in &w.history {
        if spis(p) != (k.spi_i, k.spi_r) || p.exchange() == ExchangeType::IKE_SA_INIT {
            continue;
        }
        let sender = if p.data[19] & 0x08 != 0 {
            Role::Initiator
        } else {
            Role::Responder
        };
        let opened = k.keys.sk_cipher(sender).unwrap().open(&p.data);
        assert!(
            opened.is_ok(),
            "{:?} message {} of {:016x}/{:016x} does not open: {opened:?}",
            p.exchange(),
            p.message_id(),
            k.spi_i,
            k.spi_r
        );
        n += 1;
    }
    n
}

#[test]
fn no_keys_unless_asked() {
    let mut w = wire("aes128gcm16-prfsha256-x25519", "aes128gcm16", false);
    w.establish();
    w.a.ep.rekey_ike(w.now, "moon").unwrap();
    w.run();
    assert_eq!(w.a.established(w.now), 1);
    assert!(exports(&w.a).is_empty() && exports(&w.b).is_empty());
}

fn check(ike: &str, esp: &str, rekey_by_a: bool) {
    let mut w = wire(ike, esp, true);
    w.establish();
    let (a, b) = (exports(&w.a), exports(&w.b));
    assert_eq!((a.len(), b.len()), (1, 1), "one IKE SA each");
    let first = &a[0];
    assert_eq!((first.role, b[0].role), (Role::Initiator, Role::Responder));
    assert_eq!(first.rekey_of, None);
    assert_eq!((first.peer.as_str(), b[0].peer.as_str()), ("moon", "sun"));
    let line = first.ikev2_decryption_table_line();
    assert_eq!(line, b[0].ikev2_decryption_table_line(), "both sides agree");
    assert!(
        line.starts_with(&format!("{:016x},{:016x},", first.spi_i, first.spi_r)),
        "{line}"
    );
    assert_eq!(
        opens_all(&w, first),
        2,
        "IKE_AUTH request and response open"
    );
    // Debug output of the export never shows the keys.
    assert!(!format!("{first:?}").contains(&line[34..50]));

    if rekey_by_a {
        w.a.ep.rekey_ike(w.now, "moon").unwrap();
    } else {
        w.b.ep.rekey_ike(w.now, "sun").unwrap();
    }
    w.drain();
    w.run();
    // A CHILD SA rekey over the new IKE SA gives it protected traffic of its own.
    let a_in = *w.a.installed.keys().next().unwrap();
    w.a.ep.rekey_child(w.now, a_in, &mut w.a.spis).unwrap();
    w.run();
    let (a, b) = (exports(&w.a), exports(&w.b));
    assert_eq!(
        (a.len(), b.len()),
        (2, 2),
        "the rekeyed IKE SA is exported too"
    );
    let new = &a[1];
    assert_eq!(new.rekey_of, Some(first.ike_sa));
    assert_eq!(b[1].rekey_of, Some(b[0].ike_sa));
    assert_ne!((new.spi_i, new.spi_r), (first.spi_i, first.spi_r));
    assert_eq!(
        new.ikev2_decryption_table_line(),
        b[1].ikev2_decryption_table_line()
    );
    assert_ne!(
        new.keys.sk_ei(),
        first.keys.sk_ei(),
        "new keys (RFC 7296 §2.18)"
    );
    let info = w.a.ep.ike_sas(w.now);
    assert_eq!((info[0].spi_i, info[0].spi_r), (new.spi_i, new.spi_r));
    let rekey_initiator = if rekey_by_a { &a[1] } else { &b[1] };
    assert_eq!(rekey_initiator.role, Role::Initiator);
    // The old SA carried the rekey and its Delete; the new one the CHILD SA rekey.
    assert!(opens_all(&w, first) >= 4);
    assert!(opens_all(&w, new) >= 2);
}

#[test]
fn gcm_first_and_rekeyed_by_initiator() {
    check("aes128gcm16-prfsha256-x25519", "aes128gcm16", true);
}

#[test]
fn cbc_first_and_rekeyed_by_responder() {
    check("aes128-sha256-x25519", "aes128-sha256", false);
}

#[test]
fn aes256_suites() {
    check("aes256gcm16-prfsha256-x25519", "aes256gcm16", true);
    check("aes256-sha256-x25519", "aes256-sha256", true);
}
