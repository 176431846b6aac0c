//! The collector's Prometheus metrics, served by `sonde-collector --metrics-listen`.
//!
//! Counters and histograms are updated once per batch, query or watcher (never per item), and
//! the store's size is read at scrape time from its in-memory row counts and the file sizes, so
//! a scrape costs no SQL.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sonde_metrics::{Emit, ProcessCollector, ReadyCheck};

use crate::store::Store;

type Labels = Vec<(&'static str, &'static str)>;

/// The query API's methods, as they appear in the `method` label.
const QUERY_METHODS: [&str; 6] = [
    "list_endpoints",
    "get_endpoint",
    "list_anomalies",
    "watch_anomalies",
    "list_agents",
    "export_open_api",
];
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one running collector.
pub struct CollectorMetrics {
    store: Arc<Store>,
    serving: AtomicBool,
    pub agents_connected: Gauge,
    pub watch_subscribers: Gauge,
    pub batches_ingested: Counter,
    /// Items committed, by `kind` (`endpoint_update`, `anomaly`).
    pub items_ingested: Family<Labels, Counter>,
    /// Batches refused, by `reason` (`invalid`, `store_error`).
    pub batches_refused: Family<Labels, Counter>,
    /// Items of committed batches not stored, by `reason` (`row_cap`).
    pub items_refused: Family<Labels, Counter>,
    pub duplicate_batches: Counter,
    pub ingest_seconds: Histogram,
    /// Query RPCs by `method` and gRPC `code`.
    pub query_requests: Family<Labels, Counter>,
    pub query_seconds: Histograms,
    /// SIEM export: anomalies written or delivered, by `sink` (`file`, `webhook`).
    pub siem_exported: Family<Labels, Counter>,
    /// SIEM export: anomalies dropped, by `sink` and `reason` (`queue_full`, `write_error`,
    /// `gave_up`).
    pub siem_dropped: Family<Labels, Counter>,
    /// Webhook deliveries that failed and were retried.
    pub siem_retries: Counter,
}

impl fmt::Debug for CollectorMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorMetrics")
            .field("serving", &self.serving.load(Ordering::Relaxed))
            .finish()
    }
}

impl CollectorMetrics {
    pub fn new(store: Arc<Store>) -> CollectorMetrics {
        let metrics = CollectorMetrics {
            store,
            serving: AtomicBool::new(false),
            agents_connected: Gauge::default(),
            watch_subscribers: Gauge::default(),
            batches_ingested: Counter::default(),
            items_ingested: Family::default(),
            batches_refused: Family::default(),
            items_refused: Family::default(),
            duplicate_batches: Counter::default(),
            ingest_seconds: latency_histogram(),
            query_requests: Family::default(),
            query_seconds: Family::new_with_constructor(latency_histogram),
            siem_exported: Family::default(),
            siem_dropped: Family::default(),
            siem_retries: Counter::default(),
        };
        // Known label sets start at 0, so rates and alerts work before the first event.
        for kind in ["endpoint_update", "anomaly"] {
            let _ = metrics.items_ingested.get_or_create(&vec![("kind", kind)]);
        }
        for reason in ["invalid", "store_error"] {
            let _ = metrics
                .batches_refused
                .get_or_create(&vec![("reason", reason)]);
        }
        let _ = metrics
            .items_refused
            .get_or_create(&vec![("reason", "row_cap")]);
        for method in QUERY_METHODS {
            let _ = metrics
                .query_requests
                .get_or_create(&vec![("method", method), ("code", "ok")]);
            let _ = metrics
                .query_seconds
                .get_or_create(&vec![("method", method)]);
        }
        for sink in ["file", "webhook"] {
            let _ = metrics.siem_exported.get_or_create(&vec![("sink", sink)]);
            let _ = metrics
                .siem_dropped
                .get_or_create(&vec![("sink", sink), ("reason", "queue_full")]);
        }
        metrics
    }

