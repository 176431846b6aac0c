//! Counters of one connection: every drop and every tolerated protocol violation is counted.

use crate::frame::FrameErrorKind;
use crate::hpack::HpackStats;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http2Stats {
    pub bytes: u64,
    pub frames: u64,
    /// Invalid frames by kind, indexed by [`FrameErrorKind::index`].
    pub frame_errors: [u64; FrameErrorKind::ALL.len()],
    /// A direction expected to start with the client preface started with something else.
    pub preface_mismatches: u64,
    /// Non-DATA frames larger than the buffering limit (skipped).
    pub oversized_frames: u64,
    /// Header blocks not decoded: too large, too many CONTINUATION frames, interrupted, or lost.
    pub header_blocks_dropped: u64,
    /// Header fields dropped by the per-message limits.
    pub header_fields_dropped: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Times framing was lost and a direction searched for a frame header again.
    pub resyncs: u64,
    pub resync_skipped_bytes: u64,
    /// Directions given up on (no plausible frame within the resync budget).
    pub directions_abandoned: u64,
    /// The connection was abandoned after too many invalid frames.
    pub abandoned: bool,
    /// Bytes ignored because their direction or the connection was abandoned.
    pub bytes_ignored: u64,
    /// DATA chunks whose sample was cut because the connection's sample budget was spent.
    pub samples_cut_by_budget: u64,
    pub streams_opened: u64,
    /// Streams emitted early because `max_streams` were already open.
    pub streams_evicted: u64,
    pub streams_timed_out: u64,
    pub streams_reset: u64,
    /// Frames for streams not (or no longer) tracked: closed, evicted, or begun before we joined.
    pub frames_on_unknown_streams: u64,
    /// Header blocks whose side (request or response) could not be told.
    pub blocks_without_role: u64,
    pub goaways: u64,
    pub exchanges: u64,
    /// HPACK counters of the client-to-server and server-to-client decoders, in that order
    /// (by [`sonde_model::Direction::index`] when the client side is unknown).
    pub hpack: [HpackStats; 2],
}

impl Http2Stats {
    pub fn frame_error(&self, kind: FrameErrorKind) -> u64 {
        self.frame_errors.get(kind.index()).copied().unwrap_or(0)
    }

    pub fn frame_errors_total(&self) -> u64 {
        self.frame_errors.iter().sum()
    }

    /// Header fields that referred to HPACK entries never seen, both directions.
    pub fn unresolved_fields(&self) -> u64 {
        self.hpack.iter().map(|h| h.unresolved_fields).sum()
    }
}
