//! One direction of an HTTP/1.x connection: finds message heads, frames bodies per RFC 9112
//! (Content-Length, chunked with extensions and trailers, read-until-close), survives gaps and
//! garbage by resynchronising on the next plausible start line, and reports what it sees to a
//! [`Handler`] that pairs requests with responses.

use bytes::{Bytes, BytesMut};
use sonde_model::Header;

pub(crate) use super::head::Head;
use super::head::{
    HeadLimits, Kind, find_head_end, is_plausible_start, parse_cut_head, parse_head, parse_trailers,
};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest partial line kept while looking for a start line.
const MAX_RESYNC_LINE: usize = 8192;

/// How the handler wants the body of a message treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyPlan {
    /// As the headers say.
    Framed,
    /// No body whatever the headers say (HEAD response, 1xx, 204, 304).
    NoBody,
    /// The message ends here and the direction stops being HTTP/1 (101, CONNECT 2xx).
    Tunnel,
}

/// Receives what a direction parser finds.
pub(crate) trait Handler {
    /// A head was parsed; the message starts. `resynced`: bytes were skipped to find it.
    fn on_head(&mut self, kind: Kind, head: Head, ts_ns: u64, resynced: bool) -> BodyPlan;
    fn on_body(&mut self, kind: Kind, bytes: &Bytes);
    fn on_body_gap(&mut self, kind: Kind, len: u64);
    fn on_trailers(&mut self, kind: Kind, trailers: Vec<Header>, cut: bool);
    /// The message ended; `complete` is false when it was cut short (gap, close, bad framing).
    fn on_end(&mut self, kind: Kind, ts_ns: u64, complete: bool);
    /// The direction lost its place outside any message it could finish: messages may have
    /// been lost without trace.
    fn on_desync(&mut self, kind: Kind);
    /// Counters the handler keeps for the parser.
    fn on_parse_error(&mut self, kind: Kind);
    fn on_resync_skipped(&mut self, kind: Kind, bytes: u64);
    fn on_head_cut(&mut self, kind: Kind);
    /// The direction ended inside a message head (the message is dropped, counted).
    fn on_head_unfinished(&mut self, kind: Kind, bytes: u64);
    /// Stop feeding for now: a decision the other direction needs was just taken.
    fn pause_requested(&self, kind: Kind) -> bool;
    /// The request being parsed announced a body behind `Expect: 100-continue`, and a final
    /// response came instead of `100`: the client may skip the body.
    fn request_body_may_be_skipped(&self) -> bool;
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    Size {
        value: u64,
        digits: u8,
        after_digits: bool,
        line: usize,
    },
    Data(u64),
    DataEnd {
        saw_cr: bool,
    },
    /// Trailer lines accumulate in the parser's buffer; `line` counts the current line.
    Trailers {
        line: usize,
        cut: bool,
    },
}

impl Chunk {
    const START: Chunk = Chunk::Size {
        value: 0,
        digits: 0,
        after_digits: false,
        line: 0,
    };
}

#[derive(Debug)]
enum State {
    /// At a message boundary.
    Start,
    /// A head is being collected in `buf`.
    Head,
    /// The head exceeded the size limit; skipping to its end. `lf` tracks the terminator:
    /// 1 after LF, 2 after LF CR.
    SkipHead {
        lf: u8,
        then: Option<Framing>,
    },
    Body(Framing),
    /// After an Upgrade or CONNECT request: later bytes wait in `buf` for the response to say
    /// whether the protocol switched.
    Held,
    /// No longer HTTP/1 (upgraded, tunnelled); bytes are ignored.
    Tunnel,
    /// Lost; looking for a start line. `buf` holds a partial line, `overlong` says the current
    /// line is too long to be one.
    Resync {
        overlong: bool,
    },
}

/// The parser of one direction.
#[derive(Debug)]
pub(crate) struct DirParser {
    kind: Kind,
    state: State,
    buf: BytesMut,
    limits: HeadLimits,
    max_head: usize,
    /// The next head was found by skipping bytes.
    resynced: bool,
    /// Hold the bytes after the current message (Upgrade/CONNECT request).
    hold_after: bool,
    in_message: bool,
    /// The held bytes lost a gap: they cannot be parsed if the switch is refused.
    held_gap: bool,
    /// Time of the first byte of the head being collected.
    head_ts: u64,
    /// Body bytes of the current message seen so far.
    body_seen: u64,
    /// Whether an announced-but-maybe-skipped body has been decided on.
    skip_decided: bool,
    /// Upgrade/CONNECT verdict received while the request was still being parsed.
    early_verdict: Option<bool>,
    pub ignored_bytes: u64,
}

