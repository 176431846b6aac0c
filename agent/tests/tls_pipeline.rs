//! The pipeline with TLS connections: ciphertext from real openssl handshakes goes to the
//! posture parser (never to the HTTP parsers), plaintext from the TLS probes to the HTTP stage,
//! findings are raised once per server, and unread TLS connections land in the blind-spots
//! report with the reason found in their process.

use std::net::SocketAddr;

use bytes::Bytes;
use sonde_agent::config::AgentConfig;
use sonde_agent::pipeline::{Analyzer, Sink};
use sonde_inventory::CallInfo;
use sonde_model::{
    Anomaly, CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, Exchange,
    ProcessInfo, Role, Source,
};
use sonde_tls::harness::{Recording, TestCert, openssl_handshake, unix_now};

#[derive(Default)]
struct Collect {
    exchanges: Vec<(Exchange, CallInfo)>,
    anomalies: Vec<Anomaly>,
}

impl Sink for Collect {
    fn exchange(&mut self, ex: &Exchange, call: &CallInfo) {
        self.exchanges.push((ex.clone(), call.clone()));
    }
    fn anomalies(&mut self, anomalies: Vec<Anomaly>) {
        self.anomalies.extend(anomalies);
    }
}

/// Builds one server-side connection's events: `open`, ciphertext as the server's socket saw
/// it, then plaintext from the probes (when given), then `close`.
struct ConnBuilder {
    conn: ConnId,
    events: Vec<CaptureEvent>,
    offsets: [[u64; 2]; 2],
    ts_ns: u64,
}

impl ConnBuilder {
    fn server(tgid: u32, fd: i32, comm: &str, local: SocketAddr, ts_ns: u64) -> ConnBuilder {
        let conn = ConnId {
            tgid,
            fd,
            generation: 1,
        };
        ConnBuilder {
            conn,
            events: vec![CaptureEvent::Open(ConnOpen {
                conn,
                ts_ns,
                role: Role::Server,
                process: ProcessInfo {
                    pid: tgid,
                    comm: comm.into(),
                    cgroup_id: 0,
                    workload: None,
                },
                local: Some(local),
                remote: Some(SocketAddr::from(([10, 9, 9, 9], 50_000 + fd as u16))),
            })],
            offsets: [[0; 2]; 2],
            ts_ns,
        }
    }

    fn data(&mut self, source: Source, dir: Direction, bytes: &[u8]) {
        let s = usize::from(source == Source::Tls);
        let offset = self.offsets[s][dir.index()];
        self.offsets[s][dir.index()] += bytes.len() as u64;
        self.ts_ns += 1_000;
        self.events.push(CaptureEvent::Data(DataChunk {
            conn: self.conn,
            direction: dir,
            source,
            offset,
            len: bytes.len() as u64,
            data: Bytes::copy_from_slice(bytes),
            ts_ns: self.ts_ns,
            tid: self.conn.tgid,
        }));
    }

    /// The handshake as the server's socket reads (client bytes) and writes it.
    fn ciphertext(mut self, rec: &Recording) -> ConnBuilder {
        let n = rec.client_to_server.len().max(rec.server_to_client.len());
        for i in 0..n {
            if let Some(c) = rec.client_to_server.get(i) {
                self.data(Source::Syscall, Direction::Ingress, c);
            }
            if let Some(c) = rec.server_to_client.get(i) {
                self.data(Source::Syscall, Direction::Egress, c);
            }
        }
        self
    }

    fn exchange(mut self, source: Source, request: &str, response: &str) -> ConnBuilder {
        self.data(source, Direction::Ingress, request.as_bytes());
        self.data(source, Direction::Egress, response.as_bytes());
        self
    }

    fn close(mut self) -> Vec<CaptureEvent> {
        self.events.push(CaptureEvent::Close(ConnClose {
            conn: self.conn,
            ts_ns: self.ts_ns + 1_000,
        }));
        self.events
    }
}

