//! Baseline state: per endpoint, per principal (with per-endpoint slots), global peer statistics
//! and the monotonic clock. Everything here is serialisable (the persisted snapshot).

use std::collections::HashMap;

use ahash::RandomState;
use serde::{Deserialize, Serialize};

use crate::sketch::{Ewma, LogHist};

pub type Map<K, V> = HashMap<K, V, RandomState>;

/// Stable 64-bit hash (FNV-1a with a final avalanche), used for keys that are persisted.
pub fn hash64(domain: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(domain);
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Monotonic clock built from the steps between calls' timestamps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Clock {
    pub last_raw: Option<u64>,
    pub mono: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub exchanges: u64,
    pub findings: u64,
    pub principal_evictions: u64,
    pub endpoint_evictions: u64,
    pub group_evictions: u64,
    pub clock_backwards: u64,
    pub clock_forward_clamped: u64,
}

impl Clock {
    /// Advances with the step from the previous call, clamped to `[0, max_step]`.
    pub fn advance(&mut self, raw: u64, max_step: u64, c: &mut Counters) -> u64 {
        match self.last_raw {
            None => {
                if self.mono == 0 {
                    self.mono = raw;
                }
            }
            Some(last) if raw < last => c.clock_backwards += 1,
            Some(last) => {
                let step = raw - last;
                if step > max_step {
                    c.clock_forward_clamped += 1;
                }
                self.mono = self.mono.saturating_add(step.min(max_step));
            }
        }
        self.last_raw = Some(raw);
        self.mono
    }
}

/// Baseline of one endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointState {
    pub calls: u64,
    pub first_mono: u64,
    pub last_mono: u64,
    /// Path segment index of the object id (`{...}` in the template), if any.
    pub id_seg: Option<u16>,
    pub latency_us: LogHist,
    pub resp_bytes: LogHist,
    pub records: LogHist,
    /// Distinct ids one principal touched in one window (closed windows of all principals).
    pub ids_per_window: LogHist,
    /// Decaying counts of status classes 1xx..5xx.
    pub status: [f64; 5],
    pub authed: f64,
    pub total: f64,
    pub rate: Ewma,
    pub win_start: u64,
    pub win_calls: u64,
    /// Object id → principal that first got a 2xx for it.
    pub owners: Map<u64, u64>,
    pub owner_hits: f64,
    pub foreign_hits: f64,
}

impl EndpointState {
    pub fn new(template: &str, mono: u64) -> EndpointState {
        let id_seg = template
            .split('/')
            .enumerate()
            .filter(|(_, s)| s.starts_with('{') && *s != "{rest}")
            .map(|(i, _)| i)
            .last()
            .and_then(|i| u16::try_from(i).ok());
        EndpointState {
            first_mono: mono,
            last_mono: mono,
            id_seg,
            win_start: mono,
            ..EndpointState::default()
        }
    }

    pub fn learned(&self, min_calls: u64, min_ns: u64, mono: u64) -> bool {
        self.calls >= min_calls && mono.saturating_sub(self.first_mono) >= min_ns
    }

    pub fn auth_share(&self) -> f64 {
        if self.total <= 0.0 {
            0.0
        } else {
            self.authed / self.total
        }
    }

    pub fn owner_share(&self) -> Option<f64> {
        let n = self.owner_hits + self.foreign_hits;
        (n >= 50.0).then(|| self.owner_hits / n)
    }

    pub fn decay(&mut self, weight: f64) {
        if self.total > weight {
            self.total /= 2.0;
            self.authed /= 2.0;
            for s in &mut self.status {
                *s /= 2.0;
            }
        }
        if self.owner_hits + self.foreign_hits > weight {
            self.owner_hits /= 2.0;
            self.foreign_hits /= 2.0;
        }
    }
}

/// One principal's activity on one templated endpoint within the current window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Slot {
    pub ep: u64,
    pub calls: u32,
    /// Distinct ids this window (bounded sample in `ids`; past the bound, unseen ids still count).
    pub distinct: u32,
    pub ids: Vec<u64>,
    pub last_num: Option<u64>,
    pub run: u32,
    pub foreign: u32,
    pub fired: u8,
}

