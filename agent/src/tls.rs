//! The TLS stage: decides which connections carry TLS, keeps their handshake facts, feeds the
//! posture rules and judges which connections the agent cannot read.
//!
//! Syscall (and pcap) chunks of a connection whose first bytes are a TLS record
//! ([`sonde_tls::looks_like_tls_record`]) are ciphertext: they go to the handshake parser and
//! never to the HTTP parsers, which read that connection's plaintext from the TLS probes
//! (`Source::Tls`) instead.

use std::collections::hash_map::Entry;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use sonde_inventory::EndpointTls;
use sonde_model::{
    Anomaly, CaptureEvent, ConnId, ConnMeta, DataChunk, Exchange, HttpVersion, Role, Source,
};
use sonde_tls::{ParserCounters, PostureRules, ServerRef, TlsConnection, looks_like_tls_record};

use crate::blind::{BlindSpotConfig, BlindSpots};

/// Connections tracked at once; past it new connections pass straight to the HTTP stage
/// (counted), so a flood of connections cannot grow this table.
const MAX_TRACKED: usize = 65_536;
/// A connection without events for this long is forgotten (its close was never seen).
const IDLE_NS: u64 = 600 * 1_000_000_000;

/// Counters of the TLS stage.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TlsStageCounters {
    /// Connections whose syscall bytes are TLS records.
    pub tls_connections: u64,
    /// Of those, connections with plaintext from the TLS probes.
    pub tls_with_plaintext: u64,
    /// Connections without plaintext whose handshake never got a ServerHello (a refused or
    /// bogus handshake, such as TLS-looking bytes sent to a plain HTTP port): no session, so
    /// nothing was unreadable and no blind spot is reported.
    pub tls_without_session: u64,
    /// Ciphertext chunks kept away from the HTTP parsers.
    pub ciphertext_chunks: u64,
    /// Connections not tracked because the table was full.
    pub untracked_connections: u64,
    pub parser: ParserCounters,
}

#[derive(Debug)]
enum Kind {
    /// No payload seen yet on the syscall path.
    Undecided,
    /// Cleartext: the HTTP stage reads it.
    Plain,
    Tls(Box<TlsTrack>),
}

#[derive(Debug)]
struct TlsTrack {
    conn: TlsConnection,
    first_ns: u64,
    /// Syscall-side bytes (captured or not).
    bytes: u64,
    /// Offset expected next per direction (`None` before its first chunk): a jump is a gap
    /// (a dropped chunk), an overlap is skipped.
    next: [Option<u64>; 2],
    /// Judged: `Some(true)` blind, `Some(false)` readable.
    blind: Option<bool>,
    checked_hello: bool,
    checked_cert: bool,
}

#[derive(Debug)]
struct Track {
    role: Role,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    pid: u32,
    comm: Comm,
    kind: Kind,
    /// Plaintext from the TLS probes arrived for this connection.
    tls_source: bool,
    last_ns: u64,
}

