//! Sonde agent: eBPF capture, pipeline and export
