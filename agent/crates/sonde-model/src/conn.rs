//! Connection identity.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One TCP connection as seen by one process: the kernel's (tgid, fd) plus a generation that the
/// eBPF side bumps every time the fd number is reused, so a reused fd is a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId {
    pub tgid: u32,
    pub fd: i32,
    pub generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}#{}", self.tgid, self.fd, self.generation)
    }
}

/// Which way bytes travelled, from the point of view of the process that owns the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Written by the process (write, send*, sendfile).
    Egress,
    /// Read by the process (read, recv*).
    Ingress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    pub fn index(self) -> usize {
        match self {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        }
    }

    pub fn opposite(self) -> Direction {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// Whether the owning process opened the connection (connect) or accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Role {
    Client,
    Server,
    /// The connection was opened before capture started (or the open was not seen); the protocol
    /// stage infers the role from which side sends a request.
    #[default]
    Unknown,
}

impl Role {
    /// Direction in which requests travel for this role, if known.
    pub fn request_direction(self) -> Option<Direction> {
        match self {
            Role::Client => Some(Direction::Egress),
            Role::Server => Some(Direction::Ingress),
            Role::Unknown => None,
        }
    }
}

/// The process that owns a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Kernel task name (`comm`, at most 15 bytes).
    pub comm: String,
    /// cgroup v2 id of the task; the workload-identity stage maps it to a container.
    pub cgroup_id: u64,
    /// Container, Kubernetes pod and workload, systemd unit or executable of the process, when
    /// the identity stage resolved them (`None` for recordings, pcaps and unresolved processes).
    #[serde(default)]
    pub workload: Option<Arc<Workload>>,
}

/// Container runtime whose cgroup layout a container id was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRuntime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Containerd => "containerd",
            ContainerRuntime::CriO => "cri-o",
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Podman => "podman",
        }
    }
}

/// The Kubernetes pod a container belongs to, and the workload that owns the pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct PodIdentity {
    pub uid: String,
    /// Empty until the pod is known from the Kubernetes API or the runtime's metadata.
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `ReplicaSet`, ... or `Pod`
    /// for a pod no controller owns; empty when unknown.
    pub workload_kind: String,
    pub workload_name: String,
    pub labels: BTreeMap<String, String>,
}

/// Who a process is beyond its pid. Every part is optional: a bare-metal process has a systemd
/// unit (or none) and an executable; a container has a runtime and id; a Kubernetes container
/// also a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Workload {
    /// The name services and callers are keyed by (see [`Workload::derive_name`]).
    pub name: String,
    pub runtime: Option<ContainerRuntime>,
    /// Full container id (64 hex digits for every runtime here).
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub pod: Option<PodIdentity>,
    /// systemd unit of a process outside containers (`nginx.service`).
    pub systemd_unit: Option<String>,
    /// Path of the executable (`/usr/sbin/nginx`).
    pub executable: Option<String>,
}

impl Workload {
    /// The most specific stable name: `deployment/shop/api` (kind in lower case, namespace,
    /// name) for a Kubernetes workload, `pod/shop/api-0` for a pod no controller owns,
    /// `podman/web` (runtime and container name, or the 12-digit short id) for other containers,
    /// the systemd unit (`nginx.service`), else the executable's file name; empty when nothing
    /// is known. Pods and containers of one workload share the name, so their endpoints merge.
    pub fn derive_name(&self) -> String {
        if let Some(pod) = &self.pod
            && !pod.name.is_empty()
        {
            return if pod.workload_name.is_empty() {
                format!("pod/{}/{}", pod.namespace, pod.name)
            } else {
                format!(
                    "{}/{}/{}",
                    pod.workload_kind.to_ascii_lowercase(),
                    pod.namespace,
                    pod.workload_name
                )
            };
        }
        if let Some(id) = &self.container_id {
            let runtime = self
                .runtime
                .map(ContainerRuntime::as_str)
                .unwrap_or("container");
            let name = match &self.container_name {
                Some(n) if !n.is_empty() => n.as_str(),
                _ => id.get(..12).unwrap_or(id),
            };
            return format!("{runtime}/{name}");
        }
        if let Some(unit) = &self.systemd_unit {
            return unit.clone();
        }
        self.executable
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .unwrap_or("")
            .to_owned()
    }

    /// Whether the workload is a Kubernetes pod's (its services are named by the workload alone,
    /// not by the Host header callers used).
    pub fn is_kubernetes(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| !p.name.is_empty())
    }
}

/// What is known about a connection: identity, owner and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnMeta {
    pub id: ConnId,
    pub role: Role,
    pub process: ProcessInfo,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

impl ConnMeta {
    /// The server side's address of the connection, if the role and addresses are known.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        match self.role {
            Role::Server => self.local,
            Role::Client => self.remote,
            Role::Unknown => None,
        }
    }

    /// The client side's address of the connection, if the role and addresses are known.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        match self.role {
            Role::Server => self.remote,
            Role::Client => self.local,
            Role::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recordings made before workloads existed hold a three-field process.
    #[test]
    fn a_process_recorded_without_workload_still_reads() {
        let old = rmp_serde::to_vec(&(7u32, "nginx", 42u64)).expect("encode");
        let p: ProcessInfo = rmp_serde::from_slice(&old).expect("decode");
        assert_eq!((p.pid, p.comm.as_str(), p.cgroup_id), (7, "nginx", 42));
        assert_eq!(p.workload, None);
        let mut w = Workload {
            runtime: Some(ContainerRuntime::Docker),
            container_id: Some("f".repeat(64)),
            ..Workload::default()
        };
        w.name = w.derive_name();
        assert_eq!(w.name, "docker/ffffffffffff", "short id without a name");
        let p = ProcessInfo {
            workload: Some(Arc::new(w)),
            ..p
        };
        let back: ProcessInfo =
            rmp_serde::from_slice(&rmp_serde::to_vec(&p).expect("encode")).expect("decode");
        assert_eq!(back, p);
    }
}
