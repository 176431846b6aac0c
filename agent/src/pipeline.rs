//! The analysis pipeline behind `observe` and `run`: capture events → protocol → inventory,
//! driven from one thread that owns the per-connection state (no lock per event).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sonde_detect::Detectors;
use sonde_inventory::{CallInfo, Inventory, SpecScope};
use sonde_model::{Anomaly, CaptureEvent, Exchange, HttpVersion, Role, Source};
use sonde_protocol::Tracker;

use crate::capture::procfs;
use crate::config::AgentConfig;
use crate::tls::TlsStage;

/// What the pipeline produced from one batch of events.
pub trait Sink {
    /// One exchange and the inventory's analysis of it.
    fn exchange(&mut self, ex: &Exchange, call: &CallInfo);
    /// Inventory events (shadow/zombie endpoints, personal data served without auth).
    fn anomalies(&mut self, anomalies: Vec<Anomaly>);
}

/// Counters of the analysis thread.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PipelineStats {
    pub events: u64,
    pub exchanges: u64,
    /// Client-side views of calls whose server side is captured on this host too.
    pub duplicate_client_views: u64,
    /// Exchanges by protocol: HTTP/1.x, HTTP/2 other than gRPC, gRPC.
    pub http1_exchanges: u64,
    pub http2_exchanges: u64,
    pub grpc_exchanges: u64,
    /// Data events and their captured bytes, by [`source_index`] and direction index (kept out
    /// of the heartbeat's flat counters; the metrics endpoint labels them).
    #[serde(skip)]
    pub data_events: [[u64; 2]; SOURCES.len()],
    #[serde(skip)]
    pub data_bytes: [[u64; 2]; SOURCES.len()],
}

/// Capture sources in [`source_index`] order.
pub const SOURCES: [Source; 3] = [Source::Syscall, Source::Tls, Source::Pcap];

pub fn source_index(source: Source) -> usize {
    match source {
        Source::Syscall => 0,
        Source::Tls => 1,
        Source::Pcap => 2,
    }
}

/// Distinct (kind, severity) pairs counted by name; further ones are counted as `{other}` so a
/// flood of new kinds cannot grow the map.
const MAX_ANOMALY_KINDS: usize = 256;

