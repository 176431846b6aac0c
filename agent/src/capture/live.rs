//! The live source: loads the eBPF programs, attaches the best hooks this kernel accepts, and
//! reads the ring buffer on a dedicated thread into the pipeline's bounded channel.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{KProbe, TracePoint};
use aya::{Ebpf, EbpfLoader};
use sonde_common::{Config, Counters, ListenerKey, counter};
use sonde_model::CaptureEvent;
use tokio::sync::mpsc;

use super::decode::{Clock, Decoded, Decoder};
use super::strategy::{Attempt, StrategyReport, TcpStrategy};
use super::tls::{ProcNotice, TlsAttacher, TlsStats};
use super::{CaptureError, ProbeMetrics, procfs, tracefs};
use crate::config::CaptureConfig;

/// The programs compiled from ebpf/sonde-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));

/// Syscall programs every strategy needs: (program, tracepoint) in category `syscalls`.
const SYSCALL_PROGRAMS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    "sys_enter_close",
    "sys_enter_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
];

/// Syscalls that not every architecture has (arm64 lacks dup2): attached when present.
const OPTIONAL_SYSCALL_PROGRAMS: &[&str] = &["sys_enter_dup2", "sys_enter_dup3"];

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub values: Vec<(&'static str, u64)>,
}

impl KernelCounters {
    pub fn get(&self, name: &str) -> u64 {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    /// Counters that count lost data.
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter(|(i, _)| counter::is_drop(*i as u32))
            .map(|(_, (n, v))| (*n, *v))
    }
}

/// Reads the kernel counters; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct CountersReader {
    map: Arc<PerCpuArray<MapData, Counters>>,
}

impl CountersReader {
    /// Sums the per-CPU values.
    pub fn read(&self) -> KernelCounters {
        let per_cpu = self
            .map
            .get(&0, 0)
            .map(|v| v.iter().copied().collect::<Vec<_>>());
        let per_cpu = per_cpu.unwrap_or_default();
        let values = counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, per_cpu.iter().map(|c| c.values[i]).sum()))
            .collect();
        KernelCounters { values }
    }
}

/// User-space counters of the ring reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub records: AtomicU64,
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub decode_errors: AtomicU64,
    pub addrs_resolved: AtomicU64,
    pub addrs_unresolved: AtomicU64,
    /// Time the reader thread spent waiting for the pipeline (backpressure).
    pub blocked_ns: AtomicU64,
    /// Events of connections the port filter excludes, known only once procfs named them.
    pub filtered_events: AtomicU64,
}

