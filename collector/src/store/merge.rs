//! Merging the reports of one endpoint from several agents into one record.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sonde_proto::v1::{Caller, EndpointUpdate, SchemaField, SensitiveField, Summary};

/// Merged callers beyond this many are folded away (the busiest are kept).
const MAX_MERGED_CALLERS: usize = 256;

/// Totals are summed, sets united, first/last seen widened; percentiles and maxima are the worst
/// agent's (a conservative bound: the exact merge would need the agents' histograms); key,
/// classification and TLS flag come from the most recently seen report.
pub fn merge_reports(reports: &[EndpointUpdate]) -> EndpointUpdate {
    let Some(latest) = reports.iter().max_by_key(|r| r.last_seen_unix_ns) else {
        return EndpointUpdate::default();
    };
    let mut merged = EndpointUpdate {
        key: latest.key.clone(),
        classification: latest.classification,
        served_over_tls: reports.iter().any(|r| r.served_over_tls),
        first_seen_unix_ns: reports
            .iter()
            .map(|r| r.first_seen_unix_ns)
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0),
        last_seen_unix_ns: latest.last_seen_unix_ns,
        ..EndpointUpdate::default()
    };
    // TLS parameters: the latest report that knows them.
    let mut by_recency: Vec<&EndpointUpdate> = reports.iter().collect();
    by_recency.sort_by_key(|r| std::cmp::Reverse(r.last_seen_unix_ns));
    let latest_known = |f: fn(&EndpointUpdate) -> &String| {
        by_recency
            .iter()
            .map(|r| f(r))
            .find(|v| !v.is_empty())
            .cloned()
            .unwrap_or_default()
    };
    merged.tls_version = latest_known(|r| &r.tls_version);
    merged.tls_cipher = latest_known(|r| &r.tls_cipher);
    merged.alpn = latest_known(|r| &r.alpn);
    merged.sni = latest_known(|r| &r.sni);
    let mut sensitive: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut query_params = BTreeSet::new();
    let mut request_schema: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut response_schema: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut callers: BTreeMap<(String, String), u64> = BTreeMap::new();
    for report in reports {
        merged.call_count = merged.call_count.saturating_add(report.call_count);
        add_counts(&mut merged.status_counts, &report.status_counts);
        add_counts(&mut merged.auth_schemes, &report.auth_schemes);
        add_counts(&mut merged.content_types, &report.content_types);
        for field in &report.sensitive {
            let slot = sensitive
                .entry((field.kind.clone(), field.field_path.clone()))
                .or_default();
            *slot = slot.saturating_add(field.count);
        }
        query_params.extend(report.query_params.iter().cloned());
        unite_schema(&mut request_schema, &report.request_schema);
        unite_schema(&mut response_schema, &report.response_schema);
        for caller in &report.callers {
            let slot = callers
                .entry((caller.process.clone(), caller.addr.clone()))
                .or_default();
            *slot = slot.saturating_add(caller.count);
        }
    }
    merged.latency_us = worst_summary(reports.iter().filter_map(|r| r.latency_us.as_ref()));
    merged.request_bytes = worst_summary(reports.iter().filter_map(|r| r.request_bytes.as_ref()));
    merged.response_bytes = worst_summary(reports.iter().filter_map(|r| r.response_bytes.as_ref()));
    merged.sensitive = sensitive
        .into_iter()
        .map(|((kind, field_path), count)| SensitiveField {
            kind,
            field_path,
            count,
        })
        .collect();
    merged.query_params = query_params.into_iter().collect();
    merged.request_schema = schema_list(request_schema);
    merged.response_schema = schema_list(response_schema);
    let mut callers: Vec<Caller> = callers
        .into_iter()
        .map(|((process, addr), count)| Caller {
            process,
            addr,
            count,
        })
        .collect();
    callers.sort_by_key(|c| std::cmp::Reverse(c.count));
    callers.truncate(MAX_MERGED_CALLERS);
    merged.callers = callers;
    merged
}

