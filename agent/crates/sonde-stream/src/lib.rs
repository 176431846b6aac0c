//! Per-connection, per-direction byte stream reassembly with explicit gaps and bounded memory
