//! The on-disk spool of sealed, unacknowledged batches.
//!
//! One segment file per batch (`<seq, 20 digits>.seg`, an rmp-serde record holding the
//! protobuf-encoded batch), written to a temporary name and renamed so a crash never leaves a torn
//! segment under a real name. Segments are deleted when acked. The total size is bounded: when a
//! new batch would exceed it, the oldest batches are evicted and counted. A batch whose segment
//! cannot be written (disk full, read-only) stays in memory under the same bound, is still
//! delivered while the agent runs, and the failure is counted.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use sonde_proto::v1::Batch;

use crate::counters::Counters;

const SEGMENT_FORMAT_VERSION: u8 = 1;
const SEGMENT_SUFFIX: &str = ".seg";
const HIGH_WATER_FILE: &str = "high-water";

#[derive(Serialize, Deserialize)]
struct SegmentRecord {
    version: u8,
    seq: u64,
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
}

/// A sealed batch waiting for its ack.
pub struct PendingBatch {
    pub batch: Batch,
    pub size: u64,
    pub on_disk: bool,
}

impl PendingBatch {
    pub fn seq(&self) -> u64 {
        self.batch.seq
    }

    pub fn items(&self) -> u64 {
        (self.batch.endpoint_updates.len() + self.batch.anomalies.len()) as u64
    }
}

