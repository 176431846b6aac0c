//! Detector configuration: one serde section, every field defaulted (defaults documented here).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Thresholds, learning period and memory bounds of the detectors. `{}` is a valid configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Calls an endpoint must have seen before its baseline detectors run. Default 200.
    pub learn_min_calls: u64,
    /// Traffic time (seconds) an endpoint must have been observed before its baseline detectors
    /// run (both conditions must hold). Default 300 (5 minutes).
    pub learn_min_secs: u64,
    /// Length of the per-principal counting window, seconds. Default 60.
    pub window_secs: u64,
    /// A repeated finding (same key) is re-emitted by `drain` at most this often. Default 60 s.
    pub reemit_secs: u64,
    /// Largest clock step taken from one call to the next; longer forward jumps are clamped and
    /// backward jumps count as no time passing. Default 600 s.
    pub max_clock_step_secs: u64,
    /// Weight at which baseline histograms halve: smaller adapts faster. Default 4096.
    pub baseline_weight: u32,

    /// Principals tracked before the coldest are evicted. Default 100000 (~0.5 KiB each).
    pub max_principals: usize,
    /// Endpoints tracked before the coldest are evicted. Default 10000 (~2.5 KiB each + owners).
    pub max_endpoints: usize,
    /// Grouped findings kept before the oldest are forgotten. Default 10000.
    pub max_groups: usize,
    /// Templated endpoints tracked per principal and window. Default 8.
    pub max_endpoints_per_principal: usize,
    /// Distinct object ids counted per principal, endpoint and window. Default 512.
    pub max_ids_per_window: usize,
    /// Object id → first principal entries kept per endpoint. Default 4096.
    pub max_owned_ids: usize,
    /// ... and over all endpoints (~24 bytes each). Default 1000000.
    pub max_owned_ids_total: usize,
    /// Bytes of a body sample scanned for signatures and records. Default 16 KiB.
    pub max_scan_bytes: usize,

    /// BOLA: distinct ids per principal and window that always count as enumeration. Default 25.
    pub bola_min_ids: u32,
    /// BOLA: multiple of the peers' p99 of distinct ids per window. Default 4.
    pub bola_peer_factor: f64,
    /// BOLA: consecutive ±1 numeric id steps that make a sequential walk. Default 15.
    pub seq_walk_min: u32,
    /// BOLA: 2xx answers for ids first seen with another principal, per window. Default 5.
    pub foreign_ids_min: u32,
    /// BOLA: share of calls on known ids made by their first principal above which an endpoint
    /// counts as owner-scoped. Default 0.97.
    pub owner_share_min: f64,

    /// Unauthenticated 2xx is flagged where at least this share of calls authenticate. Default 0.99.
    pub auth_share_min: f64,
    /// Seconds past `exp` a JWT may be before an accepted call counts. Default 60.
    pub jwt_leeway_secs: i64,
    /// Server ports treated as TLS (Basic auth elsewhere is plaintext). Default [443, 8443].
    pub tls_ports: Vec<u16>,

    /// Response bytes or records above `factor × p99` of the endpoint. Default 8.
    pub size_factor: f64,
    /// ... and above this many bytes. Default 256 KiB.
    pub size_min_bytes: u64,
    /// ... or above this many records. Default 200.
    pub records_min: u64,
    /// Principal volume per window above `factor × max(own EWMA, peers' p99)`. Default 10.
    pub volume_factor: f64,
    /// ... and above this many bytes per window. Default 20 MiB.
    pub volume_min_bytes: u64,

    /// 401/403/404 answers per principal and window for an error burst. Default 30.
    pub error_burst_min: u32,
    /// 5xx answers per principal and window for a server-error burst. Default 20.
    pub server_error_burst_min: u32,
    /// Share of the principal's window calls that must be errors for a burst. Default 0.5.
    pub error_ratio_min: f64,
    /// Distinct 404 paths per principal and window for a path sweep. Default 20.
    pub sweep_min_404_paths: u32,
    /// Distinct endpoints per principal and window for an endpoint sweep. Default 40.
    pub sweep_min_endpoints: u32,
    /// Calls per principal and window above `factor × max(own EWMA, peers' p99)`. Default 10.
    pub rate_factor: f64,
    /// ... and above this many calls per window. Default 1200.
    pub rate_min_calls: u64,

    /// Signature file (TOML) replacing the built-in `signatures.toml`. Default none.
    pub signatures_path: Option<PathBuf>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            learn_min_calls: 200,
            learn_min_secs: 300,
            window_secs: 60,
            reemit_secs: 60,
            max_clock_step_secs: 600,
            baseline_weight: 4096,
            max_principals: 100_000,
            max_endpoints: 10_000,
            max_groups: 10_000,
            max_endpoints_per_principal: 8,
            max_ids_per_window: 512,
            max_owned_ids: 4096,
            max_owned_ids_total: 1_000_000,
            max_scan_bytes: 16 * 1024,
            bola_min_ids: 25,
            bola_peer_factor: 4.0,
            seq_walk_min: 15,
            foreign_ids_min: 5,
            owner_share_min: 0.97,
            auth_share_min: 0.99,
            jwt_leeway_secs: 60,
            tls_ports: vec![443, 8443],
            size_factor: 8.0,
            size_min_bytes: 256 * 1024,
            records_min: 200,
            volume_factor: 10.0,
            volume_min_bytes: 20 * 1024 * 1024,
            error_burst_min: 30,
            server_error_burst_min: 20,
            error_ratio_min: 0.5,
            sweep_min_404_paths: 20,
            sweep_min_endpoints: 40,
            rate_factor: 10.0,
            rate_min_calls: 1200,
            signatures_path: None,
        }
    }
}
