//! Gauges the capture layer owns: which probes are attached, and which processes it cannot
//! read (TLS libraries it cannot hook, statically linked binaries, ...).
//!
//! The families are shared handles: the capture layer sets them when it attaches or gives up on
//! something, and the metrics endpoint reads them. Setting a value is a map lookup under the
//! family's lock, which happens on attach/detach, never per event.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of one probe-kind or blind-reason sample.
type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Default)]
pub struct ProbeMetrics {
    attached: Family<Labels, Gauge>,
    blind: Family<Labels, Gauge>,
}

impl ProbeMetrics {
    /// Number of probes of `kind` (`tracepoint`, `kprobe`, `uprobe`) attached now.
    pub fn set_attached(&self, kind: &str, count: usize) {
        self.attached
            .get_or_create(&vec![("kind", kind.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Number of processes whose payload cannot be read, for `reason`.
    pub fn set_blind(&self, reason: &str, count: usize) {
        self.blind
            .get_or_create(&vec![("reason", reason.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Adds the two families to `registry` (`sonde_agent_probes_attached`,
    /// `sonde_agent_blind_processes`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sonde_agent_probes_attached",
            "eBPF probes attached now, by kind (tracepoint, kprobe, uprobe).",
            self.attached.clone(),
        );
        registry.register(
            "sonde_agent_blind_processes",
            "Processes whose traffic the agent cannot read, by reason.",
            self.blind.clone(),
        );
    }
}