const ORDERS: &str = "GET /api/orders HTTP/1.1\r\nHost: shop.example.test\r\n\r\n";
const ORDERS_OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"orders\":[]}";
const REFUSED: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
const REDIRECT: &str = "HTTP/1.1 301 Moved Permanently\r\nLocation: https://shop.example.test/api/orders\r\nContent-Length: 0\r\n\r\n";

fn now_ns() -> u64 {
    unix_now() as u64 * 1_000_000_000
}

fn kinds(a: &[Anomaly]) -> Vec<&str> {
    let mut k: Vec<&str> = a.iter().map(|a| a.kind.as_str()).collect();
    k.sort();
    k
}

#[test]
fn ciphertext_goes_to_posture_and_plaintext_to_http_with_findings_once_per_server() {
    let cert = TestCert::valid("shop.example.test");
    let tls10 = openssl_handshake(
        &cert,
        &["-cipher", "DEFAULT:@SECLEVEL=0"],
        &[
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-servername",
            "shop.example.test",
        ],
    );
    assert!(
        !tls10.server_to_client.is_empty(),
        "{}",
        tls10.client_output
    );
    let server = SocketAddr::from(([10, 1, 2, 3], 8443));
    let t0 = now_ns();
    let mut events = Vec::new();
    // Two TLS connections to the same server, plaintext delivered by the probes.
    for fd in [5, 6] {
        events.extend(
            ConnBuilder::server(4242, fd, "nginx", server, t0)
                .ciphertext(&tls10)
                .exchange(Source::Tls, ORDERS, ORDERS_OK)
                .close(),
        );
    }
    // A cleartext request refused by the TLS port is no finding (nginx answers 400)...
    events.extend(
        ConnBuilder::server(4242, 8, "nginx", server, t0)
            .exchange(Source::Syscall, ORDERS, REFUSED)
            .close(),
    );
    // ...but the same port answering plaintext HTTP with data is.
    events.extend(
        ConnBuilder::server(4242, 7, "nginx", server, t0)
            .exchange(Source::Syscall, ORDERS, ORDERS_OK)
            .close(),
    );
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("analyzer");
    let mut sink = Collect::default();
    analyzer.on_events(events, &mut sink);
    analyzer.flush(&mut sink);

    // Four exchanges: two from the probes' plaintext, two cleartext; none from ciphertext.
    assert_eq!(
        sink.exchanges.len(),
        4,
        "{:?}",
        sink.exchanges
            .iter()
            .map(|(e, _)| &e.request.path)
            .collect::<Vec<_>>()
    );
    assert!(
        sink.exchanges
            .iter()
            .all(|(e, _)| e.request.path == "/api/orders")
    );
    let tracker = analyzer.tracker().stats();
    assert_eq!(
        tracker.ignored_bytes, 0,
        "no ciphertext reached the HTTP stage: {tracker:?}"
    );
    let c = analyzer.tls().counters();
    assert_eq!(c.tls_connections, 2);
    assert_eq!(c.tls_with_plaintext, 2);
    assert_eq!(c.parser.malformed_messages, 0);

    let rec = analyzer
        .inventory()
        .endpoints()
        .find(|r| &*r.template == "/api/orders")
        .expect("endpoint");
    assert_eq!((rec.calls, rec.tls_calls), (4, 2));
    let tls = rec.tls.as_ref().expect("tls facts");
    assert_eq!(tls.version.as_deref(), Some("TLS 1.0"));
    assert_eq!(tls.sni.as_deref(), Some("shop.example.test"));
    assert!(
        tls.cipher.as_deref().is_some_and(|c| c.starts_with("TLS_")),
        "{tls:?}"
    );
    let update = sonde_agent::export::endpoint_update(rec);
    assert!(update.served_over_tls);
    assert_eq!(update.tls_version, "TLS 1.0");
    assert_eq!(update.sni, "shop.example.test");

    // Each finding once, though two connections showed it.
    assert_eq!(
        kinds(&sink.anomalies),
        vec![
            "http.plaintext_data",
            "tls.legacy_version",
            "tls.plaintext_on_tls_port"
        ]
    );
    for a in &sink.anomalies {
        assert_eq!(a.category, sonde_model::OwaspCategory::Api8Misconfiguration);
        assert!(a.explanation.contains("10.1.2.3:8443"), "{}", a.explanation);
    }
    let plain = sink
        .anomalies
        .iter()
        .find(|a| a.kind == "http.plaintext_data")
        .expect("plaintext");
    assert_eq!(plain.evidence.request_line, "GET /api/orders");
    assert!(
        plain
            .endpoint
            .as_deref()
            .is_some_and(|e| e.ends_with("GET /api/orders")),
        "{:?}",
        plain.endpoint
    );
}

