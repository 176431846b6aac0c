//! The inventory proper: services, endpoints, per-call analysis and inventory events.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sonde_model::{
    Anomaly, Body, ConnId, Evidence, Exchange, Header, OwaspCategory, Role, Severity,
};

use crate::auth::{self, AuthInfo, AuthScheme};
use crate::config::InventoryConfig;
use crate::endpoint::{
    Classification, EndpointRecord, EndpointTls, Location, RetiredEndpoint, ServiceKey,
};
use crate::error::SpecError;
use crate::hash::SaltedHasher;
use crate::schema::{self, BodyFacts, FieldSchema, JsonTypes, WalkOutcome};
use crate::sensitive::{self, SensitiveKind};
use crate::spec::{self, DeclaredSpec, ObservedSeg, SpecScope, SpecSet};
use crate::template::{
    self, EndpointId, NodeId, ParamKind, ParamLabel, PathTrie, SegLabel, TrieChange,
};

/// A sensitive kind found in this call, with where it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensitiveHit {
    pub location: Location,
    /// `$.user.email`, `query.token`, `header.x-api-key`, `form.password`, `body`.
    pub path: String,
    pub kind: SensitiveKind,
}

/// The per-call analysis: what the detectors reuse instead of re-parsing the exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    pub endpoint_id: u32,
    /// `service METHOD /template`.
    pub endpoint: Arc<str>,
    pub service: Arc<ServiceKey>,
    pub method: Arc<str>,
    pub template: Arc<str>,
    /// This call created the endpoint.
    pub new_endpoint: bool,
    /// The call went to an overflow bucket (caps reached).
    pub overflow: bool,
    pub classification: Classification,
    pub auth: AuthInfo,
    pub sensitive: Vec<SensitiveHit>,
    pub status: Option<u16>,
    pub latency_ns: Option<u64>,
}

/// Counters of everything bounded or dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryCounters {
    pub exchanges: u64,
    /// Calls sent to the overflow service (service cap reached).
    pub service_overflow_calls: u64,
    /// Calls sent to a service's overflow endpoint (endpoint or node cap reached).
    pub endpoint_overflow_calls: u64,
    /// Authorities merged into `{other}` (per-server cap).
    pub authorities_merged: u64,
    /// Methods counted as `OTHER` (invalid, or past the custom-method cap).
    pub methods_merged: u64,
    /// Endpoints folded into another by a learnt parameter.
    pub endpoints_merged: u64,
    /// Events dropped because the pending queue was full.
    pub events_dropped: u64,
    /// Retired-endpoint notices dropped because nobody drained them (`take_retired`).
    pub retired_dropped: u64,
    /// Broken internal invariants (should stay 0; each is also a debug assertion).
    pub internal_errors: u64,
    /// Body bytes analysed (schema and scan).
    pub body_bytes_scanned: u64,
    /// Body samples cut to `max_body_scan_bytes`.
    pub body_samples_cut: u64,
    /// JSON body samples that were not valid JSON.
    pub invalid_json_bodies: u64,
}

/// A declared operation no observed endpoint has matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnusedOperation {
    pub spec: String,
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub deprecated: bool,
}

const STANDARD_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
];
const OTHER_METHOD: u16 = 15;
const NO_NODE: NodeId = u32::MAX;

const RAISED_SHADOW: u8 = 1;
const RAISED_ZOMBIE: u8 = 2;
const RAISED_PII: u8 = 4;
const RAISED_SECRET_QUERY: u8 = 8;
const RAISED_OVERFLOW: u8 = 16;

struct Service {
    key: Arc<ServiceKey>,
    /// The key's address, unformatted: compared on every call (port only, unspecified IP, for a
    /// workload's service).
    addr: Option<SocketAddr>,
    /// The key's workload name, if any.
    workload_name: Option<String>,
    /// Whether the Host header is part of the key (not for Kubernetes workloads and Services).
    keeps_authority: bool,
    trie: PathTrie,
    custom_methods: Vec<Arc<str>>,
    endpoint_count: usize,
    overflow: Option<EndpointId>,
}

struct Slot {
    rec: EndpointRecord,
    service: u32,
    node: NodeId,
    method_idx: u16,
    dirty: bool,
    raised: u8,
}

/// The API inventory of one agent. Not thread-safe by itself: one per shard, or behind a lock.
pub struct Inventory {
    cfg: InventoryConfig,
    hasher: SaltedHasher,
    hash_state: ahash::RandomState,
    services: Vec<Service>,
    service_index: ahash::AHashMap<u64, Vec<u32>>,
    authorities_per_server: ahash::AHashMap<u64, usize>,
    overflow_service: Option<u32>,
    standard_methods: Vec<Arc<str>>,
    other_method: Arc<str>,
    slots: Vec<Option<Slot>>,
    dirty: Vec<u32>,
    retired: Vec<RetiredEndpoint>,
    events: Vec<Anomaly>,
    specs: SpecSet,
    counters: InventoryCounters,
    changes: Vec<TrieChange>,
    seg_ranges: Vec<(usize, usize)>,
    decode_buf: Vec<u8>,
    facts: BodyFacts,
    text_buf: String,
    caller_cache: (Option<(ConnId, Role, Option<SocketAddr>)>, String),
    service_cache: Option<(ConnId, u32)>,
    /// Kubernetes names of addresses (Services, pods), when the identity stage has them.
    address_names: Option<Arc<dyn AddressNames>>,
    jwt_cache: auth::JwtCache,
    /// Endpoints (not overflow buckets) and trie nodes over all services, for the global caps.
    live_endpoints: usize,
    total_nodes: usize,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("services", &self.services.len())
            .field("endpoints", &self.endpoints().count())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory::new(InventoryConfig::default())
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Names of addresses from cluster metadata (implemented by the identity stage over its
/// Kubernetes index). Asked once per connection, not per call.
pub trait AddressNames: Send + Sync {
    /// `namespace/name` of the Kubernetes Service at this ClusterIP:port or endpoint address.
    fn service_at(&self, addr: SocketAddr) -> Option<Arc<str>>;
    /// The workload name of the pod with this IP.
    fn workload_at(&self, ip: IpAddr) -> Option<String>;
}

/// `10.0.0.1`, `10.0.0.1:8080`, `[::1]:8080`, `::1`.
fn is_address(authority: &str) -> bool {
    authority.parse::<IpAddr>().is_ok() || authority.parse::<SocketAddr>().is_ok()
}

/// The serving workload, when the observed process is the server and has a name.
fn server_workload(conn: &sonde_model::ConnMeta) -> Option<&Arc<sonde_model::Workload>> {
    match conn.role {
        Role::Server => conn
            .process
            .workload
            .as_ref()
            .filter(|w| !w.name.is_empty()),
        _ => None,
    }
}

/// The address a service is keyed by: the port alone (unspecified IP) for a named workload.
fn service_addr(conn: &sonde_model::ConnMeta) -> Option<SocketAddr> {
    let addr = conn.server_addr();
    match server_workload(conn) {
        Some(_) => {
            addr.map(|a| SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), a.port()))
        }
        None => addr,
    }
}

