//! Frame + HPACK + stream assembly over an h2load-like mix captured from h2's client and
//! server: many concurrent GETs (and some POSTs) with browser-like headers and small bodies.
//! `connection/*` is the whole decoder (exchanges/s); `hpack/*` is header decoding alone over
//! the same header blocks, to show its share.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::Method;
use sonde_http2::frame::{self, Frame, FrameHeader, HEADER_LEN, PREFACE};
use sonde_http2::hpack::Decoder;
use sonde_http2::{Connection, Http2Config};
use sonde_model::Direction;

#[allow(dead_code)]
#[path = "../tests/common/peer.rs"]
mod peer;

const CALLS: usize = 2000;

fn h2load_mix() -> Vec<peer::Call> {
    (0..CALLS)
        .map(|i| {
            let mut c = peer::Call::get(match i % 5 {
                0 => "/index.html",
                1 => "/api/v1/users/1234?fields=name,email",
                2 => "/static/app.js",
                3 => "/api/v1/orders",
                _ => "/healthz",
            });
            if i % 5 == 3 {
                c.method = Method::POST;
                c.body = vec![bytes::Bytes::from_static(br#"{"item":42,"qty":1}"#)];
                c = c.header("content-type", "application/json");
            }
            c.header("user-agent", "h2load nghttp2/1.59.0")
                .header("accept", "*/*")
                .header("accept-encoding", "gzip, deflate, br")
                .header("cookie", "session=0123456789abcdef; theme=dark")
                .header("x-request-id", &format!("req-{i:08}"))
                .header("x-resp-len", ["612", "128", "2048", "64", "2"][i % 5])
        })
        .collect()
}

/// Header blocks of one direction's bytes, in order (HEADERS + CONTINUATION joined).
fn header_blocks(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut pos = if wire.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    let mut blocks = Vec::new();
    let mut pending = Vec::new();
    while let Some(h) = FrameHeader::peek(&wire[pos..]) {
        let end = pos + HEADER_LEN + h.length as usize;
        let Some(payload) = wire.get(pos + HEADER_LEN..end) else {
            break;
        };
        pos = end;
        match frame::decode(&h, payload) {
            Ok(Frame::Headers {
                fragment,
                end_headers,
                ..
            })
            | Ok(Frame::Continuation {
                fragment,
                end_headers,
                ..
            }) => {
                pending.extend_from_slice(fragment);
                if end_headers {
                    blocks.push(std::mem::take(&mut pending));
                }
            }
            _ => {}
        }
    }
    blocks
}

fn bench(c: &mut Criterion) {
    let (_, capture) = peer::converse(h2load_mix(), true);
    let cfg = Http2Config::default();
    let (xs, stats) = peer::decode(&capture, &cfg);
    assert_eq!(xs.len(), CALLS, "{stats:?}");
    let bytes: usize = capture.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "capture: {} reads, {bytes} bytes, {CALLS} exchanges",
        capture.len()
    );

    let mut g = c.benchmark_group("connection");
    g.throughput(Throughput::Elements(CALLS as u64));
    g.bench_function(BenchmarkId::new("h2load_mix", CALLS), |b| {
        let mut out = Vec::with_capacity(CALLS);
        b.iter(|| {
            let mut conn = Connection::new(peer::server_meta(), &cfg);
            for (i, (d, bytes)) in capture.iter().enumerate() {
                conn.on_data(*d, bytes, i as u64, &mut out);
            }
            conn.on_close(u64::MAX, &mut out);
            let n = out.len();
            out.clear();
            n
        })
    });
    g.finish();

    let wire = |dir: Direction| -> Vec<u8> {
        capture
            .iter()
            .filter(|(d, _)| *d == dir)
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    };
    let requests = header_blocks(&wire(Direction::Ingress));
    let responses = header_blocks(&wire(Direction::Egress));
    assert_eq!(requests.len(), CALLS);
    assert!(responses.len() >= CALLS);
    let mut g = c.benchmark_group("hpack");
    // Per exchange: one request block and its response block(s).
    g.throughput(Throughput::Elements(CALLS as u64));
    g.bench_function(BenchmarkId::new("blocks_of_exchanges", CALLS), |b| {
        b.iter(|| {
            let mut fields = 0usize;
            for blocks in [&requests, &responses] {
                let mut d = Decoder::new(cfg.max_table_size);
                for block in blocks.iter() {
                    let _ = d.decode_block(block, &mut |f| {
                        fields += f.value.map_or(0, <[u8]>::len);
                    });
                }
            }
            fields
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
