//! The collector's store: an embedded SQLite database (the default) or a PostgreSQL database
//! shared by several collectors, with the same schema, migrations and queries (see [`db`]).
//!
//! One writer connection commits each ingested batch in a single transaction (so an ack always
//! covers durable data); a separate reader connection serves queries, which SQLite's WAL mode
//! and PostgreSQL's MVCC let run beside the writer. All calls are blocking: the gRPC layer runs
//! them on tokio's blocking pool.
//!
//! Several collectors on one PostgreSQL database stay consistent: a batch locks its agent's row
//! (`FOR UPDATE`) before checking its seq, takes an advisory lock per endpoint and anomaly key it
//! touches (in one sorted order, so batches cannot deadlock) before reading what others
//! committed, and counts rows against the caps in the database (`row_counts`). Anomalies a
//! collector commits are announced with NOTIFY, so watchers on every collector see them.

pub mod db;
mod merge;
pub mod migrations;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::fallible_iterator::FallibleIterator;
use prost::Message;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use sonde_proto::v1::{
    AgentStatus, Anomaly, Batch, EndpointKey, EndpointReport, EndpointSummary, EndpointUpdate,
    GetEndpointResponse, Heartbeat, Hello, ListAnomaliesRequest, ListEndpointsRequest,
    StoredAnomaly,
};

pub use db::Location;
use db::{Conn, Dialect, PgConn, Row, Value, args};
pub use merge::{is_unauthenticated, merge_reports};

/// Default and largest page sizes of list queries.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Anomalies returned with one endpoint.
const RECENT_ANOMALIES_PER_ENDPOINT: u32 = 20;
/// The PostgreSQL channel on which collectors announce the anomalies they committed.
const ANOMALY_CHANNEL: &str = "sonde_anomalies";
/// NOTIFY payloads must stay under 8000 bytes: ids are sent in chunks of this many.
const IDS_PER_NOTIFICATION: usize = 400;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database file {path} is not a SQLite database or is corrupted: {source}")]
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot open database file {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        source: postgres::Error,
    },
    #[error("the connection to PostgreSQL at {0} was lost in the middle of a transaction")]
    ConnectionLost(String),
    #[error(
        "database schema version {found} is newer than this collector supports ({supported}); upgrade the collector"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("schema migration {version} failed: {source}")]
    Migration {
        version: u32,
        source: Box<StoreError>,
    },
    #[error("stored record is unreadable: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("column {index} of a result row is not {expected}")]
    Column {
        index: usize,
        expected: &'static str,
    },
    #[error("invalid page token")]
    InvalidPageToken,
    #[error("agent {0:?} has not said hello")]
    UnknownAgent(String),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("another collector filled the row cap during this batch")]
    RowCapRace,
    #[error("cannot start the thread that follows other collectors' anomalies: {0}")]
    FeedThread(std::io::Error),
    #[error("store lock poisoned by an earlier panic")]
    Poisoned,
}

/// How the database is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `PRAGMA synchronous = FULL` in SQLite, `synchronous_commit = on` in PostgreSQL: every
    /// acknowledged batch survives power loss.
    pub synchronous_full: bool,
    /// Row caps that bound the database against a flood of unique endpoints or anomaly keys:
    /// past them, updates of existing rows still apply and new rows are refused and counted.
    pub max_endpoints: u64,
    pub max_anomalies: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous_full: true,
            max_endpoints: 1_000_000,
            max_anomalies: 5_000_000,
        }
    }
}

/// What committing a batch did.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// False when the batch was a repeat (seq not above the last committed one).
    pub applied: bool,
    /// Last committed seq for the agent after this call (what to ack).
    pub last_seq: u64,
    /// Anomalies as stored after the batch, for live watchers.
    pub anomalies: Vec<StoredAnomaly>,
    /// New endpoints or anomaly keys not stored because a row cap was reached.
    pub refused: u64,
}

