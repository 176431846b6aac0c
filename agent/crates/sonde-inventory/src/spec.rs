//! Declared OpenAPI 3.0/3.1 specs (YAML or JSON): operations with their full paths (server base
//! path + path), and the managed / shadow / zombie verdict for observed endpoints.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::endpoint::{Classification, DeclaredRef, ServiceKey};
use crate::error::SpecError;

/// Which services a spec describes. Empty fields match any service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecScope {
    /// Host of the authority (port ignored), case-insensitive.
    pub authority: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    /// Server process name (`comm`).
    pub process: Option<String>,
}

impl SpecScope {
    pub fn matches(&self, svc: &ServiceKey) -> bool {
        if let Some(a) = &self.authority {
            let host = svc
                .authority
                .as_deref()
                .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h));
            if !host.is_some_and(|h| h.eq_ignore_ascii_case(a)) {
                return false;
            }
        }
        if let Some(p) = self.port
            && svc.port() != Some(p)
        {
            return false;
        }
        if let Some(p) = &self.process
            && svc.process.as_deref() != Some(p.as_str())
        {
            return false;
        }
        true
    }
}

/// A declared parameter of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredParam {
    pub name: String,
    /// `path`, `query`, `header`, `cookie`.
    pub location: String,
    pub required: bool,
}

/// One declared operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredOperation {
    /// Upper case.
    pub method: String,
    /// Path as declared (without server base path).
    pub path: String,
    pub operation_id: Option<String>,
    pub deprecated: bool,
    pub parameters: Vec<DeclaredParam>,
    /// Names of the security schemes that may authorise it (empty: none required).
    pub security: Vec<String>,
}

/// A loaded spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredSpec {
    /// File name (or the name given to `parse_spec`).
    pub file: String,
    pub openapi: String,
    pub title: Option<String>,
    /// Base paths from `servers` (`""` for a server at the root).
    pub base_paths: Vec<String>,
    pub operations: Vec<DeclaredOperation>,
    /// Security scheme name → type (`http`, `apiKey`, `oauth2`, ...).
    pub security_schemes: BTreeMap<String, String>,
    pub scope: SpecScope,
}

#[derive(Deserialize)]
struct RawDoc {
    openapi: Option<serde_json::Value>,
    #[serde(default)]
    info: Option<RawInfo>,
    #[serde(default)]
    servers: Vec<RawServer>,
    #[serde(default)]
    paths: BTreeMap<String, RawPathItem>,
    #[serde(default)]
    security: Option<Vec<BTreeMap<String, serde::de::IgnoredAny>>>,
    #[serde(default)]
    components: Option<RawComponents>,
}

#[derive(Deserialize, Default)]
struct RawInfo {
    title: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawComponents {
    #[serde(default, rename = "securitySchemes")]
    security_schemes: BTreeMap<String, RawSecurityScheme>,
}

#[derive(Deserialize, Default)]
struct RawSecurityScheme {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawServer {
    url: String,
    #[serde(default)]
    variables: BTreeMap<String, RawServerVar>,
}

#[derive(Deserialize)]
struct RawServerVar {
    default: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawPathItem {
    get: Option<RawOp>,
    put: Option<RawOp>,
    post: Option<RawOp>,
    delete: Option<RawOp>,
    options: Option<RawOp>,
    head: Option<RawOp>,
    patch: Option<RawOp>,
    trace: Option<RawOp>,
    #[serde(default)]
    parameters: Vec<RawParam>,
    servers: Option<Vec<RawServer>>,
}

#[derive(Deserialize, Default)]
struct RawOp {
    #[serde(rename = "operationId")]
    operation_id: Option<String>,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    parameters: Vec<RawParam>,
    security: Option<Vec<BTreeMap<String, serde::de::IgnoredAny>>>,
}

#[derive(Deserialize, Default)]
struct RawParam {
    name: Option<String>,
    #[serde(rename = "in")]
    location: Option<String>,
    #[serde(default)]
    required: bool,
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Base path of a server URL: `http://h:5000` → `""`, `https://h/v2` → `/v2`, `/api/v3` →
/// `/api/v3`; `{var}` replaced by its default.
fn base_path(server: &RawServer) -> String {
    let mut url = server.url.clone();
    for (name, var) in &server.variables {
        if let Some(d) = &var.default {
            url = url.replace(&format!("{{{name}}}"), &value_text(d));
        }
    }
    let path = match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            rest.find('/').map_or("", |p| &rest[p..])
        }
        None => url.as_str(),
    };
    let trimmed = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Reads and parses a spec file (YAML or JSON, by content).
pub fn load_spec_file(path: &Path, scope: SpecScope) -> Result<DeclaredSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        file: path.to_owned(),
        source,
    })?;
    parse_spec(path, &text, scope)
}

