//! Incremental Server-Sent Events parser: a pure function of the bytes, tolerant to any split.
//!
//! [`SseParser::feed`] takes each network chunk as it arrives and hands back every *complete*
//! event (its raw bytes, blank-line terminator included) exactly once; an incomplete tail is kept
//! for the next chunk. Line terminators may be LF, CRLF or CR (Gemini uses CRLF). Only the tail of
//! an unfinished event is copied; complete events inside a chunk are borrowed from it.

use std::borrow::Cow;

/// Upper bound on one event kept in memory; a longer "event" is dropped (and counted).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Incremental SSE framer.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the unfinished event.
    tail: Vec<u8>,
    /// Whether the last byte seen was a CR (a following LF belongs to it).
    last_cr: bool,
    /// Whether the current line so far is empty (we are at a line start).
    at_line_start: bool,
    /// Whether the unfinished event has any non-terminator byte.
    has_content: bool,
    /// Events dropped for exceeding [`MAX_EVENT_BYTES`].
    pub oversized: u64,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser {
            at_line_start: true,
            ..Default::default()
        }
    }

    /// Feeds one chunk; calls `on_event` with the raw bytes of each event completed by it.
    /// Blank lines between events (keep-alive padding) produce no event.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut start = 0; // start of the unconsumed part of `chunk`
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match b {
                b'\n' if self.last_cr => {
                    // Second half of CRLF: no new line.
                    self.last_cr = false;
                }
                b'\n' | b'\r' => {
                    self.last_cr = b == b'\r';
                    if self.at_line_start {
                        // A blank line: dispatch the event, if any.
                        let mut end = i + 1;
                        if b == b'\r' && chunk.get(i + 1) == Some(&b'\n') {
                            end += 1;
                            i += 1;
                            self.last_cr = false;
                        }
                        if self.has_content {
                            if self.tail.is_empty() {
                                on_event(&chunk[start..end]);
                            } else {
                                self.tail.extend_from_slice(&chunk[start..end]);
                                on_event(&self.tail);
                                self.tail.clear();
                            }
                        } else {
                            self.tail.clear();
                        }
                        start = end;
                        self.has_content = false;
                    }
                    self.at_line_start = true;
                }
                _ => {
                    self.last_cr = false;
                    self.at_line_start = false;
                    self.has_content = true;
                }
            }
            i += 1;
        }
        if start < chunk.len() {
            if !self.has_content && self.tail.is_empty() {
                // Only line terminators left over: nothing to keep but the CR state.
                return;
            }
            if self.tail.len() + (chunk.len() - start) > MAX_EVENT_BYTES {
                self.oversized += 1;
                self.tail.clear();
                self.has_content = false;
                return;
            }
            self.tail.extend_from_slice(&chunk[start..]);
        }
    }

    /// Bytes of an unfinished event (a stream that ends here was cut mid-event).
    pub fn pending(&self) -> &[u8] {
        &self.tail
    }
}

/// The fields of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// `event:` field, if any.
    pub event: Option<&'a str>,
    /// `data:` lines joined with `\n`.
    pub data: Cow<'a, [u8]>,
}

/// Splits a raw event into its `event` and `data` fields (comments and other fields ignored).
pub fn parse_event(raw: &[u8]) -> Event<'_> {
    let mut event = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in raw.split(|c| *c == b'\n' || *c == b'\r') {
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                data = Some(match data {
                    None => Cow::Borrowed(value),
                    Some(prev) => {
                        let mut v = prev.into_owned();
                        v.push(b'\n');
                        v.extend_from_slice(value);
                        Cow::Owned(v)
                    }
                })
            }
            b"event" => event = std::str::from_utf8(value).ok(),
            _ => {}
        }
    }
    Event {
        event,
        data: data.unwrap_or(Cow::Borrowed(b"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| out.push(e.to_vec()));
        }
        out
    }

    #[test]
    fn lf_events() {
        let ev = events(&[b"data: a\n\ndata: b\n\n"]);
        assert_eq!(ev, vec![b"data: a\n\n".to_vec(), b"data: b\n\n".to_vec()]);
    }

    #[test]
    fn crlf_events_split_everywhere() {
        let s = b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n";
        let fields = |evs: Vec<Vec<u8>>| -> Vec<(Option<String>, Vec<u8>)> {
            evs.iter()
                .map(|e| {
                    let p = parse_event(e);
                    (p.event.map(str::to_string), p.data.into_owned())
                })
                .collect()
        };
        let whole = fields(events(&[s]));
        assert_eq!(whole.len(), 2);
        for cut in 0..s.len() {
            assert_eq!(
                fields(events(&[&s[..cut], &s[cut..]])),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn padding_blank_lines_are_not_events() {
        assert_eq!(events(&[b"\n\n\ndata: a\n\n\n"]).len(), 1);
    }

    #[test]
    fn parse_fields() {
        let e = parse_event(b"event: response.completed\ndata: {\"a\":1}\n: comment\n\n");
        assert_eq!(e.event, Some("response.completed"));
        assert_eq!(&*e.data, b"{\"a\":1}");
        let e = parse_event(b"data:x\ndata: y\n\n");
        assert_eq!(&*e.data, b"x\ny");
    }
}
