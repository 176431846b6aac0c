//! The collector over real gRPC on loopback: ingest, query, idempotence, merging, auth, TLS,
//! malformed input, migrations and a corrupted database.

mod support;

use std::time::Duration;

use anyhow::Context;
use sonde_collector::store::Store;
use sonde_proto::v1::ingest_client::IngestClient;
use sonde_proto::v1::query_client::QueryClient;
use sonde_proto::v1::{
    Batch, BlindSpot, Classification, GetEndpointRequest, Heartbeat, ListAgentsRequest,
    ListAnomaliesRequest, ListEndpointsRequest, SensitiveField, Severity, WatchAnomaliesRequest,
    agent_message, collector_message,
};
use support::{Backend, Fixture, Session, anomaly, endpoint, hello};
use tonic::Code;

fn batch(
    seq: u64,
    updates: Vec<sonde_proto::v1::EndpointUpdate>,
    anomalies: Vec<sonde_proto::v1::Anomaly>,
) -> Batch {
    Batch {
        seq,
        endpoint_updates: updates,
        anomalies,
        sealed_at_unix_ns: 0,
        agent_run: 0,
    }
}

async fn ingest_then_query_round_trip(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    assert_eq!(session.committed, 0);
    let mut users = endpoint("api.local", "GET", "/users/{id}", 7);
    users.sensitive = vec![SensitiveField {
        kind: "email".into(),
        field_path: "response.body.email".into(),
        count: 7,
    }];
    users.query_params = vec!["expand".into()];
    let orders = endpoint("api.local", "POST", "/orders", 2);
    let found = anomaly("k1", "api.local GET /users/{id}", 3, 5_000);
    assert_eq!(
        session
            .batch_acked(batch(1, vec![users, orders], vec![found]))
            .await?,
        1
    );
    session
        .send(agent_message::Body::Heartbeat(Heartbeat {
            counters: [("drops.ring_full".to_string(), 4)].into_iter().collect(),
            blind_spots: vec![BlindSpot {
                kind: "tls.uprobes_unavailable".into(),
                detail: "no libssl".into(),
            }],
            sent_at_unix_ns: 1,
        }))
        .await?;

    let mut query = fx.query().await?;
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.endpoints.len(), 2);
    assert!(listed.next_page_token.is_empty());
    let users = listed
        .endpoints
        .iter()
        .find(|e| e.path_template == "/users/{id}")
        .context("users endpoint")?;
    assert_eq!(
        (
            users.service.as_str(),
            users.method.as_str(),
            users.call_count
        ),
        ("api.local", "GET", 7)
    );
    assert_eq!(users.classification, Classification::Shadow as i32);
    assert_eq!(users.sensitive_kinds, vec!["email".to_string()]);
    assert_eq!(users.hosts, vec!["host-a".to_string()]);
    assert!(!users.unauthenticated);

    let detail = query
        .get_endpoint(GetEndpointRequest {
            id: users.id.clone(),
        })
        .await?
        .into_inner();
    let merged = detail.merged.context("merged")?;
    assert_eq!(merged.query_params, vec!["expand".to_string()]);
    assert_eq!(detail.reports.len(), 1);
    assert_eq!(detail.reports[0].host, "host-a");
    assert_eq!(detail.recent_anomalies.len(), 1);
    let recent = detail.recent_anomalies[0]
        .anomaly
        .clone()
        .context("anomaly")?;
    assert_eq!(
        recent.evidence.context("evidence")?.request_line,
        "GET /users/7"
    );

    let missing = query
        .get_endpoint(GetEndpointRequest { id: "00".into() })
        .await;
    assert_eq!(
        missing.map(|_| ()).map_err(|s| s.code()),
        Err(Code::NotFound)
    );

    let anomalies = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner();
    assert_eq!(anomalies.anomalies.len(), 1);
    assert_eq!(
        anomalies.anomalies[0].anomaly.as_ref().map(|a| a.count),
        Some(3)
    );

    // The heartbeat is recorded asynchronously: poll briefly.
    let mut agent = None;
    for _ in 0..50 {
        let agents = query
            .list_agents(ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if let Some(a) = agents.into_iter().find(|a| a.last_heartbeat_unix_ns > 0) {
            agent = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = agent.context("agent with heartbeat")?;
    assert!(agent.connected);
    assert_eq!(agent.counters.get("drops.ring_full"), Some(&4));
    assert_eq!(agent.blind_spots[0].kind, "tls.uprobes_unavailable");
    assert_eq!(
        (
            agent.last_seq,
            agent.batches_committed,
            agent.endpoint_updates_committed,
            agent.anomalies_committed
        ),
        (1, 1, 2, 1)
    );

    drop(session);
    let mut disconnected = false;
    for _ in 0..100 {
        let agents = query
            .list_agents(ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if agents.iter().all(|a| !a.connected) {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        disconnected,
        "agent still shown connected after its stream closed"
    );

    let openapi = query
        .export_open_api(sonde_proto::v1::ExportOpenApiRequest {
            service: "api.local".into(),
        })
        .await?
        .into_inner();
    assert_eq!(openapi.path_count, 2);
    let doc: serde_json::Value = serde_json::from_str(&openapi.json)?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/orders"]["post"].is_object());
    // A typed OpenAPI 3.1 model accepts it, with resolvable parameters and responses.
    let typed = oas3::from_json(&openapi.json)?;
    typed.validate_version()?;
    assert_eq!(typed.operations().count(), 2);
    for (path, _, op) in typed.operations() {
        let params = op.parameters(&typed)?;
        if path.contains('{') {
            assert!(params.iter().any(|p| p.name == "id"), "{path}: {params:?}");
        }
        assert!(!op.responses(&typed).is_empty());
    }
    fx.collector.stop().await
}

async fn filters_and_paging(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let mut updates = Vec::new();
    for i in 0..250u64 {
        let service = if i % 2 == 0 { "even.svc" } else { "odd.svc" };
        let mut u = endpoint(service, "GET", &format!("/items/{i}"), i + 1);
        if i % 5 == 0 {
            u.classification = Classification::Zombie as i32;
        }
        if i % 10 == 0 {
            u.auth_schemes = [("none".to_string(), 1)].into_iter().collect();
        }
        if i % 25 == 0 {
            u.sensitive = vec![SensitiveField {
                kind: "payment_card".into(),
                field_path: "request.body.card".into(),
                count: 1,
            }];
        }
        updates.push(u);
    }
    session.batch_acked(batch(1, updates, vec![])).await?;
    let mut query = fx.query().await?;

    let mut ids = std::collections::BTreeSet::new();
    let mut request = ListEndpointsRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = query.list_endpoints(request.clone()).await?.into_inner();
        pages += 1;
        assert!(page.endpoints.len() <= 100);
        for e in page.endpoints {
            assert!(ids.insert(e.id), "an endpoint appeared on two pages");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!((ids.len(), pages), (250, 3));

    let count = |r: ListEndpointsRequest| {
        let mut q = query.clone();
        async move {
            let r = ListEndpointsRequest {
                page_size: 1000,
                ..r
            };
            q.list_endpoints(r)
                .await
                .map(|p| p.into_inner().endpoints.len())
        }
    };
    assert_eq!(
        count(ListEndpointsRequest {
            service: "even.svc".into(),
            ..Default::default()
        })
        .await?,
        125
    );
    assert_eq!(
        count(ListEndpointsRequest {
            classification: Some(Classification::Zombie as i32),
            ..Default::default()
        })
        .await?,
        50
    );
    assert_eq!(
        count(ListEndpointsRequest {
            classification: Some(Classification::Shadow as i32),
            ..Default::default()
        })
        .await?,
        200
    );
    assert_eq!(
        count(ListEndpointsRequest {
            unauthenticated: true,
            ..Default::default()
        })
        .await?,
        25
    );
    assert_eq!(
        count(ListEndpointsRequest {
            sensitive_kind: "payment_card".into(),
            ..Default::default()
        })
        .await?,
        10
    );
    assert_eq!(
        count(ListEndpointsRequest {
            host: "host-a".into(),
            ..Default::default()
        })
        .await?,
        250
    );
    assert_eq!(
        count(ListEndpointsRequest {
            host: "elsewhere".into(),
            ..Default::default()
        })
        .await?,
        0
    );
    assert_eq!(
        count(ListEndpointsRequest {
            service: "even.svc".into(),
            unauthenticated: true,
            ..Default::default()
        })
        .await?,
        25
    );
    let bad = query
        .list_endpoints(ListEndpointsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );

    // Anomalies: paging newest first, time range and severity filters.
    let anomalies: Vec<_> = (0..30u64)
        .map(|i| {
            let mut a = anomaly(&format!("a{i}"), "even.svc GET /items/0", 1, 1_000 + i);
            if i < 10 {
                a.severity = Severity::Low as i32;
            }
            a
        })
        .collect();
    session.batch_acked(batch(2, vec![], anomalies)).await?;
    let mut seen = Vec::new();
    let mut request = ListAnomaliesRequest {
        page_size: 7,
        ..Default::default()
    };
    loop {
        let page = query.list_anomalies(request.clone()).await?.into_inner();
        seen.extend(
            page.anomalies
                .iter()
                .filter_map(|a| a.anomaly.as_ref().map(|a| a.last_seen_unix_ns)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        (0..30u64).rev().map(|i| 1_000 + i).collect::<Vec<_>>()
    );
    let ranged = query
        .list_anomalies(ListAnomaliesRequest {
            since_unix_ns: 1_010,
            until_unix_ns: 1_020,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ranged.anomalies.len(), 10);
    let severe = query
        .list_anomalies(ListAnomaliesRequest {
            min_severity: Severity::High as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(severe.anomalies.len(), 20);
    let bad = query
        .list_anomalies(ListAnomaliesRequest {
            page_token: "x".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
    fx.collector.stop().await
}

async fn reingested_batches_change_nothing(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    assert_eq!(
        session
            .batch_acked(batch(
                5,
                vec![endpoint("s", "GET", "/a", 10)],
                vec![anomaly("k", "s GET /a", 2, 50)]
            ))
            .await?,
        5
    );
    // Same seq with different content, and an older seq: acked with the last committed seq, ignored.
    assert_eq!(
        session
            .batch_acked(batch(
                5,
                vec![endpoint("s", "GET", "/a", 99)],
                vec![anomaly("k", "s GET /a", 40, 60)]
            ))
            .await?,
        5
    );
    assert_eq!(
        session
            .batch_acked(batch(3, vec![endpoint("s", "GET", "/b", 1)], vec![]))
            .await?,
        5
    );
    let mut query = fx.query().await?;
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].call_count, 10);
    let anomalies = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    assert_eq!(anomalies[0].anomaly.as_ref().map(|a| a.count), Some(2));
    // Totals are absolute: a newer batch with the same total for the same endpoint stays at 10.
    session
        .batch_acked(batch(
            6,
            vec![endpoint("s", "GET", "/a", 10)],
            vec![anomaly("k", "s GET /a", 2, 50)],
        ))
        .await?;
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    assert_eq!(listed[0].call_count, 10);
    // A reconnect learns the committed seq from the Hello's ack.
    drop(session);
    let again = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    assert_eq!(again.committed, 6);
    let agents = query
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(agents[0].batches_committed, 2);
    fx.collector.stop().await
}

async fn the_same_endpoint_from_two_agents_is_merged(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut a = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let mut b = Session::open(&fx.url(), hello("agent-b", "host-b")).await?;
    let mut from_a = endpoint("shop", "GET", "/cart", 5);
    from_a.callers = vec![sonde_proto::v1::Caller {
        process: "web".into(),
        addr: "10.0.0.1".into(),
        count: 5,
    }];
    let mut from_b = endpoint("shop", "GET", "/cart", 8);
    from_b.auth_schemes = [("none".to_string(), 8)].into_iter().collect();
    from_b.callers = vec![sonde_proto::v1::Caller {
        process: "web".into(),
        addr: "10.0.0.1".into(),
        count: 8,
    }];
    a.batch_acked(batch(
        1,
        vec![from_a],
        vec![anomaly("shared", "shop GET /cart", 2, 100)],
    ))
    .await?;
    b.batch_acked(batch(
        1,
        vec![from_b],
        vec![anomaly("shared", "shop GET /cart", 3, 200)],
    ))
    .await?;
    let mut query = fx.query().await?;
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1);
    let merged = &listed[0];
    assert_eq!(merged.call_count, 13);
    assert_eq!(
        merged.hosts,
        vec!["host-a".to_string(), "host-b".to_string()]
    );
    assert!(merged.unauthenticated, "agent b saw unauthenticated calls");
    assert_eq!(
        merged.auth_schemes,
        vec!["bearer".to_string(), "none".to_string()]
    );
    let detail = query
        .get_endpoint(GetEndpointRequest {
            id: merged.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(detail.reports.len(), 2);
    assert_eq!(
        detail
            .merged
            .map(|m| m.callers.iter().map(|c| c.count).sum::<u64>()),
        Some(13)
    );
    for host in ["host-a", "host-b"] {
        let only = query
            .list_endpoints(ListEndpointsRequest {
                host: host.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(only.endpoints.len(), 1);
    }
    let anomalies = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    assert_eq!(anomalies.len(), 1);
    assert_eq!(
        anomalies[0]
            .anomaly
            .as_ref()
            .map(|x| (x.count, x.last_seen_unix_ns)),
        Some((5, 200))
    );
    assert_eq!(
        anomalies[0].hosts,
        vec!["host-a".to_string(), "host-b".to_string()]
    );
    // Agent a's running total grows from 2 to 4: the group total moves by the delta only.
    a.batch_acked(batch(
        2,
        vec![],
        vec![anomaly("shared", "shop GET /cart", 4, 150)],
    ))
    .await?;
    let regrouped = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    assert_eq!(
        regrouped[0]
            .anomaly
            .as_ref()
            .map(|x| (x.count, x.last_seen_unix_ns)),
        Some((7, 200))
    );
    let by_host = query
        .list_anomalies(ListAnomaliesRequest {
            host: "host-b".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(by_host.anomalies.len(), 1);
    fx.collector.stop().await
}

async fn watchers_see_committed_anomalies(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut query = fx.query().await?;
    let mut watch = query
        .watch_anomalies(WatchAnomaliesRequest {
            kind: String::new(),
            min_severity: Severity::Medium as i32,
        })
        .await?
        .into_inner();
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let mut low = anomaly("low", "s GET /", 1, 1);
    low.severity = Severity::Low as i32;
    session
        .batch_acked(batch(
            1,
            vec![],
            vec![low, anomaly("high", "s GET /", 1, 2)],
        ))
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await??
        .context("watch ended")?;
    assert_eq!(first.anomaly.map(|a| a.key), Some("high".to_string()));
    fx.collector.stop().await
}

async fn query_token_is_enforced(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start_with(backend, |c| c.query.token = Some("letmein".into())).await?;
    let mut open = fx.query().await?;
    let refused = open.list_endpoints(ListEndpointsRequest::default()).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );
    let channel = tonic::transport::Endpoint::from_shared(fx.url())?
        .connect()
        .await?;
    for (token, ok) in [("Bearer wrong", false), ("Bearer letmein", true)] {
        let value: tonic::metadata::MetadataValue<_> = token.parse()?;
        let mut client =
            QueryClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", value.clone());
                Ok(r)
            });
        let result = client.list_agents(ListAgentsRequest {}).await;
        assert_eq!(result.is_ok(), ok, "token {token}");
    }
    // Ingest does not use the query token.
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    assert_eq!(
        session
            .batch_acked(batch(1, vec![endpoint("s", "GET", "/", 1)], vec![]))
            .await?,
        1
    );
    fx.collector.stop().await
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> anyhow::Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &ca)?;
    let client_key = KeyPair::generate()?;
    let client =
        CertificateParams::new(vec!["agent-a".to_string()])?.signed_by(&client_key, &ca)?;
    Ok(Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    })
}

async fn mtls_ingest_refuses_clients_without_a_certificate(backend: Backend) -> anyhow::Result<()> {
    let pki = pki()?;
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let tls = sonde_collector::TlsConfig {
        cert: write("server.pem", &pki.server_cert)?,
        key: write("server.key", &pki.server_key)?,
        client_ca: Some(write("ca.pem", &pki.ca)?),
    };
    let fx = Fixture::start_with(backend, |c| c.tls = Some(tls)).await?;
    let url = format!("https://localhost:{}", fx.collector.local_addr.port());
    let tls_base = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    // No client certificate: the TLS handshake succeeds (client auth is optional at that layer)
    // but the ingest service refuses the stream.
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .tls_config(tls_base.clone())?
        .connect()
        .await?;
    let refused = Session::open_on(
        &mut IngestClient::new(channel.clone()),
        hello("agent-a", "host-a"),
    )
    .await;
    let status = refused
        .err()
        .and_then(|e| e.downcast::<tonic::Status>().ok())
        .context("expected a status")?;
    assert_eq!(status.code(), Code::Unauthenticated);
    // The query API on the same listener stays reachable without a certificate.
    QueryClient::new(channel)
        .list_agents(ListAgentsRequest {})
        .await?;

    // With a certificate signed by the CA, ingest works.
    let with_cert = tls_base.identity(tonic::transport::Identity::from_pem(
        &pki.client_cert,
        &pki.client_key,
    ));
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .tls_config(with_cert)?
        .connect()
        .await?;
    let mut session =
        Session::open_on(&mut IngestClient::new(channel), hello("agent-a", "host-a")).await?;
    assert_eq!(
        session
            .batch_acked(batch(1, vec![endpoint("s", "GET", "/", 1)], vec![]))
            .await?,
        1
    );

    // Plaintext against the TLS listener fails to connect or to call.
    let plain = IngestClient::connect(format!(
        "http://127.0.0.1:{}",
        fx.collector.local_addr.port()
    ))
    .await;
    if let Ok(mut client) = plain {
        assert!(
            Session::open_on(&mut client, hello("x", "y"))
                .await
                .is_err()
        );
    }
    fx.collector.stop().await
}

async fn malformed_and_oversized_messages_get_errors_not_crashes(
    backend: Backend,
) -> anyhow::Result<()> {
    let fx = Fixture::start_with(backend, |c| {
        c.max_message_bytes = 64 * 1024;
        c.max_batch_items = 100;
    })
    .await?;
    // A stream that does not start with Hello.
    let mut client = IngestClient::connect(fx.url()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(sonde_proto::v1::AgentMessage {
        body: Some(agent_message::Body::Batch(batch(1, vec![], vec![]))),
    })
    .await?;
    let refused = client
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
    // A Hello without an agent id.
    let refused = Session::open(&fx.url(), hello("", "h")).await;
    assert!(refused.is_err());

    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    // Invalid content is refused with an Error naming the batch; the stream stays usable.
    let mut keyless = endpoint("s", "GET", "/", 1);
    keyless.key = None;
    match session.batch(batch(1, vec![keyless], vec![])).await? {
        collector_message::Body::Error(e) => {
            assert_eq!(e.seq, 1);
            assert!(e.message.contains("no key"), "{}", e.message);
        }
        other => anyhow::bail!("expected an error, got {other:?}"),
    }
    let mut bad_severity = anomaly("k", "s GET /", 1, 1);
    bad_severity.severity = 99;
    assert!(matches!(
        session.batch(batch(2, vec![], vec![bad_severity])).await?,
        collector_message::Body::Error(_)
    ));
    let too_many: Vec<_> = (0..101)
        .map(|i| endpoint("s", "GET", &format!("/{i}"), 1))
        .collect();
    assert!(matches!(
        session.batch(batch(3, too_many, vec![])).await?,
        collector_message::Body::Error(_)
    ));
    assert_eq!(
        session
            .batch_acked(batch(4, vec![endpoint("s", "GET", "/ok", 1)], vec![]))
            .await?,
        4
    );

    // A message over the size limit ends the stream with an error status.
    let mut huge = endpoint("s", "GET", "/huge", 1);
    huge.query_params = (0..20_000).map(|i| format!("param-{i}")).collect();
    session
        .send(agent_message::Body::Batch(batch(5, vec![huge], vec![])))
        .await?;
    let status = session
        .rx
        .message()
        .await
        .err()
        .context("expected an error for the oversized message")?;
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::Internal
        ),
        "{status:?}"
    );

    // The collector is still healthy and nothing invalid was stored.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(fx.url())?
            .connect()
            .await?,
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sonde.v1.Query".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let listed = fx
        .query()
        .await?
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        listed
            .endpoints
            .iter()
            .map(|e| e.path_template.as_str())
            .collect::<Vec<_>>(),
        vec!["/ok"]
    );
    fx.collector.stop().await
}

async fn reflection_lists_the_services(backend: Backend) -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request, server_reflection_response,
    };
    let fx = Fixture::start(backend).await?;
    let mut client = ServerReflectionClient::new(
        tonic::transport::Endpoint::from_shared(fx.url())?
            .connect()
            .await?,
    );
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses
        .message()
        .await?
        .context("no reflection response")?;
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        anyhow::bail!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["sonde.v1.Ingest", "sonde.v1.Query", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    fx.collector.stop().await
}

async fn an_existing_v1_database_is_migrated(backend: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = support::database(backend, &dir).await?;
    let old = path.clone();
    support::blocking(move || {
        let store = Store::open_at_version(&old, &Default::default(), 1)?;
        assert_eq!(store.schema_version()?, 1);
        drop(store);
        // Data written by a v1 collector.
        support::execute(
            &old,
            "INSERT INTO agents (agent_id, host, agent_version, kernel, capture_strategy, started_at, first_seen, last_seq, batches_committed)
             VALUES ('old-agent', 'old-host', '0.0.1', '5.15', 'syscalls', 1, 1, 41, 41)",
            &[],
        )?;
        Ok(())
    })
    .await?;
    let collector = sonde_collector::spawn(sonde_collector::CollectorConfig {
        database: path.clone(),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let store = collector.store.clone();
    assert_eq!(
        support::blocking(move || Ok(store.schema_version()?)).await?,
        sonde_collector::store::migrations::latest_version()
    );
    let url = collector.url(false);
    let agents = QueryClient::connect(url.clone())
        .await?
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (
            agents[0].agent_id.as_str(),
            agents[0].last_seq,
            agents[0].last_connected_unix_ns
        ),
        ("old-agent", 41, 0)
    );
    // The migrated agent resumes where it was.
    let mut session = Session::open(&url, hello("old-agent", "old-host")).await?;
    assert_eq!(session.committed, 41);
    assert_eq!(
        session
            .batch_acked(batch(42, vec![endpoint("s", "GET", "/", 1)], vec![]))
            .await?,
        42
    );
    collector.stop().await?;
    // Opening again applies nothing new.
    let version = support::blocking(move || {
        let store = Store::open(&path, &Default::default())?;
        let applied = support::count(&path, "SELECT COUNT(*) FROM schema_migrations", &[])?;
        Ok((store.schema_version()?, applied))
    })
    .await?;
    let latest = sonde_collector::store::migrations::latest_version();
    assert_eq!(version, (latest, i64::from(latest)));
    Ok(())
}

async fn a_corrupted_database_file_is_a_clear_error(backend: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (database, expected) = match backend {
        Backend::Sqlite => {
            let path = dir.path().join("collector.db");
            std::fs::write(&path, vec![0x5a; 8192])?;
            (path, "not a SQLite database or is corrupted")
        }
        // Nothing listens there; the password must not appear in the message.
        Backend::Postgres => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            (
                format!("postgres://sonde:hunter2@127.0.0.1:{port}/collector").into(),
                "cannot connect to PostgreSQL at postgres://sonde:***@127.0.0.1",
            )
        }
    };
    let result = sonde_collector::bind(sonde_collector::CollectorConfig {
        database,
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await;
    let error = format!(
        "{:#}",
        result.err().context("a bad database must not open")?
    );
    assert!(error.contains(expected), "{error}");
    assert!(
        error.contains("collector.db") || error.contains("/collector"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
    Ok(())
}

async fn a_database_from_a_newer_collector_is_refused(backend: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = support::database(backend, &dir).await?;
    let error = support::blocking(move || {
        drop(Store::open(&path, &Default::default())?);
        support::execute(
            &path,
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (99, 'future', 0)",
            &[],
        )?;
        Ok(Store::open(&path, &Default::default())
            .err()
            .context("must refuse")?
            .to_string())
    })
    .await?;
    assert!(error.contains("newer than this collector"), "{error}");
    Ok(())
}

/// Sends arbitrary bytes as gRPC messages, to feed the server undecodable input.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn undecodable_bytes_are_answered_with_errors(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let channel = tonic::transport::Endpoint::from_shared(fx.url())?
        .connect()
        .await?;
    // Field 1 as a length-delimited value claiming more bytes than follow; then a bad wire type.
    let garbage: Vec<Vec<u8>> = vec![vec![0x0a, 0xff, 0xff, 0x03, 0x01], vec![0x0f, 0x0f, 0x0f]];
    for bytes in garbage {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/sonde.v1.Ingest/Report");
        let reply = grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter(vec![bytes.clone()])),
                path,
                RawCodec,
            )
            .await;
        match reply {
            Err(status) => assert_ne!(status.code(), Code::Ok),
            Ok(mut stream) => {
                let next = stream.get_mut().message().await;
                assert!(next.is_err(), "garbage ingest got {next:?}");
            }
        }
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/sonde.v1.Query/ListEndpoints");
        let reply = grpc.unary(tonic::Request::new(bytes), path, RawCodec).await;
        assert!(reply.is_err(), "garbage query got an answer");
    }
    // Still serving.
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    assert_eq!(
        session
            .batch_acked(batch(1, vec![endpoint("s", "GET", "/", 1)], vec![]))
            .await?,
        1
    );
    fx.collector.stop().await
}

async fn row_caps_refuse_new_rows_and_count_them(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start_with(backend, |c| {
        c.max_endpoints = 5;
        c.max_anomalies = 2;
    })
    .await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    let flood: Vec<_> = (0..8)
        .map(|i| endpoint("s", "GET", &format!("/{i}"), 1))
        .collect();
    let keys: Vec<_> = (0..3)
        .map(|i| anomaly(&format!("k{i}"), "s GET /0", 1, 1))
        .collect();
    session.batch_acked(batch(1, flood, keys)).await?;
    // Existing rows still update past the cap.
    session
        .batch_acked(batch(
            2,
            vec![endpoint("s", "GET", "/0", 9)],
            vec![anomaly("k0", "s GET /0", 4, 2)],
        ))
        .await?;
    let mut query = fx.query().await?;
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed
            .iter()
            .find(|e| e.path_template == "/0")
            .map(|e| e.call_count),
        Some(9)
    );
    let anomalies = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    assert_eq!(anomalies.len(), 2);
    let agents = query
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert_eq!(agents[0].items_refused, 4);
    let db = fx.db_path();
    fx.collector.stop().await?;
    // The caps hold across a restart (row counts are kept in the database).
    let refused = support::blocking(move || {
        let store = Store::open(
            &db,
            &sonde_collector::store::StoreOptions {
                max_endpoints: 5,
                ..Default::default()
            },
        )?;
        let outcome = store.ingest_batch(
            "agent-a",
            &batch(3, vec![endpoint("s", "GET", "/new", 1)], vec![]),
        )?;
        Ok(outcome.refused)
    })
    .await?;
    assert_eq!(refused, 1);
    Ok(())
}

fn run_batch(
    seq: u64,
    agent_run: u64,
    updates: Vec<sonde_proto::v1::EndpointUpdate>,
    anomalies: Vec<sonde_proto::v1::Anomaly>,
) -> Batch {
    Batch {
        agent_run,
        ..batch(seq, updates, anomalies)
    }
}

fn hello_run(agent_id: &str, host: &str, started_at: u64) -> sonde_proto::v1::Hello {
    sonde_proto::v1::Hello {
        started_at_unix_ns: started_at,
        ..hello(agent_id, host)
    }
}

async fn call_count(query: &mut QueryClient<tonic::transport::Channel>) -> anyhow::Result<u64> {
    let listed = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    anyhow::ensure!(listed.len() == 1, "expected one endpoint, got {listed:?}");
    Ok(listed[0].call_count)
}

async fn anomaly_count(query: &mut QueryClient<tonic::transport::Channel>) -> anyhow::Result<u64> {
    let anomalies = query
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    anyhow::ensure!(
        anomalies.len() == 1,
        "expected one anomaly, got {anomalies:?}"
    );
    Ok(anomalies[0].anomaly.as_ref().map_or(0, |a| a.count))
}

async fn report_rows(db: &std::path::Path, agent_id: &str) -> anyhow::Result<(i64, i64)> {
    let db = db.to_path_buf();
    let agent_id = agent_id.to_string();
    support::blocking(move || {
        let endpoints = support::count(
            &db,
            "SELECT COUNT(*) FROM endpoint_reports WHERE agent_id = ?1",
            &[agent_id.as_str().into()],
        )?;
        let anomalies = support::count(
            &db,
            "SELECT COUNT(*) FROM anomaly_reports WHERE agent_id = ?1",
            &[agent_id.as_str().into()],
        )?;
        Ok((endpoints, anomalies))
    })
    .await
}

async fn an_agent_restart_adds_to_its_totals_instead_of_resetting_them(
    backend: Backend,
) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut query = fx.query().await?;
    let ep = |calls| endpoint("s", "GET", "/a", calls);
    let an = |count, last| anomaly("k", "s GET /a", count, last);

    // First run of the agent: running totals 10 then 15 calls, 2 then 3 anomalies.
    let mut run1 = Session::open(&fx.url(), hello_run("agent-a", "host-a", 100)).await?;
    run1.batch_acked(run_batch(10, 100, vec![ep(10)], vec![an(2, 50)]))
        .await?;
    run1.batch_acked(run_batch(11, 100, vec![ep(15)], vec![an(3, 60)]))
        .await?;
    assert_eq!(
        (
            call_count(&mut query).await?,
            anomaly_count(&mut query).await?
        ),
        (15, 3)
    );
    drop(run1);

    // The agent restarts: its counts start again from zero and add to its history.
    let mut run2 = Session::open(&fx.url(), hello_run("agent-a", "host-a", 200)).await?;
    assert_eq!(run2.committed, 11);
    run2.batch_acked(run_batch(12, 200, vec![ep(4)], vec![an(1, 70)]))
        .await?;
    assert_eq!(
        (
            call_count(&mut query).await?,
            anomaly_count(&mut query).await?
        ),
        (19, 4)
    );
    run2.batch_acked(run_batch(13, 200, vec![ep(6)], vec![an(2, 80)]))
        .await?;
    assert_eq!(
        (
            call_count(&mut query).await?,
            anomaly_count(&mut query).await?
        ),
        (21, 5)
    );
    // A late report of the first run (already folded into the history) changes nothing.
    run2.batch_acked(run_batch(14, 100, vec![ep(99)], vec![an(99, 90)]))
        .await?;
    assert_eq!(
        (
            call_count(&mut query).await?,
            anomaly_count(&mut query).await?
        ),
        (21, 5)
    );
    drop(run2);

    // A third run; a second agent merges beside it.
    let mut run3 = Session::open(&fx.url(), hello_run("agent-a", "host-a", 300)).await?;
    run3.batch_acked(run_batch(15, 300, vec![ep(1)], vec![an(1, 95)]))
        .await?;
    let mut other = Session::open(&fx.url(), hello_run("agent-b", "host-b", 100)).await?;
    other
        .batch_acked(run_batch(1, 100, vec![ep(7)], vec![an(2, 96)]))
        .await?;
    assert_eq!(
        (
            call_count(&mut query).await?,
            anomaly_count(&mut query).await?
        ),
        (29, 8)
    );
    // Rows per (endpoint or anomaly, agent) stay bounded: the folded history and the current run.
    assert_eq!(report_rows(&fx.db_path(), "agent-a").await?, (2, 2));

    // One report per agent in the endpoint view, with that agent's whole history.
    let id = query
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints[0]
        .id
        .clone();
    let detail = query
        .get_endpoint(GetEndpointRequest { id })
        .await?
        .into_inner();
    let per_agent: Vec<(String, u64)> = detail
        .reports
        .iter()
        .map(|r| {
            (
                r.agent_id.clone(),
                r.update.as_ref().map_or(0, |u| u.call_count),
            )
        })
        .collect();
    assert_eq!(
        per_agent,
        vec![("agent-a".to_string(), 22), ("agent-b".to_string(), 7)]
    );
    fx.collector.stop().await
}

async fn reports_of_a_v3_database_become_the_agents_history(
    backend: Backend,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = support::database(backend, &dir).await?;
    let update = endpoint("s", "GET", "/a", 10);
    let old = path.clone();
    support::blocking(move || {
        drop(Store::open_at_version(&old, &Default::default(), 3)?);
        support::execute(
            &old,
            "INSERT INTO agents (agent_id, host, agent_version, kernel, capture_strategy, started_at, first_seen, last_seq)
             VALUES ('agent-a', 'host-a', '0.1.0', '6.12', 'sock-tracepoints', 1, 1, 5)",
            &[],
        )?;
        let key = update.key.clone().unwrap_or_default();
        let service = key
            .service
            .as_ref()
            .map(|s| s.display_name())
            .unwrap_or_default();
        let id = sonde_collector::store::endpoint_id(&service, &key);
        support::execute(
            &old,
            "INSERT INTO endpoint_reports (endpoint_id, agent_id, last_seen, report) VALUES (?1, 'agent-a', 1, ?2)",
            &[id.into(), prost::Message::encode_to_vec(&update).into()],
        )?;
        Ok(())
    })
    .await?;
    let collector = sonde_collector::spawn(sonde_collector::CollectorConfig {
        database: path.clone(),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let url = collector.url(false);
    let mut session = Session::open(&url, hello_run("agent-a", "host-a", 500)).await?;
    assert_eq!(session.committed, 5);
    session
        .batch_acked(run_batch(
            6,
            500,
            vec![endpoint("s", "GET", "/a", 4)],
            vec![],
        ))
        .await?;
    let mut query = QueryClient::connect(url).await?;
    assert_eq!(call_count(&mut query).await?, 14);
    collector.stop().await
}

/// A key twice in one batch (a stale, smaller running total after a larger one) counts the
/// agent's largest total once, added to what another agent reported.
async fn a_key_repeated_within_a_batch_counts_once(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::start(backend).await?;
    let mut other = Session::open(&fx.url(), hello("agent-b", "host-b")).await?;
    other
        .batch_acked(batch(1, vec![], vec![anomaly("k", "s GET /", 4, 10)]))
        .await?;
    let mut session = Session::open(&fx.url(), hello("agent-a", "host-a")).await?;
    session
        .batch_acked(batch(
            1,
            vec![],
            vec![
                anomaly("k", "s GET /", 5, 30),
                anomaly("k", "s GET /", 2, 20),
            ],
        ))
        .await?;
    let stored = fx
        .query()
        .await?
        .list_anomalies(ListAnomaliesRequest::default())
        .await?
        .into_inner()
        .anomalies;
    assert_eq!(stored.len(), 1);
    let found = stored[0].anomaly.clone().context("anomaly")?;
    assert_eq!((found.count, found.last_seen_unix_ns), (9, 30));
    assert_eq!(
        stored[0].hosts,
        vec!["host-a".to_string(), "host-b".to_string()]
    );
    fx.collector.stop().await
}

for_each_store! {
    #[tokio::test]
    ingest_then_query_round_trip,
    filters_and_paging,
    reingested_batches_change_nothing,
    the_same_endpoint_from_two_agents_is_merged,
    watchers_see_committed_anomalies,
    query_token_is_enforced,
    mtls_ingest_refuses_clients_without_a_certificate,
    malformed_and_oversized_messages_get_errors_not_crashes,
    reflection_lists_the_services,
    an_existing_v1_database_is_migrated,
    a_corrupted_database_file_is_a_clear_error,
    a_database_from_a_newer_collector_is_refused,
    undecodable_bytes_are_answered_with_errors,
    row_caps_refuse_new_rows_and_count_them,
    an_agent_restart_adds_to_its_totals_instead_of_resetting_them,
    reports_of_a_v3_database_become_the_agents_history,
    a_key_repeated_within_a_batch_counts_once,
}

/// A collector whose address is taken fails before it creates its database file.
#[tokio::test]
async fn a_taken_listen_address_leaves_no_database_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let database = dir.path().join("collector.db");
    let result = sonde_collector::bind(sonde_collector::CollectorConfig {
        database: database.clone(),
        listen: taken.local_addr()?,
        ..Default::default()
    })
    .await;
    let error = format!("{:#}", result.err().context("the address is taken")?);
    assert!(error.contains("binding the collector listener"), "{error}");
    assert!(!database.exists(), "{} was created", database.display());
    Ok(())
}
