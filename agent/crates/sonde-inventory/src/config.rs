//! Inventory configuration: one serde section, every field defaulted (defaults documented here).

use serde::{Deserialize, Serialize};

/// Settings of the inventory. Every field has a default, so `{}` is a valid configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// Salt of the keyed hashes of principals and secrets. Empty (the default) means a fixed
    /// built-in salt: hashes then correlate across hosts but are guessable for low-entropy values,
    /// so deployments should set one per fleet.
    pub salt: String,
    /// Distinct services (server address + process + authority) before new ones go to the overflow
    /// service. Default 1024.
    pub max_services: usize,
    /// Distinct authorities (Host / :authority) per server address and process before further
    /// ones are merged into `{other}`. Default 16.
    pub max_authorities_per_server: usize,
    /// Endpoints per service before new templates go to the service's overflow endpoint. Default 2000.
    pub max_endpoints_per_service: usize,
    /// Path-trie nodes per service before unseen literals go to the overflow endpoint. Default 20000.
    pub max_nodes_per_service: usize,
    /// Endpoints over all services (~2-5 KiB each) before new ones go to overflow. Default 50000.
    pub max_endpoints_total: usize,
    /// Path-trie nodes over all services (~150 bytes each). Default 500000.
    pub max_nodes_total: usize,
    /// Path segments considered; deeper segments fold into a trailing `{rest}`. Default 24.
    pub max_path_segments: usize,
    /// A literal longer than this is treated as a parameter. Default 64.
    pub max_literal_len: usize,
    /// Distinct literal siblings under one parent after which that position becomes a `{param}`
    /// and existing siblings fold into it. Default 24: real APIs rarely have more resource names
    /// under one parent, while identifiers quickly exceed it.
    pub param_min_distinct: usize,
    /// Distinct custom (non-standard) HTTP methods per service before they are counted as `OTHER`.
    /// Default 8.
    pub max_custom_methods: usize,
    /// Callers (client address/process) kept per endpoint. Default 32.
    pub max_callers_per_endpoint: usize,
    /// Query parameter names kept per endpoint. Default 64.
    pub max_query_params: usize,
    /// Content types kept per endpoint and direction. Default 8.
    pub max_content_types: usize,
    /// Body schema: maximal nesting depth recorded. Default 8.
    pub schema_max_depth: usize,
    /// Body schema: field paths kept per endpoint and direction. Default 256.
    pub schema_max_fields: usize,
    /// Sensitive findings (field path + kind) kept per endpoint. Default 128.
    pub max_sensitive_fields: usize,
    /// Bytes of a body sample that are analysed (schema and scan). Default 64 KiB.
    pub max_body_scan_bytes: usize,
    /// Inventory events waiting to be drained before new ones are dropped (counted). Default 10000.
    pub max_pending_events: usize,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            salt: String::new(),
            max_services: 1024,
            max_authorities_per_server: 16,
            max_endpoints_per_service: 2000,
            max_nodes_per_service: 20_000,
            max_endpoints_total: 50_000,
            max_nodes_total: 500_000,
            max_path_segments: 24,
            max_literal_len: 64,
            param_min_distinct: 24,
            max_custom_methods: 8,
            max_callers_per_endpoint: 32,
            max_query_params: 64,
            max_content_types: 8,
            schema_max_depth: 8,
            schema_max_fields: 256,
            max_sensitive_fields: 128,
            max_body_scan_bytes: 64 * 1024,
            max_pending_events: 10_000,
        }
    }
}
