//! What the inventory knows about each endpoint, in the form the exporter sends.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::schema::BodySchema;
use crate::sensitive::SensitiveKind;
use crate::stats::{CappedCounts, LogHistogram};

/// A service: the server side of the traffic. Fields that are unknown stay `None`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Server `ip:port`.
    pub address: Option<String>,
    /// Server process name, when the server process is the one observed.
    pub process: Option<String>,
    /// Host header / `:authority`, lower case. Left out for Kubernetes workloads and Services,
    /// which callers reach under many names (short and long DNS names, ClusterIP, pod IP).
    pub authority: Option<String>,
    /// The serving workload (container, pod and owner, systemd unit, executable), when the
    /// server process is the one observed and its identity is known. Services of one workload
    /// are keyed by its name and port, not by address: its pods and containers share them.
    #[serde(default)]
    pub workload: Option<Arc<sonde_model::Workload>>,
    /// `namespace/name` of the Kubernetes Service whose ClusterIP (or endpoint) is the server
    /// address.
    #[serde(default)]
    pub kubernetes_service: Option<Arc<str>>,
}

impl ServiceKey {
    /// Port of the server address, else of the authority.
    pub fn port(&self) -> Option<u16> {
        let from = |s: &str| s.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        self.address
            .as_deref()
            .and_then(from)
            .or_else(|| self.authority.as_deref().and_then(from))
    }
}

impl std::fmt::Display for ServiceKey {
    /// `authority@address{workload}[process]`, `-` for unknown parts: one token without spaces, so endpoint
    /// keys (`service METHOD /template`) split on spaces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}",
            self.authority.as_deref().unwrap_or("-"),
            self.address.as_deref().unwrap_or("-")
        )?;
        if let Some(w) = self.workload.as_deref().filter(|w| !w.name.is_empty()) {
            write!(f, "{{{}}}", w.name)?;
        } else if let Some(s) = &self.kubernetes_service {
            write!(f, "{{service/{s}}}")?;
        }
        if let Some(p) = &self.process {
            write!(f, "[{p}]")?;
        }
        Ok(())
    }
}

/// Standing of an endpoint against the declared specs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// No spec covers the service.
    #[default]
    Unclassified,
    /// Matches a declared, non-deprecated operation.
    Managed,
    /// Served but not declared.
    Shadow,
    /// Deprecated operation, or an older version of a declared resource, still served.
    Zombie,
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Unclassified => "unclassified",
            Classification::Managed => "managed",
            Classification::Shadow => "shadow",
            Classification::Zombie => "zombie",
        }
    }
}

/// The declared operation an endpoint matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeclaredRef {
    pub spec: String,
    pub method: String,
    /// Declared path (without the server base path).
    pub path: String,
    pub operation_id: Option<String>,
    pub deprecated: bool,
}

/// Where in a call a field was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    RequestHeader,
    RequestQuery,
    RequestBody,
    ResponseHeader,
    ResponseBody,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::RequestHeader => "request_header",
            Location::RequestQuery => "request_query",
            Location::RequestBody => "request_body",
            Location::ResponseHeader => "response_header",
            Location::ResponseBody => "response_body",
        }
    }

    pub fn is_response(self) -> bool {
        matches!(self, Location::ResponseHeader | Location::ResponseBody)
    }
}

/// A sensitive kind seen at a field path (`$.user.email`, `query.token`, `header.x-api-key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensitiveField {
    pub location: Location,
    pub path: String,
    pub kind: SensitiveKind,
    /// Calls in which it was seen.
    pub count: u64,
}

/// TLS parameters of the connections an endpoint was served on (the latest seen).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndpointTls {
    /// Negotiated version (`TLS 1.3`), when the handshake was seen.
    pub version: Option<String>,
    /// Negotiated cipher suite (IANA name).
    pub cipher: Option<String>,
    /// ALPN protocol selected (or, when TLS 1.3 hides the selection, the one the HTTP stage
    /// recognised).
    pub alpn: Option<String>,
    /// Server name the client asked for.
    pub sni: Option<String>,
}

/// One endpoint: service + method + path template, with its bounded statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Index in this inventory (stable for the endpoint's life; not across restarts).
    pub id: u32,
    /// `service METHOD /template`.
    pub key: Arc<str>,
    pub service: Arc<ServiceKey>,
    pub method: Arc<str>,
    /// `/api/{id}/org/projects`. Parameters are `{kind}` or, from a declared spec, `{name}`.
    pub template: Arc<str>,
    /// The service's overflow bucket (template `/{overflow}`), which takes calls past the caps.
    pub overflow: bool,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub calls: u64,
    /// Of `calls`, those carried over HTTP/2 (gRPC included).
    #[serde(default)]
    pub http2_calls: u64,
    /// Of `calls`, those that travelled inside TLS.
    #[serde(default)]
    pub tls_calls: u64,
    /// The TLS parameters last seen for this endpoint.
    #[serde(default)]
    pub tls: Option<EndpointTls>,
    /// Some call was read from TLS plaintext: the endpoint is served over TLS.
    #[serde(default)]
    pub served_over_tls: bool,
    /// Final status code → calls.
    pub status_counts: BTreeMap<u16, u64>,
    /// Calls without a response.
    pub no_response: u64,
    pub request_content_types: CappedCounts,
    pub response_content_types: CappedCounts,
    /// Query parameter names → calls (values are never kept).
    pub query_params: CappedCounts,
    pub request_schema: BodySchema,
    pub response_schema: BodySchema,
    pub latency_ns: LogHistogram,
    pub request_bytes: LogHistogram,
    pub response_bytes: LogHistogram,
    /// Auth scheme (`bearer_jwt`, `api_key_header:x-api-key`, `none`) → calls.
    pub auth_schemes: CappedCounts,
    /// Distinct principals seen (hashes are not kept here; the baseline tracks principals).
    pub sensitive: Vec<SensitiveField>,
    /// Sensitive fields not kept because the cap was reached.
    pub sensitive_dropped: u64,
    /// Client (`ip` or `ip[process]`) → calls.
    pub callers: CappedCounts,
    pub classification: Classification,
    pub classification_reason: Option<String>,
    pub declared: Option<DeclaredRef>,
}

