//! The HTTP listener for `/metrics`, `/healthz` and `/readyz`.
//!
//! A plain hyper HTTP/1 server (hyper is already in the tree through tonic). Connections are
//! served at most [`MAX_CONNECTIONS`] at a time; further ones wait in the listen backlog, so a
//! scrape storm costs bounded memory (one encoded exposition per served connection) and never
//! slows the process's own work beyond the encoding CPU. While every slot is taken, answers
//! close their connection, so idle keep-alive clients cannot starve waiting ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Connections served concurrently.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long even if the client keeps it alive.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Whether the process is ready, and if not, why (the body of a 503 `/readyz`).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running metrics listener; stops when [`MetricsServer::stop`] is called or it is dropped.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one) and serves on the current tokio runtime.
    pub async fn start(
        addr: SocketAddr,
        registry: Arc<Registry>,
        ready: ReadyCheck,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, registry, ready, stopped));
        tracing::info!(%local_addr, "metrics listening (/metrics, /healthz, /readyz)");
        Ok(MetricsServer {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: ReadyCheck,
    mut stopped: oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_errors: u64 = 0;
    loop {
        let permit = tokio::select! {
            _ = &mut stopped => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of fds and the like: log sparsely, back off a little, keep serving.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(%error, accept_errors, "metrics listener accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let registry = registry.clone();
        let ready = ready.clone();
        let busy = permits.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mut response = respond(&req, &registry, &ready);
                // When every slot is taken, an idle keep-alive connection would hold its slot
                // while others wait: close this one after the answer instead.
                if busy.available_permits() == 0 {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A timeout (the lifetime cap) ends the connection as planned.
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(%error, "metrics connection ended");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &ReadyCheck,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body,
                ),
                Err(error) => {
                    tracing::error!(%error, "encoding the metrics failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        PLAIN,
                        "metrics encoding failed\n".into(),
                    )
                }
            }
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
