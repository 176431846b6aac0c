//! The resolver over a host tree laid out like a Kubernetes node's (procfs entries and the
//! containerd state file in a scratch directory), with pod metadata arriving after the first
//! lookup, as it does when the API server is slow.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use sonde_identity::kube::Reflector;
use sonde_identity::{IdentityConfig, KubeIndex, Resolver};
use sonde_model::ContainerRuntime;

const ID: &str = "3f4b1c9e0d2a4b6c8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
const UID: &str = "0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c";
const PID: u32 = 4242;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A node's host tree: the process's cgroup file (systemd driver, containerd) and the
/// container's OCI spec with its CRI annotations.
fn node_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
        UID.replace('-', "_")
    );
    write(dir.path(), &format!("proc/{PID}/cgroup"), &cgroup);
    write(
        dir.path(),
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        &format!(
            r#"{{"annotations":{{"io.kubernetes.cri.container-name":"api","io.kubernetes.cri.sandbox-name":"api-7d9c5b6f4-x2k8p","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    );
    dir
}

fn config(root: &Path) -> IdentityConfig {
    IdentityConfig {
        proc_root: root.join("proc"),
        // No cgroup tree to check the id against: the path from /proc is taken as it is.
        cgroup_root: Some(root.join("no-cgroupfs")),
        host_root: root.to_path_buf(),
        ..IdentityConfig::default()
    }
}

#[test]
fn kubernetes_container_without_api_server_is_named_by_its_pod_then_by_its_workload_once_the_pod_is_known()
 {
    let tree = node_tree();
    let index = Arc::new(KubeIndex::new());
    let mut r = Resolver::new(&config(tree.path()), Some(index.clone()));

    // The API server has not answered: the cgroup path and the CRI annotations say enough for
    // the container and its pod, not for its owner.
    let early = r.resolve(PID, 77).expect("resolved");
    assert_eq!(early.runtime, Some(ContainerRuntime::Containerd));
    assert_eq!(early.container_id.as_deref(), Some(ID));
    assert_eq!(early.container_name.as_deref(), Some("api"));
    let pod = early.pod.as_ref().expect("pod from the annotations");
    assert_eq!(
        (pod.uid.as_str(), pod.name.as_str(), pod.namespace.as_str()),
        (UID, "api-7d9c5b6f4-x2k8p", "shop")
    );
    assert_eq!(early.name, "pod/shop/api-7d9c5b6f4-x2k8p");
    assert!(
        Arc::ptr_eq(&early, &r.resolve(PID, 77).expect("cached")),
        "no change, no rebuild"
    );

    // The pod arrives from the watch: the same process is now its Deployment's, with labels,
    // without reading any file again (the procfs entry is gone).
    std::fs::remove_dir_all(tree.path().join("proc")).expect("rm proc");
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/pod-deployment.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let pod: Pod = serde_json::from_str(&text).expect("pod fixture");
    Reflector::<Pod>::default().apply(&index, Event::Apply(pod));
    let late = r.resolve(PID, 77).expect("resolved");
    assert_eq!(late.name, "deployment/shop/api");
    let pod = late.pod.as_ref().expect("pod");
    assert_eq!(pod.node, "node-a");
    assert_eq!(pod.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(r.stats().cgroups_resolved, 1, "the cgroup was read once");
    // Another pod's event changes nothing for this process: the same identity comes back.
    let mut other: Pod = serde_json::from_str(&text).expect("pod fixture");
    other.metadata.uid = Some("11111111-2222-4333-8444-555555555555".into());
    other.status = None;
    Reflector::<Pod>::default().apply(&index, Event::Apply(other));
    assert!(Arc::ptr_eq(&late, &r.resolve(PID, 77).expect("resolved")));
}

#[test]
fn a_vanished_process_in_an_unknown_cgroup_resolves_to_nothing_and_is_not_retried_at_once() {
    let tree = tempfile::tempdir().expect("tempdir");
    let mut r = Resolver::new(&config(tree.path()), None);
    assert!(r.resolve(999_999, 12345).is_none());
    assert!(r.resolve(999_998, 12345).is_none());
    assert_eq!(
        r.stats().cgroups_unresolved,
        1,
        "one negative entry per cgroup id"
    );
}

#[test]
fn the_cache_is_bounded() {
    let tree = tempfile::tempdir().expect("tempdir");
    for pid in 1..=50u32 {
        write(
            tree.path(),
            &format!("proc/{pid}/cgroup"),
            &format!("0::/system.slice/unit-{pid}.service\n"),
        );
    }
    let cfg = IdentityConfig {
        max_cgroups: 8,
        max_processes: 8,
        ..config(tree.path())
    };
    let mut r = Resolver::new(&cfg, None);
    for pid in 1..=50u32 {
        let w = r.resolve(pid, 1000 + u64::from(pid)).expect("resolved");
        assert_eq!(
            w.systemd_unit.as_deref(),
            Some(format!("unit-{pid}.service").as_str())
        );
    }
    let (cgroups, processes) = r.cached();
    assert!(
        cgroups <= 8 && processes <= 8,
        "{cgroups} cgroups, {processes} processes cached"
    );
    assert!(r.stats().evictions >= 2 * 42);
}

/// A hybrid host where the runtime placed its containers in the v1 hierarchies only: every
/// process shares the v2 root cgroup id, so that id must not carry one process's identity to
/// the others.
#[test]
fn processes_sharing_the_v2_root_on_a_hybrid_host_are_told_apart_by_their_v1_paths() {
    use std::os::unix::fs::MetadataExt;
    let tree = tempfile::tempdir().expect("tempdir");
    let cgroupfs = tree.path().join("cgroupfs");
    std::fs::create_dir_all(&cgroupfs).expect("mkdir");
    let root_id = std::fs::metadata(&cgroupfs).expect("root").ino();
    write(
        tree.path(),
        "proc/10/cgroup",
        &format!("5:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"),
    );
    write(
        tree.path(),
        "proc/11/cgroup",
        "1:name=systemd:/system.slice/nginx.service\n0::/\n",
    );
    write(tree.path(), "proc/12/cgroup", "1:name=systemd:/\n0::/\n");
    let cfg = IdentityConfig {
        cgroup_root: Some(cgroupfs),
        ..config(tree.path())
    };
    let mut r = Resolver::new(&cfg, None);
    let docker = r.resolve(10, root_id).expect("docker");
    assert_eq!(docker.runtime, Some(ContainerRuntime::Docker));
    assert_eq!(docker.container_id.as_deref(), Some(ID));
    let nginx = r.resolve(11, root_id).expect("nginx");
    assert_eq!(nginx.systemd_unit.as_deref(), Some("nginx.service"));
    assert_eq!(nginx.container_id, None);
    // A process in no unit and no container at all: only its executable could name it, and
    // this one has none.
    assert!(
        r.resolve(12, root_id)
            .is_none_or(|w| w.container_id.is_none() && w.systemd_unit.is_none())
    );
}