/// Parses spec text; `file` names it in errors.
/// A parser's message cut to a line's length: serde quotes the offending value, which for a
/// file that is not a spec at all (a path typed wrong) can be the whole file.
fn short_message(message: String) -> String {
    const MAX: usize = 160;
    if message.chars().count() <= MAX {
        return message;
    }
    let mut cut: String = message.chars().take(MAX).collect();
    cut.push('…');
    cut
}

pub fn parse_spec(file: &Path, text: &str, scope: SpecScope) -> Result<DeclaredSpec, SpecError> {
    let is_json = text.trim_start().starts_with('{');
    let doc: RawDoc = if is_json {
        serde_json::from_str(text).map_err(|e| SpecError::Parse {
            file: file.to_owned(),
            line: e.line(),
            column: e.column(),
            message: short_message(e.to_string()),
        })?
    } else {
        serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            SpecError::Parse {
                file: file.to_owned(),
                line,
                column,
                message: short_message(e.to_string()),
            }
        })?
    };
    let version = doc.openapi.as_ref().map(value_text).unwrap_or_default();
    if !version.starts_with("3.") {
        return Err(SpecError::NotOpenApi {
            file: file.to_owned(),
            message: if version.is_empty() {
                "no `openapi` field".into()
            } else {
                format!("unsupported version {version}")
            },
        });
    }
    let mut base_paths: Vec<String> = doc.servers.iter().map(base_path).collect();
    if base_paths.is_empty() {
        base_paths.push(String::new());
    }
    base_paths.dedup();
    let root_security = security_names(doc.security.as_ref()).unwrap_or_default();
    let mut operations = Vec::new();
    for (path, item) in &doc.paths {
        if !path.starts_with('/') {
            continue;
        }
        let item_bases: Option<Vec<String>> = item
            .servers
            .as_ref()
            .map(|s| s.iter().map(base_path).collect());
        let ops = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let mut parameters: Vec<DeclaredParam> = Vec::new();
            for p in item.parameters.iter().chain(op.parameters.iter()) {
                let (Some(name), Some(location)) = (&p.name, &p.location) else {
                    continue;
                };
                parameters.retain(|q| !(q.name == *name && q.location == *location));
                parameters.push(DeclaredParam {
                    name: name.clone(),
                    location: location.clone(),
                    required: p.required,
                });
            }
            let security =
                security_names(op.security.as_ref()).unwrap_or_else(|| root_security.clone());
            // Path-level servers override the document's; keep them as extra base paths.
            if let Some(bases) = &item_bases {
                for b in bases {
                    if !base_paths.contains(b) {
                        base_paths.push(b.clone());
                    }
                }
            }
            operations.push(DeclaredOperation {
                method: method.to_owned(),
                path: path.clone(),
                operation_id: op.operation_id.clone(),
                deprecated: op.deprecated,
                parameters,
                security,
            });
        }
    }
    let security_schemes = doc
        .components
        .map(|c| {
            c.security_schemes
                .into_iter()
                .map(|(k, v)| (k, v.kind.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok(DeclaredSpec {
        file: file.display().to_string(),
        openapi: version,
        title: doc.info.and_then(|i| i.title).map(|t| value_text(&t)),
        base_paths,
        operations,
        security_schemes,
        scope,
    })
}

fn security_names(s: Option<&Vec<BTreeMap<String, serde::de::IgnoredAny>>>) -> Option<Vec<String>> {
    s.map(|reqs| {
        let mut names: Vec<String> = reqs.iter().flat_map(|r| r.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    })
}

/// A segment of a declared path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatSeg {
    Literal(String),
    Param(String),
}

/// A segment of an observed path or template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedSeg<'a> {
    Literal(&'a str),
    Param,
}

#[derive(Clone, Debug)]
struct CompiledPath {
    segs: Vec<PatSeg>,
    /// Declared path (without base).
    path: String,
    /// Indices of the operations on this path.
    ops: Vec<usize>,
}

#[derive(Clone, Debug)]
struct CompiledSpec {
    spec: DeclaredSpec,
    paths: Vec<CompiledPath>,
}

fn split_pattern(full: &str) -> Vec<PatSeg> {
    full.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match (s.find('{'), s.find('}')) {
            (Some(a), Some(b)) if a < b => PatSeg::Param(s[a + 1..b].to_owned()),
            _ => PatSeg::Literal(s.to_owned()),
        })
        .collect()
}

/// A declared path matched by an observed path.
#[derive(Clone, Copy, Debug)]
pub struct PathMatch {
    spec: usize,
    path: usize,
}

/// The verdict for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub classification: Classification,
    pub declared: Option<DeclaredRef>,
    pub reason: Option<String>,
}

/// All loaded specs.
#[derive(Clone, Debug, Default)]
pub struct SpecSet {
    specs: Vec<CompiledSpec>,
}

fn version_number(s: &str) -> Option<u32> {
    let rest = s.strip_prefix('v').or_else(|| s.strip_prefix('V'))?;
    if rest.is_empty() || !rest.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

impl SpecSet {
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn add(&mut self, spec: DeclaredSpec) {
        let mut paths: Vec<CompiledPath> = Vec::new();
        for (i, op) in spec.operations.iter().enumerate() {
            for base in &spec.base_paths {
                let full = format!("{base}{}", op.path);
                let segs = split_pattern(&full);
                match paths.iter_mut().find(|p| p.segs == segs) {
                    Some(p) => p.ops.push(i),
                    None => paths.push(CompiledPath {
                        segs,
                        path: op.path.clone(),
                        ops: vec![i],
                    }),
                }
            }
        }
        self.specs.push(CompiledSpec { spec, paths });
    }

    pub fn specs(&self) -> impl Iterator<Item = &DeclaredSpec> {
        self.specs.iter().map(|c| &c.spec)
    }

    pub fn in_scope(&self, svc: &ServiceKey) -> bool {
        self.specs.iter().any(|c| c.spec.scope.matches(svc))
    }

    /// Best declared path for observed segments: every literal of the pattern equal, parameters
    /// matching any segment; the most literal matches wins (`/users/login` over `/users/{name}`).
    pub fn best_match(&self, svc: &ServiceKey, segs: &[ObservedSeg<'_>]) -> Option<PathMatch> {
        let mut best: Option<(usize, PathMatch)> = None;
        for (si, c) in self.specs.iter().enumerate() {
            if !c.spec.scope.matches(svc) {
                continue;
            }
            for (pi, p) in c.paths.iter().enumerate() {
                if p.segs.len() != segs.len() {
                    continue;
                }
                let mut score = 0;
                let ok = p.segs.iter().zip(segs).all(|(d, o)| match (d, o) {
                    (PatSeg::Literal(l), ObservedSeg::Literal(s)) => {
                        score += 1;
                        l == s
                    }
                    (PatSeg::Literal(_), ObservedSeg::Param) => false,
                    (PatSeg::Param(_), _) => true,
                });
                if ok && best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, PathMatch { spec: si, path: pi }));
                }
            }
        }
        best.map(|(_, m)| m)
    }

    /// Parameter name of a matched declared path at segment `i`, if that position is a parameter.
    pub fn param_name(&self, m: PathMatch, i: usize) -> Option<&str> {
        match self.specs.get(m.spec)?.paths.get(m.path)?.segs.get(i)? {
            PatSeg::Param(n) => Some(n),
            PatSeg::Literal(_) => None,
        }
    }

    /// Managed / shadow / zombie for an endpoint (template segments) of a service.
    pub fn classify(&self, svc: &ServiceKey, method: &str, segs: &[ObservedSeg<'_>]) -> Verdict {
        if !self.in_scope(svc) {
            return Verdict {
                classification: Classification::Unclassified,
                declared: None,
                reason: None,
            };
        }
        if let Some(m) = self.best_match(svc, segs) {
            let (Some(c), Some(p)) = (
                self.specs.get(m.spec),
                self.specs.get(m.spec).and_then(|c| c.paths.get(m.path)),
            ) else {
                return Verdict {
                    classification: Classification::Shadow,
                    declared: None,
                    reason: None,
                };
            };
            let op = p
                .ops
                .iter()
                .filter_map(|i| c.spec.operations.get(*i))
                .find(|o| o.method.eq_ignore_ascii_case(method));
            return match op {
                Some(op) => {
                    let declared = Some(DeclaredRef {
                        spec: c.spec.file.clone(),
                        method: op.method.clone(),
                        path: op.path.clone(),
                        operation_id: op.operation_id.clone(),
                        deprecated: op.deprecated,
                    });
                    if op.deprecated {
                        Verdict {
                            classification: Classification::Zombie,
                            declared,
                            reason: Some(format!(
                                "operation {} {} is deprecated in {}",
                                op.method, op.path, c.spec.file
                            )),
                        }
                    } else {
                        Verdict {
                            classification: Classification::Managed,
                            declared,
                            reason: None,
                        }
                    }
                }
                None => Verdict {
                    classification: Classification::Shadow,
                    declared: None,
                    reason: Some(format!(
                        "path {} is declared in {} but not for {method}",
                        p.path, c.spec.file
                    )),
                },
            };
        }
        if let Some(newer) = self.newer_version(svc, segs) {
            return Verdict {
                classification: Classification::Zombie,
                declared: None,
                reason: Some(format!("older version of declared {newer}")),
            };
        }
        Verdict {
            classification: Classification::Shadow,
            declared: None,
            reason: Some("no declared path matches".into()),
        }
    }

    /// A declared path equal to `segs` except for a higher `vN` at the version positions.
    fn newer_version(&self, svc: &ServiceKey, segs: &[ObservedSeg<'_>]) -> Option<String> {
        let versioned: Vec<(usize, u32)> = segs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ObservedSeg::Literal(l) => version_number(l).map(|v| (i, v)),
                ObservedSeg::Param => None,
            })
            .collect();
        if versioned.is_empty() {
            return None;
        }
        for c in self.specs.iter().filter(|c| c.spec.scope.matches(svc)) {
            for p in c.paths.iter().filter(|p| p.segs.len() == segs.len()) {
                let mut newer = false;
                let ok = p.segs.iter().zip(segs).enumerate().all(|(i, (d, o))| {
                    if let Some((_, ov)) = versioned.iter().find(|(vi, _)| *vi == i) {
                        return match d {
                            PatSeg::Literal(l) => match version_number(l) {
                                Some(dv) if dv > *ov => {
                                    newer = true;
                                    true
                                }
                                Some(dv) => dv == *ov,
                                None => false,
                            },
                            PatSeg::Param(_) => false,
                        };
                    }
                    match (d, o) {
                        (PatSeg::Literal(l), ObservedSeg::Literal(s)) => l == s,
                        (PatSeg::Literal(_), ObservedSeg::Param) => false,
                        (PatSeg::Param(_), _) => true,
                    }
                });
                if ok && newer {
                    let base = c.spec.base_paths.first().map(String::as_str).unwrap_or("");
                    return Some(format!("{base}{}", p.path));
                }
            }
        }
        None
    }

    /// Every declared operation, with the spec it belongs to.
    pub fn operations(&self) -> impl Iterator<Item = (&DeclaredSpec, &DeclaredOperation)> {
        self.specs
            .iter()
            .flat_map(|c| c.spec.operations.iter().map(move |o| (&c.spec, o)))
    }
}
