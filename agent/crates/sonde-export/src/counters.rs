//! Exporter counters: shared atomics, read as a snapshot with [`ExportStats`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counters {
    pub queued_items: AtomicU64,
    pub sent_batches: AtomicU64,
    pub acked_batches: AtomicU64,
    pub acked_items: AtomicU64,
    pub spooled_batches: AtomicU64,
    pub spooled_bytes: AtomicU64,
    pub pending_batches: AtomicU64,
    pub oldest_pending_sealed_unix_ns: AtomicU64,
    pub evicted_batches: AtomicU64,
    pub evicted_items: AtomicU64,
    pub spool_write_errors: AtomicU64,
    pub spool_corrupt: AtomicU64,
    pub rejected_batches: AtomicU64,
    pub oversized_items: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ExportStats {
        ExportStats {
            queued_items: Counters::get(&self.queued_items),
            sent_batches: Counters::get(&self.sent_batches),
            acked_batches: Counters::get(&self.acked_batches),
            acked_items: Counters::get(&self.acked_items),
            spooled_batches: Counters::get(&self.spooled_batches),
            spooled_bytes: Counters::get(&self.spooled_bytes),
            pending_batches: Counters::get(&self.pending_batches),
            oldest_pending_sealed_unix_ns: Counters::get(&self.oldest_pending_sealed_unix_ns),
            evicted_batches: Counters::get(&self.evicted_batches),
            evicted_items: Counters::get(&self.evicted_items),
            spool_write_errors: Counters::get(&self.spool_write_errors),
            spool_corrupt: Counters::get(&self.spool_corrupt),
            rejected_batches: Counters::get(&self.rejected_batches),
            oversized_items: Counters::get(&self.oversized_items),
            reconnects: Counters::get(&self.reconnects),
            connected: Counters::get(&self.connected) != 0,
        }
    }
}

/// A snapshot of the exporter's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Items accepted from callers.
    pub queued_items: u64,
    /// Batch transmissions (a batch re-sent after a reconnect counts again).
    pub sent_batches: u64,
    pub acked_batches: u64,
    pub acked_items: u64,
    /// Batches sealed into the spool.
    pub spooled_batches: u64,
    /// Current size of unacknowledged batches.
    pub spooled_bytes: u64,
    /// Current number of unacknowledged batches.
    pub pending_batches: u64,
    /// When the oldest unacknowledged batch was sealed (Unix ns; 0 when none waits): the
    /// export lag is its age.
    pub oldest_pending_sealed_unix_ns: u64,
    /// Batches (and their items) dropped because the spool bound was reached.
    pub evicted_batches: u64,
    pub evicted_items: u64,
    /// Segment writes that failed (disk full, read-only); those batches were kept in memory.
    pub spool_write_errors: u64,
    /// Unreadable segments removed at start-up.
    pub spool_corrupt: u64,
    /// Batches the collector refused as invalid.
    pub rejected_batches: u64,
    /// Items dropped because alone they exceed the gRPC message limit.
    pub oversized_items: u64,
    /// Connections lost (each followed by a reconnect attempt).
    pub reconnects: u64,
    pub connected: bool,
}

impl ExportStats {
    /// As heartbeat counters, prefixed `export.`.
    pub fn as_counters(&self) -> HashMap<String, u64> {
        HashMap::from([
            ("export.queued_items".to_string(), self.queued_items),
            ("export.sent_batches".to_string(), self.sent_batches),
            ("export.acked_batches".to_string(), self.acked_batches),
            ("export.spooled_batches".to_string(), self.spooled_batches),
            ("export.spooled_bytes".to_string(), self.spooled_bytes),
            ("export.pending_batches".to_string(), self.pending_batches),
            (
                "export.drops.spool_evicted_items".to_string(),
                self.evicted_items,
            ),
            (
                "export.spool_write_errors".to_string(),
                self.spool_write_errors,
            ),
            ("export.rejected_batches".to_string(), self.rejected_batches),
            (
                "export.drops.oversized_items".to_string(),
                self.oversized_items,
            ),
            ("export.reconnects".to_string(), self.reconnects),
        ])
    }
}
