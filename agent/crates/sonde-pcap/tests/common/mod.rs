//! Shared test helpers: locating the corpora and replaying a capture into per-connection byte
//! streams while checking the event-stream invariants every consumer relies on.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use sonde_model::{CaptureEvent, ConnId, ConnOpen, Direction, Source};
use sonde_pcap::{PcapError, PcapReader, PcapStats};

pub mod synth;

/// `$SONDE_CORPORA`, else `../shared/corpora` beside the repository. Panics when
/// `SONDE_CORPORA` is set but missing; `None` (with a note) when neither exists.
pub fn corpora_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SONDE_CORPORA") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "SONDE_CORPORA={} does not exist",
            dir.display()
        );
        return Some(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/corpora");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "note: corpora not found at {} and SONDE_CORPORA unset; skipping",
            dir.display()
        );
        None
    }
}

/// A corpus sub-folder; panics if the corpora exist but the folder does not.
pub fn corpus(relative: &str) -> Option<PathBuf> {
    let dir = corpora_dir()?.join(relative);
    assert!(dir.is_dir(), "corpus {} is missing", dir.display());
    Some(dir)
}

/// One direction as rebuilt: captured bytes in order, and what was missing.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    pub bytes: Vec<u8>,
    /// Total length of the direction (captured + missing).
    pub len: u64,
    /// Bytes known to exist but not captured.
    pub missing: u64,
    /// (offset, len) of each chunk without any captured byte.
    pub gaps: Vec<(u64, u64)>,
    pub chunks: usize,
}

#[derive(Debug, Clone)]
pub struct Conn {
    pub open: ConnOpen,
    pub streams: [Stream; 2],
    pub closed: bool,
}

impl Conn {
    pub fn stream(&self, direction: Direction) -> &Stream {
        &self.streams[direction.index()]
    }
}

#[derive(Debug)]
pub struct Replay {
    pub conns: BTreeMap<ConnId, Conn>,
    pub events: Vec<CaptureEvent>,
    pub stats: PcapStats,
    pub error: Option<PcapError>,
}

/// Collects every event and checks: Open first and once, chunk offsets contiguous per direction,
/// nothing after Close, every connection closed at the end, source Pcap, timestamps present.
pub fn replay(mut reader: PcapReader) -> Replay {
    let mut conns: BTreeMap<ConnId, Conn> = BTreeMap::new();
    let mut events = Vec::new();
    let mut error = None;
    while let Some(item) = reader.next_event() {
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                assert!(error.is_none(), "a second error: {e}");
                error = Some(e);
                continue;
            }
        };
        match &event {
            CaptureEvent::Open(open) => {
                assert!(
                    !conns.contains_key(&open.conn),
                    "second Open for {}",
                    open.conn
                );
                assert_eq!(open.conn.tgid, 0);
                assert!(open.local.is_some() && open.remote.is_some());
                conns.insert(
                    open.conn,
                    Conn {
                        open: open.clone(),
                        streams: Default::default(),
                        closed: false,
                    },
                );
            }
            CaptureEvent::Data(chunk) => {
                let conn = conns.get_mut(&chunk.conn).expect("Data before Open");
                assert!(!conn.closed, "Data after Close on {}", chunk.conn);
                assert_eq!(chunk.source, Source::Pcap);
                assert!(chunk.len > 0, "empty chunk");
                assert!(chunk.data.len() as u64 <= chunk.len, "more data than len");
                let stream = &mut conn.streams[chunk.direction.index()];
                assert_eq!(
                    chunk.offset, stream.len,
                    "chunk not contiguous on {} {:?}",
                    chunk.conn, chunk.direction
                );
                stream.len = chunk.end();
                stream.missing += chunk.missing();
                stream.bytes.extend_from_slice(&chunk.data);
                stream.chunks += 1;
                if chunk.data.is_empty() {
                    stream.gaps.push((chunk.offset, chunk.len));
                }
            }
            CaptureEvent::Close(close) => {
                let conn = conns.get_mut(&close.conn).expect("Close before Open");
                assert!(!conn.closed, "second Close on {}", close.conn);
                conn.closed = true;
            }
        }
        events.push(event);
    }
    assert!(
        reader.next_event().is_none(),
        "iterator resumed after its end"
    );
    for (id, conn) in &conns {
        assert!(conn.closed, "{id} never closed");
    }
    Replay {
        conns,
        events,
        stats: reader.stats(),
        error,
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn contains_nocase(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}
