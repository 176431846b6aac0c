//! Declared specs: the VAmPI request mix (from its Postman collection) against a spec derived
//! from VAmPI's own, the OAI examples, malformed specs, and the OpenAPI 3.1 export.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine;
use common::{NOW_NS, corpus, ex};
use serde_json::Value;
use sonde_inventory::{AuthScheme, Classification, Inventory, SpecError, SpecScope};

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sonde-inventory-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp spec");
    p
}

fn jwt(claims: &Value) -> String {
    let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        e(br#"{"alg":"HS256","typ":"JWT"}"#),
        e(claims.to_string().as_bytes()),
        e(b"signature-bytes")
    )
}

/// VAmPI's spec with DELETE /users/v1/{username} and GET /createdb removed, the password change
/// deprecated, and the single-book route moved to v2 (plus a v2 list nobody calls).
fn derived_vampi_spec(original: &str) -> String {
    let mut doc: Value = serde_norway::from_str(original).expect("VAmPI spec parses");
    let paths = doc["paths"].as_object_mut().expect("paths");
    paths.remove("/createdb");
    paths["/users/v1/{username}"]
        .as_object_mut()
        .expect("path item")
        .remove("delete");
    paths["/users/v1/{username}/password"]["put"]["deprecated"] = Value::Bool(true);
    let book = paths.remove("/books/v1/{book_title}").expect("book route");
    paths.insert("/books/v2/{book_title}".into(), book);
    let list = paths["/books/v1"]["get"].clone();
    paths.insert("/books/v2".into(), serde_json::json!({ "get": list }));
    serde_norway::to_string(&doc).expect("yaml out")
}

struct Call {
    method: String,
    path: String,
    body: Option<String>,
    bearer: bool,
    status: u16,
}

/// Requests of the Postman collection: `{{baseUrl}}` dropped, `:var` replaced by the example
/// value (percent-encoded), the status the collection's test expects.
fn postman_calls(collection: &Value) -> Vec<Call> {
    let mut out = Vec::new();
    for item in collection["item"].as_array().expect("items") {
        let req = &item["request"];
        let url = &req["url"];
        let mut path = url["raw"]
            .as_str()
            .expect("raw url")
            .replace("{{baseUrl}}", "");
        for v in url["variable"].as_array().into_iter().flatten() {
            let key = v["key"].as_str().unwrap_or_default();
            let value = v["value"].as_str().unwrap_or_default().replace(' ', "%20");
            path = path.replace(&format!(":{key}"), &value);
        }
        let script = item["event"][0]["script"]["exec"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect::<String>())
            .unwrap_or_default();
        let status = script
            .split("have.status(")
            .nth(1)
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        out.push(Call {
            method: req["method"].as_str().expect("method").to_owned(),
            path,
            body: req["body"]["raw"].as_str().map(str::to_owned),
            bearer: req["auth"]["type"].as_str() == Some("bearer"),
            status,
        });
    }
    out
}