pub struct Store {
    database: PathBuf,
    location: Location,
    options: StoreOptions,
    /// Names this store in its NOTIFY payloads, so its own feed skips what it delivered itself.
    replica: String,
    writer: Mutex<Conn>,
    reader: Mutex<Conn>,
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_ns_i64() -> i64 {
    to_i64(now_ns())
}

/// Stored integers are signed: u64 values above i64::MAX saturate (nanosecond times do not reach
/// it before 2262, counts never in practice).
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Stable endpoint id: a hash of what makes two reports the same endpoint.
pub fn endpoint_id(service: &str, key: &EndpointKey) -> String {
    let mut hasher = Sha256::new();
    for part in [service, key.method.as_str(), key.path_template.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(key.protocol.to_be_bytes());
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Advisory lock key of an endpoint or anomaly key (a hash; a collision only serialises two
/// unrelated items).
fn lock_key(kind: &str, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

fn lock(mutex: &Mutex<Conn>) -> Result<std::sync::MutexGuard<'_, Conn>, StoreError> {
    mutex.lock().map_err(|_| StoreError::Poisoned)
}

fn joined(values: impl IntoIterator<Item = String>) -> String {
    values
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(",")
}

fn split(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn endpoint_service(key: &EndpointKey) -> String {
    key.service
        .as_ref()
        .map(|s| s.display_name())
        .unwrap_or_else(|| "unknown".into())
}

/// Keeps a feed of other collectors' anomalies running; dropping it stops the feed.
pub struct AnomalyFeed {
    stop: Arc<AtomicBool>,
}

impl Drop for AnomalyFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
impl Store {
    /// Opens (creating if needed) the database and brings its schema to the latest version.
    /// `database` is a SQLite file, or a `postgres://` / `postgresql://` URL.
    pub fn open(database: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        Store::open_at_version(database, options, migrations::latest_version())
    }

    /// Opens the database migrating only up to `version`; tests use it to build old schemas.
    #[doc(hidden)]
    pub fn open_at_version(
        database: &Path,
        options: &StoreOptions,
        version: u32,
    ) -> Result<Store, StoreError> {
        let location = Location::parse(database);
        let (writer, reader) = match &location {
            Location::Sqlite(path) => {
                let mut writer = Conn::Sqlite(open_sqlite(path, options, true)?);
                migrations::migrate(&mut writer, version).map_err(|e| classify(path, e))?;
                (writer, Conn::Sqlite(open_sqlite(path, options, false)?))
            }
            Location::Postgres(url) => {
                let url = postgres_url(url, options);
                let mut writer = Conn::Postgres(Box::new(PgConn::connect(&url)?));
                migrations::migrate(&mut writer, version)?;
                (writer, Conn::Postgres(Box::new(PgConn::connect(&url)?)))
            }
        };
        Ok(Store {
            database: database.to_path_buf(),
            location,
            options: options.clone(),
            replica: format!("{}-{}", std::process::id(), now_ns()),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// The configured database: a file path, or a PostgreSQL URL (see [`Store::location`]).
    pub fn path(&self) -> &Path {
        &self.database
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        lock(&self.reader)?.read(migrations::current_version)
    }

    /// Records an agent's hello and returns the last seq committed for it.
    pub fn register_agent(&self, hello: &Hello) -> Result<u64, StoreError> {
        let mut conn = lock(&self.writer)?;
        let now = now_ns_i64();
        let row = conn.read(|conn| {
            conn.query_one(
                "INSERT INTO agents (agent_id, host, agent_version, kernel, capture_strategy, started_at, first_seen, last_connected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host,
                    agent_version = excluded.agent_version, kernel = excluded.kernel,
                    capture_strategy = excluded.capture_strategy, started_at = excluded.started_at,
                    last_connected = excluded.last_connected
                 RETURNING last_seq",
                args![
                    &hello.agent_id,
                    &hello.host,
                    &hello.agent_version,
                    &hello.kernel,
                    &hello.capture_strategy,
                    to_i64(hello.started_at_unix_ns),
                    now
                ],
            )
        })?;
        Ok(to_u64(row.int(0)?))
    }

    pub fn record_heartbeat(
        &self,
        agent_id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer)?;
        let changed = conn.read(|conn| {
            conn.execute(
                "UPDATE agents SET last_heartbeat = ?2, heartbeat = ?3 WHERE agent_id = ?1",
                args![agent_id, now_ns_i64(), heartbeat.encode_to_vec()],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::UnknownAgent(agent_id.to_string()));
        }
        Ok(())
    }

    /// Commits one batch atomically, or skips it when its seq is not above the last committed.
    pub fn ingest_batch(&self, agent_id: &str, batch: &Batch) -> Result<IngestOutcome, StoreError> {
        let mut conn = lock(&self.writer)?;
        let outcome = conn.transaction(|tx| self.ingest_in(tx, agent_id, batch))?;
        if outcome.refused > 0 {
            tracing::warn!(
                agent_id,
                seq = batch.seq,
                refused = outcome.refused,
                "row caps reached: new endpoints or anomaly keys refused"
            );
        }
        Ok(outcome)
    }

    fn ingest_in(
        &self,
        tx: &mut Conn,
        agent_id: &str,
        batch: &Batch,
    ) -> Result<IngestOutcome, StoreError> {
        let dialect = tx.dialect();
        // The agent's row lock serialises this agent's batches across collectors, so the seq
        // check and the writes below are one step.
        let agent = tx.query_opt(
            &format!(
                "SELECT last_seq, host FROM agents WHERE agent_id = ?1{}",
                dialect.for_update()
            ),
            args![agent_id],
        )?;
        let Some(agent) = agent else {
            return Err(StoreError::UnknownAgent(agent_id.to_string()));
        };
        let last_seq = to_u64(agent.int(0)?);
        let host = agent.text(1)?.to_string();
        if batch.seq <= last_seq {
            return Ok(IngestOutcome {
                applied: false,
                last_seq,
                anomalies: Vec::new(),
                refused: 0,
            });
        }
        let endpoint_ids: Vec<(String, String)> = batch
            .endpoint_updates
            .iter()
            .map(|update| {
                let key = update.key.clone().unwrap_or_default();
                let service = endpoint_service(&key);
                let id = endpoint_id(&service, &key);
                (service, id)
            })
            .collect();
        if dialect == Dialect::Postgres {
            lock_items(tx, &endpoint_ids, &batch.anomalies)?;
        }
        let (endpoint_rows_before, anomaly_rows_before) = row_counts(tx)?;
        let mut endpoint_rows = endpoint_rows_before;
        let mut anomaly_rows = anomaly_rows_before;
        let mut refused = 0u64;
        let agent_run = to_i64(batch.agent_run);
        for (update, (service, id)) in batch.endpoint_updates.iter().zip(&endpoint_ids) {
            match apply_endpoint_update(
                tx,
                agent_id,
                agent_run,
                service,
                id,
                update,
                endpoint_rows < self.options.max_endpoints,
            )? {
                Applied::New => endpoint_rows += 1,
                Applied::Existing => {}
                Applied::Refused => refused += 1,
            }
        }
        let mut anomalies = Vec::with_capacity(batch.anomalies.len());
        let mut known = prefetch_anomalies(tx, agent_id, &batch.anomalies)?;
        for anomaly in &batch.anomalies {
            match apply_anomaly(
                tx,
                &mut known,
                agent_id,
                agent_run,
                &host,
                anomaly,
                anomaly_rows < self.options.max_anomalies,
            )? {
                (Applied::New, Some(stored)) => {
                    anomaly_rows += 1;
                    anomalies.push(stored);
                }
                (Applied::Refused, _) => refused += 1,
                (_, Some(stored)) => anomalies.push(stored),
                (_, None) => {}
            }
        }
        tx.execute(
            "UPDATE agents SET last_seq = ?2, batches_committed = batches_committed + 1,
                endpoint_updates_committed = endpoint_updates_committed + ?3,
                anomalies_committed = anomalies_committed + ?4,
                items_refused = items_refused + ?5
             WHERE agent_id = ?1",
            args![
                agent_id,
                to_i64(batch.seq),
                to_i64(batch.endpoint_updates.len() as u64),
                to_i64(batch.anomalies.len() as u64),
                to_i64(refused)
            ],
        )?;
        add_rows(
            tx,
            "endpoints",
            endpoint_rows - endpoint_rows_before,
            self.options.max_endpoints,
        )?;
        add_rows(
            tx,
            "anomalies",
            anomaly_rows - anomaly_rows_before,
            self.options.max_anomalies,
        )?;
        if dialect == Dialect::Postgres {
            self.announce(tx, &anomalies)?;
        }
        Ok(IngestOutcome {
            applied: true,
            last_seq: batch.seq,
            anomalies,
            refused,
        })
    }

    /// NOTIFY, delivered to every listening collector when (and only if) the batch commits.
    fn announce(&self, tx: &mut Conn, anomalies: &[StoredAnomaly]) -> Result<(), StoreError> {
        for chunk in anomalies.chunks(IDS_PER_NOTIFICATION) {
            let ids: Vec<String> = chunk.iter().map(|a| a.id.to_string()).collect();
            let payload = format!("{} {}", self.replica, ids.join(","));
            tx.query("SELECT pg_notify(?1, ?2)", args![ANOMALY_CHANNEL, payload])?;
        }
        Ok(())
    }

    /// With PostgreSQL, hands `deliver` every anomaly other collectors commit to the database
    /// (LISTEN/NOTIFY on a connection of its own, reopened when lost; anomalies committed while
    /// it is down are not replayed, which is logged). With SQLite, where this collector is the
    /// only writer, there is nothing to follow and None is returned.
    pub fn follow_other_collectors(
        &self,
        deliver: impl Fn(StoredAnomaly) + Send + 'static,
    ) -> Result<Option<AnomalyFeed>, StoreError> {
        let Location::Postgres(url) = &self.location else {
            return Ok(None);
        };
        let url = postgres_url(url, &self.options);
        let stop = Arc::new(AtomicBool::new(false));
        let feed = AnomalyFeed { stop: stop.clone() };
        let replica = self.replica.clone();
        std::thread::Builder::new()
            .name("sonde-anomaly-feed".into())
            .spawn(move || follow_notifications(&url, &replica, &stop, &deliver))
            .map_err(StoreError::FeedThread)?;
        Ok(Some(feed))
    }

    pub fn list_endpoints(
        &self,
        filter: &ListEndpointsRequest,
    ) -> Result<(Vec<EndpointSummary>, String), StoreError> {
        let page_size = page_size(filter.page_size);
        let after = filter.page_token.as_str();
        if !after.is_empty() && !after.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidPageToken);
        }
        let mut sql = String::from(
            "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                    last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                    sensitive_kinds, hosts
             FROM endpoints e WHERE endpoint_id > ?1",
        );
        let mut args: Vec<Value> = vec![after.into()];
        if !filter.service.is_empty() {
            args.push((&filter.service).into());
            sql.push_str(&format!(" AND service = ?{}", args.len()));
        }
        if let Some(classification) = filter.classification {
            args.push(classification.into());
            sql.push_str(&format!(" AND classification = ?{}", args.len()));
        }
        if filter.unauthenticated {
            sql.push_str(" AND unauthenticated = 1");
        }
        if !filter.sensitive_kind.is_empty() {
            args.push((&filter.sensitive_kind).into());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM endpoint_sensitive_kinds s WHERE s.endpoint_id = e.endpoint_id AND s.kind = ?{})",
                args.len()
            ));
        }
        if !filter.host.is_empty() {
            args.push((&filter.host).into());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM endpoint_reports r JOIN agents a ON a.agent_id = r.agent_id
                   WHERE r.endpoint_id = e.endpoint_id AND a.host = ?{})",
                args.len()
            ));
        }
        args.push((page_size + 1).into());
        sql.push_str(&format!(" ORDER BY endpoint_id LIMIT ?{}", args.len()));
        let rows = lock(&self.reader)?.read(|conn| conn.query(&sql, &args))?;
        let mut rows: Vec<EndpointSummary> = rows
            .iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()?;
        let next = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((rows, next))
    }

