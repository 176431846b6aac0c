//! Kubernetes metadata: watches of this node's pods, of ReplicaSet and Job owners (metadata
//! only), of Services and EndpointSlices, folded into one [`KubeIndex`] that the resolver and the
//! inventory query without any API call.
//!
//! The watchers are kube-rs `watcher` streams with the default backoff; what a stream yields is
//! applied the way kube's reflector applies it (`Init` starts a relist, `InitApply` buffers,
//! `InitDone` swaps the buffered set in, `Apply`/`Delete` change one object), into indexes keyed
//! for our lookups (pod UID, container id, pod IP, Service address) instead of by name. While the
//! API server is down or slow, the streams back off and retry, the error is counted and logged,
//! and lookups answer from what was last known (or nothing): capture never waits for it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use sonde_model::PodIdentity;

/// Labels kept per pod at most (the rest are dropped, counted in `labels_dropped`).
pub const MAX_LABELS: usize = 32;
/// Longest label key or value kept.
pub const MAX_LABEL_LEN: usize = 256;

/// Where the watch of the Kubernetes API stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeState {
    /// No client yet (configuration not found or API server not answering).
    Connecting,
    /// Watches started; not every initial list has completed.
    Syncing,
    /// Every watch completed its initial list.
    Synced,
    /// The last watch request failed; the watchers back off and retry.
    Degraded,
}

/// Counters of the Kubernetes watch, for logs and the agent's heartbeat.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KubeStats {
    pub events: u64,
    pub errors: u64,
    pub pods: u64,
    pub services: u64,
    pub labels_dropped: u64,
}

/// One of the watched kinds, for the "every initial list done" mask.
#[derive(Clone, Copy)]
enum Watched {
    Pods = 1,
    ReplicaSets = 2,
    Jobs = 4,
    Services = 8,
    EndpointSlices = 16,
}
const ALL_WATCHED: u8 = 31;

#[derive(Default)]
struct PodEntry {
    /// Name, namespace, node, labels (workload fields are derived at lookup, since owners may
    /// arrive later than the pod).
    identity: PodIdentity,
    /// The pod's controller (or first) owner: (kind, name).
    owner: Option<(String, String)>,
    template_hash: Option<String>,
    containers: Vec<(String, String)>,
    ips: Vec<IpAddr>,
}

/// (kind, namespace, name) of an object.
type ObjectKey = (&'static str, String, String);

#[derive(Default)]
/// The maps behind a [`KubeIndex`] (opaque).
pub struct Indexes {
    pods: HashMap<String, PodEntry>,
    /// container id → (pod uid, container name).
    containers: HashMap<String, (String, String)>,
    pod_ips: HashMap<IpAddr, String>,
    /// (kind, namespace, name) of a ReplicaSet or Job → its controller owner (kind, name).
    owners: HashMap<ObjectKey, Option<(String, String)>>,
    /// ClusterIP:port and endpoint address:port → `namespace/service`.
    service_addrs: HashMap<SocketAddr, Arc<str>>,
    /// What each Service / EndpointSlice put in `service_addrs`, to take it out again.
    contributions: HashMap<ObjectKey, Vec<SocketAddr>>,
}

/// What this node's pods, their owners and the cluster's Services say, indexed for the lookups
/// the identity stage makes. Shared between the watcher tasks (writers) and the analysis thread.
#[derive(Default)]
pub struct KubeIndex {
    inner: RwLock<Indexes>,
    /// Bumped on every change, so cached identities know when to look again.
    generation: AtomicU64,
    state: AtomicU8,
    synced_mask: AtomicU8,
    events: AtomicU64,
    errors: AtomicU64,
    labels_dropped: AtomicU64,
}

/// A pod as the identity stage needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMatch {
    pub pod: PodIdentity,
    /// The container's name in the pod spec, when matched by container id.
    pub container_name: Option<String>,
}

