use super::*;
use proptest::prelude::*;
use sonde_model::{ProcessInfo, Source};

const CONN: ConnId = ConnId {
    tgid: 7,
    fd: 3,
    generation: 1,
};

fn chunk(dir: Direction, offset: u64, data: &[u8], len: u64, ts: u64) -> CaptureEvent {
    CaptureEvent::Data(DataChunk {
        conn: CONN,
        direction: dir,
        source: Source::Syscall,
        offset,
        len,
        data: Bytes::copy_from_slice(data),
        ts_ns: ts,
        tid: 1,
    })
}

fn full(dir: Direction, offset: u64, data: &[u8]) -> CaptureEvent {
    chunk(dir, offset, data, data.len() as u64, offset)
}

/// The byte stream of one direction as the sink saw it: data as-is, gaps as `?` per byte.
fn render(events: &[StreamEvent], dir: Direction) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            StreamEvent::Data {
                dir: d,
                offset,
                bytes,
                ..
            } if *d == dir => {
                assert_eq!(*offset, out.len() as u64, "data not contiguous");
                out.extend_from_slice(bytes);
            }
            StreamEvent::Gap {
                dir: d,
                offset,
                len,
                ..
            } if *d == dir => {
                assert_eq!(*offset, out.len() as u64, "gap not contiguous");
                out.extend(std::iter::repeat_n(b'?', *len as usize));
            }
            _ => {}
        }
    }
    out
}

/// The open of `CONN` as a server, with no addresses or process known.
fn server_open() -> CaptureEvent {
    CaptureEvent::Open(ConnOpen {
        conn: CONN,
        ts_ns: 0,
        role: Role::Server,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })
}

fn run(cfg: AssemblerConfig, events: Vec<CaptureEvent>) -> (Vec<StreamEvent>, Counters) {
    let mut asm = Assembler::new(cfg).expect("valid config");
    let mut out = Vec::new();
    for ev in events {
        asm.push(ev, &mut |e| out.push(e));
    }
    asm.flush(&mut |e| out.push(e));
    (out, asm.counters())
}

#[test]
fn data_without_open_creates_unknown_role_connection() {
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![full(Direction::Egress, 0, b"GET /")],
    );
    let StreamEvent::Open(meta) = &out[0] else {
        panic!("first event must be Open: {out:?}")
    };
    assert_eq!(meta.role, Role::Unknown);
    assert_eq!(meta.id, CONN);
    assert_eq!(c.implicit_opens, 1);
    assert!(matches!(
        out.last(),
        Some(StreamEvent::Close {
            reason: CloseReason::Flushed,
            ..
        })
    ));
}