/// Protocol tracking and inventory for one stream of capture events.
pub struct Analyzer {
    tracker: Tracker,
    /// Ciphertext away from the HTTP parsers; handshake posture; blind spots.
    tls: TlsStage,
    /// Posture findings waiting for the next drain.
    tls_findings: Vec<Anomaly>,
    inventory: Inventory,
    detectors: Detectors,
    /// Where the behavioural baseline is saved (and was restored from).
    baseline_file: Option<PathBuf>,
    local: LocalServers,
    dedupe: bool,
    exchanges: Vec<Exchange>,
    stats: PipelineStats,
    /// Anomalies emitted, by (kind, severity).
    anomaly_counts: BTreeMap<(String, &'static str), u64>,
}

impl Analyzer {
    pub fn new(cfg: &AgentConfig) -> anyhow::Result<Analyzer> {
        let tracker = Tracker::new(cfg.protocol.clone())
            .map_err(|e| anyhow::anyhow!("protocol configuration: {e}"))?;
        let mut inventory = Inventory::new(cfg.inventory.clone());
        let specs = cfg.specs.iter().map(|s| {
            (
                s.path.clone(),
                SpecScope {
                    authority: s.authority.clone(),
                    port: s.port,
                    process: s.process.clone(),
                },
            )
        });
        for err in inventory.load_specs(specs) {
            tracing::warn!(error = %err, "declared spec skipped");
        }
        let baseline_file = cfg.baseline_file.clone();
        let detectors = match &baseline_file {
            // A missing file starts learning; a damaged one is set aside with a warning.
            Some(path) => Detectors::load(path, cfg.detect.clone())
                .map_err(|e| anyhow::anyhow!("baseline {}: {e}", path.display()))?,
            None => Detectors::new(cfg.detect.clone()),
        };
        Ok(Analyzer {
            tracker,
            tls: TlsStage::new(cfg.posture.clone(), cfg.blind_spots.clone()),
            tls_findings: Vec::new(),
            inventory,
            detectors,
            baseline_file,
            local: LocalServers::default(),
            // With a process filter the server side may not be captured: keep both views.
            dedupe: cfg.capture.pids.is_empty(),
            exchanges: Vec::with_capacity(256),
            stats: PipelineStats::default(),
            anomaly_counts: BTreeMap::new(),
        })
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn inventory_mut(&mut self) -> &mut Inventory {
        &mut self.inventory
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn tls(&self) -> &TlsStage {
        &self.tls
    }

    pub fn tls_mut(&mut self) -> &mut TlsStage {
        &mut self.tls
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    /// Anomalies emitted so far, by (kind, severity).
    pub fn anomaly_counts(&self) -> &BTreeMap<(String, &'static str), u64> {
        &self.anomaly_counts
    }

    /// Saves the behavioural baseline (periodically and on shutdown), if a file is configured.
    pub fn save_baseline(&self) {
        if let Some(path) = &self.baseline_file
            && let Err(e) = self.detectors.save(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "baseline not saved");
        }
    }

    /// Feeds a batch of capture events.
    pub fn on_events(&mut self, batch: Vec<CaptureEvent>, sink: &mut dyn Sink) {
        self.stats.events += batch.len() as u64;
        for ev in batch {
            if let CaptureEvent::Data(d) = &ev {
                let (source, direction) = (source_index(d.source), d.direction.index() & 1);
                self.stats.data_events[source][direction] += 1;
                self.stats.data_bytes[source][direction] += d.data.len() as u64;
            }
            if self.tls.route(&ev, &mut self.tls_findings) {
                self.tracker.on_event(ev, &mut self.exchanges);
            }
        }
        self.drain(sink);
        self.tls.end_batch();
    }

    /// Timeouts (requests whose response never came, idle connections).
    pub fn tick(&mut self, now_unix_ns: u64, sink: &mut dyn Sink) {
        self.tracker.tick(now_unix_ns, &mut self.exchanges);
        self.drain(sink);
        self.tls.tick(now_unix_ns);
    }

    /// End of input: every pending request is emitted.
    pub fn flush(&mut self, sink: &mut dyn Sink) {
        self.tracker.flush(&mut self.exchanges);
        self.drain(sink);
        self.tls.flush();
        self.tls.end_batch();
    }

    fn drain(&mut self, sink: &mut dyn Sink) {
        let mut exchanges = std::mem::take(&mut self.exchanges);
        let mut events = std::mem::take(&mut self.tls_findings);
        for ex in exchanges.drain(..) {
            if self.dedupe && self.is_duplicate_client_view(&ex) {
                self.stats.duplicate_client_views += 1;
                continue;
            }
            self.stats.exchanges += 1;
            match (ex.version, ex.grpc.is_some()) {
                (HttpVersion::Http2, true) => self.stats.grpc_exchanges += 1,
                (HttpVersion::Http2, false) => self.stats.http2_exchanges += 1,
                (HttpVersion::Http10 | HttpVersion::Http11, _) => self.stats.http1_exchanges += 1,
            }
            let now = ex
                .response
                .as_ref()
                .map(|r| r.ts_end_ns)
                .unwrap_or(ex.request.ts_end_ns);
            let call = self.inventory.observe(&ex, now);
            match self.tls.exchange_tls(&ex) {
                (true, facts) => self.inventory.note_tls(call.endpoint_id, facts.as_ref()),
                (false, _) => self
                    .tls
                    .plaintext_exchange(&ex, &call.endpoint, &mut events),
            }
            self.detectors.observe(&ex, &call, now);
            sink.exchange(&ex, &call);
        }
        self.exchanges = exchanges;
        events.extend(self.inventory.drain_events());
        events.extend(self.detectors.drain());
        if !events.is_empty() {
            for a in &events {
                let key = (a.kind.clone(), a.severity.as_str());
                let key = if self.anomaly_counts.len() < MAX_ANOMALY_KINDS
                    || self.anomaly_counts.contains_key(&key)
                {
                    key
                } else {
                    ("{other}".to_string(), a.severity.as_str())
                };
                *self.anomaly_counts.entry(key).or_default() += 1;
            }
            self.name_endpoints_as_on_the_wire(&mut events);
            sink.anomalies(events);
        }
    }

    /// Anomalies name their endpoint the way the collector lists it (`service METHOD /template`
    /// with the service's display name), so an endpoint and its anomalies can be joined there.
    fn name_endpoints_as_on_the_wire(&self, events: &mut [Anomaly]) {
        for a in events {
            let Some(name) = &a.endpoint else { continue };
            if let Some(rec) = self
                .inventory
                .endpoints()
                .find(|r| &*r.key == name.as_str())
            {
                a.endpoint = Some(crate::export::endpoint_key(rec).display_name());
            }
        }
    }

    /// A call between two processes of this host is seen twice, from the client's socket and
    /// from the server's. The server's view is the one that names the serving process, so the
    /// client's is dropped when its destination is a port this host listens on.
    fn is_duplicate_client_view(&mut self, ex: &Exchange) -> bool {
        if ex.conn.role != Role::Client {
            return false;
        }
        let Some(server) = ex.conn.server_addr() else {
            return false;
        };
        self.local.serves(server)
    }
}

/// Ports this host listens on, from /proc/net/tcp{,6}, refreshed at most once a second.
#[derive(Default)]
struct LocalServers {
    listening: HashSet<(Option<IpAddr>, u16)>,
    refreshed: Option<Instant>,
}

impl LocalServers {
    fn serves(&mut self, addr: SocketAddr) -> bool {
        if self
            .refreshed
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.refresh();
        }
        self.listening.contains(&(None, addr.port()))
            || self.listening.contains(&(Some(addr.ip()), addr.port()))
    }

    fn refresh(&mut self) {
        self.refreshed = Some(Instant::now());
        self.listening.clear();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for row in procfs::parse_table(&text) {
                if row.state != 0x0A {
                    continue;
                }
                let ip = row.local.ip();
                // A wildcard listener serves every local address.
                let key = if ip.is_unspecified() { None } else { Some(ip) };
                self.listening.insert((key, row.local.port()));
            }
        }
    }
}

/// A declared OpenAPI spec and the services it describes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecSource {
    /// OpenAPI 3.0/3.1 file, YAML or JSON.
    pub path: PathBuf,
    /// Only services with this Host/authority (port ignored).
    #[serde(default)]
    pub authority: Option<String>,
    /// Only services on this server port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Only services of this process (`comm`).
    #[serde(default)]
    pub process: Option<String>,
}

/// Unix-epoch nanoseconds now.
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
