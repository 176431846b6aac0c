//! `sonde`: query a Sonde collector from the terminal.
//!
//! Exit codes: 0 success, 1 other error, 2 bad usage, 3 collector unreachable, 4 token missing or
//! rejected, 5 not found.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{
    AgentStatus, Classification, EndpointSummary, ExportOpenApiRequest, GetEndpointRequest,
    ListAgentsRequest, ListAnomaliesRequest, ListEndpointsRequest, Protocol, Severity,
    StoredAnomaly, WatchAnomaliesRequest,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

#[derive(Parser, Debug)]
#[command(
    name = "sonde",
    version,
    about = "Query a Sonde collector: API inventory, anomalies, agents"
)]
struct Cli {
    /// Collector URL.
    #[arg(
        long,
        global = true,
        env = "SONDE_COLLECTOR",
        default_value = "http://127.0.0.1:7419"
    )]
    collector: String,
    /// Query token (sent as `authorization: Bearer ...`).
    #[arg(long, global = true, env = "SONDE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to verify an https:// collector.
    #[arg(long, global = true, env = "SONDE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List endpoints (all pages, up to --limit).
    Endpoints(EndpointsArgs),
    /// Show one endpoint: schema, callers, per-agent reports, recent anomalies.
    Endpoint { id: String },
    /// List anomalies, most recent first; --follow keeps printing new ones.
    Anomalies(AnomaliesArgs),
    /// List agents and their health.
    Agents,
    /// Print the OpenAPI 3.1 document of a service, built from observed traffic.
    Openapi { service: String },
}

#[derive(ClapArgs, Debug)]
struct EndpointsArgs {
    /// Only endpoints declared in no spec.
    #[arg(long, group = "class")]
    shadow: bool,
    /// Only endpoints declared deprecated or removed but still called.
    #[arg(long, group = "class")]
    zombie: bool,
    /// Only endpoints declared in a known spec.
    #[arg(long, group = "class")]
    managed: bool,
    /// Only endpoints called at least once without authentication.
    #[arg(long)]
    unauthenticated: bool,
    /// Only endpoints reported by an agent on this host.
    #[arg(long)]
    host: Option<String>,
    /// Only endpoints of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only endpoints carrying this sensitive data kind (email, jwt, payment_card, ...).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(sonde_collector::SENSITIVE_KINDS))]
    sensitive: Option<String>,
    /// Stop after this many endpoints.
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
}

#[derive(ClapArgs, Debug)]
struct AnomaliesArgs {
    /// Only anomalies last seen within this long (e.g. 10m, 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only this kind (e.g. auth.expired_jwt_accepted).
    #[arg(long)]
    kind: Option<String>,
    /// Only this severity or worse: info, low, medium, high, critical.
    #[arg(long, value_parser = parse_severity)]
    min_severity: Option<Severity>,
    /// Only anomalies on this endpoint (`service METHOD /template`).
    #[arg(long)]
    endpoint: Option<String>,
    /// Only anomalies reported by an agent on this host.
    #[arg(long)]
    host: Option<String>,
    /// After listing, keep printing anomalies as they are reported.
    #[arg(long)]
    follow: bool,
    /// Stop listing after this many anomalies.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::from_short_name(text).ok_or_else(|| {
        format!("unknown severity {text:?}; use info, low, medium, high or critical")
    })
}

#[derive(Clone)]
struct TokenInterceptor(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = QueryClient<InterceptedService<Channel, TokenInterceptor>>;

/// Errors with the exit code they map to.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot reach the collector at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the collector refused the query token: {0} (pass --token or set SONDE_TOKEN)")]
    Auth(String),
    #[error("{0}")]
    NotFound(String),
}

fn status_error(url: &str, status: Status) -> anyhow::Error {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            CliError::Auth(status.message().to_string()).into()
        }
        Code::NotFound => CliError::NotFound(status.message().to_string()).into(),
        Code::Unavailable => CliError::Unreachable {
            url: url.to_string(),
            detail: status.message().to_string(),
        }
        .into(),
        _ => anyhow::anyhow!(
            "collector error ({:?}): {}",
            status.code(),
            status.message()
        ),
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    // A bare `host:port` means plaintext gRPC.
    let url = if cli.collector.contains("://") {
        cli.collector.clone()
    } else {
        format!("http://{}", cli.collector)
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid collector URL {:?}", cli.collector))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match &cli.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading CA certificate {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => anyhow::bail!("an https:// collector needs --ca-cert (or SONDE_CA_CERT)"),
        }
        endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            detail = format!("{detail}: {inner}");
            source = inner.source();
        }
        CliError::Unreachable {
            url: cli.collector.clone(),
            detail,
        }
    })?;
    let token = match &cli.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token has characters not allowed in a header")?,
        ),
        None => None,
    };
    Ok(
        QueryClient::with_interceptor(channel, TokenInterceptor(token))
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// Aligned columns, two spaces apart. Hand-written: a dozen lines, and the output stays plain
/// text that `grep`/`awk` handle.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn time(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "-".into()
    } else {
        values.join(",")
    }
}