/// Hot-path warnings (evictions, failed writes) are logged at most this often, with a count of
/// what was suppressed in between.
const WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct RateLimitedWarn {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    /// Returns the number of suppressed repeats when it is time to log again.
    fn ready(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

pub struct Spool {
    evict_warn: RateLimitedWarn,
    write_warn: RateLimitedWarn,
    dir: PathBuf,
    max_bytes: u64,
    fsync: bool,
    pending: VecDeque<PendingBatch>,
    bytes: u64,
    high_water: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create or read the spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Spool {
    /// Opens the spool directory and loads every readable segment in seq order. Unreadable
    /// segments are removed and counted (`spool_corrupt`).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        fsync: bool,
        counters: &Counters,
    ) -> Result<Spool, SpoolError> {
        let dir_error = |source| SpoolError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(dir_error)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                segments.push((seq, entry.path()));
            } else if name.ends_with(".tmp") {
                // A write cut short by a crash: it was never acknowledged as spooled.
                let _ = fs::remove_file(entry.path());
            }
        }
        segments.sort_unstable_by_key(|(seq, _)| *seq);
        let high_water = fs::read_to_string(dir.join(HIGH_WATER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut spool = Spool {
            evict_warn: RateLimitedWarn::default(),
            write_warn: RateLimitedWarn::default(),
            dir: dir.to_path_buf(),
            max_bytes,
            fsync,
            pending: VecDeque::new(),
            bytes: 0,
            high_water,
        };
        for (seq, path) in segments {
            match read_segment(&path) {
                Some(batch) if batch.seq == seq => {
                    let size = file_size(&path);
                    spool.high_water = spool.high_water.max(seq);
                    spool.bytes += size;
                    spool.pending.push_back(PendingBatch {
                        batch,
                        size,
                        on_disk: true,
                    });
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing unreadable spool segment");
                    Counters::add(&counters.spool_corrupt, 1);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        spool.evict_to_fit(0, counters);
        spool.publish(counters);
        Ok(spool)
    }

    /// Highest seq ever sealed here (survives restarts through the high-water file).
    pub fn high_water(&self) -> u64 {
        self.high_water
    }

    pub fn pending(&self) -> &VecDeque<PendingBatch> {
        &self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds a sealed batch, writing its segment (failures are counted, the batch is kept).
    pub fn push(&mut self, batch: Batch, counters: &Counters) {
        let seq = batch.seq;
        let record = SegmentRecord {
            version: SEGMENT_FORMAT_VERSION,
            seq,
            batch: batch.encode_to_vec(),
        };
        let encoded = match rmp_serde::to_vec(&record) {
            Ok(bytes) => bytes,
            Err(error) => {
                // Encoding plain structs cannot fail in practice; keep the batch in memory anyway.
                tracing::error!(%error, seq, "cannot encode a spool segment");
                Vec::new()
            }
        };
        let size = encoded.len().max(record.batch.len()) as u64;
        self.evict_to_fit(size, counters);
        let on_disk = !encoded.is_empty() && self.write_segment(seq, &encoded, counters);
        self.high_water = self.high_water.max(seq);
        self.write_high_water();
        self.bytes += size;
        self.pending.push_back(PendingBatch {
            batch,
            size,
            on_disk,
        });
        Counters::add(&counters.spooled_batches, 1);
        self.publish(counters);
    }

    /// Drops every batch with seq <= `seq` (acknowledged), deleting its segment. Returns how many.
    pub fn ack_through(&mut self, seq: u64, counters: &Counters) -> u64 {
        let mut acked = 0;
        while self.pending.front().is_some_and(|p| p.seq() <= seq) {
            if let Some(done) = self.pending.pop_front() {
                self.forget(&done);
                acked += 1;
            }
        }
        self.publish(counters);
        acked
    }

    /// Drops one batch the collector refused.
    pub fn remove(&mut self, seq: u64, counters: &Counters) -> bool {
        let Some(index) = self.pending.iter().position(|p| p.seq() == seq) else {
            return false;
        };
        if let Some(done) = self.pending.remove(index) {
            self.forget(&done);
        }
        self.publish(counters);
        true
    }

    /// Size, count and age of what waits for an ack, for the exporter's counters.
    fn publish(&self, counters: &Counters) {
        Counters::set(&counters.spooled_bytes, self.bytes);
        Counters::set(&counters.pending_batches, self.pending.len() as u64);
        let oldest = self
            .pending
            .front()
            .map_or(0, |p| p.batch.sealed_at_unix_ns);
        Counters::set(&counters.oldest_pending_sealed_unix_ns, oldest);
    }

    fn forget(&mut self, done: &PendingBatch) {
        self.bytes = self.bytes.saturating_sub(done.size);
        if done.on_disk {
            let _ = fs::remove_file(self.segment_path(done.seq()));
        }
    }

    fn evict_to_fit(&mut self, incoming: u64, counters: &Counters) {
        while !self.pending.is_empty() && self.bytes + incoming > self.max_bytes {
            if let Some(oldest) = self.pending.pop_front() {
                if let Some(suppressed) = self.evict_warn.ready() {
                    tracing::warn!(
                        seq = oldest.seq(),
                        items = oldest.items(),
                        suppressed,
                        "spool full: evicting the oldest batch (counted in evicted_batches)"
                    );
                }
                Counters::add(&counters.evicted_batches, 1);
                Counters::add(&counters.evicted_items, oldest.items());
                self.forget(&oldest);
            }
        }
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
    }

    fn write_segment(&mut self, seq: u64, encoded: &[u8], counters: &Counters) -> bool {
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let result = (|| -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(encoded)?;
            if self.fsync {
                file.sync_data()?;
            }
            fs::rename(&tmp, self.segment_path(seq))
        })();
        match result {
            Ok(()) => true,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                Counters::add(&counters.spool_write_errors, 1);
                if let Some(suppressed) = self.write_warn.ready() {
                    tracing::warn!(%error, seq, suppressed, dir = %self.dir.display(), "cannot write a spool segment; keeping the batch in memory only");
                }
                false
            }
        }
    }

    fn write_high_water(&self) {
        let tmp = self.dir.join(format!("{HIGH_WATER_FILE}.tmp"));
        let ok = fs::write(&tmp, self.high_water.to_string())
            .and_then(|()| fs::rename(&tmp, self.dir.join(HIGH_WATER_FILE)));
        if ok.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn read_segment(path: &Path) -> Option<Batch> {
    let bytes = fs::read(path).ok()?;
    let record: SegmentRecord = rmp_serde::from_slice(&bytes).ok()?;
    if record.version != SEGMENT_FORMAT_VERSION {
        return None;
    }
    Batch::decode(record.batch.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::{EndpointKey, EndpointUpdate};

    fn batch(seq: u64, items: usize) -> Batch {
        Batch {
            seq,
            endpoint_updates: (0..items)
                .map(|i| EndpointUpdate {
                    key: Some(EndpointKey {
                        method: "GET".into(),
                        path_template: format!("/p/{i}"),
                        ..EndpointKey::default()
                    }),
                    call_count: i as u64,
                    ..EndpointUpdate::default()
                })
                .collect(),
            ..Batch::default()
        }
    }

    #[test]
    fn reopen_restores_pending_in_order() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(|source| SpoolError::Dir {
            path: "tmp".into(),
            source,
        })?;
        let counters = Counters::default();
        let mut spool = Spool::open(dir.path(), 1 << 20, false, &counters)?;
        for seq in [3, 4, 5] {
            spool.push(batch(seq, 2), &counters);
        }
        assert_eq!(spool.ack_through(3, &counters), 1);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20, false, &counters)?;
        let seqs: Vec<u64> = spool.pending().iter().map(PendingBatch::seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(spool.high_water(), 5);
        assert_eq!(spool.pending()[1].batch, batch(5, 2));
        Ok(())
    }

    #[test]
    fn oldest_pending_seal_time_follows_acks_and_reopen() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(|source| SpoolError::Dir {
            path: "tmp".into(),
            source,
        })?;
        let counters = Counters::default();
        let mut spool = Spool::open(dir.path(), 1 << 20, false, &counters)?;
        assert_eq!(Counters::get(&counters.oldest_pending_sealed_unix_ns), 0);
        for (seq, sealed) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
            let mut b = batch(seq, 1);
            b.sealed_at_unix_ns = sealed;
            spool.push(b, &counters);
        }
        assert_eq!(
            Counters::get(&counters.oldest_pending_sealed_unix_ns),
            1_000
        );
        spool.ack_through(1, &counters);
        assert_eq!(
            Counters::get(&counters.oldest_pending_sealed_unix_ns),
            2_000
        );
        drop(spool);
        let reopened = Counters::default();
        let mut spool = Spool::open(dir.path(), 1 << 20, false, &reopened)?;
        assert_eq!(
            Counters::get(&reopened.oldest_pending_sealed_unix_ns),
            2_000
        );
        spool.ack_through(3, &reopened);
        assert_eq!(Counters::get(&reopened.oldest_pending_sealed_unix_ns), 0);
        Ok(())
    }

    #[test]
    fn bound_evicts_oldest_and_counts() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(|source| SpoolError::Dir {
            path: "tmp".into(),
            source,
        })?;
        let counters = Counters::default();
        let one = rmp_serde::to_vec(&SegmentRecord {
            version: 1,
            seq: 1,
            batch: batch(1, 5).encode_to_vec(),
        })
        .map(|v| v.len() as u64)
        .unwrap_or(0);
        let mut spool = Spool::open(dir.path(), one * 3 + one / 2, false, &counters)?;
        for seq in 1..=5 {
            spool.push(batch(seq, 5), &counters);
        }
        let seqs: Vec<u64> = spool.pending().iter().map(PendingBatch::seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(Counters::get(&counters.evicted_batches), 2);
        assert_eq!(Counters::get(&counters.evicted_items), 10);
        let files = fs::read_dir(dir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(files, 3);
        Ok(())
    }

    #[test]
    fn corrupt_segment_is_removed_and_counted() -> Result<(), SpoolError> {
        let dir = tempfile::tempdir().map_err(|source| SpoolError::Dir {
            path: "tmp".into(),
            source,
        })?;
        let counters = Counters::default();
        let mut spool = Spool::open(dir.path(), 1 << 20, false, &counters)?;
        spool.push(batch(1, 1), &counters);
        spool.push(batch(2, 1), &counters);
        drop(spool);
        let _ = fs::write(dir.path().join(format!("{:020}.seg", 1)), b"\xc1garbage");
        let spool = Spool::open(dir.path(), 1 << 20, false, &counters)?;
        assert_eq!(
            spool
                .pending()
                .iter()
                .map(PendingBatch::seq)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(Counters::get(&counters.spool_corrupt), 1);
        Ok(())
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            Push(usize),
            Ack(u64),
            Reject(u64),
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..12).prop_map(Op::Push),
                2 => (0u64..8).prop_map(Op::Ack),
                1 => (0u64..8).prop_map(Op::Reject),
                1 => Just(Op::Reopen),
            ]
        }

        fn disk_seqs(dir: &Path) -> Vec<u64> {
            let mut seqs: Vec<u64> = fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()?
                                .strip_suffix(SEGMENT_SUFFIX)?
                                .parse()
                                .ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            seqs.sort_unstable();
            seqs
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Whatever the order of pushes, acks, refusals and restarts: the spool stays within
            /// its bound, in seq order, mirrors the disk exactly, and every batch ever pushed is
            /// either pending, acked, refused or counted as evicted.
            #[test]
            fn spool_invariants(ops in proptest::collection::vec(op(), 1..60), bound in 600u64..6000) {
                let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let counters = Counters::default();
                let mut spool = Spool::open(dir.path(), bound, false, &counters)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut next = 1u64;
                let mut pushed = 0u64;
                let mut acked = 0u64;
                let mut rejected = 0u64;
                for op in ops {
                    match op {
                        Op::Push(items) => {
                            spool.push(batch(next, items), &counters);
                            next += 1;
                            pushed += 1;
                        }
                        Op::Ack(back) => {
                            acked += spool.ack_through(next.saturating_sub(back + 1), &counters);
                        }
                        Op::Reject(back) => {
                            if spool.remove(next.saturating_sub(back + 1), &counters) {
                                rejected += 1;
                            }
                        }
                        Op::Reopen => {
                            let before: Vec<u64> = spool.pending().iter().map(PendingBatch::seq).collect();
                            drop(spool);
                            spool = Spool::open(dir.path(), bound, false, &counters)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            let after: Vec<u64> = spool.pending().iter().map(PendingBatch::seq).collect();
                            prop_assert_eq!(after, before);
                            prop_assert!(spool.high_water() >= next.saturating_sub(1));
                        }
                    }
                    let seqs: Vec<u64> = spool.pending().iter().map(PendingBatch::seq).collect();
                    prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", seqs);
                    prop_assert_eq!(disk_seqs(dir.path()), seqs.clone());
                    let total: u64 = spool.pending().iter().map(|p| p.size).sum();
                    prop_assert_eq!(total, Counters::get(&counters.spooled_bytes));
                    // One batch larger than the whole bound is kept alone rather than lost.
                    prop_assert!(total <= bound || seqs.len() == 1, "{} bytes > bound {}", total, bound);
                    let evicted = Counters::get(&counters.evicted_batches);
                    prop_assert_eq!(pushed, seqs.len() as u64 + acked + rejected + evicted);
                }
            }
        }
    }
}
