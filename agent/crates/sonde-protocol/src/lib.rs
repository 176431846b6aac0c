//! HTTP/1.x and HTTP/2 (gRPC) exchange reconstruction from reassembled byte streams.
//!
//! [`Tracker`] is what capture consumers call: it owns a [`sonde_stream::Assembler`], classifies
//! each connection on its first bytes (HTTP/1.x request or status line, HTTP/2 prior-knowledge
//! preface, h2c upgrade, or something else that is ignored cheaply) and emits one
//! [`Exchange`] per request with its response, or with `RESPONSE_MISSING` when none can be
//! paired with it safely.
//!
//! HTTP/2 connections are decoded by [`sonde_http2::Connection`]: from their first byte (the
//! client preface), after an h2c upgrade (the upgraded HTTP/1.1 request becomes stream 1), or
//! from the first frame boundary found when the connection is joined mid-stream (header fields
//! that refer to HPACK entries never seen are left out, never guessed).

mod body;
mod config;
mod http1;
mod http2;
mod stats;

use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use sonde_model::{CaptureEvent, ConnId, ConnMeta, Direction, Exchange};
use sonde_stream::{Assembler, StreamEvent};

pub use config::{ConfigError, TrackerConfig};
pub use stats::{Http2Totals, TrackerStats};

use http1::head::{Kind, is_plausible_start};
use http1::{Http1Conn, Switch};
use http2::{FrameScan, Http2Conn, scan_frames};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a direction's first line collected to classify a connection.
const MAX_DETECT_LINE: usize = 8192;
/// Bytes of a direction held while its HTTP/2 frames wait for the other direction to say
/// whether the connection is seen from its start (a client preface) or joined mid-stream.
const MAX_DETECT_FRAMES: usize = 64 << 10;

/// How an HTTP/2 connection was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http2Start {
    /// The client sent the preface first (prior knowledge, or TLS with ALPN h2).
    PriorKnowledge,
    /// An HTTP/1.1 `Upgrade: h2c` was accepted with `101`.
    H2cUpgrade,
    /// HTTP/2 frames without a preface: the connection was joined mid-stream.
    MidStream,
}

/// What a tracked connection has been recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnProtocol {
    /// Not classified yet (no complete first line seen).
    Detecting,
    Http1,
    Http2(Http2Start),
    /// Not HTTP; ignored.
    Other,
}

/// Per-connection protocol state.
#[derive(Debug)]
enum Protocol {
    /// No direction has been classified yet; first bytes are held (bounded) until one is.
    Detecting(Detector),
    Http1(Box<Http1Conn>),
    Http2(Box<Http2Conn>),
    /// Not HTTP: bytes are ignored.
    Other,
}

/// First bytes of each direction, held until the connection is classified.
#[derive(Debug, Default)]
struct Detector {
    held: [Vec<(Bytes, u64)>; 2],
    held_len: [usize; 2],
    /// The direction's first bytes were lost: look for a start line anywhere.
    joined: [bool; 2],
    /// Bytes looked at while joined mid-stream.
    scanned: u64,
    /// The direction has had data.
    started: [bool; 2],
    /// The direction's first bytes are HTTP/2 frames (no preface).
    frames: [bool; 2],
}

enum Verdict {
    Undecided,
    Http1 {
        request_dir: Direction,
        joined: bool,
    },
    /// The client preface.
    Http2,
    /// HTTP/2 frames without a preface in this direction (decided with the other direction).
    Frames,
    /// HTTP/2 joined mid-stream.
    Http2Late,
    Other,
}

#[derive(Debug)]
struct Conn {
    meta: Arc<ConnMeta>,
    proto: Protocol,
}

