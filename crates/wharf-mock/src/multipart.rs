//! A minimal `multipart/form-data` parser (RFC 7578), enough for the audio
//! and image upload routes: parts with a `Content-Disposition` name, an
//! optional filename and content type, and their raw bytes.

use memchr::memmem;

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    /// The form field name.
    pub name: String,
    /// Present for file fields.
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

impl Part<'_> {
    /// The value of a text field.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.data).into_owned()
    }
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty() && value.len() <= 200).then(|| value.to_owned())
    })
}

/// Splits `body` into its parts.
pub(crate) fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, &'static str> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The body delimiter proper is CRLF + "--boundary"; the first one may
    // come without the CRLF (or after a preamble).
    let mut close = Vec::with_capacity(delimiter.len() + 2);
    close.extend_from_slice(b"\r\n");
    close.extend_from_slice(delimiter);
    let first = if body.starts_with(delimiter) {
        0
    } else {
        memmem::find(body, &close)
            .map(|i| i + 2)
            .ok_or("the multipart body has no boundary delimiter")?
    };
    let mut pos = first + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the CRLF that ends the delimiter line.
        let line_end = memmem::find(rest, b"\r\n").ok_or("the multipart body is truncated")?;
        if rest[..line_end].iter().any(|b| !matches!(b, b' ' | b'\t')) {
            return Err("unexpected bytes after a multipart boundary");
        }
        pos += line_end + 2;
        let rest = &body[pos..];
        let (head, head_len) = match memmem::find(rest, b"\r\n\r\n") {
            Some(i) => (&rest[..i], i + 4),
            // A part without headers starts right after the delimiter line.
            None if rest.starts_with(b"\r\n") => (&rest[..0], 2),
            None => return Err("a multipart part has no end of headers"),
        };
        let head = std::str::from_utf8(head).map_err(|_| "multipart headers are not UTF-8")?;
        pos += head_len;
        let end = memmem::find(&body[pos..], &close)
            .map(|i| pos + i)
            .ok_or("the multipart body is not terminated")?;
        let data = &body[pos..end];
        pos = end + close.len();

        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once(':') else {
                return Err("malformed multipart header");
            };
            let key = key.trim();
            if key.eq_ignore_ascii_case("content-disposition") {
                for (k, v) in disposition_params(value) {
                    match k.to_ascii_lowercase().as_str() {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            } else if key.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_owned());
            }
        }
        parts.push(Part {
            name: name.ok_or("a multipart part has no name")?,
            filename,
            content_type,
            data,
        });
    }
}

/// `form-data; name="a"; filename="b.png"` -> `[("name", "a"), ("filename", "b.png")]`.
fn disposition_params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                val.push(escaped);
                            }
                        }
                        '"' => break,
                        c => val.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    val.push(c);
                    chars.next();
                }
                val = val.trim().to_owned();
            }
        }
        out.push((key.trim().to_owned(), val));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
    }

    #[test]
    fn parses_fields_and_files() {
        let body = b"preamble\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"model\"\r\n\r\n\
            whisper-1\r\n\
            --XyZ\r\n\
            content-disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".wav\"\r\n\
            Content-Type: audio/wav\r\n\r\n\
            RIFF\r\n--not-the-end\r\n\
            --XyZ--\r\n";
        let parts = parse(body, "XyZ").expect("valid body");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].text(), "whisper-1");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("a \"b\".wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(parts[1].data, b"RIFF\r\n--not-the-end");
    }

    #[test]
    fn rejects_broken_bodies() {
        assert!(parse(b"no delimiter", "b").is_err());
        assert!(parse(
            b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nvalue",
            "b"
        )
        .is_err());
        assert!(parse(b"--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--", "b").is_err());
        assert_eq!(parse(b"--b--\r\n", "b"), Ok(Vec::new()));
    }
}
