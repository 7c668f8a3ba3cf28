//! Stateless cookies for IKE_SA_INIT under load (RFC 7296 §2.6).
//!
//! Cookie = VersionIDofSecret | SHA-256(Ni | IPi | SPIi | secret): the responder can check
//! a returned cookie without having kept any state for the first request. The secret is
//! replaced periodically; the previous one stays valid for one more period so cookies
//! handed out just before a change still work.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Cookie length: 4-octet secret version + 32-octet hash (§2.6 allows 1 to 64 octets).
pub(crate) const COOKIE_LEN: usize = 36;

#[derive(Clone)]
struct Secret {
    version: u32,
    key: Zeroizing<[u8; 32]>,
}

/// The responder's cookie secrets.
#[derive(Clone)]
pub(crate) struct CookieJar {
    current: Secret,
    previous: Option<Secret>,
    created: Instant,
}

impl core::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieJar")
            .field("version", &self.current.version)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    pub fn new<R: RngCore>(rng: &mut R, now: Instant) -> Self {
        CookieJar {
            current: Secret {
                version: rng.next_u32(),
                key: fresh_key(rng),
            },
            previous: None,
            created: now,
        }
    }

    /// Replaces the secret when it is older than `lifetime`.
    pub fn maybe_rotate<R: RngCore>(&mut self, now: Instant, lifetime: Duration, rng: &mut R) {
        if now.saturating_duration_since(self.created) < lifetime {
            return;
        }
        let next = Secret {
            version: self.current.version.wrapping_add(1),
            key: fresh_key(rng),
        };
        self.previous = Some(core::mem::replace(&mut self.current, next));
        self.created = now;
    }

    /// The cookie for this initiator.
    pub fn make(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        cookie(&self.current, ni, ip, spi_i)
    }

    /// True if `received` is a cookie we handed out to this initiator (current or
    /// previous secret), compared in constant time.
    pub fn check(&self, received: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let Some(version) = received.get(..4) else {
            return false;
        };
        let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
        let secret = if version == self.current.version {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.version == version => p,
                _ => return false,
            }
        };
        bool::from(cookie(secret, ni, ip, spi_i).ct_eq(received))
    }
}

fn fresh_key<R: RngCore>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(k.as_mut());
    k
}

fn cookie(secret: &Secret, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(ni);
    match ip {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(spi_i.to_be_bytes());
    h.update(secret.key.as_ref());
    let mut out = Vec::with_capacity(COOKIE_LEN);
    out.extend_from_slice(&secret.version.to_be_bytes());
    out.extend_from_slice(&h.finalize());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn check_and_rotate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut jar = CookieJar::new(&mut rng, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let c = jar.make(&[1; 32], ip, 42);
        assert_eq!(c.len(), COOKIE_LEN);
        assert!(jar.check(&c, &[1; 32], ip, 42));
        assert!(!jar.check(&c, &[2; 32], ip, 42));
        assert!(!jar.check(&c, &[1; 32], "192.0.2.2".parse().unwrap(), 42));
        assert!(!jar.check(&c, &[1; 32], ip, 43));
        assert!(!jar.check(&c[..10], &[1; 32], ip, 42));
        assert!(!jar.check(&[], &[1; 32], ip, 42));
        let life = Duration::from_secs(60);
        jar.maybe_rotate(t0 + Duration::from_secs(10), life, &mut rng);
        assert!(jar.check(&c, &[1; 32], ip, 42));
        jar.maybe_rotate(t0 + Duration::from_secs(61), life, &mut rng);
        assert!(
            jar.check(&c, &[1; 32], ip, 42),
            "previous secret still valid"
        );
        assert_ne!(jar.make(&[1; 32], ip, 42), c);
        jar.maybe_rotate(t0 + Duration::from_secs(122), life, &mut rng);
        assert!(
            !jar.check(&c, &[1; 32], ip, 42),
            "two rotations later it expired"
        );
    }
}