    /// Marks the gRPC server as serving (true) or shutting down (false), for `/readyz`.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Ready when the store is open (it is, once this exists) and gRPC is serving.
    pub fn ready_check(self: &Arc<Self>) -> ReadyCheck {
        let metrics = self.clone();
        Arc::new(move || {
            if metrics.serving.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the gRPC server is not serving (starting or shutting down)".into())
            }
        })
    }

    /// Records one query RPC.
    pub fn observe_query(&self, method: &'static str, code: tonic::Code, started: Instant) {
        self.query_requests
            .get_or_create(&vec![("method", method), ("code", code_name(code))])
            .inc();
        self.query_seconds
            .get_or_create(&vec![("method", method)])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn count(family: &Family<Labels, Counter>, labels: Labels, n: u64) {
        family.get_or_create(&labels).inc_by(n);
    }

    /// A registry with every collector metric, the store's size and the process figures.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        self.register(&mut r);
        r.register_collector(Box::new(ProcessCollector));
        r
    }

    /// Adds every collector metric and the store's size (not the process figures) to `r`: the
    /// agent does this for its embedded collector, so one endpoint shows both.
    pub fn register(self: &Arc<Self>, r: &mut Registry) {
        r.register(
            "sonde_collector_agents_connected",
            "Agents with an open ingest stream.",
            self.agents_connected.clone(),
        );
        r.register(
            "sonde_collector_watch_subscribers",
            "Open live anomaly watches.",
            self.watch_subscribers.clone(),
        );
        r.register(
            "sonde_collector_batches_ingested",
            "Batches committed to the store.",
            self.batches_ingested.clone(),
        );
        r.register(
            "sonde_collector_items_ingested",
            "Items of committed batches, by kind.",
            self.items_ingested.clone(),
        );
        r.register(
            "sonde_collector_batches_refused",
            "Batches refused, by reason.",
            self.batches_refused.clone(),
        );
        r.register(
            "sonde_collector_items_refused",
            "Items of committed batches not stored, by reason.",
            self.items_refused.clone(),
        );
        r.register(
            "sonde_collector_duplicate_batches",
            "Batches skipped because their seq was already committed (redelivery).",
            self.duplicate_batches.clone(),
        );
        r.register(
            "sonde_collector_ingest_seconds",
            "Time to validate and commit one batch.",
            self.ingest_seconds.clone(),
        );
        r.register(
            "sonde_collector_query_requests",
            "Query RPCs, by method and gRPC status code.",
            self.query_requests.clone(),
        );
        r.register(
            "sonde_collector_query_seconds",
            "Query RPC latency, by method.",
            self.query_seconds.clone(),
        );
        r.register(
            "sonde_collector_siem_exported",
            "Anomalies exported to the SIEM, by sink.",
            self.siem_exported.clone(),
        );
        r.register(
            "sonde_collector_siem_dropped",
            "Anomalies the SIEM export could not deliver, by sink and reason.",
            self.siem_dropped.clone(),
        );
        r.register(
            "sonde_collector_siem_retries",
            "SIEM webhook deliveries retried after a failure.",
            self.siem_retries.clone(),
        );
        r.register_collector(Box::new(StoreCollector {
            store: self.store.clone(),
        }));
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}

/// The store's size, read at scrape time.
struct StoreCollector {
    store: Arc<Store>,
}

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCollector").finish()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut e = Emit::new(encoder);
        let (endpoints, anomalies) = self.store.row_counts();
        e.gauge(
            "sonde_collector_endpoints_stored",
            "Endpoints in the store.",
            endpoints as f64,
        )?;
        e.gauge(
            "sonde_collector_anomalies_stored",
            "Anomaly keys in the store.",
            anomalies as f64,
        )?;
        e.gauge(
            "sonde_collector_database_bytes",
            "Size of the database files (main file and write-ahead log).",
            self.store.file_bytes() as f64,
        )
    }
}
