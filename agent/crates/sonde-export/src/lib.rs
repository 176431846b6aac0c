//! Agent to collector export: batching, backpressure, disk spool, ordered lossless redelivery.
//!
//! Callers hand [`EndpointUpdate`]s and [`Anomaly`]s to an [`ExportHandle`] through a bounded
//! channel: `send_*` waits while it is full, `try_send_*` hands the item back. The exporter task
//! groups items into batches (by count and age), gives each a per-agent increasing `seq`, writes
//! it to the spool directory, and streams it over `sonde.v1.Ingest/Report`. A batch leaves the
//! spool only when the collector acks it (acks follow the commit), so a collector outage, a lost
//! connection or an agent restart loses nothing; on reconnect the spool is replayed in order after
//! skipping what the collector already committed. The spool is bounded; when full, the oldest
//! batches are evicted and counted.
//!
//! Sequence numbers start above both the spool's high-water mark and the current time in
//! microseconds, so they keep increasing across restarts even if the spool directory is lost.

mod counters;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use sonde_proto::v1::ingest_client::IngestClient;
use sonde_proto::v1::{
    AgentMessage, Batch, BlindSpot, CollectorMessage, Heartbeat, agent_message, collector_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use counters::Counters;
pub use counters::ExportStats;
pub use sonde_proto::v1::{Anomaly, EndpointUpdate, Hello};
use spool::Spool;
pub use spool::SpoolError;

/// Converts a finding of the detectors into its wire form (the `From` impl lives in sonde-proto,
/// which owns the wire type).
pub fn anomaly_from_model(anomaly: sonde_model::Anomaly) -> Anomaly {
    Anomaly::from(anomaly)
}

/// Bytes a repeated-field entry adds around an item (tag and length prefix), an upper bound.
const ITEM_FRAMING_BYTES: usize = 8;
/// Room kept in a gRPC message for the AgentMessage/Batch envelope (seq, timestamps, tags).
const BATCH_FRAMING_BYTES: usize = 64;

/// TLS towards the collector.
#[derive(Clone, Debug, Default)]
pub struct ExportTls {
    /// PEM CA that signed the collector's certificate.
    pub ca_cert_pem: Vec<u8>,
    /// PEM client certificate and key, for a collector that requires mTLS on ingest.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify in the collector's certificate, when it differs from the URL's host.
    pub domain: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// `http://host:port` or `https://host:port`. Default `http://127.0.0.1:7419`.
    pub collector_url: String,
    /// Identity sent first on every connection.
    pub hello: Hello,
    /// Directory of spool segments. Required.
    pub spool_dir: PathBuf,
    /// Bound on unacknowledged batches, on disk and in memory. Default 64 MiB.
    pub max_spool_bytes: u64,
    /// A batch is sealed at this many items... Default 500.
    pub max_batch_items: usize,
    /// ...or when its first item is this old. Default 1 s.
    pub max_batch_delay: Duration,
    /// Capacity of the channel from callers. Default 4096 items.
    pub queue_capacity: usize,
    /// Batches sent but not yet acked, at most. Default 32.
    pub max_in_flight: usize,
    /// Reconnect backoff: starts here, doubles per failure up to `backoff_max`.
    /// Defaults 200 ms and 30 s.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Largest gRPC message. Default 4 MiB (the collector's default limit).
    pub max_message_bytes: usize,
    /// fsync every segment before it counts as spooled. Default true.
    pub fsync: bool,
    pub tls: Option<ExportTls>,
}

impl ExporterConfig {
    pub fn new(
        collector_url: impl Into<String>,
        hello: Hello,
        spool_dir: impl Into<PathBuf>,
    ) -> Self {
        ExporterConfig {
            collector_url: collector_url.into(),
            hello,
            spool_dir: spool_dir.into(),
            max_spool_bytes: 64 * 1024 * 1024,
            max_batch_items: 500,
            max_batch_delay: Duration::from_secs(1),
            queue_capacity: 4096,
            max_in_flight: 32,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 4 * 1024 * 1024,
            fsync: true,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("invalid collector URL {url:?}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("TLS configuration refused: {0}")]
    Tls(tonic::transport::Error),
    #[error("the exporter has stopped")]
    Closed,
}

/// An item handed back by `try_send_*` (boxed: updates are large).
#[derive(Debug, thiserror::Error)]
pub enum TrySendError<T> {
    #[error("the export queue is full")]
    Full(Box<T>),
    #[error("the exporter has stopped")]
    Closed(Box<T>),
}

enum Item {
    Endpoint(Box<EndpointUpdate>),
    Anomaly(Box<Anomaly>),
    Heartbeat(Heartbeat),
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone; every pipeline stage that exports holds one.
#[derive(Clone)]
pub struct ExportHandle {
    tx: mpsc::Sender<Item>,
    counters: Arc<Counters>,
}

impl ExportHandle {
    /// Waits while the queue is full.
    pub async fn send_endpoint(&self, update: EndpointUpdate) -> Result<(), ExportError> {
        self.tx
            .send(Item::Endpoint(Box::new(update)))
            .await
            .map_err(|_| ExportError::Closed)?;
        Counters::add(&self.counters.queued_items, 1);
        Ok(())
    }

    pub async fn send_anomaly(&self, anomaly: impl Into<Anomaly>) -> Result<(), ExportError> {
        self.tx
            .send(Item::Anomaly(Box::new(anomaly.into())))
            .await
            .map_err(|_| ExportError::Closed)?;
        Counters::add(&self.counters.queued_items, 1);
        Ok(())
    }

    /// Never waits: a full queue hands the update back.
    pub fn try_send_endpoint(
        &self,
        update: EndpointUpdate,
    ) -> Result<(), TrySendError<EndpointUpdate>> {
        match self.tx.try_send(Item::Endpoint(Box::new(update))) {
            Ok(()) => {
                Counters::add(&self.counters.queued_items, 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(Item::Endpoint(u))) => Err(TrySendError::Full(u)),
            Err(mpsc::error::TrySendError::Closed(Item::Endpoint(u))) => {
                Err(TrySendError::Closed(u))
            }
            Err(_) => unreachable_item(),
        }
    }

    pub fn try_send_anomaly(&self, anomaly: Anomaly) -> Result<(), TrySendError<Anomaly>> {
        match self.tx.try_send(Item::Anomaly(Box::new(anomaly))) {
            Ok(()) => {
                Counters::add(&self.counters.queued_items, 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(Item::Anomaly(a))) => Err(TrySendError::Full(a)),
            Err(mpsc::error::TrySendError::Closed(Item::Anomaly(a))) => {
                Err(TrySendError::Closed(a))
            }
            Err(_) => unreachable_item(),
        }
    }

    /// Sends agent health now (or on the next connection). The exporter's own counters are added
    /// under `export.*`. Heartbeats are not spooled: only the latest matters.
    pub async fn heartbeat(
        &self,
        counters: std::collections::HashMap<String, u64>,
        blind_spots: Vec<BlindSpot>,
    ) -> Result<(), ExportError> {
        let heartbeat = Heartbeat {
            counters,
            blind_spots,
            sent_at_unix_ns: now_ns(),
        };
        self.tx
            .send(Item::Heartbeat(heartbeat))
            .await
            .map_err(|_| ExportError::Closed)
    }

    /// Seals the batch being built; returns once it (and everything queued before) is spooled.
    pub async fn flush(&self) -> Result<(), ExportError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Item::Flush(done))
            .await
            .map_err(|_| ExportError::Closed)?;
        wait.await.map_err(|_| ExportError::Closed)
    }

    pub fn stats(&self) -> ExportStats {
        self.counters.snapshot()
    }
}

/// `try_send` returns the item it was given; any other variant cannot come back.
fn unreachable_item<T>() -> Result<(), T> {
    tracing::error!("export queue returned an item of another kind");
    Ok(())
}

/// The running exporter. Dropping it without [`Exporter::shutdown`] aborts the task; spooled
/// batches are delivered by the next start.
pub struct Exporter {
    handle: ExportHandle,
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Loads the spool and starts the export task on the current tokio runtime.
    pub fn start(config: ExporterConfig) -> Result<Exporter, ExportError> {
        let counters = Arc::new(Counters::default());
        let spool = Spool::open(
            &config.spool_dir,
            config.max_spool_bytes,
            config.fsync,
            &counters,
        )?;
        let endpoint = endpoint(&config)?;
        let micros = now_ns() / 1_000;
        let next_seq = spool.high_water().saturating_add(1).max(micros);
        if !spool.is_empty() {
            info!(
                batches = spool.pending().len(),
                "export spool holds undelivered batches"
            );
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, stop_rx) = watch::channel(None);
        let worker = Worker {
            backoff: config.backoff_initial,
            failures_in_row: 0,
            config,
            endpoint,
            rx,
            spool,
            current: Batch::default(),
            current_bytes: 0,
            current_deadline: None,
            next_seq,
            counters: counters.clone(),
            heartbeat: None,
            conn: None,
            connecting: None,
            next_attempt: Instant::now(),
            stop: stop_rx,
        };
        let task = tokio::spawn(worker.run());
        Ok(Exporter {
            handle: ExportHandle { tx, counters },
            stop,
            task,
        })
    }

    pub fn handle(&self) -> ExportHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> ExportStats {
        self.handle.stats()
    }

    /// Stops taking items, seals what was queued, and tries for up to `grace` to get every
    /// pending batch acked; whatever is left stays in the spool for the next start.
    pub async fn shutdown(self, grace: Duration) -> ExportStats {
        let _ = self.stop.send(Some(Instant::now() + grace));
        let counters = self.handle.counters.clone();
        drop(self.handle);
        if let Err(error) = self.task.await {
            warn!(%error, "export task ended abnormally");
        }
        counters.snapshot()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn endpoint(config: &ExporterConfig) -> Result<Endpoint, ExportError> {
    let url = config.collector_url.clone();
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| ExportError::Url {
            url: url.clone(),
            source,
        })?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_cert_pem));
        if let Some((cert, key)) = &tls.client_identity_pem {
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            tls_config = tls_config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls_config).map_err(ExportError::Tls)?;
    }
    Ok(endpoint)
}

struct Connection {
    outbound: mpsc::Sender<AgentMessage>,
    inbound: Streaming<CollectorMessage>,
    /// Highest seq transmitted on this connection.
    sent_through: u64,
}

struct Worker {
    config: ExporterConfig,
    endpoint: Endpoint,
    rx: mpsc::Receiver<Item>,
    spool: Spool,
    current: Batch,
    /// Encoded size of `current`, framing included.
    current_bytes: usize,
    current_deadline: Option<Instant>,
    next_seq: u64,
    counters: Arc<Counters>,
    heartbeat: Option<Heartbeat>,
    conn: Option<Connection>,
    connecting: Option<JoinHandle<Result<(Connection, u64), tonic::Status>>>,
    next_attempt: Instant,
    backoff: Duration,
    /// Connection attempts failed since the last success (or the start).
    failures_in_row: u64,
    /// Set to the delivery deadline when shutdown begins.
    stop: watch::Receiver<Option<Instant>>,
}

async fn open_connection(
    endpoint: Endpoint,
    hello: Hello,
    max_message_bytes: usize,
    capacity: usize,
) -> Result<(Connection, u64), tonic::Status> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut client = IngestClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let (outbound, rx) = mpsc::channel(capacity);
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(hello)),
    };
    outbound
        .send(hello)
        .await
        .map_err(|_| tonic::Status::internal("outbound closed"))?;
    let mut inbound = client.report(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(CollectorMessage {
            body: Some(collector_message::Body::Ack(ack)),
        }) => Ok((
            Connection {
                outbound,
                inbound,
                sent_through: 0,
            },
            ack.seq,
        )),
        other => Err(tonic::Status::internal(format!(
            "expected an Ack to the Hello, got {other:?}"
        ))),
    }
}

