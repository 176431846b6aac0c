//! The collector's store: an embedded SQLite database.
//!
//! One writer connection commits each ingested batch in a single transaction (so an ack always
//! covers durable data); a separate reader connection serves queries, which WAL mode lets run
//! beside the writer. All calls are blocking: the gRPC layer runs them on tokio's blocking pool.

mod merge;
pub mod migrations;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::{Digest, Sha256};
use sonde_proto::v1::{
    AgentStatus, Anomaly, Batch, EndpointKey, EndpointReport, EndpointSummary, EndpointUpdate,
    GetEndpointResponse, Heartbeat, Hello, ListAnomaliesRequest, ListEndpointsRequest,
    StoredAnomaly,
};

pub use merge::{is_unauthenticated, merge_reports};

/// Default and largest page sizes of list queries.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Anomalies returned with one endpoint.
const RECENT_ANOMALIES_PER_ENDPOINT: u32 = 20;

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
    #[error(
        "database schema version {found} is newer than this collector supports ({supported}); upgrade the collector"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("schema migration {version} failed: {source}")]
    Migration {
        version: u32,
        source: rusqlite::Error,
    },
    #[error("stored record is unreadable: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid page token")]
    InvalidPageToken,
    #[error("agent {0:?} has not said hello")]
    UnknownAgent(String),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store lock poisoned by an earlier panic")]
    Poisoned,
}

/// How the database file is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `PRAGMA synchronous`: `FULL` makes every acknowledged batch survive power loss.
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
    path: PathBuf,
    options: StoreOptions,
    /// Row counts, kept in memory so the caps cost no COUNT(*) per item.
    endpoint_rows: AtomicU64,
    anomaly_rows: AtomicU64,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
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

/// SQLite integers are signed: u64 values above i64::MAX saturate (nanosecond times do not reach
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

