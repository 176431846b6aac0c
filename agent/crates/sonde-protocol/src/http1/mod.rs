//! HTTP/1.x connections: two direction parsers and the pairing of requests with responses.
//!
//! Responses carry no request id; they answer requests in order. The pairing therefore only
//! trusts the order while both directions are in sync. When a direction loses its place (a gap
//! outside a body of known length, a parse error, a mid-stream join, a timeout) some messages
//! may have vanished without trace, so the pairing stops pairing: requests are emitted without a
//! response and responses are dropped (both counted) until the connection is quiescent again
//! (no request waiting, no response in flight, every unpaired request answered, and the next
//! request starts after the last response ended). A wrong pairing is worse than a missing one.

pub(crate) mod head;
pub(crate) mod parser;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use sonde_model::{
    Body, ConnMeta, Direction, Exchange, ExchangeFlags, Header, HttpVersion, Request, Response,
};

use crate::body::{BodyAcc, DecodeStats, SampleLimits};
use crate::config::TrackerConfig;
use crate::stats::TrackerStats;
use head::{Head, HeadLimits, Kind};
use parser::{BodyPlan, DirParser, Handler};

/// A protocol switch decided by a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    /// `101 Switching Protocols` to `h2c`: the connection continues as HTTP/2.
    H2c,
    /// Any other upgrade (WebSocket, ...) or a CONNECT tunnel.
    Opaque,
}

/// A request with whatever of its response has been seen.
#[derive(Debug)]
struct Pending {
    request: Request,
    version: HttpVersion,
    req_body: Option<BodyAcc>,
    req_done: bool,
    response: Option<Response>,
    resp_body: Option<BodyAcc>,
    resp_started: bool,
    resp_done: bool,
    flags: ExchangeFlags,
    is_head: bool,
    is_connect: bool,
    upgrade: Option<String>,
    expect_continue: bool,
    /// Answered `101` to h2c: kept for the HTTP/2 decoder (stream 1), never emitted here.
    h2c: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqTarget {
    None,
    /// The request being parsed is the last queue entry.
    Queued,
    /// The request being parsed cannot be paired; it is emitted without a response.
    Unpaired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespTarget {
    None,
    /// The response belongs to the first queue entry without a finished response.
    Queued,
    /// An interim (1xx) response: not stored.
    Interim,
    /// Nothing to pair it with: parsed to skip it, then dropped.
    Discard,
}

#[derive(Debug)]
struct Pairing {
    meta: Arc<ConnMeta>,
    queue: VecDeque<Pending>,
    unpaired: Option<Pending>,
    req_target: ReqTarget,
    resp_target: RespTarget,
    /// Pairing is suspended until the connection is quiescent.
    barrier: bool,
    /// Requests emitted without a response whose responses may still arrive.
    unanswered: u64,
    last_resp_end_ts: u64,
    last_ts: u64,
    /// Verdict for a held Upgrade/CONNECT request: true when the protocol switched.
    held_verdict: Option<bool>,
    switch: Option<Switch>,
}

/// Everything the handler callbacks need besides the pairing state.
struct Ctx<'a> {
    p: &'a mut Pairing,
    cfg: &'a TrackerConfig,
    stats: &'a mut TrackerStats,
    out: &'a mut Vec<Exchange>,
}

/// One HTTP/1.x connection.
#[derive(Debug)]
pub(crate) struct Http1Conn {
    request_dir: Direction,
    req: DirParser,
    resp: DirParser,
    pairing: Pairing,
    /// Request-direction bytes held when an h2c switch happened (already HTTP/2).
    switch_held: Bytes,
}

impl Http1Conn {
    pub fn new(meta: Arc<ConnMeta>, request_dir: Direction, cfg: &TrackerConfig) -> Http1Conn {
        let limits = HeadLimits {
            max_headers: cfg.max_headers,
            max_value_bytes: cfg.max_header_value_bytes,
        };
        Http1Conn {
            request_dir,
            req: DirParser::new(Kind::Request, limits, cfg.max_head_bytes),
            resp: DirParser::new(Kind::Response, limits, cfg.max_head_bytes),
            pairing: Pairing {
                meta,
                queue: VecDeque::new(),
                unpaired: None,
                req_target: ReqTarget::None,
                resp_target: RespTarget::None,
                barrier: false,
                unanswered: 0,
                last_resp_end_ts: 0,
                last_ts: 0,
                held_verdict: None,
                switch: None,
            },
            switch_held: Bytes::new(),
        }
    }

