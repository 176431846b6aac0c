//! One HTTP request with its response: what the protocol stages emit and every later stage reads.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::conn::ConnMeta;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

impl HttpVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
        }
    }
}

/// A header field. Names are lower-cased; values are cut to a bounded length by the parser
/// (`value_truncated` says so) and may hold secrets: later stages redact before export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
    pub value_truncated: bool,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
            value_truncated: false,
        }
    }
}

/// A message body: its sizes and a bounded, decoded sample of its start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Body {
    /// Length announced by Content-Length (HTTP/1) or `content-length` (HTTP/2), if any.
    pub declared_len: Option<u64>,
    /// Bytes of body on the wire (after de-chunking, before content decoding), whether captured
    /// or not.
    pub wire_len: u64,
    /// Of `wire_len`, bytes that were not captured (gaps, caps, sendfile).
    pub missing_len: u64,
    /// The first bytes of the body after content decoding (gzip, deflate, br, zstd), bounded.
    pub sample: Bytes,
    /// The sample stops before the end of the body (size bound, gap or decoder bound).
    pub sample_truncated: bool,
    /// `content-encoding` that was applied, and whether decoding failed.
    pub encoding: Option<String>,
    pub decode_error: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    /// Host header (HTTP/1) or `:authority` (HTTP/2).
    pub authority: Option<String>,
    /// Path without the query string, as sent (not percent-decoded).
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<Header>,
    pub trailers: Vec<Header>,
    pub body: Body,
    /// First byte of the request seen.
    pub ts_start_ns: u64,
    /// Last byte of the request seen.
    pub ts_end_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    pub trailers: Vec<Header>,
    pub body: Body,
    pub ts_start_ns: u64,
    pub ts_end_ns: u64,
}

/// gRPC details of an HTTP/2 exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GrpcInfo {
    pub service: String,
    pub method: String,
    pub status: Option<u32>,
    pub message: Option<String>,
    pub request_messages: u64,
    pub response_messages: u64,
    pub request_message_bytes: u64,
    pub response_message_bytes: u64,
    pub compressed: bool,
}

/// Flags describing how complete and how trustworthy an exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ExchangeFlags(pub u32);

impl ExchangeFlags {
    /// Part of a message was not captured (cap, sendfile, or end of capture).
    pub const TRUNCATED: u32 = 1 << 0;
    /// A gap in the byte stream fell inside this exchange.
    pub const GAP: u32 = 1 << 1;
    /// The parser skipped bytes to find this message's start (mid-stream join or after a gap).
    pub const RESYNCED: u32 = 1 << 2;
    /// Conflicting Content-Length values, or Transfer-Encoding together with Content-Length.
    pub const SMUGGLING: u32 = 1 << 3;
    /// The connection switched protocols (Upgrade, CONNECT) after this exchange.
    pub const UPGRADED: u32 = 1 << 4;
    /// No response was seen before the timeout or the close.
    pub const RESPONSE_MISSING: u32 = 1 << 5;
    /// An interim `100 Continue` preceded the final response.
    pub const CONTINUED: u32 = 1 << 6;
    /// The stream was reset (HTTP/2 RST_STREAM).
    pub const RESET: u32 = 1 << 7;
    /// Header limits were exceeded; some fields were dropped.
    pub const HEADERS_CUT: u32 = 1 << 8;
    /// Read from TLS plaintext (inside a TLS library): the call travelled encrypted.
    pub const TLS: u32 = 1 << 9;

    pub fn contains(self, flag: u32) -> bool {
        self.0 & flag == flag
    }

    pub fn insert(&mut self, flag: u32) {
        self.0 |= flag;
    }

    pub fn names(self) -> Vec<&'static str> {
        const NAMES: [(u32, &str); 10] = [
            (ExchangeFlags::TRUNCATED, "truncated"),
            (ExchangeFlags::GAP, "gap"),
            (ExchangeFlags::RESYNCED, "resynced"),
            (ExchangeFlags::SMUGGLING, "smuggling"),
            (ExchangeFlags::UPGRADED, "upgraded"),
            (ExchangeFlags::RESPONSE_MISSING, "response-missing"),
            (ExchangeFlags::CONTINUED, "continued"),
            (ExchangeFlags::RESET, "reset"),
            (ExchangeFlags::HEADERS_CUT, "headers-cut"),
            (ExchangeFlags::TLS, "tls"),
        ];
        NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// One request and its response (or the known absence of one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub conn: Arc<ConnMeta>,
    pub version: HttpVersion,
    /// HTTP/2 stream id.
    pub stream_id: Option<u32>,
    pub request: Request,
    pub response: Option<Response>,
    pub grpc: Option<GrpcInfo>,
    pub flags: ExchangeFlags,
}

impl Exchange {
    /// Request start to response end, when both were seen.
    pub fn latency_ns(&self) -> Option<u64> {
        let resp = self.response.as_ref()?;
        resp.ts_end_ns.checked_sub(self.request.ts_start_ns)
    }

    pub fn request_header(&self, name: &str) -> Option<&str> {
        find_header(&self.request.headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response.as_ref()?.headers, name)
    }

    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }
}

/// First value of a header, by lower-case name.
pub fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}
