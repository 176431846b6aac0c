//! Errors of the pcap replay source. Every message names the capture file.

use std::io;

/// A failure to read a capture file.
///
/// Problems inside packets (garbage, truncation, unknown protocols) are not errors: they are
/// counted in [`crate::PcapStats`] and skipped.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot open capture file {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read capture file {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} is not a pcap or pcapng file (starts with {magic:02x?})")]
    UnknownFormat { name: String, magic: Vec<u8> },
    /// The file ends inside a record (a capture cut short while being written), or a record
    /// claims to be larger than any real packet.
    #[error("{name} ends inside a record after {records} records")]
    Truncated { name: String, records: u64 },
    /// The file structure is broken; reading cannot go on past this point.
    #[error("{name} is corrupt after {records} records: {source}")]
    Corrupt {
        name: String,
        records: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PcapError {
    /// The capture file the error is about.
    pub fn file_name(&self) -> &str {
        match self {
            PcapError::Open { name, .. }
            | PcapError::Io { name, .. }
            | PcapError::UnknownFormat { name, .. }
            | PcapError::Truncated { name, .. }
            | PcapError::Corrupt { name, .. } => name,
        }
    }
}
