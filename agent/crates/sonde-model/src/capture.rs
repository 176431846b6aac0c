//! Events produced by capture sources (the kernel, a recording, a pcap).

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::conn::{ConnId, Direction, ProcessInfo, Role};

/// Where a chunk of payload was taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Source {
    /// Socket syscalls (read/write family): the bytes on the wire, which may be TLS records.
    #[default]
    Syscall,
    /// Plaintext inside a TLS library (uprobes).
    Tls,
    /// Rebuilt from a packet capture.
    Pcap,
}

/// A connection became known: connect/accept seen, or its first data when it predates capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnOpen {
    pub conn: ConnId,
    pub ts_ns: u64,
    pub role: Role,
    pub process: ProcessInfo,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

/// A contiguous piece of one direction's byte stream.
///
/// The chunk covers `[offset, offset + len)` of its direction. Only the first `data.len()` bytes
/// were captured; the remaining `len - data.len()` bytes are known to exist but are missing (a
/// per-call cap, a sendfile, a dropped body), so offsets after the chunk stay exact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataChunk {
    pub conn: ConnId,
    pub direction: Direction,
    pub source: Source,
    pub offset: u64,
    pub len: u64,
    pub data: Bytes,
    pub ts_ns: u64,
    pub tid: u32,
}

impl DataChunk {
    /// Bytes of this chunk that were not captured.
    pub fn missing(&self) -> u64 {
        self.len.saturating_sub(self.data.len() as u64)
    }

    /// Offset one past the end of the chunk.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// A connection was closed (or expired).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnClose {
    pub conn: ConnId,
    pub ts_ns: u64,
}

/// Everything a capture source emits, in the order it emits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureEvent {
    Open(ConnOpen),
    Data(DataChunk),
    Close(ConnClose),
}

impl CaptureEvent {
    pub fn conn(&self) -> ConnId {
        match self {
            CaptureEvent::Open(o) => o.conn,
            CaptureEvent::Data(d) => d.conn,
            CaptureEvent::Close(c) => c.conn,
        }
    }

    pub fn ts_ns(&self) -> u64 {
        match self {
            CaptureEvent::Open(o) => o.ts_ns,
            CaptureEvent::Data(d) => d.ts_ns,
            CaptureEvent::Close(c) => c.ts_ns,
        }
    }
}