impl KubeIndex {
    pub fn new() -> KubeIndex {
        KubeIndex::default()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn state(&self) -> KubeState {
        match self.state.load(Ordering::Relaxed) {
            1 => KubeState::Syncing,
            2 => KubeState::Synced,
            3 => KubeState::Degraded,
            _ => KubeState::Connecting,
        }
    }

    fn set_state(&self, s: KubeState) {
        let v = match s {
            KubeState::Connecting => 0,
            KubeState::Syncing => 1,
            KubeState::Synced => 2,
            KubeState::Degraded => 3,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    pub fn stats(&self) -> KubeStats {
        let (pods, services) = self
            .inner
            .read()
            .map(|i| (i.pods.len() as u64, i.service_addrs.len() as u64))
            .unwrap_or_default();
        KubeStats {
            events: self.events.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            pods,
            services,
            labels_dropped: self.labels_dropped.load(Ordering::Relaxed),
        }
    }

    fn write(&self, f: impl FnOnce(&mut Indexes)) {
        // A panic while holding the lock cannot leave the maps in a state worse than stale.
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
        drop(guard);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn read<T>(&self, f: impl FnOnce(&Indexes) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// The pod of a container (by container id, else by pod UID), with its workload resolved
    /// through the owners known now.
    pub fn pod_for(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Option<PodMatch> {
        self.read(|ix| {
            let (uid, container_name) = match container_id.and_then(|c| ix.containers.get(c)) {
                Some((uid, name)) => (uid.as_str(), Some(name.clone())),
                None => (pod_uid?, None),
            };
            let entry = ix.pods.get(uid)?;
            Some(PodMatch {
                pod: ix.with_workload(entry),
                container_name,
            })
        })
    }

    /// `namespace/service` of a Service ClusterIP:port or of an endpoint (pod IP:port) behind it.
    pub fn service_at(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.read(|ix| ix.service_addrs.get(&addr).cloned())
    }

    /// The workload name (`deployment/shop/api`) of the pod with this IP, if it runs on this node.
    pub fn workload_at(&self, ip: IpAddr) -> Option<String> {
        self.read(|ix| {
            let uid = ix.pod_ips.get(&ip)?;
            let pod = ix.with_workload(ix.pods.get(uid)?);
            let w = sonde_model::Workload {
                pod: Some(pod),
                ..Default::default()
            };
            Some(w.derive_name())
        })
    }
}

impl Indexes {
    fn with_workload(&self, entry: &PodEntry) -> PodIdentity {
        let mut pod = entry.identity.clone();
        if let Some((kind, name)) = self.workload_of(entry) {
            pod.workload_kind = kind;
            pod.workload_name = name;
        }
        pod
    }

    /// The top-level controller of a pod: a ReplicaSet's Deployment, a Job's CronJob, else the
    /// pod's own controller (StatefulSet, DaemonSet, ...); `None` for a bare pod.
    fn workload_of(&self, entry: &PodEntry) -> Option<(String, String)> {
        let (kind, name) = entry.owner.clone()?;
        let ns = entry.identity.namespace.clone();
        let parent_kind = match kind.as_str() {
            "ReplicaSet" => "ReplicaSet",
            "Job" => "Job",
            _ => return Some((kind, name)),
        };
        match self.owners.get(&(parent_kind, ns, name.clone())) {
            Some(Some(top)) => Some(top.clone()),
            Some(None) => Some((kind, name)),
            None => {
                // Owner not (yet) listed: a ReplicaSet named `<deployment>-<pod-template-hash>`
                // is a Deployment's, by the Deployment controller's naming rule.
                if parent_kind == "ReplicaSet"
                    && let Some(hash) = &entry.template_hash
                    && let Some(dep) = name
                        .strip_suffix(hash.as_str())
                        .and_then(|s| s.strip_suffix('-'))
                    && !dep.is_empty()
                {
                    return Some(("Deployment".into(), dep.to_owned()));
                }
                Some((kind, name))
            }
        }
    }

    fn remove_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (c, _) in old.containers {
                self.containers.remove(&c);
            }
            for ip in old.ips {
                if self.pod_ips.get(&ip).is_some_and(|u| u == uid) {
                    self.pod_ips.remove(&ip);
                }
            }
        }
    }

    fn remove_contribution(&mut self, key: &ObjectKey) {
        if let Some(addrs) = self.contributions.remove(key) {
            for a in addrs {
                self.service_addrs.remove(&a);
            }
        }
    }

    fn add_contribution(&mut self, key: ObjectKey, addrs: Vec<SocketAddr>, name: Arc<str>) {
        self.remove_contribution(&key);
        for a in &addrs {
            self.service_addrs.insert(*a, name.clone());
        }
        self.contributions.insert(key, addrs);
    }
}

fn controller_owner(refs: &[OwnerReference]) -> Option<(String, String)> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| (r.kind.clone(), r.name.clone()))
}

fn ns_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// An object kind the index is built from.
pub trait Indexed: Clone + Send + 'static {
    /// Adds or replaces the object.
    fn upsert(self, ix: &mut Indexes, index: &KubeIndex);
    /// Removes the object.
    fn remove(&self, ix: &mut Indexes);
    /// Removes every object of this kind (before a relist is swapped in).
    fn clear(ix: &mut Indexes);
    fn watched() -> u8;
}

impl Indexed for Pod {
    fn upsert(self, ix: &mut Indexes, index: &KubeIndex) {
        let Some(uid) = self.metadata.uid.clone() else {
            return;
        };
        ix.remove_pod(&uid);
        let (namespace, name) = ns_name(&self.metadata);
        let mut labels = std::collections::BTreeMap::new();
        let mut dropped = 0u64;
        for (k, v) in self.metadata.labels.clone().unwrap_or_default() {
            if labels.len() >= MAX_LABELS || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN {
                dropped += 1;
                continue;
            }
            labels.insert(k, v);
        }
        if dropped > 0 {
            index.labels_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let template_hash = labels.get("pod-template-hash").cloned();
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        let mut containers = Vec::new();
        for cs in status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten())
        {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
            if let Some(id) = cs
                .container_id
                .as_deref()
                .and_then(|c| c.split_once("://"))
                .map(|(_, id)| id)
            {
                containers.push((id.to_ascii_lowercase(), cs.name.clone()));
            }
        }
        // Pods on the host network share the node's address: it names none of them.
        let host_network = spec.host_network == Some(true);
        let mut ips = Vec::new();
        if !host_network {
            for ip in status.pod_ips.iter().flatten() {
                if let Ok(ip) = ip.ip.parse::<IpAddr>() {
                    ips.push(ip);
                }
            }
        }
        for (c, cname) in &containers {
            ix.containers
                .insert(c.clone(), (uid.clone(), cname.clone()));
        }
        for ip in &ips {
            ix.pod_ips.insert(*ip, uid.clone());
        }
        let entry = PodEntry {
            identity: PodIdentity {
                uid: uid.clone(),
                name,
                namespace,
                node: spec.node_name.unwrap_or_default(),
                workload_kind: String::new(),
                workload_name: String::new(),
                labels,
            },
            owner: controller_owner(
                self.metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or_default(),
            ),
            template_hash,
            containers,
            ips,
        };
        ix.pods.insert(uid, entry);
    }

