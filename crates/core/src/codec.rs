//! The canonical binary codec: big-endian fixed-width integers, `u32` length prefixes, no padding.
//! [`Reader`] never panics on malformed input: every read is bounds-checked and returns a [`DecodeError`].

/// A decoding failure, with the byte offset where it happened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("truncated input: needed {need} more bytes at offset {at}")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A field held a value the format does not allow.
    #[error("invalid data at offset {at}: {what}")]
    Invalid {
        /// Offset of the field.
        at: usize,
        /// What was wrong.
        what: String,
    },
    /// Bytes were left over after the last field.
    #[error("{0} trailing bytes after the end of the data")]
    Trailing(usize),
}

/// Appends canonical encodings to a byte vector.
#[derive(Default, Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// Borrow the bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Append a `u8`.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Append an `i8`.
    pub fn i8(&mut self, v: i8) {
        self.buf.push(v as u8);
    }
    /// Append a big-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Append a big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Append a big-endian `i32`.
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Append a big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Append a big-endian `i64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Append raw bytes without a length prefix.
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Append a `u32` length prefix then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.raw(v);
    }
    /// Append a UTF-8 string with a `u32` length prefix.
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    /// Append a `u32` count then each element as `i32`.
    pub fn i32s(&mut self, v: &[i32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.i32(*x);
        }
    }
    /// Append a `u32` count then each element as `u32`.
    pub fn u32s(&mut self, v: &[u32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.u32(*x);
        }
    }
}

/// Reads canonical encodings from a byte slice, bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// An [`DecodeError::Invalid`] at the current offset.
    pub fn invalid(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            at: self.pos,
            what: what.into(),
        }
    }
    /// Take `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                at: self.pos,
                need: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    /// Read a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.arr::<1>()?[0])
    }
    /// Read an `i8`.
    pub fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(self.arr::<1>()?[0] as i8)
    }
    /// Read a `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    /// Read a `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    /// Read an `i32`.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.arr()?))
    }
    /// Read a `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    /// Read an `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    /// Read a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Read a length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid {
            at,
            what: "string is not UTF-8".into(),
        })
    }
    /// Read a count then that many elements; the count is checked against the bytes left first.
    pub fn i32s(&mut self) -> Result<Vec<i32>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.i32()).collect()
    }
    /// Read a count then that many `u32`.
    pub fn u32s(&mut self) -> Result<Vec<u32>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
    /// Read a `u32` element count and check that `count * elem_size` bytes remain.
    pub fn count(&mut self, elem_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        let need = n.saturating_mul(elem_size);
        if need > self.remaining() {
            return Err(DecodeError::Truncated {
                at,
                need: need - self.remaining(),
            });
        }
        Ok(n)
    }
    /// Fail unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(a in any::<u8>(), b in any::<i64>(), s in ".{0,20}", v in prop::collection::vec(any::<i32>(), 0..40)) {
            let mut w = Writer::new();
            w.u8(a); w.i64(b); w.str(&s); w.i32s(&v);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.u8().unwrap(), a);
            prop_assert_eq!(r.i64().unwrap(), b);
            prop_assert_eq!(r.str().unwrap(), s);
            prop_assert_eq!(r.i32s().unwrap(), v);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.str();
            let _ = r.i32s();
            let _ = r.u64();
        }
    }

    #[test]
    fn huge_count_is_truncation_not_allocation() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2];
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.i32s(),
            Err(DecodeError::Truncated { at: 0, .. })
        ));
    }
}
