//! Typed failures of the ESP engine.
//!
//! Every way a packet can be refused is one [`DropReason`]: the datapath counts by it, the CLI
//! prints its stable kebab-case name, and the docs list them (`docs/esp.md`). [`EspError`]
//! carries the details a log line wants on top of the reason.

use core::fmt;

/// Why an ESP packet was dropped (or could not be built). Stable names: see [`DropReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the smallest packet this SA can produce (header, IV, trailer and ICV).
    TooShort,
    /// The SPI in the header is not the SA's SPI (the caller looked up the wrong SA).
    BadSpi,
    /// No SA holds this SPI (reported by the SAD lookup, not by the transform).
    UnknownSpi,
    /// The SPI was retired a moment ago (rekey or delete); a late packet, not a desync.
    RetiredSpi,
    /// SPI in 1..=255 (reserved by IANA, RFC 4303 §2.1) or 0 (local use only).
    ReservedSpi,
    /// Anti-replay: the sequence number was already received (RFC 4303 §3.4.3).
    ReplayDuplicate,
    /// Anti-replay: the sequence number is left of the window (RFC 4303 §3.4.3).
    ReplayTooOld,
    /// ICV (or AEAD tag) verification failed (RFC 4303 §3.4.4).
    IcvMismatch,
    /// The padding bytes are not 1, 2, 3, ... (RFC 4303 §2.4).
    BadPadding,
    /// The Pad Length byte points before the start of the payload.
    BadPadLength,
    /// The ciphertext is not a whole number of cipher blocks (RFC 3602 §3).
    BadBlockLength,
    /// Outbound: the sequence number space is exhausted; the SA must be rekeyed (RFC 4303 §3.3.3).
    SequenceExhausted,
    /// The next header is not one this mode carries (tunnel mode: 4 or 41).
    UnsupportedNextHeader,
    /// The packet is not ESP at all (not IP, not protocol 50, not UDP 4500, ...).
    NotEsp,
    /// A malformed outer IP or UDP header.
    BadOuterHeader,
    /// The buffer has no room for the ESP header before, or the trailer after, the payload.
    NoRoom,
    /// A decrypted inner packet whose addresses are outside the SA's traffic selectors
    /// (RFC 4301 §5.2, step 4: the receiver checks the inner header against the SA).
    PolicyMismatch,
    /// Outbound: no policy/SA covers the packet's addresses.
    NoOutboundSa,
    /// An RFC 4303 §2.6 dummy packet (next header 59): discarded by design.
    DummyPacket,
}

impl DropReason {
    /// Every reason, in declaration order (for counters and docs).
    pub const ALL: [DropReason; 19] = [
        DropReason::TooShort,
        DropReason::BadSpi,
        DropReason::UnknownSpi,
        DropReason::RetiredSpi,
        DropReason::ReservedSpi,
        DropReason::ReplayDuplicate,
        DropReason::ReplayTooOld,
        DropReason::IcvMismatch,
        DropReason::BadPadding,
        DropReason::BadPadLength,
        DropReason::BadBlockLength,
        DropReason::SequenceExhausted,
        DropReason::UnsupportedNextHeader,
        DropReason::NotEsp,
        DropReason::BadOuterHeader,
        DropReason::NoRoom,
        DropReason::PolicyMismatch,
        DropReason::NoOutboundSa,
        DropReason::DummyPacket,
    ];

