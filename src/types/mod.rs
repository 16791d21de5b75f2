//! The domain types every layer shares: provider kinds and API families, model types and
//! prices, token counts, key types, secrets, providers, models and virtual keys, the usage record.
//!
//! A leaf: nothing here imports another module of the crate, so that configuration, the
//! database layer, the error writer and the domains can all depend on it without a cycle
//! (`tests/layers.rs` checks it).

pub mod credentials;
pub mod family;
pub mod key;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod pricing;
pub mod provider;
pub mod redact;
pub mod routing;
pub mod routing_policy;
pub mod secret;
pub mod tokens;
pub mod usage;

pub use family::{Family, ProviderKind};
pub use key::{KeyType, VirtualKey};
pub use model::{Deployments, Model};
pub use pricing::{ModelType, Pricing};
pub use provider::{HealthCheck, Provider};
pub use secret::Secret;
pub use tokens::Tokens;
pub use usage::{Attempt, UsageRecord, UsageSource};
