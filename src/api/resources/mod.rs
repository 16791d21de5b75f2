//! The resources of the admin API as data (table, columns, rules), and the generic list, get,
//! create, update and delete over them. Columns drive validation, the SQL and the OpenAPI
//! schemas alike.
//!
//! - `schema.rs`: the resource and column table types;
//! - `catalog.rs`: the table of resources;
//! - `crud.rs`: the generic list, get, create, update and delete;
//! - `hooks.rs`: the kind-specific behaviour.

mod catalog;
mod crud;
mod hooks;
mod schema;

pub use catalog::*;
pub use crud::*;
pub use schema::*;