/// Response bodies as VAmPI serves them (the collection has none for these).
fn response_for(method: &str, path: &str, token: &str) -> Option<String> {
    Some(match (method, path) {
        ("GET", "/users/v1") => r#"{"users":[{"email":"mail1@mail.com","username":"name1"},{"email":"mail2@mail.com","username":"name2"}]}"#.into(),
        ("GET", "/users/v1/_debug") => r#"{"users":[{"admin":false,"email":"mail1@mail.com","password":"pass1","username":"name1"}]}"#.into(),
        ("GET", "/users/v1/name1") => r#"{"username":"name1","email":"mail1@mail.com"}"#.into(),
        ("POST", "/users/v1/login") => format!(r#"{{"auth_token":"{token}","message":"Successfully logged in.","status":"success"}}"#),
        ("GET", "/books/v1") => r#"{"Books":[{"book_title":"bookTitle77","user":"name1"}]}"#.into(),
        _ => return None,
    })
}

#[test]
fn vampi_postman_mix_against_derived_spec() {
    let Some(dir) = corpus("openapi/VAmPI") else {
        return;
    };
    let original = std::fs::read_to_string(dir.join("openapi3.yml")).expect("read spec");
    let spec_file = temp_file("vampi-derived.yaml", &derived_vampi_spec(&original));
    let collection: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("VAmPI.postman_collection.json"))
            .expect("read collection"),
    )
    .expect("collection json");
    let calls = postman_calls(&collection);
    assert_eq!(calls.len(), 14, "the collection's request count");

    let mut inv = Inventory::default();
    inv.load_spec(&spec_file, SpecScope::default())
        .expect("derived spec loads");
    let token =
        jwt(&serde_json::json!({"sub": "test1", "iat": 1_779_999_000, "exp": 1_780_003_600}));
    for c in &calls {
        let mut b = ex(&c.method, &c.path)
            .authority("localhost:5000")
            .server("127.0.0.1:5000")
            .status(c.status)
            .header("accept", "application/json");
        if let Some(body) = &c.body {
            b = b.req_body("application/json", body.as_bytes());
        }
        if c.bearer {
            b = b.header("authorization", &format!("Bearer {token}"));
        }
        if let Some(resp) = response_for(&c.method, &c.path, &token) {
            b = b.resp_body("application/json", resp.as_bytes());
        }
        let info = inv.observe(&b.build(), NOW_NS);
        if c.bearer {
            assert_eq!(
                info.auth.scheme,
                AuthScheme::BearerJwt,
                "{} {}",
                c.method,
                c.path
            );
            let j = info.auth.jwt.as_ref().expect("jwt summary");
            assert!(!j.expired && !j.unsigned && !j.malformed);
            assert!(j.sub_hash.is_some() && info.auth.principal.is_some());
        } else {
            assert_eq!(info.auth.scheme, AuthScheme::None);
        }
    }
    // A second round changes counts, not the inventory or its events.
    let first_events = inv.drain_events();
    for c in &calls {
        inv.observe(
            &ex(&c.method, &c.path)
                .authority("localhost:5000")
                .server("127.0.0.1:5000")
                .status(c.status)
                .build(),
            NOW_NS + 1,
        );
    }
    assert!(
        inv.drain_events().is_empty(),
        "events are once per endpoint"
    );

    let set = |class: Classification| -> BTreeSet<String> {
        inv.endpoints()
            .filter(|r| r.classification == class)
            .map(|r| format!("{} {}", r.method, r.template))
            .collect()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        set(Classification::Managed),
        s(&[
            "GET /",
            "GET /books/v1",
            "GET /me",
            "GET /users/v1",
            "GET /users/v1/_debug",
            "GET /users/v1/{username}",
            "POST /books/v1",
            "POST /users/v1/login",
            "POST /users/v1/register",
            "PUT /users/v1/{username}/email",
        ])
    );
    assert_eq!(
        set(Classification::Shadow),
        s(&["DELETE /users/v1/{username}", "GET /createdb"])
    );
    assert_eq!(
        set(Classification::Zombie),
        s(&["GET /books/v1/{param}", "PUT /users/v1/{username}/password"])
    );
    assert_eq!(set(Classification::Unclassified), s(&[]));
    let unused: BTreeSet<String> = inv
        .unused_operations()
        .iter()
        .map(|u| format!("{} {}", u.method, u.path))
        .collect();
    assert_eq!(unused, s(&["GET /books/v2", "GET /books/v2/{book_title}"]));

    // The declared literal `_debug` wins over `{username}`; both rounds counted.
    let by_user = inv
        .endpoints()
        .find(|r| &*r.method == "GET" && &*r.template == "/users/v1/{username}")
        .expect("endpoint");
    assert_eq!(by_user.calls, 2);

    let kinds = |k: &str| {
        first_events
            .iter()
            .filter(|e| e.kind == k)
            .map(|e| e.endpoint.clone().unwrap_or_default())
            .collect::<BTreeSet<_>>()
    };
    let ep = |m: &str| format!("localhost:5000@127.0.0.1:5000[api] {m}");
    assert_eq!(
        kinds("inventory.shadow_endpoint"),
        [ep("DELETE /users/v1/{username}"), ep("GET /createdb")].into()
    );
    assert_eq!(
        kinds("inventory.zombie_endpoint"),
        [
            ep("GET /books/v1/{param}"),
            ep("PUT /users/v1/{username}/password")
        ]
        .into()
    );
    assert_eq!(
        kinds("inventory.unauthenticated_pii"),
        [
            ep("GET /users/v1"),
            ep("GET /users/v1/_debug"),
            ep("GET /users/v1/{username}")
        ]
        .into()
    );
    for e in &first_events {
        assert_eq!(e.count, 1);
        assert!(!e.explanation.is_empty());
        let text = serde_json::to_string(e).expect("anomaly json");
        for raw in ["mail1@mail.com", "pass1", "test1@test1.com", token.as_str()] {
            assert!(!text.contains(raw), "event leaks {raw}: {text}");
        }
    }
    let zombie = first_events
        .iter()
        .find(|e| e.endpoint.as_deref() == Some(ep("GET /books/v1/{param}").as_str()))
        .expect("zombie");
    assert!(
        zombie.explanation.contains("/books/v2/{book_title}"),
        "{}",
        zombie.explanation
    );

    // Sensitive fields per location, never values.
    let login = inv
        .endpoints()
        .find(|r| &*r.template == "/users/v1/login")
        .expect("login");
    let fields: BTreeSet<String> = login
        .sensitive
        .iter()
        .map(|f| format!("{} {} {}", f.location.as_str(), f.path, f.kind.as_str()))
        .collect();
    assert!(
        fields.contains("request_body $.password password"),
        "{fields:?}"
    );
    assert!(
        fields.contains("response_body $.auth_token jwt"),
        "{fields:?}"
    );
    let register = inv
        .endpoints()
        .find(|r| &*r.template == "/users/v1/register")
        .expect("register");
    assert!(
        register
            .sensitive
            .iter()
            .any(|f| f.path == "$.email" && f.kind.as_str() == "email")
    );
    assert!(register.request_schema.fields.contains_key("$.username"));
}