    pub fn request_dir(&self) -> Direction {
        self.request_dir
    }

    /// After an h2c switch: the upgraded request (it becomes HTTP/2 stream 1, its `101` is
    /// dropped) and the request-direction bytes that followed it, already HTTP/2.
    pub fn take_upgrade(
        &mut self,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
    ) -> (Option<Request>, Bytes) {
        let held = std::mem::take(&mut self.switch_held);
        let at = self.pairing.queue.iter().position(|p| p.h2c);
        let Some(mut p) = at.and_then(|i| self.pairing.queue.remove(i)) else {
            return (None, held);
        };
        if let Some(acc) = p.req_body.take() {
            let limits = SampleLimits {
                decoded: cfg.body_sample_bytes,
                wire: cfg.body_wire_sample_bytes,
            };
            let mut decode = DecodeStats::default();
            p.request.body = acc.finish(limits, p.req_done, &mut decode);
            stats.bodies_decoded += decode.decoded;
            stats.decode_errors += decode.errors;
        }
        (Some(p.request), held)
    }

    /// Joined mid-stream: both directions look for a start line first and pairing waits for
    /// quiescence.
    pub fn start_lost(&mut self) {
        self.req.start_lost();
        self.resp.start_lost();
        self.pairing.barrier = true;
    }

    pub fn set_meta(&mut self, meta: Arc<ConnMeta>) {
        self.pairing.meta = meta;
    }

    /// Bytes ignored by both parsers (tunnels).
    pub fn ignored_bytes(&self) -> u64 {
        self.req.ignored_bytes + self.resp.ignored_bytes
    }

    /// Bytes this connection holds: parser buffers, field text and body samples of the
    /// requests waiting for their response. An estimate for the global budget.
    pub fn state_bytes(&self) -> usize {
        const PER_FIELD: usize = 48;
        let fields = |hs: &[Header]| -> usize {
            hs.iter()
                .map(|h| h.name.len() + h.value.len() + PER_FIELD)
                .sum()
        };
        let pending = |p: &Pending| -> usize {
            std::mem::size_of::<Pending>()
                + fields(&p.request.headers)
                + fields(&p.request.trailers)
                + p.request.path.len()
                + p.request.query.as_ref().map_or(0, String::len)
                + p.req_body.as_ref().map_or(0, BodyAcc::kept)
                + p.resp_body.as_ref().map_or(0, BodyAcc::kept)
                + p.response
                    .as_ref()
                    .map_or(0, |r| fields(&r.headers) + fields(&r.trailers))
        };
        self.req.buffer_capacity()
            + self.resp.buffer_capacity()
            + self.pairing.queue.iter().map(pending).sum::<usize>()
            + self.pairing.unpaired.as_ref().map_or(0, pending)
    }

    /// Feeds bytes of one direction. Returns a protocol switch when one happened, with the rest
    /// of the delivery (bytes of the new protocol).
    pub fn data(
        &mut self,
        dir: Direction,
        bytes: Bytes,
        ts_ns: u64,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) -> Option<(Switch, Bytes)> {
        self.pairing.last_ts = self.pairing.last_ts.max(ts_ns);
        let mut rest = bytes;
        loop {
            let mut ctx = Ctx {
                p: &mut self.pairing,
                cfg,
                stats,
                out,
            };
            let parser = if dir == self.request_dir {
                &mut self.req
            } else {
                &mut self.resp
            };
            let n = parser.feed(&rest, ts_ns, &mut ctx);
            if let Some(switch) = self.settle(ts_ns, cfg, stats, out) {
                return Some((switch, rest.slice(n.min(rest.len())..)));
            }
            if n >= rest.len() {
                return None;
            }
            rest = rest.slice(n..);
        }
    }

    pub fn gap(
        &mut self,
        dir: Direction,
        len: u64,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) -> Option<(Switch, Bytes)> {
        let ts_ns = self.pairing.last_ts;
        let mut ctx = Ctx {
            p: &mut self.pairing,
            cfg,
            stats,
            out,
        };
        if dir == self.request_dir {
            self.req.gap(len, ts_ns, &mut ctx);
        } else {
            self.resp.gap(len, ts_ns, &mut ctx);
        }
        self.settle(ts_ns, cfg, stats, out)
            .map(|s| (s, Bytes::new()))
    }