/// The serving workload and Kubernetes Service of an endpoint, the parts that are known.
fn print_service_identity(service: &sonde_proto::v1::ServiceKey) {
    if !service.kubernetes_service.is_empty() {
        println!("kubernetes service: {}", service.kubernetes_service);
    }
    let Some(w) = &service.workload else { return };
    let mut parts = Vec::new();
    let mut add = |label: &str, value: &str| {
        if !value.is_empty() {
            parts.push(format!("{label}={value}"));
        }
    };
    add(
        "owner",
        &format!(
            "{}{}",
            w.owner_kind,
            if w.owner_name.is_empty() {
                String::new()
            } else {
                format!("/{}", w.owner_name)
            }
        ),
    );
    add("namespace", &w.namespace);
    add("pod", &w.pod_name);
    add("node", &w.node);
    add("runtime", &w.container_runtime);
    add("container", &w.container_name);
    add(
        "container_id",
        w.container_id.get(..12).unwrap_or(&w.container_id),
    );
    add("unit", &w.systemd_unit);
    add("executable", &w.executable);
    println!("workload: {} {}", w.name, parts.join(" "));
    if !w.labels.is_empty() {
        let mut labels: Vec<_> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("labels: {}", labels.join(","));
    }
}

fn classification(value: i32) -> &'static str {
    Classification::try_from(value)
        .unwrap_or(Classification::Unknown)
        .short_name()
}

fn endpoint_row(e: &EndpointSummary) -> Vec<String> {
    vec![
        e.id.clone(),
        e.service.clone(),
        e.method.clone(),
        e.path_template.clone(),
        Protocol::try_from(e.protocol)
            .unwrap_or(Protocol::Unspecified)
            .short_name()
            .into(),
        classification(e.classification).into(),
        e.call_count.to_string(),
        if e.unauthenticated {
            format!("{}+none", list(&e.auth_schemes))
        } else {
            list(&e.auth_schemes)
        },
        list(&e.sensitive_kinds),
        time(e.last_seen_unix_ns),
    ]
}

const ENDPOINT_HEADERS: [&str; 10] = [
    "ID",
    "SERVICE",
    "METHOD",
    "PATH",
    "PROTO",
    "CLASS",
    "CALLS",
    "AUTH",
    "SENSITIVE",
    "LAST SEEN",
];
const ANOMALY_HEADERS: [&str; 8] = [
    "LAST SEEN",
    "SEVERITY",
    "OWASP",
    "KIND",
    "ENDPOINT",
    "COUNT",
    "HOSTS",
    "EXPLANATION",
];

