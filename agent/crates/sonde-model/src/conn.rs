//! Connection identity.

use std::net::SocketAddr;

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
