//! Metrics of a live agent and collector (the demo stack as separate processes): counters move
//! as curl traffic flows, the expositions parse, a scrape storm leaves memory bounded and capture
//! lossless, and the Grafana dashboard refers only to metrics the two processes export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sonde_e2e::stack::DemoStack;
use sonde_e2e::{eventually, privileged, scratch_dir};

/// One parsed scrape: samples by name and label set, and every family name it declares.
struct Scrape {
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    fn get(base: &str) -> Scrape {
        let out = Command::new("curl")
            .args(["-s", "-f", "-m", "10", &format!("{base}/metrics")])
            .output()
            .expect("curl");
        assert!(out.status.success(), "scrape of {base} failed");
        Scrape::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Parsed with a real Prometheus text parser: a malformed exposition fails the test.
    fn parse(text: &str) -> Scrape {
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the exposition parses");
        let mut samples = BTreeMap::new();
        for s in &parsed.samples {
            let value = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count).unwrap_or(0.0),
                _ => continue,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            samples.insert((s.metric.clone(), labels), value);
        }
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                names.extend(rest.split_whitespace().next().map(str::to_string));
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                names.insert(line[..end].to_string());
            }
        }
        Scrape { samples, names }
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Samples of `name` that are not zero, for failure messages.
    fn nonzero(&self, name: &str) -> Vec<String> {
        self.samples
            .iter()
            .filter(|((n, _), v)| n == name && **v != 0.0)
            .map(|((_, l), v)| format!("{l:?}={v}"))
            .collect()
    }
}

