//! IKEv2 (RFC 7296) for esplab: the message codec, the transforms and proposal
//! selection, the cryptography (X25519, prf+, key derivation, PSK AUTH, SK payload
//! protection, NAT detection), and the exchange state machines ([`Endpoint`]: IKE_SA_INIT,
//! IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL, retransmission, rekeying, DPD).
//!
//! Sans-IO: no sockets, no clock, no threads. The endpoint runs on the caller's `now`
//! and owns a seedable RNG; the lower layers take the caller's RNG.
//! Untrusted input never panics: every length is checked (see [`ParseError`]). See
//! `docs/ike.md` for the RFC sections each part follows and the proposal-string grammar.
//!
//! ```
//! use esplab_ike::crypto::{IkeSaKeys, KeyExchange, Role};
//! use esplab_ike::proposal::{offer, select_ike, ProposalSpec};
//! use esplab_ike::{ExchangeType, Flags, IkeHeader, Message, Notify, NotifyType, Payload};
//!
//! let mut rng = rand::thread_rng();
//! // Initiator offers, responder selects (RFC 7296 §2.7).
//! let spec = ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap();
//! let specs = [spec];
//! let chosen = select_ike(&specs, &offer(&specs, &[])).unwrap();
//! // Both sides run X25519 and derive the same IKE SA keys (§2.14).
//! let (i, r) = (
//!     KeyExchange::generate(chosen.suite.dh, &mut rng).unwrap(),
//!     KeyExchange::generate(chosen.suite.dh, &mut rng).unwrap(),
//! );
//! let (ni, nr) = ([1u8; 32], [2u8; 32]);
//! let gi = i.shared_secret_with(&r.ke_payload()).unwrap();
//! let gr = r.shared_secret_with(&i.ke_payload()).unwrap();
//! let ki = IkeSaKeys::from_shared_secret(chosen.suite, gi.as_bytes(), &ni, &nr, 7, 9).unwrap();
//! let kr = IkeSaKeys::from_shared_secret(chosen.suite, gr.as_bytes(), &ni, &nr, 7, 9).unwrap();
//! // The initiator protects an INFORMATIONAL request; the responder opens it.
//! let header = IkeHeader {
//!     spi_i: 7,
//!     spi_r: 9,
//!     exchange_type: ExchangeType::INFORMATIONAL,
//!     flags: Flags::INITIATOR,
//!     message_id: 2,
//! };
//! let inner = [Payload::Notify(Notify::new(NotifyType::INVALID_SPI, vec![0xc0, 0xde, 0, 1]))];
//! let wire = ki.sk_cipher(Role::Initiator).unwrap().seal_random(&header, &inner, &mut rng).unwrap();
//! let outer = Message::parse(&wire).unwrap(); // SK still encrypted here
//! assert!(outer.encrypted().is_some());
//! let opened = kr.sk_cipher(Role::Initiator).unwrap().open(&wire).unwrap();
//! assert_eq!(opened.payloads().unwrap(), inner);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codes;
pub mod config;
mod cookie;
pub mod crypto;
pub mod endpoint;
pub mod error;
mod exchange;
pub mod header;
mod ike_sa;
pub mod message;
pub mod notify;
pub mod output;
pub mod payload;
pub mod proposal;
mod reader;
pub mod sa;
pub mod selectors;
mod timer;
pub mod transform;
pub mod ts;

pub use codes::{AuthMethod, CfgType, ExchangeType, IdType, PayloadType, ProtocolId, TsType};
pub use config::{
    ConfigError, EndpointConfig, IkePeerConfig, InvalidSpiAction, Lifetime, Mode, PeerAction,
    Retransmit,
};
pub use crypto::Role;
pub use endpoint::{CommandError, Endpoint, NoIkeSa, SpiAllocator};
pub use error::{CryptoError, EmitError, NoProposalChosen, ParseError, ProposalError};
pub use header::{DecodedHeader, Flags, IkeHeader, HEADER_LEN};
pub use message::Message;
pub use notify::NotifyType;
pub use output::{
    AuthFailure, ChildSa, ChildSaInfo, ChildSaState, DeleteReason, DropReason, IkeEvent, IkeSaId,
    IkeSaInfo, IkeSaKeyExport, IkeSaState, NatInfo, Output,
};
pub use payload::{
    emit_payloads, parse_payloads, AuthPayload, CertPayload, CpPayload, Delete, Encrypted,
    Identity, KePayload, Notify, Payload, RawPayload, RawPayloads,
};
pub use sa::{Attribute, AttributeValue, Proposal, SaPayload, Transform, TransformType};
pub use transform::{DhGroup, Encr, EspSuite, IkeSuite, Integ, Prf};
pub use ts::{AddrRange, TrafficSelector, TsPayload};
