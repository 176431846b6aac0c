//! Addresses of sockets the kernel side met mid-stream (opened before capture started), from
//! `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use sonde_model::Role;

/// One row of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel TCP state (0x0A = LISTEN).
    pub state: u8,
    pub inode: u64,
}

const TCP_LISTEN: u8 = 0x0A;

/// What procfs says about one socket fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Server when the local port is one the host listens on, else client.
    pub role: Role,
}

/// Resolves a process's socket fd under `proc_root` (normally `/proc`).
pub fn resolve(proc_root: &Path, tgid: u32, fd: i32) -> Option<Resolved> {
    let link = std::fs::read_link(
        proc_root
            .join(tgid.to_string())
            .join("fd")
            .join(fd.to_string()),
    )
    .ok()?;
    let link = link.to_str()?;
    let inode: u64 = link
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let net = proc_root.join(tgid.to_string()).join("net");
    let mut rows = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(net.join(table)) {
            rows.extend(parse_table(&text));
        }
    }
    let row = rows.iter().find(|r| r.inode == inode)?;
    let listening = rows
        .iter()
        .any(|r| r.state == TCP_LISTEN && r.local.port() == row.local.port());
    Some(Resolved {
        local: row.local,
        remote: row.remote,
        role: if listening {
            Role::Server
        } else {
            Role::Client
        },
    })
}

/// A listening socket of this host's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// From `/proc/net/tcp6` (an AF_INET6 socket, possibly dual-stack).
    pub ipv6_socket: bool,
    pub local: SocketAddr,
}

/// The listening sockets under `proc_root` (normally `/proc`), except those held by one of the
/// `excluded` processes (their clients must keep their own view, the server side is not
/// captured).
pub fn listeners(proc_root: &Path, excluded: &[u32]) -> Vec<Listener> {
    let mut held = std::collections::HashSet::new();
    for pid in excluded {
        let Ok(dir) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            {
                held.insert(inode);
            }
        }
    }
    let mut out = Vec::new();
    for (table, ipv6_socket) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(proc_root.join("net").join(table)) else {
            continue;
        };
        out.extend(
            parse_table(&text)
                .into_iter()
                .filter(|r| r.state == TCP_LISTEN && !held.contains(&r.inode))
                .map(|r| Listener {
                    ipv6_socket,
                    local: r.local,
                }),
        );
    }
    out
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`; malformed rows are skipped.
pub fn parse_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = parse_addr(f.get(1)?)?;
            let remote = parse_addr(f.get(2)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some(TcpRow {
                local,
                remote,
                state,
                inode,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4, host-endian words) or 32 hex digits (IPv6, four host-endian words).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   garbage line
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn ipv4_rows_parse_with_ports_states_and_inodes() {
        let rows = parse_table(TCP);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(rows[1].remote, "127.0.0.1:50000".parse().expect("addr"));
        assert_eq!(rows[0].state, TCP_LISTEN);
        assert_eq!(rows[2].inode, 3333);
    }

    #[test]
    fn ipv6_loopback_rows_parse() {
        let rows = parse_table(TCP6);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].local, "[::1]:80".parse().expect("addr"));
        assert_eq!(rows[0].remote, "[::1]:54321".parse().expect("addr"));
    }

    #[test]
    fn listeners_are_listed_except_those_of_excluded_processes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let v6 = std::net::TcpListener::bind("[::1]:0").expect("bind v6");
        let addr6 = v6.local_addr().expect("addr v6");
        // A connected socket on the same port is not a listener.
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let all = listeners(Path::new("/proc"), &[]);
        let ours: Vec<_> = all
            .iter()
            .filter(|l| l.local == addr || l.local == addr6)
            .collect();
        assert_eq!(
            ours,
            [
                &Listener {
                    ipv6_socket: false,
                    local: addr
                },
                &Listener {
                    ipv6_socket: true,
                    local: addr6
                }
            ]
        );
        let without_ours = listeners(Path::new("/proc"), &[std::process::id()]);
        assert!(
            !without_ours
                .iter()
                .any(|l| l.local == addr || l.local == addr6),
            "{without_ours:?}"
        );
    }

    #[test]
    fn own_listening_socket_resolves_through_proc() {
        // A real socket of this process: a connected pair on loopback.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        use std::os::fd::AsRawFd;
        let pid = std::process::id();
        let s = resolve(Path::new("/proc"), pid, server.as_raw_fd()).expect("server resolves");
        assert_eq!(s.local, addr);
        assert_eq!(s.role, Role::Server);
        let c = resolve(Path::new("/proc"), pid, client.as_raw_fd()).expect("client resolves");
        assert_eq!(c.remote, addr);
        assert_eq!(c.role, Role::Client);
        let file = std::fs::File::open("/proc/self/status").expect("open");
        assert_eq!(resolve(Path::new("/proc"), pid, file.as_raw_fd()), None);
    }
}
