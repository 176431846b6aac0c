//! The exporter against the real collector over loopback gRPC: outages, restarts of either side,
//! the spool bound, a full disk and backpressure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sonde_collector::{CollectorConfig, RunningCollector};
use sonde_export::{ExportStats, Exporter, ExporterConfig, Hello, TrySendError};
use sonde_proto::v1::{Anomaly, EndpointKey, EndpointUpdate, ListEndpointsRequest, ServiceKey};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn collector(port: u16, db: &Path) -> anyhow::Result<RunningCollector> {
    sonde_collector::spawn(CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        database: db.to_path_buf(),
        synchronous_full: false,
        shutdown_grace_secs: 5,
        ..CollectorConfig::default()
    })
    .await
}

fn exporter_config(port: u16, spool: PathBuf) -> ExporterConfig {
    let hello = Hello {
        agent_id: "agent-1".into(),
        host: "host-1".into(),
        agent_version: "0.1.0".into(),
        kernel: "6.12".into(),
        capture_strategy: "sock-tracepoints".into(),
        started_at_unix_ns: 1,
    };
    let mut config = ExporterConfig::new(format!("http://127.0.0.1:{port}"), hello, spool);
    config.max_batch_items = 20;
    config.max_batch_delay = Duration::from_millis(30);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    config.connect_timeout = Duration::from_secs(1);
    config.fsync = false;
    config
}

fn endpoint(path: &str, calls: u64) -> EndpointUpdate {
    EndpointUpdate {
        key: Some(EndpointKey {
            service: Some(ServiceKey {
                authority: "svc".into(),
                ..ServiceKey::default()
            }),
            method: "GET".into(),
            path_template: path.into(),
            protocol: sonde_proto::v1::Protocol::Http1 as i32,
        }),
        call_count: calls,
        last_seen_unix_ns: calls,
        ..EndpointUpdate::default()
    }
}

