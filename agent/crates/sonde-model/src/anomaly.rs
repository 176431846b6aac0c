//! Findings of the inventory and the detectors, as they travel to the collector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// OWASP API Security Top 10, 2023 edition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OwaspCategory {
    /// API1:2023 Broken Object Level Authorization
    Api1Bola,
    /// API2:2023 Broken Authentication
    Api2BrokenAuth,
    /// API3:2023 Broken Object Property Level Authorization
    Api3PropertyAuth,
    /// API4:2023 Unrestricted Resource Consumption
    Api4ResourceConsumption,
    /// API5:2023 Broken Function Level Authorization
    Api5FunctionAuth,
    /// API6:2023 Unrestricted Access to Sensitive Business Flows
    Api6BusinessFlows,
    /// API7:2023 Server Side Request Forgery
    Api7Ssrf,
    /// API8:2023 Security Misconfiguration
    Api8Misconfiguration,
    /// API9:2023 Improper Inventory Management
    Api9Inventory,
    /// API10:2023 Unsafe Consumption of APIs
    Api10UnsafeConsumption,
}

impl OwaspCategory {
    /// The short code, e.g. `API1:2023`.
    pub fn code(self) -> &'static str {
        match self {
            OwaspCategory::Api1Bola => "API1:2023",
            OwaspCategory::Api2BrokenAuth => "API2:2023",
            OwaspCategory::Api3PropertyAuth => "API3:2023",
            OwaspCategory::Api4ResourceConsumption => "API4:2023",
            OwaspCategory::Api5FunctionAuth => "API5:2023",
            OwaspCategory::Api6BusinessFlows => "API6:2023",
            OwaspCategory::Api7Ssrf => "API7:2023",
            OwaspCategory::Api8Misconfiguration => "API8:2023",
            OwaspCategory::Api9Inventory => "API9:2023",
            OwaspCategory::Api10UnsafeConsumption => "API10:2023",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            OwaspCategory::Api1Bola => "Broken Object Level Authorization",
            OwaspCategory::Api2BrokenAuth => "Broken Authentication",
            OwaspCategory::Api3PropertyAuth => "Broken Object Property Level Authorization",
            OwaspCategory::Api4ResourceConsumption => "Unrestricted Resource Consumption",
            OwaspCategory::Api5FunctionAuth => "Broken Function Level Authorization",
            OwaspCategory::Api6BusinessFlows => "Unrestricted Access to Sensitive Business Flows",
            OwaspCategory::Api7Ssrf => "Server Side Request Forgery",
            OwaspCategory::Api8Misconfiguration => "Security Misconfiguration",
            OwaspCategory::Api9Inventory => "Improper Inventory Management",
            OwaspCategory::Api10UnsafeConsumption => "Unsafe Consumption of APIs",
        }
    }
}

/// Redacted evidence of an anomaly: enough to act on, never a raw secret or personal value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Evidence {
    /// `METHOD /path?query` with parameter values redacted where sensitive.
    pub request_line: String,
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Kinds of sensitive data involved (`email`, `jwt`, `payment_card`, ...).
    pub field_kinds: Vec<String>,
    /// Detector-specific facts (`distinct_ids: 212`, `baseline_p99_bytes: 2048`, ...).
    pub details: BTreeMap<String, String>,
}

/// One finding. Repeats of the same finding are grouped by `key` (count and last-seen grow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Stable grouping key: kind + endpoint + principal (or what else makes it the same finding).
    pub key: String,
    /// Machine-readable kind, e.g. `inventory.shadow_endpoint`, `auth.expired_jwt_accepted`.
    pub kind: String,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Endpoint key as the inventory prints it (`service METHOD /template`).
    pub endpoint: Option<String>,
    /// Salted hash of the calling principal (never the raw token).
    pub principal_hash: Option<String>,
    /// Client description (address and/or process).
    pub client: Option<String>,
    pub severity: Severity,
    pub category: OwaspCategory,
    /// One human line.
    pub explanation: String,
    pub evidence: Evidence,
    pub count: u64,
}
