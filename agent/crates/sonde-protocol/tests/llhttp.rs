//! Data-driven over the llhttp test suite (markdown cases with the raw message and the parse
//! events llhttp expects): method, URL, status, header names and values, body length, and
//! error versus no error, through the whole `Tracker`.

mod common;

use std::path::Path;

use common::{Delivery, corpus, to_events, track};
use sonde_model::{Direction, Exchange, ExchangeFlags};

/// Case types not run, with the reason.
const SKIPPED_TYPES: &[(&str, &str)] = &[
    (
        "url",
        "llhttp's URL-parser unit tests: no HTTP message to feed",
    ),
    (
        "lenient",
        "llhttp lenient-flag modes (request-lenient-*, response-lenient-*): the expected events \
         depend on llhttp switches we do not model; our own leniency is tested where it applies",
    ),
    (
        "finish",
        "llhttp_finish() semantics of a parser API, not of a byte stream",
    ),
];

/// Cases without an HTTP/1.x message: HTTP/0.9 has no headers and RTSP/ICE are other
/// protocols; the tracker classifies HTTP/1.x only.
fn is_http1(input: &[u8]) -> bool {
    input.windows(7).any(|w| w == b"HTTP/1.")
}

/// Error cases of llhttp's strict mode that we accept on purpose: a passive sensor must follow
/// what real peers accept, and these forms are accepted by common servers and clients.
const LENIENT_BY_DESIGN: &[(&str, &str)] = &[
    (
        "invalid.md: Extra space between HTTP version and status code",
        "repeated SP in status line",
    ),
    (
        "invalid.md: Only LFs present and no body",
        "bare LF line ends",
    ),
    ("invalid.md: Only LFs present", "bare LF line ends"),
    ("sample.md: No carriage ret", "bare LF line ends"),
    (
        "sample.md: Spaces in header name",
        "invalid field lines are skipped, not fatal",
    ),
    (
        "transfer-encoding.md: Trailing space on chunked body",
        "whitespace after chunk size",
    ),
    (
        "transfer-encoding.md: No semicolon before chunk extensions",
        "chunk line tail skipped",
    ),
    (
        "transfer-encoding.md: No extension after semicolon",
        "empty chunk extension",
    ),
];

/// Flags that show we noticed something wrong with a message.
const NOTICED: u32 = ExchangeFlags::SMUGGLING
    | ExchangeFlags::TRUNCATED
    | ExchangeFlags::RESYNCED
    | ExchangeFlags::HEADERS_CUT
    | ExchangeFlags::RESPONSE_MISSING
    | ExchangeFlags::GAP;

#[derive(Debug, Default, Clone)]
struct Expected {
    method: String,
    url: String,
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body_len: u64,
    headers_done: bool,
    complete: bool,
}

#[derive(Debug)]
struct Case {
    file: String,
    title: String,
    kind: String,
    skip_body: bool,
    input: Vec<u8>,
    messages: Vec<Expected>,
    error: bool,
}

/// The corpus README's input rules: strip one trailing newline, join backslash-newline, turn
/// newlines into CRLF, then unescape `\r \n \t \f \xHH`.
fn normalize(raw: &str) -> Vec<u8> {
    let s = raw.strip_suffix('\n').unwrap_or(raw);
    let s = s.replace("\\\r\n", "").replace("\\\n", "");
    let s = s.replace("\r\n", "\n").replace('\n', "\r\n");
    unescape(s.as_bytes())
}

fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'f' => {
                    out.push(0x0c);
                    i += 2;
                    continue;
                }
                b'x' => {
                    let hex: Vec<u8> = b[i + 2..]
                        .iter()
                        .take_while(|c| c.is_ascii_hexdigit())
                        .copied()
                        .collect();
                    if !hex.is_empty() {
                        let v = u32::from_str_radix(std::str::from_utf8(&hex).unwrap_or("0"), 16)
                            .unwrap_or(0);
                        // Non-ASCII bytes stand for themselves in the input, and for their
                        // ISO-8859-1 character in the log (how we decode non-UTF-8 fields).
                        out.push((v & 0xff) as u8);
                        i += 2 + hex.len();
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A quoted string of the log: spans between the quotes, with control bytes escaped as in the
/// input (`\r \n \t \f \xHH`) and quotes left as they are.
fn log_string(s: &str) -> String {
    let s = s.trim_end_matches(['\r', '\n']);
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    // The same escapes as the input; the text is never multi-line, so no CRLF rewriting.
    String::from_utf8_lossy(&unescape(inner.as_bytes())).into_owned()
}

fn parse_log(log: &str) -> (Vec<Expected>, bool) {
    let mut msgs: Vec<Expected> = Vec::new();
    let mut error = false;
    let mut last_span = "";
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        if rest.starts_with("message begin") {
            msgs.push(Expected::default());
            last_span = "";
            continue;
        }
        if rest.starts_with("error") {
            error = true;
            continue;
        }
        let Some(m) = msgs.last_mut() else { continue };
        if rest.starts_with("message complete") {
            m.complete = true;
        } else if let Some(h) = rest.strip_prefix("headers complete") {
            m.headers_done = true;
            if let Some(st) = h.strip_prefix(" status=") {
                m.status = st.split(' ').next().and_then(|s| s.parse().ok());
            }
        } else if let Some(span) = rest.split_once("span[") {
            let (kind, value) = span.1.split_once("]=").unwrap_or(("", ""));
            let len: u64 = rest
                .strip_prefix("len=")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let value = log_string(value);
            match kind {
                "method" => m.method.push_str(&value),
                "url" => m.url.push_str(&value),
                "header_field" => {
                    if last_span == "header_field" {
                        if let Some(h) = m.headers.last_mut() {
                            h.0.push_str(&value);
                        }
                    } else {
                        m.headers.push((value, String::new()));
                    }
                }
                "header_value" => {
                    if let Some(h) = m.headers.last_mut() {
                        h.1.push_str(&value);
                    }
                }
                "body" => m.body_len += len,
                _ => {}
            }
            if !kind.is_empty() {
                last_span = match kind {
                    "header_field" => "header_field",
                    "header_value" => "header_value",
                    _ => "other",
                };
            }
        }
    }
    (msgs, error)
}

fn read_cases(dir: &Path, out: &mut Vec<Case>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable corpus dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_cases(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("utf-8 markdown");
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut title = String::new();
        let mut meta = serde_json::Value::Null;
        let mut block: Option<(String, String)> = None;
        let mut input: Option<(String, Vec<u8>)> = None;
        for line in text.split_inclusive('\n') {
            if let Some((lang, body)) = block.as_mut() {
                if line.trim_end() == "```" {
                    let (lang, body) = (std::mem::take(lang), std::mem::take(body));
                    block = None;
                    if lang == "log" {
                        if let Some((kind, bytes)) = input.take() {
                            let (messages, error) = parse_log(&body);
                            out.push(Case {
                                file: file.clone(),
                                title: title.clone(),
                                kind,
                                skip_body: meta.get("skipBody").is_some(),
                                input: bytes,
                                messages,
                                error,
                            });
                        }
                        meta = serde_json::Value::Null;
                    } else {
                        let kind = meta
                            .get("type")
                            .and_then(|t| t.as_str())
                            .unwrap_or(if lang == "url" { "url" } else { "request" })
                            .to_owned();
                        let kind = if lang == "url" {
                            "url".to_owned()
                        } else {
                            kind
                        };
                        input = Some((kind, normalize(&body)));
                    }
                } else {
                    body.push_str(line);
                }
                continue;
            }
            if let Some(h) = line.strip_prefix('#') {
                title = h.trim_start_matches('#').trim().to_owned();
            } else if let Some(m) = line.trim().strip_prefix("<!-- meta=") {
                let json = m.trim_end_matches("-->").trim();
                meta = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
            } else if let Some(lang) = line.trim_end().strip_prefix("```") {
                block = Some((lang.to_owned(), String::new()));
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every complete message matched (and, for error cases, the bad one was not taken as a
    /// clean message).
    Pass,
    /// An error case whose bad message we accepted cleanly (lenient where llhttp is strict).
    Lenient,
    Fail(String),
}

fn our_url(x: &Exchange) -> String {
    match &x.request.query {
        Some(q) => format!("{}?{}", x.request.path, q),
        None => x.request.path.clone(),
    }
}

/// The path-and-query a passive parser reports for a request target: the origin form as sent,
/// the absolute form without scheme and authority.
fn expected_url(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let tail = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    }
}

/// Field values without surrounding whitespace: RFC 9110 section 5.5 excludes it from the
/// value, where llhttp keeps trailing tabs in its span.
fn ows_trimmed(v: &str) -> String {
    v.trim_matches([' ', '\t']).to_owned()
}

fn compare(e: &Expected, x: &Exchange, response: bool) -> Result<(), String> {
    let (headers, trailers, body_len) = if response {
        let Some(r) = &x.response else {
            return Err("no response".into());
        };
        if Some(r.status) != e.status {
            return Err(format!("status {} != {:?}", r.status, e.status));
        }
        (&r.headers, &r.trailers, r.body.wire_len)
    } else {
        if x.request.method != e.method {
            return Err(format!("method {:?} != {:?}", x.request.method, e.method));
        }
        let url = our_url(x);
        if url != expected_url(&e.url) {
            return Err(format!("url {url:?} != {:?}", e.url));
        }
        (
            &x.request.headers,
            &x.request.trailers,
            x.request.body.wire_len,
        )
    };
    // llhttp reports trailer fields as more header spans after the body.
    let ours: Vec<(String, String)> = headers
        .iter()
        .chain(trailers)
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    let theirs: Vec<(String, String)> = e
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), ows_trimmed(v)))
        .collect();
    if ours != theirs {
        return Err(format!("headers {ours:?} != {theirs:?}"));
    }
    if body_len != e.body_len {
        return Err(format!("body length {body_len} != {}", e.body_len));
    }
    Ok(())
}

fn run_case(case: &Case) -> Outcome {
    let response = case.kind.starts_with("response");
    // Interim responses (100, 102, 103) are folded into the final one (CONTINUED), where
    // llhttp reports them as messages of their own.
    let messages: Vec<&Expected> = case
        .messages
        .iter()
        .filter(|m| !matches!(m.status, Some(s) if (100..200).contains(&s) && s != 101))
        .collect();
    let mut deliveries = Vec::new();
    if response {
        let n = messages.len().max(1);
        // A 101 only switches protocols in answer to an Upgrade request.
        let request: &[u8] = if messages.iter().any(|m| m.status == Some(101)) {
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        } else {
            b"GET / HTTP/1.1\r\n\r\n"
        };
        deliveries.push(Delivery::Data(Direction::Egress, request.repeat(n)));
        deliveries.push(Delivery::Data(Direction::Ingress, case.input.clone()));
    } else {
        deliveries.push(Delivery::Data(Direction::Egress, case.input.clone()));
    }
    let (out, stats) = track(to_events(&deliveries, None));
    let ours: Vec<&Exchange> = if response {
        out.iter().filter(|x| x.response.is_some()).collect()
    } else {
        out.iter().collect()
    };
    // Without an error every message whose head completed must be there (one ended by the
    // close has no "message complete" in the log); with one, those llhttp completed.
    let complete: Vec<&&Expected> = if case.error {
        messages.iter().filter(|m| m.complete).collect()
    } else {
        messages.iter().filter(|m| m.headers_done).collect()
    };
    for (i, e) in complete.iter().enumerate() {
        let Some(x) = ours.get(i) else {
            return Outcome::Fail(format!("message {i} missing; got {} exchanges", ours.len()));
        };
        if let Err(why) = compare(e, x, response) {
            return Outcome::Fail(format!("message {i}: {why}"));
        }
    }
    if !case.error {
        if ours.len() != complete.len() {
            return Outcome::Fail(format!(
                "{} exchanges, expected {}",
                ours.len(),
                complete.len()
            ));
        }
        return Outcome::Pass;
    }
    // llhttp stops at the error. We must not have taken the bad message as a clean one.
    let extra: Vec<&&Exchange> = ours.iter().skip(complete.len()).collect();
    let noticed = stats.parse_errors > 0
        || extra.iter().any(|x| x.flags.0 & NOTICED != 0)
        || ours
            .iter()
            .take(complete.len())
            .any(|x| x.flags.0 & NOTICED != 0);
    if extra.is_empty() || noticed {
        Outcome::Pass
    } else {
        Outcome::Lenient
    }
}

#[test]
fn llhttp_cases() {
    let Some(dir) = corpus("llhttp-tests") else {
        return;
    };
    let mut cases = Vec::new();
    read_cases(&dir.join("test"), &mut cases);
    assert!(
        cases.len() > 200,
        "expected the llhttp cases, found {}",
        cases.len()
    );

    let mut pass = 0;
    let mut lenient = Vec::new();
    let mut fail = Vec::new();
    let mut skipped = 0;
    for case in &cases {
        let skip_reason = SKIPPED_TYPES.iter().find(|(t, _)| case.kind.contains(t));
        let non_http = !is_http1(&case.input);
        if skip_reason.is_some() || case.skip_body || non_http {
            skipped += 1;
            continue;
        }
        match run_case(case) {
            Outcome::Pass => pass += 1,
            Outcome::Lenient => lenient.push(format!("{}: {}", case.file, case.title)),
            Outcome::Fail(why) => fail.push(format!("{}: {}: {why}", case.file, case.title)),
        }
    }
    eprintln!(
        "llhttp: {pass} pass, {} lenient, {} fail, {skipped} skipped",
        lenient.len(),
        fail.len()
    );
    for f in &fail {
        eprintln!("  FAIL: {f}");
    }
    assert!(
        fail.is_empty(),
        "{} llhttp cases failed:\n{}",
        fail.len(),
        fail.join("\n")
    );
    let expected_lenient: Vec<String> = LENIENT_BY_DESIGN
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(
        lenient, expected_lenient,
        "cases accepted where llhttp errors changed"
    );
    // Regression guard: every runnable case passes today.
    assert!(pass >= 185, "only {pass} llhttp cases pass");
}