    /// Position in [`DropReason::ALL`] (counter arrays index by it).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The stable kebab-case name used in JSON output and counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too-short",
            DropReason::BadSpi => "bad-spi",
            DropReason::UnknownSpi => "unknown-spi",
            DropReason::RetiredSpi => "retired-spi",
            DropReason::ReservedSpi => "reserved-spi",
            DropReason::ReplayDuplicate => "replay-duplicate",
            DropReason::ReplayTooOld => "replay-too-old",
            DropReason::IcvMismatch => "icv-mismatch",
            DropReason::BadPadding => "bad-padding",
            DropReason::BadPadLength => "bad-pad-length",
            DropReason::BadBlockLength => "bad-block-length",
            DropReason::SequenceExhausted => "sequence-exhausted",
            DropReason::UnsupportedNextHeader => "unsupported-next-header",
            DropReason::NotEsp => "not-esp",
            DropReason::BadOuterHeader => "bad-outer-header",
            DropReason::NoRoom => "no-room",
            DropReason::PolicyMismatch => "policy-mismatch",
            DropReason::NoOutboundSa => "no-outbound-sa",
            DropReason::DummyPacket => "dummy-packet",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused packet, with the detail a log line needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspError {
    /// See [`DropReason::TooShort`].
    #[error("packet too short: {len} bytes, need at least {min}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        min: usize,
    },
    /// See [`DropReason::BadSpi`].
    #[error("SPI 0x{got:08x} does not belong to this SA (0x{expected:08x})")]
    BadSpi {
        /// The SA's SPI.
        expected: u32,
        /// The SPI on the wire.
        got: u32,
    },
    /// See [`DropReason::ReplayDuplicate`].
    #[error("replayed sequence number {seq}")]
    ReplayDuplicate {
        /// The (inferred, 64-bit) sequence number.
        seq: u64,
    },
    /// See [`DropReason::ReplayTooOld`].
    #[error("sequence number {seq} is left of the replay window")]
    ReplayTooOld {
        /// The (inferred, 64-bit) sequence number.
        seq: u64,
    },
    /// See [`DropReason::IcvMismatch`].
    #[error("ICV mismatch")]
    IcvMismatch,
    /// See [`DropReason::BadPadding`].
    #[error("padding bytes are not 1, 2, 3, ...")]
    BadPadding,
    /// See [`DropReason::BadPadLength`].
    #[error("pad length {pad_len} exceeds the {available} bytes of decrypted payload")]
    BadPadLength {
        /// The Pad Length byte.
        pad_len: u8,
        /// Payload bytes available before the trailer.
        available: usize,
    },
    /// See [`DropReason::BadBlockLength`].
    #[error("ciphertext length {len} is not a multiple of the {block}-byte block")]
    BadBlockLength {
        /// Ciphertext length.
        len: usize,
        /// Cipher block size.
        block: usize,
    },
    /// See [`DropReason::SequenceExhausted`].
    #[error("sequence number space exhausted: the SA must be rekeyed")]
    SequenceExhausted,
    /// See [`DropReason::UnsupportedNextHeader`].
    #[error("unsupported next header {0}")]
    UnsupportedNextHeader(u8),
    /// See [`DropReason::NotEsp`].
    #[error("not an ESP packet: {0}")]
    NotEsp(&'static str),
    /// See [`DropReason::BadOuterHeader`].
    #[error("malformed outer header: {0}")]
    BadOuterHeader(&'static str),
    /// See [`DropReason::NoRoom`].
    #[error("buffer has no room for the ESP {0}")]
    NoRoom(&'static str),
}

impl EspError {
    /// The counter this error bumps.
    pub const fn reason(&self) -> DropReason {
        match self {
            EspError::TooShort { .. } => DropReason::TooShort,
            EspError::BadSpi { .. } => DropReason::BadSpi,
            EspError::ReplayDuplicate { .. } => DropReason::ReplayDuplicate,
            EspError::ReplayTooOld { .. } => DropReason::ReplayTooOld,
            EspError::IcvMismatch => DropReason::IcvMismatch,
            EspError::BadPadding => DropReason::BadPadding,
            EspError::BadPadLength { .. } => DropReason::BadPadLength,
            EspError::BadBlockLength { .. } => DropReason::BadBlockLength,
            EspError::SequenceExhausted => DropReason::SequenceExhausted,
            EspError::UnsupportedNextHeader(_) => DropReason::UnsupportedNextHeader,
            EspError::NotEsp(_) => DropReason::NotEsp,
            EspError::BadOuterHeader(_) => DropReason::BadOuterHeader,
            EspError::NoRoom(_) => DropReason::NoRoom,
        }
    }
}

/// A key or SA parameter that cannot make an SA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The encryption key (for GCM: key‖salt) has the wrong length.
    #[error("{alg}: encryption key must be {expected} bytes, got {got}")]
    EncKeyLength {
        /// Algorithm name.
        alg: &'static str,
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The integrity key has the wrong length.
    #[error("{alg}: integrity key must be {expected} bytes, got {got}")]
    IntegKeyLength {
        /// Algorithm name.
        alg: &'static str,
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// An integrity key is needed but missing.
    #[error("{0}: an integrity key is required")]
    MissingIntegKey(&'static str),
    /// An integrity key was given to an AEAD algorithm.
    #[error("{0}: combined-mode algorithm takes no integrity key")]
    UnexpectedIntegKey(&'static str),
    /// A caller-supplied IV has the wrong length.
    #[error("IV must be {expected} bytes, got {got}")]
    IvLength {
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The replay window size is out of range.
    #[error("replay window must be between 0 and {max}, got {got}")]
    ReplayWindow {
        /// Largest supported window.
        max: u32,
        /// Requested window.
        got: u32,
    },
    /// Unknown algorithm name.
    #[error("unknown algorithm {0:?} (expected aes-gcm-128, aes-gcm-256, aes-cbc-128-hmac-sha256 or aes-cbc-256-hmac-sha256)")]
    UnknownAlgorithm(String),
}
