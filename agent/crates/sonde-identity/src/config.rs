//! The `[identity]` section of the agent's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether to watch the Kubernetes API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KubernetesMode {
    /// When `KUBERNETES_SERVICE_HOST` is set (the agent runs in a pod).
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Map processes to containers, pods, systemd units and executables. Default: true.
    pub enabled: bool,
    /// Where the host's `/proc` is. Default: `/proc` (the agent runs with the host's PID
    /// namespace).
    pub proc_root: PathBuf,
    /// Mount point of the cgroup v2 hierarchy. Default: found in `/proc/self/mountinfo`
    /// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
    pub cgroup_root: Option<PathBuf>,
    /// Where the host's file system is, for the container runtimes' state files
    /// (`/var/lib/containers`, `/var/lib/docker`, `/run/containerd`, `/run/containers`).
    /// Default: `/`.
    pub host_root: PathBuf,
    /// cgroups remembered (oldest forgotten first). Default: 4096.
    pub max_cgroups: usize,
    /// Processes remembered (oldest forgotten first). Default: 16384.
    pub max_processes: usize,
    /// Watch this node's pods, their owners and the cluster's Services. Default: auto.
    pub kubernetes: KubernetesMode,
    /// This node's name, for the pod watch's field selector. Default: `$NODE_NAME` (set from the
    /// downward API by the DaemonSet); without one every pod is watched.
    pub node_name: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            enabled: true,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: None,
            host_root: PathBuf::from("/"),
            max_cgroups: 4096,
            max_processes: 16384,
            kubernetes: KubernetesMode::Auto,
            node_name: None,
        }
    }
}

impl IdentityConfig {
    /// Whether the Kubernetes watch should run, given the environment.
    pub fn kubernetes_enabled(&self) -> bool {
        self.enabled
            && match self.kubernetes {
                KubernetesMode::On => true,
                KubernetesMode::Off => false,
                KubernetesMode::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            }
    }

    /// The node name from the configuration, else `$NODE_NAME`.
    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }
}
