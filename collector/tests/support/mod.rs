//! Test fixtures: a real collector on a loopback port over either store (a temporary SQLite
//! file, or a fresh database on a private PostgreSQL server), and a raw ingest session.
#![allow(dead_code)]

pub mod postgres;

use std::path::PathBuf;

use anyhow::Context;
use sonde_collector::store::db::{Conn, PgConn, Value};
use sonde_collector::{CollectorConfig, RunningCollector};
use sonde_proto::v1::ingest_client::IngestClient;
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{
    AgentMessage, Anomaly, Batch, CollectorMessage, EndpointKey, EndpointUpdate, Evidence, Hello,
    ServiceKey, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// The store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn name(backend: Backend) -> anyhow::Result<()>`, a module
/// `name` with the tests `sqlite` and `postgres` running it on each store.
#[macro_export]
macro_rules! for_each_store {
    (#[$test:meta] $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[$test]
                async fn sqlite() -> anyhow::Result<()> {
                    super::$name($crate::support::Backend::Sqlite).await
                }
                #[$test]
                async fn postgres() -> anyhow::Result<()> {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}

/// A database for one test: a file in `dir`, or a fresh PostgreSQL database (as a URL).
pub async fn database(backend: Backend, dir: &tempfile::TempDir) -> anyhow::Result<PathBuf> {
    Ok(match backend {
        Backend::Sqlite => dir.path().join("collector.db"),
        Backend::Postgres => PathBuf::from(
            tokio::task::spawn_blocking(postgres::fresh_database)
                .await
                .context("database task")??,
        ),
    })
}

/// Runs blocking store or database work off the async threads (the sync PostgreSQL client must
/// not run on them).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("blocking task panicked")?
}

/// A raw connection to a test database of either kind, for inspecting or seeding it.
pub fn raw_connection(database: &std::path::Path) -> anyhow::Result<Conn> {
    let text = database.to_string_lossy();
    Ok(if text.starts_with("postgres") {
        Conn::Postgres(Box::new(PgConn::connect(&text)?))
    } else {
        Conn::Sqlite(rusqlite::Connection::open(database)?)
    })
}

/// `SELECT COUNT(*) ...` (or any single integer) on a test database. Blocking.
pub fn count(database: &std::path::Path, sql: &str, args: &[Value]) -> anyhow::Result<i64> {
    let mut conn = raw_connection(database)?;
    Ok(conn.query_one(sql, args)?.int(0)?)
}

/// One statement on a test database. Blocking.
pub fn execute(database: &std::path::Path, sql: &str, args: &[Value]) -> anyhow::Result<u64> {
    let mut conn = raw_connection(database)?;
    Ok(conn.execute(sql, args)?)
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub database: PathBuf,
    pub collector: RunningCollector,
}

pub fn config(database: PathBuf) -> CollectorConfig {
    CollectorConfig {
        listen: "127.0.0.1:0"
            .parse()
            .unwrap_or_else(|_| CollectorConfig::default().listen),
        database,
        synchronous_full: false,
        shutdown_grace_secs: 5,
        ..CollectorConfig::default()
    }
}

impl Fixture {
    pub async fn start(backend: Backend) -> anyhow::Result<Fixture> {
        Fixture::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        edit: impl FnOnce(&mut CollectorConfig),
    ) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let database = database(backend, &dir).await?;
        let mut config = config(database.clone());
        edit(&mut config);
        let collector = sonde_collector::spawn(config).await?;
        Ok(Fixture {
            dir,
            database,
            collector,
        })
    }

    pub fn url(&self) -> String {
        self.collector.url(false)
    }

    /// The database: a SQLite file path or a PostgreSQL URL.
    pub fn db_path(&self) -> PathBuf {
        self.database.clone()
    }

    pub async fn query(&self) -> anyhow::Result<QueryClient<Channel>> {
        Ok(QueryClient::connect(self.url()).await?)
    }
}

pub fn hello(agent_id: &str, host: &str) -> Hello {
    Hello {
        agent_id: agent_id.into(),
        host: host.into(),
        agent_version: "0.1.0".into(),
        kernel: "6.12.0".into(),
        capture_strategy: "sock-tracepoints".into(),
        started_at_unix_ns: 1,
    }
}

/// One open ingest stream.
pub struct Session {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: Streaming<CollectorMessage>,
    /// The collector's answer to the Hello.
    pub committed: u64,
}

impl Session {
    pub async fn open(url: &str, hello: Hello) -> anyhow::Result<Session> {
        let mut client = IngestClient::connect(url.to_string()).await?;
        Session::open_on(&mut client, hello).await
    }

    pub async fn open_on(
        client: &mut IngestClient<Channel>,
        hello: Hello,
    ) -> anyhow::Result<Session> {
        let (tx, rx_out) = mpsc::channel(16);
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await?;
        let mut rx = client
            .report(ReceiverStream::new(rx_out))
            .await?
            .into_inner();
        let committed = match rx.message().await? {
            Some(CollectorMessage {
                body: Some(collector_message::Body::Ack(a)),
            }) => a.seq,
            other => anyhow::bail!("expected an Ack to the Hello, got {other:?}"),
        };
        Ok(Session { tx, rx, committed })
    }

    pub async fn send(&self, body: agent_message::Body) -> anyhow::Result<()> {
        self.tx
            .send(AgentMessage { body: Some(body) })
            .await
            .context("stream closed")
    }

    /// Sends a batch and returns the collector's reply.
    pub async fn batch(&mut self, batch: Batch) -> anyhow::Result<collector_message::Body> {
        self.send(agent_message::Body::Batch(batch)).await?;
        self.rx
            .message()
            .await?
            .and_then(|m| m.body)
            .context("stream ended without a reply")
    }

    pub async fn batch_acked(&mut self, batch: Batch) -> anyhow::Result<u64> {
        match self.batch(batch).await? {
            collector_message::Body::Ack(ack) => Ok(ack.seq),
            other => anyhow::bail!("expected an ack, got {other:?}"),
        }
    }
}

pub fn endpoint(authority: &str, method: &str, path: &str, calls: u64) -> EndpointUpdate {
    EndpointUpdate {
        key: Some(EndpointKey {
            service: Some(ServiceKey {
                server_addr: "10.0.0.5".into(),
                server_port: 8080,
                authority: authority.into(),
                process: "api-server".into(),
                ..ServiceKey::default()
            }),
            method: method.into(),
            path_template: path.into(),
            protocol: sonde_proto::v1::Protocol::Http1 as i32,
        }),
        classification: sonde_proto::v1::Classification::Shadow as i32,
        first_seen_unix_ns: 1_000,
        last_seen_unix_ns: 2_000 + calls,
        call_count: calls,
        status_counts: [(200, calls)].into_iter().collect(),
        auth_schemes: [("bearer".to_string(), calls)].into_iter().collect(),
        ..EndpointUpdate::default()
    }
}

pub fn anomaly(key: &str, endpoint: &str, count: u64, last_seen: u64) -> Anomaly {
    Anomaly {
        key: key.into(),
        kind: "auth.expired_jwt_accepted".into(),
        first_seen_unix_ns: 10,
        last_seen_unix_ns: last_seen,
        endpoint: Some(endpoint.into()),
        principal_hash: Some("p1".into()),
        client: Some("10.0.0.9 curl".into()),
        severity: sonde_proto::v1::Severity::High as i32,
        category: sonde_proto::v1::OwaspCategory::Api2BrokenAuth as i32,
        explanation: "an expired JWT was accepted".into(),
        evidence: Some(Evidence {
            request_line: "GET /users/7".into(),
            status: Some(200),
            request_bytes: 100,
            response_bytes: 200,
            field_kinds: vec!["jwt".into()],
            details: [("exp".to_string(), "1700000000".to_string())]
                .into_iter()
                .collect(),
        }),
        count,
    }
}
