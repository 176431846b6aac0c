//! Limits of the HTTP/2 decoder. Every bound on memory held per connection is here.

use serde::{Deserialize, Serialize};

/// Configuration of [`crate::Connection`]. Defaults are documented on each field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Bytes of body kept as a sample, per message (request and response each). Default 64 KiB.
    pub body_sample_bytes: usize,
    /// Body sample bytes held at once across all open streams of a connection; past it, samples
    /// of open streams stop growing (marked truncated, counted). Default 2 MiB.
    pub max_connection_sample_bytes: usize,
    /// Streams tracked at once per connection; opening one more emits the oldest early (flagged
    /// truncated). Default 256.
    pub max_streams: usize,
    /// A stream with no frame for this long is emitted as it is by `tick`. Default 30 s.
    pub stream_timeout_ns: u64,
    /// Largest header block (HEADERS + CONTINUATION, or PUSH_PROMISE) buffered for decoding;
    /// larger blocks are skipped, counted, and the direction's HPACK table is declared unknown.
    /// Also the largest non-DATA frame buffered. Default 64 KiB.
    pub max_header_block_bytes: usize,
    /// CONTINUATION frames accepted in one header block (floods of empty ones cost no bytes).
    /// Default 128.
    pub max_continuation_frames: u32,
    /// Header fields kept per message (headers and trailers each); more are counted and dropped.
    /// Default 128.
    pub max_headers: usize,
    /// Longest header value kept; longer ones are cut and marked. Default 8 KiB.
    pub max_header_value_bytes: usize,
    /// Hard limit on each HPACK dynamic table, whatever size updates ask for. Default 64 KiB.
    pub max_table_size: usize,
    /// Bytes a direction may skip while looking for a frame boundary before it is abandoned.
    /// Default 1 MiB.
    pub max_resync_bytes: u64,
    /// Invalid frames tolerated per connection before it is abandoned. Default 256.
    pub max_frame_errors: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            body_sample_bytes: 64 * 1024,
            max_connection_sample_bytes: 2 * 1024 * 1024,
            max_streams: 256,
            stream_timeout_ns: 30_000_000_000,
            max_header_block_bytes: 64 * 1024,
            max_continuation_frames: 128,
            max_headers: 128,
            max_header_value_bytes: 8 * 1024,
            max_table_size: 64 * 1024,
            max_resync_bytes: 1024 * 1024,
            max_frame_errors: 256,
        }
    }
}
