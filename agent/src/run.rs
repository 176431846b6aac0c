//! The pipeline commands: `observe`, `inventory`, `run`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use sonde_agent::capture::LiveCapture;
use sonde_agent::config::AgentConfig;
use sonde_agent::display;
use sonde_agent::metrics::AgentMetrics;
use sonde_agent::pipeline::{Analyzer, Sink, now_unix_ns};
use sonde_agent::record::Replay;
use sonde_inventory::CallInfo;
use sonde_metrics::MetricsServer;
use sonde_model::{Anomaly, CaptureEvent, Exchange};
use tokio::sync::mpsc;

use crate::SourceArgs;

/// Where `/metrics`, `/healthz` and `/readyz` are served.
pub struct MetricsOptions {
    pub listen: Option<std::net::SocketAddr>,
    /// Fail when the address cannot be bound (it was asked for explicitly); else warn and go on.
    pub required: bool,
}

async fn start_metrics(
    options: &MetricsOptions,
    metrics: AgentMetrics,
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = options.listen else {
        return Ok(None);
    };
    let ready = metrics.ready_check();
    let registry = std::sync::Arc::new(metrics.into_registry());
    match MetricsServer::start(addr, registry, ready).await {
        Ok(server) => {
            eprintln!(
                "sonde-agent: metrics on http://{}/metrics",
                server.local_addr()
            );
            Ok(Some(server))
        }
        Err(e) if !options.required => {
            tracing::warn!(error = %e, "metrics not served (pass --metrics-listen to choose another address)");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("starting the metrics listener")),
    }
}

/// A running source of capture events.
struct Source {
    rx: mpsc::Receiver<Vec<CaptureEvent>>,
    live: Option<LiveCapture>,
    /// The source ends by itself (a file).
    finite: bool,
    /// Set when a file source hit damage and ended early (the command then fails).
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

fn start_source(config: &AgentConfig, args: &SourceArgs) -> anyhow::Result<Source> {
    let (tx, rx) = mpsc::channel::<Vec<CaptureEvent>>(config.capture.channel_batches);
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    if let Some(path) = &args.pcap {
        let reader = sonde_pcap::PcapReader::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let f = failed.clone();
        std::thread::spawn(move || feed(reader.map(|r| r.map_err(anyhow::Error::from)), tx, f));
        return Ok(Source {
            rx,
            live: None,
            finite: true,
            failed,
        });
    }
    if let Some(path) = &args.replay {
        let replay = Replay::open(path)?;
        let f = failed.clone();
        std::thread::spawn(move || feed(replay.map(|r| r.map_err(anyhow::Error::from)), tx, f));
        return Ok(Source {
            rx,
            live: None,
            finite: true,
            failed,
        });
    }
    let mut live = LiveCapture::start(&config.capture).context("starting the live capture")?;
    eprintln!("sonde-agent: {}", live.report());
    live.spawn_reader(tx, Duration::from_millis(config.capture.poll_interval_ms))?;
    Ok(Source {
        rx,
        live: Some(live),
        finite: false,
        failed,
    })
}

/// Sends a file's events in batches; a damaged file ends the feed with a logged error.
fn feed(
    events: impl Iterator<Item = anyhow::Result<CaptureEvent>>,
    tx: mpsc::Sender<Vec<CaptureEvent>>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut batch = Vec::with_capacity(1024);
    for ev in events {
        match ev {
            Ok(ev) => batch.push(ev),
            Err(e) => {
                // What was read before the damage is still analysed; the command then fails.
                let msg = format!("{e:#}");
                tracing::error!(error = %msg, "input ends early");
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert(msg);
                }
                continue;
            }
        }
        if batch.len() == 1024
            && tx
                .blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(1024)))
                .is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
}

