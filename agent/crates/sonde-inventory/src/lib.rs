//! API inventory: endpoints, path templates, auth schemes, sensitive data, declared-spec
//! classification.
//!
//! [`Inventory::observe`] takes every [`sonde_model::Exchange`] and returns the per-call analysis
//! ([`CallInfo`]) the detectors reuse; the inventory keeps one bounded [`EndpointRecord`] per
//! service + method + path template, classifies endpoints against declared OpenAPI specs, and
//! raises inventory events (shadow and zombie endpoints, personal data served without
//! authentication) once per endpoint as [`sonde_model::Anomaly`]s.

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod export;
pub mod hash;
mod inventory;
pub mod schema;
pub mod sensitive;
pub mod spec;
pub mod stats;
pub mod template;

pub use auth::{AuthInfo, AuthScheme, JwtSummary};
pub use config::InventoryConfig;
pub use endpoint::{
    Classification, DeclaredRef, EndpointRecord, EndpointTls, Location, RetiredEndpoint,
    SensitiveField, ServiceKey,
};
pub use error::SpecError;
pub use inventory::{
    AddressNames, CallInfo, Inventory, InventoryCounters, SensitiveHit, UnusedOperation,
};
pub use sensitive::{KindSet, SensitiveKind};
pub use spec::{DeclaredOperation, DeclaredSpec, SpecScope};
pub use template::ParamKind;
