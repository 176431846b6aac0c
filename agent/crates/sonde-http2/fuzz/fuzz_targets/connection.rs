//! Frames + HPACK + streams: arbitrary bytes split into reads and gaps of both directions.
//!
//! Input layout: byte 0 picks the constructor and role; then records of
//! `[control, len, bytes...]` where control bit 0 is the direction, bit 1 a gap before the read.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sonde_http2::{Connection, Http2Config};
use sonde_model::{ConnId, ConnMeta, Direction, ProcessInfo, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let role = match mode % 3 {
        0 => Role::Client,
        1 => Role::Server,
        _ => Role::Unknown,
    };
    let meta = Arc::new(ConnMeta {
        id: ConnId { tgid: 1, fd: 1, generation: 0 },
        role,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    });
    let cfg = Http2Config {
        max_streams: 8,
        max_header_block_bytes: 4096,
        body_sample_bytes: 1024,
        ..Http2Config::default()
    };
    let mut conn = if mode & 0x80 != 0 {
        Connection::new_late(meta, &cfg)
    } else {
        let mut c = Connection::new(meta, &cfg);
        if mode & 0x40 != 0 {
            let mut out = Vec::new();
            let d = role.request_direction().unwrap_or(Direction::Ingress);
            c.on_data(d, sonde_http2::frame::PREFACE, 0, &mut out);
        }
        c
    };
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let [control, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        let dir = if control & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        if control & 2 != 0 {
            conn.on_gap(dir, u64::from(control >> 2), &mut out);
        }
        conn.on_data(dir, chunk, ts, &mut out);
        ts += 1_000_000;
        conn.tick(ts, &mut out);
        assert!(conn.buffered_bytes() <= 256 * 1024);
        out.clear();
        rest = next;
    }
    conn.on_close(ts, &mut out);
    assert_eq!(conn.open_streams(), 0);
});
