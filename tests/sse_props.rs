//! Property tests: any chunking of a recorded SSE stream yields the same events and the same
//! usage, in passthrough and in usage-chunk-stripping mode, with LF and CRLF framing.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use wharf::proxy::tap::{ResponseTap, TapMode};
use wharf::sse::{parse_event, SseParser};

const CHAT: &str = include_str!("fixtures/openai_chat_stream.sse");
const RESPONSES: &str = include_str!("fixtures/openai_responses_stream.sse");

fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(data[prev..c].to_vec());
        prev = c;
    }
    out.push(data[prev..].to_vec());
    out
}

fn events(chunks: &[Vec<u8>]) -> Vec<(Option<String>, Vec<u8>)> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |raw| {
            let e = parse_event(raw);
            out.push((e.event.map(str::to_string), e.data.into_owned()));
        });
    }
    out
}

fn tap(mode: TapMode, chunks: &[Vec<u8>]) -> (ResponseTap, Vec<u8>) {
    let mut t = ResponseTap::new(mode);
    let mut out = Vec::new();
    for c in chunks {
        let mut b = Some(Bytes::from(c.clone()));
        t.on_chunk(&mut b, false);
        out.extend_from_slice(b.as_deref().unwrap_or_default());
    }
    let mut b = None;
    t.on_chunk(&mut b, true);
    out.extend_from_slice(b.as_deref().unwrap_or_default());
    (t, out)
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0usize..10_000, 0..40)) {
        for text in [CHAT.to_string(), RESPONSES.to_string(), crlf(CHAT), crlf(RESPONSES)] {
            let whole = events(&[text.as_bytes().to_vec()]);
            prop_assert!(whole.len() > 5);
            prop_assert_eq!(events(&split(text.as_bytes(), &cuts)), whole);
        }
    }

    #[test]
    fn any_chunking_gives_the_same_usage(cuts in proptest::collection::vec(0usize..10_000, 0..40)) {
        let sse = TapMode::Sse { strip_usage_chunk: false };
        for text in [CHAT.to_string(), RESPONSES.to_string(), crlf(CHAT)] {
            let (reference, _) = tap(sse, &[text.as_bytes().to_vec()]);
            let (t, out) = tap(sse, &split(text.as_bytes(), &cuts));
            prop_assert!(reference.tokens.is_some());
            prop_assert_eq!(t.tokens, reference.tokens);
            prop_assert_eq!(t.content_events, reference.content_events);
            prop_assert!(t.done);
            // Passthrough mode never changes a byte.
            prop_assert_eq!(out, text.as_bytes().to_vec());
        }
    }

    #[test]
    fn stripping_removes_exactly_the_usage_chunk(cuts in proptest::collection::vec(0usize..10_000, 0..40)) {
        let (t, out) = tap(TapMode::Sse { strip_usage_chunk: true }, &split(CHAT.as_bytes(), &cuts));
        let usage = t.tokens.unwrap();
        prop_assert_eq!((usage.input, usage.output), (8, 12));
        let expected: Vec<_> = events(&[CHAT.as_bytes().to_vec()])
            .into_iter()
            .filter(|(_, d)| !String::from_utf8_lossy(d).contains("\"choices\":[]"))
            .collect();
        prop_assert_eq!(events(&[out]), expected);
    }
}
