//! Per-connection, per-direction byte stream reassembly with explicit gaps and bounded memory.
//!
//! Capture sources deliver [`CaptureEvent`]s whose data chunks carry their byte offset within
//! their direction. Chunks from different CPUs can arrive slightly out of order, parts of a chunk
//! may not have been captured, and whole chunks may have been dropped. The [`Assembler`] turns
//! that into an ordered stream of [`StreamEvent`]s per connection and direction: data in offset
//! order, every missing range as an explicit [`StreamEvent::Gap`] (never glued), duplicates and
//! overlaps dropped, and memory bounded per connection and globally.
//!
//! The assembler has no clock of its own: idle expiry and reorder timeouts are driven by
//! [`Assembler::tick`] with the caller's notion of "now" (kernel monotonic time for live capture,
//! recorded time for replays), which keeps replays deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnMeta, ConnOpen, DataChunk, Direction, Role,
};

/// What the assembler delivers, in order per connection and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A connection became known. Always delivered before any other event of the connection. A
    /// second `Open` for a known connection carries better metadata (its open event arrived after
    /// its first data); receivers replace what they hold.
    Open(Arc<ConnMeta>),
    /// Captured bytes at `offset` of the direction; consecutive with what came before (or with a
    /// preceding `Gap`).
    Data {
        conn: ConnId,
        dir: Direction,
        offset: u64,
        bytes: Bytes,
        ts_ns: u64,
    },
    /// `len` bytes at `offset` exist on the wire but were not captured.
    Gap {
        conn: ConnId,
        dir: Direction,
        offset: u64,
        len: u64,
    },
    /// The connection ended (closed, expired or evicted); no further events for it.
    Close {
        conn: ConnId,
        ts_ns: u64,
        reason: CloseReason,
    },
}

/// Why a connection's stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CloseReason {
    /// The capture source reported the close.
    Closed,
    /// No event for longer than the idle timeout.
    Expired,
    /// Dropped to stay within the connection-count budget.
    Evicted,
    /// End of input ([`Assembler::flush`]).
    Flushed,
}

/// Limits of the assembler. Every field has a serde default, documented on the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssemblerConfig {
    /// Out-of-order chunks held per direction while waiting for the missing range before it is
    /// declared a gap. Default 32: kernel ring buffers reorder by a few events only.
    pub reorder_window_chunks: usize,
    /// Bytes held out of order per connection (both directions). Default 1 MiB.
    pub max_conn_buffer_bytes: usize,
    /// Bytes held out of order over all connections. Default 64 MiB.
    pub max_total_buffer_bytes: usize,
    /// Connections tracked at once; beyond it the least recently active ones are evicted.
    /// Default 65 536.
    pub max_connections: usize,
    /// A connection without events for this long is expired at the next `tick`. Default 300 s.
    pub idle_timeout_ns: u64,
    /// Out-of-order chunks older than this are released (the hole becomes a gap) at the next
    /// `tick`. Default 100 ms.
    pub reorder_timeout_ns: u64,
    /// Recently closed connections remembered so that late chunks do not resurrect them.
    /// Default 4096.
    pub closed_memory: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            reorder_window_chunks: 32,
            max_conn_buffer_bytes: 1 << 20,
            max_total_buffer_bytes: 64 << 20,
            max_connections: 65_536,
            idle_timeout_ns: 300_000_000_000,
            reorder_timeout_ns: 100_000_000,
            closed_memory: 4096,
        }
    }
}

/// A configuration the assembler cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("assembler limit `{0}` must be greater than zero")]
    Zero(&'static str),
}

impl AssemblerConfig {
    /// Rejects limits that would make the assembler drop everything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::Zero("max_connections"));
        }
        if self.idle_timeout_ns == 0 {
            return Err(ConfigError::Zero("idle_timeout_ns"));
        }
        Ok(())
    }
}

/// Running totals; all monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Data chunks received.
    pub chunks: u64,
    /// Captured bytes delivered as `Data`.
    pub bytes: u64,
    /// Chunks that arrived ahead of a hole and were held for reordering.
    pub reordered: u64,
    /// Gaps delivered, and the bytes they cover.
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Chunks entirely covered by bytes already delivered or held (dropped).
    pub duplicates: u64,
    /// Chunks partly covered by earlier bytes (the overlapping part dropped), and those bytes.
    pub overlaps: u64,
    pub overlap_bytes: u64,
    /// Holes declared gaps early to stay within the byte budgets.
    pub budget_flushes: u64,
    /// Connections evicted to stay within the connection budget.
    pub evicted: u64,
    /// Connections expired for idleness.
    pub expired: u64,
    /// Connections first seen through their data (no open event before it).
    pub implicit_opens: u64,
    /// Data for connections closed a moment ago (dropped).
    pub late_after_close: u64,
    /// Closes of connections already closed: the kernel side ends a connection it found not
    /// HTTP at once, and again when it is closed. Not a loss.
    pub repeated_closes: u64,
    /// Chunks carrying more data than their length (surplus dropped).
    pub malformed: u64,
    /// Connections currently tracked and bytes currently held out of order.
    pub connections: u64,
    pub buffered_bytes: u64,
}

