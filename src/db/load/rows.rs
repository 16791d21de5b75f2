//! The rows of the configuration tables as read, and their conversions to configuration
//! values (enum spellings, prices, provider specs).

use super::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DB_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS};
use crate::config::provider::ProviderSpec;
use crate::config::{KeyType, ModelType, Pricing, ProviderKind};
use serde_json::Value;
use uuid::Uuid;

impl ProviderSpec {
    /// A spec with the TOML defaults for everything but the name, family and base URL.
    pub fn new(name: &str, kind: ProviderKind, base_url: &str) -> ProviderSpec {
        ProviderSpec {
            name: name.to_string(),
            kind,
            base_url: base_url.to_string(),
            auth_header: None,
            api_version: None,
            timeout_ms: DEFAULT_DB_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            enabled: true,
            headers: Vec::new(),
        }
    }
}

/// `provider_type` as stored (the TOML spelling).
pub fn provider_kind_from_db(s: &str) -> Option<ProviderKind> {
    [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Google,
        ProviderKind::AzureOpenAi,
        ProviderKind::Vllm,
        ProviderKind::Custom,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// `model_type` as stored (the TOML spelling, lower case).
pub fn model_type_from_db(s: &str) -> Option<ModelType> {
    [
        ModelType::Chat,
        ModelType::Reasoning,
        ModelType::Image,
        ModelType::Embeddings,
        ModelType::Audio,
        ModelType::Moderation,
        ModelType::Transcription,
        ModelType::Tts,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// `api_key_type` as stored.
pub fn key_type_from_db(s: &str) -> Option<KeyType> {
    [KeyType::Organisation, KeyType::Team, KeyType::User]
        .into_iter()
        .find(|k| k.as_str() == s)
}

/// The model prices of a row: nanos-USD per 1M tokens (per image for `image`), NULL
/// cached/reasoning prices meaning "same as input/output" (the TOML rule). Negative values
/// (excluded by the schema) read as 0.
pub fn pricing_from_nanos(
    input: i64,
    output: i64,
    cached: Option<i64>,
    reasoning: Option<i64>,
    image: i64,
) -> Pricing {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Pricing {
        input: n(input),
        output: n(output),
        cached: n(cached.unwrap_or(input)),
        reasoning: n(reasoning.unwrap_or(output)),
        image: n(image),
    }
}

/// An enabled row of `filters`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FilterRow {
    pub id: Uuid,
    pub organisation_id: Option<Uuid>,
    pub organisation_slug: Option<String>,
    pub name: String,
    pub kind: String,
    pub script: Option<String>,
    pub position: i32,
    pub on_error: String,
    pub read_only: bool,
    pub phases: Option<Vec<String>>,
    pub scope_keys: Vec<String>,
    pub scope_models: Vec<String>,
    pub settings: Value,
}

/// A row of `model_deployments` (enabled ones only), with the model's `policies->'routing'`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub model_id: Uuid,
    pub provider_id: Uuid,
    pub slug: String,
    pub weight: i32,
    pub priority: i32,
    pub routing: Option<serde_json::Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct ProviderRow {
    pub(super) id: Uuid,
    pub(super) organisation_id: Uuid,
    pub(super) name: String,
    pub(super) provider_type: String,
    pub(super) base_url: String,
    pub(super) timeout_ms: i32,
    pub(super) enabled: bool,
    pub(super) extra_headers: Value,
    pub(super) options: Value,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct ProviderKeyRow {
    pub(super) id: Uuid,
    pub(super) provider_id: Uuid,
    pub(super) envelope: Value,
    pub(super) active: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct ModelRow {
    pub(super) id: Uuid,
    pub(super) organisation_id: Uuid,
    pub(super) name: String,
    pub(super) slug: String,
    pub(super) model_type: String,
    pub(super) provider_id: Uuid,
    pub(super) provider_api_key_id: Option<Uuid>,
    pub(super) input_price_nanos: i64,
    pub(super) output_price_nanos: i64,
    pub(super) cached_input_price_nanos: Option<i64>,
    pub(super) reasoning_price_nanos: Option<i64>,
    pub(super) image_price_nanos: i64,
    pub(super) enabled: bool,
    /// SPEC §7 policy (`{}` when unset).
    pub(super) policies: serde_json::Value,
}

/// The spec of a provider row; `Err` lists what is wrong with it.
pub(super) fn provider_spec(row: &ProviderRow) -> Result<ProviderSpec, Vec<String>> {
    let mut errs = Vec::new();
    let kind = provider_kind_from_db(&row.provider_type).unwrap_or_else(|| {
        errs.push(format!(
            "provider_type: `{}` is not one of OPENAI, ANTHROPIC, GOOGLE, AZURE_OPENAI, VLLM, CUSTOM",
            row.provider_type
        ));
        ProviderKind::OpenAi
    });
    let mut spec = ProviderSpec::new(&row.name, kind, &row.base_url);
    spec.enabled = row.enabled;
    spec.timeout_ms = u64::try_from(row.timeout_ms).unwrap_or(0);
    let opt_str = |key: &str, errs: &mut Vec<String>| match row.options.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errs.push(format!("options.{key}: must be a string"));
            None
        }
    };
    spec.api_version = opt_str("api_version", &mut errs);
    spec.auth_header = opt_str("auth_header", &mut errs);
    for (key, slot) in [
        ("connect_timeout_ms", &mut spec.connect_timeout_ms),
        ("idle_timeout_ms", &mut spec.idle_timeout_ms),
    ] {
        match row.options.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(ms) => *slot = ms,
                None => errs.push(format!(
                    "options.{key}: must be a whole number of milliseconds"
                )),
            },
        }
    }
    match &row.extra_headers {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) => spec.headers.push((k.clone(), s.clone())),
                    _ => errs.push(format!("extra_headers.{k}: must be a string")),
                }
            }
        }
        _ => errs.push("extra_headers: must be an object".to_string()),
    }
    if errs.is_empty() {
        Ok(spec)
    } else {
        Err(errs)
    }
}

