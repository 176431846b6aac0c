//! TCP stream reassembly: segments in capture order → ordered, gap-explicit byte streams per
//! connection direction, as `CaptureEvent`s.
//!
//! Each direction is placed by sequence number relative to its first byte (ISN + 1 when the
//! handshake was seen, else the first sequence number seen), unwrapped against the next expected
//! byte so 32-bit wraparound is invisible. Bytes already delivered are dropped as retransmissions;
//! bytes that overlap buffered ones keep the first copy (conflicts are counted); segments ahead of
//! a hole wait in a bounded reorder buffer. A hole becomes an explicit gap (a chunk with `len`
//! set and no data) when the peer acknowledges past it (the receiver got bytes the capture
//! missed), when the buffer overflows, or when the connection ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, ProcessInfo, Role, Source,
};

use crate::decode::TcpSegment;
use crate::stats::ReassemblyStats;

/// Bounds that keep memory flat on hostile captures. Defaults are documented per field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Connections tracked at once (live and recently closed). Default 65 536. When full, closed
    /// tuples are forgotten first, then the least recently active sixteenth is evicted.
    pub max_connections: usize,
    /// Out-of-order segments held per direction. Default 256.
    pub max_pending_segments: usize,
    /// Memory held out of order per direction: captured bytes plus [`PIECE_COST`] per held
    /// piece. Default 1 MiB.
    pub max_pending_bytes: usize,
    /// The same across all connections. Default 64 MiB.
    pub max_pending_bytes_total: usize,
    /// Segments starting further than this past the next expected byte are dropped as
    /// implausible. Default 1 GiB, the largest window TCP can advertise.
    pub max_seq_ahead: u32,
    /// A connection idle this long in capture time is closed. Default 300 s.
    pub idle_timeout_ns: u64,
    /// A closed tuple is remembered this long so stray packets after the close do not start a
    /// mid-stream connection. Default 30 s.
    pub closed_linger_ns: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_connections: 65_536,
            max_pending_segments: 256,
            max_pending_bytes: 1 << 20,
            max_pending_bytes_total: 64 << 20,
            max_seq_ahead: 1 << 30,
            idle_timeout_ns: 300_000_000_000,
            closed_linger_ns: 30_000_000_000,
        }
    }
}

/// Bookkeeping charged per held piece on top of its captured bytes, so pieces without captured
/// bytes (snaplen-cut segments) cannot pile up unaccounted: about the size of a map entry.
pub const PIECE_COST: usize = 64;

/// Segments between two idle sweeps at least, so a capture with wild timestamps cannot make
/// every packet scan the table.
const SWEEP_MIN_SEGMENTS: u64 = 1024;

/// Unordered pair of endpoints: both directions of a connection hash to the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FlowKey {
    lo: SocketAddr,
    hi: SocketAddr,
}

impl FlowKey {
    fn new(a: SocketAddr, b: SocketAddr) -> FlowKey {
        if a <= b {
            FlowKey { lo: a, hi: b }
        } else {
            FlowKey { lo: b, hi: a }
        }
    }
}

/// Bytes held ahead of a hole.
#[derive(Debug)]
struct Piece {
    /// Bytes covered on the wire.
    len: u64,
    /// The captured prefix of those bytes.
    data: Bytes,
}

/// One direction's stream state.
#[derive(Debug, Default)]
struct DirState {
    /// Sequence number of stream offset 0.
    base_seq: Option<u32>,
    /// Offset of the next byte to deliver: everything before it has been emitted.
    next_offset: u64,
    /// Out-of-order pieces by offset; non-overlapping, all at or past `next_offset`.
    pending: BTreeMap<u64, Piece>,
    /// Memory charged for `pending`: captured bytes plus [`PIECE_COST`] per piece.
    pending_bytes: usize,
    /// Offset of the FIN, once seen.
    fin_offset: Option<u64>,
}

/// Where chunks of one direction go, and the shared accounting.
struct Sink<'a> {
    conn: ConnId,
    direction: Direction,
    ts_ns: u64,
    stats: &'a mut ReassemblyStats,
    pending_total: &'a mut usize,
    limits: &'a ReassemblyLimits,
    out: &'a mut VecDeque<CaptureEvent>,
}

