//! Provider credentials at rest (SPEC §6): ChaCha20-Poly1305 envelopes under master keys.
//!
//! An envelope is the JSON object
//! `{"v": 1, "alg": "chacha20poly1305", "key_id": "<id>", "nonce": "<base64>", "ciphertext": "<base64>"}`
//! (the ciphertext carries the 16-byte Poly1305 tag at its end). The associated data is
//! [`AAD`], so an envelope only opens as a provider credential.
//!
//! Master keys come from the environment variable [`MASTER_KEYS_ENV`]:
//! `WHARF_MASTER_KEYS="id1:<base64 of 32 bytes>,id2:<base64 of 32 bytes>"`. The last key listed
//! is the newest: new envelopes are sealed with it. Every listed key can open the envelopes that
//! name it, so rotating means appending a key, re-encrypting at leisure, then dropping the old
//! one. Key material is never printed: not by `Debug`, not in error messages.

use crate::config::Secret;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde_json::{json, Value};

/// The environment variable holding the master keys.
pub const MASTER_KEYS_ENV: &str = "WHARF_MASTER_KEYS";

/// Envelope format version.
pub const ENVELOPE_VERSION: u64 = 1;

/// Envelope algorithm name.
pub const ALG: &str = "chacha20poly1305";

/// Associated data bound into every provider-credential envelope.
pub const AAD: &[u8] = b"wharf-provider-key";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Errors of master-key parsing, encryption and decryption. Messages name key ids, never key
/// material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// No master key is configured.
    #[error(
        "no master key configured: set {MASTER_KEYS_ENV}=\"<id>:<base64 of 32 bytes>\" \
         (generate one with `openssl rand -base64 32`)"
    )]
    NotConfigured,
    /// The master-key list is malformed.
    #[error("{MASTER_KEYS_ENV}: {0}")]
    InvalidMasterKeys(String),
    /// The envelope is not a well-formed envelope.
    #[error("malformed credential envelope: {0}")]
    MalformedEnvelope(String),
    /// The envelope has a version or algorithm this build does not know.
    #[error("unsupported credential envelope: {0}")]
    UnsupportedEnvelope(String),
    /// The envelope names a master key that is not configured.
    #[error(
        "credential envelope was sealed with master key `{key_id}`, which is not in \
         {MASTER_KEYS_ENV} (configured: {}); add that key back to decrypt it",
        .configured.join(", ")
    )]
    UnknownKeyId {
        /// The key id the envelope names.
        key_id: String,
        /// The configured key ids.
        configured: Vec<String>,
    },
    /// Authentication failed: wrong key material for this id, or a modified envelope.
    #[error(
        "credential envelope does not open under master key `{key_id}`: \
         the envelope was modified or the key material for `{key_id}` is not the one it was sealed with"
    )]
    Decrypt {
        /// The key id used.
        key_id: String,
    },
    /// The decrypted credential is not UTF-8.
    #[error("decrypted credential is not UTF-8 text")]
    NotUtf8,
    /// Encryption failed.
    #[error("encryption failed")]
    Encrypt,
}

/// The configured master keys; the last one is the newest.
pub struct MasterKeys {
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("key_ids", &self.key_ids())
            .field("newest", &self.newest_id())
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

fn field<'a>(envelope: &'a Value, name: &str) -> Result<&'a Value, CryptoError> {
    envelope
        .get(name)
        .ok_or_else(|| CryptoError::MalformedEnvelope(format!("missing `{name}`")))
}

fn str_field<'a>(envelope: &'a Value, name: &str) -> Result<&'a str, CryptoError> {
    field(envelope, name)?
        .as_str()
        .ok_or_else(|| CryptoError::MalformedEnvelope(format!("`{name}` is not a string")))
}

impl MasterKeys {
    /// Reads [`MASTER_KEYS_ENV`]. Unset or empty: [`CryptoError::NotConfigured`].
    pub fn from_env() -> Result<MasterKeys, CryptoError> {
        match std::env::var(MASTER_KEYS_ENV) {
            Ok(v) if !v.trim().is_empty() => MasterKeys::parse(&v),
            Ok(_) | Err(std::env::VarError::NotPresent) => Err(CryptoError::NotConfigured),
            Err(std::env::VarError::NotUnicode(_)) => Err(CryptoError::InvalidMasterKeys(
                "is not valid UTF-8".to_string(),
            )),
        }
    }

