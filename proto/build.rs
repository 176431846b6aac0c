//! Compiles `sonde/v1/sonde.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

use anyhow::Context;
use prost::Message;

/// Enum-typed fields, serialised to JSON by name rather than number.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("sonde.v1.EndpointKey.protocol", "protocol"),
    ("sonde.v1.EndpointSummary.protocol", "protocol"),
    ("sonde.v1.EndpointUpdate.classification", "classification"),
    ("sonde.v1.EndpointSummary.classification", "classification"),
    ("sonde.v1.Anomaly.severity", "severity"),
    ("sonde.v1.Anomaly.category", "category"),
];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=sonde");
    let fds = protox::compile(["sonde/v1/sonde.proto"], ["."]).context("compiling sonde.proto")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    std::fs::write(out_dir.join("sonde_v1_descriptor.bin"), fds.encode_to_vec())
        .context("writing the file descriptor set")?;

    let mut builder =
        tonic_prost_build::configure().type_attribute(".sonde.v1", "#[derive(serde::Serialize)]");
    for (field, kind) in ENUM_FIELDS {
        builder = builder.field_attribute(
            field,
            format!("#[serde(serialize_with = \"crate::json::{kind}\")]"),
        );
    }
    builder
        .compile_fds(fds)
        .context("generating Rust code for sonde.proto")?;
    Ok(())
}
