//! Edge cases from ../shared/corpora/h2spec/case-list.txt that a passive reader must survive:
//! each is replayed after a clean preface and must be counted as stated, must not disturb a
//! following well-formed request, and must not panic.

mod common;

use std::sync::Arc;

use common::wire::{frame, get_block, settings};
use sonde_http2::frame::{PREFACE, flags, kind};
use sonde_http2::{Connection, FrameErrorKind, Http2Config, Http2Stats};
use sonde_model::{ConnId, ConnMeta, Direction, ProcessInfo, Role};

const C2S: Direction = Direction::Ingress;
const S2C: Direction = Direction::Egress;
const EH: u8 = flags::END_HEADERS;
const ES: u8 = flags::END_STREAM;

struct Case {
    desc: &'static str,
    wire: Vec<u8>,
    check: fn(&Http2Stats) -> bool,
}

fn cases() -> Vec<Case> {
    let get = get_block("/x");
    vec![
        Case {
            desc: "Sends a frame with unknown type",
            wire: frame(0x42, 0xff, 1, b"whatever"),
            check: |s| s.frame_errors_total() == 0,
        },
        Case {
            desc: "Sends a frame with undefined flag",
            wire: frame(kind::PING, 0x16, 0, &[0; 8]),
            check: |s| s.frame_errors_total() == 0,
        },
        Case {
            desc: "Sends a frame with reserved field bit",
            wire: {
                let mut f = frame(kind::PING, 0, 0, &[0; 8]);
                f[5] |= 0x80;
                f
            },
            check: |s| s.frame_errors_total() == 0,
        },
        Case {
            desc: "Sends a CONTINUATION frame preceded by a HEADERS frame with END_HEADERS flag",
            wire: [
                frame(kind::HEADERS, EH | ES, 1, &get),
                frame(kind::CONTINUATION, EH, 1, &[0x82]),
            ]
            .concat(),
            check: |s| s.frame_error(FrameErrorKind::UnexpectedContinuation) == 1,
        },
        Case {
            desc: "Sends a HEADERS frame without the END_HEADERS flag, and a PRIORITY frame",
            wire: [
                frame(kind::HEADERS, ES, 1, &get),
                frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 3, 10]),
            ]
            .concat(),
            check: |s| {
                s.frame_error(FrameErrorKind::UnexpectedContinuation) == 1
                    && s.header_blocks_dropped == 1
            },
        },
        Case {
            desc: "Sends an unknown extension frame in the middle of a header block",
            wire: [
                frame(kind::HEADERS, ES, 1, &get),
                frame(0x42, 0, 0, b"x"),
                frame(kind::CONTINUATION, EH, 1, &[]),
            ]
            .concat(),
            check: |s| s.frame_error(FrameErrorKind::UnexpectedContinuation) == 2,
        },
        Case {
            desc: "Sends HEADERS frame that depends on itself",
            wire: frame(
                kind::HEADERS,
                EH | ES | flags::PRIORITY,
                1,
                &[&[0u8, 0, 0, 1, 5][..], &get].concat(),
            ),
            check: |s| s.frame_error(FrameErrorKind::SelfDependency) == 1,
        },
        Case {
            desc: "Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
            wire: frame(kind::DATA, 0, 1, &vec![0u8; 16_385]),
            check: |s| s.frame_error(FrameErrorKind::TooLarge) == 1 && s.resyncs == 1,
        },
        Case {
            desc: "Sends a dynamic table size update at the end of header block",
            wire: frame(
                kind::HEADERS,
                EH | ES,
                1,
                &[&get[..], &[0x3f, 0xe1, 0x1f]].concat(),
            ),
            check: |s| s.hpack[0].size_updates_misplaced == 1 && s.streams_opened == 1,
        },
        Case {
            desc: "Sends a indexed header field representation with index 0",
            wire: frame(kind::HEADERS, EH | ES, 1, &[&get[..], &[0x80]].concat()),
            check: |s| s.hpack[0].invalid_indices == 1 && s.streams_opened == 1,
        },
        Case {
            desc: "Sends a Huffman-encoded string literal representation containing the EOS symbol",
            wire: frame(
                kind::HEADERS,
                EH | ES,
                1,
                &[
                    &get[..],
                    &[0x00, 0x03, b'a', b'b', b'c', 0x84, 0xff, 0xff, 0xff, 0xff],
                ]
                .concat(),
            ),
            check: |s| s.hpack[0].malformed_blocks == 1,
        },
        Case {
            desc: "Sends even-numbered stream identifier",
            wire: frame(kind::HEADERS, EH | ES, 2, &get),
            check: |s| s.frame_errors_total() == 0 && s.frames_on_unknown_streams == 1,
        },
        Case {
            desc: "closed: Sends a DATA frame after sending RST_STREAM frame",
            wire: [
                frame(kind::HEADERS, EH, 1, &get),
                frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]),
                frame(kind::DATA, ES, 1, b"late"),
            ]
            .concat(),
            check: |s| s.streams_reset == 1 && s.frames_on_unknown_streams == 1,
        },
        Case {
            desc: "Sends stream identifier that is numerically smaller than previous",
            wire: [
                frame(kind::HEADERS, EH | ES, 5, &get),
                frame(kind::HEADERS, EH | ES, 3, &get),
            ]
            .concat(),
            check: |s| s.streams_opened == 1 && s.frames_on_unknown_streams == 1,
        },
        Case {
            desc: "SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value above the maximum allowed frame size",
            wire: settings(&[(5, 1 << 24), (5, 100)]),
            check: |s| s.frame_errors_total() == 0,
        },
        Case {
            desc: "Sends a DATA frame with invalid pad length",
            wire: [
                frame(kind::HEADERS, EH, 1, &get),
                frame(kind::DATA, flags::PADDED | ES, 1, &[6, 1, 2, 3, 4, 5]),
            ]
            .concat(),
            check: |s| s.frame_error(FrameErrorKind::PaddingTooLong) == 1,
        },
        Case {
            desc: "Sends a DATA frame with invalid pad length",
            wire: [
                frame(kind::HEADERS, EH, 1, &get),
                frame(kind::DATA, flags::PADDED, 1, &[]),
            ]
            .concat(),
            check: |s| s.frame_error(FrameErrorKind::PaddingTooLong) == 1,
        },
    ]
}

