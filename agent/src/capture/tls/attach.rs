//! One uprobe attachment per TLS library file, kept while some process maps it.
//!
//! A uprobe is attached to a file's inode, so one attachment covers every process that maps the
//! file, in any mount namespace. Files are found in `/proc/PID/maps`: of every process at start,
//! and of each new process after its exec (rescanned a few times, since the dynamic loader and
//! later `dlopen`s map libraries after the exec itself; not once a TLS library is found in it, nor
//! for a static executable, which maps nothing later). When the last process known to map a
//! file exits, every process's maps are checked once more (after a grace period, so bursts of
//! short-lived processes cost one check) before the probes are detached.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope};

use super::elf::{EntryPoints, find_entry_points};
use super::go::{GO_TLS_READ, GO_TLS_WRITE, GoTls};
use super::maps::{Mapping, ObjectKey, executable_files, pids};
use crate::config::TlsCaptureConfig;

/// The programs attached at each function: (function, entry program, return program).
const PROBES: &[(&str, &str, Option<&str>)] = &[
    ("SSL_read", "ssl_read_entry", Some("ssl_return")),
    ("SSL_write", "ssl_write_entry", Some("ssl_return")),
    ("SSL_read_ex", "ssl_read_ex_entry", Some("ssl_ex_return")),
    ("SSL_write_ex", "ssl_write_ex_entry", Some("ssl_ex_return")),
    ("SSL_set_fd", "ssl_set_fd_entry", None),
    ("SSL_peek", "ssl_uncaptured_entry", None),
    ("SSL_peek_ex", "ssl_uncaptured_entry", None),
    ("SSL_sendfile", "ssl_uncaptured_entry", None),
];

/// Go crypto/tls: (function, entry program, whether `GO_RETURN` goes on each of its RETs).
/// Writes are shipped at entry, reads at return.
const GO_PROBES: &[(&str, &str, bool)] = &[
    (GO_TLS_READ, "go_tls_read_entry", true),
    (GO_TLS_WRITE, "go_tls_write_entry", false),
];
const GO_RETURN: &str = "go_tls_return";

/// Programs that do nothing, attached at the same points for the cost floor.
const EMPTY_ENTRY: &str = "empty_uprobe";
const EMPTY_RETURN: &str = "empty_uretprobe";

/// Rescans waiting at most (a fork-exec storm beyond that is counted, not queued).
const MAX_PENDING_RESCANS: usize = 65_536;
/// Files remembered as not TLS at most before the memory is cleared.
const MAX_REMEMBERED_FILES: usize = 8192;
/// Wait after the last known user of a file exits before checking whether anyone maps it.
const DETACH_GRACE: Duration = Duration::from_secs(1);

/// What the kernel told the attacher about processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcNotice {
    /// `ts_ns` is the kernel's CLOCK_MONOTONIC time of the exec.
    Exec {
        tgid: u32,
        ts_ns: u64,
    },
    Exit {
        tgid: u32,
    },
}

/// Counters and gauges of the attacher, readable from any thread.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Files with uprobes attached now.
    pub objects_attached: AtomicU64,
    /// Uprobes attached now.
    pub probes_attached: AtomicU64,
    /// Files not attached because `max_objects` were attached already.
    pub objects_refused: AtomicU64,
    /// Files whose attachment the kernel refused.
    pub attach_failures: AtomicU64,
    /// Files detached after their last user exited.
    pub objects_detached: AtomicU64,
    /// Mapped files that could not be parsed as ELF.
    pub elf_errors: AtomicU64,
    pub processes_scanned: AtomicU64,
    /// Rescans after an exec not made: the process had a TLS library already, or is static.
    pub rescans_skipped: AtomicU64,
    /// Exec records handled.
    pub execs: AtomicU64,
    /// Process notices lost because the attacher was behind.
    pub notices_dropped: AtomicU64,
    /// Exec → attached, of the last and the slowest file attached for a new process.
    pub last_attach_delay_ns: AtomicU64,
    pub max_attach_delay_ns: AtomicU64,
}

impl TlsStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("objects_attached", g(&self.objects_attached)),
            ("probes_attached", g(&self.probes_attached)),
            ("objects_refused", g(&self.objects_refused)),
            ("attach_failures", g(&self.attach_failures)),
            ("objects_detached", g(&self.objects_detached)),
            ("elf_errors", g(&self.elf_errors)),
            ("processes_scanned", g(&self.processes_scanned)),
            ("rescans_skipped", g(&self.rescans_skipped)),
            ("execs", g(&self.execs)),
            ("notices_dropped", g(&self.notices_dropped)),
            ("last_attach_delay_ns", g(&self.last_attach_delay_ns)),
            ("max_attach_delay_ns", g(&self.max_attach_delay_ns)),
        ]
    }
}

