//! OpenAPI 3.1 documents built from what was observed: one per service.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use sonde_proto::v1::{Classification, EndpointSummary, EndpointUpdate, SchemaField};

/// Deepest field path nesting turned into schema (deeper parts are folded into their parent).
const MAX_SCHEMA_DEPTH: usize = 32;

#[derive(Default)]
struct SchemaNode {
    types: BTreeSet<String>,
    properties: BTreeMap<String, SchemaNode>,
    items: Option<Box<SchemaNode>>,
}

impl SchemaNode {
    fn insert(&mut self, path: &str, types: &[String]) {
        let path = path
            .strip_prefix("$.")
            .or_else(|| path.strip_prefix('$'))
            .unwrap_or(path);
        let mut node = self;
        for (depth, segment) in path.split('.').filter(|s| !s.is_empty()).enumerate() {
            if depth >= MAX_SCHEMA_DEPTH {
                break;
            }
            let mut name = segment;
            let mut arrays = 0;
            while let Some(stripped) = name.strip_suffix("[]") {
                name = stripped;
                arrays += 1;
            }
            if !name.is_empty() {
                node.types.insert("object".into());
                node = node.properties.entry(name.to_string()).or_default();
            }
            for _ in 0..arrays {
                node.types.insert("array".into());
                node = node.items.get_or_insert_with(Box::default);
            }
        }
        node.types.extend(types.iter().cloned());
    }

    fn to_json(&self) -> Value {
        let mut schema = Map::new();
        let has_number = self.types.contains("number");
        let types: Vec<&String> = self
            .types
            .iter()
            .filter(|t| !(has_number && t.as_str() == "integer"))
            .collect();
        match types.as_slice() {
            [] => {}
            [only] => {
                schema.insert("type".into(), json!(only));
            }
            many => {
                schema.insert("type".into(), json!(many));
            }
        }
        if !self.properties.is_empty() {
            let properties: Map<String, Value> = self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            schema.insert("properties".into(), Value::Object(properties));
        }
        if let Some(items) = &self.items {
            schema.insert("items".into(), items.to_json());
        }
        Value::Object(schema)
    }
}

fn schema_of(fields: &[SchemaField]) -> Option<Value> {
    if fields.is_empty() {
        return None;
    }
    let mut root = SchemaNode::default();
    for field in fields {
        root.insert(&field.path, &field.types);
    }
    Some(root.to_json())
}

/// The template as an OpenAPI path with unique parameter names (`/a/{int}/b/{int}` becomes
/// `/a/{int}/b/{int2}`), and each parameter's name with the inventory's kind (`int`, `uuid`, ...).
fn export_path(template: &str) -> (String, Vec<(String, String)>) {
    let mut path = String::new();
    let mut params: Vec<(String, String)> = Vec::new();
    for segment in template.split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        let Some(kind) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            path.push_str(segment);
            continue;
        };
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
            "param".to_string()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 2;
        while params.iter().any(|(p, _)| *p == name) {
            name = format!("{base}{n}");
            n += 1;
        }
        path.push('{');
        path.push_str(&name);
        path.push('}');
        params.push((name, kind.to_string()));
    }
    if path.is_empty() {
        path.push('/');
    }
    (path, params)
}