impl ReaderStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("records", self.records.load(Ordering::Relaxed)),
            ("events", self.events.load(Ordering::Relaxed)),
            ("batches", self.batches.load(Ordering::Relaxed)),
            ("decode_errors", self.decode_errors.load(Ordering::Relaxed)),
            (
                "addrs_resolved",
                self.addrs_resolved.load(Ordering::Relaxed),
            ),
            (
                "addrs_unresolved",
                self.addrs_unresolved.load(Ordering::Relaxed),
            ),
            ("blocked_ns", self.blocked_ns.load(Ordering::Relaxed)),
            (
                "filtered_events",
                self.filtered_events.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// Process notices waiting for the TLS attacher at most (further ones are counted and lost).
const PROC_NOTICE_QUEUE: usize = 4096;

/// A loaded and attached capture.
pub struct LiveCapture {
    /// Shared with the TLS attacher thread, which attaches uprobes as libraries appear.
    ebpf: Arc<Mutex<Ebpf>>,
    report: StrategyReport,
    counters: Arc<PerCpuArray<MapData, Counters>>,
    stats: Arc<ReaderStats>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The port filter, applied again in user space to connections whose addresses only procfs
    /// knew (the kernel side cannot filter what it cannot name).
    ports: Vec<u16>,
    probes: ProbeMetrics,
    tls_stats: Arc<TlsStats>,
    /// Exec/exit records go from the ring reader to the TLS attacher through this.
    proc_tx: Option<std::sync::mpsc::SyncSender<ProcNotice>>,
    tls_thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveCapture {
    /// Loads the programs, probes and attaches hooks, and configures the kernel side.
    pub fn start(cfg: &CaptureConfig) -> Result<LiveCapture, CaptureError> {
        LiveCapture::start_inner(cfg, false)
    }

    /// Attaches a program that returns at once to every hook the real capture would use: the
    /// cost floor of the hook set, for benchmarks. Nothing is captured.
    pub fn start_empty(cfg: &CaptureConfig) -> Result<LiveCapture, CaptureError> {
        LiveCapture::start_inner(cfg, true)
    }

    fn start_inner(cfg: &CaptureConfig, empty: bool) -> Result<LiveCapture, CaptureError> {
        raise_memlock_limit();
        let tracefs_root = tracefs::ensure_tracefs()?;
        if let Err(e) = tracefs::ensure_bpffs() {
            tracing::warn!(error = %e, "bpffs unavailable; maps cannot be pinned");
        }
        cfg.validate()
            .map_err(|e| CaptureError::Config(e.to_string()))?;
        // Parsed while the programs load and verify (tens of milliseconds against seconds).
        let sock_offsets = std::thread::Builder::new()
            .name("sonde-btf".into())
            .spawn(kernel_sock_offsets)
            .map_err(|e| CaptureError::Load(format!("starting the BTF reader: {e}")))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(format!("{e:#}")))?;

        let has_sock_length = tracefs::has_tracepoint(&tracefs_root, "sock", "sock_send_length")
            && tracefs::has_tracepoint(&tracefs_root, "sock", "sock_recv_length");
        let has_state = tracefs::has_tracepoint(&tracefs_root, "sock", "inet_sock_set_state");
        let tp = if has_state {
            tracefs::tracepoint_offsets(&tracefs_root, has_sock_length)?
        } else {
            Default::default()
        };

        if empty {
            let p: &mut TracePoint = ebpf
                .program_mut("empty_tracepoint")
                .ok_or_else(|| CaptureError::Load("program empty_tracepoint missing".into()))?
                .try_into()
                .map_err(|e| CaptureError::Load(format!("empty_tracepoint: {e}")))?;
            p.load()
                .map_err(|e| CaptureError::Load(format!("loading empty_tracepoint: {e:#}")))?;
        }
        let attach_tracepoint = |ebpf: &mut Ebpf, prog: &str, category: &str, name: &str| {
            if empty {
                attach_loaded(ebpf, "empty_tracepoint", category, name)
            } else {
                attach_tracepoint(ebpf, prog, category, name)
            }
        };
        let mut attached = Vec::new();
        for name in SYSCALL_PROGRAMS {
            attach_tracepoint(&mut ebpf, name, "syscalls", name)?;
            attached.push((*name).to_string());
        }
        for name in OPTIONAL_SYSCALL_PROGRAMS {
            if tracefs::has_tracepoint(&tracefs_root, "syscalls", name) {
                attach_tracepoint(&mut ebpf, name, "syscalls", name)?;
                attached.push((*name).to_string());
            }
        }
        let addresses_from_kernel = has_state
            && match attach_tracepoint(
                &mut ebpf,
                "inet_sock_set_state",
                "sock",
                "inet_sock_set_state",
            ) {
                Ok(()) => {
                    attached.push("inet_sock_set_state".into());
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inet_sock_set_state refused; addresses from procfs");
                    false
                }
            };

        let mut attempts = Vec::new();
        for strategy in cfg.tcp_strategy.candidates() {
            let result = match strategy {
                TcpStrategy::SockTracepoints if !has_sock_length => Err(CaptureError::Attach(
                    "sock_send_length tracepoint absent (Linux < 6.4)".into(),
                )),
                TcpStrategy::SockTracepoints => {
                    attach_tracepoint(&mut ebpf, "sock_send_length", "sock", "sock_send_length")
                        .and_then(|()| {
                            attach_tracepoint(
                                &mut ebpf,
                                "sock_recv_length",
                                "sock",
                                "sock_recv_length",
                            )
                        })
                        .map(|()| vec!["sock_send_length", "sock_recv_length"])
                }
                TcpStrategy::Kprobes => {
                    attach_kprobe(&mut ebpf, "kprobe_tcp_sendmsg", "tcp_sendmsg")
                        .and_then(|()| {
                            attach_kprobe(&mut ebpf, "kprobe_tcp_recvmsg", "tcp_recvmsg")
                        })
                        .map(|()| vec!["kprobe_tcp_sendmsg", "kprobe_tcp_recvmsg"])
                }
                TcpStrategy::FdTracking => Ok(vec![]),
            };
            match result {
                Ok(names) => {
                    attached.extend(names.into_iter().map(String::from));
                    attempts.push(Attempt {
                        strategy,
                        error: None,
                    });
                    break;
                }
                Err(e) => {
                    tracing::info!(strategy = strategy.as_str(), error = %e, "hook strategy refused");
                    attempts.push(Attempt {
                        strategy,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        let tcp = StrategyReport::choose(&attempts);
        let Some(chosen) = tcp else {
            return Err(CaptureError::Attach(
                "no TCP identification strategy attached".into(),
            ));
        };

        // Without addresses from the kernel no client can be matched to a listener.
        let skip_local_peers =
            cfg.skip_local_client_views && cfg.pids.is_empty() && addresses_from_kernel && !empty;
        if skip_local_peers {
            let mut excluded = cfg.exclude_pids.clone();
            excluded.push(std::process::id());
            seed_listeners(
                &mut ebpf,
                &procfs::listeners(std::path::Path::new("/proc"), &excluded),
            )?;
        }
        let config = Config {
            self_tgid: std::process::id(),
            // In range: `validate` above refused anything else.
            chunk_size: cfg.chunk_size,
            max_chunks_per_call: cfg.max_chunks_per_call,
            tgid_filter_enabled: u32::from(!cfg.pids.is_empty()),
            port_filter_enabled: u32::from(!cfg.ports.is_empty()),
            sock_tracepoints: u32::from(chosen.marks_in_syscall()),
            exclude_enabled: u32::from(!cfg.exclude_pids.is_empty()),
            local_peer_skip: u32::from(skip_local_peers),
            wakeup_threshold: cfg.wakeup_threshold_bytes,
            tp,
            regs: user_regs_offsets(),
            sock: sock_offsets.join().unwrap_or_default(),
        };
        fill_set::<u32>(&mut ebpf, "TGID_FILTER", &cfg.pids)?;
        fill_set::<u16>(&mut ebpf, "PORT_FILTER", &cfg.ports)?;
        fill_set::<u32>(&mut ebpf, "TGID_EXCLUDE", &cfg.exclude_pids)?;
        // Written last: until CONFIG holds self_tgid the programs see no config and do nothing.
        let mut config_map: Array<_, Config> = Array::try_from(
            ebpf.map_mut("CONFIG")
                .ok_or_else(|| CaptureError::Load("map CONFIG missing".into()))?,
        )
        .map_err(|e| CaptureError::Load(format!("CONFIG: {e}")))?;
        config_map
            .set(0, config, 0)
            .map_err(|e| CaptureError::Load(format!("CONFIG: {e}")))?;

        let counters = Arc::new(
            PerCpuArray::try_from(
                ebpf.take_map("COUNTERS")
                    .ok_or_else(|| CaptureError::Load("map COUNTERS missing".into()))?,
            )
            .map_err(|e| CaptureError::Load(format!("COUNTERS: {e}")))?,
        );

        // TLS plaintext: the uprobe programs, and the exec/exit tracepoints that say where
        // TLS libraries appear. Not fatal: without them the capture still sees cleartext.
        let tls_ready = if !cfg.tls.enabled {
            Err("capture.tls.enabled = false".to_string())
        } else {
            super::tls::attach::load_programs(&mut ebpf, empty).and_then(|()| {
                for (prog, name) in [
                    ("proc_exec", "sched_process_exec"),
                    ("proc_exit", "sched_process_exit"),
                ] {
                    attach_tracepoint(&mut ebpf, prog, "sched", name).map_err(|e| e.to_string())?;
                    attached.push(prog.to_string());
                }
                Ok(())
            })
        };
        if let Err(e) = &tls_ready {
            tracing::warn!(error = %e, "TLS plaintext capture off");
        }
        let ebpf = Arc::new(Mutex::new(ebpf));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tls_stats = Arc::new(TlsStats::default());
        let mut proc_tx = None;
        let mut tls_thread = None;
        let tls = match tls_ready {
            Ok(()) => {
                let mut attacher =
                    TlsAttacher::new(ebpf.clone(), empty, cfg.tls.clone(), PathBuf::from("/proc"));
                // At start, synchronously: processes already running are covered on return.
                attacher.scan_all();
                let n = attacher.attached_paths().len();
                tls_stats = attacher.stats();
                let (tx, rx) = std::sync::mpsc::sync_channel(PROC_NOTICE_QUEUE);
                proc_tx = Some(tx);
                let stop = stop.clone();
                tls_thread = Some(
                    std::thread::Builder::new()
                        .name("sonde-tls".into())
                        .spawn(move || attacher.run(rx, stop))
                        .map_err(|e| {
                            CaptureError::Load(format!("spawning the TLS attacher: {e}"))
                        })?,
                );
                Ok(n)
            }
            Err(e) => Err(e),
        };

        let report = StrategyReport {
            syscall_hooks: "syscall tracepoints",
            tcp,
            attempts,
            addresses_from_kernel,
            attached,
            tls,
        };
        tracing::info!(report = %report, "capture attached");
        let probes = ProbeMetrics::default();
        let kprobes = report
            .attached
            .iter()
            .filter(|name| name.starts_with("kprobe_"))
            .count();
        probes.set_attached("tracepoint", report.attached.len() - kprobes);
        probes.set_attached("kprobe", kprobes);
        probes.set_attached("uprobe", 0);
        Ok(LiveCapture {
            ebpf,
            report,
            counters,
            stats: Arc::new(ReaderStats::default()),
            stop,
            reader: None,
            ports: cfg.ports.clone(),
            probes,
            tls_stats,
            proc_tx,
            tls_thread,
        })
    }

    /// Counters of the TLS attacher (files and probes attached, attach delay after exec).
    pub fn tls_stats(&self) -> Arc<TlsStats> {
        self.tls_stats.clone()
    }

    /// A handle that reads the kernel counters from another thread.
    pub fn counters_reader(&self) -> CountersReader {
        CountersReader {
            map: self.counters.clone(),
        }
    }

    /// The probe gauges of this capture (attached probes, blind processes).
    pub fn probe_metrics(&self) -> &ProbeMetrics {
        &self.probes
    }

    pub fn report(&self) -> &StrategyReport {
        &self.report
    }

    pub fn reader_stats(&self) -> Arc<ReaderStats> {
        self.stats.clone()
    }

    /// Sums the per-CPU kernel counters.
    pub fn kernel_counters(&self) -> KernelCounters {
        self.counters_reader().read()
    }

    /// Starts the ring reader thread: it drains the ring in batches (on wake-up or every
    /// `poll_interval`), decodes, and blocks on the channel when the pipeline is slow, so
    /// pressure backs up into the ring, where overflow is counted by the kernel side.
    pub fn spawn_reader(
        &mut self,
        tx: mpsc::Sender<Vec<CaptureEvent>>,
        poll_interval: Duration,
    ) -> Result<(), CaptureError> {
        let ring = RingBuf::try_from(
            self.ebpf
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_map("EVENTS")
                .ok_or_else(|| CaptureError::Load("map EVENTS missing".into()))?,
        )
        .map_err(|e| CaptureError::Load(format!("EVENTS: {e}")))?;
        let stats = self.stats.clone();
        let stop = self.stop.clone();
        let ports = self.ports.clone();
        let procs = ProcForward {
            tx: self.proc_tx.take(),
            stats: self.tls_stats.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("sonde-ring".into())
            .spawn(move || read_ring(ring, tx, poll_interval, stats, stop, ports, procs))
            .map_err(|e| CaptureError::Load(format!("spawning the ring reader: {e}")))?;
        self.reader = Some(handle);
        Ok(())
    }

    /// Stops the reader after a last drain; programs detach when `self` drops.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        if let Some(h) = self.tls_thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands exec/exit records to the TLS attacher without ever blocking the ring reader.
struct ProcForward {
    tx: Option<std::sync::mpsc::SyncSender<ProcNotice>>,
    stats: Arc<TlsStats>,
}

impl ProcForward {
    fn send(&self, notice: ProcNotice) {
        if let Some(tx) = &self.tx
            && tx.try_send(notice).is_err()
        {
            self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn read_ring(
    mut ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<CaptureEvent>>,
    poll_interval: Duration,
    stats: Arc<ReaderStats>,
    stop: Arc<AtomicBool>,
    ports: Vec<u16>,
    procs: ProcForward,
) {
    const BATCH: usize = 1024;
    let mut filtered: std::collections::HashSet<sonde_model::ConnId> = Default::default();
    let mut decoder = Decoder::new(Clock::now());
    let proc_root = PathBuf::from("/proc");
    let raw_fd = ring.as_fd().as_raw_fd();
    let timeout_ms = poll_interval.as_millis().clamp(1, 1000) as i32;
    let mut batch: Vec<CaptureEvent> = Vec::with_capacity(BATCH);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            stats.records.fetch_add(1, Ordering::Relaxed);
            match decoder.decode(&item) {
                Ok(Decoded::Event(ev)) if !filtered.is_empty() && filtered.contains(&ev.conn()) => {
                    match &ev {
                        CaptureEvent::Close(c) => {
                            filtered.remove(&c.conn);
                        }
                        // Its bytes are in the batch's arena: they must leave with it.
                        CaptureEvent::Data(_) => decoder.discard_last_data(),
                        CaptureEvent::Open(_) => {}
                    }
                    stats.filtered_events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Decoded::Event(ev)) => batch.push(ev),
                Ok(Decoded::Proc(notice)) => procs.send(notice),
                Ok(Decoded::OpenNeedsAddrs(mut open)) => {
                    match procfs::resolve(&proc_root, open.conn.tgid, open.conn.fd) {
                        Some(r) => {
                            if open.local.is_none() {
                                open.local = Some(r.local);
                                open.remote = Some(r.remote);
                            }
                            if open.role == sonde_model::Role::Unknown {
                                open.role = r.role;
                            }
                            stats.addrs_resolved.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            stats.addrs_unresolved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let port_ok = ports.is_empty()
                        || [open.local, open.remote]
                            .iter()
                            .flatten()
                            .any(|a| ports.contains(&a.port()));
                    if port_ok {
                        batch.push(CaptureEvent::Open(open));
                    } else {
                        filtered.insert(open.conn);
                        stats.filtered_events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "undecodable ring record");
                }
            }
            drop(item);
            if batch.len() >= BATCH {
                send_batch(&mut decoder, &mut batch, &tx, &stats);
                if tx.is_closed() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            send_batch(&mut decoder, &mut batch, &tx, &stats);
        }
        if stopping || tx.is_closed() {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: raw_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a timeout bounds the wait so `stop` is seen.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }
}

fn send_batch(
    decoder: &mut Decoder,
    batch: &mut Vec<CaptureEvent>,
    tx: &mpsc::Sender<Vec<CaptureEvent>>,
    stats: &ReaderStats,
) {
    decoder.finish_batch(batch);
    let n = batch.len() as u64;
    let events = std::mem::replace(batch, Vec::with_capacity(1024));
    let start = std::time::Instant::now();
    if tx.blocking_send(events).is_ok() {
        stats.events.fetch_add(n, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .blocked_ns
        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), CaptureError> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| CaptureError::Load(format!("program {prog} missing from the object")))?
        .try_into()
        .map_err(|e| CaptureError::Load(format!("{prog}: {e}")))?;
    p.load()
        .map_err(|e| CaptureError::Load(format!("loading {prog}: {e:#}")))?;
    p.attach(category, name)
        .map_err(|e| CaptureError::Attach(format!("attaching {prog} to {category}/{name}: {e}")))?;
    Ok(())
}

/// Attaches an already loaded tracepoint program to one more tracepoint.
fn attach_loaded(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), CaptureError> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| CaptureError::Load(format!("program {prog} missing from the object")))?
        .try_into()
        .map_err(|e| CaptureError::Load(format!("{prog}: {e}")))?;
    p.attach(category, name)
        .map_err(|e| CaptureError::Attach(format!("attaching {prog} to {category}/{name}: {e}")))?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<(), CaptureError> {
    let p: &mut KProbe = ebpf
        .program_mut(prog)
        .ok_or_else(|| CaptureError::Load(format!("program {prog} missing from the object")))?
        .try_into()
        .map_err(|e| CaptureError::Load(format!("{prog}: {e}")))?;
    p.load()
        .map_err(|e| CaptureError::Load(format!("loading {prog}: {e:#}")))?;
    p.attach(function, 0)
        .map_err(|e| CaptureError::Attach(format!("kprobe {function}: {e}")))?;
    Ok(())
}

/// Listening sockets that predate the agent (later ones are learnt from LISTEN transitions).
fn seed_listeners(ebpf: &mut Ebpf, listeners: &[procfs::Listener]) -> Result<(), CaptureError> {
    let mut map: HashMap<_, ListenerKey, u32> = HashMap::try_from(
        ebpf.map_mut("LISTENERS")
            .ok_or_else(|| CaptureError::Load("map LISTENERS missing".into()))?,
    )
    .map_err(|e| CaptureError::Load(format!("LISTENERS: {e}")))?;
    for l in listeners {
        if let Err(e) = map.insert(listener_key(l), 0, 0) {
            tracing::warn!(error = %e, listener = %l.local, "listener not recorded");
        }
    }
    tracing::debug!(listeners = listeners.len(), "listening sockets recorded");
    Ok(())
}

/// The kernel side's key for a listener: the socket's family, with the address as the
/// `inet_sock_set_state` tracepoint reports it (an IPv4 address of an IPv6 socket is mapped).
fn listener_key(l: &procfs::Listener) -> ListenerKey {
    let mut key = ListenerKey {
        family: if l.ipv6_socket { 10 } else { 2 },
        port: l.local.port(),
        _pad: 0,
        addr: [0; 16],
    };
    match (l.local.ip(), l.ipv6_socket) {
        (std::net::IpAddr::V4(v4), false) => key.addr[..4].copy_from_slice(&v4.octets()),
        (std::net::IpAddr::V4(v4), true) if !v4.is_unspecified() => {
            key.addr = v4.to_ipv6_mapped().octets()
        }
        (std::net::IpAddr::V4(_), true) => {}
        (std::net::IpAddr::V6(v6), _) => key.addr = v6.octets(),
    }
    key
}

fn fill_set<K: aya::Pod + Copy>(
    ebpf: &mut Ebpf,
    map: &str,
    keys: &[K],
) -> Result<(), CaptureError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut m: HashMap<_, K, u8> = HashMap::try_from(
        ebpf.map_mut(map)
            .ok_or_else(|| CaptureError::Load(format!("map {map} missing")))?,
    )
    .map_err(|e| CaptureError::Load(format!("{map}: {e}")))?;
    for k in keys {
        m.insert(*k, 1, 0)
            .map_err(|e| CaptureError::Load(format!("{map}: {e}")))?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// Offsets of the address fields of `struct sock_common`, so connections that predate capture
/// get their addresses (and the port filter) in the kernel; without them user space reads the
/// addresses from /proc and filters there.
fn kernel_sock_offsets() -> sonde_common::SockOffsets {
    match super::btf::sock_offsets(std::path::Path::new(super::btf::VMLINUX_BTF)) {
        Ok(o) => o,
        Err(error) => {
            tracing::info!(%error, "addresses of connections older than the agent come from /proc");
            sonde_common::SockOffsets::default()
        }
    }
}

/// Offsets in the kernel's `struct pt_regs` of the syscall arguments and number, which the
/// programs read to rebuild a call that lost its per-CPU slot (the thread slept inside it and
/// resumed on another CPU). Part of each architecture's user ABI (x86-64: the uapi
/// `struct pt_regs`; arm64: `user_pt_regs` followed by `orig_x0` and `syscallno`), so they are
/// constants here rather than read from BTF.
fn user_regs_offsets() -> sonde_common::RegsOffsets {
    #[cfg(target_arch = "x86_64")]
    let (arg, nr) = ([112, 104, 96, 56], 120);
    #[cfg(target_arch = "aarch64")]
    let (arg, nr) = ([272, 8, 16, 24], 280);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let (arg, nr) = ([0; 4], 0);
    sonde_common::RegsOffsets {
        arg,
        nr,
        _pad: [0; 3],
    }
}
