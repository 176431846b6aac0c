//! One observed HTTP/2 connection: two frame readers, two HPACK decoders and the streams.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sonde_model::{
    ConnMeta, Direction, Exchange, ExchangeFlags, GrpcInfo, HttpVersion, Request, Response,
};
use tracing::debug;

use crate::config::Http2Config;
use crate::frame::{
    self, DEFAULT_MAX_FRAME_SIZE, Frame, FrameErrorKind, FrameHeader, HEADER_LEN,
    MAX_FRAME_SIZE_LIMIT, PREFACE, flags, kind, setting,
};
use crate::grpc;
use crate::hpack::Decoder;
use crate::message::{BlockFields, Message};
use crate::stats::Http2Stats;

/// Where a direction's reader stands.
#[derive(Debug)]
enum ReadState {
    /// Expecting (the rest of) the client preface. `optional`: the role is unknown, so anything
    /// other than a preface start means frames.
    Preface { matched: usize, optional: bool },
    /// Reading a frame header; `have` bytes of it are in `buf`.
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Buffering the payload of a non-DATA frame into `DirState::buf`.
    Payload { header: FrameHeader },
    /// Streaming the payload of a DATA frame; `offset` payload bytes consumed, `pad` once read.
    Data {
        header: FrameHeader,
        offset: u32,
        pad: Option<u8>,
    },
    /// Discarding the rest of a frame.
    Skip { remaining: u64 },
    /// Framing lost: looking for a plausible frame header. `DirState::buf` holds < 9 carry bytes.
    Resync,
}

#[derive(Debug, Clone, Copy)]
enum BlockKind {
    Headers { end_stream: bool },
    PushPromise { promised: u32 },
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    kind: BlockKind,
    buf: Vec<u8>,
    frames: u32,
    /// Limits were exceeded: the block is consumed but not decoded.
    overflow: bool,
}

#[derive(Debug)]
struct DirState {
    read: ReadState,
    hpack: Decoder,
    /// Largest frame this direction may send (the peer's SETTINGS_MAX_FRAME_SIZE).
    max_frame_size: u32,
    buf: Vec<u8>,
    block: Option<PendingBlock>,
    /// Framing was recovered by search (or joined late): new streams are flagged resynced.
    resynced: bool,
    resync_skipped: u64,
    abandoned: bool,
}

impl DirState {
    fn new(read: ReadState, hpack: Decoder, max_frame_size: u32) -> DirState {
        DirState {
            read,
            hpack,
            max_frame_size,
            buf: Vec::new(),
            block: None,
            resynced: false,
            resync_skipped: 0,
            abandoned: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug, Default)]
struct Stream {
    request: Option<Message>,
    response: Option<Message>,
    grpc: bool,
    flags: ExchangeFlags,
    last_activity_ns: u64,
}

/// Passive decoder of one HTTP/2 connection, fed the bytes of both directions as captured.
///
/// Directions are the socket owner's (`Egress` written, `Ingress` read). The client side is the
/// one that sends the preface, else the one `ConnMeta::role` names, else the one whose first
/// header block carries `:method`. Each finished stream becomes one [`Exchange`]; bodies are
/// sampled as sent (`Body::encoding` names a content-encoding, which is not undone here).
///
/// Header fields that cannot be resolved (HPACK state unknown after a late join or lost bytes)
/// are left out and the exchange is flagged `HEADERS_CUT`; an unresolved pseudo-header leaves
/// its field empty (`method`, `path`) or `0` (`status`). Such fields are never guessed.
#[derive(Debug)]
pub struct Connection {
    meta: Arc<ConnMeta>,
    cfg: Http2Config,
    client_dir: Option<Direction>,
    dirs: [DirState; 2],
    streams: HashMap<u32, Stream>,
    /// Stream ids in the order they were opened (with ids already gone), for eviction.
    open_order: VecDeque<u32>,
    /// Highest stream id opened by the client (odd) and by server push (even).
    highest_stream: [u32; 2],
    stats: Http2Stats,
    frame_errors: u64,
    abandoned: bool,
    /// Capacity of the body samples of open streams (bounded by `max_connection_sample_bytes`).
    sample_bytes_held: usize,
}

impl Connection {
    /// A connection observed from its first byte (prior knowledge: the client sends the preface).
    pub fn new(conn: Arc<ConnMeta>, config: &Http2Config) -> Connection {
        let client_dir = conn.role.request_direction();
        let read_for = |d: Direction| match client_dir {
            Some(c) if c == d => ReadState::Preface {
                matched: 0,
                optional: false,
            },
            Some(_) => ReadState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
            None => ReadState::Preface {
                matched: 0,
                optional: true,
            },
        };
        let dir = |d: Direction| {
            DirState::new(
                read_for(d),
                Decoder::new(config.max_table_size),
                DEFAULT_MAX_FRAME_SIZE,
            )
        };
        Connection::build(
            conn,
            config,
            client_dir,
            [dir(Direction::Egress), dir(Direction::Ingress)],
        )
    }

