use std::io::Write;

use bytes::Bytes;
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, ExchangeFlags, HttpVersion,
    ProcessInfo, Role, Source,
};

use super::*;

const CONN: ConnId = ConnId {
    tgid: 42,
    fd: 5,
    generation: 0,
};
/// A client-side capture: requests are written (egress), responses read (ingress).
const C: Direction = Direction::Egress;
const S: Direction = Direction::Ingress;

enum Piece<'a> {
    Data(Direction, &'a [u8]),
    Gap(Direction, u64),
}

/// Builds capture events for one connection: every piece is one delivery, offsets follow.
fn events(role: Option<Role>, pieces: &[Piece<'_>]) -> Vec<CaptureEvent> {
    let mut evs = Vec::new();
    if let Some(role) = role {
        evs.push(CaptureEvent::Open(ConnOpen {
            conn: CONN,
            ts_ns: 0,
            role,
            process: ProcessInfo::default(),
            local: None,
            remote: None,
        }));
    }
    let mut offsets = [0u64; 2];
    for (i, piece) in pieces.iter().enumerate() {
        let ts = (i as u64 + 1) * 1_000;
        match piece {
            Piece::Data(dir, data) => {
                let off = &mut offsets[dir.index()];
                evs.push(CaptureEvent::Data(DataChunk {
                    conn: CONN,
                    direction: *dir,
                    source: Source::Syscall,
                    offset: *off,
                    len: data.len() as u64,
                    data: Bytes::copy_from_slice(data),
                    ts_ns: ts,
                    tid: 1,
                }));
                *off += data.len() as u64;
            }
            Piece::Gap(dir, len) => {
                // Known-missing bytes travel as a chunk without captured data.
                let off = &mut offsets[dir.index()];
                evs.push(CaptureEvent::Data(DataChunk {
                    conn: CONN,
                    direction: *dir,
                    source: Source::Syscall,
                    offset: *off,
                    len: *len,
                    data: Bytes::new(),
                    ts_ns: ts,
                    tid: 1,
                }));
                *off = off.saturating_add(*len);
            }
        }
    }
    evs
}

fn run_with(cfg: TrackerConfig, evs: Vec<CaptureEvent>) -> (Vec<Exchange>, TrackerStats) {
    let mut t = Tracker::new(cfg).expect("valid config");
    let mut out = Vec::new();
    for ev in evs {
        t.on_event(ev, &mut out);
    }
    t.flush(&mut out);
    (out, t.stats())
}

fn run(pieces: &[Piece<'_>]) -> (Vec<Exchange>, TrackerStats) {
    run_with(TrackerConfig::default(), events(Some(Role::Client), pieces))
}

fn summary(x: &Exchange) -> (String, String, Option<u16>) {
    (x.request.method.clone(), x.request.path.clone(), x.status())
}

#[test]
fn get_with_response_body() {
    let (out, stats) = run(&[
        Piece::Data(
            C,
            b"GET /api/users?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
        ),
        Piece::Data(
            S,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n",
        ),
        Piece::Data(S, b"{\"ok\":true}"),
    ]);
    assert_eq!(out.len(), 1, "{out:#?}");
    let x = &out[0];
    assert_eq!(x.version, HttpVersion::Http11);
    assert_eq!(x.request.method, "GET");
    assert_eq!(x.request.path, "/api/users");
    assert_eq!(x.request.query.as_deref(), Some("id=7"));
    assert_eq!(x.request.authority.as_deref(), Some("example.com"));
    assert_eq!(x.request.headers[1].name, "user-agent");
    let resp = x.response.as_ref().expect("response");
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert_eq!(&resp.body.sample[..], b"{\"ok\":true}");
    assert_eq!(resp.body.declared_len, Some(11));
    assert_eq!(resp.body.wire_len, 11);
    assert_eq!(x.request.ts_start_ns, 1_000);
    assert_eq!(resp.ts_start_ns, 2_000);
    assert_eq!(resp.ts_end_ns, 3_000);
    assert_eq!(x.flags, ExchangeFlags::default());
    assert_eq!((stats.http1_connections, stats.exchanges), (1, 1));
}

#[test]
fn pipelined_requests_pair_in_order() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
        ),
        Piece::Data(
            S,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 404 Not Found\r\n",
        ),
        Piece::Data(
            S,
            b"Content-Length: 2\r\n\r\nBBHTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        ),
    ]);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("GET".into(), "/a".into(), Some(200)),
            ("GET".into(), "/b".into(), Some(404)),
            ("HEAD".into(), "/c".into(), Some(200)),
        ]
    );
    assert_eq!(
        &out[1].response.as_ref().expect("resp").body.sample[..],
        b"BB"
    );
    // HEAD: Content-Length announces the GET size; no body follows.
    let head = out[2].response.as_ref().expect("resp");
    assert_eq!(head.body.wire_len, 0);
    assert!(!out[2].flags.contains(ExchangeFlags::TRUNCATED));
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n",
        ),
        Piece::Data(C, b"6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"),
        Piece::Data(
            S,
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok!\r\n0\r\n\r\n",
        ),
    ]);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert_eq!(&x.request.body.sample[..], b"hello world");
    assert_eq!(x.request.body.wire_len, 11);
    assert_eq!(x.request.trailers.len(), 1);
    assert_eq!(x.request.trailers[0].name, "x-checksum");
    assert_eq!(&x.response.as_ref().expect("resp").body.sample[..], b"ok!");
    assert_eq!(x.flags, ExchangeFlags::default());
}

