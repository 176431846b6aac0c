//! h2's client and server as real peers: the decoder, fed the captured bytes of both
//! directions, must rebuild every exchange.

mod common;

use bytes::Bytes;
use common::peer::{self, Call};
use http::Method;
use sonde_http2::{Connection, Http2Config};
use sonde_model::{Direction, ExchangeFlags};

fn mixed_calls(n: usize) -> Vec<Call> {
    (0..n)
        .map(|i| {
            let mut c = Call::get(&format!("/api/items/{i}?page={}&q=x", i % 7));
            match i % 4 {
                0 => {}
                1 => {
                    c.method = Method::POST;
                    c.body = vec![
                        Bytes::from(vec![b'a'; 100 + i]),
                        Bytes::from(vec![b'b'; 20_000]),
                    ];
                    c = c.header("content-type", "application/json");
                }
                2 => {
                    c.method = Method::PUT;
                    c.body = vec![Bytes::from(vec![b'c'; 3])];
                }
                _ => c.method = Method::DELETE,
            }
            c.header("x-status", &(200 + (i % 5) as u64).to_string())
                .header("x-resp-len", &((i * 997) % 30_000).to_string())
                .header("authorization", &format!("Bearer token-{}", i % 3))
                .header("user-agent", "sonde-test/1.0")
        })
        .collect()
}

fn body_len(c: &Call) -> u64 {
    c.body.iter().map(|b| b.len() as u64).sum()
}

#[test]
fn concurrent_streams_rebuild_exactly() {
    let calls = mixed_calls(60);
    let (outcomes, capture) = peer::converse(calls.clone(), true);
    let (xs, stats) = peer::decode(&capture, &Http2Config::default());
    let xs = peer::by_stream(xs);
    assert_eq!(xs.len(), calls.len(), "{stats:?}");
    assert_eq!(stats.frame_errors_total(), 0);
    assert_eq!(stats.unresolved_fields(), 0);
    // Streams were interleaved: several were open at once.
    let mut matched = vec![false; calls.len()];
    for x in &xs {
        let idx: usize = x
            .request
            .path
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("index");
        let call = &calls[idx];
        matched[idx] = true;
        assert_eq!(x.version, sonde_model::HttpVersion::Http2);
        assert_eq!(x.request.method, call.method.as_str());
        assert_eq!(x.request.authority.as_deref(), Some("example.test"));
        assert_eq!(
            Some(format!(
                "{}?{}",
                x.request.path,
                x.request.query.as_deref().unwrap_or("")
            )),
            Some(call.path.clone())
        );
        assert_eq!(x.request.body.wire_len, body_len(call));
        assert_eq!(x.request_header("user-agent"), Some("sonde-test/1.0"));
        assert_eq!(
            x.request_header("authorization"),
            Some(format!("Bearer token-{}", idx % 3).as_str())
        );
        let resp = x.response.as_ref().expect("response");
        assert_eq!(Some(resp.status), outcomes[idx].status);
        assert_eq!(resp.status, 200 + (idx % 5) as u16);
        assert_eq!(resp.body.wire_len, outcomes[idx].body_len as u64);
        assert_eq!(resp.body.wire_len, ((idx * 997) % 30_000) as u64);
        assert_eq!(
            x.response_header("x-request-bytes"),
            Some(body_len(call).to_string().as_str())
        );
        let sample_len = (resp.body.wire_len as usize).min(64 * 1024);
        assert_eq!(resp.body.sample.len(), sample_len);
        assert!(resp.body.sample.iter().all(|&b| b == b'x'));
        assert_eq!(
            x.flags,
            ExchangeFlags::default(),
            "stream {:?}",
            x.stream_id
        );
        assert!(x.request.ts_start_ns <= resp.ts_end_ns);
    }
    assert!(matched.iter().all(|m| *m));

    // The streams really were concurrent on the wire.
    let mut c = Connection::new(peer::server_meta(), &Http2Config::default());
    let mut out = Vec::new();
    let mut most_open = 0;
    for (d, b) in &capture {
        c.on_data(*d, b, 0, &mut out);
        most_open = most_open.max(c.open_streams());
    }
    assert!(most_open >= 10, "at most {most_open} streams open at once");
}

