//! The programs live in the `sonde` binary target (built for the BPF target by the agent's
//! build script); this library target only lets the agent name the crate as a build dependency.
#![no_std]
