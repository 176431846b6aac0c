//! Helpers shared by the agent's integration tests over the corpora.

use std::path::PathBuf;

use sonde_agent::pipeline::Sink;
use sonde_inventory::CallInfo;
use sonde_model::{Anomaly, Exchange};

/// A sink for runs whose results are read from the analyzer itself.
pub struct Discard;

impl Sink for Discard {
    fn exchange(&mut self, _: &Exchange, _: &CallInfo) {}
    fn anomalies(&mut self, _: Vec<Anomaly>) {}
}

/// A file of `$SONDE_CORPORA` (or `../shared/corpora` beside the repository); `None`, with a
/// note, when it is missing.
pub fn corpus(rel: &str) -> Option<PathBuf> {
    let root = match std::env::var_os("SONDE_CORPORA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"),
    };
    let path = root.join(rel);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("note: {} missing; skipping", path.display());
        None
    }
}
