//! Converting Rust values to parameters ([`IntoValue`], [`Params`],
//! [`params!`](crate::params)) and row values back ([`FromValue`]).

use dqlite_wire::Value;

use crate::{Error, Result};

/// A Rust value that can be bound as a statement parameter.
///
/// ```
/// use dqlite_client::{IntoValue, Value};
/// assert_eq!(42i32.into_value(), Value::Integer(42));
/// assert_eq!(None::<&str>.into_value(), Value::Null);
/// ```
pub trait IntoValue {
    /// The wire value.
    fn into_value(self) -> Value;
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}

impl IntoValue for &Value {
    fn into_value(self) -> Value {
        self.clone()
    }
}

macro_rules! integer_into_value {
    ($($t:ty),*) => {$(
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                Value::Integer(i64::from(self))
            }
        }
    )*};
}
integer_into_value!(i8, i16, i32, i64, u8, u16, u32);

impl IntoValue for f64 {
    fn into_value(self) -> Value {
        Value::Float(self)
    }
}

impl IntoValue for f32 {
    fn into_value(self) -> Value {
        Value::Float(f64::from(self))
    }
}

impl IntoValue for bool {
    fn into_value(self) -> Value {
        Value::Boolean(self)
    }
}

impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::Text(self)
    }
}

impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl IntoValue for &String {
    fn into_value(self) -> Value {
        Value::Text(self.clone())
    }
}

impl IntoValue for Vec<u8> {
    fn into_value(self) -> Value {
        Value::Blob(self)
    }
}

impl IntoValue for &[u8] {
    fn into_value(self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl<const N: usize> IntoValue for &[u8; N] {
    fn into_value(self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        match self {
            Some(v) => v.into_value(),
            None => Value::Null,
        }
    }
}

/// The parameters of one statement execution.
///
/// Implemented for `()` (none), `Vec<Value>` (e.g. from
/// [`params!`](crate::params)), `&[Value]` and arrays of one
/// [`IntoValue`] type.
pub trait Params {
    /// The values, in placeholder order.
    fn into_values(self) -> Vec<Value>;
}

impl Params for () {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

impl Params for &[Value] {
    fn into_values(self) -> Vec<Value> {
        self.to_vec()
    }
}

impl<T: IntoValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.into_iter().map(IntoValue::into_value).collect()
    }
}

/// Builds a parameter list from values of mixed types.
///
/// ```
/// use dqlite_client::{params, Value};
/// let p = params![1, "two", 3.0, None::<i64>, vec![4u8]];
/// assert_eq!(p, vec![Value::Integer(1), Value::Text("two".into()), Value::Float(3.0), Value::Null, Value::Blob(vec![4])]);
/// ```
#[macro_export]
macro_rules! params {
    () => { ::std::vec::Vec::<$crate::Value>::new() };
    ($($value:expr),+ $(,)?) => {
        ::std::vec![$($crate::IntoValue::into_value($value)),+]
    };
}

/// A Rust type a row value can be read as.
///
/// Conversions are strict except where dqlite itself blurs types:
/// integers read as `bool` (0 is false) and as `f64`; BOOLEAN and
/// UNIXTIME read as integers; ISO8601 reads as text. `Option<T>` reads
/// NULL as `None`.
pub trait FromValue: Sized {
    /// Converts, or explains why not.
    fn from_value(value: &Value) -> Result<Self>;
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "INTEGER",
        Value::Float(_) => "FLOAT",
        Value::Text(_) => "TEXT",
        Value::Blob(_) => "BLOB",
        Value::Null => "NULL",
        Value::UnixTime(_) => "UNIXTIME",
        Value::Iso8601(_) => "ISO8601",
        Value::Boolean(_) => "BOOLEAN",
    }
}

fn mismatch(value: &Value, wanted: &str) -> Error {
    Error::InvalidArgument(format!(
        "cannot read a {} value as {wanted}",
        type_name(value)
    ))
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self> {
        Ok(value.clone())
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Integer(v) | Value::UnixTime(v) => Ok(*v),
            Value::Boolean(b) => Ok(i64::from(*b)),
            other => Err(mismatch(other, "i64")),
        }
    }
}

macro_rules! narrow_integer_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| {
                    Error::InvalidArgument(format!("{wide} does not fit in {}", stringify!($t)))
                })
            }
        }
    )*};
}
narrow_integer_from_value!(i32, u32, u64, i16, u16, i8, u8, usize);

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Float(v) => Ok(*v),
            Value::Integer(v) => Ok(*v as f64),
            other => Err(mismatch(other, "f64")),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Boolean(b) => Ok(*b),
            Value::Integer(v) => Ok(*v != 0),
            other => Err(mismatch(other, "bool")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Text(s) | Value::Iso8601(s) => Ok(s.clone()),
            other => Err(mismatch(other, "String")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(mismatch(other, "Vec<u8>")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        assert_eq!(i64::from_value(&i64::MIN.into_value()).unwrap(), i64::MIN);
        assert_eq!(f64::from_value(&1.5f64.into_value()).unwrap(), 1.5);
        assert!(bool::from_value(&true.into_value()).unwrap());
        assert_eq!(String::from_value(&"é".into_value()).unwrap(), "é");
        assert_eq!(
            Vec::<u8>::from_value(&b"\x00\xff".into_value()).unwrap(),
            vec![0, 0xff]
        );
        assert_eq!(Option::<i64>::from_value(&Value::Null).unwrap(), None);
        assert_eq!(
            Option::<i64>::from_value(&Value::Integer(3)).unwrap(),
            Some(3)
        );
    }

    #[test]
    fn mismatches_are_errors() {
        assert!(i64::from_value(&Value::Text("1".into())).is_err());
        assert!(String::from_value(&Value::Null).is_err());
        assert!(i32::from_value(&Value::Integer(i64::MAX)).is_err());
        assert!(u64::from_value(&Value::Integer(-1)).is_err());
    }

    #[test]
    fn params_from_arrays_and_unit() {
        assert!(().into_values().is_empty());
        assert_eq!(
            [1, 2].into_values(),
            vec![Value::Integer(1), Value::Integer(2)]
        );
        let empty: Vec<Value> = crate::params![];
        assert!(empty.is_empty());
    }
}
