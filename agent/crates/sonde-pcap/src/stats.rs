//! Counters for everything read, rebuilt, skipped or dropped.

/// What the TCP reassembler did. Every byte or segment it did not pass on is counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// TCP segments handed to the reassembler.
    pub segments: u64,
    /// Payload bytes of those segments on the wire (captured or not).
    pub payload_bytes: u64,
    /// Connections whose handshake (SYN or SYN-ACK) was seen.
    pub connections_opened: u64,
    /// Connections joined mid-stream (first packet carried data, no handshake seen).
    pub connections_midstream: u64,
    /// Connections that ended with FIN from both sides or a RST.
    pub connections_closed: u64,
    /// Live connections pushed out because the connection table was full.
    pub connections_evicted: u64,
    /// Live connections closed because they were idle too long (capture time).
    pub connections_expired: u64,
    /// Connections still open at the end of the capture (closed then).
    pub connections_unfinished: u64,
    /// A SYN with a new initial sequence number arrived on a live tuple: the old connection was
    /// closed and a new one started.
    pub connections_reused: u64,
    /// Handshake packets seen again (same ISN), ignored.
    pub syn_retransmissions: u64,
    /// Segments that carried only bytes already delivered or buffered (retransmissions).
    pub retransmitted_segments: u64,
    /// Bytes dropped because they had already been delivered or buffered.
    pub retransmitted_bytes: u64,
    /// Segments that overlapped buffered bytes with different content (first copy kept).
    pub overlap_conflict_segments: u64,
    /// Bytes of those overlaps that differed.
    pub overlap_conflict_bytes: u64,
    /// Segments that arrived ahead of a hole and were held in the reorder buffer.
    pub reordered_segments: u64,
    /// Holes given up on because a direction's reorder buffer was full.
    pub reorder_buffer_overflows: u64,
    /// Holes given up on because all reorder buffers together held too much.
    pub global_buffer_overflows: u64,
    /// Explicit gaps emitted (bytes known to exist that were never captured).
    pub gaps: u64,
    /// Bytes covered by those gaps.
    pub gap_bytes: u64,
    /// Segments cut by the snap length.
    pub truncated_segments: u64,
    /// Payload bytes missing from those segments.
    pub truncated_bytes: u64,
    /// Segments whose sequence number was implausibly far ahead of the stream (dropped).
    pub out_of_window_segments: u64,
    /// Segments without SYN for a tuple with no connection and no payload (pure ACK, FIN, RST).
    pub segments_without_connection: u64,
    /// Segments for a connection that had already closed (other than a new SYN).
    pub segments_after_close: u64,
    /// Segments whose source and destination are the same address (cannot be given a direction).
    pub self_addressed_segments: u64,
    /// Bytes that arrived after the FIN of their direction (dropped).
    pub bytes_after_fin: u64,
}

/// Counters of one capture file: records, what was skipped, and the reassembler's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcapStats {
    /// Packet records read (pcap records, pcapng enhanced/simple/obsolete packet blocks).
    pub records: u64,
    /// Captured bytes of those records.
    pub captured_bytes: u64,
    /// Records that were not TCP (ARP, UDP, ICMP, other EtherTypes).
    pub non_tcp: u64,
    /// IP fragments (TCP over fragmented IP is not reassembled).
    pub ip_fragments: u64,
    /// Records whose link, IP or TCP header was cut short or invalid, and pcapng packet blocks
    /// that could not be decoded (e.g. naming an interface the file never described).
    pub malformed: u64,
    /// Records of a link type we do not decode.
    pub unsupported_link: u64,
    /// pcapng blocks other than packets and interface descriptions (statistics, names, custom).
    pub other_blocks: u64,
    pub reassembly: ReassemblyStats,
}
