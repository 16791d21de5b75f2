//! Borrowed JSON access for request translation, with errors that name the offending field.
//!
//! A request is decoded once into [`RawObject`]s: the keys, and each value as the raw JSON text
//! it came in (borrowed from the request buffer). Values are decoded only where the translation
//! needs them, strings borrow from the buffer when they hold no escapes, and large opaque
//! values (JSON schemas, base64 payloads) are never copied more than once.

use crate::error::{ErrorCode, GatewayError};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON string decoded without copying when it has no escapes.
pub(crate) struct CowStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A JSON object as `(key, raw value)` pairs in their original order.
#[derive(Default)]
pub(crate) struct RawObject<'a> {
    pub entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(CowStr(key)) = map.next_key::<CowStr<'a>>()? {
                    let value: &'a RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawObject { entries })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> RawObject<'a> {
    /// The value of `key` (the last one when the key repeats, as JSON parsers usually do),
    /// `None` when absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .filter(|v| !is_null(v))
    }

    /// The first key not in `known` whose value says something: `null`, `[]` and `{}` express
    /// nothing (clients echo `"annotations": []` or `"audio": null` back in history), so they
    /// pass.
    pub fn unknown(&self, known: &[&str]) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, v)| !is_empty(v) && !known.contains(&k.as_ref()))
            .map(|(k, _)| k.as_ref())
    }
}

