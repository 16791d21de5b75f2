//! Keeps a provider's credentials out of what reaches the client: some proxies and
//! self-hosted servers echo the `Authorization` header they got in an error body or a response
//! header, and every virtual-key holder would then read the provider key.
//!
//! Each occurrence of a configured secret (and so of its `Bearer ` form) is masked with `*`
//! of the same length: `Content-Length` stays right and a stream can be masked chunk by chunk,
//! holding back only the last `longest secret - 1` bytes until the next chunk shows whether a
//! secret continues there.

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Response headers never passed from a provider to the client: credentials (some servers
/// echo them) and the provider's own cookies. Parsed names, so removing them per response
/// parses nothing.
pub static DENIED_RESPONSE_HEADERS: [HeaderName; 7] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::PROXY_AUTHENTICATE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    http::header::SET_COOKIE,
];

/// Secrets shorter than this are not searched for (they would mask ordinary text).
const MIN_SECRET: usize = 4;

/// Finds a provider's secrets.
#[derive(Debug, Clone)]
pub struct Redactor {
    ac: AhoCorasick,
    longest: usize,
}

impl Redactor {
    /// A redactor for `secrets`; `None` when none is long enough to search for.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Option<Redactor> {
        let secrets: Vec<&str> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        let longest = secrets.iter().map(|s| s.len()).max()?;
        let ac = AhoCorasick::new(&secrets).ok()?;
        Some(Redactor { ac, longest })
    }

    /// Masks every secret in `buf` in place; returns whether one was found.
    pub fn mask(&self, buf: &mut [u8]) -> bool {
        let spans: Vec<(usize, usize)> = self
            .ac
            .find_overlapping_iter(&*buf)
            .map(|m| (m.start(), m.end()))
            .collect();
        for (start, end) in &spans {
            buf[*start..*end].fill(b'*');
        }
        !spans.is_empty()
    }

    /// The headers among `headers` whose value holds a secret, with the secret masked (to
    /// be set in place of the original).
    pub fn masked_headers(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut masked = Vec::new();
        for (name, value) in headers {
            if self.ac.find(value.as_bytes()).is_none() {
                continue;
            }
            let mut v = value.as_bytes().to_vec();
            self.mask(&mut v);
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                masked.push((name.clone(), v));
            }
        }
        masked
    }
}

/// Masks a body that arrives in chunks.
#[derive(Debug, Default)]
pub struct RedactStream {
    /// Bytes held back: they may be the start of a secret that the next chunk completes.
    held: BytesMut,
}

impl RedactStream {
    /// Masks `body` (one chunk; `eos` on the last call), holding back the tail that might
    /// begin a secret. The bytes given out, in order, are the body with every secret masked.
    pub fn on_chunk(&mut self, r: &Redactor, body: &mut Option<Bytes>, eos: bool) {
        if let Some(b) = body.take() {
            self.held.extend_from_slice(&b);
        }
        if self.held.is_empty() {
            if eos {
                *body = None;
            } else {
                *body = Some(Bytes::new());
            }
            return;
        }
        r.mask(&mut self.held);
        let keep = if eos {
            0
        } else {
            (r.longest - 1).min(self.held.len())
        };
        let out = self.held.split_to(self.held.len() - keep).freeze();
        *body = Some(out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(r: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = RedactStream::default();
        let mut out = Vec::new();
        for c in chunks {
            let mut b = Some(Bytes::copy_from_slice(c));
            s.on_chunk(r, &mut b, false);
            out.extend_from_slice(b.as_deref().unwrap_or_default());
        }
        let mut b = None;
        s.on_chunk(r, &mut b, true);
        out.extend_from_slice(b.as_deref().unwrap_or_default());
        out
    }

    #[test]
    fn masks_a_secret_split_at_any_point() {
        let r = Redactor::new(["sk-live-123456"]).unwrap();
        let body = br#"{"error":"bad header Authorization: Bearer sk-live-123456 (echo)"}"#;
        for cut in 0..body.len() {
            for cut2 in cut..body.len() {
                let out = run(&r, &[&body[..cut], &body[cut..cut2], &body[cut2..]]);
                assert_eq!(out.len(), body.len());
                let text = String::from_utf8(out).unwrap();
                assert!(!text.contains("sk-live"), "{cut}/{cut2}: {text}");
                assert!(text.contains("Bearer **************"), "{text}");
            }
        }
    }

    #[test]
    fn headers_are_masked_and_short_secrets_ignored() {
        assert!(Redactor::new(["abc"]).is_none());
        let r = Redactor::new(["secret-key-1", "secret-key-2"]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("Bearer secret-key-2"));
        h.insert("x-ok", HeaderValue::from_static("fine"));
        let masked = r.masked_headers(&h);
        assert_eq!(masked.len(), 1);
        assert_eq!(masked[0].0, "x-echo");
        assert_eq!(masked[0].1, "Bearer ************");
    }
}