fn anomaly_row(stored: &StoredAnomaly) -> Vec<String> {
    let a = stored.anomaly.clone().unwrap_or_default();
    vec![
        time(a.last_seen_unix_ns),
        Severity::try_from(a.severity)
            .unwrap_or(Severity::Unspecified)
            .short_name()
            .into(),
        sonde_proto::v1::OwaspCategory::try_from(a.category)
            .unwrap_or(sonde_proto::v1::OwaspCategory::Unspecified)
            .code()
            .into(),
        a.kind,
        a.endpoint.unwrap_or_else(|| "-".into()),
        a.count.to_string(),
        list(&stored.hosts),
        a.explanation,
    ]
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.collector.clone();
    let mut client = connect(&cli).await?;
    match &cli.command {
        Command::Endpoints(args) => {
            let classification = if args.shadow {
                Some(Classification::Shadow as i32)
            } else if args.zombie {
                Some(Classification::Zombie as i32)
            } else if args.managed {
                Some(Classification::Managed as i32)
            } else {
                None
            };
            let mut request = ListEndpointsRequest {
                host: args.host.clone().unwrap_or_default(),
                service: args.service.clone().unwrap_or_default(),
                classification,
                unauthenticated: args.unauthenticated,
                sensitive_kind: args.sensitive.clone().unwrap_or_default(),
                page_size: 1000,
                page_token: String::new(),
            };
            let mut endpoints = Vec::new();
            loop {
                let page = client
                    .list_endpoints(request.clone())
                    .await
                    .map_err(|s| status_error(&url, s))?
                    .into_inner();
                endpoints.extend(page.endpoints);
                if page.next_page_token.is_empty() || endpoints.len() >= args.limit {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            endpoints.truncate(args.limit);
            if cli.json {
                return print_json(&endpoints);
            }
            let rows: Vec<_> = endpoints.iter().map(endpoint_row).collect();
            print_table(&ENDPOINT_HEADERS, &rows);
        }
        Command::Endpoint { id } => {
            let found = client
                .get_endpoint(GetEndpointRequest { id: id.clone() })
                .await
                .map_err(|s| status_error(&url, s))?
                .into_inner();
            if cli.json {
                return print_json(&found);
            }
            if let Some(summary) = &found.summary {
                print_table(&ENDPOINT_HEADERS, &[endpoint_row(summary)]);
                println!("hosts: {}", list(&summary.hosts));
            }
            if let Some(key) = found.merged.as_ref().and_then(|m| m.key.as_ref())
                && let Some(service) = &key.service
            {
                print_service_identity(service);
            }
            if let Some(merged) = &found.merged {
                let mut statuses: Vec<_> = merged.status_counts.iter().collect();
                statuses.sort();
                let statuses: Vec<String> =
                    statuses.iter().map(|(s, c)| format!("{s}:{c}")).collect();
                println!("statuses: {}", list(&statuses));
                println!("query params: {}", list(&merged.query_params));
                if merged.served_over_tls {
                    let or_dash = |s: &str| {
                        if s.is_empty() {
                            "-".to_string()
                        } else {
                            s.to_string()
                        }
                    };
                    println!(
                        "tls: {} {} alpn {} sni {}",
                        or_dash(&merged.tls_version),
                        or_dash(&merged.tls_cipher),
                        or_dash(&merged.alpn),
                        or_dash(&merged.sni)
                    );
                } else {
                    println!("tls: no (plaintext)");
                }
                if let Some(l) = &merged.latency_us {
                    println!(
                        "latency µs: p50 {} p90 {} p99 {} max {}",
                        l.p50, l.p90, l.p99, l.max
                    );
                }
                for (title, schema) in [
                    ("request schema", &merged.request_schema),
                    ("response schema", &merged.response_schema),
                ] {
                    if !schema.is_empty() {
                        println!("\n{title}:");
                        let rows: Vec<_> = schema
                            .iter()
                            .map(|f| vec![f.path.clone(), f.types.join("|")])
                            .collect();
                        print_table(&["FIELD", "TYPES"], &rows);
                    }
                }
                if !merged.sensitive.is_empty() {
                    println!("\nsensitive data:");
                    let rows: Vec<_> = merged
                        .sensitive
                        .iter()
                        .map(|s| vec![s.kind.clone(), s.field_path.clone(), s.count.to_string()])
                        .collect();
                    print_table(&["KIND", "FIELD", "COUNT"], &rows);
                }
                if !merged.callers.is_empty() {
                    println!("\ncallers:");
                    let rows: Vec<_> = merged
                        .callers
                        .iter()
                        .map(|c| vec![c.process.clone(), c.addr.clone(), c.count.to_string()])
                        .collect();
                    print_table(&["PROCESS", "ADDR", "CALLS"], &rows);
                }
            }
            if !found.recent_anomalies.is_empty() {
                println!("\nrecent anomalies:");
                let rows: Vec<_> = found.recent_anomalies.iter().map(anomaly_row).collect();
                print_table(&ANOMALY_HEADERS, &rows);
            }
        }
        Command::Anomalies(args) => {
            let since = match args.since {
                Some(window) => SystemTime::now()
                    .checked_sub(window)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                None => 0,
            };
            let min_severity = args.min_severity.map(|s| s as i32).unwrap_or(0);
            // Subscribe before listing so nothing committed in between is missed.
            let mut watch = if args.follow {
                Some(
                    client
                        .watch_anomalies(WatchAnomaliesRequest {
                            kind: args.kind.clone().unwrap_or_default(),
                            min_severity,
                        })
                        .await
                        .map_err(|s| status_error(&url, s))?
                        .into_inner(),
                )
            } else {
                None
            };
            let mut request = ListAnomaliesRequest {
                kind: args.kind.clone().unwrap_or_default(),
                min_severity,
                endpoint: args.endpoint.clone().unwrap_or_default(),
                since_unix_ns: since,
                host: args.host.clone().unwrap_or_default(),
                page_size: 1000,
                ..ListAnomaliesRequest::default()
            };
            let mut anomalies = Vec::new();
            loop {
                let page = client
                    .list_anomalies(request.clone())
                    .await
                    .map_err(|s| status_error(&url, s))?
                    .into_inner();
                anomalies.extend(page.anomalies);
                if page.next_page_token.is_empty() || anomalies.len() >= args.limit {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            anomalies.truncate(args.limit);
            if cli.json {
                for anomaly in &anomalies {
                    println!(
                        "{}",
                        serde_json::to_string(anomaly).context("encoding JSON")?
                    );
                }
            } else {
                let rows: Vec<_> = anomalies.iter().map(anomaly_row).collect();
                print_table(&ANOMALY_HEADERS, &rows);
            }
            if let Some(stream) = watch.as_mut() {
                while let Some(next) = stream.message().await.map_err(|s| status_error(&url, s))? {
                    if let Some(endpoint) = &args.endpoint
                        && next.anomaly.as_ref().and_then(|a| a.endpoint.as_ref()) != Some(endpoint)
                    {
                        continue;
                    }
                    if cli.json {
                        println!("{}", serde_json::to_string(&next).context("encoding JSON")?);
                    } else {
                        println!("{}", anomaly_row(&next).join("  "));
                    }
                }
            }
        }
        Command::Agents => {
            let agents = client
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(|s| status_error(&url, s))?
                .into_inner()
                .agents;
            if cli.json {
                return print_json(&agents);
            }
            let rows: Vec<_> = agents.iter().map(agent_row).collect();
            print_table(
                &[
                    "AGENT",
                    "HOST",
                    "VERSION",
                    "KERNEL",
                    "STRATEGY",
                    "CONNECTED",
                    "LAST HEARTBEAT",
                    "BATCHES",
                    "DROPS",
                    "REFUSED",
                    "BLIND SPOTS",
                ],
                &rows,
            );
            // What each agent cannot read, and how much of its TLS that is.
            for a in &agents {
                for line in blind_spot_lines(a) {
                    println!("{line}");
                }
            }
        }
        Command::Openapi { service } => {
            let document = client
                .export_open_api(ExportOpenApiRequest {
                    service: service.clone(),
                })
                .await
                .map_err(|s| status_error(&url, s))?
                .into_inner();
            println!("{}", document.json);
        }
    }
    Ok(())
}

fn agent_row(a: &AgentStatus) -> Vec<String> {
    let drops: u64 = a
        .counters
        .iter()
        .filter(|(k, _)| k.contains("drop"))
        .map(|(_, v)| *v)
        .fold(0u64, u64::saturating_add);
    let blind: Vec<String> = a.blind_spots.iter().map(|b| b.kind.clone()).collect();
    vec![
        a.agent_id.clone(),
        a.host.clone(),
        a.agent_version.clone(),
        a.kernel.clone(),
        a.capture_strategy.clone(),
        if a.connected {
            "yes".into()
        } else {
            "no".into()
        },
        time(a.last_heartbeat_unix_ns),
        a.batches_committed.to_string(),
        drops.to_string(),
        a.items_refused.to_string(),
        list(&blind),
    ]
}

/// The blind spots of one agent with their details, and the unreadable share of its TLS.
fn blind_spot_lines(a: &AgentStatus) -> Vec<String> {
    let mut out = Vec::new();
    let counter = |k: &str| a.counters.get(k).copied().unwrap_or(0);
    if counter("tls.connections") > 0 {
        out.push(format!(
            "{}: TLS unreadable: {} of {} connections ({:.1}%), {} of {} bytes ({:.1}%)",
            a.agent_id,
            counter("tls.blind_connections"),
            counter("tls.connections"),
            counter("tls.blind_connections_permille") as f64 / 10.0,
            counter("tls.blind_bytes"),
            counter("tls.bytes"),
            counter("tls.blind_bytes_permille") as f64 / 10.0,
        ));
    }
    for b in &a.blind_spots {
        out.push(format!(
            "{}: blind spot {}: {}",
            a.agent_id, b.kind, b.detail
        ));
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `sonde endpoints | head`: end quietly when the reader goes away, as other CLIs do, instead
    // of panicking in println! (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of one signal before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sonde: {error:#}");
            let code = match error.downcast_ref::<CliError>() {
                Some(CliError::Unreachable { .. }) => 3,
                Some(CliError::Auth(_)) => 4,
                Some(CliError::NotFound(_)) => 5,
                None => 1,
            };
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel drops travel as `drops.kernel` beside the per-counter `kernel.*` values: the
    /// DROPS column counts them once.
    #[test]
    fn the_drops_column_sums_every_counter_named_drops() {
        let a = AgentStatus {
            counters: [
                ("drops.kernel".to_string(), 7),
                ("kernel.ring_full_data".to_string(), 7),
                ("export.items_dropped".to_string(), 2),
                ("kernel.data_events".to_string(), 1000),
            ]
            .into_iter()
            .collect(),
            ..AgentStatus::default()
        };
        let header_drops = 8; // AGENT HOST VERSION KERNEL STRATEGY CONNECTED HEARTBEAT BATCHES DROPS
        assert_eq!(agent_row(&a)[header_drops], "9");
    }
}
