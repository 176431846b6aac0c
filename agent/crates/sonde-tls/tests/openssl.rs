//! Handshakes of real `openssl s_server` / `s_client` pairs, recorded by a relay read by read,
//! parsed as the syscall hooks deliver them.

use std::net::SocketAddr;

use sonde_model::{Anomaly, Direction};
use sonde_tls::harness::{Recording, TestCert, openssl_handshake, unix_now};
use sonde_tls::{
    DirectionState, PostureConfig, PostureRules, ProtocolVersion, ServerRef, StopReason,
    TlsConnection, Weakness,
};

/// The client's socket view: its writes are egress, its reads ingress.
fn parse(rec: &Recording) -> TlsConnection {
    let mut conn = TlsConnection::new();
    // Interleave as the wire did: the client speaks first, then each side answers.
    let (mut up, mut down) = (rec.client_to_server.iter(), rec.server_to_client.iter());
    loop {
        let a = up.next();
        let b = down.next();
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(a) = a {
            conn.push(Direction::Egress, a);
        }
        if let Some(b) = b {
            conn.push(Direction::Ingress, b);
        }
    }
    conn
}

fn server() -> ServerRef {
    ServerRef {
        addr: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
        process: Some("openssl".into()),
        local: false,
    }
}

fn posture(conn: &TlsConnection) -> Vec<Anomaly> {
    let mut rules = PostureRules::new(PostureConfig::default());
    let mut out = Vec::new();
    rules.on_session(
        &server(),
        &conn.session,
        unix_now() as u64 * 1_000_000_000,
        &mut out,
    );
    out
}

fn kinds(a: &[Anomaly]) -> Vec<&str> {
    a.iter().map(|a| a.kind.as_str()).collect()
}

#[test]
fn tls13_names_sni_alpn_and_version_and_hides_the_certificate() {
    let cert = TestCert::valid("api.example.test");
    let rec = openssl_handshake(
        &cert,
        &["-alpn", "h2,http/1.1"],
        &[
            "-servername",
            "api.example.test",
            "-alpn",
            "h2,http/1.1",
            "-tls1_3",
        ],
    );
    let conn = parse(&rec);
    let s = &conn.session;
    let ch = s
        .client_hello
        .as_ref()
        .unwrap_or_else(|| panic!("no ClientHello: {}", rec.client_output));
    assert_eq!(ch.sni.as_deref(), Some("api.example.test"));
    assert_eq!(ch.alpn, vec!["h2", "http/1.1"]);
    assert!(ch.supported_versions.contains(&ProtocolVersion::TLS13));
    assert_eq!(s.client_direction, Some(Direction::Egress));
    let sh = s
        .server_hello
        .as_ref()
        .unwrap_or_else(|| panic!("no ServerHello"));
    assert_eq!(
        sh.version,
        ProtocolVersion::TLS13,
        "legacy_version says 1.2; supported_versions 1.3"
    );
    assert!(
        sh.cipher.name.starts_with("TLS_AES_") || sh.cipher.name.starts_with("TLS_CHACHA20"),
        "{}",
        sh.cipher.name
    );
    // TLS 1.3 selects ALPN in EncryptedExtensions: only the offer is visible.
    assert_eq!(sh.alpn, None);
    assert!(
        s.server_certificate.is_none(),
        "TLS 1.3 encrypts the certificate"
    );
    // Both directions end at the first encrypted record.
    for d in Direction::BOTH {
        assert_eq!(
            conn.direction(d).state(),
            DirectionState::Stopped(StopReason::Encrypted)
        );
    }
    assert_eq!(conn.counters().malformed_messages, 0);
    assert!(posture(&conn).is_empty());
}

#[test]
fn tls12_shows_the_leaf_certificate_and_selected_alpn_in_clear() {
    let cert = TestCert::valid("orders.example.test");
    let rec = openssl_handshake(
        &cert,
        &["-alpn", "h2,http/1.1"],
        &[
            "-tls1_2",
            "-servername",
            "orders.example.test",
            "-alpn",
            "http/1.1",
        ],
    );
    let conn = parse(&rec);
    let s = &conn.session;
    assert_eq!(
        s.version(),
        Some(ProtocolVersion::TLS12),
        "{}",
        rec.client_output
    );
    let c = s
        .server_certificate
        .as_ref()
        .unwrap_or_else(|| panic!("no certificate"));
    assert_eq!(c.subject_cn.as_deref(), Some("orders.example.test"));
    assert_eq!(c.subject_org.as_deref(), Some("Sonde Test"));
    assert_eq!(c.issuer_cn.as_deref(), Some("orders.example.test"));
    assert!(c.self_signed);
    assert_eq!(c.dns_names, vec!["orders.example.test"]);
    assert_eq!(
        (c.not_before, c.not_after),
        (cert.not_before, cert.not_after)
    );
    assert_eq!(s.chain_len, 1);
    assert_eq!(s.alpn(), Some("http/1.1"));
    assert!(posture(&conn).is_empty(), "{:?}", kinds(&posture(&conn)));
}

