//! `sonde-collector`: the gRPC collector (ingest from agents, query API for the CLI).
//!
//! Configuration precedence: built-in defaults < `--config` TOML file < `SONDE_*` environment
//! variables / command-line flags. Listens on 127.0.0.1:7419 unless told otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Serve Prometheus metrics, /healthz and /readyz here, or `off` [default: 127.0.0.1:9465;
    /// if that port is taken the collector runs without them].
    #[arg(long, env = "SONDE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Append every new anomaly as a JSON line to this file (rotated by size).
    #[arg(long, env = "SONDE_SIEM_FILE")]
    siem_file: Option<PathBuf>,
    /// POST every new anomaly as JSON lines to this http:// or https:// URL (batched, retried).
    #[arg(long, env = "SONDE_SIEM_WEBHOOK")]
    siem_webhook: Option<String>,
}

/// Where to serve metrics, and whether failing to bind there is fatal (explicitly asked for).
struct MetricsChoice {
    listen: Option<SocketAddr>,
    required: bool,
}

fn effective_config(args: Args) -> anyhow::Result<(CollectorConfig, MetricsChoice)> {
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
    if let Some(file) = args.siem_file {
        config.siem.file = Some(file);
    }
    if let Some(url) = args.siem_webhook {
        config.siem.webhook = Some(url);
    }
    let metrics = match args.metrics_listen.as_deref() {
        Some(off) if off.eq_ignore_ascii_case("off") => MetricsChoice {
            listen: None,
            required: false,
        },
        Some(addr) => MetricsChoice {
            listen: Some(addr.parse().with_context(|| {
                format!(
                    "--metrics-listen {addr:?} is neither `off` nor an address like 0.0.0.0:9465"
                )
            })?),
            required: true,
        },
        None => match config.metrics_listen {
            Some(addr) => MetricsChoice {
                listen: Some(addr),
                required: true,
            },
            None => MetricsChoice {
                listen: Some(SocketAddr::from((
                    [127, 0, 0, 1],
                    sonde_metrics::COLLECTOR_DEFAULT_PORT,
                ))),
                required: false,
            },
        },
    };
    Ok((config, metrics))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sonde_shutdown::listen();
    let filter = EnvFilter::try_from_env("SONDE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only on a terminal: journald, a log file or a pipe get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let (config, metrics) = effective_config(Args::parse())?;
    let bound = sonde_collector::bind(config).await?;
    let _metrics_server = match metrics.listen {
        None => None,
        Some(addr) => {
            let m = bound.metrics();
            match sonde_metrics::MetricsServer::start(addr, Arc::new(m.registry()), m.ready_check())
                .await
            {
                Ok(server) => Some(server),
                Err(error) if !metrics.required => {
                    tracing::warn!(%error, "metrics not served (pass --metrics-listen to choose another address)");
                    None
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error).context("starting the metrics listener"));
                }
            }
        }
    };
    bound.serve(sonde_shutdown::signalled()).await
}