/// One direction's reassembly state.
#[derive(Debug, Default)]
struct DirState {
    /// Offset of the next byte to deliver.
    next: u64,
    /// Chunks ahead of `next`, keyed by offset, with the time they arrived.
    pending: BTreeMap<u64, (DataChunk, u64)>,
    pending_bytes: usize,
}

#[derive(Debug)]
struct ConnState {
    meta: Arc<ConnMeta>,
    dirs: [DirState; 2],
    last_ts: u64,
}

impl ConnState {
    fn buffered(&self) -> usize {
        self.dirs[0].pending_bytes + self.dirs[1].pending_bytes
    }
}

/// Reorders chunks per connection and direction and reports holes as gaps.
#[derive(Debug)]
pub struct Assembler {
    cfg: AssemblerConfig,
    conns: FxHashMap<ConnId, ConnState>,
    recently_closed: FxHashSet<ConnId>,
    closed_order: VecDeque<ConnId>,
    buffered_bytes: usize,
    counters: Counters,
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig) -> Result<Assembler, ConfigError> {
        cfg.validate()?;
        Ok(Assembler {
            cfg,
            conns: FxHashMap::default(),
            recently_closed: FxHashSet::default(),
            closed_order: VecDeque::new(),
            buffered_bytes: 0,
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &AssemblerConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.connections = self.conns.len() as u64;
        c.buffered_bytes = self.buffered_bytes as u64;
        c
    }

    /// Metadata of a tracked connection.
    pub fn meta(&self, conn: &ConnId) -> Option<&Arc<ConnMeta>> {
        self.conns.get(conn).map(|c| &c.meta)
    }

    /// Feeds one capture event; resulting stream events go to `sink`, in order.
    pub fn push(&mut self, ev: CaptureEvent, sink: &mut impl FnMut(StreamEvent)) {
        match ev {
            CaptureEvent::Open(open) => self.on_open(open, sink),
            CaptureEvent::Data(chunk) => self.on_data(chunk, sink),
            CaptureEvent::Close(close) => self.on_close(close, sink),
        }
    }

    /// Releases holes older than the reorder timeout and expires idle connections.
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl FnMut(StreamEvent)) {
        let reorder_deadline = now_ns.saturating_sub(self.cfg.reorder_timeout_ns);
        let idle_deadline = now_ns.saturating_sub(self.cfg.idle_timeout_ns);
        let mut idle = Vec::new();
        for (id, conn) in self.conns.iter_mut() {
            if conn.last_ts < idle_deadline {
                idle.push(*id);
                continue;
            }
            for dir in Direction::BOTH {
                let stale = conn.dirs[dir.index()]
                    .pending
                    .values()
                    .any(|(_, arrived)| *arrived < reorder_deadline);
                if stale {
                    let released = release_all(
                        *id,
                        dir,
                        &mut conn.dirs[dir.index()],
                        &mut self.counters,
                        sink,
                    );
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(released);
                }
            }
        }
        idle.sort_unstable();
        for id in idle {
            self.counters.expired += 1;
            self.end_conn(id, now_ns, CloseReason::Expired, sink);
        }
    }

    /// End of input: every hole becomes a gap and every connection is closed.
    pub fn flush(&mut self, sink: &mut impl FnMut(StreamEvent)) {
        let mut ids: Vec<(ConnId, u64)> =
            self.conns.iter().map(|(id, c)| (*id, c.last_ts)).collect();
        ids.sort_unstable();
        for (id, ts) in ids {
            self.end_conn(id, ts, CloseReason::Flushed, sink);
        }
    }

    fn on_open(&mut self, open: ConnOpen, sink: &mut impl FnMut(StreamEvent)) {
        self.forget_closed(&open.conn);
        let meta = Arc::new(ConnMeta {
            id: open.conn,
            role: open.role,
            process: open.process,
            local: open.local,
            remote: open.remote,
        });
        if let Some(conn) = self.conns.get_mut(&open.conn) {
            // The open arrived after the first data of the connection: upgrade the metadata.
            conn.meta = meta.clone();
            conn.last_ts = conn.last_ts.max(open.ts_ns);
            sink(StreamEvent::Open(meta));
            return;
        }
        self.make_room(open.ts_ns, sink);
        self.conns.insert(
            open.conn,
            ConnState {
                meta: meta.clone(),
                dirs: Default::default(),
                last_ts: open.ts_ns,
            },
        );
        sink(StreamEvent::Open(meta));
    }

    fn on_data(&mut self, mut chunk: DataChunk, sink: &mut impl FnMut(StreamEvent)) {
        self.counters.chunks += 1;
        if chunk.data.len() as u64 > chunk.len {
            // A source bug: more bytes than the chunk covers. Offsets are what later chunks
            // rely on, so the surplus is dropped.
            self.counters.malformed += 1;
            chunk
                .data
                .truncate(usize::try_from(chunk.len).unwrap_or(usize::MAX));
        }
        let id = chunk.conn;
        if self.recently_closed.contains(&id) {
            self.counters.late_after_close += 1;
            return;
        }
        if !self.conns.contains_key(&id) {
            self.make_room(chunk.ts_ns, sink);
            self.counters.implicit_opens += 1;
            let meta = Arc::new(ConnMeta {
                id,
                role: Role::Unknown,
                process: Default::default(),
                local: None,
                remote: None,
            });
            self.conns.insert(
                id,
                ConnState {
                    meta: meta.clone(),
                    dirs: Default::default(),
                    last_ts: chunk.ts_ns,
                },
            );
            sink(StreamEvent::Open(meta));
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.last_ts = conn.last_ts.max(chunk.ts_ns);
        let dir = chunk.direction;
        let state = &mut conn.dirs[dir.index()];

        let Some(chunk) = trim_to(chunk, state.next, &mut self.counters) else {
            return;
        };
        if chunk.offset == state.next {
            deliver(chunk, state, &mut self.counters, sink);
            // The chunk may have closed a hole: deliver what now follows.
            let released = drain_ready(state, &mut self.counters, sink);
            self.buffered_bytes = self.buffered_bytes.saturating_sub(released);
            return;
        }

        // Ahead of a hole: hold it.
        if let Some((held, _)) = state.pending.get(&chunk.offset)
            && held.len >= chunk.len
        {
            self.counters.duplicates += 1;
            return;
        }
        self.counters.reordered += 1;
        let size = chunk.data.len();
        let arrived = chunk.ts_ns;
        if let Some((old, _)) = state.pending.insert(chunk.offset, (chunk, arrived)) {
            state.pending_bytes = state.pending_bytes.saturating_sub(old.data.len());
            self.buffered_bytes = self.buffered_bytes.saturating_sub(old.data.len());
        }
        state.pending_bytes += size;
        self.buffered_bytes += size;

        let over_window = state.pending.len() > self.cfg.reorder_window_chunks;
        let over_conn = conn.buffered() > self.cfg.max_conn_buffer_bytes;
        if over_window || over_conn {
            if over_conn {
                self.counters.budget_flushes += 1;
            }
            let state = &mut conn.dirs[dir.index()];
            let released = release_all(id, dir, state, &mut self.counters, sink);
            self.buffered_bytes = self.buffered_bytes.saturating_sub(released);
        }
        if self.buffered_bytes > self.cfg.max_total_buffer_bytes {
            self.shed_global(sink);
        }
    }

    fn on_close(&mut self, close: ConnClose, sink: &mut impl FnMut(StreamEvent)) {
        if self.conns.contains_key(&close.conn) {
            self.end_conn(close.conn, close.ts_ns, CloseReason::Closed, sink);
        } else if self.recently_closed.contains(&close.conn) {
            self.counters.repeated_closes += 1;
        }
    }

    /// Releases held chunks of the connections holding the most until within the global budget.
    fn shed_global(&mut self, sink: &mut impl FnMut(StreamEvent)) {
        while self.buffered_bytes > self.cfg.max_total_buffer_bytes {
            let Some(id) = self
                .conns
                .iter()
                .max_by_key(|(id, c)| (c.buffered(), **id))
                .map(|(id, _)| *id)
            else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                break;
            };
            if conn.buffered() == 0 {
                break;
            }
            self.counters.budget_flushes += 1;
            for dir in Direction::BOTH {
                let released = release_all(
                    id,
                    dir,
                    &mut conn.dirs[dir.index()],
                    &mut self.counters,
                    sink,
                );
                self.buffered_bytes = self.buffered_bytes.saturating_sub(released);
            }
        }
    }

    /// Evicts the least recently active eighth of the connections when the table is full, so
    /// that the scan is paid once per many new connections rather than for each.
    fn make_room(&mut self, now_ns: u64, sink: &mut impl FnMut(StreamEvent)) {
        if self.conns.len() < self.cfg.max_connections {
            return;
        }
        let mut by_age: Vec<(u64, ConnId)> =
            self.conns.iter().map(|(id, c)| (c.last_ts, *id)).collect();
        let victims = (self.conns.len() / 8).max(1).min(by_age.len());
        if victims < by_age.len() {
            by_age.select_nth_unstable(victims);
        }
        by_age.truncate(victims);
        by_age.sort_unstable();
        for (_, id) in by_age {
            self.counters.evicted += 1;
            self.end_conn(id, now_ns, CloseReason::Evicted, sink);
        }
    }

    fn end_conn(
        &mut self,
        id: ConnId,
        ts_ns: u64,
        reason: CloseReason,
        sink: &mut impl FnMut(StreamEvent),
    ) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        for dir in Direction::BOTH {
            let released = release_all(
                id,
                dir,
                &mut conn.dirs[dir.index()],
                &mut self.counters,
                sink,
            );
            self.buffered_bytes = self.buffered_bytes.saturating_sub(released);
        }
        sink(StreamEvent::Close {
            conn: id,
            ts_ns,
            reason,
        });
        self.remember_closed(id);
    }

    fn remember_closed(&mut self, id: ConnId) {
        if self.cfg.closed_memory == 0 {
            return;
        }
        if self.recently_closed.insert(id) {
            self.closed_order.push_back(id);
        }
        while self.closed_order.len() > self.cfg.closed_memory {
            if let Some(old) = self.closed_order.pop_front() {
                self.recently_closed.remove(&old);
            }
        }
    }

    fn forget_closed(&mut self, id: &ConnId) {
        if self.recently_closed.remove(id) {
            self.closed_order.retain(|c| c != id);
        }
    }
}

