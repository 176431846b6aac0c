//! pcap/pcapng replay: TCP directions rebuilt by sequence number into Sonde capture events.
//!
//! [`PcapReader`] reads a capture file (pcap with Ethernet, Linux cooked v1/v2, raw IP or BSD
//! loopback framing, or pcapng), decodes each record down to its TCP segment and hands it to a
//! [`TcpReassembler`], which emits the same [`sonde_model::CaptureEvent`] stream the kernel
//! source produces: `Open`, then `Data` chunks placed by offset within their direction (lost
//! bytes as explicit gaps), then `Close`. Everything downstream cannot tell a replay from a
//! live capture, except that chunks carry [`sonde_model::Source::Pcap`] and `tgid` 0.
//!
//! Memory stays bounded on hostile captures ([`ReassemblyLimits`]); everything skipped or dropped
//! is counted in [`PcapStats`].
//!
//! ```no_run
//! use sonde_model::CaptureEvent;
//! use sonde_pcap::PcapReader;
//!
//! let mut reader = PcapReader::open("capture.pcapng")?;
//! for event in reader.by_ref() {
//!     match event? {
//!         CaptureEvent::Open(open) => println!("{} {:?} -> {:?}", open.conn, open.remote, open.local),
//!         CaptureEvent::Data(chunk) if chunk.data.is_empty() => println!("gap of {} bytes", chunk.len),
//!         CaptureEvent::Data(chunk) => println!("{} bytes at {}", chunk.len, chunk.offset),
//!         CaptureEvent::Close(close) => println!("{} closed", close.conn),
//!     }
//! }
//! println!("{:?}", reader.stats());
//! # Ok::<(), sonde_pcap::PcapError>(())
//! ```

mod decode;
mod error;
mod reader;
mod reassembly;
mod stats;

pub use decode::{LinkType, Skip, TcpFlags, TcpSegment, decode_frame};
pub use error::PcapError;
pub use reader::PcapReader;
pub use reassembly::{PIECE_COST, ReassemblyLimits, TcpReassembler};
pub use stats::{PcapStats, ReassemblyStats};
