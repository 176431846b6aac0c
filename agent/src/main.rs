//! `sonde-agent`: the capture, observe and inventory views, and the agent itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sonde_agent::capture::LiveCapture;
use sonde_agent::config::{AgentConfig, TcpStrategyChoice};
use sonde_agent::display;
use sonde_agent::record::{FORMAT_VERSION, Recorder, RecordingHeader};
use sonde_model::CaptureEvent;
use tokio::sync::mpsc;

mod run;

/// The pipeline allocates per message (header names and values, exchanges, inventory keys) on
/// one thread while the ring reader frees batches on another; mimalloc's thread-local free lists
/// cost less than glibc's malloc for that pattern (`cargo xtask bench capture --agent "observe
/// --quiet"`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sonde-agent",
    version,
    about = "Sonde: eBPF API traffic sensor"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "SONDE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every captured socket event (the debugging view).
    Capture(CaptureArgs),
    /// Print every HTTP exchange, live from the kernel or from a pcap or a recording.
    Observe(ObserveArgs),
    /// Print the API inventory built from live traffic (or a pcap/recording) as a table or JSON.
    Inventory(InventoryArgs),
    /// The agent: capture, inventory and export to a collector (optionally embedded).
    Run(RunArgs),
}

/// Where events come from.
#[derive(clap::Args, Clone)]
struct SourceArgs {
    /// Read a pcap or pcapng file instead of the kernel.
    #[arg(long, conflicts_with = "replay")]
    pcap: Option<PathBuf>,
    /// Read a recording made with `capture --record` instead of the kernel.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Only these processes (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Declared OpenAPI spec (repeatable).
    #[arg(long = "spec")]
    specs: Vec<PathBuf>,
    /// Stop after this many seconds (live source; default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Kubernetes pod metadata: `auto` (when running in a pod), `on`, `off` (default: the
    /// config's `[identity] kubernetes`).
    #[arg(long, value_parser = ["auto", "on", "off"])]
    kubernetes: Option<String>,
    /// No workload identity (containers, pods, units) for live processes.
    #[arg(long)]
    no_identity: bool,
}

#[derive(clap::Args)]
struct ObserveArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// One JSON object per exchange.
    #[arg(long)]
    json: bool,
    /// Print nothing per exchange (benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Serve Prometheus metrics, /healthz and /readyz here (default: not served).
    #[arg(long, env = "SONDE_METRICS_LISTEN")]
    metrics_listen: Option<MetricsListen>,
}

#[derive(clap::Args)]
struct InventoryArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Start a collector inside the agent (single host).
    #[arg(long)]
    embedded_collector: bool,
    /// Collector URL (default from the config: http://127.0.0.1:7419).
    #[arg(long, env = "SONDE_COLLECTOR")]
    collector: Option<String>,
    /// Directory for the spool and the embedded collector's database.
    #[arg(long, env = "SONDE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Check the configuration (specs load, TLS files read) and exit, without loading eBPF:
    /// for deployment pipelines and `ExecStartPre=`.
    #[arg(long)]
    check_config: bool,
    /// Serve Prometheus metrics, /healthz and /readyz on this address, or `off`
    /// [default: 127.0.0.1:9464; if that port is taken the agent runs without them].
    #[arg(long, env = "SONDE_METRICS_LISTEN")]
    metrics_listen: Option<MetricsListen>,
}

/// `--metrics-listen`: an address (port 0 picks one) or `off`.
#[derive(Clone, Copy, Debug)]
enum MetricsListen {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<MetricsListen, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::At)
            .map_err(|e| format!("{s:?} is neither `off` nor an address like 0.0.0.0:9464: {e}"))
    }
}