/// Reassembly plus protocol tracking for many connections.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    assembler: Assembler,
    conns: FxHashMap<ConnId, Conn>,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Result<Tracker, ConfigError> {
        cfg.validate()?;
        let assembler = Assembler::new(cfg.stream.clone())?;
        Ok(Tracker {
            cfg,
            assembler,
            conns: FxHashMap::default(),
            stats: TrackerStats::default(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Feeds one capture event; finished exchanges are appended to `out`.
    pub fn on_event(&mut self, ev: CaptureEvent, out: &mut Vec<Exchange>) {
        let Tracker {
            cfg,
            assembler,
            conns,
            stats,
        } = self;
        assembler.push(ev, &mut |sev| handle(cfg, conns, stats, sev, out));
    }

    /// Drives time: reorder and idle timeouts of the assembler, response timeouts of requests.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Exchange>) {
        let Tracker {
            cfg,
            assembler,
            conns,
            stats,
        } = self;
        assembler.tick(now_ns, &mut |sev| handle(cfg, conns, stats, sev, out));
        let mut sizes = Vec::new();
        let mut total = 0usize;
        for (id, conn) in conns.iter_mut() {
            let size = match &mut conn.proto {
                Protocol::Http1(h) => {
                    h.tick(now_ns, cfg, stats, out);
                    h.state_bytes()
                }
                Protocol::Detecting(d) => d.held_len[0] + d.held_len[1],
                Protocol::Http2(h) => {
                    h.tick(&conn.meta, now_ns, stats, out);
                    h.state_bytes()
                }
                Protocol::Other => 0,
            };
            total = total.saturating_add(size);
            if size > 0 {
                sizes.push((size, *id));
            }
        }
        if total > cfg.max_protocol_state_bytes {
            // Shed the biggest first: fewest connections lost for the memory regained.
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            for (size, id) in sizes {
                if total <= cfg.max_protocol_state_bytes {
                    break;
                }
                let Some(conn) = conns.get_mut(&id) else {
                    continue;
                };
                let first = out.len();
                match &mut conn.proto {
                    Protocol::Http1(h) => {
                        h.close(now_ns, cfg, stats, out);
                        stats.ignored_bytes += h.ignored_bytes();
                    }
                    Protocol::Http2(h) => h.close(&conn.meta, now_ns, stats, out),
                    Protocol::Detecting(_) | Protocol::Other => {}
                }
                for x in out.iter_mut().skip(first) {
                    x.flags.insert(sonde_model::ExchangeFlags::TRUNCATED);
                }
                conn.proto = Protocol::Other;
                stats.connections_shed += 1;
                total = total.saturating_sub(size);
                if stats.connections_shed.is_power_of_two() {
                    tracing::warn!(
                        conn = %id,
                        bytes = size,
                        shed = stats.connections_shed,
                        "protocol state over budget; shedding connection (logged at powers of two)"
                    );
                }
            }
        }
        stats.protocol_state_bytes = total as u64;
    }

    /// End of input: every connection is closed and everything pending emitted.
    pub fn flush(&mut self, out: &mut Vec<Exchange>) {
        let Tracker {
            cfg,
            assembler,
            conns,
            stats,
        } = self;
        assembler.flush(&mut |sev| handle(cfg, conns, stats, sev, out));
    }

    /// What a connection currently tracked has been recognised as.
    pub fn protocol(&self, conn: &ConnId) -> Option<ConnProtocol> {
        self.conns.get(conn).map(|c| match &c.proto {
            Protocol::Detecting(_) => ConnProtocol::Detecting,
            Protocol::Http1(_) => ConnProtocol::Http1,
            Protocol::Http2(h) => ConnProtocol::Http2(h.start),
            Protocol::Other => ConnProtocol::Other,
        })
    }

    pub fn stats(&self) -> TrackerStats {
        let mut s = self.stats;
        s.stream = self.assembler.counters();
        s.connections_open = self.conns.len() as u64;
        for c in self.conns.values() {
            if let Protocol::Http2(h) = &c.proto {
                s.http2.add(&h.conn.stats());
            }
        }
        s
    }
}

fn handle(
    cfg: &TrackerConfig,
    conns: &mut FxHashMap<ConnId, Conn>,
    stats: &mut TrackerStats,
    ev: StreamEvent,
    out: &mut Vec<Exchange>,
) {
    match ev {
        StreamEvent::Open(meta) => match conns.get_mut(&meta.id) {
            Some(conn) => {
                if let Protocol::Http1(h) = &mut conn.proto {
                    h.set_meta(meta.clone());
                }
                conn.meta = meta;
            }
            None => {
                conns.insert(
                    meta.id,
                    Conn {
                        meta,
                        proto: Protocol::Detecting(Detector::default()),
                    },
                );
            }
        },
        StreamEvent::Data {
            conn,
            dir,
            bytes,
            ts_ns,
            ..
        } => {
            let Some(c) = conns.get_mut(&conn) else {
                return;
            };
            on_data(c, dir, bytes, ts_ns, cfg, stats, out);
        }
        StreamEvent::Gap { conn, dir, len, .. } => {
            let Some(c) = conns.get_mut(&conn) else {
                return;
            };
            on_gap(c, dir, len, cfg, stats, out);
        }
        StreamEvent::Close { conn, ts_ns, .. } => {
            if let Some(mut c) = conns.remove(&conn) {
                match &mut c.proto {
                    Protocol::Http1(h) => {
                        h.close(ts_ns, cfg, stats, out);
                        stats.ignored_bytes += h.ignored_bytes();
                    }
                    Protocol::Http2(h) => h.close(&c.meta, ts_ns, stats, out),
                    Protocol::Detecting(_) | Protocol::Other => {}
                }
            }
        }
    }
}

fn on_data(
    conn: &mut Conn,
    dir: Direction,
    bytes: Bytes,
    ts_ns: u64,
    cfg: &TrackerConfig,
    stats: &mut TrackerStats,
    out: &mut Vec<Exchange>,
) {
    match &mut conn.proto {
        Protocol::Http1(h) => {
            if let Some((switch, leftover)) = h.data(dir, bytes, ts_ns, cfg, stats, out) {
                switch_protocol(conn, switch, leftover, ts_ns, cfg, stats, out);
            }
        }
        Protocol::Http2(h) => {
            h.data(&conn.meta, dir, &bytes, ts_ns, stats, out);
            if h.conn.is_abandoned() {
                abandon_http2(conn, ts_ns, stats, out);
            }
        }
        Protocol::Other => stats.ignored_bytes += bytes.len() as u64,
        Protocol::Detecting(d) => {
            let i = dir.index();
            d.held_len[i] += bytes.len();
            d.held[i].push((bytes, ts_ns));
            d.started[i] = true;
            let role_dir = conn.meta.role.request_direction();
            let verdict = match classify(d, dir, role_dir, cfg) {
                Verdict::Frames => {
                    d.frames[i] = true;
                    // A client seen from its start sends the preface first; a server's SETTINGS
                    // may come before the client's preface, so that waits for the client.
                    let other = dir.opposite().index();
                    if role_dir == Some(dir)
                        || d.started[other]
                        || d.held_len[i] > MAX_DETECT_FRAMES
                    {
                        Verdict::Http2Late
                    } else {
                        Verdict::Undecided
                    }
                }
                Verdict::Other if d.frames[dir.opposite().index()] => Verdict::Http2Late,
                v => v,
            };
            if let Verdict::Http1 { request_dir, .. } = verdict
                && conn
                    .meta
                    .role
                    .request_direction()
                    .is_some_and(|r| r != request_dir)
            {
                // The data disagrees with the socket's role: parse what the bytes say.
                stats.role_mismatches += 1;
            }
            decide(conn, verdict, cfg, stats, out);
        }
    }
}

fn on_gap(
    conn: &mut Conn,
    dir: Direction,
    len: u64,
    cfg: &TrackerConfig,
    stats: &mut TrackerStats,
    out: &mut Vec<Exchange>,
) {
    match &mut conn.proto {
        Protocol::Http1(h) => {
            if let Some((switch, leftover)) = h.gap(dir, len, cfg, stats, out) {
                let ts_ns = out.last().map_or(0, |x| x.request.ts_end_ns);
                switch_protocol(conn, switch, leftover, ts_ns, cfg, stats, out);
            }
        }
        Protocol::Http2(h) => h.gap(&conn.meta, dir, len, stats, out),
        Protocol::Other => stats.ignored_bytes = stats.ignored_bytes.saturating_add(len),
        Protocol::Detecting(d) => {
            // Held bytes of this direction are now followed by a hole: look anywhere instead.
            let i = dir.index();
            stats.resync_skipped_bytes += d.held_len[i] as u64;
            d.held[i].clear();
            d.held_len[i] = 0;
            d.joined[i] = true;
        }
    }
}

/// Leaves HTTP/1 after a switch; `leftover` is the rest of the response-side delivery that
/// switched, already in the new protocol (for h2c, the server's first HTTP/2 frames).
fn switch_protocol(
    conn: &mut Conn,
    switch: Switch,
    leftover: Bytes,
    ts_ns: u64,
    cfg: &TrackerConfig,
    stats: &mut TrackerStats,
    out: &mut Vec<Exchange>,
) {
    match switch {
        Switch::H2c => {
            let Protocol::Http1(h) = &mut conn.proto else {
                return;
            };
            let client_dir = h.request_dir();
            let (request, held) = h.take_upgrade(cfg, stats);
            // Nothing else is pending normally (a client waits for the 101); emit what is.
            h.close(ts_ns, cfg, stats, out);
            stats.ignored_bytes += h.ignored_bytes();
            let decoder = match request {
                Some(r) => sonde_http2::Connection::after_upgrade(
                    conn.meta.clone(),
                    &cfg.http2,
                    client_dir,
                    r,
                ),
                None => sonde_http2::Connection::new(conn.meta.clone(), &cfg.http2),
            };
            conn.proto = Protocol::Http2(Http2Conn::new(Http2Start::H2cUpgrade, decoder, stats));
            // The client's bytes held behind the upgrade request, then the server's rest.
            for (dir, bytes) in [(client_dir, held), (client_dir.opposite(), leftover)] {
                if !bytes.is_empty() {
                    on_data(conn, dir, bytes, ts_ns, cfg, stats, out);
                }
            }
        }
        // The HTTP/1 state stays, in tunnel mode, and counts what follows.
        Switch::Opaque => stats.ignored_bytes += leftover.len() as u64,
    }
}

/// The decoder gave up (too many invalid frames; it emitted its streams): drop its state.
fn abandon_http2(conn: &mut Conn, ts_ns: u64, stats: &mut TrackerStats, out: &mut Vec<Exchange>) {
    if let Protocol::Http2(h) = &mut conn.proto {
        h.close(&conn.meta, ts_ns, stats, out);
        tracing::debug!(conn = %conn.meta.id, "HTTP/2 decoding abandoned; ignoring the connection");
    }
    conn.proto = Protocol::Other;
}

/// Looks at the held first bytes of `dir` (the direction that just got data).
/// `role_dir`: the request direction the socket's role implies, when known.
fn classify(
    d: &mut Detector,
    dir: Direction,
    role_dir: Option<Direction>,
    cfg: &TrackerConfig,
) -> Verdict {
    let i = dir.index();
    if d.joined[i] {
        // Joined mid-stream: scan this delivery for a start line of either kind.
        let Some((last, _)) = d.held[i].last() else {
            return Verdict::Undecided;
        };
        d.scanned += last.len() as u64;
        // A delivery that starts on a frame boundary is HTTP/2; otherwise an HTTP/1 start line
        // anywhere, else a frame boundary anywhere.
        let frames = scan_frames(last, MAX_DETECT_FRAMES);
        let verdict = match frames {
            FrameScan::At(0) => Verdict::Http2Late,
            _ => match scan_for_start(last, dir, role_dir) {
                Verdict::Undecided if matches!(frames, FrameScan::At(_)) => Verdict::Http2Late,
                v => v,
            },
        };
        if matches!(verdict, Verdict::Undecided) {
            // Nothing to replay from a delivery without a start line.
            d.held[i].clear();
            d.held_len[i] = 0;
            if d.scanned > cfg.resync_scan_bytes {
                return Verdict::Other;
            }
        }
        return verdict;
    }
    let first = match d.held[i].first() {
        Some((b, _)) if d.held[i].len() == 1 => b.clone(),
        _ => {
            let mut joined = Vec::with_capacity(d.held_len[i]);
            for (b, _) in &d.held[i] {
                joined.extend_from_slice(b);
            }
            Bytes::from(joined)
        }
    };
    classify_start(&first, dir, d.held_len[i])
}

/// Classifies a direction from its very first bytes.
fn classify_start(first: &[u8], dir: Direction, held: usize) -> Verdict {
    // Empty lines before the first request line are tolerated (RFC 9112 section 2.2).
    let skip = first
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let first = &first[skip..];
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] {
        return if first.len() >= H2_PREFACE.len() {
            Verdict::Http2
        } else {
            Verdict::Undecided
        };
    }
    match first.first() {
        Some(b) if b.is_ascii_uppercase() => {}
        Some(_) => return frames_verdict(first, held),
        None => return Verdict::Undecided,
    }
    let Some(nl) = memchr::memchr(b'\n', first) else {
        return if held > MAX_DETECT_LINE {
            frames_verdict(first, held)
        } else {
            Verdict::Undecided
        };
    };
    let line = &first[..nl];
    if is_plausible_start(Kind::Request, line) {
        Verdict::Http1 {
            request_dir: dir,
            joined: false,
        }
    } else if is_plausible_start(Kind::Response, line) {
        Verdict::Http1 {
            request_dir: dir.opposite(),
            joined: false,
        }
    } else {
        frames_verdict(first, held)
    }
}

/// First bytes that are neither a preface nor HTTP/1: HTTP/2 frames of a connection joined
/// mid-stream (or a server's SETTINGS sent before the client's preface), or not HTTP.
fn frames_verdict(first: &[u8], held: usize) -> Verdict {
    match scan_frames(first, MAX_DETECT_FRAMES) {
        FrameScan::At(_) => Verdict::Frames,
        FrameScan::NeedMore if held <= MAX_DETECT_FRAMES => Verdict::Undecided,
        FrameScan::NeedMore | FrameScan::None => Verdict::Other,
    }
}

/// Looks for a start line anywhere in a delivery of a connection joined mid-stream. With the
/// role known, only the kind each direction should carry counts (a body that quotes a status
/// line on the request side is not taken for a response).
fn scan_for_start(buf: &[u8], dir: Direction, role_dir: Option<Direction>) -> Verdict {
    let (want_request, want_response) = match role_dir {
        Some(r) if r == dir => (true, false),
        Some(_) => (false, true),
        None => (true, true),
    };
    let mut start = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + i];
        if want_request && is_plausible_start(Kind::Request, line) {
            return Verdict::Http1 {
                request_dir: dir,
                joined: true,
            };
        }
        if want_response && is_plausible_start(Kind::Response, line) {
            return Verdict::Http1 {
                request_dir: dir.opposite(),
                joined: true,
            };
        }
        start += i + 1;
    }
    Verdict::Undecided
}