#[test]
fn oai_examples_load_with_base_paths() {
    let Some(dir) = corpus("openapi/OAI-examples") else {
        return;
    };
    let mut inv = Inventory::default();
    let files: Vec<(PathBuf, SpecScope)> = [
        "petstore.yaml",
        "petstore-expanded.yaml",
        "uspto.yaml",
        "api-with-examples.yaml",
        "callback-example.yaml",
        "link-example.yaml",
    ]
    .iter()
    .map(|f| (dir.join(f), SpecScope::default()))
    .collect();
    let errors = inv.load_specs(files);
    assert!(errors.is_empty(), "{errors:?}");
    let petstore = inv
        .specs()
        .find(|s| s.file.ends_with("/petstore.yaml"))
        .expect("petstore");
    assert_eq!(petstore.base_paths, vec!["/v1".to_owned()]);
    let ops: BTreeSet<String> = petstore
        .operations
        .iter()
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();
    assert_eq!(
        ops,
        ["GET /pets", "POST /pets", "GET /pets/{petId}"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let uspto = inv
        .specs()
        .find(|s| s.file.ends_with("uspto.yaml"))
        .expect("uspto");
    assert_eq!(uspto.base_paths, vec!["/ds-api".to_owned()]);
    let info = inv.observe(&ex("GET", "/v1/pets/12").build(), NOW_NS);
    assert_eq!(&*info.template, "/v1/pets/{petId}");
    assert_eq!(info.classification, Classification::Managed);
    let info = inv.observe(&ex("GET", "/ds-api/oa_citations/v1/fields").build(), NOW_NS);
    assert_eq!(&*info.template, "/ds-api/{dataset}/{version}/fields");
    assert_eq!(info.classification, Classification::Managed);
    let info = inv.observe(&ex("DELETE", "/v1/pets").build(), NOW_NS);
    assert_eq!(info.classification, Classification::Shadow);
}

#[test]
fn malformed_spec_names_file_and_position_others_load() {
    let bad = temp_file(
        "broken.yaml",
        "openapi: 3.0.0\ninfo:\n  title: x\npaths:\n  /a:\n    get: [unclosed\n",
    );
    let bad_json = temp_file(
        "broken.json",
        "{\"openapi\": \"3.1.0\",\n \"paths\": {\"/a\": }\n}",
    );
    let not_oas = temp_file("swagger.yaml", "swagger: '2.0'\npaths: {}\n");
    let good = temp_file(
        "good.yaml",
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n      responses: {'200': {description: ok}}\n",
    );
    let mut inv = Inventory::default();
    let errors = inv.load_specs(
        [bad.clone(), bad_json.clone(), not_oas, good].map(|p| (p, SpecScope::default())),
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    match &errors[0] {
        SpecError::Parse {
            file, line, column, ..
        } => {
            assert_eq!(file, &bad);
            assert_eq!(*line, 6, "{}", errors[0]);
            assert!(*column >= 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = errors[1].to_string();
    assert!(
        msg.starts_with(&format!("{}:2:", bad_json.display())),
        "{msg}"
    );
    assert!(matches!(errors[2], SpecError::NotOpenApi { .. }));
    assert_eq!(inv.specs().count(), 1);
    let info = inv.observe(&ex("GET", "/a").build(), NOW_NS);
    assert_eq!(info.classification, Classification::Managed);
}

#[test]
fn spec_loaded_after_traffic_reclassifies() {
    let mut inv = Inventory::default();
    inv.observe(&ex("GET", "/v1/items/5").build(), NOW_NS);
    inv.observe(&ex("GET", "/v2/items/5").build(), NOW_NS);
    assert!(
        inv.endpoints()
            .all(|r| r.classification == Classification::Unclassified)
    );
    let spec = temp_file(
        "items.yaml",
        "openapi: 3.0.3\ninfo: {title: t, version: '2'}\npaths:\n  /v2/items/{id}:\n    get:\n      responses: {'200': {description: ok}}\n",
    );
    inv.load_spec(&spec, SpecScope::default()).expect("loads");
    let class = |inv: &Inventory, t: &str| {
        inv.endpoints()
            .find(|r| &*r.template == t)
            .map(|r| r.classification)
    };
    // Endpoints seen before the spec move to its templates.
    assert_eq!(class(&inv, "/v2/items/{id}"), Some(Classification::Managed));
    assert_eq!(class(&inv, "/v2/items/{int}"), None);
    let retired = inv.take_retired();
    assert!(retired.iter().any(|r| {
        r.key.ends_with("GET /v2/items/{int}")
            && r.replaced_by
                .as_deref()
                .is_some_and(|k| k.ends_with("GET /v2/items/{id}"))
    }));
    inv.check_consistency().expect("consistent");
    // New calls land on the same endpoint.
    let info = inv.observe(&ex("GET", "/v2/items/77").build(), NOW_NS);
    assert_eq!(
        (&*info.template, info.new_endpoint),
        ("/v2/items/{id}", false)
    );
    assert_eq!(class(&inv, "/v1/items/{int}"), Some(Classification::Zombie));
    // Scoped specs do not apply to other services.
    let mut scoped = Inventory::default();
    scoped
        .load_spec(
            &spec,
            SpecScope {
                port: Some(9999),
                ..SpecScope::default()
            },
        )
        .expect("loads");
    let info = scoped.observe(&ex("GET", "/v1/items/5").build(), NOW_NS);
    assert_eq!(info.classification, Classification::Unclassified);
}

#[test]
fn openapi_export_is_valid_and_reimports() {
    let mut inv = Inventory::default();
    let token = jwt(&serde_json::json!({"sub": "u1", "iss": "https://idp.example"}));
    inv.observe(
        &ex("GET", "/api/v1/users/42/orders/7?limit=10&cursor=abc")
            .header("authorization", &format!("Bearer {token}"))
            .resp_body(
                "application/json",
                br#"{"orders":[{"id":7,"total":12.5,"paid":true,"note":null}],"next":"abc"}"#,
            )
            .build(),
        NOW_NS,
    );
    inv.observe(
        &ex("POST", "/api/v1/users")
            .header("x-api-key", "k-123456")
            .req_body("application/json", br#"{"name":"a","email":"a@b.co"}"#)
            .status(201)
            .build(),
        NOW_NS,
    );
    inv.observe(
        &ex("GET", "/api/v1/users/alice@example.com").build(),
        NOW_NS,
    );
    let svc = inv.services().next().expect("service").clone();
    let doc = inv.export_openapi(&svc);
    // Structural rules of OpenAPI 3.1: required fields, path templating, parameters.
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), 3);
    let mut op_ids = BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'));
        let names: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        let unique: BTreeSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "unique path params in {path}");
        for (method, op) in item.as_object().expect("item") {
            assert!(
                [
                    "get", "post", "put", "delete", "patch", "head", "options", "trace"
                ]
                .contains(&method.as_str())
            );
            assert!(op_ids.insert(op["operationId"].as_str().expect("operationId").to_owned()));
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            let path_params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .inspect(|p| assert_eq!(p["required"], true))
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(
                path_params,
                names.iter().copied().collect(),
                "{method} {path}"
            );
            for sec in op["security"].as_array().into_iter().flatten() {
                for name in sec.as_object().expect("requirement").keys() {
                    assert!(
                        doc["components"]["securitySchemes"][name].is_object(),
                        "scheme {name} defined"
                    );
                }
            }
        }
    }
    let orders = &paths["/api/v1/users/{int}/orders/{int2}"]["get"];
    let schema = &orders["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        schema["properties"]["orders"]["items"]["properties"]["total"]["type"],
        "number"
    );
    assert_eq!(
        schema["properties"]["orders"]["items"]["properties"]["id"]["type"],
        "integer"
    );
    let q: BTreeSet<&str> = orders["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(q, ["cursor", "limit"].into());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerJwt"]["bearerFormat"],
        "JWT"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKeyHeader_x_api_key"]["in"],
        "header"
    );
    let text = serde_json::to_string_pretty(&doc).expect("json");
    assert!(!text.contains("alice") && !text.contains("k-123456") && !text.contains("abc\""));
    // A typed OpenAPI 3.1 model accepts it: version, operations, parameters, bodies, responses.
    let typed = oas3::from_json(&text).expect("export parses as OpenAPI 3.1");
    typed.validate_version().expect("3.1.x version");
    assert_eq!(typed.operations().count(), 3);
    for (_, _, op) in typed.operations() {
        let params = op.parameters(&typed).expect("parameters resolve");
        let body = op.request_body(&typed).expect("request body resolves");
        // GETs carry their path/query parameters, the POST its JSON body.
        assert!(
            !params.is_empty() || body.is_some(),
            "{:?}",
            op.operation_id
        );
        assert!(!op.responses(&typed).is_empty());
    }
    // Re-import through our own loader: same operations.
    let file = temp_file("export.json", &text);
    let mut again = Inventory::default();
    let spec = again
        .load_spec(&file, SpecScope::default())
        .expect("export re-imports");
    assert_eq!(spec.openapi, "3.1.0");
    assert_eq!(spec.operations.len(), 3);
    assert!(spec.security_schemes.contains_key("bearerJwt"));
    let info = again.observe(&ex("GET", "/api/v1/users/42/orders/7").build(), NOW_NS);
    assert_eq!(info.classification, Classification::Managed);
}

#[test]
fn undeclared_paths_answered_only_404_are_not_shadow_endpoints_until_served() {
    let spec = temp_file(
        "declared.yaml",
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /v1/items:\n    get:\n      responses: {'200': {description: ok}}\n",
    );
    let mut inv = Inventory::default();
    inv.load_spec(&spec, SpecScope::default()).expect("loads");
    // A scanner's probes: nothing answers them.
    for (method, path, status) in [
        ("GET", "/.env", 404),
        ("GET", "/wp-login.php", 404),
        ("DELETE", "/v1/items", 405),
        ("GET", "/old", 410),
        ("PATCH", "/v1/things", 501),
    ] {
        inv.observe(&ex(method, path).status(status).build(), NOW_NS);
    }
    let shadow = |events: &[sonde_model::Anomaly]| {
        events
            .iter()
            .filter(|e| e.kind == "inventory.shadow_endpoint")
            .count()
    };
    assert_eq!(shadow(&inv.drain_events()), 0);
    // The same undeclared route answering for real is reported, once.
    inv.observe(&ex("GET", "/.env").status(200).build(), NOW_NS);
    inv.observe(&ex("GET", "/.env").status(200).build(), NOW_NS);
    let events = inv.drain_events();
    assert_eq!(shadow(&events), 1, "{events:?}");
    // Auth-protected counts as served: the route exists.
    inv.observe(&ex("GET", "/admin").status(401).build(), NOW_NS);
    assert_eq!(shadow(&inv.drain_events()), 1);
}