fn lock(mutex: &Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
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

impl Store {
    /// Opens (creating if needed) the database and brings its schema to the latest version.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        Store::open_at_version(path, options, migrations::latest_version())
    }

    /// Opens the database migrating only up to `version`; tests use it to build old schemas.
    #[doc(hidden)]
    pub fn open_at_version(
        path: &Path,
        options: &StoreOptions,
        version: u32,
    ) -> Result<Store, StoreError> {
        let mut writer = open_connection(path, options, true)?;
        migrations::migrate(&mut writer, version).map_err(|e| classify(path, e))?;
        let reader = open_connection(path, options, false)?;
        let store = Store {
            path: path.to_path_buf(),
            options: options.clone(),
            endpoint_rows: AtomicU64::new(0),
            anomaly_rows: AtomicU64::new(0),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        };
        if version >= 1 {
            let (endpoints, anomalies) = store.counts()?;
            store.endpoint_rows.store(endpoints, Ordering::Relaxed);
            store.anomaly_rows.store(anomalies, Ordering::Relaxed);
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::current_version(&*lock(&self.reader)?)
    }

    /// Records an agent's hello and returns the last seq committed for it.
    pub fn register_agent(&self, hello: &Hello) -> Result<u64, StoreError> {
        let conn = lock(&self.writer)?;
        let now = now_ns_i64();
        conn.execute(
            "INSERT INTO agents (agent_id, host, agent_version, kernel, capture_strategy, started_at, first_seen, last_connected)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host,
                agent_version = excluded.agent_version, kernel = excluded.kernel,
                capture_strategy = excluded.capture_strategy, started_at = excluded.started_at,
                last_connected = excluded.last_connected",
            params![
                hello.agent_id,
                hello.host,
                hello.agent_version,
                hello.kernel,
                hello.capture_strategy,
                to_i64(hello.started_at_unix_ns),
                now
            ],
        )?;
        let last_seq: i64 = conn.query_row(
            "SELECT last_seq FROM agents WHERE agent_id = ?1",
            params![hello.agent_id],
            |row| row.get(0),
        )?;
        Ok(to_u64(last_seq))
    }

    pub fn record_heartbeat(
        &self,
        agent_id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<(), StoreError> {
        let conn = lock(&self.writer)?;
        let changed = conn.execute(
            "UPDATE agents SET last_heartbeat = ?2, heartbeat = ?3 WHERE agent_id = ?1",
            params![agent_id, now_ns_i64(), heartbeat.encode_to_vec()],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownAgent(agent_id.to_string()));
        }
        Ok(())
    }

    /// Commits one batch atomically, or skips it when its seq is not above the last committed.
    pub fn ingest_batch(&self, agent_id: &str, batch: &Batch) -> Result<IngestOutcome, StoreError> {
        let mut conn = lock(&self.writer)?;
        let tx = conn.transaction()?;
        let agent: Option<(i64, String)> = tx
            .query_row(
                "SELECT last_seq, host FROM agents WHERE agent_id = ?1",
                params![agent_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((last_seq, host)) = agent else {
            return Err(StoreError::UnknownAgent(agent_id.to_string()));
        };
        let last_seq = to_u64(last_seq);
        if batch.seq <= last_seq {
            return Ok(IngestOutcome {
                applied: false,
                last_seq,
                anomalies: Vec::new(),
                refused: 0,
            });
        }
        let mut endpoint_rows = self.endpoint_rows.load(Ordering::Relaxed);
        let mut anomaly_rows = self.anomaly_rows.load(Ordering::Relaxed);
        let mut refused = 0u64;
        for update in &batch.endpoint_updates {
            match apply_endpoint_update(
                &tx,
                agent_id,
                update,
                endpoint_rows < self.options.max_endpoints,
            )? {
                Applied::New => endpoint_rows += 1,
                Applied::Existing => {}
                Applied::Refused => refused += 1,
            }
        }
        let mut anomalies = Vec::with_capacity(batch.anomalies.len());
        for anomaly in &batch.anomalies {
            match apply_anomaly(
                &tx,
                agent_id,
                &host,
                anomaly,
                anomaly_rows < self.options.max_anomalies,
            )? {
                (Applied::New, Some(stored)) => {
                    anomaly_rows += 1;
                    anomalies.push(stored);
                }
                (_, Some(stored)) => anomalies.push(stored),
                (_, None) => refused += 1,
            }
        }
        if refused > 0 {
            tracing::warn!(
                agent_id,
                seq = batch.seq,
                refused,
                "row caps reached: new endpoints or anomaly keys refused"
            );
        }
        tx.execute(
            "UPDATE agents SET last_seq = ?2, batches_committed = batches_committed + 1,
                endpoint_updates_committed = endpoint_updates_committed + ?3,
                anomalies_committed = anomalies_committed + ?4,
                items_refused = items_refused + ?5
             WHERE agent_id = ?1",
            params![
                agent_id,
                to_i64(batch.seq),
                to_i64(batch.endpoint_updates.len() as u64),
                to_i64(batch.anomalies.len() as u64),
                to_i64(refused)
            ],
        )?;
        tx.commit()?;
        self.endpoint_rows.store(endpoint_rows, Ordering::Relaxed);
        self.anomaly_rows.store(anomaly_rows, Ordering::Relaxed);
        Ok(IngestOutcome {
            applied: true,
            last_seq: batch.seq,
            anomalies,
            refused,
        })
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
        let conn = lock(&self.reader)?;
        let mut sql = String::from(
            "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                    last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                    sensitive_kinds, hosts
             FROM endpoints e WHERE endpoint_id > ?1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![after.to_string().into()];
        if !filter.service.is_empty() {
            args.push(filter.service.clone().into());
            sql.push_str(&format!(" AND service = ?{}", args.len()));
        }
        if let Some(classification) = filter.classification {
            args.push(i64::from(classification).into());
            sql.push_str(&format!(" AND classification = ?{}", args.len()));
        }
        if filter.unauthenticated {
            sql.push_str(" AND unauthenticated = 1");
        }
        if !filter.sensitive_kind.is_empty() {
            args.push(filter.sensitive_kind.clone().into());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM endpoint_sensitive_kinds s WHERE s.endpoint_id = e.endpoint_id AND s.kind = ?{})",
                args.len()
            ));
        }
        if !filter.host.is_empty() {
            args.push(filter.host.clone().into());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM endpoint_reports r JOIN agents a ON a.agent_id = r.agent_id
                   WHERE r.endpoint_id = e.endpoint_id AND a.host = ?{})",
                args.len()
            ));
        }
        args.push(i64::from(page_size + 1).into());
        sql.push_str(&format!(" ORDER BY endpoint_id LIMIT ?{}", args.len()));
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows: Vec<EndpointSummary> = stmt
            .query_map(rusqlite::params_from_iter(args), summary_from_row)?
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
        let conn = lock(&self.reader)?;
        let row = conn
            .prepare_cached(
                "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                        last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                        sensitive_kinds, hosts, merged
                 FROM endpoints WHERE endpoint_id = ?1",
            )?
            .query_row(params![id], |row| Ok((summary_from_row(row)?, row.get::<_, Vec<u8>>(14)?)))
            .optional()?;
        let Some((summary, merged)) = row else {
            return Ok(None);
        };
        let merged = EndpointUpdate::decode(merged.as_slice())?;
        let mut reports = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT r.agent_id, a.host, r.report FROM endpoint_reports r
                 LEFT JOIN agents a ON a.agent_id = r.agent_id
                 WHERE r.endpoint_id = ?1 ORDER BY r.agent_id",
            )?;
            let mut rows = stmt.query(params![id])?;
            while let Some(row) = rows.next()? {
                let blob: Vec<u8> = row.get(2)?;
                reports.push(EndpointReport {
                    agent_id: row.get(0)?,
                    host: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    update: Some(EndpointUpdate::decode(blob.as_slice())?),
                });
            }
        }
        let display = merged
            .key
            .as_ref()
            .map(EndpointKey::display_name)
            .unwrap_or_default();
        let recent_anomalies = query_anomalies(
            &conn,
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

    /// Every endpoint of one service with its merged record, for OpenAPI export.
    pub fn service_endpoints(
        &self,
        service: &str,
    ) -> Result<Vec<(EndpointSummary, EndpointUpdate)>, StoreError> {
        let conn = lock(&self.reader)?;
        let mut stmt = conn.prepare_cached(
            "SELECT endpoint_id, service, method, path_template, protocol, classification, first_seen,
                    last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
                    sensitive_kinds, hosts, merged
             FROM endpoints WHERE service = ?1 ORDER BY path_template, method",
        )?;
        let mut rows = stmt.query(params![service])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let blob: Vec<u8> = row.get(14)?;
            out.push((
                summary_from_row(row)?,
                EndpointUpdate::decode(blob.as_slice())?,
            ));
        }
        Ok(out)
    }

    pub fn list_anomalies(
        &self,
        filter: &ListAnomaliesRequest,
    ) -> Result<(Vec<StoredAnomaly>, String), StoreError> {
        query_anomalies(&*lock(&self.reader)?, filter)
    }

    /// Every known agent; `connected` is left false (the server knows who is connected).
    pub fn list_agents(&self) -> Result<Vec<AgentStatus>, StoreError> {
        let conn = lock(&self.reader)?;
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, host, agent_version, kernel, capture_strategy, started_at, last_heartbeat,
                    heartbeat, last_seq, batches_committed, endpoint_updates_committed,
                    anomalies_committed, last_connected, items_refused
             FROM agents ORDER BY host, agent_id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let heartbeat = match row.get::<_, Option<Vec<u8>>>(7)? {
                Some(blob) => Heartbeat::decode(blob.as_slice())?,
                None => Heartbeat::default(),
            };
            out.push(AgentStatus {
                agent_id: row.get(0)?,
                host: row.get(1)?,
                agent_version: row.get(2)?,
                kernel: row.get(3)?,
                capture_strategy: row.get(4)?,
                started_at_unix_ns: to_u64(row.get(5)?),
                last_heartbeat_unix_ns: to_u64(row.get(6)?),
                counters: heartbeat.counters,
                blind_spots: heartbeat.blind_spots,
                connected: false,
                last_seq: to_u64(row.get(8)?),
                batches_committed: to_u64(row.get(9)?),
                endpoint_updates_committed: to_u64(row.get(10)?),
                anomalies_committed: to_u64(row.get(11)?),
                last_connected_unix_ns: to_u64(row.get(12)?),
                items_refused: to_u64(row.get(13)?),
            });
        }
        Ok(out)
    }

    /// Row counts (endpoints, anomalies) as kept in memory for the caps: no SQL, for metrics.
    pub fn row_counts(&self) -> (u64, u64) {
        (
            self.endpoint_rows.load(Ordering::Relaxed),
            self.anomaly_rows.load(Ordering::Relaxed),
        )
    }

    /// Bytes of the database file and its write-ahead log.
    pub fn file_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }

    /// Row counts (endpoints, anomalies), for logs and benchmarks.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let conn = lock(&self.reader)?;
        let endpoints: i64 = conn.query_row("SELECT COUNT(*) FROM endpoints", [], |r| r.get(0))?;
        let anomalies: i64 = conn.query_row("SELECT COUNT(*) FROM anomalies", [], |r| r.get(0))?;
        Ok((to_u64(endpoints), to_u64(anomalies)))
    }
}

