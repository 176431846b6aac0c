//! Types shared by Sonde's eBPF programs and user space
