//! Secret byte strings: zeroized on drop, never printed.

use zeroize::Zeroizing;

/// Key material. Zeroized when dropped; `Debug` shows only the length.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `v`.
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }

    /// Copies `s`.
    pub fn from_slice(s: &[u8]) -> Self {
        Self::new(s.to_vec())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        // Vec::truncate keeps the capacity; the tail is wiped by Zeroizing on drop, but
        // clear it now so no stale key bytes sit behind the length.
        for b in self.0.iter_mut().skip(len) {
            *b = 0;
        }
        self.0.truncate(len);
    }

    pub(crate) fn extend_from_slice(&mut self, s: &[u8]) {
        // Reserve first so growing never leaves an unzeroized copy behind.
        if self.0.capacity() - self.0.len() < s.len() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((self.0.len() + s.len()) * 2));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger;
        }
        self.0.extend_from_slice(s);
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl core::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(&[0xab; 5]);
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes(<5 bytes redacted>)");
        assert!(!d.contains("ab"));
    }

    #[test]
    fn grow_and_truncate() {
        let mut s = SecretBytes::default();
        for i in 0..100u8 {
            s.extend_from_slice(&[i; 3]);
        }
        assert_eq!(s.len(), 300);
        s.truncate(10);
        assert_eq!(s.as_bytes(), &[0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    }
}
