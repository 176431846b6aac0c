//! HTTP/2 frames (RFC 9113 §4 and §6), decoded from borrowed bytes.
//!
//! Why our own: h2's frame types are only public behind its `unstable` feature and its codec wants
//! an I/O object and a live peer. A passive reader needs a pure function from bytes to frames that
//! names every validation failure, so that it can count them and carry on.

use thiserror::Error;

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE default (and minimum).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// Largest frame length the protocol allows (2^24 - 1).
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Frame type codes.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// SETTINGS identifiers we act on.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 1;
    pub const MAX_FRAME_SIZE: u16 = 5;
}

/// The 9-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier with the reserved bit cleared.
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> FrameHeader {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *bytes;
        FrameHeader {
            length: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        }
    }

    /// Parses the header at the start of `buf`, if there are 9 bytes.
    pub fn peek(buf: &[u8]) -> Option<FrameHeader> {
        let head: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader::parse(head))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Error codes of RFC 9113 §7 that frame validation produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Protocol = 1,
    FrameSize = 6,
}

/// Every way a frame can be invalid; each has its own counter.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
pub enum FrameErrorKind {
    #[error("frame longer than the maximum frame size")]
    TooLarge,
    #[error("padding length not smaller than the payload")]
    PaddingTooLong,
    #[error("frame needs a stream identifier")]
    StreamIdRequired,
    #[error("connection-level frame carries a stream identifier")]
    StreamIdForbidden,
    #[error("payload length is wrong for the frame type")]
    BadLength,
    #[error("promised stream identifier is zero or odd")]
    BadPromisedStream,
    #[error("window increment is zero")]
    ZeroWindowIncrement,
    #[error("CONTINUATION without a header block in progress, or another frame inside one")]
    UnexpectedContinuation,
    #[error("stream depends on itself")]
    SelfDependency,
}

impl FrameErrorKind {
    pub const ALL: [FrameErrorKind; 9] = [
        FrameErrorKind::TooLarge,
        FrameErrorKind::PaddingTooLong,
        FrameErrorKind::StreamIdRequired,
        FrameErrorKind::StreamIdForbidden,
        FrameErrorKind::BadLength,
        FrameErrorKind::BadPromisedStream,
        FrameErrorKind::ZeroWindowIncrement,
        FrameErrorKind::UnexpectedContinuation,
        FrameErrorKind::SelfDependency,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The RFC 9113 error code an endpoint would send for it.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameErrorKind::TooLarge | FrameErrorKind::BadLength => ErrorCode::FrameSize,
            _ => ErrorCode::Protocol,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FrameErrorKind::TooLarge => "too_large",
            FrameErrorKind::PaddingTooLong => "padding_too_long",
            FrameErrorKind::StreamIdRequired => "stream_id_required",
            FrameErrorKind::StreamIdForbidden => "stream_id_forbidden",
            FrameErrorKind::BadLength => "bad_length",
            FrameErrorKind::BadPromisedStream => "bad_promised_stream",
            FrameErrorKind::ZeroWindowIncrement => "zero_window_increment",
            FrameErrorKind::UnexpectedContinuation => "unexpected_continuation",
            FrameErrorKind::SelfDependency => "self_dependency",
        }
    }
}

/// PRIORITY fields (deprecated by RFC 9113 but still sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    pub exclusive: bool,
    pub dependency: u32,
    /// Weight 1..=256 (wire value + 1).
    pub weight: u16,
}

/// A decoded frame borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream_id: u32,
        end_stream: bool,
        data: &'a [u8],
        padding: Option<&'a [u8]>,
    },
    Headers {
        stream_id: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
        fragment: &'a [u8],
        padding: Option<&'a [u8]>,
    },
    Priority {
        stream_id: u32,
        priority: Priority,
    },
    RstStream {
        stream_id: u32,
        error_code: u32,
    },
    Settings {
        ack: bool,
        params: &'a [u8],
    },
    PushPromise {
        stream_id: u32,
        end_headers: bool,
        promised_stream_id: u32,
        fragment: &'a [u8],
        padding: Option<&'a [u8]>,
    },
    Ping {
        ack: bool,
        opaque: [u8; 8],
    },
    GoAway {
        last_stream_id: u32,
        error_code: u32,
        debug_data: &'a [u8],
    },
    WindowUpdate {
        stream_id: u32,
        increment: u32,
    },
    Continuation {
        stream_id: u32,
        end_headers: bool,
        fragment: &'a [u8],
    },
    /// Unknown types must be ignored (RFC 9113 §4.1).
    Unknown {
        kind: u8,
        stream_id: u32,
    },
}