#[derive(Debug)]
enum ObjectState {
    /// No OpenSSL-family entry points.
    NotTls,
    /// Over the bound, or refused by the kernel: retried only once memory of it is cleared.
    NotAttached,
    Attached(Attached),
}

#[derive(Debug)]
struct Attached {
    path: PathBuf,
    /// (program, link) pairs.
    links: Vec<(&'static str, UProbeLinkId)>,
    users: HashSet<u32>,
}

/// Finds TLS libraries and keeps the uprobes attached to them.
pub struct TlsAttacher {
    ebpf: Arc<Mutex<Ebpf>>,
    /// Attach the do-nothing programs instead (benchmark floor).
    empty: bool,
    cfg: TlsCaptureConfig,
    proc_root: PathBuf,
    self_pid: u32,
    objects: HashMap<ObjectKey, ObjectState>,
    attached: usize,
    stats: Arc<TlsStats>,
    /// (due, pid, exec time in CLOCK_MONOTONIC ns).
    rescans: BinaryHeap<Reverse<(Instant, u32, u64)>>,
    /// New processes whose rescans can stop, by pid, with the exec time they belong to.
    settled: HashMap<u32, u64>,
    pending_detach: HashMap<ObjectKey, Instant>,
}

/// Loads the TLS programs (once; each is attached to many files later).
pub fn load_programs(ebpf: &mut Ebpf, empty: bool) -> Result<(), String> {
    let mut names: Vec<&str> = if empty {
        vec![EMPTY_ENTRY, EMPTY_RETURN]
    } else {
        PROBES
            .iter()
            .flat_map(|(_, e, r)| std::iter::once(*e).chain(*r))
            .chain(GO_PROBES.iter().map(|(_, e, _)| *e))
            .chain([GO_RETURN])
            .collect()
    };
    names.sort_unstable();
    names.dedup();
    for name in names {
        let p: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load().map_err(|e| format!("loading {name}: {e:#}"))?;
    }
    Ok(())
}

impl TlsAttacher {
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        empty: bool,
        cfg: TlsCaptureConfig,
        proc_root: PathBuf,
    ) -> TlsAttacher {
        TlsAttacher {
            ebpf,
            empty,
            cfg,
            proc_root,
            self_pid: std::process::id(),
            objects: HashMap::new(),
            attached: 0,
            stats: Arc::new(TlsStats::default()),
            rescans: BinaryHeap::new(),
            settled: HashMap::new(),
            pending_detach: HashMap::new(),
        }
    }

    pub fn stats(&self) -> Arc<TlsStats> {
        self.stats.clone()
    }

