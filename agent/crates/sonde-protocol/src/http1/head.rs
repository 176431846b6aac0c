//! Start line and header block of one HTTP/1.x message: httparse does the tokenising, this module
//! adds what a passive, lenient observer needs on top (obsolete line folding, header limits that
//! cut instead of failing, framing facts and ambiguities).

use std::mem::MaybeUninit;

use sonde_model::{Header, HttpVersion};

/// Which side of the exchange a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
}

/// Hard ceiling of header fields handed to httparse at once (stack array), whatever the config.
const HARD_MAX_HEADERS: usize = 256;

/// Limits applied while turning a head into owned fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub max_headers: usize,
    pub max_value_bytes: usize,
}

/// What a parsed head says, owned.
#[derive(Clone, Debug, Default)]
pub(crate) struct Head {
    pub version: Option<HttpVersion>,
    pub method: String,
    pub target: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    /// Header fields were dropped (count limit) or the head was cut (size limit).
    pub cut: bool,
    pub content_length: Option<u64>,
    /// The last transfer coding is `chunked`.
    pub chunked: bool,
    pub transfer_encoding: bool,
    /// Conflicting Content-Length values, TE with CL, or an unparsable Content-Length.
    pub ambiguous_framing: bool,
    pub bad_content_length: bool,
    /// Lower-cased `Upgrade` value.
    pub upgrade: Option<String>,
    pub connection_close: bool,
    pub content_encoding: Option<String>,
    pub host: Option<String>,
    /// Invalid field lines were dropped or repaired to parse the head.
    pub salvaged: bool,
    /// `Expect: 100-continue`: the body may never be sent if a final response comes first.
    pub expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidHead;

/// Offset one past the blank line ending the head in `buf`, if present. Accepts CRLF and bare LF
/// line ends (`\n\n`, `\n\r\n`).
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    for nl in memchr::memchr_iter(b'\n', buf) {
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
    }
    None
}

/// Parses a complete head (`buf` ends with the blank line). Tries the fast path first and falls
/// back to unfolding and cutting only when httparse refuses.
pub(crate) fn parse_head(kind: Kind, buf: &[u8], limits: HeadLimits) -> Result<Head, InvalidHead> {
    let max_headers = limits.max_headers.clamp(1, HARD_MAX_HEADERS);
    // httparse's lenient mode would drop folded continuation lines: join them first.
    let unfolded = unfold(buf);
    let buf = unfolded.as_deref().unwrap_or(buf);
    match parse_with_cut(kind, buf, max_headers, limits) {
        Ok(head) => Ok(head),
        Err(InvalidHead) => {
            let salvaged = salvage(kind, buf).ok_or(InvalidHead)?;
            let mut head = parse_with_cut(kind, &salvaged, max_headers, limits)?;
            head.salvaged = true;
            Ok(head)
        }
    }
}

/// Rebuilds a refused head from what can be trusted in it: field lines without a colon or with
/// an invalid name are dropped, control bytes in values become spaces, and a status code glued
/// to its reason (`200ok`) is separated. `None` when nothing changed.
fn salvage(kind: Kind, buf: &[u8]) -> Option<Vec<u8>> {
    let mut lines = buf.split_inclusive(|b| *b == b'\n');
    let start = lines.next()?;
    let mut out = Vec::with_capacity(buf.len());
    match kind {
        Kind::Response
            if start.len() > 12
                && start.starts_with(b"HTTP/1.")
                && start[9..12].iter().all(u8::is_ascii_digit)
                && !matches!(start[12], b' ' | b'\r' | b'\n') =>
        {
            out.extend_from_slice(&start[..12]);
            out.push(b' ');
            out.extend_from_slice(&start[12..]);
        }
        _ => out.extend_from_slice(start),
    }
    for line in lines {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            out.extend_from_slice(b"\r\n");
            break;
        }
        let Some(colon) = memchr::memchr(b':', content) else {
            continue;
        };
        let name = &content[..colon];
        if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
            continue;
        }
        out.extend_from_slice(name);
        out.push(b':');
        out.extend(content[colon + 1..].iter().map(|&b| {
            if b < 0x20 && b != b'\t' || b == 0x7f {
                b' '
            } else {
                b
            }
        }));
        out.extend_from_slice(b"\r\n");
    }
    (out != buf).then_some(out)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses, cutting the head after `max_headers` fields when there are more.
