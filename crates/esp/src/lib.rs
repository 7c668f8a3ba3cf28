//! ESP (RFC 4303) for esplab: wire views, transforms, anti-replay, in-place encap/decap.
//!
//! No I/O, no clock, no threads: callers hand in buffers and get back values. See
//! `docs/esp.md` for the RFC sections each part follows.
//!
//! ```
//! use esplab_esp::{Algorithm, InboundSa, OutboundSa, SaParams};
//! let key = [7u8; 20]; // AES-128 key ‖ 4-byte salt (RFC 4106)
//! let params = SaParams::new(0xc0de0001, Algorithm::AesGcm128, &key, &[]);
//! let mut tx = OutboundSa::new(&params).unwrap();
//! let mut rx = InboundSa::new(&params).unwrap();
//! let payload = b"\x45\x00hello";
//! let mut buf = vec![0u8; tx.header_len() + payload.len() + tx.max_trailer_len()];
//! let start = tx.header_len();
//! buf[start..start + payload.len()].copy_from_slice(payload);
//! let out = tx.encap_slice(&mut buf, start..start + payload.len(), 4, None).unwrap();
//! let d = rx.decap(&mut buf[out.esp.clone()]).unwrap();
//! assert_eq!(&buf[out.esp][d.payload], payload);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod replay;
pub mod sa;
pub mod transform;
pub mod wire;

pub use error::{DropReason, EspError, KeyError};
pub use replay::ReplayWindow;
pub use sa::{decap, Decapped, Encapped, InboundSa, OutboundSa, SaParams};
pub use transform::{Algorithm, Backend, Cipher};
pub use wire::{parse_underlay, Encap, EspPacket, EspRepr, Family, Outer, OuterParams, Underlay};
