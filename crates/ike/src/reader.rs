//! Bounds-checked reading and length-patched writing of wire structures.
//!
//! Every read goes through [`Reader`], which checks what is left before it touches a byte:
//! a lying length field becomes a [`ParseError`], never a panic or a read past the
//! structure it belongs to.

use crate::error::{EmitError, ParseError};

/// A cursor over one bounded structure.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(ParseError::Truncated {
                what: self.what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// A fixed-size array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Fails with `TrailingData` unless everything was read.
    pub(crate) fn finish(&self) -> Result<(), ParseError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ParseError::TrailingData {
                what: self.what,
                count: self.remaining(),
            })
        }
    }
}

/// Patches the 16-bit length at `start + len_at` with the bytes written since `start`.
pub(crate) fn patch_len16(
    out: &mut [u8],
    start: usize,
    len_at: usize,
    what: &'static str,
) -> Result<(), EmitError> {
    let len = out.len() - start;
    let v = u16::try_from(len).map_err(|_| EmitError::TooLong {
        what,
        len,
        max: u16::MAX as usize,
    })?;
    out[start + len_at..start + len_at + 2].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Converts a count or size to the `u8` its field holds.
pub(crate) fn fit_u8(len: usize, what: &'static str) -> Result<u8, EmitError> {
    u8::try_from(len).map_err(|_| EmitError::TooLong {
        what,
        len,
        max: u8::MAX as usize,
    })
}

/// Converts a count or size to the `u16` its field holds.
pub(crate) fn fit_u16(len: usize, what: &'static str) -> Result<u16, EmitError> {
    u16::try_from(len).map_err(|_| EmitError::TooLong {
        what,
        len,
        max: u16::MAX as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut r = Reader::new(&[1, 2, 3], "x");
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(
            r.u16(),
            Err(ParseError::Truncated {
                what: "x",
                needed: 2,
                available: 1
            })
        );
        assert_eq!(r.u8().unwrap(), 3);
        assert!(r.finish().is_ok());
        assert!(r.take(usize::MAX).is_err());
    }

    #[test]
    fn patch_rejects_overflow() {
        let mut v = vec![0u8; 70_000];
        assert!(patch_len16(&mut v, 0, 2, "p").is_err());
        let mut w = vec![0u8; 8];
        patch_len16(&mut w, 0, 2, "p").unwrap();
        assert_eq!(&w[2..4], &[0, 8]);
    }
}
