//! `Detectors`: baseline update and every detector, per call; grouped findings; persistence.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sonde_inventory::{AuthScheme, CallInfo, SensitiveKind};
use sonde_model::{Anomaly, Evidence, Exchange, ExchangeFlags, OwaspCategory, Role, Severity};

use crate::config::DetectConfig;
use crate::error::DetectError;
use crate::json::record_count;
use crate::signatures::{Signatures, Target};
use crate::state::{
    self, EndpointState, Map, P_ERR, P_ERR5, P_RATE, P_SWEEP_EP, P_SWEEP404, P_VOLUME,
    PrincipalState, SLOT_BOLA, SLOT_FOREIGN, SLOT_SEQ, SMALL_SET, Slot, State, hash64,
};

const NS: u64 = 1_000_000_000;
const MAGIC: &[u8; 8] = b"SONDEDT\0";
/// Snapshot format version; bump on any change of `State`'s shape.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Memory and bookkeeping figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectStats {
    pub exchanges: u64,
    pub findings: u64,
    pub principals: usize,
    pub endpoints: usize,
    pub groups: usize,
    pub principal_evictions: u64,
    pub endpoint_evictions: u64,
    pub group_evictions: u64,
    pub clock_backwards: u64,
    pub clock_forward_clamped: u64,
    /// Rough heap estimate of the tracked state, bytes.
    pub approx_heap_bytes: usize,
}

struct Group {
    a: Anomaly,
    pending: bool,
    last_emit: Option<u64>,
    last_mono: u64,
}

/// One finding of the current call, before grouping.
struct Hit {
    kind: String,
    severity: Severity,
    category: OwaspCategory,
    explanation: String,
    /// Group by principal only (scanning), not by endpoint.
    per_principal: bool,
    /// Group by endpoint only (exposure of an endpoint), not by principal.
    per_endpoint: bool,
    field_kinds: Vec<String>,
    details: Vec<(&'static str, String)>,
}

impl Hit {
    fn new(kind: &str, severity: Severity, category: OwaspCategory, explanation: String) -> Hit {
        Hit {
            kind: kind.to_owned(),
            severity,
            category,
            explanation,
            per_principal: false,
            per_endpoint: false,
            field_kinds: Vec::new(),
            details: Vec::new(),
        }
    }
    fn detail(mut self, k: &'static str, v: impl ToString) -> Hit {
        self.details.push((k, v.to_string()));
        self
    }
}

/// Baselines and detectors over the inventory's per-call analysis.
pub struct Detectors {
    cfg: DetectConfig,
    sigs: Signatures,
    st: State,
    groups: Map<String, Group>,
    /// Endpoint id → (endpoint key, its hash): saves hashing the key on every call.
    ep_cache: Vec<Option<(std::sync::Arc<str>, u64)>>,
}

fn raise(s: Severity) -> Severity {
    match s {
        Severity::Info => Severity::Low,
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    }
}

fn is_2xx(s: Option<u16>) -> bool {
    s.is_some_and(|s| (200..300).contains(&s))
}

fn cut(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = n;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn is_cloud_secret(k: SensitiveKind) -> bool {
    matches!(
        k,
        SensitiveKind::PrivateKey
            | SensitiveKind::AwsAccessKey
            | SensitiveKind::GcpApiKey
            | SensitiveKind::AzureStorageKey
            | SensitiveKind::GithubToken
            | SensitiveKind::SlackToken
            | SensitiveKind::StripeKey
    )
}

fn kind_bit(k: SensitiveKind) -> u32 {
    SensitiveKind::ALL
        .iter()
        .position(|&x| x == k)
        .map_or(0, |i| 1 << i)
}

fn kinds_of(bits: u32) -> Vec<SensitiveKind> {
    SensitiveKind::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, &k)| k)
        .collect()
}

/// Inserts into a small bounded distinct set; returns the set's size.
fn small_insert(v: &mut Vec<u64>, x: u64) -> usize {
    if v.len() < SMALL_SET && !v.contains(&x) {
        v.push(x);
    }
    v.len()
}

