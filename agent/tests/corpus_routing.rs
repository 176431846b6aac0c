//! The TLS routing never takes a cleartext connection from the HTTP stage: every suricata-verify
//! pcap (HTTP/1.1, h2c, HTTP/2 prior knowledge) gives the same exchanges through the whole
//! pipeline as through the HTTP tracker alone, and no connection is taken for TLS.

use std::path::PathBuf;

use sonde_agent::config::AgentConfig;
use sonde_agent::pipeline::{Analyzer, Sink};
use sonde_inventory::CallInfo;
use sonde_model::{Anomaly, CaptureEvent, Exchange};
use sonde_protocol::{Tracker, TrackerConfig};

/// `$SONDE_CORPORA` or `../shared/corpora` beside the repository; the corpora must exist.
fn corpora() -> PathBuf {
    let dir = std::env::var_os("SONDE_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"));
    assert!(dir.is_dir(), "corpora missing at {}", dir.display());
    dir
}

#[derive(Default)]
struct Count {
    exchanges: Vec<(String, String)>,
}

impl Sink for Count {
    fn exchange(&mut self, ex: &Exchange, _: &CallInfo) {
        self.exchanges
            .push((ex.request.method.clone(), ex.request.path.clone()));
    }
    fn anomalies(&mut self, _: Vec<Anomaly>) {}
}

#[test]
fn suricata_pcaps_are_not_taken_for_tls() {
    let tests = corpora().join("suricata-verify/tests");
    let mut pcaps = 0;
    let mut total = 0;
    for entry in std::fs::read_dir(&tests).expect("suricata-verify tests") {
        let path = entry.expect("entry").path().join("input.pcap");
        if !path.is_file() {
            continue;
        }
        let events: Vec<CaptureEvent> = sonde_pcap::PcapReader::open(&path)
            .expect("open pcap")
            .filter_map(Result::ok)
            .collect();
        let mut tracker = Tracker::new(TrackerConfig::default()).expect("tracker");
        let mut alone = Vec::new();
        for ev in events.clone() {
            tracker.on_event(ev, &mut alone);
        }
        tracker.flush(&mut alone);

        let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("analyzer");
        let mut sink = Count::default();
        analyzer.on_events(events, &mut sink);
        analyzer.flush(&mut sink);
        assert_eq!(
            analyzer.tls().counters().tls_connections,
            0,
            "{}",
            path.display()
        );
        let expected: Vec<(String, String)> = alone
            .iter()
            .map(|e| (e.request.method.clone(), e.request.path.clone()))
            .collect();
        assert_eq!(sink.exchanges, expected, "{}", path.display());
        pcaps += 1;
        total += expected.len();
    }
    assert!(pcaps >= 20, "only {pcaps} pcaps found");
    assert!(total >= 40, "only {total} exchanges");
}
