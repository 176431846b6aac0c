//! Passive HTTP/2 decoding: frames, a tolerant HPACK decoder, streams and gRPC.
//!
//! The protocol stage hands every connection it detects as HTTP/2 to a [`Connection`], which it
//! feeds the captured bytes of both directions (and the gaps between them). Nothing here talks
//! to a peer: frames are validated and counted, never answered, and nothing panics on input.

pub mod config;
mod connection;
mod content;
pub mod frame;
pub mod grpc;
pub mod hpack;
mod message;
pub mod stats;

pub use config::Http2Config;
pub use connection::Connection;
pub use frame::FrameErrorKind;
pub use stats::Http2Stats;