/// Drives an analyzer from a source until the source ends, Ctrl-C, or the duration.
async fn drive(
    mut source: Source,
    analyzer: &mut Analyzer,
    sink: &mut dyn Sink,
    duration: Option<u64>,
    mut every: impl FnMut(&mut Analyzer),
) -> anyhow::Result<()> {
    let deadline = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // Made once: a signal future made anew per iteration misses a SIGINT that arrives while a
    // batch is being analysed.
    let ctrl_c = sonde_shutdown::signalled();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            batch = source.rx.recv() => match batch {
                Some(batch) => analyzer.on_events(batch, sink),
                None => break,
            },
            _ = tick.tick() => {
                if !source.finite {
                    analyzer.tick(now_unix_ns(), sink);
                }
                every(analyzer);
            }
            _ = &mut ctrl_c => {
                // Detaching the probes takes a few seconds: say so at once.
                eprintln!("stopping: detaching the probes and flushing what is captured");
                break;
            }
            _ = &mut deadline => break,
        }
    }
    if let Some(mut live) = source.live.take() {
        live.stop();
        while let Ok(batch) = source.rx.try_recv() {
            analyzer.on_events(batch, sink);
        }
        print_capture_counters(&live);
    }
    analyzer.flush(sink);
    every(analyzer);
    if let Some(msg) = source.failed.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!("the input is damaged: {msg}");
    }
    Ok(())
}

fn print_capture_counters(live: &LiveCapture) {
    let k = live.kernel_counters();
    let drops: Vec<String> = k.drops().map(|(n, v)| format!("{n}={v}")).collect();
    let reader: Vec<String> = live
        .reader_stats()
        .snapshot()
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    eprintln!(
        "capture: {}; kernel drops: {}; reader: {}",
        live.report(),
        drops.join(" "),
        reader.join(" ")
    );
}

struct PrintSink {
    json: bool,
    quiet: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Sink for PrintSink {
    fn exchange(&mut self, ex: &Exchange, call: &CallInfo) {
        if self.quiet {
            return;
        }
        let r = if self.json {
            serde_json::to_writer(&mut self.out, &exchange_json(ex, call))
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(self.out))
        } else {
            writeln!(
                self.out,
                "{}  => {}",
                display::exchange_line(ex),
                call.template
            )
        };
        if r.is_err() {
            self.quiet = true;
        }
    }

    fn anomalies(&mut self, anomalies: Vec<Anomaly>) {
        if self.quiet {
            return;
        }
        for a in anomalies {
            let _ = writeln!(
                self.out,
                "ANOMALY {} {} {} {}: {}",
                a.severity.as_str(),
                a.category.code(),
                a.kind,
                a.endpoint.as_deref().unwrap_or("-"),
                a.explanation
            );
        }
        let _ = self.out.flush();
    }
}

/// JSON view of an exchange for tooling: no raw header values (they may be secrets), only names.
fn exchange_json(ex: &Exchange, call: &CallInfo) -> serde_json::Value {
    serde_json::json!({
        "ts_ns": ex.request.ts_start_ns,
        "version": ex.version.as_str(),
        "stream_id": ex.stream_id,
        "method": ex.request.method,
        "authority": ex.request.authority,
        "path": ex.request.path,
        "template": &*call.template,
        "endpoint": &*call.endpoint,
        "status": ex.status(),
        "request_body_bytes": ex.request.body.wire_len,
        "response_body_bytes": ex.response.as_ref().map(|r| r.body.wire_len),
        "latency_ns": ex.latency_ns(),
        "pid": ex.conn.process.pid,
        "process": ex.conn.process.comm,
        "workload": ex.conn.process.workload,
        "role": ex.conn.role,
        "local": ex.conn.local.map(|a| a.to_string()),
        "remote": ex.conn.remote.map(|a| a.to_string()),
        "request_headers": ex.request.headers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        "grpc": ex.grpc.as_ref().map(|g| serde_json::json!({
            "service": g.service, "method": g.method, "status": g.status,
            "request_messages": g.request_messages, "response_messages": g.response_messages,
        })),
        "flags": ex.flags.names(),
        "auth": format!("{:?}", call.auth.scheme),
    })
}

