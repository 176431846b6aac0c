//! The frame decoder against ../shared/corpora/http2-frame-test-case: valid frames decode to the
//! listed fields, invalid ones fail with one of the listed error codes and are counted by a
//! connection that meets them.

mod common;

use std::sync::Arc;

use serde_json::Value;
use sonde_http2::frame::{self, DEFAULT_MAX_FRAME_SIZE, Frame, FrameHeader, HEADER_LEN, PREFACE};
use sonde_http2::{Connection, FrameErrorKind, Http2Config};
use sonde_model::{ConnId, ConnMeta, Direction, ProcessInfo, Role};

fn text(v: &Value) -> Option<&[u8]> {
    v.as_str().map(str::as_bytes)
}

fn check_valid(name: &str, wire: &[u8], want: &Value) {
    let h = FrameHeader::peek(wire).expect("9 header bytes");
    assert_eq!(
        u64::from(h.length),
        want["length"].as_u64().expect("length"),
        "{name}"
    );
    assert_eq!(
        u64::from(h.kind),
        want["type"].as_u64().expect("type"),
        "{name}"
    );
    assert_eq!(
        u64::from(h.flags),
        want["flags"].as_u64().expect("flags"),
        "{name}"
    );
    assert_eq!(
        u64::from(h.stream_id),
        want["stream_identifier"].as_u64().expect("sid"),
        "{name}"
    );
    frame::check_header(&h, DEFAULT_MAX_FRAME_SIZE).expect("size ok");
    let payload = &wire[HEADER_LEN..];
    assert_eq!(payload.len(), h.length as usize, "{name}");
    let p = &want["frame_payload"];
    let f = frame::decode(&h, payload).unwrap_or_else(|e| panic!("{name}: {e}"));
    let padding_len = |pad: Option<&[u8]>| pad.map(|x| x.len() as u64);
    match f {
        Frame::Data { data, padding, .. } => {
            assert_eq!(Some(data), text(&p["data"]), "{name}");
            assert_eq!(padding_len(padding), p["padding_length"].as_u64(), "{name}");
            assert_eq!(padding, text(&p["padding"]), "{name}");
        }
        Frame::Headers {
            fragment,
            padding,
            priority,
            ..
        } => {
            assert_eq!(Some(fragment), text(&p["header_block_fragment"]), "{name}");
            assert_eq!(padding_len(padding), p["padding_length"].as_u64(), "{name}");
            assert_eq!(padding, text(&p["padding"]), "{name}");
            assert_eq!(
                priority.map(|x| u64::from(x.dependency)),
                p["stream_dependency"].as_u64()
            );
            assert_eq!(
                priority.map(|x| u64::from(x.weight)),
                p["weight"].as_u64(),
                "{name}"
            );
            assert_eq!(
                priority.map(|x| x.exclusive),
                p["exclusive"].as_bool(),
                "{name}"
            );
        }
        Frame::Priority { priority, .. } => {
            assert_eq!(
                Some(u64::from(priority.dependency)),
                p["stream_dependency"].as_u64()
            );
            assert_eq!(
                Some(u64::from(priority.weight)),
                p["weight"].as_u64(),
                "{name}"
            );
            assert_eq!(Some(priority.exclusive), p["exclusive"].as_bool(), "{name}");
        }
        Frame::RstStream { error_code, .. } => {
            assert_eq!(
                Some(u64::from(error_code)),
                p["error_code"].as_u64(),
                "{name}"
            );
        }
        Frame::Settings { params, .. } => {
            let got: Vec<(u64, u64)> = frame::settings_params(params)
                .map(|(k, v)| (u64::from(k), u64::from(v)))
                .collect();
            let want: Vec<(u64, u64)> = p["settings"]
                .as_array()
                .expect("settings")
                .iter()
                .map(|kv| (kv[0].as_u64().expect("id"), kv[1].as_u64().expect("value")))
                .collect();
            assert_eq!(got, want, "{name}");
        }
        Frame::PushPromise {
            promised_stream_id,
            fragment,
            padding,
            ..
        } => {
            assert_eq!(
                Some(u64::from(promised_stream_id)),
                p["promised_stream_id"].as_u64()
            );
            assert_eq!(Some(fragment), text(&p["header_block_fragment"]), "{name}");
            assert_eq!(padding, text(&p["padding"]), "{name}");
            assert_eq!(padding_len(padding), p["padding_length"].as_u64(), "{name}");
        }
        Frame::Ping { opaque, .. } => assert_eq!(Some(&opaque[..]), text(&p["opaque_data"])),
        Frame::GoAway {
            last_stream_id,
            error_code,
            debug_data,
        } => {
            assert_eq!(
                Some(u64::from(last_stream_id)),
                p["last_stream_id"].as_u64(),
                "{name}"
            );
            assert_eq!(
                Some(u64::from(error_code)),
                p["error_code"].as_u64(),
                "{name}"
            );
            assert_eq!(
                Some(debug_data),
                text(&p["additional_debug_data"]),
                "{name}"
            );
        }
        Frame::WindowUpdate { increment, .. } => {
            assert_eq!(
                Some(u64::from(increment)),
                p["window_size_increment"].as_u64(),
                "{name}"
            );
        }
        Frame::Continuation { fragment, .. } => {
            assert_eq!(Some(fragment), text(&p["header_block_fragment"]), "{name}");
        }
        Frame::Unknown { .. } => panic!("{name}: unknown type"),
    }
}

