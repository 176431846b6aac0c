//! HTTP/2 connections: the tracker's side of [`sonde_http2::Connection`], and recognising HTTP/2
//! frames in the first bytes of a connection joined mid-stream.

use std::sync::Arc;

use sonde_http2::Connection;
use sonde_http2::frame::{
    DEFAULT_MAX_FRAME_SIZE, FrameHeader, HEADER_LEN, check_header, plausible_header,
};
use sonde_model::{ConnMeta, Direction, Exchange, ExchangeFlags};

use crate::Http2Start;
use crate::stats::TrackerStats;

/// Fixed cost per tracked stream for the state budget (field text is not reported by the
/// decoder's `buffered_bytes`).
const PER_STREAM_BYTES: usize = 512;

#[derive(Debug)]
pub(crate) struct Http2Conn {
    pub start: Http2Start,
    pub conn: Connection,
}

impl Http2Conn {
    pub fn new(start: Http2Start, conn: Connection, stats: &mut TrackerStats) -> Box<Http2Conn> {
        stats.http2_connections += 1;
        match start {
            Http2Start::PriorKnowledge => stats.http2.prior_knowledge += 1,
            Http2Start::H2cUpgrade => stats.http2.h2c_upgrades += 1,
            Http2Start::MidStream => stats.http2.mid_stream += 1,
        }
        Box::new(Http2Conn { start, conn })
    }

    pub fn data(
        &mut self,
        meta: &Arc<ConnMeta>,
        dir: Direction,
        bytes: &[u8],
        ts_ns: u64,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let first = out.len();
        self.conn.on_data(dir, bytes, ts_ns, out);
        self.emitted(meta, first, stats, out);
    }

    pub fn gap(
        &mut self,
        meta: &Arc<ConnMeta>,
        dir: Direction,
        len: u64,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let first = out.len();
        self.conn.on_gap(dir, len, out);
        self.emitted(meta, first, stats, out);
    }

    pub fn tick(
        &mut self,
        meta: &Arc<ConnMeta>,
        now_ns: u64,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let first = out.len();
        self.conn.tick(now_ns, out);
        self.emitted(meta, first, stats, out);
    }

    /// Ends the connection: open streams are emitted and the counters folded into `stats`.
    pub fn close(
        &mut self,
        meta: &Arc<ConnMeta>,
        ts_ns: u64,
        stats: &mut TrackerStats,
        out: &mut Vec<Exchange>,
    ) {
        let first = out.len();
        self.conn.on_close(ts_ns, out);
        self.emitted(meta, first, stats, out);
        stats.http2.add(&self.conn.stats());
    }

    /// Bytes held, for the global state budget.
    pub fn state_bytes(&self) -> usize {
        self.conn.buffered_bytes() + self.conn.open_streams() * PER_STREAM_BYTES
    }

    /// Counts what the decoder emitted and gives it the connection's latest metadata (a late
    /// `Open` may have improved it after the decoder was created).
    fn emitted(
        &self,
        meta: &Arc<ConnMeta>,
        first: usize,
        stats: &mut TrackerStats,
        out: &mut [Exchange],
    ) {
        for x in out.iter_mut().skip(first) {
            if !Arc::ptr_eq(&x.conn, meta) {
                x.conn = meta.clone();
            }
            if self.start == Http2Start::H2cUpgrade && x.stream_id == Some(1) {
                x.flags.insert(ExchangeFlags::UPGRADED);
            }
            stats.exchanges += 1;
            if x.flags.contains(ExchangeFlags::RESPONSE_MISSING) {
                stats.responses_missing += 1;
            }
        }
    }
}

/// What the first bytes of a direction say about HTTP/2 framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameScan {
    /// A frame boundary at this offset: two consecutive plausible frame headers, or (at the
    /// start) one frame that fills the delivery exactly.
    At(usize),
    /// A plausible header whose frame runs past the bytes available.
    NeedMore,
    /// No frame boundary in view.
    None,
}

fn header_at(buf: &[u8], at: usize) -> Option<FrameHeader> {
    let raw = buf.get(at..at.checked_add(HEADER_LEN)?)?;
    let h = FrameHeader::peek(raw)?;
    let reserved_clear = raw.get(5).is_some_and(|b| b & 0x80 == 0);
    (plausible_header(&h, reserved_clear, DEFAULT_MAX_FRAME_SIZE)
        && check_header(&h, DEFAULT_MAX_FRAME_SIZE).is_ok())
    .then_some(h)
}

/// Looks for an HTTP/2 frame boundary in `buf` (offsets up to `max_scan`). Frame sizes above
/// the protocol's default maximum are not taken as evidence: a false positive would hand a
/// non-HTTP/2 connection to the decoder.
pub(crate) fn scan_frames(buf: &[u8], max_scan: usize) -> FrameScan {
    let mut need_more = false;
    let end = buf.len().saturating_sub(HEADER_LEN - 1).min(max_scan);
    for at in 0..end {
        let Some(h) = header_at(buf, at) else {
            continue;
        };
        let next = at + HEADER_LEN + h.length as usize;
        if next == buf.len() {
            if at == 0 {
                return FrameScan::At(0);
            }
            need_more = true;
        } else if next + HEADER_LEN <= buf.len() {
            if header_at(buf, next).is_some() {
                return FrameScan::At(at);
            }
        } else {
            need_more = true;
        }
    }
    if need_more {
        FrameScan::NeedMore
    } else {
        FrameScan::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_recognised() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(scan_frames(&settings, usize::MAX), FrameScan::At(0));
        let two = [&settings[..], &ping[..]].concat();
        assert_eq!(scan_frames(&two, usize::MAX), FrameScan::At(0));
        // Joined mid-frame: the boundary is found further in.
        let mid = [&b"xyz"[..], &two[..]].concat();
        assert_eq!(scan_frames(&mid, usize::MAX), FrameScan::At(3));
        assert_eq!(
            scan_frames(&settings[..12], usize::MAX),
            FrameScan::NeedMore
        );
        assert_eq!(
            scan_frames(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", usize::MAX),
            FrameScan::None
        );
        assert_eq!(
            scan_frames(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", usize::MAX),
            FrameScan::None
        );
    }
}
