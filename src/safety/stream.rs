//! Redaction of whole texts and of streamed text (successive SSE deltas).
//!
//! Both walk the text with the same procedure: find the leftmost candidate from the cursor,
//! validate it, emit it (redacted or not), continue after it. The stream redactor only emits a
//! candidate when it is *determined*: no continuation of the stream could change it. It holds back
//! the tail from the first position where a match could still start (asked of the lazy DFA of the
//! same patterns), and since every pattern has a bounded length that tail is never longer than the
//! longest match plus one byte (and the configured look-behind is validated to be at least that).
//! Hence the concatenated output equals [`redact`] of the concatenated input.

use super::detect::{Detectors, Finding, KindSet};
use std::borrow::Cow;
use std::sync::Arc;

/// A redacted text and everything that was found in it.
#[derive(Debug, Clone)]
pub struct Redacted<'a> {
    /// The text with the redacted findings replaced by typed placeholders.
    pub text: Cow<'a, str>,
    /// All findings (redacted or not), with byte ranges in the original text.
    pub findings: Vec<Finding>,
}

/// Emits `hay[start..end]` of a candidate, replacing the finding's range when it is redacted.
fn emit(out: &mut Vec<u8>, hay: &[u8], start: usize, end: usize, f: &Finding, redact: KindSet) {
    if redact.contains(f.kind) {
        out.extend_from_slice(&hay[start..f.start]);
        out.extend_from_slice(f.kind.placeholder().as_bytes());
        out.extend_from_slice(&hay[f.end..end]);
    } else {
        out.extend_from_slice(&hay[start..end]);
    }
}

/// Scans `text` and replaces the findings whose kind is in `redact`.
pub fn redact<'a>(det: &Detectors, text: &'a str, redact: KindSet) -> Redacted<'a> {
    let hay = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut findings = Vec::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(step) = det.next(hay, at, hay.len()) {
        if let Some(f) = step.finding {
            if redact.contains(f.kind) {
                let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
                o.extend_from_slice(&hay[copied..step.start]);
                emit(o, hay, step.start, step.end, &f, redact);
                copied = step.end;
            }
            findings.push(f);
        }
        at = step.end;
    }
    let text = match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.extend_from_slice(&hay[copied..]);
            Cow::Owned(String::from_utf8_lossy(&o).into_owned())
        }
    };
    Redacted { text, findings }
}

/// Redacts a text that arrives in pieces. Feed each delta with [`StreamRedactor::push`], then call
/// [`StreamRedactor::finish`]; the concatenation of what they return equals
/// `redact(whole text).text`, and at any time at most [`StreamRedactor::max_hold`] bytes are held.
#[derive(Debug)]
pub struct StreamRedactor {
    det: Arc<Detectors>,
    redact: KindSet,
    /// Unemitted bytes, preceded by at most one already emitted byte of look-behind context.
    buf: Vec<u8>,
    /// Bytes of `buf` already emitted.
    cursor: usize,
    /// Offset of `buf[0]` in the whole stream.
    base: usize,
    max_hold: usize,
    findings: Vec<Finding>,
}

impl StreamRedactor {
    /// A redactor over `det` that replaces the kinds in `redact` and holds back at most
    /// `max_hold` bytes (raised to the detectors' longest match plus one if smaller).
    pub fn new(det: Arc<Detectors>, redact: KindSet, max_hold: usize) -> StreamRedactor {
        let max_hold = max_hold.max(det.max_match_len() + 1);
        StreamRedactor {
            det,
            redact,
            buf: Vec::new(),
            cursor: 0,
            base: 0,
            max_hold,
            findings: Vec::new(),
        }
    }

    /// The most bytes this redactor ever holds back.
    pub fn max_hold(&self) -> usize {
        self.max_hold
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.buf.len() - self.cursor
    }

    /// Feeds one delta; returns the text that can be released now (possibly empty).
    pub fn push(&mut self, delta: &str) -> String {
        self.buf.extend_from_slice(delta.as_bytes());
        self.process(false)
    }

    /// Ends the stream; returns the held-back rest. (Text pushed afterwards is treated as a
    /// new stream that follows the old one: still redacted, never passed through.)
    pub fn finish(&mut self) -> String {
        self.process(true)
    }

    /// Findings so far, with byte ranges in the whole (unredacted) stream text.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Takes the findings recorded so far (e.g. to act on them per event).
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    fn process(&mut self, last: bool) -> String {
        let len = self.buf.len();
        let mut out = Vec::with_capacity(len - self.cursor);
        let mut cursor = self.cursor;
        let mut hold = if last {
            len
        } else {
            self.det.first_live(&self.buf, cursor)
        };
        loop {
            match self.det.next(&self.buf, cursor, len) {
                Some(step) if step.start < hold => {
                    out.extend_from_slice(&self.buf[cursor..step.start]);
                    match step.finding {
                        Some(mut f) => {
                            emit(&mut out, &self.buf, step.start, step.end, &f, self.redact);
                            f.start += self.base;
                            f.end += self.base;
                            self.findings.push(f);
                        }
                        None => out.extend_from_slice(&self.buf[step.start..step.end]),
                    }
                    cursor = step.end;
                    if cursor > hold {
                        hold = self.det.first_live(&self.buf, cursor);
                    }
                }
                _ => {
                    if hold > cursor {
                        out.extend_from_slice(&self.buf[cursor..hold]);
                        cursor = hold;
                    }
                    break;
                }
            }
        }
        debug_assert!(len - cursor <= self.max_hold);
        // Keep one emitted byte as look-behind context for word boundaries.
        if cursor > 1 {
            let drop = cursor - 1;
            self.buf.drain(..drop);
            self.base += drop;
            cursor = 1;
        }
        self.cursor = cursor;
        String::from_utf8_lossy(&out).into_owned()
    }
}
