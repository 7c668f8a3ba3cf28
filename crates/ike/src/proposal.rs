//! Proposal strings (strongSwan syntax) and proposal selection (RFC 7296 §2.7, §3.3).
//!
//! A proposal string is `-`-separated keywords, each adding one transform; several
//! keywords of one kind are alternatives within the same proposal, in preference order.
//! A list of proposals is `,`-separated. The grammar is in `docs/ike.md`.
//!
//! ```
//! use esplab_ike::proposal::{offer, select_ike, ProposalSpec};
//! let ours = [ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519").unwrap()];
//! let theirs = offer(&[
//!     ProposalSpec::parse_ike("aes256-sha256-x25519").unwrap(),
//!     ProposalSpec::parse_ike("aes128gcm16-aes256gcm16-prfsha256-x25519").unwrap(),
//! ], &[]);
//! let chosen = select_ike(&ours, &theirs).unwrap();
//! assert_eq!(chosen.proposal_number, 2);
//! ```

use crate::codes::ProtocolId;
use crate::error::{NoProposalChosen, ProposalError};
use crate::sa::{Proposal, SaPayload, Transform, TransformType};
use crate::transform::{esn_id, DhGroup, Encr, EspSuite, IkeSuite, Integ, Prf};

/// One configured proposal: for each transform type, the acceptable algorithms in
/// preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalSpec {
    /// [`ProtocolId::IKE`] or [`ProtocolId::ESP`].
    pub protocol_id: ProtocolId,
    /// Encryption algorithms.
    pub encr: Vec<Encr>,
    /// Integrity algorithms (empty for AEAD-only proposals).
    pub integ: Vec<Integ>,
    /// PRFs (IKE only).
    pub prf: Vec<Prf>,
    /// Diffie-Hellman groups (IKE: required; ESP: PFS groups, may be empty).
    pub dh: Vec<DhGroup>,
    /// ESN choices (ESP only; `[false]` unless the string says otherwise).
    pub esn: Vec<bool>,
}

/// The outcome of a selection: the suite, and the chosen offer's number and SPI (the
/// reply carries the number, §3.3.1; for ESP the SPI is the peer's inbound SPI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen<S> {
    /// The negotiated algorithms.
    pub suite: S,
    /// Proposal Num of the accepted proposal.
    pub proposal_number: u8,
    /// SPI of the accepted proposal.
    pub spi: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ike,
    Esp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ike => "IKE",
            Kind::Esp => "ESP",
        }
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

impl ProposalSpec {
    /// Parses an IKE proposal such as `aes128gcm16-prfsha256-x25519` or
    /// `aes128-sha256-x25519` (where `sha256` is the integrity algorithm and, as no `prf…`
    /// keyword is given, also the PRF).
    pub fn parse_ike(s: &str) -> Result<Self, ProposalError> {
        Self::parse(s, Kind::Ike)
    }

    /// Parses an ESP proposal such as `aes128gcm16`, `aes256-sha256-esn` or
    /// `aes128gcm16-x25519` (PFS with group 31).
    pub fn parse_esp(s: &str) -> Result<Self, ProposalError> {
        Self::parse(s, Kind::Esp)
    }

