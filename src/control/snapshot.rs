//! One immutable generation of the configuration.

use crate::config::Config;
use crate::filters::FilterSet;
use std::sync::Arc;
use std::time::SystemTime;

/// One immutable generation of the configuration. A request keeps the `Arc` it started with, so
/// a reload never changes the rules under a request in flight.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    /// The filter chains, built from the file's and the database's (SPEC §9).
    pub filters: Arc<FilterSet>,
    pub version: u64,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    pub fn new(config: Config, filters: Arc<FilterSet>, version: u64) -> Snapshot {
        Snapshot {
            config,
            filters,
            version,
            loaded_at: SystemTime::now(),
        }
    }
}
