//! The gRPC server: ingest, query, health and reflection on one listener.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sonde_proto::v1::ingest_server::{Ingest, IngestServer};
use sonde_proto::v1::query_server::{Query, QueryServer};
use sonde_proto::v1::{
    Ack, AgentMessage, Batch, CollectorMessage, EndpointUpdate, ExportOpenApiRequest,
    ExportOpenApiResponse, GetEndpointRequest, GetEndpointResponse, Hello, ListAgentsRequest,
    ListAgentsResponse, ListAnomaliesRequest, ListAnomaliesResponse, ListEndpointsRequest,
    ListEndpointsResponse, StoredAnomaly, WatchAnomaliesRequest, agent_message, collector_message,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::BearerAuth;
use crate::config::CollectorConfig;
use crate::metrics::CollectorMetrics;
use crate::openapi;
use crate::siem::SiemExport;
use crate::store::{Location, Store, StoreError, StoreOptions};

/// An agent that sends nothing this long after opening its stream is cut off.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest identifier or key string accepted from an agent.
const MAX_ID_LEN: usize = 256;
const MAX_KEY_FIELD_LEN: usize = 4096;
/// Live anomalies buffered per watcher before it is told it fell behind.
const WATCH_BUFFER: usize = 4096;

/// State shared by the services of one running collector.
struct Shared {
    store: Arc<Store>,
    /// agent_id → number of open ingest streams.
    connected: Mutex<HashMap<String, usize>>,
    anomalies: broadcast::Sender<StoredAnomaly>,
    stopping: watch::Receiver<bool>,
    max_batch_items: usize,
    require_client_cert: bool,
    metrics: Arc<CollectorMetrics>,
    siem: SiemExport,
}

impl Shared {
    fn set_connected(&self, agent_id: &str, delta: isize) {
        let Ok(mut map) = self.connected.lock() else {
            return;
        };
        let count = map.entry(agent_id.to_string()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            map.remove(agent_id);
        }
        self.metrics
            .agents_connected
            .set(i64::try_from(map.len()).unwrap_or(i64::MAX));
    }

    fn is_connected(&self, agent_id: &str) -> bool {
        self.connected
            .lock()
            .map(|m| m.contains_key(agent_id))
            .unwrap_or(false)
    }
}

/// Completes once shutdown has begun (the watch guard is dropped before returning, so the future
/// stays `Send`).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(StoreError::InvalidPageToken)) => {
            Err(Status::invalid_argument("invalid page token"))
        }
        Ok(Err(StoreError::UnknownAgent(agent))) => Err(Status::failed_precondition(format!(
            "agent {agent:?} has not said hello"
        ))),
        Ok(Err(error)) if error.is_unavailable() => {
            tracing::error!(%error, "store unavailable");
            Err(Status::unavailable(format!("store unavailable: {error}")))
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "store operation failed");
            Err(Status::internal(format!("store error: {error}")))
        }
        Err(join) => {
            tracing::error!(error = %join, "store task failed");
            Err(Status::internal("store task failed"))
        }
    }
}

fn ack(seq: u64) -> CollectorMessage {
    CollectorMessage {
        body: Some(collector_message::Body::Ack(Ack { seq })),
    }
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{what} is {} bytes, at most {max} allowed",
            value.len()
        ));
    }
    Ok(())
}