impl EndpointRecord {
    pub(crate) fn new(
        id: u32,
        service: Arc<ServiceKey>,
        method: Arc<str>,
        template: Arc<str>,
        now_ns: u64,
    ) -> EndpointRecord {
        let key: Arc<str> = format!("{service} {method} {template}").into();
        EndpointRecord {
            id,
            key,
            service,
            method,
            template,
            overflow: false,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            calls: 0,
            http2_calls: 0,
            tls_calls: 0,
            tls: None,
            served_over_tls: false,
            status_counts: BTreeMap::new(),
            no_response: 0,
            request_content_types: CappedCounts::default(),
            response_content_types: CappedCounts::default(),
            query_params: CappedCounts::default(),
            request_schema: BodySchema::default(),
            response_schema: BodySchema::default(),
            latency_ns: LogHistogram::default(),
            request_bytes: LogHistogram::default(),
            response_bytes: LogHistogram::default(),
            auth_schemes: CappedCounts::default(),
            sensitive: Vec::new(),
            sensitive_dropped: 0,
            callers: CappedCounts::default(),
            classification: Classification::Unclassified,
            classification_reason: None,
            declared: None,
        }
    }

    pub(crate) fn set_template(&mut self, template: Arc<str>) {
        self.key = format!("{} {} {}", self.service, self.method, template).into();
        self.template = template;
    }

    /// Folds `other` (same method, now same template) into `self`.
    pub(crate) fn merge(&mut self, other: &EndpointRecord, caps: &crate::InventoryConfig) {
        self.first_seen_ns = self.first_seen_ns.min(other.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.calls = self.calls.saturating_add(other.calls);
        self.tls_calls = self.tls_calls.saturating_add(other.tls_calls);
        if self.tls.is_none() {
            self.tls.clone_from(&other.tls);
        }
        for (s, c) in &other.status_counts {
            *self.status_counts.entry(*s).or_insert(0) += c;
        }
        self.no_response += other.no_response;
        self.request_content_types
            .merge(&other.request_content_types, caps.max_content_types);
        self.response_content_types
            .merge(&other.response_content_types, caps.max_content_types);
        self.query_params
            .merge(&other.query_params, caps.max_query_params);
        self.request_schema
            .merge(&other.request_schema, caps.schema_max_fields);
        self.response_schema
            .merge(&other.response_schema, caps.schema_max_fields);
        self.latency_ns.merge(&other.latency_ns);
        self.request_bytes.merge(&other.request_bytes);
        self.response_bytes.merge(&other.response_bytes);
        self.auth_schemes.merge(&other.auth_schemes, 16);
        for f in &other.sensitive {
            self.add_sensitive(
                f.location,
                &f.path,
                f.kind,
                f.count,
                caps.max_sensitive_fields,
            );
        }
        self.sensitive_dropped += other.sensitive_dropped;
        self.callers
            .merge(&other.callers, caps.max_callers_per_endpoint);
    }

    pub(crate) fn add_sensitive(
        &mut self,
        location: Location,
        path: &str,
        kind: SensitiveKind,
        n: u64,
        cap: usize,
    ) {
        if let Some(f) = self
            .sensitive
            .iter_mut()
            .find(|f| f.kind == kind && f.location == location && f.path == path)
        {
            f.count = f.count.saturating_add(n);
        } else if self.sensitive.len() < cap {
            self.sensitive.push(SensitiveField {
                location,
                path: path.to_owned(),
                kind,
                count: n,
            });
        } else {
            self.sensitive_dropped += 1;
        }
    }

    /// Approximate heap bytes owned by this record (shared strings counted once here).
    pub fn heap_bytes(&self) -> usize {
        self.key.len()
            + self.template.len()
            + self.status_counts.len() * 48
            + self.request_content_types.heap_bytes()
            + self.response_content_types.heap_bytes()
            + self.query_params.heap_bytes()
            + self.request_schema.heap_bytes()
            + self.response_schema.heap_bytes()
            + self.latency_ns.heap_bytes()
            + self.request_bytes.heap_bytes()
            + self.response_bytes.heap_bytes()
            + self.auth_schemes.heap_bytes()
            + self
                .sensitive
                .iter()
                .map(|f| f.path.capacity() + std::mem::size_of::<SensitiveField>())
                .sum::<usize>()
            + self.callers.heap_bytes()
    }
}

/// An endpoint key that no longer exists: folded into another endpoint or renamed by templating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredEndpoint {
    pub id: u32,
    pub key: Arc<str>,
    /// Key of the endpoint that now holds its statistics.
    pub replaced_by: Option<Arc<str>>,
}