    /// A connection joined in the middle: both directions search for a frame boundary, HPACK state
    /// is unknown, and frame sizes up to the protocol maximum are accepted.
    pub fn new_late(conn: Arc<ConnMeta>, config: &Http2Config) -> Connection {
        let client_dir = conn.role.request_direction();
        let dir = || {
            let mut d = DirState::new(
                ReadState::Resync,
                Decoder::new_late(config.max_table_size),
                MAX_FRAME_SIZE_LIMIT,
            );
            d.resynced = true;
            d
        };
        Connection::build(conn, config, client_dir, [dir(), dir()])
    }

    /// An h2c connection after `101 Switching Protocols`: the client (in `client_dir`) sends the
    /// preface next, the server starts with SETTINGS, and stream 1 is the upgraded HTTP/1
    /// `request`, already complete; its response arrives on stream 1.
    pub fn after_upgrade(
        conn: Arc<ConnMeta>,
        config: &Http2Config,
        client_dir: Direction,
        request: Request,
    ) -> Connection {
        let mk = |read| {
            DirState::new(
                read,
                Decoder::new(config.max_table_size),
                DEFAULT_MAX_FRAME_SIZE,
            )
        };
        let mut dirs = [
            mk(ReadState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            }),
            mk(ReadState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            }),
        ];
        if let Some(d) = dirs.get_mut(client_dir.index()) {
            d.read = ReadState::Preface {
                matched: 0,
                optional: false,
            };
        }
        let mut c = Connection::build(conn, config, Some(client_dir), dirs);
        let ts = request.ts_end_ns;
        let grpc = request
            .headers
            .iter()
            .any(|h| h.name == "content-type" && grpc::is_grpc_content_type(&h.value));
        let mut msg = Message {
            pseudo: crate::message::Pseudo {
                method: Some(request.method),
                authority: request.authority,
                path: Some(match request.query {
                    Some(q) => format!("{}?{}", request.path, q),
                    None => request.path,
                }),
                ..Default::default()
            },
            headers: request.headers,
            trailers: request.trailers,
            ts_start_ns: request.ts_start_ns,
            ts_end_ns: request.ts_end_ns,
            ended: true,
            ..Message::default()
        };
        msg.body.declared_len = request.body.declared_len;
        msg.body.wire_len = request.body.wire_len;
        msg.body.missing_len = request.body.missing_len;
        msg.body.sample = request.body.sample.to_vec();
        msg.body.sample_truncated = request.body.sample_truncated;
        msg.body.encoding = request.body.encoding;
        let stream = Stream {
            request: Some(msg),
            grpc,
            last_activity_ns: ts,
            ..Stream::default()
        };
        c.streams.insert(1, stream);
        c.open_order.push_back(1);
        c.highest_stream[0] = 1;
        c.stats.streams_opened += 1;
        c
    }

    fn build(
        meta: Arc<ConnMeta>,
        cfg: &Http2Config,
        client_dir: Option<Direction>,
        dirs: [DirState; 2],
    ) -> Connection {
        Connection {
            meta,
            cfg: cfg.clone(),
            client_dir,
            dirs,
            streams: HashMap::new(),
            open_order: VecDeque::new(),
            highest_stream: [0; 2],
            stats: Http2Stats::default(),
            frame_errors: 0,
            abandoned: false,
            sample_bytes_held: 0,
        }
    }

    /// The direction in which the client sends, once known.
    pub fn client_direction(&self) -> Option<Direction> {
        self.client_dir
    }

    /// Streams currently tracked.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether decoding stopped for good (too many invalid frames).
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// Bytes held for this connection (frame and header-block buffers, body samples), for
    /// memory accounting.
    pub fn buffered_bytes(&self) -> usize {
        let dirs: usize = self
            .dirs
            .iter()
            .map(|d| d.buf.capacity() + d.block.as_ref().map_or(0, |b| b.buf.capacity()))
            .sum();
        let streams: usize = self
            .streams
            .values()
            .map(|s| {
                [&s.request, &s.response]
                    .iter()
                    .filter_map(|m| m.as_ref())
                    .map(|m| m.body.sample.capacity())
                    .sum::<usize>()
            })
            .sum();
        dirs + streams
    }

    pub fn stats(&self) -> Http2Stats {
        let mut s = self.stats.clone();
        let (a, b) = match self.client_dir {
            Some(Direction::Ingress) => (1, 0),
            _ => (0, 1),
        };
        for (slot, i) in s.hpack.iter_mut().zip([a, b]) {
            if let Some(d) = self.dirs.get(i) {
                *slot = *d.hpack.stats();
            }
        }
        s
    }

    /// Feeds bytes captured in `dir`, appending finished exchanges to `out`.
    pub fn on_data(&mut self, dir: Direction, bytes: &[u8], ts_ns: u64, out: &mut Vec<Exchange>) {
        self.stats.bytes += bytes.len() as u64;
        if self.abandoned || self.dir(dir).abandoned {
            self.stats.bytes_ignored += bytes.len() as u64;
            return;
        }
        self.feed(dir, bytes, ts_ns, out);
        if self.abandoned {
            self.flush_all(out);
        }
    }

    /// `len` bytes of `dir` were not captured. Framing survives when the gap falls inside the
    /// current frame; otherwise the direction searches for a frame header again.
    pub fn on_gap(&mut self, dir: Direction, len: u64, out: &mut Vec<Exchange>) {
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        if len == 0 || self.abandoned || self.dir(dir).abandoned {
            return;
        }
        let state = std::mem::replace(&mut self.dir_mut(dir).read, ReadState::Resync);
        let next = match state {
            ReadState::Data {
                header,
                offset,
                pad,
            } if u64::from(header.length - offset) >= len
                && (pad.is_some() || !header.has(flags::PADDED)) =>
            {
                let data_end = header.length - u32::from(pad.unwrap_or(0));
                let in_data = len.min(u64::from(data_end.saturating_sub(offset)));
                if in_data > 0 {
                    self.data_missing(dir, header.stream_id, in_data);
                }
                // `len` fits in the frame, so it fits in u32.
                let offset = offset + u32::try_from(len).unwrap_or(u32::MAX);
                if offset >= header.length {
                    self.data_end(dir, header, out);
                    ReadState::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    }
                } else {
                    ReadState::Data {
                        header,
                        offset,
                        pad,
                    }
                }
            }
            ReadState::Payload { header }
                if u64::from(header.length) - self.dir(dir).buf.len() as u64 >= len =>
            {
                let remaining = u64::from(header.length) - self.dir(dir).buf.len() as u64 - len;
                self.dir_mut(dir).buf.clear();
                if matches!(
                    header.kind,
                    kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE
                ) {
                    self.lost_block(dir, header.stream_id);
                }
                if let Some(s) = self.streams.get_mut(&header.stream_id) {
                    s.flags.insert(ExchangeFlags::GAP);
                }
                skip_or_header(remaining)
            }
            ReadState::Skip { remaining } if remaining >= len => skip_or_header(remaining - len),
            ReadState::Preface { matched, .. } if (PREFACE.len() - matched) as u64 >= len => {
                let matched = matched + len as usize;
                if matched == PREFACE.len() {
                    self.preface_done(dir);
                    ReadState::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    }
                } else {
                    ReadState::Preface {
                        matched,
                        optional: false,
                    }
                }
            }
            _ => {
                for s in self.streams.values_mut() {
                    s.flags.insert(ExchangeFlags::GAP);
                }
                self.start_resync(dir);
                ReadState::Resync
            }
        };
        self.dir_mut(dir).read = next;
    }

    /// The connection closed: every stream still open is emitted as it is.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        debug!(conn = %self.meta.id, ts_ns, open_streams = self.streams.len(), "http2 close");
        self.flush_all(out);
        for d in &mut self.dirs {
            d.block = None;
            d.buf = Vec::new();
        }
    }

    /// Emits streams idle for longer than the configured timeout.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Exchange>) {
        let timeout = self.cfg.stream_timeout_ns;
        let mut expired: Vec<(u32, Stream)> = self
            .streams
            .extract_if(|_, s| now_ns.saturating_sub(s.last_activity_ns) > timeout)
            .collect();
        expired.sort_unstable_by_key(|(id, _)| *id);
        for (id, s) in expired {
            self.stats.streams_timed_out += 1;
            self.emit(id, s, out);
        }
    }

    fn dir(&self, d: Direction) -> &DirState {
        // `index()` is 0 or 1: both exist.
        &self.dirs[d.index()]
    }

    fn dir_mut(&mut self, d: Direction) -> &mut DirState {
        &mut self.dirs[d.index()]
    }

    fn side(&self, d: Direction) -> Option<Side> {
        let c = self.client_dir?;
        Some(if c == d {
            Side::Request
        } else {
            Side::Response
        })
    }

    fn preface_done(&mut self, d: Direction) {
        if self.client_dir.is_none() {
            self.client_dir = Some(d);
        }
    }

    fn feed(&mut self, d: Direction, mut input: &[u8], ts: u64, out: &mut Vec<Exchange>) {
        loop {
            if self.abandoned || self.dir(d).abandoned {
                self.stats.bytes_ignored += input.len() as u64;
                return;
            }
            let state = std::mem::replace(&mut self.dir_mut(d).read, ReadState::Resync);
            let next = match state {
                ReadState::Header {
                    buf,
                    have: HEADER_LEN,
                } => self.after_header(d, FrameHeader::parse(&buf), &mut input, ts, out),
                _ if input.is_empty() => {
                    self.dir_mut(d).read = state;
                    return;
                }
                ReadState::Preface { matched, optional } => {
                    let want = PREFACE.get(matched..).unwrap_or_default();
                    let n = want.len().min(input.len());
                    if input.get(..n) == want.get(..n) {
                        input = input.get(n..).unwrap_or_default();
                        if matched + n == PREFACE.len() {
                            self.preface_done(d);
                            ReadState::Header {
                                buf: [0; HEADER_LEN],
                                have: 0,
                            }
                        } else {
                            ReadState::Preface {
                                matched: matched + n,
                                optional,
                            }
                        }
                    } else if optional && matched == 0 {
                        ReadState::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        }
                    } else {
                        self.stats.preface_mismatches += 1;
                        self.start_resync(d);
                        ReadState::Resync
                    }
                }
                ReadState::Header { mut buf, have } => {
                    if have == 0 && input.len() >= HEADER_LEN {
                        let (head, rest) = input.split_at(HEADER_LEN);
                        input = rest;
                        let mut b = [0u8; HEADER_LEN];
                        b.copy_from_slice(head);
                        ReadState::Header {
                            buf: b,
                            have: HEADER_LEN,
                        }
                    } else {
                        let n = (HEADER_LEN - have).min(input.len());
                        let (head, rest) = input.split_at(n);
                        if let Some(slot) = buf.get_mut(have..have + n) {
                            slot.copy_from_slice(head);
                        }
                        input = rest;
                        ReadState::Header {
                            buf,
                            have: have + n,
                        }
                    }
                }
                ReadState::Payload { header } => {
                    let dir = self.dir_mut(d);
                    let need = (header.length as usize).saturating_sub(dir.buf.len());
                    let n = need.min(input.len());
                    let (part, rest) = input.split_at(n);
                    dir.buf.extend_from_slice(part);
                    input = rest;
                    if dir.buf.len() >= header.length as usize {
                        let payload = std::mem::take(&mut dir.buf);
                        self.frame(d, header, &payload, ts, out);
                        let mut payload = payload;
                        payload.clear();
                        if payload.capacity() <= 2 * DEFAULT_MAX_FRAME_SIZE as usize {
                            self.dir_mut(d).buf = payload;
                        }
                        ReadState::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        }
                    } else {
                        ReadState::Payload { header }
                    }
                }
                ReadState::Data {
                    header,
                    mut offset,
                    pad,
                } => {
                    if header.has(flags::PADDED) && pad.is_none() {
                        let (&p, rest) = input.split_first().unwrap_or((&0, &[]));
                        input = rest;
                        if u32::from(p) >= header.length {
                            self.frame_error(FrameErrorKind::PaddingTooLong);
                            skip_or_header(u64::from(header.length) - 1)
                        } else {
                            ReadState::Data {
                                header,
                                offset: 1,
                                pad: Some(p),
                            }
                        }
                    } else {
                        let data_end = header.length - u32::from(pad.unwrap_or(0));
                        let n = if offset < data_end {
                            let n = ((data_end - offset) as usize).min(input.len());
                            let (chunk, _) = input.split_at(n);
                            self.data_chunk(d, header.stream_id, chunk, ts);
                            n
                        } else {
                            ((header.length - offset) as usize).min(input.len())
                        };
                        input = input.get(n..).unwrap_or_default();
                        offset += n as u32;
                        if offset >= header.length {
                            self.data_end(d, header, out);
                            ReadState::Header {
                                buf: [0; HEADER_LEN],
                                have: 0,
                            }
                        } else {
                            ReadState::Data {
                                header,
                                offset,
                                pad,
                            }
                        }
                    }
                }
                ReadState::Skip { remaining } => {
                    let n = remaining.min(input.len() as u64);
                    input = input.get(n as usize..).unwrap_or_default();
                    skip_or_header(remaining - n)
                }
                ReadState::Resync => {
                    let (used, next) = self.resync_scan(d, input);
                    input = input.get(used..).unwrap_or_default();
                    next
                }
            };
            let dir = self.dir_mut(d);
            if !dir.abandoned {
                dir.read = next;
            }
        }
    }

    /// A complete frame header was read: validate it and decide how to read the payload. A
    /// non-DATA payload that is wholly in `input` is decoded in place.
    fn after_header(
        &mut self,
        d: Direction,
        h: FrameHeader,
        input: &mut &[u8],
        ts: u64,
        out: &mut Vec<Exchange>,
    ) -> ReadState {
        self.stats.frames += 1;
        let max = self.dir(d).max_frame_size;
        if frame::check_header(&h, max).is_err() {
            self.frame_error(FrameErrorKind::TooLarge);
            // Either the peer ignores our SETTINGS or the length is garbage: don't trust it.
            self.start_resync(d);
            return ReadState::Resync;
        }
        if let Some(block) = &self.dir(d).block
            && !(h.kind == kind::CONTINUATION && h.stream_id == block.stream_id)
        {
            let sid = block.stream_id;
            self.frame_error(FrameErrorKind::UnexpectedContinuation);
            self.lost_block(d, sid);
        }
        let len = h.length as usize;
        if h.kind == kind::DATA {
            if h.stream_id == 0 {
                self.frame_error(FrameErrorKind::StreamIdRequired);
                return skip_or_header(u64::from(h.length));
            }
            if !self.streams.contains_key(&h.stream_id) {
                self.stats.frames_on_unknown_streams += 1;
            }
            if len == 0 {
                if h.has(flags::PADDED) {
                    // The pad length octet itself is missing.
                    self.frame_error(FrameErrorKind::PaddingTooLong);
                }
                self.data_end(d, h, out);
                return ReadState::Header {
                    buf: [0; HEADER_LEN],
                    have: 0,
                };
            }
            return ReadState::Data {
                header: h,
                offset: 0,
                pad: None,
            };
        }
        if len
            > self
                .cfg
                .max_header_block_bytes
                .max(DEFAULT_MAX_FRAME_SIZE as usize)
        {
            self.stats.oversized_frames += 1;
            if matches!(
                h.kind,
                kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE
            ) {
                self.lost_block(d, h.stream_id);
            }
            return skip_or_header(u64::from(h.length));
        }
        if input.len() >= len {
            let (payload, rest) = input.split_at(len);
            *input = rest;
            self.frame(d, h, payload, ts, out);
            return ReadState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            };
        }
        self.dir_mut(d).buf.clear();
        ReadState::Payload { header: h }
    }

    fn frame(
        &mut self,
        d: Direction,
        h: FrameHeader,
        payload: &[u8],
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        let f = match frame::decode(&h, payload) {
            Ok(f) => f,
            Err(e) => {
                self.frame_error(e);
                if matches!(
                    h.kind,
                    kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE
                ) {
                    self.lost_block(d, h.stream_id);
                }
                return;
            }
        };
        match f {
            Frame::Headers {
                stream_id,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                self.begin_block(
                    d,
                    stream_id,
                    BlockKind::Headers { end_stream },
                    end_headers,
                    fragment,
                    ts,
                    out,
                );
            }
            Frame::PushPromise {
                stream_id,
                end_headers,
                promised_stream_id,
                fragment,
                ..
            } => {
                let kind = BlockKind::PushPromise {
                    promised: promised_stream_id,
                };
                self.begin_block(d, stream_id, kind, end_headers, fragment, ts, out);
            }
            Frame::Continuation {
                end_headers,
                fragment,
                ..
            } => {
                let max_frames = self.cfg.max_continuation_frames;
                let max_bytes = self.cfg.max_header_block_bytes;
                let Some(mut block) = self.dir_mut(d).block.take() else {
                    self.frame_error(FrameErrorKind::UnexpectedContinuation);
                    // The fragment may hold insertions we cannot decode without its start.
                    self.lost_block(d, h.stream_id);
                    return;
                };
                block.frames += 1;
                if block.frames > max_frames || block.buf.len() + fragment.len() > max_bytes {
                    block.overflow = true;
                    block.buf = Vec::new();
                } else if !block.overflow {
                    block.buf.extend_from_slice(fragment);
                }
                if end_headers {
                    if block.overflow {
                        self.lost_block(d, block.stream_id);
                    } else {
                        self.header_block(d, block.stream_id, block.kind, &block.buf, ts, out);
                    }
                } else {
                    self.dir_mut(d).block = Some(block);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(mut s) = self.streams.remove(&stream_id) {
                    s.flags.insert(ExchangeFlags::RESET);
                    self.stats.streams_reset += 1;
                    self.emit(stream_id, s, out);
                } else {
                    self.stats.frames_on_unknown_streams += 1;
                }
            }
            Frame::Settings { ack: false, params } => {
                let peer = d.opposite();
                for (id, value) in frame::settings_params(params) {
                    match id {
                        setting::HEADER_TABLE_SIZE => {
                            self.dir_mut(peer).hpack.set_settings_limit(value as usize);
                        }
                        setting::MAX_FRAME_SIZE
                            if (DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) =>
                        {
                            self.dir_mut(peer).max_frame_size = value;
                        }
                        _ => {}
                    }
                }
            }
            Frame::GoAway {
                last_stream_id,
                error_code,
                ..
            } => {
                self.stats.goaways += 1;
                debug!(conn = %self.meta.id, last_stream_id, error_code, "http2 goaway");
            }
            Frame::Data { .. }
            | Frame::Settings { ack: true, .. }
            | Frame::Priority { .. }
            | Frame::Ping { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_block(
        &mut self,
        d: Direction,
        stream_id: u32,
        kind: BlockKind,
        end_headers: bool,
        fragment: &[u8],
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        if end_headers {
            self.header_block(d, stream_id, kind, fragment, ts, out);
            return;
        }
        let overflow = fragment.len() > self.cfg.max_header_block_bytes;
        let buf = if overflow {
            Vec::new()
        } else {
            fragment.to_vec()
        };
        self.dir_mut(d).block = Some(PendingBlock {
            stream_id,
            kind,
            buf,
            frames: 0,
            overflow,
        });
    }

    /// A header block could not be decoded: the direction's HPACK state is no longer known.
    fn lost_block(&mut self, d: Direction, stream_id: u32) {
        self.stats.header_blocks_dropped += 1;
        let dir = self.dir_mut(d);
        dir.block = None;
        dir.hpack.reset_unknown();
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.flags.insert(ExchangeFlags::HEADERS_CUT);
        }
    }

    fn header_block(
        &mut self,
        d: Direction,
        stream_id: u32,
        kind: BlockKind,
        block: &[u8],
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        let mut fields = BlockFields::default();
        let cfg = &self.cfg;
        let decoded = self.dirs[d.index()]
            .hpack
            .decode_block(block, &mut |f| fields.push(f, cfg));
        self.stats.header_fields_dropped += fields.dropped;
        let cut = decoded.is_err() || fields.dropped > 0 || fields.unresolved > 0;
        if self.client_dir.is_none() {
            if fields.pseudo.method.is_some() {
                self.client_dir = Some(d);
            } else if fields.pseudo.status.is_some() {
                self.client_dir = Some(d.opposite());
            }
        }
        let Some(side) = self.side(d) else {
            self.stats.blocks_without_role += 1;
            return;
        };
        let resynced = self.dir(d).resynced;
        match (kind, side) {
            (BlockKind::PushPromise { promised }, Side::Response) => {
                if self.streams.contains_key(&promised) || promised <= self.highest_stream[1] {
                    self.stats.frames_on_unknown_streams += 1;
                    return;
                }
                self.highest_stream[1] = promised;
                let mut msg = Message::from_block(fields, ts);
                msg.ended = true;
                let s = self.open_stream(promised, ts, out);
                s.grpc = msg
                    .header("content-type")
                    .is_some_and(grpc::is_grpc_content_type);
                s.request = Some(msg);
                if cut {
                    s.flags.insert(ExchangeFlags::HEADERS_CUT);
                }
                if resynced {
                    s.flags.insert(ExchangeFlags::RESYNCED);
                }
            }
            (BlockKind::PushPromise { .. }, Side::Request) => {
                // Clients cannot push; the block was decoded to keep HPACK in step.
                self.stats.frames_on_unknown_streams += 1;
            }
            (BlockKind::Headers { end_stream }, Side::Request) => {
                if let Some(s) = self.streams.get_mut(&stream_id) {
                    s.last_activity_ns = ts;
                    if cut {
                        s.flags.insert(ExchangeFlags::HEADERS_CUT);
                    }
                    if let Some(req) = &mut s.request {
                        req.trailers = fields.headers;
                        if end_stream {
                            req.ended = true;
                            req.ts_end_ns = ts;
                        }
                    }
                } else if stream_id <= self.highest_stream[0] || stream_id.is_multiple_of(2) {
                    self.stats.frames_on_unknown_streams += 1;
                    return;
                } else {
                    self.highest_stream[0] = stream_id;
                    let mut msg = Message::from_block(fields, ts);
                    msg.ended = end_stream;
                    let s = self.open_stream(stream_id, ts, out);
                    s.grpc = msg
                        .header("content-type")
                        .is_some_and(grpc::is_grpc_content_type);
                    s.request = Some(msg);
                    if cut {
                        s.flags.insert(ExchangeFlags::HEADERS_CUT);
                    }
                    if resynced {
                        s.flags.insert(ExchangeFlags::RESYNCED);
                    }
                }
            }
            (BlockKind::Headers { end_stream }, Side::Response) => {
                let Some(s) = self.streams.get_mut(&stream_id) else {
                    self.stats.frames_on_unknown_streams += 1;
                    return;
                };
                s.last_activity_ns = ts;
                if cut {
                    s.flags.insert(ExchangeFlags::HEADERS_CUT);
                }
                match &mut s.response {
                    Some(resp) => {
                        resp.trailers = fields.headers;
                        if end_stream {
                            resp.ended = true;
                            resp.ts_end_ns = ts;
                        }
                    }
                    None => {
                        let status: Option<u16> =
                            fields.pseudo.status.as_deref().and_then(|v| v.parse().ok());
                        if let Some(st @ 100..=199) = status
                            && !end_stream
                        {
                            if st == 100 {
                                s.flags.insert(ExchangeFlags::CONTINUED);
                            }
                            return self.maybe_finish(stream_id, out);
                        }
                        let mut msg = Message::from_block(fields, ts);
                        msg.ended = end_stream;
                        if !s.grpc {
                            s.grpc = msg
                                .header("content-type")
                                .is_some_and(grpc::is_grpc_content_type);
                        }
                        s.response = Some(msg);
                    }
                }
            }
        }
        self.maybe_finish(stream_id, out);
    }

    /// Creates a stream, first emitting the oldest one if the limit is reached.
    fn open_stream(&mut self, id: u32, ts: u64, out: &mut Vec<Exchange>) -> &mut Stream {
        while self.streams.len() >= self.cfg.max_streams.max(1) {
            let Some(old) = self.open_order.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.remove(&old) {
                self.stats.streams_evicted += 1;
                self.emit(old, s, out);
            }
        }
        if self.open_order.len() > 2 * self.cfg.max_streams.max(16) {
            let streams = &self.streams;
            self.open_order.retain(|id| streams.contains_key(id));
        }
        self.open_order.push_back(id);
        self.stats.streams_opened += 1;
        self.streams.entry(id).or_insert_with(|| Stream {
            last_activity_ns: ts,
            ..Stream::default()
        })
    }

    fn message_mut(&mut self, d: Direction, stream_id: u32) -> Option<&mut Message> {
        let side = self.side(d)?;
        let s = self.streams.get_mut(&stream_id)?;
        match side {
            Side::Request => s.request.as_mut(),
            Side::Response => s.response.as_mut(),
        }
    }

    fn data_chunk(&mut self, d: Direction, stream_id: u32, chunk: &[u8], ts: u64) {
        let Some(side) = self.side(d) else { return };
        let Some(s) = self.streams.get_mut(&stream_id) else {
            return;
        };
        s.last_activity_ns = ts;
        let grpc = s.grpc;
        let msg = match side {
            Side::Request => s.request.as_mut(),
            Side::Response => s.response.as_mut(),
        };
        let Some(msg) = msg else { return };
        let budget = self
            .cfg
            .max_connection_sample_bytes
            .saturating_sub(self.sample_bytes_held);
        let before = msg.body.sample.capacity();
        let limit = self
            .cfg
            .body_sample_bytes
            .min(before.saturating_add(budget));
        if limit < self.cfg.body_sample_bytes && msg.body.sample.len() + chunk.len() > limit {
            self.stats.samples_cut_by_budget += 1;
        }
        msg.body.data(chunk, limit);
        self.sample_bytes_held += msg.body.sample.capacity().saturating_sub(before);
        if grpc {
            msg.grpc.feed(chunk);
        }
        msg.ts_end_ns = ts;
    }

    fn data_missing(&mut self, d: Direction, stream_id: u32, len: u64) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.flags.insert(ExchangeFlags::GAP);
        }
        if let Some(msg) = self.message_mut(d, stream_id) {
            msg.body.missing(len);
            msg.grpc.skip(len);
        }
    }

    fn data_end(&mut self, d: Direction, h: FrameHeader, out: &mut Vec<Exchange>) {
        if !h.has(flags::END_STREAM) {
            return;
        }
        if let Some(msg) = self.message_mut(d, h.stream_id) {
            msg.ended = true;
        }
        self.maybe_finish(h.stream_id, out);
    }

    fn maybe_finish(&mut self, id: u32, out: &mut Vec<Exchange>) {
        let done = self.streams.get(&id).is_some_and(|s| {
            s.request.as_ref().is_some_and(|m| m.ended)
                && s.response.as_ref().is_some_and(|m| m.ended)
        });
        if done && let Some(s) = self.streams.remove(&id) {
            self.emit(id, s, out);
        }
    }

    fn flush_all(&mut self, out: &mut Vec<Exchange>) {
        let mut all: Vec<(u32, Stream)> = self.streams.drain().collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        for (id, s) in all {
            self.emit(id, s, out);
        }
        self.open_order.clear();
    }

    fn emit(&mut self, id: u32, s: Stream, out: &mut Vec<Exchange>) {
        let held: usize = [&s.request, &s.response]
            .iter()
            .filter_map(|m| m.as_ref())
            .map(|m| m.body.sample.capacity())
            .sum();
        self.sample_bytes_held = self.sample_bytes_held.saturating_sub(held);
        if let Some(x) = build_exchange(&self.meta, id, s, self.cfg.body_sample_bytes) {
            self.stats.exchanges += 1;
            out.push(x);
        }
    }

    fn frame_error(&mut self, kind: FrameErrorKind) {
        if let Some(c) = self.stats.frame_errors.get_mut(kind.index()) {
            *c += 1;
        }
        self.frame_errors += 1;
        if self.frame_errors > self.cfg.max_frame_errors && !self.abandoned {
            self.abandoned = true;
            self.stats.abandoned = true;
            debug!(conn = %self.meta.id, errors = self.frame_errors, "http2 connection abandoned");
        }
    }

    fn start_resync(&mut self, d: Direction) {
        self.stats.resyncs += 1;
        let dir = self.dir_mut(d);
        dir.read = ReadState::Resync;
        dir.buf.clear();
        dir.block = None;
        dir.resynced = true;
        dir.resync_skipped = 0;
        dir.hpack.reset_unknown();
    }

    /// Looks for a plausible frame header in the carried bytes plus `input`. Returns the bytes
    /// of `input` consumed and the next state.
    fn resync_scan(&mut self, d: Direction, input: &[u8]) -> (usize, ReadState) {
        let max = self.dir(d).max_frame_size;
        let carry = std::mem::take(&mut self.dir_mut(d).buf);
        let total = carry.len() + input.len();
        let byte_at = |k: usize| -> u8 {
            match carry.get(k) {
                Some(b) => *b,
                None => input.get(k - carry.len()).copied().unwrap_or(0),
            }
        };
        let header_at = |k: usize| -> ([u8; HEADER_LEN], FrameHeader) {
            let mut b = [0u8; HEADER_LEN];
            for (i, slot) in b.iter_mut().enumerate() {
                *slot = byte_at(k + i);
            }
            (b, FrameHeader::parse(&b))
        };
        let mut j = 0;
        while j + HEADER_LEN <= total {
            let (raw, h) = header_at(j);
            if frame::plausible_header(&h, raw[5] & 0x80 == 0, max) {
                let next = j + HEADER_LEN + h.length as usize;
                let confirmed = if next + HEADER_LEN <= total {
                    let (nraw, nh) = header_at(next);
                    frame::plausible_header(&nh, nraw[5] & 0x80 == 0, max)
                } else {
                    true
                };
                if confirmed {
                    self.stats.resync_skipped_bytes += j as u64;
                    let used = j + HEADER_LEN - carry.len();
                    let mut buf = carry;
                    buf.clear();
                    self.dir_mut(d).buf = buf;
                    return (
                        used,
                        ReadState::Header {
                            buf: raw,
                            have: HEADER_LEN,
                        },
                    );
                }
            }
            j += 1;
        }
        let keep = total.min(HEADER_LEN - 1);
        let skipped = (total - keep) as u64;
        self.stats.resync_skipped_bytes += skipped;
        let mut new_carry = Vec::with_capacity(HEADER_LEN);
        for k in total - keep..total {
            new_carry.push(byte_at(k));
        }
        let limit = self.cfg.max_resync_bytes;
        let dir = self.dir_mut(d);
        dir.buf = new_carry;
        dir.resync_skipped += skipped;
        if dir.resync_skipped > limit {
            dir.abandoned = true;
            dir.buf = Vec::new();
            self.stats.directions_abandoned += 1;
        }
        (input.len(), ReadState::Resync)
    }
}

