//! Agent configuration: one typed section per pipeline stage, every field defaulted (the
//! defaults are documented where they are defined), loaded from a TOML file and overridden by
//! command-line flags.

use std::path::{Path, PathBuf};

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
    /// TLS posture rules: minimum version, scope of the plaintext-HTTP rule (sonde-tls's
    /// defaults: TLS 1.2, servers not on loopback).
    pub posture: sonde_tls::PostureConfig,
    /// When a TLS connection without plaintext counts as blind (default after 5 s).
    pub blind_spots: crate::blind::BlindSpotConfig,
    pub export: ExportConfig,
    /// Workload identity of live processes: containers, Kubernetes pods and workloads, systemd
    /// units, executables (sonde-identity's defaults: on; Kubernetes when in a pod).
    pub identity: sonde_identity::IdentityConfig,
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
    /// TLS towards an `https://` collector (`[export.tls]`). Default: none (plaintext `http://`).
    pub tls: Option<ExportTlsConfig>,
}

/// PEM files for TLS towards the collector, e.g. mounted from a Kubernetes Secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTlsConfig {
    /// CA that signed the collector's certificate.
    pub ca_cert: PathBuf,
    /// Client certificate and key, for a collector that requires mTLS on ingest. Both or none.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Name to verify in the collector's certificate when it differs from the URL's host.
    #[serde(default)]
    pub domain: Option<String>,
}

impl ExportTlsConfig {
    /// Reads the PEM files the exporter needs.
    pub fn load(&self) -> anyhow::Result<sonde_export::ExportTls> {
        let read = |p: &Path| {
            std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()))
        };
        let client_identity_pem = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => anyhow::bail!("[export.tls] needs both client_cert and client_key, or neither"),
        };
        Ok(sonde_export::ExportTls {
            ca_cert_pem: read(&self.ca_cert)?,
            client_identity_pem,
            domain: self.domain.clone(),
        })
    }
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
            tls: None,
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

    /// Everything `run` would refuse or skip, checked without touching the kernel: every declared
    /// spec loads, the TLS files read, the collector URL names a scheme the exporter speaks.
    /// Returns a one-line summary for the operator.
    pub fn check(&self) -> anyhow::Result<String> {
        sonde_protocol::Tracker::new(self.protocol.clone())
            .map_err(|e| anyhow::anyhow!("[protocol]: {e}"))?;
        let mut inventory = sonde_inventory::Inventory::new(self.inventory.clone());
        let errors = inventory.load_specs(self.specs.iter().map(|s| {
            (
                s.path.clone(),
                sonde_inventory::SpecScope {
                    authority: s.authority.clone(),
                    port: s.port,
                    process: s.process.clone(),
                },
            )
        }));
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::bail!("declared specs not loaded: {}", list.join("; "));
        }
        self.capture.validate()?;
        let url = &self.export.collector_url;
        let https = url.starts_with("https://");
        anyhow::ensure!(
            https || url.starts_with("http://"),
            "[export] collector_url {url:?} is neither http:// nor https://"
        );
        if let Some(tls) = &self.export.tls {
            anyhow::ensure!(
                https,
                "[export.tls] is set but collector_url {url:?} is not https://"
            );
            tls.load()?;
        }
        Ok(format!(
            "config OK: {} declared spec(s), collector {url}{}, spool {}",
            self.specs.len(),
            match &self.export.tls {
                Some(t) if t.client_cert.is_some() => " (mTLS)",
                Some(_) => " (TLS)",
                None => "",
            },
            self.export.spool_dir.display()
        ))
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
    /// TLS plaintext capture with uprobes on the TLS libraries processes map. Default true.
    pub tls: TlsCaptureConfig,
}

impl CaptureConfig {
    /// The bounds the kernel side needs (checked by `--check-config` and at start, rather than
    /// clamped silently).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ring_bytes.is_power_of_two() && self.ring_bytes >= 4096,
            "[capture] ring_bytes = {} must be a power of two of at least 4096",
            self.ring_bytes
        );
        let max_chunk = sonde_common::CHUNK_SIZE as u32;
        anyhow::ensure!(
            (64..=max_chunk).contains(&self.chunk_size),
            "[capture] chunk_size = {} must be within 64..={max_chunk}",
            self.chunk_size
        );
        let max_chunks = sonde_common::MAX_CHUNKS_PER_CALL;
        anyhow::ensure!(
            (1..=max_chunks).contains(&self.max_chunks_per_call),
            "[capture] max_chunks_per_call = {} must be within 1..={max_chunks}",
            self.max_chunks_per_call
        );
        anyhow::ensure!(
            self.channel_batches > 0,
            "[capture] channel_batches must be at least 1"
        );
        Ok(())
    }
}

/// Uprobes on TLS libraries (OpenSSL family: libssl, and executables with OpenSSL or BoringSSL
/// linked in statically).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsCaptureConfig {
    /// Attach to TLS libraries at all. Default true.
    pub enabled: bool,
    /// Distinct library files (device, inode) attached at once; further ones are refused and
    /// counted. Default 64 (each takes about ten uprobes).
    pub max_objects: usize,
    /// Rescans of a new process's mappings after its exec, in milliseconds after the exec:
    /// libraries appear once the dynamic loader (or a later dlopen) maps them. Default
    /// 0, 2, 10, 50, 250, 1000, 3000. The rest are skipped once a scan finds a TLS library in
    /// the process, or finds it static (only its executable mapped).
    pub rescan_after_exec_ms: Vec<u64>,
}