    fn remove(&self, ix: &mut Indexes) {
        if let Some(uid) = &self.metadata.uid {
            ix.remove_pod(uid);
        }
    }

    fn clear(ix: &mut Indexes) {
        ix.pods.clear();
        ix.containers.clear();
        ix.pod_ips.clear();
    }

    fn watched() -> u8 {
        Watched::Pods as u8
    }
}

/// ReplicaSets and Jobs are watched as metadata only: their owner is all the index needs.
macro_rules! owner_indexed {
    ($kind:ty, $name:literal, $watched:expr) => {
        impl Indexed for PartialObjectMeta<$kind> {
            fn upsert(self, ix: &mut Indexes, _index: &KubeIndex) {
                let (ns, name) = ns_name(&self.metadata);
                let owner = controller_owner(
                    self.metadata
                        .owner_references
                        .as_deref()
                        .unwrap_or_default(),
                );
                ix.owners.insert(($name, ns, name), owner);
            }
            fn remove(&self, ix: &mut Indexes) {
                let (ns, name) = ns_name(&self.metadata);
                ix.owners.remove(&($name, ns, name));
            }
            fn clear(ix: &mut Indexes) {
                ix.owners.retain(|k, _| k.0 != $name);
            }
            fn watched() -> u8 {
                $watched as u8
            }
        }
    };
}
owner_indexed!(ReplicaSet, "ReplicaSet", Watched::ReplicaSets);
owner_indexed!(Job, "Job", Watched::Jobs);

impl Indexed for Service {
    fn upsert(self, ix: &mut Indexes, _index: &KubeIndex) {
        let (ns, name) = ns_name(&self.metadata);
        let spec = self.spec.unwrap_or_default();
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let mut addrs = Vec::new();
        for ip in ips {
            for port in spec.ports.iter().flatten() {
                if let Ok(p) = u16::try_from(port.port) {
                    addrs.push(SocketAddr::new(ip, p));
                }
            }
        }
        let label: Arc<str> = format!("{ns}/{name}").into();
        ix.add_contribution(("Service", ns, name), addrs, label);
    }

    fn remove(&self, ix: &mut Indexes) {
        let (ns, name) = ns_name(&self.metadata);
        ix.remove_contribution(&("Service", ns, name));
    }

    fn clear(ix: &mut Indexes) {
        let keys: Vec<_> = ix
            .contributions
            .keys()
            .filter(|k| k.0 == "Service")
            .cloned()
            .collect();
        for k in keys {
            ix.remove_contribution(&k);
        }
    }

    fn watched() -> u8 {
        Watched::Services as u8
    }
}

impl Indexed for EndpointSlice {
    fn upsert(self, ix: &mut Indexes, _index: &KubeIndex) {
        let (ns, name) = ns_name(&self.metadata);
        let Some(service) = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
        else {
            return;
        };
        let mut addrs = Vec::new();
        for ep in &self.endpoints {
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                for port in self.ports.iter().flatten() {
                    if let Some(p) = port.port.and_then(|p| u16::try_from(p).ok()) {
                        addrs.push(SocketAddr::new(ip, p));
                    }
                }
            }
        }
        let label: Arc<str> = format!("{ns}/{service}").into();
        ix.add_contribution(("EndpointSlice", ns, name), addrs, label);
    }