fn skip_or_header(remaining: u64) -> ReadState {
    if remaining == 0 {
        ReadState::Header {
            buf: [0; HEADER_LEN],
            have: 0,
        }
    } else {
        ReadState::Skip { remaining }
    }
}

/// Splits `:path` into path and query, reusing the string for the path.
fn split_path(mut path: String) -> (String, Option<String>) {
    match path.find('?') {
        Some(i) => {
            let query = path.get(i + 1..).map(str::to_owned);
            path.truncate(i);
            (path, query)
        }
        None => (path, None),
    }
}

fn build_exchange(
    meta: &Arc<ConnMeta>,
    id: u32,
    s: Stream,
    sample_limit: usize,
) -> Option<Exchange> {
    let req = s.request?;
    let mut flags = s.flags;
    let reset = flags.contains(ExchangeFlags::RESET);
    if !req.ended && !reset {
        flags.insert(ExchangeFlags::TRUNCATED);
    }
    let host = match req.pseudo.authority {
        Some(_) => None,
        None => req.header("host").map(str::to_owned),
    };
    let (path, query) = split_path(req.pseudo.path.unwrap_or_default());
    let grpc_info = s.grpc.then(|| {
        let (service, method) = grpc::split_path(&path).unwrap_or_default();
        GrpcInfo {
            service: service.to_owned(),
            method: method.to_owned(),
            request_messages: req.grpc.messages,
            request_message_bytes: req.grpc.message_bytes,
            compressed: req.grpc.compressed,
            ..GrpcInfo::default()
        }
    });
    let authority = req.pseudo.authority.or(host);
    let request = Request {
        method: req.pseudo.method.unwrap_or_default(),
        authority,
        path,
        query,
        headers: req.headers,
        trailers: req.trailers,
        body: req.body.finish(sample_limit, req.ended),
        ts_start_ns: req.ts_start_ns,
        ts_end_ns: req.ts_end_ns,
    };
    let mut grpc_info = grpc_info;
    let response = match s.response {
        Some(resp) => {
            if !resp.ended && !reset {
                flags.insert(ExchangeFlags::TRUNCATED);
            }
            if let Some(g) = &mut grpc_info {
                let status = resp
                    .trailer("grpc-status")
                    .or_else(|| resp.header("grpc-status"));
                g.status = status.and_then(|v| v.trim().parse().ok());
                let message = resp
                    .trailer("grpc-message")
                    .or_else(|| resp.header("grpc-message"));
                g.message = message.map(grpc::percent_decode);
                g.response_messages = resp.grpc.messages;
                g.response_message_bytes = resp.grpc.message_bytes;
                g.compressed |= resp.grpc.compressed;
            }
            Some(Response {
                status: resp
                    .pseudo
                    .status
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                reason: String::new(),
                headers: resp.headers,
                trailers: resp.trailers,
                body: resp.body.finish(sample_limit, resp.ended),
                ts_start_ns: resp.ts_start_ns,
                ts_end_ns: resp.ts_end_ns,
            })
        }
        None => {
            flags.insert(ExchangeFlags::RESPONSE_MISSING);
            None
        }
    };
    Some(Exchange {
        conn: Arc::clone(meta),
        version: HttpVersion::Http2,
        stream_id: Some(id),
        request,
        response,
        grpc: grpc_info,
        flags,
    })
}
