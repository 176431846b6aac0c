//! The identity of a process, cached: files are read once per cgroup (its path, the runtime's
//! state) and once per process (its executable), never per event.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonde_model::{PodIdentity, Workload};

use crate::cgroup::{self, CgroupIdentity};
use crate::config::IdentityConfig;
use crate::kube::KubeIndex;
use crate::runtime::{self, RuntimeInfo};

/// Directories looked at, at most, when a cgroup id has to be found by walking the cgroup tree
/// (its process exited before it was resolved).
const MAX_WALK: usize = 20_000;
/// How long an unresolvable cgroup id is not looked for again.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Counters of the resolver.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResolverStats {
    pub lookups: u64,
    pub cgroups_resolved: u64,
    /// cgroup ids found by walking the tree (the process was gone).
    pub cgroups_walked: u64,
    /// cgroup ids no path was found for.
    pub cgroups_unresolved: u64,
    pub processes_resolved: u64,
    pub evictions: u64,
}

/// A map of at most `cap` entries that forgets the oldest insertion first.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// Inserts; returns how many entries were evicted.
    fn insert(&mut self, k: K, v: V) -> u64 {
        if self.map.insert(k.clone(), v).is_some() {
            return 0;
        }
        self.order.push_back(k);
        let mut evicted = 0;
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.map.remove(&old).is_some() {
                evicted += 1;
            }
        }
        evicted
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// What is known about one cgroup.
#[derive(Clone)]
struct CgroupEntry {
    /// `None` when no path was found (then `retry_at` says when to look again).
    path: Option<String>,
    parsed: CgroupIdentity,
    runtime: RuntimeInfo,
    retry_at: Option<Instant>,
}

/// What is known about one process.
struct ProcessEntry {
    cgroup_id: u64,
    executable: Option<String>,
    /// Kubernetes index generation the workload was built at (0 without an index).
    generation: u64,
    workload: Option<Arc<Workload>>,
}

/// Maps (pid, cgroup id) to a [`Workload`]. Owned by the analysis thread.
pub struct Resolver {
    proc_root: PathBuf,
    cgroup_root: Option<PathBuf>,
    host_root: PathBuf,
    kube: Option<Arc<KubeIndex>>,
    /// The id of the v2 hierarchy's root cgroup. Processes there share it, and on a hybrid host
    /// their real placement is in the v1 `name=systemd` tree: such ids are resolved per process,
    /// never cached per cgroup.
    root_id: Option<u64>,
    cgroups: Bounded<u64, CgroupEntry>,
    processes: Bounded<u32, ProcessEntry>,
    stats: ResolverStats,
}

impl Resolver {
    pub fn new(cfg: &IdentityConfig, kube: Option<Arc<KubeIndex>>) -> Resolver {
        let cgroup_root = cfg
            .cgroup_root
            .clone()
            .or_else(|| cgroup2_mount(Path::new("/proc/self/mountinfo")));
        let root_id = cgroup_root
            .as_ref()
            .and_then(|r| std::fs::metadata(r).ok())
            .map(|m| m.ino());
        Resolver {
            root_id,
            proc_root: cfg.proc_root.clone(),
            cgroup_root,
            host_root: cfg.host_root.clone(),
            kube,
            cgroups: Bounded::new(cfg.max_cgroups),
            processes: Bounded::new(cfg.max_processes),
            stats: ResolverStats::default(),
        }
    }

    pub fn stats(&self) -> ResolverStats {
        self.stats.clone()
    }

    pub fn kube(&self) -> Option<&Arc<KubeIndex>> {
        self.kube.as_ref()
    }