fn validate_hello(hello: &Hello) -> Result<(), Status> {
    if hello.agent_id.is_empty() {
        return Err(Status::invalid_argument("hello.agent_id is empty"));
    }
    for (what, value) in [
        ("hello.agent_id", &hello.agent_id),
        ("hello.host", &hello.host),
        ("hello.agent_version", &hello.agent_version),
        ("hello.kernel", &hello.kernel),
        ("hello.capture_strategy", &hello.capture_strategy),
    ] {
        check_len(what, value, MAX_ID_LEN).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

fn validate_update(index: usize, update: &EndpointUpdate) -> Result<(), String> {
    let Some(key) = &update.key else {
        return Err(format!("endpoint_updates[{index}] has no key"));
    };
    if key.method.is_empty() || key.path_template.is_empty() {
        return Err(format!(
            "endpoint_updates[{index}] has an empty method or path template"
        ));
    }
    check_len("endpoint method", &key.method, MAX_ID_LEN)?;
    check_len(
        "endpoint path template",
        &key.path_template,
        MAX_KEY_FIELD_LEN,
    )?;
    if let Some(service) = &key.service {
        check_len("service authority", &service.authority, MAX_KEY_FIELD_LEN)?;
        check_len("service address", &service.server_addr, MAX_ID_LEN)?;
        check_len("service process", &service.process, MAX_ID_LEN)?;
    }
    Ok(())
}

fn validate_batch(batch: &Batch, max_items: usize) -> Result<(), String> {
    if batch.seq == 0 {
        return Err("batch.seq must be at least 1".into());
    }
    let items = batch
        .endpoint_updates
        .len()
        .saturating_add(batch.anomalies.len());
    if items > max_items {
        return Err(format!(
            "batch has {items} items, at most {max_items} allowed"
        ));
    }
    for (index, update) in batch.endpoint_updates.iter().enumerate() {
        validate_update(index, update)?;
    }
    for (index, anomaly) in batch.anomalies.iter().enumerate() {
        if anomaly.key.is_empty() || anomaly.kind.is_empty() {
            return Err(format!("anomalies[{index}] has an empty key or kind"));
        }
        check_len("anomaly key", &anomaly.key, MAX_KEY_FIELD_LEN)?;
        check_len("anomaly kind", &anomaly.kind, MAX_ID_LEN)?;
        if sonde_proto::v1::Severity::try_from(anomaly.severity).is_err() {
            return Err(format!(
                "anomalies[{index}] has unknown severity {}",
                anomaly.severity
            ));
        }
        if sonde_proto::v1::OwaspCategory::try_from(anomaly.category).is_err() {
            return Err(format!(
                "anomalies[{index}] has unknown category {}",
                anomaly.category
            ));
        }
    }
    Ok(())
}

struct IngestService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type ReportStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        if self.shared.require_client_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated(
                "ingest requires a client certificate signed by the configured agent CA (mTLS)",
            ));
        }
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Hello within 30 s of opening the stream")
            })??;
        let hello = match first {
            Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }) => hello,
            None => return Err(Status::cancelled("stream closed before its Hello")),
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        validate_hello(&hello)?;
        let store = self.shared.store.clone();
        let registered = hello.clone();
        let last_seq = blocking(move || store.register_agent(&registered)).await?;
        info!(agent_id = %hello.agent_id, host = %hello.host, ?peer, last_seq, "agent connected");
        let (tx, rx) = mpsc::channel(32);
        // Capacity is 32 and nothing else has been sent yet, so this cannot fail.
        let _ = tx.try_send(Ok(ack(last_seq)));
        tokio::spawn(run_ingest_stream(
            self.shared.clone(),
            hello.agent_id,
            inbound,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn run_ingest_stream(
    shared: Arc<Shared>,
    agent_id: String,
    mut inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
) {
    shared.set_connected(&agent_id, 1);
    let mut stopping = shared.stopping.clone();
    // Refusals are logged at the 1st, 2nd, 4th, 8th, ... occurrence so a misbehaving agent
    // cannot flood the log.
    let mut refused_batches: u64 = 0;
    loop {
        let message = tokio::select! {
            biased;
            _ = stopped(&mut stopping) => {
                let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                break;
            }
            message = inbound.message() => message,
        };
        let body = match message {
            Ok(Some(AgentMessage { body: Some(body) })) => body,
            Ok(Some(AgentMessage { body: None })) => {
                let _ = tx
                    .send(Err(Status::invalid_argument("empty AgentMessage")))
                    .await;
                break;
            }
            Ok(None) => break,
            Err(status) => {
                debug!(%agent_id, %status, "ingest stream ended with an error");
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let reply = match body {
            agent_message::Body::Hello(_) => {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "Hello sent twice on one stream",
                    )))
                    .await;
                break;
            }
            agent_message::Body::Heartbeat(heartbeat) => {
                let store = shared.store.clone();
                let id = agent_id.clone();
                match blocking(move || store.record_heartbeat(&id, &heartbeat)).await {
                    Ok(()) => continue,
                    Err(status) => Err(status),
                }
            }
            agent_message::Body::Batch(batch) => {
                let started = std::time::Instant::now();
                if let Err(reason) = validate_batch(&batch, shared.max_batch_items) {
                    CollectorMetrics::count(
                        &shared.metrics.batches_refused,
                        vec![("reason", "invalid")],
                        1,
                    );
                    refused_batches += 1;
                    if refused_batches.is_power_of_two() {
                        warn!(%agent_id, seq = batch.seq, %reason, refused_batches, "refused a batch");
                    }
                    Ok(CollectorMessage {
                        body: Some(collector_message::Body::Error(sonde_proto::v1::Error {
                            seq: batch.seq,
                            message: reason,
                        })),
                    })
                } else {
                    let store = shared.store.clone();
                    let id = agent_id.clone();
                    let updates = batch.endpoint_updates.len() as u64;
                    let reported = batch.anomalies.len() as u64;
                    match blocking(move || store.ingest_batch(&id, &batch)).await {
                        Ok(outcome) => {
                            let m = &shared.metrics;
                            if outcome.applied {
                                m.batches_ingested.inc();
                                CollectorMetrics::count(
                                    &m.items_ingested,
                                    vec![("kind", "endpoint_update")],
                                    updates,
                                );
                                CollectorMetrics::count(
                                    &m.items_ingested,
                                    vec![("kind", "anomaly")],
                                    reported,
                                );
                                if outcome.refused > 0 {
                                    CollectorMetrics::count(
                                        &m.items_refused,
                                        vec![("reason", "row_cap")],
                                        outcome.refused,
                                    );
                                }
                                m.ingest_seconds.observe(started.elapsed().as_secs_f64());
                                shared.siem.submit(&agent_id, &outcome.anomalies);
                            } else {
                                m.duplicate_batches.inc();
                            }
                            for anomaly in outcome.anomalies {
                                // No watcher is not an error.
                                let _ = shared.anomalies.send(anomaly);
                            }
                            Ok(ack(outcome.last_seq))
                        }
                        Err(status) => {
                            CollectorMetrics::count(
                                &shared.metrics.batches_refused,
                                vec![("reason", "store_error")],
                                1,
                            );
                            Err(status)
                        }
                    }
                }
            }
        };
        let failed = reply.is_err();
        if tx.send(reply).await.is_err() || failed {
            break;
        }
    }
    shared.set_connected(&agent_id, -1);
    info!(%agent_id, "agent stream closed");
}

struct QueryService {
    shared: Arc<Shared>,
}

/// Counts an open live watch for as long as it lives.
struct WatchSubscriber(Arc<CollectorMetrics>);

impl WatchSubscriber {
    fn new(metrics: Arc<CollectorMetrics>) -> WatchSubscriber {
        metrics.watch_subscribers.inc();
        WatchSubscriber(metrics)
    }
}

impl Drop for WatchSubscriber {
    fn drop(&mut self) {
        self.0.watch_subscribers.dec();
    }
}

impl QueryService {
    /// Runs one query RPC, counting it and its latency by method and status code.
    async fn timed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.shared.metrics.observe_query(method, code, started);
        result
    }
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        self.timed("list_endpoints", async {
            let filter = request.into_inner();
            let store = self.shared.store.clone();
            let (endpoints, next_page_token) =
                blocking(move || store.list_endpoints(&filter)).await?;
            Ok(Response::new(ListEndpointsResponse {
                endpoints,
                next_page_token,
            }))
        })
        .await
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        self.timed("get_endpoint", async {
            let id = request.into_inner().id;
            let store = self.shared.store.clone();
            let lookup = id.clone();
            match blocking(move || store.get_endpoint(&lookup)).await? {
                Some(found) => Ok(Response::new(found)),
                None => Err(Status::not_found(format!("no endpoint with id {id:?}"))),
            }
        })
        .await
    }

    async fn list_anomalies(
        &self,
        request: Request<ListAnomaliesRequest>,
    ) -> Result<Response<ListAnomaliesResponse>, Status> {
        self.timed("list_anomalies", async {
            let filter = request.into_inner();
            let store = self.shared.store.clone();
            let (anomalies, next_page_token) =
                blocking(move || store.list_anomalies(&filter)).await?;
            Ok(Response::new(ListAnomaliesResponse {
                anomalies,
                next_page_token,
            }))
        })
        .await
    }

    type WatchAnomaliesStream = ReceiverStream<Result<StoredAnomaly, Status>>;

    async fn watch_anomalies(
        &self,
        request: Request<WatchAnomaliesRequest>,
    ) -> Result<Response<Self::WatchAnomaliesStream>, Status> {
        self.timed("watch_anomalies", async {
            let filter = request.into_inner();
            let mut live = self.shared.anomalies.subscribe();
            let mut stopping = self.shared.stopping.clone();
            let (tx, rx) = mpsc::channel(64);
            let subscriber = WatchSubscriber::new(self.shared.metrics.clone());
            tokio::spawn(async move {
                let _subscriber = subscriber;
                loop {
                    let next = tokio::select! {
                        _ = stopped(&mut stopping) => {
                            let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                        next = live.recv() => next,
                    };
                    match next {
                        Ok(stored) => {
                            let Some(anomaly) = &stored.anomaly else {
                                continue;
                            };
                            if (!filter.kind.is_empty() && anomaly.kind != filter.kind)
                                || anomaly.severity < filter.min_severity
                            {
                                continue;
                            }
                            if tx.send(Ok(stored)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let _ = tx
                                .send(Err(Status::data_loss(format!(
                                    "watcher fell behind and missed {missed} anomalies; list them with ListAnomalies and watch again"
                                ))))
                                .await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn list_agents(
        &self,
        _request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.timed("list_agents", async {
            let store = self.shared.store.clone();
            let mut agents = blocking(move || store.list_agents()).await?;
            for agent in &mut agents {
                agent.connected = self.shared.is_connected(&agent.agent_id);
            }
            Ok(Response::new(ListAgentsResponse { agents }))
        })
        .await
    }

    async fn export_open_api(
        &self,
        request: Request<ExportOpenApiRequest>,
    ) -> Result<Response<ExportOpenApiResponse>, Status> {
        self.timed("export_open_api", async {
            let service = request.into_inner().service;
            if service.is_empty() {
                return Err(Status::invalid_argument("service is required"));
            }
            let store = self.shared.store.clone();
            let lookup = service.clone();
            let endpoints = blocking(move || store.service_endpoints(&lookup)).await?;
            if endpoints.is_empty() {
                return Err(Status::not_found(format!(
                    "no endpoints stored for service {service:?}"
                )));
            }
            let (document, path_count) = openapi::build(&service, &endpoints);
            let json = serde_json::to_string_pretty(&document)
                .map_err(|e| Status::internal(format!("encoding the OpenAPI document: {e}")))?;
            Ok(Response::new(ExportOpenApiResponse {
                json,
                path_count: u32::try_from(path_count).unwrap_or(u32::MAX),
            }))
        })
        .await
    }
}

/// A collector whose store is open and whose listener is bound, not yet serving.
pub struct BoundCollector {
    config: CollectorConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Arc<Store>,
    metrics: Arc<CollectorMetrics>,
}

/// Opens the store (running migrations) and binds the listener; `listen` may use port 0.
pub async fn bind(config: CollectorConfig) -> anyhow::Result<BoundCollector> {
    // The address first: a collector that cannot listen leaves no new database behind.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the collector listener on {}", config.listen))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    let path = config.database.clone();
    let options = StoreOptions {
        synchronous_full: config.synchronous_full,
        max_endpoints: config.max_endpoints,
        max_anomalies: config.max_anomalies,
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&path, &options))
        .await
        .context("store open task failed")?
        .with_context(|| {
            format!(
                "opening the store at {}",
                Location::parse(&config.database).redacted()
            )
        })?;
    let store = Arc::new(store);
    let metrics = Arc::new(CollectorMetrics::new(store.clone()));
    Ok(BoundCollector {
        config,
        listener,
        local_addr,
        store,
        metrics,
    })
}

impl BoundCollector {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// This collector's metrics (register them with [`CollectorMetrics::registry`]).
    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` completes, then lets open streams finish (each ingest stream ends
    /// after the batch it is committing is acked) for at most `shutdown_grace_secs`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let BoundCollector {
            config,
            listener,
            local_addr,
            store,
            metrics,
        } = self;
        let (siem, siem_workers) =
            SiemExport::start(&config.siem, metrics.clone()).context("starting the SIEM export")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let token = config.query.resolve_token()?;
        let require_client_cert = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let (anomalies, _) = broadcast::channel(WATCH_BUFFER);
        // Anomalies other collectors commit to a shared database reach this one's watchers too.
        let relay = anomalies.clone();
        let _feed = store
            .follow_other_collectors(move |anomaly| {
                let _ = relay.send(anomaly);
            })
            .context("starting the anomaly feed")?;
        let shared = Arc::new(Shared {
            store,
            connected: Mutex::new(HashMap::new()),
            anomalies,
            stopping: stop_rx.clone(),
            max_batch_items: config.max_batch_items,
            require_client_cert,
            metrics: metrics.clone(),
            siem,
        });

        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            let cert = std::fs::read(&tls.cert)
                .with_context(|| format!("reading TLS certificate {}", tls.cert.display()))?;
            let key = std::fs::read(&tls.key)
                .with_context(|| format!("reading TLS key {}", tls.key.display()))?;
            let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
            if let Some(ca) = &tls.client_ca {
                let ca = std::fs::read(ca)
                    .with_context(|| format!("reading client CA {}", ca.display()))?;
                // Optional at the TLS layer so the query API (token-based) stays reachable; the
                // ingest service itself refuses streams without a verified client certificate.
                tls_config = tls_config
                    .client_ca_root(Certificate::from_pem(ca))
                    .client_auth_optional(true);
            }
            builder = builder.tls_config(tls_config).context("configuring TLS")?;
        }

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<IngestServer<IngestService>>()
            .await;
        health_reporter
            .set_serving::<QueryServer<QueryService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sonde_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let limit = config.max_message_bytes;
        let ingest = IngestServer::new(IngestService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let query = QueryServer::new(QueryService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let query = InterceptedService::new(query, BearerAuth::new(token.clone()));

        info!(
            %local_addr,
            tls = config.tls.is_some(),
            mtls = require_client_cert,
            query_token = token.is_some(),
            database = %Location::parse(&config.database).redacted(),
            "collector serving"
        );
        // Without TCP_NODELAY small replies wait on delayed ACKs (~40 ms per query on loopback).
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let serving_metrics = metrics.clone();
        let signal = async move {
            shutdown.await;
            info!("collector shutting down");
            serving_metrics.set_serving(false);
            let _ = stop_tx.send(true);
        };
        metrics.set_serving(true);
        let serving = builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ingest)
            .add_service(query)
            .serve_with_incoming_shutdown(incoming, signal);
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut stopped = stop_rx;
        tokio::select! {
            served = serving => served.context("gRPC server failed")?,
            _ = async { let _ = stopped.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
                warn!(grace_secs = grace.as_secs(), "shutdown grace elapsed; closing remaining connections");
            }
        }
        // Streams are done: once their last handles go, the SIEM sinks drain and end.
        drop(shared);
        siem_workers.finish(Duration::from_secs(5)).await;
        info!("collector stopped");
        Ok(())
    }
}

/// Runs a collector until `shutdown` completes.
pub async fn serve(
    config: CollectorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    bind(config).await?.serve(shutdown).await
}

/// A collector running on its own task, for tests and for embedding in the agent's main job.
/// Dropping it begins a graceful stop without waiting for it; call [`RunningCollector::stop`] to wait.
pub struct RunningCollector {
    pub local_addr: SocketAddr,
    pub store: Arc<Store>,
    pub metrics: Arc<CollectorMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningCollector {
    /// `http://addr` (or `https://` for a TLS config), the URL agents and the CLI connect to.
    pub fn url(&self, tls: bool) -> String {
        format!(
            "{}://{}",
            if tls { "https" } else { "http" },
            self.local_addr
        )
    }

    /// Graceful stop: returns once every stream has finished or the grace has elapsed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("collector task panicked")?
    }
}

/// Binds and starts a collector on a background task.
pub async fn spawn(config: CollectorConfig) -> anyhow::Result<RunningCollector> {
    let bound = bind(config).await?;
    let local_addr = bound.local_addr();
    let store = bound.store();
    let metrics = bound.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    Ok(RunningCollector {
        local_addr,
        store,
        metrics,
        stop: Some(stop),
        task,
    })
}
