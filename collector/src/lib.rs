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

/// The sensitive data kinds agents report (`sonde endpoints --sensitive`), by name. The
/// collector does not depend on the agent's crates; a test keeps the two lists equal.
pub const SENSITIVE_KINDS: &[&str] = &[
    "email",
    "phone",
    "payment_card",
    "iban",
    "us_ssn",
    "ip_address",
    "jwt",
    "aws_access_key",
    "gcp_api_key",
    "azure_storage_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "private_key",
    "password",
    "secret",
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_cli_knows_every_sensitive_kind_the_agent_reports() {
        let agent: Vec<&str> = sonde_inventory::SensitiveKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(agent, super::SENSITIVE_KINDS);
    }
}