    /// The workload of process `pid` in cgroup `cgroup_id` (from the kernel's event), `None`
    /// when nothing is known about it.
    pub fn resolve(&mut self, pid: u32, cgroup_id: u64) -> Option<Arc<Workload>> {
        self.stats.lookups += 1;
        let generation = self.kube.as_ref().map_or(0, |k| k.generation());
        if let Some(p) = self.processes.get(&pid)
            && p.cgroup_id == cgroup_id
            && p.generation == generation
        {
            return p.workload.clone();
        }
        // First sight of the process, a cgroup move, or new Kubernetes metadata: rebuild. Only
        // the first two read files.
        let executable = match self.processes.get(&pid) {
            Some(p) if p.cgroup_id == cgroup_id => p.executable.clone(),
            _ => self.executable(pid),
        };
        let cg = self.cgroup(pid, cgroup_id);
        let mut workload = self.build(&cg, executable.clone());
        // Unchanged by the new metadata (another pod churned): keep the same Arc, so the
        // pipeline's per-connection copies stay valid.
        if let (Some(new), Some(old)) = (
            &workload,
            self.processes.get(&pid).and_then(|p| p.workload.as_ref()),
        ) && new == old
        {
            workload = Some(old.clone());
        }
        self.stats.processes_resolved += 1;
        self.stats.evictions += self.processes.insert(
            pid,
            ProcessEntry {
                cgroup_id,
                executable,
                generation,
                workload: workload.clone(),
            },
        );
        workload
    }

    fn executable(&self, pid: u32) -> Option<String> {
        let link = std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe")).ok()?;
        let s = link.to_str()?;
        // The kernel marks an executable replaced since exec.
        Some(s.strip_suffix(" (deleted)").unwrap_or(s).to_owned())
    }

    fn cgroup(&mut self, pid: u32, cgroup_id: u64) -> CgroupEntry {
        let shared_root = Some(cgroup_id) == self.root_id;
        if !shared_root
            && let Some(e) = self.cgroups.get(&cgroup_id)
            && e.retry_at.is_none_or(|t| Instant::now() < t)
        {
            return e.clone();
        }
        let path = self.path_from_proc(pid, cgroup_id).or_else(|| {
            if shared_root {
                // The process is gone; the root is all its id says.
                Some("/".to_owned())
            } else {
                self.path_by_walk(cgroup_id)
            }
        });
        let entry = match path {
            Some(path) => {
                self.stats.cgroups_resolved += 1;
                let parsed = cgroup::parse_path(&path);
                let runtime = match &parsed.container_id {
                    Some(id) => runtime::lookup(&self.host_root, parsed.runtime, id),
                    None => RuntimeInfo::default(),
                };
                CgroupEntry {
                    path: Some(path),
                    parsed,
                    runtime,
                    retry_at: None,
                }
            }
            None => {
                self.stats.cgroups_unresolved += 1;
                CgroupEntry {
                    path: None,
                    parsed: CgroupIdentity::default(),
                    runtime: RuntimeInfo::default(),
                    retry_at: Some(Instant::now() + NEGATIVE_TTL),
                }
            }
        };
        if !shared_root {
            self.stats.evictions += self.cgroups.insert(cgroup_id, entry.clone());
        }
        entry
    }

    /// The path in `/proc/PID/cgroup`, if the process still exists and the directory of that
    /// path is the cgroup the kernel reported (a process can move between cgroups).
    fn path_from_proc(&self, pid: u32, cgroup_id: u64) -> Option<String> {
        let text =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        let path = cgroup::proc_cgroup_path(&text)?.to_owned();
        match &self.cgroup_root {
            // The cgroup id is the inode number of the cgroup's directory in cgroupfs.
            Some(root) if cgroup_id != 0 => {
                let dir = root.join(path.trim_start_matches('/'));
                match std::fs::metadata(&dir) {
                    Ok(m) if m.ino() == cgroup_id => Some(path),
                    // Moved since, or a path relative to another cgroup namespace: parse it
                    // anyway only if the tree cannot confirm either way.
                    Ok(_) => None,
                    Err(_) => Some(path),
                }
            }
            _ => Some(path),
        }
    }

    /// Breadth-first search of the cgroup tree for the directory whose inode is `cgroup_id`.
    fn path_by_walk(&mut self, cgroup_id: u64) -> Option<String> {
        let root = self.cgroup_root.clone()?;
        let mut queue = VecDeque::from([root.clone()]);
        let mut seen = 0usize;
        while let Some(dir) = queue.pop_front() {
            seen += 1;
            if seen > MAX_WALK {
                tracing::debug!(cgroup_id, "cgroup walk bound reached");
                return None;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if meta.ino() == cgroup_id {
                self.stats.cgroups_walked += 1;
                let rel = dir.strip_prefix(&root).ok()?.to_str()?;
                return Some(format!("/{rel}"));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(e.path());
                }
            }
        }
        None
    }