impl DirParser {
    pub fn new(kind: Kind, limits: HeadLimits, max_head: usize) -> DirParser {
        DirParser {
            kind,
            state: State::Start,
            buf: BytesMut::new(),
            limits,
            max_head: max_head.max(256),
            resynced: false,
            hold_after: false,
            in_message: false,
            held_gap: false,
            head_ts: 0,
            body_seen: 0,
            skip_decided: false,
            early_verdict: None,
            ignored_bytes: 0,
        }
    }

    /// Starts in resync mode: the connection was joined mid-stream.
    pub fn start_lost(&mut self) {
        self.state = State::Resync { overlong: false };
        self.buf.clear();
    }

    /// Bytes allocated for this parser's buffer.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Stops parsing: the connection switched protocols.
    pub fn tunnel(&mut self) {
        self.ignored_bytes += self.buf.len() as u64;
        self.buf.clear();
        self.state = State::Tunnel;
    }

    /// The bytes held after an Upgrade request, taken before a switch to a protocol that is
    /// parsed further (h2c: the client's preface and first frames). Nothing when a gap fell
    /// among them.
    pub fn take_held(&mut self) -> Bytes {
        if matches!(self.state, State::Held) && !self.held_gap {
            std::mem::take(&mut self.buf).freeze()
        } else {
            Bytes::new()
        }
    }

    /// The response to a held (Upgrade/CONNECT) request arrived: switch to a tunnel, or go on
    /// parsing the held bytes as HTTP/1.
    pub fn release(&mut self, switched: bool, ts_ns: u64, h: &mut impl Handler) {
        if !matches!(self.state, State::Held) {
            // The verdict came before the request ended (its body is still streaming): apply
            // it when the request ends.
            if self.in_message && self.hold_after {
                self.early_verdict = Some(switched);
            }
            return;
        }
        if switched {
            self.tunnel();
            return;
        }
        let held = std::mem::take(&mut self.buf).freeze();
        if self.held_gap {
            self.held_gap = false;
            self.lose(h);
        } else {
            self.state = State::Start;
        }
        let mut rest = held;
        while !rest.is_empty() {
            let n = self.feed(&rest, ts_ns, h).max(1);
            rest = rest.slice(n.min(rest.len())..);
        }
    }

