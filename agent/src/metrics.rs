//! The agent's Prometheus metrics (`--metrics-listen`).
//!
//! Nothing is counted twice: the values are the stages' own counters. Those that live in
//! atomics (kernel per-CPU counters, ring reader, exporter) are read at scrape time; those owned
//! by the analysis thread (reassembly, protocol, inventory, detectors) are copied by that thread
//! into a [`SnapshotCell`] at most once per [`PUBLISH_INTERVAL`], so a scrape never touches the
//! hot path's state and the hot path never waits for a scrape.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use sonde_common::counter;
use sonde_detect::DetectStats;
use sonde_export::ExportHandle;
use sonde_inventory::InventoryCounters;
use sonde_metrics::{Emit, ProcessCollector, ReadyCheck};
use sonde_model::Direction;
use sonde_protocol::TrackerStats;

use crate::capture::{CountersReader, LiveCapture, ReaderStats};
use crate::pipeline::{Analyzer, PipelineStats, SOURCES};

/// How often the analysis thread copies its counters for scrapes.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// `/readyz` fails when the analysis thread has not published for this long (it is stuck).
const STALE_AFTER: Duration = Duration::from_secs(10);

/// The analysis thread's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct PipelineSnapshot {
    pub pipeline: PipelineStats,
    pub tracker: TrackerStats,
    pub inventory: InventoryCounters,
    pub endpoints: u64,
    pub detect: DetectStats,
    pub anomalies: Vec<(String, &'static str, u64)>,
}

impl PipelineSnapshot {
    pub fn of(analyzer: &Analyzer) -> PipelineSnapshot {
        PipelineSnapshot {
            pipeline: analyzer.stats().clone(),
            tracker: analyzer.tracker().stats(),
            inventory: analyzer.inventory().counters().clone(),
            endpoints: analyzer.inventory().endpoints().count() as u64,
            detect: analyzer.detectors().stats(),
            anomalies: analyzer
                .anomaly_counts()
                .iter()
                .map(|((kind, severity), n)| (kind.clone(), *severity, *n))
                .collect(),
        }
    }
}

/// The latest [`PipelineSnapshot`]: replaced whole by the analysis thread, read by scrapes (each
/// side holds the lock only to swap or clone an `Arc`).
#[derive(Debug, Default)]
pub struct SnapshotCell {
    latest: RwLock<Option<(Arc<PipelineSnapshot>, Instant)>>,
}

impl SnapshotCell {
    pub fn publish(&self, snapshot: PipelineSnapshot) {
        let snapshot = Arc::new(snapshot);
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some((snapshot, Instant::now()));
        }
    }

    /// The latest snapshot and its age.
    pub fn load(&self) -> Option<(Arc<PipelineSnapshot>, Duration)> {
        let latest = self.latest.read().ok()?;
        latest.as_ref().map(|(s, at)| (s.clone(), at.elapsed()))
    }
}

/// Publishes the analyzer's counters when the last copy is older than [`PUBLISH_INTERVAL`].
pub struct Publisher {
    cell: Arc<SnapshotCell>,
    last: Option<Instant>,
}

impl Publisher {
    pub fn maybe_publish(&mut self, analyzer: &Analyzer) {
        if self.last.is_some_and(|t| t.elapsed() < PUBLISH_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        self.cell.publish(PipelineSnapshot::of(analyzer));
    }
}

/// Where the agent's metrics come from.
pub struct AgentMetrics {
    registry: Registry,
    cell: Arc<SnapshotCell>,
}

impl AgentMetrics {
    /// `live`: the capture source (kernel counters, ring reader, probes), absent for files.
    /// `export`: the exporter of `run` (absent for `observe`).
    pub fn new(
        live: Option<&LiveCapture>,
        export: Option<ExportHandle>,
        capture_strategy: &str,
    ) -> AgentMetrics {
        let cell = Arc::new(SnapshotCell::default());
        let mut registry = Registry::default();
        if let Some(live) = live {
            live.probe_metrics().register(&mut registry);
        }
        registry.register_collector(Box::new(AgentCollector {
            cell: cell.clone(),
            kernel: live.map(LiveCapture::counters_reader),
            reader: live.map(LiveCapture::reader_stats),
            export,
            capture_strategy: capture_strategy.to_string(),
        }));
        registry.register_collector(Box::new(ProcessCollector));
        AgentMetrics { registry, cell }
    }

