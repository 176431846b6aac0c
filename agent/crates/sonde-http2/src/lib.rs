//! Passive HTTP/2 decoding: frames, a tolerant HPACK decoder, streams and gRPC.
//!
//! The protocol stage hands every connection it detects as HTTP/2 to a [`Connection`], which it
//! feeds the captured bytes of both directions (and the gaps between them). Nothing here talks
//! to a peer: frames are validated and counted, never answered, and nothing panics on input.
//! Memory per connection is bounded by [`Http2Config`]; [`Connection::buffered_bytes`] reports it.
//!
//! ```
//! use std::sync::Arc;
//! use sonde_http2::{Connection, Http2Config};
//! use sonde_model::{ConnId, ConnMeta, Direction, ProcessInfo, Role};
//!
//! let meta = Arc::new(ConnMeta {
//!     id: ConnId { tgid: 1, fd: 5, generation: 0 },
//!     role: Role::Server,
//!     process: ProcessInfo::default(),
//!     local: None,
//!     remote: None,
//! });
//! let mut conn = Connection::new(meta, &Http2Config::default());
//! let mut out = Vec::new();
//! // The client's preface, an empty SETTINGS and `GET /` (static-table HPACK), then the
//! // server's `:status 200` with END_STREAM.
//! let mut client = sonde_http2::frame::PREFACE.to_vec();
//! client.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
//! client.extend_from_slice(&[0, 0, 4, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x81]);
//! conn.on_data(Direction::Ingress, &client, 1_000, &mut out);
//! conn.on_data(Direction::Egress, &[0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88], 2_000, &mut out);
//! assert_eq!(out.len(), 1);
//! assert_eq!((out[0].request.method.as_str(), out[0].request.path.as_str()), ("GET", "/"));
//! assert_eq!(out[0].status(), Some(200));
//! conn.on_close(3_000, &mut out);
//! ```

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

#[cfg(test)]
mod tests {
    /// Connections are sharded across threads by the pipeline.
    #[test]
    fn connection_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Connection>();
    }
}