impl MetricsListen {
    /// What to serve: an explicit address must bind, the default may be taken already.
    fn options(choice: Option<MetricsListen>, default: Option<u16>) -> run::MetricsOptions {
        match (choice, default) {
            (Some(MetricsListen::At(addr)), _) => run::MetricsOptions {
                listen: Some(addr),
                required: true,
            },
            (Some(MetricsListen::Off), _) | (None, None) => run::MetricsOptions {
                listen: None,
                required: false,
            },
            (None, Some(port)) => run::MetricsOptions {
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                required: false,
            },
        }
    }
}

#[derive(clap::Args)]
struct CaptureArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Also write the decoded events to a recording file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Only these processes (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// How TCP sockets are told apart (default: probe).
    #[arg(long)]
    tcp_strategy: Option<TcpStrategyChoice>,
    /// Payload bytes shown per event.
    #[arg(long, default_value_t = 160)]
    max_payload: usize,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Print nothing per event (with --record, for long captures).
    #[arg(long)]
    quiet: bool,
    /// Attach programs that return at once to the same hooks (the cost floor, for benchmarks).
    #[arg(long, hide = true)]
    empty_programs: bool,
}

fn init_tracing() {
    let filter = std::env::var("SONDE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    use std::io::IsTerminal as _;
    // Colours only on a terminal: journald, a log file or a pipe get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    sonde_shutdown::listen();
    let cli = Cli::parse();
    let mut config = AgentConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Capture(args) => {
            config.capture.pids.extend(&args.pids);
            config.capture.ports.extend(&args.ports);
            if let Some(s) = args.tcp_strategy {
                config.capture.tcp_strategy = s;
            }
            capture(config, args).await
        }
        Command::Observe(args) => {
            apply_source(&mut config, &args.source);
            let metrics = MetricsListen::options(args.metrics_listen, None);
            run::observe(config, args.source, args.json, args.quiet, metrics).await
        }
        Command::Inventory(args) => {
            apply_source(&mut config, &args.source);
            run::inventory(config, args.source, args.json).await
        }
        Command::Run(args) => {
            apply_source(&mut config, &args.source);
            if args.embedded_collector {
                config.export.embedded_collector = true;
            }
            if let Some(url) = args.collector {
                config.export.collector_url = url;
            }
            if let Some(dir) = args.state_dir {
                config.export.spool_dir = dir.join("spool");
                config.export.embedded_database = dir.join("collector.db");
                config
                    .baseline_file
                    .get_or_insert_with(|| dir.join("baseline.sonde"));
            }
            if config.baseline_file.is_none() {
                config.baseline_file = config
                    .export
                    .spool_dir
                    .parent()
                    .map(|d| d.join("baseline.sonde"));
            }
            if args.check_config {
                println!("{}", config.check()?);
                return Ok(());
            }
            let metrics = MetricsListen::options(
                args.metrics_listen,
                Some(sonde_metrics::AGENT_DEFAULT_PORT),
            );
            run::run(config, args.source, metrics).await
        }
    }
}

fn apply_source(config: &mut AgentConfig, source: &SourceArgs) {
    use sonde_identity::KubernetesMode;
    if source.no_identity {
        config.identity.enabled = false;
    }
    match source.kubernetes.as_deref() {
        Some("on") => config.identity.kubernetes = KubernetesMode::On,
        Some("off") => config.identity.kubernetes = KubernetesMode::Off,
        Some("auto") => config.identity.kubernetes = KubernetesMode::Auto,
        _ => {}
    }
    config.capture.pids.extend(&source.pids);
    config.capture.ports.extend(&source.ports);
    config.specs.extend(
        source
            .specs
            .iter()
            .map(|p| sonde_agent::pipeline::SpecSource {
                path: p.clone(),
                authority: None,
                port: None,
                process: None,
            }),
    );
}