#[test]
fn tls10_is_a_legacy_version_finding() {
    let cert = TestCert::valid("old.example.test");
    let rec = openssl_handshake(
        &cert,
        &["-cipher", "DEFAULT:@SECLEVEL=0"],
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    );
    let conn = parse(&rec);
    assert_eq!(
        conn.session.version(),
        Some(ProtocolVersion::TLS10),
        "{}",
        rec.client_output
    );
    let found = posture(&conn);
    assert_eq!(kinds(&found), vec!["tls.legacy_version"]);
    let a = &found[0];
    assert_eq!(a.severity, sonde_model::Severity::High);
    assert_eq!(a.category, sonde_model::OwaspCategory::Api8Misconfiguration);
    assert_eq!(
        a.evidence.details.get("version").map(String::as_str),
        Some("TLS 1.0")
    );
    assert!(a.explanation.contains("TLS 1.0"), "{}", a.explanation);
}

#[test]
fn null_and_anonymous_suites_are_weak_cipher_findings() {
    let cert = TestCert::valid("weak.example.test");
    let rec = openssl_handshake(
        &cert,
        &["-cipher", "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0"],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0"],
    );
    let conn = parse(&rec);
    let sh = conn
        .session
        .server_hello
        .as_ref()
        .unwrap_or_else(|| panic!("{}", rec.client_output));
    assert_eq!(sh.cipher.name, "TLS_ECDHE_ECDSA_WITH_NULL_SHA");
    assert_eq!(sh.cipher.weaknesses, vec![Weakness::Null]);
    let found = posture(&conn);
    assert_eq!(kinds(&found), vec!["tls.weak_cipher"]);
    assert_eq!(found[0].severity, sonde_model::Severity::Critical);

    let rec = openssl_handshake(
        &cert,
        &["-cipher", "AECDH-AES128-SHA:@SECLEVEL=0"],
        &["-tls1_2", "-cipher", "AECDH-AES128-SHA:@SECLEVEL=0"],
    );
    let conn = parse(&rec);
    let sh = conn
        .session
        .server_hello
        .as_ref()
        .unwrap_or_else(|| panic!("{}", rec.client_output));
    assert_eq!(sh.cipher.name, "TLS_ECDH_anon_WITH_AES_128_CBC_SHA");
    assert_eq!(sh.cipher.weaknesses, vec![Weakness::Anonymous]);
    assert!(
        conn.session.server_certificate.is_none(),
        "anonymous suites send no certificate"
    );
    assert_eq!(kinds(&posture(&conn)), vec!["tls.weak_cipher"]);
}

#[test]
fn an_expired_certificate_is_raised_once_per_server() {
    let now = unix_now();
    let cert = TestCert::self_signed("stale.example.test", now - 400 * 86_400, now - 35 * 86_400);
    let mut rules = PostureRules::new(PostureConfig::default());
    let mut out = Vec::new();
    for _ in 0..2 {
        let rec = openssl_handshake(&cert, &[], &["-tls1_2"]);
        let conn = parse(&rec);
        let c = conn
            .session
            .server_certificate
            .as_ref()
            .unwrap_or_else(|| panic!("{}", rec.client_output));
        assert_eq!(c.not_after, cert.not_after);
        rules.on_session(
            &server(),
            &conn.session,
            now as u64 * 1_000_000_000,
            &mut out,
        );
    }
    assert_eq!(
        kinds(&out),
        vec!["tls.certificate_expired"],
        "two connections, one finding"
    );
    let a = &out[0];
    assert_eq!(a.severity, sonde_model::Severity::High);
    assert_eq!(
        a.evidence.details.get("subject_cn").map(String::as_str),
        Some("stale.example.test")
    );
    assert!(a.evidence.details.contains_key("not_after"));

    let future = TestCert::self_signed("early.example.test", now + 30 * 86_400, now + 400 * 86_400);
    let conn = parse(&openssl_handshake(&future, &[], &["-tls1_2"]));
    assert_eq!(
        kinds(&posture(&conn)),
        vec!["tls.certificate_not_yet_valid"]
    );
}

