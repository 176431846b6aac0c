//! Collector configuration: a TOML file with serde defaults, overridden by `SONDE_*` environment
//! variables and command-line flags (see the `sonde-collector` binary).
//!
//! ```toml
//! listen = "127.0.0.1:7419"          # default; port 0 picks a free port
//! database = "sonde-collector.db"    # default, relative to the working directory; or a
//!                                    # PostgreSQL URL: "postgres://sonde@db.internal/sonde"
//! max_message_bytes = 4194304        # default 4 MiB, per gRPC message, both directions
//! max_batch_items = 20000            # default; larger batches are refused with an Error
//! shutdown_grace_secs = 10           # default; open streams get this long to finish
//! synchronous_full = true            # default; every ack survives power loss
//! max_endpoints = 1000000            # default; new endpoints past it are refused and counted
//! max_anomalies = 5000000            # default; new anomaly keys past it are refused and counted
//!
//! [tls]                              # optional; absent = plaintext
//! cert = "server.pem"
//! key = "server.key"
//! client_ca = "agents-ca.pem"        # optional; set = ingest requires an agent certificate (mTLS)
//!
//! [query]
//! token = "..."                      # optional; set = query calls need `authorization: Bearer ...`
//! token_file = "/etc/sonde/token"    # alternative to `token`
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The default listen address: loopback only, so nothing is exposed until configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7419";

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Address of the gRPC server (ingest, query, health, reflection). Default 127.0.0.1:7419.
    pub listen: SocketAddr,
    /// The store: a SQLite database file, or a PostgreSQL URL (a value starting with
    /// `postgres://` or `postgresql://`, see `store::Location`), which several collectors can
    /// share. Default `sonde-collector.db`.
    pub database: PathBuf,
    /// Largest gRPC message accepted or sent. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Largest number of endpoint updates plus anomalies in one batch. Default 20,000.
    pub max_batch_items: usize,
    /// Time open streams get to finish on shutdown before they are cut. Default 10 s.
    pub shutdown_grace_secs: u64,
    /// `PRAGMA synchronous = FULL` (true, default) or `NORMAL`; with PostgreSQL,
    /// `synchronous_commit` on (true) or off.
    pub synchronous_full: bool,
    /// Row caps bounding the database against floods of unique endpoints or anomaly keys; past
    /// them existing rows still update, new ones are refused and counted per agent
    /// (`AgentStatus.items_refused`). Defaults 1,000,000 and 5,000,000.
    pub max_endpoints: u64,
    pub max_anomalies: u64,
    pub tls: Option<TlsConfig>,
    pub query: QueryConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7419)),
            database: PathBuf::from("sonde-collector.db"),
            max_message_bytes: 4 * 1024 * 1024,
            max_batch_items: 20_000,
            shutdown_grace_secs: 10,
            synchronous_full: true,
            max_endpoints: 1_000_000,
            max_anomalies: 5_000_000,
            tls: None,
            query: QueryConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the collector.
    pub cert: PathBuf,
    /// PEM private key of the collector.
    pub key: PathBuf,
    /// PEM CA bundle agents' client certificates must chain to. When set, the ingest service
    /// refuses streams without a verified client certificate; the query API stays token-based.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Bearer token required on every query call. Default: none (open, fine on loopback only).
    pub token: Option<String>,
    /// File holding the token (first line); used when `token` is unset.
    pub token_file: Option<PathBuf>,
}

impl QueryConfig {
    /// The effective token, reading `token_file` if needed.
    pub fn resolve_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading query token file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        anyhow::ensure!(
            !token.is_empty(),
            "query token file {} is empty",
            path.display()
        );
        Ok(Some(token))
    }
}

impl CollectorConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<CollectorConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() -> anyhow::Result<()> {
        let config: CollectorConfig = toml::from_str("")?;
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.database, PathBuf::from("sonde-collector.db"));
        assert_eq!(config.max_message_bytes, 4 * 1024 * 1024);
        assert!(config.tls.is_none());
        Ok(())
    }

    #[test]
    fn a_postgres_url_selects_postgres() -> anyhow::Result<()> {
        use crate::store::Location;
        let config: CollectorConfig =
            toml::from_str("database = \"postgresql://sonde@db.internal/sonde\"\n")?;
        assert_eq!(
            Location::parse(&config.database),
            Location::Postgres("postgresql://sonde@db.internal/sonde".into())
        );
        assert_eq!(
            Location::parse(&CollectorConfig::default().database),
            Location::Sqlite("sonde-collector.db".into())
        );
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<CollectorConfig>("listn = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn sections_parse() -> anyhow::Result<()> {
        let config: CollectorConfig = toml::from_str(
            "listen = \"0.0.0.0:9000\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[query]\ntoken = \"t\"\n",
        )?;
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.tls.map(|t| t.client_ca.is_none()), Some(true));
        assert_eq!(config.query.resolve_token()?, Some("t".to_string()));
        Ok(())
    }
}
