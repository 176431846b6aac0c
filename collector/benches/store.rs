//! Collector benchmark: ingest throughput over gRPC, then query latency over gRPC on a store
//! holding 100,000 endpoints and 1,000,000 anomalies (bulk-loaded through the same commit path).
//!
//! `cargo bench -p sonde-collector --bench store`; `SONDE_BENCH_SCALE=0.1` shrinks the store.

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

struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<CollectorMessage>,
}

impl Session {
    async fn open(url: &str, agent: &str) -> anyhow::Result<Session> {
        let mut client = IngestClient::connect(url.to_string()).await?;
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

    /// Sends every batch with up to 8 in flight, waits for the last ack.
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
            if in_flight >= 8 {
                self.next_ack().await?;
                in_flight -= 1;
            }
        }
        while self.next_ack().await? < last {}
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

async fn latency<F, Fut>(name: &str, iterations: usize, mut call: F) -> anyhow::Result<()>
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
    println!(
        "query {name:<40} p50 {:>8.2} ms  p99 {:>8.2} ms  ({rows} rows)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
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
    let endpoints = (100_000.0 * scale) as u64;
    let anomalies = (1_000_000.0 * scale) as u64;
    let dir = tempfile::tempdir()?;
    let collector = sonde_collector::spawn(CollectorConfig {
        listen: "127.0.0.1:0".parse()?,
        database: dir.path().join("bench.db"),
        ..CollectorConfig::default()
    })
    .await?;
    let url = collector.url(false);
    println!("store: {endpoints} endpoints, {anomalies} anomalies; synchronous=FULL; 2-core VM");

    // 1. Ingest over gRPC.
    let mut session = Session::open(&url, "bench-agent").await?;
    let grpc_endpoints = 20_000u64.min(endpoints);
    let batches: Vec<Batch> = (0..grpc_endpoints / 500)
        .map(|b| Batch {
            seq: b + 1,
            endpoint_updates: (b * 500..(b + 1) * 500).map(endpoint).collect(),
            ..Batch::default()
        })
        .collect();
    let start = Instant::now();
    session.ingest(batches).await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ingest gRPC endpoint updates (new, batches of 500): {:>9.0} /s",
        grpc_endpoints as f64 / secs
    );
    let batches: Vec<Batch> = (0..grpc_endpoints / 500)
        .map(|b| Batch {
            seq: 1_000 + b,
            endpoint_updates: (b * 500..(b + 1) * 500).map(endpoint).collect(),
            ..Batch::default()
        })
        .collect();
    let start = Instant::now();
    session.ingest(batches).await?;
    println!(
        "ingest gRPC endpoint updates (existing, batches of 500): {:>9.0} /s",
        grpc_endpoints as f64 / start.elapsed().as_secs_f64()
    );
    let grpc_anomalies = 100_000u64.min(anomalies);
    let batches: Vec<Batch> = (0..grpc_anomalies / 1000)
        .map(|b| Batch {
            seq: 2_000 + b,
            anomalies: (b * 1000..(b + 1) * 1000)
                .map(|i| anomaly(i, endpoints))
                .collect(),
            ..Batch::default()
        })
        .collect();
    let start = Instant::now();
    session.ingest(batches).await?;
    println!(
        "ingest gRPC anomalies (new keys, batches of 1000): {:>9.0} /s",
        grpc_anomalies as f64 / start.elapsed().as_secs_f64()
    );

    // 2. Bulk-load the rest through the store's commit path, 5,000 items per transaction.
    let store = collector.store.clone();
    let start = Instant::now();
    let load = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut seq = 10_000;
        let mut next = grpc_endpoints;
        while next < endpoints {
            let end = (next + 5_000).min(endpoints);
            seq += 1;
            store.ingest_batch(
                "bench-agent",
                &Batch {
                    seq,
                    endpoint_updates: (next..end).map(endpoint).collect(),
                    ..Batch::default()
                },
            )?;
            next = end;
        }
        let mut next = grpc_anomalies;
        while next < anomalies {
            let end = (next + 5_000).min(anomalies);
            seq += 1;
            store.ingest_batch(
                "bench-agent",
                &Batch {
                    seq,
                    anomalies: (next..end).map(|i| anomaly(i, endpoints)).collect(),
                    ..Batch::default()
                },
            )?;
            next = end;
        }
        Ok(())
    });
    load.await??;
    let loaded = (endpoints - grpc_endpoints) + (anomalies - grpc_anomalies);
    println!(
        "bulk load via store (5000/txn): {loaded} items in {:.1} s = {:.0} items/s",
        start.elapsed().as_secs_f64(),
        loaded as f64 / start.elapsed().as_secs_f64()
    );
    let (e, a) = collector.store.counts()?;
    println!("store now holds {e} endpoints, {a} anomalies");

    // 3. Query latency over gRPC.
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
    latency("ListEndpoints page 100", 200, |_| {
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
    latency("ListEndpoints service filter", 200, |i| {
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
    latency("ListEndpoints shadow+unauthenticated", 100, |_| {
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
    })
    .await?;
    latency("ListEndpoints sensitive=email", 100, |_| {
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
    latency("ListEndpoints host filter", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_endpoints(ListEndpointsRequest {
                host: "bench-agent-host".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .endpoints
            .len())
        }
    })
    .await?;
    latency("GetEndpoint (with recent anomalies)", 200, |i| {
        let mut c = q();
        let id = ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
        async move {
            Ok(c.get_endpoint(GetEndpointRequest { id })
                .await?
                .into_inner()
                .recent_anomalies
                .len())
        }
    })
    .await?;
    latency("ListAnomalies page 100", 200, |_| {
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
    latency("ListAnomalies kind filter", 100, |_| {
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
    latency("ListAnomalies time range", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_anomalies(ListAnomaliesRequest {
                since_unix_ns: 1_000_000 + 400_000,
                until_unix_ns: 1_000_000 + 500_000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .anomalies
            .len())
        }
    })
    .await?;
    latency("ListAnomalies page 50 deep (token)", 100, |_| {
        let mut c = q();
        async move {
            Ok(c.list_anomalies(ListAnomaliesRequest {
                page_token: "1500000:500000".into(),
                page_size: 50,
                ..Default::default()
            })
            .await?
            .into_inner()
            .anomalies
            .len())
        }
    })
    .await?;
    collector.stop().await
}
