//! Hostile input: floods, oversized blocks, table-size abuse, a million streams, garbage.
//! Memory stays bounded, everything is counted, nothing panics.

mod common;

use std::sync::Arc;

use common::wire::{frame, get_block, settings};
use sonde_http2::frame::{PREFACE, flags, kind};
use sonde_http2::{Connection, Http2Config};
use sonde_model::{Body, ConnId, ConnMeta, Direction, ExchangeFlags, ProcessInfo, Request, Role};

const C2S: Direction = Direction::Ingress;
const S2C: Direction = Direction::Egress;

fn meta(role: Role) -> Arc<ConnMeta> {
    Arc::new(ConnMeta {
        id: ConnId {
            tgid: 2,
            fd: 9,
            generation: 0,
        },
        role,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })
}

fn server() -> Connection {
    let mut c = Connection::new(meta(Role::Server), &Http2Config::default());
    let mut out = Vec::new();
    c.on_data(C2S, PREFACE, 0, &mut out);
    c.on_data(C2S, &settings(&[]), 0, &mut out);
    c.on_data(S2C, &settings(&[]), 0, &mut out);
    c
}

fn respond_ok(c: &mut Connection, sid: u32, out: &mut Vec<sonde_model::Exchange>) {
    c.on_data(
        S2C,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            sid,
            &[0x88],
        ),
        1,
        out,
    );
}

#[test]
fn continuation_flood_is_cut_and_later_blocks_decode() {
    let mut c = server();
    let mut out = Vec::new();
    c.on_data(
        C2S,
        &frame(kind::HEADERS, flags::END_STREAM, 1, &get_block("/flood")),
        1,
        &mut out,
    );
    let empty = frame(kind::CONTINUATION, 0, 1, &[]);
    let burst: Vec<u8> = empty
        .iter()
        .copied()
        .cycle()
        .take(empty.len() * 10_000)
        .collect();
    for _ in 0..10 {
        c.on_data(C2S, &burst, 1, &mut out);
        assert!(c.buffered_bytes() < 256 * 1024, "{}", c.buffered_bytes());
    }
    c.on_data(
        C2S,
        &frame(kind::CONTINUATION, flags::END_HEADERS, 1, &[]),
        1,
        &mut out,
    );
    let s = c.stats();
    assert_eq!(s.header_blocks_dropped, 1);
    assert_eq!(s.frames, 2 + 100_002);
    // A later self-contained block still decodes.
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            3,
            &get_block("/ok"),
        ),
        2,
        &mut out,
    );
    respond_ok(&mut c, 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.path, "/ok");
    assert_eq!(out[0].status(), Some(200));
}

#[test]
fn huge_header_block_is_skipped_counted_and_bounded() {
    let mut c = server();
    let mut out = Vec::new();
    let chunk = vec![0x41u8; 16_000];
    c.on_data(C2S, &frame(kind::HEADERS, 0, 1, &chunk), 1, &mut out);
    for _ in 0..200 {
        c.on_data(C2S, &frame(kind::CONTINUATION, 0, 1, &chunk), 1, &mut out);
        assert!(c.buffered_bytes() < 256 * 1024);
    }
    c.on_data(
        C2S,
        &frame(kind::CONTINUATION, flags::END_HEADERS, 1, &chunk),
        1,
        &mut out,
    );
    assert_eq!(c.stats().header_blocks_dropped, 1);
    // A single frame above our buffering limit (the peer raised its max frame size).
    let mut c = server();
    c.on_data(S2C, &settings(&[(5, 1 << 20)]), 1, &mut out);
    c.on_data(
        C2S,
        &frame(kind::HEADERS, flags::END_HEADERS, 1, &vec![0u8; 500_000]),
        1,
        &mut out,
    );
    let s = c.stats();
    assert_eq!((s.oversized_frames, s.header_blocks_dropped), (1, 1));
    assert!(c.buffered_bytes() < 256 * 1024);
}

