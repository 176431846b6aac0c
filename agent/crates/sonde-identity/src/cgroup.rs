//! cgroup paths → container id, runtime, Kubernetes pod UID, systemd unit.
//!
//! The layouts recognised, innermost path component first (what each runtime documents and
//! creates; the tests hold one real path of each):
//! - containerd under Kubernetes, systemd driver: `…/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
//!   (the pod UID with `_` for `-`); cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`;
//! - CRI-O: `…/kubepods-besteffort-pod<uid>.slice/crio-<id>.scope` (`crio-conmon-<id>.scope` is
//!   its monitor process, not the container);
//! - docker: `/system.slice/docker-<id>.scope` (systemd driver), `/docker/<id>` (cgroupfs);
//! - podman: `/machine.slice/libpod-<id>.scope` (also with a `/container` child when the
//!   container runs systemd), `/libpod_parent/libpod-<id>` (cgroupfs manager), rootless under
//!   `user@<uid>.service`; `libpod-conmon-<id>.scope` is the monitor;
//! - no container: the innermost `*.service` component is the systemd unit.

use sonde_model::ContainerRuntime;

/// What a cgroup path says about the processes in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub runtime: Option<ContainerRuntime>,
    /// 64 lower-case hex digits.
    pub container_id: Option<String>,
    /// Kubernetes pod UID (with dashes).
    pub pod_uid: Option<String>,
    /// systemd unit of a process outside any container.
    pub systemd_unit: Option<String>,
}

impl CgroupIdentity {
    pub fn is_container(&self) -> bool {
        self.container_id.is_some()
    }
}

/// The cgroup v2 path of a process from the text of `/proc/PID/cgroup`: the `0::` line; on a
/// hybrid host whose v2 hierarchy holds no processes (`0::/`), the `name=systemd` v1 line, which
/// has the same layout.
pub fn proc_cgroup_path(text: &str) -> Option<&str> {
    let mut v2 = None;
    let mut systemd = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        }
    }
    match (v2, systemd) {
        (Some("/"), Some(s)) if s != "/" => Some(s),
        (Some(p), _) => Some(p),
        (None, s) => s,
    }
}

/// Parses one cgroup path (absolute, or relative to a cgroup namespace: `/../../kubepods/…`).
pub fn parse_path(path: &str) -> CgroupIdentity {
    let mut id = CgroupIdentity::default();
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let container_at = components.iter().enumerate().rev().find_map(|(i, c)| {
        container_component(c, components.get(i.wrapping_sub(1))).map(|r| (i, r))
    });
    if let Some((i, (runtime, cid))) = container_at {
        id.runtime = runtime;
        id.container_id = Some(cid);
        id.pod_uid = components[..i].iter().rev().find_map(|c| pod_uid(c));
        return id;
    }
    id.pod_uid = components.iter().rev().find_map(|c| pod_uid(c));
    if id.pod_uid.is_none() {
        id.systemd_unit = components
            .iter()
            .rev()
            .find(|c| c.ends_with(".service") && c.len() > ".service".len())
            .map(|c| (*c).to_owned());
    }
    id
}

