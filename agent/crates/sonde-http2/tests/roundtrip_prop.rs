//! Property: random header lists sent through a real h2 connection decode identically, both
//! through the HPACK decoder (exact bytes) and through the connection (exchanges).

mod common;

use common::peer::{self, Call};
use proptest::prelude::*;
use sonde_http2::Http2Config;
use sonde_http2::frame::{self, FrameHeader, HEADER_LEN, PREFACE, kind};
use sonde_http2::hpack::Decoder;
use sonde_model::Direction;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes the request header blocks of the client's bytes with our frame reader and HPACK.
fn request_blocks(capture: &[(Direction, Vec<u8>)]) -> Vec<Fields> {
    let wire: Vec<u8> = capture
        .iter()
        .filter(|(d, _)| *d == Direction::Ingress)
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    assert!(wire.starts_with(PREFACE));
    let mut pos = PREFACE.len();
    let mut dec = Decoder::new(65536);
    let mut blocks = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(h) = FrameHeader::peek(&wire[pos..]) {
        let payload = &wire[pos + HEADER_LEN..pos + HEADER_LEN + h.length as usize];
        pos += HEADER_LEN + h.length as usize;
        let f = frame::decode(&h, payload).expect("h2 sends valid frames");
        let (fragment, end) = match f {
            frame::Frame::Headers {
                fragment,
                end_headers,
                ..
            } => (fragment, end_headers),
            frame::Frame::Continuation {
                fragment,
                end_headers,
                ..
            } => (fragment, end_headers),
            _ => continue,
        };
        assert!(h.kind == kind::HEADERS || h.kind == kind::CONTINUATION);
        pending.extend_from_slice(fragment);
        if end {
            let mut fields = Fields::new();
            dec.decode_block(&pending, &mut |f| {
                let (n, v) = (f.name.expect("resolved"), f.value.expect("resolved"));
                if !n.starts_with(b":") {
                    fields.push((n.to_vec(), v.to_vec()));
                }
            })
            .expect("block decodes");
            blocks.push(fields);
            pending.clear();
        }
    }
    assert_eq!(dec.stats().unresolved_fields, 0);
    blocks
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "x-a",
            "x-session",
            "x-trace-id",
            "accept",
            "cookie",
            "x-forwarded-for"
        ])
        .prop_map(str::to_owned),
        "x-[a-z0-9-]{1,16}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => 0x20u8..=0x7e,
        2 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ];
    prop_oneof![
        1 => prop::sample::select(vec![b"gzip".to_vec(), b"same-value".to_vec(), Vec::new()]),
        4 => prop::collection::vec(byte, 0..80)
            // HeaderValue forbids nothing else, but a leading or trailing tab/space survives as is.
            .prop_map(|v| v),
    ]
}

fn header_list() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((header_name(), header_value()), 0..14)
}

fn sorted(mut v: Fields) -> Fields {
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_header_lists_round_trip(lists in prop::collection::vec(header_list(), 1..5)) {
        let calls: Vec<Call> = lists
            .iter()
            .enumerate()
            .map(|(i, list)| {
                let mut c = Call::get(&format!("/r/{i}"));
                c.headers = list.clone();
                c
            })
            .collect();
        let (_, capture) = peer::converse(calls, false);

        let blocks = request_blocks(&capture);
        prop_assert_eq!(blocks.len(), lists.len());
        for (got, sent) in blocks.iter().zip(&lists) {
            let sent: Fields = sent.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.clone())).collect();
            prop_assert_eq!(sorted(got.clone()), sorted(sent));
        }

        let (xs, stats) = peer::decode(&capture, &Http2Config::default());
        prop_assert_eq!(stats.unresolved_fields(), 0);
        let xs = peer::by_stream(xs);
        prop_assert_eq!(xs.len(), lists.len());
        for (x, sent) in xs.iter().zip(&lists) {
            let mut got: Vec<(String, String)> =
                x.request.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
            let mut want: Vec<(String, String)> = sent
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
