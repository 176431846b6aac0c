//! Sensitive-data scanner and auth-scheme tables: positives and negatives.

mod common;

use base64::Engine;
use common::{NOW_NS, ex};
use sonde_inventory::hash::SaltedHasher;
use sonde_inventory::schema::{BodyFacts, WalkOutcome, walk_json};
use sonde_inventory::sensitive::{kind_for_field_name, scan_text, scan_value};
use sonde_inventory::{AuthScheme, Inventory, InventoryConfig, Location, SensitiveKind};

fn kinds(text: &str) -> Vec<&'static str> {
    scan_value(text.as_bytes())
        .iter()
        .map(SensitiveKind::as_str)
        .collect()
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn scanner_positives() {
    let cases: &[(&str, &[&str])] = &[
        ("contact alice.smith+tag@example.co.uk today.", &["email"]),
        ("call +44 20 7946 0958", &["phone"]),
        ("(415) 555-0123", &["phone"]),
        ("415-555-0123", &["phone"]),
        ("card 4111 1111 1111 1111 exp 12/29", &["payment_card"]),
        ("4111-1111-1111-1111", &["payment_card"]),
        ("5105105105105100", &["payment_card"]),
        ("amex 378282246310005", &["payment_card"]),
        ("6011111111111117", &["payment_card"]),
        ("IBAN DE89 3704 0044 0532 0130 00", &["iban"]),
        ("GB82WEST12345698765432", &["iban"]),
        ("ssn 123-45-6789", &["us_ssn"]),
        ("from 10.1.2.3", &["ip_address"]),
        ("2001:db8::1", &["ip_address"]),
        (JWT, &["jwt"]),
        ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", &["jwt"]),
        ("key=AKIAIOSFODNN7EXAMPLE", &["aws_access_key"]),
        ("AIzaSyA-1234567890abcdefghijklmnopqrstu", &["gcp_api_key"]),
        (
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            &["github_token"],
        ),
        ("xoxb-1234567890-abcdefghij", &["slack_token"]),
        ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", &["stripe_key"]),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow", &["private_key"]),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", &["private_key"]),
        (
            "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
            &["azure_storage_key"],
        ),
        ("mail bob@example.org or 10.0.0.7", &["email", "ip_address"]),
    ];
    for (text, want) in cases {
        assert_eq!(kinds(text), *want, "{text}");
    }
}

#[test]
fn scanner_negatives() {
    let cases: &[&str] = &[
        "order 1234567890123456",
        "4111111111111112",
        "4929123456789012",
        "version 1.2.3",
        "999-45-6789",
        "000-12-3456",
        "user@localhost",
        "AKIA1234",
        "2026-08-16",
        "256.1.1.1",
        "DE89 3704 0044 0532 0130 01",
        "eyJhbGciOi",
        "ghp_short",
        "12:30:45",
        "abc123def456",
        "tracking 9400111899223197428490",
        "pk_live_publishable_key_is_public_0000",
        "-----BEGIN CERTIFICATE-----",
        "",
    ];
    for text in cases {
        assert_eq!(kinds(text), Vec::<&str>::new(), "{text}");
    }
}

#[test]
fn field_names() {
    let cases: &[(&str, Option<SensitiveKind>)] = &[
        ("password", Some(SensitiveKind::Password)),
        ("new_password", Some(SensitiveKind::Password)),
        ("userPasswd", Some(SensitiveKind::Password)),
        ("client_secret", Some(SensitiveKind::Secret)),
        ("access_token", Some(SensitiveKind::Secret)),
        ("x-api-key", Some(SensitiveKind::Secret)),
        ("AWS_SECRET_ACCESS_KEY", Some(SensitiveKind::Secret)),
        ("token_type", None),
        ("username", None),
        ("passwordPolicy", None),
    ];
    for (name, want) in cases {
        assert_eq!(kind_for_field_name(name), *want, "{name}");
    }
}

