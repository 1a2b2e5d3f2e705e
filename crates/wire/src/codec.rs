//! Primitive field encodings (§3 of the wire reference): little-endian words,
//! NUL-terminated padded text and length-prefixed padded blobs.
//!
//! `Reader` is bounds-checked on every read and never panics; `Writer`
//! keeps every field 8-byte aligned so a body is always a whole number of
//! words.

use crate::DecodeError;

/// `n` rounded up to a multiple of 8.
pub const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// A cursor over one message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The current offset from the start of the body.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unconsumed bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Consumes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A single byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian two's-complement `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// An IEEE-754 double from its little-endian bit pattern.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// Skips forward so the position is a multiple of 8 from the body start.
    pub fn align(&mut self) -> Result<(), DecodeError> {
        let skip = pad8(self.pos) - self.pos;
        self.bytes(skip).map(|_| ())
    }

    /// A NUL-terminated text padded to the next word. An embedded NUL ends
    /// the text, as in every dqlite decoder.
    pub fn text(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedText { offset: start })?;
        let raw = &rest[..nul];
        let text = std::str::from_utf8(raw)
            .map_err(|_| DecodeError::InvalidUtf8 { offset: start })?
            .to_owned();
        self.bytes(pad8(nul + 1))
            .map_err(|_| DecodeError::UnterminatedText { offset: start })?;
        Ok(text)
    }

    /// A `u64` length, the bytes, then padding to the next word.
    pub fn blob(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated {
            offset: self.pos,
            needed: usize::MAX,
            len: self.buf.len(),
        })?;
        if len > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: len,
                len: self.buf.len(),
            });
        }
        let data = self.bytes(len)?.to_vec();
        self.align()?;
        Ok(data)
    }
}

/// Appends fields to a message body, keeping 8-byte alignment.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// Raw bytes, unpadded.
    pub fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// A single byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }

    /// An IEEE-754 double.
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// Zero bytes up to the next multiple of 8 of the buffer length.
    pub fn pad(&mut self) {
        let len = self.out.len();
        self.out.resize(pad8(len), 0);
    }

    /// A text: the bytes, a NUL, zeros to the next word.
    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
        self.u8(0);
        self.pad();
    }

    /// A blob: `u64` length, the bytes, zeros to the next word.
    pub fn blob(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.bytes(b);
        self.pad();
    }

    /// The buffer written so far.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.out
    }
}

/// The size in bytes of `s` encoded as a text field.
pub fn text_size(s: &str) -> usize {
    pad8(s.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_examples_from_the_reference() {
        let mut out = Vec::new();
        Writer::new(&mut out).text("probe.db");
        assert_eq!(out, b"probe.db\0\0\0\0\0\0\0\0");
        let mut out = Vec::new();
        Writer::new(&mut out).text("");
        assert_eq!(out, [0u8; 8]);
    }

    #[test]
    fn text_without_nul_is_an_error() {
        let mut r = Reader::new(b"abcdefgh");
        assert_eq!(r.text(), Err(DecodeError::UnterminatedText { offset: 0 }));
    }

    #[test]
    fn text_whose_padding_is_cut_off_is_an_error() {
        let mut r = Reader::new(b"abc\0");
        assert!(r.text().is_err());
    }

    #[test]
    fn blob_with_huge_length_is_an_error_not_an_allocation() {
        let mut body = Vec::new();
        Writer::new(&mut body).u64(u64::MAX);
        assert!(Reader::new(&body).blob().is_err());
    }

    #[test]
    fn reads_past_the_end_fail() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(r.u64().is_err());
        assert_eq!(r.position(), 0);
    }
}
