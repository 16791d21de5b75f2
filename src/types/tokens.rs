//! Token counts as providers report them, and their cost.

use super::Pricing;
use serde::Serialize;
use serde_json::Value;

/// Token counts by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Input (prompt) tokens, cached ones included.
    pub input: u64,
    /// Output (completion) tokens, reasoning ones included.
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: u64,
    /// Output tokens spent on reasoning.
    pub reasoning: u64,
    /// Total as reported (or input + output).
    pub total: u64,
    /// Images generated (image endpoints).
    pub images: u64,
}

fn u(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

impl Tokens {
    /// Reads an OpenAI `usage` object: chat/completions (`prompt_tokens`, ...), Responses
    /// (`input_tokens`, ...) and embeddings (`prompt_tokens`, `total_tokens`).
    pub fn from_openai_usage(usage: &Value) -> Option<Tokens> {
        if !usage.is_object() {
            return None;
        }
        let input = u(usage, &["prompt_tokens"]).or_else(|| u(usage, &["input_tokens"]))?;
        let output = u(usage, &["completion_tokens"])
            .or_else(|| u(usage, &["output_tokens"]))
            .unwrap_or(0);
        let cached_input = u(usage, &["prompt_tokens_details", "cached_tokens"])
            .or_else(|| u(usage, &["input_tokens_details", "cached_tokens"]))
            .unwrap_or(0);
        let reasoning = u(usage, &["completion_tokens_details", "reasoning_tokens"])
            .or_else(|| u(usage, &["output_tokens_details", "reasoning_tokens"]))
            .unwrap_or(0);
        Some(Tokens::openai(
            input,
            output,
            cached_input,
            reasoning,
            u(usage, &["total_tokens"]),
        ))
    }

    /// Reads an Anthropic `usage` object. Anthropic's `input_tokens` excludes cache reads and
    /// writes; here input counts them all and `cached_input` is the cache reads.
    pub fn from_anthropic_usage(usage: &Value) -> Option<Tokens> {
        if !usage.is_object() {
            return None;
        }
        Some(Tokens::anthropic(
            u(usage, &["input_tokens"]).unwrap_or(0),
            u(usage, &["cache_creation_input_tokens"]).unwrap_or(0),
            u(usage, &["cache_read_input_tokens"]).unwrap_or(0),
            u(usage, &["output_tokens"]).unwrap_or(0),
        ))
    }

    /// Tokens from the counts of an OpenAI `usage` object, already read: the total defaults to
    /// input + output, and the cached and reasoning counts never exceed what they are part of.
    /// (The JSON tree reader above and the proxy's streaming usage reader both end here.)
    pub fn openai(
        input: u64,
        output: u64,
        cached_input: u64,
        reasoning: u64,
        total: Option<u64>,
    ) -> Tokens {
        Tokens {
            input,
            output,
            cached_input: cached_input.min(input),
            reasoning: reasoning.min(output),
            total: total.unwrap_or(input + output),
            images: 0,
        }
    }

    /// Tokens from the counts of an Anthropic `usage` object: input counts the plain input,
    /// cache writes and cache reads; `cached_input` is the reads.
    pub fn anthropic(plain: u64, cache_created: u64, cache_read: u64, output: u64) -> Tokens {
        let input = plain + cache_created + cache_read;
        Tokens {
            input,
            output,
            cached_input: cache_read,
            reasoning: 0,
            total: input + output,
            images: 0,
        }
    }

    /// Reads a Gemini `usageMetadata` object (thoughts count as output and as reasoning).
    pub fn from_gemini_usage(meta: &Value) -> Option<Tokens> {
        if !meta.is_object() {
            return None;
        }
        let input = u(meta, &["promptTokenCount"]).unwrap_or(0);
        let thoughts = u(meta, &["thoughtsTokenCount"]).unwrap_or(0);
        let output = u(meta, &["candidatesTokenCount"]).unwrap_or(0) + thoughts;
        let cached = u(meta, &["cachedContentTokenCount"]).unwrap_or(0);
        Some(Tokens {
            input,
            output,
            cached_input: cached.min(input),
            reasoning: thoughts,
            total: u(meta, &["totalTokenCount"]).unwrap_or(input + output),
            images: 0,
        })
    }

    /// Cost in nanos-USD under `p` (prices per 1M tokens), rounded to the nearest nano.
    pub fn cost_nanos(&self, p: &Pricing) -> u64 {
        let uncached = self.input.saturating_sub(self.cached_input) as u128;
        let plain_out = self.output.saturating_sub(self.reasoning) as u128;
        let sum = uncached * p.input as u128
            + self.cached_input as u128 * p.cached as u128
            + plain_out * p.output as u128
            + self.reasoning as u128 * p.reasoning as u128;
        let tokens = (sum + 500_000) / 1_000_000;
        let images = self.images as u128 * p.image as u128;
        u64::try_from(tokens + images).unwrap_or(u64::MAX)
    }
}