#[test]
fn json_paths_types_and_kinds() {
    let body = br#"{"user":{"email":"a@b.co","phone":"4155550123","card":4111111111111111,"password":"hunter2","tags":["x",1,null],
        "addresses":[{"ip":"10.2.3.4"},{"ip":"10.2.3.5"}],"alice@example.com":{"n":1},"esc":"caf\u00e9 \u0061lice@example.com"},"ok":true}"#;
    let mut facts = BodyFacts::default();
    assert_eq!(walk_json(body, 8, 256, &mut facts), WalkOutcome::Complete);
    let get = |p: &str| {
        facts
            .fields
            .iter()
            .find(|(k, _)| k == p)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("{p} missing: {:?}", facts.fields))
    };
    assert!(get("$.user.email").kinds.contains(SensitiveKind::Email));
    assert!(get("$.user.phone").kinds.contains(SensitiveKind::Phone));
    assert!(
        get("$.user.card")
            .kinds
            .contains(SensitiveKind::PaymentCard)
    );
    assert!(
        get("$.user.password")
            .kinds
            .contains(SensitiveKind::Password)
    );
    assert!(
        get("$.user.addresses[].ip")
            .kinds
            .contains(SensitiveKind::IpAddress)
    );
    assert!(get("$.user.esc").kinds.contains(SensitiveKind::Email));
    assert_eq!(get("$.user.tags[]").types, 16 | 4 | 1);
    assert_eq!(get("$.ok").types, 2);
    // Keys that are values become placeholders.
    assert!(facts.fields.iter().any(|(k, _)| k == "$.user.{email}.n"));
    assert!(!facts.fields.iter().any(|(k, _)| k.contains("alice")));
    // A cut sample keeps what came before the cut.
    let mut cut = BodyFacts::default();
    assert_eq!(
        walk_json(&body[..40], 8, 256, &mut cut),
        WalkOutcome::Truncated
    );
    assert!(
        cut.fields
            .iter()
            .any(|(k, f)| k == "$.user.email" && f.kinds.contains(SensitiveKind::Email))
    );
    let mut bad = BodyFacts::default();
    assert_eq!(
        walk_json(b"{\"a\":1,}", 8, 256, &mut bad),
        WalkOutcome::Invalid { offset: 7 }
    );
    let mut trailing = BodyFacts::default();
    assert!(matches!(
        walk_json(b"{} x", 8, 256, &mut trailing),
        WalkOutcome::Invalid { .. }
    ));
}