    pub fn get_endpoint(&self, id: &str) -> Result<Option<GetEndpointResponse>, StoreError> {
        lock(&self.reader)?.read(|conn| get_endpoint(conn, id))
    }

    /// Every endpoint of one service with its merged record, for OpenAPI export.
    pub fn service_endpoints(
        &self,
        service: &str,
    ) -> Result<Vec<(EndpointSummary, EndpointUpdate)>, StoreError> {
        let rows = lock(&self.reader)?.read(|conn| {
            conn.query(
                "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                        last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                        sensitive_kinds, hosts, merged
                 FROM endpoints WHERE service = ?1 ORDER BY path_template, method",
                args![service],
            )
        })?;
        rows.iter()
            .map(|row| {
                Ok((
                    summary_from_row(row)?,
                    EndpointUpdate::decode(row.blob(14)?)?,
                ))
            })
            .collect()
    }

    pub fn list_anomalies(
        &self,
        filter: &ListAnomaliesRequest,
    ) -> Result<(Vec<StoredAnomaly>, String), StoreError> {
        lock(&self.reader)?.read(|conn| query_anomalies(conn, filter))
    }

    /// Every known agent; `connected` is left false (the server knows who is connected).
    pub fn list_agents(&self) -> Result<Vec<AgentStatus>, StoreError> {
        let rows = lock(&self.reader)?.read(|conn| {
            conn.query(
                "SELECT agent_id, host, agent_version, kernel, capture_strategy, started_at, last_heartbeat,
                        heartbeat, last_seq, batches_committed, endpoint_updates_committed,
                        anomalies_committed, last_connected, items_refused
                 FROM agents ORDER BY host, agent_id",
                &[],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let heartbeat = match row.opt_blob(7)? {
                Some(blob) => Heartbeat::decode(blob)?,
                None => Heartbeat::default(),
            };
            out.push(AgentStatus {
                agent_id: row.text(0)?.to_string(),
                host: row.text(1)?.to_string(),
                agent_version: row.text(2)?.to_string(),
                kernel: row.text(3)?.to_string(),
                capture_strategy: row.text(4)?.to_string(),
                started_at_unix_ns: to_u64(row.int(5)?),
                last_heartbeat_unix_ns: to_u64(row.int(6)?),
                counters: heartbeat.counters,
                blind_spots: heartbeat.blind_spots,
                connected: false,
                last_seq: to_u64(row.int(8)?),
                batches_committed: to_u64(row.int(9)?),
                endpoint_updates_committed: to_u64(row.int(10)?),
                anomalies_committed: to_u64(row.int(11)?),
                last_connected_unix_ns: to_u64(row.int(12)?),
                items_refused: to_u64(row.int(13)?),
            });
        }
        Ok(out)
    }

    /// Row counts (endpoints, anomalies), for logs and benchmarks.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        lock(&self.reader)?.read(|conn| {
            let endpoints = conn
                .query_one("SELECT COUNT(*) FROM endpoints", &[])?
                .int(0)?;
            let anomalies = conn
                .query_one("SELECT COUNT(*) FROM anomalies", &[])?
                .int(0)?;
            Ok((to_u64(endpoints), to_u64(anomalies)))
        })
    }

    /// Bytes the database takes on disk: the SQLite file with its WAL, or PostgreSQL's
    /// `pg_database_size` (tables, indexes and TOAST of this database).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        match &self.location {
            Location::Sqlite(path) => {
                let mut total = 0;
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    total += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                }
                Ok(total)
            }
            Location::Postgres(_) => lock(&self.reader)?.read(|conn| {
                let size = conn
                    .query_one("SELECT pg_database_size(current_database())", &[])?
                    .int(0)?;
                Ok(to_u64(size))
            }),
        }
    }
}

