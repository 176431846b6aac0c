//! Real TLS handshakes for tests: `openssl s_server` and `s_client` on loopback with a relay
//! between them that records every read, per direction, exactly as socket reads return them.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A certificate and its key, as PEM files in a temporary directory.
pub struct TestCert {
    dir: tempfile::TempDir,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub common_name: String,
}

impl TestCert {
    /// A self-signed certificate for `common_name` valid over `[not_before, not_after]` (Unix
    /// seconds), which may lie in the past or the future.
    pub fn self_signed(common_name: &str, not_before: i64, not_after: i64) -> TestCert {
        let mut params = rcgen::CertificateParams::new(vec![common_name.to_string()])
            .unwrap_or_else(|e| panic!("certificate params: {e}"));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Sonde Test");
        let at = |t: i64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(t.max(0) as u64);
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        // ECDSA P-256 (ring, rcgen's backend, does not generate RSA keys).
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("self-signing: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join("cert.pem"), cert.pem())
            .unwrap_or_else(|e| panic!("writing cert: {e}"));
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem())
            .unwrap_or_else(|e| panic!("writing key: {e}"));
        TestCert {
            dir,
            not_before,
            not_after,
            common_name: common_name.to_string(),
        }
    }

    /// Valid from a day ago for a year.
    pub fn valid(common_name: &str) -> TestCert {
        let now = unix_now();
        TestCert::self_signed(common_name, now - 86_400, now + 365 * 86_400)
    }

    pub fn cert_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_path(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the relay saw of one connection: every read, in order, per direction.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    /// Bytes the client sent, one entry per read.
    pub client_to_server: Vec<Vec<u8>>,
    pub server_to_client: Vec<Vec<u8>>,
    /// s_client's output (its handshake summary), for failure messages.
    pub client_output: String,
}

impl Recording {
    pub fn client_bytes(&self) -> Vec<u8> {
        self.client_to_server.concat()
    }

    pub fn server_bytes(&self) -> Vec<u8> {
        self.server_to_client.concat()
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one handshake (and a short request) between `openssl s_server <server_args>` serving
/// `cert` and `openssl s_client <client_args>`, through a recording relay on loopback.
pub fn openssl_handshake(cert: &TestCert, server_args: &[&str], client_args: &[&str]) -> Recording {
    let mut server = Command::new("openssl");
    server
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-www",
            "-naccept",
            "1",
        ])
        .arg("-cert")
        .arg(cert.cert_path())
        .arg("-key")
        .arg(cert.key_path())
        .args(server_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = KillOnDrop(
        server
            .spawn()
            .unwrap_or_else(|e| panic!("openssl s_server: {e} (is openssl installed?)")),
    );
    // s_server prints `ACCEPT` once listening; with port 0 the port is read from /proc.
    let stdout = server
        .0
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
            panic!("s_server did not start listening");
        }
        if line.starts_with("ACCEPT") {
            break;
        }
    }
    let server_port = listening_port(server.0.id()).unwrap_or_else(|| panic!("s_server port"));

    let relay = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("relay bind: {e}"));
    let relay_port = relay.local_addr().map(|a| a.port()).unwrap_or(0);
    let recording = Arc::new(Mutex::new(Recording::default()));
    let rec = recording.clone();
    let relay_thread = std::thread::spawn(move || {
        let Ok((client, _)) = relay.accept() else {
            return;
        };
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", server_port)) else {
            return;
        };
        let pump =
            |mut from: TcpStream, mut to: TcpStream, up: bool, rec: Arc<Mutex<Recording>>| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let _ = from.set_read_timeout(Some(Duration::from_secs(10)));
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if let Ok(mut r) = rec.lock() {
                            let dir = if up {
                                &mut r.client_to_server
                            } else {
                                &mut r.server_to_client
                            };
                            dir.push(buf[..n].to_vec());
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
        let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
            return;
        };
        let a = pump(client, u2, true, rec.clone());
        let b = pump(upstream, c2, false, rec);
        let _ = a.join();
        let _ = b.join();
    });

    let mut client = Command::new("openssl");
    client
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{relay_port}"))
        .args(client_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = KillOnDrop(client.spawn().unwrap_or_else(|e| panic!("s_client: {e}")));
    if let Some(mut stdin) = client.0.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
        // Closing stdin ends s_client after the handshake and the request.
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.0.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    if let Some(mut o) = client.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = client.0.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    drop(client);
    drop(server);
    let _ = relay_thread.join();
    let mut r = recording.lock().map(|r| r.clone()).unwrap_or_default();
    r.client_output = out;
    r
}

/// The TCP port process `pid` listens on, from /proc/PID/net/tcp and its socket inodes.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}
