//! Property: whatever order, repetition or gaps batches arrive in, the store applies exactly the
//! batches whose seq is above everything committed before, and re-sends change nothing; on
//! SQLite and on PostgreSQL.

mod support;

use proptest::prelude::*;
use sonde_collector::store::{Store, StoreOptions};
use sonde_proto::v1::{
    Anomaly, Batch, EndpointKey, EndpointUpdate, Hello, ListEndpointsRequest, OwaspCategory,
    ServiceKey, Severity,
};

fn batch(seq: u64, path: u8) -> Batch {
    Batch {
        seq,
        endpoint_updates: vec![EndpointUpdate {
            key: Some(EndpointKey {
                service: Some(ServiceKey {
                    authority: "svc".into(),
                    ..ServiceKey::default()
                }),
                method: "GET".into(),
                path_template: format!("/p/{path}"),
                protocol: 1,
            }),
            call_count: seq * 10,
            last_seen_unix_ns: seq,
            ..EndpointUpdate::default()
        }],
        anomalies: vec![Anomaly {
            key: "k".into(),
            kind: "kind".into(),
            severity: Severity::Low as i32,
            category: OwaspCategory::Api1Bola as i32,
            count: seq,
            first_seen_unix_ns: seq,
            last_seen_unix_ns: seq,
            ..Anomaly::default()
        }],
        sealed_at_unix_ns: 0,
        agent_run: 0,
    }
}

fn only_batches_above_the_committed_seq_apply(
    backend: support::Backend,
    arrivals: Vec<(u64, u8)>,
) -> Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
    let database = match backend {
        support::Backend::Sqlite => dir.path().join("db"),
        support::Backend::Postgres => support::postgres::fresh_database()
            .map_err(|e| fail(&e))?
            .into(),
    };
    let options = StoreOptions {
        synchronous_full: false,
        ..StoreOptions::default()
    };
    let store = Store::open(&database, &options).map_err(|e| fail(&e))?;
    store
        .register_agent(&Hello {
            agent_id: "a".into(),
            host: "h".into(),
            ..Hello::default()
        })
        .map_err(|e| fail(&e))?;
    let mut last = 0u64;
    let mut applied = 0u64;
    let mut expected_calls = std::collections::BTreeMap::new();
    for (seq, path) in arrivals {
        let outcome = store
            .ingest_batch("a", &batch(seq, path))
            .map_err(|e| fail(&e))?;
        prop_assert_eq!(outcome.applied, seq > last);
        if seq > last {
            last = seq;
            applied += 1;
            expected_calls.insert(format!("/p/{path}"), seq * 10);
        }
        prop_assert_eq!(outcome.last_seq, last);
    }
    let agents = store.list_agents().map_err(|e| fail(&e))?;
    prop_assert_eq!(agents[0].batches_committed, applied);
    prop_assert_eq!(agents[0].last_seq, last);
    let (endpoints, _) = store
        .list_endpoints(&ListEndpointsRequest {
            page_size: 100,
            ..Default::default()
        })
        .map_err(|e| fail(&e))?;
    let stored: std::collections::BTreeMap<String, u64> = endpoints
        .into_iter()
        .map(|e| (e.path_template, e.call_count))
        .collect();
    prop_assert_eq!(stored, expected_calls);
    let (anomalies, _) = store
        .list_anomalies(&Default::default())
        .map_err(|e| fail(&e))?;
    // The agent's running total only grows, so the stored count is the last applied one.
    prop_assert_eq!(anomalies[0].anomaly.as_ref().map(|a| a.count), Some(last));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn only_batches_above_the_committed_seq_apply_sqlite(arrivals in proptest::collection::vec((1u64..30, 0u8..4), 1..40)) {
        only_batches_above_the_committed_seq_apply(support::Backend::Sqlite, arrivals)?;
    }

    #[test]
    fn only_batches_above_the_committed_seq_apply_postgres(arrivals in proptest::collection::vec((1u64..30, 0u8..4), 1..40)) {
        only_batches_above_the_committed_seq_apply(support::Backend::Postgres, arrivals)?;
    }
}
