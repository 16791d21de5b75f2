//! Wharf: an LLM and MCP gateway on Pingora.
//!
//! The binary (`src/main.rs`) only wires the CLI to [`server::serve`]; everything else lives in
//! this library so that tests and benches link the same code.

pub mod admin;
pub mod api;
pub mod config;
pub mod console;
pub mod control;
pub mod db;
pub mod endpoints;
pub mod error;
pub mod filters;
pub mod governance;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod proxy;
pub mod respond;
pub mod routing;
pub mod safety;
pub mod server;
pub mod services;
pub mod sse;
pub mod telemetry;
pub mod translate;
pub mod types;
pub mod usage;
