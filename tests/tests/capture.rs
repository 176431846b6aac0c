//! Live capture on the real kernel: real nginx, python and curl on loopback.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_e2e::capture::{Capture, count_occurrences};
use sonde_e2e::servers::{Nginx, PythonServer, curl};
use sonde_e2e::{eventually, free_port, scratch_dir};
use sonde_model::{Direction, Role};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn keep_alive_requests_arrive_in_order_with_offsets_pids_and_ports() {
    let dir = scratch_dir("keepalive");
    let port = free_port();
    let nginx = Nginx::start(&dir, port);
    for name in ["a", "b", "c"] {
        std::fs::write(nginx.www().join(name), format!("body of {name}\n")).expect("write");
    }
    let cap = Capture::start(&[port]);
    let base = format!("http://127.0.0.1:{port}");
    let urls: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{base}/{n}"))
        .collect();
    let (curl_pid, out) = curl(&urls.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out, b"body of a\nbody of b\nbody of c\n");
    let worker = nginx.worker_pid();

    let conns = eventually(WAIT, "both sides of the connection", || {
        let conns = cap.connections();
        let client = conns
            .values()
            .find(|c| c.open.as_ref().is_some_and(|o| o.process.pid == curl_pid))?;
        let server = conns
            .values()
            .find(|c| c.open.as_ref().is_some_and(|o| o.process.pid == worker))?;
        (client.total_len(Direction::Ingress) >= 3 * 10
            && server.total_len(Direction::Ingress) > 0
            && count_occurrences(&client.stream(Direction::Ingress), b"HTTP/1.1 200 OK") == 3
            && client.closed
            && server.closed)
            .then(|| (client.clone(), server.clone()))
    });
    let (client, server) = conns;
    let (_, counters) = cap.stop();

    // One connection each side, three requests in order on it.
    let copen = client.open.as_ref().expect("client open");
    assert_eq!(copen.role, Role::Client);
    assert_eq!(copen.process.comm, "curl");
    assert_eq!(copen.remote.map(|a| a.port()), Some(port));
    let sopen = server.open.as_ref().expect("server open");
    assert_eq!(sopen.role, Role::Server);
    assert_eq!(sopen.process.comm, "nginx");
    assert_eq!(sopen.local.map(|a| a.port()), Some(port));
    assert_eq!(
        sopen.remote, copen.local,
        "the server's peer is the client's socket"
    );

    let requests = client.text(Direction::Egress);
    let positions: Vec<usize> = ["GET /a ", "GET /b ", "GET /c "]
        .iter()
        .map(|r| requests.find(r).expect(r))
        .collect();
    assert_eq!(positions[0], 0, "the first request starts at offset 0");
    assert!(
        positions[0] < positions[1] && positions[1] < positions[2],
        "{requests}"
    );
    assert_eq!(
        server.stream(Direction::Ingress),
        client.stream(Direction::Egress)
    );
    let responses = client.text(Direction::Ingress);
    let bodies: Vec<usize> = ["body of a", "body of b", "body of c"]
        .iter()
        .map(|b| responses.find(b).expect(b))
        .collect();
    assert!(
        bodies[0] < bodies[1] && bodies[1] < bodies[2],
        "{responses}"
    );
    // nginx sends small files with sendfile: those bytes are known but not copied.
    assert_eq!(
        server.total_len(Direction::Egress),
        client.total_len(Direction::Ingress)
    );
    assert!(
        server.missing_len(Direction::Egress) >= 30,
        "sendfile bytes travel as lengths"
    );
    assert!(client.closed && server.closed, "both sides closed");
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn ipv6_loopback_connections_carry_v6_addresses() {
    let dir = scratch_dir("ipv6");
    let port = free_port();
    let nginx = Nginx::start(&dir, port);
    std::fs::write(nginx.www().join("six"), "over v6\n").expect("write");
    let cap = Capture::start(&[port]);
    let (curl_pid, out) = curl(&["-g", &format!("http://[::1]:{port}/six")]);
    assert_eq!(out, b"over v6\n");
    let client = eventually(WAIT, "the v6 client connection", || {
        cap.connections().into_values().find(|c| {
            c.open.as_ref().is_some_and(|o| o.process.pid == curl_pid)
                && c.total_len(Direction::Ingress) > 0
        })
    });
    let open = client.open.as_ref().expect("open");
    let remote = open.remote.expect("remote address");
    assert_eq!(remote, format!("[::1]:{port}").parse().expect("addr"));
    assert!(open.local.expect("local").is_ipv6());
    assert!(
        client
            .text(Direction::Egress)
            .starts_with("GET /six HTTP/1.1\r\n")
    );
}

#[test]
fn large_bodies_are_accounted_to_the_byte() {
    let dir = scratch_dir("large");
    let port = free_port();
    let nginx = Nginx::start(&dir, port);
    let five_mib: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(nginx.www().join("big"), &five_mib).expect("write big");
    let one_mib = dir.join("upload.bin");
    std::fs::write(&one_mib, vec![b'x'; 1024 * 1024]).expect("write upload");
    let cap = Capture::start(&[port]);

    let (post_pid, out) = curl(&[
        "--data-binary",
        &format!("@{}", one_mib.display()),
        "-H",
        "Expect:",
        &format!("http://127.0.0.1:{port}/upload"),
    ]);
    assert_eq!(out, b"ok\n");
    let (get_pid, out) = curl(&[&format!("http://127.0.0.1:{port}/big")]);
    assert_eq!(out.len(), five_mib.len());

    let find = |pid: u32, min_egress: u64, min_ingress: u64| {
        eventually(WAIT, "the large transfer", || {
            cap.connections().into_values().find(|c| {
                c.open.as_ref().is_some_and(|o| o.process.pid == pid)
                    && c.total_len(Direction::Egress) >= min_egress
                    && c.total_len(Direction::Ingress) >= min_ingress
                    && c.closed
            })
        })
    };
    let post = find(post_pid, 1024 * 1024, 1);
    let get = find(get_pid, 1, 5 * 1024 * 1024);
    let (_, counters) = cap.stop();

    // POST: request head plus exactly 1 MiB of body left the client, every byte accounted for as
    // captured or known-missing, chunks tiling the stream from 0.
    let head_len = post
        .text(Direction::Egress)
        .find("\r\n\r\n")
        .expect("head end") as u64
        + 4;
    let sent = post.total_len(Direction::Egress);
    assert_eq!(sent, head_len + 1024 * 1024);
    assert_eq!(
        post.captured_len(Direction::Egress) + post.missing_len(Direction::Egress),
        sent
    );
    let stream = post.stream(Direction::Egress);
    assert_eq!(stream.len() as u64, sent);

    // GET: the 5 MiB response arrived whole at the client: head + body, captured + missing.
    let got = get.total_len(Direction::Ingress);
    let text = get.stream(Direction::Ingress);
    let head_end = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert_eq!(got, head_end as u64 + five_mib.len() as u64);
    assert_eq!(
        get.captured_len(Direction::Ingress) + get.missing_len(Direction::Ingress),
        got
    );
    // Captured body bytes are the file's bytes at their offsets.
    let body = &text[head_end..];
    let mut checked = 0;
    for c in get.chunks(Direction::Ingress) {
        let start = c.offset as usize;
        if start >= head_end && !c.data.is_empty() {
            let at = start - head_end;
            assert_eq!(
                &c.data[..],
                &five_mib[at..at + c.data.len()],
                "bytes at body offset {at}"
            );
            assert_eq!(&body[at..at + c.data.len()], &c.data[..]);
            checked += c.data.len();
        }
    }
    assert!(checked > 0, "some body bytes were captured and checked");
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn a_connection_opened_before_capture_started_is_captured() {
    let dir = scratch_dir("preexisting");
    let port = free_port();
    let nginx = Nginx::start(&dir, port);
    std::fs::write(nginx.www().join("x"), "x\n").expect("write");
    // A keep-alive client that makes one request, then waits for a line on stdin per request.
    let script = format!(
        "import http.client, sys\n\
         c = http.client.HTTPConnection('127.0.0.1', {port})\n\
         c.request('GET', '/x?before'); c.getresponse().read()\n\
         print('ready', flush=True)\n\
         for line in sys.stdin:\n\
         \x20   c.request('GET', '/x?' + line.strip()); r = c.getresponse(); r.read()\n\
         \x20   print(r.status, flush=True)\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready");

    let cap = Capture::start(&[port]);
    let mut stdin = child.stdin.take().expect("stdin");
    for q in ["after1", "after2"] {
        writeln!(stdin, "{q}").expect("send");
        line.clear();
        stdout.read_line(&mut line).expect("status");
        assert_eq!(line.trim(), "200");
    }
    let pid = child.id();
    let client = eventually(WAIT, "the pre-existing connection", || {
        cap.connections().into_values().find(|c| {
            c.open.as_ref().is_some_and(|o| o.process.pid == pid)
                && c.text(Direction::Egress).contains("after2")
        })
    });
    drop(stdin);
    let _ = child.wait();
    let open = client.open.as_ref().expect("open");
    // Addresses and role come from procfs for a socket the kernel side met mid-stream.
    assert_eq!(open.remote.map(|a| a.port()), Some(port));
    assert_eq!(open.role, Role::Client);
    let text = client.text(Direction::Egress);
    assert!(text.starts_with("GET /x?after1 HTTP/1.1\r\n"), "{text}");
    assert!(
        !text.contains("before"),
        "bytes sent before capture are not invented"
    );
}

#[test]
fn files_a_server_reads_are_not_reported_as_socket_data() {
    let dir = scratch_dir("files");
    let port = free_port();
    let marker = "sonde-file-marker-7f3a";
    std::fs::write(dir.join("page.txt"), marker.repeat(100)).expect("write");
    let server = PythonServer::start(&dir, port);
    // No port filter: every TCP socket of every process, to be sure no file read slips in.
    let cap = Capture::start_with(sonde_agent::config::CaptureConfig {
        pids: vec![server.pid()],
        ..Default::default()
    });
    let (_, out) = curl(&[&format!("http://127.0.0.1:{port}/page.txt")]);
    assert_eq!(out.len(), marker.len() * 100);
    let server_conn = eventually(WAIT, "the server's response", || {
        cap.connections().into_values().find(|c| {
            c.open
                .as_ref()
                .is_some_and(|o| o.process.pid == server.pid())
                && c.text(Direction::Egress).contains(marker)
        })
    });
    let events = cap.stop().0;
    // python reads the file with read(2) before it writes it to the socket: only the socket's
    // connection may carry the marker, and every connection with data is a real TCP socket.
    let conns = sonde_e2e::capture::connections(&events);
    for (id, c) in &conns {
        let has_data =
            !c.chunks(Direction::Egress).is_empty() || !c.chunks(Direction::Ingress).is_empty();
        if has_data {
            let open = c
                .open
                .as_ref()
                .unwrap_or_else(|| panic!("data on {id} without an open"));
            assert!(
                open.local.is_some() && open.remote.is_some(),
                "{id} is a socket with addresses"
            );
        }
    }
    let with_marker: Vec<_> = conns
        .values()
        .filter(|c| {
            c.text(Direction::Egress).contains(marker)
                || c.text(Direction::Ingress).contains(marker)
        })
        .collect();
    assert_eq!(
        with_marker.len(),
        1,
        "only the socket carries the file's bytes"
    );
    assert_eq!(
        with_marker[0].open.as_ref().map(|o| o.conn),
        server_conn.open.as_ref().map(|o| o.conn)
    );
}

#[test]
fn non_http_connections_stop_being_shipped_and_floods_stay_bounded() {
    let port = free_port();
    // Server and clients in a child process (this test process is the agent, which the kernel
    // side never captures): an echo server, one binary-protocol client making 50 round trips,
    // then a flood of 500 short-lived connections each sending one request.
    let script = format!(
        "import socket, threading\n\
         srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         srv.bind(('127.0.0.1', {port})); srv.listen(1024)\n\
         def serve():\n\
         \x20   while True:\n\
         \x20       c, _ = srv.accept()\n\
         \x20       while True:\n\
         \x20           b = c.recv(4096)\n\
         \x20           if not b: break\n\
         \x20           c.sendall(b)\n\
         \x20       c.close()\n\
         threading.Thread(target=serve, daemon=True).start()\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         for _ in range(50):\n\
         \x20   s.sendall(bytes([0, 1, 0xfe, 0xff, 0x13, 0x37, 0x42, 0x42])); s.recv(8)\n\
         s.close()\n\
         for i in range(500):\n\
         \x20   c = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20   c.sendall(b'GET /%d HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' % i); c.recv(100); c.close()\n\
         print('done', flush=True)\n"
    );
    let cap = Capture::start(&[port]);
    let before = cap.counters();
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let c = eventually(WAIT, "the non-HTTP connection to be classified", || {
        let c = cap.counters();
        (c.get("non_http_conns") >= before.get("non_http_conns") + 2).then_some(c)
    });
    let (events, after) = cap.stop();
    // Not one byte of the binary connection was shipped: its first call classified it.
    let conns = sonde_e2e::capture::connections(&events);
    let binary: Vec<_> = conns
        .values()
        .filter(|c| {
            c.chunks(Direction::Egress)
                .iter()
                .chain(c.chunks(Direction::Ingress))
                .any(|d| d.data.starts_with(&[0x00, 0x01]))
        })
        .collect();
    assert!(binary.is_empty(), "binary payload shipped: {binary:?}");
    assert!(
        after.get("non_http_calls") >= before.get("non_http_calls") + 190,
        "the 2 sides x 2 directions x 50 calls were stopped in the kernel: {c:?}"
    );
    // The flood: all 500 connections seen from both sides, each with its request.
    let flood = conns
        .values()
        .filter(|c| c.text(Direction::Egress).starts_with("GET /"))
        .count();
    let served = conns
        .values()
        .filter(|c| c.text(Direction::Ingress).starts_with("GET /"))
        .count();
    assert!(
        flood >= 500 && served >= 500,
        "{flood} client / {served} server flood connections seen"
    );
    for (name, v) in after.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn a_client_that_never_reads_does_not_stall_capture_of_others() {
    let dir = scratch_dir("noread");
    let port = free_port();
    let nginx = Nginx::start(&dir, port);
    std::fs::write(nginx.www().join("big"), vec![1u8; 8 * 1024 * 1024]).expect("write");
    std::fs::write(nginx.www().join("small"), "small\n").expect("write");
    let cap = Capture::start(&[port]);
    // Ten requests for 8 MiB each, pipelined, and never a byte read back.
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' * 10)\n\
         print('sent', flush=True)\n\
         time.sleep(30)\n"
    );
    let mut stalled = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let mut line = String::new();
    BufReader::new(stalled.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("sent");
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile other clients are served and captured.
    let (pid, out) = curl(&[&format!("http://127.0.0.1:{port}/small")]);
    assert_eq!(out, b"small\n");
    let seen = eventually(WAIT, "the other client's exchange", || {
        cap.connections().into_values().find(|c| {
            c.open.as_ref().is_some_and(|o| o.process.pid == pid)
                && c.text(Direction::Ingress).contains("small")
        })
    });
    assert!(seen.text(Direction::Egress).starts_with("GET /small "));
    let _ = stalled.kill();
    let _ = stalled.wait();
    let (_, counters) = cap.stop();
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn the_port_filter_also_holds_for_connections_that_predate_capture() {
    let dir = scratch_dir("prefilter");
    let (watched, other) = (free_port(), free_port());
    let nginx_a = Nginx::start(&dir.join("a"), watched);
    let nginx_b = Nginx::start(&dir.join("b"), other);
    std::fs::write(nginx_a.www().join("x"), "x\n").expect("write");
    std::fs::write(nginx_b.www().join("x"), "x\n").expect("write");
    // Keep-alive clients on both ports, connected before the capture starts.
    let client = |port: u16| {
        let script = format!(
            "import http.client, sys\n\
             c = http.client.HTTPConnection('127.0.0.1', {port})\n\
             c.request('GET', '/x'); c.getresponse().read()\n\
             print('ready', flush=True)\n\
             for line in sys.stdin:\n\
             \x20   c.request('GET', '/x?' + line.strip()); c.getresponse().read()\n\
             \x20   print('ok', flush=True)\n"
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python client");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        (child, out)
    };
    let (mut a, mut a_out) = client(watched);
    let (mut b, mut b_out) = client(other);
    let cap = Capture::start(&[watched]);
    for (child, out, q) in [
        (&mut a, &mut a_out, "watched"),
        (&mut b, &mut b_out, "unwatched"),
    ] {
        writeln!(child.stdin.as_mut().expect("stdin"), "{q}").expect("send");
        let mut line = String::new();
        out.read_line(&mut line).expect("ok");
    }
    eventually(WAIT, "the watched connection", || {
        cap.connections()
            .into_values()
            .find(|c| c.text(Direction::Egress).contains("watched"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let (events, counters) = cap.stop();
    // The kernel read the old connections' addresses from their sockets (offsets from BTF), so
    // the unwatched one stopped there: its client's request and the server's read and answer.
    assert!(
        counters.get("filtered_calls") >= 3,
        "the unwatched connection was filtered in the kernel: {counters:?}"
    );
    let conns = sonde_e2e::capture::connections(&events);
    assert!(
        conns
            .values()
            .all(|c| !c.text(Direction::Egress).contains("unwatched")
                && !c.text(Direction::Ingress).contains("unwatched")),
        "a pre-existing connection on an unwatched port leaked through the filter"
    );
    for mut c in [a, b] {
        drop(c.stdin.take());
        let _ = c.wait();
    }
}

#[test]
fn local_clients_of_captured_servers_keep_only_open_and_close() {
    let dir = scratch_dir("localpeer");
    // nginx listens before the capture starts (known from procfs), python after it (known from
    // its LISTEN transition); a third server, excluded from capture, must not hide its client.
    let nginx_port = free_port();
    let nginx = Nginx::start(&dir, nginx_port);
    std::fs::write(nginx.www().join("n"), "from nginx\n").expect("write");
    let excluded_port = free_port();
    let excluded = PythonServer::start(&dir, excluded_port);
    let python_port = free_port();
    let cap = Capture::start_with(sonde_agent::config::CaptureConfig {
        ports: vec![nginx_port, python_port, excluded_port],
        exclude_pids: vec![excluded.pid()],
        ..Default::default()
    });
    let python = PythonServer::start(&dir, python_port);
    std::fs::write(dir.join("p"), "from python\n").expect("write");
    std::fs::write(dir.join("x"), "from an excluded server\n").expect("write");

    let mut clients = Vec::new();
    for (port, path, body) in [
        (nginx_port, "n", "from nginx\n"),
        (python_port, "p", "from python\n"),
        (excluded_port, "x", "from an excluded server\n"),
    ] {
        let (pid, out) = curl(&[&format!("http://127.0.0.1:{port}/{path}")]);
        assert_eq!(out, body.as_bytes());
        clients.push(pid);
    }
    let server_pids = [nginx.worker_pid(), python.pid()];
    let conns = eventually(WAIT, "servers' views and closed clients", || {
        let conns = cap.connections();
        let served = server_pids.iter().all(|pid| {
            conns.values().any(|c| {
                c.open.as_ref().is_some_and(|o| o.process.pid == *pid)
                    && c.text(Direction::Egress).contains("200")
                    && c.closed
            })
        });
        let clients_closed = clients.iter().all(|pid| {
            conns
                .values()
                .any(|c| c.open.as_ref().is_some_and(|o| o.process.pid == *pid) && c.closed)
        });
        (served && clients_closed).then_some(conns)
    });
    let (_, counters) = cap.stop();

    let client_of = |pid: u32| {
        conns
            .values()
            .find(|c| c.open.as_ref().is_some_and(|o| o.process.pid == pid))
            .expect("client connection")
    };
    for (pid, port) in [(clients[0], nginx_port), (clients[1], python_port)] {
        let c = client_of(pid);
        let open = c.open.as_ref().expect("open");
        assert_eq!(open.role, Role::Client);
        assert_eq!(open.remote.map(|a| a.port()), Some(port));
        assert!(
            c.chunks(Direction::Egress).is_empty() && c.chunks(Direction::Ingress).is_empty(),
            "the client of a captured local server ships no payload: {c:?}"
        );
    }
    let nginx_side = conns
        .values()
        .find(|c| {
            c.open
                .as_ref()
                .is_some_and(|o| o.process.pid == nginx.worker_pid())
        })
        .expect("nginx's view");
    assert!(
        nginx_side
            .text(Direction::Ingress)
            .starts_with("GET /n HTTP/1.1")
    );
    // The excluded server is not captured, so its client keeps the whole exchange.
    let to_excluded = client_of(clients[2]);
    assert!(
        to_excluded
            .text(Direction::Ingress)
            .contains("from an excluded server"),
        "{to_excluded:?}"
    );
    assert!(
        !conns.values().any(|c| c
            .open
            .as_ref()
            .is_some_and(|o| o.process.pid == excluded.pid())),
        "the excluded server is not captured"
    );
    assert_eq!(counters.get("local_peer_conns"), 2);
    assert!(counters.get("local_peer_skipped") >= 2, "{counters:?}");
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

/// A server blocked in recv() is moved to another CPU before the bytes arrive, twice: its calls
/// leave the kernel on another CPU than they entered it on. The bytes of both calls must arrive
/// whole and at the right offsets (the call is rebuilt from the thread's saved registers, and
/// the slot the first call left on its entry CPU must not be taken for the second call's).
#[test]
fn calls_whose_thread_moves_to_another_cpu_mid_call_are_captured() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs, found {cpus}");
    let port = free_port();
    let script = format!(
        r#"
import os, socket
os.sched_setaffinity(0, {{0}})
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
for n in range(2):
    print("waiting", n, flush=True)
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = c.recv(4096)
        if not chunk:
            raise SystemExit("peer closed")
        data += chunk
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nmoved")
c.close()
"#
    );
    let mut server = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let pid = server.id();
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let mut expect_line = |want: &str| {
        let line = lines.next().expect("a line").expect("utf-8");
        assert!(
            line.starts_with(want),
            "server said {line:?}, expected {want:?}"
        );
    };
    expect_line("listening");
    let cap = Capture::start(&[port]);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let requests = [
        "GET /first HTTP/1.1\r\nHost: moved\r\n\r\n",
        "GET /second-one HTTP/1.1\r\nHost: moved\r\n\r\n",
    ];
    for (n, request) in requests.iter().enumerate() {
        expect_line("waiting");
        // Let the server block in recv() on its CPU, then allow it only the other one.
        std::thread::sleep(Duration::from_millis(300));
        let cpu = if n == 0 { "1" } else { "0" };
        let status = Command::new("taskset")
            .args(["-p", "-c", cpu, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("taskset runs");
        assert!(status.success(), "taskset moves the server");
        std::thread::sleep(Duration::from_millis(100));
        client.write_all(request.as_bytes()).expect("send");
        let mut response = [0u8; 43];
        std::io::Read::read_exact(&mut client, &mut response).expect("response");
        assert!(response.ends_with(b"moved"));
    }
    let want: String = requests.concat();
    let server_conn = eventually(WAIT, "both requests on the server side", || {
        cap.connections().into_values().find(|c| {
            c.open.as_ref().is_some_and(|o| o.process.pid == pid)
                && c.total_len(Direction::Ingress) >= want.len() as u64
        })
    });
    let (_, counters) = cap.stop();
    let _ = server.wait();
    assert_eq!(
        server_conn.open.as_ref().map(|o| o.role),
        Some(Role::Server)
    );
    assert_eq!(
        server_conn.text(Direction::Ingress),
        want,
        "both requests whole, in order, at their offsets"
    );
    assert_eq!(server_conn.missing_len(Direction::Ingress), 0);
    assert_eq!(
        count_occurrences(&server_conn.stream(Direction::Egress), b"moved"),
        2
    );
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn sendmsg_and_recvmsg_iovecs_are_captured_in_order_to_the_byte() {
    let port = free_port();
    // Both sides use only sendmsg and recvmsg: the request goes out as three iovecs, the
    // response as a header iovec and a 300 kB body split over two more; every recvmsg reads into
    // two buffers (recvmsg_into), so both kernel paths walk iovec arrays.
    let script = format!(
        "import socket, threading\n\
         body = bytes((i * 7) & 0xff for i in range(300000))\n\
         srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         srv.bind(('127.0.0.1', {port})); srv.listen(8)\n\
         def recv_until(c, end, want):\n\
         \x20   got = b''\n\
         \x20   while not (end in got and len(got) >= want):\n\
         \x20       a, b = bytearray(100), bytearray(4000)\n\
         \x20       n = c.recvmsg_into([a, b])[0]\n\
         \x20       if n == 0: break\n\
         \x20       got += bytes((a + b)[:n])\n\
         \x20   return got\n\
         def serve():\n\
         \x20   c, _ = srv.accept()\n\
         \x20   recv_until(c, b'\\r\\n\\r\\n', 0)\n\
         \x20   head = b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body)\n\
         \x20   v = [head, body[:100000], body[100000:]]\n\
         \x20   while v:\n\
         \x20       n = c.sendmsg(v)\n\
         \x20       while v and n >= len(v[0]): n -= len(v[0]); v.pop(0)\n\
         \x20       if v: v[0] = v[0][n:]\n\
         \x20   c.close()\n\
         t = threading.Thread(target=serve); t.start()\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendmsg([b'GET /msg HTTP/1.1\\r\\n', b'Host: sendmsg\\r\\n', b'\\r\\n'])\n\
         got = recv_until(s, b'\\r\\n\\r\\n', 1 << 40)\n\
         assert got.endswith(body), len(got)\n\
         s.close(); t.join()\n\
         print(len(got), flush=True)\n"
    );
    let cap = Capture::start(&[port]);
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response_len: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("response length");
    let request = b"GET /msg HTTP/1.1\r\nHost: sendmsg\r\n\r\n";
    let (client, server) = eventually(WAIT, "both sides of the sendmsg connection", || {
        let conns = cap.connections();
        let side = |r: Role| {
            conns
                .values()
                .find(|c| {
                    c.open.as_ref().is_some_and(|o| o.role == r)
                        && c.total_len(Direction::Egress) > 0
                        && c.total_len(Direction::Ingress) > 0
                        && c.closed
                })
                .cloned()
        };
        Some((side(Role::Client)?, side(Role::Server)?))
    });
    let (_, counters) = cap.stop();
    assert_eq!(client.stream(Direction::Egress), request);
    assert_eq!(server.stream(Direction::Ingress), request);
    for (side, dir) in [(&server, Direction::Egress), (&client, Direction::Ingress)] {
        assert_eq!(side.total_len(dir), response_len, "{dir:?}");
        assert_eq!(
            side.captured_len(dir) + side.missing_len(dir),
            response_len,
            "captured plus missing bytes are the response, exactly"
        );
        assert!(
            side.text(dir)
                .starts_with("HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n"),
            "{dir:?}"
        );
    }
    // Where bytes were copied they are the body's, in place (the client's view is complete at
    // this size; the server's large sendmsg may pass the per-call cap).
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let seen = client.stream(Direction::Ingress);
    assert_eq!(client.missing_len(Direction::Ingress), 0);
    assert_eq!(&seen[seen.len() - body.len()..], &body[..]);
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

#[test]
fn sigterm_stops_the_agent_as_cleanly_as_sigint() {
    use std::io::Read as _;
    // An agent capturing an unused port, its stderr piped.
    let agent = || {
        Command::new(sonde_e2e::stack::bin("sonde-agent"))
            .args(["capture", "--quiet", "--port", &free_port().to_string()])
            .env("SONDE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agent starts")
    };
    let mut child = agent();
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("hooks:") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "the agent exited before attaching"
        );
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}: {rest}");
    // It said it was stopping, then gave its counters, as on Ctrl-C.
    assert!(rest.contains("stopping:"), "{rest}");
    assert!(rest.contains("ring_full_data"), "{rest}");

    // A signal that arrives while the programs are still loading is kept, not fatal.
    let early = agent();
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(early.id() as i32, libc::SIGTERM) };
    let out = early.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {text}", out.status);
    assert!(text.contains("ring_full_data"), "{text}");
}