/// Renames the field of a [`build_provider`] problem to where it lives in the `providers` row.
pub(super) fn column_of(problem: &str) -> String {
    for (field, column) in [
        ("headers.", "extra_headers."),
        ("auth_header:", "options.auth_header:"),
        ("connect_timeout_ms:", "options.connect_timeout_ms:"),
        ("idle_timeout_ms:", "options.idle_timeout_ms:"),
    ] {
        if let Some(rest) = problem.strip_prefix(field) {
            return format!("{column}{rest}");
        }
    }
    problem.to_string()
}

pub(super) fn describe_provider(row: &ProviderRow) -> String {
    format!(
        "provider `{}` (id {}, organisation {})",
        row.name, row.id, row.organisation_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::provider::build_provider;
    use std::net::SocketAddr;

    /// The database path builds the same provider as the TOML path.
    #[test]
    fn providers_match_the_toml_path() {
        let toml = r#"
[[providers]]
name = "p"
type = "ANTHROPIC"
base_url = "https://api.example.com:8443/"
timeout_ms = 1234
api_version = "2024"
headers = { "X-Extra" = "1" }

[[providers]]
name = "g"
type = "GOOGLE"
base_url = "http://127.0.0.1:9000"

[[providers]]
name = "a"
type = "AZURE_OPENAI"
base_url = "https://x.openai.azure.com"
auth_header = "X-Custom-Key"
"#;
        let cfg = crate::config::parse(toml).expect("valid toml");
        let specs = [
            ProviderSpec {
                timeout_ms: 1234,
                api_version: Some("2024".into()),
                headers: vec![("X-Extra".into(), "1".into())],
                ..ProviderSpec::new(
                    "p",
                    ProviderKind::Anthropic,
                    "https://api.example.com:8443/",
                )
            },
            ProviderSpec {
                timeout_ms: 300_000,
                ..ProviderSpec::new("g", ProviderKind::Google, "http://127.0.0.1:9000")
            },
            ProviderSpec {
                timeout_ms: 300_000,
                auth_header: Some("X-Custom-Key".into()),
                ..ProviderSpec::new("a", ProviderKind::AzureOpenAi, "https://x.openai.azure.com")
            },
        ];
        for (spec, want) in specs.iter().zip(&cfg.providers) {
            let got = build_provider(spec, Vec::new(), None).expect("valid spec");
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{}", spec.name);
        }
        let g = build_provider(&specs[1], Vec::new(), None).expect("valid");
        assert_eq!(g.base_path, "/v1beta");
        assert_eq!(g.auth_header.as_str(), "x-goog-api-key");
        assert_eq!(
            g.addrs.load().as_slice(),
            &["127.0.0.1:9000".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn bad_provider_specs_list_every_problem() {
        let spec = ProviderSpec {
            headers: vec![("bad header".into(), "v".into())],
            connect_timeout_ms: 0,
            ..ProviderSpec::new("bad name", ProviderKind::OpenAi, "ftp://x?y=1")
        };
        let errs = build_provider(&spec, Vec::new(), None).expect_err("invalid");
        let all = errs.join("\n");
        for needle in [
            "name:",
            "must start with http",
            "query string",
            "headers.bad header",
            "connect_timeout_ms",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
    }

    #[test]
    fn enum_spellings() {
        for k in [
            "OPENAI",
            "ANTHROPIC",
            "GOOGLE",
            "AZURE_OPENAI",
            "VLLM",
            "CUSTOM",
        ] {
            assert_eq!(provider_kind_from_db(k).map(|k| k.as_str()), Some(k));
        }
        assert_eq!(provider_kind_from_db("openai"), None);
        assert_eq!(
            model_type_from_db("embeddings"),
            Some(ModelType::Embeddings)
        );
        assert_eq!(model_type_from_db("nope"), None);
        assert_eq!(key_type_from_db("TEAM"), Some(KeyType::Team));
        assert_eq!(
            pricing_from_nanos(1, 2, None, None, 3),
            Pricing {
                input: 1,
                output: 2,
                cached: 1,
                reasoning: 2,
                image: 3,
            }
        );
    }
}