#[test]
fn plaintext_rule_scope_loopback_and_redirects() {
    let run = |cfg: &AgentConfig, addr: SocketAddr, response: &str| {
        let mut analyzer = Analyzer::new(cfg).expect("analyzer");
        let mut sink = Collect::default();
        analyzer.on_events(
            ConnBuilder::server(77, 3, "api", addr, now_ns())
                .exchange(Source::Syscall, ORDERS, response)
                .close(),
            &mut sink,
        );
        analyzer.flush(&mut sink);
        assert_eq!(sink.exchanges.len(), 1);
        kinds(&sink.anomalies)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let public = SocketAddr::from(([192, 0, 2, 10], 8080));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 8080));
    let default = AgentConfig::default();
    assert_eq!(
        run(&default, public, ORDERS_OK),
        vec!["http.plaintext_data"]
    );
    assert!(
        run(&default, public, REDIRECT).is_empty(),
        "a redirect to HTTPS is fine"
    );
    assert!(
        run(&default, loopback, ORDERS_OK).is_empty(),
        "loopback is out of the default scope"
    );
    let mut all = AgentConfig::default();
    all.posture.plaintext_http = sonde_tls::PlaintextScope::All;
    assert_eq!(run(&all, loopback, ORDERS_OK), vec!["http.plaintext_data"]);
    let mut allowed = AgentConfig::default();
    allowed.posture.plaintext_allowed_ports = vec![8080];
    assert!(run(&allowed, public, ORDERS_OK).is_empty());
}

#[test]
fn unread_tls_connections_are_blind_spots_with_their_process_reason() {
    let cert = TestCert::valid("blind.example.test");
    let tls13 = openssl_handshake(&cert, &[], &["-tls1_3"]);
    // A real process with OpenSSL mapped whose plaintext never arrives, and one that is read.
    let mut python = std::process::Command::new("python3")
        .args(["-c", "import ssl, time; time.sleep(30)"])
        .spawn()
        .expect("python3");
    let pid = python.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains("libssl.so")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "python never mapped libssl"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let server = SocketAddr::from(([127, 0, 0, 1], 9443));
    let t0 = now_ns();
    let mut events = ConnBuilder::server(pid, 4, "python3", server, t0)
        .ciphertext(&tls13)
        .close();
    events.extend(
        ConnBuilder::server(pid, 5, "python3", server, t0)
            .ciphertext(&tls13)
            .exchange(Source::Tls, ORDERS, ORDERS_OK)
            .close(),
    );
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("analyzer");
    let mut sink = Collect::default();
    analyzer.on_events(events, &mut sink);
    // A third one still open: blind only once the grace period has passed.
    let open = ConnBuilder::server(pid, 6, "python3", server, t0).ciphertext(&tls13);
    analyzer.on_events(open.events, &mut sink);
    // A fourth that only looks like TLS (a record header, then junk, never answered): no
    // session was ever made, so nothing was unreadable.
    let mut bogus = ConnBuilder::server(pid, 7, "python3", server, t0);
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    junk.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    bogus.data(Source::Syscall, Direction::Ingress, &junk);
    analyzer.on_events(bogus.close(), &mut sink);
    analyzer.tick(t0 + 1_000_000_000, &mut sink);
    assert_eq!(analyzer.tls_mut().blind_spots().tls_connections, 2);
    analyzer.tick(t0 + 6_000_000_000, &mut sink);
    let _ = python.kill();
    let _ = python.wait();

    let report = analyzer.tls_mut().blind_spots().clone();
    assert_eq!((report.tls_connections, report.blind_connections), (3, 2));
    assert_eq!(analyzer.tls_mut().counters().tls_without_session, 1);
    assert_eq!(report.by_reason.get("tls.openssl_not_attached"), Some(&2));
    assert_eq!(report.processes.len(), 1);
    assert_eq!(report.processes[0].pid, pid);
    assert_eq!(report.processes[0].connections, 2);
    let per_conn: u64 = (tls13.client_bytes().len() + tls13.server_bytes().len()) as u64;
    assert_eq!(report.blind_bytes, 2 * per_conn);
    assert_eq!(report.blind_share_permille().0, 666);
    let spots = report.blind_spots();
    assert_eq!(spots.len(), 1 + usize::from(report.quic_udp_sockets > 0));
    assert_eq!(spots[0].kind, "tls.openssl_not_attached");
    assert!(spots[0].detail.contains("python3"), "{}", spots[0].detail);
    // TLS 1.3 on loopback with a modern suite: nothing to say about posture.
    assert!(sink.anomalies.is_empty(), "{:?}", kinds(&sink.anomalies));
    assert_eq!(sink.exchanges.len(), 1);
}

