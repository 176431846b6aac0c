//! TLS posture from the handshake bytes the syscall hooks see in clear.
//!
//! A TLS connection's ciphertext is useless to the HTTP parsers, but its first records are not:
//! the ClientHello names the server (SNI) and the protocols the client offers (ALPN, supported
//! versions), the ServerHello says what was negotiated (version, cipher suite, ALPN), and up to
//! TLS 1.2 the server's certificate travels in clear. [`TlsConnection`] parses both directions of
//! one connection incrementally (records split or coalesced anywhere across chunks, gaps,
//! truncation and garbage handled with bounded memory and no panic) into a [`TlsSession`];
//! [`PostureRules`] turns sessions and plaintext HTTP exchanges into API8 (Security
//! Misconfiguration) anomalies, once per server and issue.
//!
//! Records and handshake messages are decoded by `tls-parser` and certificates by
//! `x509-parser`; this crate only reassembles records and handshake messages across chunk
//! boundaries (which those parsers leave to their caller) and keeps the facts.

mod cert;
mod cipher;
mod handshake;
mod posture;
mod record;
mod version;

pub use cert::{CertificateInfo, Validity};
pub use cipher::{CipherInfo, Weakness, cipher_info};
pub use handshake::{
    Alert, ClientHelloInfo, DirectionParser, DirectionState, MAX_HANDSHAKE_MESSAGE, ParserCounters,
    ServerHelloInfo, StopReason, TlsConnection, TlsSession,
};
pub use posture::{PlaintextScope, PostureConfig, PostureCounters, PostureRules, ServerRef};
pub use record::{MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN, looks_like_tls_record};
pub use version::ProtocolVersion;

#[cfg(feature = "openssl-harness")]
pub mod harness;
