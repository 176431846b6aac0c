//! The record layer's framing: what tells a TLS byte stream from anything else.

/// Bytes of a record header: content type, legacy version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;

/// Largest record payload a peer may send: 2^14 plaintext plus 2048 of expansion (RFC 5246
/// section 6.2.3, the TLSCiphertext bound; TLS 1.3 allows less).
pub const MAX_RECORD_PAYLOAD: usize = (1 << 14) + 2048;

/// Content types of the record layer (RFC 8446 section 5.1, RFC 6520 for heartbeat).
pub(crate) mod content_type {
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
    pub const HEARTBEAT: u8 = 24;
}

/// Whether `first` (the first bytes of one direction of a connection) starts with a TLS record
/// header: a handshake, alert, change-cipher-spec or application-data record of version 3.x
/// (SSL 3.0 to TLS 1.3, whose records say 3.1 or 3.3) with a length a peer may send.
///
/// This is the one rule, shared by the posture parser and the TLS plaintext capture, that decides
/// a connection carries TLS rather than HTTP: no HTTP/1 message starts with a byte below 0x20, and
/// an HTTP/2 frame header read as a record header would need a frame of at least 0x140300
/// bytes, larger than any peer's maximum frame size unless it raised the limit past 1 MiB.
/// With fewer than 5 bytes it answers on the bytes present (type and version only).
pub fn looks_like_tls_record(first: &[u8]) -> bool {
    let [ty, major, minor, rest @ ..] = first else {
        return false;
    };
    if !matches!(
        *ty,
        content_type::CHANGE_CIPHER_SPEC
            | content_type::ALERT
            | content_type::HANDSHAKE
            | content_type::APPLICATION_DATA
    ) || *major != 3
        || *minor > 4
    {
        return false;
    }
    match rest {
        [hi, lo, ..] => {
            let len = u16::from_be_bytes([*hi, *lo]) as usize;
            len > 0 && len <= MAX_RECORD_PAYLOAD
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_headers_are_told_from_http() {
        assert!(looks_like_tls_record(&[0x16, 3, 1, 0x02, 0x00, 1]));
        assert!(looks_like_tls_record(&[0x17, 3, 3, 0x40, 0x11]));
        assert!(looks_like_tls_record(&[0x15, 3, 3, 0, 2, 2, 40]));
        assert!(!looks_like_tls_record(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_tls_record(b"PRI * HTTP/2.0\r\n"));
        assert!(!looks_like_tls_record(b"HTTP/1.1 200 OK\r\n"));
        // An HTTP/2 SETTINGS frame (a server speaking first).
        assert!(!looks_like_tls_record(&[0, 0, 18, 4, 0, 0, 0, 0, 0]));
        // Version 3.5 is no TLS; a zero or oversized length is no record.
        assert!(!looks_like_tls_record(&[0x16, 3, 5, 0, 10]));
        assert!(!looks_like_tls_record(&[0x16, 3, 3, 0, 0]));
        assert!(!looks_like_tls_record(&[0x16, 3, 3, 0xff, 0xff]));
        assert!(!looks_like_tls_record(&[0x16, 3]));
        assert!(looks_like_tls_record(&[0x16, 3, 1]));
    }
}
