//! RFC 7748 X25519 vectors (tests/vectors/rfc7748-x25519.json): the §5.2 function
//! vectors (the second has the u-coordinate's top bit set, which must be masked), the
//! iterated test, and the §6.1 Alice/Bob exchange through [`KeyExchange`].

use esplab_ike::crypto::{x25519, KeyExchange};
use serde_json::Value;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/rfc7748-x25519.json"
));

fn doc() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn b32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn function_vectors() {
    let d = doc();
    let vs = d["function_vectors"].as_array().unwrap();
    assert_eq!(vs.len(), 2);
    for v in vs {
        assert_eq!(
            x25519(b32(&v["scalar"]), b32(&v["u"])),
            b32(&v["output"]),
            "{}",
            v["section"]
        );
    }
    // The second vector's u has bit 255 set; the result equals the one for the masked u.
    let v = &vs[1];
    let mut masked = b32(&v["u"]);
    assert_eq!(masked[31] & 0x80, 0x80);
    masked[31] &= 0x7f;
    assert_eq!(x25519(b32(&v["scalar"]), masked), b32(&v["output"]));
}

fn iterate(rounds: u32) -> [u8; 32] {
    let d = doc();
    let it = &d["iterated"];
    let mut k = b32(&it["start_k"]);
    let mut u = b32(&it["start_u"]);
    for _ in 0..rounds {
        let r = x25519(k, u);
        u = k;
        k = r;
    }
    k
}

#[test]
fn iterated_once() {
    assert_eq!(iterate(1), b32(&doc()["iterated"]["after_1"]));
}

#[test]
fn iterated_1000() {
    assert_eq!(iterate(1000), b32(&doc()["iterated"]["after_1000"]));
}

#[test]
#[ignore = "one million X25519 calls; run with --ignored"]
fn iterated_1000000() {
    assert_eq!(iterate(1_000_000), b32(&doc()["iterated"]["after_1000000"]));
}

#[test]
fn alice_and_bob() {
    let d = doc();
    let dh = &d["dh"];
    let alice = KeyExchange::x25519_from_private(b32(&dh["alice_private"]));
    let bob = KeyExchange::x25519_from_private(b32(&dh["bob_private"]));
    assert_eq!(alice.public_value(), b32(&dh["alice_public"]));
    assert_eq!(bob.public_value(), b32(&dh["bob_public"]));
    let shared = b32(&dh["shared"]);
    assert_eq!(
        alice.shared_secret(bob.public_value()).unwrap().as_bytes(),
        shared
    );
    assert_eq!(
        bob.shared_secret_with(&alice.ke_payload())
            .unwrap()
            .as_bytes(),
        shared
    );
}