impl Detectors {
    /// Detectors with the configured signatures; a signature file that fails to load is logged
    /// and the built-in set is used instead.
    pub fn new(cfg: DetectConfig) -> Self {
        match Detectors::try_new(cfg.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "signature file unusable; using the built-in signatures");
                let sigs = Signatures::builtin().unwrap_or_else(|e| {
                    // The built-in file is tested; should it ever break, run without signatures.
                    tracing::error!(error = %e, "built-in signatures unusable");
                    Signatures::empty()
                });
                Detectors::with(cfg, sigs)
            }
        }
    }

    /// Like `new`, but a signature file that fails to load is an error.
    pub fn try_new(cfg: DetectConfig) -> Result<Self, DetectError> {
        let sigs = match &cfg.signatures_path {
            Some(p) => Signatures::from_path(p)?,
            None => Signatures::builtin()?,
        };
        Ok(Detectors::with(cfg, sigs))
    }

    fn with(cfg: DetectConfig, sigs: Signatures) -> Self {
        Detectors {
            cfg,
            sigs,
            st: State::default(),
            groups: Map::default(),
            ep_cache: Vec::new(),
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    pub fn stats(&self) -> DetectStats {
        let c = &self.st.counters;
        DetectStats {
            exchanges: c.exchanges,
            findings: c.findings,
            principals: self.st.principals.len(),
            endpoints: self.st.endpoints.len(),
            groups: self.groups.len(),
            principal_evictions: c.principal_evictions,
            endpoint_evictions: c.endpoint_evictions,
            group_evictions: c.group_evictions,
            clock_backwards: c.clock_backwards,
            clock_forward_clamped: c.clock_forward_clamped,
            approx_heap_bytes: self.approx_heap_bytes(),
        }
    }

    fn approx_heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let ep: usize = self
            .st
            .endpoints
            .values()
            .map(|e| size_of::<EndpointState>() + 4 * 128 * 4 + e.owners.capacity() * 17 + 24)
            .sum();
        let pr: usize = self
            .st
            .principals
            .values()
            .map(|p| {
                size_of::<PrincipalState>()
                    + 16
                    + (p.endpoints.capacity() + p.paths404.capacity()) * 8
                    + p.slots
                        .iter()
                        .map(|s| size_of::<Slot>() + s.ids.capacity() * 8)
                        .sum::<usize>()
            })
            .sum();
        let gr = self.groups.len() * (size_of::<Group>() + 512);
        ep + pr + gr
    }

    /// Updates the baselines with one call and runs every detector on it.
    pub fn observe(&mut self, ex: &Exchange, call: &CallInfo, now_ns: u64) {
        let cfg = &self.cfg;
        let st = &mut self.st;
        st.counters.exchanges += 1;
        let mono = st.clock.advance(
            now_ns,
            cfg.max_clock_step_secs.saturating_mul(NS),
            &mut st.counters,
        );
        let window = cfg.window_secs.max(1).saturating_mul(NS);
        let weight = f64::from(cfg.baseline_weight.max(16));
        let status = call.status.or_else(|| ex.status());
        let ok = is_2xx(status);
        let mut hits: Vec<Hit> = Vec::new();

        // --- endpoint ---------------------------------------------------------------------
        let eid = call.endpoint_id as usize;
        let ep_key = match self.ep_cache.get(eid) {
            Some(Some((k, h))) if std::sync::Arc::ptr_eq(k, &call.endpoint) => *h,
            _ => {
                let h = hash64(1, &[call.endpoint.as_bytes()]);
                if eid < 1 << 20 {
                    if self.ep_cache.len() <= eid {
                        self.ep_cache.resize(eid + 1, None);
                    }
                    self.ep_cache[eid] = Some((call.endpoint.clone(), h));
                }
                h
            }
        };
        if !st.endpoints.contains_key(&ep_key) && st.endpoints.len() >= cfg.max_endpoints.max(1) {
            let keep = cfg.max_endpoints.max(1) * 7 / 8;
            st.counters.endpoint_evictions +=
                state::evict_coldest(&mut st.endpoints, keep, |e| e.last_mono);
            st.owned_total = st.endpoints.values().map(|e| e.owners.len()).sum();
        }
        let ep = st
            .endpoints
            .entry(ep_key)
            .or_insert_with(|| EndpointState::new(&call.template, mono));
        let learned = ep.learned(
            cfg.learn_min_calls,
            cfg.learn_min_secs.saturating_mul(NS),
            mono,
        );

        // --- principal --------------------------------------------------------------------
        let authed = call.auth.principal.is_some() && call.auth.scheme != AuthScheme::None;
        // A rejected credential does not identify the caller (token guessing presents a new one
        // each time): such calls count against the client address and process.
        let rejected = matches!(status, Some(401 | 403 | 407));
        let (p_key, by_principal) = match &call.auth.principal {
            Some(p) if !rejected => (hash64(2, &[p.as_bytes()]), true),
            _ => {
                let ip = ex.conn.client_addr().map(|a| a.ip());
                let mut ipb = [0u8; 16];
                let ipb: &[u8] = match ip {
                    Some(std::net::IpAddr::V4(v)) => {
                        ipb[..4].copy_from_slice(&v.octets());
                        &ipb[..4]
                    }
                    Some(std::net::IpAddr::V6(v)) => {
                        ipb.copy_from_slice(&v.octets());
                        &ipb[..]
                    }
                    None => &[],
                };
                let comm: &[u8] = if ex.conn.role == Role::Client {
                    ex.conn.process.comm.as_bytes()
                } else {
                    b""
                };
                (hash64(3, &[ipb, comm]), false)
            }
        };
        // Response facts.
        let resp_bytes = ex.response.as_ref().map_or(0, |r| r.body.wire_len);
        // Records per response: counted on a sample of calls for the baseline, and on every
        // response larger than usual (more records than usual means more bytes than usual).
        let count_records =
            ep.calls.is_multiple_of(8) || resp_bytes > ep.resp_bytes.p99().saturating_mul(2);
        let records = match &ex.response {
            Some(r) if ok && count_records => {
                let n = r.body.sample.len().min(cfg.max_scan_bytes);
                let wire = if n < r.body.sample.len() {
                    r.body.wire_len.max(r.body.sample.len() as u64)
                } else {
                    r.body.wire_len
                };
                r.body.sample.get(..n).and_then(|s| record_count(s, wire))
            }
            _ => None,
        };
        // --- endpoint window, baseline-relative detectors ----------------------------------
        if mono >= ep.win_start.saturating_add(window) {
            let n = (mono - ep.win_start) / window;
            ep.rate.fold(ep.win_calls as f64, n.saturating_sub(1));
            ep.win_calls = 0;
            ep.win_start = ep.win_start.saturating_add(n.saturating_mul(window));
        }
        ep.win_calls += 1;
        let mut size_anomalous = false;
        if learned && ok {
            let p99 = ep.resp_bytes.p99();
            if resp_bytes >= cfg.size_min_bytes && resp_bytes as f64 > cfg.size_factor * p99 as f64
            {
                size_anomalous = true;
                hits.push(
                    Hit::new(
                        "exposure.large_response",
                        Severity::High,
                        OwaspCategory::Api3PropertyAuth,
                        format!(
                            "response of {resp_bytes} bytes is far above this endpoint's usual size (p99 {p99}): possible bulk data exposure"
                        ),
                    )
                    .detail("baseline_p99_bytes", p99),
                );
            }
            if let Some(r) = records {
                let p99r = ep.records.p99();
                if r >= cfg.records_min && r as f64 > cfg.size_factor * p99r.max(1) as f64 {
                    size_anomalous = true;
                    hits.push(
                        Hit::new(
                            "exposure.many_records",
                            Severity::High,
                            OwaspCategory::Api3PropertyAuth,
                            format!(
                                "response lists {r} records where this endpoint usually returns at most {p99r}: possible bulk export"
                            ),
                        )
                        .detail("records", r)
                        .detail("baseline_p99_records", p99r),
                    );
                }
            }
        }
        let mut unauth_anomalous = false;
        if learned && ok && !authed && ep.auth_share() >= cfg.auth_share_min {
            unauth_anomalous = true;
            hits.push(
                Hit::new(
                    "auth.unauthenticated_access",
                    Severity::High,
                    OwaspCategory::Api2BrokenAuth,
                    format!(
                        "call without credentials answered {} on an endpoint where {:.1}% of calls authenticate",
                        status.unwrap_or(0),
                        ep.auth_share() * 100.0
                    ),
                )
                .detail("baseline_auth_share", format!("{:.3}", ep.auth_share())),
            );
        }

        // Object id at the template's parameter position.
        let mut obj: Option<(u64, Option<u64>)> = None;
        if let Some(seg) = ep.id_seg
            && let Some(s) = ex
                .request
                .path
                .split('/')
                .nth(usize::from(seg))
                .filter(|s| !s.is_empty())
        {
            let num = (s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten();
            obj = Some((hash64(4, &[s.as_bytes()]), num));
        }
        // Ownership of object ids (first principal answered 2xx).
        let mut foreign_new = false;
        let mut owner_scoped = false;
        if let Some((id, _)) = obj {
            owner_scoped = learned && ep.owner_share().is_some_and(|s| s >= cfg.owner_share_min);
            match ep.owners.get(&id) {
                Some(&o) if o == p_key => ep.owner_hits += 1.0,
                Some(_) => foreign_new = ok,
                None => {
                    if ok
                        && ep.owners.len() < cfg.max_owned_ids
                        && st.owned_total < cfg.max_owned_ids_total
                    {
                        ep.owners.insert(id, p_key);
                        st.owned_total += 1;
                    }
                }
            }
        }

        // Baseline update (skipping what just looked anomalous, so attacks do not teach it).
        ep.calls = ep.calls.saturating_add(1);
        ep.last_mono = mono;
        if let Some(s) = status {
            let i = usize::from((s / 100).clamp(1, 5) - 1);
            ep.status[i] += 1.0;
        }
        if !unauth_anomalous {
            ep.total += 1.0;
            if authed {
                ep.authed += 1.0;
            }
        }
        ep.decay(weight);
        if ok && !size_anomalous {
            ep.resp_bytes.record(resp_bytes, cfg.baseline_weight);
            if let Some(r) = records {
                ep.records.record(r, cfg.baseline_weight);
            }
        }
        if let Some(l) = call.latency_ns.or_else(|| ex.latency_ns()) {
            ep.latency_us.record(l / 1000, cfg.baseline_weight);
        }
        let peers = ep.ids_per_window.p99();

        // --- principal window ---------------------------------------------------------------
        if !st.principals.contains_key(&p_key) && st.principals.len() >= cfg.max_principals.max(1) {
            let keep = cfg.max_principals.max(1) * 7 / 8;
            st.counters.principal_evictions +=
                state::evict_coldest(&mut st.principals, keep, |p| p.last_mono);
        }
        let p = st
            .principals
            .entry(p_key)
            .or_insert_with(|| PrincipalState {
                last_mono: mono,
                win_start: mono,
                ..PrincipalState::default()
            });
        p.last_mono = mono;
        if mono >= p.win_start.saturating_add(window) {
            let n = (mono - p.win_start) / window;
            if p.calls > 0 && p.fired == 0 {
                st.global
                    .calls_per_window
                    .record(u64::from(p.calls), cfg.baseline_weight);
                st.global
                    .bytes_per_window
                    .record(p.bytes, cfg.baseline_weight);
            }
            p.calls_ewma.fold(f64::from(p.calls), n.saturating_sub(1));
            p.bytes_ewma.fold(p.bytes as f64, n.saturating_sub(1));
            for s in &p.slots {
                if s.distinct > 0
                    && s.fired == 0
                    && let Some(e) = st.endpoints.get_mut(&s.ep)
                {
                    e.ids_per_window
                        .record(u64::from(s.distinct), cfg.baseline_weight);
                }
            }
            p.slots.retain(|s| s.calls > 0);
            for s in &mut p.slots {
                *s = Slot {
                    ep: s.ep,
                    ids: std::mem::take(&mut s.ids),
                    ..Slot::default()
                };
                s.ids.clear();
                if s.ids.capacity() > 64 {
                    s.ids.shrink_to(64);
                }
            }
            p.calls = 0;
            p.err4 = 0;
            p.err5 = 0;
            p.bytes = 0;
            p.endpoints.clear();
            p.paths404.clear();
            p.fired = 0;
            p.win_start = p.win_start.saturating_add(n.saturating_mul(window));
        }
        p.calls = p.calls.saturating_add(1);
        p.bytes = p.bytes.saturating_add(resp_bytes);
        let n_eps = small_insert(&mut p.endpoints, ep_key);
        match status {
            Some(401 | 403 | 404 | 405) => p.err4 = p.err4.saturating_add(1),
            Some(500..=599) => p.err5 = p.err5.saturating_add(1),
            _ => {}
        }
        let calls = f64::from(p.calls);
        if p.fired & P_ERR == 0
            && p.err4 >= cfg.error_burst_min
            && f64::from(p.err4) >= cfg.error_ratio_min * calls
        {
            p.fired |= P_ERR;
            let mut h = Hit::new(
                "scan.error_burst",
                Severity::Medium,
                OwaspCategory::Api8Misconfiguration,
                format!("{} of {} calls this window answered 401/403/404: probing or credential guessing", p.err4, p.calls),
            )
            .detail("errors", p.err4)
            .detail("calls", p.calls);
            h.per_principal = true;
            hits.push(h);
        }
        if p.fired & P_ERR5 == 0
            && p.err5 >= cfg.server_error_burst_min
            && f64::from(p.err5) >= cfg.error_ratio_min * calls
        {
            p.fired |= P_ERR5;
            let mut h = Hit::new(
                "scan.server_error_burst",
                Severity::Medium,
                OwaspCategory::Api8Misconfiguration,
                format!(
                    "{} of {} calls this window answered 5xx: fuzzing or resource exhaustion",
                    p.err5, p.calls
                ),
            )
            .detail("errors", p.err5);
            h.per_principal = true;
            hits.push(h);
        }
        if status == Some(404) {
            let n = small_insert(&mut p.paths404, hash64(5, &[ex.request.path.as_bytes()]));
            if p.fired & P_SWEEP404 == 0 && n as u32 >= cfg.sweep_min_404_paths {
                p.fired |= P_SWEEP404;
                let mut h = Hit::new(
                    "scan.path_sweep",
                    Severity::Medium,
                    OwaspCategory::Api8Misconfiguration,
                    format!(
                        "{n} distinct unknown paths (404) requested this window: path discovery"
                    ),
                )
                .detail("distinct_404_paths", n);
                h.per_principal = true;
                hits.push(h);
            }
        }
        if p.fired & P_SWEEP_EP == 0 && n_eps as u32 >= cfg.sweep_min_endpoints {
            p.fired |= P_SWEEP_EP;
            let mut h = Hit::new(
                "scan.endpoint_sweep",
                Severity::Low,
                OwaspCategory::Api8Misconfiguration,
                format!("{n_eps} distinct endpoints called this window: API crawling"),
            )
            .detail("distinct_endpoints", n_eps);
            h.per_principal = true;
            hits.push(h);
        }
        if p.fired & P_RATE == 0 && u64::from(p.calls) >= cfg.rate_min_calls {
            let own = if p.calls_ewma.windows >= 3 {
                p.calls_ewma.value
            } else {
                0.0
            };
            let base = own.max(st.global.calls_per_window.p99() as f64);
            if calls > cfg.rate_factor * base {
                p.fired |= P_RATE;
                let mut h = Hit::new(
                    "abuse.rate_spike",
                    Severity::Medium,
                    OwaspCategory::Api4ResourceConsumption,
                    if base < 1.0 {
                        format!(
                            "{} calls this window from a principal with no usual rate yet \
                             (at least {} trigger)",
                            p.calls, cfg.rate_min_calls
                        )
                    } else {
                        format!(
                            "{} calls this window, over {}x the usual {:.0}",
                            p.calls, cfg.rate_factor, base
                        )
                    },
                )
                .detail("calls", p.calls)
                .detail("baseline_calls_per_window", format!("{base:.0}"));
                h.per_principal = true;
                hits.push(h);
            }
        }
        if p.fired & P_VOLUME == 0 && p.bytes >= cfg.volume_min_bytes {
            let own = if p.bytes_ewma.windows >= 3 {
                p.bytes_ewma.value
            } else {
                0.0
            };
            let base = own.max(st.global.bytes_per_window.p99() as f64);
            if p.bytes as f64 > cfg.volume_factor * base {
                p.fired |= P_VOLUME;
                let mut h = Hit::new(
                    "exposure.volume_spike",
                    Severity::High,
                    OwaspCategory::Api4ResourceConsumption,
                    format!("{} response bytes to one principal this window, over {}x the usual {:.0}: bulk exfiltration", p.bytes, cfg.volume_factor, base),
                )
                .detail("window_bytes", p.bytes)
                .detail("baseline_bytes_per_window", format!("{base:.0}"));
                h.per_principal = true;
                hits.push(h);
            }
        }

        // Per (principal, endpoint): distinct ids, sequential walks, foreign objects.
        if let Some((id, num)) = obj {
            let si = match p.slots.iter().position(|s| s.ep == ep_key) {
                Some(i) => Some(i),
                None if p.slots.len() < cfg.max_endpoints_per_principal => {
                    p.slots.push(Slot {
                        ep: ep_key,
                        ..Slot::default()
                    });
                    Some(p.slots.len() - 1)
                }
                None => None,
            };
            if let Some(s) = si.and_then(|i| p.slots.get_mut(i)) {
                s.calls = s.calls.saturating_add(1);
                let new_id = match s.ids.binary_search(&id) {
                    Ok(_) => false,
                    Err(pos) => {
                        if s.ids.len() < cfg.max_ids_per_window {
                            s.ids.insert(pos, id);
                        }
                        true
                    }
                };
                if new_id {
                    s.distinct = s.distinct.saturating_add(1);
                    if foreign_new && owner_scoped {
                        s.foreign = s.foreign.saturating_add(1);
                    }
                }
                // Foreign accesses teach the ownership share only while the principal looks
                // benign, so an attack does not talk the endpoint out of being owner-scoped.
                if foreign_new
                    && s.fired & (SLOT_FOREIGN | SLOT_BOLA) == 0
                    && s.foreign < cfg.foreign_ids_min
                    && let Some(e) = st.endpoints.get_mut(&ep_key)
                {
                    e.foreign_hits += 1.0;
                }
                if let Some(n) = num {
                    match s.last_num {
                        Some(l) if l.abs_diff(n) == 1 => s.run = s.run.saturating_add(1),
                        Some(l) if l == n => {}
                        _ => s.run = 0,
                    }
                    s.last_num = Some(n);
                }
                if learned && s.fired & SLOT_BOLA == 0 {
                    let thr = f64::from(cfg.bola_min_ids).max(cfg.bola_peer_factor * peers as f64);
                    if f64::from(s.distinct) >= thr {
                        s.fired |= SLOT_BOLA;
                        hits.push(
                            Hit::new(
                                "bola.enumeration",
                                Severity::High,
                                OwaspCategory::Api1Bola,
                                format!(
                                    "one principal requested {} distinct object ids this window where peers request at most {peers}",
                                    s.distinct
                                ),
                            )
                            .detail("distinct_ids", s.distinct)
                            .detail("peer_p99_ids", peers),
                        );
                    }
                }
                if s.fired & SLOT_SEQ == 0 && s.run.saturating_add(1) >= cfg.seq_walk_min {
                    s.fired |= SLOT_SEQ;
                    hits.push(
                        Hit::new(
                            "bola.sequential_walk",
                            Severity::High,
                            OwaspCategory::Api1Bola,
                            format!("{} consecutive numeric object ids requested in order: id enumeration", s.run + 1),
                        )
                        .detail("run", s.run + 1),
                    );
                }
                if s.fired & SLOT_FOREIGN == 0 && s.foreign >= cfg.foreign_ids_min {
                    s.fired |= SLOT_FOREIGN;
                    hits.push(
                        Hit::new(
                            "bola.foreign_object_access",
                            Severity::Critical,
                            OwaspCategory::Api1Bola,
                            format!(
                                "{} objects first served to other principals were answered 2xx to this one, on an endpoint whose objects belong to one principal each",
                                s.foreign
                            ),
                        )
                        .detail("foreign_ids", s.foreign),
                    );
                }
            }
        }

        // --- stateless rules ------------------------------------------------------------------
        if let Some(j) = &call.auth.jwt {
            if ok && j.unsigned {
                hits.push(
                    Hit::new(
                        "auth.unsigned_jwt_accepted",
                        Severity::Critical,
                        OwaspCategory::Api2BrokenAuth,
                        format!(
                            "JWT with alg {:?} or no signature was answered {}",
                            j.alg.as_deref().unwrap_or("?"),
                            status.unwrap_or(0)
                        ),
                    )
                    .detail("alg", cut(j.alg.as_deref().unwrap_or("-"), 16)),
                );
            }
            let now_s = i64::try_from(now_ns / NS).unwrap_or(i64::MAX);
            if ok
                && j.exp
                    .is_some_and(|e| now_s.saturating_sub(e) > cfg.jwt_leeway_secs)
            {
                let late = now_s.saturating_sub(j.exp.unwrap_or(now_s));
                hits.push(
                    Hit::new(
                        "auth.expired_jwt_accepted",
                        Severity::High,
                        OwaspCategory::Api2BrokenAuth,
                        format!(
                            "JWT expired {late} s before the call was answered {}",
                            status.unwrap_or(0)
                        ),
                    )
                    .detail("expired_for_secs", late),
                );
            }
        }
        let query_creds: Vec<String> = call
            .sensitive
            .iter()
            .filter(|h| {
                h.location == sonde_inventory::endpoint::Location::RequestQuery
                    && h.kind.is_credential()
            })
            .map(|h| h.kind.as_str().to_owned())
            .collect();
        if call.auth.scheme == AuthScheme::ApiKeyQuery || !query_creds.is_empty() {
            let mut h = Hit::new(
                "auth.credential_in_url",
                Severity::Medium,
                OwaspCategory::Api2BrokenAuth,
                "credential sent in the URL query, where logs, proxies and referrers keep it"
                    .to_owned(),
            );
            if let Some(n) = &call.auth.credential_name {
                h = h.detail("parameter", cut(n, 64));
            }
            h.field_kinds = query_creds;
            hits.push(h);
        }
        if call.auth.scheme == AuthScheme::Basic {
            let port = call
                .service
                .port()
                .or_else(|| ex.conn.server_addr().map(|a| a.port()));
            if port.is_none_or(|p| !cfg.tls_ports.contains(&p)) {
                hits.push(
                    Hit::new(
                        "auth.basic_plaintext",
                        Severity::Medium,
                        OwaspCategory::Api2BrokenAuth,
                        "HTTP Basic credentials sent over a plaintext connection".to_owned(),
                    )
                    .detail("port", port.map_or("-".to_owned(), |p| p.to_string())),
                );
            }
        }
        if ex.flags.contains(ExchangeFlags::SMUGGLING) {
            hits.push(Hit::new(
                "http.smuggling_indicator",
                Severity::High,
                OwaspCategory::Api8Misconfiguration,
                "conflicting Content-Length / Transfer-Encoding framing: request smuggling attempt or desync".to_owned(),
            ));
        }
        let (mut secret_bits, mut personal_bits) = (0u32, 0u32);
        for h in call.sensitive.iter().filter(|h| h.location.is_response()) {
            if is_cloud_secret(h.kind) {
                secret_bits |= kind_bit(h.kind);
            } else if h.kind.is_personal() {
                personal_bits |= kind_bit(h.kind);
            }
        }
        if secret_bits != 0 {
            let secrets = kinds_of(secret_bits);
            let critical = secrets
                .iter()
                .any(|k| matches!(k, SensitiveKind::PrivateKey | SensitiveKind::AwsAccessKey));
            let names: Vec<String> = secrets.iter().map(|k| k.as_str().to_owned()).collect();
            let mut h = Hit::new(
                "exposure.secret_in_response",
                if critical {
                    Severity::Critical
                } else {
                    Severity::High
                },
                OwaspCategory::Api3PropertyAuth,
                format!("response carries secrets ({})", names.join(", ")),
            );
            h.field_kinds = names;
            h.per_endpoint = true;
            hits.push(h);
        }
        if personal_bits != 0 && ok && !authed {
            let personal = kinds_of(personal_bits);
            let names: Vec<String> = personal.iter().map(|k| k.as_str().to_owned()).collect();
            let mut h = Hit::new(
                "exposure.unauthenticated_personal_data",
                Severity::High,
                OwaspCategory::Api3PropertyAuth,
                format!(
                    "personal data ({}) answered to a caller without credentials",
                    names.join(", ")
                ),
            );
            h.field_kinds = names;
            h.per_endpoint = true;
            hits.push(h);
        }

        // Signatures.
        let sigs = &self.sigs;
        let mut found: [Option<(usize, Target)>; 4] = [None; 4];
        let mut nfound = 0;
        let mut note = |i: Option<usize>, t: Target| {
            if let Some(i) = i
                && nfound < found.len()
                && !found[..nfound]
                    .iter()
                    .any(|f| f.is_some_and(|(j, _)| j == i))
            {
                found[nfound] = Some((i, t));
                nfound += 1;
            }
        };
        note(
            sigs.first(Target::Path, ex.request.path.as_bytes()),
            Target::Path,
        );
        if let Some(q) = &ex.request.query {
            note(sigs.first(Target::Query, q.as_bytes()), Target::Query);
        }
        if sigs.has(Target::Headers) {
            for h in &ex.request.headers {
                note(
                    sigs.first(Target::Headers, h.value.as_bytes()),
                    Target::Headers,
                );
            }
        }
        let rb = &ex.request.body.sample;
        if !rb.is_empty() {
            note(
                sigs.first(Target::Body, &rb[..rb.len().min(cfg.max_scan_bytes)]),
                Target::Body,
            );
        }
        if let Some(r) = &ex.response {
            let b = &r.body.sample[..r.body.sample.len().min(cfg.max_scan_bytes)];
            if !b.is_empty() {
                if r.status >= 400 {
                    note(sigs.first(Target::ResponseError, b), Target::ResponseError);
                }
                note(sigs.first(Target::Response, b), Target::Response);
            }
        }
        for (i, t) in found.iter().flatten() {
            let Some(sig) = sigs.sigs.get(*i) else {
                continue;
            };
            let request_side = !matches!(t, Target::ResponseError | Target::Response);
            let answered = status.is_some_and(|s| (200..300).contains(&s) || s >= 500);
            let sev = if request_side && answered {
                raise(sig.severity)
            } else {
                sig.severity
            };
            let expl = if request_side {
                format!(
                    "{} in the request {}, answered {}",
                    sig.title,
                    t.as_str(),
                    status.map_or("-".to_owned(), |s| s.to_string())
                )
            } else {
                format!("{} (status {})", sig.title, status.unwrap_or(0))
            };
            hits.push(
                Hit::new(&sig.kind, sev, sig.category, expl)
                    .detail("signature", &sig.id)
                    .detail("location", t.as_str()),
            );
        }

        if !hits.is_empty() {
            self.emit(ex, call, now_ns, p_key, by_principal, hits);
        }
    }

    fn emit(
        &mut self,
        ex: &Exchange,
        call: &CallInfo,
        now_ns: u64,
        p_key: u64,
        by_principal: bool,
        hits: Vec<Hit>,
    ) {
        let mono = self.st.clock.mono;
        let principal = if by_principal {
            call.auth.principal.clone()
        } else {
            None
        };
        let pid = principal
            .clone()
            .unwrap_or_else(|| format!("anon:{p_key:016x}"));
        for h in hits {
            self.st.counters.findings += 1;
            let key = if h.per_principal {
                format!("{}|{pid}", h.kind)
            } else if h.per_endpoint {
                format!("{}|{}", h.kind, call.endpoint)
            } else {
                format!("{}|{}|{pid}", h.kind, call.endpoint)
            };
            if let Some(g) = self.groups.get_mut(&key) {
                g.a.count = g.a.count.saturating_add(1);
                g.a.first_seen_ns = g.a.first_seen_ns.min(now_ns);
                g.a.last_seen_ns = g.a.last_seen_ns.max(now_ns);
                g.a.severity = g.a.severity.max(h.severity);
                g.pending = true;
                g.last_mono = mono;
                continue;
            }
            if self.groups.len() >= self.cfg.max_groups.max(1) {
                self.evict_groups();
            }
            tracing::debug!(kind = %h.kind, endpoint = %call.endpoint, "detector finding");
            let a = self.anomaly(ex, call, now_ns, &principal, h, key.clone());
            self.groups.insert(
                key,
                Group {
                    a,
                    pending: true,
                    last_emit: None,
                    last_mono: mono,
                },
            );
        }
    }

    fn evict_groups(&mut self) {
        let keep = self.cfg.max_groups.max(1) * 7 / 8;
        let before = self.groups.len();
        if before <= keep {
            return;
        }
        let mut ages: Vec<u64> = self.groups.values().map(|g| g.last_mono).collect();
        let remove = before - keep;
        ages.select_nth_unstable(remove - 1);
        let t = ages[remove - 1];
        let mut left = remove;
        self.groups.retain(|_, g| {
            if left > 0 && g.last_mono <= t {
                left -= 1;
                false
            } else {
                true
            }
        });
        self.st.counters.group_evictions += (before - self.groups.len()) as u64;
    }

    fn anomaly(
        &self,
        ex: &Exchange,
        call: &CallInfo,
        now_ns: u64,
        principal: &Option<String>,
        h: Hit,
        key: String,
    ) -> Anomaly {
        let mut request_line = format!("{} {}", call.method, call.template);
        if let Some(q) = ex.request.query.as_deref().filter(|q| !q.is_empty()) {
            request_line.push('?');
            for (i, pair) in q.split('&').take(16).enumerate() {
                let name = pair.split('=').next().unwrap_or("");
                let looks_value =
                    name.len() > 40 || name.bytes().any(|b| b.is_ascii_digit()) && name.len() > 8;
                let name = if looks_value {
                    "{param}"
                } else {
                    cut(name, 40)
                };
                if i > 0 {
                    request_line.push('&');
                }
                let _ = write!(request_line, "{name}={{redacted}}");
            }
        }
        let client = {
            let addr = ex.conn.client_addr().map(|a| a.ip().to_string());
            let proc = (ex.conn.role == Role::Client && !ex.conn.process.comm.is_empty())
                .then(|| ex.conn.process.comm.clone());
            match (addr, proc) {
                (Some(a), Some(p)) => Some(format!("{a}[{p}]")),
                (Some(a), None) => Some(a),
                (None, Some(p)) => Some(format!("[{p}]")),
                (None, None) => None,
            }
        };
        let mut details: BTreeMap<String, String> = h
            .details
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        details.insert(
            "auth_scheme".to_owned(),
            call.auth.scheme.as_str().to_owned(),
        );
        let flags = ex.flags.names();
        if !flags.is_empty() {
            details.insert("flags".to_owned(), flags.join(","));
        }
        Anomaly {
            key,
            kind: h.kind,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            endpoint: Some(call.endpoint.to_string()),
            principal_hash: principal.clone(),
            client,
            severity: h.severity,
            category: h.category,
            explanation: h.explanation,
            evidence: Evidence {
                request_line,
                status: call.status.or_else(|| ex.status()),
                request_bytes: ex.request.body.wire_len,
                response_bytes: ex.response.as_ref().map_or(0, |r| r.body.wire_len),
                field_kinds: h.field_kinds,
                details,
            },
            count: 1,
        }
    }

    /// New findings, and grouped ones that repeated since they were last returned (at most once
    /// per `reemit_secs` each), oldest first.
    pub fn drain(&mut self) -> Vec<Anomaly> {
        let mono = self.st.clock.mono;
        let every = self.cfg.reemit_secs.saturating_mul(NS);
        let mut out: Vec<Anomaly> = self
            .groups
            .values_mut()
            .filter(|g| g.pending && g.last_emit.is_none_or(|t| mono >= t.saturating_add(every)))
            .map(|g| {
                g.pending = false;
                g.last_emit = Some(mono);
                g.a.clone()
            })
            .collect();
        out.sort_by(|a, b| (a.first_seen_ns, &a.key).cmp(&(b.first_seen_ns, &b.key)));
        out
    }

    /// Writes the baselines (not the pending findings) to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), DetectError> {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        rmp_serde::encode::write_named(&mut buf, &self.st)?;
        let tmp = path.with_extension("tmp");
        let io = |source| DetectError::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::write(&tmp, &buf).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|source| DetectError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(())
    }

    /// Detectors with the baselines saved at `path`. A missing file starts learning afresh; a
    /// corrupt or incompatible one is moved aside (`<path>.corrupt-<n>`) with a warning, and
    /// learning restarts. Only I/O errors other than "not found" are errors.
    pub fn load(path: &Path, cfg: DetectConfig) -> Result<Self, DetectError> {
        let mut d = Detectors::new(cfg);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(d),
            Err(source) => {
                return Err(DetectError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        match decode(&bytes) {
            Ok(st) => {
                d.st = st;
                d.enforce_bounds();
                tracing::info!(path = %path.display(), endpoints = d.st.endpoints.len(), principals = d.st.principals.len(), "detector baselines loaded");
            }
            Err(reason) => {
                let aside = aside_path(path);
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), %reason, "detector snapshot unusable; moved aside, learning restarts");
                std::fs::rename(path, &aside).map_err(|source| DetectError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        Ok(d)
    }

    fn enforce_bounds(&mut self) {
        let c = &mut self.st.counters;
        c.endpoint_evictions +=
            state::evict_coldest(&mut self.st.endpoints, self.cfg.max_endpoints.max(1), |e| {
                e.last_mono
            });
        c.principal_evictions += state::evict_coldest(
            &mut self.st.principals,
            self.cfg.max_principals.max(1),
            |p| p.last_mono,
        );
        self.st.owned_total = self.st.endpoints.values().map(|e| e.owners.len()).sum();
    }
}

fn decode(bytes: &[u8]) -> Result<State, String> {
    let head = bytes.get(..12).ok_or("file shorter than its header")?;
    if &head[..8] != MAGIC {
        return Err("not a detector snapshot (bad magic)".to_owned());
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&head[8..12]);
    let version = u32::from_le_bytes(v);
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot version {version}, expected {SNAPSHOT_VERSION}"
        ));
    }
    rmp_serde::from_slice(&bytes[12..]).map_err(|e| e.to_string())
}

fn aside_path(path: &Path) -> PathBuf {
    for n in 0..1000u32 {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".corrupt-{n}"));
        let p = PathBuf::from(s);
        if !p.exists() {
            return p;
        }
    }
    let mut s = path.as_os_str().to_owned();
    s.push(".corrupt");
    PathBuf::from(s)
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("stats", &self.stats())
            .finish()
    }
}
