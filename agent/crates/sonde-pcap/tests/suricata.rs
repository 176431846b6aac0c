//! Replays every pcap of suricata-verify and checks the rebuilt byte streams against what each
//! test's `test.yaml` (and, for expected alerts, `test.rules`) says is in the traffic.

mod common;

use std::path::{Path, PathBuf};

use sonde_model::{Direction, Role};
use sonde_pcap::PcapReader;
use yaml_rust2::{Yaml, YamlLoader};

use common::{Replay, contains, contains_nocase, replay};

fn pcaps_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable corpus dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "pcap" || e == "pcapng")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Request bytes (client → server) and response bytes of every connection, concatenated.
fn directional_bytes(replay: &Replay) -> (Vec<u8>, Vec<u8>) {
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for conn in replay.conns.values() {
        to_server.extend_from_slice(&conn.stream(Direction::Ingress).bytes);
        to_server.push(b'\n');
        to_client.extend_from_slice(&conn.stream(Direction::Egress).bytes);
        to_client.push(b'\n');
    }
    (to_server, to_client)
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = Vec<&str>> {
    bytes.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        std::str::from_utf8(line)
            .unwrap_or("")
            .split_ascii_whitespace()
            .collect()
    })
}

#[test]
fn every_suricata_pcap_replays_without_error() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    let pcaps = pcaps_under(&dir);
    assert!(
        pcaps.len() >= 30,
        "expected the suricata-verify pcaps, found {}",
        pcaps.len()
    );
    for pcap in &pcaps {
        let reader = PcapReader::open(pcap).unwrap_or_else(|e| panic!("{e}"));
        let replay = replay(reader);
        let name = pcap.display();
        assert!(replay.error.is_none(), "{name}: {:?}", replay.error);
        let stats = replay.stats;
        assert!(stats.records > 0, "{name}: no records");
        assert_eq!(
            stats.malformed + stats.unsupported_link,
            0,
            "{name}: {stats:?}"
        );
        assert!(!replay.conns.is_empty(), "{name}: no connection");
        let bytes: usize = replay
            .conns
            .values()
            .flat_map(|c| c.streams.iter())
            .map(|s| s.bytes.len())
            .sum();
        assert!(bytes > 0, "{name}: no payload rebuilt");
        // With the handshake seen, offset 0 is the first byte each side sent: a request line or
        // the HTTP/2 preface from the client; a status line or a SETTINGS frame from the server
        // (http-missing-protocol's server answers with bare bytes).
        for conn in replay
            .conns
            .values()
            .filter(|c| c.open.role == Role::Server)
        {
            let request = &conn.stream(Direction::Ingress).bytes;
            let method_end = request.iter().position(|&b| b == b' ').unwrap_or(0);
            assert!(
                request.starts_with(b"PRI * HTTP/2.0\r\n")
                    || (method_end > 0 && request[..method_end].iter().all(u8::is_ascii_uppercase)),
                "{name}: client stream starts with {:?}",
                String::from_utf8_lossy(&request[..request.len().min(20)])
            );
            let response = &conn.stream(Direction::Egress).bytes;
            let settings_frame =
                response.get(3) == Some(&4) && response.get(5..9) == Some(&[0, 0, 0, 0]);
            if !response.is_empty() && !name.to_string().contains("http-missing-protocol") {
                assert!(
                    response.starts_with(b"HTTP/1.") || settings_frame,
                    "{name}: server stream starts with {:?}",
                    &response[..response.len().min(12)]
                );
            }
        }
        // Every payload byte on the wire is either delivered, reported missing, or counted as
        // a duplicate.
        let delivered: u64 = replay
            .conns
            .values()
            .flat_map(|c| c.streams.iter())
            .map(|s| s.len)
            .sum();
        let r = stats.reassembly;
        assert!(
            delivered + r.retransmitted_bytes + r.bytes_after_fin >= r.payload_bytes,
            "{name}: {delivered} delivered of {} on the wire: {r:?}",
            r.payload_bytes
        );
    }
}

