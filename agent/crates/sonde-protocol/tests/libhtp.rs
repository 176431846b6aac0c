//! The libhtp conversations (`.t` files) fed chunk by chunk as capture events, then re-split at
//! every offset: the exchanges must not change, and a good set of files must give the specific
//! results asserted below.

mod common;

use std::path::{Path, PathBuf};

use common::{Delivery, corpus, to_events, track};
use sonde_model::{Direction, Exchange, ExchangeFlags};

/// Reads a `.t` file as libhtp's test driver does: a line `>>>` starts a client-to-server chunk,
/// `<<<` a server-to-client one, `><>`/`<><` a chunk of lost bytes (its length counts, its
/// content does not). The line break before the next marker belongs to the marker, with one CR.
fn read_t(path: &Path) -> Vec<Delivery> {
    let buf = std::fs::read(path).expect("readable .t file");
    let boundary = |pos: usize| -> Option<(Direction, bool, usize)> {
        let m = buf.get(pos..pos + 3)?;
        let (dir, gap) = match m {
            b">>>" => (Direction::Egress, false),
            b"><>" => (Direction::Egress, true),
            b"<<<" => (Direction::Ingress, false),
            b"<><" => (Direction::Ingress, true),
            _ => return None,
        };
        match buf.get(pos + 3..pos + 5) {
            Some([b'\r', b'\n']) => Some((dir, gap, 5)),
            Some([b'\n', ..]) => Some((dir, gap, 4)),
            None if buf.get(pos + 3) == Some(&b'\n') => Some((dir, gap, 4)),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((dir, gap, marker_len)) = boundary(pos) {
        let start = pos + marker_len;
        // The chunk runs to the LF that precedes the next marker line.
        let mut end = buf.len();
        let mut next = buf.len();
        let mut i = start;
        while i < buf.len() {
            if buf[i] == b'\n' && boundary(i + 1).is_some() {
                end = if i > start && buf[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                next = i + 1;
                break;
            }
            i += 1;
        }
        let end = end.max(start);
        if end > start {
            let chunk = buf[start..end].to_vec();
            out.push(if gap {
                Delivery::Gap(dir, chunk.len() as u64)
            } else {
                Delivery::Data(dir, chunk)
            });
        }
        if next >= buf.len() {
            break;
        }
        pos = next;
    }
    out
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("test/files"))
        .expect("readable corpus dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "t"))
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every file, fed chunk by chunk, then with each chunk cut in two at every offset (with a
/// stride on the few large files, to keep a debug test run short): the exchanges must be the
/// same whatever the delivery boundaries.
#[test]
fn exchanges_do_not_depend_on_delivery_boundaries() {
    let Some(dir) = corpus("libhtp-t-files") else {
        return;
    };
    let files = files(&dir);
    assert!(
        files.len() >= 100,
        "expected the libhtp files, found {}",
        files.len()
    );
    let mut runs = 0;
    let mut mismatches = Vec::new();
    for f in &files {
        let deliveries = read_t(f);
        let (baseline, _) = track(to_events(&deliveries, None));
        let total: usize = deliveries
            .iter()
            .map(|d| match d {
                Delivery::Data(_, b) => b.len(),
                Delivery::Gap(..) => 0,
            })
            .sum();
        let stride = (total / 4096).max(1);
        for (i, d) in deliveries.iter().enumerate() {
            let Delivery::Data(_, bytes) = d else {
                continue;
            };
            for cut in (1..bytes.len()).step_by(stride) {
                runs += 1;
                let (split, _) = track(to_events(&deliveries, Some((i, cut))));
                if split != baseline {
                    mismatches.push(format!("{} chunk {i} cut at {cut}", name(f)));
                    break;
                }
            }
        }
    }
    assert!(runs >= 40_000, "only {runs} re-split runs");
    assert!(
        mismatches.is_empty(),
        "{} splits changed the exchanges:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn run_file(dir: &Path, file: &str) -> (Vec<Exchange>, sonde_protocol::TrackerStats) {
    let path = dir.join("test/files").join(file);
    track(to_events(&read_t(&path), None))
}

fn resp(x: &Exchange) -> &sonde_model::Response {
    x.response.as_ref().expect("exchange has a response")
}

fn paths(out: &[Exchange]) -> Vec<(String, String, Option<u16>)> {
    out.iter()
        .map(|x| {
            let q = x
                .request
                .query
                .as_ref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            (
                x.request.method.clone(),
                format!("{}{q}", x.request.path),
                x.status(),
            )
        })
        .collect()
}

fn triple(m: &str, p: &str, s: Option<u16>) -> (String, String, Option<u16>) {
    (m.to_owned(), p.to_owned(), s)
}

#[test]
fn specific_conversations() {
    let Some(dir) = corpus("libhtp-t-files") else {
        return;
    };

    let (out, _) = run_file(&dir, "01-get.t");
    assert_eq!(paths(&out), vec![triple("GET", "/?p=%20", Some(200))]);
    assert_eq!(resp(&out[0]).body.wire_len, 12);
    assert_eq!(out[0].flags, ExchangeFlags::default());

    let (out, _) = run_file(&dir, "02-header-test-apache2.t");
    let x = &out[0];
    assert_eq!(
        x.request_header("valid-folding"),
        Some("2   2"),
        "obs-fold joined"
    );
    assert_eq!(x.request_header("header-with-nul"), Some("BEFORE AFTER"));
    assert_eq!(
        x.request
            .headers
            .iter()
            .filter(|h| h.name == "same-name-headers")
            .count(),
        2
    );
    assert_eq!(x.status(), Some(200));

    let (out, _) = run_file(&dir, "03-post-urlencoded.t");
    assert_eq!(paths(&out).len(), 2);
    assert_eq!(out[0].request.method, "POST");
    assert_eq!(out[0].request.body.wire_len, 12);
    assert_eq!(&out[0].request.body.sample[..], b"p=0123456789");

    let (out, _) = run_file(&dir, "04-post-urlencoded-chunked.t");
    assert_eq!(&out[0].request.body.sample[..], b"p=0123456789");
    assert_eq!(out[0].request.body.declared_len, None);

    let (out, _) = run_file(&dir, "05-expect.t");
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::CONTINUED));
    assert_eq!(out[0].status(), Some(200));

    let (out, _) = run_file(&dir, "07-pipelined-connection.t");
    assert_eq!(
        paths(&out),
        vec![
            triple("GET", "/first", Some(200)),
            triple("GET", "/second", Some(200))
        ]
    );

    let (out, _) = run_file(&dir, "12-connect-request.t");
    assert_eq!(out[0].request.method, "CONNECT");
    assert_eq!(
        out[0].request.authority.as_deref(),
        Some("www.ssllabs.com:443")
    );
    assert_eq!(out[0].status(), Some(405));
    assert!(
        !out[0].flags.contains(ExchangeFlags::UPGRADED),
        "refused CONNECT"
    );

    let (out, stats) = run_file(&dir, "13-compressed-response-gzip-ct.t");
    let body = &resp(&out[0]).body;
    assert_eq!(out[0].status(), Some(302));
    assert_eq!(body.encoding.as_deref(), Some("gzip"));
    assert_eq!((body.wire_len, body.sample.len()), (187, 225));
    assert!(!body.decode_error);
    assert!(
        body.sample.starts_with(b"<HTML>"),
        "{:?}",
        &body.sample[..20]
    );
    assert_eq!(stats.bodies_decoded, 1);

    let (out, _) = run_file(&dir, "14-compressed-response-gzip-chunked.t");
    let body = &resp(&out[0]).body;
    assert_eq!(body.wire_len, 28_250);
    assert_eq!(
        body.sample.len(),
        64 << 10,
        "decoded sample stops at the bound"
    );
    assert!(body.sample_truncated && !body.decode_error);

    let (out, stats) = run_file(&dir, "15-connect-complete.t");
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.contains(ExchangeFlags::UPGRADED));
    assert_eq!(stats.upgrades, 1);
    assert!(
        stats.ignored_bytes > 1000,
        "tunnel bytes ignored: {}",
        stats.ignored_bytes
    );

    let (out, _) = run_file(&dir, "16-connect-extra.t");
    assert_eq!(
        paths(&out),
        vec![
            triple("CONNECT", "www.feistyduck.com:80", Some(301)),
            triple("HEAD", "/", Some(301))
        ]
    );
    assert_eq!(resp(&out[1]).body.wire_len, 0, "no body for HEAD");

    for file in [
        "18-compressed-response-deflate.t",
        "93-compressed-response-deflateasgzip.t",
    ] {
        let (out, _) = run_file(&dir, file);
        let body = &resp(&out[0]).body;
        assert_eq!((body.wire_len, body.sample.len()), (755, 1433), "{file}");
        assert!(!body.decode_error, "{file}");
    }
    let (out, _) = run_file(&dir, "95-compressed-response-gzipasdeflate.t");
    assert_eq!(resp(&out[0]).body.sample.len(), 225);

    let (out, _) = run_file(&dir, "27-request-trailer-raw.t");
    assert_eq!(
        out[0].request.trailers.len(),
        1,
        "{:?}",
        out[0].request.trailers
    );
    assert_eq!(out[0].request.trailers[0].name, "cookie");
    assert_eq!(&out[0].request.body.sample[..], b"p=0123456789");

    let (out, _) = run_file(&dir, "35-early-response.t");
    assert_eq!(paths(&out), vec![triple("POST", "/", Some(400))]);
    assert_eq!(out[0].request.body.wire_len, 12);

    for file in [
        "36-invalid-request-1-invalid-c-l.t",
        "37-invalid-request-2-t-e-and-c-l.t",
        "73-response-te-and-cl.t",
        "75-response-invalid-cl.t",
        "88-response-multiple-cl-mismatch.t",
    ] {
        let (out, stats) = run_file(&dir, file);
        assert!(out[0].flags.contains(ExchangeFlags::SMUGGLING), "{file}");
        assert!(stats.smuggling >= 1, "{file}");
    }
    let (out, _) = run_file(&dir, "74-response-multiple-cl.t");
    assert!(
        !out[0].flags.contains(ExchangeFlags::SMUGGLING),
        "identical lengths are fine"
    );

    let (out, _) = run_file(&dir, "61-empty-line-between-requests.t");
    assert_eq!(
        paths(&out),
        vec![
            triple("GET", "/first", Some(200)),
            triple("GET", "/second", Some(200))
        ]
    );

    let (out, _) = run_file(&dir, "77-response-folded-headers.t");
    assert_eq!(out[0].response_header("server"), Some("Apache   Server"));
    assert_eq!(out.len(), 2);

    let (out, stats) = run_file(&dir, "97-requests-cut.t");
    assert_eq!(
        paths(&out),
        vec![
            triple("GET", "/?p=%20", None),
            triple("GET", "/?p=%21", None)
        ]
    );
    assert_eq!(
        stats.parse_errors, 0,
        "a head split across deliveries is not an error"
    );

    let (out, stats) = run_file(&dir, "98-responses-cut.t");
    assert_eq!(paths(&out), vec![triple("GET", "/?p=%20", Some(200))]);
    assert_eq!(resp(&out[0]).body.wire_len, 14);
    assert_eq!(
        stats.responses_unpaired, 1,
        "the second request's head never ended"
    );
    assert_eq!(
        stats.heads_unfinished, 1,
        "dropped at the close, and counted"
    );

    let (out, _) = run_file(&dir, "99-expect-100.t");
    assert_eq!(paths(&out)[0], triple("PUT", "/forbidden", Some(401)));
    assert_eq!(
        out[0].request.body.wire_len, 0,
        "body skipped after the final response"
    );
    assert_eq!(out[1].request.method, "POST");
    assert!(out[1].flags.contains(ExchangeFlags::CONTINUED));
    assert_eq!(out[1].request.body.wire_len, 14);

    for file in [
        "21-http09.t",
        "42-unknown-method_only.t",
        "100-response-body-data.t",
    ] {
        let (out, stats) = run_file(&dir, file);
        assert!(out.is_empty(), "{file}");
        assert_eq!(stats.non_http_connections, 1, "{file}");
    }

    let (out, stats) = run_file(&dir, "70-response-invalid-chunk-length.t");
    assert!(out[0].flags.contains(ExchangeFlags::TRUNCATED));
    assert_eq!(stats.parse_errors, 1);
}

/// The reader itself, on the marker forms the corpus README describes (including lost bytes,
/// which no file of this corpus version uses).
#[test]
fn t_reader_follows_the_libhtp_driver() {
    let dir = std::env::temp_dir().join(format!("sonde-t-reader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gap.t");
    std::fs::write(
        &path,
        b">>>\r\nGET / HTTP/1.1\r\n\r\n\r\n<><\r\n12345\r\n<<<\nHTTP/1.1 200 OK\n\nlast",
    )
    .expect("write");
    let got = read_t(&path);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        got,
        vec![
            Delivery::Data(Direction::Egress, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            Delivery::Gap(Direction::Ingress, 5),
            Delivery::Data(Direction::Ingress, b"HTTP/1.1 200 OK\n\nlast".to_vec()),
        ]
    );
}
