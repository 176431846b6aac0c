//! Path templating: data-driven cases of typed parameters, cardinality learning and folding.

mod common;

use common::{NOW_NS, ex};
use sonde_inventory::{Inventory, InventoryConfig};

fn templates(paths: &[&str], cfg: InventoryConfig) -> Vec<String> {
    let mut inv = Inventory::new(cfg);
    for p in paths {
        inv.observe(&ex("GET", p).build(), NOW_NS);
    }
    inv.check_consistency().expect("consistent inventory");
    let mut t: Vec<String> = inv.endpoints().map(|r| r.template.to_string()).collect();
    t.sort();
    t
}

/// (observed paths, expected templates), with the default configuration.
const CASES: &[(&[&str], &[&str])] = &[
    (
        &[
            "/api/5f1c2a/org/onboardingStatus",
            "/api/8a2d91/org/projects",
        ],
        &["/api/{id}/org/onboardingStatus", "/api/{id}/org/projects"],
    ),
    (
        &["/api/v2/faq/340/feedback", "/api/v2/faq/340/related"],
        &["/api/v2/faq/{int}/feedback", "/api/v2/faq/{int}/related"],
    ),
    (
        &["/predict/FR/STN/DUB/2026-08-16"],
        &["/predict/FR/STN/DUB/{date}"],
    ),
    (
        &[
            "/users/alice@example.com/keys",
            "/users/bob%40example.org/keys",
        ],
        &["/users/{email}/keys"],
    ),
    (
        &["/api/v1/users/12", "/api/v2/users/13"],
        &["/api/v1/users/{int}", "/api/v2/users/{int}"],
    ),
    (
        &["/customers/cus_9fK2LmQ8", "/customers/cus_Ab3dE5fG7h"],
        &["/customers/{id}"],
    ),
    (
        &[
            "/orders/3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "/orders/7c9e6679-7425-40de-944b-e07fc1f90ae7/items",
        ],
        &["/orders/{uuid}", "/orders/{uuid}/items"],
    ),
    (
        &["/blobs/9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"],
        &["/blobs/{hash}"],
    ),
    (
        &["/reset/dGhpcyBpcyBhIHRva2VuIHZhbHVlMTIz"],
        &["/reset/{token}"],
    ),
    (&["/health", "/health/", "//health"], &["/health"]),
    (&["/"], &["/"]),
    (
        &["/files/report.pdf", "/files/summary.pdf"],
        &["/files/report.pdf", "/files/summary.pdf"],
    ),
    (
        &["/api/users/me", "/api/users/42"],
        &["/api/users/me", "/api/users/{int}"],
    ),
];

#[test]
fn typed_parameters_and_literals() {
    for (paths, expected) in CASES {
        let got = templates(paths, InventoryConfig::default());
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "paths {paths:?}");
    }
}

#[test]
fn raw_email_never_in_endpoint_names() {
    let mut inv = Inventory::default();
    let info = inv.observe(&ex("GET", "/users/alice@example.com/keys").build(), NOW_NS);
    assert!(!info.endpoint.contains("alice"), "{}", info.endpoint);
    assert_eq!(&*info.template, "/users/{email}/keys");
    let json = serde_json::to_string(&inv.endpoints().collect::<Vec<_>>()).expect("serialize");
    assert!(!json.contains("alice"));
}