async fn capture(config: AgentConfig, args: CaptureArgs) -> anyhow::Result<()> {
    let mut live = if args.empty_programs {
        LiveCapture::start_empty(&config.capture)
    } else {
        LiveCapture::start(&config.capture)
    }
    .context("starting the live capture")?;
    eprintln!("sonde-agent capture: {}", live.report());
    let (tx, mut rx) = mpsc::channel::<Vec<CaptureEvent>>(config.capture.channel_batches);
    live.spawn_reader(tx, Duration::from_millis(config.capture.poll_interval_ms))?;
    let mut recorder = match &args.record {
        Some(path) => Some(Recorder::create(
            path,
            &RecordingHeader {
                version: FORMAT_VERSION,
                host: hostname(),
                kernel: kernel_release(),
                strategy: live
                    .report()
                    .tcp
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                started_unix_ns: sonde_agent::capture::decode::Clock::now().to_unix_ns(0),
            },
        )?),
        None => None,
    };
    let deadline = async {
        match args.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // One Ctrl-C future for the whole loop: tokio hands a signal only to listeners that exist
    // when it arrives, so a future made anew per iteration loses a SIGINT that lands while a
    // batch is being handled (seen under load: the agent never stopped).
    let ctrl_c = sonde_shutdown::signalled();
    tokio::pin!(ctrl_c);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                for ev in &batch {
                    if let Some(r) = recorder.as_mut() {
                        r.write(ev)?;
                    }
                    if args.quiet {
                        continue;
                    }
                    if args.json {
                        serde_json::to_writer(&mut out, &json_event(ev, args.max_payload))?;
                        writeln!(out)?;
                    } else {
                        writeln!(out, "{}", display::event_line(ev, args.max_payload))?;
                    }
                }
                out.flush()?;
            }
            _ = &mut ctrl_c => {
                // Detaching the probes takes a few seconds: say so at once.
                eprintln!("stopping: detaching the probes and flushing what is captured");
                break;
            }
            _ = &mut deadline => break,
        }
    }
    drop(out);
    live.stop();
    while let Ok(batch) = rx.try_recv() {
        if let Some(r) = recorder.as_mut() {
            for ev in &batch {
                r.write(ev)?;
            }
        }
    }
    if let Some(r) = recorder {
        let n = r.finish()?;
        eprintln!("recorded {n} events");
    }
    print_summary(&live);
    Ok(())
}

/// JSON view of an event: payload as escaped text, not base64.
fn json_event(ev: &CaptureEvent, max_payload: usize) -> serde_json::Value {
    match ev {
        CaptureEvent::Data(d) => serde_json::json!({
            "type": "data",
            "ts_ns": d.ts_ns,
            "conn": { "tgid": d.conn.tgid, "fd": d.conn.fd, "generation": d.conn.generation },
            "tid": d.tid,
            "direction": d.direction,
            "source": d.source,
            "offset": d.offset,
            "len": d.len,
            "captured": d.data.len(),
            "payload": display::escape_payload(&d.data, max_payload),
        }),
        CaptureEvent::Open(o) => serde_json::json!({
            "type": "open",
            "ts_ns": o.ts_ns,
            "conn": { "tgid": o.conn.tgid, "fd": o.conn.fd, "generation": o.conn.generation },
            "role": o.role,
            "pid": o.process.pid,
            "comm": o.process.comm,
            "cgroup_id": o.process.cgroup_id,
            "local": o.local.map(|a| a.to_string()),
            "remote": o.remote.map(|a| a.to_string()),
        }),
        CaptureEvent::Close(c) => serde_json::json!({
            "type": "close",
            "ts_ns": c.ts_ns,
            "conn": { "tgid": c.conn.tgid, "fd": c.conn.fd, "generation": c.conn.generation },
        }),
    }
}

fn print_summary(live: &LiveCapture) {
    eprintln!("hook strategy: {}", live.report());
    eprintln!("kernel counters:");
    for (name, v) in &live.kernel_counters().values {
        eprintln!("  {name:<20} {v}");
    }
    eprintln!("reader counters:");
    for (name, v) in live.reader_stats().snapshot() {
        eprintln!("  {name:<20} {v}");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