    /// The handle the analysis loop publishes through.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            cell: self.cell.clone(),
            last: None,
        }
    }

    /// Ready when the capture is attached (it is, if this exists with a live source) and the
    /// analysis thread has published recently.
    pub fn ready_check(&self) -> ReadyCheck {
        let cell = self.cell.clone();
        Arc::new(move || match cell.load() {
            None => Err("the pipeline has not started yet".into()),
            Some((_, age)) if age > STALE_AFTER => Err(format!(
                "the pipeline has not made progress for {} s",
                age.as_secs()
            )),
            Some(_) => Ok(()),
        })
    }

    /// For metrics that live elsewhere in the process (the embedded collector's).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn into_registry(self) -> Registry {
        self.registry
    }
}

/// Reads every source at scrape time.
struct AgentCollector {
    cell: Arc<SnapshotCell>,
    kernel: Option<CountersReader>,
    reader: Option<Arc<ReaderStats>>,
    export: Option<ExportHandle>,
    capture_strategy: String,
}

impl fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCollector")
            .field("live", &self.kernel.is_some())
            .field("export", &self.export.is_some())
            .field("capture_strategy", &self.capture_strategy)
            .finish()
    }
}

/// Help text of each kernel activity counter (drops are one family, see `encode`).
fn kernel_counter_help(name: &str) -> &'static str {
    match name {
        "cap_exceeded_calls" => "Socket calls with more bytes than the per-call copy cap.",
        "cap_exceeded_bytes" => {
            "Bytes that travelled as a length only (per-call cap or iovec limit)."
        }
        "non_http_conns" => "Connections the kernel side declared not HTTP by their first bytes.",
        "non_http_calls" => {
            "Calls on non-HTTP or TLS-ciphertext connections skipped without copying."
        }
        "data_events" => "Data records the kernel side wrote to the ring buffer.",
        "captured_bytes" => "Payload bytes the kernel side copied into the ring buffer.",
        "conns_opened" => "Connections first seen by the kernel side.",
        "filtered_calls" => "Calls skipped by the port or process filter.",
        "sendfile_bytes" => "sendfile bytes (no user buffer: a length only).",
        "peek_calls" => "recv calls with MSG_PEEK (not consumed, not shipped).",
        "tls_conns" => "TLS connections seen on the syscall path (ciphertext, not shipped).",
        "conns_closed" => "Connections closed (close records written).",
        "migrated_unnamed" => {
            "First calls of new connections lost: the thread changed CPUs inside the call."
        }
        _ => "Kernel-side counter.",
    }
}

/// Label of a [`Direction::index`].
fn direction_name(index: usize) -> &'static str {
    if index == Direction::Egress.index() {
        "egress"
    } else {
        "ingress"
    }
}

fn source_name(source: sonde_model::Source) -> &'static str {
    match source {
        sonde_model::Source::Syscall => "syscall",
        sonde_model::Source::Tls => "tls",
        sonde_model::Source::Pcap => "pcap",
    }
}

