//! `[[filters]]` as written in the TOML (and as the database's `filters` rows are read): the
//! filter chains' raw shape. The filters domain builds and checks them.

use serde::Deserialize;

/// One `[[filters]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub name: String,
    pub kind: String,
    pub script: Option<String>,
    pub order: Option<i64>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub phases: Option<Vec<String>>,
    #[serde(default)]
    pub scope: RawScope,
    #[serde(default)]
    pub settings: toml::Table,
}

fn yes() -> bool {
    true
}

/// `scope = { ... }`: every list empty (or absent) means global.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    #[serde(default)]
    pub organisations: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

/// `on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Log, count and continue.
    #[default]
    Open,
    /// Log, count and block (`403 plugin_blocked`).
    Closed,
}
