//! A real HTTP/2 conversation between h2's client and server over an in-memory pipe, with every
//! byte the server reads or writes recorded as a capture would see it (server's point of view).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use sonde_http2::{Connection, Http2Config, Http2Stats};
use sonde_model::{ConnId, ConnMeta, Direction, Exchange, ProcessInfo, Role};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

pub type Capture = Arc<Mutex<Vec<(Direction, Vec<u8>)>>>;

/// Records what passes through, as the socket owner sees it.
pub struct Tee {
    inner: DuplexStream,
    log: Capture,
}

impl AsyncRead for Tee {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.log
                .lock()
                .expect("log")
                .push((Direction::Ingress, new.to_vec()));
        }
        r
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.log
                .lock()
                .expect("log")
                .push((Direction::Egress, data[..*n].to_vec()));
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One call the client makes. The server answers from the request's `x-*` headers:
/// `x-status` (default 200), `x-resp-len` (body bytes), `x-trailer` (sent as a trailer),
/// `x-reset` (reset instead of answering). gRPC requests get framed replies (see `grpc_reply`).
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<Bytes>,
}

impl Call {
    pub fn get(path: &str) -> Call {
        Call {
            method: Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }
}

/// What the client got back.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub status: Option<u16>,
    pub body_len: usize,
    pub reset: bool,
}

pub fn grpc_frame(payload: &[u8], compressed: bool) -> Vec<u8> {
    let mut v = vec![u8::from(compressed)];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// `n` JSON records, the plain text of `x-gzip` responses.
pub fn plain_text(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{{\"id\":{i},\"name\":\"user {i}\"}}\n").into_bytes())
        .collect()
}

fn gzip_text(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&plain_text(n)).expect("in-memory write");
    e.finish().expect("in-memory finish")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn serve_one(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let (parts, mut body) = req.into_parts();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let _ = body.trailers().await;
    let h = &parts.headers;
    if header(h, "x-reset").is_some() {
        respond.send_reset(h2::Reason::CANCEL);
        return;
    }
    if header(h, "content-type").is_some_and(|c| c.starts_with("application/grpc")) {
        let replies: usize = header(h, "x-replies")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let status = header(h, "x-grpc-status").unwrap_or("0").to_owned();
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/grpc+proto")
            .body(())
            .expect("response");
        if replies == 0 {
            // Trailers-only response.
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", status)
                .header("grpc-message", "nothing%20here")
                .body(())
                .expect("response");
            let _ = respond.send_response(resp, true);
            return;
        }
        let Ok(mut send) = respond.send_response(resp, false) else {
            return;
        };
        for i in 0..replies {
            let _ = send.send_data(
                Bytes::from(grpc_frame(&vec![7u8; 10 + i], i % 2 == 1)),
                false,
            );
        }
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from_str(&status).expect("status"),
        );
        trailers.insert("grpc-message", HeaderValue::from_static("all%20done"));
        let _ = send.send_trailers(trailers);
        return;
    }
    if let Some(n) = header(h, "x-gzip").and_then(|v| v.parse::<usize>().ok()) {
        let body = gzip_text(n);
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("content-length", body.len().to_string())
            .body(())
            .expect("response");
        let Ok(mut send) = respond.send_response(resp, false) else {
            return;
        };
        let _ = send.send_data(Bytes::from(body), true);
        return;
    }
    let status: u16 = header(h, "x-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let len: usize = header(h, "x-resp-len")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let trailer = header(h, "x-trailer").map(str::to_owned);
    let resp = Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/octet-stream")
        .header("x-request-bytes", received.len().to_string())
        .body(())
        .expect("response");
    let end = len == 0 && trailer.is_none();
    let Ok(mut send) = respond.send_response(resp, end) else {
        return;
    };
    if end {
        return;
    }
    let mut left = len;
    while left > 0 {
        let n = left.min(7000);
        let _ = send.send_data(Bytes::from(vec![b'x'; n]), left == n && trailer.is_none());
        left -= n;
    }
    if let Some(t) = trailer {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_str(&t).expect("trailer"));
        let _ = send.send_trailers(trailers);
    }
}

async fn client_call(mut client: h2::client::SendRequest<Bytes>, call: Call) -> Outcome {
    let mut b = Request::builder()
        .method(call.method.clone())
        .uri(format!("http://example.test{}", call.path));
    for (n, v) in &call.headers {
        b = b.header(
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_bytes(v).expect("value"),
        );
    }
    let req = b.body(()).expect("request");
    client = client.ready().await.expect("ready");
    let end = call.body.is_empty();
    let (resp, mut send) = client.send_request(req, end).expect("send request");
    let n = call.body.len();
    for (i, chunk) in call.body.into_iter().enumerate() {
        send.reserve_capacity(chunk.len());
        let _ = send.send_data(chunk, i + 1 == n);
    }
    let mut out = Outcome::default();
    match resp.await {
        Ok(resp) => {
            out.status = Some(resp.status().as_u16());
            let mut body = resp.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                out.body_len += chunk.len();
            }
            let _ = body.trailers().await;
        }
        Err(_) => out.reset = true,
    }
    out
}

/// Runs the calls (all at once when `concurrent`) and returns what each got and the capture.
pub fn converse(calls: Vec<Call>, concurrent: bool) -> (Vec<Outcome>, Vec<(Direction, Vec<u8>)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let log: Capture = Arc::default();
        let tee = Tee {
            inner: server_io,
            log: Arc::clone(&log),
        };
        let server = tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tee).await else {
                return;
            };
            let mut tasks = Vec::new();
            while let Some(Ok((req, respond))) = conn.accept().await {
                tasks.push(tokio::spawn(serve_one(req, respond)));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        let conn_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let outcomes = if concurrent {
            let tasks: Vec<_> = calls
                .into_iter()
                .map(|c| tokio::spawn(client_call(client.clone(), c)))
                .collect();
            let mut outs = Vec::new();
            for t in tasks {
                outs.push(t.await.expect("call task"));
            }
            outs
        } else {
            let mut outs = Vec::new();
            for c in calls {
                outs.push(client_call(client.clone(), c).await);
            }
            outs
        };
        drop(client);
        let _ = conn_task.await;
        let _ = server.await;
        let capture = log.lock().expect("log").clone();
        (outcomes, capture)
    })
}

pub fn server_meta() -> Arc<ConnMeta> {
    Arc::new(ConnMeta {
        id: ConnId {
            tgid: 10,
            fd: 7,
            generation: 1,
        },
        role: Role::Server,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })
}

/// Feeds a capture into a fresh connection decoder.
pub fn decode(capture: &[(Direction, Vec<u8>)], cfg: &Http2Config) -> (Vec<Exchange>, Http2Stats) {
    let mut c = Connection::new(server_meta(), cfg);
    let mut out = Vec::new();
    for (i, (d, bytes)) in capture.iter().enumerate() {
        c.on_data(*d, bytes, i as u64 * 1000, &mut out);
    }
    c.on_close(u64::MAX, &mut out);
    (out, c.stats())
}

/// Exchanges ordered by stream id.
pub fn by_stream(mut xs: Vec<Exchange>) -> Vec<Exchange> {
    xs.sort_by_key(|x| x.stream_id);
    xs
}