    /// Applies a held request's verdict and reports a switch.
    fn settle(
        &mut self,
        ts_ns: u64,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) -> Option<Switch> {
        if self.pairing.switch == Some(Switch::H2c) && self.pairing.held_verdict == Some(true) {
            // Taken before the release below turns the request side into a tunnel.
            self.switch_held = self.req.take_held();
        }
        if let Some(switched) = self.pairing.held_verdict.take() {
            let mut ctx = Ctx {
                p: &mut self.pairing,
                cfg,
                stats,
                out,
            };
            self.req.release(switched, ts_ns, &mut ctx);
        }
        let switch = self.pairing.switch.take();
        if switch.is_some() {
            self.req.tunnel();
            self.resp.tunnel();
        }
        switch
    }

    /// End of the connection: finishes what can be finished and emits everything pending.
    pub fn close(
        &mut self,
        ts_ns: u64,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let mut ctx = Ctx {
            p: &mut self.pairing,
            cfg,
            stats,
            out,
        };
        self.resp.close(ts_ns, &mut ctx);
        self.req.close(ts_ns, &mut ctx);
        if let Some(p) = ctx.p.unpaired.take() {
            ctx.emit(p, ExchangeFlags::TRUNCATED);
        }
        while let Some(p) = ctx.p.queue.pop_front() {
            let extra = if p.req_done {
                0
            } else {
                ExchangeFlags::TRUNCATED
            };
            ctx.emit(p, extra);
        }
    }

    /// Emits requests whose response did not start within the timeout.
    pub fn tick(
        &mut self,
        now_ns: u64,
        cfg: &TrackerConfig,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let deadline = now_ns.saturating_sub(cfg.response_timeout_ns);
        let mut ctx = Ctx {
            p: &mut self.pairing,
            cfg,
            stats,
            out,
        };
        let timed_out = ctx
            .p
            .queue
            .front()
            .is_some_and(|f| f.req_done && !f.resp_started && f.request.ts_end_ns < deadline);
        if timed_out {
            let n = ctx.flush_unanswered();
            ctx.stats.response_timeouts += n;
        }
        // Responses owed to unpaired requests that never came: after a quiet timeout nothing is
        // in flight any more, so pairing may resume.
        if ctx.p.unanswered > 0 && ctx.p.last_ts < deadline && ctx.p.queue.is_empty() {
            ctx.p.unanswered = 0;
        }
    }
}

impl Ctx<'_> {
    fn limits(&self) -> SampleLimits {
        SampleLimits {
            decoded: self.cfg.body_sample_bytes,
            wire: self.cfg.body_wire_sample_bytes,
        }
    }

    /// Emits every queued request that has not started its response, without one, and
    /// suspends pairing. Returns how many were emitted.
    fn flush_unanswered(&mut self) -> u64 {
        let mut n = 0;
        let mut kept = VecDeque::new();
        while let Some(mut p) = self.p.queue.pop_front() {
            if p.resp_started {
                kept.push_back(p);
                continue;
            }
            n += 1;
            if p.req_done {
                self.emit(p, 0);
            } else {
                // Still receiving the request: emit it when it ends.
                p.resp_done = true;
                kept.push_back(p);
            }
        }
        self.p.queue = kept;
        if self.p.req_target == ReqTarget::Queued && self.p.queue.back().is_none_or(|b| b.req_done)
        {
            self.p.req_target = ReqTarget::None;
        }
        self.p.unanswered += n;
        self.p.barrier = true;
        n
    }

    fn emit(&mut self, mut p: Pending, extra_flags: u32) {
        let limits = self.limits();
        let mut decode = DecodeStats::default();
        let mut flags = p.flags;
        flags.insert(extra_flags);
        if let Some(acc) = p.req_body.take() {
            if acc.has_gap() {
                flags.insert(ExchangeFlags::GAP | ExchangeFlags::TRUNCATED);
            }
            p.request.body = acc.finish(limits, p.req_done, &mut decode);
        }
        if let Some(acc) = p.resp_body.take() {
            if acc.has_gap() {
                flags.insert(ExchangeFlags::GAP | ExchangeFlags::TRUNCATED);
            }
            let done = p.resp_done;
            if let Some(resp) = p.response.as_mut() {
                resp.body = acc.finish(limits, done, &mut decode);
            }
        }
        if p.response.is_none() {
            flags.insert(ExchangeFlags::RESPONSE_MISSING);
            self.stats.responses_missing += 1;
        }
        self.stats.bodies_decoded += decode.decoded;
        self.stats.decode_errors += decode.errors;
        self.stats.exchanges += 1;
        self.out.push(Exchange {
            conn: self.p.meta.clone(),
            version: p.version,
            stream_id: None,
            request: p.request,
            response: p.response,
            grpc: None,
            flags,
        });
    }