impl Worker {
    async fn run(mut self) {
        let mut accepting = true;
        loop {
            self.pump();
            let deadline = *self.stop.borrow();
            if let Some(deadline) = deadline {
                if accepting {
                    // Take what callers already queued, then seal it.
                    self.rx.close();
                    while let Some(item) = self.rx.recv().await {
                        self.accept(item);
                    }
                    self.seal();
                    accepting = false;
                    self.pump();
                }
                if self.spool.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
            let batch_deadline = self.current_deadline;
            let want_connect = self.conn.is_none() && self.connecting.is_none();
            tokio::select! {
                changed = self.stop.changed(), if deadline.is_none() => {
                    if changed.is_err() { break; }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                message = next_message(&mut self.conn) => self.on_message(message),
                connected = join_connecting(&mut self.connecting) => self.on_connected(connected),
                _ = sleep_until(self.next_attempt), if want_connect => self.start_connect(),
                item = self.rx.recv(), if accepting => match item {
                    Some(item) => self.accept(item),
                    None => { self.seal(); accepting = false; }
                },
                _ = sleep_until(batch_deadline.unwrap_or_else(Instant::now)), if batch_deadline.is_some() => self.seal(),
            }
        }
        let left = self.spool.pending().len();
        if left > 0 {
            info!(
                batches = left,
                "exporter stopped; undelivered batches stay spooled"
            );
        }
        if let Some(connecting) = self.connecting.take() {
            connecting.abort();
        }
    }

    fn accept(&mut self, item: Item) {
        let size = match &item {
            Item::Endpoint(update) => update.encoded_len(),
            Item::Anomaly(anomaly) => anomaly.encoded_len(),
            Item::Heartbeat(_) | Item::Flush(_) => 0,
        }
        .saturating_add(ITEM_FRAMING_BYTES);
        match item {
            Item::Heartbeat(mut heartbeat) => {
                heartbeat
                    .counters
                    .extend(self.counters.snapshot().as_counters());
                self.heartbeat = Some(heartbeat);
                self.send_heartbeat();
                return;
            }
            Item::Flush(done) => {
                self.seal();
                let _ = done.send(());
                return;
            }
            Item::Endpoint(_) | Item::Anomaly(_) => {}
        }
        // A batch must fit in one gRPC message, or the collector would refuse it forever.
        let budget = self
            .config
            .max_message_bytes
            .saturating_sub(BATCH_FRAMING_BYTES);
        if size > budget {
            warn!(
                size,
                budget, "an export item is larger than a gRPC message may be; dropping it"
            );
            Counters::add(&self.counters.oversized_items, 1);
            return;
        }
        if self.current_bytes.saturating_add(size) > budget {
            self.seal();
        }
        match item {
            Item::Endpoint(update) => self.current.endpoint_updates.push(*update),
            Item::Anomaly(anomaly) => self.current.anomalies.push(*anomaly),
            Item::Heartbeat(_) | Item::Flush(_) => return,
        }
        self.current_bytes = self.current_bytes.saturating_add(size);
        if self.current_deadline.is_none() {
            self.current_deadline = Some(Instant::now() + self.config.max_batch_delay);
        }
        if self.current.endpoint_updates.len() + self.current.anomalies.len()
            >= self.config.max_batch_items
        {
            self.seal();
        }
    }

    fn seal(&mut self) {
        self.current_deadline = None;
        self.current_bytes = 0;
        if self.current.endpoint_updates.is_empty() && self.current.anomalies.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.current);
        batch.seq = self.next_seq;
        batch.sealed_at_unix_ns = now_ns();
        batch.agent_run = self.config.hello.started_at_unix_ns;
        self.next_seq += 1;
        self.spool.push(batch, &self.counters);
        self.pump();
    }

    fn send_heartbeat(&mut self) {
        let (Some(conn), Some(heartbeat)) = (&self.conn, &self.heartbeat) else {
            return;
        };
        let message = AgentMessage {
            body: Some(agent_message::Body::Heartbeat(heartbeat.clone())),
        };
        if conn.outbound.try_send(message).is_ok() {
            self.heartbeat = None;
        }
    }

    /// Transmits pending batches in order, within the in-flight window.
    fn pump(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        let in_flight = self
            .spool
            .pending()
            .iter()
            .filter(|p| p.seq() <= conn.sent_through)
            .count();
        let mut room = self.config.max_in_flight.max(1).saturating_sub(in_flight);
        let sent_through = conn.sent_through;
        for pending in self
            .spool
            .pending()
            .iter()
            .filter(|p| p.seq() > sent_through)
        {
            if room == 0 {
                break;
            }
            let message = AgentMessage {
                body: Some(agent_message::Body::Batch(pending.batch.clone())),
            };
            match conn.outbound.try_send(message) {
                Ok(()) => {
                    conn.sent_through = pending.seq();
                    Counters::add(&self.counters.sent_batches, 1);
                    room -= 1;
                }
                Err(_) => break,
            }
        }
    }

    fn start_connect(&mut self) {
        let capacity = self.config.max_in_flight.max(1) + 4;
        self.connecting = Some(tokio::spawn(open_connection(
            self.endpoint.clone(),
            self.config.hello.clone(),
            self.config.max_message_bytes,
            capacity,
        )));
    }

    fn schedule_reconnect(&mut self) {
        // Up to 25% jitter from the clock's low bits so a fleet does not reconnect in lockstep.
        let jitter_range = self.backoff.as_millis() as u64 / 4;
        let jitter = if jitter_range > 0 {
            now_ns() % jitter_range
        } else {
            0
        };
        self.next_attempt = Instant::now() + self.backoff + Duration::from_millis(jitter);
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
    }

    fn on_connected(&mut self, result: Result<(Connection, u64), tonic::Status>) {
        self.connecting = None;
        match result {
            Ok((conn, committed)) => {
                let skipped = self.spool.ack_through(committed, &self.counters);
                info!(url = %self.config.collector_url, committed, skipped, pending = self.spool.pending().len(), "connected to the collector");
                self.backoff = self.config.backoff_initial;
                self.failures_in_row = 0;
                self.conn = Some(conn);
                Counters::set(&self.counters.connected, 1);
                if self.next_seq <= committed {
                    // The collector has seen higher seqs than ours (state lost): jump past them.
                    self.next_seq = committed + 1;
                }
                self.send_heartbeat();
                self.pump();
            }
            Err(status) => {
                self.failures_in_row += 1;
                // Refusals that retrying will not fix deserve a warning each time; plain
                // unreachability is said once when it starts and then at growing intervals
                // (1st, 2nd, 4th, 8th... failure), the rest at debug.
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) {
                    warn!(code = ?status.code(), message = status.message(), "collector refused this agent");
                } else if self.failures_in_row.is_power_of_two() {
                    warn!(
                        url = %self.config.collector_url,
                        failures = self.failures_in_row,
                        pending_batches = self.spool.pending().len(),
                        message = status.message(),
                        "collector unreachable; batches wait in the spool"
                    );
                } else {
                    debug!(code = ?status.code(), message = status.message(), "collector connection failed");
                }
                self.schedule_reconnect();
            }
        }
    }