/// What one `filter` of a test.yaml expects of an HTTP transaction.
#[derive(Debug, Default)]
struct HttpExpectation {
    count: usize,
    method: Option<String>,
    url: Option<String>,
    protocol: Option<String>,
    hostname: Option<String>,
    status: Option<String>,
}

fn yaml_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The `checks` of a test.yaml: HTTP expectations and the signature ids expected to alert.
fn read_checks(test_yaml: &Path) -> (Vec<HttpExpectation>, Vec<i64>) {
    let text = std::fs::read_to_string(test_yaml).expect("readable test.yaml");
    let docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", test_yaml.display()));
    let (mut http, mut alerts) = (Vec::new(), Vec::new());
    let Some(checks) = docs.first().and_then(|d| d["checks"].as_vec()) else {
        return (http, alerts);
    };
    for check in checks {
        let filter = &check["filter"];
        let count = filter["count"].as_i64().unwrap_or(0);
        let matcher = &filter["match"];
        if count < 1 {
            continue;
        }
        match matcher["event_type"].as_str() {
            Some("http") => http.push(HttpExpectation {
                count: count as usize,
                method: yaml_text(&matcher["http.http_method"]),
                url: yaml_text(&matcher["http.url"]),
                protocol: yaml_text(&matcher["http.protocol"]),
                hostname: yaml_text(&matcher["http.hostname"]),
                status: yaml_text(&matcher["http.status"])
                    .or_else(|| yaml_text(&matcher["http.status_string"])),
            }),
            Some("alert") => alerts.extend(matcher["alert.signature_id"].as_i64()),
            _ => {}
        }
    }
    (http, alerts)
}

fn is_delimiter(b: Option<&u8>) -> bool {
    matches!(b, Some(b' ' | b'\r' | b'\n'))
}

/// Request lines `METHOD URL [PROTOCOL]` anywhere in the stream (a request may follow a body
/// with no line break before it).
fn count_requests(stream: &[u8], expected: &HttpExpectation) -> usize {
    let Some(url) = &expected.url else {
        return lines(stream)
            .filter(|t| !t.is_empty())
            .filter(|t| expected.method.as_deref().is_none_or(|m| t[0] == m))
            .filter(|t| {
                expected
                    .protocol
                    .as_deref()
                    .is_none_or(|p| t.get(2) == Some(&p))
            })
            .count();
    };
    let needle = format!(" {url}");
    (0..stream.len())
        .filter(|&i| stream[i..].starts_with(needle.as_bytes()))
        .filter(|&i| is_delimiter(stream.get(i + needle.len())))
        .filter(|&i| {
            let method_start = stream[..i]
                .iter()
                .rposition(|b| !b.is_ascii_uppercase())
                .map_or(0, |p| p + 1);
            let method = &stream[method_start..i];
            !method.is_empty()
                && expected
                    .method
                    .as_deref()
                    .is_none_or(|m| method == m.as_bytes())
        })
        .filter(|&i| {
            expected
                .protocol
                .as_deref()
                .is_none_or(|p| stream[i + needle.len()..].starts_with(format!(" {p}").as_bytes()))
        })
        .count()
}

/// Status lines `HTTP/1.x STATUS` anywhere in the stream.
fn count_statuses(stream: &[u8], status: &str) -> usize {
    ["HTTP/1.0", "HTTP/1.1"]
        .iter()
        .map(|version| {
            let needle = format!("{version} {status}");
            (0..stream.len())
                .filter(|&i| {
                    stream[i..].starts_with(needle.as_bytes())
                        && is_delimiter(stream.get(i + needle.len()))
                })
                .count()
        })
        .sum()
}

