//! The replay source: a capture file in, `CaptureEvent`s out.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use pcap_file::pcap::{PcapReadError, PcapTsResolution};
use pcap_file::pcapng::blocks::{ENHANCED_PACKET_BLOCK, PACKET_BLOCK, SIMPLE_PACKET_BLOCK};
use pcap_file::pcapng::{Block, PcapNgReadError, PcapNgState};
use sonde_model::CaptureEvent;

use crate::decode::{LinkType, Skip, decode_frame};
use crate::error::PcapError;
use crate::reassembly::{ReassemblyLimits, TcpReassembler};
use crate::stats::PcapStats;

type Input = Box<dyn Read + Send>;

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// Classic pcap magics as they appear on disk: µs and ns resolution, both byte orders.
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];

enum Records {
    Pcap {
        reader: pcap_file::pcap::PcapReader<Input>,
        link: LinkType,
        nanos: bool,
    },
    PcapNg {
        reader: pcap_file::pcapng::PcapNgReader<Input>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    /// Input ended (or failed): flush the reassembler next.
    Finishing,
    Done,
}

/// Replays a pcap or pcapng file as capture events.
///
/// Iterate it (or call [`PcapReader::next_event`]). An `Err` means the file itself is broken
/// (cut short, corrupt); it is yielded once, after which the iterator still returns the events
/// that flush and close the connections seen so far, then ends.
pub struct PcapReader {
    name: String,
    records: Records,
    reassembler: TcpReassembler,
    queue: VecDeque<CaptureEvent>,
    stats: PcapStats,
    phase: Phase,
    /// Timestamp of the last record, for pcapng simple packet blocks (which have none).
    last_ts_ns: u64,
}

impl std::fmt::Debug for PcapReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapReader")
            .field("name", &self.name)
            .field("phase", &self.phase)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PcapReader {
    /// Opens a capture file with the default [`ReassemblyLimits`].
    pub fn open(path: impl AsRef<Path>) -> Result<PcapReader, PcapError> {
        PcapReader::open_with_limits(path, ReassemblyLimits::default())
    }

    pub fn open_with_limits(
        path: impl AsRef<Path>,
        limits: ReassemblyLimits,
    ) -> Result<PcapReader, PcapError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = match File::open(path) {
            Ok(file) => file,
            Err(source) => return Err(PcapError::Open { name, source }),
        };
        PcapReader::from_reader(name, file, limits)
    }