pub async fn observe(
    config: AgentConfig,
    args: SourceArgs,
    json: bool,
    quiet: bool,
    metrics: MetricsOptions,
) -> anyhow::Result<()> {
    let mut analyzer = Analyzer::new(&config)?;
    let source = start_source(&config, &args)?;
    if source.live.is_some() {
        analyzer.enable_identity(&config.identity);
    }
    let agent_metrics = AgentMetrics::new(source.live.as_ref(), None, &strategy_of(&source));
    let mut publisher = agent_metrics.publisher();
    let server = start_metrics(&metrics, agent_metrics).await?;
    let mut sink = PrintSink {
        json,
        quiet,
        out: std::io::BufWriter::new(std::io::stdout()),
    };
    drive(source, &mut analyzer, &mut sink, args.duration, |a| {
        publisher.maybe_publish(a)
    })
    .await?;
    if let Some(server) = server {
        server.stop().await;
    }
    sink.out.flush()?;
    let s = analyzer.stats();
    eprintln!(
        "{} events, {} exchanges ({} duplicate client-side views of local calls folded)",
        s.events, s.exchanges, s.duplicate_client_views
    );
    print_tls_status(&mut analyzer);
    Ok(())
}

/// The TLS status: how much TLS was seen, what the agent cannot read and why.
fn print_tls_status(analyzer: &mut Analyzer) {
    let c = analyzer.tls().counters();
    if c.tls_connections == 0 {
        return;
    }
    for line in analyzer.tls_mut().blind_spots().lines() {
        eprintln!("{line}");
    }
}

struct CollectSink {
    anomalies: Vec<Anomaly>,
}

impl Sink for CollectSink {
    fn exchange(&mut self, _: &Exchange, _: &CallInfo) {}
    fn anomalies(&mut self, anomalies: Vec<Anomaly>) {
        self.anomalies.extend(anomalies);
    }
}