fn check_http(name: &str, replay: &Replay, expected: &HttpExpectation) {
    let (to_server, to_client) = directional_bytes(replay);
    let wants_request =
        expected.method.is_some() || expected.url.is_some() || expected.protocol.is_some();
    if wants_request {
        assert_eq!(
            count_requests(&to_server, expected),
            expected.count,
            "{name}: request lines matching {expected:?}"
        );
    }
    if let Some(host) = &expected.hostname {
        let found = lines(&to_server).any(|t| {
            t.len() == 2 && t[0].eq_ignore_ascii_case("host:") && t[1].starts_with(host.as_str())
        });
        assert!(found, "{name}: no Host: {host}");
    }
    if let Some(status) = &expected.status {
        let responses = count_statuses(&to_client, status);
        if wants_request {
            assert!(
                responses >= expected.count,
                "{name}: {responses} responses with status {status}"
            );
        } else {
            assert_eq!(
                responses, expected.count,
                "{name}: responses with status {status}"
            );
        }
    }
}

/// A `content:"..."` of a rule, with `|hex|` runs decoded.
fn rule_content(raw: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in raw.split('|').enumerate() {
        if i % 2 == 0 {
            out.extend_from_slice(part.as_bytes());
        } else {
            out.extend(
                part.split_ascii_whitespace()
                    .filter_map(|h| u8::from_str_radix(h, 16).ok()),
            );
        }
    }
    out
}

/// For a rule expected to alert: every content it matches is in the stream its `flow` names.
fn check_rule(name: &str, replay: &Replay, rule: &str) {
    let (to_server, to_client) = directional_bytes(replay);
    let flow = rule
        .split(';')
        .find_map(|opt| opt.trim().strip_prefix("flow:"))
        .unwrap_or("");
    let stream: Option<&[u8]> = if flow.contains("to_server") || flow.contains("from_client") {
        Some(&to_server)
    } else if flow.contains("to_client") || flow.contains("from_server") {
        Some(&to_client)
    } else {
        None
    };
    let options: Vec<&str> = rule.split(';').map(str::trim).collect();
    for (i, option) in options.iter().enumerate() {
        let Some(value) = option.strip_prefix("content:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('!') {
            continue;
        }
        let needle = rule_content(value.trim_matches('"'));
        assert!(!needle.is_empty(), "{name}: cannot read content {value}");
        let nocase = options[i + 1..]
            .iter()
            .take_while(|o| !o.starts_with("content:"))
            .any(|o| *o == "nocase");
        let find = |hay: &[u8]| {
            if nocase {
                contains_nocase(hay, &needle)
            } else {
                contains(hay, &needle)
            }
        };
        let found = match stream {
            Some(s) => find(s),
            None => find(&to_server) || find(&to_client),
        };
        assert!(
            found,
            "{name}: content {value} ({flow}) not in the rebuilt stream"
        );
    }
}

#[test]
fn http1_streams_hold_what_test_yaml_expects() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    let mut checked_http = 0;
    let mut checked_rules = 0;
    for pcap in pcaps_under(&dir) {
        let test_dir = pcap.parent().expect("pcap in a test dir");
        let test_name = test_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let parent = test_dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let http1 = ["http-", "http1-"]
            .iter()
            .any(|p| test_name.starts_with(p) || parent.starts_with(p));
        if !http1 {
            continue;
        }
        let name = pcap.display().to_string();
        let replay = replay(PcapReader::open(&pcap).unwrap_or_else(|e| panic!("{e}")));
        for conn in replay.conns.values() {
            assert_eq!(
                conn.open.role,
                Role::Server,
                "{name}: every HTTP/1 test here has its handshake"
            );
        }
        let (http, alerts) = read_checks(&test_dir.join("test.yaml"));
        for expected in &http {
            check_http(&name, &replay, expected);
            checked_http += 1;
        }
        let rules = std::fs::read_to_string(test_dir.join("test.rules")).unwrap_or_default();
        for sid in alerts {
            let tag = format!("sid:{sid};");
            if let Some(rule) = rules
                .lines()
                .find(|l| !l.trim_start().starts_with('#') && l.replace(' ', "").contains(&tag))
            {
                check_rule(&name, &replay, rule);
                checked_rules += 1;
            }
        }
    }
    eprintln!("{checked_http} HTTP expectations and {checked_rules} alerting rules checked");
    assert!(
        checked_http >= 16,
        "only {checked_http} HTTP expectations checked"
    );
    assert!(checked_rules >= 30, "only {checked_rules} rules checked");
}

