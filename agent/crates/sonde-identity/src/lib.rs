//! Workload identity: which container, Kubernetes pod and workload, systemd unit or executable a
//! captured process is.
//!
//! - [`cgroup`] parses cgroup paths of containerd, CRI-O, docker and podman (container id,
//!   runtime, pod UID) and systemd units;
//! - [`runtime`] reads a container's name (and its pod, for CRI runtimes) from the runtime's state
//!   files;
//! - [`kube`] watches this node's pods, their owners and the cluster's Services through the
//!   Kubernetes API into an index;
//! - [`Resolver`] puts them together per process, cached by cgroup id and pid, so the pipeline
//!   reads no file per event and makes no API call.

pub mod cgroup;
pub mod config;
pub mod kube;
pub mod resolver;
pub mod runtime;

pub use config::{IdentityConfig, KubernetesMode};
pub use kube::{KubeIndex, KubeState, KubeStats};
pub use resolver::{Resolver, ResolverStats};
