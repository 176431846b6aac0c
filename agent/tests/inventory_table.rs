//! `sonde-agent inventory` names each service the way the collector and `sonde endpoints` list
//! it, so what an operator reads on the host can be looked up in the collector as it is.

use std::process::Command;

use sonde_agent::config::AgentConfig;
use sonde_agent::pipeline::Analyzer;
use sonde_model::CaptureEvent;

mod common;
use common::{Discard, corpus};

#[test]
fn the_inventory_table_names_services_as_the_collector_lists_them() {
    let Some(pcap) = corpus("suricata-verify/tests/http-auth-bearer/input.pcap") else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .args(["inventory", "--pcap"])
        .arg(&pcap)
        .output()
        .expect("sonde-agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);

    // The same pcap through the same pipeline, named as the export names it on the wire.
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("default config");
    let events: Vec<CaptureEvent> = sonde_pcap::PcapReader::open(&pcap)
        .expect("pcap opens")
        .map(|e| e.expect("pcap reads"))
        .collect();
    analyzer.on_events(events, &mut Discard);
    analyzer.flush(&mut Discard);
    let endpoints: Vec<_> = analyzer.inventory().endpoints().collect();
    assert!(!endpoints.is_empty(), "the pcap holds HTTP calls");
    for e in endpoints {
        let name = sonde_agent::export::service_key(&e.service).display_name();
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())
                    && l.contains(&*e.template)),
            "no row for {name} {}:\n{table}",
            e.template
        );
        // Not the inventory's internal key (`authority@address{workload}[process]`).
        assert_ne!(name, e.service.to_string());
    }
}