#[test]
fn table_size_abuse_is_clamped_and_counted() {
    let mut c = server();
    let mut out = Vec::new();
    // Size update to 2^31 - 1 then a literal with incremental indexing, then a reference to it.
    let mut block = vec![0x3f, 0xe0, 0xff, 0xff, 0xff, 0x07];
    block.extend(get_block("/t"));
    block.extend([0x40, 0x03, b'x', b'-', b'k', 0x01, b'v']);
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            1,
            &block,
        ),
        1,
        &mut out,
    );
    respond_ok(&mut c, 1, &mut out);
    // An integer that overflows 32 bits: the block is malformed, the table reset.
    let bad = [0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            3,
            &bad,
        ),
        2,
        &mut out,
    );
    respond_ok(&mut c, 3, &mut out);
    let s = c.stats();
    let h = &s.hpack[0];
    assert_eq!(h.size_updates_over_limit, 1);
    assert_eq!(h.malformed_blocks, 1);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].request_header("x-k"), Some("v"));
    assert!(out[1].flags.contains(ExchangeFlags::HEADERS_CUT));
    assert!(c.buffered_bytes() < 256 * 1024);
}

#[test]
fn a_million_streams_stay_bounded() {
    let cfg = Http2Config::default();
    let mut c = server();
    let mut out = Vec::new();
    let block = get_block("/s");
    let mut batch = Vec::new();
    let mut emitted = 0usize;
    for i in 0..1_000_000u32 {
        batch.extend(frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            2 * i + 1,
            &block,
        ));
        if batch.len() > 64 * 1024 {
            c.on_data(C2S, &batch, u64::from(i), &mut out);
            batch.clear();
            emitted += out.len();
            out.clear();
            assert!(c.open_streams() <= cfg.max_streams);
        }
    }
    c.on_data(C2S, &batch, 1, &mut out);
    let s = c.stats();
    assert_eq!(s.streams_opened, 1_000_000);
    assert_eq!(s.streams_evicted, 1_000_000 - cfg.max_streams as u64);
    assert_eq!(c.open_streams(), cfg.max_streams);
    c.on_close(2, &mut out);
    emitted += out.len();
    assert_eq!(emitted, 1_000_000);
    assert!(
        out.iter()
            .all(|x| x.flags.contains(ExchangeFlags::RESPONSE_MISSING))
    );
}

fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn preface_then_garbage_is_abandoned_not_buffered() {
    for seed in 1..6u64 {
        let mut c = server();
        let mut out = Vec::new();
        let garbage = lcg_bytes(3 << 20, seed);
        for chunk in garbage.chunks(65_536) {
            c.on_data(C2S, chunk, 1, &mut out);
            assert!(c.buffered_bytes() < 256 * 1024);
        }
        c.on_close(2, &mut out);
        let s = c.stats();
        // The first "frame header" is garbage: too large, so framing is searched for, in vain,
        // until the resync budget is spent; the rest of the direction is ignored.
        assert_eq!(
            s.frame_error(sonde_http2::FrameErrorKind::TooLarge),
            1,
            "{s:?}"
        );
        assert_eq!(
            (s.resyncs, s.directions_abandoned, s.exchanges),
            (1, 1, 0),
            "{s:?}"
        );
        assert!(s.resync_skipped_bytes > Http2Config::default().max_resync_bytes);
        assert!(s.bytes_ignored > (1 << 20), "{s:?}");
    }
}

#[test]
fn wrong_preface_resynchronises_on_frames() {
    let mut c = Connection::new(meta(Role::Server), &Http2Config::default());
    let mut out = Vec::new();
    let mut wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    wire.extend(settings(&[(1, 4096)]));
    wire.extend(frame(
        kind::HEADERS,
        flags::END_HEADERS | flags::END_STREAM,
        1,
        &get_block("/after"),
    ));
    c.on_data(C2S, &wire, 1, &mut out);
    respond_ok(&mut c, 1, &mut out);
    let s = c.stats();
    assert_eq!(s.preface_mismatches, 1);
    assert_eq!(s.resyncs, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.path, "/after");
    assert!(out[0].flags.contains(ExchangeFlags::RESYNCED));
}

