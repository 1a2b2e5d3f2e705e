//! Values and their type codes (§4), parameter tuples (§5.1, §5.2) and row
//! tuples (§5.3).

use crate::codec::{pad8, Reader, Writer};
use crate::DecodeError;

/// Value type codes shared by parameter and row tuples.
pub mod value_type {
    #![allow(missing_docs)]
    pub const INTEGER: u8 = 1;
    pub const FLOAT: u8 = 2;
    pub const TEXT: u8 = 3;
    pub const BLOB: u8 = 4;
    pub const NULL: u8 = 5;
    pub const UNIXTIME: u8 = 9;
    pub const ISO8601: u8 = 10;
    pub const BOOLEAN: u8 = 11;
}

/// One SQL value as it travels on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A double.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// SQL NULL.
    Null,
    /// Seconds since the epoch; server to client only.
    UnixTime(i64),
    /// A date-time as text (`2006-01-02 15:04:05.999999999-07:00`).
    Iso8601(String),
    /// A boolean (0 or 1 on the wire).
    Boolean(bool),
}

impl Value {
    /// The wire type code of this value.
    pub fn type_code(&self) -> u8 {
        use value_type as t;
        match self {
            Value::Integer(_) => t::INTEGER,
            Value::Float(_) => t::FLOAT,
            Value::Text(_) => t::TEXT,
            Value::Blob(_) => t::BLOB,
            Value::Null => t::NULL,
            Value::UnixTime(_) => t::UNIXTIME,
            Value::Iso8601(_) => t::ISO8601,
            Value::Boolean(_) => t::BOOLEAN,
        }
    }

    /// Appends the value's encoding (without its type code).
    pub fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Value::Integer(v) | Value::UnixTime(v) => w.i64(*v),
            Value::Float(v) => w.f64(*v),
            Value::Text(s) | Value::Iso8601(s) => w.text(s),
            Value::Blob(b) => w.blob(b),
            Value::Null => w.u64(0),
            Value::Boolean(b) => w.u64(u64::from(*b)),
        }
    }

    /// Reads one value of type `code`.
    pub fn decode(code: u8, r: &mut Reader<'_>) -> Result<Value, DecodeError> {
        use value_type as t;
        Ok(match code {
            t::INTEGER => Value::Integer(r.i64()?),
            t::FLOAT => Value::Float(r.f64()?),
            t::TEXT => Value::Text(r.text()?),
            t::BLOB => Value::Blob(r.blob()?),
            t::NULL => {
                r.u64()?;
                Value::Null
            }
            t::UNIXTIME => Value::UnixTime(r.i64()?),
            t::ISO8601 => Value::Iso8601(r.text()?),
            t::BOOLEAN => Value::Boolean(r.u64()? != 0),
            other => return Err(DecodeError::UnknownValueType(other)),
        })
    }
}

/// Which parameter tuple layout a message uses: schema 0 has a `u8` count
/// (at most 255 parameters), schema 1 a `u32` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsFormat {
    /// `u8` count.
    Params8,
    /// `u32` count (dqlite ≥ 1.12).
    Params32,
}

impl ParamsFormat {
    /// The narrowest format that fits `n` parameters; schema 0 keeps old
    /// servers working whenever it can.
    pub fn for_count(n: usize) -> Self {
        if n > 255 {
            ParamsFormat::Params32
        } else {
            ParamsFormat::Params8
        }
    }

    /// The header schema byte of this format.
    pub fn schema(self) -> u8 {
        match self {
            ParamsFormat::Params8 => 0,
            ParamsFormat::Params32 => 1,
        }
    }
}

/// Appends a parameter tuple. No parameters means no tuple at all, as
/// every dqlite client sends it.
pub fn encode_params(w: &mut Writer<'_>, params: &[Value], format: ParamsFormat) {
    if params.is_empty() {
        return;
    }
    let start = w.buffer().len();
    match format {
        // Callers pick the format with `for_count`, so the count fits.
        ParamsFormat::Params8 => w.u8(params.len().min(255) as u8),
        ParamsFormat::Params32 => w.u32(u32::try_from(params.len()).unwrap_or(u32::MAX)),
    }
    for p in params {
        w.u8(p.type_code());
    }
    let header_len = w.buffer().len() - start;
    w.buffer().resize(start + pad8(header_len), 0);
    for p in params {
        p.encode(w);
    }
}

/// Reads the optional parameter tuple at the end of a body. Padding bytes
/// are ignored (go-dqlite leaves stale bytes there). UNIXTIME is rejected,
/// as by the C server.
pub fn decode_params(r: &mut Reader<'_>, format: ParamsFormat) -> Result<Vec<Value>, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Vec::new());
    }
    let start = r.position();
    let n = match format {
        ParamsFormat::Params8 => usize::from(r.u8()?),
        ParamsFormat::Params32 => r.u32()? as usize,
    };
    // Every value takes at least one word, so a count larger than the body
    // is malformed; checking first keeps allocations bounded by input size.
    if n > r.remaining() {
        return Err(DecodeError::Truncated {
            offset: r.position(),
            needed: n,
            len: start + r.remaining(),
        });
    }
    let types = r.bytes(n)?.to_vec();
    r.align()?;
    let mut values = Vec::with_capacity(n);
    for code in types {
        if code == value_type::UNIXTIME {
            return Err(DecodeError::ParameterType(code));
        }
        values.push(Value::decode(code, r)?);
    }
    Ok(values)
}

