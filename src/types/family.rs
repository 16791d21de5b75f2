//! Provider kinds and the API families clients speak (SPEC §4).

/// Provider families (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Google,
    AzureOpenAi,
    Vllm,
    Custom,
}

impl ProviderKind {
    /// From the configuration spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "OPENAI" => ProviderKind::OpenAi,
            "ANTHROPIC" => ProviderKind::Anthropic,
            "GOOGLE" => ProviderKind::Google,
            "AZURE_OPENAI" => ProviderKind::AzureOpenAi,
            "VLLM" => ProviderKind::Vllm,
            "CUSTOM" => ProviderKind::Custom,
            _ => return None,
        })
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OPENAI",
            ProviderKind::Anthropic => "ANTHROPIC",
            ProviderKind::Google => "GOOGLE",
            ProviderKind::AzureOpenAi => "AZURE_OPENAI",
            ProviderKind::Vllm => "VLLM",
            ProviderKind::Custom => "CUSTOM",
        }
    }

    /// Whether native OpenAI routes (`/v1/chat/completions`, ...) may reach this family.
    pub fn is_openai_family(self) -> bool {
        matches!(
            self,
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::Custom
        )
    }
}

/// The provider family a native route is pinned to (SPEC §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenAi,
    Anthropic,
    Gemini,
    Vllm,
    /// The unified endpoint: any family, OpenAI shapes towards the client.
    Unified,
}

impl Family {
    /// Whether a provider of `kind` belongs to this family.
    pub fn admits(self, kind: ProviderKind) -> bool {
        match self {
            Family::OpenAi => kind.is_openai_family(),
            Family::Anthropic => kind == ProviderKind::Anthropic,
            Family::Gemini => kind == ProviderKind::Google,
            Family::Vllm => kind == ProviderKind::Vllm,
            Family::Unified => true,
        }
    }

    /// Human name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Family::OpenAi => "OpenAI-compatible",
            Family::Anthropic => "Anthropic",
            Family::Gemini => "Gemini",
            Family::Vllm => "vLLM",
            Family::Unified => "any",
        }
    }
}
