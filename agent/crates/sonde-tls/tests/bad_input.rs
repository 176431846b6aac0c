//! Garbage, truncation and mutations of real handshakes: bounded memory, no panic.

use std::sync::OnceLock;

use proptest::prelude::*;
use sonde_model::Direction;
use sonde_tls::harness::{Recording, TestCert, openssl_handshake};
use sonde_tls::{
    DirectionState, MAX_HANDSHAKE_MESSAGE, MAX_RECORD_PAYLOAD, StopReason, TlsConnection,
};

/// Most a connection may hold: per direction one record and one message, with Vec growth slack.
const BOUND: usize = 2 * 2 * (5 + MAX_RECORD_PAYLOAD + 4 + MAX_HANDSHAKE_MESSAGE);

fn real() -> &'static Recording {
    static REC: OnceLock<Recording> = OnceLock::new();
    REC.get_or_init(|| {
        let cert = TestCert::valid("fuzz.example.test");
        openssl_handshake(&cert, &[], &["-tls1_2", "-servername", "fuzz.example.test"])
    })
}

fn feed(chunks: &[(bool, Vec<u8>)]) -> TlsConnection {
    let mut conn = TlsConnection::new();
    for (egress, data) in chunks {
        let dir = if *egress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        conn.push(dir, data);
        assert!(conn.held_bytes() <= BOUND, "held {}", conn.held_bytes());
    }
    conn
}

#[test]
fn text_is_not_tls_and_is_dropped_at_once() {
    let mut conn = TlsConnection::new();
    conn.push(Direction::Egress, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        conn.direction(Direction::Egress).state(),
        DirectionState::Stopped(StopReason::NotTls)
    );
    assert_eq!(conn.held_bytes(), 0);
    assert!(conn.session.client_hello.is_none());
}

#[test]
fn an_oversized_handshake_message_stops_the_direction() {
    // A handshake record announcing a 16 MiB message, followed by as many records as it takes.
    let mut conn = TlsConnection::new();
    let mut rec = vec![0x16, 3, 3, 0x40, 0x00, 11, 0xff, 0xff, 0xff];
    rec.resize(5 + 0x4000, 0xaa);
    for _ in 0..8 {
        conn.push(Direction::Ingress, &rec);
    }
    assert_eq!(
        conn.direction(Direction::Ingress).state(),
        DirectionState::Stopped(StopReason::TooLarge)
    );
    assert_eq!(conn.held_bytes(), 0);
}

#[test]
fn truncated_real_flights_learn_only_what_arrived() {
    let r = real();
    let down = r.server_bytes();
    for cut in (0..down.len()).step_by(7) {
        let mut conn = TlsConnection::new();
        conn.push(Direction::Egress, &r.client_bytes());
        conn.push(Direction::Ingress, &down[..cut]);
        // What a truncated flight shows is never more than the whole one.
        if conn.session.server_certificate.is_some() {
            assert!(conn.session.server_hello.is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(chunks in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..2048)), 0..16)) {
        feed(&chunks);
    }

    #[test]
    fn records_with_random_bodies_never_panic(
        bodies in prop::collection::vec((0u8..30, prop::collection::vec(any::<u8>(), 0..600)), 1..12),
    ) {
        // Valid record framing around random handshake bytes: the message parsers get garbage.
        let mut bytes = Vec::new();
        for (ty, body) in &bodies {
            bytes.extend_from_slice(&[20 + ty % 5, 3, 3]);
            bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        feed(&[(false, bytes)]);
    }

    #[test]
    fn mutated_real_handshakes_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..24),
        cut in any::<prop::sample::Index>(),
    ) {
        let r = real();
        let mut down = r.server_bytes();
        for (at, v) in &flips {
            let i = at.index(down.len());
            down[i] = *v;
        }
        let c = cut.index(down.len());
        feed(&[(true, r.client_bytes()), (false, down[..c].to_vec()), (false, down[c..].to_vec())]);
    }
}
