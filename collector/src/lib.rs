//! Sonde collector: gRPC ingest and query API over an embedded store, and the `sonde` CLI.
//!
//! Embedding: `sonde_collector::server::spawn(config)` binds (port 0 allowed) and serves on a
//! background task, returning the bound address; `server::serve(config, shutdown)` runs in the
//! caller's task until `shutdown` completes.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod siem;
pub mod store;

pub use config::{CollectorConfig, DEFAULT_LISTEN, QueryConfig, TlsConfig};
pub use server::{BoundCollector, RunningCollector, bind, serve, spawn};