    /// Emits finished exchanges from the front of the queue.
    fn drain(&mut self) {
        while self
            .p
            .queue
            .front()
            .is_some_and(|f| f.req_done && f.resp_done && !f.h2c)
        {
            if let Some(p) = self.p.queue.pop_front() {
                self.emit(p, 0);
            }
        }
    }

    fn current_request(&mut self) -> Option<&mut Pending> {
        match self.p.req_target {
            ReqTarget::Queued => self.p.queue.back_mut(),
            ReqTarget::Unpaired => self.p.unpaired.as_mut(),
            ReqTarget::None => None,
        }
    }

    fn current_response(&mut self) -> Option<&mut Pending> {
        match self.p.resp_target {
            RespTarget::Queued => self.p.queue.iter_mut().find(|p| !p.resp_done),
            _ => None,
        }
    }

    fn request_head(&mut self, head: Head, ts_ns: u64, resynced: bool) -> BodyPlan {
        self.stats.requests += 1;
        let mut flags = message_flags(&head, resynced, self.stats);
        let (path, query, authority) = split_target(&head);
        let is_connect = head.method.eq_ignore_ascii_case("CONNECT");
        let pending = Pending {
            request: Request {
                method: head.method,
                authority,
                path,
                query,
                headers: head.headers,
                trailers: Vec::new(),
                body: Body::default(),
                ts_start_ns: ts_ns,
                ts_end_ns: ts_ns,
            },
            version: head.version.unwrap_or(HttpVersion::Http11),
            req_body: Some(BodyAcc::new(
                head.content_length,
                head.content_encoding,
                self.limits(),
            )),
            req_done: false,
            response: None,
            resp_body: None,
            resp_started: false,
            resp_done: false,
            flags: ExchangeFlags::default(),
            is_head: false,
            is_connect,
            upgrade: head.upgrade,
            expect_continue: head.expect_continue,
            h2c: false,
        };
        let mut pending = pending;
        pending.is_head = pending.request.method.eq_ignore_ascii_case("HEAD");

        let p = &mut *self.p;
        if p.barrier
            && p.queue.is_empty()
            && p.resp_target == RespTarget::None
            && p.unanswered == 0
            && ts_ns >= p.last_resp_end_ts
        {
            p.barrier = false;
        }
        if !p.barrier && p.queue.len() >= self.cfg.max_pipelined {
            let n = self.flush_unanswered();
            self.stats.pipeline_overflows += n;
        }
        let p = &mut *self.p;
        if p.barrier {
            flags.insert(ExchangeFlags::RESYNCED);
            pending.flags = flags;
            p.unanswered += 1;
            if let Some(old) = p.unpaired.replace(pending) {
                self.emit(old, ExchangeFlags::TRUNCATED);
            }
            self.p.req_target = ReqTarget::Unpaired;
        } else {
            pending.flags = flags;
            p.queue.push_back(pending);
            p.req_target = ReqTarget::Queued;
        }
        // What follows a CONNECT request is tunnel data (or the next request if refused).
        if is_connect {
            BodyPlan::NoBody
        } else {
            BodyPlan::Framed
        }
    }

