//! The metrics listener against a real HTTP client (curl) and a real exposition parser.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sonde_metrics::{MetricsServer, ProcessCollector, ReadyCheck};

/// `curl -s -w '\n%{http_code}'`: (status, body).
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("exposition parses")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_over_http() -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let requests = Counter::<u64>::default();
    registry.register("test_requests", "Requests handled.", requests.clone());
    registry.register_collector(Box::new(ProcessCollector));
    let ready_flag = Arc::new(AtomicBool::new(false));
    let flag = ready_flag.clone();
    let ready: ReadyCheck = Arc::new(move || {
        if flag.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("pipeline not started".into())
        }
    });
    let server = MetricsServer::start("127.0.0.1:0".parse()?, Arc::new(registry), ready).await?;
    let base = format!("http://{}", server.local_addr());

    requests.inc_by(7);
    let (status, body) = tokio::task::spawn_blocking({
        let url = format!("{base}/metrics");
        move || curl(&url)
    })
    .await?;
    assert_eq!(status, 200);
    let scrape = parse(&body);
    assert_eq!(value(&scrape, "test_requests_total"), Some(7.0), "{body}");
    assert!(value(&scrape, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(
        value(&scrape, "process_cpu_seconds_total").is_some(),
        "{body}"
    );
    assert!(value(&scrape, "process_threads").unwrap_or(0.0) >= 2.0);

    let get = |path: &str| {
        let url = format!("{base}{path}");
        tokio::task::spawn_blocking(move || curl(&url))
    };
    assert_eq!(get("/healthz").await?.0, 200);
    let (status, body) = get("/readyz").await?;
    assert_eq!(status, 503);
    assert!(body.contains("pipeline not started"), "{body}");
    ready_flag.store(true, Ordering::Relaxed);
    assert_eq!(get("/readyz").await?.0, 200);
    assert_eq!(get("/nothing").await?.0, 404);

    server.stop().await;
    assert_eq!(get("/healthz").await?.0, 0, "stopped server still answers");
    Ok(())
}
