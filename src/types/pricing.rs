//! Model types and their prices.

/// Model types (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    Chat,
    Reasoning,
    Image,
    Embeddings,
    Audio,
    Moderation,
    Transcription,
    Tts,
}

impl ModelType {
    /// From the configuration spelling (any case; `embedding` too).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "chat" => ModelType::Chat,
            "reasoning" => ModelType::Reasoning,
            "image" => ModelType::Image,
            "embeddings" | "embedding" => ModelType::Embeddings,
            "audio" => ModelType::Audio,
            "moderation" => ModelType::Moderation,
            "transcription" => ModelType::Transcription,
            "tts" => ModelType::Tts,
            _ => return None,
        })
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Chat => "chat",
            ModelType::Reasoning => "reasoning",
            ModelType::Image => "image",
            ModelType::Embeddings => "embeddings",
            ModelType::Audio => "audio",
            ModelType::Moderation => "moderation",
            ModelType::Transcription => "transcription",
            ModelType::Tts => "tts",
        }
    }
}

/// Prices in nanos-USD per 1M tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pricing {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub reasoning: u64,
    /// nanos-USD per generated image.
    pub image: u64,
}