/// Lower-cased authority, or a marker when it is not a plausible host[:port].
fn normalise_authority(a: &str) -> Cow<'_, str> {
    let a = a.trim();
    if a.is_empty()
        || a.len() > 255
        || !a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
    {
        return Cow::Borrowed("{invalid}");
    }
    if a.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(a.to_ascii_lowercase())
    } else {
        Cow::Borrowed(a)
    }
}

fn media_type(v: &str) -> Cow<'_, str> {
    let m = cut(v.split(';').next().unwrap_or("").trim(), 64);
    if m.is_empty()
        || !m
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/.+-_*".contains(&c))
    {
        return Cow::Borrowed("{invalid}");
    }
    if m.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(m.to_ascii_lowercase())
    } else {
        Cow::Borrowed(m)
    }
}

enum BodyKind {
    Json,
    Form,
    Text,
    Skip,
}

fn body_kind(content_type: Option<&str>, sample: &[u8]) -> BodyKind {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.contains("json") {
        return BodyKind::Json;
    }
    if ct.starts_with("application/x-www-form-urlencoded") {
        return BodyKind::Form;
    }
    if ct.starts_with("application/grpc")
        || ct.starts_with("image/")
        || ct.starts_with("video/")
        || ct.starts_with("audio/")
        || ct.contains("octet-stream")
        || ct.contains("protobuf")
    {
        return BodyKind::Skip;
    }
    let first = sample.iter().find(|c| !c.is_ascii_whitespace());
    if ct.is_empty() && matches!(first, Some(b'{' | b'[')) {
        return BodyKind::Json;
    }
    BodyKind::Text
}

fn split_template(t: &str) -> Vec<ObservedSeg<'_>> {
    t.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with('{') {
                ObservedSeg::Param
            } else {
                ObservedSeg::Literal(s)
            }
        })
        .collect()
}

impl Inventory {
    pub fn new(cfg: InventoryConfig) -> Inventory {
        let hasher = SaltedHasher::new(&cfg.salt);
        Inventory {
            cfg,
            hasher,
            hash_state: ahash::RandomState::new(),
            services: Vec::new(),
            service_index: Default::default(),
            authorities_per_server: Default::default(),
            overflow_service: None,
            standard_methods: STANDARD_METHODS.iter().map(|m| Arc::from(*m)).collect(),
            other_method: Arc::from("OTHER"),
            slots: Vec::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            events: Vec::new(),
            specs: SpecSet::default(),
            counters: InventoryCounters::default(),
            changes: Vec::new(),
            seg_ranges: Vec::new(),
            decode_buf: Vec::new(),
            facts: BodyFacts::default(),
            text_buf: String::new(),
            caller_cache: (None, String::new()),
            service_cache: None,
            address_names: None,
            jwt_cache: auth::JwtCache::default(),
            live_endpoints: 0,
            total_nodes: 0,
        }
    }

    /// Names server addresses that are Kubernetes Services, and callers that are pods.
    pub fn set_address_names(&mut self, names: Arc<dyn AddressNames>) {
        self.address_names = Some(names);
        self.service_cache = None;
        self.caller_cache.0 = None;
    }

    pub fn config(&self) -> &InventoryConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &InventoryCounters {
        &self.counters
    }

    /// The salted hasher, for detectors that need to hash values the same way.
    pub fn hasher(&self) -> &SaltedHasher {
        &self.hasher
    }

    /// Loads a declared spec file for the services in `scope` and re-classifies every endpoint.
    pub fn load_spec(
        &mut self,
        file: impl Into<PathBuf>,
        scope: SpecScope,
    ) -> Result<&DeclaredSpec, SpecError> {
        let spec = spec::load_spec_file(&file.into(), scope)?;
        Ok(self.add_spec(spec))
    }