fn meta() -> Arc<ConnMeta> {
    Arc::new(ConnMeta {
        id: ConnId {
            tgid: 3,
            fd: 4,
            generation: 0,
        },
        role: Role::Server,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })
}

#[test]
fn h2spec_edge_cases_are_counted_and_survived() {
    let listed = common::corpus("h2spec")
        .map(|d| std::fs::read_to_string(d.join("case-list.txt")).expect("case list readable"));
    for case in cases() {
        if let Some(list) = &listed {
            assert!(
                list.contains(case.desc),
                "not an h2spec case: {}",
                case.desc
            );
        }
        for split in [None, Some(1), Some(case.wire.len() / 2)] {
            let mut c = Connection::new(meta(), &Http2Config::default());
            let mut out = Vec::new();
            c.on_data(C2S, PREFACE, 0, &mut out);
            c.on_data(C2S, &settings(&[]), 0, &mut out);
            c.on_data(S2C, &settings(&[]), 0, &mut out);
            match split {
                None => c.on_data(C2S, &case.wire, 1, &mut out),
                Some(at) => {
                    c.on_data(C2S, &case.wire[..at], 1, &mut out);
                    c.on_data(C2S, &case.wire[at..], 1, &mut out);
                }
            }
            let stats = c.stats();
            assert!((case.check)(&stats), "{}: {stats:?}", case.desc);
            // A well-formed request afterwards still decodes (unless framing was lost).
            let next = frame(kind::HEADERS, EH | ES, 101, &get_block("/after"));
            c.on_data(C2S, &next, 2, &mut out);
            c.on_data(
                S2C,
                &frame(kind::HEADERS, EH | ES, 101, &[0x88]),
                3,
                &mut out,
            );
            c.on_close(4, &mut out);
            assert!(
                out.iter()
                    .any(|x| x.request.path == "/after" && x.status() == Some(200)),
                "{}: request after the case lost: {:?}",
                case.desc,
                c.stats()
            );
        }
    }
}