    /// Paths (as the first process seen mapping each saw it) of the files attached now.
    pub fn attached_paths(&self) -> Vec<PathBuf> {
        self.objects
            .values()
            .filter_map(|o| match o {
                ObjectState::Attached(a) => Some(a.path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Scans every process on the host (at start).
    pub fn scan_all(&mut self) {
        for pid in pids(&self.proc_root) {
            self.scan_pid(pid, None);
        }
    }

    /// Handles notices and scheduled work until `stop` is set or the sender is gone.
    pub fn run(mut self, rx: Receiver<ProcNotice>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while let Some(&Reverse((due, pid, exec_ts))) = self.rescans.peek() {
                if due > now {
                    break;
                }
                self.rescans.pop();
                if self.settled.get(&pid) == Some(&exec_ts) {
                    self.stats.rescans_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.scan_pid(pid, Some(exec_ts));
            }
            self.detach_unused(now);
            let next = self
                .rescans
                .peek()
                .map(|Reverse((due, _, _))| *due)
                .into_iter()
                .chain(self.pending_detach.values().copied())
                .min()
                .map(|due| due.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            match rx.recv_timeout(next) {
                Ok(notice) => self.on_notice(notice),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    pub fn on_notice(&mut self, notice: ProcNotice) {
        match notice {
            ProcNotice::Exec { tgid, ts_ns } => {
                self.stats.execs.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                for ms in self.cfg.rescan_after_exec_ms.clone() {
                    if ms == 0 {
                        self.scan_pid(tgid, Some(ts_ns));
                    } else if self.rescans.len() < MAX_PENDING_RESCANS {
                        self.rescans
                            .push(Reverse((now + Duration::from_millis(ms), tgid, ts_ns)));
                    } else {
                        self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ProcNotice::Exit { tgid } => {
                self.settled.remove(&tgid);
                let due = Instant::now() + DETACH_GRACE;
                for (key, state) in &mut self.objects {
                    if let ObjectState::Attached(a) = state
                        && a.users.remove(&tgid)
                        && a.users.is_empty()
                    {
                        self.pending_detach.insert(*key, due);
                    }
                }
            }
        }
    }

    /// Reads a process's maps and attaches to every TLS library in it not attached yet.
    fn scan_pid(&mut self, pid: u32, exec_ts: Option<u64>) {
        if pid == self.self_pid {
            return;
        }
        let Ok(text) = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("maps"))
        else {
            return;
        };
        self.stats.processes_scanned.fetch_add(1, Ordering::Relaxed);
        let files = executable_files(&text);
        // Only the executable is mapped: static (the kernel maps a dynamic one's loader before
        // the exec completes), so no library can appear later.
        let mut settled = files.len() <= 1;
        for m in files {
            match self.objects.get_mut(&m.key) {
                Some(ObjectState::Attached(a)) => {
                    a.users.insert(pid);
                    self.pending_detach.remove(&m.key);
                    settled = true;
                    continue;
                }
                Some(ObjectState::NotAttached) => {
                    settled = true;
                    continue;
                }
                Some(ObjectState::NotTls) => continue,
                None => {}
            }
            // Held open while it is parsed and attached, and reached through our own fd: a
            // short-lived process's /proc/PID/root path vanishes with it, mid-attach.
            let Ok(file) = std::fs::File::open(m.reachable_path(&self.proc_root, pid)) else {
                continue; // gone already: not cached
            };
            let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let state = match find_entry_points(&path) {
                Ok(found) => {
                    match &found.go {
                        GoTls::Stripped | GoTls::StackAbi(_) | GoTls::UnsupportedArch => {
                            tracing::info!(path = %m.path, pid, go = ?found.go, "Go executable: crypto/tls cannot be read");
                        }
                        GoTls::Undecodable(e) => {
                            tracing::warn!(path = %m.path, pid, error = %e, "Go crypto/tls not attached");
                        }
                        _ => {}
                    }
                    let points = probe_points(&found, self.empty);
                    if points.is_empty() {
                        ObjectState::NotTls
                    } else {
                        self.attach(&path, &points, &m, pid, exec_ts)
                    }
                }
                Err(super::elf::ElfError::Open { .. }) => continue,
                Err(e) => {
                    self.stats.elf_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "mapped file is not ELF");
                    ObjectState::NotTls
                }
            };
            if self.objects.len() >= MAX_REMEMBERED_FILES {
                self.objects
                    .retain(|_, s| matches!(s, ObjectState::Attached(_)));
            }
            settled |= !matches!(state, ObjectState::NotTls);
            self.objects.insert(m.key, state);
            drop(file);
        }
        if let Some(ts) = exec_ts
            && settled
        {
            if self.settled.len() >= MAX_PENDING_RESCANS {
                self.settled.clear();
            }
            self.settled.insert(pid, ts);
        }
    }

    fn attach(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        m: &Mapping,
        pid: u32,
        exec_ts: Option<u64>,
    ) -> ObjectState {
        if self.attached >= self.cfg.max_objects {
            self.stats.objects_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %m.path,
                max = self.cfg.max_objects,
                "TLS library not attached: capture.tls.max_objects reached"
            );
            return ObjectState::NotAttached;
        }
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let mut links = Vec::new();
        let mut failure = None;
        for p in points {
            match attach_one(&mut ebpf, p.program, path, p.offset) {
                Ok(link) => links.push((p.program, link)),
                Err(e) => {
                    failure = Some(format!("{} ({}): {e}", p.function, p.program));
                    break;
                }
            }
        }
        if let Some(err) = failure {
            detach_all(&mut ebpf, links);
            self.stats.attach_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %m.path, error = %err, "TLS library not attached");
            return ObjectState::NotAttached;
        }
        drop(ebpf);
        self.attached += 1;
        self.stats.objects_attached.fetch_add(1, Ordering::Relaxed);
        self.stats
            .probes_attached
            .fetch_add(links.len() as u64, Ordering::Relaxed);
        let delay_ns = exec_ts.map(|ts| monotonic_ns().saturating_sub(ts));
        if let Some(d) = delay_ns {
            self.stats.last_attach_delay_ns.store(d, Ordering::Relaxed);
            self.stats
                .max_attach_delay_ns
                .fetch_max(d, Ordering::Relaxed);
        }
        tracing::info!(
            path = %m.path,
            pid,
            probes = links.len(),
            delay_after_exec_us = delay_ns.map(|d| d / 1000),
            "TLS library attached"
        );
        ObjectState::Attached(Attached {
            path: PathBuf::from(&m.path),
            links,
            users: HashSet::from([pid]),
        })
    }

    /// Detaches files whose grace period ended with no process mapping them.
    fn detach_unused(&mut self, now: Instant) {
        if !self.pending_detach.values().any(|due| *due <= now) {
            return;
        }
        let due: Vec<ObjectKey> = self
            .pending_detach
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &due {
            self.pending_detach.remove(k);
        }
        // One pass over every process answers for all files due.
        let mut still_used: HashMap<ObjectKey, Vec<u32>> = HashMap::new();
        for pid in pids(&self.proc_root) {
            let Ok(text) =
                std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("maps"))
            else {
                continue;
            };
            for m in executable_files(&text) {
                if due.contains(&m.key) {
                    still_used.entry(m.key).or_default().push(pid);
                }
            }
        }
        for key in due {
            let Some(ObjectState::Attached(a)) = self.objects.get_mut(&key) else {
                continue;
            };
            if let Some(users) = still_used.remove(&key) {
                a.users.extend(users);
                continue;
            }
            let Some(ObjectState::Attached(a)) = self.objects.remove(&key) else {
                continue;
            };
            let n = a.links.len() as u64;
            let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
            detach_all(&mut ebpf, a.links);
            drop(ebpf);
            self.attached = self.attached.saturating_sub(1);
            self.stats.objects_attached.fetch_sub(1, Ordering::Relaxed);
            self.stats.probes_attached.fetch_sub(n, Ordering::Relaxed);
            self.stats.objects_detached.fetch_add(1, Ordering::Relaxed);
            // Room again: files refused over the bound get another chance.
            self.objects
                .retain(|_, s| !matches!(s, ObjectState::NotAttached));
            tracing::info!(path = %a.path.display(), "TLS library detached: no process maps it");
        }
    }
}

/// One uprobe to attach: a program at a file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProbePoint {
    function: &'static str,
    program: &'static str,
    offset: u64,
}

/// The uprobes of a file's TLS entry points (the do-nothing programs when `empty`): OpenSSL's
/// when it has SSL_read and SSL_write, Go's when its crypto/tls was located.
fn probe_points(found: &EntryPoints, empty: bool) -> Vec<ProbePoint> {
    let mut points = Vec::new();
    if found.ssl.is_usable() {
        for (function, offset) in found.ssl.found() {
            let Some((_, entry, ret)) = PROBES.iter().find(|(f, _, _)| *f == function) else {
                continue;
            };
            let (entry, ret) = if empty {
                (EMPTY_ENTRY, ret.map(|_| EMPTY_RETURN))
            } else {
                (*entry, *ret)
            };
            for program in std::iter::once(entry).chain(ret) {
                points.push(ProbePoint {
                    function,
                    program,
                    offset,
                });
            }
        }
    }
    if let GoTls::Found(go) = &found.go {
        for ((function, entry, at_returns), f) in GO_PROBES.iter().zip([&go.read, &go.write]) {
            let (entry, ret) = if empty {
                (EMPTY_ENTRY, EMPTY_ENTRY)
            } else {
                (*entry, GO_RETURN)
            };
            points.push(ProbePoint {
                function,
                program: entry,
                offset: f.entry,
            });
            if *at_returns {
                points.extend(f.returns.iter().map(|&offset| ProbePoint {
                    function,
                    program: ret,
                    offset,
                }));
            }
        }
    }
    points
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &str,
    path: &Path,
    offset: u64,
) -> Result<UProbeLinkId, String> {
    let p: &mut UProbe = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{prog}: {e}"))?;
    p.attach(
        UProbeAttachLocation::AbsoluteOffset(offset),
        path,
        UProbeScope::AllProcesses,
    )
    .map_err(|e| format!("{e:#}"))
}

fn detach_all(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (prog, link) in links {
        let p: Option<&mut UProbe> = ebpf.program_mut(prog).and_then(|p| p.try_into().ok());
        if let Some(p) = p
            && let Err(e) = p.detach(link)
        {
            tracing::debug!(error = %e, prog, "uprobe detach failed");
        }
    }
}

/// CLOCK_MONOTONIC now, the clock of the kernel's timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