/// Where a value sits in the request, for error messages (`messages[2].content[0].text`).
#[derive(Clone, Copy)]
pub(crate) enum Loc<'p> {
    /// A top-level field.
    Root(&'p str),
    /// A field of an object.
    Field(&'p Loc<'p>, &'p str),
    /// An element of an array.
    Index(&'p Loc<'p>, usize),
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Root(name) => f.write_str(name),
            Loc::Field(parent, name) => write!(f, "{parent}.{name}"),
            Loc::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

impl<'p> Loc<'p> {
    /// The field `name` of this value.
    pub fn field(&'p self, name: &'p str) -> Loc<'p> {
        Loc::Field(self, name)
    }

    /// The element `i` of this value.
    pub fn index(&'p self, i: usize) -> Loc<'p> {
        Loc::Index(self, i)
    }
}

/// The longest client-supplied text echoed in an error message.
const ECHO_MAX: usize = 64;

/// A client-supplied value for an error message: quoted, and cut at [`ECHO_MAX`] characters.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// A 400 `invalid_request` naming the field at `loc` (also given as `param`, as OpenAI does).
pub(crate) fn invalid(loc: &Loc<'_>, message: impl fmt::Display) -> GatewayError {
    let mut path = loc.to_string();
    if let Some((end, _)) = path.char_indices().nth(4 * ECHO_MAX) {
        path.truncate(end);
        path.push_str("...");
    }
    let mut e = GatewayError::new(ErrorCode::InvalidRequest, format!("{path}: {message}"));
    e.extra.push(("param", serde_json::Value::String(path)));
    e
}

/// A 400 for a field the target provider cannot express.
pub(crate) fn unsupported(loc: &Loc<'_>, provider: &str, what: impl fmt::Display) -> GatewayError {
    invalid(
        loc,
        format_args!("{what} is not supported by {provider} models"),
    )
}

/// Whether the raw value is `null`.
pub(crate) fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// Whether the raw value is `null`, an empty array or an empty object.
pub(crate) fn is_empty(v: &RawValue) -> bool {
    let s = v.get();
    if s == "null" {
        return true;
    }
    let b = s.as_bytes();
    b.len() >= 2
        && matches!((b[0], b[b.len() - 1]), (b'[', b']') | (b'{', b'}'))
        && s[1..s.len() - 1].trim().is_empty()
}

fn first_byte(v: &RawValue) -> u8 {
    v.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Decodes an object.
pub(crate) fn object<'a>(v: &'a RawValue, loc: &Loc<'_>) -> Result<RawObject<'a>, GatewayError> {
    if first_byte(v) != b'{' {
        return Err(invalid(loc, "must be an object"));
    }
    serde_json::from_str(v.get()).map_err(|_| invalid(loc, "must be an object"))
}

/// Decodes an array into its raw elements.
pub(crate) fn array<'a>(v: &'a RawValue, loc: &Loc<'_>) -> Result<Vec<&'a RawValue>, GatewayError> {
    if first_byte(v) != b'[' {
        return Err(invalid(loc, "must be an array"));
    }
    serde_json::from_str(v.get()).map_err(|_| invalid(loc, "must be an array"))
}

/// Decodes a string.
pub(crate) fn string<'a>(v: &'a RawValue, loc: &Loc<'_>) -> Result<Cow<'a, str>, GatewayError> {
    if first_byte(v) != b'"' {
        return Err(invalid(loc, "must be a string"));
    }
    serde_json::from_str::<CowStr<'a>>(v.get())
        .map(|s| s.0)
        .map_err(|_| invalid(loc, "must be a string"))
}

/// Decodes a boolean.
pub(crate) fn boolean(v: &RawValue, loc: &Loc<'_>) -> Result<bool, GatewayError> {
    match v.get() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(loc, "must be a boolean")),
    }
}

/// Decodes a number.
pub(crate) fn number(v: &RawValue, loc: &Loc<'_>) -> Result<f64, GatewayError> {
    let b = first_byte(v);
    if !(b == b'-' || b.is_ascii_digit()) {
        return Err(invalid(loc, "must be a number"));
    }
    serde_json::from_str::<f64>(v.get()).map_err(|_| invalid(loc, "must be a number"))
}

/// Decodes a non-negative integer (`2.0` is accepted, as JSON numbers have no integer type).
pub(crate) fn unsigned(v: &RawValue, loc: &Loc<'_>) -> Result<u64, GatewayError> {
    if let Ok(n) = serde_json::from_str::<u64>(v.get()) {
        return Ok(n);
    }
    match number(v, loc) {
        Ok(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(invalid(loc, "must be a non-negative integer")),
    }
}

/// Decodes an integer.
pub(crate) fn integer(v: &RawValue, loc: &Loc<'_>) -> Result<i64, GatewayError> {
    if let Ok(n) = serde_json::from_str::<i64>(v.get()) {
        return Ok(n);
    }
    match number(v, loc) {
        Ok(f) if f.fract() == 0.0 && f.abs() <= i64::MAX as f64 => Ok(f as i64),
        _ => Err(invalid(loc, "must be an integer")),
    }
}

/// Writes `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_object_borrows_and_keeps_order() {
        let body = r#"{"b":1,"a":"x","c":null,"a":"y","d":[ ],"e":{}}"#;
        let o: RawObject<'_> = serde_json::from_str(body).expect("object");
        let keys: Vec<&str> = o.entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "c", "a", "d", "e"]);
        assert_eq!(o.get("a").map(RawValue::get), Some("\"y\""));
        assert!(o.get("c").is_none());
        assert_eq!(o.unknown(&["a"]), Some("b"));
        assert_eq!(o.unknown(&["a", "b"]), None);
    }

    #[test]
    fn long_client_text_is_clipped() {
        assert_eq!(clip("abc"), "\"abc\"");
        let long = "é".repeat(100);
        assert_eq!(clip(&long), format!("{:?}...", "é".repeat(64)));
        let key = "k".repeat(1000);
        let e = invalid(&Loc::Root(&key), "nope");
        assert!(e.message.len() < 300, "{}", e.message);
    }

    #[test]
    fn scalars_and_paths() {
        let root = Loc::Root("messages");
        let m = root.index(2);
        let loc = m.field("content");
        assert_eq!(loc.to_string(), "messages[2].content");
        let v: &RawValue = serde_json::from_str("\"a\\nb\"").expect("raw");
        assert_eq!(string(v, &loc).expect("string"), "a\nb");
        let e = number(v, &loc).expect_err("not a number");
        assert_eq!(e.message, "messages[2].content: must be a number");
        let v: &RawValue = serde_json::from_str("3.0").expect("raw");
        assert_eq!(unsigned(v, &loc).expect("int"), 3);
        let v: &RawValue = serde_json::from_str("-3").expect("raw");
        assert!(unsigned(v, &loc).is_err());
        assert_eq!(integer(v, &loc).expect("int"), -3);
    }
}
