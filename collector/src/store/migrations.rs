//! Versioned schema migrations, applied in order at start-up inside one transaction each.
//!
//! One list serves both backends: the SQL sticks to what SQLite and PostgreSQL share (BIGINT,
//! TEXT, `ON CONFLICT` upserts, no SQLite-only scalar functions), and the few DDL words PostgreSQL
//! spells differently are translated in one place ([`super::db::POSTGRES_DDL`]). Two collectors
//! starting at once do not race: PostgreSQL migrations run under a session advisory lock, SQLite
//! ones each in a `BEGIN IMMEDIATE` transaction that re-reads the version first.

use super::StoreError;
use super::db::{Conn, Dialect, args};

/// Advisory lock key that serialises migrations of collectors sharing one PostgreSQL database.
const MIGRATION_LOCK: i64 = 0x736f_6e64_6500_0001;

/// One schema step. Never edit a released migration: add a new one.
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "agents, endpoints with per-agent reports, anomalies grouped by key",
        sql: r#"
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    kernel TEXT NOT NULL,
    capture_strategy TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL DEFAULT 0,
    heartbeat BLOB,
    last_seq BIGINT NOT NULL DEFAULT 0,
    batches_committed BIGINT NOT NULL DEFAULT 0,
    endpoint_updates_committed BIGINT NOT NULL DEFAULT 0,
    anomalies_committed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE endpoints (
    endpoint_id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    method TEXT NOT NULL,
    path_template TEXT NOT NULL,
    protocol INTEGER NOT NULL,
    classification INTEGER NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    call_count BIGINT NOT NULL,
    unauthenticated INTEGER NOT NULL,
    served_over_tls INTEGER NOT NULL,
    auth_schemes TEXT NOT NULL,
    sensitive_kinds TEXT NOT NULL,
    hosts TEXT NOT NULL,
    merged BLOB NOT NULL
);
CREATE INDEX endpoints_by_service ON endpoints (service, endpoint_id);
CREATE INDEX endpoints_by_classification ON endpoints (classification, endpoint_id);
CREATE TABLE endpoint_reports (
    endpoint_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    last_seen BIGINT NOT NULL,
    report BLOB NOT NULL,
    PRIMARY KEY (endpoint_id, agent_id)
);
CREATE TABLE endpoint_sensitive_kinds (
    endpoint_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (kind, endpoint_id)
);
CREATE TABLE anomalies (
    anomaly_id INTEGER PRIMARY KEY,
    anomaly_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    severity INTEGER NOT NULL,
    category INTEGER NOT NULL,
    endpoint TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    total_count BIGINT NOT NULL,
    hosts TEXT NOT NULL,
    latest BLOB NOT NULL
);
CREATE INDEX anomalies_by_last_seen ON anomalies (last_seen, anomaly_id);
CREATE INDEX anomalies_by_endpoint ON anomalies (endpoint, last_seen);
CREATE TABLE anomaly_reports (
    anomaly_key TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    report_count BIGINT NOT NULL,
    PRIMARY KEY (anomaly_key, agent_id)
);
"#,
    },
    Migration {
        version: 2,
        description: "agent connection time; indexes for host and kind filters",
        sql: r#"
ALTER TABLE agents ADD COLUMN last_connected BIGINT NOT NULL DEFAULT 0;
CREATE INDEX endpoint_reports_by_agent ON endpoint_reports (agent_id, endpoint_id);
CREATE INDEX anomalies_by_kind ON anomalies (kind, last_seen);
CREATE INDEX agents_by_host ON agents (host);
"#,
    },
    Migration {
        version: 3,
        description: "per-agent count of items refused at the row caps",
        sql: r#"
ALTER TABLE agents ADD COLUMN items_refused BIGINT NOT NULL DEFAULT 0;
"#,
    },
    Migration {
        version: 4,
        description: "reports kept per agent run, so an agent restart adds to its totals",
        sql: r#"
CREATE TABLE endpoint_reports_v4 (
    endpoint_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    agent_run BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    report BLOB NOT NULL,
    PRIMARY KEY (endpoint_id, agent_id, agent_run)
);
INSERT INTO endpoint_reports_v4 (endpoint_id, agent_id, agent_run, last_seen, report)
    SELECT endpoint_id, agent_id, 0, last_seen, report FROM endpoint_reports;
DROP TABLE endpoint_reports;
ALTER TABLE endpoint_reports_v4 RENAME TO endpoint_reports;
CREATE INDEX endpoint_reports_by_agent ON endpoint_reports (agent_id, endpoint_id);
CREATE TABLE anomaly_reports_v4 (
    anomaly_key TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    agent_run BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    report_count BIGINT NOT NULL,
    PRIMARY KEY (anomaly_key, agent_id, agent_run)
);
INSERT INTO anomaly_reports_v4 (anomaly_key, agent_id, agent_run, first_seen, last_seen, report_count)
    SELECT anomaly_key, agent_id, 0, first_seen, last_seen, report_count FROM anomaly_reports;
DROP TABLE anomaly_reports;
ALTER TABLE anomaly_reports_v4 RENAME TO anomaly_reports;
"#,
    },
    Migration {
        version: 5,
        description: "row counts kept in the database, so collectors sharing it enforce one cap",
        sql: r#"
CREATE TABLE row_counts (
    name TEXT PRIMARY KEY,
    row_count BIGINT NOT NULL
);
INSERT INTO row_counts (name, row_count) SELECT 'endpoints', COUNT(*) FROM endpoints;
INSERT INTO row_counts (name, row_count) SELECT 'anomalies', COUNT(*) FROM anomalies;
"#,
    },
];

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);";

/// Current schema version of the database (0 for a fresh one).
pub(crate) fn current_version(conn: &mut Conn) -> Result<u32, StoreError> {
    let dialect = conn.dialect();
    conn.batch(&dialect.ddl(SCHEMA_MIGRATIONS))?;
    let version = conn
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])?
        .opt_int(0)?;
    Ok(version.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
}

/// Applies every migration above the current version, up to `target` inclusive.
pub(crate) fn migrate(conn: &mut Conn, target: u32) -> Result<u32, StoreError> {
    if conn.dialect() == Dialect::Sqlite {
        return migrate_locked(conn, target);
    }
    conn.query("SELECT pg_advisory_lock(?1)", args![MIGRATION_LOCK])?;
    let migrated = migrate_locked(conn, target);
    let unlocked = conn.query("SELECT pg_advisory_unlock(?1)", args![MIGRATION_LOCK]);
    let version = migrated?;
    unlocked?;
    Ok(version)
}

fn migrate_locked(conn: &mut Conn, target: u32) -> Result<u32, StoreError> {
    let current = current_version(conn)?;
    let latest = latest_version();
    if current > latest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    let dialect = conn.dialect();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        let applied = conn.transaction(|tx| {
            // Another collector may have applied it since the version was read.
            let now = tx
                .query_one("SELECT MAX(version) FROM schema_migrations", &[])?
                .opt_int(0)?
                .unwrap_or(0);
            if now >= i64::from(migration.version) {
                return Ok(false);
            }
            tx.batch(&dialect.ddl(migration.sql))
                .map_err(|source| StoreError::Migration {
                    version: migration.version,
                    source: Box::new(source),
                })?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
                args![migration.version, migration.description, super::now_ns_i64()],
            )?;
            Ok(true)
        })?;
        if applied {
            tracing::info!(
                version = migration.version,
                description = migration.description,
                "applied schema migration"
            );
        }
    }
    current_version(conn)
}