#[test]
fn sensitive_fields_per_location_in_inventory() {
    let mut inv = Inventory::default();
    let info = inv.observe(
        &ex("POST", "/signup?email=carol%40example.com&ref=x")
            .header("x-forwarded-for", "203.0.113.7")
            .req_body(
                "application/x-www-form-urlencoded",
                b"user=carol&password=s3cret&card=4111+1111+1111+1111",
            )
            .resp_body("text/plain", b"welcome, your SSN 123-45-6789 is on file")
            .build(),
        NOW_NS,
    );
    let got: Vec<(Location, &str, SensitiveKind)> = info
        .sensitive
        .iter()
        .map(|h| (h.location, h.path.as_str(), h.kind))
        .collect();
    for want in [
        (
            Location::RequestHeader,
            "header.x-forwarded-for",
            SensitiveKind::IpAddress,
        ),
        (Location::RequestQuery, "query.email", SensitiveKind::Email),
        (
            Location::RequestBody,
            "form.password",
            SensitiveKind::Password,
        ),
        (
            Location::RequestBody,
            "form.card",
            SensitiveKind::PaymentCard,
        ),
        (Location::ResponseBody, "body", SensitiveKind::UsSsn),
    ] {
        assert!(got.contains(&want), "{want:?} not in {got:?}");
    }
    assert_eq!(got.len(), 5, "{got:?}");
    let rec = inv.endpoint(info.endpoint_id).expect("record");
    assert_eq!(rec.sensitive.len(), 5);
    assert_eq!(
        rec.query_params.names().collect::<Vec<_>>(),
        ["email", "ref"]
    );
    let json = serde_json::to_string(rec).expect("json");
    for raw in ["carol", "s3cret", "4111", "203.0.113.7", "6789"] {
        assert!(!json.contains(raw), "record leaks {raw}");
    }
    let events = inv.drain_events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "inventory.unauthenticated_pii"
                && e.evidence.field_kinds == ["us_ssn"])
    );
    assert!(
        events
            .iter()
            .all(|e| !e.evidence.request_line.contains("carol")),
        "{events:?}"
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn token(header: &str, claims: &str, sig: &str) -> String {
    format!("{}.{}.{}", b64(header), b64(claims), sig)
}

#[test]
fn auth_schemes_table() {
    let now_s = (NOW_NS / 1_000_000_000) as i64;
    let valid = token(
        r#"{"alg":"RS256","kid":"k1"}"#,
        &format!(
            r#"{{"sub":"u1","iss":"https://idp","aud":["api","web"],"exp":{},"iat":{}}}"#,
            now_s + 60,
            now_s - 60
        ),
        "c2ln",
    );
    let expired = token(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sub":"u1","iss":"https://idp","exp":{}}}"#, now_s - 1),
        "c2ln",
    );
    let none = token(r#"{"alg":"none"}"#, r#"{"sub":"u2","nbf":9999999999}"#, "");
    // (request headers, query, expected scheme, expected credential or scheme name)
    type AuthCase<'a> = (
        Vec<(&'a str, String)>,
        Option<&'a str>,
        AuthScheme,
        Option<&'a str>,
    );
    let cases: Vec<AuthCase<'_>> = vec![
        (vec![], None, AuthScheme::None, None),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            None,
            AuthScheme::Basic,
            None,
        ),
        (
            vec![("authorization", format!("Bearer {valid}"))],
            None,
            AuthScheme::BearerJwt,
            None,
        ),
        (
            vec![("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAA".into())],
            None,
            AuthScheme::BearerOpaque,
            None,
        ),
        (
            vec![("authorization", "Bearer eyJnotjson.eyJ!!.x".into())],
            None,
            AuthScheme::BearerOpaque,
            None,
        ),
        (
            vec![("authorization", "Bearer eyJub3Rqc29u.eyJ4.x".into())],
            None,
            AuthScheme::BearerJwt,
            None,
        ),
        (
            vec![("x-api-key", "k-12345".into())],
            None,
            AuthScheme::ApiKeyHeader,
            Some("x-api-key"),
        ),
        (
            vec![("Api-Key", "k-12345".into())],
            None,
            AuthScheme::ApiKeyHeader,
            Some("api-key"),
        ),
        (
            vec![],
            Some("q=1&api_key=k-12345"),
            AuthScheme::ApiKeyQuery,
            Some("api_key"),
        ),
        (vec![], Some("access_token="), AuthScheme::None, None),
        (
            vec![("cookie", "theme=dark; sessionid=abc123".into())],
            None,
            AuthScheme::SessionCookie,
            Some("sessionid"),
        ),
        (
            vec![("cookie", "theme=dark".into())],
            None,
            AuthScheme::None,
            None,
        ),
        (
            vec![("authorization", "Digest username=\"u\", realm=\"r\"".into())],
            None,
            AuthScheme::Other,
            Some("digest"),
        ),
        (
            vec![("authorization", "Bearer ".into())],
            None,
            AuthScheme::None,
            None,
        ),
    ];
    let mut inv = Inventory::default();
    for (headers, query, scheme, name) in cases {
        let target = match query {
            Some(q) => format!("/r?{q}"),
            None => "/r".to_owned(),
        };
        let mut b = ex("GET", &target);
        for (n, v) in &headers {
            b = b.header(n, v);
        }
        let info = inv.observe(&b.build(), NOW_NS);
        assert_eq!(info.auth.scheme, scheme, "{headers:?} {query:?}");
        assert_eq!(
            info.auth
                .credential_name
                .as_deref()
                .or(info.auth.other_scheme.as_deref()),
            name,
            "{headers:?}"
        );
        assert_eq!(
            info.auth.principal.is_some(),
            scheme != AuthScheme::None,
            "{headers:?}"
        );
        for (_, v) in &headers {
            let p = info.auth.principal.clone().unwrap_or_default();
            assert!(!v.contains(&p) || p.is_empty());
        }
    }
    let look = |inv: &mut Inventory, t: &str| {
        inv.observe(
            &ex("GET", "/r")
                .header("authorization", &format!("Bearer {t}"))
                .build(),
            NOW_NS,
        )
        .auth
    };
    let a = look(&mut inv, &valid);
    let j = a.jwt.expect("claims");
    assert_eq!(
        (j.alg.as_deref(), j.kid.as_deref(), j.iss.as_deref()),
        (Some("RS256"), Some("k1"), Some("https://idp"))
    );
    assert_eq!(j.aud, ["api", "web"]);
    assert!(!j.expired && !j.unsigned && !j.malformed && !j.not_yet_valid);
    let e = look(&mut inv, &expired);
    assert!(e.jwt.as_ref().is_some_and(|j| j.expired));
    // Same iss + sub: same principal, whatever the token.
    assert_eq!(a.principal, e.principal);
    let n = look(&mut inv, &none).jwt.expect("claims");
    assert!(n.unsigned && n.not_yet_valid);
    // Basic: principal is the user, not the password.
    let basic = |inv: &mut Inventory, cred: &str| {
        inv.observe(
            &ex("GET", "/r")
                .header(
                    "authorization",
                    &format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(cred)
                    ),
                )
                .build(),
            NOW_NS,
        )
        .auth
        .principal
    };
    assert_eq!(basic(&mut inv, "user:pass"), basic(&mut inv, "user:other"));
    assert_ne!(basic(&mut inv, "user:pass"), basic(&mut inv, "admin:pass"));
    // The salt changes every principal.
    let mut salted = Inventory::new(InventoryConfig {
        salt: "fleet-1".into(),
        ..InventoryConfig::default()
    });
    assert_ne!(look(&mut salted, &valid).principal, a.principal);
    assert_eq!(
        Some(SaltedHasher::new("").hash("jwt_sub", &[b"u1"])),
        j.sub_hash.clone()
    );
    // A cached token is re-evaluated against the call time.
    let later = inv
        .observe(
            &ex("GET", "/r")
                .header("authorization", &format!("Bearer {valid}"))
                .build(),
            NOW_NS + 3_600_000_000_000,
        )
        .auth;
    assert!(later.jwt.is_some_and(|j| j.expired));
}

#[test]
fn credential_in_query_event_once() {
    let mut inv = Inventory::default();
    for k in ["AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLF"] {
        inv.observe(
            &ex("GET", &format!("/download?key={k}&f=1")).build(),
            NOW_NS,
        );
    }
    let events = inv.drain_events();
    let hits: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "inventory.credential_in_query")
        .collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].evidence.request_line,
        "GET /download?key={redacted}&f={redacted}"
    );
    assert!(
        hits[0]
            .evidence
            .field_kinds
            .contains(&"aws_access_key".to_owned())
    );
    assert!(hits[0].principal_hash.is_some());
    assert!(
        !serde_json::to_string(&events)
            .expect("json")
            .contains("AKIA")
    );
    let _ = scan_text(b"");
}
