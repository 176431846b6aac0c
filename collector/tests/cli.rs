//! The `sonde` CLI against a real collector: tables, JSON, filters, follow, and exit codes.

mod support;

use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sonde_proto::v1::{Batch, Classification, SchemaField};
use support::{Backend, Fixture, Session, anomaly, endpoint, hello};
use tokio::io::AsyncBufReadExt;

async fn sonde(args: &[&str]) -> anyhow::Result<Output> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(args)
        .env_remove("SONDE_COLLECTOR")
        .env_remove("SONDE_TOKEN")
        .output()
        .await
        .context("running sonde")?;
    Ok(output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn populated(backend: Backend) -> anyhow::Result<(Fixture, Session)> {
    let fx = Fixture::start(backend).await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let mut users = endpoint("api.local", "GET", "/users/{id}", 7);
    users.response_schema = vec![SchemaField {
        path: "email".into(),
        types: vec!["string".into()],
    }];
    let mut managed = endpoint("api.local", "GET", "/health", 3);
    managed.classification = Classification::Managed as i32;
    let recent = anomaly("recent", "api.local GET /users/{id}", 2, now_ns());
    let old = anomaly("old", "api.local GET /users/{id}", 1, 5);
    let batch = Batch {
        seq: 1,
        endpoint_updates: vec![users, managed],
        anomalies: vec![recent, old],
        sealed_at_unix_ns: 0,
        agent_run: 0,
    };
    session.batch_acked(batch).await?;
    Ok((fx, session))
}

async fn tables_json_and_filters(backend: Backend) -> anyhow::Result<()> {
    let (fx, _session) = populated(backend).await?;
    let url = fx.url();

    let all = sonde(&["--collector", &url, "endpoints"]).await?;
    assert!(all.status.success(), "{}", stderr(&all));
    let text = stdout(&all);
    let mut lines = text.lines();
    let header = lines.next().context("no header")?;
    assert!(header.starts_with("ID "), "{header}");
    let path_column = header.find("PATH").context("PATH column")?;
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{text}");
    // Columns are aligned: every row's path starts under the PATH header.
    for row in &rows {
        assert_eq!(
            row.get(path_column..path_column + 1),
            Some("/"),
            "misaligned row {row:?}"
        );
    }

    let shadow = sonde(&["--collector", &url, "endpoints", "--shadow"]).await?;
    let text = stdout(&shadow);
    assert!(
        text.contains("/users/{id}") && !text.contains("/health"),
        "{text}"
    );

    let json = sonde(&[
        "--collector",
        &url,
        "--json",
        "endpoints",
        "--service",
        "api.local",
    ])
    .await?;
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let list = parsed.as_array().context("array")?;
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .any(|e| e["classification"] == "CLASSIFICATION_MANAGED"),
        "{parsed}"
    );
    let id = list
        .iter()
        .find(|e| e["path_template"] == "/users/{id}")
        .and_then(|e| e["id"].as_str())
        .context("id")?
        .to_string();

    let one = sonde(&["--collector", &url, "endpoint", &id]).await?;
    let text = stdout(&one);
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(
        text.contains("response schema") && text.contains("email"),
        "{text}"
    );
    assert!(text.contains("recent anomalies"), "{text}");

    let recent = sonde(&["--collector", &url, "anomalies", "--since", "10m"]).await?;
    let text = stdout(&recent);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("API2:2023") && text.contains("high"),
        "{text}"
    );
    let everything = sonde(&["--collector", &url, "--json", "anomalies"]).await?;
    assert_eq!(stdout(&everything).lines().count(), 2);

    let bare = url.trim_start_matches("http://").to_string();
    let agents = sonde(&["--collector", &bare, "agents"]).await?;
    assert!(
        agents.status.success(),
        "a bare host:port is plaintext gRPC: {}",
        stderr(&agents)
    );
    let text = stdout(&agents);
    assert!(text.contains("host-a") && text.contains("yes"), "{text}");

    let openapi = sonde(&["--collector", &url, "openapi", "api.local"]).await?;
    let doc: serde_json::Value = serde_json::from_slice(&openapi.stdout)?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/users/{id}"]["get"].is_object());
    fx.collector.stop().await
}

async fn follow_prints_new_anomalies(backend: Backend) -> anyhow::Result<()> {
    let (fx, mut session) = populated(backend).await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args([
            "--collector",
            &fx.url(),
            "anomalies",
            "--follow",
            "--since",
            "1m",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    // Header and the one recent anomaly come first.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await??
            .context("listing ended")?;
    }
    let mut fresh = anomaly("fresh", "api.local GET /health", 1, now_ns());
    fresh.kind = "inventory.zombie_endpoint_called".into();
    session
        .batch_acked(Batch {
            seq: 2,
            anomalies: vec![fresh],
            ..Batch::default()
        })
        .await?;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .context("follow ended")?;
    assert!(line.contains("inventory.zombie_endpoint_called"), "{line}");
    child.kill().await?;
    fx.collector.stop().await
}

async fn exit_codes_say_what_is_wrong(backend: Backend) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let unreachable =
        sonde(&["--collector", &format!("http://127.0.0.1:{port}"), "agents"]).await?;
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(
        stderr(&unreachable).contains("cannot reach the collector"),
        "{}",
        stderr(&unreachable)
    );

    let fx = Fixture::start_with(backend, |c| c.query.token = Some("t0ken".into())).await?;
    let url = fx.url();
    let no_token = sonde(&["--collector", &url, "agents"]).await?;
    assert_eq!(no_token.status.code(), Some(4));
    assert!(stderr(&no_token).contains("token"), "{}", stderr(&no_token));
    let bad = sonde(&["--collector", &url, "--token", "nope", "agents"]).await?;
    assert_eq!(bad.status.code(), Some(4));
    let good = sonde(&["--collector", &url, "--token", "t0ken", "agents"]).await?;
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    let missing = sonde(&[
        "--collector",
        &url,
        "--token",
        "t0ken",
        "endpoint",
        "0123456789abcdef",
    ])
    .await?;
    assert_eq!(missing.status.code(), Some(5));
    let no_service = sonde(&[
        "--collector",
        &url,
        "--token",
        "t0ken",
        "openapi",
        "nothing.here",
    ])
    .await?;
    assert_eq!(no_service.status.code(), Some(5));
    let usage = sonde(&["endpoints", "--shadow", "--zombie"]).await?;
    assert_eq!(usage.status.code(), Some(2));
    fx.collector.stop().await
}

