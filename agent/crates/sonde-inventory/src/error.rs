//! Errors of the inventory library.

use std::path::PathBuf;

/// Loading a declared OpenAPI spec failed. Names the file and, for syntax errors, the position.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: not an OpenAPI 3 document: {message}")]
    NotOpenApi { file: PathBuf, message: String },
}