    fn parse(s: &str, kind: Kind) -> Result<Self, ProposalError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(ProposalError::Empty);
        }
        let mut spec = ProposalSpec {
            protocol_id: match kind {
                Kind::Ike => ProtocolId::IKE,
                Kind::Esp => ProtocolId::ESP,
            },
            encr: Vec::new(),
            integ: Vec::new(),
            prf: Vec::new(),
            dh: Vec::new(),
            esn: Vec::new(),
        };
        let not_allowed = |keyword: &str| ProposalError::NotAllowed {
            keyword: keyword.to_string(),
            kind: kind.name(),
        };
        for raw in text.split('-') {
            let tok = raw.trim().to_ascii_lowercase();
            match tok.as_str() {
                "aes128" => push_unique(&mut spec.encr, Encr::AesCbc128),
                "aes256" => push_unique(&mut spec.encr, Encr::AesCbc256),
                "aes128gcm16" | "aes128gcm128" => push_unique(&mut spec.encr, Encr::AesGcm128),
                "aes256gcm16" | "aes256gcm128" => push_unique(&mut spec.encr, Encr::AesGcm256),
                "sha256" | "sha2_256" => push_unique(&mut spec.integ, Integ::HmacSha256_128),
                "prfsha1" | "prfsha256" | "prfsha384" | "prfsha512" => {
                    if kind == Kind::Esp {
                        return Err(not_allowed(&tok));
                    }
                    let prf = match tok.as_str() {
                        "prfsha1" => Prf::HmacSha1,
                        "prfsha256" => Prf::HmacSha256,
                        "prfsha384" => Prf::HmacSha384,
                        _ => Prf::HmacSha512,
                    };
                    push_unique(&mut spec.prf, prf);
                }
                "x25519" | "curve25519" => push_unique(&mut spec.dh, DhGroup::CURVE25519),
                "esn" | "noesn" => {
                    if kind == Kind::Ike {
                        return Err(not_allowed(&tok));
                    }
                    push_unique(&mut spec.esn, tok == "esn");
                }
                _ => return Err(ProposalError::UnknownKeyword(tok)),
            }
        }
        let missing = |what| ProposalError::Missing {
            kind: kind.name(),
            proposal: text.to_string(),
            what,
        };
        if spec.encr.is_empty() {
            return Err(missing("encryption algorithm"));
        }
        let aead = spec.encr.iter().filter(|e| e.is_aead()).count();
        // RFC 5282 §8: a proposal of combined-mode ciphers carries no integrity transform,
        // so AEAD and non-AEAD ciphers cannot share one proposal.
        if aead > 0 && (aead != spec.encr.len() || !spec.integ.is_empty()) {
            return Err(ProposalError::MixedAead(text.to_string()));
        }
        if aead == 0 && spec.integ.is_empty() {
            return Err(missing("integrity algorithm"));
        }
        match kind {
            Kind::Ike => {
                if spec.prf.is_empty() {
                    // strongSwan's rule: without a prf keyword, the integrity algorithms
                    // name the PRFs too.
                    for i in &spec.integ {
                        push_unique(
                            &mut spec.prf,
                            match i {
                                Integ::HmacSha256_128 => Prf::HmacSha256,
                            },
                        );
                    }
                }
                if spec.prf.is_empty() {
                    return Err(missing("PRF"));
                }
                if spec.dh.is_empty() {
                    return Err(missing("Diffie-Hellman group"));
                }
            }
            Kind::Esp => {
                if spec.esn.is_empty() {
                    spec.esn.push(false);
                }
            }
        }
        Ok(spec)
    }

    /// Parses a `,`-separated list of IKE proposals.
    pub fn parse_ike_list(s: &str) -> Result<Vec<Self>, ProposalError> {
        s.split(',').map(Self::parse_ike).collect()
    }

    /// Parses a `,`-separated list of ESP proposals.
    pub fn parse_esp_list(s: &str) -> Result<Vec<Self>, ProposalError> {
        s.split(',').map(Self::parse_esp).collect()
    }

    /// The same proposal without Diffie-Hellman groups: what an ESP proposal becomes in
    /// IKE_AUTH, which carries no KE payload (RFC 7296 §1.2: the SA there "cannot
    /// contain" a D-H transform other than NONE, and SHOULD omit it).
    pub fn without_dh(&self) -> Self {
        ProposalSpec {
            dh: Vec::new(),
            ..self.clone()
        }
    }

    /// The wire proposal offering all of this spec's alternatives. Transform order
    /// ENCR, INTEG, PRF, DH, ESN.
    pub fn to_proposal(&self, number: u8, spi: &[u8]) -> Proposal {
        let mut transforms: Vec<Transform> = self.encr.iter().map(|e| e.transform()).collect();
        transforms.extend(self.integ.iter().map(|i| i.transform()));
        transforms.extend(self.prf.iter().map(|p| p.transform()));
        transforms.extend(
            self.dh
                .iter()
                .map(|g| Transform::new(TransformType::DH, g.0)),
        );
        transforms.extend(self.esn.iter().map(|&e| {
            Transform::new(TransformType::ESN, if e { esn_id::YES } else { esn_id::NO })
        }));
        Proposal {
            number,
            protocol_id: self.protocol_id,
            spi: spi.to_vec(),
            transforms,
        }
    }

    /// The IKE suite this spec accepts out of one offered proposal (responder preference
    /// within each transform type).
    pub fn match_ike(&self, p: &Proposal) -> Option<IkeSuite> {
        if self.protocol_id != ProtocolId::IKE || p.protocol_id != ProtocolId::IKE {
            return None;
        }
        let (encr, integ) = self.match_cipher(p)?;
        let prf = pick(&self.prf, |x| {
            offered(p, |t| Prf::from_transform(t) == Some(x))
        })?;
        let dh = pick(&self.dh, |g| offered(p, |t| is_dh(t, g)))?;
        Some(IkeSuite {
            encr,
            integ,
            prf,
            dh,
        })
    }

    /// The ESP suite this spec accepts out of one offered proposal.
    pub fn match_esp(&self, p: &Proposal) -> Option<EspSuite> {
        if self.protocol_id != ProtocolId::ESP || p.protocol_id != ProtocolId::ESP {
            return None;
        }
        // RFC 7296 §3.3.1: ESP SPIs are four octets.
        if p.spi.len() != 4 {
            return None;
        }
        let (encr, integ) = self.match_cipher(p)?;
        let dh = if self.dh.is_empty() {
            // No PFS wanted: acceptable only if the offer has no group or offers NONE.
            let any_dh = offered(p, |t| t.transform_type == TransformType::DH);
            if any_dh && !offered(p, |t| is_dh(t, DhGroup::NONE)) {
                return None;
            }
            None
        } else {
            Some(pick(&self.dh, |g| offered(p, |t| is_dh(t, g)))?)
        };
        // ESN is mandatory in ESP proposals (§3.3.3); a peer that leaves it out is taken
        // to mean "no ESN".
        let any_esn = offered(p, |t| t.transform_type == TransformType::ESN);
        let esn = pick(&self.esn, |e| {
            let id = if e { esn_id::YES } else { esn_id::NO };
            offered(p, |t| {
                t.transform_type == TransformType::ESN
                    && t.transform_id == id
                    && t.attributes.is_empty()
            }) || (!any_esn && !e)
        })?;
        Some(EspSuite {
            encr,
            integ,
            esn,
            dh,
        })
    }

    fn match_cipher(&self, p: &Proposal) -> Option<(Encr, Option<Integ>)> {
        // RFC 7296 §3.3.6: a proposal with a transform type we do not understand is
        // unacceptable as a whole.
        if p.transforms
            .iter()
            .any(|t| !(1..=5).contains(&t.transform_type.0))
        {
            return None;
        }
        let encr = pick(&self.encr, |e| {
            offered(p, |t| Encr::from_transform(t) == Some(e))
        })?;
        let integ = if encr.is_aead() {
            None
        } else {
            Some(pick(&self.integ, |i| {
                offered(p, |t| Integ::from_transform(t) == Some(i))
            })?)
        };
        Some((encr, integ))
    }
}

