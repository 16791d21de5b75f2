//! Detectors: one multi-pattern automaton pass over the text, then a cheap validation of each
//! candidate (Luhn, digit counts, entropy, context).
//!
//! All patterns are compiled together into one `regex_automata::meta::Regex` (leftmost-first, so
//! the order of [`PATTERNS`] is the priority between detectors that match at the same position).
//! Every pattern is ASCII-only and has a bounded maximum length; the bound is what lets
//! [`super::stream::StreamRedactor`] decide, from a bounded tail, when held-back bytes can no longer
//! be part of a match.

use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Phone,
    CardNumber,
    OpenaiKey,
    AnthropicKey,
    AwsAccessKey,
    AwsSecretKey,
    GcpApiKey,
    PrivateKey,
    GithubToken,
    SlackToken,
    StripeKey,
    Jwt,
    SecretToken,
}

/// Detector families, for actions that apply to a whole family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Personal data: emails, phone numbers, card numbers.
    Pii,
    /// Credentials: provider and cloud keys, JWTs, secret-like tokens.
    Secret,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 14] = [
        Kind::Email,
        Kind::Phone,
        Kind::CardNumber,
        Kind::OpenaiKey,
        Kind::AnthropicKey,
        Kind::AwsAccessKey,
        Kind::AwsSecretKey,
        Kind::GcpApiKey,
        Kind::PrivateKey,
        Kind::GithubToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::Jwt,
        Kind::SecretToken,
    ];

    /// The wire name (also the placeholder suffix: `[REDACTED:email]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::CardNumber => "card_number",
            Kind::OpenaiKey => "openai_key",
            Kind::AnthropicKey => "anthropic_key",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::AwsSecretKey => "aws_secret_key",
            Kind::GcpApiKey => "gcp_api_key",
            Kind::PrivateKey => "private_key",
            Kind::GithubToken => "github_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::Jwt => "jwt",
            Kind::SecretToken => "secret_token",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The family.
    pub fn category(self) -> Category {
        match self {
            Kind::Email | Kind::Phone | Kind::CardNumber => Category::Pii,
            _ => Category::Secret,
        }
    }

    /// The typed placeholder that replaces a redacted finding.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Email => "[REDACTED:email]",
            Kind::Phone => "[REDACTED:phone]",
            Kind::CardNumber => "[REDACTED:card_number]",
            Kind::OpenaiKey => "[REDACTED:openai_key]",
            Kind::AnthropicKey => "[REDACTED:anthropic_key]",
            Kind::AwsAccessKey => "[REDACTED:aws_access_key]",
            Kind::AwsSecretKey => "[REDACTED:aws_secret_key]",
            Kind::GcpApiKey => "[REDACTED:gcp_api_key]",
            Kind::PrivateKey => "[REDACTED:private_key]",
            Kind::GithubToken => "[REDACTED:github_token]",
            Kind::SlackToken => "[REDACTED:slack_token]",
            Kind::StripeKey => "[REDACTED:stripe_key]",
            Kind::Jwt => "[REDACTED:jwt]",
            Kind::SecretToken => "[REDACTED:secret_token]",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: what, where (byte range in the scanned text) and how sure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    /// 0.0–1.0.
    pub confidence: f32,
}

/// A set of kinds (bit set indexed by [`Kind`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindSet(u32);

impl KindSet {
    pub fn all() -> KindSet {
        KindSet((1 << Kind::ALL.len()) - 1)
    }
    pub fn none() -> KindSet {
        KindSet(0)
    }
    pub fn insert(&mut self, k: Kind) {
        self.0 |= 1 << k.index();
    }
    pub fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k.index()) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Kind> for KindSet {
    fn from_iter<I: IntoIterator<Item = Kind>>(iter: I) -> Self {
        let mut s = KindSet::none();
        for k in iter {
            s.insert(k);
        }
        s
    }
}