impl Default for TlsCaptureConfig {
    fn default() -> TlsCaptureConfig {
        TlsCaptureConfig {
            enabled: true,
            max_objects: 64,
            rescan_after_exec_ms: vec![0, 2, 10, 50, 250, 1000, 3000],
        }
    }
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
            tls: TlsCaptureConfig::default(),
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
        // Every section, the stage crates' included: a typo is an error, not a silent default.
        for typo in [
            "[detect]\nlearn_min_call = 5\n",
            "[inventory]\nmax_endpont = 5\n",
            "[protocol]\nbogus = 1\n",
            "[protocol.http2]\nbogus = 1\n",
        ] {
            let err = toml::from_str::<AgentConfig>(typo).expect_err(typo);
            assert!(err.to_string().contains("unknown field"), "{typo}: {err}");
        }
        let c: AgentConfig = toml::from_str("[detect]\nlearn_min_calls = 5\n").expect("parses");
        assert_eq!(c.detect.learn_min_calls, 5);
    }

    #[test]
    fn capture_bounds_are_errors_not_silent_clamps() {
        assert!(CaptureConfig::default().validate().is_ok());
        for bad in [
            "ring_bytes = 0",
            "ring_bytes = 5000",
            "chunk_size = 0",
            "chunk_size = 100000000",
            "max_chunks_per_call = 0",
            "max_chunks_per_call = 99",
            "channel_batches = 0",
        ] {
            let c: AgentConfig = toml::from_str(&format!("[capture]\n{bad}\n")).expect(bad);
            let err = c.capture.validate().expect_err(bad).to_string();
            assert!(err.starts_with("[capture]"), "{bad}: {err}");
        }
    }

    #[test]
    fn identity_section_parses_and_defaults_to_on_with_kubernetes_auto() {
        let c: AgentConfig = toml::from_str("").expect("empty");
        assert!(c.identity.enabled);
        assert_eq!(c.identity.kubernetes, sonde_identity::KubernetesMode::Auto);
        let c: AgentConfig = toml::from_str(
            "[identity]\nkubernetes = \"off\"\nhost_root = \"/host\"\nnode_name = \"node-a\"\n",
        )
        .expect("parses");
        assert_eq!(c.identity.kubernetes, sonde_identity::KubernetesMode::Off);
        assert!(!c.identity.kubernetes_enabled());
        assert_eq!(c.identity.host_root, std::path::PathBuf::from("/host"));
        assert_eq!(c.identity.node_name().as_deref(), Some("node-a"));
        assert!(toml::from_str::<AgentConfig>("[identity]\nkube = true\n").is_err());
    }

    #[test]
    fn posture_and_blind_spot_sections_parse_as_the_readme_shows() {
        let c: AgentConfig = toml::from_str(
            "[posture]\nmin_version = 0x0304\nplaintext_http = \"all\"\nplaintext_allowed_ports = [9100]\n[blind_spots]\ngrace_ms = 1000\n",
        )
        .expect("parses");
        assert_eq!(c.posture.min_version, 0x0304);
        assert_eq!(c.posture.plaintext_http, sonde_tls::PlaintextScope::All);
        assert_eq!(c.posture.plaintext_allowed_ports, vec![9100]);
        assert_eq!(c.blind_spots.grace_ms, 1000);
        let d = AgentConfig::default();
        assert_eq!(d.posture.min_version, 0x0303);
        assert_eq!(
            d.posture.plaintext_http,
            sonde_tls::PlaintextScope::NonLoopback
        );
        assert!(toml::from_str::<AgentConfig>("[posture]\nscope = 1\n").is_err());
    }

    #[test]
    fn check_refuses_tls_over_http_and_half_a_client_identity() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("sonde-config-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, "not checked here: tonic parses it at connect")?;
        let parse = |text: String| toml::from_str::<AgentConfig>(&text);
        let tls = format!("[export.tls]\nca_cert = {:?}\n", ca.display().to_string());
        let over_http = parse(format!(
            "[export]\ncollector_url = \"http://c:7419\"\n{tls}"
        ))?;
        assert!(over_http.check().is_err());
        let ok = parse(format!(
            "[export]\ncollector_url = \"https://c:7419\"\n{tls}"
        ))?;
        assert!(ok.check()?.contains("(TLS)"));
        let half = parse(format!(
            "[export]\ncollector_url = \"https://c:7419\"\n{tls}client_cert = {:?}\n",
            ca.display().to_string()
        ))?;
        let err = half.check().expect_err("client_cert without client_key");
        assert!(format!("{err:#}").contains("both client_cert and client_key"));
        let missing = parse(
            "[export]\ncollector_url = \"https://c:7419\"\n[export.tls]\nca_cert = \"/nonexistent/ca.crt\"\n"
                .to_string(),
        )?;
        assert!(
            format!("{:#}", missing.check().expect_err("missing CA"))
                .contains("/nonexistent/ca.crt")
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
