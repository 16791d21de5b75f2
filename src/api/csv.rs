//! CSV output (RFC 4180) for usage and invoice exports.

use crate::respond::Reply;
use bytes::Bytes;
use serde_json::Value;

/// One cell: quoted when it holds a separator, quote or line break; text that a spreadsheet
/// would run as a formula (`=`, `+`, `@`) is prefixed with `'`.
pub fn cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// A JSON value as cell text (null is empty).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A whole document: header line, then rows, CRLF line ends.
pub fn document<I, R>(header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut out = header.iter().map(|h| cell(h)).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    for row in rows {
        out.push_str(
            &row.into_iter()
                .map(|c| cell(&c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

/// JSON objects as CSV with the given columns.
pub fn from_objects(columns: &[&str], rows: &[Value]) -> String {
    document(
        columns,
        rows.iter().map(|r| {
            columns
                .iter()
                .map(|c| value_text(&r[*c]))
                .collect::<Vec<_>>()
        }),
    )
}

/// A CSV reply.
pub fn reply(body: String) -> Reply {
    Reply {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoting_and_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=1+1"), "'=1+1");
        let doc = from_objects(
            &["a", "b"],
            &[json!({"a": 1, "b": null}), json!({"a": "x\ny", "b": true})],
        );
        assert_eq!(doc, "a,b\r\n1,\r\n\"x\ny\",true\r\n");
    }
}