impl core::fmt::Display for ProposalSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut words: Vec<&str> = Vec::new();
        words.extend(self.encr.iter().map(|e| match e {
            Encr::AesCbc128 => "aes128",
            Encr::AesCbc256 => "aes256",
            Encr::AesGcm128 => "aes128gcm16",
            Encr::AesGcm256 => "aes256gcm16",
        }));
        words.extend(self.integ.iter().map(|i| match i {
            Integ::HmacSha256_128 => "sha256",
        }));
        words.extend(self.prf.iter().map(|p| match p {
            Prf::HmacSha1 => "prfsha1",
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }));
        words.extend(self.dh.iter().map(|g| match *g {
            DhGroup::CURVE25519 => "x25519",
            _ => "?",
        }));
        words.extend(self.esn.iter().map(|&e| if e { "esn" } else { "noesn" }));
        f.write_str(&words.join("-"))
    }
}

fn pick<T: Copy>(ours: &[T], accept: impl Fn(T) -> bool) -> Option<T> {
    ours.iter().copied().find(|&x| accept(x))
}

fn offered(p: &Proposal, f: impl Fn(&Transform) -> bool) -> bool {
    p.transforms.iter().any(f)
}

fn is_dh(t: &Transform, g: DhGroup) -> bool {
    t.transform_type == TransformType::DH && t.transform_id == g.0 && t.attributes.is_empty()
}

/// The SA payload offering `specs` in order, numbered 1, 2, ... (§3.3.1), each with `spi`.
pub fn offer(specs: &[ProposalSpec], spi: &[u8]) -> SaPayload {
    SaPayload {
        proposals: specs
            .iter()
            .zip(1u8..=u8::MAX)
            .map(|(s, n)| s.to_proposal(n, spi))
            .collect(),
    }
}

