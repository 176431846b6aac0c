//! A container's name (and, for Kubernetes runtimes, its pod) from the runtime's own state files,
//! read once per container, never per event.
//!
//! What is read, all below the configured host root:
//! - podman: `var/lib/containers/storage/overlay-containers/containers.json`, the
//!   containers/storage registry, whose entry for the id lists the names (`podman run --name`);
//!   podman's OCI `config.json` does not carry the name;
//! - docker: `var/lib/docker/containers/<id>/config.v2.json`, field `Name` (`/web`);
//! - containerd (CRI): the OCI spec `run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`,
//!   annotations `io.kubernetes.cri.container-name`, `…sandbox-name`, `…sandbox-namespace`,
//!   `…sandbox-uid`;
//! - CRI-O: `run/containers/storage/overlay-containers/<id>/userdata/config.json`, annotations
//!   `io.kubernetes.container.name`, `io.kubernetes.pod.name`, `…pod.namespace`, `…pod.uid`.
//!
//! Files are read up to a size cap; a missing, oversized or malformed file leaves the name
//! unknown (the short id is used).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sonde_model::ContainerRuntime;

/// Largest state file read (containers.json grows with the number of containers).
const MAX_STATE_FILE: u64 = 16 * 1024 * 1024;

/// What the runtime's files say about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub runtime: Option<ContainerRuntime>,
    pub container_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
}

/// Looks the container up in each runtime's files: the runtime named by the cgroup path first,
/// then the others (the kubepods cgroupfs layout does not name its runtime).
pub fn lookup(host_root: &Path, runtime: Option<ContainerRuntime>, id: &str) -> RuntimeInfo {
    let order = [
        ContainerRuntime::Containerd,
        ContainerRuntime::CriO,
        ContainerRuntime::Podman,
        ContainerRuntime::Docker,
    ];
    let first = runtime.into_iter();
    let rest = order.into_iter().filter(|r| Some(*r) != runtime);
    for rt in first.chain(rest) {
        let info = match rt {
            ContainerRuntime::Containerd => oci_annotations(
                &host_root.join(format!(
                    "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"
                )),
                ContainerRuntime::Containerd,
            ),
            ContainerRuntime::CriO => oci_annotations(
                &host_root.join(format!(
                    "run/containers/storage/overlay-containers/{id}/userdata/config.json"
                )),
                ContainerRuntime::CriO,
            ),
            ContainerRuntime::Podman => podman(host_root, id),
            ContainerRuntime::Docker => docker(host_root, id),
        };
        if let Some(mut info) = info {
            info.runtime = info.runtime.or(Some(rt));
            return info;
        }
    }
    RuntimeInfo::default()
}

fn read_capped(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_FILE + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > MAX_STATE_FILE {
        tracing::warn!(path = %path.display(), "runtime state file too large: container name left unknown");
        return None;
    }
    Some(buf)
}

#[derive(Deserialize)]
struct OciSpec {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// CRI annotations of an OCI spec. `None` when the file is absent or carries no CRI annotation
/// (podman writes its config.json at the CRI-O path too, without them).
fn oci_annotations(path: &Path, runtime: ContainerRuntime) -> Option<RuntimeInfo> {
    let spec: OciSpec = serde_json::from_slice(&read_capped(path)?).ok()?;
    let a = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| spec.annotations.get(*k).filter(|v| !v.is_empty()).cloned())
    };
    let info = RuntimeInfo {
        runtime: Some(runtime),
        container_name: a(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        pod_name: a(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        pod_namespace: a(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod_uid: a(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
    };
    (info.container_name.is_some() || info.pod_name.is_some()).then_some(info)
}

#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

fn podman(host_root: &Path, id: &str) -> Option<RuntimeInfo> {
    let path = host_root.join("var/lib/containers/storage/overlay-containers/containers.json");
    let list: Vec<StorageContainer> = serde_json::from_slice(&read_capped(&path)?).ok()?;
    let c = list.into_iter().find(|c| c.id == id)?;
    Some(RuntimeInfo {
        runtime: Some(ContainerRuntime::Podman),
        container_name: c.names.into_iter().next(),
        ..RuntimeInfo::default()
    })
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
}

fn docker(host_root: &Path, id: &str) -> Option<RuntimeInfo> {
    let path = host_root.join(format!("var/lib/docker/containers/{id}/config.v2.json"));
    let cfg: DockerConfig = serde_json::from_slice(&read_capped(&path)?).ok()?;
    let name = cfg.name.trim_start_matches('/');
    Some(RuntimeInfo {
        runtime: Some(ContainerRuntime::Docker),
        container_name: (!name.is_empty()).then(|| name.to_owned()),
        ..RuntimeInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9d0fec7827d63d044ebd367f2772292a0d7baf40f9df5629ef2a0105108930f8";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn podman_name_comes_from_the_storage_registry_not_the_oci_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What podman 4 writes: no CRI annotations in config.json, names in containers.json.
        write(
            dir.path(),
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"ociVersion":"1.0.2-dev","annotations":{"io.container.manager":"libpod","io.kubernetes.cri-o.TTY":"false"}}"#,
        );
        write(
            dir.path(),
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{}","names":["other"]}},{{"id":"{ID}","names":["web"],"image":"x","layer":"y","metadata":"{{}}","created":"2026-12-04T00:28:17Z"}}]"#,
                "1".repeat(64)
            ),
        );
        let info = lookup(dir.path(), Some(ContainerRuntime::Podman), ID);
        assert_eq!(info.runtime, Some(ContainerRuntime::Podman));
        assert_eq!(info.container_name.as_deref(), Some("web"));
        assert_eq!(info.pod_name, None);
    }

    #[test]
    fn containerd_and_cri_o_annotations_name_container_and_pod() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"api","io.kubernetes.cri.sandbox-name":"api-7d9c5b6f4-x2k8p","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c"}}"#,
        );
        // The kubepods cgroupfs layout does not say which runtime: every one is tried.
        let info = lookup(dir.path(), None, ID);
        assert_eq!(info.runtime, Some(ContainerRuntime::Containerd));
        assert_eq!(info.container_name.as_deref(), Some("api"));
        assert_eq!(info.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c")
        );

        let crio = tempfile::tempdir().expect("tempdir");
        write(
            crio.path(),
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.container.name":"db","io.kubernetes.pod.name":"db-0","io.kubernetes.pod.namespace":"data","io.kubernetes.pod.uid":"uid-1"}}"#,
        );
        let info = lookup(crio.path(), Some(ContainerRuntime::CriO), ID);
        assert_eq!(info.runtime, Some(ContainerRuntime::CriO));
        assert_eq!(info.container_name.as_deref(), Some("db"));
        assert_eq!(info.pod_name.as_deref(), Some("db-0"));
    }

    #[test]
    fn docker_name_loses_its_slash_and_damaged_files_leave_it_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"ID":"x","Name":"/web-1"}"#,
        );
        assert_eq!(
            lookup(dir.path(), Some(ContainerRuntime::Docker), ID)
                .container_name
                .as_deref(),
            Some("web-1")
        );
        write(
            dir.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Name": "/web-1""#,
        );
        assert_eq!(
            lookup(dir.path(), Some(ContainerRuntime::Docker), ID),
            RuntimeInfo::default()
        );
    }
}