/// Drops the part of `chunk` before `next` (already delivered). `None` when nothing is left.
fn trim_to(mut chunk: DataChunk, next: u64, counters: &mut Counters) -> Option<DataChunk> {
    if chunk.offset >= next {
        return Some(chunk);
    }
    if chunk.end() <= next {
        counters.duplicates += 1;
        return None;
    }
    let cut = next - chunk.offset;
    counters.overlaps += 1;
    counters.overlap_bytes = counters.overlap_bytes.saturating_add(cut);
    let captured = chunk.data.len() as u64;
    chunk.data = if cut >= captured {
        Bytes::new()
    } else {
        // `cut < captured <= usize::MAX`, so the conversion holds.
        chunk
            .data
            .slice(usize::try_from(cut).unwrap_or(chunk.data.len())..)
    };
    chunk.offset = next;
    chunk.len -= cut;
    Some(chunk)
}

/// Delivers a chunk that starts exactly at `state.next`: its captured prefix as data, its
/// uncaptured tail as a gap.
fn deliver(
    chunk: DataChunk,
    state: &mut DirState,
    counters: &mut Counters,
    sink: &mut impl FnMut(StreamEvent),
) {
    let missing = chunk.missing();
    let captured = chunk.data.len() as u64;
    if captured > 0 {
        counters.bytes += captured;
        sink(StreamEvent::Data {
            conn: chunk.conn,
            dir: chunk.direction,
            offset: chunk.offset,
            bytes: chunk.data,
            ts_ns: chunk.ts_ns,
        });
    }
    if missing > 0 {
        emit_gap(
            chunk.conn,
            chunk.direction,
            chunk.offset.saturating_add(captured),
            missing,
            counters,
            sink,
        );
    }
    state.next = chunk.offset.saturating_add(chunk.len);
}

