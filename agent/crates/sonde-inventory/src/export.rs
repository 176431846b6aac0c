//! OpenAPI 3.1 export of a service's observed inventory: paths, methods, parameters, body
//! schemas (JSON Schema 2020-12, as 3.1 uses) and the security schemes seen.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::endpoint::{EndpointRecord, ServiceKey};
use crate::inventory::Inventory;
use crate::schema::{BodySchema, JsonTypes};

/// Path template with unique parameter names (`/a/{id}/b/{id}` → `/a/{id}/b/{id2}`), and the
/// parameters in order (name, kind).
fn export_path(template: &str) -> (String, Vec<(String, String)>) {
    let mut out = String::new();
    let mut params: Vec<(String, String)> = Vec::new();
    for seg in template.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        if let Some(kind) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let base: String = kind
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let base = if base.is_empty() {
                "param".to_owned()
            } else {
                base
            };
            let mut name = base.clone();
            let mut n = 2;
            while params.iter().any(|(p, _)| *p == name) {
                name = format!("{base}{n}");
                n += 1;
            }
            out.push('{');
            out.push_str(&name);
            out.push('}');
            params.push((name, kind.to_owned()));
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    (out, params)
}

fn param_schema(kind: &str) -> Value {
    match kind {
        "int" => json!({"type": "integer"}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "date" => json!({"type": "string", "format": "date"}),
        "email" => json!({"type": "string", "format": "email"}),
        "hash" => json!({"type": "string", "pattern": "^[0-9a-fA-F]+$"}),
        _ => json!({"type": "string"}),
    }
}

fn type_value(t: JsonTypes) -> Option<Value> {
    let mut names = t.names();
    if names.contains(&"integer") && names.contains(&"number") {
        names.retain(|n| *n != "integer");
    }
    match names.len() {
        0 => None,
        1 => Some(Value::String(names[0].to_owned())),
        _ => Some(Value::Array(
            names
                .into_iter()
                .map(|n| Value::String(n.to_owned()))
                .collect(),
        )),
    }
}

enum Step<'a> {
    Key(&'a str),
    Items,
}

fn parse_field_path(path: &str) -> Option<Vec<Step<'_>>> {
    let mut rest = path.strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[]") {
            steps.push(Step::Items);
            rest = r;
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (k, r2) = r.split_at(end);
            // `[` inside a key that is not `[]` would be ambiguous: keep the key whole.
            if r2.starts_with('[') && !r2.starts_with("[]") {
                steps.push(Step::Key(r));
                break;
            }
            steps.push(Step::Key(k));
            rest = r2;
        } else {
            return None;
        }
    }
    Some(steps)
}