#[test]
fn no_body_statuses_and_read_until_close() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.0\r\n\r\n",
        ),
        Piece::Data(S, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 304 Not Modified\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.0 200 OK\r\n\r\nuntil the"),
        Piece::Data(S, b" end"),
    ]);
    let got: Vec<_> = out.iter().map(|x| x.status()).collect();
    assert_eq!(got, vec![Some(204), Some(304), Some(200)]);
    let last = &out[2];
    assert_eq!(last.version, HttpVersion::Http10);
    assert_eq!(
        &last.response.as_ref().expect("resp").body.sample[..],
        b"until the end"
    );
}

#[test]
fn expect_continue_then_final_response() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"PUT /f HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        ),
        Piece::Data(S, b"HTTP/1.1 100 Continue\r\n\r\n"),
        Piece::Data(C, b"data"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::CONTINUED));
    assert_eq!(out[0].status(), Some(200));
    assert_eq!(&out[0].request.body.sample[..], b"data");
}

#[test]
fn websocket_upgrade_stops_http1_parsing() {
    let (out, stats) = run(&[
        Piece::Data(
            C,
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        Piece::Data(C, b"\x81\x05hello"),
        Piece::Data(
            S,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        ),
        Piece::Data(C, b"GET /not-http HTTP/1.1\r\n\r\n"),
    ]);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(out[0].flags.contains(ExchangeFlags::UPGRADED));
    assert_eq!(out[0].status(), Some(101));
    assert_eq!(stats.upgrades, 1);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn refused_upgrade_goes_on_as_http1() {
    let (out, _) = run(&[
        Piece::Data(C, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
        Piece::Data(C, b"GET /next HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("GET".into(), "/ws".into(), Some(400)),
            ("GET".into(), "/next".into(), Some(200))
        ]
    );
}

#[test]
fn h2c_upgrade_and_prior_knowledge_reach_the_http2_decoder() {
    let (out, stats) = run(&[
        Piece::Data(C, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        Piece::Data(C, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    ]);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::UPGRADED));
    assert_eq!(out[0].stream_id, Some(1), "{:#?}", out[0]);
    assert_eq!(out[0].version, HttpVersion::Http2);
    assert_eq!((stats.http2_connections, stats.http2.h2c_upgrades), (1, 1));
    assert_eq!(stats.http2.preface_mismatches, 0);

    let mut t = Tracker::new(TrackerConfig::default()).expect("valid");
    let mut sink = Vec::new();
    for ev in events(
        Some(Role::Client),
        &[
            Piece::Data(C, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
            Piece::Data(
                S,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            ),
        ],
    ) {
        t.on_event(ev, &mut sink);
    }
    assert_eq!(
        t.protocol(&CONN),
        Some(ConnProtocol::Http2(Http2Start::H2cUpgrade))
    );

    // The server's first HTTP/2 bytes in the same delivery as the 101 reach the HTTP/2 state.
    let mut t = Tracker::new(TrackerConfig::default()).expect("valid");
    for ev in events(
        Some(Role::Client),
        &[
            Piece::Data(C, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
            Piece::Data(
                S,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            ),
        ],
    ) {
        t.on_event(ev, &mut sink);
    }
    match t.conns.get(&CONN).map(|c| &c.proto) {
        Some(Protocol::Http2(h)) => assert_eq!(h.conn.stats().bytes, 9),
        other => panic!("expected HTTP/2 state, got {other:?}"),
    }

    let (out, stats) = run(&[
        Piece::Data(C, b"PRI * HTTP/2.0\r\n"),
        Piece::Data(C, b"\r\nSM\r\n\r\n"),
    ]);
    assert!(out.is_empty());
    assert_eq!((stats.http2_connections, stats.http1_connections), (1, 0));
}

#[test]
fn connect_tunnel_is_not_parsed() {
    let (out, stats) = run(&[
        Piece::Data(C, b"CONNECT db.internal:5432 HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        Piece::Data(C, b"\x16\x03\x01\x00\xa5binary tls"),
        Piece::Data(S, b"\x16\x03\x03 more binary"),
    ]);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::UPGRADED));
    assert_eq!(
        out[0].request.authority.as_deref(),
        Some("db.internal:5432")
    );
    assert_eq!(stats.parse_errors, 0);
    assert!(stats.ignored_bytes > 0);
}

#[test]
fn te_with_cl_and_conflicting_lengths_are_flagged() {
    let (out, stats) = run(&[
        Piece::Data(
            C,
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        Piece::Data(
            S,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        ),
    ]);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::SMUGGLING));
    assert_eq!(stats.smuggling, 2);
}

#[test]
fn gap_inside_known_length_body_just_advances() {
    let (out, stats) = run(&[
        Piece::Data(C, b"GET /big HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\nstart"),
        Piece::Gap(S, 9_990),
        Piece::Data(S, b"end!!"),
        Piece::Data(C, b"GET /next HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ]);
    assert_eq!(out.len(), 2, "{out:#?}");
    let body = &out[0].response.as_ref().expect("resp").body;
    assert_eq!((body.wire_len, body.missing_len), (10_000, 9_990));
    assert_eq!(&body.sample[..], b"start");
    assert!(out[0].flags.contains(ExchangeFlags::GAP));
    assert_eq!(out[1].status(), Some(200));
    assert_eq!(out[1].flags, ExchangeFlags::default());
    assert_eq!(stats.resyncs, 0);
}

#[test]
fn gap_between_responses_never_pairs_the_wrong_response() {
    // The response to /a is lost in a gap; the one to /b must not be paired with /a.
    let (out, stats) = run(&[
        Piece::Data(C, b"GET /a HTTP/1.1\r\n\r\n"),
        Piece::Data(C, b"GET /b HTTP/1.1\r\n\r\n"),
        Piece::Gap(S, 100),
        Piece::Data(S, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"),
        Piece::Data(C, b"GET /c HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("GET".into(), "/a".into(), None),
            ("GET".into(), "/b".into(), None),
            ("GET".into(), "/c".into(), Some(200)),
        ]
    );
    assert!(out[0].flags.contains(ExchangeFlags::RESPONSE_MISSING));
    assert_eq!(stats.responses_unpaired, 1);
}

#[test]
fn mid_stream_join_resyncs_on_the_next_message() {
    let evs = vec![
        CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: Direction::Ingress,
            source: Source::Syscall,
            offset: 5_000,
            len: 30,
            data: Bytes::from_static(b"tail of an old body\r\nmore junk"),
            ts_ns: 1,
            tid: 0,
        }),
        CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: Direction::Ingress,
            source: Source::Syscall,
            offset: 5_030,
            len: 38,
            data: Bytes::from_static(b"\r\nPOST /login HTTP/1.1\r\nHost: app\r\n\r\n"),
            ts_ns: 2,
            tid: 0,
        }),
        CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: Direction::Egress,
            source: Source::Syscall,
            offset: 900,
            len: 38,
            data: Bytes::from_static(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
            ts_ns: 3,
            tid: 0,
        }),
    ];
    // Role unknown (connection predates capture): inferred from the request line on ingress.
    let (out, stats) = run_with(TrackerConfig::default(), evs);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].request.method, "POST");
    assert_eq!(out[0].request.authority.as_deref(), Some("app"));
    assert!(out[0].flags.contains(ExchangeFlags::RESYNCED));
    assert_eq!(out[0].conn.role, Role::Unknown);
    assert!(stats.resync_skipped_bytes > 0);
}

#[test]
fn unanswered_request_times_out() {
    let mut t = Tracker::new(TrackerConfig {
        response_timeout_ns: 1_000_000,
        ..Default::default()
    })
    .expect("valid");
    let mut out = Vec::new();
    for ev in events(
        Some(Role::Server),
        &[Piece::Data(S, b"GET /slow HTTP/1.1\r\n\r\n")],
    ) {
        t.on_event(ev, &mut out);
    }
    t.tick(500_000, &mut out);
    assert!(out.is_empty());
    t.tick(5_000_000, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::RESPONSE_MISSING));
    assert_eq!(t.stats().response_timeouts, 1);
    // A late response must not be paired with a later request.
    for ev in [
        CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: C,
            source: Source::Syscall,
            offset: 0,
            len: 38,
            data: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ts_ns: 6_000_000,
            tid: 0,
        }),
        CaptureEvent::Close(ConnClose {
            conn: CONN,
            ts_ns: 7_000_000,
        }),
    ] {
        t.on_event(ev, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(t.stats().responses_unpaired, 1);
}

#[test]
fn non_http_is_ignored_cheaply() {
    let (out, stats) = run(&[
        Piece::Data(C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        Piece::Data(S, b"\x16\x03\x03\x00\x7a"),
        Piece::Data(C, b"GET / HTTP/1.1\r\n\r\n"),
    ]);
    assert!(out.is_empty());
    assert_eq!(stats.non_http_connections, 1);
    assert!(stats.ignored_bytes >= 16);
}

#[test]
fn gzip_response_is_decoded() {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b"{\"user\":\"alice\"}").expect("mem");
    let gz = e.finish().expect("mem");
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    resp.extend_from_slice(&gz);
    let (out, stats) = run(&[
        Piece::Data(C, b"GET /me HTTP/1.1\r\n\r\n"),
        Piece::Data(S, &resp),
    ]);
    let body = &out[0].response.as_ref().expect("resp").body;
    assert_eq!(&body.sample[..], b"{\"user\":\"alice\"}");
    assert_eq!(body.encoding.as_deref(), Some("gzip"));
    assert_eq!(body.wire_len, gz.len() as u64);
    assert_eq!(stats.bodies_decoded, 1);
}

#[test]
fn endless_headers_are_cut_and_memory_stays_bounded() {
    let cfg = TrackerConfig {
        max_head_bytes: 1024,
        ..Default::default()
    };
    let mut t = Tracker::new(cfg).expect("valid");
    let mut out = Vec::new();
    let mut offset = 0;
    let mut push = |t: &mut Tracker, out: &mut Vec<Exchange>, data: &[u8]| {
        t.on_event(
            CaptureEvent::Data(DataChunk {
                conn: CONN,
                direction: C,
                source: Source::Syscall,
                offset,
                len: data.len() as u64,
                data: Bytes::copy_from_slice(data),
                ts_ns: offset,
                tid: 0,
            }),
            out,
        );
        offset += data.len() as u64;
    };
    push(&mut t, &mut out, b"GET /slow HTTP/1.1\r\n");
    for i in 0..10_000 {
        push(
            &mut t,
            &mut out,
            format!("X-Pad-{i}: aaaaaaaaaaaaaaaa\r\n").as_bytes(),
        );
    }
    push(&mut t, &mut out, b"\r\nGET /after HTTP/1.1\r\n\r\n");
    t.flush(&mut out);
    let paths: Vec<_> = out.iter().map(|x| x.request.path.as_str()).collect();
    assert_eq!(paths, vec!["/slow", "/after"]);
    assert!(out[0].flags.contains(ExchangeFlags::HEADERS_CUT));
    assert!(out[0].request.headers.len() < 100);
    assert_eq!(t.stats().headers_cut, 1);
}

#[test]
fn huge_declared_body_is_counted_not_buffered() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"POST /upload HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n",
        ),
        Piece::Data(C, &[b'z'; 100_000]),
        Piece::Gap(C, 1_000_000_000),
    ]);
    assert_eq!(out.len(), 1);
    let body = &out[0].request.body;
    assert_eq!(body.declared_len, Some(10_000_000_000));
    assert_eq!(body.wire_len, 1_000_100_000);
    assert_eq!(body.sample.len(), 64 << 10);
    assert!(out[0].flags.contains(ExchangeFlags::TRUNCATED));
}