pub async fn inventory(config: AgentConfig, args: SourceArgs, json: bool) -> anyhow::Result<()> {
    let mut analyzer = Analyzer::new(&config)?;
    let source = start_source(&config, &args)?;
    if source.live.is_some() {
        analyzer.enable_identity(&config.identity);
    }
    let mut sink = CollectSink {
        anomalies: Vec::new(),
    };
    drive(source, &mut analyzer, &mut sink, args.duration, |_| {}).await?;
    print_tls_status(&mut analyzer);
    let inv = analyzer.inventory();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if json {
        let endpoints: Vec<_> = inv.endpoints().collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "endpoints": endpoints,
                "unused_operations": inv.unused_operations().iter().map(|u| format!("{u:?}")).collect::<Vec<_>>(),
                "events": sink.anomalies,
                "counters": inv.counters(),
            }),
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<40} {:<7} {:<40} {:>7} {:<14} {:<10} AUTH / SENSITIVE",
            "SERVICE", "METHOD", "TEMPLATE", "CALLS", "STATUS", "CLASS"
        )?;
        let mut endpoints: Vec<_> = inv.endpoints().collect();
        endpoints.sort_by(|a, b| a.key.cmp(&b.key));
        for e in endpoints {
            let status: Vec<String> = e
                .status_counts
                .iter()
                .map(|(s, n)| format!("{s}:{n}"))
                .collect();
            let auth: Vec<String> = e.auth_schemes.iter().map(|(k, _)| k.to_string()).collect();
            let sensitive: Vec<String> = e
                .sensitive
                .iter()
                .map(|f| format!("{}@{}", f.kind.as_str(), f.path))
                .collect();
            writeln!(
                out,
                "{:<40} {:<7} {:<40} {:>7} {:<14} {:<10} {} {}",
                // As the collector and `sonde endpoints` name it.
                sonde_agent::export::service_key(&e.service).display_name(),
                e.method,
                e.template,
                e.calls,
                status.join(","),
                e.classification.as_str(),
                auth.join(","),
                sensitive.join(",")
            )?;
        }
        for a in &sink.anomalies {
            writeln!(
                out,
                "EVENT {} {} {} on {}: {}",
                a.severity.as_str(),
                a.category.code(),
                a.kind,
                a.endpoint.as_deref().unwrap_or("-"),
                a.explanation
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Sends inventory changes and anomalies to the exporter, waiting when it is full (the pressure
/// backs up into the ring, where the kernel side counts what it cannot hold).
struct ExportSink {
    handle: sonde_export::ExportHandle,
    rt: tokio::runtime::Handle,
    sent_anomalies: u64,
}

impl Sink for ExportSink {
    fn exchange(&mut self, _: &Exchange, _: &CallInfo) {}
    fn anomalies(&mut self, anomalies: Vec<Anomaly>) {
        for a in anomalies {
            tracing::info!(
                kind = %a.kind,
                severity = a.severity.as_str(),
                endpoint = a.endpoint.as_deref().unwrap_or("-"),
                "{}",
                a.explanation
            );
            let wire = sonde_export::anomaly_from_model(a);
            if tokio::task::block_in_place(|| self.rt.block_on(self.handle.send_anomaly(wire)))
                .is_ok()
            {
                self.sent_anomalies += 1;
            }
        }
    }
}

/// The capture strategy a source reports (`replay` for files).
fn strategy_of(source: &Source) -> String {
    source
        .live
        .as_ref()
        .and_then(|l| l.report().tcp)
        .map(|t| t.as_str().to_string())
        .unwrap_or_else(|| "replay".into())
}

pub async fn run(
    config: AgentConfig,
    args: SourceArgs,
    metrics: MetricsOptions,
) -> anyhow::Result<()> {
    let export = config.export.clone();
    let collector = if export.embedded_collector {
        if let Some(dir) = export.embedded_database.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let url: url_parts::Addr = export.collector_url.parse()?;
        let cfg = sonde_collector::config::CollectorConfig {
            listen: url.0,
            database: export.embedded_database.clone(),
            ..Default::default()
        };
        let c = sonde_collector::server::spawn(cfg)
            .await
            .context("starting the embedded collector")?;
        eprintln!(
            "sonde-agent: embedded collector on {} (database {})",
            c.url(false),
            export.embedded_database.display()
        );
        Some(c)
    } else {
        None
    };
    std::fs::create_dir_all(&export.spool_dir)
        .with_context(|| format!("creating the spool {}", export.spool_dir.display()))?;

    let mut analyzer = Analyzer::new(&config)?;
    let source = start_source(&config, &args)?;
    if source.live.is_some() {
        analyzer.enable_identity(&config.identity);
    }
    let strategy = strategy_of(&source);
    let hello = sonde_export::Hello {
        agent_id: agent_id(&export.spool_dir),
        host: read_trim("/proc/sys/kernel/hostname"),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        capture_strategy: strategy.clone(),
        started_at_unix_ns: now_unix_ns(),
    };
    let mut ecfg = sonde_export::ExporterConfig::new(
        export.collector_url.clone(),
        hello,
        export.spool_dir.clone(),
    );
    ecfg.max_spool_bytes = export.max_spool_bytes;
    ecfg.tls = export
        .tls
        .as_ref()
        .map(|t| t.load())
        .transpose()
        .context("[export.tls]")?;
    let exporter = sonde_export::Exporter::start(ecfg).context("starting the exporter")?;
    let handle = exporter.handle();
    let mut agent_metrics =
        AgentMetrics::new(source.live.as_ref(), Some(handle.clone()), &strategy);
    if let Some(c) = &collector {
        c.metrics.register(agent_metrics.registry_mut());
    }
    let mut publisher = agent_metrics.publisher();
    let metrics_server = start_metrics(&metrics, agent_metrics).await?;
    let rt = tokio::runtime::Handle::current();
    let mut sink = ExportSink {
        handle: handle.clone(),
        rt: rt.clone(),
        sent_anomalies: 0,
    };
    let interval = Duration::from_millis(export.interval_ms.max(100));
    let mut last_export = std::time::Instant::now();
    let mut last_save = std::time::Instant::now();
    let mut last_blind_spots = 0usize;
    let live_counters = source.live.as_ref().map(|l| {
        let counters = l.counters_reader();
        (move || counters.read(), l.reader_stats())
    });
    drive(
        source,
        &mut analyzer,
        &mut sink,
        args.duration,
        |analyzer| {
            publisher.maybe_publish(analyzer);
            if last_save.elapsed() > Duration::from_secs(60) {
                last_save = std::time::Instant::now();
                analyzer.save_baseline();
            }
            if last_export.elapsed() < interval {
                return;
            }
            last_export = std::time::Instant::now();
            let dirty = analyzer.inventory_mut().take_dirty();
            for rec in &dirty {
                let update = sonde_agent::export::endpoint_update(rec);
                if tokio::task::block_in_place(|| rt.block_on(handle.send_endpoint(update)))
                    .is_err()
                {
                    tracing::warn!("exporter stopped; endpoint update not sent");
                }
            }
            let mut counters = std::collections::HashMap::new();
            flatten_counters(
                "pipeline",
                &serde_json::to_value(analyzer.stats()).unwrap_or_default(),
                &mut counters,
            );
            flatten_counters(
                "protocol",
                &serde_json::to_value(analyzer.tracker().stats()).unwrap_or_default(),
                &mut counters,
            );
            flatten_counters(
                "inventory",
                &serde_json::to_value(analyzer.inventory().counters()).unwrap_or_default(),
                &mut counters,
            );
            if let Some(identity) = analyzer.identity_stats() {
                flatten_counters("identity", &identity, &mut counters);
            }
            flatten_counters(
                "tls_stage",
                &serde_json::to_value(analyzer.tls().counters()).unwrap_or_default(),
                &mut counters,
            );
            flatten_counters(
                "posture",
                &serde_json::to_value(analyzer.tls().posture_counters()).unwrap_or_default(),
                &mut counters,
            );
            let identity_spots = analyzer.identity_blind_spots();
            let report = analyzer.tls_mut().blind_spots();
            report.counters(&mut counters);
            let mut blind_spots = report.blind_spots();
            blind_spots.extend(
                identity_spots
                    .into_iter()
                    .map(|(kind, detail)| sonde_proto::v1::BlindSpot { kind, detail }),
            );
            if blind_spots.len() != last_blind_spots {
                last_blind_spots = blind_spots.len();
                for line in report.lines() {
                    tracing::info!("{line}");
                }
            }
            if let Some((kernel, reader)) = &live_counters {
                let kernel = kernel();
                // The total under a `drops` name: `sonde agents` sums counters named so.
                let kernel_drops = kernel
                    .drops()
                    .map(|(_, v)| v)
                    .fold(0u64, u64::saturating_add);
                counters.insert("drops.kernel".to_string(), kernel_drops);
                for (name, v) in kernel.values {
                    counters.insert(format!("kernel.{name}"), v);
                }
                for (name, v) in reader.snapshot() {
                    counters.insert(format!("reader.{name}"), v);
                }
            }
            let _ = tokio::task::block_in_place(|| {
                rt.block_on(handle.heartbeat(counters, blind_spots))
            });
        },
    )
    .await?;
    print_tls_status(&mut analyzer);
    analyzer.save_baseline();
    let _ = handle.flush().await;
    exporter.shutdown(Duration::from_secs(5)).await;
    if let Some(server) = metrics_server {
        server.stop().await;
    }
    if let Some(c) = collector {
        c.stop().await?;
    }
    Ok(())
}

/// Numeric leaves of a JSON value as `prefix.path` counters.
fn flatten_counters(
    prefix: &str,
    v: &serde_json::Value,
    out: &mut std::collections::HashMap<String, u64>,
) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                out.insert(prefix.to_string(), n);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten_counters(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => {}
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A stable agent id kept beside the spool (so restarts resume the same identity).
fn agent_id(spool: &std::path::Path) -> String {
    let path = spool.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return id;
        }
    }
    let id = format!(
        "{}-{:x}",
        read_trim("/proc/sys/kernel/hostname"),
        now_unix_ns()
    );
    let _ = std::fs::write(&path, &id);
    id
}

mod url_parts {
    /// The socket address of an `http://host:port` URL (the embedded collector's listen address).
    pub struct Addr(pub std::net::SocketAddr);

    impl std::str::FromStr for Addr {
        type Err = anyhow::Error;
        fn from_str(s: &str) -> anyhow::Result<Addr> {
            let rest = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .unwrap_or(s);
            let hostport = rest.split('/').next().unwrap_or(rest);
            use std::net::ToSocketAddrs as _;
            let addr = hostport
                .to_socket_addrs()
                .map_err(|e| anyhow::anyhow!("collector URL {s}: {e}"))?
                .next()
                .ok_or_else(|| anyhow::anyhow!("collector URL {s} names no address"))?;
            Ok(Addr(addr))
        }
    }
}