fn anomaly(key: &str) -> Anomaly {
    Anomaly {
        key: key.into(),
        kind: "inventory.shadow_endpoint".into(),
        severity: sonde_proto::v1::Severity::Medium as i32,
        category: sonde_proto::v1::OwaspCategory::Api9Inventory as i32,
        count: 1,
        last_seen_unix_ns: 1,
        ..Anomaly::default()
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// (batches, endpoint updates, anomalies) committed for the agent.
fn committed(collector: &RunningCollector) -> anyhow::Result<(u64, u64, u64)> {
    let agents = collector.store.list_agents()?;
    let agent = agents
        .iter()
        .find(|a| a.agent_id == "agent-1")
        .context("agent not registered")?;
    Ok((
        agent.batches_committed,
        agent.endpoint_updates_committed,
        agent.anomalies_committed,
    ))
}

fn calls_of(collector: &RunningCollector, path: &str) -> anyhow::Result<u64> {
    let (endpoints, _) = collector.store.list_endpoints(&ListEndpointsRequest {
        page_size: 1000,
        ..Default::default()
    })?;
    Ok(endpoints
        .iter()
        .find(|e| e.path_template == path)
        .map(|e| e.call_count)
        .unwrap_or(0))
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_back_delivers_everything_once_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let exporter = Exporter::start(exporter_config(port, dir.path().join("spool")))?;
    let handle = exporter.handle();
    for i in 0..200 {
        handle
            .send_endpoint(endpoint(&format!("/e/{i}"), 1))
            .await?;
    }
    // The same endpoint with rising totals: only the last may win, which it does only in order.
    for total in 1..=100 {
        handle.send_endpoint(endpoint("/counter", total)).await?;
    }
    for i in 0..49 {
        handle.send_anomaly(anomaly(&format!("k{i}"))).await?;
    }
    handle
        .send_anomaly(sonde_model::Anomaly {
            key: "model".into(),
            kind: "auth.expired_jwt_accepted".into(),
            first_seen_ns: 1,
            last_seen_ns: 2,
            endpoint: Some("svc GET /counter".into()),
            principal_hash: None,
            client: None,
            severity: sonde_model::Severity::Critical,
            category: sonde_model::OwaspCategory::Api2BrokenAuth,
            explanation: "expired token accepted".into(),
            evidence: sonde_model::Evidence::default(),
            count: 4,
        })
        .await?;
    handle.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = exporter.stats();
    assert!(!down.connected);
    assert_eq!(down.acked_batches, 0);
    assert_eq!(down.pending_batches, down.spooled_batches);
    assert!(down.spooled_batches >= 18, "{down:?}");
    assert_eq!(
        segment_files(&dir.path().join("spool")).len() as u64,
        down.pending_batches
    );

    let collector = collector(port, &dir.path().join("collector.db")).await?;
    wait_for("the spool to drain", Duration::from_secs(20), || {
        exporter.stats().pending_batches == 0
    })
    .await?;
    let stats = exporter.stats();
    assert_eq!(committed(&collector)?, (stats.spooled_batches, 300, 50));
    assert_eq!(stats.acked_items, 350);
    assert_eq!(calls_of(&collector, "/counter")?, 100);
    assert_eq!(calls_of(&collector, "/e/199")?, 1);
    let (anomalies, _) = collector.store.list_anomalies(&Default::default())?;
    let model = anomalies
        .iter()
        .filter_map(|a| a.anomaly.as_ref())
        .find(|a| a.key == "model")
        .context("model anomaly")?;
    assert_eq!(
        (model.count, model.severity),
        (4, sonde_proto::v1::Severity::Critical as i32)
    );
    assert!(
        segment_files(&dir.path().join("spool")).is_empty(),
        "acked segments must be deleted"
    );
    exporter.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_bound_is_respected_and_evictions_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let spool = dir.path().join("spool");
    let mut config = exporter_config(port, spool.clone());
    config.max_spool_bytes = 8 * 1024;
    config.max_batch_items = 10;
    let exporter = Exporter::start(config)?;
    let handle = exporter.handle();
    for i in 0..1000 {
        handle
            .send_endpoint(endpoint(&format!("/bounded/{i}"), 1))
            .await?;
    }
    handle.flush().await?;
    let stats = exporter.stats();
    assert!(stats.evicted_batches > 0, "{stats:?}");
    assert_eq!(stats.evicted_items, stats.evicted_batches * 10);
    assert!(stats.spooled_bytes <= 8 * 1024, "{stats:?}");
    let on_disk: u64 = segment_files(&spool).iter().map(|(_, size)| size).sum();
    assert!(on_disk <= 8 * 1024, "spool holds {on_disk} bytes");

    let collector = collector(port, &dir.path().join("collector.db")).await?;
    wait_for("the spool to drain", Duration::from_secs(20), || {
        exporter.stats().pending_batches == 0
    })
    .await?;
    let (_, updates, _) = committed(&collector)?;
    assert_eq!(updates, 1000 - stats.evicted_items);
    // The newest survive eviction.
    assert_eq!(calls_of(&collector, "/bounded/999")?, 1);
    assert_eq!(calls_of(&collector, "/bounded/0")?, 0);
    exporter.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exporter_delivers_its_spool() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let spool = dir.path().join("spool");
    let first = Exporter::start(exporter_config(port, spool.clone()))?;
    for i in 0..100 {
        first
            .handle()
            .send_endpoint(endpoint(&format!("/r/{i}"), 1))
            .await?;
    }
    for i in 0..10 {
        first
            .handle()
            .send_anomaly(anomaly(&format!("r{i}")))
            .await?;
    }
    let stopped: ExportStats = first.shutdown(Duration::ZERO).await;
    assert_eq!(stopped.acked_batches, 0);
    let files = segment_files(&spool);
    assert_eq!(files.len() as u64, stopped.pending_batches);
    assert!(!files.is_empty());

    let collector = collector(port, &dir.path().join("collector.db")).await?;
    let second = Exporter::start(exporter_config(port, spool.clone()))?;
    assert_eq!(second.stats().pending_batches, stopped.pending_batches);
    wait_for("the old spool to drain", Duration::from_secs(20), || {
        second.stats().pending_batches == 0
    })
    .await?;
    assert_eq!(committed(&collector)?.1, 100);
    assert_eq!(committed(&collector)?.2, 10);
    // New batches get seqs above the replayed ones, so they are not mistaken for repeats.
    second
        .handle()
        .send_endpoint(endpoint("/after-restart", 3))
        .await?;
    second.handle().flush().await?;
    wait_for("the new batch", Duration::from_secs(10), || {
        second.stats().pending_batches == 0
    })
    .await?;
    assert_eq!(committed(&collector)?.1, 101);
    assert_eq!(calls_of(&collector, "/after-restart")?, 3);
    second.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_restart_mid_run_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let db = dir.path().join("collector.db");
    let mut running = Some(collector(port, &db).await?);
    let exporter = Exporter::start(exporter_config(port, dir.path().join("spool")))?;
    let handle = exporter.handle();
    const TOTAL: u64 = 1500;
    let producer = tokio::spawn(async move {
        for total in 1..=TOTAL {
            handle.send_endpoint(endpoint("/live", total)).await?;
            if total % 3 == 0 {
                handle
                    .send_anomaly(anomaly(&format!("live{total}")))
                    .await?;
            }
            if total % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        handle.flush().await?;
        anyhow::Ok(())
    });
    wait_for("some deliveries", Duration::from_secs(10), || {
        exporter.stats().acked_batches >= 5
    })
    .await?;
    let before = running.take().context("collector")?;
    let acked_before_stop = exporter.stats().acked_items;
    before.stop().await?;
    {
        // Everything acked so far is in the file, read by a fresh store.
        let store = sonde_collector::store::Store::open(&db, &Default::default())?;
        let agents = store.list_agents()?;
        let stored = agents
            .first()
            .map(|a| a.endpoint_updates_committed + a.anomalies_committed)
            .unwrap_or(0);
        assert!(
            stored >= acked_before_stop,
            "acked {acked_before_stop}, stored {stored}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = collector(port, &db).await?;
    producer.await??;
    wait_for("the spool to drain", Duration::from_secs(30), || {
        exporter.stats().pending_batches == 0
    })
    .await?;
    let (_, updates, anomalies) = committed(&after)?;
    assert_eq!((updates, anomalies), (TOTAL, TOTAL / 3));
    assert_eq!(calls_of(&after, "/live")?, TOTAL);
    assert!(exporter.stats().reconnects >= 1);
    exporter.shutdown(Duration::from_secs(1)).await;
    after.stop().await
}

/// A tmpfs of a few KiB stands in for a full disk (the test runs as root, like CI).
struct TinyTmpfs(PathBuf);

impl TinyTmpfs {
    fn mount(path: &Path, size: &str) -> anyhow::Result<TinyTmpfs> {
        std::fs::create_dir_all(path)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .context("running mount")?;
        anyhow::ensure!(
            status.success(),
            "mounting a tmpfs at {} failed (this test needs root)",
            path.display()
        );
        Ok(TinyTmpfs(path.to_path_buf()))
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_is_counted_and_delivery_continues() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("spool");
    let _mount = TinyTmpfs::mount(&spool, "16k")?;
    let port = free_port()?;
    let mut config = exporter_config(port, spool.clone());
    config.max_batch_items = 50;
    let exporter = Exporter::start(config)?;
    let handle = exporter.handle();
    for i in 0..1000 {
        handle
            .send_endpoint(endpoint(
                &format!("/full/{i:04}/with/a/longer/path/to/fill/the/disk"),
                1,
            ))
            .await?;
    }
    handle.flush().await?;
    let stats = exporter.stats();
    assert!(stats.spool_write_errors > 0, "{stats:?}");
    assert_eq!(stats.pending_batches, 20);
    assert_eq!(stats.evicted_batches, 0);

    let collector = collector(port, &dir.path().join("collector.db")).await?;
    wait_for("delivery from memory", Duration::from_secs(20), || {
        exporter.stats().pending_batches == 0
    })
    .await?;
    assert_eq!(committed(&collector)?.1, 1000);
    assert!(segment_files(&spool).is_empty());
    exporter.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}

#[tokio::test]
async fn a_full_queue_is_visible_to_the_caller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = exporter_config(free_port()?, dir.path().join("spool"));
    config.queue_capacity = 3;
    // On this single-threaded runtime the export task cannot run until the test yields.
    let exporter = Exporter::start(config)?;
    let handle = exporter.handle();
    for i in 0..3 {
        handle
            .try_send_endpoint(endpoint(&format!("/q/{i}"), 1))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    match handle.try_send_endpoint(endpoint("/q/full", 7)) {
        Err(TrySendError::Full(returned)) => assert_eq!(returned.call_count, 7),
        other => anyhow::bail!("expected Full, got {other:?}"),
    }
    assert!(matches!(
        handle.try_send_anomaly(anomaly("a")),
        Err(TrySendError::Full(_))
    ));
    // The awaiting variant waits for room instead.
    tokio::time::timeout(
        Duration::from_secs(5),
        handle.send_endpoint(endpoint("/q/waited", 1)),
    )
    .await??;
    handle.flush().await?;
    assert_eq!(exporter.stats().queued_items, 4);
    assert_eq!(exporter.stats().spooled_batches, 1);
    let stopped = exporter.shutdown(Duration::ZERO).await;
    assert!(matches!(
        handle.send_endpoint(endpoint("/late", 1)).await,
        Err(sonde_export::ExportError::Closed)
    ));
    assert_eq!(stopped.pending_batches, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_export_needs_the_agent_certificate() -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &ca)?;
    let agent_key = KeyPair::generate()?;
    let agent = CertificateParams::new(vec!["agent-1".to_string()])?.signed_by(&agent_key, &ca)?;
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let port = free_port()?;
    let collector = sonde_collector::spawn(CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        database: dir.path().join("collector.db"),
        synchronous_full: false,
        tls: Some(sonde_collector::TlsConfig {
            cert: write("server.pem", server.pem())?,
            key: write("server.key", server_key.serialize_pem())?,
            client_ca: Some(write("ca.pem", ca.pem())?),
        }),
        ..CollectorConfig::default()
    })
    .await?;
    let tls = |identity: bool| sonde_export::ExportTls {
        ca_cert_pem: ca.pem().into_bytes(),
        client_identity_pem: identity.then(|| {
            (
                agent.pem().into_bytes(),
                agent_key.serialize_pem().into_bytes(),
            )
        }),
        domain: Some("localhost".into()),
    };
    let url = format!("https://127.0.0.1:{port}");

    let mut without = exporter_config(port, dir.path().join("spool-without"));
    without.collector_url = url.clone();
    without.tls = Some(tls(false));
    let refused = Exporter::start(without)?;
    refused
        .handle()
        .send_endpoint(endpoint("/nocert", 1))
        .await?;
    refused.handle().flush().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refused.stats().acked_batches, 0);
    assert_eq!(
        refused.stats().pending_batches,
        1,
        "the refused batch stays spooled"
    );
    assert!(collector.store.list_agents()?.is_empty());
    refused.shutdown(Duration::ZERO).await;

    let mut with = exporter_config(port, dir.path().join("spool-with"));
    with.collector_url = url;
    with.tls = Some(tls(true));
    let accepted = Exporter::start(with)?;
    accepted
        .handle()
        .send_endpoint(endpoint("/cert", 1))
        .await?;
    accepted.handle().flush().await?;
    wait_for("delivery over mTLS", Duration::from_secs(10), || {
        accepted.stats().acked_batches == 1
    })
    .await?;
    assert_eq!(calls_of(&collector, "/cert")?, 1);
    accepted.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fit_the_message_limit_and_oversized_items_are_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let collector = sonde_collector::spawn(CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        database: dir.path().join("collector.db"),
        synchronous_full: false,
        max_message_bytes: 4096,
        ..CollectorConfig::default()
    })
    .await?;
    let mut config = exporter_config(port, dir.path().join("spool"));
    config.max_message_bytes = 4096;
    config.max_batch_items = 10_000;
    let exporter = Exporter::start(config)?;
    let handle = exporter.handle();
    let mut huge = endpoint("/huge", 1);
    huge.query_params = (0..1000).map(|i| format!("param-{i}")).collect();
    handle.send_endpoint(huge).await?;
    for i in 0..300 {
        handle
            .send_endpoint(endpoint(&format!("/fits/{i:03}"), 1))
            .await?;
    }
    handle.flush().await?;
    wait_for("delivery", Duration::from_secs(20), || {
        exporter.stats().pending_batches == 0
    })
    .await?;
    let stats = exporter.stats();
    assert_eq!(stats.oversized_items, 1);
    assert!(
        stats.spooled_batches > 1,
        "300 items cannot fit one 4 KiB message: {stats:?}"
    );
    assert_eq!(stats.rejected_batches, 0);
    assert_eq!(
        stats.reconnects, 0,
        "no batch may break the stream: {stats:?}"
    );
    assert_eq!(committed(&collector)?.1, 300);
    exporter.shutdown(Duration::from_secs(1)).await;
    collector.stop().await
}
