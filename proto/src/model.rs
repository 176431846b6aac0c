//! Conversions between sonde-model's vocabulary types and the wire types.
//!
//! They live here rather than in sonde-export because Rust's orphan rule allows a `From` impl only
//! in the crate that owns one of the two types.

use sonde_model::anomaly as model;

use crate::v1;

/// A wire message that cannot be represented in sonde-model's types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelConversionError {
    #[error("anomaly {key:?}: severity {value} is not a known severity")]
    Severity { key: String, value: i32 },
    #[error("anomaly {key:?}: category {value} is not an OWASP API Top 10 2023 category")]
    Category { key: String, value: i32 },
    #[error("anomaly {key:?}: evidence status {value} is not an HTTP status")]
    Status { key: String, value: u32 },
}

impl From<model::Severity> for v1::Severity {
    fn from(value: model::Severity) -> Self {
        match value {
            model::Severity::Info => v1::Severity::Info,
            model::Severity::Low => v1::Severity::Low,
            model::Severity::Medium => v1::Severity::Medium,
            model::Severity::High => v1::Severity::High,
            model::Severity::Critical => v1::Severity::Critical,
        }
    }
}

impl TryFrom<v1::Severity> for model::Severity {
    type Error = ();
    fn try_from(value: v1::Severity) -> Result<Self, ()> {
        Ok(match value {
            v1::Severity::Unspecified => return Err(()),
            v1::Severity::Info => model::Severity::Info,
            v1::Severity::Low => model::Severity::Low,
            v1::Severity::Medium => model::Severity::Medium,
            v1::Severity::High => model::Severity::High,
            v1::Severity::Critical => model::Severity::Critical,
        })
    }
}

impl From<model::OwaspCategory> for v1::OwaspCategory {
    fn from(value: model::OwaspCategory) -> Self {
        use model::OwaspCategory as M;
        match value {
            M::Api1Bola => v1::OwaspCategory::Api1Bola,
            M::Api2BrokenAuth => v1::OwaspCategory::Api2BrokenAuth,
            M::Api3PropertyAuth => v1::OwaspCategory::Api3PropertyAuth,
            M::Api4ResourceConsumption => v1::OwaspCategory::Api4ResourceConsumption,
            M::Api5FunctionAuth => v1::OwaspCategory::Api5FunctionAuth,
            M::Api6BusinessFlows => v1::OwaspCategory::Api6BusinessFlows,
            M::Api7Ssrf => v1::OwaspCategory::Api7Ssrf,
            M::Api8Misconfiguration => v1::OwaspCategory::Api8Misconfiguration,
            M::Api9Inventory => v1::OwaspCategory::Api9Inventory,
            M::Api10UnsafeConsumption => v1::OwaspCategory::Api10UnsafeConsumption,
        }
    }
}

impl TryFrom<v1::OwaspCategory> for model::OwaspCategory {
    type Error = ();
    fn try_from(value: v1::OwaspCategory) -> Result<Self, ()> {
        use model::OwaspCategory as M;
        Ok(match value {
            v1::OwaspCategory::Unspecified => return Err(()),
            v1::OwaspCategory::Api1Bola => M::Api1Bola,
            v1::OwaspCategory::Api2BrokenAuth => M::Api2BrokenAuth,
            v1::OwaspCategory::Api3PropertyAuth => M::Api3PropertyAuth,
            v1::OwaspCategory::Api4ResourceConsumption => M::Api4ResourceConsumption,
            v1::OwaspCategory::Api5FunctionAuth => M::Api5FunctionAuth,
            v1::OwaspCategory::Api6BusinessFlows => M::Api6BusinessFlows,
            v1::OwaspCategory::Api7Ssrf => M::Api7Ssrf,
            v1::OwaspCategory::Api8Misconfiguration => M::Api8Misconfiguration,
            v1::OwaspCategory::Api9Inventory => M::Api9Inventory,
            v1::OwaspCategory::Api10UnsafeConsumption => M::Api10UnsafeConsumption,
        })
    }
}

impl From<model::Evidence> for v1::Evidence {
    fn from(value: model::Evidence) -> Self {
        v1::Evidence {
            request_line: value.request_line,
            status: value.status.map(u32::from),
            request_bytes: value.request_bytes,
            response_bytes: value.response_bytes,
            field_kinds: value.field_kinds,
            details: value.details.into_iter().collect(),
        }
    }
}