    fn build(&self, cg: &CgroupEntry, executable: Option<String>) -> Option<Arc<Workload>> {
        let parsed = &cg.parsed;
        let mut w = Workload {
            runtime: parsed.runtime.or(cg.runtime.runtime),
            container_id: parsed.container_id.clone(),
            container_name: cg.runtime.container_name.clone(),
            systemd_unit: parsed.systemd_unit.clone(),
            executable,
            ..Workload::default()
        };
        let pod_uid = parsed
            .pod_uid
            .clone()
            .or_else(|| cg.runtime.pod_uid.clone());
        let from_api = self
            .kube
            .as_ref()
            .and_then(|k| k.pod_for(pod_uid.as_deref(), parsed.container_id.as_deref()));
        if let Some(m) = from_api {
            if w.container_name.is_none() {
                w.container_name = m.container_name;
            }
            w.pod = Some(m.pod);
        } else if pod_uid.is_some() || cg.runtime.pod_name.is_some() {
            // Known from the cgroup path or the runtime's annotations only: the workload is
            // filled in when the API server answers.
            w.pod = Some(PodIdentity {
                uid: pod_uid.unwrap_or_default(),
                name: cg.runtime.pod_name.clone().unwrap_or_default(),
                namespace: cg.runtime.pod_namespace.clone().unwrap_or_default(),
                ..PodIdentity::default()
            });
        }
        w.name = w.derive_name();
        if w.name.is_empty() && cg.path.is_none() {
            return None;
        }
        Some(Arc::new(w))
    }

    /// Entries cached (cgroups, processes).
    pub fn cached(&self) -> (usize, usize) {
        (self.cgroups.len(), self.processes.len())
    }
}

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount(mountinfo: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(mountinfo).ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        // Fields: id parent major:minor root mount-point ...
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_forgets_the_oldest_first() {
        let mut m = Bounded::new(2);
        assert_eq!(m.insert(1, "a"), 0);
        assert_eq!(m.insert(2, "b"), 0);
        assert_eq!(m.insert(1, "a2"), 0, "a replacement evicts nothing");
        assert_eq!(m.insert(3, "c"), 1);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&3), Some(&"c"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn this_hosts_cgroup2_mount_is_found_and_holds_our_cgroup() {
        let root = cgroup2_mount(Path::new("/proc/self/mountinfo")).expect("a cgroup2 mount");
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }

    /// This test process, resolved through the real /proc and cgroupfs: the cgroup it reports is
    /// the directory whose inode the kernel uses as its cgroup id.
    #[test]
    fn own_process_resolves_through_proc_with_its_executable() {
        let cfg = IdentityConfig::default();
        let mut r = Resolver::new(&cfg, None);
        let root = r.cgroup_root.clone().expect("cgroup2 root");
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let path = cgroup::proc_cgroup_path(&text).expect("path").to_owned();
        let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .expect("cgroup dir")
            .ino();
        let w = r.resolve(std::process::id(), ino).expect("resolved");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(w.executable.as_deref(), exe.to_str());
        assert_eq!(r.stats().cgroups_resolved, 1);
        // The second lookup is served from the cache.
        let again = r.resolve(std::process::id(), ino).expect("cached");
        assert!(Arc::ptr_eq(&w, &again));
        assert_eq!(r.stats().processes_resolved, 1);
        // A cgroup id the process is not in is found by walking the tree, not by trusting /proc.
        let root_ino = std::fs::metadata(&root).expect("root").ino();
        if root_ino != ino {
            let w = r.resolve(std::process::id(), root_ino).expect("walked");
            assert_eq!(w.systemd_unit, None);
            assert_eq!(r.stats().cgroups_walked, 1);
        }
    }
}