impl Sink<'_> {
    fn emit(&mut self, offset: u64, len: u64, data: Bytes) {
        self.out.push_back(CaptureEvent::Data(DataChunk {
            conn: self.conn,
            direction: self.direction,
            source: Source::Pcap,
            offset,
            len,
            data,
            ts_ns: self.ts_ns,
            tid: 0,
        }));
    }

    fn gap(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        self.emit(offset, len, Bytes::new());
    }
}

/// Offset distance of `seq` from `from`, in (-2^31, 2^31].
fn seq_delta(seq: u32, from: u32) -> i64 {
    i64::from(seq.wrapping_sub(from) as i32)
}

impl DirState {
    /// Sequence number of `next_offset` (the low 32 bits suffice: sequence space is mod 2^32).
    fn expected_seq(&self, base: u32) -> u32 {
        base.wrapping_add(self.next_offset as u32)
    }

    fn is_finished(&self) -> bool {
        self.fin_offset.is_some_and(|fin| self.next_offset >= fin) && self.pending.is_empty()
    }

    /// Places a segment's payload: `seq` is the sequence number of its first byte, `data` the
    /// captured prefix of `wire_len` bytes.
    fn on_data(&mut self, seq: u32, data: &[u8], wire_len: u64, sink: &mut Sink<'_>) {
        let base = *self.base_seq.get_or_insert(seq);
        let rel_start = seq_delta(seq, self.expected_seq(base));
        if rel_start > i64::from(sink.limits.max_seq_ahead) {
            sink.stats.out_of_window_segments += 1;
            return;
        }
        let rel_end = rel_start.saturating_add(i64::try_from(wire_len).unwrap_or(i64::MAX));
        if rel_end <= 0 {
            sink.stats.retransmitted_segments += 1;
            sink.stats.retransmitted_bytes += wire_len;
            return;
        }
        let (mut data, mut len, start) = if rel_start < 0 {
            // Starts with bytes already delivered: keep only the new tail.
            let old = rel_start.unsigned_abs();
            sink.stats.retransmitted_bytes += old;
            (
                data.get(old as usize..).unwrap_or_default(),
                wire_len - old,
                self.next_offset,
            )
        } else {
            let Some(start) = self.next_offset.checked_add(rel_start.unsigned_abs()) else {
                sink.stats.out_of_window_segments += 1;
                return;
            };
            (data, wire_len, start)
        };
        if let Some(fin) = self.fin_offset {
            let end = start.saturating_add(len);
            if start >= fin {
                sink.stats.bytes_after_fin += len;
                return;
            }
            if end > fin {
                sink.stats.bytes_after_fin += end - fin;
                len = fin - start;
                data = data.get(..len as usize).unwrap_or(data);
            }
        }
        if start == self.next_offset && self.pending.is_empty() {
            sink.emit(start, len, Bytes::copy_from_slice(data));
            self.next_offset = start + len;
            return;
        }
        if start > self.next_offset {
            sink.stats.reordered_segments += 1;
        }
        self.insert_pending(start, len, data, sink);
        self.drain(sink);
        while self.pending.len() > sink.limits.max_pending_segments
            || self.pending_bytes > sink.limits.max_pending_bytes
        {
            sink.stats.reorder_buffer_overflows += 1;
            if !self.skip_first_hole(sink) {
                break;
            }
        }
        if *sink.pending_total > sink.limits.max_pending_bytes_total && !self.pending.is_empty() {
            sink.stats.global_buffer_overflows += 1;
            self.flush(sink);
        }
    }

