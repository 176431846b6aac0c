//! Authentication scheme of a call, the calling principal (salted hash), and a JWT claims summary.
//!
//! JWTs are decoded by hand (base64url + serde_json into a small struct) and never verified: the
//! sensor has no keys, and JWT crates pull in signature code we would not use (some no longer
//! offer a decode without verification at all).

use base64::Engine;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sonde_model::{Header, Request};

use crate::hash::SaltedHasher;

/// How a call authenticated itself.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    #[default]
    None,
    Basic,
    BearerJwt,
    BearerOpaque,
    ApiKeyHeader,
    ApiKeyQuery,
    SessionCookie,
    /// Another `Authorization` scheme (Digest, AWS4-HMAC-SHA256, Negotiate, ...).
    Other,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::None => "none",
            AuthScheme::Basic => "basic",
            AuthScheme::BearerJwt => "bearer_jwt",
            AuthScheme::BearerOpaque => "bearer_opaque",
            AuthScheme::ApiKeyHeader => "api_key_header",
            AuthScheme::ApiKeyQuery => "api_key_query",
            AuthScheme::SessionCookie => "session_cookie",
            AuthScheme::Other => "other",
        }
    }
}

/// What the decoded (unverified) JWT says. Strings are cut to 256 bytes; `sub` is only hashed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSummary {
    pub alg: Option<String>,
    pub typ: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    /// Salted hash of `sub`.
    pub sub_hash: Option<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// `exp` lies before the call.
    pub expired: bool,
    /// `nbf` lies after the call.
    pub not_yet_valid: bool,
    /// `alg: none` or an empty signature.
    pub unsigned: bool,
    /// The token had JWT shape but its header or claims did not decode.
    pub malformed: bool,
}

/// Authentication facts of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// The strongest scheme presented (Authorization first, then API keys, then session cookies).
    pub scheme: AuthScheme,
    /// Header, query parameter or cookie name carrying the credential (lower case).
    pub credential_name: Option<String>,
    /// Scheme word of an `Other` Authorization header, lower case (`digest`).
    pub other_scheme: Option<String>,
    /// Salted hash identifying the caller: JWT iss+sub, Basic user, API key, token or session.
    pub principal: Option<String>,
    pub jwt: Option<Arc<JwtSummary>>,
}

/// Header names that carry API keys.
const API_KEY_HEADERS: [&str; 13] = [
    "x-api-key",
    "api-key",
    "apikey",
    "x-apikey",
    "x-api-token",
    "x-auth-token",
    "x-access-token",
    "x-token",
    "x-key",
    "ocp-apim-subscription-key",
    "x-functions-key",
    "private-token",
    "x-goog-api-key",
];

/// Query parameter names that carry API keys or tokens.
const API_KEY_QUERY: [&str; 10] = [
    "api_key",
    "apikey",
    "api-key",
    "key",
    "access_token",
    "token",
    "auth_token",
    "auth",
    "subscription-key",
    "x-api-key",
];

/// Whether a query parameter name carries a credential.
pub fn is_credential_query_param(name: &str) -> bool {
    API_KEY_QUERY.iter().any(|k| name.eq_ignore_ascii_case(k))
}

/// Whether a cookie name is a session cookie.
pub fn is_session_cookie(name: &str) -> bool {
    const EXACT: [&str; 11] = [
        "session",
        "sessionid",
        "session_id",
        "sid",
        "connect.sid",
        "jsessionid",
        "phpsessid",
        "asp.net_sessionid",
        "_session_id",
        "sess",
        "auth_session",
    ];
    let lower = name.to_ascii_lowercase();
    EXACT.contains(&lower.as_str())
        || lower.ends_with("_session")
        || lower.ends_with("-session")
        || lower.ends_with("sessionid")
}

const MAX_TOKEN: usize = 8192;
const MAX_CLAIM: usize = 256;

