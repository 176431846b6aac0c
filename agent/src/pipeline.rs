//! The analysis pipeline behind `observe` and `run`: capture events → protocol → inventory,
//! driven from one thread that owns the per-connection state (no lock per event).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonde_detect::Detectors;
use sonde_identity::{IdentityConfig, KubeIndex, Resolver};
use sonde_inventory::{CallInfo, Inventory, SpecScope};
use sonde_model::{
    Anomaly, CaptureEvent, ConnId, ConnMeta, Exchange, ExchangeFlags, HttpVersion, Role, Source,
    Workload,
};
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
    /// Syscall-side chunks of TLS connections (ciphertext) kept away from the HTTP parsers.
    pub tls_ciphertext_chunks: u64,
    /// Chunks of TLS plaintext (read inside a TLS library) handed to the parsers.
    pub tls_plaintext_chunks: u64,
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
    tls_streams: TlsStreams,
    dedupe: bool,
    exchanges: Vec<Exchange>,
    stats: PipelineStats,
    /// Anomalies emitted, by (kind, severity).
    anomaly_counts: BTreeMap<(String, &'static str), u64>,
    /// Workload identity of the processes (live capture only: a recording's pids are not this
    /// host's).
    identity: Option<Identity>,
}

/// The identity resolver and, per connection, its metadata with the workload filled in.
struct Identity {
    resolver: Resolver,
    /// Bounded: cleared when full (connections are re-enriched on their next exchange).
    conns: HashMap<ConnId, (Arc<ConnMeta>, Arc<Workload>)>,
}

/// Connections whose enriched metadata is kept.
const MAX_IDENTIFIED_CONNS: usize = 16_384;

/// The Kubernetes index seen as the inventory's address names.
struct KubeNames(Arc<KubeIndex>);

