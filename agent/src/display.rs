//! Human-readable lines for the debugging views.

use std::fmt::Write as _;

use sonde_model::{CaptureEvent, Direction, Role};

/// Payload as printable text: ASCII kept, `\r \n \t \\` and `\xHH` escapes, cut at `max` bytes.
pub fn escape_payload(bytes: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > max {
        let _ = write!(s, "…(+{} bytes)", bytes.len() - max);
    }
    s
}

/// Local wall-clock time of a Unix-ns timestamp as `HH:MM:SS.micros` (UTC).
pub fn clock(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let micros = (ts_ns % 1_000_000_000) / 1_000;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// One line per capture event.
pub fn event_line(ev: &CaptureEvent, max_payload: usize) -> String {
    match ev {
        CaptureEvent::Open(o) => {
            let role = match o.role {
                Role::Client => "client",
                Role::Server => "server",
                Role::Unknown => "unknown-role",
            };
            let addr = |a: Option<std::net::SocketAddr>| {
                a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
            };
            format!(
                "{} OPEN  {}[{}] conn={} {role} local={} remote={} cgroup={}",
                clock(o.ts_ns),
                o.process.comm,
                o.process.pid,
                o.conn,
                addr(o.local),
                addr(o.remote),
                o.process.cgroup_id
            )
        }
        CaptureEvent::Data(d) => {
            let dir = match d.direction {
                Direction::Egress => "egress ",
                Direction::Ingress => "ingress",
            };
            let missing = if d.missing() > 0 {
                format!(" missing={}", d.missing())
            } else {
                String::new()
            };
            format!(
                "{} DATA  conn={} tid={} {dir} off={} len={}{missing} \"{}\"",
                clock(d.ts_ns),
                d.conn,
                d.tid,
                d.offset,
                d.len,
                escape_payload(&d.data, max_payload)
            )
        }
        CaptureEvent::Close(c) => format!("{} CLOSE conn={}", clock(c.ts_ns), c.conn),
    }
}

/// One line per exchange: `METHOD host/path -> status, sizes, latency, pid/process`.
pub fn exchange_line(ex: &sonde_model::Exchange) -> String {
    let req = &ex.request;
    let host = req.authority.as_deref().unwrap_or("-");
    let query = req
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let status = match &ex.response {
        Some(r) => r.status.to_string(),
        None => "(no response)".into(),
    };
    let resp_len = ex.response.as_ref().map(|r| r.body.wire_len).unwrap_or(0);
    let latency = ex
        .latency_ns()
        .map(|ns| format!("{:.2}ms", ns as f64 / 1e6))
        .unwrap_or_else(|| "-".into());
    let grpc = ex
        .grpc
        .as_ref()
        .map(|g| {
            format!(
                " grpc-status={}",
                g.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            )
        })
        .unwrap_or_default();
    let flags = ex.flags.names();
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(","))
    };
    let peer = match ex.conn.role {
        Role::Server => "server",
        Role::Client => "client",
        Role::Unknown => "?",
    };
    format!(
        "{} {} {host}{}{query} -> {status}{grpc}, req {}B resp {}B, {latency}, {}[{}] ({peer} side, {}){flags}",
        clock(req.ts_start_ns),
        req.method,
        req.path,
        req.body.wire_len,
        resp_len,
        ex.conn.process.comm,
        ex.conn.process.pid,
        ex.version.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_escaped_and_cut() {
        assert_eq!(
            escape_payload(b"GET / HTTP/1.1\r\n", 100),
            "GET / HTTP/1.1\\r\\n"
        );
        assert_eq!(escape_payload(&[0, 0xff, b'a'], 100), "\\x00\\xffa");
        assert_eq!(escape_payload(b"abcdef", 3), "abc…(+3 bytes)");
        assert_eq!(escape_payload(b"a\"b\\", 10), "a\\\"b\\\\");
    }

    #[test]
    fn clock_is_hours_minutes_seconds_micros() {
        assert_eq!(clock(3_723_000_456_000), "01:02:03.000456");
    }
}