/// The patterns, in priority order (leftmost-first: at one start position the earlier wins).
/// `{TOKEN_MIN}` is replaced by the configured minimum length of a secret-like token minus one.
const PATTERNS: &[(Kind, &str)] = &[
    (
        Kind::PrivateKey,
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\\\r\n]{0,3400}(?:-----END (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----)?",
    ),
    (
        Kind::AwsSecretKey,
        r#"(?i:aws)[A-Za-z_. -]{0,20}(?i:secret)[A-Za-z_. -]{0,20}["']?[ \t]{0,3}(?::|=|:=|=>)[ \t]{0,3}["']?[A-Za-z0-9/+=]{40}"#,
    ),
    (Kind::AnthropicKey, r"\bsk-ant-[A-Za-z0-9_-]{20,200}"),
    (
        Kind::OpenaiKey,
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",
    ),
    (
        Kind::StripeKey,
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,128}",
    ),
    (
        Kind::AwsAccessKey,
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[A-Z0-9]{16}\b",
    ),
    (Kind::GcpApiKey, r"\bAIza[0-9A-Za-z_-]{35}"),
    (
        Kind::GithubToken,
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b",
    ),
    (Kind::GithubToken, r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    (Kind::SlackToken, r"\bxox[abpors]-[A-Za-z0-9-]{10,250}"),
    (
        Kind::Jwt,
        r"\beyJ[A-Za-z0-9_-]{5,600}\.eyJ[A-Za-z0-9_-]{5,2000}\.[A-Za-z0-9_-]{10,700}",
    ),
    (
        Kind::Email,
        r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,6}[A-Za-z]{2,24}\b",
    ),
    (Kind::CardNumber, r"\b[0-9](?:[ -]?[0-9]){12,18}\b"),
    (
        Kind::Phone,
        r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}[0-9]\b",
    ),
    (
        Kind::Phone,
        r"(?:\(\b[0-9]{2,4}\)|\b[0-9]{2,4})[ -]?[0-9]{3,4}[ -][0-9]{3,4}\b",
    ),
    (Kind::Phone, r"\b[0-9]{3}\.[0-9]{3}\.[0-9]{4}\b"),
    (Kind::Phone, r"\b0[1-9](?:[ .-][0-9]{2}){4}\b"),
    (
        Kind::SecretToken,
        r"\b[A-Za-z0-9][A-Za-z0-9_+-]{TOKEN_MIN,255}",
    ),
];

/// Tuning of the detectors.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Kinds to look for.
    pub kinds: KindSet,
    /// Minimum length of a secret-like token (16–256).
    pub token_min_len: usize,
    /// Minimum Shannon entropy (bits per byte) of a secret-like token.
    pub token_min_entropy: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            kinds: KindSet::all(),
            token_min_len: 32,
            token_min_entropy: 4.0,
        }
    }
}

/// The compiled detectors. Cheap to share (`Arc`), safe to use from many threads.
pub struct Detectors {
    regex: Regex,
    /// The same automaton as a lazy DFA, for the stream redactor's "could a match still start
    /// here" question.
    dfa: DFA,
    dfa_caches: Mutex<Vec<DfaCache>>,
    kinds: Vec<Kind>,
    opts: DetectorOptions,
    max_len: usize,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("kinds", &self.kinds)
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// The outcome of looking at one candidate.
pub(crate) struct Step {
    /// Where the search resumes.
    pub end: usize,
    pub start: usize,
    /// `None`: the automaton matched but validation rejected the candidate.
    pub finding: Option<Finding>,
}

impl Detectors {
    /// Compiles the enabled detectors.
    pub fn new(opts: DetectorOptions) -> Result<Detectors, String> {
        if !(16..=256).contains(&opts.token_min_len) {
            return Err("token_min_len must be between 16 and 256".into());
        }
        let token_min = (opts.token_min_len - 1).to_string();
        let mut kinds = Vec::new();
        let mut pats = Vec::new();
        for (k, p) in PATTERNS {
            if opts.kinds.contains(*k) {
                kinds.push(*k);
                pats.push(p.replace("TOKEN_MIN", &token_min));
            }
        }
        let syn = syntax::Config::new().unicode(false).utf8(true);
        let mut max_len = 0usize;
        for p in &pats {
            let hir = syntax::parse_with(p, &syn).map_err(|e| e.to_string())?;
            let m = hir
                .properties()
                .maximum_len()
                .ok_or_else(|| format!("unbounded detector pattern {p}"))?;
            max_len = max_len.max(m);
        }
        // With nothing enabled, compile a pattern that never matches so the API stays uniform.
        if pats.is_empty() {
            pats.push(r"[a&&b]".to_string());
        }
        let regex = Regex::builder()
            .syntax(syn)
            .configure(
                Regex::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .hybrid_cache_capacity(4 << 20),
            )
            .build_many(&pats)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            .syntax(syn)
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .cache_capacity(1 << 20)
                    .minimum_cache_clear_count(None),
            )
            .build_many(&pats)
            .map_err(|e| e.to_string())?;
        Ok(Detectors {
            regex,
            dfa,
            dfa_caches: Mutex::new(Vec::new()),
            kinds,
            opts,
            max_len,
        })
    }

