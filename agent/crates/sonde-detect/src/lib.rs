//! Behavioural baselines and anomaly detectors over the inventory's per-call analysis.
//!
//! Per call, [`Detectors::observe`] takes the [`sonde_model::Exchange`] and the inventory's
//! [`sonde_inventory::CallInfo`], updates per-endpoint and per-principal baselines (EWMA rates,
//! decaying log-scale histograms of latency, response size and records per response, status mix,
//! authenticated share, distinct object ids per window, object ownership) and runs the detectors:
//!
//! | kind | OWASP API 2023 |
//! |---|---|
//! | `bola.enumeration`, `bola.sequential_walk`, `bola.foreign_object_access` | API1 |
//! | `auth.expired_jwt_accepted`, `auth.unsigned_jwt_accepted`, `auth.unauthenticated_access`, `auth.credential_in_url`, `auth.basic_plaintext` | API2 |
//! | `exposure.large_response`, `exposure.many_records`, `exposure.secret_in_response`, `exposure.unauthenticated_personal_data` | API3 |
//! | `exposure.volume_spike`, `abuse.rate_spike` | API4 |
//! | `scan.error_burst`, `scan.server_error_burst`, `scan.path_sweep`, `scan.endpoint_sweep`, `http.smuggling_indicator`, `exploit.*`, `misconfig.debug_output` | API8 |
//!
//! Exploit and debug-output signatures live in `signatures.toml` (embedded; a configured file
//! replaces it). Findings are grouped by key and returned by [`Detectors::drain`]; baselines
//! persist with [`Detectors::save`] / [`Detectors::load`].

pub mod config;
pub mod detectors;
pub mod error;
pub mod json;
pub mod signatures;
pub mod sketch;
pub mod state;

pub use config::DetectConfig;
pub use detectors::{DetectStats, Detectors, SNAPSHOT_VERSION};
pub use error::DetectError;