fn emit_gap(
    conn: ConnId,
    dir: Direction,
    offset: u64,
    len: u64,
    counters: &mut Counters,
    sink: &mut impl FnMut(StreamEvent),
) {
    counters.gaps += 1;
    counters.gap_bytes = counters.gap_bytes.saturating_add(len);
    sink(StreamEvent::Gap {
        conn,
        dir,
        offset,
        len,
    });
}

/// Delivers held chunks that are now contiguous with `state.next`. Returns the bytes released.
fn drain_ready(
    state: &mut DirState,
    counters: &mut Counters,
    sink: &mut impl FnMut(StreamEvent),
) -> usize {
    let mut released = 0;
    while let Some(entry) = state.pending.first_entry() {
        if *entry.key() > state.next {
            break;
        }
        let (chunk, _) = entry.remove();
        released += chunk.data.len();
        state.pending_bytes = state.pending_bytes.saturating_sub(chunk.data.len());
        if let Some(chunk) = trim_to(chunk, state.next, counters) {
            deliver(chunk, state, counters, sink);
        }
    }
    released
}

/// Gives up waiting: every hole before a held chunk becomes a gap and all held chunks are
/// delivered. Returns the bytes released.
fn release_all(
    conn: ConnId,
    dir: Direction,
    state: &mut DirState,
    counters: &mut Counters,
    sink: &mut impl FnMut(StreamEvent),
) -> usize {
    let mut released = 0;
    while let Some(entry) = state.pending.first_entry() {
        let offset = *entry.key();
        if offset > state.next {
            emit_gap(conn, dir, state.next, offset - state.next, counters, sink);
            state.next = offset;
        }
        released += drain_ready(state, counters, sink);
    }
    state.pending_bytes = 0;
    released
}

#[cfg(test)]
mod tests;