    /// The longest possible match of any enabled detector, in bytes.
    pub fn max_match_len(&self) -> usize {
        self.max_len
    }

    /// The options this set was compiled with.
    pub fn options(&self) -> &DetectorOptions {
        &self.opts
    }

    /// All findings in `text`, left to right, non-overlapping.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let hay = text.as_bytes();
        let mut at = 0;
        while let Some(step) = self.next(hay, at, hay.len()) {
            if let Some(f) = step.finding {
                out.push(f);
            }
            at = step.end;
        }
        out
    }

    /// The next candidate starting at or after `at` in `hay[..end]` (bytes before `at` are
    /// look-behind context only).
    pub(crate) fn next(&self, hay: &[u8], at: usize, end: usize) -> Option<Step> {
        if at >= end {
            return None;
        }
        let input = Input::new(&hay[..end]).range(at..end);
        let m = self.regex.search(&input)?;
        let kind = *self.kinds.get(m.pattern().as_usize())?;
        let (s, e) = (m.start(), m.end());
        let finding = self.validate(kind, hay, s, e);
        Some(Step {
            end: e.max(s + 1),
            start: s,
            finding,
        })
    }

    fn validate(&self, kind: Kind, hay: &[u8], s: usize, e: usize) -> Option<Finding> {
        let text = &hay[s..e];
        let f = |confidence: f32| {
            Some(Finding {
                kind,
                start: s,
                end: e,
                confidence,
            })
        };
        match kind {
            Kind::CardNumber => valid_card(text).then_some(()).and(f(0.95)),
            Kind::Phone => phone_confidence(hay, s, e).and_then(f),
            Kind::Email => valid_email(hay, s, e).then_some(()).and(f(0.95)),
            Kind::SecretToken => token_confidence(text, self.opts.token_min_entropy).and_then(f),
            Kind::Jwt => f(if jwt_header_ok(text) { 0.99 } else { 0.7 }),
            Kind::AwsSecretKey => {
                // Only the 40-character secret, not the `aws_secret_access_key =` around it.
                Some(Finding {
                    kind,
                    start: e - 40,
                    end: e,
                    confidence: 0.9,
                })
            }
            Kind::PrivateKey => f(0.99),
            // Prefixed keys are random: a body without a digit is a word ("sk-this-is-a-name").
            _ => text
                .iter()
                .any(u8::is_ascii_digit)
                .then_some(())
                .and(f(0.98)),
        }
    }

    /// The first position `q >= from` at which a match could still start if more bytes were
    /// appended to `hay` (the anchored automaton from `q` is not dead at the end of `hay`), or
    /// `hay.len()` when there is none. Positions more than the longest match before the end are
    /// dead by construction and not examined.
    pub(crate) fn first_live(&self, hay: &[u8], from: usize) -> usize {
        let lo = from.max(hay.len().saturating_sub(self.max_len + 1));
        if lo >= hay.len() {
            return hay.len();
        }
        let mut cache = self
            .dfa_caches
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_else(|| self.dfa.create_cache());
        let mut live = hay.len();
        for q in lo..hay.len() {
            // Every pattern starts with an ASCII byte.
            if hay[q].is_ascii() && self.alive(&mut cache, hay, q) {
                live = q;
                break;
            }
        }
        if let Ok(mut v) = self.dfa_caches.lock() {
            if v.len() < 64 {
                v.push(cache);
            }
        }
        live
    }

    fn alive(&self, cache: &mut DfaCache, hay: &[u8], at: usize) -> bool {
        let input = Input::new(hay).range(at..hay.len()).anchored(Anchored::Yes);
        let Ok(mut sid) = self.dfa.start_state_forward(cache, &input) else {
            return true;
        };
        for &b in &hay[at..] {
            match self.dfa.next_state(cache, sid, b) {
                Ok(n) => sid = n,
                Err(_) => return true,
            }
            if sid.is_dead() {
                return false;
            }
            if sid.is_quit() {
                return true;
            }
        }
        !sid.is_dead()
    }
}

