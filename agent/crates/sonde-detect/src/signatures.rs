//! Known-exploit and debug-output signatures, loaded from TOML (built-in `signatures.toml`, or a
//! file named in the configuration) and matched with one Aho-Corasick automaton per target.

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;
use sonde_model::{OwaspCategory, Severity};

use crate::error::DetectError;

/// The built-in signature file.
pub const BUILTIN: &str = include_str!("../signatures.toml");

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    signature: Vec<RawSig>,
}

#[derive(Debug, Deserialize)]
struct RawSig {
    id: String,
    kind: String,
    title: String,
    category: String,
    severity: String,
    targets: Vec<String>,
    patterns: Vec<String>,
}

/// Where a signature looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Path = 0,
    Query = 1,
    Headers = 2,
    Body = 3,
    ResponseError = 4,
    Response = 5,
}

const TARGETS: usize = 6;

impl Target {
    fn parse(s: &str) -> Option<Target> {
        Some(match s {
            "path" => Target::Path,
            "query" => Target::Query,
            "headers" => Target::Headers,
            "body" => Target::Body,
            "response_error" => Target::ResponseError,
            "response" => Target::Response,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Path => "path",
            Target::Query => "query",
            Target::Headers => "headers",
            Target::Body => "body",
            Target::ResponseError => "response_error",
            Target::Response => "response",
        }
    }
}

/// One loaded signature.
#[derive(Clone, Debug)]
pub struct Signature {
    pub id: String,
    pub kind: String,
    pub title: String,
    pub category: OwaspCategory,
    pub severity: Severity,
}

/// All signatures, compiled.
#[derive(Debug)]
pub struct Signatures {
    pub sigs: Vec<Signature>,
    /// Per target: the automaton and, per pattern, the signature index.
    matchers: Vec<Option<(AhoCorasick, Vec<usize>)>>,
}

fn category(s: &str) -> Option<OwaspCategory> {
    Some(match s.to_ascii_uppercase().as_str() {
        "API1" => OwaspCategory::Api1Bola,
        "API2" => OwaspCategory::Api2BrokenAuth,
        "API3" => OwaspCategory::Api3PropertyAuth,
        "API4" => OwaspCategory::Api4ResourceConsumption,
        "API5" => OwaspCategory::Api5FunctionAuth,
        "API6" => OwaspCategory::Api6BusinessFlows,
        "API7" => OwaspCategory::Api7Ssrf,
        "API8" => OwaspCategory::Api8Misconfiguration,
        "API9" => OwaspCategory::Api9Inventory,
        "API10" => OwaspCategory::Api10UnsafeConsumption,
        _ => return None,
    })
}

pub fn severity(s: &str) -> Option<Severity> {
    Some(match s.to_ascii_lowercase().as_str() {
        "info" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

impl Signatures {
    pub fn builtin() -> Result<Signatures, DetectError> {
        Signatures::parse(BUILTIN, "built-in signatures.toml")
    }

    pub fn from_path(path: &Path) -> Result<Signatures, DetectError> {
        let text = std::fs::read_to_string(path).map_err(|source| DetectError::SignaturesRead {
            path: path.to_owned(),
            source,
        })?;
        Signatures::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Signatures, DetectError> {
        let file: File = toml::from_str(text).map_err(|source| DetectError::SignaturesParse {
            origin: origin.to_owned(),
            source,
        })?;
        let mut sigs = Vec::new();
        let mut per_target: Vec<(Vec<String>, Vec<usize>)> =
            vec![(Vec::new(), Vec::new()); TARGETS];
        for raw in file.signature {
            let invalid = |reason: &str| DetectError::SignatureInvalid {
                id: raw.id.clone(),
                reason: reason.to_owned(),
            };
            let cat = category(&raw.category).ok_or_else(|| invalid("unknown category"))?;
            let sev = severity(&raw.severity).ok_or_else(|| invalid("unknown severity"))?;
            if raw.patterns.iter().any(String::is_empty) || raw.patterns.is_empty() {
                return Err(invalid("empty pattern list or pattern"));
            }
            let idx = sigs.len();
            for t in &raw.targets {
                let t = Target::parse(t).ok_or_else(|| invalid("unknown target"))?;
                let (pats, owners) = &mut per_target[t as usize];
                for p in &raw.patterns {
                    pats.push(p.clone());
                    owners.push(idx);
                }
            }
            sigs.push(Signature {
                id: raw.id,
                kind: raw.kind,
                title: raw.title,
                category: cat,
                severity: sev,
            });
        }
        let mut matchers = Vec::with_capacity(TARGETS);
        for (pats, owners) in per_target {
            if pats.is_empty() {
                matchers.push(None);
                continue;
            }
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(&pats)?;
            matchers.push(Some((ac, owners)));
        }
        Ok(Signatures { sigs, matchers })
    }

    /// No signatures at all.
    pub fn empty() -> Signatures {
        Signatures {
            sigs: Vec::new(),
            matchers: (0..TARGETS).map(|_| None).collect(),
        }
    }

    pub fn has(&self, t: Target) -> bool {
        self.matchers.get(t as usize).is_some_and(Option::is_some)
    }

    /// Index of the first signature whose pattern occurs in `hay`.
    pub fn first(&self, t: Target, hay: &[u8]) -> Option<usize> {
        let (ac, owners) = self.matchers.get(t as usize)?.as_ref()?;
        let m = ac.find(hay)?;
        owners.get(m.pattern().as_usize()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_matches() {
        let s = Signatures::builtin().expect("built-in signatures");
        let hit = |t, h: &str| s.first(t, h.as_bytes()).map(|i| s.sigs[i].id.as_str());
        assert_eq!(
            hit(Target::Headers, "Mozilla ${JNDI:ldap://x/a}"),
            Some("jndi_lookup")
        );
        assert_eq!(
            hit(Target::Query, "class.module.classLoader.URLs%5B0%5D=0"),
            Some("spring4shell")
        );
        assert_eq!(
            hit(Target::Path, "/files/..%2f..%2fetc"),
            Some("path_traversal")
        );
        assert_eq!(
            hit(Target::Query, "name=x'%20OR%20'1'%3D'1"),
            Some("sql_injection")
        );
        assert_eq!(
            hit(Target::Query, "host=a;cat%20/etc/x"),
            Some("command_injection")
        );
        assert_eq!(
            hit(Target::ResponseError, "Traceback (most recent call last):"),
            Some("stack_trace")
        );
        assert_eq!(hit(Target::Query, "page=2&sort=name"), None);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(Signatures::parse("[[signature]]\nid = 1", "t").is_err());
        let bad_cat = "[[signature]]\nid='a'\nkind='k'\ntitle='t'\ncategory='API42'\nseverity='low'\ntargets=['path']\npatterns=['x']";
        assert!(matches!(
            Signatures::parse(bad_cat, "t"),
            Err(DetectError::SignatureInvalid { .. })
        ));
    }
}