/// The URL with session settings the options ask for (applied again on every reconnect).
fn postgres_url(url: &str, options: &StoreOptions) -> String {
    if options.synchronous_full {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20synchronous_commit%3Doff")
}

/// Takes the advisory locks of every endpoint and anomaly key of a batch, in ascending order, so
/// two collectors' batches that share keys wait for each other instead of deadlocking. After
/// the lock, each statement sees what the other collector committed for those keys.
fn lock_items(
    tx: &mut Conn,
    endpoints: &[(String, String)],
    anomalies: &[Anomaly],
) -> Result<(), StoreError> {
    let mut keys: Vec<i64> = endpoints
        .iter()
        .map(|(_, id)| lock_key("endpoint", id))
        .chain(anomalies.iter().map(|a| lock_key("anomaly", &a.key)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(2_000) {
        let values: Vec<String> = chunk.iter().map(|k| format!("({k})")).collect();
        // The ORDER BY makes PostgreSQL evaluate the (volatile) lock calls in sorted order.
        tx.batch(&format!(
            "SELECT pg_advisory_xact_lock(k) FROM (VALUES {}) AS t(k) ORDER BY k",
            values.join(",")
        ))?;
    }
    Ok(())
}

fn row_counts(tx: &mut Conn) -> Result<(u64, u64), StoreError> {
    let mut endpoints = 0;
    let mut anomalies = 0;
    for row in tx.query("SELECT name, row_count FROM row_counts", &[])? {
        match row.text(0)? {
            "endpoints" => endpoints = to_u64(row.int(1)?),
            "anomalies" => anomalies = to_u64(row.int(1)?),
            _ => {}
        }
    }
    Ok((endpoints, anomalies))
}

/// Adds the rows a batch created to the shared count. The row lock this takes makes concurrent
/// batches add one after the other; one that finds the cap overrun by someone else's rows is
/// rolled back and run again, so the caps hold across collectors.
fn add_rows(tx: &mut Conn, table: &str, added: u64, cap: u64) -> Result<(), StoreError> {
    if added == 0 {
        return Ok(());
    }
    let total = tx
        .query_one(
            "UPDATE row_counts SET row_count = row_count + ?2 WHERE name = ?1 RETURNING row_count",
            args![table, to_i64(added)],
        )?
        .int(0)?;
    if to_u64(total) > cap {
        return Err(StoreError::RowCapRace);
    }
    Ok(())
}

/// The body of [`Store::follow_other_collectors`]'s thread.
fn follow_notifications(
    url: &str,
    replica: &str,
    stop: &AtomicBool,
    deliver: &dyn Fn(StoredAnomaly),
) {
    let label = db::redact_url(url);
    let mut connected_before = false;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match url
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(database = %label, %error, "anomaly feed cannot connect; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(error) = client.batch_execute(&format!("LISTEN {ANOMALY_CHANNEL}")) {
            tracing::warn!(database = %label, %error, "anomaly feed cannot LISTEN; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if connected_before {
            tracing::warn!(
                database = %label,
                "anomaly feed reconnected: anomalies other collectors committed meanwhile were not streamed to watchers"
            );
        } else {
            tracing::info!(database = %label, "following anomalies committed by other collectors");
        }
        connected_before = true;
        if let Err(error) = relay_notifications(&mut client, replica, stop, deliver) {
            tracing::warn!(database = %label, %error, "anomaly feed connection failed; reconnecting");
        }
    }
}

fn relay_notifications(
    client: &mut postgres::Client,
    replica: &str,
    stop: &AtomicBool,
    deliver: &dyn Fn(StoredAnomaly),
) -> Result<(), StoreError> {
    while !stop.load(Ordering::Relaxed) {
        let notes: Vec<postgres::Notification> = client
            .notifications()
            .timeout_iter(Duration::from_millis(250))
            .collect()?;
        if client.is_closed() {
            return Err(StoreError::ConnectionLost(String::from("anomaly feed")));
        }
        let mut ids = BTreeSet::new();
        for note in &notes {
            let Some((origin, list)) = note.payload().split_once(' ') else {
                continue;
            };
            if origin == replica {
                continue;
            }
            ids.extend(list.split(',').filter_map(|id| id.parse::<i64>().ok()));
        }
        if ids.is_empty() {
            continue;
        }
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let rows = client.query(
            &format!(
                "SELECT anomaly_id, last_seen, hosts, latest FROM anomalies WHERE anomaly_id IN ({}) ORDER BY anomaly_id",
                list.join(",")
            ),
            &[],
        )?;
        for row in db::pg_rows(&rows)? {
            deliver(stored_anomaly_from_row(&row)?);
        }
    }
    Ok(())
}

fn get_endpoint(conn: &mut Conn, id: &str) -> Result<Option<GetEndpointResponse>, StoreError> {
    let row = conn.query_opt(
        "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                sensitive_kinds, hosts, merged
         FROM endpoints WHERE endpoint_id = ?1",
        args![id],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let summary = summary_from_row(&row)?;
    let merged = EndpointUpdate::decode(row.blob(14)?)?;
    let rows = conn.query(
        "SELECT r.agent_id, a.host, r.report FROM endpoint_reports r
         LEFT JOIN agents a ON a.agent_id = r.agent_id
         WHERE r.endpoint_id = ?1 ORDER BY r.agent_id, r.agent_run",
        args![id],
    )?;
    // One report per agent: its folded earlier runs and its current run, merged.
    let mut by_agent: BTreeMap<String, (String, Vec<EndpointUpdate>)> = BTreeMap::new();
    for row in &rows {
        let (_, updates) = by_agent.entry(row.text(0)?.to_string()).or_insert_with(|| {
            (
                row.opt_text(1)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .to_string(),
                Vec::new(),
            )
        });
        updates.push(EndpointUpdate::decode(row.blob(2)?)?);
    }
    let mut reports = Vec::with_capacity(by_agent.len());
    for (agent_id, (host, mut updates)) in by_agent {
        let update = if updates.len() == 1 {
            updates.pop()
        } else {
            Some(merge_reports(&updates))
        };
        reports.push(EndpointReport {
            agent_id,
            host,
            update,
        });
    }
    let display = merged
        .key
        .as_ref()
        .map(EndpointKey::display_name)
        .unwrap_or_default();
    let recent_anomalies = query_anomalies(
        conn,
        &ListAnomaliesRequest {
            endpoint: display,
            page_size: RECENT_ANOMALIES_PER_ENDPOINT,
            ..ListAnomaliesRequest::default()
        },
    )?
    .0;
    Ok(Some(GetEndpointResponse {
        summary: Some(summary),
        merged: Some(merged),
        reports,
        recent_anomalies,
    }))
}

fn open_sqlite(
    path: &Path,
    options: &StoreOptions,
    create: bool,
) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let synchronous = if options.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|()| {
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        })
        .and_then(|_| conn.pragma_update(None, "synchronous", synchronous))
        .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
        .and_then(|()| conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)))
        .map_err(|source| classify(path, StoreError::Sql(source)))?;
    Ok(conn)
}