impl From<model::Anomaly> for v1::Anomaly {
    fn from(value: model::Anomaly) -> Self {
        v1::Anomaly {
            key: value.key,
            kind: value.kind,
            first_seen_unix_ns: value.first_seen_ns,
            last_seen_unix_ns: value.last_seen_ns,
            endpoint: value.endpoint,
            principal_hash: value.principal_hash,
            client: value.client,
            severity: v1::Severity::from(value.severity).into(),
            category: v1::OwaspCategory::from(value.category).into(),
            explanation: value.explanation,
            evidence: Some(value.evidence.into()),
            count: value.count,
        }
    }
}

impl TryFrom<v1::Anomaly> for model::Anomaly {
    type Error = ModelConversionError;

    fn try_from(value: v1::Anomaly) -> Result<Self, ModelConversionError> {
        let severity = v1::Severity::try_from(value.severity)
            .ok()
            .and_then(|s| model::Severity::try_from(s).ok())
            .ok_or_else(|| ModelConversionError::Severity {
                key: value.key.clone(),
                value: value.severity,
            })?;
        let category = v1::OwaspCategory::try_from(value.category)
            .ok()
            .and_then(|c| model::OwaspCategory::try_from(c).ok())
            .ok_or_else(|| ModelConversionError::Category {
                key: value.key.clone(),
                value: value.category,
            })?;
        let evidence = value.evidence.unwrap_or_default();
        let status = match evidence.status {
            None => None,
            Some(s) => Some(u16::try_from(s).map_err(|_| ModelConversionError::Status {
                key: value.key.clone(),
                value: s,
            })?),
        };
        Ok(model::Anomaly {
            key: value.key,
            kind: value.kind,
            first_seen_ns: value.first_seen_unix_ns,
            last_seen_ns: value.last_seen_unix_ns,
            endpoint: value.endpoint,
            principal_hash: value.principal_hash,
            client: value.client,
            severity,
            category,
            explanation: value.explanation,
            evidence: model::Evidence {
                request_line: evidence.request_line,
                status,
                request_bytes: evidence.request_bytes,
                response_bytes: evidence.response_bytes,
                field_kinds: evidence.field_kinds,
                details: evidence.details.into_iter().collect(),
            },
            count: value.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sample() -> model::Anomaly {
        model::Anomaly {
            key: "k".into(),
            kind: "auth.expired_jwt_accepted".into(),
            first_seen_ns: 5,
            last_seen_ns: 9,
            endpoint: Some("api:80 GET /users/{id}".into()),
            principal_hash: Some("h".into()),
            client: None,
            severity: model::Severity::High,
            category: model::OwaspCategory::Api2BrokenAuth,
            explanation: "expired token accepted".into(),
            evidence: model::Evidence {
                request_line: "GET /users/7".into(),
                status: Some(200),
                request_bytes: 10,
                response_bytes: 20,
                field_kinds: vec!["jwt".into()],
                details: BTreeMap::from([("exp".to_string(), "1700000000".to_string())]),
            },
            count: 3,
        }
    }

    #[test]
    fn anomaly_round_trips_through_the_wire_type() {
        let original = sample();
        let wire = v1::Anomaly::from(original.clone());
        assert_eq!(wire.severity, v1::Severity::High as i32);
        assert_eq!(wire.category, v1::OwaspCategory::Api2BrokenAuth as i32);
        assert_eq!(model::Anomaly::try_from(wire), Ok(original));
    }

    #[test]
    fn every_category_round_trips() {
        use model::OwaspCategory as M;
        for category in [
            M::Api1Bola,
            M::Api2BrokenAuth,
            M::Api3PropertyAuth,
            M::Api4ResourceConsumption,
            M::Api5FunctionAuth,
            M::Api6BusinessFlows,
            M::Api7Ssrf,
            M::Api8Misconfiguration,
            M::Api9Inventory,
            M::Api10UnsafeConsumption,
        ] {
            let wire = v1::OwaspCategory::from(category);
            assert_eq!(wire.code(), category.code());
            assert_eq!(model::OwaspCategory::try_from(wire), Ok(category));
        }
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut wire = v1::Anomaly::from(sample());
        wire.severity = 42;
        assert!(matches!(
            model::Anomaly::try_from(wire.clone()),
            Err(ModelConversionError::Severity { value: 42, .. })
        ));
        wire.severity = v1::Severity::Low as i32;
        wire.category = 0;
        assert!(matches!(
            model::Anomaly::try_from(wire.clone()),
            Err(ModelConversionError::Category { value: 0, .. })
        ));
        wire.category = 1;
        if let Some(e) = wire.evidence.as_mut() {
            e.status = Some(70_000);
        }
        assert!(matches!(
            model::Anomaly::try_from(wire),
            Err(ModelConversionError::Status { value: 70_000, .. })
        ));
    }
}