fn add_counts<K: Clone + Eq + std::hash::Hash>(into: &mut HashMap<K, u64>, from: &HashMap<K, u64>) {
    for (key, count) in from {
        let slot = into.entry(key.clone()).or_default();
        *slot = slot.saturating_add(*count);
    }
}

fn unite_schema(into: &mut BTreeMap<String, BTreeSet<String>>, from: &[SchemaField]) {
    for field in from {
        into.entry(field.path.clone())
            .or_default()
            .extend(field.types.iter().cloned());
    }
}

fn schema_list(schema: BTreeMap<String, BTreeSet<String>>) -> Vec<SchemaField> {
    schema
        .into_iter()
        .map(|(path, types)| SchemaField {
            path,
            types: types.into_iter().collect(),
        })
        .collect()
}

fn worst_summary<'a>(summaries: impl Iterator<Item = &'a Summary>) -> Option<Summary> {
    summaries.fold(None, |acc: Option<Summary>, s| {
        Some(match acc {
            None => *s,
            Some(a) => Summary {
                count: a.count.saturating_add(s.count),
                p50: a.p50.max(s.p50),
                p90: a.p90.max(s.p90),
                p99: a.p99.max(s.p99),
                max: a.max.max(s.max),
            },
        })
    })
}

/// Whether the endpoint was called at least once without authentication: an explicit `none`
/// scheme, or calls with no scheme recorded at all.
pub fn is_unauthenticated(update: &EndpointUpdate) -> bool {
    update.auth_schemes.get("none").is_some_and(|c| *c > 0)
        || (update.call_count > 0 && update.auth_schemes.values().all(|c| *c == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(calls: u64, last_seen: u64, auth: &[(&str, u64)]) -> EndpointUpdate {
        EndpointUpdate {
            call_count: calls,
            first_seen_unix_ns: last_seen / 2,
            last_seen_unix_ns: last_seen,
            auth_schemes: auth.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            status_counts: HashMap::from([(200, calls)]),
            latency_us: Some(Summary {
                count: calls,
                p50: last_seen,
                p90: 1,
                p99: 2,
                max: 3,
            }),
            ..EndpointUpdate::default()
        }
    }

    #[test]
    fn sums_totals_and_keeps_worst_percentiles() {
        let merged = merge_reports(&[
            report(3, 10, &[("bearer", 3)]),
            report(4, 20, &[("none", 4)]),
        ]);
        assert_eq!(merged.call_count, 7);
        assert_eq!(merged.status_counts.get(&200), Some(&7));
        assert_eq!(merged.first_seen_unix_ns, 5);
        assert_eq!(merged.last_seen_unix_ns, 20);
        let latency = merged.latency_us.unwrap_or_default();
        assert_eq!((latency.count, latency.p50), (7, 20));
        assert!(is_unauthenticated(&merged));
    }

    #[test]
    fn authenticated_only_endpoint_is_not_unauthenticated() {
        assert!(!is_unauthenticated(&report(3, 10, &[("bearer", 3)])));
        assert!(is_unauthenticated(&report(3, 10, &[])));
        assert!(!is_unauthenticated(&report(0, 10, &[])));
    }

    #[test]
    fn tls_parameters_come_from_the_latest_report_that_knows_them() {
        let mut old = report(1, 10, &[]);
        old.served_over_tls = true;
        old.tls_version = "TLS 1.2".into();
        old.tls_cipher = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into();
        old.sni = "api.example".into();
        let mut new = report(1, 20, &[]);
        new.served_over_tls = true;
        new.tls_version = "TLS 1.3".into();
        new.alpn = "h2".into();
        let merged = merge_reports(&[old, new, report(1, 5, &[])]);
        assert!(merged.served_over_tls);
        assert_eq!(merged.tls_version, "TLS 1.3");
        assert_eq!(merged.alpn, "h2");
        // Unknown in the latest report: the older one's value stands.
        assert_eq!(merged.tls_cipher, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(merged.sni, "api.example");
    }

    #[test]
    fn empty_input_merges_to_default() {
        assert_eq!(merge_reports(&[]), EndpointUpdate::default());
    }
}
