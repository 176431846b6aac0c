//! Agent configuration: one typed section per pipeline stage, every field defaulted (the
//! defaults are documented where they are defined), loaded from a TOML file and overridden by
//! command-line flags.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::capture::TcpStrategy;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub capture: CaptureConfig,
    /// HTTP/1 and HTTP/2 reconstruction limits and timeouts (sonde-protocol's defaults).
    pub protocol: sonde_protocol::TrackerConfig,
    /// Inventory caps, salt and thresholds (sonde-inventory's defaults).
    pub inventory: sonde_inventory::InventoryConfig,
    /// Declared OpenAPI specs (`[[specs]] path = "..."`). Default: none (every endpoint is
    /// unclassified until a spec is declared).
    pub specs: Vec<crate::pipeline::SpecSource>,
    /// Baseline learning period and detector thresholds (sonde-detect's defaults).
    pub detect: sonde_detect::DetectConfig,
    /// Where the behavioural baseline survives restarts (rmp-serde). Default: `run` keeps it in
    /// its state directory; the other commands start fresh.
    pub baseline_file: Option<std::path::PathBuf>,
    pub export: ExportConfig,
}

/// Where inventory and anomalies go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Collector URL. Default `http://127.0.0.1:7419`.
    pub collector_url: String,
    /// Run a collector inside the agent (the single-host main job). Default false.
    pub embedded_collector: bool,
    /// Database of the embedded collector. Default `/var/lib/sonde/collector.db`.
    pub embedded_database: std::path::PathBuf,
    /// Unacknowledged batches wait here while the collector is away. Default
    /// `/var/lib/sonde/spool`.
    pub spool_dir: std::path::PathBuf,
    /// Bound on the spool. Default 64 MiB.
    pub max_spool_bytes: u64,
    /// How often changed endpoints are sent. Default 2 s.
    pub interval_ms: u64,
}

impl Default for ExportConfig {
    fn default() -> ExportConfig {
        ExportConfig {
            collector_url: "http://127.0.0.1:7419".into(),
            embedded_collector: false,
            embedded_database: "/var/lib/sonde/collector.db".into(),
            spool_dir: "/var/lib/sonde/spool".into(),
            max_spool_bytes: 64 * 1024 * 1024,
            interval_ms: 2000,
        }
    }
}

impl AgentConfig {
    /// Reads a TOML file; a missing `path` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
        let Some(path) = path else {
            return Ok(AgentConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Payload bytes per ring record. Default 8192 (the maximum).
    pub chunk_size: u32,
    /// Records one syscall may emit; bytes past `chunk_size * max_chunks_per_call` travel as a
    /// length only. Default 8 (64 KiB per call).
    pub max_chunks_per_call: u32,
    /// Ring buffer size in bytes, a power of two. Default 16 MiB.
    pub ring_bytes: u32,
    /// How often the ring is drained when no wake-up came. Default 10 ms.
    pub poll_interval_ms: u64,
    /// Bytes waiting in the ring after which the kernel wakes the reader at once. Default 256 KiB.
    pub wakeup_threshold_bytes: u64,
    /// Capture only connections with one of these local or remote ports. Default: all.
    pub ports: Vec<u16>,
    /// Capture only these processes. Default: all.
    pub pids: Vec<u32>,
    /// Never capture these processes (the agent itself is always excluded). Default: none.
    pub exclude_pids: Vec<u32>,
    /// How TCP sockets are told apart inside syscalls. Default `auto`: probe the kernel and take
    /// the best that attaches (sock tracepoints, then kprobes, then connect/accept tracking).
    pub tcp_strategy: TcpStrategyChoice,
    /// Batches of events buffered between the ring reader and the pipeline. Default 256.
    pub channel_batches: usize,
    /// Do not ship the payload of a client connection whose server is a listening socket of
    /// this host that is captured too: a local call is then analysed once, from the server's
    /// socket, at half the cost. Its open and close events still travel. Off whenever a process
    /// filter (`pids`) is set, since the server may then be outside it. Default true.
    pub skip_local_client_views: bool,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            chunk_size: sonde_common::CHUNK_SIZE as u32,
            max_chunks_per_call: sonde_common::MAX_CHUNKS_PER_CALL,
            ring_bytes: 16 * 1024 * 1024,
            poll_interval_ms: 10,
            wakeup_threshold_bytes: 256 * 1024,
            ports: Vec::new(),
            pids: Vec::new(),
            exclude_pids: Vec::new(),
            tcp_strategy: TcpStrategyChoice::Auto,
            channel_batches: 256,
            skip_local_client_views: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TcpStrategyChoice {
    #[default]
    Auto,
    SockTracepoints,
    Kprobes,
    FdTracking,
}

impl TcpStrategyChoice {
    /// Strategies to try, best first.
    pub fn candidates(self) -> Vec<TcpStrategy> {
        match self {
            TcpStrategyChoice::Auto => TcpStrategy::PREFERENCE.to_vec(),
            TcpStrategyChoice::SockTracepoints => vec![TcpStrategy::SockTracepoints],
            TcpStrategyChoice::Kprobes => vec![TcpStrategy::Kprobes],
            TcpStrategyChoice::FdTracking => vec![TcpStrategy::FdTracking],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_unknown_keys_are_rejected() {
        let c: AgentConfig = toml::from_str("").expect("empty");
        assert_eq!(c.capture.chunk_size, 8192);
        let c: AgentConfig =
            toml::from_str("[capture]\nports = [80, 8080]\ntcp_strategy = \"fd-tracking\"\n")
                .expect("parses");
        assert_eq!(c.capture.ports, vec![80, 8080]);
        assert_eq!(c.capture.tcp_strategy, TcpStrategyChoice::FdTracking);
        assert!(toml::from_str::<AgentConfig>("[capture]\nchunk = 1\n").is_err());
    }
}
