//! sonde.v1 gRPC protocol between agents, collector and CLI.
//!
//! The code is generated at build time from `sonde/v1/sonde.proto` by protox and
//! tonic-prost-build (no system `protoc`). Every message derives `serde::Serialize` (enum fields by
//! name) so the CLI can print JSON.

pub mod v1 {
    #![allow(clippy::all, clippy::unwrap_used, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/sonde.v1.rs"));
}

mod display;
#[doc(hidden)]
pub mod json;
#[cfg(feature = "model")]
mod model;

#[cfg(feature = "model")]
pub use model::ModelConversionError;

/// Encoded `FileDescriptorSet` of sonde.v1, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sonde_v1_descriptor.bin"));