/// Responder side of RFC 7296 §2.7 for an IKE SA: the first of *our* proposals (our
/// preference order) that any offered proposal satisfies, taking within each transform
/// type our most preferred algorithm that was offered.
pub fn select_ike(
    ours: &[ProposalSpec],
    offered: &SaPayload,
) -> Result<Chosen<IkeSuite>, NoProposalChosen> {
    select(ours, offered, ProposalSpec::match_ike)
}

/// Responder side of §2.7 for an ESP Child SA. In IKE_AUTH pass specs with
/// [`ProposalSpec::without_dh`].
pub fn select_esp(
    ours: &[ProposalSpec],
    offered: &SaPayload,
) -> Result<Chosen<EspSuite>, NoProposalChosen> {
    select(ours, offered, ProposalSpec::match_esp)
}

fn select<S>(
    ours: &[ProposalSpec],
    offered: &SaPayload,
    matcher: impl Fn(&ProposalSpec, &Proposal) -> Option<S>,
) -> Result<Chosen<S>, NoProposalChosen> {
    for spec in ours {
        for p in &offered.proposals {
            if let Some(suite) = matcher(spec, p) {
                return Ok(Chosen {
                    suite,
                    proposal_number: p.number,
                    spi: p.spi.clone(),
                });
            }
        }
    }
    Err(NoProposalChosen)
}

/// Initiator side: checks the responder's SA reply against what we offered with
/// [`offer`]. RFC 7296 §2.7: the reply holds exactly one proposal, whose number is the
/// accepted offer's, with one transform of each type, all taken from that offer.
pub fn accept_ike_reply(
    ours: &[ProposalSpec],
    reply: &SaPayload,
) -> Result<Chosen<IkeSuite>, NoProposalChosen> {
    accept_reply(ours, reply, ProposalSpec::match_ike)
}

/// Initiator side of §2.7 for an ESP Child SA (see [`accept_ike_reply`]).
pub fn accept_esp_reply(
    ours: &[ProposalSpec],
    reply: &SaPayload,
) -> Result<Chosen<EspSuite>, NoProposalChosen> {
    accept_reply(ours, reply, ProposalSpec::match_esp)
}