fn open_connection(
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
        StoreError::Sql(source) | StoreError::Migration { source, .. } => source,
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

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointSummary> {
    Ok(EndpointSummary {
        id: row.get(0)?,
        service: row.get(1)?,
        method: row.get(2)?,
        path_template: row.get(3)?,
        protocol: row.get(4)?,
        classification: row.get(5)?,
        first_seen_unix_ns: to_u64(row.get(6)?),
        last_seen_unix_ns: to_u64(row.get(7)?),
        call_count: to_u64(row.get(8)?),
        unauthenticated: row.get::<_, i64>(9)? != 0,
        served_over_tls: row.get::<_, i64>(10)? != 0,
        auth_schemes: split(&row.get::<_, String>(11)?),
        sensitive_kinds: split(&row.get::<_, String>(12)?),
        hosts: split(&row.get::<_, String>(13)?),
    })
}

/// What applying one item did.
enum Applied {
    New,
    Existing,
    Refused,
}

fn apply_endpoint_update(
    tx: &rusqlite::Transaction<'_>,
    agent_id: &str,
    update: &EndpointUpdate,
    room_for_new: bool,
) -> Result<Applied, StoreError> {
    let key = update.key.clone().unwrap_or_default();
    let service = key
        .service
        .as_ref()
        .map(|s| s.display_name())
        .unwrap_or_else(|| "unknown".into());
    let id = endpoint_id(&service, &key);
    let exists = tx
        .prepare_cached("SELECT 1 FROM endpoints WHERE endpoint_id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists && !room_for_new {
        return Ok(Applied::Refused);
    }
    tx.prepare_cached(
        "INSERT INTO endpoint_reports (endpoint_id, agent_id, last_seen, report) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (endpoint_id, agent_id) DO UPDATE SET last_seen = excluded.last_seen, report = excluded.report",
    )?
    .execute(params![id, agent_id, to_i64(update.last_seen_unix_ns), update.encode_to_vec()])?;

    let mut reports = Vec::new();
    let mut hosts = BTreeSet::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT r.report, a.host FROM endpoint_reports r LEFT JOIN agents a ON a.agent_id = r.agent_id
             WHERE r.endpoint_id = ?1",
        )?;
        let mut rows = stmt.query(params![id])?;
        while let Some(row) = rows.next()? {
            let blob: Vec<u8> = row.get(0)?;
            reports.push(EndpointUpdate::decode(blob.as_slice())?);
            if let Some(host) = row.get::<_, Option<String>>(1)? {
                hosts.insert(host);
            }
        }
    }
    let merged = merge_reports(&reports);
    let sensitive_kinds: BTreeSet<String> =
        merged.sensitive.iter().map(|s| s.kind.clone()).collect();
    tx.prepare_cached(
        "INSERT INTO endpoints (endpoint_id, service, method, path_template, protocol, classification,
            first_seen, last_seen, call_count, unauthenticated, served_over_tls, auth_schemes,
            sensitive_kinds, hosts, merged)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (endpoint_id) DO UPDATE SET classification = excluded.classification,
            first_seen = excluded.first_seen, last_seen = excluded.last_seen,
            call_count = excluded.call_count, unauthenticated = excluded.unauthenticated,
            served_over_tls = excluded.served_over_tls, auth_schemes = excluded.auth_schemes,
            sensitive_kinds = excluded.sensitive_kinds, hosts = excluded.hosts, merged = excluded.merged",
    )?
    .execute(params![
        id,
        service,
        key.method,
        key.path_template,
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
    tx.prepare_cached("DELETE FROM endpoint_sensitive_kinds WHERE endpoint_id = ?1")?
        .execute(params![id])?;
    let mut insert_kind = tx.prepare_cached(
        "INSERT INTO endpoint_sensitive_kinds (endpoint_id, kind) VALUES (?1, ?2)",
    )?;
    for kind in sensitive_kinds {
        insert_kind.execute(params![id, kind])?;
    }
    Ok(if exists {
        Applied::Existing
    } else {
        Applied::New
    })
}

fn apply_anomaly(
    tx: &rusqlite::Transaction<'_>,
    agent_id: &str,
    host: &str,
    anomaly: &Anomaly,
    room_for_new: bool,
) -> Result<(Applied, Option<StoredAnomaly>), StoreError> {
    let exists = tx
        .prepare_cached("SELECT 1 FROM anomalies WHERE anomaly_key = ?1")?
        .query_row(params![anomaly.key], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists && !room_for_new {
        return Ok((Applied::Refused, None));
    }
    // The agent's count is its running total: keep the largest seen, so a repeat or a reset
    // agent never shrinks or double-counts it.
    let previous: Option<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT first_seen, last_seen, report_count FROM anomaly_reports
             WHERE anomaly_key = ?1 AND agent_id = ?2",
        )?
        .query_row(params![anomaly.key, agent_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let incoming = (
        to_i64(anomaly.first_seen_unix_ns),
        to_i64(anomaly.last_seen_unix_ns),
        to_i64(anomaly.count),
    );
    let (first, last, count) = match previous {
        None => incoming,
        Some((f, l, c)) => (f.min(incoming.0), l.max(incoming.1), c.max(incoming.2)),
    };
    tx.prepare_cached(
        "INSERT INTO anomaly_reports (anomaly_key, agent_id, first_seen, last_seen, report_count)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (anomaly_key, agent_id) DO UPDATE SET first_seen = excluded.first_seen,
            last_seen = excluded.last_seen, report_count = excluded.report_count",
    )?
    .execute(params![anomaly.key, agent_id, first, last, count])?;

    // The grouped row is updated incrementally: the total changes by this agent's delta,
    // first/last seen only widen, and the host list grows when the agent is new for this key.
    let stored: Option<(i64, i64, i64, String, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT first_seen, last_seen, total_count, hosts, latest FROM anomalies WHERE anomaly_key = ?1",
        )?
        .query_row(params![anomaly.key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let previous_count = previous.map(|p| p.2).unwrap_or(0);
    let (mut latest, total, first_all, last_all, hosts) = match stored {
        Some((f, l, total, hosts, blob)) => {
            let stored = Anomaly::decode(blob.as_slice())?;
            // Evidence, severity and explanation come from the most recently seen report.
            let latest = if stored.last_seen_unix_ns > anomaly.last_seen_unix_ns {
                stored
            } else {
                anomaly.clone()
            };
            let mut hosts: BTreeSet<String> = split(&hosts).into_iter().collect();
            hosts.insert(host.to_string());
            let total = total.saturating_sub(previous_count).saturating_add(count);
            (latest, total, f.min(first), l.max(last), hosts)
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
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO anomalies (anomaly_key, kind, severity, category, endpoint, first_seen, last_seen,
                total_count, hosts, latest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (anomaly_key) DO UPDATE SET kind = excluded.kind, severity = excluded.severity,
                category = excluded.category, endpoint = excluded.endpoint,
                first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                total_count = excluded.total_count, hosts = excluded.hosts, latest = excluded.latest
             RETURNING anomaly_id",
        )?
        .query_row(
            params![
                latest.key,
                latest.kind,
                latest.severity,
                latest.category,
                latest.endpoint,
                first_all,
                last_all,
                total,
                joined(hosts.iter().cloned()),
                latest.encode_to_vec()
            ],
            |r| r.get(0),
        )?;
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

fn query_anomalies(
    conn: &Connection,
    filter: &ListAnomaliesRequest,
) -> Result<(Vec<StoredAnomaly>, String), StoreError> {
    let page_size = page_size(filter.page_size);
    let mut sql =
        String::from("SELECT anomaly_id, last_seen, hosts, latest FROM anomalies a WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if !filter.page_token.is_empty() {
        let (ts, id) = filter
            .page_token
            .split_once(':')
            .and_then(|(t, i)| Some((t.parse::<i64>().ok()?, i.parse::<i64>().ok()?)))
            .ok_or(StoreError::InvalidPageToken)?;
        args.push(ts.into());
        args.push(id.into());
        sql.push_str(" AND (last_seen < ?1 OR (last_seen = ?1 AND anomaly_id < ?2))");
    }
    if !filter.kind.is_empty() {
        args.push(filter.kind.clone().into());
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    if filter.min_severity > 0 {
        args.push(i64::from(filter.min_severity).into());
        sql.push_str(&format!(" AND severity >= ?{}", args.len()));
    }
    if let Some(category) = filter.category {
        args.push(i64::from(category).into());
        sql.push_str(&format!(" AND category = ?{}", args.len()));
    }
    if !filter.endpoint.is_empty() {
        args.push(filter.endpoint.clone().into());
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
        args.push(filter.host.clone().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM anomaly_reports r JOIN agents g ON g.agent_id = r.agent_id
               WHERE r.anomaly_key = a.anomaly_key AND g.host = ?{})",
            args.len()
        ));
    }
    args.push(i64::from(page_size + 1).into());
    sql.push_str(&format!(
        " ORDER BY last_seen DESC, anomaly_id DESC LIMIT ?{}",
        args.len()
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    let mut cursor = None;
    let mut more = false;
    while let Some(row) = rows.next()? {
        if out.len() == page_size as usize {
            more = true;
            break;
        }
        let id: i64 = row.get(0)?;
        let last_seen: i64 = row.get(1)?;
        let blob: Vec<u8> = row.get(3)?;
        out.push(StoredAnomaly {
            anomaly: Some(Anomaly::decode(blob.as_slice())?),
            hosts: split(&row.get::<_, String>(2)?),
            id: to_u64(id),
        });
        cursor = Some((last_seen, id));
    }
    let next = match (more, cursor) {
        (true, Some((ts, id))) => format!("{ts}:{id}"),
        _ => String::new(),
    };
    Ok((out, next))
}
