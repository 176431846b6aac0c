//! Handshakes parsed per second: both directions of real openssl handshakes (TLS 1.2 with its
//! certificate in clear, TLS 1.3), delivered in the reads the relay saw.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_model::Direction;
use sonde_tls::TlsConnection;
use sonde_tls::harness::{Recording, TestCert, openssl_handshake};

fn parse(rec: &Recording) -> TlsConnection {
    let mut conn = TlsConnection::new();
    for c in &rec.client_to_server {
        conn.push(Direction::Egress, c);
    }
    for c in &rec.server_to_client {
        conn.push(Direction::Ingress, c);
    }
    conn
}

fn bench(c: &mut Criterion) {
    let cert = TestCert::valid("bench.example.test");
    let cases = [
        (
            "tls1.2_with_certificate",
            openssl_handshake(
                &cert,
                &[],
                &["-tls1_2", "-servername", "bench.example.test"],
            ),
        ),
        (
            "tls1.3",
            openssl_handshake(
                &cert,
                &["-alpn", "h2"],
                &[
                    "-tls1_3",
                    "-servername",
                    "bench.example.test",
                    "-alpn",
                    "h2",
                ],
            ),
        ),
    ];
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    for (name, rec) in &cases {
        assert!(
            parse(rec).session.server_hello.is_some(),
            "{name}: {}",
            rec.client_output
        );
        g.bench_function(*name, |b| b.iter(|| parse(std::hint::black_box(rec))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