fn decide(
    conn: &mut Conn,
    verdict: Verdict,
    cfg: &TrackerConfig,
    stats: &mut TrackerStats,
    out: &mut Vec<Exchange>,
) {
    let held = match &mut conn.proto {
        Protocol::Detecting(d) => &mut d.held,
        _ => return,
    };
    match verdict {
        Verdict::Undecided | Verdict::Frames => {}
        Verdict::Other => {
            stats.non_http_connections += 1;
            stats.ignored_bytes += held
                .iter()
                .flatten()
                .map(|(b, _)| b.len() as u64)
                .sum::<u64>();
            if stats.non_http_connections.is_power_of_two() {
                tracing::debug!(
                    conn = %conn.meta.id,
                    non_http = stats.non_http_connections,
                    "connection is not HTTP; ignoring it (logged at powers of two)"
                );
            }
            conn.proto = Protocol::Other;
        }
        Verdict::Http2 | Verdict::Http2Late => {
            let [mut a, mut b] = std::mem::take(held).map(std::collections::VecDeque::from);
            let (start, decoder) = if matches!(verdict, Verdict::Http2) {
                let d = sonde_http2::Connection::new(conn.meta.clone(), &cfg.http2);
                (Http2Start::PriorKnowledge, d)
            } else {
                let d = sonde_http2::Connection::new_late(conn.meta.clone(), &cfg.http2);
                (Http2Start::MidStream, d)
            };
            conn.proto = Protocol::Http2(Http2Conn::new(start, decoder, stats));
            // Replay both directions in capture order (each direction's own order kept).
            let (da, db) = (Direction::Egress, Direction::Ingress);
            loop {
                let take_a = match (a.front(), b.front()) {
                    (Some((_, ta)), Some((_, tb))) => ta <= tb,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let (dir, item) = if take_a {
                    (da, a.pop_front())
                } else {
                    (db, b.pop_front())
                };
                if let Some((bytes, ts)) = item {
                    on_data(conn, dir, bytes, ts, cfg, stats, out);
                }
            }
        }
        Verdict::Http1 {
            request_dir,
            joined,
        } => {
            stats.http1_connections += 1;
            let mut held = std::mem::take(held);
            let mut h = Box::new(Http1Conn::new(conn.meta.clone(), request_dir, cfg));
            if joined {
                h.start_lost();
            }
            conn.proto = Protocol::Http1(h);
            // Replay what was held, requests first: a response cannot precede its request.
            // Each delivery goes wherever the connection is by then (a switch may happen).
            for dir in [request_dir, request_dir.opposite()] {
                for (bytes, ts) in std::mem::take(&mut held[dir.index()]) {
                    on_data(conn, dir, bytes, ts, cfg, stats, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
