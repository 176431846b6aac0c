//! Errors of the detectors.

use std::path::PathBuf;

/// What can fail: configuration (signatures) and persistence I/O.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("reading signatures {path}: {source}")]
    SignaturesRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing signatures {origin}: {source}")]
    SignaturesParse {
        origin: String,
        source: toml::de::Error,
    },
    #[error("signature {id}: {reason}")]
    SignatureInvalid { id: String, reason: String },
    #[error("building the signature matcher: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding snapshot: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}
