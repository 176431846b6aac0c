//! Hostile input: unbounded path and host cardinality, deep and wide JSON, invalid UTF-8,
//! malformed JWTs, random bytes. Nothing may panic; everything stays bounded and counted.

mod common;

use base64::Engine;
use common::{NOW_NS, ex};
use sonde_inventory::schema::{BodyFacts, WalkOutcome, walk_json};
use sonde_inventory::{AuthScheme, Inventory, InventoryConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

#[test]
fn many_unique_paths_stay_bounded() {
    let cfg = InventoryConfig {
        max_endpoints_per_service: 500,
        max_nodes_per_service: 2000,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let n = 200_000u64;
    for i in 0..n {
        // Letter-only words: nothing typed, only cardinality and the caps can bound them.
        let depth = 1 + (rng.next() % 6) as usize;
        let mut path = String::new();
        for _ in 0..depth {
            path.push('/');
            let len = 3 + (rng.next() % 8) as usize;
            path.push_str(&rng.word(len));
        }
        let method = ["GET", "POST", "PUT"][(i % 3) as usize];
        inv.observe(&ex(method, &path).build(), NOW_NS + i);
    }
    inv.check_consistency().expect("consistent");
    let live = inv.endpoints().count();
    assert!(live <= 501, "{live} endpoints");
    let calls: u64 = inv.endpoints().map(|r| r.calls).sum();
    assert_eq!(calls, n, "every call is counted somewhere");
    let bytes = inv.approx_heap_bytes();
    assert!(bytes < 8 << 20, "{bytes} bytes");
    // Learnt parameters absorbed the random words: few real endpoints, not 200k.
    assert!(inv.endpoints().any(|r| r.template.contains("{param}")));
}

#[test]
fn hostile_hosts_and_methods_are_capped() {
    let cfg = InventoryConfig {
        max_authorities_per_server: 4,
        max_services: 16,
        max_custom_methods: 2,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    let mut rng = Rng(7);
    for i in 0..2000 {
        let host = format!("{}.example.com", rng.word(8));
        inv.observe(&ex("GET", "/").authority(&host).build(), NOW_NS);
        let m = format!("M{}", rng.word(5));
        inv.observe(&ex(&m, "/").build(), NOW_NS);
        inv.observe(
            &ex("GET", "/")
                .server(&format!("10.1.{}.{}:80", i / 250, i % 250))
                .build(),
            NOW_NS,
        );
        inv.observe(
            &ex("BAD METHOD\u{0}", "/").authority("bad host\r\n").build(),
            NOW_NS,
        );
    }
    assert!(inv.services().count() <= 17, "{}", inv.services().count());
    assert!(inv.counters().authorities_merged > 0);
    assert!(inv.counters().service_overflow_calls > 0);
    assert!(inv.counters().methods_merged > 0);
    let methods: std::collections::BTreeSet<&str> = inv.endpoints().map(|r| &*r.method).collect();
    assert!(methods.len() <= 5, "{methods:?}");
    inv.check_consistency().expect("consistent");
}

#[test]
fn deep_and_wide_json_is_bounded() {
    let deep = "[".repeat(1_000_000);
    let mut facts = BodyFacts::default();
    assert_eq!(
        walk_json(deep.as_bytes(), 8, 256, &mut facts),
        WalkOutcome::Truncated
    );
    assert!(facts.fields.len() <= 9);
    let closed = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let mut facts = BodyFacts::default();
    // Levels past the depth bound are skipped by bracket counting, not validated.
    assert_eq!(
        walk_json(closed.as_bytes(), 8, 256, &mut facts),
        WalkOutcome::Complete
    );
    let deepest = facts
        .fields
        .iter()
        .map(|(k, _)| k.matches('.').count())
        .max()
        .unwrap_or(0);
    assert!(deepest <= 9, "{deepest}");
    let nested_ok = format!("{}1{}", "{\"a\":".repeat(50), "}".repeat(50));
    let mut facts = BodyFacts::default();
    assert_eq!(
        walk_json(nested_ok.as_bytes(), 8, 256, &mut facts),
        WalkOutcome::Complete
    );
    let wide: String = format!(
        "{{{}}}",
        (0..100_000)
            .map(|i| format!("\"k{i}x\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut inv = Inventory::default();
    let info = inv.observe(
        &ex("POST", "/wide")
            .req_body("application/json", wide.as_bytes())
            .build(),
        NOW_NS,
    );
    let rec = inv.endpoint(info.endpoint_id).expect("record");
    assert_eq!(rec.request_schema.fields.len(), 256);
    assert!(rec.request_schema.fields_dropped > 0);
    assert_eq!(inv.counters().body_samples_cut, 1);
}

#[test]
fn invalid_utf8_and_garbage_bodies() {
    let mut inv = Inventory::default();
    let garbage: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for ct in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ] {
        inv.observe(
            &ex("POST", "/g/%ff%fe/x")
                .req_body(ct, &garbage)
                .resp_body(ct, b"{\"k\xff\xfe\":\"\xc3\x28 a@b.co\"}")
                .build(),
            NOW_NS,
        );
    }
    let rec = inv.endpoints().next().expect("endpoint");
    assert!(rec.template.contains("{param}"), "{}", rec.template);
    assert!(
        rec.response_schema
            .fields
            .keys()
            .any(|k| k == "$.{invalid}"),
        "{:?}",
        rec.response_schema.fields
    );
    assert!(inv.counters().invalid_json_bodies >= 1);
}

#[test]
fn malformed_jwts_do_not_panic() {
    let e = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let tokens = vec![
        "eyJ..".to_owned(),
        "eyJ.eyJ.".to_owned(),
        format!("{}.{}.", e(b"{\"alg\":\"none\"}"), e(b"[1,2,3]")),
        format!(
            "{}.{}.sig",
            e(b"{\"alg\":5}"),
            e(b"{\"sub\":{\"x\":1},\"exp\":\"soon\",\"aud\":[1,{}]}")
        ),
        format!("{}.{}.sig", e(b"{\"alg\":\"HS256\"}"), e(deep.as_bytes())),
        format!(
            "{}.{}.sig",
            e(b"{\"alg\":\"HS256\"}"),
            e(b"{\"sub\":\"x\",\"exp\":1e400}")
        ),
        format!("eyJ{}.{}.sig", "A".repeat(1 << 20), "B".repeat(10)),
        format!(
            "{}.{}.sig",
            e(b"{\"alg\":\"HS256\"}"),
            e("{\"sub\":\"\u{1F600}\u{1F600}\u{1F600}\"}"
                .repeat(200)
                .as_bytes())
        ),
    ];
    let mut inv = Inventory::default();
    for t in &tokens {
        let info = inv.observe(
            &ex("GET", "/j")
                .header("authorization", &format!("Bearer {t}"))
                .build(),
            NOW_NS,
        );
        assert!(
            matches!(
                info.auth.scheme,
                AuthScheme::BearerJwt | AuthScheme::BearerOpaque
            ),
            "{}",
            &t[..t.len().min(40)]
        );
        if let Some(j) = &info.auth.jwt {
            assert!(j.malformed || j.alg.is_some(), "{j:?}");
            assert!(j.iss.as_ref().is_none_or(|s| s.len() <= 256));
        }
    }
}

#[test]
fn random_bytes_everywhere() {
    let mut rng = Rng(42);
    let mut inv = Inventory::new(InventoryConfig {
        max_endpoints_per_service: 300,
        ..InventoryConfig::default()
    });
    for _ in 0..5_000 {
        let len = (rng.next() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let b = rng.next() as u8;
                // Bias towards characters the parsers care about.
                match b % 8 {
                    0 => b'/',
                    1 => b'{',
                    2 => b'"',
                    3 => b'%',
                    4 => b'@',
                    _ => b,
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let path = format!("/{text}");
        let b = ex(&text.chars().take(8).collect::<String>(), &path)
            .header("authorization", &format!("Bearer eyJ{text}"))
            .header("cookie", &text)
            .header("x-custom", &text)
            .req_body("application/json", &bytes)
            .resp_body("application/json", &bytes);
        let mut exch = b.build();
        exch.request.query = Some(text.clone());
        exch.request.authority = Some(text.clone());
        let _ = inv.observe(&exch, NOW_NS);
    }
    inv.check_consistency().expect("consistent");
    let _ = inv.take_dirty();
    let _ = inv.drain_events();
    for svc in inv.services().cloned().collect::<Vec<_>>() {
        let doc = inv.export_openapi(&svc);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}

#[test]
fn dirty_deltas_and_serde_round_trip() {
    let mut inv = Inventory::default();
    inv.observe(&ex("GET", "/a/1").build(), NOW_NS);
    inv.observe(&ex("GET", "/a/2").build(), NOW_NS);
    inv.observe(&ex("GET", "/b").build(), NOW_NS);
    let first = inv.take_dirty();
    assert_eq!(first.len(), 2);
    assert!(inv.take_dirty().is_empty());
    inv.observe(&ex("GET", "/b").build(), NOW_NS + 5);
    let second = inv.take_dirty();
    assert_eq!(second.len(), 1);
    assert_eq!(&*second[0].template, "/b");
    assert_eq!(second[0].calls, 2);
    assert_eq!(second[0].last_seen_ns, NOW_NS + 5);
    let json = serde_json::to_string(&second[0]).expect("json");
    let back: sonde_inventory::EndpointRecord = serde_json::from_str(&json).expect("back");
    assert_eq!(back, second[0]);
    let latency = back.latency_ns.quantile(0.5).expect("latency");
    assert!((180_000..=220_000).contains(&latency), "{latency}");
}

#[test]
fn cuts_at_character_boundaries() {
    let hasher = sonde_inventory::hash::SaltedHasher::new("");
    let token = format!("eyJ{}é.x.y", "a".repeat(8188));
    let (summary, principal) = sonde_inventory::auth::decode_jwt(&token, &hasher, NOW_NS);
    assert!(summary.malformed);
    assert_eq!(principal.len(), 32);
    let mut cache = sonde_inventory::auth::JwtCache::default();
    let _ = cache.decode(&token, &hasher, NOW_NS);
    let key = format!("{{\"{}é\":1}}", "k".repeat(63));
    let mut facts = BodyFacts::default();
    assert_eq!(
        walk_json(key.as_bytes(), 8, 16, &mut facts),
        WalkOutcome::Complete
    );
    assert!(
        facts
            .fields
            .iter()
            .any(|(p, _)| *p == format!("$.{}", "k".repeat(63))),
        "{:?}",
        facts.fields
    );
}

#[test]
fn global_caps_bound_all_services_together() {
    let cfg = InventoryConfig {
        max_endpoints_total: 50,
        max_nodes_total: 120,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg);
    for s in 0..20 {
        for r in 0..10 {
            inv.observe(
                &ex("GET", &format!("/r{r}/x"))
                    .server(&format!("10.2.0.{s}:80"))
                    .build(),
                NOW_NS,
            );
        }
    }
    assert!(inv.endpoints().filter(|r| !r.overflow).count() <= 50);
    assert_eq!(inv.endpoints().map(|r| r.calls).sum::<u64>(), 200);
    assert!(inv.counters().endpoint_overflow_calls > 0);
    inv.check_consistency().expect("consistent");
}
