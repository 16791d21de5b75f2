//! Virtual keys as the gateway knows them, and their types.

use super::policy::KeyPolicies;
use super::routing_policy::RoutingPolicy;
use std::collections::HashSet;
use std::sync::Arc;

/// Key types (SPEC §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    Organisation,
    Team,
    User,
}

impl KeyType {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Organisation => "ORGANISATION",
            KeyType::Team => "TEAM",
            KeyType::User => "USER",
        }
    }
}

/// A virtual key as the gateway knows it: a hash and what it may do.
#[derive(Debug, Default)]
pub struct VirtualKey {
    pub id: String,
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub kind: KeyType,
    pub organisation_id: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub all_models: bool,
    pub models: HashSet<String>,
    /// Routing policy of the key (SPEC §5); it replaces the organisation's rule by rule.
    pub routing: Option<Arc<RoutingPolicy>>,
    /// Policies of the key (and, in database mode, of its organisation and team).
    pub policies: KeyPolicies,
    /// Ids of the MCP servers the key may reach (`"*"`: every one of its organisation).
    pub mcp_servers: HashSet<String>,
}

impl VirtualKey {
    /// Whether this key may call `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.all_models || self.models.contains(model)
    }

    /// Whether this key holds a grant for the MCP server with this id.
    pub fn may_use_mcp(&self, server_id: &str) -> bool {
        self.mcp_servers.contains(server_id) || self.mcp_servers.contains("*")
    }
}