fn parse_with_cut(
    kind: Kind,
    unfolded: &[u8],
    max_headers: usize,
    limits: HeadLimits,
) -> Result<Head, InvalidHead> {
    match parse_raw(kind, unfolded, max_headers, limits) {
        Ok(head) => Ok(head),
        Err(RawError::TooManyHeaders) => {
            let cut = cut_after_lines(unfolded, max_headers + 1);
            let mut head = parse_raw(kind, &cut, max_headers, limits).map_err(|_| InvalidHead)?;
            head.cut = true;
            Ok(head)
        }
        Err(RawError::Invalid) => Err(InvalidHead),
    }
}

/// Parses a head that was cut at the size limit: keeps the complete lines, drops the partial
/// last one, and marks the result cut.
pub(crate) fn parse_cut_head(
    kind: Kind,
    partial: &[u8],
    limits: HeadLimits,
) -> Result<Head, InvalidHead> {
    let last_nl = memchr::memrchr(b'\n', partial).ok_or(InvalidHead)?;
    let mut buf = Vec::with_capacity(last_nl + 3);
    buf.extend_from_slice(&partial[..=last_nl]);
    buf.extend_from_slice(b"\r\n");
    let mut head = parse_head(kind, &buf, limits)?;
    head.cut = true;
    Ok(head)
}

enum RawError {
    TooManyHeaders,
    Invalid,
}

fn parser_config() -> httparse::ParserConfig {
    let mut cfg = httparse::ParserConfig::default();
    cfg.allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true);
    cfg
}

fn parse_raw(
    kind: Kind,
    buf: &[u8],
    max_headers: usize,
    limits: HeadLimits,
) -> Result<Head, RawError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HARD_MAX_HEADERS];
    let slots = storage.get_mut(..max_headers).ok_or(RawError::Invalid)?;
    let cfg = parser_config();
    let mut head = Head::default();
    match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut []);
            match cfg.parse_request_with_uninit_headers(&mut req, buf, slots) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => return Err(RawError::Invalid),
                Err(httparse::Error::TooManyHeaders) => return Err(RawError::TooManyHeaders),
                Err(_) => return Err(RawError::Invalid),
            }
            head.version = Some(version(req.version));
            head.method = req.method.unwrap_or_default().to_owned();
            head.target = req.path.unwrap_or_default().to_owned();
            fill_headers(&mut head, req.headers, limits);
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut []);
            match cfg.parse_response_with_uninit_headers(&mut resp, buf, slots) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => return Err(RawError::Invalid),
                Err(httparse::Error::TooManyHeaders) => return Err(RawError::TooManyHeaders),
                Err(_) => return Err(RawError::Invalid),
            }
            head.version = Some(version(resp.version));
            head.status = resp.code.unwrap_or_default();
            head.reason = resp.reason.unwrap_or_default().to_owned();
            fill_headers(&mut head, resp.headers, limits);
        }
    }
    Ok(head)
}

fn version(minor: Option<u8>) -> HttpVersion {
    match minor {
        Some(0) => HttpVersion::Http10,
        _ => HttpVersion::Http11,
    }
}

fn fill_headers(head: &mut Head, raw: &[httparse::Header<'_>], limits: HeadLimits) {
    head.headers.reserve_exact(raw.len());
    for h in raw {
        let name = lower_name(h.name);
        let value_bytes = trim(h.value);
        let (value, value_truncated) = bounded_value(value_bytes, limits.max_value_bytes);
        match name.as_str() {
            "content-length" => note_content_length(head, value_bytes),
            "transfer-encoding" => {
                head.transfer_encoding = true;
                // The last coding decides the framing (RFC 9112 section 6.3).
                head.chunked = value_bytes
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
            }
            "upgrade" => head.upgrade = Some(value.to_ascii_lowercase()),
            "connection"
                if value_bytes
                    .split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"close")) =>
            {
                head.connection_close = true;
            }
            "content-encoding" => {
                // Repeated fields are one comma-separated list (RFC 9110 section 5.3).
                let v = value.to_ascii_lowercase();
                head.content_encoding = Some(match head.content_encoding.take() {
                    Some(prev) => format!("{prev}, {v}"),
                    None => v,
                });
            }
            "host" if head.host.is_none() => head.host = Some(value.clone()),
            "expect" => head.expect_continue = value_bytes.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        head.headers.push(Header {
            name,
            value,
            value_truncated,
        });
    }
    if head.transfer_encoding && head.content_length.is_some() {
        head.ambiguous_framing = true;
    }
}