    /// Parses `id1:<base64>,id2:<base64>` (whitespace around entries is ignored). Ids are 1-64
    /// characters of letters, digits, `-`, `_`, `.` and must be distinct; each key is exactly 32
    /// bytes, in standard or URL-safe base64, padded or not.
    pub fn parse(spec: &str) -> Result<MasterKeys, CryptoError> {
        let mut keys: Vec<(String, ChaCha20Poly1305)> = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let n = i + 1;
            let Some((id, material)) = entry.split_once(':') else {
                return Err(CryptoError::InvalidMasterKeys(format!(
                    "entry {n} is not `<id>:<base64 key>`"
                )));
            };
            let id = id.trim();
            if !valid_key_id(id) {
                return Err(CryptoError::InvalidMasterKeys(format!(
                    "entry {n}: key id must be 1-64 characters of letters, digits, - _ ."
                )));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(CryptoError::InvalidMasterKeys(format!(
                    "key id `{id}` is listed twice"
                )));
            }
            let Some(bytes) = decode_b64(material.trim()) else {
                return Err(CryptoError::InvalidMasterKeys(format!(
                    "key `{id}` is not valid base64"
                )));
            };
            if bytes.len() != KEY_LEN {
                return Err(CryptoError::InvalidMasterKeys(format!(
                    "key `{id}` is {} bytes, expected {KEY_LEN}",
                    bytes.len()
                )));
            }
            let cipher = ChaCha20Poly1305::new(Key::from_slice(&bytes));
            keys.push((id.to_string(), cipher));
        }
        if keys.is_empty() {
            return Err(CryptoError::NotConfigured);
        }
        Ok(MasterKeys { keys })
    }

    /// The configured key ids, oldest first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The id new envelopes are sealed with.
    pub fn newest_id(&self) -> &str {
        self.keys
            .last()
            .map(|(id, _)| id.as_str())
            .unwrap_or_default()
    }

    /// Seals `plaintext` under the newest key, with a fresh random 96-bit nonce.
    pub fn encrypt(&self, plaintext: &str) -> Result<Value, CryptoError> {
        let (key_id, cipher) = self.keys.last().ok_or(CryptoError::NotConfigured)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: AAD,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(json!({
            "v": ENVELOPE_VERSION,
            "alg": ALG,
            "key_id": key_id,
            "nonce": STANDARD.encode(nonce),
            "ciphertext": STANDARD.encode(ciphertext),
        }))
    }

    /// Opens an envelope with the master key it names.
    pub fn decrypt(&self, envelope: &Value) -> Result<Secret, CryptoError> {
        if !envelope.is_object() {
            return Err(CryptoError::MalformedEnvelope(
                "not a JSON object".to_string(),
            ));
        }
        match field(envelope, "v")?.as_u64() {
            Some(ENVELOPE_VERSION) => {}
            _ => {
                return Err(CryptoError::UnsupportedEnvelope(format!(
                    "version {} (this build reads version {ENVELOPE_VERSION})",
                    field(envelope, "v")?
                )))
            }
        }
        let alg = str_field(envelope, "alg")?;
        if alg != ALG {
            return Err(CryptoError::UnsupportedEnvelope(format!(
                "algorithm `{alg}` (this build reads `{ALG}`)"
            )));
        }
        let key_id = str_field(envelope, "key_id")?;
        let nonce = decode_b64(str_field(envelope, "nonce")?)
            .ok_or_else(|| CryptoError::MalformedEnvelope("`nonce` is not base64".to_string()))?;
        if nonce.len() != NONCE_LEN {
            return Err(CryptoError::MalformedEnvelope(format!(
                "`nonce` is {} bytes, expected {NONCE_LEN}",
                nonce.len()
            )));
        }
        let ciphertext = decode_b64(str_field(envelope, "ciphertext")?).ok_or_else(|| {
            CryptoError::MalformedEnvelope("`ciphertext` is not base64".to_string())
        })?;
        let Some((_, cipher)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            return Err(CryptoError::UnknownKeyId {
                key_id: key_id.to_string(),
                configured: self.keys.iter().map(|(id, _)| id.clone()).collect(),
            });
        };
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: AAD,
                },
            )
            .map_err(|_| CryptoError::Decrypt {
                key_id: key_id.to_string(),
            })?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::NotUtf8)?;
        Ok(Secret::new(text))
    }

    /// A fresh master key: base64 of 32 random bytes (for docs and tooling).
    pub fn generate_key() -> String {
        let mut key = [0u8; KEY_LEN];
        rand::thread_rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }
}

