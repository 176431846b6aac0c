//! Tracker configuration: one serde section with documented defaults.

use serde::{Deserialize, Serialize};
use sonde_http2::Http2Config;
use sonde_stream::AssemblerConfig;

/// Limits and timeouts of the protocol stage. Every field has a serde default, documented on the
/// field; the defaults suit a sensor on a busy API host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Reassembly limits (reorder window, byte budgets, connection count, idle timeout).
    pub stream: AssemblerConfig,
    /// Decoded body bytes kept as a sample, per message (each way). Default 64 KiB.
    pub body_sample_bytes: usize,
    /// Compressed body bytes kept to decode the sample from. Default 64 KiB.
    pub body_wire_sample_bytes: usize,
    /// Header fields kept per message; the rest are dropped with `HEADERS_CUT`. Default 100.
    pub max_headers: usize,
    /// Bytes of one message head (start line and header block). A longer head is cut at this
    /// size (`HEADERS_CUT`) and the remainder skipped. Default 64 KiB.
    pub max_head_bytes: usize,
    /// Bytes kept of one header value (`value_truncated`). Default 4 KiB.
    pub max_header_value_bytes: usize,
    /// Requests awaiting their response per connection (pipelining depth). Beyond it the oldest
    /// is emitted with `RESPONSE_MISSING`. Default 64.
    pub max_pipelined: usize,
    /// A complete request whose response has not started after this long is emitted with
    /// `RESPONSE_MISSING` at the next `tick`. Default 60 s.
    pub response_timeout_ns: u64,
    /// Bytes scanned for a plausible message start after a gap or a mid-stream join before the
    /// connection is given up as not HTTP. Default 256 KiB.
    pub resync_scan_bytes: u64,
    /// Bytes of protocol state (parser buffers, queued requests, body samples) over all
    /// connections. Checked at every `tick`: above it the connections holding the most are
    /// shed (their pending exchanges emitted `TRUNCATED`, later bytes ignored). Default 256 MiB.
    pub max_protocol_state_bytes: usize,
    /// Limits of the HTTP/2 decoder (streams, header blocks, HPACK tables, samples, resync).
    /// The decoder's buffers count towards `max_protocol_state_bytes`.
    pub http2: Http2Config,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            stream: AssemblerConfig::default(),
            body_sample_bytes: 64 << 10,
            body_wire_sample_bytes: 64 << 10,
            max_headers: 100,
            max_head_bytes: 64 << 10,
            max_header_value_bytes: 4 << 10,
            max_pipelined: 64,
            response_timeout_ns: 60_000_000_000,
            resync_scan_bytes: 256 << 10,
            max_protocol_state_bytes: 256 << 20,
            http2: Http2Config::default(),
        }
    }
}

/// A configuration the tracker cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Stream(#[from] sonde_stream::ConfigError),
    #[error("protocol limit `{0}` must be greater than zero")]
    Zero(&'static str),
    #[error("max_head_bytes ({0}) must be at least 256 to hold a start line")]
    HeadTooSmall(usize),
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.stream.validate()?;
        if self.max_pipelined == 0 {
            return Err(ConfigError::Zero("max_pipelined"));
        }
        if self.response_timeout_ns == 0 {
            return Err(ConfigError::Zero("response_timeout_ns"));
        }
        if self.http2.max_streams == 0 {
            return Err(ConfigError::Zero("http2.max_streams"));
        }
        if self.http2.stream_timeout_ns == 0 {
            return Err(ConfigError::Zero("http2.stream_timeout_ns"));
        }
        if self.max_head_bytes < 256 {
            return Err(ConfigError::HeadTooSmall(self.max_head_bytes));
        }
        Ok(())
    }
}