/// A field name in lower case: one allocation and one pass over the bytes (httparse admits only
/// token characters in names, so ASCII folding is all there is; a per-`char` push was the
/// costliest part of header parsing in the pipeline's profile).
fn lower_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Content-Length: a list of identical values is tolerated (RFC 9110 section 8.6); differing
/// values or non-digits make the framing ambiguous.
fn note_content_length(head: &mut Head, value: &[u8]) {
    for part in value.split(|b| *b == b',') {
        let part = trim(part);
        let parsed = parse_decimal(part);
        match (parsed, head.content_length) {
            (None, _) => {
                head.bad_content_length = true;
                head.ambiguous_framing = true;
            }
            (Some(v), None) => head.content_length = Some(v),
            (Some(v), Some(old)) if v != old => head.ambiguous_framing = true,
            (Some(_), Some(_)) => {}
        }
    }
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && (*first == b' ' || *first == b'\t')
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && (*last == b' ' || *last == b'\t' || *last == b'\r')
    {
        s = rest;
    }
    s
}

fn bounded_value(value: &[u8], max: usize) -> (String, bool) {
    let cut = value.len() > max;
    let kept = value.get(..max).unwrap_or(value);
    (text(kept, cut), cut)
}

/// Field bytes as text: UTF-8 when valid, else each byte as its ISO-8859-1 character (the
/// historical charset of HTTP field values), so no byte is lost or replaced.
fn text(bytes: &[u8], cut: bool) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        // A multi-byte character cut in half by the bound: keep the valid prefix.
        Err(e) if cut && e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Joins obsolete folded header lines (a line starting with SP or HT continues the previous one,
/// RFC 9112 section 5.2) by turning the line break into spaces. `None` when nothing is folded.
fn unfold(buf: &[u8]) -> Option<Vec<u8>> {
    let first_nl = memchr::memchr(b'\n', buf)?;
    let folds =
        memchr::memchr_iter(b'\n', buf).any(|nl| matches!(buf.get(nl + 1), Some(b' ' | b'\t')));
    if !folds {
        return None;
    }
    let mut out = buf.to_vec();
    // A whitespace-led line right after the start line continues nothing: it is discarded
    // (RFC 9112 section 2.2) rather than glued onto the request or status line.
    while matches!(out.get(first_nl + 1), Some(b' ' | b'\t')) {
        let end =
            memchr::memchr(b'\n', &out[first_nl + 1..]).map_or(out.len(), |p| first_nl + 2 + p);
        if end >= out.len() {
            break;
        }
        out.drain(first_nl + 1..end);
    }
    let mut folded = false;
    let mut i = first_nl;
    while i + 1 < out.len() {
        if out[i] == b'\n' && matches!(out[i + 1], b' ' | b'\t') {
            out[i] = b' ';
            if i > 0 && out[i - 1] == b'\r' {
                out[i - 1] = b' ';
            }
            folded = true;
        }
        i += 1;
    }
    folded.then_some(out)
}

/// The head cut after its first `lines` lines, re-terminated with a blank line.
fn cut_after_lines(buf: &[u8], lines: usize) -> Vec<u8> {
    let end = memchr::memchr_iter(b'\n', buf)
        .nth(lines.saturating_sub(1))
        .map_or(buf.len(), |p| p + 1);
    let mut out = Vec::with_capacity(end + 2);
    out.extend_from_slice(buf.get(..end).unwrap_or(buf));
    out.extend_from_slice(b"\r\n");
    out
}

/// Parses a chunked trailer section (`buf` holds its field lines, without the final blank line)
/// through the head parser behind a synthetic start line, so trailers get the same unfolding,
/// salvage and limits as headers. Returns the fields and whether some were dropped.
pub(crate) fn parse_trailers(buf: &[u8], limits: HeadLimits) -> (Vec<Header>, bool) {
    const START: &[u8] = b"TRAILERS * HTTP/1.1\r\n";
    let mut block = Vec::with_capacity(START.len() + buf.len() + 2);
    block.extend_from_slice(START);
    block.extend_from_slice(buf);
    block.extend_from_slice(b"\r\n");
    match parse_head(Kind::Request, &block, limits) {
        Ok(head) => (head.headers, head.cut),
        Err(InvalidHead) => (Vec::new(), true),
    }
}

/// Whether `line` (without its LF) looks like the start line of a message of `kind`; used to
/// find the next message after a gap or a mid-stream join.
pub(crate) fn is_plausible_start(kind: Kind, line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match kind {
        Kind::Request => {
            let Some(sp) = memchr::memchr(b' ', line) else {
                return false;
            };
            let method = &line[..sp];
            if method.is_empty()
                || method.len() > 20
                || !method
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_')
            {
                return false;
            }
            let rest = &line[sp + 1..];
            let Some(rsp) = memchr::memrchr(b' ', rest) else {
                return false;
            };
            let version = &rest[rsp + 1..];
            rsp > 0 && version.len() == 8 && version.starts_with(b"HTTP/1.")
        }
        Kind::Response => {
            line.len() >= 12
                && line.starts_with(b"HTTP/1.")
                && line[7].is_ascii_digit()
                && line[8] == b' '
                && line[9..12].iter().all(u8::is_ascii_digit)
                && line.get(12).is_none_or(|b| *b == b' ')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 4,
        max_value_bytes: 8,
    };

    #[test]
    fn folded_request_header_is_unfolded() {
        let head = parse_head(
            Kind::Request,
            b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\nHost: h\r\n\r\n",
            HeadLimits {
                max_headers: 10,
                max_value_bytes: 100,
            },
        )
        .expect("parses");
        assert_eq!(head.headers[0].name, "x-a");
        assert_eq!(head.headers[0].value, "one   two");
        assert_eq!(head.host.as_deref(), Some("h"));
    }

    #[test]
    fn too_many_headers_are_cut_not_refused() {
        let head = parse_head(
            Kind::Response,
            b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\nf: 6\r\n\r\n",
            LIMITS,
        )
        .expect("parses");
        assert!(head.cut);
        assert_eq!(head.headers.len(), 4);
        assert_eq!(head.status, 200);
    }

    #[test]
    fn long_values_are_bounded() {
        let head = parse_head(
            Kind::Request,
            b"GET / HTTP/1.0\r\nx: 0123456789abc\r\n\r\n",
            LIMITS,
        )
        .expect("parses");
        assert_eq!(head.headers[0].value, "01234567");
        assert!(head.headers[0].value_truncated);
        assert_eq!(head.version, Some(HttpVersion::Http10));
    }

    #[test]
    fn conflicting_lengths_and_te_with_cl_are_ambiguous() {
        let l = HeadLimits {
            max_headers: 10,
            max_value_bytes: 100,
        };
        let two = parse_head(
            Kind::Request,
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            l,
        )
        .expect("parses");
        assert!(two.ambiguous_framing);
        let same = parse_head(
            Kind::Request,
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            l,
        )
        .expect("parses");
        assert!(!same.ambiguous_framing);
        assert_eq!(same.content_length, Some(3));
        let te = parse_head(
            Kind::Request,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            l,
        )
        .expect("parses");
        assert!(te.ambiguous_framing && te.chunked);
    }

    #[test]
    fn head_end_accepts_bare_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn refused_heads_are_salvaged() {
        let l = HeadLimits {
            max_headers: 10,
            max_value_bytes: 100,
        };
        let head = parse_head(
            Kind::Request,
            b"GET / HTTP/1.0\r\nHost: h\r\nUser-Agent Mozilla\r\nX-Nul: a\0b\r\nCookie: p=1\r\n\r\n",
            l,
        )
        .expect("salvaged");
        let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host", "x-nul", "cookie"]);
        assert_eq!(head.headers[1].value, "a b");
        assert!(head.salvaged);
        let resp = parse_head(
            Kind::Response,
            b"HTTP/1.1 200ok\r\nContent-Length: 1\r\n\r\n",
            l,
        )
        .expect("salvaged");
        assert_eq!((resp.status, resp.reason.as_str()), (200, "ok"));
        let folded_first = parse_head(
            Kind::Request,
            b"GET / HTTP/1.0\r\n Bad-Fold: 1\r\nGood: 2\r\n\r\n",
            l,
        )
        .expect("parses");
        assert_eq!(folded_first.headers.len(), 1);
        assert_eq!(folded_first.headers[0].name, "good");
    }

    #[test]
    fn plausible_starts() {
        assert!(is_plausible_start(Kind::Request, b"GET /x HTTP/1.1\r"));
        assert!(is_plausible_start(Kind::Request, b"M-SEARCH * HTTP/1.1"));
        assert!(!is_plausible_start(Kind::Request, b"get /x HTTP/1.1"));
        assert!(!is_plausible_start(Kind::Request, b"GET /x"));
        assert!(is_plausible_start(Kind::Response, b"HTTP/1.1 200 OK\r"));
        assert!(is_plausible_start(Kind::Response, b"HTTP/1.0 404"));
        assert!(!is_plausible_start(Kind::Response, b"HTTP/1.1 20 OK"));
    }
}