    /// Stores the parts of `[start, start + len)` not already buffered; the first copy of a byte
    /// wins.
    fn insert_pending(&mut self, start: u64, len: u64, data: &[u8], sink: &mut Sink<'_>) {
        let end = start + len;
        let captured_end = start + data.len() as u64;
        // The piece starting before `start` may reach into it.
        let from = self
            .pending
            .range(..start)
            .next_back()
            .map_or(start, |(&k, _)| k);
        let mut cursor = start;
        let mut uncovered: Vec<(u64, u64)> = Vec::new();
        let (mut duplicate, mut conflicting) = (0u64, 0u64);
        for (&p_start, piece) in self.pending.range(from..end) {
            let p_end = p_start + piece.len;
            if p_end <= cursor {
                continue;
            }
            if p_start > cursor {
                uncovered.push((cursor, p_start));
            }
            let ov_start = p_start.max(cursor);
            let ov_end = p_end.min(end);
            // Compare where both copies were captured.
            let cmp_end = ov_end
                .min(captured_end)
                .min(p_start + piece.data.len() as u64);
            let mut differing = 0u64;
            if cmp_end > ov_start {
                let new = data.get((ov_start - start) as usize..(cmp_end - start) as usize);
                let old = piece
                    .data
                    .get((ov_start - p_start) as usize..(cmp_end - p_start) as usize);
                if let (Some(new), Some(old)) = (new, old) {
                    differing = new.iter().zip(old).filter(|(a, b)| a != b).count() as u64;
                }
            }
            conflicting += differing;
            duplicate += (ov_end - ov_start) - differing;
            cursor = ov_end;
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            uncovered.push((cursor, end));
        }
        sink.stats.retransmitted_bytes += duplicate;
        if conflicting > 0 {
            sink.stats.overlap_conflict_segments += 1;
            sink.stats.overlap_conflict_bytes += conflicting;
        }
        if uncovered.is_empty() {
            sink.stats.retransmitted_segments += 1;
            return;
        }
        for (a, b) in uncovered {
            let part = if a < captured_end {
                data.get((a - start) as usize..(b.min(captured_end) - start) as usize)
                    .unwrap_or_default()
            } else {
                &[]
            };
            let cost = part.len() + PIECE_COST;
            self.pending_bytes += cost;
            *sink.pending_total += cost;
            self.pending.insert(
                a,
                Piece {
                    len: b - a,
                    data: Bytes::copy_from_slice(part),
                },
            );
        }
    }

    /// Emits the buffered pieces that are now contiguous with the delivered stream.
    fn drain(&mut self, sink: &mut Sink<'_>) {
        while let Some(entry) = self.pending.first_entry() {
            let p_start = *entry.key();
            if p_start > self.next_offset {
                break;
            }
            let piece = entry.remove();
            let cost = piece.data.len() + PIECE_COST;
            self.pending_bytes = self.pending_bytes.saturating_sub(cost);
            *sink.pending_total = sink.pending_total.saturating_sub(cost);
            let p_end = p_start + piece.len;
            if p_end <= self.next_offset {
                // Cannot happen while pieces stay at or past `next_offset`; never emit twice.
                continue;
            }
            let skip = self.next_offset - p_start;
            let data = if skip == 0 {
                piece.data
            } else {
                piece.data.slice((skip as usize).min(piece.data.len())..)
            };
            sink.emit(self.next_offset, p_end - self.next_offset, data);
            self.next_offset = p_end;
        }
    }

    /// Gives up on the first hole: emits it as a gap, then what follows it. False if nothing
    /// is buffered.
    fn skip_first_hole(&mut self, sink: &mut Sink<'_>) -> bool {
        let Some((&first, _)) = self.pending.first_key_value() else {
            return false;
        };
        if first > self.next_offset {
            sink.gap(self.next_offset, first - self.next_offset);
            self.next_offset = first;
        }
        self.drain(sink);
        true
    }

    /// Emits everything buffered, with gaps for the holes.
    fn flush(&mut self, sink: &mut Sink<'_>) {
        while self.skip_first_hole(sink) {}
    }

    /// The peer acknowledged up to `ack`: bytes before it that the capture never had are gaps.
    fn on_ack(&mut self, ack: u32, sink: &mut Sink<'_>) {
        let Some(base) = self.base_seq else {
            return;
        };
        let ahead = seq_delta(ack, self.expected_seq(base));
        if ahead <= 0 || ahead > i64::from(sink.limits.max_seq_ahead) {
            return;
        }
        let mut target = self.next_offset.saturating_add(ahead.unsigned_abs());
        // The FIN takes one sequence number but no stream byte.
        if let Some(fin) = self.fin_offset {
            target = target.min(fin);
        }
        while self.next_offset < target {
            self.drain(sink);
            if self.next_offset >= target {
                break;
            }
            let gap_end = self
                .pending
                .first_key_value()
                .map_or(target, |(&k, _)| k.min(target));
            sink.gap(self.next_offset, gap_end - self.next_offset);
            self.next_offset = gap_end;
        }
        self.drain(sink);
    }