    /// Loads several spec files; a broken one does not stop the others. Returns the errors.
    pub fn load_specs(
        &mut self,
        files: impl IntoIterator<Item = (PathBuf, SpecScope)>,
    ) -> Vec<SpecError> {
        let mut errors = Vec::new();
        for (file, scope) in files {
            match spec::load_spec_file(&file, scope) {
                Ok(s) => {
                    self.add_spec(s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "declared spec not loaded");
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Adds a parsed spec and re-classifies every endpoint.
    pub fn add_spec(&mut self, spec: DeclaredSpec) -> &DeclaredSpec {
        tracing::info!(file = %spec.file, operations = spec.operations.len(), "declared spec loaded");
        self.specs.add(spec);
        let ids: Vec<u32> = (0..self.slots.len() as u32).collect();
        for &id in &ids {
            self.adopt_declared_template(id);
        }
        for id in ids {
            self.classify(id, None);
        }
        // `add` pushed it: the last spec is the one just added.
        self.specs
            .specs()
            .last()
            .unwrap_or_else(|| unreachable!("spec was just added"))
    }

    pub fn specs(&self) -> impl Iterator<Item = &DeclaredSpec> {
        self.specs.specs()
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.slots.iter().flatten().map(|s| &s.rec)
    }

    pub fn endpoint(&self, id: u32) -> Option<&EndpointRecord> {
        self.slots.get(id as usize)?.as_ref().map(|s| &s.rec)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceKey>> {
        self.services.iter().map(|s| &s.key)
    }

    /// Endpoints changed since the last call (the exporter sends these deltas).
    pub fn take_dirty(&mut self) -> Vec<EndpointRecord> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for id in std::mem::take(&mut self.dirty) {
            if let Some(Some(slot)) = self.slots.get_mut(id as usize)
                && slot.dirty
            {
                slot.dirty = false;
                out.push(slot.rec.clone());
            }
        }
        out
    }

    /// Endpoint keys that disappeared (folded or renamed) since the last call.
    pub fn take_retired(&mut self) -> Vec<RetiredEndpoint> {
        std::mem::take(&mut self.retired)
    }

    /// Inventory events raised since the last call.
    pub fn drain_events(&mut self) -> Vec<Anomaly> {
        std::mem::take(&mut self.events)
    }

    /// Declared operations that no endpoint matched.
    pub fn unused_operations(&self) -> Vec<UnusedOperation> {
        let used: BTreeSet<(&str, &str, &str)> = self
            .endpoints()
            .filter_map(|r| r.declared.as_ref())
            .map(|d| (d.spec.as_str(), d.method.as_str(), d.path.as_str()))
            .collect();
        let mut out: Vec<UnusedOperation> = self
            .specs
            .operations()
            .filter(|(s, o)| !used.contains(&(s.file.as_str(), o.method.as_str(), o.path.as_str())))
            .map(|(s, o)| UnusedOperation {
                spec: s.file.clone(),
                method: o.method.clone(),
                path: o.path.clone(),
                operation_id: o.operation_id.clone(),
                deprecated: o.deprecated,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Approximate heap bytes held (records, tries, indexes).
    pub fn approx_heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
            + self
                .endpoints()
                .map(EndpointRecord::heap_bytes)
                .sum::<usize>()
            + self
                .services
                .iter()
                .map(|s| s.trie.heap_bytes() + std::mem::size_of::<Service>())
                .sum::<usize>()
    }

    /// Records that a call of endpoint `id` (as [`CallInfo::endpoint_id`] named it) travelled
    /// inside TLS, with the connection's parameters when its handshake was seen.
    pub fn note_tls(&mut self, id: u32, tls: Option<&EndpointTls>) {
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.rec.tls_calls = slot.rec.tls_calls.saturating_add(1);
        if let Some(t) = tls
            && slot.rec.tls.as_ref() != Some(t)
        {
            slot.rec.tls = Some(t.clone());
        }
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Analyses one exchange and updates its endpoint. `now_ns`: Unix time of the call, in ns.
    pub fn observe(&mut self, ex: &Exchange, now_ns: u64) -> CallInfo {
        self.counters.exchanges += 1;
        let sid = self.service_for(ex);
        let (midx, method) = self.method_for(sid, &ex.request.method);
        let grpc_path = ex
            .grpc
            .as_ref()
            .filter(|g| !g.service.is_empty())
            .map(|g| format!("/{}/{}", g.service, g.method));
        let path = grpc_path.as_deref().unwrap_or(&ex.request.path);
        let (eid, new_endpoint) =
            self.endpoint_for(sid, midx, &method, path, grpc_path.is_some(), now_ns);
        let auth = auth::analyse(&ex.request, &self.hasher, now_ns, &mut self.jwt_cache);
        let mut hits = Vec::new();
        self.update_stats(eid, ex, &auth, now_ns);
        self.scan_headers(eid, &ex.request.headers, Location::RequestHeader, &mut hits);
        if let Some(q) = ex.request.query.as_deref().filter(|q| !q.is_empty()) {
            self.scan_query(eid, q, &mut hits);
        }
        let req_ct = ex.request_header("content-type");
        self.analyse_body(
            eid,
            &ex.request.body,
            req_ct,
            Location::RequestBody,
            &mut hits,
        );
        if let Some(resp) = &ex.response {
            self.scan_headers(eid, &resp.headers, Location::ResponseHeader, &mut hits);
            let ct = sonde_model::exchange::find_header(&resp.headers, "content-type");
            self.analyse_body(eid, &resp.body, ct, Location::ResponseBody, &mut hits);
        }
        // A shadow or zombie endpoint is reported once it is served (see `classify`): until
        // then each call looks again.
        if new_endpoint || self.unreported_shadow_or_zombie(eid) {
            self.classify(eid, Some(ex));
        }
        self.call_events(eid, ex, &auth, &hits);
        let Some(slot) = self.slots.get_mut(eid as usize).and_then(Option::as_mut) else {
            // endpoint_for returns a live endpoint; should that ever break, count it and answer
            // rather than take the agent down.
            debug_assert!(false, "endpoint {eid} vanished during observe");
            self.counters.internal_errors += 1;
            return CallInfo {
                endpoint_id: eid,
                endpoint: Arc::from(""),
                service: self.services[sid as usize].key.clone(),
                method,
                template: Arc::from(""),
                new_endpoint,
                overflow: true,
                classification: Classification::Unclassified,
                auth,
                sensitive: hits,
                status: ex.status(),
                latency_ns: ex.latency_ns(),
            };
        };
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(eid);
        }
        CallInfo {
            endpoint_id: eid,
            endpoint: slot.rec.key.clone(),
            service: slot.rec.service.clone(),
            method: slot.rec.method.clone(),
            template: slot.rec.template.clone(),
            new_endpoint,
            overflow: slot.rec.overflow,
            classification: slot.rec.classification,
            auth,
            sensitive: hits,
            status: ex.status(),
            latency_ns: ex.latency_ns(),
        }
    }

    fn service_for(&mut self, ex: &Exchange) -> u32 {
        // Calls of one connection nearly always share a service: a one-entry cache skips the
        // hashing and comparisons.
        if let Some((id, sid)) = &self.service_cache
            && *id == ex.conn.id
            && let Some(svc) = self.services.get(*sid as usize)
            && svc.addr == service_addr(&ex.conn)
            && svc.workload_name.as_deref() == server_workload(&ex.conn).map(|w| w.name.as_str())
            && (!svc.keeps_authority
                || svc.key.authority.as_deref() == ex.request.authority.as_deref()
                || (svc.key.authority.is_none()
                    && svc.workload_name.is_some()
                    && ex.request.authority.as_deref().is_some_and(is_address)))
        {
            return *sid;
        }
        let sid = self.service_lookup(ex);
        self.service_cache = Some((ex.conn.id, sid));
        sid
    }

    fn service_lookup(&mut self, ex: &Exchange) -> u32 {
        let conn = &ex.conn;
        let addr = conn.server_addr();
        // The key's address: the port alone for a known workload (its pods and containers share
        // its services), else the server address.
        let key_addr = service_addr(conn);
        let workload = server_workload(conn);
        let workload_name = workload.map(|w| w.name.as_str());
        let kubernetes_service = match (&self.address_names, addr) {
            (Some(names), Some(a)) => names.service_at(a),
            _ => None,
        };
        // The process name keys a service only where no workload names it.
        let process = match conn.role {
            Role::Server if workload.is_none() && !conn.process.comm.is_empty() => {
                Some(cut(&conn.process.comm, 64))
            }
            _ => None,
        };
        // Kubernetes workloads and Services are reached under many names: the Host header
        // would split one API into several services (and is the caller's to choose).
        let keeps_authority = !(workload.is_some_and(|w| w.is_kubernetes())
            || (workload.is_none() && kubernetes_service.is_some()));
        // An address in the Host header names no virtual host: a known workload's service is
        // keyed without it.
        let names_authority = keeps_authority;
        let keeps_authority = keeps_authority
            && !(workload.is_some() && ex.request.authority.as_deref().is_some_and(is_address));
        let authority = ex
            .request
            .authority
            .as_deref()
            .filter(|_| keeps_authority)
            .map(normalise_authority);
        let h = self
            .hash_state
            .hash_one((key_addr, process, workload_name, authority.as_deref()));
        if let Some(ids) = self.service_index.get(&h) {
            for &id in ids {
                let svc = &self.services[id as usize];
                let k = &svc.key;
                if svc.addr == key_addr
                    && k.process.as_deref() == process
                    && svc.workload_name.as_deref() == workload_name
                    && k.authority.as_deref() == authority.as_deref()
                {
                    return id;
                }
            }
        }
        // New (address, process, authority): apply the per-server authority cap, then the service cap.
        let server_h = self.hash_state.hash_one((key_addr, process, workload_name));
        let count = self.authorities_per_server.entry(server_h).or_insert(0);
        let authority = if authority.is_some() && *count >= self.cfg.max_authorities_per_server {
            self.counters.authorities_merged += 1;
            Some(Cow::Borrowed("{other}"))
        } else {
            authority
        };
        let key = ServiceKey {
            address: addr.map(|a| a.to_string()),
            process: process.map(str::to_owned),
            authority: authority.map(Cow::into_owned),
            workload: workload.cloned(),
            kubernetes_service,
        };
        let h2 =
            self.hash_state
                .hash_one((key_addr, process, workload_name, key.authority.as_deref()));
        if h2 != h
            && let Some(ids) = self.service_index.get(&h2)
            && let Some(&id) = ids.iter().find(|id| {
                let svc = &self.services[**id as usize];
                svc.addr == key_addr
                    && svc.key.process == key.process
                    && svc.workload_name.as_deref() == workload_name
                    && svc.key.authority == key.authority
            })
        {
            return id;
        }
        if self.services.len() >= self.cfg.max_services {
            self.counters.service_overflow_calls += 1;
            return self.overflow_service_id();
        }
        if key.authority.as_deref() != Some("{other}")
            && let Some(c) = self.authorities_per_server.get_mut(&server_h)
        {
            *c += 1;
        }
        let id = self.push_service(key, key_addr, names_authority);
        self.service_index.entry(h2).or_default().push(id);
        id
    }

    fn push_service(
        &mut self,
        key: ServiceKey,
        addr: Option<SocketAddr>,
        keeps_authority: bool,
    ) -> u32 {
        let workload_name = key
            .workload
            .as_ref()
            .map(|w| w.name.clone())
            .filter(|n| !n.is_empty());
        self.services.push(Service {
            key: Arc::new(key),
            addr,
            workload_name,
            keeps_authority,
            trie: PathTrie::new(self.cfg.max_nodes_per_service, self.cfg.param_min_distinct),
            custom_methods: Vec::new(),
            endpoint_count: 0,
            overflow: None,
        });
        (self.services.len() - 1) as u32
    }

    fn overflow_service_id(&mut self) -> u32 {
        if let Some(id) = self.overflow_service {
            return id;
        }
        let id = self.push_service(
            ServiceKey {
                address: None,
                process: None,
                authority: Some("{overflow}".into()),
                workload: None,
                kubernetes_service: None,
            },
            None,
            true,
        );
        self.overflow_service = Some(id);
        id
    }

    fn method_for(&mut self, sid: u32, m: &str) -> (u16, Arc<str>) {
        if let Some(i) = STANDARD_METHODS
            .iter()
            .position(|s| s.eq_ignore_ascii_case(m))
        {
            return (i as u16, self.standard_methods[i].clone());
        }
        let valid = !m.is_empty()
            && m.len() <= 32
            && m.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        let svc = &mut self.services[sid as usize];
        if valid {
            if let Some(i) = svc
                .custom_methods
                .iter()
                .position(|c| c.eq_ignore_ascii_case(m))
            {
                return (16 + i as u16, svc.custom_methods[i].clone());
            }
            if svc.custom_methods.len() < self.cfg.max_custom_methods {
                svc.custom_methods.push(Arc::from(m.to_ascii_uppercase()));
                let i = svc.custom_methods.len() - 1;
                return (16 + i as u16, svc.custom_methods[i].clone());
            }
        }
        self.counters.methods_merged += 1;
        (OTHER_METHOD, self.other_method.clone())
    }

    /// Finds or creates the endpoint of `path`; returns it and whether it is new.
    fn endpoint_for(
        &mut self,
        sid: u32,
        midx: u16,
        method: &Arc<str>,
        path: &str,
        grpc: bool,
        now_ns: u64,
    ) -> (EndpointId, bool) {
        if Some(sid) == self.overflow_service {
            return self.overflow_endpoint(sid, midx, method, now_ns);
        }
        // Absolute-form targets (proxies): drop scheme and authority.
        let absolute = if path.starts_with('/') {
            None
        } else {
            path.find("://")
        };
        let path = match absolute {
            Some(i) => path[i + 3..].find('/').map_or("/", |p| &path[i + 3 + p..]),
            _ => path,
        };
        self.seg_ranges.clear();
        let mut pos = 0;
        for seg in path.split('/') {
            if !seg.is_empty() {
                self.seg_ranges.push((pos, pos + seg.len()));
            }
            pos += seg.len() + 1;
        }
        let max = self.cfg.max_path_segments.max(1);
        let rest = self.seg_ranges.len() > max;
        if rest {
            self.seg_ranges.truncate(max - 1);
        }
        let declared = if self.specs.is_empty() || grpc {
            None
        } else {
            let svc_key = self.services[sid as usize].key.clone();
            let observed: Vec<ObservedSeg<'_>> = self
                .seg_ranges
                .iter()
                .map(|&(s, e)| ObservedSeg::Literal(&path[s..e]))
                .collect();
            if rest {
                None
            } else {
                self.specs.best_match(&svc_key, &observed)
            }
        };
        let nodes_before = {
            let budget = self.cfg.max_nodes_total.saturating_sub(self.total_nodes);
            let trie = &mut self.services[sid as usize].trie;
            let live = trie.live_nodes();
            trie.set_max_nodes(
                live.saturating_add(budget)
                    .min(self.cfg.max_nodes_per_service),
            );
            live
        };
        let mut node = PathTrie::ROOT;
        let mut changes = std::mem::take(&mut self.changes);
        let mut exhausted = false;
        for (i, &(s, e)) in self.seg_ranges.iter().enumerate() {
            let raw = &path[s..e];
            let label = if let Some(name) = declared.and_then(|m| self.specs.param_name(m, i)) {
                SegLabel::Param(ParamLabel::Named(name.into()))
            } else if declared.is_some() || grpc {
                SegLabel::Literal(raw)
            } else {
                let decoded = template::percent_decode_into(raw.as_bytes(), &mut self.decode_buf);
                match template::classify_segment(decoded) {
                    Some(kind) => SegLabel::Param(ParamLabel::Kind(kind)),
                    // Resource names are identifiers; spaces, quotes or non-ASCII make it a value.
                    None if raw.len() > self.cfg.max_literal_len
                        || decoded
                            .iter()
                            .any(|c| !c.is_ascii_graphic() || b"@'\"<>;,(){}".contains(c)) =>
                    {
                        SegLabel::Param(ParamLabel::Kind(ParamKind::Param))
                    }
                    None => SegLabel::Literal(raw),
                }
            };
            let trie = &mut self.services[sid as usize].trie;
            let learn = !grpc && declared.is_none();
            let step = if learn || matches!(label, SegLabel::Param(_)) {
                trie.step(node, label, &mut changes)
            } else {
                trie.step_no_learn(node, label)
            };
            match step {
                Ok(n) => node = n,
                Err(_) => {
                    exhausted = true;
                    break;
                }
            }
        }
        if rest && !exhausted {
            match self.services[sid as usize].trie.step(
                node,
                SegLabel::Param(ParamLabel::Kind(ParamKind::Rest)),
                &mut changes,
            ) {
                Ok(n) => node = n,
                Err(_) => exhausted = true,
            }
        }
        if !changes.is_empty() {
            self.apply_changes(sid, &mut changes);
        }
        self.changes = changes;
        let nodes_after = self.services[sid as usize].trie.live_nodes();
        self.total_nodes = (self.total_nodes + nodes_after).saturating_sub(nodes_before);
        if exhausted {
            return self.overflow_endpoint(sid, midx, method, now_ns);
        }
        let svc = &mut self.services[sid as usize];
        if let Some(e) = svc.trie.endpoint(node, midx) {
            return (e, false);
        }
        if svc.endpoint_count >= self.cfg.max_endpoints_per_service
            || self.live_endpoints >= self.cfg.max_endpoints_total
        {
            return self.overflow_endpoint(sid, midx, method, now_ns);
        }
        let template: Arc<str> = svc.trie.template(node).into();
        let id = self.slots.len() as u32;
        let rec = EndpointRecord::new(id, svc.key.clone(), method.clone(), template, now_ns);
        svc.trie.set_endpoint(node, midx, id);
        svc.endpoint_count += 1;
        self.live_endpoints += 1;
        self.slots.push(Some(Slot {
            rec,
            service: sid,
            node,
            method_idx: midx,
            dirty: false,
            raised: 0,
        }));
        (id, true)
    }

    /// The overflow bucket of a service (one per service, all methods): bounded by construction.
    fn overflow_endpoint(
        &mut self,
        sid: u32,
        _midx: u16,
        _method: &Arc<str>,
        now_ns: u64,
    ) -> (EndpointId, bool) {
        self.counters.endpoint_overflow_calls += 1;
        let svc = &mut self.services[sid as usize];
        if let Some(e) = svc.overflow {
            return (e, false);
        }
        let id = self.slots.len() as u32;
        let mut rec = EndpointRecord::new(
            id,
            svc.key.clone(),
            Arc::from("*"),
            Arc::from("/{overflow}"),
            now_ns,
        );
        rec.overflow = true;
        svc.overflow = Some(id);
        tracing::warn!(service = %svc.key, "endpoint cap reached: further templates of this service are counted in its overflow endpoint");
        self.slots.push(Some(Slot {
            rec,
            service: sid,
            node: NO_NODE,
            method_idx: OTHER_METHOD,
            dirty: false,
            raised: 0,
        }));
        (id, true)
    }

    fn apply_changes(&mut self, sid: u32, changes: &mut Vec<TrieChange>) {
        let mut merged_into: HashMap<u32, u32> = HashMap::new();
        let mut pending: Vec<(usize, u32)> = Vec::new();
        let mut reclassify: Vec<u32> = Vec::new();
        for ch in changes.drain(..) {
            match ch {
                TrieChange::Merged { from, into } => {
                    let Some(src) = self.slots.get_mut(from as usize).and_then(Option::take) else {
                        continue;
                    };
                    let Some(dst) = self.slots.get_mut(into as usize).and_then(Option::as_mut)
                    else {
                        self.slots[from as usize] = Some(src);
                        continue;
                    };
                    dst.rec.merge(&src.rec, &self.cfg);
                    dst.raised |= src.raised;
                    if !dst.dirty {
                        dst.dirty = true;
                        self.dirty.push(into);
                    }
                    self.counters.endpoints_merged += 1;
                    self.services[sid as usize].endpoint_count -= 1;
                    self.live_endpoints = self.live_endpoints.saturating_sub(1);
                    merged_into.insert(from, into);
                    self.retired.push(RetiredEndpoint {
                        id: from,
                        key: src.rec.key.clone(),
                        replaced_by: None,
                    });
                    pending.push((self.retired.len() - 1, into));
                }
                TrieChange::Retemplated { endpoint, node } => {
                    let template: Arc<str> = self.services[sid as usize].trie.template(node).into();
                    let Some(slot) = self
                        .slots
                        .get_mut(endpoint as usize)
                        .and_then(Option::as_mut)
                    else {
                        continue;
                    };
                    slot.node = node;
                    if slot.rec.template != template {
                        let old = slot.rec.key.clone();
                        slot.rec.set_template(template);
                        self.retired.push(RetiredEndpoint {
                            id: endpoint,
                            key: old,
                            replaced_by: None,
                        });
                        pending.push((self.retired.len() - 1, endpoint));
                        if !slot.dirty {
                            slot.dirty = true;
                            self.dirty.push(endpoint);
                        }
                        reclassify.push(endpoint);
                    }
                }
            }
        }
        for (ri, mut id) in pending {
            let mut hops = 0;
            while let Some(next) = merged_into.get(&id) {
                id = *next;
                hops += 1;
                if hops > merged_into.len() {
                    break;
                }
            }
            let key = self
                .slots
                .get(id as usize)
                .and_then(Option::as_ref)
                .map(|s| s.rec.key.clone());
            if let Some(r) = self.retired.get_mut(ri) {
                r.replaced_by = key;
            }
        }
        // A key that was retired and then re-created by a later rename is not retired.
        let live: BTreeSet<Arc<str>> = self.endpoints().map(|r| r.key.clone()).collect();
        self.retired.retain(|r| !live.contains(&r.key));
        self.bound_retired();
        for id in reclassify {
            if self.slots.get(id as usize).is_some_and(Option::is_some) {
                self.classify(id, None);
            }
        }
    }

    /// Moves an endpoint observed before a spec was loaded to the declared template it matches
    /// (`/v1/pets/{int}` → `/v1/pets/{petId}`), merging endpoints that now coincide.
    fn adopt_declared_template(&mut self, id: u32) {
        let Some(slot) = self.slots.get(id as usize).and_then(Option::as_ref) else {
            return;
        };
        if slot.rec.overflow || slot.node == NO_NODE {
            return;
        }
        let (sid, old_node, midx) = (slot.service, slot.node, slot.method_idx);
        let template = slot.rec.template.clone();
        let segs = split_template(&template);
        let Some(m) = self.specs.best_match(&slot.rec.service, &segs) else {
            return;
        };
        let labels: Vec<SegLabel<'_>> = segs
            .iter()
            .enumerate()
            .map(|(i, seg)| match (self.specs.param_name(m, i), seg) {
                (Some(name), _) => SegLabel::Param(ParamLabel::Named(name.into())),
                (None, ObservedSeg::Literal(l)) => SegLabel::Literal(l),
                // A declared literal never matches a template parameter (best_match ensures it).
                (None, ObservedSeg::Param) => SegLabel::Param(ParamLabel::Kind(ParamKind::Param)),
            })
            .collect();
        let trie = &mut self.services[sid as usize].trie;
        let mut node = PathTrie::ROOT;
        for label in labels {
            match trie.step_no_learn(node, label) {
                Ok(n) => node = n,
                Err(_) => return,
            }
        }
        if node == old_node {
            return;
        }
        trie.remove_endpoint(old_node, midx);
        let new_template: Arc<str> = trie.template(node).into();
        match trie.endpoint(node, midx) {
            Some(into) => {
                let Some(src) = self.slots.get_mut(id as usize).and_then(Option::take) else {
                    return;
                };
                let Some(dst) = self.slots.get_mut(into as usize).and_then(Option::as_mut) else {
                    self.slots[id as usize] = Some(src);
                    return;
                };
                dst.rec.merge(&src.rec, &self.cfg);
                dst.raised |= src.raised;
                if !dst.dirty {
                    dst.dirty = true;
                    self.dirty.push(into);
                }
                let replaced_by = Some(dst.rec.key.clone());
                self.counters.endpoints_merged += 1;
                self.services[sid as usize].endpoint_count -= 1;
                self.live_endpoints = self.live_endpoints.saturating_sub(1);
                self.retired.push(RetiredEndpoint {
                    id,
                    key: src.rec.key.clone(),
                    replaced_by,
                });
                self.bound_retired();
            }
            None => {
                trie.set_endpoint(node, midx, id);
                let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
                    return;
                };
                let old = slot.rec.key.clone();
                slot.node = node;
                slot.rec.set_template(new_template);
                self.retired.push(RetiredEndpoint {
                    id,
                    key: old,
                    replaced_by: Some(slot.rec.key.clone()),
                });
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(id);
                }
                self.bound_retired();
            }
        }
    }

    /// Keeps the undrained retired list bounded (oldest dropped first, counted).
    fn bound_retired(&mut self) {
        let cap = self.cfg.max_pending_events;
        if self.retired.len() > cap {
            let excess = self.retired.len() - cap;
            self.retired.drain(..excess);
            self.counters.retired_dropped += excess as u64;
        }
    }

    fn unreported_shadow_or_zombie(&self, id: u32) -> bool {
        self.slots
            .get(id as usize)
            .and_then(Option::as_ref)
            .is_some_and(|slot| match slot.rec.classification {
                Classification::Shadow => slot.raised & RAISED_SHADOW == 0,
                Classification::Zombie => slot.raised & RAISED_ZOMBIE == 0,
                _ => false,
            })
    }

    fn classify(&mut self, id: u32, ex: Option<&Exchange>) {
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        if slot.rec.overflow {
            return;
        }
        let segs = split_template(&slot.rec.template);
        let verdict = self
            .specs
            .classify(&slot.rec.service, &slot.rec.method, &segs);
        let changed = slot.rec.classification != verdict.classification
            || slot.rec.declared != verdict.declared;
        slot.rec.classification = verdict.classification;
        slot.rec.classification_reason = verdict.reason;
        slot.rec.declared = verdict.declared;
        if changed && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id);
        }
        let (bit, kind, explanation) = match slot.rec.classification {
            Classification::Shadow => (
                RAISED_SHADOW,
                "inventory.shadow_endpoint",
                format!(
                    "{} {} is served by {} but no loaded OpenAPI spec declares it",
                    slot.rec.method, slot.rec.template, slot.rec.service
                ),
            ),
            Classification::Zombie => (
                RAISED_ZOMBIE,
                "inventory.zombie_endpoint",
                format!(
                    "{} {} is still served by {}: {}",
                    slot.rec.method,
                    slot.rec.template,
                    slot.rec.service,
                    slot.rec
                        .classification_reason
                        .as_deref()
                        .unwrap_or("deprecated")
                ),
            ),
            _ => return,
        };
        if slot.raised & bit != 0 {
            return;
        }
        // Only once the server answered as if the route exists: a scanner's 404s, a router's
        // 405 for an unknown method, a 410 or a 501 do not make an undeclared endpoint.
        let served = slot
            .rec
            .status_counts
            .iter()
            .any(|(status, n)| *n > 0 && !matches!(*status, 404 | 405 | 410 | 501));
        if !served {
            return;
        }
        slot.raised |= bit;
        let mut details = std::collections::BTreeMap::new();
        details.insert(
            "classification".to_owned(),
            slot.rec.classification.as_str().to_owned(),
        );
        if let Some(r) = &slot.rec.classification_reason {
            details.insert("reason".to_owned(), r.clone());
        }
        let anomaly = self.anomaly(
            id,
            kind,
            Severity::Medium,
            OwaspCategory::Api9Inventory,
            explanation,
            ex,
            Vec::new(),
            details,
            None,
        );
        self.push_event(anomaly);
    }

    #[allow(clippy::too_many_arguments)]
    fn anomaly(
        &self,
        id: u32,
        kind: &str,
        severity: Severity,
        category: OwaspCategory,
        explanation: String,
        ex: Option<&Exchange>,
        field_kinds: Vec<String>,
        details: std::collections::BTreeMap<String, String>,
        principal: Option<String>,
    ) -> Anomaly {
        let rec = self
            .slots
            .get(id as usize)
            .and_then(Option::as_ref)
            .map(|s| &s.rec);
        let (key, template, method, first, last) = match rec {
            Some(r) => (
                r.key.to_string(),
                r.template.to_string(),
                r.method.to_string(),
                r.first_seen_ns,
                r.last_seen_ns,
            ),
            None => (String::new(), String::new(), String::new(), 0, 0),
        };
        let mut request_line = format!("{method} {template}");
        if let Some(q) = ex
            .and_then(|e| e.request.query.as_deref())
            .filter(|q| !q.is_empty())
        {
            request_line.push('?');
            for (i, pair) in q.split('&').take(16).enumerate() {
                let name = pair.split('=').next().unwrap_or("");
                let name = match template::classify_segment(name.as_bytes()) {
                    Some(k) => k.placeholder(),
                    None => cut(name, 64),
                };
                if i > 0 {
                    request_line.push('&');
                }
                let _ = write!(request_line, "{name}={{redacted}}");
            }
        }
        let client = ex.and_then(|e| {
            let addr = e.conn.client_addr().map(|a| a.ip().to_string());
            let proc = (e.conn.role == Role::Client && !e.conn.process.comm.is_empty())
                .then(|| e.conn.process.comm.clone());
            match (addr, proc) {
                (Some(a), Some(p)) => Some(format!("{a}[{p}]")),
                (Some(a), None) => Some(a),
                (None, Some(p)) => Some(format!("[{p}]")),
                (None, None) => None,
            }
        });
        Anomaly {
            key: format!("{kind}|{key}"),
            kind: kind.to_owned(),
            first_seen_ns: first,
            last_seen_ns: last,
            endpoint: Some(key),
            principal_hash: principal,
            client,
            severity,
            category,
            explanation,
            evidence: Evidence {
                request_line,
                status: ex.and_then(Exchange::status),
                request_bytes: ex.map_or(0, |e| e.request.body.wire_len),
                response_bytes: ex
                    .and_then(|e| e.response.as_ref())
                    .map_or(0, |r| r.body.wire_len),
                field_kinds,
                details,
            },
            count: 1,
        }
    }

    fn push_event(&mut self, a: Anomaly) {
        if self.events.len() >= self.cfg.max_pending_events {
            self.counters.events_dropped += 1;
            return;
        }
        tracing::debug!(kind = %a.kind, endpoint = ?a.endpoint, "inventory event");
        self.events.push(a);
    }

    fn call_events(&mut self, id: u32, ex: &Exchange, auth: &AuthInfo, hits: &[SensitiveHit]) {
        let Some(slot) = self.slots.get(id as usize).and_then(Option::as_ref) else {
            return;
        };
        let raised = slot.raised;
        if slot.rec.overflow && raised & RAISED_OVERFLOW == 0 {
            let explanation = format!(
                "{} has more endpoints than the inventory keeps; further calls are only counted",
                slot.rec.service
            );
            let a = self.anomaly(
                id,
                "inventory.endpoint_overflow",
                Severity::Low,
                OwaspCategory::Api9Inventory,
                explanation,
                Some(ex),
                Vec::new(),
                Default::default(),
                None,
            );
            self.mark(id, RAISED_OVERFLOW);
            self.push_event(a);
        }
        if hits.is_empty() {
            return;
        }
        let Some(slot) = self.slots.get(id as usize).and_then(Option::as_ref) else {
            return;
        };
        if auth.scheme == AuthScheme::None
            && raised & RAISED_PII == 0
            && ex.status().is_some_and(|s| (200..300).contains(&s))
        {
            let pii: BTreeSet<SensitiveKind> = hits
                .iter()
                .filter(|h| h.location.is_response() && h.kind.is_personal())
                .map(|h| h.kind)
                .collect();
            if !pii.is_empty() {
                let fields: BTreeSet<&str> = hits
                    .iter()
                    .filter(|h| h.location.is_response() && h.kind.is_personal())
                    .map(|h| h.path.as_str())
                    .collect();
                let kinds: Vec<String> = pii.iter().map(|k| k.as_str().to_owned()).collect();
                let explanation = format!(
                    "{} {} on {} returns personal data ({}) to callers that present no credentials",
                    slot.rec.method,
                    slot.rec.template,
                    slot.rec.service,
                    kinds.join(", ")
                );
                let mut details = std::collections::BTreeMap::new();
                details.insert(
                    "fields".to_owned(),
                    fields.into_iter().take(16).collect::<Vec<_>>().join(","),
                );
                let a = self.anomaly(
                    id,
                    "inventory.unauthenticated_pii",
                    Severity::High,
                    OwaspCategory::Api3PropertyAuth,
                    explanation,
                    Some(ex),
                    kinds,
                    details,
                    None,
                );
                self.mark(id, RAISED_PII);
                self.push_event(a);
            }
        }
        let Some(slot) = self.slots.get(id as usize).and_then(Option::as_ref) else {
            return;
        };
        if raised & RAISED_SECRET_QUERY == 0 {
            let creds: BTreeSet<SensitiveKind> = hits
                .iter()
                .filter(|h| h.location == Location::RequestQuery && h.kind.is_credential())
                .map(|h| h.kind)
                .collect();
            if !creds.is_empty() {
                let kinds: Vec<String> = creds.iter().map(|k| k.as_str().to_owned()).collect();
                let explanation = format!(
                    "{} {} on {} receives credentials ({}) in the query string, where proxies and logs keep them",
                    slot.rec.method,
                    slot.rec.template,
                    slot.rec.service,
                    kinds.join(", ")
                );
                let a = self.anomaly(
                    id,
                    "inventory.credential_in_query",
                    Severity::Medium,
                    OwaspCategory::Api8Misconfiguration,
                    explanation,
                    Some(ex),
                    kinds,
                    Default::default(),
                    auth.principal.clone(),
                );
                self.mark(id, RAISED_SECRET_QUERY);
                self.push_event(a);
            }
        }
    }

    fn mark(&mut self, id: u32, bit: u8) {
        if let Some(Some(slot)) = self.slots.get_mut(id as usize) {
            slot.raised |= bit;
        }
    }

    fn update_stats(&mut self, id: u32, ex: &Exchange, auth: &AuthInfo, now_ns: u64) {
        let cfg = &self.cfg;
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let rec = &mut slot.rec;
        rec.calls = rec.calls.saturating_add(1);
        if ex.version == sonde_model::HttpVersion::Http2 {
            rec.http2_calls = rec.http2_calls.saturating_add(1);
        }
        if ex.flags.contains(sonde_model::ExchangeFlags::TLS) {
            rec.served_over_tls = true;
        }
        rec.first_seen_ns = rec.first_seen_ns.min(now_ns);
        rec.last_seen_ns = rec.last_seen_ns.max(now_ns);
        rec.request_bytes.record(ex.request.body.wire_len);
        match &ex.response {
            Some(r) => {
                *rec.status_counts.entry(r.status).or_insert(0) += 1;
                rec.response_bytes.record(r.body.wire_len);
                if let Some(ct) = sonde_model::exchange::find_header(&r.headers, "content-type") {
                    rec.response_content_types
                        .add(&media_type(ct), 1, cfg.max_content_types);
                }
            }
            None => rec.no_response += 1,
        }
        if let Some(l) = ex.latency_ns() {
            rec.latency_ns.record(l);
        }
        if let Some(ct) = ex.request_header("content-type") {
            rec.request_content_types
                .add(&media_type(ct), 1, cfg.max_content_types);
        }
        let buf = &mut self.text_buf;
        buf.clear();
        buf.push_str(auth.scheme.as_str());
        if let Some(n) = auth
            .credential_name
            .as_deref()
            .or(auth.other_scheme.as_deref())
        {
            buf.push(':');
            buf.push_str(n);
        }
        rec.auth_schemes.add(buf, 1, 16);
        // The caller text is formatted once per connection, not per call.
        let conn_key = (ex.conn.id, ex.conn.role, ex.conn.client_addr());
        if self.caller_cache.0 != Some(conn_key) {
            let text = &mut self.caller_cache.1;
            text.clear();
            if let Some(a) = conn_key.2 {
                let _ = write!(text, "{}", a.ip());
            }
            if ex.conn.role == Role::Client {
                // The calling process is the observed one: its workload, else its name.
                match ex
                    .conn
                    .process
                    .workload
                    .as_deref()
                    .filter(|w| !w.name.is_empty())
                {
                    Some(w) => {
                        let _ = write!(text, "[{}]", cut(&w.name, 128));
                    }
                    None if !ex.conn.process.comm.is_empty() => {
                        let _ = write!(text, "[{}]", cut(&ex.conn.process.comm, 64));
                    }
                    None => {}
                }
            } else if let (Some(names), Some(a)) = (&self.address_names, conn_key.2)
                && let Some(w) = names.workload_at(a.ip())
            {
                // A remote caller that is a pod of this node.
                let _ = write!(text, "[{}]", cut(&w, 128));
            }
            self.caller_cache.0 = Some(conn_key);
        }
        if !self.caller_cache.1.is_empty() {
            rec.callers
                .add(&self.caller_cache.1, 1, cfg.max_callers_per_endpoint);
        }
    }

    fn scan_headers(
        &mut self,
        id: u32,
        headers: &[Header],
        loc: Location,
        hits: &mut Vec<SensitiveHit>,
    ) {
        self.facts.clear();
        let mut path = std::mem::take(&mut self.text_buf);
        for h in headers {
            let name = h.name.as_str();
            if h.value.is_empty()
                || matches!(
                    name,
                    "authorization"
                        | "cookie"
                        | "set-cookie"
                        | "host"
                        | "content-type"
                        | "content-length"
                        | "accept"
                        | "user-agent"
                )
            {
                continue;
            }
            let mut kinds = sensitive::scan_value(h.value.as_bytes());
            if let Some(k) = sensitive::kind_for_field_name(name) {
                kinds.insert(k);
            }
            if !kinds.is_empty() {
                path.clear();
                path.push_str("header.");
                path.push_str(cut(name, 64));
                self.facts.add_kinds(&path, kinds, 64);
            }
        }
        self.text_buf = path;
        self.absorb(id, loc, hits);
    }

    fn scan_query(&mut self, id: u32, q: &str, hits: &mut Vec<SensitiveHit>) {
        self.facts.clear();
        let cap = self.cfg.max_query_params;
        let mut names: Vec<String> = Vec::new();
        schema::scan_pairs(q.as_bytes(), "query", &mut self.facts, 64, |n| {
            if names.len() < 64 && !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        });
        if let Some(Some(slot)) = self.slots.get_mut(id as usize) {
            for n in &names {
                slot.rec.query_params.add(n, 1, cap);
            }
        }
        self.absorb(id, Location::RequestQuery, hits);
    }

    fn analyse_body(
        &mut self,
        id: u32,
        body: &Body,
        content_type: Option<&str>,
        loc: Location,
        hits: &mut Vec<SensitiveHit>,
    ) {
        if body.sample.is_empty() || body.decode_error {
            return;
        }
        let max = self.cfg.max_body_scan_bytes;
        let sample = match body.sample.get(..max) {
            Some(s) if body.sample.len() > max => {
                self.counters.body_samples_cut += 1;
                s
            }
            _ => &body.sample[..],
        };
        self.counters.body_bytes_scanned += sample.len() as u64;
        self.facts.clear();
        match body_kind(content_type, sample) {
            BodyKind::Json => {
                let outcome = schema::walk_json(
                    sample,
                    self.cfg.schema_max_depth,
                    self.cfg.schema_max_fields,
                    &mut self.facts,
                );
                if matches!(outcome, WalkOutcome::Invalid { .. }) {
                    self.counters.invalid_json_bodies += 1;
                }
            }
            BodyKind::Form => schema::scan_pairs(
                sample,
                "form",
                &mut self.facts,
                self.cfg.schema_max_fields,
                |_| {},
            ),
            BodyKind::Text => {
                let kinds = sensitive::scan_text(sample);
                self.facts.add_kinds("body", kinds, 1);
            }
            BodyKind::Skip => return,
        }
        self.absorb(id, loc, hits);
    }

    /// Moves the facts of one location into the endpoint record and the call's hits.
    fn absorb(&mut self, id: u32, loc: Location, hits: &mut Vec<SensitiveHit>) {
        let cfg = &self.cfg;
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let rec = &mut slot.rec;
        if self.facts.is_json {
            let schema = if loc == Location::RequestBody {
                &mut rec.request_schema
            } else {
                &mut rec.response_schema
            };
            schema.json_bodies += 1;
            if matches!(self.facts.outcome, Some(WalkOutcome::Invalid { .. })) {
                schema.invalid_json += 1;
            }
            schema.fields_dropped += self.facts.dropped;
            for (path, f) in &self.facts.fields {
                if f.types == 0 {
                    continue;
                }
                if let Some(fs) = schema.fields.get_mut(path.as_str()) {
                    fs.types.0 |= f.types;
                    fs.seen = fs.seen.saturating_add(1);
                } else if schema.fields.len() < cfg.schema_max_fields {
                    schema.fields.insert(
                        path.clone(),
                        FieldSchema {
                            types: JsonTypes(f.types),
                            seen: 1,
                        },
                    );
                } else {
                    schema.fields_dropped += 1;
                }
            }
        }
        for (path, f) in &self.facts.fields {
            for kind in f.kinds.iter() {
                rec.add_sensitive(loc, path, kind, 1, cfg.max_sensitive_fields);
                if hits.len() < 256 {
                    hits.push(SensitiveHit {
                        location: loc,
                        path: path.clone(),
                        kind,
                    });
                }
            }
        }
    }

    /// Records of one service.
    pub fn service_endpoints<'a>(
        &'a self,
        service: &'a ServiceKey,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints().filter(move |r| *r.service == *service)
    }

    /// Internal consistency for tests: every live endpoint sits at its node with its method.
    #[doc(hidden)]
    pub fn check_consistency(&self) -> Result<(), String> {
        for (i, s) in self.slots.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.rec.id as usize != i {
                return Err(format!("slot {i} holds record {}", s.rec.id));
            }
            if s.node == NO_NODE {
                continue;
            }
            let svc = &self.services[s.service as usize];
            if svc.trie.endpoint(s.node, s.method_idx) != Some(i as u32) {
                return Err(format!("endpoint {} not at its node", s.rec.key));
            }
            if *svc.trie.template(s.node) != *s.rec.template {
                return Err(format!(
                    "endpoint {} template differs from its node",
                    s.rec.key
                ));
            }
        }
        Ok(())
    }
}

// The agent moves an inventory into its shard thread.
const _: () = {
    fn assert_send<T: Send>() {}
    #[allow(dead_code)]
    fn inventory_is_send() {
        assert_send::<Inventory>();
    }
};
