//! Typed failures of the codec, the negotiation and the crypto.
//!
//! Each error says enough for an IKE responder to pick its answer: see
//! [`ParseError::notify_type`], [`CryptoError::notify_type`] and
//! [`NoProposalChosen::notify_type`]. Whether to answer at all is the exchange layer's
//! decision (RFC 7296 §2.21: most errors in unauthenticated messages are not answered).

use crate::notify::NotifyType;

/// A received IKE message (or a decrypted payload chain) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes are left than a field or a declared length needs.
    #[error("truncated {what}: need {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A length field is impossible (below the fixed part, or not what the type requires).
    #[error("bad length {length} for {what}")]
    BadLength {
        /// What the length belongs to.
        what: &'static str,
        /// The offending length.
        length: usize,
    },
    /// The IKE header's major version is not 2 (RFC 7296 §3.1).
    #[error("unsupported IKE version {major}.{minor}")]
    BadVersion {
        /// Major version received.
        major: u8,
        /// Minor version received.
        minor: u8,
    },
    /// A payload type this codec does not know had its critical bit set (RFC 7296 §2.5):
    /// the whole message is rejected and the answer is UNSUPPORTED_CRITICAL_PAYLOAD with
    /// this type as data.
    #[error("unsupported critical payload type {payload_type}")]
    UnsupportedCritical {
        /// The unrecognized payload type.
        payload_type: u8,
    },
    /// A field holds a value the format does not allow (e.g. a Last Substruc value that
    /// disagrees with the structure, an SPI size the protocol does not use).
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// The received value.
        value: u64,
    },
    /// A count field disagrees with the number of items actually present.
    #[error("{what}: count field says {declared}, found {found}")]
    CountMismatch {
        /// What is counted.
        what: &'static str,
        /// The count field.
        declared: usize,
        /// Items found.
        found: usize,
    },
    /// Bytes are left after a structure that should have ended.
    #[error("{count} trailing bytes after {what}")]
    TrailingData {
        /// The structure.
        what: &'static str,
        /// Extra bytes.
        count: usize,
    },
    /// The Encrypted payload is not the last payload (RFC 7296 §3.14).
    #[error("Encrypted payload is not the last payload")]
    EncryptedNotLast,
    /// A traffic selector type this codec does not know (RFC 7296 §3.13.1).
    #[error("unsupported traffic selector type {ts_type}")]
    UnsupportedTsType {
        /// The TS type.
        ts_type: u8,
    },
}

impl ParseError {
    /// The Notify type an IKE responder would answer with (RFC 7296 §2.5, §3.10.1), or
    /// `None` when the message must be dropped silently (an IKEv1 or older major version,
    /// §2.5: only a *higher* major version gets INVALID_MAJOR_VERSION).
    pub fn notify_type(&self) -> Option<NotifyType> {
        match self {
            ParseError::UnsupportedCritical { .. } => {
                Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
            }
            ParseError::BadVersion { major, .. } if *major > 2 => {
                Some(NotifyType::INVALID_MAJOR_VERSION)
            }
            ParseError::BadVersion { .. } => None,
            ParseError::UnsupportedTsType { .. } => Some(NotifyType::TS_UNACCEPTABLE),
            _ => Some(NotifyType::INVALID_SYNTAX),
        }
    }

    /// The Notification Data that goes with [`ParseError::notify_type`]: the one-octet
    /// payload type for UNSUPPORTED_CRITICAL_PAYLOAD (§3.10.1), otherwise empty.
    pub fn notify_data(&self) -> Vec<u8> {
        match self {
            ParseError::UnsupportedCritical { payload_type } => vec![*payload_type],
            _ => Vec::new(),
        }
    }
}

/// A local structure cannot be put on the wire (a field wider than its wire width).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// A length or count exceeds what its field can hold.
    #[error("{what} is {len}, more than the wire field allows ({max})")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The actual size.
        len: usize,
        /// The field maximum.
        max: usize,
    },
    /// A value out of its field's range (e.g. an attribute type with the AF bit set).
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// An Encrypted payload that is not the last in its chain (RFC 7296 §3.14).
    #[error("Encrypted payload must be the last payload")]
    EncryptedNotLast,
}

/// A proposal string (strongSwan syntax, see `docs/ike.md`) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// A keyword this crate does not know or does not implement.
    #[error("unknown or unsupported algorithm keyword '{0}'")]
    UnknownKeyword(String),
    /// A keyword that does not belong to this kind of proposal (e.g. `prfsha256` for ESP).
    #[error("'{keyword}' is not allowed in an {kind} proposal")]
    NotAllowed {
        /// The keyword.
        keyword: String,
        /// "IKE" or "ESP".
        kind: &'static str,
    },
    /// A required transform type is missing.
    #[error("{kind} proposal '{proposal}' has no {what}")]
    Missing {
        /// "IKE" or "ESP".
        kind: &'static str,
        /// The proposal text.
        proposal: String,
        /// What is missing ("encryption algorithm", "PRF", ...).
        what: &'static str,
    },
    /// AEAD and non-AEAD ciphers, or an AEAD cipher with an integrity algorithm, in one
    /// proposal (RFC 5282 §8).
    #[error("proposal '{0}' mixes AEAD ciphers with non-AEAD ciphers or integrity algorithms")]
    MixedAead(String),
    /// An empty proposal or proposal list.
    #[error("empty proposal")]
    Empty,
}

/// Proposal selection found nothing acceptable (RFC 7296 §2.7): answer
/// NO_PROPOSAL_CHOSEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no proposal chosen")]
pub struct NoProposalChosen;

