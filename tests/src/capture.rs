//! A live capture collecting every event it sees.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sonde_agent::capture::{KernelCounters, LiveCapture};
use sonde_agent::config::CaptureConfig;
use sonde_model::{CaptureEvent, ConnId, ConnOpen, DataChunk, Direction};

pub struct Capture {
    live: LiveCapture,
    events: Arc<Mutex<Vec<CaptureEvent>>>,
    collector: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing connections with one of `ports` as local or remote port, both ends of
    /// a local call included (these tests compare the client's bytes with the server's).
    pub fn start(ports: &[u16]) -> Capture {
        Capture::start_with(CaptureConfig {
            ports: ports.to_vec(),
            skip_local_client_views: false,
            ..CaptureConfig::default()
        })
    }

    pub fn start_with(cfg: CaptureConfig) -> Capture {
        assert!(
            crate::privileged(),
            "the end-to-end tests load eBPF programs: run them as root"
        );
        let mut live = LiveCapture::start(&cfg).expect("live capture starts");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<CaptureEvent>>(1024);
        live.spawn_reader(tx, Duration::from_millis(5))
            .expect("ring reader starts");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let collector = std::thread::spawn(move || {
            while let Some(batch) = rx.blocking_recv() {
                sink.lock().expect("events lock").extend(batch);
            }
        });
        Capture {
            live,
            events,
            collector: Some(collector),
        }
    }

    pub fn events(&self) -> Vec<CaptureEvent> {
        self.events.lock().expect("events lock").clone()
    }

    pub fn counters(&self) -> KernelCounters {
        self.live.kernel_counters()
    }

    /// The TLS attacher's counters (files attached, delay after exec).
    pub fn tls_stats(&self) -> Vec<(&'static str, u64)> {
        self.live.tls_stats().snapshot()
    }

    pub fn report(&self) -> String {
        self.live.report().to_string()
    }

    /// Every connection seen, with its open event and its chunks per direction.
    pub fn connections(&self) -> BTreeMap<ConnId, Conn> {
        connections(&self.events())
    }

    /// Stops the capture after a final drain and returns every event.
    pub fn stop(mut self) -> (Vec<CaptureEvent>, KernelCounters) {
        std::thread::sleep(Duration::from_millis(100));
        self.live.stop();
        let counters = self.live.kernel_counters();
        drop(self.live);
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
        let events = std::mem::take(&mut *self.events.lock().expect("events lock"));
        (events, counters)
    }
}

/// One connection's events.
#[derive(Debug, Default, Clone)]
pub struct Conn {
    pub open: Option<ConnOpen>,
    pub chunks: [Vec<DataChunk>; 2],
    pub closed: bool,
}

impl Conn {
    pub fn chunks(&self, dir: Direction) -> &[DataChunk] {
        &self.chunks[dir.index()]
    }

    /// Total bytes the direction covered (captured or not).
    pub fn total_len(&self, dir: Direction) -> u64 {
        self.chunks(dir).iter().map(|c| c.len).sum()
    }

    pub fn captured_len(&self, dir: Direction) -> u64 {
        self.chunks(dir).iter().map(|c| c.data.len() as u64).sum()
    }

    pub fn missing_len(&self, dir: Direction) -> u64 {
        self.chunks(dir).iter().map(|c| c.missing()).sum()
    }

    /// The direction's captured bytes in order, with `missing` bytes shown as NULs, after
    /// checking that chunks tile the stream from offset 0 without holes or overlaps.
    pub fn stream(&self, dir: Direction) -> Vec<u8> {
        let mut chunks = self.chunks(dir).to_vec();
        chunks.sort_by_key(|c| c.offset);
        let mut out = Vec::new();
        let mut next = chunks.first().map(|c| c.offset).unwrap_or(0);
        for c in &chunks {
            assert_eq!(
                c.offset, next,
                "chunks of {dir:?} must tile the stream: {chunks:?}"
            );
            out.extend_from_slice(&c.data);
            out.resize(out.len() + c.missing() as usize, 0);
            next = c.end();
        }
        out
    }

    pub fn text(&self, dir: Direction) -> String {
        String::from_utf8_lossy(&self.stream(dir)).into_owned()
    }

    pub fn comm(&self) -> &str {
        self.open
            .as_ref()
            .map(|o| o.process.comm.as_str())
            .unwrap_or("")
    }
}

pub fn connections(events: &[CaptureEvent]) -> BTreeMap<ConnId, Conn> {
    let mut conns: BTreeMap<ConnId, Conn> = BTreeMap::new();
    for ev in events {
        let c = conns.entry(ev.conn()).or_default();
        match ev {
            CaptureEvent::Open(o) => c.open = Some(o.clone()),
            CaptureEvent::Data(d) => c.chunks[d.direction.index()].push(d.clone()),
            CaptureEvent::Close(_) => c.closed = true,
        }
    }
    conns
}

/// Bytes helper for assertions.
pub fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

pub fn bytes_of(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
