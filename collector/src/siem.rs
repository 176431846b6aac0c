//! Export of anomalies to a SIEM as JSON lines: a size-rotated file and/or an HTTP webhook.
//!
//! Every anomaly of every committed batch becomes one JSON object (the stored anomaly as the
//! query API returns it, plus the reporting agent), handed to each sink through its own bounded
//! queue without waiting: ingest is never slowed by a SIEM, and what a full queue cannot take is
//! counted (`sonde_collector_siem_dropped_total{reason="queue_full"}`) and logged. Redelivered
//! batches are skipped before this point (by seq), so each report is exported once. Anomalies are
//! redacted by the agent; nothing is added here but the agent id.
//!
//! The webhook gets `POST` requests with `application/x-ndjson` bodies of up to
//! [`SiemConfig::webhook_batch`] lines; a failed delivery (connection error, timeout, non-2xx) is
//! retried with exponential backoff up to [`SiemConfig::webhook_attempts`] times, then dropped
//! and counted. The client is hyper's HTTP/1.1 client over TCP, or over rustls for `https://`
//! (trusting [`SiemConfig::webhook_ca`] when set, else the system's root certificates).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sonde_proto::v1::StoredAnomaly;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::CollectorMetrics;

/// `[siem]` of the collector configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiemConfig {
    /// JSON-lines file to append anomalies to. Default: none.
    pub file: Option<PathBuf>,
    /// The file is rotated (`file.1`, `file.2`, ...) when it would grow past this. Default 64 MiB.
    pub file_max_bytes: u64,
    /// Rotated files kept. Default 5.
    pub file_keep: usize,
    /// `http(s)://host:port/path` that receives POSTed JSON-lines batches. Default: none.
    pub webhook: Option<String>,
    /// Extra request header for the webhook, `Name: value` (e.g. an authorization token).
    pub webhook_header: Option<String>,
    /// PEM CA bundle an `https://` webhook's certificate must chain to. Default: the system's
    /// root certificates.
    pub webhook_ca: Option<PathBuf>,
    /// Lines queued per sink before new ones are dropped and counted. Default 10,000.
    pub queue: usize,
    /// Lines per webhook request, at most. Default 500.
    pub webhook_batch: usize,
    /// Delivery attempts per webhook request before it is dropped and counted. Default 8.
    pub webhook_attempts: u32,
    /// First retry delay; doubles per failure up to `webhook_backoff_max_ms`. Defaults 200 ms, 30 s.
    pub webhook_backoff_ms: u64,
    pub webhook_backoff_max_ms: u64,
    /// Per-request timeout. Default 10 s.
    pub webhook_timeout_ms: u64,
}

