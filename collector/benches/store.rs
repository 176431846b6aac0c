//! Collector benchmark, SQLite and PostgreSQL in one run: 50 simulated agents ingest 100,000
//! endpoints and 1,000,000 anomalies over gRPC (the real commit path, durable settings), then
//! query latency over gRPC and the database's size on disk.
//!
//! `cargo bench -p sonde-collector --bench store`; `SONDE_BENCH_SCALE=0.1` shrinks the store;
//! `SONDE_BENCH_STORES=postgres` runs one store only; `SONDE_BENCH_REPLICAS=2` adds a run with
//! the agents spread over that many collectors sharing the database. PostgreSQL is a private server started
//! for the run with the distribution's default settings (fsync on), as the tests do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use sonde_collector::CollectorConfig;
use sonde_proto::v1::ingest_client::IngestClient;
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{
    AgentMessage, Anomaly, Batch, CollectorMessage, EndpointKey, EndpointUpdate, Evidence,
    GetEndpointRequest, Hello, ListAnomaliesRequest, ListEndpointsRequest, SchemaField,
    SensitiveField, ServiceKey, Summary, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn endpoint(i: u64) -> EndpointUpdate {
    EndpointUpdate {
        key: Some(EndpointKey {
            service: Some(ServiceKey {
                server_addr: "10.0.0.5".into(),
                server_port: 8080,
                authority: format!("svc-{}.internal", i % 100),
                process: "api".into(),
                ..ServiceKey::default()
            }),
            method: if i.is_multiple_of(3) {
                "POST".into()
            } else {
                "GET".into()
            },
            path_template: format!("/v1/resource-{i}/{{id}}"),
            protocol: 1,
        }),
        classification: (i % 4) as i32,
        first_seen_unix_ns: 1_000,
        last_seen_unix_ns: 2_000 + i,
        call_count: i % 1000 + 1,
        status_counts: [(200, 10), (404, 1)].into_iter().collect(),
        auth_schemes: if i.is_multiple_of(10) {
            [("none".to_string(), 3)].into()
        } else {
            [("bearer".to_string(), 10)].into()
        },
        sensitive: if i.is_multiple_of(20) {
            vec![SensitiveField {
                kind: "email".into(),
                field_path: "response.body.email".into(),
                count: 2,
            }]
        } else {
            vec![]
        },
        content_types: [("application/json".to_string(), 10)].into(),
        query_params: vec!["page".into(), "limit".into()],
        response_schema: vec![
            SchemaField {
                path: "id".into(),
                types: vec!["integer".into()],
            },
            SchemaField {
                path: "name".into(),
                types: vec!["string".into()],
            },
        ],
        latency_us: Some(Summary {
            count: 10,
            p50: 800,
            p90: 2_000,
            p99: 9_000,
            max: 12_000,
        }),
        ..EndpointUpdate::default()
    }
}

fn anomaly(i: u64, endpoints: u64) -> Anomaly {
    let e = i % endpoints.max(1);
    Anomaly {
        key: format!("bola:{e}:{i}"),
        kind: [
            "auth.bola_enumeration",
            "auth.expired_jwt_accepted",
            "data.excessive_exposure",
        ][(i % 3) as usize]
            .into(),
        first_seen_unix_ns: 1_000 + i,
        last_seen_unix_ns: 1_000_000 + i,
        endpoint: Some(format!(
            "svc-{}.internal {} /v1/resource-{e}/{{id}}",
            e % 100,
            if e.is_multiple_of(3) { "POST" } else { "GET" }
        )),
        principal_hash: Some(format!("p{}", i % 5000)),
        client: Some("10.0.0.9".into()),
        severity: (i % 5 + 1) as i32,
        category: (i % 10 + 1) as i32,
        explanation: "principal read 212 distinct object ids in 60 s".into(),
        evidence: Some(Evidence {
            request_line: "GET /v1/resource/{id}".into(),
            status: Some(200),
            request_bytes: 120,
            response_bytes: 2048,
            field_kinds: vec!["email".into()],
            details: [("distinct_ids".to_string(), "212".to_string())].into(),
        }),
        count: 1,
    }
}

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres_server;

/// Simulated agents; each owns an equal share of the endpoints and anomalies.
const AGENTS: u64 = 50;

struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<CollectorMessage>,
}

