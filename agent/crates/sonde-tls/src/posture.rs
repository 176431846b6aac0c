//! Posture rules: what in a handshake (or a plaintext exchange) is a misconfiguration worth an
//! anomaly, raised once per server and issue rather than once per connection.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use sonde_model::{Anomaly, Evidence, Exchange, OwaspCategory, Severity};

use crate::cert::{Validity, date_text};
use crate::cipher::Weakness;
use crate::handshake::TlsSession;
use crate::version::ProtocolVersion;

/// Which plaintext HTTP servers the "answers with data instead of redirecting" rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlaintextScope {
    /// Servers on an address other hosts can reach (not loopback). The default: a service that
    /// only answers on 127.0.0.1 is out of the network's reach.
    #[default]
    NonLoopback,
    /// Every server, loopback included (single-host demos, sidecars that forward to loopback).
    All,
    /// The rule is off.
    Off,
}

/// Posture thresholds and scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostureConfig {
    /// Lowest acceptable negotiated version, as its wire value. Default `0x0303` (TLS 1.2).
    pub min_version: u16,
    /// Scope of the plaintext-HTTP-with-data rule. Default `non-loopback`.
    pub plaintext_http: PlaintextScope,
    /// Server ports where plaintext HTTP answers are expected (health checks, metrics scrapes):
    /// the plaintext-data rule skips them. Default: none.
    pub plaintext_allowed_ports: Vec<u16>,
    /// Servers (and findings) remembered for grouping; past it the memory is reset (counted),
    /// so a finding may be raised again rather than grow memory. Default 16384.
    pub max_tracked: usize,
}

impl Default for PostureConfig {
    fn default() -> PostureConfig {
        PostureConfig {
            min_version: ProtocolVersion::TLS12.0,
            plaintext_http: PlaintextScope::NonLoopback,
            plaintext_allowed_ports: Vec::new(),
            max_tracked: 16384,
        }
    }
}

/// The server side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerRef {
    pub addr: Option<SocketAddr>,
    /// Serving process (`comm`), when the server side is on this host.
    pub process: Option<String>,
    /// The server is a socket of this host (its port is a local port).
    pub local: bool,
}

impl ServerRef {
    fn name(&self) -> String {
        let addr = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match &self.process {
            Some(p) if !p.is_empty() => format!("{addr} ({p})"),
            _ => addr,
        }
    }

    /// The port both rules about "the same port" compare: a local listener's port whatever the
    /// address it was reached on, a remote server's address and port.
    fn port_key(&self) -> Option<(Option<IpAddr>, u16)> {
        let a = self.addr?;
        Some((if self.local { None } else { Some(a.ip()) }, a.port()))
    }
}

/// Counters of the posture rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostureCounters {
    pub sessions: u64,
    pub plaintext_exchanges: u64,
    /// Findings raised, by kind.
    pub findings: BTreeMap<String, u64>,
    /// Times the grouping memory was reset at its bound.
    pub tracking_resets: u64,
}

/// The posture rules and the memory that raises each finding once.
#[derive(Debug, Default)]
pub struct PostureRules {
    cfg: PostureConfig,
    raised: HashSet<String>,
    tls_ports: HashSet<(Option<IpAddr>, u16)>,
    plaintext_ports: HashSet<(Option<IpAddr>, u16)>,
    counters: PostureCounters,
}

impl PostureRules {
    pub fn new(cfg: PostureConfig) -> PostureRules {
        PostureRules {
            cfg,
            ..PostureRules::default()
        }
    }

    pub fn counters(&self) -> &PostureCounters {
        &self.counters
    }

