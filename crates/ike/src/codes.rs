//! IANA "IKEv2 Parameters" registry values as open newtypes.
//!
//! Every code that arrives on the wire is a newtype over its integer rather than a closed
//! enum: a peer may send any value, and the codec must carry unknown ones through (an
//! unknown Notify type is ignored, an unknown exchange type answered, §2.21) instead of
//! failing to parse. The named constants are the values this crate knows by name.

/// Declares an open registry newtype with named constants, a `name()` lookup and
/// `Debug`/`Display` that print the name when there is one.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        $name:ident($ty:ty) {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $ty);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($val); )*

            /// The registry name of this value, if this crate knows it.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(self, f)
            }
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                $name(v)
            }
        }

        impl From<$name> for $ty {
            fn from(v: $name) -> $ty {
                v.0
            }
        }
    };
}
pub(crate) use registry;

registry! {
    /// Exchange Type of the IKE header (RFC 7296 §3.1).
    ExchangeType(u8) {
        /// IKE_SA_INIT (§1.2).
        IKE_SA_INIT = 34,
        /// IKE_AUTH (§1.2).
        IKE_AUTH = 35,
        /// CREATE_CHILD_SA (§1.3).
        CREATE_CHILD_SA = 36,
        /// INFORMATIONAL (§1.4).
        INFORMATIONAL = 37,
    }
}

registry! {
    /// Payload type, as carried in the Next Payload fields (RFC 7296 §3.2).
    PayloadType(u8) {
        /// No Next Payload: ends the chain.
        NONE = 0,
        /// Security Association (§3.3).
        SA = 33,
        /// Key Exchange (§3.4).
        KE = 34,
        /// Identification - Initiator (§3.5).
        IDI = 35,
        /// Identification - Responder (§3.5).
        IDR = 36,
        /// Certificate (§3.6).
        CERT = 37,
        /// Certificate Request (§3.7).
        CERTREQ = 38,
        /// Authentication (§3.8).
        AUTH = 39,
        /// Nonce (§3.9).
        NONCE = 40,
        /// Notify (§3.10).
        NOTIFY = 41,
        /// Delete (§3.11).
        DELETE = 42,
        /// Vendor ID (§3.12).
        VENDOR_ID = 43,
        /// Traffic Selector - Initiator (§3.13).
        TSI = 44,
        /// Traffic Selector - Responder (§3.13).
        TSR = 45,
        /// Encrypted and Authenticated, "SK" (§3.14).
        SK = 46,
        /// Configuration (§3.15).
        CP = 47,
        /// Extensible Authentication (§3.16).
        EAP = 48,
    }
}

impl PayloadType {
    /// True for the types this codec parses into a typed [`crate::Payload`] variant; any other
    /// type is "unrecognized" in the sense of RFC 7296 §2.5 and handled by its critical bit.
    pub const fn is_known(self) -> bool {
        matches!(self.0, 33..=48)
    }
}

registry! {
    /// Security protocol identifier (RFC 7296 §3.3.1, §3.10, §3.11).
    ProtocolId(u8) {
        /// No protocol: a Notify without an SPI (§3.10).
        NONE = 0,
        /// The IKE SA itself.
        IKE = 1,
        /// Authentication Header.
        AH = 2,
        /// Encapsulating Security Payload.
        ESP = 3,
    }
}

registry! {
    /// Identification type of an IDi/IDr payload (RFC 7296 §3.5).
    IdType(u8) {
        /// A single four-octet IPv4 address.
        IPV4_ADDR = 1,
        /// A fully qualified domain name string, without terminator.
        FQDN = 2,
        /// A fully qualified RFC 822 email address string.
        RFC822_ADDR = 3,
        /// A single sixteen-octet IPv6 address.
        IPV6_ADDR = 5,
        /// ASN.1 X.500 Distinguished Name.
        DER_ASN1_DN = 9,
        /// ASN.1 X.509 GeneralName.
        DER_ASN1_GN = 10,
        /// An opaque octet stream (vendor-specific).
        KEY_ID = 11,
    }
}

registry! {
    /// Authentication method of an AUTH payload (RFC 7296 §3.8).
    AuthMethod(u8) {
        /// RSA digital signature.
        RSA_SIG = 1,
        /// Shared Key Message Integrity Code (§2.15).
        SHARED_KEY_MIC = 2,
        /// DSS digital signature.
        DSS_SIG = 3,
        /// Generic digital signature (RFC 7427).
        DIGITAL_SIGNATURE = 14,
    }
}

registry! {
    /// Traffic selector type (RFC 7296 §3.13.1).
    TsType(u8) {
        /// An IPv4 address range.
        IPV4_ADDR_RANGE = 7,
        /// An IPv6 address range.
        IPV6_ADDR_RANGE = 8,
    }
}

registry! {
    /// Configuration payload type (RFC 7296 §3.15).
    CfgType(u8) {
        /// CFG_REQUEST.
        REQUEST = 1,
        /// CFG_REPLY.
        REPLY = 2,
        /// CFG_SET.
        SET = 3,
        /// CFG_ACK.
        ACK = 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unknowns_print() {
        assert_eq!(format!("{:?}", ExchangeType::IKE_AUTH), "IKE_AUTH");
        assert_eq!(format!("{}", ExchangeType(99)), "ExchangeType(99)");
        assert_eq!(PayloadType::SK.name(), Some("SK"));
        assert!(PayloadType::CP.is_known());
        assert!(!PayloadType(53).is_known());
        assert!(!PayloadType::NONE.is_known());
        assert_eq!(u8::from(ProtocolId::ESP), 3);
    }
}