/// Analyses the credentials of a request. `now_ns` is the call time (Unix ns) for `exp`/`nbf`.
pub fn analyse(
    req: &Request,
    hasher: &SaltedHasher,
    now_ns: u64,
    cache: &mut JwtCache,
) -> AuthInfo {
    let mut info = AuthInfo::default();
    if let Some(value) = find(&req.headers, "authorization") {
        analyse_authorization(value, hasher, now_ns, cache, &mut info);
        if info.scheme != AuthScheme::None {
            return info;
        }
    }
    for h in &req.headers {
        if API_KEY_HEADERS
            .iter()
            .any(|k| h.name.eq_ignore_ascii_case(k))
            && !h.value.trim().is_empty()
        {
            info.scheme = AuthScheme::ApiKeyHeader;
            info.credential_name = Some(h.name.to_ascii_lowercase());
            info.principal = Some(hasher.hash("api_key", &[h.value.trim().as_bytes()]));
            return info;
        }
    }
    if let Some(q) = &req.query {
        for pair in q.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !value.is_empty() && is_credential_query_param(name) {
                info.scheme = AuthScheme::ApiKeyQuery;
                info.credential_name = Some(bounded_lower(name));
                info.principal = Some(hasher.hash("api_key", &[value.as_bytes()]));
                return info;
            }
        }
    }
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
    {
        for c in h.value.split(';') {
            let (name, value) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
            if !value.is_empty() && is_session_cookie(name) {
                info.scheme = AuthScheme::SessionCookie;
                info.credential_name = Some(bounded_lower(name));
                info.principal = Some(hasher.hash("session", &[value.as_bytes()]));
                return info;
            }
        }
    }
    info
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn bounded_lower(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_ascii_lowercase()
}

fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn analyse_authorization(
    value: &str,
    hasher: &SaltedHasher,
    now_ns: u64,
    cache: &mut JwtCache,
    info: &mut AuthInfo,
) {
    let value = value.trim();
    let (scheme, cred) = value.split_once(' ').unwrap_or((value, ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        info.scheme = AuthScheme::Basic;
        let user = base64::engine::general_purpose::STANDARD
            .decode(
                cred.as_bytes()
                    .get(..cred.len().min(MAX_TOKEN))
                    .unwrap_or_default(),
            )
            .ok()
            .map(|raw| {
                raw.split(|c| *c == b':')
                    .next()
                    .unwrap_or_default()
                    .to_vec()
            });
        info.principal = Some(match user {
            Some(u) => hasher.hash("basic", &[&u]),
            None => hasher.hash("basic_raw", &[cred.as_bytes()]),
        });
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if cred.is_empty() {
            return;
        }
        if looks_like_jwt(cred) {
            info.scheme = AuthScheme::BearerJwt;
            let (summary, principal) = cache.decode(cred, hasher, now_ns);
            info.principal = Some(principal);
            info.jwt = Some(summary);
        } else {
            info.scheme = AuthScheme::BearerOpaque;
            info.principal = Some(hasher.hash("bearer", &[cred.as_bytes()]));
        }
    } else if !scheme.is_empty() {
        info.scheme = AuthScheme::Other;
        info.other_scheme = Some(bounded_lower(scheme));
        if !cred.is_empty() {
            info.principal = Some(hasher.hash("other", &[cred.as_bytes()]));
        }
    }
}

/// Three dot-separated base64url parts whose header starts with `eyJ` (`{"`).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ")
        && token.bytes().filter(|c| *c == b'.').count() == 2
        && token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='))
}

#[derive(Deserialize, Default)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    typ: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawClaims {
    iss: Option<serde_json::Value>,
    sub: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
}

fn b64url(part: &str) -> Option<Vec<u8>> {
    let trimmed = part.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
}

