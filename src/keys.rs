//! Virtual keys: hashing, generation, and finding the credential in a request (SPEC §1.2).

use rand::RngCore;
use sha2::{Digest, Sha256};

/// SHA-256 of a virtual key: the only form in which keys are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented secret.
    pub fn of(secret: &str) -> Self {
        KeyHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(KeyHash(out))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// Prefix of every generated virtual key.
pub const KEY_PREFIX: &str = "wharf_sk_";

/// A fresh virtual key: prefix + 192 random bits, hex. Returns (secret, hash).
pub fn generate() -> (String, KeyHash) {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let hash = KeyHash::of(&secret);
    (secret, hash)
}

/// Where the credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    XApiKey,
    GoogApiKey,
    Query,
}

/// Finds the client's credential, in SPEC order: `Authorization: Bearer`, `X-API-Key`,
/// `x-goog-api-key`, `?key=`. An empty value counts as absent.
/// The token of `Authorization: Bearer <token>` (scheme in any case), if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let s = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    if s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ") {
        Some(s[7..].trim()).filter(|k| !k.is_empty())
    } else {
        None
    }
}

pub fn extract_credential<'a>(
    headers: &'a http::HeaderMap,
    query: Option<&'a str>,
) -> Option<(&'a str, CredentialSource)> {
    if let Some(k) = bearer(headers) {
        return Some((k, CredentialSource::Bearer));
    }
    for (name, src) in [
        ("x-api-key", CredentialSource::XApiKey),
        ("x-goog-api-key", CredentialSource::GoogApiKey),
    ] {
        if let Some(k) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            if !k.is_empty() {
                return Some((k, src));
            }
        }
    }
    let q = query?;
    q.split('&').find_map(|pair| {
        let v = pair.strip_prefix("key=")?;
        (!v.is_empty()).then_some((v, CredentialSource::Query))
    })
}

/// The query string without any `key=` parameter (`None` when nothing is left).
pub fn strip_key_param(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("key=") && *p != "key")
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn order_of_credential_forms() {
        let h = hm(&[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert_eq!(
            extract_credential(&h, Some("key=c")),
            Some(("a", CredentialSource::Bearer))
        );
        let h = hm(&[("x-goog-api-key", "g"), ("x-api-key", "b")]);
        assert_eq!(
            extract_credential(&h, None),
            Some(("b", CredentialSource::XApiKey))
        );
        let h = hm(&[("x-goog-api-key", "g")]);
        assert_eq!(
            extract_credential(&h, None),
            Some(("g", CredentialSource::GoogApiKey))
        );
        let h = hm(&[("authorization", "Basic zzz")]);
        assert_eq!(
            extract_credential(&h, Some("alt=sse&key=q")),
            Some(("q", CredentialSource::Query))
        );
        assert_eq!(extract_credential(&hm(&[]), Some("alt=sse")), None);
        assert_eq!(
            extract_credential(&hm(&[("authorization", "Bearer ")]), None),
            None
        );
    }

    #[test]
    fn key_param_is_stripped() {
        assert_eq!(
            strip_key_param("alt=sse&key=abc").as_deref(),
            Some("alt=sse")
        );
        assert_eq!(strip_key_param("key=abc"), None);
    }

    #[test]
    fn generated_keys_hash_round_trip() {
        let (s, h) = generate();
        assert!(s.starts_with(KEY_PREFIX));
        assert_eq!(s.len(), KEY_PREFIX.len() + 48);
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::of(&s), h);
    }
}