    /// Bytes of this direction, in order. Returns how many were consumed: fewer than all when
    /// the handler asked for a pause; the caller feeds the rest after acting on it.
    pub fn feed(&mut self, data: &Bytes, ts_ns: u64, h: &mut impl Handler) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            if pos > 0 && h.pause_requested(self.kind) {
                return pos;
            }
            pos = match self.state {
                State::Start => self.at_start(data, pos, ts_ns, h),
                State::Head => self.in_head(data, pos, ts_ns, h),
                State::SkipHead { lf, then } => self.skip_head(data, pos, lf, then, ts_ns, h),
                State::Body(framing) => self.in_body(data, pos, framing, ts_ns, h),
                State::Held => {
                    let room = self.max_head.saturating_sub(self.buf.len());
                    let rest = data.get(pos..).unwrap_or_default();
                    if rest.len() > room {
                        // Too much before the verdict: it is a tunnel in all likelihood.
                        self.ignored_bytes += rest.len() as u64;
                        self.tunnel();
                    } else {
                        self.buf.extend_from_slice(rest);
                    }
                    data.len()
                }
                State::Tunnel => {
                    self.ignored_bytes += (data.len() - pos) as u64;
                    data.len()
                }
                State::Resync { overlong } => self.resync(data, pos, overlong, ts_ns, h),
            };
        }
        data.len()
    }

    /// `len` bytes of this direction were not captured.
    pub fn gap(&mut self, len: u64, ts_ns: u64, h: &mut impl Handler) {
        if len == 0 {
            return;
        }
        match self.state {
            State::Body(Framing::Length(rem)) => {
                let covered = len.min(rem);
                h.on_body_gap(self.kind, covered);
                let rem = rem - covered;
                if rem == 0 {
                    self.end_message(ts_ns, true, h);
                    if len > covered {
                        self.lose(h);
                    }
                } else {
                    self.state = State::Body(Framing::Length(rem));
                }
            }
            State::Body(Framing::UntilClose) => h.on_body_gap(self.kind, len),
            State::Body(Framing::Chunked(Chunk::Data(rem))) if len <= rem => {
                h.on_body_gap(self.kind, len);
                let rem = rem - len;
                self.state = State::Body(Framing::Chunked(if rem == 0 {
                    Chunk::DataEnd { saw_cr: false }
                } else {
                    Chunk::Data(rem)
                }));
            }
            State::Body(_) | State::SkipHead { .. } => {
                h.on_body_gap(self.kind, len);
                self.end_message(ts_ns, false, h);
                self.lose(h);
            }
            State::Start | State::Head => {
                self.buf.clear();
                self.lose(h);
            }
            State::Held => self.held_gap = true,
            State::Tunnel => self.ignored_bytes = self.ignored_bytes.saturating_add(len),
            State::Resync { .. } => {
                h.on_resync_skipped(self.kind, self.buf.len() as u64);
                self.buf.clear();
                self.state = State::Resync { overlong: false };
            }
        }
    }

    /// End of the direction (connection closed or flushed).
    pub fn close(&mut self, ts_ns: u64, h: &mut impl Handler) {
        match self.state {
            State::Body(Framing::UntilClose) => self.end_message(ts_ns, true, h),
            _ if self.in_message => self.end_message(ts_ns, false, h),
            State::Head => h.on_head_unfinished(self.kind, self.buf.len() as u64),
            _ => {}
        }
        self.buf.clear();
        self.state = State::Tunnel;
    }

    fn lose(&mut self, h: &mut impl Handler) {
        self.in_message = false;
        self.hold_after = false;
        self.buf.clear();
        self.state = State::Resync { overlong: false };
        self.resynced = true;
        h.on_desync(self.kind);
    }

    fn end_message(&mut self, ts_ns: u64, complete: bool, h: &mut impl Handler) {
        if self.in_message {
            h.on_end(self.kind, ts_ns, complete);
        }
        self.in_message = false;
        self.buf.clear();
        self.state = match (self.hold_after && complete, self.early_verdict.take()) {
            (true, Some(true)) => State::Tunnel,
            (true, None) => State::Held,
            _ => State::Start,
        };
        self.hold_after = false;
    }

    fn at_start(
        &mut self,
        data: &Bytes,
        mut pos: usize,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        // Empty lines before a start line are tolerated (RFC 9112 section 2.2).
        while let Some(b'\r' | b'\n') = data.get(pos) {
            pos += 1;
        }
        let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) else {
            return data.len();
        };
        let window = rest.get(..self.max_head.min(rest.len())).unwrap_or(rest);
        if let Some(end) = find_head_end(window) {
            let head_bytes = &window[..end];
            self.complete_head(head_bytes, ts_ns, h);
            return pos + end;
        }
        if rest.len() >= self.max_head {
            let cut = &rest[..self.max_head];
            self.cut_head(cut, ts_ns, h);
            return pos + self.max_head;
        }
        self.buf.clear();
        self.buf.extend_from_slice(rest);
        self.state = State::Head;
        self.head_ts = ts_ns;
        data.len()
    }

    fn in_head(&mut self, data: &Bytes, pos: usize, _ts_ns: u64, h: &mut impl Handler) -> usize {
        let rest = data.get(pos..).unwrap_or_default();
        let room = self.max_head.saturating_sub(self.buf.len());
        let take = room.min(rest.len());
        let old = self.buf.len();
        self.buf.extend_from_slice(&rest[..take]);
        let from = old.saturating_sub(3);
        if let Some(end) = find_head_end(&self.buf[from..]).map(|e| e + from) {
            let head_bytes = std::mem::take(&mut self.buf);
            self.state = State::Start;
            let consumed = end.saturating_sub(old);
            let ts = self.head_ts;
            self.complete_head(&head_bytes[..end], ts, h);
            return pos + consumed;
        }
        if self.buf.len() >= self.max_head {
            let partial = std::mem::take(&mut self.buf);
            let ts = self.head_ts;
            self.cut_head(&partial, ts, h);
        }
        pos + take
    }

    /// A complete head: parse it, or skip its bad lines looking for a start line inside it.
    fn complete_head(&mut self, mut head_bytes: &[u8], ts_ns: u64, h: &mut impl Handler) {
        loop {
            match parse_head(self.kind, head_bytes, self.limits) {
                Ok(head) => {
                    if head.cut {
                        h.on_head_cut(self.kind);
                    }
                    self.begin_message(head, ts_ns, h);
                    return;
                }
                Err(_) => {
                    h.on_parse_error(self.kind);
                    let first_nl =
                        memchr::memchr(b'\n', head_bytes).map_or(head_bytes.len(), |p| p + 1);
                    match find_start_line(self.kind, &head_bytes[first_nl..]) {
                        Some(at) => {
                            h.on_resync_skipped(self.kind, (first_nl + at) as u64);
                            self.resynced = true;
                            head_bytes = &head_bytes[first_nl + at..];
                        }
                        None => {
                            h.on_resync_skipped(self.kind, head_bytes.len() as u64);
                            self.lose(h);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The head is longer than the limit: parse its complete lines, skip the rest of it.
    fn cut_head(&mut self, partial: &[u8], ts_ns: u64, h: &mut impl Handler) {
        h.on_head_cut(self.kind);
        match parse_cut_head(self.kind, partial, self.limits) {
            Ok(head) => {
                let lf = match partial.last() {
                    Some(b'\n') => 1,
                    _ => 0,
                };
                self.begin_message(head, ts_ns, h);
                // The body (if any) starts after the real end of the head.
                let then = match std::mem::replace(&mut self.state, State::Start) {
                    State::Body(f) => Some(f),
                    State::Tunnel => {
                        self.state = State::Tunnel;
                        return;
                    }
                    _ => None,
                };
                self.in_message = true;
                self.state = State::SkipHead { lf, then };
            }
            Err(_) => {
                h.on_parse_error(self.kind);
                h.on_resync_skipped(self.kind, partial.len() as u64);
                self.lose(h);
            }
        }
    }

    fn skip_head(
        &mut self,
        data: &Bytes,
        mut pos: usize,
        mut lf: u8,
        then: Option<Framing>,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        while pos < data.len() {
            if lf == 0 {
                match memchr::memchr(b'\n', &data[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        lf = 1;
                    }
                    None => {
                        pos = data.len();
                        break;
                    }
                }
                continue;
            }
            let b = data[pos];
            pos += 1;
            match (lf, b) {
                (1 | 2, b'\n') => {
                    match then {
                        Some(framing) => self.state = State::Body(framing),
                        None => self.end_message(ts_ns, true, h),
                    }
                    return pos;
                }
                (1, b'\r') => lf = 2,
                _ => lf = 0,
            }
        }
        self.state = State::SkipHead { lf, then };
        pos
    }

    fn begin_message(&mut self, head: Head, ts_ns: u64, h: &mut impl Handler) {
        let framing = match self.kind {
            _ if head.chunked => Some(Framing::Chunked(Chunk::START)),
            Kind::Request if head.transfer_encoding => None,
            Kind::Response if head.transfer_encoding => Some(Framing::UntilClose),
            _ if head.bad_content_length => match self.kind {
                Kind::Request => None,
                Kind::Response => Some(Framing::UntilClose),
            },
            _ => match (head.content_length, self.kind) {
                (Some(0), _) => None,
                (Some(n), _) => Some(Framing::Length(n)),
                (None, Kind::Request) => None,
                (None, Kind::Response) => Some(Framing::UntilClose),
            },
        };
        self.hold_after = self.kind == Kind::Request
            && (head.upgrade.is_some() || head.method.eq_ignore_ascii_case("CONNECT"));
        let resynced = std::mem::take(&mut self.resynced);
        self.in_message = true;
        self.body_seen = 0;
        self.skip_decided = false;
        match h.on_head(self.kind, head, ts_ns, resynced) {
            BodyPlan::Framed => match framing {
                Some(f) => self.state = State::Body(f),
                None => self.end_message(ts_ns, true, h),
            },
            BodyPlan::NoBody => self.end_message(ts_ns, true, h),
            BodyPlan::Tunnel => {
                self.end_message(ts_ns, true, h);
                self.tunnel();
            }
        }
    }

    fn in_body(
        &mut self,
        data: &Bytes,
        pos: usize,
        framing: Framing,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        let avail = (data.len() - pos) as u64;
        match framing {
            Framing::Length(rem) => {
                if self.kind == Kind::Request
                    && !self.skip_decided
                    && self.body_seen == 0
                    && h.request_body_may_be_skipped()
                {
                    return self.decide_skipped_body(data, pos, ts_ns, h);
                }
                let n = rem.min(avail);
                self.body_seen += n;
                // `n <= avail`, which fits in usize.
                let end = pos + n as usize;
                h.on_body(self.kind, &data.slice(pos..end));
                if rem == n {
                    self.end_message(ts_ns, true, h);
                } else {
                    self.state = State::Body(Framing::Length(rem - n));
                }
                end
            }
            Framing::UntilClose => {
                h.on_body(self.kind, &data.slice(pos..));
                data.len()
            }
            Framing::Chunked(chunk) => self.in_chunked(data, pos, chunk, ts_ns, h),
        }
    }

    /// After `Expect: 100-continue` and a final response, the first line after the head tells
    /// whether the client sent the body or went on with the next request. Bytes are held
    /// (bounded) until that line is complete, so the verdict does not depend on how the bytes
    /// were delivered.
    fn decide_skipped_body(
        &mut self,
        data: &Bytes,
        pos: usize,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        let rest = &data[pos..];
        let nl = memchr::memchr(b'\n', rest);
        let line_len = self.buf.len() + nl.unwrap_or(rest.len());
        if nl.is_none() && line_len <= MAX_RESYNC_LINE {
            self.buf.extend_from_slice(rest);
            return data.len();
        }
        let next_request = nl.is_some() && {
            let mut line = self.buf.to_vec();
            line.extend_from_slice(&rest[..nl.unwrap_or(0)]);
            is_plausible_start(Kind::Request, &line)
        };
        let held = std::mem::take(&mut self.buf).freeze();
        self.skip_decided = true;
        if next_request {
            self.end_message(ts_ns, true, h);
        }
        // The held bytes are either the start of the next request or the first body bytes:
        // parse them in the state just decided, then go on with the rest of `data`.
        let mut held = held;
        while !held.is_empty() {
            let n = self.feed(&held, ts_ns, h).max(1);
            held = held.slice(n.min(held.len())..);
        }
        pos
    }

    fn in_chunked(
        &mut self,
        data: &Bytes,
        mut pos: usize,
        mut chunk: Chunk,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        while pos < data.len() {
            chunk = match chunk {
                Chunk::Size {
                    mut value,
                    mut digits,
                    mut after_digits,
                    mut line,
                } => {
                    let b = data[pos];
                    pos += 1;
                    line += 1;
                    if line > MAX_CHUNK_LINE {
                        return self.framing_error(pos, ts_ns, h);
                    }
                    if b == b'\n' {
                        if digits == 0 {
                            return self.framing_error(pos, ts_ns, h);
                        }
                        if value == 0 {
                            self.buf.clear();
                            Chunk::Trailers {
                                line: 0,
                                cut: false,
                            }
                        } else {
                            Chunk::Data(value)
                        }
                    } else if after_digits {
                        // Extensions (`;name=value`) and trailing whitespace are skipped.
                        if let Some(i) = memchr::memchr(b'\n', &data[pos..]) {
                            let skip = i.min(MAX_CHUNK_LINE);
                            pos += skip;
                            line += skip;
                        } else {
                            line += data.len() - pos;
                            pos = data.len();
                        }
                        Chunk::Size {
                            value,
                            digits,
                            after_digits,
                            line,
                        }
                    } else if let Some(d) = hex_value(b) {
                        digits += 1;
                        if digits > 16 {
                            return self.framing_error(pos, ts_ns, h);
                        }
                        value = (value << 4) | u64::from(d);
                        Chunk::Size {
                            value,
                            digits,
                            after_digits,
                            line,
                        }
                    } else if matches!(b, b';' | b' ' | b'\t' | b'\r') && digits > 0 {
                        after_digits = true;
                        Chunk::Size {
                            value,
                            digits,
                            after_digits,
                            line,
                        }
                    } else {
                        return self.framing_error(pos, ts_ns, h);
                    }
                }
                Chunk::Data(rem) => {
                    let avail = (data.len() - pos) as u64;
                    let n = rem.min(avail);
                    let end = pos + n as usize;
                    h.on_body(self.kind, &data.slice(pos..end));
                    pos = end;
                    if rem == n {
                        Chunk::DataEnd { saw_cr: false }
                    } else {
                        Chunk::Data(rem - n)
                    }
                }
                Chunk::DataEnd { saw_cr } => {
                    let b = data[pos];
                    pos += 1;
                    match b {
                        b'\r' if !saw_cr => Chunk::DataEnd { saw_cr: true },
                        b'\n' => Chunk::START,
                        _ => return self.framing_error(pos, ts_ns, h),
                    }
                }
                Chunk::Trailers { mut line, mut cut } => {
                    let rest = &data[pos..];
                    match memchr::memchr(b'\n', rest) {
                        Some(i) => {
                            let piece = &rest[..=i];
                            pos += i + 1;
                            let content = line + i;
                            let empty =
                                content == 0 || (content == 1 && ends_with_cr(&self.buf, piece));
                            if empty {
                                if self.buf.last() == Some(&b'\r') {
                                    self.buf.truncate(self.buf.len() - 1);
                                }
                                let (trailers, bad) = parse_trailers(&self.buf, self.limits);
                                h.on_trailers(self.kind, trailers, cut || bad);
                                self.end_message(ts_ns, true, h);
                                return pos;
                            }
                            if self.buf.len() + piece.len() <= self.max_head {
                                self.buf.extend_from_slice(piece);
                            } else {
                                cut = true;
                            }
                            Chunk::Trailers { line: 0, cut }
                        }
                        None => {
                            if self.buf.len() + rest.len() <= self.max_head {
                                self.buf.extend_from_slice(rest);
                            } else {
                                cut = true;
                            }
                            line += rest.len();
                            pos = data.len();
                            Chunk::Trailers { line, cut }
                        }
                    }
                }
            };
        }
        self.state = State::Body(Framing::Chunked(chunk));
        pos
    }

    fn framing_error(&mut self, pos: usize, ts_ns: u64, h: &mut impl Handler) -> usize {
        h.on_parse_error(self.kind);
        self.end_message(ts_ns, false, h);
        self.lose(h);
        pos
    }

    fn resync(
        &mut self,
        data: &Bytes,
        mut pos: usize,
        mut overlong: bool,
        ts_ns: u64,
        h: &mut impl Handler,
    ) -> usize {
        if !self.buf.is_empty() || overlong {
            let rest = &data[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if !overlong && self.buf.len() + rest.len() <= MAX_RESYNC_LINE {
                    self.buf.extend_from_slice(rest);
                } else {
                    h.on_resync_skipped(self.kind, (self.buf.len() + rest.len()) as u64);
                    self.buf.clear();
                    overlong = true;
                }
                self.state = State::Resync { overlong };
                return data.len();
            };
            if !overlong && self.buf.len() + nl <= MAX_RESYNC_LINE {
                self.buf.extend_from_slice(&rest[..nl]);
                if is_plausible_start(self.kind, &self.buf) {
                    // The start line began in an earlier delivery: continue collecting the head.
                    self.buf.extend_from_slice(b"\n");
                    self.resynced = true;
                    self.state = State::Head;
                    self.head_ts = ts_ns;
                    return pos + nl + 1;
                }
                h.on_resync_skipped(self.kind, (self.buf.len() + 1) as u64);
            } else {
                h.on_resync_skipped(self.kind, (self.buf.len() + nl + 1) as u64);
            }
            self.buf.clear();
            overlong = false;
            pos += nl + 1;
        }
        let rest = &data[pos..];
        match find_start_line(self.kind, rest) {
            Some(at) => {
                h.on_resync_skipped(self.kind, at as u64);
                self.resynced = true;
                self.state = State::Start;
                pos + at
            }
            None => {
                // Keep the last partial line: a start line may continue in the next delivery.
                let tail_start = memchr::memrchr(b'\n', rest).map_or(0, |p| p + 1);
                let tail = &rest[tail_start..];
                h.on_resync_skipped(self.kind, tail_start as u64);
                if tail.len() <= MAX_RESYNC_LINE {
                    self.buf.extend_from_slice(tail);
                } else {
                    h.on_resync_skipped(self.kind, tail.len() as u64);
                    overlong = true;
                }
                self.state = State::Resync { overlong };
                data.len()
            }
        }
    }
}

/// Offset of the first complete line in `buf` that looks like a start line of `kind`.
fn find_start_line(kind: Kind, buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
        if is_plausible_start(kind, &buf[start..start + i]) {
            return Some(start);
        }
        start += i + 1;
    }
    None
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a one-byte trailer line (split or not) is a lone CR.
fn ends_with_cr(buf: &[u8], piece: &[u8]) -> bool {
    match piece {
        [b'\r', b'\n'] => true,
        [b'\n'] => buf.last() == Some(&b'\r'),
        _ => false,
    }
}