fn unix_now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Collector for AgentCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut e = Emit::new(encoder);
        e.info(
            "sonde_agent_build_info",
            "Agent version and the capture strategy it chose (value 1).",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("capture_strategy", &self.capture_strategy),
            ],
        )?;

        let mut drops: Vec<(&str, u64)> = Vec::new();
        if let Some(kernel) = &self.kernel {
            let k = kernel.read();
            e.counters(
                "sonde_agent_kernel_drops",
                "Data lost in the kernel side, by reason (ring full, unreadable buffer, map full).",
                "reason",
                k.drops(),
            )?;
            for (index, (name, value)) in k.values.iter().enumerate() {
                if counter::is_drop(index as u32) {
                    continue;
                }
                e.counter(
                    &format!("sonde_agent_kernel_{name}"),
                    kernel_counter_help(name),
                    *value,
                )?;
            }
        }
        if let Some(r) = &self.reader {
            use std::sync::atomic::Ordering::Relaxed;
            e.counter(
                "sonde_agent_ring_records",
                "Records read from the ring buffer.",
                r.records.load(Relaxed),
            )?;
            e.counter(
                "sonde_agent_ring_batches",
                "Event batches handed to the pipeline.",
                r.batches.load(Relaxed),
            )?;
            e.counter_f64(
                "sonde_agent_capture_backpressure_seconds",
                "Time the ring reader waited for the pipeline (its channel was full).",
                r.blocked_ns.load(Relaxed) as f64 / 1e9,
            )?;
            e.counters(
                "sonde_agent_procfs_address_lookups",
                "Connection addresses looked up in procfs, by result.",
                "result",
                [
                    ("resolved", r.addrs_resolved.load(Relaxed)),
                    ("unresolved", r.addrs_unresolved.load(Relaxed)),
                ],
            )?;
            e.counter(
                "sonde_agent_filtered_events",
                "Events of connections excluded by the port filter once procfs named them.",
                r.filtered_events.load(Relaxed),
            )?;
            drops.push(("ring_record_undecodable", r.decode_errors.load(Relaxed)));
        }

        if let Some((s, age)) = self.cell.load() {
            e.gauge(
                "sonde_agent_pipeline_snapshot_age_seconds",
                "Age of the analysis thread's latest copy of its counters.",
                age.as_secs_f64(),
            )?;
            let p = &s.pipeline;
            let mut events = Vec::new();
            let mut bytes = Vec::new();
            for (si, source) in SOURCES.iter().enumerate() {
                for di in 0..2 {
                    let labels = [source_name(*source), direction_name(di)];
                    events.push((labels, p.data_events[si][di]));
                    bytes.push((labels, p.data_bytes[si][di]));
                }
            }
            e.counters2(
                "sonde_agent_capture_events",
                "Data events analysed, by capture source and direction.",
                ["source", "direction"],
                events,
            )?;
            e.counters2(
                "sonde_agent_capture_bytes",
                "Captured payload bytes analysed, by capture source and direction.",
                ["source", "direction"],
                bytes,
            )?;
            e.counter(
                "sonde_agent_pipeline_events",
                "Capture events of every kind (open, data, close) analysed.",
                p.events,
            )?;
            e.counters(
                "sonde_agent_exchanges",
                "HTTP exchanges analysed, by protocol.",
                "protocol",
                [
                    ("http1", p.http1_exchanges),
                    ("http2", p.http2_exchanges),
                    ("grpc", p.grpc_exchanges),
                ],
            )?;
            e.counter(
                "sonde_agent_duplicate_client_views",
                "Client-side views of local calls folded into their server-side view.",
                p.duplicate_client_views,
            )?;
            let t = &s.tracker;
            let h2 = &t.http2;
            e.counters(
                "sonde_agent_parse_errors",
                "Malformed protocol data tolerated, by protocol.",
                "protocol",
                [
                    ("http1", t.parse_errors),
                    ("http2", h2.frame_errors + h2.preface_mismatches),
                    (
                        "hpack",
                        h2.hpack_malformed_blocks + h2.hpack_invalid_indices,
                    ),
                    ("content_encoding", t.decode_errors),
                ],
            )?;
            e.counters(
                "sonde_agent_connections",
                "Connections classified, by protocol.",
                "protocol",
                [
                    ("http1", t.http1_connections),
                    ("http2", t.http2_connections),
                    ("non_http", t.non_http_connections),
                ],
            )?;
            e.gauge(
                "sonde_agent_connections_tracked",
                "Connections with protocol state now.",
                t.connections_open as f64,
            )?;
            e.gauge(
                "sonde_agent_protocol_state_bytes",
                "Estimated bytes held by protocol state.",
                t.protocol_state_bytes as f64,
            )?;
            e.gauge(
                "sonde_agent_stream_buffered_bytes",
                "Bytes held out of order by reassembly.",
                t.stream.buffered_bytes as f64,
            )?;
            e.counter(
                "sonde_agent_stream_gaps",
                "Ranges of a stream that were never captured (explicit gaps).",
                t.stream.gaps,
            )?;
            e.counter(
                "sonde_agent_stream_gap_bytes",
                "Bytes covered by gaps.",
                t.stream.gap_bytes,
            )?;
            e.gauge(
                "sonde_agent_endpoints_tracked",
                "Endpoints in the inventory now.",
                s.endpoints as f64,
            )?;
            e.gauge(
                "sonde_agent_detect_principals_tracked",
                "Client principals the detectors keep a baseline for.",
                s.detect.principals as f64,
            )?;
            e.gauge(
                "sonde_agent_detect_state_bytes",
                "Estimated heap bytes of the detectors' state.",
                s.detect.approx_heap_bytes as f64,
            )?;
            e.counters2(
                "sonde_agent_anomalies",
                "Anomalies emitted, by kind and severity.",
                ["kind", "severity"],
                s.anomalies
                    .iter()
                    .map(|(k, sev, n)| ([k.as_str(), *sev], *n)),
            )?;
            let st = &t.stream;
            e.counter(
                "sonde_agent_stream_repeated_closes",
                "Closes of connections already closed (a non-HTTP connection is ended early): not a loss.",
                st.repeated_closes,
            )?;
            drops.extend([
                ("stream_connection_evicted", st.evicted),
                ("stream_budget_flush", st.budget_flushes),
                ("stream_late_after_close", st.late_after_close),
                ("stream_malformed_chunk", st.malformed),
                ("protocol_state_shed", t.connections_shed),
                ("http1_head_cut", t.headers_cut),
                ("http1_head_unfinished", t.heads_unfinished),
                ("http1_response_unpaired", t.responses_unpaired),
                ("http1_pipeline_overflow", t.pipeline_overflows),
                ("http2_header_block_dropped", h2.header_blocks_dropped),
                ("http2_header_field_dropped", h2.header_fields_dropped),
                ("http2_stream_evicted", h2.streams_evicted),
                ("http2_connection_abandoned", h2.connections_abandoned),
                ("http2_sample_cut", h2.samples_cut_by_budget),
                ("inventory_event_dropped", s.inventory.events_dropped),
            ]);
        }

        if let Some(export) = &self.export {
            let x = export.stats();
            e.counter(
                "sonde_agent_export_items_queued",
                "Endpoint updates and anomalies handed to the exporter.",
                x.queued_items,
            )?;
            e.counter(
                "sonde_agent_export_batches_sent",
                "Batch transmissions to the collector (re-sends count again).",
                x.sent_batches,
            )?;
            e.counter(
                "sonde_agent_export_batches_acked",
                "Batches the collector acknowledged.",
                x.acked_batches,
            )?;
            e.counter(
                "sonde_agent_export_items_acked",
                "Items in acknowledged batches.",
                x.acked_items,
            )?;
            e.counter(
                "sonde_agent_export_batches_rejected",
                "Batches the collector refused as invalid.",
                x.rejected_batches,
            )?;
            e.counter(
                "sonde_agent_export_reconnects",
                "Collector connections lost (each followed by a reconnect).",
                x.reconnects,
            )?;
            e.counter(
                "sonde_agent_export_spool_write_errors",
                "Spool segment writes that failed (batch kept in memory).",
                x.spool_write_errors,
            )?;
            e.gauge(
                "sonde_agent_export_connected",
                "1 while a collector stream is open.",
                if x.connected { 1.0 } else { 0.0 },
            )?;
            e.gauge(
                "sonde_agent_export_spool_bytes",
                "Bytes of batches waiting for an ack.",
                x.spooled_bytes as f64,
            )?;
            e.gauge(
                "sonde_agent_export_spool_batches",
                "Batches waiting for an ack.",
                x.pending_batches as f64,
            )?;
            let lag = if x.oldest_pending_sealed_unix_ns == 0 {
                0.0
            } else {
                (unix_now_seconds() - x.oldest_pending_sealed_unix_ns as f64 / 1e9).max(0.0)
            };
            e.gauge(
                "sonde_agent_export_lag_seconds",
                "Age of the oldest batch not yet acknowledged (0 when none waits).",
                lag,
            )?;
            drops.extend([
                ("export_spool_evicted", x.evicted_items),
                ("export_oversized_item", x.oversized_items),
            ]);
        }
        e.counters(
            "sonde_agent_userspace_drops",
            "Data lost or cut in user space, by reason.",
            "reason",
            drops,
        )
    }
}