/// Turns SQLite's "not a database" and "corrupt" codes into an error that names the file.
fn classify(path: &Path, error: StoreError) -> StoreError {
    let source = match error {
        StoreError::Sql(source) => source,
        StoreError::Migration { source, .. } => match *source {
            StoreError::Sql(source) => source,
            other => return other,
        },
        other => return other,
    };
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                source,
            }
        }
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

fn int32(row: &Row, index: usize) -> Result<i32, StoreError> {
    i32::try_from(row.int(index)?).map_err(|_| StoreError::Column {
        index,
        expected: "a 32-bit integer",
    })
}

fn summary_from_row(row: &Row) -> Result<EndpointSummary, StoreError> {
    Ok(EndpointSummary {
        id: row.text(0)?.to_string(),
        service: row.text(1)?.to_string(),
        method: row.text(2)?.to_string(),
        path_template: row.text(3)?.to_string(),
        protocol: int32(row, 4)?,
        classification: int32(row, 5)?,
        first_seen_unix_ns: to_u64(row.int(6)?),
        last_seen_unix_ns: to_u64(row.int(7)?),
        call_count: to_u64(row.int(8)?),
        unauthenticated: row.int(9)? != 0,
        served_over_tls: row.int(10)? != 0,
        auth_schemes: split(row.text(11)?),
        sensitive_kinds: split(row.text(12)?),
        hosts: split(row.text(13)?),
    })
}

/// A row of `anomaly_id, last_seen, hosts, latest`.
fn stored_anomaly_from_row(row: &Row) -> Result<StoredAnomaly, StoreError> {
    Ok(StoredAnomaly {
        anomaly: Some(Anomaly::decode(row.blob(3)?)?),
        hosts: split(row.text(2)?),
        id: to_u64(row.int(0)?),
    })
}

/// What applying one item did.
enum Applied {
    New,
    Existing,
    Refused,
}

