//! Passive HTTP/2 decoding: frames, a tolerant HPACK decoder, streams and gRPC.
pub mod hpack;