#[test]
fn every_split_and_byte_by_byte_delivery_gives_the_same_session() {
    let cert = TestCert::valid("split.example.test");
    let rec = openssl_handshake(
        &cert,
        &["-alpn", "http/1.1"],
        &[
            "-tls1_2",
            "-servername",
            "split.example.test",
            "-alpn",
            "http/1.1",
        ],
    );
    let whole = parse(&rec).session;
    assert!(whole.server_certificate.is_some() && whole.client_hello.is_some());
    let up = rec.client_bytes();
    let down = rec.server_bytes();
    // The server's flight (hello, certificate, key exchange) split at every offset in two.
    for cut in 0..down.len().min(6000) {
        let mut conn = TlsConnection::new();
        conn.push(Direction::Egress, &up);
        conn.push(Direction::Ingress, &down[..cut]);
        conn.push(Direction::Ingress, &down[cut..]);
        assert_eq!(conn.session, whole, "cut at {cut}");
    }
    for cut in 0..up.len().min(2000) {
        let mut conn = TlsConnection::new();
        conn.push(Direction::Egress, &up[..cut]);
        conn.push(Direction::Egress, &up[cut..]);
        conn.push(Direction::Ingress, &down);
        assert_eq!(conn.session, whole, "client cut at {cut}");
    }
    let mut conn = TlsConnection::new();
    for b in &up {
        conn.push(Direction::Egress, std::slice::from_ref(b));
    }
    for b in &down {
        conn.push(Direction::Ingress, std::slice::from_ref(b));
    }
    assert_eq!(conn.session, whole, "byte by byte");
    // Coalesced: both flights in one delivery each is the same again.
    let mut conn = TlsConnection::new();
    conn.push(Direction::Ingress, &down);
    conn.push(Direction::Egress, &up);
    assert_eq!(conn.session.server_hello, whole.server_hello);
}

/// Offsets of the records of a direction's bytes.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 5 <= bytes.len() {
        out.push(off);
        off += 5 + u16::from_be_bytes([bytes[off + 3], bytes[off + 4]]) as usize;
    }
    out
}

#[test]
fn a_gap_inside_a_record_waits_for_the_next_record_without_inventing_facts() {
    let cert = TestCert::valid("gap.example.test");
    let rec = openssl_handshake(&cert, &[], &["-tls1_2"]);
    let down = rec.server_bytes();
    let mut conn = TlsConnection::new();
    conn.push(Direction::Egress, &rec.client_bytes());
    conn.push(Direction::Ingress, &down[..20]);
    conn.gap(Direction::Ingress, 100);
    assert_eq!(
        conn.direction(Direction::Ingress).state(),
        DirectionState::Resync
    );
    assert_eq!(conn.direction(Direction::Ingress).held_bytes(), 0);
    // Bytes that do not start a record are skipped, not parsed.
    conn.push(Direction::Ingress, &down[120..]);
    assert!(conn.session.server_hello.is_none());
    assert!(conn.session.server_certificate.is_none());
    assert_eq!(
        conn.direction(Direction::Ingress).state(),
        DirectionState::Resync
    );
}

#[test]
fn after_a_gap_parsing_resumes_at_a_record_boundary() {
    let cert = TestCert::valid("resync.example.test");
    let rec = openssl_handshake(&cert, &[], &["-tls1_2"]);
    let down = rec.server_bytes();
    let starts = record_starts(&down);
    assert!(
        starts.len() >= 3,
        "ServerHello, Certificate, ...: {starts:?}"
    );
    // The ServerHello record lost, the Certificate record delivered at its boundary.
    let mut conn = TlsConnection::new();
    conn.push(Direction::Egress, &rec.client_bytes());
    conn.gap(Direction::Ingress, starts[1] as u64);
    conn.push(Direction::Ingress, &down[starts[1]..]);
    assert!(conn.session.server_hello.is_none());
    let c = conn
        .session
        .server_certificate
        .as_ref()
        .unwrap_or_else(|| panic!("certificate after resync"));
    assert_eq!(c.subject_cn.as_deref(), Some("resync.example.test"));
    let d = conn.direction(Direction::Ingress);
    assert_eq!(d.counters().resyncs, 1);
    assert_eq!(d.state(), DirectionState::Stopped(StopReason::Encrypted));
    // The Certificate record lost instead: the ServerHello stands, the certificate is unknown.
    let mut conn = TlsConnection::new();
    conn.push(Direction::Egress, &rec.client_bytes());
    conn.push(Direction::Ingress, &down[..starts[1]]);
    conn.gap(Direction::Ingress, (starts[2] - starts[1]) as u64);
    conn.push(Direction::Ingress, &down[starts[2]..]);
    assert_eq!(conn.session.version(), Some(ProtocolVersion::TLS12));
    assert!(conn.session.server_certificate.is_none());
}
