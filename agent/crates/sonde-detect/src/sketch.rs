//! Small, bounded statistics: a decaying log-scale histogram (robust quantiles) and an EWMA.

use serde::{Deserialize, Serialize};

const BUCKETS: usize = 128;

/// Histogram with two buckets per power of two over the whole `u64` range. Counts halve when their
/// total passes a weight, so the baseline keeps adapting slowly after learning. Quantiles are bucket
/// upper bounds (≤ 41 % above the true value), good enough for "far above" tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogHist {
    counts: Vec<u32>,
    total: u32,
    /// Cached p99 (recomputed every 32 records).
    p99: u64,
    since: u32,
}

impl Default for LogHist {
    fn default() -> Self {
        LogHist {
            counts: vec![0; BUCKETS],
            total: 0,
            p99: 0,
            since: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    let x = v.saturating_add(1);
    let octave = 63 - x.leading_zeros() as usize;
    let half = if octave == 0 {
        0
    } else {
        ((x >> (octave - 1)) & 1) as usize
    };
    (octave * 2 + half).min(BUCKETS - 1)
}

fn upper(b: usize) -> u64 {
    let octave = b / 2;
    let base = 1u128 << octave;
    let top = if b.is_multiple_of(2) {
        base + base / 2
    } else {
        base * 2
    };
    u64::try_from(top.saturating_sub(1)).unwrap_or(u64::MAX)
}

impl LogHist {
    pub fn record(&mut self, v: u64, max_weight: u32) {
        if self.counts.len() != BUCKETS {
            // A snapshot from elsewhere: start over rather than index out of range.
            *self = LogHist::default();
        }
        if let Some(c) = self.counts.get_mut(bucket(v)) {
            *c = c.saturating_add(1);
        }
        self.total = self.total.saturating_add(1);
        if self.total > max_weight.max(16) {
            self.total = 0;
            for c in &mut self.counts {
                *c /= 2;
                self.total += *c;
            }
        }
        self.since += 1;
        if self.since >= 32 || self.total < 64 {
            self.since = 0;
            self.p99 = self.quantile(0.99);
        }
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// Cached 99th percentile (upper bucket bound).
    pub fn p99(&self) -> u64 {
        self.p99
    }

    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return upper(b);
            }
        }
        upper(BUCKETS - 1)
    }
}

/// Exponentially weighted moving average of a per-window quantity.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Ewma {
    pub value: f64,
    pub windows: u32,
}

impl Ewma {
    /// Folds one closed window, after `empty` empty windows in between.
    pub fn fold(&mut self, v: f64, empty: u64) {
        const A: f64 = 0.2;
        if self.windows == 0 {
            self.value = v;
        } else {
            self.value *= (1.0 - A).powi(empty.min(64) as i32);
            self.value = self.value * (1.0 - A) + v * A;
        }
        self.windows = self.windows.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_bounds_cover() {
        let mut last = 0;
        for v in [0u64, 1, 2, 3, 5, 100, 1000, 1 << 40, u64::MAX - 1, u64::MAX] {
            let b = bucket(v);
            assert!(b >= last);
            assert!(upper(b) >= v, "{v} bucket {b} upper {}", upper(b));
            last = b;
        }
    }

    #[test]
    fn quantiles_track_and_decay() {
        let mut h = LogHist::default();
        for i in 0..10_000u64 {
            h.record(1000 + i % 100, 4096);
        }
        assert!(h.p99() >= 1099 && h.p99() < 1600, "{}", h.p99());
        for _ in 0..20_000 {
            h.record(10, 4096);
        }
        assert!(h.p99() < 20, "adapted: {}", h.p99());
    }
}