#[test]
fn server_side_capture_infers_directions() {
    let (out, _) = run_with(
        TrackerConfig::default(),
        events(
            Some(Role::Server),
            &[
                Piece::Data(
                    Direction::Ingress,
                    b"DELETE /items/3 HTTP/1.1\r\nHost: api\r\n\r\n",
                ),
                Piece::Data(Direction::Egress, b"HTTP/1.1 204 No Content\r\n\r\n"),
            ],
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        summary(&out[0]),
        ("DELETE".into(), "/items/3".into(), Some(204))
    );
}

#[test]
fn config_round_trips_with_defaults() {
    let cfg: TrackerConfig = serde_json::from_str(r#"{"max_headers": 10}"#).expect("json");
    assert_eq!(cfg.max_headers, 10);
    assert_eq!(cfg.body_sample_bytes, 64 << 10);
    let bad = TrackerConfig {
        max_pipelined: 0,
        ..Default::default()
    };
    assert_eq!(
        Tracker::new(bad).err(),
        Some(ConfigError::Zero("max_pipelined"))
    );
}

#[test]
fn upgrade_refused_before_the_request_body_ended() {
    let (out, _) = run(&[
        Piece::Data(
            C,
            b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 6\r\n\r\nab",
        ),
        Piece::Data(S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        Piece::Data(C, b"cdefGET /next HTTP/1.1\r\n\r\n"),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("POST".into(), "/ws".into(), Some(400)),
            ("GET".into(), "/next".into(), Some(200))
        ]
    );
    assert_eq!(&out[0].request.body.sample[..], b"abcdef");
}

#[test]
fn a_million_tiny_chunks_stay_bounded() {
    let mut t = Tracker::new(TrackerConfig::default()).expect("valid");
    let mut out = Vec::new();
    let mut conv: Vec<u8> = b"POST /drip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    while conv.len() < 1_000_000 {
        conv.extend_from_slice(b"1;x=y\r\nz\r\n");
    }
    conv.extend_from_slice(b"0\r\n\r\n");
    let data = Bytes::from(conv);
    for i in 0..data.len() {
        t.on_event(
            CaptureEvent::Data(DataChunk {
                conn: CONN,
                direction: C,
                source: Source::Syscall,
                offset: i as u64,
                len: 1,
                data: data.slice(i..i + 1),
                ts_ns: i as u64,
                tid: 0,
            }),
            &mut out,
        );
    }
    // The request waits for its response until the flush.
    assert!(out.is_empty());
    let stats = t.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.stream.buffered_bytes, 0);
    assert_eq!(stats.parse_errors, 0);
    t.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::RESPONSE_MISSING));
    assert_eq!(out[0].request.body.sample.len(), 64 << 10);
    assert!(out[0].request.body.wire_len > 99_000);
}