fn accept_reply<S>(
    ours: &[ProposalSpec],
    reply: &SaPayload,
    matcher: impl Fn(&ProposalSpec, &Proposal) -> Option<S>,
) -> Result<Chosen<S>, NoProposalChosen> {
    let [p] = reply.proposals.as_slice() else {
        return Err(NoProposalChosen);
    };
    let mut seen = [false; 6];
    for t in &p.transforms {
        let slot = seen
            .get_mut(t.transform_type.0 as usize)
            .ok_or(NoProposalChosen)?;
        if *slot {
            return Err(NoProposalChosen);
        }
        *slot = true;
    }
    let spec = (p.number as usize)
        .checked_sub(1)
        .and_then(|i| ours.get(i))
        .ok_or(NoProposalChosen)?;
    let suite = matcher(spec, p).ok_or(NoProposalChosen)?;
    Ok(Chosen {
        suite,
        proposal_number: p.number,
        spi: p.spi.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ike(s: &str) -> ProposalSpec {
        ProposalSpec::parse_ike(s).unwrap()
    }

    fn esp(s: &str) -> ProposalSpec {
        ProposalSpec::parse_esp(s).unwrap()
    }

    #[test]
    fn parses_the_strongswan_examples() {
        let p = ike("aes128gcm16-prfsha256-x25519");
        assert_eq!(p.encr, [Encr::AesGcm128]);
        assert!(p.integ.is_empty());
        assert_eq!(p.prf, [Prf::HmacSha256]);
        assert_eq!(p.dh, [DhGroup::CURVE25519]);
        assert_eq!(ike("aes256gcm16-prfsha256-x25519").encr, [Encr::AesGcm256]);
        let p = ike("aes128-sha256-x25519");
        assert_eq!(p.encr, [Encr::AesCbc128]);
        assert_eq!(p.integ, [Integ::HmacSha256_128]);
        assert_eq!(p.prf, [Prf::HmacSha256]);
        assert_eq!(p.to_string(), "aes128-sha256-prfsha256-x25519");

        let e = esp("aes128gcm16");
        assert_eq!(e.encr, [Encr::AesGcm128]);
        assert_eq!(e.esn, [false]);
        assert!(e.dh.is_empty());
        assert_eq!(esp("aes256gcm16").encr, [Encr::AesGcm256]);
        let e = esp("aes256-sha256-esn");
        assert_eq!(e.encr, [Encr::AesCbc256]);
        assert_eq!(e.esn, [true]);
        assert_eq!(esp("aes128-sha256-esn-noesn").esn, [true, false]);
        assert_eq!(esp("aes128gcm16-x25519").dh, [DhGroup::CURVE25519]);
        assert_eq!(esp("AES128GCM16-NoEsn").esn, [false]);
        let list = ProposalSpec::parse_esp_list("aes128gcm16, aes128-sha256").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn parse_errors() {
        use ProposalError as E;
        assert!(matches!(
            ProposalSpec::parse_ike("aes128gcm16-x25519"),
            Err(E::Missing { what: "PRF", .. })
        ));
        assert!(matches!(
            ProposalSpec::parse_ike("aes128-sha256"),
            Err(E::Missing { .. })
        ));
        assert!(matches!(
            ProposalSpec::parse_ike("aes128-prfsha256-x25519"),
            Err(E::Missing { .. })
        ));
        assert!(matches!(
            ProposalSpec::parse_ike("aes128gcm16-sha256-x25519"),
            Err(E::MixedAead(_))
        ));
        assert!(matches!(
            ProposalSpec::parse_esp("aes128gcm16-aes128-sha256"),
            Err(E::MixedAead(_))
        ));
        assert!(matches!(
            ProposalSpec::parse_esp("aes128gcm16-prfsha256"),
            Err(E::NotAllowed { .. })
        ));
        assert!(matches!(
            ProposalSpec::parse_ike("aes128gcm16-prfsha256-x25519-esn"),
            Err(E::NotAllowed { .. })
        ));
        assert!(matches!(
            ProposalSpec::parse_ike("3des-sha1-modp1024"),
            Err(E::UnknownKeyword(_))
        ));
        assert!(matches!(
            ProposalSpec::parse_esp("aes128gcm16-modp2048"),
            Err(E::UnknownKeyword(_))
        ));
        assert!(matches!(
            ProposalSpec::parse_esp("sha256"),
            Err(E::Missing { .. })
        ));
        assert_eq!(ProposalSpec::parse_esp(" "), Err(E::Empty));
    }

    #[test]
    fn responder_preference_wins() {
        let ours = [
            ike("aes256gcm16-prfsha256-x25519"),
            ike("aes128-sha256-x25519"),
        ];
        let theirs = offer(
            &[
                ike("aes128-sha256-x25519"),
                ike("aes128gcm16-aes256gcm16-prfsha256-x25519"),
            ],
            &[],
        );
        let c = select_ike(&ours, &theirs).unwrap();
        assert_eq!(c.proposal_number, 2);
        assert_eq!(
            c.suite,
            IkeSuite {
                encr: Encr::AesGcm256,
                integ: None,
                prf: Prf::HmacSha256,
                dh: DhGroup::CURVE25519
            }
        );
        // Within a type, our order decides.
        let ours = [ike("aes256-aes128-sha256-x25519")];
        let theirs = offer(&[ike("aes128-aes256-sha256-x25519")], &[]);
        assert_eq!(
            select_ike(&ours, &theirs).unwrap().suite.encr,
            Encr::AesCbc256
        );
    }

    #[test]
    fn no_proposal_chosen() {
        let ours = [ike("aes128gcm16-prfsha256-x25519")];
        let theirs = offer(&[ike("aes256gcm16-prfsha256-x25519")], &[]);
        assert_eq!(select_ike(&ours, &theirs), Err(NoProposalChosen));
        // Right algorithms, wrong protocol.
        let theirs = offer(&[esp("aes128gcm16")], &[0, 0, 0, 1]);
        assert_eq!(select_ike(&ours, &theirs), Err(NoProposalChosen));
        // A transform type we do not understand spoils the whole proposal (§3.3.6).
        let mut theirs = offer(&ours, &[]);
        theirs.proposals[0]
            .transforms
            .push(Transform::new(TransformType(6), 1));
        assert_eq!(select_ike(&ours, &theirs), Err(NoProposalChosen));
        // An unknown attribute spoils the transform.
        let mut theirs = offer(&ours, &[]);
        theirs.proposals[0].transforms[0]
            .attributes
            .push(crate::sa::Attribute {
                attr_type: 99,
                value: crate::sa::AttributeValue::Tv(1),
            });
        assert_eq!(select_ike(&ours, &theirs), Err(NoProposalChosen));
    }

    #[test]
    fn esp_selection_pfs_and_esn() {
        let spi = 0xc0de_0001u32.to_be_bytes();
        // No PFS on our side: an offer without DH is fine, one with only group 31 is not.
        let ours = [esp("aes128gcm16")];
        let c = select_esp(&ours, &offer(&[esp("aes128gcm16")], &spi)).unwrap();
        assert_eq!(c.spi, spi);
        assert_eq!(c.suite.dh, None);
        assert!(!c.suite.esn);
        assert!(select_esp(&ours, &offer(&[esp("aes128gcm16-x25519")], &spi)).is_err());
        // PFS on our side requires the offer to carry the group.
        let ours = [esp("aes128gcm16-x25519")];
        assert!(select_esp(&ours, &offer(&[esp("aes128gcm16")], &spi)).is_err());
        let c = select_esp(&ours, &offer(&[esp("aes128gcm16-x25519")], &spi)).unwrap();
        assert_eq!(c.suite.dh, Some(DhGroup::CURVE25519));
        // In IKE_AUTH the group is dropped on both sides.
        let ours_auth: Vec<_> = ours.iter().map(ProposalSpec::without_dh).collect();
        let theirs = offer(&[esp("aes128gcm16-x25519").without_dh()], &spi);
        assert!(select_esp(&ours_auth, &theirs).is_ok());
        // ESN: our preference among what was offered.
        let ours = [esp("aes128-sha256-esn-noesn")];
        let c = select_esp(&ours, &offer(&[esp("aes128-sha256-noesn-esn")], &spi)).unwrap();
        assert!(c.suite.esn);
        assert_eq!(c.suite.integ, Some(Integ::HmacSha256_128));
        let c = select_esp(&ours, &offer(&[esp("aes128-sha256-noesn")], &spi)).unwrap();
        assert!(!c.suite.esn);
        let ours = [esp("aes128-sha256-esn")];
        assert!(select_esp(&ours, &offer(&[esp("aes128-sha256")], &spi)).is_err());
        // ESP SPIs are 4 octets.
        assert!(select_esp(
            &[esp("aes128gcm16")],
            &offer(&[esp("aes128gcm16")], &[1, 2])
        )
        .is_err());
    }

    #[test]
    fn reply_round_trip_and_checks() {
        let ours =
            ProposalSpec::parse_ike_list("aes128gcm16-prfsha256-x25519,aes128-sha256-x25519")
                .unwrap();
        let sa = offer(&ours, &[]);
        // The responder prefers CBC.
        let responder = [ike("aes128-sha256-x25519")];
        let c = select_ike(&responder, &sa).unwrap();
        assert_eq!(c.proposal_number, 2);
        let reply = SaPayload {
            proposals: vec![c.suite.to_proposal(c.proposal_number, &[])],
        };
        let back = accept_ike_reply(&ours, &reply).unwrap();
        assert_eq!(back.suite, c.suite);
        // Wrong proposal number: the transforms are not from that offer.
        let mut bad = reply.clone();
        bad.proposals[0].number = 1;
        assert!(accept_ike_reply(&ours, &bad).is_err());
        // Two transforms of one type.
        let mut bad = reply.clone();
        bad.proposals[0]
            .transforms
            .push(Prf::HmacSha256.transform());
        assert!(accept_ike_reply(&ours, &bad).is_err());
        // Two proposals.
        let mut bad = reply.clone();
        bad.proposals.push(reply.proposals[0].clone());
        assert!(accept_ike_reply(&ours, &bad).is_err());

        let ours = [esp("aes256gcm16-esn-noesn")];
        let spi = [1, 2, 3, 4];
        let c = select_esp(&ours, &offer(&ours, &spi)).unwrap();
        let reply = SaPayload {
            proposals: vec![c.suite.to_proposal(c.proposal_number, 0x0a0b_0c0d)],
        };
        let back = accept_esp_reply(&ours, &reply).unwrap();
        assert_eq!(back.suite, c.suite);
        assert_eq!(back.spi, [10, 11, 12, 13]);
    }
}