    fn response_head(&mut self, head: Head, ts_ns: u64, resynced: bool) -> BodyPlan {
        self.stats.responses += 1;
        let status = head.status;
        let limits = self.limits();
        let flags = message_flags(&head, resynced, self.stats);
        let target = self.p.queue.iter_mut().find(|p| !p.resp_done);
        if (100..200).contains(&status) {
            self.p.resp_target = RespTarget::Interim;
            let Some(target) = target else {
                return BodyPlan::NoBody;
            };
            if status == 101 && target.upgrade.is_some() {
                let switch = if target.upgrade.as_deref() == Some("h2c") {
                    Switch::H2c
                } else {
                    Switch::Opaque
                };
                target.flags.insert(ExchangeFlags::UPGRADED | flags.0);
                target.h2c = switch == Switch::H2c;
                target.resp_started = true;
                target.response = Some(response_from(head, ts_ns));
                self.p.resp_target = RespTarget::Queued;
                self.p.held_verdict = Some(true);
                self.p.switch = Some(switch);
                self.stats.upgrades += 1;
                return BodyPlan::Tunnel;
            }
            if status == 100 {
                target.flags.insert(ExchangeFlags::CONTINUED);
            }
            return BodyPlan::NoBody;
        }
        let Some(target) = target else {
            self.p.resp_target = RespTarget::Discard;
            self.p.unanswered = self.p.unanswered.saturating_sub(1);
            self.stats.responses_unpaired += 1;
            return if status == 204 || status == 304 {
                BodyPlan::NoBody
            } else {
                BodyPlan::Framed
            };
        };
        target.flags.insert(flags.0);
        target.resp_started = true;
        let is_head = target.is_head;
        let held = target.is_connect || target.upgrade.is_some();
        let connect_ok = target.is_connect && (200..300).contains(&status);
        let body = BodyAcc::new(head.content_length, head.content_encoding.clone(), limits);
        target.resp_body = Some(body);
        target.response = Some(response_from(head, ts_ns));
        self.p.resp_target = RespTarget::Queued;
        if held {
            self.p.held_verdict = Some(connect_ok);
        }
        if connect_ok {
            target.flags.insert(ExchangeFlags::UPGRADED);
            self.p.switch = Some(Switch::Opaque);
            self.stats.upgrades += 1;
            return BodyPlan::Tunnel;
        }
        if is_head || status == 204 || status == 304 {
            return BodyPlan::NoBody;
        }
        BodyPlan::Framed
    }
}

fn message_flags(head: &Head, resynced: bool, stats: &mut TrackerStats) -> ExchangeFlags {
    let mut flags = ExchangeFlags::default();
    if resynced {
        flags.insert(ExchangeFlags::RESYNCED);
    }
    if head.ambiguous_framing {
        flags.insert(ExchangeFlags::SMUGGLING);
        stats.smuggling += 1;
    }
    if head.cut {
        flags.insert(ExchangeFlags::HEADERS_CUT);
    }
    if head.salvaged {
        // Recovered, but the head was not valid: counted as a parse error too.
        stats.heads_salvaged += 1;
        stats.parse_errors += 1;
    }
    flags
}

fn response_from(head: Head, ts_ns: u64) -> Response {
    Response {
        status: head.status,
        reason: head.reason,
        headers: head.headers,
        trailers: Vec::new(),
        body: Body::default(),
        ts_start_ns: ts_ns,
        ts_end_ns: ts_ns,
    }
}

/// Path, query and authority of a request target in any of its four forms (RFC 9112 3.2).
fn split_target(head: &Head) -> (String, Option<String>, Option<String>) {
    let target = head.target.as_str();
    let mut authority = head.host.clone();
    let path_and_query = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Absolute form: the authority is in the target, up to the path, query or fragment.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let auth = &rest[..end];
        if authority.is_none() && !auth.is_empty() {
            authority = Some(auth.to_owned());
        }
        let tail = &rest[end..];
        if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        }
    } else {
        if head.method.eq_ignore_ascii_case("CONNECT") && authority.is_none() {
            authority = Some(target.to_owned());
        }
        target.to_owned()
    };
    match path_and_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned()), authority),
        None => (path_and_query.to_owned(), None, authority),
    }
}