fn http_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn drive(api_port: u16, n: usize) {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2ln";
    for i in 0..n {
        let path = match i % 3 {
            0 => format!("/api/v2/users/{}", i % 7 + 1),
            1 => "/api/v2/orders".to_string(),
            _ => "/api/v2/health".to_string(),
        };
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-H"])
            .arg(format!("Authorization: Bearer {jwt}"))
            .arg(format!("http://127.0.0.1:{api_port}{path}"))
            .status()
            .expect("curl")
            .success();
        assert!(ok);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Every metric name a dashboard expression refers to.
fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn exprs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    assert!(
        all.len() > 20,
        "the dashboard has {} expressions",
        all.len()
    );
    let mut names = BTreeSet::new();
    for e in all {
        let mut rest = e;
        while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let word = &tail[..end];
            if word.starts_with("sonde_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn agent_and_collector_metrics_move_with_traffic_and_survive_a_scrape_storm() {
    if !privileged() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = scratch_dir("metrics");
    let mut stack = DemoStack::start(&dir, "");
    eventually(Duration::from_secs(20), "agent /readyz", || {
        (http_status(&format!("{}/readyz", stack.agent_metrics)) == 200).then_some(())
    });
    eventually(Duration::from_secs(20), "collector /readyz", || {
        (http_status(&format!("{}/readyz", stack.collector_metrics)) == 200).then_some(())
    });
    assert_eq!(
        http_status(&format!("{}/healthz", stack.agent_metrics)),
        200
    );
    assert_eq!(
        http_status(&format!("{}/healthz", stack.collector_metrics)),
        200
    );

    let agent_before = Scrape::get(&stack.agent_metrics);
    let coll_before = Scrape::get(&stack.collector_metrics);
    drive(stack.api_port, 30);
    // Endpoint updates leave on the export interval (300 ms here) and batches seal within 1 s.
    let (agent, coll) = eventually(
        Duration::from_secs(20),
        "acked batches and ingested items",
        || {
            let agent = Scrape::get(&stack.agent_metrics);
            let coll = Scrape::get(&stack.collector_metrics);
            let acked = agent.sum("sonde_agent_export_batches_acked_total", &[])
                > agent_before.sum("sonde_agent_export_batches_acked_total", &[]);
            let exchanges = agent.sum("sonde_agent_exchanges_total", &[("protocol", "http1")])
                >= agent_before.sum("sonde_agent_exchanges_total", &[("protocol", "http1")]) + 30.0;
            let ingested = coll.sum(
                "sonde_collector_items_ingested_total",
                &[("kind", "endpoint_update")],
            ) > coll_before.sum(
                "sonde_collector_items_ingested_total",
                &[("kind", "endpoint_update")],
            );
            (acked && exchanges && ingested).then_some((agent, coll))
        },
    );
    let moved = |name: &str, labels: &[(&str, &str)]| {
        assert!(
            agent.sum(name, labels) > agent_before.sum(name, labels),
            "{name}{labels:?} did not move: {} -> {}",
            agent_before.sum(name, labels),
            agent.sum(name, labels)
        );
    };
    moved(
        "sonde_agent_capture_events_total",
        &[("source", "syscall"), ("direction", "ingress")],
    );
    moved(
        "sonde_agent_capture_events_total",
        &[("source", "syscall"), ("direction", "egress")],
    );
    moved("sonde_agent_capture_bytes_total", &[("source", "syscall")]);
    moved("sonde_agent_kernel_data_events_total", &[]);
    moved("sonde_agent_kernel_captured_bytes_total", &[]);
    moved("sonde_agent_ring_records_total", &[]);
    moved("sonde_agent_export_items_queued_total", &[]);
    assert!(agent.sum("sonde_agent_endpoints_tracked", &[]) >= 3.0);
    assert_eq!(
        agent.sum(
            "sonde_agent_build_info",
            &[("capture_strategy", "sock-tracepoints")]
        ),
        1.0
    );
    assert!(agent.sum("sonde_agent_probes_attached", &[("kind", "tracepoint")]) > 10.0);
    assert!(agent.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(agent.sum("sonde_agent_export_connected", &[]), 1.0);
    assert_eq!(coll.sum("sonde_collector_agents_connected", &[]), 1.0);
    assert!(coll.sum("sonde_collector_endpoints_stored", &[]) >= 3.0);
    assert!(coll.sum("sonde_collector_batches_ingested_total", &[]) >= 1.0);
    assert!(coll.sum("sonde_collector_ingest_seconds", &[]) >= 1.0);

    // The dashboard: every metric it queries is one these processes export.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sonde.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard file"))
            .expect("the dashboard is JSON");
    let exported: BTreeSet<&String> = agent.names.iter().chain(coll.names.iter()).collect();
    let missing: Vec<String> = dashboard_metric_names(&dashboard)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unknown metrics: {missing:?}"
    );

    // A scrape storm: 200 concurrent scrapes while traffic flows.
    let rss_before = rss_kib(stack.agent_pid);
    let exchanges_before = agent.sum("sonde_agent_exchanges_total", &[]);
    let api_port = stack.api_port;
    let traffic = std::thread::spawn(move || drive(api_port, 30));
    let mut args: Vec<String> = vec![
        "-s".into(),
        "-Z".into(),
        "--parallel-max".into(),
        "200".into(),
        "-m".into(),
        "30".into(),
        "-w".into(),
        "%{http_code}\\n".into(),
    ];
    for _ in 0..200 {
        args.push("-o".into());
        args.push("/dev/null".into());
        args.push(format!("{}/metrics", stack.agent_metrics));
    }
    let storm_started = std::time::Instant::now();
    let storm = Command::new("curl").args(&args).output().expect("curl");
    let storm_took = storm_started.elapsed();
    let codes = String::from_utf8_lossy(&storm.stdout);
    let ok = codes.lines().filter(|l| l.trim() == "200").count();
    assert_eq!(ok, 200, "scrapes answered 200: {ok}; codes {codes}");
    traffic.join().expect("traffic thread");
    let rss_after = rss_kib(stack.agent_pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let after = eventually(
        Duration::from_secs(10),
        "the storm's traffic analysed",
        || {
            let s = Scrape::get(&stack.agent_metrics);
            (s.sum("sonde_agent_exchanges_total", &[]) >= exchanges_before + 30.0).then_some(s)
        },
    );
    assert_eq!(
        after.sum("sonde_agent_kernel_drops_total", &[]),
        0.0,
        "kernel drops: {:?}",
        after.nonzero("sonde_agent_kernel_drops_total")
    );
    assert_eq!(
        after.sum("sonde_agent_userspace_drops_total", &[]),
        0.0,
        "user-space drops: {:?}",
        after.nonzero("sonde_agent_userspace_drops_total")
    );
    eprintln!(
        "scrape storm: 200 concurrent scrapes in {storm_took:?}, agent RSS {rss_before} -> {rss_after} KiB; {} exchanges",
        after.sum("sonde_agent_exchanges_total", &[])
    );

    // The collector goes away: batches wait in the spool and the export lag grows; once it is
    // back they are delivered and the lag returns to 0.
    stack.stop_collector();
    drive(stack.api_port, 6);
    let waiting = eventually(
        Duration::from_secs(20),
        "batches waiting in the spool",
        || {
            let s = Scrape::get(&stack.agent_metrics);
            (s.sum("sonde_agent_export_spool_batches", &[]) >= 1.0
                && s.sum("sonde_agent_export_lag_seconds", &[]) >= 1.0
                && s.sum("sonde_agent_export_connected", &[]) == 0.0)
                .then_some(s)
        },
    );
    assert!(waiting.sum("sonde_agent_export_spool_bytes", &[]) > 0.0);
    stack.start_collector();
    let delivered = eventually(Duration::from_secs(40), "the spool delivered", || {
        let s = Scrape::get(&stack.agent_metrics);
        (s.sum("sonde_agent_export_spool_batches", &[]) == 0.0
            && s.sum("sonde_agent_export_connected", &[]) == 1.0)
            .then_some(s)
    });
    assert_eq!(delivered.sum("sonde_agent_export_lag_seconds", &[]), 0.0);
    assert!(delivered.sum("sonde_agent_export_reconnects_total", &[]) >= 1.0);
    assert!(
        delivered.sum("sonde_agent_export_batches_acked_total", &[])
            > after.sum("sonde_agent_export_batches_acked_total", &[])
    );
}