pub const SLOT_BOLA: u8 = 1;
pub const SLOT_SEQ: u8 = 2;
pub const SLOT_FOREIGN: u8 = 4;

pub const P_ERR: u32 = 1;
pub const P_ERR5: u32 = 2;
pub const P_SWEEP404: u32 = 4;
pub const P_SWEEP_EP: u32 = 8;
pub const P_RATE: u32 = 16;
pub const P_VOLUME: u32 = 32;

/// Per-window bound of the small distinct sets of a principal (endpoints, 404 paths).
pub const SMALL_SET: usize = 64;

/// Baseline and current window of one principal.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrincipalState {
    pub last_mono: u64,
    pub win_start: u64,
    pub calls: u32,
    pub err4: u32,
    pub err5: u32,
    pub bytes: u64,
    pub endpoints: Vec<u64>,
    pub paths404: Vec<u64>,
    pub fired: u32,
    pub calls_ewma: Ewma,
    pub bytes_ewma: Ewma,
    pub slots: Vec<Slot>,
}

/// Statistics over all principals' closed windows: what "peers" means.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Global {
    pub calls_per_window: LogHist,
    pub bytes_per_window: LogHist,
}

/// Everything that persists.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub clock: Clock,
    pub endpoints: Map<u64, EndpointState>,
    pub principals: Map<u64, PrincipalState>,
    pub global: Global,
    pub counters: Counters,
    /// Object-owner entries over all endpoints.
    pub owned_total: usize,
}

/// Removes the coldest entries (smallest `last`) until `keep` remain. Returns how many went.
pub fn evict_coldest<V>(map: &mut Map<u64, V>, keep: usize, last: impl Fn(&V) -> u64) -> u64 {
    let len = map.len();
    if len <= keep {
        return 0;
    }
    let remove = len - keep;
    let mut ages: Vec<u64> = map.values().map(&last).collect();
    let (_, t, _) = ages.select_nth_unstable(remove - 1);
    let t = *t;
    let below = ages.iter().filter(|&&a| a < t).count();
    let mut eq_left = remove - below;
    map.retain(|_, v| {
        let l = last(v);
        if l < t {
            false
        } else if l == t && eq_left > 0 {
            eq_left -= 1;
            false
        } else {
            true
        }
    });
    (len - map.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_survives_jumps() {
        let mut c = Clock::default();
        let mut n = Counters::default();
        assert_eq!(c.advance(1_000, 100, &mut n), 1_000);
        assert_eq!(c.advance(1_050, 100, &mut n), 1_050);
        assert_eq!(c.advance(10, 100, &mut n), 1_050); // backwards: no time passes
        assert_eq!(c.advance(40, 100, &mut n), 1_080); // then steps count again
        assert_eq!(c.advance(u64::MAX, 100, &mut n), 1_180); // forward jump clamped
        assert_eq!((n.clock_backwards, n.clock_forward_clamped), (1, 1));
    }

    #[test]
    fn eviction_keeps_the_hottest_even_with_ties() {
        let mut m: Map<u64, u64> = Map::default();
        for i in 0..100u64 {
            m.insert(i, i / 10);
        }
        assert_eq!(evict_coldest(&mut m, 35, |v| *v), 65);
        assert_eq!(m.len(), 35);
        assert!(m.values().all(|&v| v >= 6));
    }

    #[test]
    fn id_segment_from_template() {
        assert_eq!(EndpointState::new("/api/orders/{int}", 0).id_seg, Some(3));
        assert_eq!(
            EndpointState::new("/u/{uuid}/items/{int}/x", 0).id_seg,
            Some(4)
        );
        assert_eq!(EndpointState::new("/static/{rest}", 0).id_seg, None);
        assert_eq!(EndpointState::new("/health", 0).id_seg, None);
    }
}