#[test]
fn large_header_blocks_arrive_in_continuation_frames() {
    let big = "v".repeat(40_000);
    let calls = vec![
        Call::get("/big-headers")
            .header("cookie", &big)
            .header("x-after", "kept"),
        Call::get("/next").header("x-resp-len", "3"),
    ];
    let (outcomes, capture) = peer::converse(calls, false);
    assert_eq!(outcomes[0].status, Some(200));
    let cfg = Http2Config::default();
    let (xs, stats) = peer::decode(&capture, &cfg);
    let xs = peer::by_stream(xs);
    assert_eq!(xs.len(), 2, "{stats:?}");
    let cookie = xs[0]
        .request
        .headers
        .iter()
        .find(|h| h.name == "cookie")
        .expect("cookie");
    assert!(cookie.value_truncated);
    assert_eq!(cookie.value.len(), cfg.max_header_value_bytes);
    assert!(big.starts_with(&cookie.value));
    assert_eq!(xs[0].request_header("x-after"), Some("kept"));
    assert_eq!(xs[1].request.path, "/next");
    assert_eq!(stats.frame_errors_total(), 0);
    // More than one frame carried the block: CONTINUATION was used.
    let ingress: Vec<u8> = capture
        .iter()
        .filter(|(d, _)| *d == Direction::Ingress)
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    let mut pos = sonde_http2::frame::PREFACE.len();
    let mut continuations = 0;
    while let Some(h) = sonde_http2::frame::FrameHeader::peek(&ingress[pos..]) {
        continuations += usize::from(h.kind == sonde_http2::frame::kind::CONTINUATION);
        pos += sonde_http2::frame::HEADER_LEN + h.length as usize;
    }
    assert!(continuations >= 1);
}

#[test]
fn byte_at_a_time_and_coalesced_reads_give_the_same_exchanges() {
    let calls = mixed_calls(12);
    let (_, capture) = peer::converse(calls, true);
    let cfg = Http2Config::default();
    let (reference, _) = peer::decode(&capture, &cfg);
    let strip = |xs: Vec<sonde_model::Exchange>| -> Vec<String> {
        peer::by_stream(xs)
            .into_iter()
            .map(|mut x| {
                x.request.ts_start_ns = 0;
                x.request.ts_end_ns = 0;
                if let Some(r) = &mut x.response {
                    r.ts_start_ns = 0;
                    r.ts_end_ns = 0;
                }
                format!("{x:?}")
            })
            .collect()
    };
    let reference = strip(reference);
    assert_eq!(reference.len(), 12);

    // One byte per read.
    let bytewise: Vec<(Direction, Vec<u8>)> = capture
        .iter()
        .flat_map(|(d, b)| b.iter().map(move |x| (*d, vec![*x])))
        .collect();
    assert_eq!(strip(peer::decode(&bytewise, &cfg).0), reference);

    // Consecutive reads of one direction merged into one.
    let mut merged: Vec<(Direction, Vec<u8>)> = Vec::new();
    for (d, b) in &capture {
        match merged.last_mut() {
            Some((ld, lb)) if ld == d => lb.extend_from_slice(b),
            _ => merged.push((*d, b.clone())),
        }
    }
    assert_eq!(strip(peer::decode(&merged, &cfg).0), reference);

    // Every split point of every read.
    for (i, (_, b)) in capture.iter().enumerate().take(40) {
        for split in [1, b.len() / 3, b.len() / 2, b.len().saturating_sub(1)] {
            if split == 0 || split >= b.len() {
                continue;
            }
            let mut c2 = capture.clone();
            let (d, whole) = c2.remove(i);
            c2.insert(i, (d, whole[split..].to_vec()));
            c2.insert(i, (d, whole[..split].to_vec()));
            assert_eq!(
                strip(peer::decode(&c2, &cfg).0),
                reference,
                "read {i} split {split}"
            );
        }
    }
}

