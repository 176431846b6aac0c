//! Cost of the metrics path: the analysis thread's once-a-second copy of its counters, and one
//! scrape (encoding the whole agent exposition), over the state left by replaying the
//! suricata-verify HTTP pcaps (`$SONDE_CORPORA` or ../shared/corpora).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::config::AgentConfig;
use sonde_agent::metrics::{AgentMetrics, PipelineSnapshot};
use sonde_agent::pipeline::{Analyzer, Sink};
use sonde_inventory::CallInfo;
use sonde_model::{Anomaly, Exchange};

struct Discard;

impl Sink for Discard {
    fn exchange(&mut self, _: &Exchange, _: &CallInfo) {}
    fn anomalies(&mut self, _: Vec<Anomaly>) {}
}

fn pcaps() -> Vec<PathBuf> {
    let root = std::env::var_os("SONDE_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"))
        .join("suricata-verify/tests");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dirs
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("http"))
        .map(|d| d.path().join("input.pcap"))
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

fn bench(c: &mut Criterion) {
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("default config");
    let files = pcaps();
    for pcap in &files {
        let Ok(reader) = sonde_pcap::PcapReader::open(pcap) else {
            continue;
        };
        analyzer.on_events(reader.flatten().collect(), &mut Discard);
    }
    analyzer.flush(&mut Discard);
    let metrics = AgentMetrics::new(None, None, "replay");
    let mut publisher = metrics.publisher();
    publisher.maybe_publish(&analyzer);
    let registry = metrics.into_registry();
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
    eprintln!(
        "state from {} pcaps: {} exchanges, {} endpoints; exposition {} bytes, {} lines",
        files.len(),
        analyzer.stats().exchanges,
        analyzer.inventory().endpoints().count(),
        text.len(),
        text.lines().count()
    );
    c.bench_function("snapshot of the analysis counters", |b| {
        b.iter(|| std::hint::black_box(PipelineSnapshot::of(&analyzer)))
    });
    c.bench_function("encode one scrape", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(text.len());
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
                .expect("encodes");
            std::hint::black_box(out)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
