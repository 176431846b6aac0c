//! Gauges the capture layer owns: which probes are attached, and which processes it cannot
//! read (TLS libraries it cannot hook, statically linked binaries, ...).
//!
//! A shared handle: the capture layer sets values when it attaches or gives up on something
//! (under a short lock, never per event), and the metrics endpoint reads them. Both families are
//! always declared, so dashboards and alerts can refer to them before the first value.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use sonde_metrics::Emit;

#[derive(Debug, Default)]
struct Values {
    attached: BTreeMap<String, usize>,
    blind: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Default)]
pub struct ProbeMetrics {
    values: Arc<RwLock<Values>>,
}

impl ProbeMetrics {
    /// Number of probes of `kind` (`tracepoint`, `kprobe`, `uprobe`) attached now.
    pub fn set_attached(&self, kind: &str, count: usize) {
        if let Ok(mut v) = self.values.write() {
            v.attached.insert(kind.to_string(), count);
        }
    }

    /// Number of processes whose payload cannot be read, for `reason`.
    pub fn set_blind(&self, reason: &str, count: usize) {
        if let Ok(mut v) = self.values.write() {
            v.blind.insert(reason.to_string(), count);
        }
    }

    /// Adds `sonde_agent_probes_attached` and `sonde_agent_blind_processes` to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }
}

impl Collector for ProbeMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(v) = self.values.read() else {
            return Ok(());
        };
        let mut e = Emit::new(encoder);
        e.gauges(
            "sonde_agent_probes_attached",
            "eBPF probes attached now, by kind (tracepoint, kprobe, uprobe).",
            "kind",
            v.attached.iter().map(|(k, n)| (k.as_str(), *n as f64)),
        )?;
        e.gauges(
            "sonde_agent_blind_processes",
            "Processes whose traffic the agent cannot read, by reason.",
            "reason",
            v.blind.iter().map(|(k, n)| (k.as_str(), *n as f64)),
        )
    }
}