/// Luhn checksum over the digits of `text`, 13–19 digits, an issuer-like first digit, and
/// separators (if any) used consistently.
pub fn valid_card(text: &[u8]) -> bool {
    let digits: Vec<u8> = text
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    if !matches!(digits[0], 2..=6) {
        return false;
    }
    if digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let has_space = text.contains(&b' ');
    let has_dash = text.contains(&b'-');
    if has_space && has_dash {
        return false;
    }
    luhn(&digits)
}

/// The Luhn check.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn phone_confidence(hay: &[u8], s: usize, e: usize) -> Option<f32> {
    let text = &hay[s..e];
    let digits = text.iter().filter(|b| b.is_ascii_digit()).count();
    // Part of a dotted or longer numeric run (IP address, version, decimal).
    let before = s.checked_sub(1).and_then(|i| hay.get(i)).copied();
    let before2 = s.checked_sub(2).and_then(|i| hay.get(i)).copied();
    let after = hay.get(e).copied();
    let after2 = hay.get(e + 1).copied();
    let digit = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit());
    if (matches!(before, Some(b'.' | b',' | b'/' | b':')) && digit(before2))
        || (matches!(after, Some(b'.' | b',' | b'/' | b':')) && digit(after2))
    {
        return None;
    }
    if text.first() == Some(&b'+') {
        return (8..=15).contains(&digits).then_some(0.9);
    }
    if !(10..=12).contains(&digits) {
        return None;
    }
    let groups: Vec<&[u8]> = text
        .split(|b| !b.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    // Thousands grouping ("100 000 000") rather than a phone number.
    if groups.len() >= 3 && groups[1..].iter().all(|g| g.len() == 3) {
        return None;
    }
    // A list of years ("2019 2020 2021").
    if groups
        .iter()
        .all(|g| g.len() == 4 && (g.starts_with(b"19") || g.starts_with(b"20")))
    {
        return None;
    }
    Some(0.7)
}

fn valid_email(hay: &[u8], s: usize, e: usize) -> bool {
    let text = &hay[s..e];
    if text.windows(2).any(|w| w == b"..") {
        return false;
    }
    // `git@github.com:org/repo`: an SSH remote, not a mailbox.
    if hay.get(e) == Some(&b':') {
        return false;
    }
    let tld = text.rsplit(|b| *b == b'.').next().unwrap_or_default();
    const FILE_EXT: &[&[u8]] = &[
        b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"css", b"js", b"ts", b"txt", b"md",
        b"json", b"html", b"pdf", b"zip",
    ];
    !FILE_EXT.iter().any(|x| tld.eq_ignore_ascii_case(x))
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(text: &[u8]) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in text {
        counts[usize::from(*b)] += 1;
    }
    let n = text.len() as f32;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

fn token_confidence(text: &[u8], min_entropy: f32) -> Option<f32> {
    let has_digit = text.iter().any(|b| b.is_ascii_digit());
    let has_alpha = text.iter().any(|b| b.is_ascii_alphabetic());
    if !has_digit || !has_alpha {
        return None;
    }
    let h = shannon_entropy(text);
    if h < min_entropy {
        return None;
    }
    Some((0.5 + (h - min_entropy) * 0.25).min(0.9))
}

fn jwt_header_ok(text: &[u8]) -> bool {
    use base64::Engine;
    let header = text.split(|b| *b == b'.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .is_some_and(|h| h.windows(5).any(|w| w == b"\"alg\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known() {
        assert!(valid_card(b"4111 1111 1111 1111"));
        assert!(!valid_card(b"4111 1111 1111 1112"));
    }

    #[test]
    fn max_len_is_bounded() {
        let d = Detectors::new(DetectorOptions::default()).expect("compile");
        assert!(d.max_match_len() < 4096, "{}", d.max_match_len());
    }
}