/// The error a reader reports for a frame: the header check first, then the payload.
fn error_of(wire: &[u8]) -> FrameErrorKind {
    let h = FrameHeader::peek(wire).expect("9 header bytes");
    if let Err(e) = frame::check_header(&h, DEFAULT_MAX_FRAME_SIZE) {
        return e;
    }
    let payload = wire
        .get(HEADER_LEN..HEADER_LEN + h.length as usize)
        .expect("whole payload");
    frame::decode(&h, payload).expect_err("invalid frame must be rejected")
}

fn server_conn() -> Connection {
    let meta = ConnMeta {
        id: ConnId {
            tgid: 1,
            fd: 3,
            generation: 0,
        },
        role: Role::Server,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    };
    Connection::new(Arc::new(meta), &Http2Config::default())
}

#[test]
fn corpus_frames() {
    let Some(root) = common::corpus("http2-frame-test-case") else {
        return;
    };
    let (mut valid, mut invalid) = (0, 0);
    for path in common::json_files(&root) {
        let name = path.display().to_string();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let wire = common::hex(v["wire"].as_str().expect("wire"));
        if v["error"].is_null() {
            check_valid(&name, &wire, &v["frame"]);
            valid += 1;
            continue;
        }
        invalid += 1;
        let codes: Vec<u64> = v["error"]
            .as_array()
            .expect("codes")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let kind = error_of(&wire);
        assert!(
            codes.contains(&(kind.code() as u64)),
            "{name}: {kind:?} not in {codes:?}"
        );

        // A connection meeting the frame (from the client, after the preface) counts that kind.
        let mut c = server_conn();
        let mut out = Vec::new();
        c.on_data(Direction::Ingress, PREFACE, 1, &mut out);
        c.on_data(Direction::Ingress, &wire, 2, &mut out);
        c.on_close(3, &mut out);
        let stats = c.stats();
        assert_eq!(stats.frame_error(kind), 1, "{name}: {stats:?}");
        assert_eq!(stats.frame_errors_total(), 1, "{name}");
        assert!(out.is_empty(), "{name}");
    }
    assert_eq!((valid, invalid), (12, 22));
}

#[test]
fn corpus_frames_split_at_every_byte_still_count_once() {
    let Some(root) = common::corpus("http2-frame-test-case") else {
        return;
    };
    for path in common::json_files(&root.join("error")) {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let wire = common::hex(v["wire"].as_str().expect("wire"));
        let kind = error_of(&wire);
        for split in 0..=wire.len() {
            let mut c = server_conn();
            let mut out = Vec::new();
            c.on_data(Direction::Ingress, PREFACE, 1, &mut out);
            c.on_data(Direction::Ingress, &wire[..split], 2, &mut out);
            c.on_data(Direction::Ingress, &wire[split..], 3, &mut out);
            assert_eq!(
                c.stats().frame_error(kind),
                1,
                "{} split {split}",
                path.display()
            );
        }
    }
}
