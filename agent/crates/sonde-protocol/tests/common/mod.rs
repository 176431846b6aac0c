//! Shared helpers of the corpus tests: locating the corpora and turning conversations into
//! capture events.

#![allow(dead_code)]

use std::path::PathBuf;

use bytes::Bytes;
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, Exchange, ProcessInfo, Role,
    Source,
};
use sonde_protocol::{Tracker, TrackerConfig, TrackerStats};

pub const CONN: ConnId = ConnId {
    tgid: 100,
    fd: 9,
    generation: 0,
};

/// The corpus folder `name`: `$SONDE_CORPORA/name` if the variable is set (and then it must
/// exist), else `../shared/corpora/name` beside the repository. `None` (with a printed note)
/// when neither exists, so a checkout without the corpora still builds and tests.
pub fn corpus(name: &str) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("SONDE_CORPORA") {
        let dir = PathBuf::from(root).join(name);
        assert!(
            dir.is_dir(),
            "SONDE_CORPORA is set but {} is missing",
            dir.display()
        );
        return Some(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../../shared/corpora")
        .join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "note: corpus {name} not found at {}; skipping",
            dir.display()
        );
        None
    }
}

/// One delivery of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Data(Direction, Vec<u8>),
    /// Bytes that were lost in capture.
    Gap(Direction, u64),
}

/// Capture events of a client-side capture of `deliveries` on one connection: each delivery is
/// one chunk with its own timestamp; an optional `split` cuts delivery `.0` in two at `.1`
/// (both halves keep the delivery's timestamp, as two reads within one tick would).
pub fn to_events(deliveries: &[Delivery], split: Option<(usize, usize)>) -> Vec<CaptureEvent> {
    let mut evs = vec![CaptureEvent::Open(ConnOpen {
        conn: CONN,
        ts_ns: 0,
        role: Role::Client,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })];
    let mut offsets = [0u64; 2];
    let mut push = |dir: Direction, data: Bytes, len: u64, ts: u64| {
        let off = &mut offsets[dir.index()];
        evs.push(CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: dir,
            source: Source::Syscall,
            offset: *off,
            len,
            data,
            ts_ns: ts,
            tid: 1,
        }));
        *off += len;
    };
    for (i, d) in deliveries.iter().enumerate() {
        let ts = (i as u64 + 1) * 1_000_000;
        match d {
            Delivery::Data(dir, data) => {
                let data = Bytes::copy_from_slice(data);
                match split {
                    Some((at, cut)) if at == i && cut > 0 && cut < data.len() => {
                        push(*dir, data.slice(..cut), cut as u64, ts);
                        push(*dir, data.slice(cut..), (data.len() - cut) as u64, ts);
                    }
                    _ => push(*dir, data.clone(), data.len() as u64, ts),
                }
            }
            Delivery::Gap(dir, len) => push(*dir, Bytes::new(), *len, ts),
        }
    }
    let end = (deliveries.len() as u64 + 1) * 1_000_000;
    evs.push(CaptureEvent::Close(ConnClose {
        conn: CONN,
        ts_ns: end,
    }));
    evs
}

pub fn track(evs: Vec<CaptureEvent>) -> (Vec<Exchange>, TrackerStats) {
    track_with(TrackerConfig::default(), evs)
}

pub fn track_with(cfg: TrackerConfig, evs: Vec<CaptureEvent>) -> (Vec<Exchange>, TrackerStats) {
    let mut t = Tracker::new(cfg).expect("valid config");
    let mut out = Vec::new();
    for ev in evs {
        t.on_event(ev, &mut out);
    }
    t.flush(&mut out);
    (out, t.stats())
}
