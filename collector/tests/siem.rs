//! SIEM export against a real HTTP receiver (python's http.server) that refuses the first
//! deliveries: every anomaly arrives exactly once, the file holds one JSON object per anomaly
//! across its rotations, and a receiver that is down never slows ingest.

mod support;

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sonde_proto::v1::Batch;
use support::{Backend, Fixture, Session, anomaly, hello};

fn batch(seq: u64, anomalies: Vec<sonde_proto::v1::Anomaly>) -> Batch {
    Batch {
        seq,
        endpoint_updates: vec![],
        anomalies,
        sealed_at_unix_ns: 0,
        agent_run: 0,
    }
}

/// Starts the flaky receiver; returns the child and its URL.
fn receiver(out: &Path, failures: u32) -> anyhow::Result<(std::process::Child, String)> {
    receiver_with(out, failures, None)
}

/// The same, over HTTPS with `tls` = (certificate, key) PEM files.
fn receiver_with(
    out: &Path,
    failures: u32,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<(std::process::Child, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flaky_receiver.py");
    let mut command = std::process::Command::new("python3");
    command.arg(script).arg(out).arg(failures.to_string());
    if let Some((cert, key)) = tls {
        command.arg(cert).arg(key);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("python3 runs")?;
    let stdout = child.stdout.take().context("receiver stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line.trim().parse().context("receiver port")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = if tls.is_some() {
        "localhost"
    } else {
        "127.0.0.1"
    };
    Ok((child, format!("{scheme}://{host}:{port}/ingest")))
}

/// JSON objects of a JSON-lines text; a line that is not one fails the test.
fn objects(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn keys(objects: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for o in objects {
        let key = o["anomaly"]["key"].as_str().unwrap_or_default().to_string();
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

fn metric(fx: &Fixture, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut text = String::new();
    let registry = fx.collector.metrics.registry();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("metrics encode");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("exposition parses");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(0.0)
}

/// The base file and its rotations, oldest first.
fn rotated_files(base: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| PathBuf::from(format!("{}.{n}", base.display())))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(base.to_path_buf());
    files
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_anomaly_reaches_the_webhook_and_the_file_exactly_once() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let received = scratch.path().join("received.jsonl");
    let (child, url) = receiver(&received, 3)?;
    let _receiver = Kill(child);
    let siem_file = scratch.path().join("anomalies.jsonl");
    let fx = Fixture::start_with(Backend::Sqlite, |c| {
        c.siem.file = Some(siem_file.clone());
        c.siem.file_max_bytes = 4096;
        c.siem.file_keep = 50;
        c.siem.webhook = Some(url.clone());
        c.siem.webhook_batch = 7;
        c.siem.webhook_backoff_ms = 20;
    })
    .await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let mut all = Vec::new();
    for seq in 1..=4u64 {
        let anomalies: Vec<_> = (0..10)
            .map(|i| {
                let key = format!("k-{seq}-{i}");
                all.push(key.clone());
                anomaly(&key, "api.local GET /users/{id}", 1, 5_000 + seq)
            })
            .collect();
        assert_eq!(
            session.batch_acked(batch(seq, anomalies.clone())).await?,
            seq
        );
        if seq == 2 {
            // A redelivered batch (same seq) is skipped by the store: not exported again.
            assert_eq!(session.batch_acked(batch(seq, anomalies)).await?, seq);
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        let delivered = objects(&text);
        if delivered.len() >= all.len() {
            break delivered;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "webhook got {} of {} anomalies",
            delivered.len(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered_keys = keys(&objects(&std::fs::read_to_string(&received)?));
    assert_eq!(delivered_keys.len(), all.len(), "{delivered_keys:?}");
    for key in &all {
        assert_eq!(delivered_keys.get(key), Some(&1), "{key} not exactly once");
    }
    let first = &delivered[0];
    assert_eq!(first["source"], "sonde");
    assert_eq!(first["event"], "anomaly");
    assert_eq!(first["agent_id"], "agent-a");
    assert_eq!(first["anomaly"]["severity"], "SEVERITY_HIGH");
    assert_eq!(first["hosts"], serde_json::json!(["host-a"]));
    assert!(first["id"].as_u64().is_some(), "{first}");

    // The file: every rotation plus the live file, one valid object per anomaly.
    let files = rotated_files(&siem_file);
    assert!(files.len() > 2, "4 KiB files must have rotated: {files:?}");
    let mut text = String::new();
    for f in &files {
        text.push_str(&std::fs::read_to_string(f)?);
        assert!(
            std::fs::metadata(f)?.len() <= 4096,
            "{} too large",
            f.display()
        );
    }
    let in_file = keys(&objects(&text));
    assert_eq!(in_file.len(), all.len());
    assert!(in_file.values().all(|n| *n == 1), "{in_file:?}");

    assert_eq!(
        metric(
            &fx,
            "sonde_collector_siem_exported_total",
            &[("sink", "webhook")]
        ),
        40.0
    );
    assert_eq!(
        metric(
            &fx,
            "sonde_collector_siem_exported_total",
            &[("sink", "file")]
        ),
        40.0
    );
    assert!(metric(&fx, "sonde_collector_siem_retries_total", &[]) >= 3.0);
    assert_eq!(
        metric(&fx, "sonde_collector_duplicate_batches_total", &[]),
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_never_slows_ingest_and_drops_are_counted() -> anyhow::Result<()> {
    // Nothing listens on this port: every delivery fails and is retried slowly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let fx = Fixture::start_with(Backend::Sqlite, |c| {
        c.siem.webhook = Some(format!("http://127.0.0.1:{port}/"));
        c.siem.queue = 5;
        c.siem.webhook_batch = 5;
        c.siem.webhook_backoff_ms = 10_000;
    })
    .await?;
    let mut session = Session::open(&fx.url(), hello("agent-b", "host-b")).await?;
    let started = std::time::Instant::now();
    for seq in 1..=5u64 {
        let anomalies = (0..10)
            .map(|i| anomaly(&format!("d-{seq}-{i}"), "api.local GET /x", 1, 5_000))
            .collect();
        assert_eq!(session.batch_acked(batch(seq, anomalies)).await?, seq);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ingest waited for the SIEM: {:?}",
        started.elapsed()
    );
    let dropped = metric(
        &fx,
        "sonde_collector_siem_dropped_total",
        &[("sink", "webhook"), ("reason", "queue_full")],
    );
    // At most one request's lines in flight and a full queue are kept; the rest is counted.
    assert!(dropped >= 40.0, "dropped {dropped}");
    assert!(dropped <= 45.0, "dropped {dropped}");
    assert_eq!(
        metric(&fx, "sonde_collector_batches_ingested_total", &[]),
        5.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_verified_against_its_ca() -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let scratch = tempfile::tempdir()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca)?;
    let (ca_pem, cert_pem, key_pem) = (
        scratch.path().join("ca.pem"),
        scratch.path().join("cert.pem"),
        scratch.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem())?;
    std::fs::write(&cert_pem, cert.pem())?;
    std::fs::write(&key_pem, key.serialize_pem())?;
    let received = scratch.path().join("received.jsonl");
    let (child, url) = receiver_with(&received, 1, Some((&cert_pem, &key_pem)))?;
    let _receiver = Kill(child);

    // Trusting another CA: the handshake fails, nothing is accepted, the lines are given up.
    let other = CertifiedIssuer::self_signed(
        {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        },
        KeyPair::generate()?,
    )?;
    let other_pem = scratch.path().join("other.pem");
    std::fs::write(&other_pem, other.pem())?;
    let untrusting = Fixture::start_with(Backend::Sqlite, |c| {
        c.siem.webhook = Some(url.clone());
        c.siem.webhook_ca = Some(other_pem.clone());
        c.siem.webhook_attempts = 2;
        c.siem.webhook_backoff_ms = 10;
    })
    .await?;
    let mut session = Session::open(&untrusting.url(), hello("agent-u", "host-u")).await?;
    session
        .batch_acked(batch(1, vec![anomaly("u-1", "api.local GET /x", 1, 5_000)]))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &untrusting,
        "sonde_collector_siem_dropped_total",
        &[("sink", "webhook"), ("reason", "gave_up")],
    ) < 1.0
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never gave up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!received.exists(), "an unverified server got data");

    let fx = Fixture::start_with(Backend::Sqlite, |c| {
        c.siem.webhook = Some(url.clone());
        c.siem.webhook_ca = Some(ca_pem.clone());
        c.siem.webhook_backoff_ms = 20;
    })
    .await?;
    let mut session = Session::open(&fx.url(), hello("agent-t", "host-t")).await?;
    let anomalies = (0..5)
        .map(|i| anomaly(&format!("t-{i}"), "api.local GET /x", 1, 5_000))
        .collect();
    session.batch_acked(batch(1, anomalies)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = keys(&objects(
            &std::fs::read_to_string(&received).unwrap_or_default(),
        ));
        if got.len() == 5 {
            assert!(got.values().all(|n| *n == 1), "{got:?}");
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "got {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_every_queued_line() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let siem_file = scratch.path().join("anomalies.jsonl");
    let fx =
        Fixture::start_with(Backend::Sqlite, |c| c.siem.file = Some(siem_file.clone())).await?;
    let mut session = Session::open(&fx.url(), hello("agent-s", "host-s")).await?;
    for seq in 1..=10u64 {
        let anomalies = (0..100)
            .map(|i| anomaly(&format!("s-{seq}-{i}"), "api.local GET /x", 1, 5_000))
            .collect();
        session.batch_acked(batch(seq, anomalies)).await?;
    }
    drop(session);
    let Fixture {
        dir: _dir,
        collector,
        ..
    } = fx;
    collector.stop().await?;
    let written = keys(&objects(&std::fs::read_to_string(&siem_file)?));
    assert_eq!(written.len(), 1000);
    assert!(written.values().all(|n| *n == 1));
    Ok(())
}