#[test]
fn in_order_chunk_passes_the_same_buffer_through() {
    let data = Bytes::from_static(b"hello world");
    let ev = CaptureEvent::Data(DataChunk {
        conn: CONN,
        direction: Direction::Ingress,
        source: Source::Syscall,
        offset: 0,
        len: data.len() as u64,
        data: data.clone(),
        ts_ns: 1,
        tid: 1,
    });
    let (out, _) = run(AssemblerConfig::default(), vec![ev]);
    let delivered = out
        .iter()
        .find_map(|e| match e {
            StreamEvent::Data { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .expect("data delivered");
    assert_eq!(
        delivered.as_ptr(),
        data.as_ptr(),
        "in-order data must not be copied"
    );
}

#[test]
fn reordered_chunks_are_delivered_in_offset_order() {
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![
            full(Direction::Egress, 5, b"world"),
            full(Direction::Egress, 0, b"hello"),
            full(Direction::Egress, 10, b"!"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"helloworld!");
    assert_eq!(c.reordered, 1);
    assert_eq!(c.gaps, 0);
}

#[test]
fn uncaptured_tail_becomes_a_gap_and_offsets_stay_exact() {
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![
            chunk(Direction::Egress, 0, b"abc", 10, 0),
            full(Direction::Egress, 10, b"xyz"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"abc???????xyz");
    assert_eq!((c.gaps, c.gap_bytes), (1, 7));
}

#[test]
fn hole_becomes_gap_once_the_window_is_exceeded() {
    let cfg = AssemblerConfig {
        reorder_window_chunks: 2,
        ..Default::default()
    };
    let (out, c) = run(
        cfg,
        vec![
            full(Direction::Ingress, 0, b"ab"),
            full(Direction::Ingress, 4, b"ef"),
            full(Direction::Ingress, 6, b"gh"),
            full(Direction::Ingress, 8, b"ij"),
        ],
    );
    assert_eq!(render(&out, Direction::Ingress), b"ab??efghij");
    assert_eq!((c.gaps, c.gap_bytes), (1, 2));
    // The gap was declared when the third held chunk arrived, before the flush.
    let gap_pos = out
        .iter()
        .position(|e| matches!(e, StreamEvent::Gap { .. }));
    let close_pos = out
        .iter()
        .position(|e| matches!(e, StreamEvent::Close { .. }));
    assert!(gap_pos < close_pos);
}

#[test]
fn late_chunk_for_a_declared_gap_is_dropped_not_glued() {
    let cfg = AssemblerConfig {
        reorder_window_chunks: 0,
        ..Default::default()
    };
    let (out, c) = run(
        cfg,
        vec![
            full(Direction::Egress, 0, b"ab"),
            full(Direction::Egress, 4, b"ef"),
            full(Direction::Egress, 2, b"cd"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"ab??ef");
    assert_eq!(c.duplicates, 1);
}

#[test]
fn duplicates_and_overlaps_are_trimmed() {
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![
            full(Direction::Egress, 0, b"abcd"),
            full(Direction::Egress, 0, b"abcd"),
            full(Direction::Egress, 2, b"cdef"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"abcdef");
    assert_eq!((c.duplicates, c.overlaps, c.overlap_bytes), (1, 1, 2));
}

#[test]
fn per_connection_budget_releases_held_chunks_as_gaps() {
    let cfg = AssemblerConfig {
        max_conn_buffer_bytes: 8,
        ..Default::default()
    };
    let (out, c) = run(
        cfg,
        vec![
            full(Direction::Egress, 4, b"eeee"),
            full(Direction::Egress, 8, b"ffffffff"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"????eeeeffffffff");
    assert_eq!(c.budget_flushes, 1);
    assert_eq!(c.buffered_bytes, 0);
}

#[test]
fn global_budget_is_enforced_across_connections() {
    let cfg = AssemblerConfig {
        max_total_buffer_bytes: 10,
        ..Default::default()
    };
    let mut asm = Assembler::new(cfg).expect("valid");
    let mut out = Vec::new();
    for fd in 0..5 {
        let ev = CaptureEvent::Data(DataChunk {
            conn: ConnId {
                tgid: 1,
                fd,
                generation: 0,
            },
            direction: Direction::Egress,
            source: Source::Syscall,
            offset: 100,
            len: 4,
            data: Bytes::from_static(b"data"),
            ts_ns: 0,
            tid: 0,
        });
        asm.push(ev, &mut |e| out.push(e));
        assert!(asm.counters().buffered_bytes <= 10);
    }
    assert!(asm.counters().budget_flushes >= 2);
}

#[test]
fn connection_budget_evicts_the_least_recently_active() {
    let cfg = AssemblerConfig {
        max_connections: 4,
        ..Default::default()
    };
    let mut asm = Assembler::new(cfg).expect("valid");
    let mut out = Vec::new();
    for fd in 0..6 {
        let ev = CaptureEvent::Data(DataChunk {
            conn: ConnId {
                tgid: 1,
                fd,
                generation: 0,
            },
            direction: Direction::Egress,
            source: Source::Syscall,
            offset: 0,
            len: 1,
            data: Bytes::from_static(b"x"),
            ts_ns: fd as u64,
            tid: 0,
        });
        asm.push(ev, &mut |e| out.push(e));
        assert!(asm.counters().connections <= 4);
    }
    let evicted: Vec<i32> = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Close {
                conn,
                reason: CloseReason::Evicted,
                ..
            } => Some(conn.fd),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec![0, 1]);
    assert_eq!(asm.counters().evicted, 2);
}

#[test]
fn tick_expires_idle_connections_and_releases_stale_holes() {
    let cfg = AssemblerConfig {
        idle_timeout_ns: 1_000,
        reorder_timeout_ns: 10,
        ..Default::default()
    };
    let mut asm = Assembler::new(cfg).expect("valid");
    let mut out = Vec::new();
    asm.push(chunk(Direction::Egress, 0, b"ab", 2, 100), &mut |e| {
        out.push(e)
    });
    asm.push(chunk(Direction::Egress, 4, b"ef", 2, 100), &mut |e| {
        out.push(e)
    });
    asm.tick(105, &mut |e| out.push(e));
    assert_eq!(
        render(&out, Direction::Egress),
        b"ab",
        "hole still within reorder timeout"
    );
    asm.tick(200, &mut |e| out.push(e));
    assert_eq!(render(&out, Direction::Egress), b"ab??ef");
    assert_eq!(asm.counters().connections, 1);
    asm.tick(2_000, &mut |e| out.push(e));
    assert!(matches!(
        out.last(),
        Some(StreamEvent::Close {
            reason: CloseReason::Expired,
            ..
        })
    ));
    assert_eq!(asm.counters().expired, 1);
    assert_eq!(asm.counters().connections, 0);
}

#[test]
fn close_flushes_holes_and_late_data_does_not_resurrect() {
    let open = server_open();
    let close = CaptureEvent::Close(ConnClose {
        conn: CONN,
        ts_ns: 50,
    });
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![
            open,
            full(Direction::Ingress, 3, b"def"),
            close,
            full(Direction::Ingress, 0, b"abc"),
        ],
    );
    assert_eq!(render(&out, Direction::Ingress), b"???def");
    let opens = out
        .iter()
        .filter(|e| matches!(e, StreamEvent::Open(_)))
        .count();
    let closes = out
        .iter()
        .filter(|e| matches!(e, StreamEvent::Close { .. }))
        .count();
    assert_eq!((opens, closes), (1, 1));
    assert_eq!(c.late_after_close, 1);
    let StreamEvent::Open(meta) = &out[0] else {
        panic!("open first")
    };
    assert_eq!(meta.role, Role::Server);
}

#[test]
fn a_second_close_is_counted_apart_not_as_lost_data() {
    let open = server_open();
    let close = |ts_ns| CaptureEvent::Close(ConnClose { conn: CONN, ts_ns });
    let (out, c) = run(AssemblerConfig::default(), vec![open, close(10), close(20)]);
    let closes = out
        .iter()
        .filter(|e| matches!(e, StreamEvent::Close { .. }))
        .count();
    assert_eq!(closes, 1);
    assert_eq!((c.repeated_closes, c.late_after_close), (1, 0));
}

#[test]
fn open_after_data_upgrades_metadata() {
    let open = CaptureEvent::Open(ConnOpen {
        conn: CONN,
        ts_ns: 0,
        role: Role::Client,
        process: ProcessInfo {
            pid: 9,
            comm: "curl".into(),
            cgroup_id: 1,
            workload: None,
        },
        local: None,
        remote: None,
    });
    let (out, _) = run(
        AssemblerConfig::default(),
        vec![full(Direction::Egress, 0, b"x"), open],
    );
    let roles: Vec<Role> = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Open(m) => Some(m.role),
            _ => None,
        })
        .collect();
    assert_eq!(roles, vec![Role::Unknown, Role::Client]);
}

#[test]
fn chunk_with_more_data_than_length_is_trimmed() {
    let (out, c) = run(
        AssemblerConfig::default(),
        vec![
            chunk(Direction::Egress, 0, b"abcdef", 3, 0),
            full(Direction::Egress, 3, b"XYZ"),
        ],
    );
    assert_eq!(render(&out, Direction::Egress), b"abcXYZ");
    assert_eq!(c.malformed, 1);
}

#[test]
fn zero_limits_are_rejected() {
    let cfg = AssemblerConfig {
        max_connections: 0,
        ..Default::default()
    };
    assert_eq!(
        Assembler::new(cfg).err(),
        Some(ConfigError::Zero("max_connections"))
    );
}

proptest! {
    /// Chunks of one stream shuffled within the reorder window come out as the original bytes.
    #[test]
    fn local_reordering_is_undone(
        data in proptest::collection::vec(any::<u8>(), 1..400),
        cuts in proptest::collection::vec(1usize..40, 1..40),
        blocks in proptest::collection::vec((1usize..=6, any::<bool>()), 1..40),
    ) {
        let mut events = Vec::new();
        let mut pos = 0usize;
        for cut in cuts.iter().cycle() {
            if pos >= data.len() { break; }
            let end = (pos + cut).min(data.len());
            events.push(full(Direction::Egress, pos as u64, &data[pos..end]));
            pos = end;
        }
        // Reverse consecutive blocks of up to 6 chunks: no chunk moves further than the window.
        let mut start = 0;
        for (size, reverse) in blocks.iter().cycle() {
            if start >= events.len() { break; }
            let end = (start + size).min(events.len());
            if *reverse {
                events[start..end].reverse();
            }
            start = end;
        }
        let cfg = AssemblerConfig { reorder_window_chunks: 8, ..Default::default() };
        let (out, c) = run(cfg, events);
        prop_assert_eq!(render(&out, Direction::Egress), data);
        prop_assert_eq!(c.gaps, 0);
    }

    /// Whatever chunks arrive (overlapping, duplicated, sparse, partly captured), the output is
    /// contiguous, never longer than the furthest chunk end, and the buffer budget holds.
    #[test]
    fn arbitrary_chunks_yield_a_contiguous_bounded_stream(
        chunks in proptest::collection::vec((0u64..2_000, 0usize..64, 0u64..32), 0..120),
    ) {
        let cfg = AssemblerConfig {
            reorder_window_chunks: 4,
            max_conn_buffer_bytes: 256,
            ..Default::default()
        };
        let mut asm = Assembler::new(cfg).expect("valid");
        let mut out = Vec::new();
        let mut furthest = 0;
        for (offset, captured, extra) in chunks {
            let data = vec![b'a'; captured];
            let len = captured as u64 + extra;
            furthest = furthest.max(offset + len);
            asm.push(chunk(Direction::Egress, offset, &data, len, offset), &mut |e| out.push(e));
            prop_assert!(asm.counters().buffered_bytes <= 256 + 64);
        }
        asm.flush(&mut |e| out.push(e));
        let stream = render(&out, Direction::Egress);
        prop_assert!(stream.len() as u64 <= furthest);
        prop_assert_eq!(asm.counters().buffered_bytes, 0);
    }
}