#[test]
fn gap_across_frame_boundaries_resyncs() {
    let mut c = server();
    let mut out = Vec::new();
    c.on_data(
        C2S,
        &frame(kind::HEADERS, flags::END_HEADERS, 1, &get_block("/one")),
        1,
        &mut out,
    );
    c.on_data(C2S, &frame(kind::DATA, 0, 1, b"abc"), 1, &mut out);
    // Lose the rest of stream 1 and the start of the next frame.
    c.on_gap(C2S, 40, &mut out);
    let mut wire = vec![0xaa; 5];
    wire.extend(frame(
        kind::HEADERS,
        flags::END_HEADERS | flags::END_STREAM,
        3,
        &get_block("/two"),
    ));
    wire.extend(frame(kind::PING, 0, 0, &[0; 8]));
    c.on_data(C2S, &wire, 2, &mut out);
    respond_ok(&mut c, 3, &mut out);
    c.on_close(3, &mut out);
    let s = c.stats();
    assert_eq!(s.resyncs, 1);
    assert_eq!(s.resync_skipped_bytes, 5);
    let two = out
        .iter()
        .find(|x| x.request.path == "/two")
        .expect("stream 3");
    assert_eq!(two.status(), Some(200));
    let one = out
        .iter()
        .find(|x| x.request.path == "/one")
        .expect("stream 1");
    assert!(one.flags.contains(ExchangeFlags::GAP));
    assert!(one.flags.contains(ExchangeFlags::TRUNCATED));
}

#[test]
fn stream_timeouts_emit_idle_streams() {
    let cfg = Http2Config {
        stream_timeout_ns: 1_000,
        ..Http2Config::default()
    };
    let mut c = Connection::new(meta(Role::Client), &cfg);
    let mut out = Vec::new();
    // Role::Client: the owner writes the preface and the requests (Egress).
    c.on_data(Direction::Egress, PREFACE, 0, &mut out);
    let slow = get_block("/slow");
    let headers = frame(
        kind::HEADERS,
        flags::END_HEADERS | flags::END_STREAM,
        1,
        &slow,
    );
    c.on_data(Direction::Egress, &headers, 10, &mut out);
    assert_eq!(c.stats().preface_mismatches, 0);
    c.tick(500, &mut out);
    assert!(out.is_empty());
    c.tick(2_000, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::RESPONSE_MISSING));
    assert_eq!(c.stats().streams_timed_out, 1);
    assert_eq!(c.stats().frame_errors_total(), 0);
}

#[test]
fn h2c_upgrade_stream_one_is_the_http1_request() {
    let req = Request {
        method: "GET".into(),
        authority: Some("example.com".into()),
        path: "/upgrade".into(),
        query: Some("a=1".into()),
        headers: vec![sonde_model::Header::new("upgrade", "h2c")],
        trailers: Vec::new(),
        body: Body::default(),
        ts_start_ns: 5,
        ts_end_ns: 6,
    };
    let mut c = Connection::after_upgrade(meta(Role::Server), &Http2Config::default(), C2S, req);
    let mut out = Vec::new();
    c.on_data(S2C, &settings(&[(5, 32_768)]), 7, &mut out);
    let mut client = PREFACE.to_vec();
    client.extend(settings(&[]));
    c.on_data(C2S, &client, 8, &mut out);
    let mut resp = frame(kind::HEADERS, flags::END_HEADERS, 1, &[0x88]);
    resp.extend(frame(kind::DATA, flags::END_STREAM, 1, b"hello"));
    c.on_data(S2C, &resp, 9, &mut out);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert_eq!(
        (
            x.stream_id,
            x.request.method.as_str(),
            x.request.path.as_str()
        ),
        (Some(1), "GET", "/upgrade")
    );
    assert_eq!(x.request.query.as_deref(), Some("a=1"));
    assert_eq!(x.status(), Some(200));
    assert_eq!(x.response.as_ref().map(|r| r.body.wire_len), Some(5));
    assert_eq!(x.latency_ns(), Some(4));
    // The connection goes on as HTTP/2.
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            3,
            &get_block("/next"),
        ),
        10,
        &mut out,
    );
    respond_ok(&mut c, 3, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].request.path, "/next");
}