    /// Checks a connection's handshake (call again as it learns more: findings are raised once).
    pub fn on_session(
        &mut self,
        server: &ServerRef,
        session: &TlsSession,
        ts_ns: u64,
        out: &mut Vec<Anomaly>,
    ) {
        self.counters.sessions += 1;
        let mut details = BTreeMap::new();
        if let Some(sni) = session.sni() {
            details.insert("sni".to_string(), sni.to_string());
        }
        if let Some(sh) = &session.server_hello {
            details.insert("version".into(), sh.version.name());
            details.insert("cipher".into(), sh.cipher.name.clone());
            if sh.version < ProtocolVersion(self.cfg.min_version) {
                let severity = if sh.version <= ProtocolVersion::TLS10 {
                    Severity::High
                } else {
                    Severity::Medium
                };
                self.raise(
                    out,
                    "tls.legacy_version",
                    server,
                    severity,
                    format!(
                        "{} negotiated {} (below {}): known protocol weaknesses (BEAST, POODLE) and no modern cipher suites",
                        server.name(),
                        sh.version,
                        ProtocolVersion(self.cfg.min_version)
                    ),
                    &details,
                    ts_ns,
                );
            }
            if !sh.cipher.weaknesses.is_empty() {
                let worst = sh
                    .cipher
                    .weaknesses
                    .iter()
                    .map(|w| match w {
                        Weakness::Null => Severity::Critical,
                        Weakness::Anonymous | Weakness::Export | Weakness::Rc4 | Weakness::Des => {
                            Severity::High
                        }
                        Weakness::TripleDes => Severity::Medium,
                    })
                    .max()
                    .unwrap_or(Severity::Medium);
                let classes: Vec<&str> = sh.cipher.weaknesses.iter().map(|w| w.as_str()).collect();
                let mut d = details.clone();
                d.insert("weakness".into(), classes.join(","));
                self.raise(
                    out,
                    "tls.weak_cipher",
                    server,
                    worst,
                    format!(
                        "{} negotiated the weak cipher suite {} ({})",
                        server.name(),
                        sh.cipher.name,
                        classes.join(", ")
                    ),
                    &d,
                    ts_ns,
                );
            }
        }
        if let Some(cert) = &session.server_certificate {
            let now = (ts_ns / 1_000_000_000) as i64;
            let mut d = details.clone();
            if let Some(cn) = &cert.subject_cn {
                d.insert("subject_cn".into(), cn.clone());
            }
            if let Some(cn) = &cert.issuer_cn {
                d.insert("issuer_cn".into(), cn.clone());
            }
            d.insert("not_before".into(), date_text(cert.not_before));
            d.insert("not_after".into(), date_text(cert.not_after));
            d.insert("self_signed".into(), cert.self_signed.to_string());
            match cert.validity_at(now) {
                Validity::Valid => {}
                Validity::Expired => self.raise(
                    out,
                    "tls.certificate_expired",
                    server,
                    Severity::High,
                    format!(
                        "{} presents a certificate{} that expired on {}",
                        server.name(),
                        cert.subject_cn
                            .as_deref()
                            .map(|c| format!(" for {c}"))
                            .unwrap_or_default(),
                        date_text(cert.not_after)
                    ),
                    &d,
                    ts_ns,
                ),
                Validity::NotYetValid => self.raise(
                    out,
                    "tls.certificate_not_yet_valid",
                    server,
                    Severity::Medium,
                    format!(
                        "{} presents a certificate{} not valid before {}",
                        server.name(),
                        cert.subject_cn
                            .as_deref()
                            .map(|c| format!(" for {c}"))
                            .unwrap_or_default(),
                        date_text(cert.not_before)
                    ),
                    &d,
                    ts_ns,
                ),
            }
        }
        if session.server_hello.is_some()
            && let Some(port) = server.port_key()
        {
            self.remember_port(port, true);
            if self.plaintext_ports.contains(&port) {
                self.mixed_port(server, ts_ns, out);
            }
        }
    }