#[test]
fn known_role_guides_a_mid_stream_join_and_mismatches_are_counted() {
    // A server-side socket joined mid-stream: the request direction (ingress) quotes a status
    // line inside a body; it must not be taken for a response stream.
    let chunk = |dir, offset, data: &'static [u8], ts| {
        CaptureEvent::Data(DataChunk {
            conn: CONN,
            direction: dir,
            source: Source::Syscall,
            offset,
            len: data.len() as u64,
            data: Bytes::from_static(data),
            ts_ns: ts,
            tid: 0,
        })
    };
    let open = CaptureEvent::Open(ConnOpen {
        conn: CONN,
        ts_ns: 0,
        role: Role::Server,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    });
    let (out, stats) = run_with(
        TrackerConfig::default(),
        vec![
            open,
            chunk(
                Direction::Ingress,
                100,
                b"quoted:\nHTTP/1.1 200 OK\r\nmore body\r\n",
                1,
            ),
            chunk(Direction::Ingress, 136, b"GET /real HTTP/1.1\r\n\r\n", 2),
            chunk(
                Direction::Egress,
                50,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                3,
            ),
        ],
    );
    assert_eq!(stats.role_mismatches, 0);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].request.path, "/real");

    // A client socket whose egress carries a status line: parsed as the data says, counted.
    let (out, stats) = run(&[
        Piece::Data(C, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        Piece::Data(S, b"GET /x HTTP/1.1\r\n\r\n"),
    ]);
    assert_eq!(stats.role_mismatches, 1);
    assert_eq!(stats.http1_connections, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.path, "/x");
}

