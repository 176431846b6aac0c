//! The vocabulary every pipeline stage speaks.
//!
//! capture → stream → protocol → inventory/baseline → export: each stage consumes the types of the
//! stage before it from this crate, so a stage can be developed, tested and fuzzed alone (a
//! recording or a pcap produces the same [`CaptureEvent`]s as the kernel).

pub mod anomaly;
pub mod capture;
pub mod conn;
pub mod exchange;

pub use anomaly::{Anomaly, Evidence, OwaspCategory, Severity};
pub use capture::{CaptureEvent, ConnClose, ConnOpen, DataChunk, Source};
pub use conn::{
    ConnId, ConnMeta, ContainerRuntime, Direction, PodIdentity, ProcessInfo, Role, Workload,
};
pub use exchange::{
    Body, Exchange, ExchangeFlags, GrpcInfo, Header, HttpVersion, Request, Response,
};
