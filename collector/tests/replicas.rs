//! Collectors sharing one database: `sonde-collector` processes on one PostgreSQL database answer
//! alike while agents on either ingest concurrently, a collector killed mid-ingest loses nothing
//! it acknowledged, and a database connection cut mid-transaction costs nothing either.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{
    AgentMessage, AgentStatus, Batch, GetEndpointRequest, GetEndpointResponse, ListAgentsRequest,
    ListAnomaliesRequest, ListEndpointsRequest, StoredAnomaly, WatchAnomaliesRequest,
    agent_message, collector_message,
};
use support::{Backend, Session, anomaly, endpoint, hello};
use tokio::process::{Child, Command};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `sonde-collector` process on `database`, serving once this returns.
async fn collector_process(database: &Path) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let child = Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--database")
        .arg(database)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SONDE_LOG", "warn")
        .env_remove("SONDE_CONFIG")
        .env_remove("SONDE_QUERY_TOKEN")
        .kill_on_drop(true)
        .spawn()
        .context("starting sonde-collector")?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = QueryClient::connect(url.clone()).await
            && client.list_agents(ListAgentsRequest {}).await.is_ok()
        {
            return Ok((child, url));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "collector at {url} never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the query API says, with what legitimately differs per collector (which agents
/// hold a stream to it) blanked.
#[derive(Debug, PartialEq)]
struct Snapshot {
    endpoints: Vec<GetEndpointResponse>,
    anomalies: Vec<StoredAnomaly>,
    agents: Vec<AgentStatus>,
}

async fn snapshot(url: &str) -> anyhow::Result<Snapshot> {
    let mut query = QueryClient::connect(url.to_string()).await?;
    let mut endpoints = Vec::new();
    let mut request = ListEndpointsRequest {
        page_size: 100,
        ..Default::default()
    };
    loop {
        let page = query.list_endpoints(request.clone()).await?.into_inner();
        for summary in page.endpoints {
            endpoints.push(
                query
                    .get_endpoint(GetEndpointRequest { id: summary.id })
                    .await?
                    .into_inner(),
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let mut anomalies = Vec::new();
    let mut request = ListAnomaliesRequest {
        page_size: 100,
        ..Default::default()
    };
    loop {
        let page = query.list_anomalies(request.clone()).await?.into_inner();
        anomalies.extend(page.anomalies);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let mut agents = query
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    for agent in &mut agents {
        agent.connected = false;
    }
    Ok(Snapshot {
        endpoints,
        anomalies,
        agents,
    })
}

const AGENTS: u64 = 6;
const BATCHES_PER_AGENT: u64 = 12;
const SHARED_ENDPOINTS: u64 = 60;
/// Anomaly keys every agent reports: long transactions on the same rows from both collectors.
const SHARED_ANOMALIES: u64 = 150;

/// Batch `k` (1-based) of agent `i`: running totals on endpoints and anomaly keys every agent
/// reports, plus some of its own. Odd batches carry anomalies only, so concurrent batches meet
/// first on the grouped anomaly rows.
fn fleet_batch(i: u64, k: u64) -> Batch {
    let mut updates: Vec<_> = Vec::new();
    if k.is_multiple_of(2) {
        updates.extend(
            (0..SHARED_ENDPOINTS)
                .map(|j| endpoint("shop", "GET", &format!("/items/{j}"), k * (i + 1))),
        );
    }
    updates.push(endpoint("shop", "GET", &format!("/agent-{i}/batch-{k}"), 1));
    let mut anomalies: Vec<_> = (0..SHARED_ANOMALIES)
        .map(|j| anomaly(&format!("shared-{j}"), "shop GET /items/0", k, 100 + k))
        .collect();
    anomalies.push(anomaly(&format!("own-{i}-{k}"), "shop GET /items/1", 1, 50));
    Batch {
        seq: k,
        endpoint_updates: updates,
        anomalies,
        sealed_at_unix_ns: 0,
        agent_run: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_collector_processes_on_one_postgres_database_answer_alike() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = support::database(Backend::Postgres, &dir).await?;
    let (_a, url_a) = collector_process(&database).await?;
    let (_b, url_b) = collector_process(&database).await?;
    let mut watch_a = QueryClient::connect(url_a.clone())
        .await?
        .watch_anomalies(WatchAnomaliesRequest::default())
        .await?
        .into_inner();

    // Agents ingest concurrently, half through each collector, and move to the other one half
    // way (their committed seq follows them), re-sending a batch the other already committed.
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let (first, second) = if i % 2 == 0 {
            (url_a.clone(), url_b.clone())
        } else {
            (url_b.clone(), url_a.clone())
        };
        agents.push(tokio::spawn(async move {
            let id = format!("agent-{i}");
            let host = format!("host-{i}");
            let mut session = Session::open(&first, hello(&id, &host)).await?;
            for k in 1..=BATCHES_PER_AGENT / 2 {
                anyhow::ensure!(session.batch_acked(fleet_batch(i, k)).await? == k);
            }
            drop(session);
            let mut session = Session::open(&second, hello(&id, &host)).await?;
            anyhow::ensure!(session.committed == BATCHES_PER_AGENT / 2, "seq not shared");
            let repeat = session.batch_acked(fleet_batch(i, 1)).await?;
            anyhow::ensure!(repeat == BATCHES_PER_AGENT / 2, "a repeat was applied");
            for k in BATCHES_PER_AGENT / 2 + 1..=BATCHES_PER_AGENT {
                anyhow::ensure!(session.batch_acked(fleet_batch(i, k)).await? == k);
            }
            Ok(())
        }));
    }
    for agent in agents {
        agent.await??;
    }
    // An anomaly committed through B reaches a watcher on A.
    let mut late = Session::open(&url_b, hello("agent-late", "host-late")).await?;
    late.batch_acked(Batch {
        seq: 1,
        anomalies: vec![anomaly("only-via-b", "shop GET /items/2", 1, 7)],
        ..Batch::default()
    })
    .await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch_a.message().await? {
                Some(stored)
                    if stored
                        .anomaly
                        .as_ref()
                        .is_some_and(|a| a.key == "only-via-b") =>
                {
                    return anyhow::Ok(stored);
                }
                Some(_) => continue,
                None => anyhow::bail!("watch on A ended"),
            }
        }
    })
    .await
    .context("a watcher on A never saw the anomaly committed through B")??;
    assert_eq!(seen.hosts, vec!["host-late".to_string()]);

    let from_a = snapshot(&url_a).await?;
    let from_b = snapshot(&url_b).await?;
    assert_eq!(from_a, from_b);
    // No update was lost to a concurrent one: shared totals are the sum over agents.
    let expected_calls: u64 = (0..AGENTS).map(|i| BATCHES_PER_AGENT * (i + 1)).sum();
    let shared: Vec<u64> = from_a
        .endpoints
        .iter()
        .filter_map(|e| e.summary.as_ref())
        .filter(|s| s.path_template.starts_with("/items/"))
        .map(|s| s.call_count)
        .collect();
    assert_eq!(shared, vec![expected_calls; SHARED_ENDPOINTS as usize]);
    assert_eq!(
        from_a.endpoints.len() as u64,
        SHARED_ENDPOINTS + AGENTS * BATCHES_PER_AGENT
    );
    let counts: BTreeMap<String, u64> = from_a
        .anomalies
        .iter()
        .filter_map(|a| a.anomaly.as_ref())
        .filter(|a| a.key.starts_with("shared-"))
        .map(|a| (a.key.clone(), a.count))
        .collect();
    assert_eq!(counts.len() as u64, SHARED_ANOMALIES);
    assert!(
        counts.values().all(|c| *c == AGENTS * BATCHES_PER_AGENT),
        "{counts:?}"
    );
    for agent in from_a.agents.iter().filter(|a| a.agent_id != "agent-late") {
        assert_eq!(
            (agent.last_seq, agent.batches_committed),
            (BATCHES_PER_AGENT, BATCHES_PER_AGENT),
            "{}",
            agent.agent_id
        );
    }
    Ok(())
}

const KILL_BATCHES: u64 = 120;

/// Batch `seq` of the kill test: endpoints and anomaly keys of its own, so the database shows
/// exactly which batches were applied.
fn numbered_batch(seq: u64) -> Batch {
    Batch {
        seq,
        endpoint_updates: (0..20)
            .map(|j| endpoint("svc", "POST", &format!("/b{seq}/e{j}"), 1))
            .collect(),
        anomalies: (0..5)
            .map(|j| anomaly(&format!("k{seq}-{j}"), "svc POST /b", 1, seq))
            .collect(),
        sealed_at_unix_ns: 0,
        agent_run: 0,
    }
}

async fn a_collector_killed_mid_ingest_loses_nothing_acknowledged(
    backend: Backend,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = support::database(backend, &dir).await?;
    let (mut first, url) = collector_process(&database).await?;
    let mut session = Session::open(&url, hello("agent-k", "host-k")).await?;
    // Batches stream without waiting for acks; the collector is killed once 30 are acked.
    let tx = session.tx.clone();
    let sender = tokio::spawn(async move {
        for seq in 1..=KILL_BATCHES {
            let message = AgentMessage {
                body: Some(agent_message::Body::Batch(numbered_batch(seq))),
            };
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut acked = 0;
    while let Ok(Some(message)) = session.rx.message().await {
        if let Some(collector_message::Body::Ack(ack)) = message.body {
            acked = acked.max(ack.seq);
        }
        if acked >= 30 {
            first.start_kill()?;
            first.wait().await?;
        }
    }
    sender.abort();
    assert!(
        (30..KILL_BATCHES).contains(&acked),
        "kill landed after {acked} acks"
    );

    // A new collector on the same database: the agent learns what is committed and re-sends
    // the rest.
    let (_second, url) = collector_process(&database).await?;
    let mut session = Session::open(&url, hello("agent-k", "host-k")).await?;
    assert!(
        session.committed >= acked,
        "acked {acked} but only {} committed",
        session.committed
    );
    for seq in session.committed + 1..=KILL_BATCHES {
        assert_eq!(session.batch_acked(numbered_batch(seq)).await?, seq);
    }
    let check = database.clone();
    let (endpoints, anomalies) = support::blocking(move || {
        Ok((
            support::count(&check, "SELECT COUNT(*) FROM endpoints", &[])?,
            support::count(&check, "SELECT COUNT(*) FROM anomalies", &[])?,
        ))
    })
    .await?;
    assert_eq!(
        (endpoints, anomalies),
        (KILL_BATCHES as i64 * 20, KILL_BATCHES as i64 * 5)
    );
    let agents = QueryClient::connect(url)
        .await?
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    // Every batch applied exactly once.
    assert_eq!(
        (
            agents[0].batches_committed,
            agents[0].endpoint_updates_committed,
            agents[0].anomalies_committed
        ),
        (KILL_BATCHES, KILL_BATCHES * 20, KILL_BATCHES * 5)
    );
    Ok(())
}

for_each_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_collector_killed_mid_ingest_loses_nothing_acknowledged,
}

const CUT_BATCHES: u64 = 24;
const CUT_BATCH_ITEMS: u64 = 1_500;

fn big_batch(seq: u64) -> Batch {
    Batch {
        seq,
        endpoint_updates: (0..CUT_BATCH_ITEMS)
            .map(|j| endpoint("big", "GET", &format!("/b{seq}/e{j}"), seq))
            .collect(),
        ..Batch::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_cut_mid_transaction_loses_nothing_acknowledged() -> anyhow::Result<()>
{
    let fx = support::Fixture::start(Backend::Postgres).await?;
    let database = fx.db_path().to_string_lossy().into_owned();
    // Terminates the collector's busy backends (mid-statement or idle inside a transaction)
    // a few times while the agent ingests.
    let killer = tokio::spawn(async move {
        let mut terminated = 0u32;
        while terminated < 4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let url = database.clone();
            let killed = support::blocking(move || {
                support::postgres::admin_query(
                    &url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND state IN ('active', 'idle in transaction')
                       AND query NOT LIKE 'LISTEN%'",
                )
            })
            .await?;
            terminated += killed
                .first()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
        }
        anyhow::Ok(terminated)
    });
    let mut errors = Vec::new();
    let mut committed = 0;
    let mut reconnects = 0;
    while committed < CUT_BATCHES {
        let mut session = match Session::open(&fx.url(), hello("agent-c", "host-c")).await {
            Ok(session) => session,
            Err(error) => {
                errors.push(format!("{error:#}"));
                reconnects += 1;
                anyhow::ensure!(reconnects < 50, "never recovered: {errors:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        committed = session.committed;
        while committed < CUT_BATCHES {
            match session.batch(big_batch(committed + 1)).await {
                Ok(collector_message::Body::Ack(ack)) => committed = ack.seq,
                Ok(other) => anyhow::bail!("unexpected reply {other:?}"),
                Err(error) => {
                    errors.push(format!("{error:#}"));
                    break;
                }
            }
        }
    }
    let terminated = tokio::time::timeout(Duration::from_secs(60), killer).await???;
    assert!(
        terminated >= 1,
        "no backend was terminated during the ingest"
    );
    // Whatever reached the agent names the cause.
    for error in &errors {
        assert!(
            error.contains("PostgreSQL") || error.contains("connection"),
            "unclear error: {error}"
        );
    }
    let store = fx.collector.store.clone();
    let (endpoints, _) = support::blocking(move || Ok(store.counts()?)).await?;
    assert_eq!(endpoints, CUT_BATCHES * CUT_BATCH_ITEMS);
    let agents = fx
        .query()
        .await?
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(
        (agents[0].batches_committed, agents[0].last_seq),
        (CUT_BATCHES, CUT_BATCHES)
    );
    fx.collector.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_caps_hold_across_collectors_sharing_a_postgres_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = support::database(Backend::Postgres, &dir).await?;
    let capped = |database: std::path::PathBuf| sonde_collector::CollectorConfig {
        max_endpoints: 10,
        max_anomalies: 4,
        ..support::config(database)
    };
    let a = sonde_collector::spawn(capped(database.clone())).await?;
    let b = sonde_collector::spawn(capped(database.clone())).await?;
    // Four agents, two per collector, each bringing 8 new endpoints and 3 new anomaly keys
    // in small batches at the same time.
    let mut agents = Vec::new();
    for i in 0..4u64 {
        let url = if i % 2 == 0 {
            a.url(false)
        } else {
            b.url(false)
        };
        agents.push(tokio::spawn(async move {
            let mut session = Session::open(&url, hello(&format!("agent-{i}"), "h")).await?;
            for k in 0..4u64 {
                session
                    .batch_acked(Batch {
                        seq: k + 1,
                        endpoint_updates: (0..2)
                            .map(|j| endpoint("s", "GET", &format!("/{i}/{k}/{j}"), 1))
                            .collect(),
                        anomalies: if k < 3 {
                            vec![anomaly(&format!("k{i}-{k}"), "s GET /", 1, 1)]
                        } else {
                            vec![]
                        },
                        ..Batch::default()
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for agent in agents {
        agent.await??;
    }
    let check = database.clone();
    let (endpoints, anomalies) = support::blocking(move || {
        Ok((
            support::count(&check, "SELECT COUNT(*) FROM endpoints", &[])?,
            support::count(&check, "SELECT COUNT(*) FROM anomalies", &[])?,
        ))
    })
    .await?;
    assert_eq!((endpoints, anomalies), (10, 4));
    let refused: u64 = QueryClient::connect(a.url(false))
        .await?
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents
        .iter()
        .map(|agent| agent.items_refused)
        .sum();
    assert_eq!(refused, (32 - 10) + (12 - 4));
    a.stop().await?;
    b.stop().await
}
