//! Bounded summaries kept per endpoint: a log-bucketed histogram and capped counters.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: relative bucket width 2^(1/4) - 1 ≈ 19%, so a quantile read
/// from the bucket midpoint is within ~10% of the true value.
const SUB_BUCKETS_LOG2: u32 = 2;
const SUB_BUCKETS: u32 = 1 << SUB_BUCKETS_LOG2;
/// Index space: values up to 2^63 need 64 octaves × 4 sub-buckets.
const MAX_BUCKETS: usize = 64 * SUB_BUCKETS as usize;

/// Log-bucketed histogram of u64 values (latencies in ns, sizes in bytes). Memory grows only up to
/// the highest bucket used (at most 256 counters), so small values cost a few dozen bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistogram {
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
    /// Counter per bucket, from bucket 0; trailing empty buckets are not stored.
    pub buckets: Vec<u32>,
}

fn bucket_index(v: u64) -> usize {
    if v < u64::from(SUB_BUCKETS) {
        return v as usize;
    }
    let log2 = 63 - v.leading_zeros();
    let mantissa = (v >> (log2 - SUB_BUCKETS_LOG2)) as u32 & (SUB_BUCKETS - 1);
    ((log2 - SUB_BUCKETS_LOG2 + 1) * SUB_BUCKETS + mantissa) as usize
}

/// Lower bound of a bucket (inverse of `bucket_index`).
fn bucket_low(idx: usize) -> u64 {
    let idx = idx as u32;
    if idx < SUB_BUCKETS {
        return u64::from(idx);
    }
    let octave = idx / SUB_BUCKETS - 1 + SUB_BUCKETS_LOG2;
    if octave >= 64 {
        return u64::MAX;
    }
    let mantissa = u64::from(idx % SUB_BUCKETS);
    (1u64 << octave) | (mantissa << (octave - SUB_BUCKETS_LOG2))
}

impl LogHistogram {
    pub fn record(&mut self, v: u64) {
        let idx = bucket_index(v).min(MAX_BUCKETS - 1);
        if self.buckets.len() <= idx {
            self.buckets.resize(idx + 1, 0);
        }
        if let Some(slot) = self.buckets.get_mut(idx) {
            *slot = slot.saturating_add(1);
        }
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count = self.count.saturating_add(1);
        self.sum = self.sum.saturating_add(v);
    }

    /// Approximate quantile `q` in [0, 1] (bucket midpoint, clamped to the observed min/max).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let total: u64 = self.buckets.iter().map(|c| u64::from(*c)).sum();
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (idx, c) in self.buckets.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                let low = bucket_low(idx);
                let high = bucket_low(idx + 1);
                let mid = low + (high - low) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &LogHistogram) {
        if other.count == 0 {
            return;
        }
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        self.min = if self.count == 0 {
            other.min
        } else {
            self.min.min(other.min)
        };
        self.max = self.max.max(other.max);
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<u32>()
    }
}

/// Counters by name, at most `cap` names; further names are counted in `overflow`. A sorted
/// vector rather than a map: a handful of names per endpoint, and a map node costs ~400 bytes
/// even for one entry. Serialized as a map (`{"name": count}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CappedCounts {
    #[serde(with = "sorted_map")]
    counts: Vec<(String, u64)>,
    /// Observations whose name was not kept because the cap was reached.
    pub overflow: u64,
}

impl CappedCounts {
    pub fn add(&mut self, name: &str, n: u64, cap: usize) {
        match self.counts.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => {
                if let Some((_, c)) = self.counts.get_mut(i) {
                    *c = c.saturating_add(n);
                }
            }
            Err(i) if self.counts.len() < cap => self.counts.insert(i, (name.to_owned(), n)),
            Err(_) => self.overflow = self.overflow.saturating_add(n),
        }
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.counts
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .and_then(|i| self.counts.get(i))
            .map(|(_, c)| *c)
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.counts.iter().map(|(k, _)| k.as_str())
    }

    /// (name, count) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counts.iter().map(|(k, c)| (k.as_str(), *c))
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn merge(&mut self, other: &CappedCounts, cap: usize) {
        for (k, v) in &other.counts {
            self.add(k, *v, cap);
        }
        self.overflow = self.overflow.saturating_add(other.overflow);
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<(String, u64)>()
            + self.counts.iter().map(|(k, _)| k.capacity()).sum::<usize>()
    }
}

/// Serde for a sorted `Vec<(String, u64)>` as a map.
mod sorted_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(k, c)| (k, c)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u64)>, D::Error> {
        Ok(BTreeMap::<String, u64>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_consistent() {
        for v in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let idx = bucket_index(v);
            assert!(bucket_low(idx) <= v, "v={v} idx={idx}");
            if idx + 1 < MAX_BUCKETS && bucket_low(idx + 1) != u64::MAX {
                assert!(bucket_low(idx + 1) > v, "v={v} idx={idx}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_bucket_error() {
        let mut h = LogHistogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap_or(0) as f64;
        let p99 = h.quantile(0.99).unwrap_or(0) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.12, "p50={p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.12, "p99={p99}");
        assert_eq!(h.min, 1000);
        assert_eq!(h.max, 10_000_000);
        let mut m = LogHistogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count, 20_000);
        assert_eq!(m.quantile(0.5), h.quantile(0.5));
    }

    #[test]
    fn capped_counts_overflow() {
        let mut c = CappedCounts::default();
        for i in 0..10 {
            c.add(&format!("n{i}"), 1, 4);
        }
        c.add("n0", 5, 4);
        assert_eq!(c.len(), 4);
        assert_eq!(c.overflow, 6);
        assert_eq!(c.get("n0"), Some(6));
        assert_eq!(c.names().collect::<Vec<_>>(), ["n0", "n1", "n2", "n3"]);
    }
}
