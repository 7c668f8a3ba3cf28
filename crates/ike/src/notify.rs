//! Notify Message Types (RFC 7296 §3.10.1 and the IANA registry).
//!
//! Types below 16384 are errors; 16384 and above are status types (§3.10.1). An
//! unrecognized error type in a response means the request failed; an unrecognized status
//! type MUST be ignored (§3.10.1), which is why [`NotifyType`] is open.

use crate::codes::registry;

registry! {
    /// Notify Message Type (RFC 7296 §3.10.1; later RFCs as noted).
    NotifyType(u16) {
        /// A critical payload type was not recognized; data = that one-octet type (§2.5).
        UNSUPPORTED_CRITICAL_PAYLOAD = 1,
        /// A message arrived for an IKE SA the receiver does not know (§2.21.4).
        INVALID_IKE_SPI = 4,
        /// The header's major version is not supported (§2.5).
        INVALID_MAJOR_VERSION = 5,
        /// A type, length or value was out of range (§2.21.2, §3.10.1).
        INVALID_SYNTAX = 7,
        /// The Message ID was outside the window (§2.3).
        INVALID_MESSAGE_ID = 9,
        /// An ESP/AH packet with an unknown SPI arrived (§1.5); data = the SPI.
        INVALID_SPI = 11,
        /// None of the proposed transforms was acceptable (§2.7).
        NO_PROPOSAL_CHOSEN = 14,
        /// The KE group is not the one the responder wants; data = the wanted group (§1.2).
        INVALID_KE_PAYLOAD = 17,
        /// Authentication failed (§2.21.2).
        AUTHENTICATION_FAILED = 24,
        /// Only a single pair of traffic selectors is acceptable (§2.9).
        SINGLE_PAIR_REQUIRED = 34,
        /// The responder will accept no more Child SAs on this IKE SA.
        NO_ADDITIONAL_SAS = 35,
        /// No internal address could be assigned (§3.15.4).
        INTERNAL_ADDRESS_FAILURE = 36,
        /// A CP payload was required but missing (§3.15.4).
        FAILED_CP_REQUIRED = 37,
        /// The proposed traffic selectors are unacceptable (§2.9).
        TS_UNACCEPTABLE = 38,
        /// An IPsec packet did not match the SA's selectors.
        INVALID_SELECTORS = 39,
        /// A temporary condition (for example a simultaneous rekey) refused the request (§2.25).
        TEMPORARY_FAILURE = 43,
        /// The Child SA named in the request does not exist (§2.25).
        CHILD_SA_NOT_FOUND = 44,
        /// This is the first IKE SA between the peers: delete older state (§2.4).
        INITIAL_CONTACT = 16384,
        /// Window size for concurrent requests (§2.3).
        SET_WINDOW_SIZE = 16385,
        /// Narrowed traffic selectors: more are possible (§2.9).
        ADDITIONAL_TS_POSSIBLE = 16386,
        /// IP compression is supported (§2.22).
        IPCOMP_SUPPORTED = 16387,
        /// NAT detection: hash of the sender's address (§2.23).
        NAT_DETECTION_SOURCE_IP = 16388,
        /// NAT detection: hash of the receiver's address (§2.23).
        NAT_DETECTION_DESTINATION_IP = 16389,
        /// Stateless cookie (§2.6).
        COOKIE = 16390,
        /// Request transport mode for the Child SA (§1.3.1).
        USE_TRANSPORT_MODE = 16391,
        /// The sender can look up certificates by HTTP (§3.6).
        HTTP_CERT_LOOKUP_SUPPORTED = 16392,
        /// The CREATE_CHILD_SA rekeys the Child SA with this SPI (§1.3.3).
        REKEY_SA = 16393,
        /// The sender does not accept TFC padding (§1.3.1).
        ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
        /// Non-first fragments are sent on this SA too (§1.3.1).
        NON_FIRST_FRAGMENTS_ALSO = 16395,
        /// MOBIKE is supported (RFC 4555).
        MOBIKE_SUPPORTED = 16396,
        /// Multiple authentication exchanges are supported (RFC 4739).
        MULTIPLE_AUTH_SUPPORTED = 16404,
        /// Redirect is supported (RFC 5685).
        REDIRECT_SUPPORTED = 16406,
        /// Childless IKE SA establishment is supported (RFC 6023).
        CHILDLESS_IKEV2_SUPPORTED = 16418,
        /// IKE fragmentation is supported (RFC 7383).
        IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        /// Hash algorithms accepted for signatures (RFC 7427).
        SIGNATURE_HASH_ALGORITHMS = 16431,
    }
}

impl NotifyType {
    /// True for error types (values below 16384, RFC 7296 §3.10.1).
    pub const fn is_error(self) -> bool {
        self.0 < 16384
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_and_status_ranges() {
        assert!(NotifyType::INVALID_SPI.is_error());
        assert!(NotifyType::TEMPORARY_FAILURE.is_error());
        assert!(!NotifyType::INITIAL_CONTACT.is_error());
        assert!(!NotifyType::SIGNATURE_HASH_ALGORITHMS.is_error());
        assert_eq!(NotifyType::COOKIE.0, 16390);
        assert_eq!(NotifyType::REKEY_SA.0, 16393);
        assert_eq!(format!("{:?}", NotifyType(40000)), "NotifyType(40000)");
    }
}