#[test]
fn reset_streams_and_trailers() {
    let calls = vec![
        Call::get("/reset").header("x-reset", "1"),
        Call::get("/trailer")
            .header("x-trailer", "checksum-1")
            .header("x-resp-len", "10"),
        Call::get("/empty").header("x-status", "204"),
    ];
    let (outcomes, capture) = peer::converse(calls, false);
    assert!(outcomes[0].reset);
    let (xs, stats) = peer::decode(&capture, &Http2Config::default());
    let xs = peer::by_stream(xs);
    assert_eq!(xs.len(), 3);
    assert_eq!(xs[0].request.path, "/reset");
    assert!(xs[0].flags.contains(ExchangeFlags::RESET));
    assert!(xs[0].flags.contains(ExchangeFlags::RESPONSE_MISSING));
    assert_eq!(stats.streams_reset, 1);
    let t = xs[1].response.as_ref().expect("response");
    assert_eq!(
        t.trailers,
        vec![sonde_model::Header::new("x-trailer", "checksum-1")]
    );
    assert_eq!(t.body.wire_len, 10);
    assert_eq!(xs[2].status(), Some(204));
    assert_eq!(xs[2].flags, ExchangeFlags::default());
}

#[test]
fn grpc_unary_streaming_and_trailers_only() {
    let grpc = |path: &str, msgs: usize, replies: usize, status: &str| {
        let mut c = Call::get(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-replies", &replies.to_string())
            .header("x-grpc-status", status);
        c.method = Method::POST;
        // Messages split across DATA frames at odd places.
        let mut wire = Vec::new();
        for i in 0..msgs {
            wire.extend(peer::grpc_frame(&vec![1u8; 3 + 40 * i], false));
        }
        c.body = wire.chunks(301).map(Bytes::copy_from_slice).collect();
        c
    };
    let calls = vec![
        grpc("/helloworld.Greeter/SayHello", 1, 1, "0"),
        grpc("/route.RouteGuide/RecordRoute", 25, 4, "0"),
        grpc("/pkg.Svc/Missing", 1, 0, "12"),
    ];
    let (_, capture) = peer::converse(calls, false);
    let (xs, stats) = peer::decode(&capture, &Http2Config::default());
    let xs = peer::by_stream(xs);
    assert_eq!(xs.len(), 3, "{stats:?}");
    let g0 = xs[0].grpc.as_ref().expect("grpc");
    assert_eq!(
        (g0.service.as_str(), g0.method.as_str()),
        ("helloworld.Greeter", "SayHello")
    );
    assert_eq!((g0.request_messages, g0.request_message_bytes), (1, 3));
    assert_eq!((g0.response_messages, g0.response_message_bytes), (1, 10));
    assert_eq!(g0.status, Some(0));
    assert_eq!(g0.message.as_deref(), Some("all done"));
    assert!(!g0.compressed);
    let g1 = xs[1].grpc.as_ref().expect("grpc");
    assert_eq!(g1.method, "RecordRoute");
    assert_eq!(g1.request_messages, 25);
    assert_eq!(
        g1.request_message_bytes,
        (0..25).map(|i| 3 + 40 * i).sum::<u64>()
    );
    assert_eq!(
        (g1.response_messages, g1.response_message_bytes),
        (4, 10 + 11 + 12 + 13)
    );
    assert!(g1.compressed, "odd replies carry the compressed flag");
    let g2 = xs[2].grpc.as_ref().expect("grpc");
    assert_eq!(g2.status, Some(12));
    assert_eq!(g2.message.as_deref(), Some("nothing here"));
    assert_eq!(g2.response_messages, 0);
    assert_eq!(xs[2].status(), Some(200));
    for x in &xs {
        assert_eq!(x.flags, ExchangeFlags::default());
    }
}

#[test]
fn late_join_never_yields_wrong_values() {
    let calls = mixed_calls(30);
    let (_, capture) = peer::converse(calls.clone(), false);
    let (full, _) = peer::decode(&capture, &Http2Config::default());
    assert_eq!(full.len(), 30);
    for start in [5usize, capture.len() / 3, capture.len() / 2] {
        let mut c = Connection::new_late(peer::server_meta(), &Http2Config::default());
        let mut out = Vec::new();
        for (i, (d, b)) in capture.iter().enumerate().skip(start) {
            // Join in the middle of a read, too.
            let b = if i == start {
                &b[b.len() / 2..]
            } else {
                &b[..]
            };
            c.on_data(*d, b, i as u64, &mut out);
        }
        c.on_close(u64::MAX, &mut out);
        assert!(!out.is_empty(), "start {start}: {:?}", c.stats());
        for x in &out {
            assert!(x.flags.contains(ExchangeFlags::RESYNCED));
            let truth = full
                .iter()
                .find(|f| f.stream_id == x.stream_id)
                .expect("known stream");
            // Whatever was resolved equals the truth.
            if !x.request.method.is_empty() {
                assert_eq!(x.request.method, truth.request.method);
            }
            if !x.request.path.is_empty() {
                assert_eq!(x.request.path, truth.request.path);
            }
            for h in &x.request.headers {
                assert_eq!(
                    truth.request_header(&h.name),
                    Some(h.value.as_str()),
                    "{}",
                    h.name
                );
            }
            if let (Some(r), Some(t)) = (&x.response, &truth.response)
                && r.status != 0
            {
                assert_eq!(r.status, t.status);
            }
        }
        assert!(
            c.stats().unresolved_fields() > 0 || out.iter().all(|x| !x.request.method.is_empty())
        );
    }
}

#[test]
fn gap_inside_a_data_frame_keeps_framing() {
    let calls = vec![
        Call::get("/big").header("x-resp-len", "20000"),
        Call::get("/after").header("x-resp-len", "5"),
    ];
    let (_, capture) = peer::converse(calls, false);
    // Find a large server write (DATA of /big) and drop 100 bytes from its middle.
    let idx = capture
        .iter()
        .position(|(d, b)| *d == Direction::Egress && b.len() > 5000)
        .expect("a large write");
    let mut c = Connection::new(peer::server_meta(), &Http2Config::default());
    let mut out = Vec::new();
    for (i, (d, b)) in capture.iter().enumerate() {
        if i == idx {
            let mid = b.len() / 2;
            c.on_data(*d, &b[..mid], i as u64, &mut out);
            c.on_gap(*d, 100, &mut out);
            c.on_data(*d, &b[mid + 100..], i as u64, &mut out);
        } else {
            c.on_data(*d, b, i as u64, &mut out);
        }
    }
    c.on_close(u64::MAX, &mut out);
    let xs = peer::by_stream(out);
    assert_eq!(xs.len(), 2);
    let big = xs[0].response.as_ref().expect("response");
    assert_eq!(big.body.wire_len, 20_000);
    assert_eq!(big.body.missing_len, 100);
    assert!(xs[0].flags.contains(ExchangeFlags::GAP));
    assert_eq!(xs[1].request.path, "/after");
    assert_eq!(xs[1].flags, ExchangeFlags::default());
    assert_eq!(c.stats().resyncs, 0);
}

#[test]
fn gzip_bodies_are_sampled_decoded() {
    let calls = vec![
        Call::get("/small.json").header("x-gzip", "20"),
        Call::get("/large.json").header("x-gzip", "20000"),
    ];
    let (_, capture) = peer::converse(calls, false);
    let cfg = Http2Config::default();
    let (xs, _) = peer::decode(&capture, &cfg);
    let xs = peer::by_stream(xs);
    assert_eq!(xs.len(), 2);
    let small = &xs[0].response.as_ref().expect("response").body;
    assert_eq!(small.encoding.as_deref(), Some("gzip"));
    assert_eq!(small.sample, peer::plain_text(20));
    assert!(!small.sample_truncated && !small.decode_error);
    assert_eq!(Some(small.wire_len), small.declared_len);
    let large = &xs[1].response.as_ref().expect("response").body;
    let text = peer::plain_text(20_000);
    assert!(
        large.wire_len > 64 * 1024,
        "compressed body must exceed the sample"
    );
    assert_eq!(large.sample.len(), cfg.body_sample_bytes);
    assert_eq!(&large.sample[..], &text[..cfg.body_sample_bytes]);
    assert!(large.sample_truncated && !large.decode_error);
}