impl NoProposalChosen {
    /// Always NO_PROPOSAL_CHOSEN (RFC 7296 §3.10.1).
    pub const fn notify_type(self) -> NotifyType {
        NotifyType::NO_PROPOSAL_CHOSEN
    }
}

/// Key exchange, key derivation, authentication or SK payload protection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A Diffie-Hellman group this crate does not implement.
    #[error("unsupported Diffie-Hellman group {0}")]
    UnsupportedGroup(u16),
    /// The KE payload's group is not the negotiated one (RFC 7296 §1.2: answer
    /// INVALID_KE_PAYLOAD naming the expected group).
    #[error("KE payload is for group {got}, expected {expected}")]
    GroupMismatch {
        /// The negotiated group.
        expected: u16,
        /// The group in the KE payload.
        got: u16,
    },
    /// The peer's KE data has the wrong length for the group (RFC 8031 §3.1: 32 octets).
    #[error("key exchange data for group {group} must be {expected} bytes, got {got}")]
    KeyExchangeLength {
        /// The group.
        group: u16,
        /// Required length.
        expected: usize,
        /// Received length.
        got: usize,
    },
    /// The X25519 result is all zeros: the peer sent a low-order point (RFC 7748 §6.1).
    #[error("all-zero Diffie-Hellman shared secret")]
    ZeroSharedSecret,
    /// A key of the wrong length was handed in.
    #[error("{what} must be {expected} bytes, got {got}")]
    KeyLength {
        /// Which key.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// prf+ can produce at most 255 blocks (RFC 7296 §2.13).
    #[error("prf+ asked for {requested} bytes, at most {max} possible")]
    PrfPlusTooLong {
        /// Requested length.
        requested: usize,
        /// The maximum for this PRF.
        max: usize,
    },
    /// The IV handed to `seal` has the wrong length for the cipher.
    #[error("IV must be {expected} bytes, got {got}")]
    IvLength {
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The message framing around the Encrypted payload is malformed.
    #[error("malformed protected message: {0}")]
    Parse(#[from] ParseError),
    /// The message to seal cannot be emitted.
    #[error("cannot emit protected message: {0}")]
    Emit(#[from] EmitError),
    /// The message has no Encrypted payload.
    #[error("message has no Encrypted payload")]
    NoEncryptedPayload,
    /// The Encrypted payload is too short for IV, one cipher block and ICV, or its
    /// ciphertext is not a whole number of blocks (RFC 7296 §3.14).
    #[error("Encrypted payload body of {len} bytes is malformed for this cipher")]
    BadCiphertextLength {
        /// Body length (IV + ciphertext + ICV).
        len: usize,
    },
    /// ICV or AEAD tag verification failed (RFC 7296 §3.14, RFC 5282 §3).
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    /// The decrypted Pad Length points before the start of the plaintext (RFC 7296 §3.14).
    #[error("bad pad length {pad_len} for {len} bytes of plaintext")]
    BadPadding {
        /// The Pad Length byte.
        pad_len: u8,
        /// Plaintext length including the Pad Length byte.
        len: usize,
    },
    /// The peer's AUTH payload does not verify (RFC 7296 §2.15).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The negotiated suite cannot be used for this purpose (e.g. no ESP mapping).
    #[error("unsupported suite: {0}")]
    UnsupportedSuite(&'static str),
}

impl CryptoError {
    /// The Notify type to answer with, or `None` when the message must be dropped
    /// silently: RFC 7296 §2.21.2 — a message whose ICV fails is discarded without reply.
    pub fn notify_type(&self) -> Option<NotifyType> {
        match self {
            CryptoError::UnsupportedGroup(_) | CryptoError::GroupMismatch { .. } => {
                Some(NotifyType::INVALID_KE_PAYLOAD)
            }
            CryptoError::KeyExchangeLength { .. } | CryptoError::ZeroSharedSecret => {
                Some(NotifyType::INVALID_SYNTAX)
            }
            CryptoError::AuthenticationFailed => Some(NotifyType::AUTHENTICATION_FAILED),
            CryptoError::IntegrityCheckFailed
            | CryptoError::BadCiphertextLength { .. }
            | CryptoError::NoEncryptedPayload
            | CryptoError::Parse(_) => None,
            // Padding is only looked at after the ICV passed: the peer really sent it.
            CryptoError::BadPadding { .. } => Some(NotifyType::INVALID_SYNTAX),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_mapping() {
        let e = ParseError::UnsupportedCritical { payload_type: 200 };
        assert_eq!(
            e.notify_type(),
            Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        );
        assert_eq!(e.notify_data(), vec![200]);
        let v1 = ParseError::BadVersion { major: 1, minor: 0 };
        assert_eq!(v1.notify_type(), None);
        let v3 = ParseError::BadVersion { major: 3, minor: 0 };
        assert_eq!(v3.notify_type(), Some(NotifyType::INVALID_MAJOR_VERSION));
        assert_eq!(
            ParseError::EncryptedNotLast.notify_type(),
            Some(NotifyType::INVALID_SYNTAX)
        );
        assert_eq!(CryptoError::IntegrityCheckFailed.notify_type(), None);
        assert_eq!(
            CryptoError::UnsupportedGroup(14).notify_type(),
            Some(NotifyType::INVALID_KE_PAYLOAD)
        );
        assert_eq!(
            NoProposalChosen.notify_type(),
            NotifyType::NO_PROPOSAL_CHOSEN
        );
    }
}
