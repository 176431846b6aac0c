//! sonde.v1 gRPC protocol between agents, collector and CLI