/// Schema of a path parameter from the inventory's parameter kind.
fn parameter_schema(kind: &str) -> Value {
    match kind {
        "int" => json!({"type": "integer"}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "date" => json!({"type": "string", "format": "date"}),
        "email" => json!({"type": "string", "format": "email"}),
        "hash" => json!({"type": "string", "pattern": "^[0-9a-fA-F]+$"}),
        _ => json!({"type": "string"}),
    }
}

/// The most frequent media type seen on one side (`request:` / `response:` prefixed entries),
/// parameters stripped; JSON when none was recorded.
fn media_type(content_types: &std::collections::HashMap<String, u64>, side: &str) -> String {
    let prefix = format!("{side}:");
    content_types
        .iter()
        .filter_map(|(name, count)| name.strip_prefix(&prefix).map(|n| (n, *count)))
        .filter(|(name, _)| name.contains('/'))
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(name, _)| {
            name.split(';')
                .next()
                .unwrap_or(name)
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "application/json".to_string())
}

fn operation_id(method: &str, template: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for c in template.chars() {
        id.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    id
}

/// Security scheme name and definition for an observed auth scheme.
fn security_scheme(scheme: &str) -> Option<(&'static str, Value)> {
    Some(match scheme {
        "bearer_jwt" | "jwt" => (
            "bearerJwt",
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
        ),
        "bearer_opaque" | "bearer" => ("bearerAuth", json!({"type": "http", "scheme": "bearer"})),
        "basic" => ("basicAuth", json!({"type": "http", "scheme": "basic"})),
        "api_key_header" | "api_key" => (
            "apiKeyHeader",
            json!({"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "API key observed in a header; the agent does not record which"}),
        ),
        "api_key_query" => (
            "apiKeyQuery",
            json!({"type": "apiKey", "in": "query", "name": "api_key",
                   "description": "API key observed in the query string"}),
        ),
        "session_cookie" | "cookie" => (
            "sessionCookie",
            json!({"type": "apiKey", "in": "cookie", "name": "session"}),
        ),
        "mtls" => ("mutualTLS", json!({"type": "mutualTLS"})),
        _ => return None,
    })
}

/// Builds the document and returns it with the number of distinct paths.
pub fn build(service: &str, endpoints: &[(EndpointSummary, EndpointUpdate)]) -> (Value, usize) {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemes: BTreeMap<&'static str, Value> = BTreeMap::new();
    for (summary, merged) in endpoints {
        let method = summary.method.to_ascii_lowercase();
        let (path, path_params) = export_path(&summary.path_template);
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|(name, kind)| {
                json!({"name": name, "in": "path", "required": true, "schema": parameter_schema(kind)})
            })
            .collect();
        parameters.extend(merged.query_params.iter().map(
            |name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}),
        ));
        let mut operation = Map::new();
        operation.insert(
            "operationId".into(),
            json!(operation_id(&method, &summary.path_template)),
        );
        operation.insert(
            "summary".into(),
            json!(format!("Observed {} calls", summary.call_count)),
        );
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(schema) = schema_of(&merged.request_schema) {
            operation.insert(
                "requestBody".into(),
                json!({"content": {media_type(&merged.content_types, "request"): {"schema": schema}}}),
            );
        }
        let response_schema = schema_of(&merged.response_schema);
        let mut responses = Map::new();
        let mut statuses: Vec<u32> = merged
            .status_counts
            .keys()
            .copied()
            .filter(|s| (100..600).contains(s))
            .collect();
        statuses.sort_unstable();
        for status in statuses {
            let count = merged.status_counts.get(&status).copied().unwrap_or(0);
            let mut response = Map::new();
            response.insert(
                "description".into(),
                json!(format!("Observed {count} times")),
            );
            if (200..300).contains(&status)
                && let Some(schema) = &response_schema
            {
                response.insert(
                    "content".into(),
                    json!({media_type(&merged.content_types, "response"): {"schema": schema}}),
                );
            }
            responses.insert(status.to_string(), Value::Object(response));
        }
        if responses.is_empty() {
            responses.insert(
                "default".into(),
                json!({"description": "No response observed"}),
            );
        }
        operation.insert("responses".into(), Value::Object(responses));
        let mut security = Vec::new();
        for scheme in summary.auth_schemes.iter() {
            if let Some((name, definition)) = security_scheme(scheme) {
                schemes.insert(name, definition);
                security.push(json!({ name: [] }));
            }
        }
        if !security.is_empty() {
            if summary.unauthenticated {
                security.push(json!({}));
            }
            operation.insert("security".into(), Value::Array(security));
        }
        let classification = Classification::try_from(summary.classification)
            .unwrap_or(Classification::Unknown)
            .short_name();
        operation.insert(
            "x-sonde".into(),
            json!({
                "endpointId": summary.id,
                "classification": classification,
                "callCount": summary.call_count,
                "firstSeenUnixNs": summary.first_seen_unix_ns,
                "lastSeenUnixNs": summary.last_seen_unix_ns,
                "hosts": summary.hosts,
                "sensitiveKinds": summary.sensitive_kinds,
                "unauthenticatedCalls": summary.unauthenticated,
            }),
        );
        paths
            .entry(path)
            .or_default()
            .insert(method, Value::Object(operation));
    }
    let path_count = paths.len();
    let scheme = if endpoints.iter().any(|(s, _)| s.served_over_tls) {
        "https"
    } else {
        "http"
    };
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": service,
            "version": "observed",
            "description": "Built by Sonde from observed traffic; schemas and parameters are what was seen, not what is allowed."
        },
        "servers": [{"url": format!("{scheme}://{service}")}],
        "paths": paths,
    });
    if !schemes.is_empty()
        && let Some(object) = document.as_object_mut()
    {
        object.insert("components".into(), json!({"securitySchemes": schemes}));
    }
    (document, path_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str, types: &[&str]) -> SchemaField {
        SchemaField {
            path: path.into(),
            types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn nested_schema_from_field_paths() {
        let schema = schema_of(&[
            field("user.email", &["string"]),
            field("items[].id", &["integer"]),
            field("items[].tags[]", &["string", "null"]),
        ]);
        assert_eq!(
            schema,
            Some(json!({
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "integer"},
                        "tags": {"type": "array", "items": {"type": ["null", "string"]}}
                    }}},
                    "user": {"type": "object", "properties": {"email": {"type": "string"}}}
                }
            }))
        );
    }

    #[test]
    fn document_has_paths_parameters_and_security() {
        let summary = EndpointSummary {
            id: "ab".into(),
            service: "api.example".into(),
            method: "GET".into(),
            path_template: "/users/{int}/friends/{int}".into(),
            call_count: 3,
            auth_schemes: vec!["bearer_jwt".into()],
            ..EndpointSummary::default()
        };
        let merged = EndpointUpdate {
            query_params: vec!["expand".into()],
            status_counts: [(200, 2), (404, 1)].into_iter().collect(),
            content_types: [
                (
                    "response:application/vnd.api+json; charset=utf-8".to_string(),
                    2,
                ),
                ("response:text/plain".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            response_schema: vec![field("id", &["integer"])],
            ..EndpointUpdate::default()
        };
        let (doc, paths) = build("api.example", &[(summary, merged)]);
        assert_eq!(paths, 1);
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/users/{int}/friends/{int2}"]["get"];
        assert_eq!(op["parameters"][0]["name"], "int");
        assert_eq!(op["parameters"][0]["schema"]["type"], "integer");
        assert_eq!(op["parameters"][1]["name"], "int2");
        assert_eq!(op["parameters"][2]["in"], "query");
        assert_eq!(
            op["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]["properties"]["id"]
                ["type"],
            "integer"
        );
        assert!(op["responses"]["404"].get("content").is_none());
        assert_eq!(op["security"][0]["bearerJwt"], json!([]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerJwt"]["bearerFormat"],
            "JWT"
        );
    }

    #[test]
    fn number_absorbs_integer_and_root_types_apply_to_the_body() {
        let schema = schema_of(&[
            field("", &["array"]),
            field("[].price", &["integer", "number"]),
        ]);
        assert_eq!(
            schema,
            Some(
                json!({"type": "array", "items": {"type": "object", "properties": {
                    "price": {"type": "number"}
                }}})
            )
        );
    }

    #[test]
    fn a_bare_root_template_is_slash() {
        assert_eq!(export_path(""), ("/".to_string(), vec![]));
        assert_eq!(
            export_path("/{}/x"),
            (
                "/{param}/x".to_string(),
                vec![("param".to_string(), String::new())]
            )
        );
    }
}
