//! TCP segments straight into the reassembler: each 8-byte record is one segment of one of
//! four connections, with fuzzed flags, sequence and acknowledgement offsets and length, so
//! reordering, overlap, wraparound, FIN/RST and table eviction are reached directly.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sonde_model::CaptureEvent;
use sonde_pcap::{ReassemblyLimits, TcpFlags, TcpReassembler, TcpSegment};

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits {
        max_connections: 3,
        max_pending_segments: 5,
        max_pending_bytes: 2048,
        max_pending_bytes_total: 4096,
        max_seq_ahead: 1 << 16,
        idle_timeout_ns: 50,
        closed_linger_ns: 10,
    };
    let mut reassembler = TcpReassembler::new(limits);
    let mut out = VecDeque::new();
    let server: SocketAddr = "10.0.0.1:80".parse().expect("addr");
    let payload = [0x5au8; 1275];
    let mut next_offset: HashMap<(sonde_model::ConnId, usize), u64> = HashMap::new();
    let mut open: HashMap<sonde_model::ConnId, bool> = HashMap::new();
    for (ts, record) in data.chunks_exact(8).enumerate() {
        let flags = record[0];
        let client = SocketAddr::new([10, 0, 0, 2].into(), 1000 + u16::from(record[1] % 4));
        let (src, dst) = if flags & 0x80 == 0 { (client, server) } else { (server, client) };
        let seq = u32::from_le_bytes([record[2], record[3], record[4], record[5]]);
        let len = usize::from(record[6]) * 5;
        let captured = if flags & 0x40 != 0 { len / 2 } else { len };
        let seg = TcpSegment {
            src,
            dst,
            seq,
            ack: seq.wrapping_add(u32::from(record[7]) << 8),
            flags: TcpFlags { syn: flags & 1 != 0, ack: flags & 2 != 0, fin: flags & 4 != 0, rst: flags & 8 != 0 },
            payload: &payload[..captured],
            payload_len: len as u32,
        };
        reassembler.on_segment(ts as u64 * 7, &seg, &mut out);
        assert!(reassembler.tracked_connections() <= 3);
        assert!(reassembler.pending_bytes() <= 4096 + 1275 + sonde_pcap::PIECE_COST);
        drain(&mut out, &mut next_offset, &mut open);
    }
    reassembler.finish(&mut out);
    drain(&mut out, &mut next_offset, &mut open);
    assert_eq!(reassembler.pending_bytes(), 0);
    assert!(open.values().all(|o| !o), "left open");
});

fn drain(
    out: &mut VecDeque<CaptureEvent>,
    next_offset: &mut HashMap<(sonde_model::ConnId, usize), u64>,
    open: &mut HashMap<sonde_model::ConnId, bool>,
) {
    for event in out.drain(..) {
        match event {
            CaptureEvent::Open(o) => assert!(open.insert(o.conn, true).is_none(), "reopened"),
            CaptureEvent::Data(d) => {
                assert_eq!(open.get(&d.conn), Some(&true), "data outside open/close");
                assert!(d.len > 0 && d.data.len() as u64 <= d.len);
                let at = next_offset.entry((d.conn, d.direction.index())).or_insert(0);
                assert_eq!(d.offset, *at, "not contiguous");
                *at = d.end();
            }
            CaptureEvent::Close(c) => assert_eq!(open.insert(c.conn, false), Some(true), "close without open"),
        }
    }
}
