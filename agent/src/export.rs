//! Inventory records in their wire form.
//!
//! [`endpoint_update`] turns one [`EndpointRecord`] into the [`v1::EndpointUpdate`] the agent
//! streams to the collector. Totals are the record's absolute totals (the protocol wants absolute
//! values, so a re-sent update is idempotent). The record keeps no raw values that could carry
//! secrets (query values, header values, body values), and this conversion adds none: only names,
//! kinds, counts and the summaries of the histograms go on the wire.
//!
//! Choices the proto leaves open:
//! - `content_types` holds request and response media types in one map, prefixed `request:` and
//!   `response:` (`response:application/json`), so neither side's count is lost.
//! - Counts past one of the record's caps are reported under the name `{other}` (the inventory's
//!   own placeholder), so the totals of a map still add up.
//! - Field paths of sensitive data are `request|response` + `.header|.query|.body` + the record's
//!   path without its own marker (`$.`, `header.`, `query.`, `form.`): `response.body.user.email`.
//! - Schema paths drop the record's `$.` root marker (`user.email`, `items[].id`); the document
//!   root itself (`$`) becomes the empty path.
//! - The record does not know the HTTP version: an endpoint is gRPC when its method is POST, its
//!   template is `/Service/Method` and a request or response content type was `application/grpc`
//!   (or `application/grpc+…`), else HTTP/1.

use std::net::SocketAddr;

use sonde_inventory::schema::BodySchema;
use sonde_inventory::stats::{CappedCounts, LogHistogram};
use sonde_inventory::{Classification, EndpointRecord, Location, SensitiveField, ServiceKey};
use sonde_proto::v1;

/// Name under which counts past a cap are reported.
pub const OTHER: &str = "{other}";

/// The wire form of one endpoint record.
pub fn endpoint_update(rec: &EndpointRecord) -> v1::EndpointUpdate {
    v1::EndpointUpdate {
        key: Some(endpoint_key(rec)),
        classification: classification(rec.classification).into(),
        first_seen_unix_ns: rec.first_seen_ns,
        last_seen_unix_ns: rec.last_seen_ns,
        call_count: rec.calls,
        status_counts: rec
            .status_counts
            .iter()
            .map(|(status, count)| (u32::from(*status), *count))
            .collect(),
        auth_schemes: counts(&rec.auth_schemes)
            .map(|(name, count)| (name.to_owned(), count))
            .collect(),
        sensitive: rec.sensitive.iter().map(sensitive_field).collect(),
        content_types: content_types(rec),
        query_params: rec.query_params.names().map(str::to_owned).collect(),
        request_schema: schema_fields(&rec.request_schema),
        response_schema: schema_fields(&rec.response_schema),
        latency_us: summary(&rec.latency_ns, 1000),
        request_bytes: summary(&rec.request_bytes, 1),
        response_bytes: summary(&rec.response_bytes, 1),
        callers: callers(&rec.callers),
        served_over_tls: rec.served_over_tls || rec.tls_calls > 0,
        tls_version: tls_field(rec, |t| t.version.as_deref()),
        tls_cipher: tls_field(rec, |t| t.cipher.as_deref()),
        alpn: tls_field(rec, |t| t.alpn.as_deref()),
        sni: tls_field(rec, |t| t.sni.as_deref()),
    }
}

fn tls_field(
    rec: &EndpointRecord,
    f: impl Fn(&sonde_inventory::EndpointTls) -> Option<&str>,
) -> String {
    rec.tls.as_ref().and_then(f).unwrap_or_default().to_string()
}

/// Service, method, path template and protocol of a record.
pub fn endpoint_key(rec: &EndpointRecord) -> v1::EndpointKey {
    v1::EndpointKey {
        service: Some(service_key(&rec.service)),
        method: rec.method.to_string(),
        path_template: rec.template.to_string(),
        protocol: protocol(rec).into(),
    }
}