/// The key id an envelope names, if it names one (to find envelopes still sealed with an old
/// master key).
pub fn envelope_key_id(envelope: &Value) -> Option<&str> {
    envelope.get("key_id").and_then(Value::as_str)
}

/// Display form of a credential: a short alphabetic lead such as `sk-` (only on long secrets)
/// and at most the last 4 characters, e.g. `sk-…abcd`. Short secrets show fewer characters,
/// very short ones none.
pub fn preview(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    let tail_len = (n / 4).min(4);
    let lead_len = if n >= 16 {
        chars
            .iter()
            .position(|c| !c.is_ascii_alphabetic())
            .filter(|&p| (1..=5).contains(&p) && matches!(chars[p], '-' | '_'))
            .map_or(0, |p| p + 1)
    } else {
        0
    };
    let mut out: String = chars[..lead_len].iter().collect();
    out.push('…');
    out.extend(&chars[n - tail_len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pairs: &[(&str, [u8; 32])]) -> String {
        pairs
            .iter()
            .map(|(id, k)| format!("{id}:{}", STANDARD.encode(k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn round_trip() {
        let keys = MasterKeys::parse(&spec(&[("k1", [7; 32])])).expect("keys");
        let env = keys.encrypt("sk-live-secret").expect("encrypt");
        assert_eq!(env["v"], 1);
        assert_eq!(env["alg"], "chacha20poly1305");
        assert_eq!(env["key_id"], "k1");
        assert_eq!(
            STANDARD
                .decode(env["nonce"].as_str().expect("nonce"))
                .expect("b64")
                .len(),
            12
        );
        assert!(!env.to_string().contains("sk-live-secret"));
        assert_eq!(
            keys.decrypt(&env).expect("decrypt").expose(),
            "sk-live-secret"
        );
        // Fresh nonce every time.
        let again = keys.encrypt("sk-live-secret").expect("encrypt");
        assert_ne!(env["nonce"], again["nonce"]);
        assert_ne!(env["ciphertext"], again["ciphertext"]);
        // Empty and non-ASCII secrets survive.
        for s in ["", "clé-ünïcode-✓"] {
            let e = keys.encrypt(s).expect("encrypt");
            assert_eq!(keys.decrypt(&e).expect("decrypt").expose(), s);
        }
    }

    #[test]
    fn rotation_keeps_old_envelopes_readable() {
        let old = MasterKeys::parse(&spec(&[("2024", [1; 32])])).expect("old");
        let sealed_old = old.encrypt("sk-old").expect("encrypt");
        let new = MasterKeys::parse(&spec(&[("2024", [1; 32]), ("2025", [2; 32])])).expect("new");
        assert_eq!(new.newest_id(), "2025");
        assert_eq!(new.decrypt(&sealed_old).expect("old").expose(), "sk-old");
        let sealed_new = new.encrypt("sk-new").expect("encrypt");
        assert_eq!(sealed_new["key_id"], "2025");
        assert_eq!(envelope_key_id(&sealed_new), Some("2025"));
        assert_eq!(new.decrypt(&sealed_new).expect("new").expose(), "sk-new");
        // The old set cannot read what the newest key sealed.
        assert!(matches!(
            old.decrypt(&sealed_new),
            Err(CryptoError::UnknownKeyId { .. })
        ));
    }

    #[test]
    fn tampered_envelopes_fail() {
        let keys = MasterKeys::parse(&spec(&[("k1", [9; 32])])).expect("keys");
        let env = keys.encrypt("sk-secret").expect("encrypt");

        let mut ct = STANDARD
            .decode(env["ciphertext"].as_str().expect("ct"))
            .expect("b64");
        ct[0] ^= 1;
        let mut bad = env.clone();
        bad["ciphertext"] = json!(STANDARD.encode(&ct));
        assert_eq!(
            keys.decrypt(&bad).map(|s| s.expose().to_string()),
            Err(CryptoError::Decrypt {
                key_id: "k1".into()
            })
        );

        let mut nonce = STANDARD
            .decode(env["nonce"].as_str().expect("nonce"))
            .expect("b64");
        nonce[11] ^= 0x80;
        let mut bad = env.clone();
        bad["nonce"] = json!(STANDARD.encode(&nonce));
        assert!(matches!(
            keys.decrypt(&bad),
            Err(CryptoError::Decrypt { .. })
        ));

        // Same id, different key material.
        let other = MasterKeys::parse(&spec(&[("k1", [8; 32])])).expect("keys");
        assert!(matches!(
            other.decrypt(&env),
            Err(CryptoError::Decrypt { .. })
        ));

        let mut bad = env.clone();
        bad["alg"] = json!("aes-256-gcm");
        assert!(matches!(
            keys.decrypt(&bad),
            Err(CryptoError::UnsupportedEnvelope(_))
        ));
        let mut bad = env.clone();
        bad["v"] = json!(2);
        assert!(matches!(
            keys.decrypt(&bad),
            Err(CryptoError::UnsupportedEnvelope(_))
        ));
        let mut bad = env.clone();
        bad["nonce"] = json!("bm9uY2U=");
        assert!(matches!(
            keys.decrypt(&bad),
            Err(CryptoError::MalformedEnvelope(_))
        ));
        let mut bad = env;
        if let Some(o) = bad.as_object_mut() {
            o.remove("ciphertext");
        }
        assert!(matches!(
            keys.decrypt(&bad),
            Err(CryptoError::MalformedEnvelope(_))
        ));
        assert!(matches!(
            keys.decrypt(&json!("x")),
            Err(CryptoError::MalformedEnvelope(_))
        ));
    }

    #[test]
    fn unknown_key_id_is_named() {
        let a = MasterKeys::parse(&spec(&[("a", [1; 32])])).expect("keys");
        let b = MasterKeys::parse(&spec(&[("b", [1; 32]), ("c", [3; 32])])).expect("keys");
        let env = a.encrypt("sk-x").expect("encrypt");
        let err = b.decrypt(&env).expect_err("unknown key id");
        assert_eq!(
            err,
            CryptoError::UnknownKeyId {
                key_id: "a".into(),
                configured: vec!["b".into(), "c".into()]
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("master key `a`"), "{msg}");
        assert!(msg.contains("configured: b, c"), "{msg}");
        assert!(msg.contains("WHARF_MASTER_KEYS"), "{msg}");
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let material = [0xAB; 32];
        let b64 = STANDARD.encode(material);
        let keys = MasterKeys::parse(&format!("main:{b64}")).expect("keys");
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("main"), "{dbg}");
        assert!(!dbg.contains(&b64), "{dbg}");
        assert!(!dbg.contains(&b64[..8]), "{dbg}");
        assert!(!dbg.to_ascii_lowercase().contains("abab"), "{dbg}");
        assert!(!dbg.contains("171"), "{dbg}");
        let short = STANDARD.encode([0xAB; 16]);
        let msg = MasterKeys::parse(&format!("main:{short}"))
            .expect_err("short key")
            .to_string();
        assert!(!msg.contains(&short), "{msg}");
        assert!(msg.contains("16 bytes"), "{msg}");
    }

    #[test]
    fn parse_rules() {
        let k = STANDARD.encode([5u8; 32]);
        let url = URL_SAFE_NO_PAD.encode([0xFBu8; 32]);
        let keys = MasterKeys::parse(&format!(" a:{k} , b:{url} ,")).expect("keys");
        assert_eq!(keys.key_ids(), vec!["a", "b"]);
        assert_eq!(keys.newest_id(), "b");
        for bad in [
            format!("a{k}"),
            format!(":{k}"),
            format!("a b:{k}"),
            format!("a:{k},a:{k}"),
            "a:not base64!".to_string(),
        ] {
            assert!(
                matches!(
                    MasterKeys::parse(&bad),
                    Err(CryptoError::InvalidMasterKeys(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            MasterKeys::parse(" , "),
            Err(CryptoError::NotConfigured)
        ));
        let generated = MasterKeys::generate_key();
        assert_eq!(STANDARD.decode(&generated).expect("b64").len(), 32);
        assert_ne!(generated, MasterKeys::generate_key());
        MasterKeys::parse(&format!("gen:{generated}")).expect("generated key parses");
    }

    #[test]
    fn previews_reveal_at_most_four_characters() {
        assert_eq!(preview("sk-proj-0123456789abcdefWXYZ"), "sk-…WXYZ");
        assert_eq!(preview("sk-ant-api03-xxxxxxxxxxxxabcd"), "sk-…abcd");
        assert_eq!(preview("AIzaSyA0123456789abcdefgh1234"), "…1234");
        assert_eq!(preview("gsk_0123456789abcdefQRST"), "gsk_…QRST");
        assert_eq!(preview("sk-short"), "…rt");
        assert_eq!(preview("abc"), "…");
        assert_eq!(preview(""), "…");
        assert_eq!(preview("ééééééééééééééééé✓"), "…ééé✓");
    }
}
