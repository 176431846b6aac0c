//! Harness for the privileged end-to-end tests: a live capture in this process (real eBPF on the
//! running kernel), real servers (nginx, python) on loopback ports chosen per test, real clients.
//!
//! Every test filters the capture to its own ports, so the host's other traffic cannot disturb
//! it; the tests run one at a time (`--test-threads=1`, see `cargo xtask test`).

pub mod capture;
pub mod servers;
pub mod stack;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on loopback (IPv4 and IPv6 both free).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether this process may load eBPF programs (root).
pub fn privileged() -> bool {
    // SAFETY: plain libc call.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory for one test.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sonde-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}