    fn on_message(&mut self, message: Result<Option<CollectorMessage>, tonic::Status>) {
        match message {
            Ok(Some(CollectorMessage {
                body: Some(collector_message::Body::Ack(ack)),
            })) => {
                let before: u64 = self
                    .spool
                    .pending()
                    .iter()
                    .filter(|p| p.seq() <= ack.seq)
                    .map(|p| p.items())
                    .sum();
                let acked = self.spool.ack_through(ack.seq, &self.counters);
                Counters::add(&self.counters.acked_batches, acked);
                Counters::add(&self.counters.acked_items, before);
                self.pump();
            }
            Ok(Some(CollectorMessage {
                body: Some(collector_message::Body::Error(error)),
            })) => {
                warn!(seq = error.seq, reason = %error.message, "collector refused a batch; dropping it");
                if self.spool.remove(error.seq, &self.counters) {
                    Counters::add(&self.counters.rejected_batches, 1);
                }
                self.pump();
            }
            Ok(Some(CollectorMessage { body: None })) => {}
            Ok(None) | Err(_) => {
                if let Err(status) = &message {
                    info!(code = ?status.code(), message = status.message(), "collector stream lost");
                } else {
                    info!("collector closed the stream");
                }
                self.conn = None;
                Counters::set(&self.counters.connected, 0);
                Counters::add(&self.counters.reconnects, 1);
                self.schedule_reconnect();
            }
        }
    }
}

async fn next_message(
    conn: &mut Option<Connection>,
) -> Result<Option<CollectorMessage>, tonic::Status> {
    match conn {
        Some(conn) => conn.inbound.message().await,
        None => std::future::pending().await,
    }
}

async fn join_connecting(
    connecting: &mut Option<JoinHandle<Result<(Connection, u64), tonic::Status>>>,
) -> Result<(Connection, u64), tonic::Status> {
    match connecting {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(error) => Err(tonic::Status::internal(format!(
                "connect task failed: {error}"
            ))),
        },
        None => std::future::pending().await,
    }
}
