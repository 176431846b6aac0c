//! Both directions of a connection from arbitrary bytes: the first byte picks the chunk size and
//! which direction each chunk goes to; memory stays within one record and one message per
//! direction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_model::Direction;
use sonde_tls::{MAX_HANDSHAKE_MESSAGE, MAX_RECORD_PAYLOAD, TlsConnection};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode >> 1).max(1);
    let mut conn = TlsConnection::new();
    for (i, piece) in rest.chunks(chunk).enumerate() {
        let dir = if (i + usize::from(mode & 1)) % 2 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        conn.push(dir, piece);
        assert!(conn.held_bytes() <= 4 * (5 + MAX_RECORD_PAYLOAD + 4 + MAX_HANDSHAKE_MESSAGE));
    }
});