    /// Records the FIN that follows `wire_len` payload bytes starting at `seq`.
    fn on_fin(&mut self, seq: u32, wire_len: u64, max_seq_ahead: u32) {
        if self.fin_offset.is_some() {
            return;
        }
        let base = *self.base_seq.get_or_insert(seq);
        let fin_seq = seq.wrapping_add(wire_len as u32);
        let rel = seq_delta(fin_seq, self.expected_seq(base));
        if (0..=i64::from(max_seq_ahead)).contains(&rel) {
            self.fin_offset = self.next_offset.checked_add(rel.unsigned_abs());
        }
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    /// The server side (or the guessed one): bytes it sends are egress.
    local: SocketAddr,
    client_isn: Option<u32>,
    server_isn: Option<u32>,
    dirs: [DirState; 2],
    closed: bool,
    last_ts_ns: u64,
}

impl Conn {
    fn direction_of(&self, src: SocketAddr) -> Direction {
        if src == self.local {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

/// Rebuilds TCP connections from segments in capture order.
///
/// Connection identity is synthesized: `tgid` 0, `fd` a counter of connections in this
/// reassembler, `generation` the number of times that counter wrapped past `i32::MAX`. A SYN on a
/// tuple whose connection closed starts a new connection with a new id. The `ConnOpen` is from
/// the server's side: `local` is the server, `remote` the client, ingress is client → server.
/// Joined mid-stream, the role is `Unknown` and the side with the lower port (then the lower
/// address) is taken as the server.
#[derive(Debug)]
pub struct TcpReassembler {
    limits: ReassemblyLimits,
    table: HashMap<FlowKey, Conn>,
    stats: ReassemblyStats,
    pending_total: usize,
    next_conn: u64,
    segments_since_sweep: u64,
    next_sweep_ns: u64,
}

impl Default for TcpReassembler {
    fn default() -> Self {
        TcpReassembler::new(ReassemblyLimits::default())
    }
}

impl TcpReassembler {
    pub fn new(limits: ReassemblyLimits) -> TcpReassembler {
        TcpReassembler {
            limits,
            table: HashMap::new(),
            stats: ReassemblyStats::default(),
            pending_total: 0,
            next_conn: 0,
            segments_since_sweep: 0,
            next_sweep_ns: 0,
        }
    }

    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Connections currently tracked (live and recently closed).
    pub fn tracked_connections(&self) -> usize {
        self.table.len()
    }

    /// Memory currently charged to reorder buffers (captured bytes plus [`PIECE_COST`] per
    /// piece).
    pub fn pending_bytes(&self) -> usize {
        self.pending_total
    }

    /// Feeds one segment captured at `ts_ns`; resulting events are appended to `out`.
    pub fn on_segment(
        &mut self,
        ts_ns: u64,
        seg: &TcpSegment<'_>,
        out: &mut VecDeque<CaptureEvent>,
    ) {
        let wire_len = u64::from(seg.payload_len);
        self.stats.segments += 1;
        self.stats.payload_bytes += wire_len;
        let captured = (seg.payload.len() as u64).min(wire_len);
        let payload = seg.payload.get(..captured as usize).unwrap_or_default();
        if captured < wire_len {
            self.stats.truncated_segments += 1;
            self.stats.truncated_bytes += wire_len - captured;
        }
        if seg.src == seg.dst {
            self.stats.self_addressed_segments += 1;
            return;
        }
        self.segments_since_sweep += 1;
        if ts_ns >= self.next_sweep_ns && self.segments_since_sweep >= SWEEP_MIN_SEGMENTS {
            self.sweep(ts_ns, out);
        }

        let key = FlowKey::new(seg.src, seg.dst);
        let syn = seg.flags.syn && !seg.flags.ack;
        let syn_ack = seg.flags.syn && seg.flags.ack;

        if let Some(conn) = self.table.get_mut(&key) {
            let replace = if conn.closed {
                if !syn {
                    if wire_len > 0 {
                        self.stats.segments_after_close += 1;
                    }
                    return;
                }
                true
            } else if syn {
                let retransmitted = conn.client_isn == Some(seg.seq)
                    || (conn.client_isn.is_none()
                        && conn.dirs[Direction::Ingress.index()].base_seq
                            == Some(seg.seq.wrapping_add(1)));
                if retransmitted {
                    self.stats.syn_retransmissions += 1;
                    return;
                }
                // Same tuple, new ISN: the old connection ended without us seeing it.
                self.stats.connections_reused += 1;
                let id = conn.id;
                close_conn(
                    conn,
                    ts_ns,
                    &mut self.stats,
                    &mut self.pending_total,
                    &self.limits,
                    out,
                );
                tracing::debug!(conn = %id, "tuple reused by a new SYN");
                true
            } else {
                false
            };
            if replace {
                self.table.remove(&key);
            }
        }

        if !self.table.contains_key(&key) {
            let (local, remote, role) = if syn {
                (seg.dst, seg.src, Role::Server)
            } else if syn_ack {
                (seg.src, seg.dst, Role::Server)
            } else if wire_len > 0 {
                let (server, client) = guess_server(seg.src, seg.dst);
                (server, client, Role::Unknown)
            } else {
                self.stats.segments_without_connection += 1;
                return;
            };
            if self.table.len() >= self.limits.max_connections {
                self.make_room(ts_ns, out);
            }
            let id = self.next_conn_id();
            let mut conn = Conn {
                id,
                local,
                client_isn: None,
                server_isn: None,
                dirs: [DirState::default(), DirState::default()],
                closed: false,
                last_ts_ns: ts_ns,
            };
            if syn {
                conn.client_isn = Some(seg.seq);
                conn.dirs[Direction::Ingress.index()].base_seq = Some(seg.seq.wrapping_add(1));
            } else if syn_ack {
                conn.dirs[Direction::Ingress.index()].base_seq = Some(seg.ack);
            }
            if role == Role::Unknown {
                self.stats.connections_midstream += 1;
            } else {
                self.stats.connections_opened += 1;
            }
            out.push_back(CaptureEvent::Open(ConnOpen {
                conn: id,
                ts_ns,
                role,
                process: ProcessInfo::default(),
                local: Some(local),
                remote: Some(remote),
            }));
            self.table.insert(key, conn);
        }

        let Some(conn) = self.table.get_mut(&key) else {
            return;
        };
        conn.last_ts_ns = conn.last_ts_ns.max(ts_ns);
        let direction = conn.direction_of(seg.src);
        let mut data_seq = seg.seq;
        if seg.flags.syn {
            data_seq = seg.seq.wrapping_add(1);
            if syn_ack {
                if direction != Direction::Egress {
                    // A SYN-ACK from the side we took for the client: simultaneous open or a
                    // wrong mid-stream guess. Nothing sensible to rebuild from it.
                    return;
                }
                match conn.server_isn {
                    Some(isn) if isn == seg.seq => {
                        self.stats.syn_retransmissions += 1;
                        return;
                    }
                    Some(_) => return,
                    None => {
                        conn.server_isn = Some(seg.seq);
                        conn.dirs[Direction::Egress.index()]
                            .base_seq
                            .get_or_insert(data_seq);
                    }
                }
            }
        }

        let id = conn.id;
        let mut sink = Sink {
            conn: id,
            direction,
            ts_ns,
            stats: &mut self.stats,
            pending_total: &mut self.pending_total,
            limits: &self.limits,
            out: &mut *out,
        };
        if wire_len > 0 {
            conn.dirs[direction.index()].on_data(data_seq, payload, wire_len, &mut sink);
        }
        if seg.flags.fin {
            conn.dirs[direction.index()].on_fin(data_seq, wire_len, self.limits.max_seq_ahead);
        }
        if seg.flags.ack {
            sink.direction = direction.opposite();
            conn.dirs[direction.opposite().index()].on_ack(seg.ack, &mut sink);
        }
        if seg.flags.rst || conn.dirs.iter().all(DirState::is_finished) {
            self.stats.connections_closed += 1;
            close_conn(
                conn,
                ts_ns,
                &mut self.stats,
                &mut self.pending_total,
                &self.limits,
                out,
            );
        }
    }

    /// End of input: every live connection is flushed (holes become gaps) and closed, in
    /// connection order.
    pub fn finish(&mut self, out: &mut VecDeque<CaptureEvent>) {
        let mut live: Vec<Conn> = self
            .table
            .drain()
            .map(|(_, c)| c)
            .filter(|c| !c.closed)
            .collect();
        live.sort_by_key(|c| c.id);
        for mut conn in live {
            self.stats.connections_unfinished += 1;
            let ts = conn.last_ts_ns;
            close_conn(
                &mut conn,
                ts,
                &mut self.stats,
                &mut self.pending_total,
                &self.limits,
                out,
            );
        }
    }

    fn next_conn_id(&mut self) -> ConnId {
        const FDS: u64 = i32::MAX as u64;
        let n = self.next_conn;
        self.next_conn += 1;
        ConnId {
            tgid: 0,
            fd: (n % FDS) as i32,
            generation: (n / FDS) as u32,
        }
    }

    /// Forgets closed tuples past their linger time and closes idle connections.
    fn sweep(&mut self, now_ns: u64, out: &mut VecDeque<CaptureEvent>) {
        self.segments_since_sweep = 0;
        let interval = (self.limits.idle_timeout_ns / 4).max(1);
        self.next_sweep_ns = now_ns.saturating_add(interval);
        let limits = self.limits;
        self.table.retain(|_, c| {
            !c.closed || now_ns.saturating_sub(c.last_ts_ns) <= limits.closed_linger_ns
        });
        let mut idle: Vec<(ConnId, FlowKey)> = self
            .table
            .iter()
            .filter(|(_, c)| {
                !c.closed && now_ns.saturating_sub(c.last_ts_ns) > limits.idle_timeout_ns
            })
            .map(|(k, c)| (c.id, *k))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle {
            if let Some(mut conn) = self.table.remove(&key) {
                self.stats.connections_expired += 1;
                close_conn(
                    &mut conn,
                    now_ns,
                    &mut self.stats,
                    &mut self.pending_total,
                    &limits,
                    out,
                );
            }
        }
    }

    /// The table is full: forget closed tuples, then evict the least recently active live
    /// connections (a sixteenth of the table, so the scan is paid once per many insertions).
    fn make_room(&mut self, now_ns: u64, out: &mut VecDeque<CaptureEvent>) {
        self.table.retain(|_, c| !c.closed);
        if self.table.len() < self.limits.max_connections {
            return;
        }
        let mut by_age: Vec<(u64, ConnId, FlowKey)> = self
            .table
            .iter()
            .map(|(k, c)| (c.last_ts_ns, c.id, *k))
            .collect();
        let evict = (self.limits.max_connections / 16).max(1).min(by_age.len());
        if evict < by_age.len() {
            by_age.select_nth_unstable(evict);
        }
        let mut victims: Vec<(u64, ConnId, FlowKey)> = by_age.into_iter().take(evict).collect();
        victims.sort_unstable();
        tracing::debug!(evicted = victims.len(), "connection table full");
        let limits = self.limits;
        for (_, _, key) in victims {
            if let Some(mut conn) = self.table.remove(&key) {
                self.stats.connections_evicted += 1;
                close_conn(
                    &mut conn,
                    now_ns,
                    &mut self.stats,
                    &mut self.pending_total,
                    &limits,
                    out,
                );
            }
        }
    }
}

/// Flushes both directions (holes become gaps), emits the Close, and marks the tuple closed.
/// The caller counts why it closed.
fn close_conn(
    conn: &mut Conn,
    ts_ns: u64,
    stats: &mut ReassemblyStats,
    pending_total: &mut usize,
    limits: &ReassemblyLimits,
    out: &mut VecDeque<CaptureEvent>,
) {
    for direction in Direction::BOTH {
        let mut sink = Sink {
            conn: conn.id,
            direction,
            ts_ns,
            stats: &mut *stats,
            pending_total: &mut *pending_total,
            limits,
            out: &mut *out,
        };
        conn.dirs[direction.index()].flush(&mut sink);
    }
    conn.closed = true;
    out.push_back(CaptureEvent::Close(ConnClose {
        conn: conn.id,
        ts_ns,
    }));
}

/// Mid-stream server guess: the lower port (servers listen on low, well-known ports; clients get
/// ephemeral ones), then the lower address.
fn guess_server(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if (a.port(), a) <= (b.port(), b) {
        (a, b)
    } else {
        (b, a)
    }
}
