//! TLS plaintext on the real kernel: nginx over TLS (HTTP/1.1 and HTTP/2 by ALPN) with a
//! certificate made by openssl in the test, driven by curl, python `requests`, nghttp,
//! `openssl s_client` and a client linked statically against libssl.a; a Go HTTPS server and
//! client (crypto/tls, HTTP/1.1 and HTTP/2) built in the test; the uprobes' plaintext
//! goes through the agent's pipeline and comes out as the exchanges the clients made, on the
//! connection the syscall hooks saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sonde_agent::config::AgentConfig;
use sonde_agent::pipeline::{Analyzer, PipelineStats, Sink};
use sonde_e2e::capture::{Capture, Conn};
use sonde_e2e::servers::{Nginx, wait_for_port};
use sonde_e2e::{eventually, free_port, scratch_dir};
use sonde_inventory::CallInfo;
use sonde_model::{
    Anomaly, CaptureEvent, ConnId, Direction, Exchange, ExchangeFlags, HttpVersion, Role, Source,
};
use sonde_protocol::TrackerStats;

const WAIT: Duration = Duration::from_secs(20);
/// Size of `/big`: several TLS records and more than one SSL_read per direction.
const BIG: usize = 150_000;

/// nginx with a self-signed certificate, `listen ... ssl http2` (ALPN offers h2 and
/// http/1.1): `/a`, `/b` and `/big` are files, `/missing` answers 404 and `/echo` takes a body.
struct TlsNginx(Nginx);