    /// Reads a capture from any byte source; `name` is used in errors and logs.
    pub fn from_reader(
        name: impl Into<String>,
        mut input: impl Read + Send + 'static,
        limits: ReassemblyLimits,
    ) -> Result<PcapReader, PcapError> {
        let name = name.into();
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(PcapError::Io { name, source }),
            }
        }
        let head = magic.get(..got).unwrap_or_default().to_vec();
        let input: Input = Box::new(Cursor::new(head.clone()).chain(input));
        let records = if head == PCAPNG_MAGIC {
            match pcap_file::pcapng::PcapNgReader::new(input) {
                Ok(reader) => Records::PcapNg { reader },
                Err(e) => return Err(pcapng_error(&name, 0, e)),
            }
        } else if PCAP_MAGICS.iter().any(|m| m[..] == head[..]) {
            match pcap_file::pcap::PcapReader::new(input) {
                Ok(reader) => {
                    let header = reader.header();
                    Records::Pcap {
                        link: LinkType::from_datalink(header.datalink),
                        nanos: header.ts_resolution == PcapTsResolution::NanoSecond,
                        reader,
                    }
                }
                Err(e) => return Err(pcap_error(&name, 0, e)),
            }
        } else {
            return Err(PcapError::UnknownFormat { name, magic: head });
        };
        tracing::debug!(file = %name, "capture opened");
        Ok(PcapReader {
            name,
            records,
            reassembler: TcpReassembler::new(limits),
            queue: VecDeque::new(),
            stats: PcapStats::default(),
            phase: Phase::Reading,
            last_ts_ns: 0,
        })
    }

    /// The file name given at open.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters so far (complete once the iterator has ended).
    pub fn stats(&self) -> PcapStats {
        PcapStats {
            reassembly: *self.reassembler.stats(),
            ..self.stats
        }
    }

    /// The next event, `None` at the end.
    pub fn next_event(&mut self) -> Option<Result<CaptureEvent, PcapError>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Finishing => {
                    self.reassembler.finish(&mut self.queue);
                    self.phase = Phase::Done;
                    tracing::debug!(file = %self.name, stats = ?self.stats(), "capture replayed");
                }
                Phase::Reading => match self.read_record() {
                    Ok(true) => {}
                    Ok(false) => self.phase = Phase::Finishing,
                    Err(e) => {
                        tracing::warn!(file = %self.name, error = %e, "capture file unreadable past this point");
                        self.phase = Phase::Finishing;
                        return Some(Err(e));
                    }
                },
            }
        }
    }

    /// Reads one record (or pcapng block) and feeds it on. False at the end of the file.
    fn read_record(&mut self) -> Result<bool, PcapError> {
        let PcapReader {
            name,
            records,
            reassembler,
            queue,
            stats,
            last_ts_ns,
            ..
        } = self;
        match records {
            Records::Pcap {
                reader,
                link,
                nanos,
            } => {
                let packet = match reader.next_raw_packet() {
                    None => return Ok(false),
                    Some(Ok(packet)) => packet,
                    Some(Err(e)) => return Err(pcap_error(name, stats.records, e)),
                };
                // Raw records: their fields are taken as they are, since a replay should not
                // refuse a packet over a sub-second field out of range or a record longer than
                // the header's snaplen.
                let frac_ns = if *nanos {
                    u64::from(packet.ts_frac)
                } else {
                    u64::from(packet.ts_frac) * 1000
                };
                let ts_ns = u64::from(packet.ts_sec)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(frac_ns);
                *last_ts_ns = ts_ns;
                feed(
                    *link,
                    &packet.data,
                    packet.orig_len,
                    ts_ns,
                    stats,
                    reassembler,
                    queue,
                );
                Ok(true)
            }
            Records::PcapNg { reader } => {
                let (raw, state) = match reader.next_raw_block() {
                    None => return Ok(false),
                    Some(Ok(block)) => block,
                    Some(Err(e)) => return Err(pcapng_error(name, stats.records, e)),
                };
                if !matches!(
                    raw.type_,
                    ENHANCED_PACKET_BLOCK | SIMPLE_PACKET_BLOCK | PACKET_BLOCK
                ) {
                    // Section headers and interface descriptions update `state` inside the reader.
                    if !matches!(
                        raw.type_,
                        pcap_file::pcapng::blocks::SECTION_HEADER_BLOCK
                            | pcap_file::pcapng::blocks::INTERFACE_DESCRIPTION_BLOCK
                    ) {
                        stats.other_blocks += 1;
                    }
                    return Ok(true);
                }
                let block = match raw.try_into_block(state) {
                    Ok(block) => block,
                    Err(e) => {
                        if stats.malformed == 0 {
                            // Once per file: a hostile capture could hold millions of these.
                            tracing::debug!(file = %name, error = %e, "undecodable pcapng packet block");
                        }
                        stats.records += 1;
                        stats.malformed += 1;
                        return Ok(true);
                    }
                };
                let (interface, ts_ns, orig_len, data) = match &block {
                    Block::EnhancedPacket(p) => (
                        p.interface_id,
                        duration_ns(p.timestamp),
                        p.original_len,
                        &p.data,
                    ),
                    Block::Packet(p) => (
                        u32::from(p.interface_id),
                        duration_ns(p.timestamp),
                        p.original_len,
                        &p.data,
                    ),
                    Block::SimplePacket(p) => (0, *last_ts_ns, p.original_len, &p.data),
                    _ => {
                        stats.other_blocks += 1;
                        return Ok(true);
                    }
                };
                let Some(link) = interface_link(state, interface) else {
                    stats.records += 1;
                    stats.malformed += 1;
                    return Ok(true);
                };
                *last_ts_ns = ts_ns;
                feed(link, data, orig_len, ts_ns, stats, reassembler, queue);
                Ok(true)
            }
        }
    }
}

impl Iterator for PcapReader {
    type Item = Result<CaptureEvent, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event()
    }
}

fn interface_link(state: &PcapNgState, interface: u32) -> Option<LinkType> {
    let idb = state.interfaces().get(usize::try_from(interface).ok()?)?;
    Some(LinkType::from_datalink(idb.linktype))
}

fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Decodes one record and passes its segment to the reassembler, counting what is skipped.
fn feed(
    link: LinkType,
    data: &[u8],
    orig_len: u32,
    ts_ns: u64,
    stats: &mut PcapStats,
    reassembler: &mut TcpReassembler,
    queue: &mut VecDeque<CaptureEvent>,
) {
    stats.records += 1;
    stats.captured_bytes += data.len() as u64;
    match decode_frame(link, data, orig_len) {
        Ok(segment) => reassembler.on_segment(ts_ns, &segment, queue),
        Err(Skip::NotTcp) => stats.non_tcp += 1,
        Err(Skip::Fragment) => stats.ip_fragments += 1,
        Err(Skip::Malformed) => stats.malformed += 1,
        Err(Skip::UnsupportedLink) => stats.unsupported_link += 1,
    }
}

fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

fn pcap_error(name: &str, records: u64, e: PcapReadError) -> PcapError {
    match e {
        PcapReadError::Io(e) if is_eof(&e) => PcapError::Truncated {
            name: name.to_owned(),
            records,
        },
        PcapReadError::Io(source) => PcapError::Io {
            name: name.to_owned(),
            source,
        },
        other => PcapError::Corrupt {
            name: name.to_owned(),
            records,
            source: Box::new(other),
        },
    }
}

fn pcapng_error(name: &str, records: u64, e: PcapNgReadError) -> PcapError {
    match e {
        PcapNgReadError::Io(e) if is_eof(&e) => PcapError::Truncated {
            name: name.to_owned(),
            records,
        },
        PcapNgReadError::Io(source) => PcapError::Io {
            name: name.to_owned(),
            source,
        },
        other => PcapError::Corrupt {
            name: name.to_owned(),
            records,
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<PcapReader>();
    }
}
