//! Prometheus metrics and health endpoints for the Sonde agent and collector.
//!
//! Both processes keep their counters where the work happens (atomics, or stage structs copied
//! periodically by the thread that owns them) and expose them with a
//! [`prometheus_client::collector::Collector`] that reads those values at scrape time, so a scrape
//! never takes a lock on a hot path and nothing is counted twice. [`MetricsServer`] serves
//! `GET /metrics` (Prometheus text format 0.0.4), `GET /healthz` (the process is alive) and
//! `GET /readyz` (the process's own readiness check).
//!
//! - [`Emit`]: a small helper for collectors that write values they read from elsewhere;
//! - [`ProcessCollector`]: `process_*` metrics (CPU, memory, threads, fds) from procfs;
//! - [`MetricsServer`]: the HTTP listener.

mod emit;
mod process;
mod server;

pub use emit::Emit;
pub use process::{ProcessCollector, ProcessStats};
pub use prometheus_client;
pub use server::{MetricsError, MetricsServer, ReadyCheck};

/// Default `/metrics` port of `sonde-agent run`.
pub const AGENT_DEFAULT_PORT: u16 = 9464;
/// Default `/metrics` port of `sonde-collector`.
pub const COLLECTOR_DEFAULT_PORT: u16 = 9465;
