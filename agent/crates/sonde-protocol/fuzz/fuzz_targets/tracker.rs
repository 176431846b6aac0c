//! The Tracker fed arbitrary chunks: the input is a script of deliveries on two connections
//! (direction, captured bytes, uncaptured tail, out-of-order offsets, opens, closes, ticks).
//! Nothing may panic, and the tracker's gauges must return to zero after a flush.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, ProcessInfo, Role, Source,
};
use sonde_protocol::{Tracker, TrackerConfig};

fuzz_target!(|input: &[u8]| {
    let cfg = TrackerConfig {
        max_head_bytes: 1024,
        max_headers: 16,
        body_sample_bytes: 4096,
        body_wire_sample_bytes: 4096,
        max_pipelined: 8,
        response_timeout_ns: 1_000,
        ..TrackerConfig::default()
    };
    let Ok(mut tracker) = Tracker::new(cfg) else { return };
    let mut out = Vec::new();
    let mut offsets = [[0u64; 2]; 2];
    let mut ts = 0u64;
    let mut rest = input;
    while let [op, len, tail @ ..] = rest {
        let conn_index = usize::from(op & 1);
        let conn = ConnId { tgid: 1, fd: conn_index as i32, generation: 0 };
        let dir = if op & 2 == 0 { Direction::Egress } else { Direction::Ingress };
        let take = usize::from(*len).min(tail.len());
        let (data, next) = tail.split_at(take);
        rest = next;
        ts += 100;
        let ev = match op >> 2 {
            0..=40 => {
                let off = &mut offsets[conn_index][dir.index()];
                let missing = u64::from(op >> 5) * 37;
                let chunk = DataChunk {
                    conn,
                    direction: dir,
                    source: Source::Syscall,
                    offset: *off,
                    len: data.len() as u64 + missing,
                    data: Bytes::copy_from_slice(data),
                    ts_ns: ts,
                    tid: 0,
                };
                *off += chunk.len;
                CaptureEvent::Data(chunk)
            }
            41..=48 => {
                // Out of order: a chunk ahead of the expected offset.
                let off = offsets[conn_index][dir.index()] + u64::from(*len);
                CaptureEvent::Data(DataChunk {
                    conn,
                    direction: dir,
                    source: Source::Syscall,
                    offset: off,
                    len: data.len() as u64,
                    data: Bytes::copy_from_slice(data),
                    ts_ns: ts,
                    tid: 0,
                })
            }
            49..=54 => CaptureEvent::Open(ConnOpen {
                conn,
                ts_ns: ts,
                role: if op & 4 == 0 { Role::Client } else { Role::Unknown },
                process: ProcessInfo::default(),
                local: None,
                remote: None,
            }),
            55..=59 => {
                offsets[conn_index] = [0, 0];
                CaptureEvent::Close(ConnClose { conn, ts_ns: ts })
            }
            _ => {
                tracker.tick(ts + u64::from(*len) * 1_000, &mut out);
                continue;
            }
        };
        tracker.on_event(ev, &mut out);
        out.clear();
    }
    tracker.flush(&mut out);
    let stats = tracker.stats();
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats.stream.buffered_bytes, 0);
});
