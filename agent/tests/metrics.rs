//! The agent's exposition over real input: suricata-verify pcaps (HTTP/1 with a bearer token,
//! HTTP/2) through the pipeline, then the metrics encoded and parsed by a Prometheus parser and
//! compared with what the pipeline itself counted.

use sonde_agent::config::AgentConfig;
use sonde_agent::metrics::AgentMetrics;
use sonde_agent::pipeline::Analyzer;
use sonde_model::CaptureEvent;

mod common;
use common::{Discard, corpus};

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn replayed_pcaps_are_counted_as_the_pipeline_counted_them() {
    let (Some(h1), Some(h2)) = (
        corpus("suricata-verify/tests/http-auth-bearer/input.pcap"),
        corpus("suricata-verify/tests/http2-bugfixes/input.pcap"),
    ) else {
        return;
    };
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("default config");
    let metrics = AgentMetrics::new(None, None, "replay");
    let mut publisher = metrics.publisher();
    let mut data_events = 0u64;
    let mut data_bytes = 0u64;
    for pcap in [h1, h2] {
        let events: Vec<CaptureEvent> = sonde_pcap::PcapReader::open(&pcap)
            .expect("pcap opens")
            .map(|e| e.expect("pcap reads"))
            .collect();
        for e in &events {
            if let CaptureEvent::Data(d) = e {
                data_events += 1;
                data_bytes += d.data.len() as u64;
            }
        }
        analyzer.on_events(events, &mut Discard);
    }
    analyzer.flush(&mut Discard);
    publisher.maybe_publish(&analyzer);

    let ready = metrics.ready_check();
    assert_eq!(ready(), Ok(()));
    let registry = metrics.into_registry();
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");

    let stats = analyzer.stats();
    assert!(
        stats.http1_exchanges > 0 && stats.http2_exchanges > 0,
        "{stats:?}"
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_exchanges_total",
            &[("protocol", "http1")]
        ),
        stats.http1_exchanges as f64
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_exchanges_total",
            &[("protocol", "http2")]
        ),
        stats.http2_exchanges as f64
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_capture_events_total",
            &[("source", "pcap")]
        ),
        data_events as f64
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_capture_bytes_total",
            &[("source", "pcap")]
        ),
        data_bytes as f64
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_capture_events_total",
            &[("source", "syscall")]
        ),
        0.0
    );
    assert_eq!(
        value(&scrape, "sonde_agent_endpoints_tracked", &[]),
        analyzer.inventory().endpoints().count() as f64
    );
    assert!(
        value(
            &scrape,
            "sonde_agent_connections_total",
            &[("protocol", "http2")]
        ) >= 1.0
    );
    let emitted: u64 = analyzer.anomaly_counts().values().sum();
    assert_eq!(
        value(&scrape, "sonde_agent_anomalies_total", &[]),
        emitted as f64
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_agent_build_info",
            &[("capture_strategy", "replay")]
        ),
        1.0
    );
    // No live capture and no exporter: their families are absent, not zero.
    assert!(!text.contains("sonde_agent_kernel_drops_total"), "{text}");
    assert!(!text.contains("sonde_agent_export_lag_seconds"), "{text}");
}