#[test]
fn a_tls_port_refusing_cleartext_is_no_finding() {
    let cert = TestCert::valid("strict.example.test");
    let tls12 = openssl_handshake(&cert, &[], &["-tls1_2"]);
    let server = SocketAddr::from(([10, 1, 2, 4], 443));
    let t0 = now_ns();
    let mut events = ConnBuilder::server(99, 5, "nginx", server, t0)
        .ciphertext(&tls12)
        .close();
    events.extend(
        ConnBuilder::server(99, 6, "nginx", server, t0)
            .exchange(Source::Syscall, ORDERS, REFUSED)
            .close(),
    );
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("analyzer");
    let mut sink = Collect::default();
    analyzer.on_events(events, &mut sink);
    analyzer.flush(&mut sink);
    assert_eq!(sink.exchanges.len(), 1);
    assert_eq!(analyzer.tls().counters().tls_connections, 1);
    assert!(sink.anomalies.is_empty(), "{:?}", kinds(&sink.anomalies));
}

#[test]
fn a_dropped_chunk_is_a_gap_and_a_repeated_one_is_skipped() {
    let now = unix_now();
    let cert = TestCert::self_signed("dropped.example.test", now - 90 * 86_400, now - 86_400);
    let rec = openssl_handshake(&cert, &[], &["-tls1_2"]);
    let down = rec.server_bytes();
    // Record boundaries of the server's bytes.
    let mut starts = Vec::new();
    let mut off = 0;
    while off + 5 <= down.len() {
        starts.push(off);
        off += 5 + u16::from_be_bytes([down[off + 3], down[off + 4]]) as usize;
    }
    assert!(starts.len() >= 3, "{starts:?}");
    let server = SocketAddr::from(([10, 1, 2, 5], 443));
    let mut b = ConnBuilder::server(55, 5, "api", server, now_ns());
    for c in &rec.client_to_server {
        b.data(Source::Syscall, Direction::Ingress, c);
    }
    // The ServerHello's chunk never arrives: the next one starts past it.
    b.offsets[0][Direction::Egress.index()] = starts[1] as u64;
    let cert_record = &down[starts[1]..starts[2]];
    b.data(Source::Syscall, Direction::Egress, cert_record);
    // The same chunk delivered twice.
    b.offsets[0][Direction::Egress.index()] = starts[1] as u64;
    b.data(Source::Syscall, Direction::Egress, cert_record);
    b.data(Source::Syscall, Direction::Egress, &down[starts[2]..]);
    let mut analyzer = Analyzer::new(&AgentConfig::default()).expect("analyzer");
    let mut sink = Collect::default();
    analyzer.on_events(b.close(), &mut sink);
    analyzer.flush(&mut sink);
    let c = analyzer.tls().counters();
    assert_eq!(c.parser.resyncs, 1, "{c:?}");
    assert_eq!(c.parser.malformed_messages, 0, "{c:?}");
    // Without the ServerHello no version finding; the certificate still tells its expiry.
    assert_eq!(kinds(&sink.anomalies), vec!["tls.certificate_expired"]);
}