#[test]
fn unknown_role_is_learnt_from_the_preface() {
    let mut c = Connection::new(meta(Role::Unknown), &Http2Config::default());
    let mut out = Vec::new();
    c.on_data(S2C, &settings(&[]), 0, &mut out);
    assert_eq!(c.client_direction(), None);
    c.on_data(C2S, PREFACE, 1, &mut out);
    assert_eq!(c.client_direction(), Some(C2S));
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            1,
            &get_block("/u"),
        ),
        2,
        &mut out,
    );
    respond_ok(&mut c, 1, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn push_promise_becomes_an_exchange() {
    let mut c = server();
    let mut out = Vec::new();
    c.on_data(
        C2S,
        &frame(
            kind::HEADERS,
            flags::END_HEADERS | flags::END_STREAM,
            1,
            &get_block("/page"),
        ),
        1,
        &mut out,
    );
    let mut pp = 2u32.to_be_bytes().to_vec();
    pp.extend(get_block("/style.css"));
    c.on_data(
        S2C,
        &frame(kind::PUSH_PROMISE, flags::END_HEADERS, 1, &pp),
        2,
        &mut out,
    );
    respond_ok(&mut c, 1, &mut out);
    respond_ok(&mut c, 2, &mut out);
    let paths: Vec<(Option<u32>, &str)> = out
        .iter()
        .map(|x| (x.stream_id, x.request.path.as_str()))
        .collect();
    assert_eq!(paths, vec![(Some(1), "/page"), (Some(2), "/style.css")]);
}

mod random_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Arbitrary bytes, chunks and gaps in both directions: no panic, bounded buffers.
        #[test]
        fn arbitrary_input_is_survived(
            chunks in prop::collection::vec(
                (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), 0u64..50),
                0..40,
            ),
            late in any::<bool>(),
            preface in any::<bool>(),
        ) {
            let m = meta(Role::Unknown);
            let cfg = Http2Config::default();
            let mut c = if late { Connection::new_late(m, &cfg) } else { Connection::new(m, &cfg) };
            let mut out = Vec::new();
            if preface {
                c.on_data(C2S, PREFACE, 0, &mut out);
            }
            for (i, (dir, bytes, gap)) in chunks.iter().enumerate() {
                let d = if *dir { C2S } else { S2C };
                if *gap > 45 {
                    c.on_gap(d, *gap, &mut out);
                }
                c.on_data(d, bytes, i as u64, &mut out);
                c.tick(i as u64, &mut out);
                prop_assert!(c.buffered_bytes() < 512 * 1024);
            }
            c.on_close(u64::MAX, &mut out);
            prop_assert_eq!(c.open_streams(), 0);
        }
    }
}

#[test]
fn body_samples_of_open_streams_share_one_budget() {
    let cfg = Http2Config::default();
    let mut c = server();
    let mut out = Vec::new();
    let body = vec![b'z'; 16_000];
    for i in 0..200u32 {
        let sid = 2 * i + 1;
        c.on_data(
            C2S,
            &frame(
                kind::HEADERS,
                flags::END_HEADERS,
                sid,
                &get_block("/upload"),
            ),
            1,
            &mut out,
        );
        for _ in 0..5 {
            c.on_data(C2S, &frame(kind::DATA, 0, sid, &body), 1, &mut out);
        }
        assert!(
            c.buffered_bytes() <= cfg.max_connection_sample_bytes + 256 * 1024,
            "{}",
            c.buffered_bytes()
        );
    }
    let s = c.stats();
    assert_eq!(c.open_streams(), 200);
    assert!(s.samples_cut_by_budget > 0);
    c.on_close(2, &mut out);
    assert_eq!(out.len(), 200);
    // Early streams got full samples, later ones were cut; sizes are exact regardless.
    assert_eq!(out[0].request.body.sample.len(), 64 * 1024);
    assert!(out[199].request.body.sample.is_empty());
    assert!(
        out.iter()
            .all(|x| x.request.body.wire_len == 80_000 && x.request.body.sample_truncated)
    );
    // Finished streams give their budget back.
    c.on_data(
        C2S,
        &frame(kind::HEADERS, flags::END_HEADERS, 401, &get_block("/again")),
        3,
        &mut out,
    );
    c.on_data(
        C2S,
        &frame(kind::DATA, flags::END_STREAM, 401, b"fresh"),
        3,
        &mut out,
    );
    respond_ok(&mut c, 401, &mut out);
    assert_eq!(
        out.last().map(|x| x.request.body.sample.as_ref()),
        Some(&b"fresh"[..])
    );
}