#[test]
fn enormous_lengths_saturate_instead_of_overflowing() {
    let (out, stats) = run(&[
        Piece::Data(
            C,
            b"POST /x HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nab",
        ),
        Piece::Gap(C, u64::MAX - 200),
        Piece::Data(S, b"HTTP/1.1 200 OK\r\n\r\nabc"),
        Piece::Gap(S, u64::MAX),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.body.wire_len, u64::MAX - 198);
    assert_eq!(
        out[0].response.as_ref().expect("resp").body.wire_len,
        u64::MAX
    );
    assert!(stats.stream.gap_bytes >= u64::MAX - 200);
}

#[test]
fn protocol_state_over_budget_sheds_the_biggest_connection() {
    let cfg = TrackerConfig {
        max_protocol_state_bytes: 64 << 10,
        ..Default::default()
    };
    let mut t = Tracker::new(cfg).expect("valid");
    let mut out = Vec::new();
    let big = ConnId {
        tgid: 1,
        fd: 1,
        generation: 0,
    };
    let small = ConnId {
        tgid: 1,
        fd: 2,
        generation: 0,
    };
    let data = |conn, dir, offset: u64, bytes: Vec<u8>, ts| {
        CaptureEvent::Data(DataChunk {
            conn,
            direction: dir,
            source: Source::Syscall,
            offset,
            len: bytes.len() as u64,
            data: Bytes::from(bytes),
            ts_ns: ts,
            tid: 0,
        })
    };
    // 40 pipelined requests with 2 KiB headers each, never answered: ~100 KiB of state.
    let mut pipelined = Vec::new();
    for i in 0..40 {
        pipelined.extend_from_slice(
            format!("GET /{i} HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(2048)).as_bytes(),
        );
    }
    let big_len = pipelined.len() as u64;
    t.on_event(data(big, C, 0, pipelined, 1), &mut out);
    t.on_event(
        data(small, C, 0, b"GET /ok HTTP/1.1\r\n\r\n".to_vec(), 2),
        &mut out,
    );
    t.tick(3, &mut out);
    let stats = t.stats();
    assert_eq!(stats.connections_shed, 1);
    assert!(
        stats.protocol_state_bytes <= 64 << 10,
        "{}",
        stats.protocol_state_bytes
    );
    assert_eq!(out.len(), 40, "the shed connection's requests are emitted");
    assert!(
        out.iter()
            .all(|x| x.conn.id == big && x.flags.contains(ExchangeFlags::TRUNCATED))
    );
    assert_eq!(t.protocol(&big), Some(ConnProtocol::Other));
    // The other connection goes on.
    out.clear();
    t.on_event(
        data(
            small,
            S,
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            4,
        ),
        &mut out,
    );
    t.on_event(
        data(big, C, big_len, b"GET /late HTTP/1.1\r\n\r\n".to_vec(), 5),
        &mut out,
    );
    t.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].conn.id, out[0].status()), (small, Some(200)));
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[kind, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn http2_state_counts_towards_the_budget_and_is_shed() {
    let cfg = TrackerConfig {
        max_protocol_state_bytes: 32 << 10,
        ..Default::default()
    };
    // A POST whose 60 KiB body is sampled while its stream stays open.
    let mut client = sonde_http2::frame::PREFACE.to_vec();
    client.extend(h2_frame(4, 0, 0, &[]));
    client.extend(h2_frame(1, 4, 1, &[0x83, 0x86, 0x84, 0x41, 1, b'h']));
    for _ in 0..4 {
        client.extend(h2_frame(0, 0, 1, &[b'b'; 15_000]));
    }
    let mut t = Tracker::new(cfg).expect("valid");
    let mut out = Vec::new();
    for ev in events(Some(Role::Client), &[Piece::Data(C, &client)]) {
        t.on_event(ev, &mut out);
    }
    assert_eq!(
        t.protocol(&CONN),
        Some(ConnProtocol::Http2(Http2Start::PriorKnowledge))
    );
    assert!(out.is_empty());
    t.tick(10_000, &mut out);
    let stats = t.stats();
    assert_eq!(stats.connections_shed, 1, "{stats:?}");
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::TRUNCATED));
    assert_eq!(out[0].request.method, "POST");
    assert_eq!(out[0].stream_id, Some(1));
    assert_eq!(t.protocol(&CONN), Some(ConnProtocol::Other));
    assert_eq!(stats.http2.streams_opened, 1);
}