/// A component that names a container: `<prefix>-<64 hex>[.scope]`, or 64 hex digits alone under
/// a known parent (`docker`, a Kubernetes pod).
fn container_component(
    c: &str,
    parent: Option<&&str>,
) -> Option<(Option<ContainerRuntime>, String)> {
    let base = c.strip_suffix(".scope").unwrap_or(c);
    const PREFIXES: [(&str, Option<ContainerRuntime>); 5] = [
        ("cri-containerd-", Some(ContainerRuntime::Containerd)),
        ("crio-", Some(ContainerRuntime::CriO)),
        ("docker-", Some(ContainerRuntime::Docker)),
        ("libpod-", Some(ContainerRuntime::Podman)),
        // dockershim under the systemd driver used the docker prefix; nerdctl (containerd
        // without Kubernetes) names its scopes like this.
        ("nerdctl-", Some(ContainerRuntime::Containerd)),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(rest) = base.strip_prefix(prefix)
            && is_container_id(rest)
        {
            return Some((runtime, rest.to_ascii_lowercase()));
        }
    }
    if is_container_id(c) {
        let runtime = match parent.copied() {
            Some("docker") => Some(ContainerRuntime::Docker),
            // kubepods cgroupfs layout: the runtime is not in the path.
            Some(p) if pod_uid(p).is_some() => None,
            _ => return None,
        };
        return Some((runtime, c.to_ascii_lowercase()));
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid(c: &str) -> Option<String> {
    let uid = if let Some(slice) = c.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        if !slice.starts_with("kubepods") {
            return None;
        }
        slice[at + 4..].replace('_', "-")
    } else {
        c.strip_prefix("pod")?.to_owned()
    };
    is_uid(&uid).then_some(uid.to_ascii_lowercase())
}

/// A Kubernetes UID: an RFC 4122 UUID (8-4-4-4-12 hex digits).
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c9e0d2a4b6c8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
    const UID: &str = "0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c";

    fn parsed(path: &str) -> CgroupIdentity {
        parse_path(path)
    }

    #[test]
    fn containerd_under_the_systemd_driver_gives_id_runtime_and_pod_uid() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let id = parsed(&p);
        assert_eq!(id.runtime, Some(ContainerRuntime::Containerd));
        assert_eq!(id.container_id.as_deref(), Some(ID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.systemd_unit, None);
    }

    #[test]
    fn kubepods_cgroupfs_layout_gives_id_and_pod_uid_without_runtime() {
        for p in [
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
            // As seen from inside a cgroup namespace rooted elsewhere.
            format!("/../../kubepods/besteffort/pod{UID}/{ID}"),
        ] {
            let id = parsed(&p);
            assert_eq!(id.runtime, None, "{p}");
            assert_eq!(id.container_id.as_deref(), Some(ID), "{p}");
            assert_eq!(id.pod_uid.as_deref(), Some(UID), "{p}");
        }
    }

    #[test]
    fn cri_o_scope_is_the_container_and_its_conmon_is_not() {
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        );
        let id = parsed(&format!("{pod}/crio-{ID}.scope"));
        assert_eq!(id.runtime, Some(ContainerRuntime::CriO));
        assert_eq!(id.container_id.as_deref(), Some(ID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        let conmon = parsed(&format!("{pod}/crio-conmon-{ID}.scope"));
        assert_eq!(conmon.container_id, None);
        assert_eq!(conmon.pod_uid.as_deref(), Some(UID), "still the pod's");
    }

    #[test]
    fn docker_systemd_and_cgroupfs_layouts() {
        for p in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            let id = parsed(&p);
            assert_eq!(id.runtime, Some(ContainerRuntime::Docker), "{p}");
            assert_eq!(id.container_id.as_deref(), Some(ID), "{p}");
            assert_eq!(id.pod_uid, None);
            assert_eq!(
                id.systemd_unit, None,
                "docker-….scope is not a service unit"
            );
        }
    }

    #[test]
    fn podman_layouts_rootful_rootless_cgroupfs_and_nested() {
        for p in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        ] {
            let id = parsed(&p);
            assert_eq!(id.runtime, Some(ContainerRuntime::Podman), "{p}");
            assert_eq!(id.container_id.as_deref(), Some(ID), "{p}");
            assert_eq!(id.systemd_unit, None, "{p}");
        }
        let conmon = parsed(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(conmon.container_id, None);
    }

    #[test]
    fn upper_case_hex_is_normalised() {
        let id = parsed(&format!("/docker/{}", ID.to_ascii_uppercase()));
        assert_eq!(id.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn systemd_units_outside_containers() {
        assert_eq!(
            parsed("/system.slice/nginx.service")
                .systemd_unit
                .as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            parsed("/user.slice/user-1000.slice/user@1000.service/app.slice/api.service")
                .systemd_unit
                .as_deref(),
            Some("api.service"),
            "the innermost unit"
        );
        assert_eq!(
            parsed("/user.slice/user-1000.slice/user@1000.service/init.scope")
                .systemd_unit
                .as_deref(),
            Some("user@1000.service")
        );
        for p in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-3.scope",
            "/.service",
        ] {
            assert_eq!(parsed(p), CgroupIdentity::default(), "{p:?}");
        }
    }

    #[test]
    fn near_misses_are_not_containers() {
        for p in [
            format!("/system.slice/docker-{}.scope", &ID[..63]),
            format!("/system.slice/docker-{}x.scope", &ID[..63]),
            format!("/somewhere/{ID}"),
            "/kubepods.slice/kubepods-pod1234.slice".to_string(),
        ] {
            let id = parsed(&p);
            assert_eq!(id.container_id, None, "{p}");
            assert_eq!(id.pod_uid, None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_text_v2_v1_and_hybrid() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            proc_cgroup_path(&v2),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        // Hybrid host (v1 controllers + v2 at /sys/fs/cgroup/unified), as podman with runc makes.
        let hybrid = format!(
            "9:name=systemd:/libpod_parent/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n0::/libpod_parent/libpod-{ID}\n"
        );
        assert_eq!(
            proc_cgroup_path(&hybrid),
            Some(format!("/libpod_parent/libpod-{ID}").as_str())
        );
        // Hybrid host whose v2 hierarchy holds nobody: the name=systemd line has the layout.
        let v1_only = "12:name=systemd:/system.slice/nginx.service\n3:cpu:/\n0::/\n";
        assert_eq!(
            proc_cgroup_path(v1_only),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(proc_cgroup_path("0::/\n"), Some("/"));
        assert_eq!(proc_cgroup_path("garbage\n\n"), None);
    }
}
