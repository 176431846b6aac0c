//! `sonde-collector`: the gRPC collector (ingest from agents, query API for the CLI).
//!
//! Configuration precedence: built-in defaults < `--config` TOML file < `SONDE_*` environment
//! variables / command-line flags. Listens on 127.0.0.1:7419 unless told otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sonde_collector::{CollectorConfig, TlsConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "sonde-collector",
    version,
    about = "Sonde collector: agents report here, the sonde CLI queries here"
)]
struct Args {
    /// TOML configuration file (see the sonde_collector::config docs for every key and default).
    #[arg(long, env = "SONDE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:7419].
    #[arg(long, env = "SONDE_LISTEN")]
    listen: Option<SocketAddr>,
    /// SQLite database file, or a PostgreSQL URL (postgres://user@host/db) [default:
    /// sonde-collector.db].
    #[arg(long, env = "SONDE_DATABASE")]
    database: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key enables TLS.
    #[arg(long, env = "SONDE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "SONDE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA for agent client certificates; set = ingest requires mTLS.
    #[arg(long, env = "SONDE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer token required by the query API.
    #[arg(long, env = "SONDE_QUERY_TOKEN", hide_env_values = true)]
    query_token: Option<String>,
    /// File holding the query token.
    #[arg(long, env = "SONDE_QUERY_TOKEN_FILE")]
    query_token_file: Option<PathBuf>,
    /// Largest gRPC message in bytes [default: 4194304].
    #[arg(long, env = "SONDE_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
}

fn effective_config(args: Args) -> anyhow::Result<CollectorConfig> {
    let mut config = match &args.config {
        Some(path) => CollectorConfig::from_toml_file(path)?,
        None => CollectorConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(database) = args.database {
        config.database = database;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let client_ca = args
            .tls_client_ca
            .clone()
            .or_else(|| config.tls.as_ref().and_then(|t| t.client_ca.clone()));
        config.tls = Some(TlsConfig {
            cert,
            key,
            client_ca,
        });
    } else if let Some(ca) = args.tls_client_ca {
        let tls = config.tls.as_mut().context(
            "--tls-client-ca needs TLS (--tls-cert and --tls-key, or [tls] in the config file)",
        )?;
        tls.client_ca = Some(ca);
    }
    if let Some(token) = args.query_token {
        config.query.token = Some(token);
    }
    if let Some(file) = args.query_token_file {
        config.query.token_file = Some(file);
    }
    if let Some(limit) = args.max_message_bytes {
        config.max_message_bytes = limit;
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the collector");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("SONDE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = effective_config(Args::parse())?;
    sonde_collector::serve(config, shutdown_signal()).await
}