    fn remove(&self, ix: &mut Indexes) {
        let (ns, name) = ns_name(&self.metadata);
        ix.remove_contribution(&("EndpointSlice", ns, name));
    }

    fn clear(ix: &mut Indexes) {
        let keys: Vec<_> = ix
            .contributions
            .keys()
            .filter(|k| k.0 == "EndpointSlice")
            .cloned()
            .collect();
        for k in keys {
            ix.remove_contribution(&k);
        }
    }

    fn watched() -> u8 {
        Watched::EndpointSlices as u8
    }
}

/// Applies one watcher stream's events to the index, as kube's reflector does: a relist is
/// buffered and swapped in whole at `InitDone`, so lookups never see a half-listed set.
pub struct Reflector<K> {
    relist: Option<Vec<K>>,
}

impl<K: Indexed> Default for Reflector<K> {
    fn default() -> Self {
        Reflector { relist: None }
    }
}

impl<K: Indexed> Reflector<K> {
    pub fn apply(&mut self, index: &KubeIndex, event: Event<K>) {
        index.events.fetch_add(1, Ordering::Relaxed);
        match event {
            Event::Apply(obj) => index.write(|ix| obj.upsert(ix, index)),
            Event::Delete(obj) => index.write(|ix| obj.remove(ix)),
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(obj) => match &mut self.relist {
                Some(buf) => buf.push(obj),
                None => index.write(|ix| obj.upsert(ix, index)),
            },
            Event::InitDone => {
                let objs = self.relist.take().unwrap_or_default();
                index.write(|ix| {
                    K::clear(ix);
                    for o in objs {
                        o.upsert(ix, index);
                    }
                });
                let mask =
                    index.synced_mask.fetch_or(K::watched(), Ordering::AcqRel) | K::watched();
                if mask == ALL_WATCHED {
                    index.set_state(KubeState::Synced);
                }
            }
        }
    }
}

/// Drives one watcher stream into the index until the stream ends (it does not: errors are
/// yielded, counted, and the stream backs off and retries).
async fn reflect<K, S>(index: Arc<KubeIndex>, what: &'static str, stream: S)
where
    K: Indexed,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut reflector = Reflector::<K>::default();
    let mut last_log: Option<Instant> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => {
                if index.state() == KubeState::Degraded {
                    index.set_state(
                        if index.synced_mask.load(Ordering::Acquire) == ALL_WATCHED {
                            KubeState::Synced
                        } else {
                            KubeState::Syncing
                        },
                    );
                }
                reflector.apply(&index, ev);
            }
            Err(e) => {
                let n = index.errors.fetch_add(1, Ordering::Relaxed) + 1;
                index.set_state(KubeState::Degraded);
                // One line per watch every 30 s at most: an API server down for hours must not
                // flood the log.
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    last_log = Some(Instant::now());
                    tracing::warn!(watch = what, errors = n, error = %e, "Kubernetes watch failing; retrying with backoff, identities keep what is known");
                }
            }
        }
    }
}

/// Watches this node's pods (field selector `spec.nodeName=<node>`; every pod when no node name
/// is known), ReplicaSet and Job owners, Services and EndpointSlices, until the task is dropped.
pub async fn watch(index: Arc<KubeIndex>, client: Client, node_name: Option<String>) {
    index.set_state(KubeState::Syncing);
    let pod_cfg = match &node_name {
        Some(node) => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        None => watcher::Config::default(),
    };
    let pods = watcher(Api::<Pod>::all(client.clone()), pod_cfg).default_backoff();
    let rs = watcher(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let jobs = watcher(
        Api::<PartialObjectMeta<Job>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let svcs = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::join!(
        reflect(index.clone(), "pods", pods),
        reflect(index.clone(), "replicasets", rs),
        reflect(index.clone(), "jobs", jobs),
        reflect(index.clone(), "services", svcs),
        reflect(index.clone(), "endpointslices", slices),
    );
}

use kube::runtime::watcher::watcher;

/// Connects with the in-cluster configuration (or `KUBECONFIG` / `~/.kube/config`), retrying
/// with backoff while none works, then watches. Runs until dropped.
pub async fn connect_and_watch(index: Arc<KubeIndex>, node_name: Option<String>) {
    let mut delay = Duration::from_secs(1);
    let client = loop {
        match Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                let n = index.errors.fetch_add(1, Ordering::Relaxed) + 1;
                index.set_state(KubeState::Connecting);
                if n == 1 || delay >= Duration::from_secs(60) {
                    tracing::warn!(error = %e, errors = n, retry_in_s = delay.as_secs(), "no Kubernetes API client yet; capturing without pod metadata");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    tracing::info!(
        node = node_name.as_deref().unwrap_or("(all)"),
        "watching Kubernetes pods, owners and services"
    );
    watch(index, client, node_name).await;
}
