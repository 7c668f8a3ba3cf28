//! IKEv2 cryptography: X25519 key exchange, prf / prf+, key derivation, PSK AUTH, SK
//! payload protection and NAT detection hashes.
//!
//! Keys live in [`SecretBytes`] (zeroized on drop, redacted in `Debug`). Nothing here
//! does I/O or reads a clock; randomness comes from a caller-supplied RNG.

mod auth;
mod dh;
mod keys;
mod nat;
mod prf;
mod secret;
mod sk;

pub use auth::{psk_auth, signed_octets, verify_psk_auth, KEY_PAD};
pub use dh::{x25519, KeyExchange};
pub use keys::{
    ikev2_decryption_table_line, rekey_skeyseed, skeyseed, wireshark_encr_name,
    wireshark_integ_name, ChildSaKeys, Direction, IkeSaKeys, Role,
};
pub use nat::nat_detection_hash;
pub use secret::SecretBytes;
pub use sk::{Opened, SkCipher};
