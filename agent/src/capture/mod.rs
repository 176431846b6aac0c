//! Capture sources: everything that produces [`CaptureEvent`]s for the pipeline.
//!
//! - [`live::LiveCapture`]: the eBPF programs on this host's kernel;
//! - [`crate::record::Replay`]: a recording made with `sonde-agent capture --record`;
//! - pcap files through the `sonde-pcap` crate.
//!
//! All three hand the same events to the same bounded channel, so every later stage can be
//! tested without root on real captures.

pub mod btf;
pub mod decode;
pub mod live;
pub mod probes;
pub mod procfs;
pub mod strategy;
pub mod tls;
pub mod tracefs;

pub use live::{CountersReader, KernelCounters, LiveCapture, ReaderStats};
pub use probes::ProbeMetrics;
pub use strategy::{StrategyReport, TcpStrategy};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching hooks: {0}")]
    Attach(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("capture configuration: {0}")]
    Config(String),
}

pub use sonde_model::CaptureEvent;