impl sonde_inventory::AddressNames for KubeNames {
    fn service_at(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.0.service_at(addr)
    }
    fn workload_at(&self, ip: IpAddr) -> Option<String> {
        self.0.workload_at(ip)
    }
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
        // As `run --check-config` does: a declared spec that does not load is an error, not a
        // silent fallback to "every endpoint is shadow".
        let errors = inventory.load_specs(specs);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::bail!("declared specs not loaded: {}", list.join("; "));
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
            tls_streams: TlsStreams::default(),
            // With a process filter the server side may not be captured: keep both views.
            dedupe: cfg.capture.pids.is_empty(),
            exchanges: Vec::with_capacity(256),
            stats: PipelineStats::default(),
            anomaly_counts: BTreeMap::new(),
            identity: None,
        })
    }

    /// Attributes the exchanges of live processes to their workloads, and (when configured, or
    /// when running in a pod) starts the Kubernetes watch on the current tokio runtime. Call
    /// only for a live capture of this host.
    pub fn enable_identity(&mut self, cfg: &IdentityConfig) {
        if !cfg.enabled {
            return;
        }
        let kube = if cfg.kubernetes_enabled() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let index = Arc::new(KubeIndex::new());
                    rt.spawn(sonde_identity::kube::connect_and_watch(
                        index.clone(),
                        cfg.node_name(),
                    ));
                    self.inventory
                        .set_address_names(Arc::new(KubeNames(index.clone())));
                    Some(index)
                }
                Err(_) => {
                    tracing::warn!("no async runtime: Kubernetes metadata disabled");
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            kubernetes = kube.is_some(),
            host_root = %cfg.host_root.display(),
            "workload identity on"
        );
        self.identity = Some(Identity {
            resolver: Resolver::new(cfg, kube),
            conns: HashMap::new(),
        });
    }

    /// What the identity stage cannot see now, as (kind, detail): the Kubernetes API not
    /// answering (pods are then named from cgroups and runtime files only).
    pub fn identity_blind_spots(&self) -> Vec<(String, String)> {
        let Some(k) = self.identity.as_ref().and_then(|i| i.resolver.kube()) else {
            return Vec::new();
        };
        match k.state() {
            sonde_identity::KubeState::Connecting | sonde_identity::KubeState::Degraded => vec![(
                "identity.kubernetes_unreachable".into(),
                format!(
                    "Kubernetes API {:?} ({} errors): workloads, labels and Services fill in when it answers",
                    k.state(),
                    k.stats().errors
                ),
            )],
            _ => Vec::new(),
        }
    }

    /// Counters of the identity stage (resolver and Kubernetes watch), when enabled.
    pub fn identity_stats(&self) -> Option<serde_json::Value> {
        let id = self.identity.as_ref()?;
        let mut v = serde_json::json!({ "resolver": id.resolver.stats() });
        if let Some(k) = id.resolver.kube() {
            v["kubernetes"] = serde_json::to_value(k.stats()).unwrap_or_default();
            v["kubernetes"]["synced"] =
                serde_json::json!(u64::from(k.state() == sonde_identity::KubeState::Synced));
        }
        Some(v)
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
            // Two views of TLS: the streams tell plaintext from ciphertext by source (a
            // connection with library plaintext never has its syscall bytes parsed); the stage
            // reads handshakes for posture and judges blind spots. Either can keep bytes out.
            let route = self.tls_streams.route(&ev);
            let http = self.tls.route(&ev, &mut self.tls_findings);
            match route {
                Route::TlsCiphertext => {
                    self.stats.tls_ciphertext_chunks += 1;
                    continue;
                }
                Route::TlsPlaintext => self.stats.tls_plaintext_chunks += 1,
                Route::Parse if !http => {
                    self.stats.tls_ciphertext_chunks += 1;
                    continue;
                }
                Route::Parse => {}
            }
            self.tracker.on_event(ev, &mut self.exchanges);
        }
        self.drain(sink);
        self.tls.end_batch();
        self.tls_streams.forget_closed();
    }

    /// Timeouts (requests whose response never came, idle connections).
    pub fn tick(&mut self, now_unix_ns: u64, sink: &mut dyn Sink) {
        self.tracker.tick(now_unix_ns, &mut self.exchanges);
        self.drain(sink);
        self.tls.tick(now_unix_ns);
        self.tls_streams.expire(now_unix_ns);
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
        for mut ex in exchanges.drain(..) {
            if self.tls_streams.has_plaintext(ex.conn.id) {
                ex.flags.insert(ExchangeFlags::TLS);
            }
            if let Some(id) = &mut self.identity {
                id.identify(&mut ex);
            }
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
                (false, _) if ex.flags.contains(ExchangeFlags::TLS) => {
                    self.inventory.note_tls(call.endpoint_id, None)
                }
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
    /// with the service's display name), so an endpoint and its anomalies can be joined there;
    /// explanations that name the service by its inventory key name it the same way.
    fn name_endpoints_as_on_the_wire(&self, events: &mut [Anomaly]) {
        for a in events {
            let Some(name) = &a.endpoint else { continue };
            if let Some(rec) = self
                .inventory
                .endpoints()
                .find(|r| &*r.key == name.as_str())
            {
                let key = crate::export::endpoint_key(rec);
                let service = rec.service.to_string();
                if a.explanation.contains(&service)
                    && let Some(display) = key.service.as_ref().map(|s| s.display_name())
                {
                    a.explanation = a.explanation.replace(&service, &display);
                }
                a.endpoint = Some(key.display_name());
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

/// Which of a connection's byte streams the HTTP parsers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Cleartext, or a connection event: parsed.
    Parse,
    /// Plaintext from inside a TLS library: parsed like cleartext, exchanges marked TLS.
    TlsPlaintext,
    /// TLS records from the socket syscalls (the handshake the kernel ships for posture
    /// analysis, or any ciphertext): never parsed as HTTP.
    TlsCiphertext,
}

/// Connections idle longer than this are forgotten when no close was seen (the assembler has
/// expired them long before).
const TLS_STREAM_IDLE_NS: u64 = 15 * 60 * 1_000_000_000;
/// Connections remembered at most; past it the least recently seen half is forgotten.
const MAX_TLS_STREAMS: usize = 1 << 18;

/// Tells the TLS plaintext of a connection from its ciphertext. One connection (tgid, fd,
/// generation) can carry both: records of source TLS (plaintext, numbered from 0 in their own
/// byte stream) and syscall records that start with a TLS record (the handshake). The
/// ciphertext must never reach the HTTP parsers, and the plaintext is what they parse.
#[derive(Debug, Default)]
pub struct TlsStreams {
    /// Connections with plaintext from a TLS library → last seen (Unix ns).
    plaintext: HashMap<ConnId, u64>,
    /// Connections whose syscall bytes start with a TLS record → last seen (Unix ns).
    ciphertext: HashMap<ConnId, u64>,
    /// Closed in the current batch: forgotten once its exchanges are out.
    closed: Vec<ConnId>,
}

impl TlsStreams {
    /// Decides where an event goes; the one place that keeps TLS ciphertext from the parsers.
    pub fn route(&mut self, ev: &CaptureEvent) -> Route {
        let d = match ev {
            CaptureEvent::Data(d) => d,
            CaptureEvent::Close(c) => {
                if self.plaintext.contains_key(&c.conn) || self.ciphertext.contains_key(&c.conn) {
                    self.closed.push(c.conn);
                }
                return Route::Parse;
            }
            CaptureEvent::Open(_) => return Route::Parse,
        };
        match d.source {
            Source::Tls => {
                self.remember_plaintext(d.conn, d.ts_ns);
                Route::TlsPlaintext
            }
            Source::Pcap => Route::Parse,
            Source::Syscall => {
                if let Some(seen) = self.ciphertext.get_mut(&d.conn) {
                    *seen = d.ts_ns;
                    return Route::TlsCiphertext;
                }
                if self.plaintext.contains_key(&d.conn)
                    || (d.offset == 0 && starts_with_tls_record(&d.data))
                {
                    self.remember(d.conn, d.ts_ns);
                    return Route::TlsCiphertext;
                }
                Route::Parse
            }
        }
    }

    /// Whether the connection's exchanges were read from TLS plaintext.
    pub fn has_plaintext(&self, conn: ConnId) -> bool {
        self.plaintext.contains_key(&conn)
    }

    fn remember_plaintext(&mut self, conn: ConnId, ts: u64) {
        if let Some(seen) = self.plaintext.get_mut(&conn) {
            *seen = ts;
            return;
        }
        if self.plaintext.len() >= MAX_TLS_STREAMS {
            shed_oldest_half(&mut self.plaintext);
        }
        self.plaintext.insert(conn, ts);
    }

    fn remember(&mut self, conn: ConnId, ts: u64) {
        if self.ciphertext.len() >= MAX_TLS_STREAMS {
            shed_oldest_half(&mut self.ciphertext);
        }
        self.ciphertext.insert(conn, ts);
    }

    /// Connections closed in the batch just analysed.
    fn forget_closed(&mut self) {
        for c in self.closed.drain(..) {
            self.plaintext.remove(&c);
            self.ciphertext.remove(&c);
        }
    }

    /// Connections that went quiet without a close seen.
    fn expire(&mut self, now_unix_ns: u64) {
        let cutoff = now_unix_ns.saturating_sub(TLS_STREAM_IDLE_NS);
        self.plaintext.retain(|_, seen| *seen >= cutoff);
        self.ciphertext.retain(|_, seen| *seen >= cutoff);
    }
}

fn shed_oldest_half(map: &mut HashMap<ConnId, u64>) {
    let mut seen: Vec<u64> = map.values().copied().collect();
    let mid = seen.len() / 2;
    let (_, median, _) = seen.select_nth_unstable(mid);
    let median = *median;
    map.retain(|_, s| *s > median);
}

/// A TLS record header: content type change_cipher_spec (20), alert (21), handshake (22) or
/// application_data (23), then version 3.x. No HTTP/1 or HTTP/2 stream starts with these bytes.
pub fn starts_with_tls_record(data: &[u8]) -> bool {
    matches!(data, [20..=23, 3, minor, ..] if *minor <= 4)
}

impl Identity {
    /// Sets the exchange's process workload: one cache lookup per exchange, one metadata copy
    /// per connection (and again when the workload changes, e.g. pod labels arriving late).
    fn identify(&mut self, ex: &mut Exchange) {
        let p = &ex.conn.process;
        let Some(w) = self.resolver.resolve(p.pid, p.cgroup_id) else {
            return;
        };
        if let Some((meta, known)) = self.conns.get(&ex.conn.id)
            && Arc::ptr_eq(known, &w)
            && meta.role == ex.conn.role
        {
            ex.conn = meta.clone();
            return;
        }
        let mut meta = (*ex.conn).clone();
        meta.process.workload = Some(w.clone());
        let meta = Arc::new(meta);
        if self.conns.len() >= MAX_IDENTIFIED_CONNS {
            self.conns.clear();
        }
        self.conns.insert(ex.conn.id, (meta.clone(), w));
        ex.conn = meta;
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

/// One call served on `conn` by a process named `api` on 127.0.0.1:8080, as the kernel reports
/// it: the open, the request, the response (the close is the caller's).
#[cfg(test)]
fn served_call_events(
    conn: ConnId,
    cgroup_id: u64,
    request: &'static [u8],
    response: &'static [u8],
) -> Vec<CaptureEvent> {
    use sonde_model::{ConnOpen, DataChunk, Direction, ProcessInfo};
    let chunk = |direction, data: &'static [u8], ts_ns| {
        CaptureEvent::Data(DataChunk {
            conn,
            direction,
            source: Source::Syscall,
            offset: 0,
            len: data.len() as u64,
            data: bytes::Bytes::from_static(data),
            ts_ns,
            tid: conn.tgid,
        })
    };
    vec![
        CaptureEvent::Open(ConnOpen {
            conn,
            ts_ns: 1,
            role: Role::Server,
            process: ProcessInfo {
                pid: conn.tgid,
                comm: "api".into(),
                cgroup_id,
                workload: None,
            },
            local: Some("127.0.0.1:8080".parse().expect("addr")),
            remote: Some("127.0.0.1:50000".parse().expect("addr")),
        }),
        chunk(Direction::Ingress, request, 2),
        chunk(Direction::Egress, response, 3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sonde_model::{ConnClose, DataChunk, Direction};

    #[test]
    fn a_declared_spec_that_does_not_load_stops_the_pipeline_without_quoting_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_spec = dir.path().join("passwd");
        std::fs::write(&not_a_spec, "root:x:0:0:root:/root:/bin/bash\n".repeat(200))
            .expect("write");
        let mut cfg = AgentConfig {
            specs: vec![SpecSource {
                path: not_a_spec,
                authority: None,
                port: None,
                process: None,
            }],
            ..AgentConfig::default()
        };
        let err = Analyzer::new(&cfg).err().expect("refused").to_string();
        assert!(err.contains("declared specs not loaded"), "{err}");
        assert!(err.len() < 400, "{} bytes: {err}", err.len());
        cfg.specs[0].path = dir.path().join("missing.yaml");
        assert!(Analyzer::new(&cfg).is_err());
    }

    fn chunk(conn: ConnId, source: Source, offset: u64, data: &'static [u8]) -> CaptureEvent {
        CaptureEvent::Data(DataChunk {
            conn,
            direction: Direction::Ingress,
            source,
            offset,
            len: data.len() as u64,
            data: Bytes::from_static(data),
            ts_ns: 1,
            tid: 1,
        })
    }

    struct Anomalies(Vec<Anomaly>);

    impl Sink for Anomalies {
        fn exchange(&mut self, _: &Exchange, _: &CallInfo) {}
        fn anomalies(&mut self, anomalies: Vec<Anomaly>) {
            self.0.extend(anomalies);
        }
    }

    /// An undeclared endpoint's finding names its service as the collector lists it, in its
    /// endpoint and in its explanation, never by the inventory's internal key.
    #[test]
    fn anomalies_name_the_service_as_the_collector_lists_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().join("api.yaml");
        std::fs::write(
            &spec,
            "openapi: 3.0.0\ninfo: {title: api, version: '1'}\npaths:\n  /health:\n    get:\n      \
             responses:\n        '200': {description: ok}\n",
        )
        .expect("write spec");
        let cfg = AgentConfig {
            specs: vec![SpecSource {
                path: spec,
                authority: None,
                port: None,
                process: None,
            }],
            ..AgentConfig::default()
        };
        let mut analyzer = Analyzer::new(&cfg).expect("analyzer");
        let conn = ConnId {
            tgid: 40,
            fd: 5,
            generation: 1,
        };
        let mut events = served_call_events(
            conn,
            0,
            b"GET /users/7 HTTP/1.1\r\nHost: api.test\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        events.push(CaptureEvent::Close(ConnClose { conn, ts_ns: 4 }));
        let mut sink = Anomalies(Vec::new());
        analyzer.on_events(events, &mut sink);
        analyzer.flush(&mut sink);
        let rec = analyzer
            .inventory()
            .endpoints()
            .find(|r| r.template.starts_with("/users/"))
            .expect("endpoint");
        let wire = crate::export::endpoint_key(rec);
        let service = wire.service.as_ref().expect("service").display_name();
        let shadow = sink
            .0
            .iter()
            .find(|a| a.kind == "inventory.shadow_endpoint")
            .expect("shadow finding");
        assert_eq!(shadow.endpoint, Some(wire.display_name()));
        assert!(
            shadow
                .explanation
                .contains(&format!("served by {service} ")),
            "{}",
            shadow.explanation
        );
        assert!(
            !shadow.explanation.contains(&rec.service.to_string()),
            "{}",
            shadow.explanation
        );
    }

    const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    #[test]
    fn tls_records_are_told_from_http_by_their_header() {
        assert!(starts_with_tls_record(CLIENT_HELLO));
        assert!(starts_with_tls_record(b"\x17\x03\x03\x00\x20"));
        assert!(starts_with_tls_record(b"\x15\x03\x03"));
        assert!(!starts_with_tls_record(b"GET / HTTP/1.1\r\n"));
        assert!(!starts_with_tls_record(b"PRI * HTTP/2.0"));
        assert!(!starts_with_tls_record(b"\x16\x03"), "too short to tell");
        assert!(
            !starts_with_tls_record(b"\x16\x02\x00"),
            "SSL 2 is not spoken"
        );
        assert!(
            !starts_with_tls_record(b"\x00\x00\x12\x04\x00"),
            "an HTTP/2 frame"
        );
    }

    #[test]
    fn ciphertext_never_reaches_the_parsers_and_plaintext_does() {
        let tls = ConnId {
            tgid: 1,
            fd: 3,
            generation: 7,
        };
        let clear = ConnId {
            tgid: 1,
            fd: 4,
            generation: 8,
        };
        let mut t = TlsStreams::default();
        // The handshake comes first, from the syscall hooks.
        assert_eq!(
            t.route(&chunk(tls, Source::Syscall, 0, CLIENT_HELLO)),
            Route::TlsCiphertext
        );
        // Later syscall bytes of that connection, whatever they look like, stay out.
        assert_eq!(
            t.route(&chunk(tls, Source::Syscall, 517, b"GET / HTTP/1.1\r\n")),
            Route::TlsCiphertext
        );
        assert_eq!(
            t.route(&chunk(tls, Source::Tls, 0, b"GET / HTTP/1.1\r\n")),
            Route::TlsPlaintext
        );
        assert!(t.has_plaintext(tls));
        // A cleartext connection whose body happens to hold TLS-looking bytes is parsed.
        assert_eq!(
            t.route(&chunk(clear, Source::Syscall, 0, b"POST /x HTTP/1.1\r\n")),
            Route::Parse
        );
        assert_eq!(
            t.route(&chunk(clear, Source::Syscall, 18, CLIENT_HELLO)),
            Route::Parse
        );
        assert!(!t.has_plaintext(clear));
        // Closed connections are forgotten once their batch is analysed (fd reuse gets a new
        // generation anyway).
        let close = CaptureEvent::Close(ConnClose {
            conn: tls,
            ts_ns: 2,
        });
        assert_eq!(t.route(&close), Route::Parse);
        assert!(
            t.has_plaintext(tls),
            "kept until the batch's exchanges are out"
        );
        t.forget_closed();
        assert!(!t.has_plaintext(tls));
        assert!(t.ciphertext.is_empty());
    }

    #[test]
    fn plaintext_marks_do_not_grow_without_bound() {
        let mut t = TlsStreams::default();
        for i in 0..(MAX_TLS_STREAMS as u32 + 10) {
            let conn = ConnId {
                tgid: i,
                fd: 3,
                generation: 1,
            };
            if let CaptureEvent::Data(mut d) = chunk(conn, Source::Tls, 0, b"GET ") {
                d.ts_ns = u64::from(i);
                t.route(&CaptureEvent::Data(d));
            }
        }
        assert!(
            t.plaintext.len() <= MAX_TLS_STREAMS,
            "{}",
            t.plaintext.len()
        );
        // The most recent connection survived the shedding.
        assert!(t.has_plaintext(ConnId {
            tgid: MAX_TLS_STREAMS as u32 + 9,
            fd: 3,
            generation: 1
        }));
        t.expire(u64::MAX);
        assert!(t.plaintext.is_empty(), "idle connections expire");
    }
}

#[cfg(test)]
mod identity_tests {
    use std::os::unix::fs::MetadataExt;

    use sonde_inventory::CallInfo;

    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(Exchange, String)>);

    impl Sink for Collect {
        fn exchange(&mut self, ex: &Exchange, call: &CallInfo) {
            self.0.push((ex.clone(), call.service.to_string()));
        }
        fn anomalies(&mut self, _: Vec<Anomaly>) {}
    }

    /// One served call, as the kernel would report it for this very process (its pid and its
    /// real cgroup id), so the resolver reads the real /proc and cgroupfs.
    fn served_call(fd: i32) -> Vec<CaptureEvent> {
        let root =
            sonde_identity::resolver::cgroup2_mount(std::path::Path::new("/proc/self/mountinfo"))
                .expect("cgroup2");
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        let path = sonde_identity::cgroup::proc_cgroup_path(&text).expect("path");
        let cgroup_id = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .expect("dir")
            .ino();
        let conn = ConnId {
            tgid: std::process::id(),
            fd,
            generation: 1,
        };
        super::served_call_events(
            conn,
            cgroup_id,
            b"GET /users/7 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
    }

    /// Kubernetes asked for, and no API server anywhere (no in-cluster environment, no
    /// kubeconfig): the pipeline goes on attributing by cgroup and executable, and says what it
    /// cannot see.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_an_api_server_exchanges_are_still_identified_and_the_blind_spot_is_reported() {
        let mut cfg = AgentConfig::default();
        cfg.identity.kubernetes = sonde_identity::KubernetesMode::On;
        let mut analyzer = Analyzer::new(&cfg).expect("analyzer");
        analyzer.enable_identity(&cfg.identity);
        let mut sink = Collect::default();
        analyzer.on_events(served_call(5), &mut sink);
        analyzer.flush(&mut sink);
        assert_eq!(sink.0.len(), 1);
        let (ex, service) = &sink.0[0];
        let w = ex.conn.process.workload.as_ref().expect("identified");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(w.executable.as_deref(), exe.to_str());
        let exe_name = exe.file_name().and_then(|n| n.to_str()).expect("name");
        // Keyed by the executable and port: the address in the Host header is dropped.
        assert_eq!(service, &format!("-@127.0.0.1:8080{{{exe_name}}}"));

        let deadline = Instant::now() + Duration::from_secs(10);
        while analyzer
            .identity_stats()
            .and_then(|v| v["kubernetes"]["errors"].as_u64())
            .unwrap_or(0)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "the failed connection is counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spots = analyzer.identity_blind_spots();
        assert_eq!(spots.len(), 1);
        assert_eq!(spots[0].0, "identity.kubernetes_unreachable");
    }

    /// Recordings and pcaps never get identities: their pids are another host's (or another
    /// time's).
    #[test]
    fn without_enable_identity_nothing_is_resolved() {
        let cfg = AgentConfig::default();
        let mut analyzer = Analyzer::new(&cfg).expect("analyzer");
        let mut sink = Collect::default();
        analyzer.on_events(served_call(6), &mut sink);
        analyzer.flush(&mut sink);
        assert_eq!(sink.0.len(), 1);
        assert!(sink.0[0].0.conn.process.workload.is_none());
        assert!(analyzer.identity_stats().is_none());
    }
}
