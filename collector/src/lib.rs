//! Sonde collector: gRPC ingest and query API over an embedded store, and the sonde CLI
