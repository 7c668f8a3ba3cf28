//! The exchanges (RFC 7296 §1.2–§1.4), as `impl Endpoint` blocks, one module each:
//! IKE_SA_INIT ([`init`]), IKE_AUTH ([`auth`]), CREATE_CHILD_SA for CHILD SAs
//! ([`child`]) and for the IKE SA ([`ike_rekey`]), INFORMATIONAL ([`informational`]).
//! This module holds the payload lookups they share.

pub(crate) mod auth;
pub(crate) mod child;
pub(crate) mod ike_rekey;
pub(crate) mod informational;
pub(crate) mod init;

use crate::notify::NotifyType;
use crate::payload::{AuthPayload, Identity, KePayload, Notify, Payload};
use crate::sa::SaPayload;
use crate::ts::TrafficSelector;

pub(crate) fn notify(p: &[Payload], t: NotifyType) -> Option<&Notify> {
    p.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type == t => Some(n),
        _ => None,
    })
}

/// The first error notification (type < 16384, §3.10.1).
pub(crate) fn error_notify(p: &[Payload]) -> Option<&Notify> {
    p.iter().find_map(|p| match p {
        Payload::Notify(n) if n.notify_type.is_error() => Some(n),
        _ => None,
    })
}

pub(crate) fn sa_payload(p: &[Payload]) -> Option<&SaPayload> {
    p.iter().find_map(|p| match p {
        Payload::Sa(s) => Some(s),
        _ => None,
    })
}

pub(crate) fn ke(p: &[Payload]) -> Option<&KePayload> {
    p.iter().find_map(|p| match p {
        Payload::Ke(k) => Some(k),
        _ => None,
    })
}

pub(crate) fn nonce(p: &[Payload]) -> Option<&[u8]> {
    p.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_slice()),
        _ => None,
    })
}

pub(crate) fn idi(p: &[Payload]) -> Option<&Identity> {
    p.iter().find_map(|p| match p {
        Payload::IdI(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn idr(p: &[Payload]) -> Option<&Identity> {
    p.iter().find_map(|p| match p {
        Payload::IdR(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn auth(p: &[Payload]) -> Option<&AuthPayload> {
    p.iter().find_map(|p| match p {
        Payload::Auth(a) => Some(a),
        _ => None,
    })
}

pub(crate) fn tsi(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|p| match p {
        Payload::TsI(t) => Some(t.selectors.as_slice()),
        _ => None,
    })
}

pub(crate) fn tsr(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|p| match p {
        Payload::TsR(t) => Some(t.selectors.as_slice()),
        _ => None,
    })
}
