//! Real servers on loopback, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// nginx in the foreground with its pid file, logs and temp files in `dir`, stopped (SIGQUIT)
/// when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// Serving `dir/www` on 127.0.0.1 and [::1] at `port`, with a `/upload` location that
    /// reads and discards bodies up to 64 MiB.
    pub fn start(dir: &Path, port: u16) -> Nginx {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("www dir");
        Nginx::with_config(
            dir,
            port,
            "sendfile on;",
            &format!(
                "listen 127.0.0.1:{port};
        listen [::1]:{port};
        root {www};
        location /upload {{
            client_max_body_size 64m;
            client_body_buffer_size 64m;
            return 200 \"ok\\n\";
        }}",
                www = www.display()
            ),
        )
    }

    /// One worker, `http` directives `http_extra` and one `server` block of `server_body`;
    /// returns once `port` accepts connections.
    pub fn with_config(dir: &Path, port: u16, http_extra: &str, server_body: &str) -> Nginx {
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {http_extra}
    server {{
        {server_body}
    }}
}}
",
            dir = dir.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx starts (cargo xtask setup installs it)");
        wait_for_port(port);
        Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// Pid of the worker process (the one that does the socket I/O).
    pub fn worker_pid(&self) -> u32 {
        let master = self.child.id();
        crate::eventually(Duration::from_secs(5), "an nginx worker", || {
            children(master).into_iter().next()
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

/// `python3 -m http.server` (HTTP/1.0 answers) serving `dir` on 127.0.0.1:`port`.
pub struct PythonServer {
    child: Child,
    pub port: u16,
}

impl PythonServer {
    pub fn start(dir: &Path, port: u16) -> PythonServer {
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        wait_for_port(port);
        PythonServer { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(port: u16) {
    crate::eventually(
        Duration::from_secs(10),
        &format!("port {port} to listen"),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    );
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs curl with `args`, returning its pid and stdout; fails the test when curl fails.
pub fn curl(args: &[&str]) -> (u32, Vec<u8>) {
    let child = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl finishes");
    assert!(out.status.success(), "curl {args:?} failed: {}", out.status);
    (pid, out.stdout)
}