/// Iterates the (identifier, value) pairs of a SETTINGS payload.
pub fn settings_params(params: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    params.chunks_exact(6).map(|c| {
        let [a, b, v0, v1, v2, v3] = <[u8; 6]>::try_from(c).unwrap_or([0; 6]);
        (
            u16::from_be_bytes([a, b]),
            u32::from_be_bytes([v0, v1, v2, v3]),
        )
    })
}

/// Checks the header alone (before the payload is available).
pub fn check_header(h: &FrameHeader, max_frame_size: u32) -> Result<(), FrameErrorKind> {
    if h.length > max_frame_size {
        return Err(FrameErrorKind::TooLarge);
    }
    Ok(())
}

/// Strips padding: returns (content, padding).
fn unpad<'a>(
    h: &FrameHeader,
    payload: &'a [u8],
) -> Result<(&'a [u8], Option<&'a [u8]>), FrameErrorKind> {
    if !h.has(flags::PADDED) {
        return Ok((payload, None));
    }
    let (&pad_len, rest) = payload
        .split_first()
        .ok_or(FrameErrorKind::PaddingTooLong)?;
    let pad_len = usize::from(pad_len);
    if pad_len >= payload.len() {
        return Err(FrameErrorKind::PaddingTooLong);
    }
    let (content, padding) = rest.split_at(rest.len() - pad_len);
    Ok((content, Some(padding)))
}