#[test]
fn cardinality_learns_parameter_and_folds_retroactively() {
    let cfg = InventoryConfig {
        param_min_distinct: 5,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    let names = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    // Each user name twice, with two sub-resources: literals that are really parameters.
    for n in names {
        inv.observe(
            &ex("GET", &format!("/profiles/{n}/settings")).build(),
            NOW_NS,
        );
        inv.observe(&ex("GET", &format!("/profiles/{n}")).build(), NOW_NS);
        inv.observe(&ex("POST", &format!("/profiles/{n}")).build(), NOW_NS);
    }
    // Low-cardinality siblings elsewhere stay literal.
    for r in ["feedback", "related"] {
        inv.observe(&ex("GET", &format!("/faq/{r}")).build(), NOW_NS);
    }
    inv.check_consistency().expect("consistent");
    let mut t: Vec<(String, String, u64)> = inv
        .endpoints()
        .map(|r| (r.method.to_string(), r.template.to_string(), r.calls))
        .collect();
    t.sort();
    assert_eq!(
        t,
        vec![
            ("GET".into(), "/faq/feedback".into(), 1),
            ("GET".into(), "/faq/related".into(), 1),
            ("GET".into(), "/profiles/{param}".into(), 8),
            ("GET".into(), "/profiles/{param}/settings".into(), 8),
            ("POST".into(), "/profiles/{param}".into(), 8),
        ]
    );
    // The folded keys are reported as retired, pointing at their replacement.
    let retired = inv.take_retired();
    assert!(retired.iter().any(|r| {
        r.key.ends_with("GET /profiles/alice/settings")
            && r.replaced_by
                .as_deref()
                .is_some_and(|k| k.ends_with("GET /profiles/{param}/settings"))
    }));
    assert!(!retired.iter().any(|r| r.key.contains("{param}")));
}

#[test]
fn endpoint_cap_overflows_into_counted_bucket() {
    let cfg = InventoryConfig {
        max_endpoints_per_service: 10,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    for r in ["a", "b", "c", "d"] {
        for m in methods {
            inv.observe(&ex(m, &format!("/{r}")).build(), NOW_NS);
        }
    }
    assert_eq!(inv.endpoints().filter(|r| !r.overflow).count(), 10);
    let overflow: Vec<_> = inv.endpoints().filter(|r| r.overflow).collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].calls, 10);
    assert_eq!(inv.counters().endpoint_overflow_calls, 10);
    let events = inv.drain_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "inventory.endpoint_overflow")
            .count(),
        1
    );
}

#[test]
fn grpc_endpoint_is_service_and_method() {
    let mut inv = Inventory::new(InventoryConfig {
        param_min_distinct: 3,
        ..InventoryConfig::default()
    });
    // More methods than the learning threshold: gRPC names are never folded into `{param}`.
    for m in ["SayHello", "SayBye", "Stream", "Ping", "Status"] {
        let mut e = ex("POST", &format!("/helloworld.Greeter/{m}")).build();
        e.version = sonde_model::HttpVersion::Http2;
        e.grpc = Some(sonde_model::GrpcInfo {
            service: "helloworld.Greeter".into(),
            method: m.into(),
            status: Some(0),
            ..Default::default()
        });
        let info = inv.observe(&e, NOW_NS);
        assert_eq!(&*info.template, format!("/helloworld.Greeter/{m}"));
    }
    assert_eq!(inv.endpoints().count(), 5);
}

#[test]
fn config_defaults_from_empty_document() {
    let cfg: InventoryConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(cfg, InventoryConfig::default());
    let cfg: InventoryConfig =
        serde_json::from_str(r#"{"salt":"s","param_min_distinct":7}"#).expect("partial config");
    assert_eq!(
        (cfg.salt.as_str(), cfg.param_min_distinct, cfg.max_services),
        ("s", 7, 1024)
    );
}

#[test]
fn braces_and_spaces_in_segments_are_values() {
    let got = templates(
        &["/files/{x}/a", "/files/my%20report/a", "/files/%7Bx%7D/a"],
        InventoryConfig::default(),
    );
    assert_eq!(got, ["/files/{param}/a"]);
}

#[test]
fn undrained_retired_notices_are_bounded() {
    let cfg = InventoryConfig {
        param_min_distinct: 2,
        max_pending_events: 4,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    for p in 0..20 {
        for n in ["a", "b", "c"] {
            inv.observe(&ex("GET", &format!("/p{p}x/{n}/z")).build(), NOW_NS);
        }
    }
    assert!(inv.take_retired().len() <= 4);
    assert!(inv.counters().retired_dropped > 0);
}