/// A task name (`comm`, at most 15 bytes) kept inline: every connection has one, and an
/// allocation per connection is what the hot path avoids.
#[derive(Debug, Default, Clone, Copy)]
struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    fn new(s: &str) -> Comm {
        let mut c = Comm::default();
        // Cut at a character boundary within 16 bytes.
        let mut end = s.len().min(16);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        c.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        c.len = end as u8;
        c
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// See the module documentation.
pub struct TlsStage {
    conns: FxHashMap<ConnId, Track>,
    posture: PostureRules,
    blind: BlindSpots,
    closing: Vec<ConnId>,
    counters: TlsStageCounters,
}

impl TlsStage {
    pub fn new(posture: sonde_tls::PostureConfig, blind: BlindSpotConfig) -> TlsStage {
        TlsStage {
            conns: FxHashMap::default(),
            posture: PostureRules::new(posture),
            blind: BlindSpots::new(blind),
            closing: Vec::new(),
            counters: TlsStageCounters::default(),
        }
    }

    pub fn counters(&self) -> TlsStageCounters {
        let mut c = self.counters.clone();
        for t in self.conns.values() {
            if let Kind::Tls(t) = &t.kind {
                c.parser.add(&t.conn.counters());
            }
        }
        c
    }

    pub fn posture_counters(&self) -> &sonde_tls::PostureCounters {
        self.posture.counters()
    }

    pub fn blind_spots(&mut self) -> &crate::blind::BlindSpotReport {
        self.blind.report()
    }

    /// Looks at one capture event; true when the HTTP stage should see it too. Posture findings
    /// are appended to `out`.
    pub fn route(&mut self, ev: &CaptureEvent, out: &mut Vec<Anomaly>) -> bool {
        match ev {
            CaptureEvent::Open(o) => {
                if let Some(t) = self.track(o.conn, o.ts_ns) {
                    t.role = o.role;
                    t.local = o.local;
                    t.remote = o.remote;
                    t.pid = o.process.pid;
                    t.comm = Comm::new(&o.process.comm);
                }
                true
            }
            CaptureEvent::Data(d) if d.source == Source::Tls => {
                if let Some(t) = self.track(d.conn, d.ts_ns) {
                    t.tls_source = true;
                }
                true
            }
            CaptureEvent::Data(d) => self.ciphertext_or_http(d, out),
            CaptureEvent::Close(c) => {
                self.judge(c.conn);
                self.closing.push(c.conn);
                true
            }
        }
    }

    fn track(&mut self, id: ConnId, ts_ns: u64) -> Option<&mut Track> {
        track(&mut self.conns, &mut self.counters, id, ts_ns)
    }

    fn ciphertext_or_http(&mut self, d: &DataChunk, out: &mut Vec<Anomaly>) -> bool {
        let Some(t) = track(&mut self.conns, &mut self.counters, d.conn, d.ts_ns) else {
            return true;
        };
        if let Kind::Undecided = t.kind {
            if d.data.is_empty() {
                return true;
            }
            if !looks_like_tls_record(&d.data) {
                t.kind = Kind::Plain;
                return true;
            }
            t.kind = Kind::Tls(Box::new(TlsTrack {
                conn: TlsConnection::new(),
                first_ns: d.ts_ns,
                bytes: 0,
                // Seen from its first byte: both directions start at offset 0. Joined later:
                // each direction starts wherever its first chunk does.
                next: if d.offset == 0 {
                    [Some(0); 2]
                } else {
                    [None; 2]
                },
                blind: None,
                checked_hello: false,
                checked_cert: false,
            }));
            self.counters.tls_connections += 1;
            // Inspect the owner while it runs: a short-lived client may be gone at judgement.
            if d.conn.tgid != 0 {
                let pid = if t.pid != 0 { t.pid } else { d.conn.tgid };
                self.blind.prefetch(pid);
            }
        }
        let Kind::Tls(tls) = &mut t.kind else {
            return true;
        };
        self.counters.ciphertext_chunks += 1;
        let i = d.direction.index();
        let expected = tls.next[i].unwrap_or(d.offset);
        let mut data: &[u8] = &d.data;
        if d.offset > expected {
            tls.conn.gap(d.direction, d.offset - expected);
        } else if d.offset < expected {
            // Bytes already seen (a repeated chunk): only what lies past them is new.
            let seen = usize::try_from(expected - d.offset).unwrap_or(usize::MAX);
            data = data.get(seen..).unwrap_or_default();
        }
        tls.next[i] = Some(expected.max(d.end()));
        tls.conn.push(d.direction, data);
        if d.missing() > 0 && d.end() > expected {
            tls.conn
                .gap(d.direction, d.missing().min(d.end() - expected));
        }
        tls.bytes += d.len;
        if let Some(blind) = tls.blind {
            self.blind.more_bytes(t.pid, blind, d.len);
        }
        let session = &tls.conn.session;
        let new_hello = session.server_hello.is_some() && !tls.checked_hello;
        let new_cert = session.server_certificate.is_some() && !tls.checked_cert;
        if new_hello || new_cert {
            tls.checked_hello |= new_hello;
            tls.checked_cert |= new_cert;
            let server = tls_server(
                t.role,
                t.local,
                t.remote,
                t.comm.as_str(),
                d.conn.tgid,
                session,
            );
            self.posture.on_session(&server, session, d.ts_ns, out);
        }
        false
    }

    /// Decides whether a TLS connection is readable (plaintext arrived) or blind.
    fn judge(&mut self, id: ConnId) {
        let Some(t) = self.conns.get_mut(&id) else {
            return;
        };
        let Kind::Tls(tls) = &mut t.kind else {
            return;
        };
        if tls.blind.is_some() {
            return;
        }
        if !t.tls_source && tls.conn.session.server_hello.is_none() {
            tls.blind = Some(false);
            self.counters.tls_without_session += 1;
            return;
        }
        tls.blind = Some(!t.tls_source);
        tracing::debug!(
            conn = %id,
            readable = t.tls_source,
            client_hello = tls.conn.session.client_hello.is_some(),
            server_hello = tls.conn.session.server_hello.is_some(),
            certificate = tls.conn.session.server_certificate.is_some(),
            egress = ?tls.conn.direction(sonde_model::Direction::Egress).state(),
            ingress = ?tls.conn.direction(sonde_model::Direction::Ingress).state(),
            bytes = tls.bytes,
            "TLS connection judged"
        );
        if t.tls_source {
            self.counters.tls_with_plaintext += 1;
        }
        // A pcap has no processes: nothing to say about probes.
        if id.tgid != 0 {
            let pid = if t.pid != 0 { t.pid } else { id.tgid };
            self.blind
                .judged(pid, t.comm.as_str(), t.tls_source, tls.bytes);
        }
    }

    /// Drives time: connections past the grace period without plaintext are judged, idle ones
    /// forgotten.
    pub fn tick(&mut self, now_ns: u64) {
        let grace = self.blind.grace_ns();
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(id, t)| match &t.kind {
                Kind::Tls(tls)
                    if tls.blind.is_none() && now_ns.saturating_sub(tls.first_ns) >= grace =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for id in due {
            self.judge(id);
        }
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, t)| now_ns.saturating_sub(t.last_ns) > IDLE_NS)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.judge(id);
            self.forget(id);
        }
    }

    /// End of input: every TLS connection still open is judged.
    pub fn flush(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.judge(id);
        }
    }

    /// After the HTTP stage emitted the exchanges of a batch: closed connections are forgotten.
    pub fn end_batch(&mut self) {
        for id in std::mem::take(&mut self.closing) {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: ConnId) {
        if let Some(Track {
            kind: Kind::Tls(tls),
            ..
        }) = self.conns.remove(&id)
        {
            self.counters.parser.add(&tls.conn.counters());
        }
    }

    /// Whether an exchange travelled inside TLS, and the handshake's parameters when seen.
    pub fn exchange_tls(&self, ex: &Exchange) -> (bool, Option<EndpointTls>) {
        let Some(t) = self.conns.get(&ex.conn.id) else {
            return (false, None);
        };
        let Kind::Tls(tls) = &t.kind else {
            return (t.tls_source, None);
        };
        let s = &tls.conn.session;
        if s.client_hello.is_none() && s.server_hello.is_none() {
            return (true, None);
        }
        // TLS 1.3 hides the selected ALPN; the HTTP stage knows what was spoken.
        let offered_alpn = s.client_hello.as_ref().is_some_and(|c| !c.alpn.is_empty());
        let alpn = s.alpn().map(str::to_string).or_else(|| {
            offered_alpn.then(|| match ex.version {
                HttpVersion::Http2 => "h2".to_string(),
                HttpVersion::Http11 => "http/1.1".to_string(),
                HttpVersion::Http10 => "http/1.0".to_string(),
            })
        });
        (
            true,
            Some(EndpointTls {
                version: s.version().map(|v| v.name()),
                cipher: s.server_hello.as_ref().map(|h| h.cipher.name.clone()),
                alpn,
                sni: s.sni().map(str::to_string),
            }),
        )
    }

    /// Posture rules for an exchange that travelled in clear.
    pub fn plaintext_exchange(&mut self, ex: &Exchange, endpoint: &str, out: &mut Vec<Anomaly>) {
        let server = meta_server(&ex.conn);
        self.posture
            .on_plaintext_exchange(&server, ex, endpoint, out);
    }
}