fn node_at<'a>(root: &'a mut Map<String, Value>, steps: &[Step<'_>]) -> &'a mut Map<String, Value> {
    let mut node = root;
    for step in steps {
        let child = match step {
            Step::Key(k) => {
                let props = node
                    .entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !props.is_object() {
                    *props = Value::Object(Map::new());
                }
                let Value::Object(props) = props else {
                    unreachable!("made an object above")
                };
                props
                    .entry((*k).to_owned())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Step::Items => node
                .entry("items")
                .or_insert_with(|| Value::Object(Map::new())),
        };
        if !child.is_object() {
            *child = Value::Object(Map::new());
        }
        let Value::Object(m) = child else {
            unreachable!("made an object above")
        };
        node = m;
    }
    node
}

/// JSON Schema of an observed body.
pub fn body_schema(schema: &BodySchema) -> Value {
    let mut root = Map::new();
    for (path, f) in &schema.fields {
        let Some(steps) = parse_field_path(path) else {
            continue;
        };
        let node = node_at(&mut root, &steps);
        if let Some(t) = type_value(f.types) {
            node.insert("type".into(), t);
        }
    }
    Value::Object(root)
}

fn security_scheme(key: &str) -> Option<(String, Value)> {
    let (scheme, name) = key.split_once(':').unwrap_or((key, ""));
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Some(match scheme {
        "basic" => (
            "basicAuth".into(),
            json!({"type": "http", "scheme": "basic"}),
        ),
        "bearer_jwt" => (
            "bearerJwt".into(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
        ),
        "bearer_opaque" => (
            "bearerAuth".into(),
            json!({"type": "http", "scheme": "bearer"}),
        ),
        "api_key_header" => (
            format!("apiKeyHeader_{safe}"),
            json!({"type": "apiKey", "in": "header", "name": name}),
        ),
        "api_key_query" => (
            format!("apiKeyQuery_{safe}"),
            json!({"type": "apiKey", "in": "query", "name": name}),
        ),
        "session_cookie" => (
            format!("sessionCookie_{safe}"),
            json!({"type": "apiKey", "in": "cookie", "name": name}),
        ),
        "other" if !name.is_empty() => (
            format!("http_{safe}"),
            json!({"type": "http", "scheme": name}),
        ),
        _ => return None,
    })
}

fn operation(
    rec: &EndpointRecord,
    path_params: &[(String, String)],
    schemes: &mut BTreeMap<String, Value>,
    used_ids: &mut Vec<String>,
) -> Value {
    let mut op = Map::new();
    let base: String = format!("{}_{}", rec.method.to_ascii_lowercase(), rec.template)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = base.clone();
    let mut n = 2;
    while used_ids.contains(&id) {
        id = format!("{base}_{n}");
        n += 1;
    }
    used_ids.push(id.clone());
    op.insert("operationId".into(), Value::String(id));
    op.insert(
        "summary".into(),
        Value::String(format!("Observed {} calls", rec.calls)),
    );
    let mut params: Vec<Value> = path_params
        .iter()
        .map(|(name, kind)| json!({"name": name, "in": "path", "required": true, "schema": param_schema(kind)}))
        .collect();
    for name in rec.query_params.names() {
        params.push(
            json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}),
        );
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    let req_types: Vec<&str> = rec.request_content_types.names().collect();
    if !req_types.is_empty() || !rec.request_schema.fields.is_empty() {
        let mut content = Map::new();
        let schema = body_schema(&rec.request_schema);
        if req_types.is_empty() {
            content.insert("application/json".into(), json!({"schema": schema}));
        }
        for ct in req_types {
            let s = if ct.contains("json") {
                schema.clone()
            } else {
                json!({})
            };
            content.insert(ct.to_owned(), json!({"schema": s}));
        }
        op.insert("requestBody".into(), json!({"content": content}));
    }
    let mut responses = Map::new();
    let resp_schema = body_schema(&rec.response_schema);
    for status in rec.status_counts.keys() {
        let mut r = Map::new();
        r.insert(
            "description".into(),
            Value::String(format!("Observed status {status}")),
        );
        if (200..300).contains(status) && *status != 204 {
            let mut content = Map::new();
            for ct in rec.response_content_types.names() {
                let s = if ct.contains("json") {
                    resp_schema.clone()
                } else {
                    json!({})
                };
                content.insert(ct.to_owned(), json!({"schema": s}));
            }
            if !content.is_empty() {
                r.insert("content".into(), Value::Object(content));
            }
        }
        responses.insert(status.to_string(), Value::Object(r));
    }
    if responses.is_empty() {
        responses.insert(
            "default".into(),
            json!({"description": "No response observed"}),
        );
    }
    op.insert("responses".into(), Value::Object(responses));
    let mut security = Vec::new();
    for key in rec.auth_schemes.names() {
        if key == "none" {
            security.push(json!({}));
        } else if let Some((name, scheme)) = security_scheme(key) {
            security.push(json!({ name.clone(): [] }));
            schemes.insert(name, scheme);
        }
    }
    if !security.is_empty() {
        op.insert("security".into(), Value::Array(security));
    }
    if rec.declared.as_ref().is_some_and(|d| d.deprecated) {
        op.insert("deprecated".into(), Value::Bool(true));
    }
    op.insert(
        "x-sonde-classification".into(),
        Value::String(rec.classification.as_str().into()),
    );
    Value::Object(op)
}

impl Inventory {
    /// OpenAPI 3.1 document of what `service` was observed to serve. Overflow buckets and
    /// methods outside OpenAPI's set are left out (OpenAPI cannot express them).
    pub fn export_openapi(&self, service: &ServiceKey) -> Value {
        let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut schemes = BTreeMap::new();
        let mut used_ids = Vec::new();
        let mut records: Vec<&EndpointRecord> = self
            .service_endpoints(service)
            .filter(|r| !r.overflow)
            .collect();
        records.sort_by(|a, b| (&a.template, &a.method).cmp(&(&b.template, &b.method)));
        for rec in records {
            let method = rec.method.to_ascii_lowercase();
            if !matches!(
                method.as_str(),
                "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
            ) {
                continue;
            }
            let (path, params) = export_path(&rec.template);
            let op = operation(rec, &params, &mut schemes, &mut used_ids);
            paths.entry(path).or_default().insert(method, op);
        }
        let host = service
            .authority
            .as_deref()
            .or(service.address.as_deref())
            .filter(|h| !h.contains(['{', '}']));
        let server_url = host.map_or_else(|| "/".to_owned(), |h| format!("http://{h}"));
        let mut doc = json!({
            "openapi": "3.1.0",
            "info": {
                "title": format!("Observed API of {service}"),
                "version": "observed",
                "description": "Generated by Sonde from observed traffic; values are never included."
            },
            "servers": [{"url": server_url}],
            "paths": paths,
        });
        if !schemes.is_empty() {
            doc["components"] = json!({"securitySchemes": schemes});
        }
        doc
    }
}