fn apply_endpoint_update(
    tx: &mut Conn,
    agent_id: &str,
    agent_run: i64,
    service: &str,
    id: &str,
    update: &EndpointUpdate,
    room_for_new: bool,
) -> Result<Applied, StoreError> {
    let key = update.key.clone().unwrap_or_default();
    let exists = tx
        .query_opt("SELECT 1 FROM endpoints WHERE endpoint_id = ?1", args![id])?
        .is_some();
    if !exists && !room_for_new {
        return Ok(Applied::Refused);
    }
    if !store_endpoint_report(tx, id, agent_id, agent_run, update)? {
        return Ok(Applied::Existing);
    }

    let mut reports = Vec::new();
    let mut hosts = BTreeSet::new();
    let rows = tx.query(
        "SELECT r.report, a.host FROM endpoint_reports r LEFT JOIN agents a ON a.agent_id = r.agent_id
         WHERE r.endpoint_id = ?1 ORDER BY r.agent_id, r.agent_run",
        args![id],
    )?;
    for row in &rows {
        reports.push(EndpointUpdate::decode(row.blob(0)?)?);
        if let Some(host) = row.opt_text(1)? {
            hosts.insert(host.to_string());
        }
    }
    let merged = merge_reports(&reports);
    let sensitive_kinds: BTreeSet<String> =
        merged.sensitive.iter().map(|s| s.kind.clone()).collect();
    tx.execute(
        "INSERT INTO endpoints (endpoint_id, service, method, path_template, protocol, classification,
            first_seen, last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
            sensitive_kinds, hosts, merged)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (endpoint_id) DO UPDATE SET classification = excluded.classification,
            first_seen = excluded.first_seen, last_seen = excluded.last_seen,
            call_count = excluded.call_count, unauthenticated = excluded.unauthenticated,
            served_over_tls = excluded.served_over_tls, auth_schemes = excluded.auth_schemes,
            sensitive_kinds = excluded.sensitive_kinds, hosts = excluded.hosts, merged = excluded.merged",
        args![
        id,
        service,
        &key.method,
        &key.path_template,
        key.protocol,
        merged.classification,
        to_i64(merged.first_seen_unix_ns),
        to_i64(merged.last_seen_unix_ns),
        to_i64(merged.call_count),
        i64::from(is_unauthenticated(&merged)),
        i64::from(merged.served_over_tls),
        joined(merged.auth_schemes.iter().filter(|(_, c)| **c > 0).map(|(k, _)| k.clone())),
        joined(sensitive_kinds.iter().cloned()),
        joined(hosts),
        merged.encode_to_vec()
    ])?;
    tx.execute(
        "DELETE FROM endpoint_sensitive_kinds WHERE endpoint_id = ?1",
        args![id],
    )?;
    for kind in sensitive_kinds {
        tx.execute(
            "INSERT INTO endpoint_sensitive_kinds (endpoint_id, kind) VALUES (?1, ?2)",
            args![id, kind],
        )?;
    }
    Ok(if exists {
        Applied::Existing
    } else {
        Applied::New
    })
}

/// Reports of an agent's earlier runs are summed into this run's row (the agent's history);
/// older agents that do not say which run they are report into it directly.
const FOLDED_RUN: i64 = 0;

/// Stores one agent run's running totals for an endpoint. A report from a newer run folds the
/// agent's earlier runs into [`FOLDED_RUN`], so rows stay bounded at two per (endpoint, agent)
/// and the merged totals keep counting across restarts. Returns false for a report of a run
/// already folded away (nothing to change).
fn store_endpoint_report(
    tx: &mut Conn,
    endpoint_id: &str,
    agent_id: &str,
    agent_run: i64,
    update: &EndpointUpdate,
) -> Result<bool, StoreError> {
    let mut earlier = Vec::new();
    let mut newer_run = false;
    let mut this_run = false;
    let rows = tx.query(
        "SELECT agent_run, report FROM endpoint_reports WHERE endpoint_id = ?1 AND agent_id = ?2
         ORDER BY agent_run",
        args![endpoint_id, agent_id],
    )?;
    for row in &rows {
        let run = row.int(0)?;
        if run == agent_run {
            this_run = true;
        } else if run > agent_run && run != FOLDED_RUN {
            newer_run = true;
        } else {
            earlier.push((run, EndpointUpdate::decode(row.blob(1)?)?));
        }
    }
    if newer_run && !this_run {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO endpoint_reports (endpoint_id, agent_id, agent_run, last_seen, report)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (endpoint_id, agent_id, agent_run) DO UPDATE SET last_seen = excluded.last_seen,
            report = excluded.report",
        args![
        endpoint_id,
        agent_id,
        agent_run,
        to_i64(update.last_seen_unix_ns),
        update.encode_to_vec()
    ])?;
    if agent_run != FOLDED_RUN && earlier.iter().any(|(run, _)| *run != FOLDED_RUN) {
        let reports: Vec<EndpointUpdate> = earlier.into_iter().map(|(_, r)| r).collect();
        let folded = merge_reports(&reports);
        tx.execute(
            "DELETE FROM endpoint_reports WHERE endpoint_id = ?1 AND agent_id = ?2 AND agent_run < ?3",
            args![endpoint_id, agent_id, agent_run],
        )?;
        tx.execute(
            "INSERT INTO endpoint_reports (endpoint_id, agent_id, agent_run, last_seen, report)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            args![
                endpoint_id,
                agent_id,
                FOLDED_RUN,
                to_i64(folded.last_seen_unix_ns),
                folded.encode_to_vec()
            ],
        )?;
    }
    Ok(true)
}

/// The grouped row of one anomaly key as stored.
struct GroupedAnomaly {
    first: i64,
    last: i64,
    total: i64,
    hosts: BTreeSet<String>,
    latest: Anomaly,
}

/// One agent run's running totals for an anomaly key: (run, first seen, last seen, count).
type RunTotals = (i64, i64, i64, i64);

