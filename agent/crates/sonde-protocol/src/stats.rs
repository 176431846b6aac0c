//! Counters of the protocol stage.

use serde::{Deserialize, Serialize};
use sonde_http2::Http2Stats;
use sonde_stream::Counters;

/// Running totals of the tracker; all monotonic except the `*_open` gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerStats {
    /// Reassembly counters (chunks, bytes, reordered, gaps, evictions, expiries, ...).
    pub stream: Counters,
    /// Connections classified as HTTP/1.x.
    pub http1_connections: u64,
    /// Connections decoded as HTTP/2: prior knowledge, h2c upgrade or joined mid-stream (see
    /// `http2` for the split and the decoder's counters).
    pub http2_connections: u64,
    /// Connections whose data shows requests in the direction the socket's role says carries
    /// responses; they are parsed as the data says.
    pub role_mismatches: u64,
    /// Connections whose first bytes are not HTTP; their bytes are ignored.
    pub non_http_connections: u64,
    /// Bytes ignored on non-HTTP or upgraded (non-HTTP/2) connections.
    pub ignored_bytes: u64,
    /// Exchanges emitted, and how many of them lacked a response.
    pub exchanges: u64,
    pub responses_missing: u64,
    /// HTTP/1 message heads parsed.
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
    /// HTTP/2 decoder counters summed over every HTTP/2 connection, closed or open.
    pub http2: Http2Totals,
}

/// Sums of [`sonde_http2::Http2Stats`] over connections, with how they were recognised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Http2Totals {
    /// Connections whose client preface was seen (prior knowledge).
    pub prior_knowledge: u64,
    /// Connections upgraded from HTTP/1.1 (`Upgrade: h2c`, `101`).
    pub h2c_upgrades: u64,
    /// Connections recognised from HTTP/2 frames after joining mid-stream.
    pub mid_stream: u64,
    /// Connections the decoder gave up on (too many invalid frames); later bytes are ignored.
    pub connections_abandoned: u64,
    pub bytes: u64,
    pub frames: u64,
    /// Invalid frames of any kind.
    pub frame_errors: u64,
    pub preface_mismatches: u64,
    pub oversized_frames: u64,
    pub header_blocks_dropped: u64,
    pub header_fields_dropped: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub resyncs: u64,
    pub resync_skipped_bytes: u64,
    pub directions_abandoned: u64,
    pub bytes_ignored: u64,
    pub samples_cut_by_budget: u64,
    pub streams_opened: u64,
    pub streams_evicted: u64,
    pub streams_timed_out: u64,
    pub streams_reset: u64,
    pub frames_on_unknown_streams: u64,
    pub blocks_without_role: u64,
    pub goaways: u64,
    /// Exchanges the HTTP/2 decoder emitted (also counted in `TrackerStats::exchanges`).
    pub exchanges: u64,
    /// HPACK, both directions: header blocks and fields decoded, fields that referred to table
    /// entries never seen (left out, never guessed), invalid indices, malformed blocks, resets.
    pub hpack_blocks: u64,
    pub hpack_fields: u64,
    pub hpack_unresolved_fields: u64,
    pub hpack_invalid_indices: u64,
    pub hpack_malformed_blocks: u64,
    pub hpack_resets: u64,
}

impl Http2Totals {
    /// Adds one connection's counters.
    pub fn add(&mut self, s: &Http2Stats) {
        self.bytes += s.bytes;
        self.frames += s.frames;
        self.frame_errors += s.frame_errors_total();
        self.preface_mismatches += s.preface_mismatches;
        self.oversized_frames += s.oversized_frames;
        self.header_blocks_dropped += s.header_blocks_dropped;
        self.header_fields_dropped += s.header_fields_dropped;
        self.gaps += s.gaps;
        self.gap_bytes += s.gap_bytes;
        self.resyncs += s.resyncs;
        self.resync_skipped_bytes += s.resync_skipped_bytes;
        self.directions_abandoned += s.directions_abandoned;
        self.connections_abandoned += u64::from(s.abandoned);
        self.bytes_ignored += s.bytes_ignored;
        self.samples_cut_by_budget += s.samples_cut_by_budget;
        self.streams_opened += s.streams_opened;
        self.streams_evicted += s.streams_evicted;
        self.streams_timed_out += s.streams_timed_out;
        self.streams_reset += s.streams_reset;
        self.frames_on_unknown_streams += s.frames_on_unknown_streams;
        self.blocks_without_role += s.blocks_without_role;
        self.goaways += s.goaways;
        self.exchanges += s.exchanges;
        for h in &s.hpack {
            self.hpack_blocks += h.blocks;
            self.hpack_fields += h.fields;
            self.hpack_unresolved_fields += h.unresolved_fields;
            self.hpack_invalid_indices += h.invalid_indices;
            self.hpack_malformed_blocks += h.malformed_blocks;
            self.hpack_resets += h.resets;
        }
    }
}
