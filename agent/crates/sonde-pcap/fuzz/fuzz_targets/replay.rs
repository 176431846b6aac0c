//! Arbitrary bytes as a capture file. Byte 0 picks whether a valid pcap file header (with one of
//! the decoded link types) is put in front, so the fuzzer reaches the record and packet decoders
//! quickly; otherwise the input is the whole file (pcap, pcapng or garbage).
#![no_main]

use std::collections::HashMap;
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sonde_model::CaptureEvent;
use sonde_pcap::{PcapReader, ReassemblyLimits};

const LINK_TYPES: [u32; 7] = [1, 113, 276, 101, 0, 108, 228];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut file = Vec::with_capacity(rest.len() + 24);
    if mode & 1 == 0 {
        let link = LINK_TYPES[usize::from(mode >> 1) % LINK_TYPES.len()];
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&link.to_le_bytes());
    }
    file.extend_from_slice(rest);
    let limits = ReassemblyLimits {
        max_connections: 8,
        max_pending_segments: 4,
        max_pending_bytes: 4096,
        max_pending_bytes_total: 16 << 10,
        ..ReassemblyLimits::default()
    };
    let Ok(reader) = PcapReader::from_reader("fuzz", Cursor::new(file), limits) else { return };
    check(reader);
});

/// The event-stream invariants every consumer relies on.
fn check(reader: PcapReader) {
    let mut next_offset: HashMap<(sonde_model::ConnId, usize), u64> = HashMap::new();
    let mut open: HashMap<sonde_model::ConnId, bool> = HashMap::new();
    let mut errors = 0;
    for event in reader {
        match event {
            Err(_) => {
                errors += 1;
                assert_eq!(errors, 1, "at most one error");
            }
            Ok(CaptureEvent::Open(o)) => {
                assert!(open.insert(o.conn, true).is_none(), "reopened");
            }
            Ok(CaptureEvent::Data(d)) => {
                assert_eq!(open.get(&d.conn), Some(&true), "data outside open/close");
                assert!(d.len > 0 && d.data.len() as u64 <= d.len);
                let at = next_offset.entry((d.conn, d.direction.index())).or_insert(0);
                assert_eq!(d.offset, *at, "not contiguous");
                *at = d.end();
            }
            Ok(CaptureEvent::Close(c)) => {
                assert_eq!(open.insert(c.conn, false), Some(true), "close without open");
            }
        }
    }
    assert!(open.values().all(|o| !o), "left open");
}