async fn agents_show_blind_spots_and_the_unreadable_tls_share(
    backend: Backend,
) -> anyhow::Result<()> {
    let (fx, session) = populated(backend).await?;
    let counters = [
        ("tls.connections", 8),
        ("tls.blind_connections", 2),
        ("tls.blind_connections_permille", 250),
        ("tls.bytes", 40_000),
        ("tls.blind_bytes", 10_000),
        ("tls.blind_bytes_permille", 250),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    session
        .send(sonde_proto::v1::agent_message::Body::Heartbeat(
            sonde_proto::v1::Heartbeat {
                counters,
                blind_spots: vec![sonde_proto::v1::BlindSpot {
                    kind: "tls.java_jsse".into(),
                    detail: "pid 42 java (/usr/bin/java): 2 TLS connection(s)".into(),
                }],
                sent_at_unix_ns: now_ns(),
            },
        ))
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = sonde(&["--collector", &fx.url(), "agents"]).await?;
        let text = stdout(&out);
        if text.contains("blind spot tls.java_jsse: pid 42 java") {
            assert!(
                text.contains(
                    "TLS unreadable: 2 of 8 connections (25.0%), 10000 of 40000 bytes (25.0%)"
                ),
                "{text}"
            );
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "heartbeat never shown: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fx.collector.stop().await
}

/// An endpoint served by a Kubernetes workload is listed under the workload's name, merged across
/// agents (two pods, two nodes), and `sonde endpoint` prints the workload's identity.
async fn endpoints_of_a_workload_are_listed_under_its_name_with_its_identity(
    backend: Backend,
) -> anyhow::Result<()> {
    use sonde_proto::v1::Workload;
    let fx = Fixture::start(backend).await?;
    let url = fx.url();
    for (agent, host, pod, ip) in [
        ("agent-a", "node-a", "api-7d9c5b6f4-x2k8p", "10.244.1.17"),
        ("agent-b", "node-b", "api-7d9c5b6f4-zz9qq", "10.244.2.9"),
    ] {
        let mut session = Session::open(&url, hello(agent, host)).await?;
        let mut update = endpoint("", "GET", "/users/{id}", 5);
        let service = update
            .key
            .as_mut()
            .and_then(|k| k.service.as_mut())
            .context("service key")?;
        service.server_addr = ip.into();
        service.process = String::new();
        service.kubernetes_service = "shop/api".into();
        service.workload = Some(Workload {
            name: "deployment/shop/api".into(),
            container_runtime: "containerd".into(),
            container_id: "3f4b1c9e0d2a4b6c8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d".into(),
            container_name: "api".into(),
            pod_name: pod.into(),
            namespace: "shop".into(),
            owner_kind: "Deployment".into(),
            owner_name: "api".into(),
            node: host.into(),
            labels: [("app".to_string(), "api".to_string())]
                .into_iter()
                .collect(),
            ..Workload::default()
        });
        session
            .batch_acked(Batch {
                seq: 1,
                endpoint_updates: vec![update],
                anomalies: vec![],
                sealed_at_unix_ns: 0,
                ..Batch::default()
            })
            .await?;
    }
    let listed = sonde(&["--collector", &url, "--json", "endpoints"]).await?;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let eps: serde_json::Value = serde_json::from_str(&stdout(&listed))?;
    let eps = eps.as_array().context("array")?;
    assert_eq!(eps.len(), 1, "one endpoint for both pods: {eps:?}");
    assert_eq!(eps[0]["service"], "deployment/shop/api:8080");
    assert_eq!(eps[0]["call_count"], 10);
    let id = eps[0]["id"].as_str().context("id")?.to_owned();
    let shown = sonde(&["--collector", &url, "endpoint", &id]).await?;
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(text.contains("kubernetes service: shop/api"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("workload: "))
        .context("workload line")?;
    assert!(line.starts_with("workload: deployment/shop/api "), "{line}");
    for part in [
        "owner=Deployment/api",
        "namespace=shop",
        "runtime=containerd",
        "container=api",
        "container_id=3f4b1c9e0d2a",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(text.contains("labels: app=api"), "{text}");
    fx.collector.stop().await
}

for_each_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tables_json_and_filters,
    follow_prints_new_anomalies,
    exit_codes_say_what_is_wrong,
    agents_show_blind_spots_and_the_unreadable_tls_share,
    endpoints_of_a_workload_are_listed_under_its_name_with_its_identity,
}
