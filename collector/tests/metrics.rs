//! `sonde-collector --metrics-listen`: the exposition parsed by a real parser after real ingest
//! and queries, health and readiness over HTTP (curl).

mod support;

use std::time::Duration;

use anyhow::Context;
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{Batch, ListEndpointsRequest, WatchAnomaliesRequest, collector_message};
use support::{Session, anomaly, endpoint, hello};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// (status, body) of a GET with curl; status 0 when nothing answers.
fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn get(url: &str) -> Scrape {
        let (status, body) = curl(url);
        assert_eq!(status, 200, "{body}");
        Scrape(
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
                .expect("the exposition parses"),
        )
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map(|b| b.count).unwrap_or(f64::NAN)
                }
                _ => f64::NAN,
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_queries_and_watchers_move_the_collector_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let grpc_port = free_port()?;
    let metrics_port = free_port()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
        .arg("--database")
        .arg(dir.path().join("c.db"))
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env_remove("SONDE_QUERY_TOKEN")
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{grpc_port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while curl(&format!("{metrics}/readyz")).0 != 200 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(curl(&format!("{metrics}/healthz")).0, 200);
    let before = Scrape::get(&format!("{metrics}/metrics"));
    assert_eq!(
        before.value("sonde_collector_batches_ingested_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        before.value("sonde_collector_agents_connected", &[]),
        Some(0.0)
    );

    let mut session = Session::open(&url, hello("agent-m", "host-m")).await?;
    let batch = Batch {
        seq: 1,
        endpoint_updates: vec![
            endpoint("api.local", "GET", "/users/{id}", 3),
            endpoint("api.local", "POST", "/orders", 1),
        ],
        anomalies: vec![anomaly("k1", "api.local GET /users/{id}", 1, 5_000)],
        sealed_at_unix_ns: 0,
        agent_run: 0,
    };
    assert_eq!(session.batch_acked(batch.clone()).await?, 1);
    // The same seq again: skipped and counted as a duplicate.
    assert_eq!(session.batch_acked(batch).await?, 1);
    // seq 0 is invalid: refused with an Error.
    let refused = session
        .batch(Batch {
            seq: 0,
            ..Batch::default()
        })
        .await?;
    assert!(
        matches!(refused, collector_message::Body::Error(_)),
        "{refused:?}"
    );

    let mut query = QueryClient::connect(url.clone()).await?;
    query
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .context("list endpoints")?;
    let watch = query
        .watch_anomalies(WatchAnomaliesRequest::default())
        .await?
        .into_inner();

    let after = {
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || Scrape::get(&format!("{m}/metrics"))).await?
    };
    let v = |name: &str, labels: &[(&str, &str)]| after.value(name, labels);
    assert_eq!(v("sonde_collector_batches_ingested_total", &[]), Some(1.0));
    assert_eq!(
        v(
            "sonde_collector_items_ingested_total",
            &[("kind", "endpoint_update")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "sonde_collector_items_ingested_total",
            &[("kind", "anomaly")]
        ),
        Some(1.0)
    );
    assert_eq!(v("sonde_collector_duplicate_batches_total", &[]), Some(1.0));
    assert_eq!(
        v(
            "sonde_collector_batches_refused_total",
            &[("reason", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(v("sonde_collector_agents_connected", &[]), Some(1.0));
    assert_eq!(v("sonde_collector_endpoints_stored", &[]), Some(2.0));
    assert_eq!(v("sonde_collector_anomalies_stored", &[]), Some(1.0));
    assert!(v("sonde_collector_database_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(
        v("sonde_collector_ingest_seconds", &[]),
        Some(1.0),
        "one observation"
    );
    assert_eq!(
        v(
            "sonde_collector_query_requests_total",
            &[("method", "list_endpoints"), ("code", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "sonde_collector_query_seconds",
            &[("method", "list_endpoints")]
        ),
        Some(1.0)
    );
    assert_eq!(v("sonde_collector_watch_subscribers", &[]), Some(1.0));
    assert!(v("process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);

    drop(watch);
    drop(session);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics.clone();
        let s = tokio::task::spawn_blocking(move || Scrape::get(&format!("{m}/metrics"))).await?;
        if s.value("sonde_collector_watch_subscribers", &[]) == Some(0.0)
            && s.value("sonde_collector_agents_connected", &[]) == Some(0.0)
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "closed watch and stream still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = child.id().context("child pid")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(libc::pid_t::try_from(pid)?, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        curl(&format!("{metrics}/healthz")).0,
        0,
        "listener gone with the process"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_metrics_address_that_is_taken_stops_start_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--database")
        .arg(dir.path().join("c.db"))
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics listener"), "{stderr}");
    Ok(())
}