fn claim_str(v: &Option<serde_json::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_json::Value::String(s) => {
            let mut end = s.len().min(MAX_CLAIM);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Some(s[..end].to_owned())
        }
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn claim_time(v: &Option<serde_json::Value>) -> Option<i64> {
    let n = v.as_ref()?.as_number()?;
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// Decodes a JWT without verification. Returns the summary and the principal hash (iss + sub, or
/// the whole token when it has no subject).
pub fn decode_jwt(token: &str, hasher: &SaltedHasher, now_ns: u64) -> (JwtSummary, String) {
    let mut s = JwtSummary::default();
    let token = cut(token, MAX_TOKEN);
    let mut parts = token.split('.');
    let (h, p, sig) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let header: Option<RawHeader> = b64url(h).and_then(|raw| serde_json::from_slice(&raw).ok());
    let claims: Option<RawClaims> = b64url(p).and_then(|raw| serde_json::from_slice(&raw).ok());
    s.malformed = header.is_none() || claims.is_none();
    let header = header.unwrap_or_default();
    let claims = claims.unwrap_or_default();
    s.alg = claim_str(&header.alg);
    s.typ = claim_str(&header.typ);
    s.kid = claim_str(&header.kid);
    s.iss = claim_str(&claims.iss);
    s.aud = match &claims.aud {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .take(8)
            .filter_map(|v| claim_str(&Some(v.clone())))
            .collect(),
        other => claim_str(other).into_iter().collect(),
    };
    let sub = claim_str(&claims.sub);
    s.sub_hash = sub
        .as_ref()
        .map(|v| hasher.hash("jwt_sub", &[v.as_bytes()]));
    s.exp = claim_time(&claims.exp);
    s.nbf = claim_time(&claims.nbf);
    s.iat = claim_time(&claims.iat);
    let now_s = (now_ns / 1_000_000_000) as i64;
    s.expired = s.exp.is_some_and(|e| e < now_s);
    s.not_yet_valid = s.nbf.is_some_and(|n| n > now_s);
    s.unsigned = sig.is_empty()
        || s.alg
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("none"));
    let principal = match &sub {
        Some(sub) => hasher.hash(
            "jwt",
            &[s.iss.as_deref().unwrap_or("").as_bytes(), sub.as_bytes()],
        ),
        None => hasher.hash("jwt_token", &[token.as_bytes()]),
    };
    (s, principal)
}

/// Recently decoded JWTs: clients present the same token on every call, so decoding (two
/// base64 + JSON parses and hashing) is done once per token. Bounded; cleared when full.
#[derive(Debug)]
pub struct JwtCache {
    state: ahash::RandomState,
    entries: ahash::AHashMap<u64, (Box<str>, Arc<JwtSummary>, String)>,
    cap: usize,
}

impl Default for JwtCache {
    fn default() -> Self {
        JwtCache {
            state: ahash::RandomState::new(),
            entries: Default::default(),
            cap: 1024,
        }
    }
}

impl JwtCache {
    /// Summary and principal of `token`, from the cache when the same token was seen.
    pub fn decode(
        &mut self,
        token: &str,
        hasher: &SaltedHasher,
        now_ns: u64,
    ) -> (Arc<JwtSummary>, String) {
        let token = cut(token, MAX_TOKEN);
        let h = self.state.hash_one(token);
        let now_s = (now_ns / 1_000_000_000) as i64;
        if let Some((t, summary, principal)) = self.entries.get_mut(&h)
            && **t == *token
        {
            // Time-dependent flags are re-evaluated for this call.
            let expired = summary.exp.is_some_and(|e| e < now_s);
            let not_yet_valid = summary.nbf.is_some_and(|n| n > now_s);
            if summary.expired != expired || summary.not_yet_valid != not_yet_valid {
                let mut fresh = (**summary).clone();
                fresh.expired = expired;
                fresh.not_yet_valid = not_yet_valid;
                *summary = Arc::new(fresh);
            }
            return (summary.clone(), principal.clone());
        }
        let (summary, principal) = decode_jwt(token, hasher, now_ns);
        let summary = Arc::new(summary);
        if self.entries.len() >= self.cap {
            self.entries.clear();
        }
        self.entries
            .insert(h, (token.into(), summary.clone(), principal.clone()));
        (summary, principal)
    }
}