    /// Checks an HTTP exchange that travelled in clear. `endpoint` is the inventory's key of its
    /// endpoint.
    pub fn on_plaintext_exchange(
        &mut self,
        server: &ServerRef,
        ex: &Exchange,
        endpoint: &str,
        out: &mut Vec<Anomaly>,
    ) {
        self.counters.plaintext_exchanges += 1;
        let ts_ns = ex
            .response
            .as_ref()
            .map_or(ex.request.ts_end_ns, |r| r.ts_end_ns);
        let Some(addr) = server.addr else { return };
        // A TLS port that refuses cleartext (nginx's 400 "plain HTTP request was sent to HTTPS
        // port") is doing the right thing: only an answer below 400 serves cleartext.
        let served = ex.response.as_ref().is_some_and(|r| r.status < 400);
        if served && let Some(port) = server.port_key() {
            self.remember_port(port, false);
            if self.tls_ports.contains(&port) {
                self.mixed_port(server, ts_ns, out);
            }
        }
        let in_scope = match self.cfg.plaintext_http {
            PlaintextScope::Off => false,
            PlaintextScope::All => true,
            PlaintextScope::NonLoopback => !addr.ip().is_loopback(),
        };
        if !in_scope || self.cfg.plaintext_allowed_ports.contains(&addr.port()) {
            return;
        }
        let Some(resp) = &ex.response else { return };
        if !(200..300).contains(&resp.status) || resp.body.wire_len == 0 {
            return;
        }
        let mut details = BTreeMap::new();
        details.insert("endpoint".to_string(), endpoint.to_string());
        if let Some(ct) = ex.response_header("content-type") {
            details.insert("content_type".into(), ct.chars().take(64).collect());
        }
        let key = format!("http.plaintext_data {}", server_key(server));
        if !self.first_time(&key) {
            return;
        }
        self.count("http.plaintext_data");
        out.push(Anomaly {
            key,
            kind: "http.plaintext_data".into(),
            first_seen_ns: ts_ns,
            last_seen_ns: ts_ns,
            endpoint: Some(endpoint.to_string()),
            principal_hash: None,
            client: None,
            severity: Severity::Medium,
            category: OwaspCategory::Api8Misconfiguration,
            explanation: format!(
                "{} answers {} {} over plaintext HTTP with {} bytes of data instead of redirecting to HTTPS",
                server.name(),
                ex.request.method,
                ex.request.path,
                resp.body.wire_len
            ),
            evidence: Evidence {
                // The path only: query values may carry secrets.
                request_line: format!("{} {}", ex.request.method, ex.request.path),
                status: Some(resp.status),
                request_bytes: ex.request.body.wire_len,
                response_bytes: resp.body.wire_len,
                field_kinds: Vec::new(),
                details,
            },
            count: 1,
        });
    }

    fn mixed_port(&mut self, server: &ServerRef, ts_ns: u64, out: &mut Vec<Anomaly>) {
        let port = server.addr.map(|a| a.port()).unwrap_or(0);
        let mut details = BTreeMap::new();
        details.insert("port".to_string(), port.to_string());
        self.raise(
            out,
            "tls.plaintext_on_tls_port",
            server,
            Severity::Medium,
            format!(
                "port {port} of {} serves both TLS and plaintext HTTP: clients that skip TLS send their requests in clear",
                server.name()
            ),
            &details,
            ts_ns,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        out: &mut Vec<Anomaly>,
        kind: &str,
        server: &ServerRef,
        severity: Severity,
        explanation: String,
        details: &BTreeMap<String, String>,
        ts_ns: u64,
    ) {
        let key = format!("{kind} {}", server_key(server));
        if !self.first_time(&key) {
            return;
        }
        self.count(kind);
        let mut details = details.clone();
        details.insert("server".into(), server.name());
        out.push(Anomaly {
            key,
            kind: kind.to_string(),
            first_seen_ns: ts_ns,
            last_seen_ns: ts_ns,
            endpoint: None,
            principal_hash: None,
            client: None,
            severity,
            category: OwaspCategory::Api8Misconfiguration,
            explanation,
            evidence: Evidence {
                details,
                ..Evidence::default()
            },
            count: 1,
        });
    }

    fn count(&mut self, kind: &str) {
        *self.counters.findings.entry(kind.to_string()).or_insert(0) += 1;
    }

    fn first_time(&mut self, key: &str) -> bool {
        if self.raised.contains(key) {
            return false;
        }
        if self.raised.len() >= self.cfg.max_tracked {
            self.raised.clear();
            self.counters.tracking_resets += 1;
        }
        self.raised.insert(key.to_string());
        true
    }

    fn remember_port(&mut self, port: (Option<IpAddr>, u16), tls: bool) {
        let set = if tls {
            &mut self.tls_ports
        } else {
            &mut self.plaintext_ports
        };
        if set.contains(&port) {
            return;
        }
        if set.len() >= self.cfg.max_tracked {
            set.clear();
            self.counters.tracking_resets += 1;
        }
        set.insert(port);
    }
}

/// What makes two findings about a server the same: its address. The client's and the server's
/// sockets of one connection on this host name the same address, so the two views raise one
/// finding; without an address the process stands in.
fn server_key(server: &ServerRef) -> String {
    match server.addr {
        Some(a) => a.to_string(),
        None => format!("? {}", server.process.as_deref().unwrap_or("")),
    }
}
