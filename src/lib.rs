//! Wharf: an LLM and MCP gateway on Pingora.
//!
//! The binary (`src/main.rs`) only wires the CLI to [`server::serve`]; everything else lives in
//! this library so that tests and benches link the same code.

pub mod admin;
pub mod config;
pub mod control;
pub mod db;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod services;
pub mod sse;
pub mod state;
pub mod translate;
pub mod usage;
