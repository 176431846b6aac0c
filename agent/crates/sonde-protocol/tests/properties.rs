//! Property tests: any split of a valid conversation yields the same exchanges; arbitrary
//! bytes never panic, stay within the memory bounds, and do not disturb other connections.

mod common;

use bytes::Bytes;
use common::{Delivery, to_events, track, track_with};
use proptest::prelude::*;
use sonde_model::{CaptureEvent, ConnId, DataChunk, Direction, Source};
use sonde_protocol::{Tracker, TrackerConfig};

/// One generated exchange of a keep-alive conversation.
#[derive(Clone, Debug)]
enum Msg {
    Get {
        path: String,
    },
    Post {
        path: String,
        body: Vec<u8>,
        chunked: bool,
    },
}

fn msg() -> impl Strategy<Value = Msg> {
    let path = "/[a-z]{1,8}(/[0-9]{1,4})?";
    prop_oneof![
        path.prop_map(|path| Msg::Get { path }),
        (
            path,
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>()
        )
            .prop_map(|(path, body, chunked)| Msg::Post {
                path,
                body,
                chunked
            }),
    ]
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(97) {
        out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

/// Client and server bytes of the conversation, requests answered in order.
fn conversation(msgs: &[Msg]) -> (Vec<u8>, Vec<u8>) {
    let mut client = Vec::new();
    let mut server = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m {
            Msg::Get { path } => {
                client.extend_from_slice(
                    format!("GET {path}?i={i} HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\r\n")
                        .as_bytes(),
                );
            }
            Msg::Post {
                path,
                body,
                chunked: true,
            } => {
                client.extend_from_slice(
                    format!(
                        "POST {path} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    .as_bytes(),
                );
                client.extend_from_slice(&chunked(body));
            }
            Msg::Post {
                path,
                body,
                chunked: false,
            } => {
                client.extend_from_slice(
                    format!(
                        "POST {path} HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                client.extend_from_slice(body);
            }
        }
        let body = format!("{{\"i\":{i}}}");
        server.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
    }
    (client, server)
}

/// Cuts `bytes` at the given points (taken modulo the length), in order.
fn cut(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % bytes.len().max(1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
        if c > start {
            out.push(bytes[start..c].to_vec());
            start = c;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However the two byte streams are cut into deliveries (each request delivered before its
    /// response starts), the exchanges are the same apart from timestamps.
    #[test]
    fn any_split_yields_the_same_exchanges(
        msgs in proptest::collection::vec(msg(), 1..8),
        client_cuts in proptest::collection::vec(any::<usize>(), 0..30),
        server_cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let (client, server) = conversation(&msgs);
        let whole = vec![Delivery::Data(Direction::Egress, client.clone()), Delivery::Data(Direction::Ingress, server.clone())];
        let (expected, _) = track(to_events(&whole, None));
        prop_assert_eq!(expected.len(), msgs.len());

        let mut split = Vec::new();
        for piece in cut(&client, &client_cuts) {
            split.push(Delivery::Data(Direction::Egress, piece));
        }
        for piece in cut(&server, &server_cuts) {
            split.push(Delivery::Data(Direction::Ingress, piece));
        }
        let (got, stats) = track(to_events(&split, None));
        prop_assert_eq!(stats.parse_errors, 0);
        prop_assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            prop_assert_eq!(&g.request.method, &e.request.method);
            prop_assert_eq!(&g.request.path, &e.request.path);
            prop_assert_eq!(&g.request.query, &e.request.query);
            prop_assert_eq!(&g.request.headers, &e.request.headers);
            prop_assert_eq!(&g.request.trailers, &e.request.trailers);
            prop_assert_eq!(&g.request.body.sample, &e.request.body.sample);
            prop_assert_eq!(g.request.body.wire_len, e.request.body.wire_len);
            prop_assert_eq!(g.status(), e.status());
            let (gr, er) = (g.response.as_ref(), e.response.as_ref());
            prop_assert_eq!(gr.map(|r| &r.body.sample), er.map(|r| &r.body.sample));
            prop_assert_eq!(g.flags, e.flags);
        }
    }

    /// Arbitrary bytes in both directions, in arbitrary deliveries with gaps: no panic, and the
    /// tracker's buffers stay within their bounds (checked through the stream counters and by
    /// the number of exchanges a bounded input can produce).
    #[test]
    fn arbitrary_bytes_never_panic(
        pieces in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200), 0u64..50),
            0..40,
        ),
        seed in prop_oneof![Just(&b""[..]), Just(&b"GET / HTTP/1.1\r\n"[..]), Just(&b"HTTP/1.1 200 OK\r\n"[..])],
    ) {
        let mut deliveries = vec![Delivery::Data(Direction::Egress, seed.to_vec())];
        for (egress, bytes, gap) in pieces {
            let dir = if egress { Direction::Egress } else { Direction::Ingress };
            deliveries.push(Delivery::Data(dir, bytes));
            if gap % 7 == 0 {
                deliveries.push(Delivery::Gap(dir, gap));
            }
        }
        let cfg = TrackerConfig { max_head_bytes: 512, max_headers: 8, ..Default::default() };
        let total: usize = deliveries.iter().map(|d| match d { Delivery::Data(_, b) => b.len(), Delivery::Gap(..) => 0 }).sum();
        let (out, stats) = track_with(cfg, to_events(&deliveries, None));
        // A request needs at least 14 bytes ("GET / HTTP/1.1" minus line end).
        prop_assert!(out.len() <= total / 14 + 1);
        prop_assert_eq!(stats.stream.buffered_bytes, 0);
        prop_assert_eq!(stats.connections_open, 0);
        for x in &out {
            prop_assert!(x.request.headers.len() <= 8);
            prop_assert!(x.request.body.sample.len() <= 64 << 10);
        }
    }

    /// A garbage connection next to a valid one does not change the valid one's exchanges.
    #[test]
    fn garbage_does_not_disturb_other_connections(
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 1..30),
    ) {
        let (client, server) = conversation(&[
            Msg::Get { path: "/a".into() },
            Msg::Post { path: "/b".into(), body: b"{}".to_vec(), chunked: true },
        ]);
        let valid = to_events(
            &[Delivery::Data(Direction::Egress, client), Delivery::Data(Direction::Ingress, server)],
            None,
        );
        let (alone, _) = track(valid.clone());

        let other = ConnId { tgid: 1, fd: 1, generation: 0 };
        let mut mixed = Vec::new();
        let mut offset = 0u64;
        let mut valid_iter = valid.into_iter();
        for g in garbage {
            mixed.push(CaptureEvent::Data(DataChunk {
                conn: other,
                direction: Direction::Egress,
                source: Source::Syscall,
                offset,
                len: g.len() as u64,
                data: Bytes::from(g.clone()),
                ts_ns: offset,
                tid: 0,
            }));
            offset += g.len() as u64;
            if let Some(ev) = valid_iter.next() {
                mixed.push(ev);
            }
        }
        mixed.extend(valid_iter);
        let mut t = Tracker::new(TrackerConfig::default()).expect("valid");
        let mut out = Vec::new();
        for ev in mixed {
            t.on_event(ev, &mut out);
        }
        t.flush(&mut out);
        let mine: Vec<_> = out.into_iter().filter(|x| x.conn.id == common::CONN).collect();
        prop_assert_eq!(mine, alone);
    }
}