impl Handler for Ctx<'_> {
    fn on_head(&mut self, kind: Kind, head: Head, ts_ns: u64, resynced: bool) -> BodyPlan {
        match kind {
            Kind::Request => self.request_head(head, ts_ns, resynced),
            Kind::Response => self.response_head(head, ts_ns, resynced),
        }
    }

    fn on_body(&mut self, kind: Kind, bytes: &Bytes) {
        let target = match kind {
            Kind::Request => self.current_request(),
            Kind::Response => self.current_response(),
        };
        let Some(target) = target else { return };
        let acc = match kind {
            Kind::Request => target.req_body.as_mut(),
            Kind::Response => target.resp_body.as_mut(),
        };
        if let Some(acc) = acc {
            acc.data(bytes);
        }
    }

    fn on_body_gap(&mut self, kind: Kind, len: u64) {
        let target = match kind {
            Kind::Request => self.current_request(),
            Kind::Response => self.current_response(),
        };
        let Some(target) = target else { return };
        target.flags.insert(ExchangeFlags::GAP);
        let acc = match kind {
            Kind::Request => target.req_body.as_mut(),
            Kind::Response => target.resp_body.as_mut(),
        };
        if let Some(acc) = acc {
            acc.gap(len);
        }
    }

    fn on_trailers(&mut self, kind: Kind, trailers: Vec<Header>, cut: bool) {
        match kind {
            Kind::Request => {
                if let Some(t) = self.current_request() {
                    if cut {
                        t.flags.insert(ExchangeFlags::HEADERS_CUT);
                    }
                    t.request.trailers = trailers;
                }
            }
            Kind::Response => {
                if let Some(t) = self.current_response() {
                    if cut {
                        t.flags.insert(ExchangeFlags::HEADERS_CUT);
                    }
                    if let Some(r) = t.response.as_mut() {
                        r.trailers = trailers;
                    }
                }
            }
        }
    }

    fn on_end(&mut self, kind: Kind, ts_ns: u64, complete: bool) {
        match kind {
            Kind::Request => {
                let target = self.p.req_target;
                self.p.req_target = ReqTarget::None;
                match target {
                    ReqTarget::Unpaired => {
                        if let Some(mut p) = self.p.unpaired.take() {
                            p.request.ts_end_ns = ts_ns;
                            p.req_done = true;
                            self.emit(
                                p,
                                if complete {
                                    0
                                } else {
                                    ExchangeFlags::TRUNCATED
                                },
                            );
                        }
                    }
                    ReqTarget::Queued => {
                        if let Some(p) = self.p.queue.back_mut() {
                            p.request.ts_end_ns = ts_ns;
                            p.req_done = true;
                            if !complete {
                                p.flags.insert(ExchangeFlags::TRUNCATED);
                            }
                        }
                        self.drain();
                    }
                    ReqTarget::None => {}
                }
            }
            Kind::Response => {
                let target = self.p.resp_target;
                self.p.resp_target = RespTarget::None;
                match target {
                    RespTarget::Queued => {
                        if let Some(p) = self.p.queue.iter_mut().find(|p| !p.resp_done) {
                            p.resp_done = true;
                            if let Some(r) = p.response.as_mut() {
                                r.ts_end_ns = ts_ns;
                            }
                            if !complete {
                                p.flags.insert(ExchangeFlags::TRUNCATED);
                            }
                        }
                        self.p.last_resp_end_ts = ts_ns;
                        self.drain();
                    }
                    RespTarget::Discard => self.p.last_resp_end_ts = ts_ns,
                    RespTarget::Interim | RespTarget::None => {}
                }
            }
        }
    }

    fn on_desync(&mut self, kind: Kind) {
        self.stats.resyncs += 1;
        match kind {
            Kind::Request => {
                self.p.barrier = true;
                self.p.req_target = ReqTarget::None;
                if let Some(p) = self.p.unpaired.take() {
                    self.emit(p, ExchangeFlags::TRUNCATED | ExchangeFlags::GAP);
                }
            }
            Kind::Response => {
                // Responses may have been lost: nothing waiting can be paired safely any more.
                self.p.resp_target = RespTarget::None;
                for p in self.p.queue.iter_mut().filter(|p| !p.resp_done) {
                    p.resp_done = true;
                    p.flags.insert(ExchangeFlags::GAP);
                }
                self.p.barrier = true;
                self.drain();
            }
        }
    }

    fn on_parse_error(&mut self, _kind: Kind) {
        self.stats.parse_errors += 1;
        if self.stats.parse_errors.is_power_of_two() {
            tracing::debug!(
                conn = %self.p.meta.id,
                parse_errors = self.stats.parse_errors,
                "unparsable HTTP/1 data (logged at powers of two)"
            );
        }
    }

    fn on_resync_skipped(&mut self, _kind: Kind, bytes: u64) {
        self.stats.resync_skipped_bytes += bytes;
    }

    fn on_head_cut(&mut self, _kind: Kind) {
        self.stats.headers_cut += 1;
    }

    fn on_head_unfinished(&mut self, _kind: Kind, _bytes: u64) {
        self.stats.heads_unfinished += 1;
    }

    fn pause_requested(&self, kind: Kind) -> bool {
        kind == Kind::Response && self.p.held_verdict.is_some()
    }

    fn request_body_may_be_skipped(&self) -> bool {
        self.p.req_target == ReqTarget::Queued
            && self.p.queue.back().is_some_and(|p| {
                p.expect_continue
                    && p.resp_done
                    && !p.flags.contains(ExchangeFlags::CONTINUED)
                    && p.response.as_ref().is_some_and(|r| r.status >= 200)
            })
    }
}