fn read_u32(b: &[u8]) -> u32 {
    match b.get(..4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn read_priority(b: &[u8], stream_id: u32) -> Result<Priority, FrameErrorKind> {
    let word = read_u32(b);
    let weight = b.get(4).copied().ok_or(FrameErrorKind::BadLength)?;
    let dependency = word & 0x7fff_ffff;
    if dependency == stream_id {
        return Err(FrameErrorKind::SelfDependency);
    }
    Ok(Priority {
        exclusive: word & 0x8000_0000 != 0,
        dependency,
        weight: u16::from(weight) + 1,
    })
}

/// Validates and decodes one frame whose whole payload is in `payload`.
pub fn decode<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<Frame<'a>, FrameErrorKind> {
    let sid = h.stream_id;
    let need_stream = |sid: u32| {
        if sid == 0 {
            Err(FrameErrorKind::StreamIdRequired)
        } else {
            Ok(())
        }
    };
    let no_stream = |sid: u32| {
        if sid != 0 {
            Err(FrameErrorKind::StreamIdForbidden)
        } else {
            Ok(())
        }
    };
    match h.kind {
        kind::DATA => {
            need_stream(sid)?;
            let (data, padding) = unpad(h, payload)?;
            Ok(Frame::Data {
                stream_id: sid,
                end_stream: h.has(flags::END_STREAM),
                data,
                padding,
            })
        }
        kind::HEADERS => {
            need_stream(sid)?;
            let (mut content, padding) = unpad(h, payload)?;
            let mut priority = None;
            if h.has(flags::PRIORITY) {
                if content.len() < 5 {
                    return Err(FrameErrorKind::BadLength);
                }
                priority = Some(read_priority(content, sid)?);
                content = content.get(5..).unwrap_or_default();
            }
            Ok(Frame::Headers {
                stream_id: sid,
                end_stream: h.has(flags::END_STREAM),
                end_headers: h.has(flags::END_HEADERS),
                priority,
                fragment: content,
                padding,
            })
        }
        kind::PRIORITY => {
            need_stream(sid)?;
            if payload.len() != 5 {
                return Err(FrameErrorKind::BadLength);
            }
            Ok(Frame::Priority {
                stream_id: sid,
                priority: read_priority(payload, sid)?,
            })
        }
        kind::RST_STREAM => {
            need_stream(sid)?;
            if payload.len() != 4 {
                return Err(FrameErrorKind::BadLength);
            }
            Ok(Frame::RstStream {
                stream_id: sid,
                error_code: read_u32(payload),
            })
        }
        kind::SETTINGS => {
            no_stream(sid)?;
            let ack = h.has(flags::ACK);
            if (ack && !payload.is_empty()) || !payload.len().is_multiple_of(6) {
                return Err(FrameErrorKind::BadLength);
            }
            Ok(Frame::Settings {
                ack,
                params: payload,
            })
        }
        kind::PUSH_PROMISE => {
            need_stream(sid)?;
            let (content, padding) = unpad(h, payload)?;
            if content.len() < 4 {
                return Err(FrameErrorKind::BadLength);
            }
            let promised = read_u32(content) & 0x7fff_ffff;
            if promised == 0 || !promised.is_multiple_of(2) {
                return Err(FrameErrorKind::BadPromisedStream);
            }
            Ok(Frame::PushPromise {
                stream_id: sid,
                end_headers: h.has(flags::END_HEADERS),
                promised_stream_id: promised,
                fragment: content.get(4..).unwrap_or_default(),
                padding,
            })
        }
        kind::PING => {
            no_stream(sid)?;
            let opaque: [u8; 8] = payload.try_into().map_err(|_| FrameErrorKind::BadLength)?;
            Ok(Frame::Ping {
                ack: h.has(flags::ACK),
                opaque,
            })
        }
        kind::GOAWAY => {
            no_stream(sid)?;
            if payload.len() < 8 {
                return Err(FrameErrorKind::BadLength);
            }
            Ok(Frame::GoAway {
                last_stream_id: read_u32(payload) & 0x7fff_ffff,
                error_code: read_u32(payload.get(4..).unwrap_or_default()),
                debug_data: payload.get(8..).unwrap_or_default(),
            })
        }
        kind::WINDOW_UPDATE => {
            if payload.len() != 4 {
                return Err(FrameErrorKind::BadLength);
            }
            let increment = read_u32(payload) & 0x7fff_ffff;
            if increment == 0 {
                return Err(FrameErrorKind::ZeroWindowIncrement);
            }
            Ok(Frame::WindowUpdate {
                stream_id: sid,
                increment,
            })
        }
        kind::CONTINUATION => {
            need_stream(sid)?;
            Ok(Frame::Continuation {
                stream_id: sid,
                end_headers: h.has(flags::END_HEADERS),
                fragment: payload,
            })
        }
        other => Ok(Frame::Unknown {
            kind: other,
            stream_id: sid,
        }),
    }
}

/// Whether 9 bytes look like the header of a real frame; used to find frame boundaries again
/// after lost bytes. Deliberately strict: a false positive costs a burst of invalid frames.
pub fn plausible_header(h: &FrameHeader, reserved_bit_clear: bool, max_frame_size: u32) -> bool {
    if !reserved_bit_clear || h.length > max_frame_size || h.kind > kind::CONTINUATION {
        return false;
    }
    let defined: u8 = match h.kind {
        kind::DATA => flags::END_STREAM | flags::PADDED,
        kind::HEADERS => flags::END_STREAM | flags::END_HEADERS | flags::PADDED | flags::PRIORITY,
        kind::SETTINGS | kind::PING => flags::ACK,
        kind::PUSH_PROMISE => flags::END_HEADERS | flags::PADDED,
        kind::CONTINUATION => flags::END_HEADERS,
        _ => 0,
    };
    if h.flags & !defined != 0 {
        return false;
    }
    let stream_ok = match h.kind {
        kind::SETTINGS | kind::PING | kind::GOAWAY => h.stream_id == 0,
        kind::WINDOW_UPDATE => true,
        _ => h.stream_id != 0,
    };
    let length_ok = match h.kind {
        kind::PRIORITY => h.length == 5,
        kind::RST_STREAM | kind::WINDOW_UPDATE => h.length == 4,
        kind::PING => h.length == 8,
        kind::SETTINGS => {
            h.length.is_multiple_of(6) && (h.flags & flags::ACK == 0 || h.length == 0)
        }
        kind::GOAWAY => h.length >= 8,
        kind::HEADERS => h.length > 0,
        _ => true,
    };
    stream_ok && length_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frame_with_padding() {
        let wire = b"\x00\x00\x08\x00\x09\x00\x00\x00\x03\x02abcde\x00\x00";
        let h = FrameHeader::peek(wire).unwrap_or(FrameHeader {
            length: 0,
            kind: 99,
            flags: 0,
            stream_id: 0,
        });
        let f = decode(&h, &wire[HEADER_LEN..]);
        assert_eq!(
            f,
            Ok(Frame::Data {
                stream_id: 3,
                end_stream: true,
                data: b"abcde",
                padding: Some(&[0, 0])
            })
        );
    }

    #[test]
    fn plausibility_rejects_noise() {
        let h = FrameHeader {
            length: 4,
            kind: kind::RST_STREAM,
            flags: 0,
            stream_id: 1,
        };
        assert!(plausible_header(&h, true, DEFAULT_MAX_FRAME_SIZE));
        assert!(!plausible_header(&h, false, DEFAULT_MAX_FRAME_SIZE));
        let h = FrameHeader {
            length: 5,
            kind: kind::RST_STREAM,
            flags: 0,
            stream_id: 1,
        };
        assert!(!plausible_header(&h, true, DEFAULT_MAX_FRAME_SIZE));
        let h = FrameHeader {
            length: 0x4747,
            kind: 0x45,
            flags: 0x54,
            stream_id: 0x2f,
        };
        assert!(!plausible_header(&h, true, DEFAULT_MAX_FRAME_SIZE));
    }
}
