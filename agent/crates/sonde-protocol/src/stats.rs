//! Counters of the protocol stage.

use serde::{Deserialize, Serialize};
use sonde_stream::Counters;

/// Running totals of the tracker; all monotonic except the `*_open` gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerStats {
    /// Reassembly counters (chunks, bytes, reordered, gaps, evictions, expiries, ...).
    pub stream: Counters,
    /// Connections classified as HTTP/1.x.
    pub http1_connections: u64,
    /// Connections detected as HTTP/2 (prior knowledge or h2c upgrade) and not parsed yet.
    pub http2_connections_unparsed: u64,
    /// Connections whose data shows requests in the direction the socket's role says carries
    /// responses; they are parsed as the data says.
    pub role_mismatches: u64,
    /// Connections whose first bytes are not HTTP; their bytes are ignored.
    pub non_http_connections: u64,
    /// Bytes ignored on non-HTTP, HTTP/2 or upgraded connections.
    pub ignored_bytes: u64,
    /// Exchanges emitted, and how many of them lacked a response.
    pub exchanges: u64,
    pub responses_missing: u64,
    /// Message heads parsed.
    pub requests: u64,
    pub responses: u64,
    /// Responses dropped because no request could be paired with them safely.
    pub responses_unpaired: u64,
    /// Requests emitted with `RESPONSE_MISSING` because the response timed out.
    pub response_timeouts: u64,
    /// Requests emitted early because the pipelining depth was exceeded.
    pub pipeline_overflows: u64,
    /// Start lines or header blocks that failed to parse, and chunked framing errors.
    pub parse_errors: u64,
    /// Times a direction lost its place (gap, parse error, mid-stream join) and resynchronised,
    /// and the bytes skipped to find the next message start.
    pub resyncs: u64,
    pub resync_skipped_bytes: u64,
    /// Heads cut at `max_head_bytes` or `max_headers`.
    pub headers_cut: u64,
    /// Connections that ended in the middle of a message head (that message is dropped).
    pub heads_unfinished: u64,
    /// Heads parsed only after dropping invalid field lines or repairing the status line.
    pub heads_salvaged: u64,
    /// Messages with ambiguous framing (conflicting Content-Length, TE with CL, bad CL).
    pub smuggling: u64,
    /// Protocol switches (Upgrade, CONNECT).
    pub upgrades: u64,
    /// Body samples decoded from a content encoding, and failures.
    pub bodies_decoded: u64,
    pub decode_errors: u64,
    /// Connections shed to stay within `max_protocol_state_bytes`.
    pub connections_shed: u64,
    /// Connections with protocol state right now, and the bytes that state held at the last
    /// `tick` (an estimate: buffers, field text and samples).
    pub connections_open: u64,
    pub protocol_state_bytes: u64,
}