/// The connection's entry, created on first sight unless the table is full.
fn track<'a>(
    conns: &'a mut FxHashMap<ConnId, Track>,
    counters: &mut TlsStageCounters,
    id: ConnId,
    ts_ns: u64,
) -> Option<&'a mut Track> {
    let full = conns.len() >= MAX_TRACKED;
    let t = match conns.entry(id) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(_) if full => {
            counters.untracked_connections += 1;
            return None;
        }
        Entry::Vacant(e) => e.insert(Track {
            role: Role::Unknown,
            local: None,
            remote: None,
            pid: id.tgid,
            comm: Comm::default(),
            kind: Kind::Undecided,
            tls_source: false,
            last_ns: ts_ns,
        }),
    };
    t.last_ns = t.last_ns.max(ts_ns);
    Some(t)
}

/// The server side of a connection as the HTTP stage saw it.
fn meta_server(meta: &ConnMeta) -> ServerRef {
    let local = meta.role == Role::Server && meta.id.tgid != 0;
    ServerRef {
        addr: meta.server_addr(),
        process: local.then(|| meta.process.comm.clone()),
        local,
    }
}

/// The server side of a TLS connection: the peer that did not send the ClientHello.
fn tls_server(
    role: Role,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    comm: &str,
    tgid: u32,
    session: &sonde_tls::TlsSession,
) -> ServerRef {
    let server_is_local = match session.client_direction {
        Some(sonde_model::Direction::Ingress) => true,
        Some(sonde_model::Direction::Egress) => false,
        None => role == Role::Server,
    };
    let live = tgid != 0;
    ServerRef {
        addr: if server_is_local { local } else { remote },
        process: (server_is_local && live && !comm.is_empty()).then(|| comm.to_string()),
        local: server_is_local && live,
    }
}
