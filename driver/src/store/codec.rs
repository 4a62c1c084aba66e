//! A small explicit binary codec: little-endian integers, `u64` length
//! prefixes, option tags. Decoding is a pure parse over a byte cursor that
//! never panics and never allocates more than the input can fill.

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ends inside a field.
    #[error("payload ends at byte {at} inside a field of {need} bytes")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Its length.
        need: usize,
    },
    /// A count that the remaining bytes cannot hold.
    #[error("count {count} of {what} at byte {at} exceeds what the payload holds")]
    BadCount {
        /// What is counted.
        what: &'static str,
        /// The count read.
        count: u64,
        /// Offset of the count.
        at: usize,
    },
    /// A tag byte with no meaning.
    #[error("invalid {what} tag {tag} at byte {at}")]
    BadTag {
        /// What the tag selects.
        what: &'static str,
        /// The tag read.
        tag: u8,
        /// Offset of the tag.
        at: usize,
    },
    /// Bytes left over after the last field.
    #[error("{0} bytes left over after the last field")]
    Trailing(usize),
    /// A field whose value is out of its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Appends fields to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.out.extend_from_slice(v);
        self
    }

    /// A length prefix for a sequence of `n` items.
    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Reads fields off a byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated { at: self.at, need: n })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A presence tag: 0 absent, 1 present.
    pub(crate) fn option(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        let at = self.at;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag { what, tag, at }),
        }
    }

    /// A length prefix for items of at least `item_bytes` each: refused when
    /// the rest of the payload cannot hold that many, so a corrupt count
    /// never causes a large allocation.
    pub(crate) fn count(&mut self, what: &'static str, item_bytes: usize) -> Result<usize, DecodeError> {
        let at = self.at;
        let count = self.u64()?;
        let room = (self.buf.len() - self.at) / item_bytes.max(1);
        match usize::try_from(count) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(DecodeError::BadCount { what, count, at }),
        }
    }

    /// Whether every byte is consumed (an optional trailer is absent).
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.buf.len()
    }

    /// Every byte consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_little_endian() {
        let mut w = Writer::default();
        w.u8(7).u64(0x0102_0304).u64(u64::MAX).count(2);
        let bytes = w.finish();
        assert_eq!(&bytes[1..5], &[4, 3, 2, 1]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u64(), Ok(0x0102_0304));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.u64(), Ok(2));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn a_count_the_payload_cannot_hold_is_refused_before_allocating() {
        let mut w = Writer::default();
        w.u64(u64::MAX).u64(1);
        let bytes = w.finish();
        assert!(matches!(
            Reader::new(&bytes).count("entries", 8),
            Err(DecodeError::BadCount { .. })
        ));
        let mut w = Writer::default();
        w.u64(1).u64(1);
        let bytes = w.finish();
        assert_eq!(Reader::new(&bytes).count("entries", 8), Ok(1));
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(matches!(r.u64(), Err(DecodeError::Truncated { at: 0, need: 8 })));
        let mut r = Reader::new(&[2]);
        assert!(matches!(r.option("x"), Err(DecodeError::BadTag { tag: 2, .. })));
        let mut r = Reader::new(&[0, 9]);
        assert_eq!(r.option("x"), Ok(false));
        assert_eq!(r.finish(), Err(DecodeError::Trailing(1)));
    }
}
