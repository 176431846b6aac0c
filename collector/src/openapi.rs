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
        let types: Vec<&String> = self.types.iter().collect();
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

fn path_parameters(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
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
        "bearer" | "jwt" => ("bearerAuth", json!({"type": "http", "scheme": "bearer"})),
        "basic" => ("basicAuth", json!({"type": "http", "scheme": "basic"})),
        "api_key" => (
            "apiKey",
            json!({"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "API key observed; the header name is not recorded by the agent"}),
        ),
        "cookie" => (
            "cookieAuth",
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
        let mut parameters: Vec<Value> = path_parameters(&summary.path_template)
            .into_iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
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
                json!({"content": {"application/json": {"schema": schema}}}),
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
                    json!({"application/json": {"schema": schema}}),
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
            .entry(summary.path_template.clone())
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
            path_template: "/users/{id}".into(),
            call_count: 3,
            auth_schemes: vec!["bearer".into()],
            ..EndpointSummary::default()
        };
        let merged = EndpointUpdate {
            query_params: vec!["expand".into()],
            status_counts: [(200, 2), (404, 1)].into_iter().collect(),
            response_schema: vec![field("id", &["integer"])],
            ..EndpointUpdate::default()
        };
        let (doc, paths) = build("api.example", &[(summary, merged)]);
        assert_eq!(paths, 1);
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/users/{id}"]["get"];
        assert_eq!(op["parameters"][0]["name"], "id");
        assert_eq!(op["parameters"][1]["in"], "query");
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["id"]["type"],
            "integer"
        );
        assert!(op["responses"]["404"].get("content").is_none());
        assert_eq!(op["security"][0]["bearerAuth"], json!([]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
    }
}