impl Session {
    async fn open(url: &str, agent: &str) -> anyhow::Result<Session> {
        let mut client = IngestClient::connect(url.to_string())
            .await?
            .max_encoding_message_size(64 << 20);
        let (tx, out) = mpsc::channel(64);
        let hello = Hello {
            agent_id: agent.into(),
            host: format!("{agent}-host"),
            ..Hello::default()
        };
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await?;
        let mut rx = client.report(ReceiverStream::new(out)).await?.into_inner();
        rx.message().await?.context("no hello ack")?;
        Ok(Session { tx, rx })
    }

    /// Sends every batch with up to 4 in flight, waits for the last ack.
    async fn ingest(&mut self, batches: Vec<Batch>) -> anyhow::Result<()> {
        let last = batches.last().map(|b| b.seq).unwrap_or(0);
        let mut in_flight = 0;
        for batch in batches {
            self.tx
                .send(AgentMessage {
                    body: Some(agent_message::Body::Batch(batch)),
                })
                .await?;
            in_flight += 1;
            if in_flight >= 4 {
                self.next_ack().await?;
                in_flight -= 1;
            }
        }
        while in_flight > 0 && self.next_ack().await? < last {
            in_flight -= 1;
        }
        Ok(())
    }

    async fn next_ack(&mut self) -> anyhow::Result<u64> {
        match self.rx.message().await?.and_then(|m| m.body) {
            Some(collector_message::Body::Ack(a)) => Ok(a.seq),
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// One line of the summary table.
struct Measure {
    name: String,
    value: String,
}

async fn latency<F, Fut>(
    results: &mut Vec<Measure>,
    name: &str,
    iterations: usize,
    mut call: F,
) -> anyhow::Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut samples = Vec::with_capacity(iterations);
    let mut rows = 0;
    for i in 0..iterations {
        let start = Instant::now();
        rows = call(i).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let (p50, p99) = (
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
    );
    println!("  query {name:<40} p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  ({rows} rows)");
    results.push(Measure {
        name: format!("{name} p50 / p99 (ms)"),
        value: format!("{p50:.2} / {p99:.2}"),
    });
    Ok(())
}

/// Runs `batches_of(agent)` for every agent concurrently, one session each, agents spread over
/// the collectors at `urls`; returns seconds.
async fn ingest_all(
    urls: &[String],
    batches_of: impl Fn(u64) -> Vec<Batch>,
) -> anyhow::Result<f64> {
    let mut sessions = Vec::new();
    for agent in 0..AGENTS {
        let url = &urls[agent as usize % urls.len()];
        sessions.push((
            Session::open(url, &format!("agent-{agent}")).await?,
            batches_of(agent),
        ));
    }
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(mut session, batches)| tokio::spawn(async move { session.ingest(batches).await }))
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Agent `agent`'s items among `0..total` (every AGENTS-th), in batches of `size`, numbered
/// from `first_seq`.
fn shares(agent: u64, total: u64, size: u64) -> Vec<Vec<u64>> {
    let mine: Vec<u64> = (agent..total).step_by(AGENTS as usize).collect();
    mine.chunks(size as usize).map(<[u64]>::to_vec).collect()
}

async fn run_store(
    label: &str,
    database: PathBuf,
    replicas: usize,
    endpoints: u64,
    anomalies: u64,
) -> anyhow::Result<Vec<Measure>> {
    let mut results = Vec::new();
    let mut collectors = Vec::new();
    for _ in 0..replicas {
        collectors.push(
            sonde_collector::spawn(CollectorConfig {
                listen: "127.0.0.1:0".parse()?,
                database: database.clone(),
                max_message_bytes: 64 << 20,
                ..CollectorConfig::default()
            })
            .await?,
        );
    }
    let urls: Vec<String> = collectors.iter().map(|c| c.url(false)).collect();
    let collector = &collectors[0];
    let url = collector.url(false);
    println!(
        "{label}: {endpoints} endpoints, {anomalies} anomalies from {AGENTS} agents over {replicas} collector(s); durable commits"
    );

    // 1. Ingest over gRPC, all agents at once.
    let secs = ingest_all(&urls, |agent| {
        shares(agent, endpoints, 500)
            .into_iter()
            .enumerate()
            .map(|(n, ids)| Batch {
                seq: n as u64 + 1,
                endpoint_updates: ids.into_iter().map(endpoint).collect(),
                ..Batch::default()
            })
            .collect()
    })
    .await?;
    let rate = endpoints as f64 / secs;
    println!("  ingest endpoint updates (new, batches of 500): {rate:>9.0} /s ({secs:.1} s)");
    results.push(Measure {
        name: "ingest endpoint updates, new (/s)".into(),
        value: format!("{rate:.0}"),
    });
    let secs = ingest_all(&urls, |agent| {
        shares(agent, endpoints, 500)
            .into_iter()
            .enumerate()
            .map(|(n, ids)| Batch {
                seq: 1_000 + n as u64,
                endpoint_updates: ids.into_iter().map(endpoint).collect(),
                ..Batch::default()
            })
            .collect()
    })
    .await?;
    let rate = endpoints as f64 / secs;
    println!("  ingest endpoint updates (existing, batches of 500): {rate:>9.0} /s ({secs:.1} s)");
    results.push(Measure {
        name: "ingest endpoint updates, existing (/s)".into(),
        value: format!("{rate:.0}"),
    });
    let secs = ingest_all(&urls, |agent| {
        shares(agent, anomalies, 1000)
            .into_iter()
            .enumerate()
            .map(|(n, ids)| Batch {
                seq: 10_000 + n as u64,
                anomalies: ids.into_iter().map(|i| anomaly(i, endpoints)).collect(),
                ..Batch::default()
            })
            .collect()
    })
    .await?;
    let rate = anomalies as f64 / secs;
    println!("  ingest anomalies (new keys, batches of 1000): {rate:>9.0} /s ({secs:.1} s)");
    results.push(Measure {
        name: "ingest anomalies, new keys (/s)".into(),
        value: format!("{rate:.0}"),
    });
    let store = collector.store.clone();
    let (e, a, bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (e, a) = store.counts()?;
        Ok((e, a, store.size_on_disk()?))
    })
    .await??;
    anyhow::ensure!(
        (e, a) == (endpoints, anomalies),
        "store holds {e} endpoints, {a} anomalies"
    );
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!("  database size on disk: {mib:.0} MiB");
    results.push(Measure {
        name: "database size on disk (MiB)".into(),
        value: format!("{mib:.0}"),
    });

    // 2. Query latency over gRPC.
    let query = QueryClient::connect(url.clone())
        .await?
        .max_decoding_message_size(64 << 20);
    let ids: Vec<String> = query
        .clone()
        .list_endpoints(ListEndpointsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .endpoints
        .into_iter()
        .map(|e| e.id)
        .collect();
    let q = || query.clone();
    latency(&mut results, "ListEndpoints page 100", 200, |_| {
        let mut c = q();
        async move {
            Ok(c.list_endpoints(ListEndpointsRequest::default())
                .await?
                .into_inner()
                .endpoints
                .len())
        }
    })
    .await?;
    latency(&mut results, "ListEndpoints service filter", 200, |i| {
        let mut c = q();
        async move {
            Ok(c.list_endpoints(ListEndpointsRequest {
                service: format!("svc-{}.internal", i % 100),
                ..Default::default()
            })
            .await?
            .into_inner()
            .endpoints
            .len())
        }
    })
    .await?;
    latency(
        &mut results,
        "ListEndpoints shadow+unauthenticated",
        100,
        |_| {
            let mut c = q();
            async move {
                Ok(c.list_endpoints(ListEndpointsRequest {
                    classification: Some(2),
                    unauthenticated: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .endpoints
                .len())
            }
        },
    )
    .await?;
    latency(&mut results, "ListEndpoints sensitive=email", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_endpoints(ListEndpointsRequest {
                sensitive_kind: "email".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .endpoints
            .len())
        }
    })
    .await?;
    latency(&mut results, "ListEndpoints host filter", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_endpoints(ListEndpointsRequest {
                host: "agent-7-host".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .endpoints
            .len())
        }
    })
    .await?;
    latency(
        &mut results,
        "GetEndpoint (with recent anomalies)",
        200,
        |i| {
            let mut c = q();
            let id = ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
            async move {
                Ok(c.get_endpoint(GetEndpointRequest { id })
                    .await?
                    .into_inner()
                    .recent_anomalies
                    .len())
            }
        },
    )
    .await?;
    latency(&mut results, "ListAnomalies page 100", 200, |_| {
        let mut c = q();
        async move {
            Ok(c.list_anomalies(ListAnomaliesRequest::default())
                .await?
                .into_inner()
                .anomalies
                .len())
        }
    })
    .await?;
    latency(&mut results, "ListAnomalies kind filter", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_anomalies(ListAnomaliesRequest {
                kind: "auth.expired_jwt_accepted".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .anomalies
            .len())
        }
    })
    .await?;
    let (since, until) = (1_000_000 + anomalies * 4 / 10, 1_000_000 + anomalies / 2);
    latency(&mut results, "ListAnomalies time range", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_anomalies(ListAnomaliesRequest {
                since_unix_ns: since,
                until_unix_ns: until,
                ..Default::default()
            })
            .await?
            .into_inner()
            .anomalies
            .len())
        }
    })
    .await?;
    // A page token half way down (last_seen:anomaly_id), as `--follow`-less paging reaches it.
    let token = format!("{}:{}", 1_000_000 + anomalies / 2, anomalies / 2);
    latency(
        &mut results,
        "ListAnomalies page 50 deep (token)",
        100,
        |_| {
            let mut c = q();
            let token = token.clone();
            async move {
                Ok(c.list_anomalies(ListAnomaliesRequest {
                    page_token: token,
                    page_size: 50,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .anomalies
                .len())
            }
        },
    )
    .await?;
    for collector in collectors {
        collector.stop().await?;
    }
    Ok(results)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let scale: f64 = std::env::var("SONDE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let stores = std::env::var("SONDE_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let endpoints = (100_000.0 * scale) as u64;
    let anomalies = (1_000_000.0 * scale) as u64;
    println!("collector store benchmark, scale {scale}; 2-core VM shared with other work");
    let mut columns: Vec<(String, Vec<Measure>)> = Vec::new();
    if stores.contains("sqlite") {
        let dir = tempfile::tempdir()?;
        let results = run_store(
            "SQLite",
            dir.path().join("bench.db"),
            1,
            endpoints,
            anomalies,
        )
        .await?;
        columns.push(("SQLite".into(), results));
    }
    if stores.contains("postgres") {
        let server =
            tokio::task::spawn_blocking(|| postgres_server::PgServer::start(true)).await??;
        let server = std::sync::Arc::new(server);
        let replicas: usize = std::env::var("SONDE_BENCH_REPLICAS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let mut outcome = Ok(());
        let mut counts = vec![1];
        if replicas > 1 {
            counts.push(replicas);
        }
        for count in counts {
            let on = server.clone();
            let url = tokio::task::spawn_blocking(move || {
                on.create_database(&format!("sonde_bench_{count}"))
            })
            .await?;
            let label = if count == 1 {
                "PostgreSQL".to_string()
            } else {
                format!("PostgreSQL, {count} collectors")
            };
            match url {
                Ok(url) => match run_store(&label, url.into(), count, endpoints, anomalies).await {
                    Ok(results) => columns.push((label, results)),
                    Err(error) => outcome = Err(error),
                },
                Err(error) => outcome = Err(error),
            }
            if outcome.is_err() {
                break;
            }
        }
        tokio::task::spawn_blocking(move || server.stop()).await?;
        outcome?;
    }
    // A markdown table of both runs, for the README.
    println!(
        "\n| {endpoints} endpoints, {anomalies} anomalies, {AGENTS} agents | {} |",
        columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(columns.len()));
    if let Some((_, first)) = columns.first() {
        for (row, measure) in first.iter().enumerate() {
            let values: Vec<&str> = columns
                .iter()
                .map(|(_, m)| m.get(row).map_or("", |m| m.value.as_str()))
                .collect();
            println!("| {} | {} |", measure.name, values.join(" | "));
        }
    }
    Ok(())
}