#[test]
fn suricata_gap_pcaps_report_the_missing_response_bytes() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    // http-gap-simple: one 14-byte segment of the /3 response body is missing (its fileinfo is
    // 70 bytes, TRUNCATED, with gaps).
    let simple = replay(PcapReader::open(dir.join("http-gap-simple/input.pcap")).expect("open"));
    let conn = simple.conns.values().next().expect("one connection");
    let response = conn.stream(Direction::Egress);
    assert_eq!(response.gaps.len(), 1, "{:?}", response.gaps);
    assert_eq!(response.missing, 14);
    assert_eq!(response.len, response.bytes.len() as u64 + 14);
    assert_eq!(conn.stream(Direction::Ingress).missing, 0);
    // The hole is inside the second body: all three status lines are there.
    assert_eq!(count_statuses(&response.bytes, "200"), 3);
    // The gap sits where the 14-byte segment was: after the second response's first 56 bytes
    // of body.
    let (offset, len) = response.gaps[0];
    assert_eq!(len, 14);
    let before = &response.bytes[..offset as usize];
    assert!(
        before.ends_with(b"\r\n\r\nAAAAAAAAAAAAAA"),
        "gap misplaced at {offset}"
    );
}

/// Hands out its bytes a few at a time, so records straddle every kind of read boundary.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        self.step = self.step % 13 + 1;
        Ok(n)
    }
}

fn streams(replay: &Replay) -> Vec<(Vec<u8>, Vec<u8>)> {
    replay
        .conns
        .values()
        .map(|c| {
            (
                c.stream(Direction::Ingress).bytes.clone(),
                c.stream(Direction::Egress).bytes.clone(),
            )
        })
        .collect()
}

#[test]
fn short_reads_give_the_same_events() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    for pcap in pcaps_under(&dir).iter().step_by(3) {
        let whole = replay(PcapReader::open(pcap).expect("open"));
        let bytes = std::fs::read(pcap).expect("read");
        let reader = PcapReader::from_reader(
            "trickle",
            Trickle {
                bytes,
                at: 0,
                step: 1,
            },
            Default::default(),
        )
        .expect("open trickle");
        let trickled = replay(reader);
        assert!(
            trickled.error.is_none(),
            "{}: {:?}",
            pcap.display(),
            trickled.error
        );
        assert_eq!(trickled.events, whole.events, "{}", pcap.display());
    }
}

#[test]
fn every_prefix_of_a_capture_rebuilds_a_prefix_of_its_streams() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    let path = dir.join("http-async/input.pcap");
    let bytes = std::fs::read(&path).expect("read");
    let full = streams(&replay(PcapReader::open(&path).expect("open")));
    for cut in (0..bytes.len()).step_by(5) {
        let prefix = bytes[..cut].to_vec();
        let reader = match PcapReader::from_reader(
            "prefix",
            std::io::Cursor::new(prefix),
            Default::default(),
        ) {
            Ok(reader) => reader,
            Err(e) => {
                assert!(cut < 24, "cut at {cut}: {e}");
                continue;
            }
        };
        let partial = replay(reader);
        let got = streams(&partial);
        assert!(got.len() <= full.len());
        for ((gi, ge), (fi, fe)) in got.iter().zip(&full) {
            assert!(fi.starts_with(gi) && fe.starts_with(ge), "cut at {cut}");
        }
        if let Some(e) = &partial.error {
            assert!(
                matches!(e, sonde_pcap::PcapError::Truncated { .. }),
                "cut at {cut}: {e}"
            );
        }
    }
}
