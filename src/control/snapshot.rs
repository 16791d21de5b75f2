//! One immutable generation of the configuration.

use crate::config::Config;
use crate::filters::FilterSet;
use crate::routing::registry::Routers;
use std::sync::Arc;
use std::time::SystemTime;

/// One immutable generation of the configuration. A request keeps the `Arc` it started with, so
/// a reload never changes the rules under a request in flight.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    /// The filter chains, built from the file's and the database's (SPEC §9).
    pub filters: Arc<FilterSet>,
    /// The live routers of the models' deployment groups.
    pub routers: Routers,
    pub version: u64,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    pub fn new(config: Config, filters: Arc<FilterSet>, version: u64) -> Snapshot {
        let groups = config
            .models
            .values()
            .chain(config.org_models.values().flat_map(|o| o.by_name.values()))
            .filter_map(|m| m.deployments.as_ref());
        let routers = Routers::build(groups);
        Snapshot {
            config,
            filters,
            routers,
            version,
            loaded_at: SystemTime::now(),
        }
    }
}