impl TlsNginx {
    fn start(dir: &Path, port: u16) -> TlsNginx {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("www dir");
        std::fs::write(www.join("a"), "body of a\n").expect("write a");
        std::fs::write(www.join("b"), "the body of b\n").expect("write b");
        std::fs::write(www.join("big"), vec![b'x'; BIG]).expect("write big");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (cargo xtask setup installs it)");
        assert!(ok.success(), "openssl req failed");
        TlsNginx(Nginx::with_config(
            dir,
            port,
            "sendfile off;",
            &format!(
                "listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
        location = /missing {{ return 404 \"missing\\n\"; }}
        location = /echo {{ client_max_body_size 1m; return 200 \"echoed\\n\"; }}",
                www = www.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        ))
    }

    fn worker_pid(&self) -> u32 {
        self.0.worker_pid()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.0.port)
    }
}

/// What a client saw of one call: method, path, status, response body bytes.
type Call = (String, String, u16, u64);

fn call(method: &str, path: &str, status: u16, body: u64) -> Call {
    (method.to_string(), path.to_string(), status, body)
}

/// Runs a client to completion; returns its pid and stdout.
fn run(cmd: &mut Command) -> (u32, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} runs: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("client finishes");
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Collect(Vec<Exchange>);

impl Sink for Collect {
    fn exchange(&mut self, ex: &Exchange, _: &CallInfo) {
        self.0.push(ex.clone());
    }
    fn anomalies(&mut self, _: Vec<Anomaly>) {}
}

/// The agent's own pipeline over the captured events (the ciphertext filter included).
fn analyse(events: Vec<CaptureEvent>) -> (Vec<Exchange>, TrackerStats, PipelineStats) {
    let mut cfg = AgentConfig::default();
    // A process filter keeps both views of a local call (client and server side).
    cfg.capture.pids = vec![1];
    let mut analyzer = Analyzer::new(&cfg).expect("pipeline");
    let mut sink = Collect(Vec::new());
    analyzer.on_events(events, &mut sink);
    analyzer.flush(&mut sink);
    let (tracker, pipeline) = (analyzer.tracker().stats(), analyzer.stats().clone());
    (sink.0, tracker, pipeline)
}

fn calls_of(xs: &[Exchange], pid: u32) -> Vec<Call> {
    let mut calls: Vec<Call> = xs
        .iter()
        .filter(|x| x.conn.process.pid == pid)
        .map(|x| {
            let resp = x.response.as_ref();
            (
                x.request.method.to_string(),
                x.request.path.clone(),
                resp.map(|r| r.status).unwrap_or(0),
                resp.map(|r| r.body.wire_len).unwrap_or(0),
            )
        })
        .collect();
    calls.sort();
    calls
}

/// Waits until the pipeline over the events so far has `n` exchanges of `pid` with responses.
fn exchanges_of(cap: &Capture, pid: u32, n: usize) -> Vec<Exchange> {
    let start = Instant::now();
    loop {
        let (xs, tracker, _) = analyse(cap.events());
        let mine: Vec<Exchange> = xs
            .into_iter()
            .filter(|x| x.conn.process.pid == pid && x.response.is_some())
            .collect();
        if mine.len() >= n {
            return mine;
        }
        if start.elapsed() > WAIT {
            // What the capture has of the process, to tell a kernel-side loss from a parser's.
            let conns = cap.connections();
            for (id, c) in conns
                .iter()
                .filter(|(_, c)| c.open.as_ref().is_some_and(|o| o.process.pid == pid))
            {
                for dir in [Direction::Egress, Direction::Ingress] {
                    let by_source = |s: Source| {
                        let v: Vec<_> = c.chunks(dir).iter().filter(|ch| ch.source == s).collect();
                        (v.len(), v.iter().map(|ch| ch.len).sum::<u64>())
                    };
                    eprintln!(
                        "{id} {dir:?}: syscall {:?} tls {:?} closed {}",
                        by_source(Source::Syscall),
                        by_source(Source::Tls),
                        c.closed
                    );
                }
            }
            panic!(
                "{} of {n} exchanges of pid {pid} after {WAIT:?}: {mine:?}\nkernel {:?}\ntls {:?}\ntracker {tracker:?}",
                mine.len(),
                cap.counters(),
                cap.tls_stats()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The connection's syscall-side view: it opens with a TLS ClientHello record (the handshake
/// the kernel ships for posture analysis), ends its ciphertext within 16 KiB per direction,
/// and carries the plaintext too (source TLS) under the same identity.
fn assert_joined_to_syscall_side(conns: &BTreeMap<ConnId, Conn>, id: ConnId) {
    let conn = conns
        .get(&id)
        .unwrap_or_else(|| panic!("connection {id} seen by the syscall hooks"));
    let open = conn.open.as_ref().expect("open event of the connection");
    assert!(open.local.is_some() && open.remote.is_some(), "{open:?}");
    let (req_dir, resp_dir) = match open.role {
        Role::Client => (Direction::Egress, Direction::Ingress),
        _ => (Direction::Ingress, Direction::Egress),
    };
    for dir in [req_dir, resp_dir] {
        let cipher: Vec<_> = conn
            .chunks(dir)
            .iter()
            .filter(|c| c.source == Source::Syscall)
            .collect();
        let plain = conn
            .chunks(dir)
            .iter()
            .filter(|c| c.source == Source::Tls)
            .count();
        assert!(plain > 0, "{id} {dir:?}: plaintext chunks");
        let first = cipher
            .iter()
            .min_by_key(|c| c.offset)
            .unwrap_or_else(|| panic!("{id} {dir:?}: handshake bytes shipped"));
        assert_eq!(first.offset, 0);
        assert_eq!(first.data.first(), Some(&0x16), "a handshake record first");
        let total: u64 = cipher.iter().map(|c| c.len).sum();
        assert!(total <= 16 * 1024, "{id} {dir:?}: {total} ciphertext bytes");
    }
    let hello = &conn
        .chunks(req_dir)
        .iter()
        .filter(|c| c.source == Source::Syscall)
        .min_by_key(|c| c.offset)
        .expect("client hello")
        .data;
    assert_eq!(hello.get(5), Some(&1), "handshake type client_hello");
}

fn assert_clean(tracker: &TrackerStats, pipeline: &PipelineStats, cap: &Capture) {
    assert_eq!(tracker.parse_errors, 0, "{tracker:?}");
    assert_eq!(
        tracker.non_http_connections, 0,
        "no ciphertext parsed: {tracker:?}"
    );
    assert_eq!(tracker.http2.frame_errors, 0, "{tracker:?}");
    assert_eq!(tracker.http2.preface_mismatches, 0, "{tracker:?}");
    assert_eq!(tracker.resyncs, 0, "{tracker:?}");
    assert!(pipeline.tls_ciphertext_chunks > 0, "{pipeline:?}");
    let counters = cap.counters();
    for (name, v) in counters.drops() {
        // Host-wide, before any port is known: other processes of this host (a TLS client on
        // memory BIOs, such as node) count there too. Ours are proven read by their exchanges.
        if name != "tls_fd_unknown" {
            assert_eq!(v, 0, "kernel drop counter {name}");
        }
    }
    assert!(counters.get("tls_plaintext_calls") > 0);
}

fn assert_tls_and_ports(xs: &[Exchange], port: u16) {
    for x in xs {
        assert!(x.flags.contains(ExchangeFlags::TLS), "{:?}", x.flags);
        assert_eq!(
            x.conn.server_addr().map(|a| a.port()),
            Some(port),
            "{:?}",
            x.conn
        );
    }
}

#[test]
fn curl_over_tls_http1_and_h2_is_rebuilt_from_plaintext_on_the_syscall_connection() {
    let dir = scratch_dir("tls-curl");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let cap = Capture::start(&[port]);

    let (h1, out) = run(Command::new("curl")
        .args(["-sSk", "--http1.1"])
        .arg(nginx.url("/a"))
        .arg(nginx.url("/missing"))
        .arg(nginx.url("/big"))
        .args(["--next", "-sSk", "--http1.1", "-d", "name=value&more=1"])
        .arg(nginx.url("/echo")));
    assert_eq!(out.len(), 10 + 8 + BIG + 7, "curl's bodies");
    let (h2, _) = run(Command::new("curl")
        .args(["-sSk", "--http2"])
        .arg(nginx.url("/b"))
        .arg(nginx.url("/missing")));

    exchanges_of(&cap, h2, 2);
    exchanges_of(&cap, worker, 6);
    let (xs, tracker, pipeline) = analyse(cap.events());
    let expected_h1 = vec![
        call("GET", "/a", 200, 10),
        call("GET", "/big", 200, BIG as u64),
        call("GET", "/missing", 404, 8),
        call("POST", "/echo", 200, 7),
    ];
    let seen_h1 = calls_of(&xs, h1);
    assert_eq!(seen_h1, expected_h1);
    let expected_h2 = vec![call("GET", "/b", 200, 14), call("GET", "/missing", 404, 8)];
    assert_eq!(calls_of(&xs, h2), expected_h2);
    let mut server_side = expected_h1.clone();
    server_side.extend(expected_h2);
    server_side.sort();
    assert_eq!(
        calls_of(&xs, worker),
        server_side,
        "nginx's view of the same calls"
    );

    for x in xs.iter().filter(|x| x.conn.process.pid == h2) {
        assert_eq!(x.version, HttpVersion::Http2, "ALPN h2");
    }
    for x in xs.iter().filter(|x| x.conn.process.pid == h1) {
        assert_eq!(x.version, HttpVersion::Http11);
    }
    assert_tls_and_ports(&xs, port);
    let conns = cap.connections();
    for x in &xs {
        assert_joined_to_syscall_side(&conns, x.conn.id);
    }
    // Both sides of one call name each other.
    let client = xs
        .iter()
        .find(|x| x.conn.process.pid == h2)
        .expect("h2 call");
    let server = xs
        .iter()
        .find(|x| x.conn.process.pid == worker && x.conn.remote == client.conn.local)
        .expect("nginx's side of curl's h2 connection");
    assert_eq!(server.conn.role, Role::Server);
    assert_eq!(server.conn.process.comm, "nginx");
    assert_clean(&tracker, &pipeline, &cap);
}

/// Two connections of one python client, 30 and 10 calls, one after the other: nginx frees the
/// first connection's `SSL*` and may hand its address (and the fd) to the second, whose calls
/// must still be read whole and joined to the second connection, handshake included.
const KEPT_ALIVE_CLIENT: &str = "import http.client, ssl
ctx = ssl._create_unverified_context()
seen = []
for n in (30, 10):
    c = http.client.HTTPSConnection('127.0.0.1', PORT, context=ctx)
    for i in range(n):
        c.request('GET', '/a' if i % 2 == 0 else '/missing')
        r = c.getresponse()
        seen.append(len(r.read()))
    c.close()
print(len(seen), sum(seen))
";

#[test]
fn kept_alive_tls_connections_one_after_another_are_read_whole_on_their_own_connections() {
    let dir = scratch_dir("tls-kept-alive");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let cap = Capture::start(&[port]);
    let script = KEPT_ALIVE_CLIENT.replace("PORT", &port.to_string());
    let (_, out) = run(Command::new("python3").args(["-c", &script]));
    assert_eq!(
        out.trim(),
        "40 360",
        "20 x /a (10 bytes) and 20 x /missing (8)"
    );

    exchanges_of(&cap, worker, 40);
    let (xs, tracker, pipeline) = analyse(cap.events());
    let mut expected = vec![call("GET", "/a", 200, 10); 20];
    expected.extend(vec![call("GET", "/missing", 404, 8); 20]);
    assert_eq!(calls_of(&xs, worker), expected);
    let conns = cap.connections();
    let mut per_conn: BTreeMap<ConnId, usize> = BTreeMap::new();
    for x in xs.iter().filter(|x| x.conn.process.pid == worker) {
        *per_conn.entry(x.conn.id).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_conn.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![10, 30], "calls per connection");
    for id in per_conn.keys() {
        assert_joined_to_syscall_side(&conns, *id);
    }
    assert_clean(&tracker, &pipeline, &cap);
}

#[test]
fn big_bodies_over_tls_arrive_whole_in_chunks_with_exact_offsets() {
    let dir = scratch_dir("tls-big");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let cap = Capture::start(&[port]);
    let upload = dir.join("upload");
    std::fs::write(&upload, vec![b'u'; 300_000]).expect("upload body");
    let (pid, out) = run(Command::new("curl")
        .args(["-sSk", "--http1.1"])
        .arg(nginx.url("/big"))
        .arg("--next")
        .args(["-sSk", "--http1.1", "--data-binary"])
        .arg(format!("@{}", upload.display()))
        .arg(nginx.url("/echo")));
    assert_eq!(out.len(), BIG + 7);
    let xs = exchanges_of(&cap, pid, 2);
    exchanges_of(&cap, worker, 2);
    let calls = calls_of(&xs, pid);
    assert_eq!(
        calls,
        vec![
            call("GET", "/big", 200, BIG as u64),
            call("POST", "/echo", 200, 7)
        ]
    );
    let post = xs
        .iter()
        .find(|x| x.request.method.as_str() == "POST")
        .expect("the upload");
    assert_eq!(post.request.body.wire_len, 300_000);
    let (_, tracker, _) = analyse(cap.events());
    // With the kernel side's counters: a gap they count as a drop is a different failure from
    // one they do not.
    assert_eq!(
        tracker.stream.gaps,
        0,
        "{tracker:?}\nkernel {:?}\ntls {:?}",
        cap.counters(),
        cap.tls_stats()
    );
    // The plaintext byte stream of curl's connection tiles from 0: the response is whole.
    let conns = cap.connections();
    let conn = conns.get(&xs[0].conn.id).expect("curl's connection");
    let plain: u64 = conn
        .chunks(Direction::Ingress)
        .iter()
        .filter(|c| c.source == Source::Tls)
        .map(|c| c.data.len() as u64)
        .sum();
    assert!(plain >= BIG as u64, "{plain} plaintext bytes captured");
}

#[test]
fn python_requests_nghttp_and_openssl_s_client_are_read_like_curl() {
    let dir = scratch_dir("tls-clients");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let cap = Capture::start(&[port]);

    // CPython's ssl module calls SSL_read_ex / SSL_write_ex.
    let script = format!(
        "import requests, urllib3\n\
         urllib3.disable_warnings()\n\
         s = requests.Session()\n\
         r1 = s.get('{a}', verify=False)\n\
         r2 = s.post('{echo}', data=b'x' * 5000, verify=False)\n\
         r3 = s.get('{missing}', verify=False)\n\
         print(len(r1.content), len(r2.content), r3.status_code)\n",
        a = nginx.url("/a"),
        echo = nginx.url("/echo"),
        missing = nginx.url("/missing"),
    );
    let (py, out) = run(Command::new("python3").args(["-c", &script]));
    assert_eq!(out.trim(), "10 7 404");
    let (ng, _) = run(Command::new("nghttp")
        .args(["-n"])
        .arg(nginx.url("/a"))
        .arg(nginx.url("/b")));
    let (s_client, _) = {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client runs");
        let pid = child.id();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"GET /b HTTP/1.1\r\nHost: s-client.test\r\nConnection: close\r\n\r\n")
            .expect("request written");
        let out = child.wait_with_output().expect("s_client finishes");
        (pid, String::from_utf8_lossy(&out.stdout).into_owned())
    };

    exchanges_of(&cap, py, 3);
    exchanges_of(&cap, ng, 2);
    exchanges_of(&cap, s_client, 1);
    exchanges_of(&cap, worker, 6);
    let (xs, tracker, pipeline) = analyse(cap.events());
    assert_eq!(
        calls_of(&xs, py),
        vec![
            call("GET", "/a", 200, 10),
            call("GET", "/missing", 404, 8),
            call("POST", "/echo", 200, 7),
        ]
    );
    let post = xs
        .iter()
        .find(|x| x.conn.process.pid == py && x.request.method.as_str() == "POST")
        .expect("python's POST");
    assert_eq!(post.request.body.wire_len, 5000);
    assert_eq!(
        calls_of(&xs, ng),
        vec![call("GET", "/a", 200, 10), call("GET", "/b", 200, 14)]
    );
    for x in xs.iter().filter(|x| x.conn.process.pid == ng) {
        assert_eq!(x.version, HttpVersion::Http2);
    }
    assert_eq!(calls_of(&xs, s_client), vec![call("GET", "/b", 200, 14)]);
    assert_eq!(
        xs.iter()
            .find(|x| x.conn.process.pid == s_client)
            .and_then(|x| x.request_header("host")),
        Some("s-client.test")
    );
    assert_eq!(calls_of(&xs, worker).len(), 6, "nginx saw every call");
    assert_tls_and_ports(&xs, port);
    let conns = cap.connections();
    for x in &xs {
        assert_joined_to_syscall_side(&conns, x.conn.id);
    }
    assert_clean(&tracker, &pipeline, &cap);
}

/// Builds the static client of tests/clients (OpenSSL from libssl.a, in the executable's own
/// symbol table): a TLS library file the agent has never seen.
fn static_client(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/static_tls_client.c");
    let out = dir.join("static_tls_client");
    let lib = |name: &str| {
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
        ]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} (libssl-dev, installed by cargo xtask setup)"))
    };
    let ok = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .arg(lib("libssl.a"))
        .arg(lib("libcrypto.a"))
        .args(["-lpthread", "-ldl"])
        .status()
        .expect("gcc runs");
    assert!(ok.success(), "building the static client");
    out
}

#[test]
fn a_static_openssl_client_started_after_the_agent_is_attached_and_read() {
    let dir = scratch_dir("tls-static");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let client = static_client(&dir);
    let cap = Capture::start(&[port]);
    let attached_before = stat(&cap, "objects_attached");

    // The client waits 300 ms after its exec before it connects: the attach delay measured
    // below must fit in that.
    let started = Instant::now();
    let (pid, out) = run(Command::new(&client)
        .arg(port.to_string())
        .args(["/a", "300"]));
    let ran_for = started.elapsed();
    assert!(out.trim().parse::<u64>().expect("bytes read") > 10);
    let xs = exchanges_of(&cap, pid, 1);
    assert_eq!(calls_of(&xs, pid), vec![call("GET", "/a", 200, 10)]);
    assert_eq!(
        xs[0].request_header("user-agent"),
        Some("static-tls-client")
    );
    assert!(xs[0].flags.contains(ExchangeFlags::TLS));
    exchanges_of(&cap, worker, 1);
    let delay_ns = stat(&cap, "last_attach_delay_ns");
    eprintln!(
        "attach delay after exec: {:.2} ms (client ran {ran_for:?}; max seen {:.2} ms)",
        delay_ns as f64 / 1e6,
        stat(&cap, "max_attach_delay_ns") as f64 / 1e6
    );
    assert!(delay_ns > 0 && delay_ns < 300_000_000, "{delay_ns} ns");
    assert!(stat(&cap, "objects_attached") >= attached_before);
    let conns = cap.connections();
    assert_joined_to_syscall_side(&conns, xs[0].conn.id);

    // Once the client has exited and the grace period passed, its executable is detached.
    eventually(WAIT, "the static client's probes detached", || {
        (stat(&cap, "objects_detached") >= 1).then_some(())
    });
}

fn stat(cap: &Capture, name: &str) -> u64 {
    cap.tls_stats()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

#[test]
fn new_processes_stop_being_rescanned_once_a_tls_library_is_found_or_they_are_static() {
    let dir = scratch_dir("tls-rescans");
    let go = go_tls_program(&dir.join("go_idle"), "");
    let cap = Capture::start(&[free_port()]);
    let (scanned, skipped) = (
        stat(&cap, "processes_scanned"),
        stat(&cap, "rescans_skipped"),
    );
    // Two processes alive past the last rescan (3 s after the exec by default): a static Go
    // executable (settled by its first scan) and `openssl enc` waiting on its stdin (libssl.so,
    // mapped by the loader within the first rescans). A dynamic process with no TLS library
    // keeps every rescan, since it could still dlopen one.
    let mut children: Vec<Child> = [
        Command::new(&go).args(["get", "h1", "4500", "0"]).spawn(),
        Command::new("openssl")
            .args(["enc", "-aes-128-cbc", "-pbkdf2", "-pass", "pass:x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn(),
    ]
    .into_iter()
    .map(|c| c.expect("the process starts"))
    .collect();
    std::thread::sleep(Duration::from_millis(3600));
    let skipped = eventually(WAIT, "the rescans of settled processes skipped", || {
        let n = stat(&cap, "rescans_skipped") - skipped;
        (n >= 10).then_some(n)
    });
    let scanned = stat(&cap, "processes_scanned") - scanned;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Without the policy nothing is skipped (the Go process alone skips 6, openssl 4 or 5). The
    // counters are host-wide, so the other processes of a busy host add to both.
    eprintln!("{scanned} scans, {skipped} rescans skipped while the two processes ran");
}

#[test]
fn a_huge_ssl_write_is_chunked_like_a_syscall_and_the_rest_travels_as_a_length() {
    let dir = scratch_dir("tls-huge");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let cap = Capture::start(&[port]);
    // One SSL_write_ex of the whole request (head and a 1 MB body): sendall hands it over in
    // one call, which writes it all on a blocking socket.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         s.sendall(b'POST /echo HTTP/1.1\\r\\nHost: huge.test\\r\\nContent-Length: 1000000\\r\\n'\n\
         b'Connection: close\\r\\n\\r\\n' + b'z' * 1000000)\n\
         data = b''\n\
         while True:\n\
         \x20   d = s.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   data += d\n\
         print(data.split(b'\\r\\n')[0].decode())\n"
    );
    let (py, out) = run(Command::new("python3").args(["-c", &script]));
    assert_eq!(out.trim(), "HTTP/1.1 200 OK");
    let client = exchanges_of(&cap, py, 1);
    let server = exchanges_of(&cap, worker, 1);
    let body = &client[0].request.body;
    assert_eq!(body.wire_len, 1_000_000);
    assert!(
        body.missing_len > 0 && body.missing_len < 1_000_000,
        "the client's one huge SSL_write is copied up to the per-call cap: {body:?}"
    );
    assert_eq!(client[0].status(), Some(200));
    // nginx reads it in record-sized SSL_reads: all of it arrives.
    assert_eq!(server[0].request.body.wire_len, 1_000_000);
    assert_eq!(server[0].request.body.missing_len, 0);
    let counters = cap.counters();
    assert!(counters.get("cap_exceeded_calls") >= 1);
    let (_, tracker, _) = analyse(cap.events());
    assert_eq!(tracker.parse_errors, 0, "{tracker:?}");
}

#[test]
fn with_the_attachment_bound_at_zero_nothing_is_attached_and_ciphertext_stays_unparsed() {
    let dir = scratch_dir("tls-bound");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let client = static_client(&dir);
    let mut cfg = sonde_agent::config::CaptureConfig {
        ports: vec![port],
        ..Default::default()
    };
    cfg.tls.max_objects = 0;
    let cap = Capture::start_with(cfg);
    assert!(stat(&cap, "objects_refused") >= 1, "nginx's libssl refused");
    assert_eq!(stat(&cap, "objects_attached"), 0);
    let (pid, _) = run(Command::new(&client)
        .arg(port.to_string())
        .args(["/a", "100"]));
    eventually(WAIT, "the static client refused too", || {
        let conns = cap.connections();
        conns
            .values()
            .any(|c| c.open.as_ref().is_some_and(|o| o.process.pid == pid) && c.closed)
            .then_some(())
    });
    let (xs, tracker, pipeline) = analyse(cap.events());
    assert!(calls_of(&xs, pid).is_empty() && calls_of(&xs, worker).is_empty());
    assert!(
        pipeline.tls_ciphertext_chunks > 0,
        "the handshakes were seen"
    );
    assert_eq!(tracker.parse_errors, 0);
    assert_eq!(
        tracker.non_http_connections, 0,
        "ciphertext never reached the parsers"
    );
    assert_eq!(cap.counters().get("tls_plaintext_calls"), 0);
}

#[test]
fn many_short_lived_tls_processes_share_one_attachment() {
    let dir = scratch_dir("tls-many");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let client = static_client(&dir);
    let cap = Capture::start(&[port]);
    let before = stat(&cap, "objects_attached");
    let mut children: Vec<Child> = (0..24)
        .map(|_| {
            Command::new(&client)
                .arg(port.to_string())
                .args(["/b", "200"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("static client runs")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for c in &mut children {
        assert!(c.wait().expect("client exits").success());
    }
    // Every one of them was read, through one attachment of their common executable.
    exchanges_of(&cap, worker, 24);
    let (xs, _, _) = analyse(cap.events());
    for pid in pids {
        assert_eq!(
            calls_of(&xs, pid),
            vec![call("GET", "/b", 200, 14)],
            "client {pid}"
        );
    }
    let attached = stat(&cap, "objects_attached");
    assert!(
        attached <= before + 1,
        "{before} files attached before, {attached} after 24 processes of one executable"
    );
    // Then it is let go: no stale probes once the last of them exited.
    eventually(WAIT, "the executable detached", || {
        (stat(&cap, "objects_detached") >= 1).then_some(())
    });
}

/// Builds tests/clients/go_tls.go (Go's own crypto/tls) with `ldflags` into `out`. The Go build
/// cache is shared by the tests of one target dir: the standard library is compiled once.
fn go_tls_program(out: &Path, ldflags: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/go_tls.go");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let built = Command::new("go")
        .args(["build", &format!("-ldflags={ldflags}"), "-o"])
        .arg(out)
        .arg(&src)
        .env("GOCACHE", &cache)
        .env("GOPATH", cache.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go runs (cargo xtask setup installs golang-go)");
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out.to_path_buf()
}

/// The Go server of tests/clients/go_tls.go on `port`, with nginx's certificate from `dir`.
struct GoTlsServer(Child);

impl GoTlsServer {
    fn start(exe: &Path, dir: &Path, port: u16) -> GoTlsServer {
        let child = Command::new(exe)
            .arg("serve")
            .arg(format!("127.0.0.1:{port}"))
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .stdout(Stdio::null())
            .spawn()
            .expect("the Go server starts");
        wait_for_port(port);
        GoTlsServer(child)
    }
}

impl Drop for GoTlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the Go client: `proto` h1 or h2, waiting `wait_ms` before the first call.
fn go_get(exe: &Path, proto: &str, wait_ms: u32, requests: &[String]) -> (u32, String) {
    run(Command::new(exe)
        .args(["get", proto, &wait_ms.to_string(), "0"])
        .args(requests))
}

#[test]
fn go_crypto_tls_servers_and_clients_over_http1_and_h2_are_read_from_plaintext() {
    let dir = scratch_dir("tls-go");
    let nginx_port = free_port();
    let nginx = TlsNginx::start(&dir, nginx_port);
    let worker = nginx.worker_pid();
    let server_exe = go_tls_program(&dir.join("go_tls_server"), "");
    let go_port = free_port();
    let go_server = GoTlsServer::start(&server_exe, &dir, go_port);
    // The client is another file (inode): attached after its exec, not at the agent's start.
    let client_exe = go_tls_program(&dir.join("go_tls_client"), "");
    let cap = Capture::start(&[nginx_port, go_port]);
    // With the server's probes in place (int3 in every mapping of the file), a second look at
    // the file, as a second agent would take, still finds the same functions.
    let sonde_agent::capture::tls::go::GoTls::Found(go) =
        sonde_agent::capture::tls::elf::find_entry_points(&server_exe)
            .expect("ELF")
            .go
    else {
        panic!("crypto/tls located while probed");
    };
    assert!(!go.read.returns.is_empty());
    let go_url = |p: &str| format!("GET https://127.0.0.1:{go_port}{p}");
    let nginx_url = |p: &str| format!("GET {}", nginx.url(p));

    // The client waits 1 s after its exec: its probes must be attached by then (a loaded
    // 2-core machine has taken more than 300 ms).
    let (h1, out) = go_get(
        &client_exe,
        "h1",
        1000,
        &[
            go_url("/a"),
            go_url("/missing"),
            go_url("/big"),
            format!("POST https://127.0.0.1:{go_port}/echo"),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "HTTP/1.1 200 10",
            "HTTP/1.1 404 8",
            &format!("HTTP/1.1 200 {BIG}"),
            "HTTP/1.1 200 7"
        ]
    );
    let delay_ns = stat(&cap, "last_attach_delay_ns");
    let (h2, out) = go_get(
        &client_exe,
        "h2",
        0,
        &[
            go_url("/a"),
            format!("POST https://127.0.0.1:{go_port}/echo"),
        ],
    );
    assert_eq!(out, "HTTP/2.0 200 10\nHTTP/2.0 200 7\n");
    let (to_nginx, out) = go_get(
        &client_exe,
        "h2",
        0,
        &[nginx_url("/b"), nginx_url("/missing")],
    );
    assert_eq!(out, "HTTP/2.0 200 14\nHTTP/2.0 404 8\n");

    let go_pid = go_server.0.id();
    exchanges_of(&cap, h1, 4);
    exchanges_of(&cap, h2, 2);
    exchanges_of(&cap, to_nginx, 2);
    exchanges_of(&cap, go_pid, 6);
    exchanges_of(&cap, worker, 2);
    let (xs, tracker, pipeline) = analyse(cap.events());
    let h1_calls = vec![
        call("GET", "/a", 200, 10),
        call("GET", "/big", 200, BIG as u64),
        call("GET", "/missing", 404, 8),
        call("POST", "/echo", 200, 7),
    ];
    assert_eq!(calls_of(&xs, h1), h1_calls);
    let h2_calls = vec![call("GET", "/a", 200, 10), call("POST", "/echo", 200, 7)];
    assert_eq!(calls_of(&xs, h2), h2_calls);
    let nginx_calls = vec![call("GET", "/b", 200, 14), call("GET", "/missing", 404, 8)];
    assert_eq!(calls_of(&xs, to_nginx), nginx_calls);
    assert_eq!(calls_of(&xs, worker), nginx_calls, "nginx's view");
    let mut go_server_calls = h1_calls.clone();
    go_server_calls.extend(h2_calls);
    go_server_calls.sort();
    assert_eq!(
        calls_of(&xs, go_pid),
        go_server_calls,
        "the Go server's view of the same calls"
    );
    for x in &xs {
        let pid = x.conn.process.pid;
        let want = if pid == h1
            || (pid == go_pid
                && x.conn.remote.is_some_and(|r| {
                    xs.iter()
                        .any(|c| c.conn.process.pid == h1 && c.conn.local == Some(r))
                })) {
            HttpVersion::Http11
        } else {
            HttpVersion::Http2
        };
        assert_eq!(x.version, want, "{} {:?}", x.request.path, x.conn);
        assert!(x.flags.contains(ExchangeFlags::TLS), "{:?}", x.flags);
    }
    let post = xs
        .iter()
        .find(|x| x.conn.process.pid == go_pid && x.request.method.as_str() == "POST")
        .expect("the Go server's POST");
    assert_eq!(post.request.body.wire_len, 3000);
    let conns = cap.connections();
    for x in &xs {
        assert_joined_to_syscall_side(&conns, x.conn.id);
    }
    eprintln!(
        "Go client attach delay after exec: {:.2} ms (max seen {:.2} ms)",
        delay_ns as f64 / 1e6,
        stat(&cap, "max_attach_delay_ns") as f64 / 1e6
    );
    assert!(delay_ns > 0 && delay_ns < 1_000_000_000, "{delay_ns} ns");
    assert_clean(&tracker, &pipeline, &cap);
}

#[test]
fn a_stripped_go_client_is_read_through_its_function_table() {
    let dir = scratch_dir("tls-go-stripped");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    // -s -w: no symbol table and no DWARF, as most Go binaries ship; .gopclntab says where.
    let stripped = go_tls_program(&dir.join("go_tls_stripped"), "-s -w");
    let cap = Capture::start(&[port]);
    let (pid, out) = go_get(
        &stripped,
        "h1",
        1000,
        &[
            format!("GET {}", nginx.url("/a")),
            format!("POST {}", nginx.url("/echo")),
        ],
    );
    assert_eq!(out, "HTTP/1.1 200 10\nHTTP/1.1 200 7\n");
    let xs = exchanges_of(&cap, pid, 2);
    assert_eq!(
        calls_of(&xs, pid),
        vec![call("GET", "/a", 200, 10), call("POST", "/echo", 200, 7)]
    );
    assert_eq!(
        xs.iter()
            .find(|x| x.request.method.as_str() == "POST")
            .map(|x| x.request.body.wire_len),
        Some(3000)
    );
    exchanges_of(&cap, worker, 2);
    let conns = cap.connections();
    assert_joined_to_syscall_side(&conns, xs[0].conn.id);
    // Read, so not a blind spot.
    let mut cfg = AgentConfig::default();
    cfg.capture.pids = vec![1];
    cfg.blind_spots.grace_ms = 0;
    let mut analyzer = Analyzer::new(&cfg).expect("pipeline");
    let mut sink = Collect(Vec::new());
    analyzer.on_events(cap.events(), &mut sink);
    analyzer.flush(&mut sink);
    let report = analyzer.tls_mut().blind_spots().clone();
    assert!(report.processes.iter().all(|p| p.pid != pid), "{report:?}");
}

#[test]
fn local_tls_clients_of_a_captured_listener_are_left_to_the_servers_side() {
    let dir = scratch_dir("tls-local-peer");
    let port = free_port();
    let nginx = TlsNginx::start(&dir, port);
    let worker = nginx.worker_pid();
    let go_client = go_tls_program(&dir.join("go_tls_client"), "");
    // The default: a local call is shipped once, from the server's socket.
    let cap = Capture::start_with(sonde_agent::config::CaptureConfig {
        ports: vec![port],
        ..Default::default()
    });
    let skipped_before = cap.counters().get("local_peer_skipped");
    let unknown_before = cap.counters().get("tls_fd_unknown");
    let (curl, out) = run(Command::new("curl")
        .args(["-sSk", "--http1.1"])
        .arg(nginx.url("/a"))
        .arg(nginx.url("/b")));
    assert_eq!(out, "body of a\nthe body of b\n");
    let (go, out) = go_get(
        &go_client,
        "h1",
        1000,
        &[format!("GET {}", nginx.url("/a"))],
    );
    assert_eq!(out, "HTTP/1.1 200 10\n");
    let server = exchanges_of(&cap, worker, 3);
    assert_eq!(server.len(), 3, "nginx's side of all three calls");
    let (xs, _, _) = analyse(cap.events());
    assert!(calls_of(&xs, curl).is_empty() && calls_of(&xs, go).is_empty());
    let counters = cap.counters();
    // curl's SSL_write and SSL_read of each call, and Go's Write and Read: skipped by name.
    assert!(
        counters.get("local_peer_skipped") >= skipped_before + 6,
        "{counters:?}"
    );
    // Not reported as calls whose socket is unknown (host-wide: this host runs nothing else
    // with TLS during the tests).
    assert_eq!(
        counters.get("tls_fd_unknown"),
        unknown_before,
        "{counters:?}"
    );
}