impl Default for SiemConfig {
    fn default() -> Self {
        SiemConfig {
            file: None,
            file_max_bytes: 64 * 1024 * 1024,
            file_keep: 5,
            webhook: None,
            webhook_header: None,
            webhook_ca: None,
            queue: 10_000,
            webhook_batch: 500,
            webhook_attempts: 8,
            webhook_backoff_ms: 200,
            webhook_backoff_max_ms: 30_000,
            webhook_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    #[error("SIEM webhook URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("SIEM webhook header {0:?} is not `Name: value`")]
    Header(String),
    #[error("SIEM webhook TLS: {0}")]
    Tls(String),
    #[error("opening the SIEM file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One exported line.
#[derive(Serialize)]
struct SiemRecord<'a> {
    source: &'static str,
    event: &'static str,
    agent_id: &'a str,
    #[serde(flatten)]
    stored: &'a StoredAnomaly,
}

/// Hands anomalies to the configured sinks; cheap to call from ingest (never waits).
pub struct SiemExport {
    sinks: Vec<(&'static str, mpsc::Sender<String>)>,
    metrics: Arc<CollectorMetrics>,
}

/// The sinks' workers: they end once every [`SiemExport`] is dropped and their queues are
/// drained.
pub struct SiemWorkers {
    file: Option<std::thread::JoinHandle<()>>,
    webhook: Option<tokio::task::JoinHandle<()>>,
}

impl SiemWorkers {
    /// Waits up to `grace` for the queued lines to be written and delivered; logs what is left.
    pub async fn finish(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(file) = self.file {
            let joined = tokio::task::spawn_blocking(move || file.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                warn!("SIEM file export still writing at shutdown; queued lines may be lost");
            }
        }
        if let Some(webhook) = self.webhook {
            let abort = webhook.abort_handle();
            if tokio::time::timeout_at(deadline, webhook).await.is_err() {
                abort.abort();
                warn!("SIEM webhook still delivering at shutdown; undelivered lines are lost");
            }
        }
    }
}

impl SiemExport {
    /// Starts the configured sinks (none configured: `submit` does nothing).
    pub fn start(
        config: &SiemConfig,
        metrics: Arc<CollectorMetrics>,
    ) -> Result<(Self, SiemWorkers), SiemError> {
        let mut sinks = Vec::new();
        let mut workers = SiemWorkers {
            file: None,
            webhook: None,
        };
        let capacity = config.queue.max(1);
        if let Some(path) = &config.file {
            let file = RotatingFile::open(path, config.file_max_bytes, config.file_keep)?;
            let (tx, rx) = mpsc::channel(capacity);
            let m = metrics.clone();
            let handle = std::thread::Builder::new()
                .name("sonde-siem-file".into())
                .spawn(move || write_file(file, rx, m))
                .map_err(|source| SiemError::File {
                    path: path.clone(),
                    source,
                })?;
            workers.file = Some(handle);
            info!(path = %path.display(), "exporting anomalies to a JSON-lines file");
            sinks.push(("file", tx));
        }
        if let Some(url) = &config.webhook {
            let target = WebhookTarget::parse(
                url,
                config.webhook_header.as_deref(),
                config.webhook_ca.as_deref(),
            )?;
            let (tx, rx) = mpsc::channel(capacity);
            workers.webhook = Some(tokio::spawn(post_webhook(
                target,
                rx,
                config.clone(),
                metrics.clone(),
            )));
            info!(%url, "exporting anomalies to a webhook");
            sinks.push(("webhook", tx));
        }
        Ok((SiemExport { sinks, metrics }, workers))
    }

    pub fn is_enabled(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Queues one line per anomaly on every sink; a full queue drops and counts.
    pub fn submit(&self, agent_id: &str, anomalies: &[StoredAnomaly]) {
        if self.sinks.is_empty() || anomalies.is_empty() {
            return;
        }
        for stored in anomalies {
            let record = SiemRecord {
                source: "sonde",
                event: "anomaly",
                agent_id,
                stored,
            };
            let line = match serde_json::to_string(&record) {
                Ok(line) => line,
                Err(error) => {
                    warn!(%error, "an anomaly could not be encoded for the SIEM");
                    continue;
                }
            };
            for (sink, tx) in &self.sinks {
                if tx.try_send(line.clone()).is_err() {
                    let dropped = self
                        .metrics
                        .siem_dropped
                        .get_or_create(&vec![("sink", *sink), ("reason", "queue_full")])
                        .clone();
                    dropped.inc();
                    let total = dropped.get();
                    if total.is_power_of_two() {
                        warn!(
                            sink,
                            dropped = total,
                            "SIEM queue full: anomaly not exported"
                        );
                    }
                }
            }
        }
    }
}

/// An append-only file rotated by size.
struct RotatingFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: usize) -> Result<RotatingFile, SiemError> {
        let err = |source| SiemError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
            size,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// `file` → `file.1` → `file.2` ... (the oldest beyond `keep` is removed), then a new file.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = std::io::BufWriter::new(file);
        self.size = 0;
        Ok(())
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }
}

fn write_file(
    mut file: RotatingFile,
    mut rx: mpsc::Receiver<String>,
    metrics: Arc<CollectorMetrics>,
) {
    let exported = metrics
        .siem_exported
        .get_or_create(&vec![("sink", "file")])
        .clone();
    let failed = metrics
        .siem_dropped
        .get_or_create(&vec![("sink", "file"), ("reason", "write_error")])
        .clone();
    while let Some(line) = rx.blocking_recv() {
        let mut lines = vec![line];
        while let Ok(more) = rx.try_recv() {
            lines.push(more);
            if lines.len() >= 1024 {
                break;
            }
        }
        let mut written = 0u64;
        let mut result = Ok(());
        for line in &lines {
            result = file.write_line(line);
            if result.is_err() {
                break;
            }
            written += 1;
        }
        let result = result.and_then(|()| file.file.flush());
        match result {
            Ok(()) => {
                exported.inc_by(written);
            }
            Err(error) => {
                let lost = lines.len() as u64 - written;
                failed.inc_by(lost);
                warn!(%error, path = %file.path.display(), lost, "SIEM file write failed");
            }
        }
    }
}

/// Where and how to POST.
#[derive(Clone)]
struct WebhookTarget {
    /// `host:port` to connect to.
    addr: String,
    /// Host header value.
    host: String,
    path_and_query: String,
    header: Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// For `https://`: the connector and the name the certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    )>,
}

/// A rustls client trusting `ca` (PEM) or, without it, the system's root certificates.
fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, SiemError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| SiemError::Tls(format!("reading {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| SiemError::Tls(format!("reading {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| SiemError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                warn!(%error, "a system root certificate could not be loaded");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(SiemError::Tls(
                    "no system root certificates found; set [siem] webhook_ca".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SiemError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl WebhookTarget {
    fn parse(
        url: &str,
        header: Option<&str>,
        ca: Option<&Path>,
    ) -> Result<WebhookTarget, SiemError> {
        let bad = |reason: &str| SiemError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host().to_string();
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = if https {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(bare_host.clone())
                .map_err(|e| bad(&format!("host name: {e}")))?;
            Some((tls_connector(ca)?, name))
        } else {
            None
        };
        let header = match header {
            None => None,
            Some(h) => {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| SiemError::Header(h.to_string()))?;
                let name = hyper::header::HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| SiemError::Header(h.to_string()))?;
                let value = hyper::header::HeaderValue::from_str(value.trim())
                    .map_err(|_| SiemError::Header(h.to_string()))?;
                Some((name, value))
            }
        };
        Ok(WebhookTarget {
            tls,
            addr: format!("{bare_host}:{port}"),
            host: authority.as_str().to_string(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            header,
        })
    }
}

/// One POST on a fresh connection (TLS for `https://`); Ok on a 2xx answer.
async fn post_once(target: &WebhookTarget, body: Bytes) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    match &target.tls {
        None => post_on(stream, target, body).await,
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", target.addr))?;
            post_on(stream, target, body).await
        }
    }
}

async fn post_on<IO>(io: IO, target: &WebhookTarget, body: Bytes) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut request = hyper::Request::post(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .header(hyper::header::CONNECTION, "close");
    if let Some((name, value)) = &target.header {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    // Read (at most 64 KiB of) the answer so the connection ends cleanly; it is not used.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

async fn post_webhook(
    target: WebhookTarget,
    mut rx: mpsc::Receiver<String>,
    config: SiemConfig,
    metrics: Arc<CollectorMetrics>,
) {
    let exported = metrics
        .siem_exported
        .get_or_create(&vec![("sink", "webhook")])
        .clone();
    let gave_up = metrics
        .siem_dropped
        .get_or_create(&vec![("sink", "webhook"), ("reason", "gave_up")])
        .clone();
    let timeout = Duration::from_millis(config.webhook_timeout_ms.max(1));
    let max_lines = config.webhook_batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut lines = vec![first];
        while lines.len() < max_lines {
            match rx.try_recv() {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        let mut body = lines.join("\n");
        body.push('\n');
        let body = Bytes::from(body);
        let mut backoff = Duration::from_millis(config.webhook_backoff_ms.max(1));
        let max_backoff = Duration::from_millis(config.webhook_backoff_max_ms.max(1));
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(timeout, post_once(&target, body.clone())).await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            match result {
                Ok(()) => {
                    exported.inc_by(lines.len() as u64);
                    break;
                }
                Err(reason) if attempt < config.webhook_attempts.max(1) => {
                    metrics.siem_retries.inc();
                    if attempt == 1 || attempt.is_power_of_two() {
                        warn!(%reason, attempt, retry_in = ?backoff, "SIEM webhook delivery failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
                Err(reason) => {
                    gave_up.inc_by(lines.len() as u64);
                    warn!(%reason, attempts = attempt, lines = lines.len(), "SIEM webhook delivery abandoned");
                    break;
                }
            }
        }
    }
}