/// What a batch's anomalies find in the database, read for all their keys at once (two queries
/// per batch instead of two per anomaly, which matters on a networked database) and kept
/// current as the batch writes, so a key repeated within the batch sees its earlier writes.
#[derive(Default)]
struct AnomalyRows {
    grouped: HashMap<String, GroupedAnomaly>,
    /// This agent's rows per key.
    runs: HashMap<String, Vec<RunTotals>>,
}

/// Keys per prefetch query; IN lists are padded to a power of two so few statement shapes
/// reach the prepared-statement caches.
const PREFETCH_KEYS: usize = 256;

fn prefetch_anomalies(
    tx: &mut Conn,
    agent_id: &str,
    anomalies: &[Anomaly],
) -> Result<AnomalyRows, StoreError> {
    let keys: Vec<&str> = anomalies
        .iter()
        .map(|a| a.key.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rows = AnomalyRows::default();
    for chunk in keys.chunks(PREFETCH_KEYS) {
        let padded = chunk.len().next_power_of_two();
        let mut args: Vec<Value> = Vec::with_capacity(padded + 1);
        args.push(agent_id.into());
        for i in 0..padded {
            args.push(chunk[i.min(chunk.len() - 1)].into());
        }
        let numbered = |from: usize| {
            (from..from + padded)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let grouped = tx.query(
            &format!(
                "SELECT anomaly_key, first_seen, last_seen, total_count, hosts, latest FROM anomalies
                 WHERE anomaly_key IN ({})",
                numbered(1)
            ),
            &args[1..],
        )?;
        for row in &grouped {
            rows.grouped.insert(
                row.text(0)?.to_string(),
                GroupedAnomaly {
                    first: row.int(1)?,
                    last: row.int(2)?,
                    total: row.int(3)?,
                    hosts: split(row.text(4)?).into_iter().collect(),
                    latest: Anomaly::decode(row.blob(5)?)?,
                },
            );
        }
        let runs = tx.query(
            &format!(
                "SELECT anomaly_key, agent_run, first_seen, last_seen, report_count FROM anomaly_reports
                 WHERE agent_id = ?1 AND anomaly_key IN ({})",
                numbered(2)
            ),
            &args,
        )?;
        for row in &runs {
            rows.runs
                .entry(row.text(0)?.to_string())
                .or_default()
                .push((row.int(1)?, row.int(2)?, row.int(3)?, row.int(4)?));
        }
    }
    Ok(rows)
}

fn apply_anomaly(
    tx: &mut Conn,
    known: &mut AnomalyRows,
    agent_id: &str,
    agent_run: i64,
    host: &str,
    anomaly: &Anomaly,
    room_for_new: bool,
) -> Result<(Applied, Option<StoredAnomaly>), StoreError> {
    let stored = known.grouped.get(&anomaly.key);
    let exists = stored.is_some();
    if !exists && !room_for_new {
        return Ok((Applied::Refused, None));
    }
    // The agent's count is its running total within one run: keep the largest seen, so a
    // repeat never shrinks or double-counts it; earlier runs are folded into FOLDED_RUN.
    let mut previous: Option<(i64, i64, i64)> = None;
    let mut newer_run = false;
    let mut earlier = 0usize;
    let runs = known.runs.entry(anomaly.key.clone()).or_default();
    for &(run, first, last, count) in runs.iter() {
        if run == agent_run {
            previous = Some((first, last, count));
        } else if run > agent_run && run != FOLDED_RUN {
            newer_run = true;
        } else if run != FOLDED_RUN {
            earlier += 1;
        }
    }
    if newer_run && previous.is_none() {
        // A run already folded away: its counts are in the agent's history.
        return Ok((Applied::Existing, None));
    }
    if agent_run != FOLDED_RUN && earlier > 0 {
        fold_anomaly_runs(tx, &anomaly.key, agent_id, agent_run)?;
        let (older, kept): (Vec<RunTotals>, Vec<RunTotals>) =
            runs.iter().partition(|(run, ..)| *run < agent_run);
        *runs = kept;
        if let (Some(first), Some(last)) = (
            older.iter().map(|r| r.1).min(),
            older.iter().map(|r| r.2).max(),
        ) {
            let count = older.iter().map(|r| r.3).fold(0i64, i64::saturating_add);
            runs.push((FOLDED_RUN, first, last, count));
        }
    }
    let incoming = (
        to_i64(anomaly.first_seen_unix_ns),
        to_i64(anomaly.last_seen_unix_ns),
        to_i64(anomaly.count),
    );
    let (first, last, count) = match previous {
        None => incoming,
        Some((f, l, c)) => (f.min(incoming.0), l.max(incoming.1), c.max(incoming.2)),
    };
    tx.execute(
        "INSERT INTO anomaly_reports (anomaly_key, agent_id, agent_run, first_seen, last_seen, report_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (anomaly_key, agent_id, agent_run) DO UPDATE SET first_seen = excluded.first_seen,
            last_seen = excluded.last_seen, report_count = excluded.report_count",
        args![&anomaly.key, agent_id, agent_run, first, last, count],
    )?;
    match runs.iter_mut().find(|r| r.0 == agent_run) {
        Some(row) => *row = (agent_run, first, last, count),
        None => runs.push((agent_run, first, last, count)),
    }

    // The grouped row is updated incrementally: the total changes by this agent's delta,
    // first/last seen only widen, and the host list grows when the agent is new for this key.
    let previous_count = previous.map(|p| p.2).unwrap_or(0);
    let (mut latest, total, first_all, last_all, hosts) = match known.grouped.get(&anomaly.key) {
        Some(stored) => {
            // Evidence, severity and explanation come from the most recently seen report.
            let latest = if stored.latest.last_seen_unix_ns > anomaly.last_seen_unix_ns {
                stored.latest.clone()
            } else {
                anomaly.clone()
            };
            let mut hosts = stored.hosts.clone();
            hosts.insert(host.to_string());
            let total = stored
                .total
                .saturating_sub(previous_count)
                .saturating_add(count);
            (
                latest,
                total,
                stored.first.min(first),
                stored.last.max(last),
                hosts,
            )
        }
        None => (
            anomaly.clone(),
            count,
            first,
            last,
            BTreeSet::from([host.to_string()]),
        ),
    };
    latest.count = to_u64(total);
    latest.first_seen_unix_ns = to_u64(first_all);
    latest.last_seen_unix_ns = to_u64(last_all);
    let id = tx
        .query_one(
            "INSERT INTO anomalies (anomaly_key, kind, severity, category, endpoint, first_seen, last_seen,
                total_count, hosts, latest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (anomaly_key) DO UPDATE SET kind = excluded.kind, severity = excluded.severity,
                category = excluded.category, endpoint = excluded.endpoint,
                first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                total_count = excluded.total_count, hosts = excluded.hosts, latest = excluded.latest
             RETURNING anomaly_id",
            args![
                &latest.key,
                &latest.kind,
                latest.severity,
                latest.category,
                latest.endpoint.clone(),
                first_all,
                last_all,
                total,
                joined(hosts.iter().cloned()),
                latest.encode_to_vec()
            ],
        )?
        .int(0)?;
    known.grouped.insert(
        anomaly.key.clone(),
        GroupedAnomaly {
            first: first_all,
            last: last_all,
            total,
            hosts: hosts.clone(),
            latest: latest.clone(),
        },
    );
    let stored = StoredAnomaly {
        anomaly: Some(latest),
        hosts: hosts.into_iter().collect(),
        id: to_u64(id),
    };
    Ok((
        if exists {
            Applied::Existing
        } else {
            Applied::New
        },
        Some(stored),
    ))
}

/// Sums an agent's runs before `agent_run` into its FOLDED_RUN row for one anomaly key (the
/// grouped total already counts them, so it does not change).
fn fold_anomaly_runs(
    tx: &mut Conn,
    key: &str,
    agent_id: &str,
    agent_run: i64,
) -> Result<(), StoreError> {
    let row = tx.query_one(
        "SELECT MIN(first_seen), MAX(last_seen), CAST(SUM(report_count) AS BIGINT) FROM anomaly_reports
         WHERE anomaly_key = ?1 AND agent_id = ?2 AND agent_run < ?3",
        args![key, agent_id, agent_run],
    )?;
    let folded = (row.opt_int(0)?, row.opt_int(1)?, row.opt_int(2)?);
    let (Some(first), Some(last), Some(count)) = folded else {
        return Ok(());
    };
    tx.execute(
        "DELETE FROM anomaly_reports WHERE anomaly_key = ?1 AND agent_id = ?2 AND agent_run < ?3",
        args![key, agent_id, agent_run],
    )?;
    tx.execute(
        "INSERT INTO anomaly_reports (anomaly_key, agent_id, agent_run, first_seen, last_seen, report_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![key, agent_id, FOLDED_RUN, first, last, count],
    )?;
    Ok(())
}

fn query_anomalies(
    conn: &mut Conn,
    filter: &ListAnomaliesRequest,
) -> Result<(Vec<StoredAnomaly>, String), StoreError> {
    let page_size = page_size(filter.page_size);
    let mut sql =
        String::from("SELECT anomaly_id, last_seen, hosts, latest FROM anomalies a WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if !filter.page_token.is_empty() {
        let (ts, id) = filter
            .page_token
            .split_once(':')
            .and_then(|(t, i)| Some((t.parse::<i64>().ok()?, i.parse::<i64>().ok()?)))
            .ok_or(StoreError::InvalidPageToken)?;
        args.push(ts.into());
        args.push(id.into());
        // The first term is an index range for both planners (PostgreSQL does not turn the OR
        // alone into one); the second skips the rows of the cursor's own time before it.
        sql.push_str(" AND last_seen <= ?1 AND (last_seen < ?1 OR anomaly_id < ?2)");
    }
    if !filter.kind.is_empty() {
        args.push((&filter.kind).into());
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    if filter.min_severity > 0 {
        args.push(filter.min_severity.into());
        sql.push_str(&format!(" AND severity >= ?{}", args.len()));
    }
    if let Some(category) = filter.category {
        args.push(category.into());
        sql.push_str(&format!(" AND category = ?{}", args.len()));
    }
    if !filter.endpoint.is_empty() {
        args.push((&filter.endpoint).into());
        sql.push_str(&format!(" AND endpoint = ?{}", args.len()));
    }
    if filter.since_unix_ns > 0 {
        args.push(to_i64(filter.since_unix_ns).into());
        sql.push_str(&format!(" AND last_seen >= ?{}", args.len()));
    }
    if filter.until_unix_ns > 0 {
        args.push(to_i64(filter.until_unix_ns).into());
        sql.push_str(&format!(" AND last_seen < ?{}", args.len()));
    }
    if !filter.host.is_empty() {
        args.push((&filter.host).into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM anomaly_reports r JOIN agents g ON g.agent_id = r.agent_id
               WHERE r.anomaly_key = a.anomaly_key AND g.host = ?{})",
            args.len()
        ));
    }
    args.push((page_size + 1).into());
    sql.push_str(&format!(
        " ORDER BY last_seen DESC, anomaly_id DESC LIMIT ?{}",
        args.len()
    ));
    let rows = conn.query(&sql, &args)?;
    let mut out = Vec::new();
    let mut cursor = None;
    let mut more = false;
    for row in &rows {
        if out.len() == page_size as usize {
            more = true;
            break;
        }
        out.push(stored_anomaly_from_row(row)?);
        cursor = Some((row.int(1)?, row.int(0)?));
    }
    let next = match (more, cursor) {
        (true, Some((ts, id))) => format!("{ts}:{id}"),
        _ => String::new(),
    };
    Ok((out, next))
}