/// Server address split into IP text and port (the port falls back to the authority's); unknown
/// parts stay empty or 0.
pub fn service_key(service: &ServiceKey) -> v1::ServiceKey {
    let (server_addr, addr_port) = match service.address.as_deref() {
        None => (String::new(), None),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip().to_string(), Some(sa.port())),
            Err(_) => match a.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => (
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port.parse().ok(),
                ),
                _ => (a.to_owned(), None),
            },
        },
    };
    v1::ServiceKey {
        server_addr,
        server_port: u32::from(addr_port.or_else(|| service.port()).unwrap_or(0)),
        authority: service.authority.clone().unwrap_or_default(),
        process: service.process.clone().unwrap_or_default(),
        workload: service.workload.as_deref().map(workload),
        kubernetes_service: service
            .kubernetes_service
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The wire form of a workload identity (labels are the pod's, already bounded in number and
/// length by the identity stage).
pub fn workload(w: &sonde_model::Workload) -> v1::Workload {
    let pod = w.pod.as_ref();
    let text =
        |f: fn(&sonde_model::PodIdentity) -> &String| pod.map(f).cloned().unwrap_or_default();
    v1::Workload {
        name: w.name.clone(),
        container_runtime: w.runtime.map(|r| r.as_str().to_owned()).unwrap_or_default(),
        container_id: w.container_id.clone().unwrap_or_default(),
        container_name: w.container_name.clone().unwrap_or_default(),
        pod_name: text(|p| &p.name),
        pod_uid: text(|p| &p.uid),
        namespace: text(|p| &p.namespace),
        owner_kind: text(|p| &p.workload_kind),
        owner_name: text(|p| &p.workload_name),
        node: text(|p| &p.node),
        labels: pod
            .map(|p| {
                p.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        systemd_unit: w.systemd_unit.clone().unwrap_or_default(),
        executable: w.executable.clone().unwrap_or_default(),
    }
}

pub fn classification(c: Classification) -> v1::Classification {
    match c {
        Classification::Unclassified => v1::Classification::Unknown,
        Classification::Managed => v1::Classification::Managed,
        Classification::Shadow => v1::Classification::Shadow,
        Classification::Zombie => v1::Classification::Zombie,
    }
}

/// gRPC when the record shows a gRPC call (see the module notes), else HTTP/1.
pub fn protocol(rec: &EndpointRecord) -> v1::Protocol {
    let grpc_type = |c: &CappedCounts| {
        c.names()
            .any(|n| n == "application/grpc" || n.starts_with("application/grpc+"))
    };
    if &*rec.method == "POST"
        && is_grpc_path(&rec.template)
        && (grpc_type(&rec.request_content_types) || grpc_type(&rec.response_content_types))
    {
        v1::Protocol::Grpc
    } else if rec.http2_calls > 0 {
        v1::Protocol::Http2
    } else {
        v1::Protocol::Http1
    }
}

/// `/Service/Method` (`/pkg.Service/Method`): two non-empty segments, no template parameter.
fn is_grpc_path(template: &str) -> bool {
    let Some((service, method)) = template
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '{', '}']);
    plain(service) && plain(method)
}

/// (name, count) in name order, then `{other}` for what the cap did not keep.
fn counts(c: &CappedCounts) -> impl Iterator<Item = (&str, u64)> {
    c.iter()
        .chain((c.overflow > 0).then_some((OTHER, c.overflow)))
}

fn content_types(rec: &EndpointRecord) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for (side, c) in [
        ("request", &rec.request_content_types),
        ("response", &rec.response_content_types),
    ] {
        for (name, count) in counts(c) {
            let slot = out.entry(format!("{side}:{name}")).or_insert(0u64);
            *slot = slot.saturating_add(count);
        }
    }
    out
}

fn sensitive_field(f: &SensitiveField) -> v1::SensitiveField {
    v1::SensitiveField {
        kind: f.kind.as_str().to_owned(),
        field_path: field_path(f.location, &f.path),
        count: f.count,
    }
}

/// `response.body.user.email` for (`ResponseBody`, `$.user.email`), `request.query.token` for
/// (`RequestQuery`, `query.token`), `request.header.x-api-key`, `request.body.password` (a form
/// field), `response.body` (a text body as a whole).
pub fn field_path(location: Location, path: &str) -> String {
    let prefix = match location {
        Location::RequestHeader => "request.header",
        Location::RequestQuery => "request.query",
        Location::RequestBody => "request.body",
        Location::ResponseHeader => "response.header",
        Location::ResponseBody => "response.body",
    };
    let rest = ["header.", "query.", "form.", "$."]
        .iter()
        .find_map(|marker| path.strip_prefix(marker))
        .or_else(|| path.strip_prefix('$'))
        .or_else(|| path.strip_prefix("body"))
        .unwrap_or(path);
    if rest.is_empty() {
        prefix.to_owned()
    } else if rest.starts_with('[') || rest.starts_with('.') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// Field paths without the `$.` root marker, with the JSON type names seen there.
fn schema_fields(schema: &BodySchema) -> Vec<v1::SchemaField> {
    schema
        .fields
        .iter()
        .filter(|(_, f)| f.types.0 != 0)
        .map(|(path, f)| v1::SchemaField {
            path: schema_path(path).to_owned(),
            types: f.types.names().into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

fn schema_path(path: &str) -> &str {
    path.strip_prefix("$.")
        .or_else(|| path.strip_prefix('$'))
        .unwrap_or(path)
}

/// Count, p50, p90, p99 and max of a histogram, each value divided by `unit` (rounded to the
/// nearest); `None` when nothing was recorded.
fn summary(h: &LogHistogram, unit: u64) -> Option<v1::Summary> {
    if h.count == 0 {
        return None;
    }
    let scale = |v: u64| {
        if unit <= 1 {
            v
        } else {
            v.saturating_add(unit / 2) / unit
        }
    };
    let q = |p: f64| scale(h.quantile(p).unwrap_or(h.max));
    Some(v1::Summary {
        count: h.count,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: scale(h.max),
    })
}

/// Callers as the record names them (`ip`, `ip[process]` or `[process]`), split into address and
/// process; counts past the cap become one caller with address `{other}`.
fn callers(c: &CappedCounts) -> Vec<v1::Caller> {
    counts(c)
        .map(|(name, count)| {
            let (addr, process) = split_caller(name);
            v1::Caller {
                process: process.to_owned(),
                addr: addr.to_owned(),
                count,
            }
        })
        .collect()
}

/// `10.0.0.9[curl]` → (`10.0.0.9`, `curl`). An IP address never contains `[`, so the first one
/// starts the process name (which may itself contain brackets).
fn split_caller(name: &str) -> (&str, &str) {
    if name == OTHER {
        return (name, "");
    }
    name.split_once('[')
        .and_then(|(addr, rest)| Some((addr, rest.strip_suffix(']')?)))
        .unwrap_or((name, ""))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use sonde_inventory::spec::parse_spec;
    use sonde_inventory::{Inventory, InventoryConfig, SpecScope};
    use sonde_model::{
        Body, ConnId, ConnMeta, Exchange, ExchangeFlags, GrpcInfo, Header, HttpVersion,
        ProcessInfo, Request, Response, Role,
    };

    use super::*;

    const NOW_NS: u64 = 1_780_000_000_000_000_000;
    /// HS256 header, claims `{"iss":"https://id.example.com","sub":"user-42","exp":4102444800}`.
    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJpc3MiOiJodHRwczovL2lkLmV4YW1wbGUuY29tIiwic3ViIjoidXNlci00MiIsImV4cCI6NDEwMjQ0NDgwMH0.\
        c2lnbmF0dXJlLWJ5dGVz";
    const SPEC: &str = r#"{
        "openapi": "3.0.3",
        "info": {"title": "users", "version": "1"},
        "paths": {
            "/users/{id}": {"get": {"responses": {"200": {"description": "a user"}}}},
            "/legacy/report": {"get": {"deprecated": true, "responses": {"200": {"description": "old"}}}}
        }
    }"#;

    fn conn(role: Role, local: &str, remote: &str, comm: &str) -> Arc<ConnMeta> {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test address");
        Arc::new(ConnMeta {
            id: ConnId {
                tgid: 10,
                fd: 5,
                generation: 1,
            },
            role,
            process: ProcessInfo {
                pid: 10,
                comm: comm.into(),
                cgroup_id: 0,
                workload: None,
            },
            local: Some(addr(local)),
            remote: Some(addr(remote)),
        })
    }

    fn body(b: &[u8]) -> Body {
        Body {
            declared_len: Some(b.len() as u64),
            wire_len: b.len() as u64,
            sample: Bytes::copy_from_slice(b),
            ..Body::default()
        }
    }

    /// A call served by `api` on 10.0.0.1:8080 to 10.0.0.9, answered 200 after 200 µs.
    fn exchange(method: &str, target: &str) -> Exchange {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Exchange {
            conn: conn(Role::Server, "10.0.0.1:8080", "10.0.0.9:51000", "api"),
            version: HttpVersion::Http11,
            stream_id: None,
            request: Request {
                method: method.into(),
                authority: Some("api.example.com".into()),
                path,
                query,
                headers: vec![Header::new("user-agent", "test")],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: NOW_NS,
                ts_end_ns: NOW_NS + 1000,
            },
            response: Some(Response {
                status: 200,
                reason: "OK".into(),
                headers: vec![],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: NOW_NS + 100_000,
                ts_end_ns: NOW_NS + 200_000,
            }),
            grpc: None,
            flags: ExchangeFlags::default(),
        }
    }

    fn with_response(mut ex: Exchange, status: u16, content_type: &str, b: &[u8]) -> Exchange {
        if let Some(r) = ex.response.as_mut() {
            r.status = status;
            r.headers.push(Header::new("content-type", content_type));
            r.body = body(b);
        }
        ex
    }

    fn inventory_with_spec(cfg: InventoryConfig) -> Inventory {
        let mut inv = Inventory::new(cfg);
        let spec = parse_spec(Path::new("users.json"), SPEC, SpecScope::default())
            .expect("test spec parses");
        inv.add_spec(spec);
        inv
    }

    fn update_for(inv: &mut Inventory, method: &str, template: &str) -> v1::EndpointUpdate {
        let records = inv.take_dirty();
        let rec = records
            .iter()
            .find(|r| &*r.method == method && &*r.template == template)
            .unwrap_or_else(|| {
                let got: Vec<_> = records.iter().map(|r| r.key.to_string()).collect();
                panic!("no record {method} {template} among {got:?}")
            });
        endpoint_update(rec)
    }

    fn user_calls(inv: &mut Inventory) {
        let mut ok = with_response(
            exchange("GET", "/users/42?expand=roles"),
            200,
            "application/json; charset=utf-8",
            br#"{"id":42,"email":"alice@example.com","roles":["admin"]}"#,
        );
        ok.request
            .headers
            .push(Header::new("authorization", format!("Bearer {JWT}")));
        inv.observe(&ok, NOW_NS);
        let mut missing = with_response(
            exchange("GET", "/users/43"),
            404,
            "application/json",
            br#"{"error":"not found"}"#,
        );
        if let Some(r) = missing.response.as_mut() {
            r.ts_end_ns = NOW_NS + 2_000_000;
        }
        inv.observe(&missing, NOW_NS + 5_000);
    }

    #[test]
    fn user_lookup_maps_every_field() {
        let mut inv = inventory_with_spec(InventoryConfig::default());
        user_calls(&mut inv);
        let u = update_for(&mut inv, "GET", "/users/{id}");

        let key = u.key.clone().expect("key");
        let service = key.service.clone().expect("service");
        assert_eq!(service.server_addr, "10.0.0.1");
        assert_eq!(service.server_port, 8080);
        assert_eq!(service.authority, "api.example.com");
        assert_eq!(service.process, "api");
        assert_eq!(key.method, "GET");
        assert_eq!(key.path_template, "/users/{id}");
        assert_eq!(key.protocol, v1::Protocol::Http1 as i32);
        assert_eq!(u.classification, v1::Classification::Managed as i32);

        assert_eq!(u.first_seen_unix_ns, NOW_NS);
        assert_eq!(u.last_seen_unix_ns, NOW_NS + 5_000);
        assert_eq!(u.call_count, 2);
        assert_eq!(u.status_counts.len(), 2);
        assert_eq!(u.status_counts.get(&200), Some(&1));
        assert_eq!(u.status_counts.get(&404), Some(&1));
        assert_eq!(u.auth_schemes.get("bearer_jwt"), Some(&1));
        assert_eq!(u.auth_schemes.get("none"), Some(&1));

        let email: Vec<_> = u.sensitive.iter().filter(|s| s.kind == "email").collect();
        assert_eq!(email.len(), 1, "{:?}", u.sensitive);
        assert_eq!(email[0].field_path, "response.body.email");
        assert_eq!(email[0].count, 1);

        assert_eq!(u.content_types.get("response:application/json"), Some(&2));
        assert_eq!(u.content_types.len(), 1, "{:?}", u.content_types);
        assert_eq!(u.query_params, vec!["expand".to_string()]);
        assert!(u.request_schema.is_empty());
        let types = |path: &str| {
            u.response_schema
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.types.clone())
        };
        assert_eq!(types("email"), Some(vec!["string".to_string()]));
        assert_eq!(types("id"), Some(vec!["integer".to_string()]));
        assert_eq!(types("error"), Some(vec!["string".to_string()]));

        let latency = u.latency_us.expect("latency summary");
        assert_eq!(latency.count, 2);
        assert_eq!(latency.max, 2_000);
        assert!(latency.p50 >= 180 && latency.p50 <= 220, "{latency:?}");
        assert!(latency.p99 >= 1_800 && latency.p99 <= 2_000, "{latency:?}");
        let request_bytes = u.request_bytes.expect("request bytes summary");
        assert_eq!((request_bytes.count, request_bytes.max), (2, 0));
        let response_bytes = u.response_bytes.expect("response bytes summary");
        assert_eq!(response_bytes.count, 2);
        assert_eq!(response_bytes.max, 55);

        assert_eq!(
            u.callers,
            vec![v1::Caller {
                process: String::new(),
                addr: "10.0.0.9".into(),
                count: 2
            }]
        );
        assert!(!u.served_over_tls);
    }

    #[test]
    fn an_endpoint_is_served_over_tls_once_a_call_was_read_from_tls_plaintext() {
        let mut inv = inventory_with_spec(InventoryConfig::default());
        inv.observe(&exchange("GET", "/users/7"), NOW_NS);
        assert!(!update_for(&mut inv, "GET", "/users/{id}").served_over_tls);
        let mut tls = exchange("GET", "/users/8");
        tls.flags.insert(ExchangeFlags::TLS);
        inv.observe(&tls, NOW_NS + 1);
        assert!(update_for(&mut inv, "GET", "/users/{id}").served_over_tls);
        // A later cleartext call does not take it back: the endpoint is (also) served over TLS.
        inv.observe(&exchange("GET", "/users/9"), NOW_NS + 2);
        assert!(update_for(&mut inv, "GET", "/users/{id}").served_over_tls);
    }

    #[test]
    fn no_raw_secret_or_value_reaches_the_wire() {
        let mut inv = inventory_with_spec(InventoryConfig::default());
        user_calls(&mut inv);
        for rec in inv.endpoints() {
            let text = format!("{:?}", endpoint_update(rec));
            for secret in [
                JWT,
                "c2lnbmF0dXJlLWJ5dGVz",
                "alice@example.com",
                "user-42",
                "expand=roles",
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }

    #[test]
    fn undeclared_and_deprecated_endpoints_are_shadow_and_zombie() {
        let mut inv = inventory_with_spec(InventoryConfig::default());
        inv.observe(&exchange("POST", "/admin/debug"), NOW_NS);
        inv.observe(&exchange("GET", "/legacy/report"), NOW_NS);
        let records = inv.take_dirty();
        let by_template = |t: &str| {
            records
                .iter()
                .find(|r| &*r.template == t)
                .map(endpoint_update)
                .unwrap_or_else(|| panic!("no record {t}"))
        };
        let shadow = by_template("/admin/debug");
        assert_eq!(shadow.classification, v1::Classification::Shadow as i32);
        assert_eq!(shadow.key.map(|k| k.method), Some("POST".to_string()));
        assert_eq!(shadow.auth_schemes.get("none"), Some(&1));
        let zombie = by_template("/legacy/report");
        assert_eq!(zombie.classification, v1::Classification::Zombie as i32);

        let mut plain = Inventory::new(InventoryConfig::default());
        plain.observe(&exchange("GET", "/health"), NOW_NS);
        let u = update_for(&mut plain, "GET", "/health");
        assert_eq!(u.classification, v1::Classification::Unknown as i32);
    }

    #[test]
    fn grpc_calls_are_grpc_other_posts_are_http1() {
        let mut inv = Inventory::new(InventoryConfig::default());
        let mut call = exchange("POST", "/helloworld.Greeter/SayHello");
        call.version = HttpVersion::Http2;
        call.request
            .headers
            .push(Header::new("content-type", "application/grpc"));
        call.grpc = Some(GrpcInfo {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            status: Some(0),
            ..GrpcInfo::default()
        });
        let call = with_response(call, 200, "application/grpc", b"\0\0\0\0\0");
        inv.observe(&call, NOW_NS);
        let json_post = with_response(
            exchange("POST", "/v1.Orders/Create"),
            201,
            "application/json",
            b"{}",
        );
        inv.observe(&json_post, NOW_NS);
        let mut rest_h2 = with_response(exchange("GET", "/health"), 200, "application/json", b"{}");
        rest_h2.version = HttpVersion::Http2;
        inv.observe(&rest_h2, NOW_NS);
        let records = inv.take_dirty();
        let protocol_of = |t: &str| {
            records
                .iter()
                .find(|r| &*r.template == t)
                .map(|r| endpoint_key(r).protocol)
        };
        assert_eq!(protocol_of("/health"), Some(v1::Protocol::Http2 as i32));
        assert_eq!(
            protocol_of("/helloworld.Greeter/SayHello"),
            Some(v1::Protocol::Grpc as i32)
        );
        assert_eq!(
            protocol_of("/v1.Orders/Create"),
            Some(v1::Protocol::Http1 as i32)
        );
    }

    #[test]
    fn client_side_calls_name_the_calling_process_and_caps_report_other() {
        let mut inv = Inventory::new(InventoryConfig {
            max_callers_per_endpoint: 1,
            ..InventoryConfig::default()
        });
        let mut first = exchange("GET", "/status");
        first.conn = conn(Role::Client, "10.0.0.9:40000", "[fd00::1]:443", "curl");
        inv.observe(&first, NOW_NS);
        let mut second = exchange("GET", "/status");
        second.conn = Arc::new(ConnMeta {
            id: ConnId {
                tgid: 11,
                fd: 6,
                generation: 1,
            },
            ..(*conn(Role::Client, "10.0.0.7:40000", "[fd00::1]:443", "wget")).clone()
        });
        inv.observe(&second, NOW_NS);
        let u = update_for(&mut inv, "GET", "/status");
        let service = u.key.and_then(|k| k.service).expect("service");
        assert_eq!(service.server_addr, "fd00::1");
        assert_eq!(service.server_port, 443);
        assert_eq!(service.process, "");
        assert_eq!(
            u.callers,
            vec![
                v1::Caller {
                    process: "curl".into(),
                    addr: "10.0.0.9".into(),
                    count: 1
                },
                v1::Caller {
                    process: String::new(),
                    addr: OTHER.into(),
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn field_paths_name_side_section_and_field() {
        for (location, path, expected) in [
            (
                Location::ResponseBody,
                "$.user.email",
                "response.body.user.email",
            ),
            (
                Location::ResponseBody,
                "$.items[].email",
                "response.body.items[].email",
            ),
            (Location::ResponseBody, "$[].email", "response.body[].email"),
            (Location::ResponseBody, "$", "response.body"),
            (Location::ResponseBody, "body", "response.body"),
            (Location::RequestQuery, "query.token", "request.query.token"),
            (
                Location::RequestHeader,
                "header.x-api-key",
                "request.header.x-api-key",
            ),
            (
                Location::ResponseHeader,
                "header.x-debug-token",
                "response.header.x-debug-token",
            ),
            (
                Location::RequestBody,
                "form.password",
                "request.body.password",
            ),
        ] {
            assert_eq!(field_path(location, path), expected, "{location:?} {path}");
        }
        assert_eq!(schema_path("$"), "");
        assert_eq!(schema_path("$.items[].id"), "items[].id");
        assert_eq!(split_caller("::1[my[app]]"), ("::1", "my[app]"));
        assert_eq!(split_caller("[curl]"), ("", "curl"));
        assert_eq!(split_caller("10.0.0.9"), ("10.0.0.9", ""));
    }

    #[test]
    fn summaries_come_from_the_histogram() {
        assert_eq!(summary(&LogHistogram::default(), 1000), None);
        let mut h = LogHistogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = summary(&h, 1000).expect("summary");
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, 1000);
        assert_eq!(s.p50, (h.quantile(0.5).unwrap_or(0) + 500) / 1000);
        assert!(s.p50 >= 440 && s.p50 <= 560, "{s:?}");
        assert!(s.p90 >= 800 && s.p90 <= 1000, "{s:?}");
        assert!(s.p99 >= s.p90 && s.p99 <= s.max, "{s:?}");
        let bytes = summary(&h, 1).expect("summary");
        assert_eq!(bytes.max, 1_000_000);
    }

    #[test]
    fn a_pod_served_endpoint_carries_its_workload_and_is_named_by_it() {
        let mut w = sonde_model::Workload {
            runtime: Some(sonde_model::ContainerRuntime::CriO),
            container_id: Some("ab".repeat(32)),
            container_name: Some("api".into()),
            pod: Some(sonde_model::PodIdentity {
                uid: "0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c".into(),
                name: "api-0".into(),
                namespace: "shop".into(),
                node: "node-a".into(),
                workload_kind: "StatefulSet".into(),
                workload_name: "api".into(),
                labels: [("app".to_string(), "api".to_string())]
                    .into_iter()
                    .collect(),
            }),
            executable: Some("/usr/bin/api".into()),
            ..Default::default()
        };
        w.name = w.derive_name();
        let mut ex = exchange("GET", "/users/42");
        let mut meta = (*ex.conn).clone();
        meta.process.workload = Some(Arc::new(w));
        ex.conn = Arc::new(meta);
        let mut inv = Inventory::new(InventoryConfig::default());
        inv.observe(&ex, NOW_NS);
        let rec = inv.endpoints().next().expect("endpoint");
        let key = endpoint_key(rec);
        let service = key.service.clone().expect("service");
        let wire = service.workload.clone().expect("workload on the wire");
        assert_eq!(wire.name, "statefulset/shop/api");
        assert_eq!(wire.container_runtime, "cri-o");
        assert_eq!(wire.owner_kind, "StatefulSet");
        assert_eq!(wire.pod_name, "api-0");
        assert_eq!(wire.node, "node-a");
        assert_eq!(wire.labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(wire.executable, "/usr/bin/api");
        assert_eq!(
            service.authority, "",
            "Host headers do not split a pod's service"
        );
        assert_eq!(service.display_name(), "statefulset/shop/api:8080");
        assert_eq!(
            key.display_name(),
            "statefulset/shop/api:8080 GET /users/{int}"
        );
    }
}
