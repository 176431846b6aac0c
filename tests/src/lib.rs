//! Privileged end-to-end tests: real eBPF, real servers and clients, real collector
