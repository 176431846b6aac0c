//! The Sonde agent: captures TCP payloads from the kernel (or replays a recording or a pcap),
//! rebuilds HTTP exchanges, keeps the API inventory and streams it to a collector.
//!
//! Modules follow the pipeline: [`capture`] produces [`sonde_model::CaptureEvent`]s, the later
//! stages (crates `sonde-stream`, `sonde-protocol`, `sonde-inventory`, `sonde-export`) consume
//! them.

pub mod blind;
pub mod capture;
pub mod config;
pub mod display;
pub mod export;
pub mod pipeline;
pub mod record;
pub mod tls;
