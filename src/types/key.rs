//! Virtual key types.

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
