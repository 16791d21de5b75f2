//! Property tests for stream translation: any chunking of a recorded Anthropic or Gemini stream
//! yields the same OpenAI chunks (as JSON, `created` aside), the same usage and the same end
//! state as the whole stream fed at once; LF and CRLF framing translate alike; tool-call
//! argument deltas always concatenate to valid JSON.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::Value;
use wharf::translate::{StreamTranslator, Target};
use wharf::usage::Tokens;

const ANTHROPIC: &str = include_str!("fixtures/anthropic_stream.sse");
const ANTHROPIC_TOOL: &str = include_str!("fixtures/anthropic_tool_stream.sse");
const GEMINI: &str = include_str!("fixtures/gemini_stream.sse");
const GEMINI_TOOL: &str = include_str!("fixtures/translate_gemini_tool_stream.sse");

const FIXTURES: [(Target, &str); 4] = [
    (Target::Anthropic, ANTHROPIC),
    (Target::Anthropic, ANTHROPIC_TOOL),
    (Target::Gemini, GEMINI),
    (Target::Gemini, GEMINI_TOOL),
];

/// Splits `data` at the given cut points (taken modulo its length).
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

/// What a translation produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Each event's payload as JSON (`created` zeroed), `[DONE]` as a string.
    events: Vec<Value>,
    tokens: Option<Tokens>,
    done: bool,
    content_events: u64,
}

fn translate(target: Target, chunks: &[Vec<u8>], include_usage: bool) -> Outcome {
    let mut t = StreamTranslator::new(target, "wharf-model", include_usage);
    let mut out = BytesMut::new();
    for c in chunks {
        t.feed(c, &mut out);
        // Only whole events are ever written.
        assert!(
            out.is_empty() || out.ends_with(b"\n\n"),
            "partial event written"
        );
    }
    t.finish(&mut out);
    let text = std::str::from_utf8(&out).expect("utf8");
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").expect("one data line per event");
            assert!(!data.contains('\n'), "one line per event");
            if data == "[DONE]" {
                return Value::String(data.to_owned());
            }
            let mut v: Value = serde_json::from_str(data).expect("event is JSON");
            if let Some(created) = v.get_mut("created") {
                *created = Value::from(0);
            }
            v
        })
        .collect();
    Outcome {
        events,
        tokens: t.tokens(),
        done: t.done(),
        content_events: t.content_events(),
    }
}

/// Concatenated argument fragments per tool-call index.
fn tool_arguments(events: &[Value]) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for e in events {
        let calls = e["choices"][0]["delta"]["tool_calls"].as_array();
        for call in calls.into_iter().flatten() {
            let i = call["index"].as_u64().expect("index") as usize;
            if args.len() <= i {
                args.resize(i + 1, String::new());
            }
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    args
}

#[test]
fn fixtures_translate_to_complete_streams() {
    for (target, fixture) in FIXTURES {
        let o = translate(target, &[fixture.as_bytes().to_vec()], true);
        assert!(o.done, "{target:?} stream reached its end");
        assert!(o.tokens.is_some());
        assert_eq!(o.events.last(), Some(&Value::String("[DONE]".into())));
        let finishes = o
            .events
            .iter()
            .filter(|e| e["choices"][0]["finish_reason"].is_string())
            .count();
        assert_eq!(finishes, 1);
    }
}

#[test]
fn byte_at_a_time_and_crlf_translate_alike() {
    for include_usage in [false, true] {
        for (target, fixture) in FIXTURES {
            let whole = translate(target, &[fixture.as_bytes().to_vec()], include_usage);
            let bytes: Vec<Vec<u8>> = fixture.bytes().map(|b| vec![b]).collect();
            assert_eq!(translate(target, &bytes, include_usage), whole);
            let lf = fixture.replace("\r\n", "\n");
            let crlf = lf.replace('\n', "\r\n");
            for variant in [lf, crlf] {
                assert_eq!(
                    translate(target, &[variant.into_bytes()], include_usage),
                    whole
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_translates_like_the_whole(
        cuts in proptest::collection::vec(any::<usize>(), 0..48),
        include_usage in any::<bool>(),
    ) {
        for (target, fixture) in FIXTURES {
            let data = fixture.as_bytes();
            let whole = translate(target, &[data.to_vec()], include_usage);
            let pieces = translate(target, &split(data, &cuts), include_usage);
            prop_assert_eq!(&pieces, &whole);
        }
    }

    #[test]
    fn tool_arguments_concatenate_to_json(
        cuts in proptest::collection::vec(any::<usize>(), 0..48),
    ) {
        for fixture in [ANTHROPIC_TOOL, GEMINI_TOOL] {
            let target = if fixture == ANTHROPIC_TOOL { Target::Anthropic } else { Target::Gemini };
            let o = translate(target, &split(fixture.as_bytes(), &cuts), false);
            let args = tool_arguments(&o.events);
            prop_assert!(!args.is_empty());
            for a in &args {
                let v: Value = serde_json::from_str(a).expect("arguments are valid JSON");
                prop_assert!(v.is_object());
            }
        }
    }
}