/// The byte that opens a batch's end marker when more batches follow.
pub const MARKER_PART_BYTE: u8 = 0xee;
/// The byte that opens a batch's end marker when the result is complete.
pub const MARKER_DONE_BYTE: u8 = 0xff;
/// End marker: another ROWS message follows.
pub const ROWS_PART: u64 = 0xeeee_eeee_eeee_eeee;
/// End marker: the result is complete.
pub const ROWS_DONE: u64 = 0xffff_ffff_ffff_ffff;

/// Appends one row tuple: 4-bit type codes (column `2k` in the low nibble
/// of byte `k`), zero padding, then the values.
pub fn encode_row(w: &mut Writer<'_>, row: &[Value]) {
    let start = w.buffer().len();
    let header_len = pad8(row.len().div_ceil(2));
    w.buffer().resize(start + header_len, 0);
    for (i, v) in row.iter().enumerate() {
        let code = v.type_code() & 0x0f;
        let byte = &mut w.buffer()[start + i / 2];
        *byte |= if i % 2 == 0 { code } else { code << 4 };
    }
    for v in row {
        v.encode(w);
    }
}

/// What comes next in a ROWS body: a row, or the end marker.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOrEnd {
    /// One decoded row.
    Row(Vec<Value>),
    /// The end marker: `true` if another ROWS message follows (PART).
    End {
        /// Another batch follows.
        more: bool,
    },
}

/// Reads the next row tuple of `ncols` columns, or the end marker.
///
/// Like go-dqlite, a header byte of `0xee` or `0xff` means the marker; the
/// marker word must then be complete.
pub fn decode_row(r: &mut Reader<'_>, ncols: usize) -> Result<RowOrEnd, DecodeError> {
    if let Some(&first) = r.rest().first() {
        if first == MARKER_PART_BYTE || first == MARKER_DONE_BYTE {
            return match r.u64()? {
                ROWS_PART => Ok(RowOrEnd::End { more: true }),
                ROWS_DONE => Ok(RowOrEnd::End { more: false }),
                _ => Err(DecodeError::BadRowsMarker),
            };
        }
    }
    if ncols == 0 {
        // A zero-column result has no row headers: only the marker.
        return Err(DecodeError::BadRowsMarker);
    }
    let header = r.bytes(pad8(ncols.div_ceil(2)))?;
    let mut codes = Vec::with_capacity(ncols);
    for i in 0..ncols {
        let b = header[i / 2];
        codes.push(if i % 2 == 0 { b & 0x0f } else { b >> 4 });
    }
    let mut row = Vec::with_capacity(ncols);
    for code in codes {
        row.push(Value::decode(code, r)?);
    }
    Ok(RowOrEnd::Row(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_header_nibbles_match_the_reference() {
        // Columns typed 1,1,2,3,4,5,10,11 give header 11 32 54 ba.
        let row = vec![
            Value::Integer(1),
            Value::Integer(2),
            Value::Float(1.5),
            Value::Text("s".into()),
            Value::Blob(vec![1]),
            Value::Null,
            Value::Iso8601("2020-01-01".into()),
            Value::Boolean(true),
        ];
        let mut out = Vec::new();
        encode_row(&mut Writer::new(&mut out), &row);
        assert_eq!(&out[..8], &[0x11, 0x32, 0x54, 0xba, 0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        assert_eq!(decode_row(&mut r, 8).unwrap(), RowOrEnd::Row(row));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn params_example_nine_integers() {
        // The reference's sample shows one type byte too few in its second
        // word; nine parameters need nine type codes after the count.
        let params: Vec<Value> = (0..9).map(Value::Integer).collect();
        let mut out = Vec::new();
        encode_params(&mut Writer::new(&mut out), &params, ParamsFormat::Params8);
        assert_eq!(
            &out[..16],
            &[9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(out.len(), 16 + 9 * 8);
    }

    #[test]
    fn params_padding_contents_are_ignored() {
        // go-dqlite leaves stale bytes in the tuple header padding.
        let body = [
            1u8, 1, 0xde, 0xad, 0xbe, 0xef, 0x55, 0x66, 42, 0, 0, 0, 0, 0, 0, 0,
        ];
        let got = decode_params(&mut Reader::new(&body), ParamsFormat::Params8).unwrap();
        assert_eq!(got, vec![Value::Integer(42)]);
    }

    #[test]
    fn explicit_zero_count_is_zero_params() {
        let body = [0u8; 8];
        let got = decode_params(&mut Reader::new(&body), ParamsFormat::Params8).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn unixtime_parameter_is_rejected() {
        let body = [1u8, 9, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let got = decode_params(&mut Reader::new(&body), ParamsFormat::Params8);
        assert_eq!(got, Err(DecodeError::ParameterType(9)));
    }

    #[test]
    fn huge_params32_count_fails_without_allocating() {
        let body = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(decode_params(&mut Reader::new(&body), ParamsFormat::Params32).is_err());
    }
}