#[test]
fn frames_after_a_gap_or_without_preface_are_http2_joined_mid_stream() {
    // Response HEADERS (:status 204) and a PING, then the next request on stream 7.
    let resp = [h2_frame(1, 5, 5, &[0x89]), h2_frame(6, 0, 0, &[0; 8])].concat();
    let req = h2_frame(1, 5, 7, &[0x82, 0x86, 0x84, 0x41, 1, b'h']);
    let answer = h2_frame(1, 5, 7, &[0x88]);
    for gap in [true, false] {
        let mut pieces = Vec::new();
        if gap {
            pieces.push(Piece::Gap(S, 5000));
        }
        pieces.push(Piece::Data(S, &resp));
        pieces.push(Piece::Data(C, &req));
        pieces.push(Piece::Data(S, &answer));
        let (out, stats) = run(&pieces);
        assert_eq!(stats.http2.mid_stream, 1, "gap {gap}: {stats:?}");
        let got: Vec<_> = out.iter().map(|x| (x.stream_id, x.status())).collect();
        assert!(got.contains(&(Some(7), Some(200))), "{got:?}");
        let x = out
            .iter()
            .find(|x| x.stream_id == Some(7))
            .expect("stream 7");
        assert_eq!(
            (x.request.method.as_str(), x.request.path.as_str()),
            ("GET", "/")
        );
        assert_eq!(x.version, HttpVersion::Http2);
    }
}

#[test]
fn binary_that_is_not_http2_stays_ignored() {
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 client hello".to_vec();
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for first in [tls, noise] {
        let (out, stats) = run(&[Piece::Data(C, &first), Piece::Data(S, &first)]);
        assert!(out.is_empty());
        assert_eq!(
            (stats.http2_connections, stats.non_http_connections),
            (0, 1)
        );
    }
}
