//! Deployment artefacts checked with the real tools: the Helm chart rendered by Helm's own Go
//! SDK with every values switch and each rendering validated against the Kubernetes OpenAPI
//! schemas; the raw manifests proven to be the chart's rendering; the agent's ConfigMap loaded by
//! the real agent (and its mTLS settings used against a real collector); the systemd units
//! verified by `systemd-analyze` and their command lines run under the units' capability sets;
//! the container images built and run under podman.
//!
//! No Kubernetes API server can run here: `kubectl apply --dry-run=client` (even with
//! `--validate=false`) needs API discovery from a server, so kubectl's part is
//! `kubectl kustomize` (parses every raw manifest offline) and the schema check is
//! `kubernetes-validate --strict` (PyPI, the Kubernetes OpenAPI schemas bundled).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_norway::Value;
use sonde_agent::config::AgentConfig;
use sonde_e2e::servers::{PythonServer, curl, wait_for_port};
use sonde_e2e::stack::{Proc, bin};
use sonde_e2e::{eventually, free_port, scratch_dir};

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command that must succeed; returns its stdout. The failure message carries stderr.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo run -p xtask -- <args>` (the project's own deployment commands), in the environment a
/// terminal would give it: the variables cargo sets for a test process (CARGO_PKG_*,
/// CARGO_MANIFEST_DIR, LD_LIBRARY_PATH, ...) would otherwise change build-script fingerprints
/// and rebuild the release binaries on every run.
fn xtask_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key == "LD_LIBRARY_PATH"
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(repo())
        .args(["run", "-q", "-p", "xtask", "--"])
        .args(args);
    cmd
}

fn xtask(args: &[&str]) -> String {
    run_ok(&mut xtask_command(args))
}

// ---------------------------------------------------------------------------------------------
// Helm chart and raw manifests
// ---------------------------------------------------------------------------------------------

/// The chart rendered (and strictly linted) by Helm's Go SDK with these values overrides.
fn render(values_files: &[PathBuf], set_json: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("deploy/helm/render.py"))
        .arg(repo().join("deploy/helm/sonde"))
        .arg("--lint");
    for f in values_files {
        cmd.arg("-f").arg(f);
    }
    for s in set_json {
        cmd.args(["--set-json", s]);
    }
    let out = cmd.output().expect("python3 runs deploy/helm/render.py");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind))
}

fn must<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    kind(docs, k).unwrap_or_else(|| panic!("no {k} rendered"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn container<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    &must(docs, k)["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

/// The agent.toml of a rendering's ConfigMap, parsed by the agent's own loader.
fn agent_toml(docs: &[Value], dir: &Path) -> (String, AgentConfig) {
    let text = must(docs, "ConfigMap")["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml in the ConfigMap")
        .to_string();
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).expect("write agent.toml");
    let config = AgentConfig::load(Some(&path))
        .unwrap_or_else(|e| panic!("the agent refuses the rendered agent.toml: {e:#}\n{text}"));
    (text, config)
}

/// Every rendering validated at once against the Kubernetes OpenAPI schemas, strictly (unknown
/// fields are errors).
fn schema_check(files: &[PathBuf]) {
    let out = run_ok(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .args(files),
    );
    assert!(!out.contains("ERROR"), "schema validation failed:\n{out}");
}

type Check = fn(&[Value], &Path);

/// Every values switch of the chart: rendered, linted, schema-checked, and the switch's effect
/// asserted on the rendered objects.
#[test]
fn helm_chart_renders_lints_and_validates_with_every_values_switch() {
    let dir = scratch_dir("helm");
    let cases: &[(&str, &str, Check)] = &[
        ("defaults", "{}", |docs, dir| {
            let agent = container(docs, "DaemonSet");
            let sc = &agent["securityContext"];
            assert_eq!(sc["privileged"].as_bool(), Some(false));
            assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
            assert_eq!(
                strings(&sc["capabilities"]["add"]),
                ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]
            );
            let pod = &must(docs, "DaemonSet")["spec"]["template"]["spec"];
            assert_eq!(pod["hostPID"].as_bool(), Some(true));
            assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
            assert_eq!(
                env(agent, "NODE_NAME").expect("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str(),
                Some("spec.nodeName")
            );
            assert_eq!(
                agent["livenessProbe"]["httpGet"]["path"].as_str(),
                Some("/healthz")
            );
            assert_eq!(
                agent["readinessProbe"]["httpGet"]["path"].as_str(),
                Some("/readyz")
            );
            let args = strings(&agent["args"]);
            assert!(
                args.windows(2)
                    .any(|w| w == ["--metrics-listen", "0.0.0.0:9464"]),
                "{args:?}"
            );
            let mounts: Vec<(String, bool)> = agent["volumeMounts"]
                .as_sequence()
                .expect("mounts")
                .iter()
                .map(|m| {
                    (
                        m["mountPath"].as_str().unwrap_or("").to_string(),
                        m["readOnly"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            for path in [
                "/sys/kernel/tracing",
                "/sys/kernel/debug",
                "/sys/fs/bpf",
                "/var/lib/sonde",
            ] {
                assert!(
                    mounts.iter().any(|(p, _)| p == path),
                    "{path} not mounted: {mounts:?}"
                );
            }
            // Workload identity: the host's cgroup tree and every runtime's state directory,
            // read-only under the prefix the agent.toml names as host_root.
            for path in [
                "/host/sys/fs/cgroup",
                "/host/run/containerd",
                "/host/run/containers",
                "/host/var/lib/containers",
                "/host/var/lib/docker",
            ] {
                assert!(
                    mounts.contains(&(path.to_string(), true)),
                    "{path} not mounted read-only: {mounts:?}"
                );
            }
            assert!(
                !mounts.iter().any(|(p, _)| p == "/host/proc"),
                "hostPID gives /proc: no host /proc mount"
            );
            assert!(pod["automountServiceAccountToken"].is_null());
            // RBAC: read-only, exactly the kinds sonde-identity's kube.rs watches (list + watch,
            // it makes no get).
            let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> =
                must(docs, "ClusterRole")["rules"]
                    .as_sequence()
                    .expect("rules")
                    .iter()
                    .map(|r| {
                        (
                            strings(&r["apiGroups"]),
                            strings(&r["resources"]),
                            strings(&r["verbs"]),
                        )
                    })
                    .collect();
            let rule = |group: &str, resources: &[&str]| {
                (
                    vec![group.to_string()],
                    resources.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    vec!["list".to_string(), "watch".to_string()],
                )
            };
            assert_eq!(
                rules,
                [
                    rule("", &["pods", "services"]),
                    rule("apps", &["replicasets"]),
                    rule("batch", &["jobs"]),
                    rule("discovery.k8s.io", &["endpointslices"]),
                ]
            );
            assert!(kind(docs, "PersistentVolumeClaim").is_some());
            assert!(kind(docs, "Namespace").is_none());
            let coll_pod = &must(docs, "Deployment")["spec"]["template"]["spec"];
            assert_eq!(
                coll_pod["securityContext"]["runAsNonRoot"].as_bool(),
                Some(true)
            );
            assert_eq!(
                must(docs, "Deployment")["spec"]["strategy"]["type"].as_str(),
                Some("Recreate")
            );
            let ports: Vec<u64> = must(docs, "Service")["spec"]["ports"]
                .as_sequence()
                .expect("ports")
                .iter()
                .filter_map(|p| p["port"].as_u64())
                .collect();
            assert_eq!(ports, [7419, 9465]);
            let (_, config) = agent_toml(docs, dir);
            assert_eq!(
                config.export.collector_url,
                "http://sonde-collector.sonde.svc:7419"
            );
            assert!(config.export.tls.is_none());
            assert!(config.identity.enabled);
            assert_eq!(
                config.identity.kubernetes,
                sonde_identity::KubernetesMode::Auto
            );
            assert_eq!(config.identity.host_root, Path::new("/host"));
            assert_eq!(
                config.identity.cgroup_root.as_deref(),
                Some(Path::new("/host/sys/fs/cgroup"))
            );
            config
                .check()
                .expect("the default agent.toml passes --check-config");
        }),
        (
            "privileged",
            r#"{"agent": {"privileged": true}}"#,
            |docs, _| {
                let sc = &container(docs, "DaemonSet")["securityContext"];
                assert_eq!(sc["privileged"].as_bool(), Some(true));
                assert!(sc["capabilities"].is_null());
            },
        ),
        (
            "extra capabilities (kernels < 5.8)",
            r#"{"agent": {"extraCapabilities": ["SYS_ADMIN"], "seccompProfile": "RuntimeDefault"}}"#,
            |docs, _| {
                let sc = &container(docs, "DaemonSet")["securityContext"];
                assert!(strings(&sc["capabilities"]["add"]).contains(&"SYS_ADMIN".to_string()));
                assert_eq!(
                    sc["seccompProfile"]["type"].as_str(),
                    Some("RuntimeDefault")
                );
            },
        ),
        ("mTLS", r#"{"tls": {"enabled": true}}"#, |docs, dir| {
            let args = strings(&container(docs, "Deployment")["args"]);
            for flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
                assert!(args.contains(&flag.to_string()), "{flag} missing: {args:?}");
            }
            let volumes = &must(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"];
            assert!(
                volumes
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .any(|v| v["secret"]["secretName"].as_str() == Some("sonde-agent-tls"))
            );
            let (_, config) = agent_toml(docs, dir);
            assert!(config.export.collector_url.starts_with("https://"));
            let tls = config.export.tls.expect("[export.tls]");
            assert_eq!(
                tls.client_cert.as_deref(),
                Some(Path::new("/etc/sonde/tls/tls.crt"))
            );
        }),
        (
            "TLS without client certificates",
            r#"{"tls": {"enabled": true, "requireClientCert": false}}"#,
            |docs, _| {
                let args = strings(&container(docs, "Deployment")["args"]);
                assert!(args.contains(&"--tls-cert".to_string()));
                assert!(!args.contains(&"--tls-client-ca".to_string()));
            },
        ),
        (
            "metrics off",
            r#"{"metrics": {"enabled": false}}"#,
            |docs, _| {
                let agent = container(docs, "DaemonSet");
                let coll = container(docs, "Deployment");
                for c in [agent, coll] {
                    assert!(!strings(&c["args"]).contains(&"--metrics-listen".to_string()));
                }
                assert!(agent["livenessProbe"].is_null());
                assert_eq!(
                    coll["livenessProbe"]["tcpSocket"]["port"].as_str(),
                    Some("grpc")
                );
                assert_eq!(
                    must(docs, "Service")["spec"]["ports"]
                        .as_sequence()
                        .map(Vec::len),
                    Some(1)
                );
                let annotations =
                    &must(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"];
                assert!(annotations["prometheus.io/scrape"].is_null());
            },
        ),
        (
            "metrics without scrape annotations",
            r#"{"metrics": {"podAnnotations": false}}"#,
            |docs, _| {
                let annotations =
                    &must(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"];
                assert!(annotations["prometheus.io/scrape"].is_null());
                assert!(
                    strings(&container(docs, "DaemonSet")["args"])
                        .contains(&"--metrics-listen".to_string())
                );
            },
        ),
        (
            "no persistence",
            r#"{"collector": {"persistence": {"enabled": false}}}"#,
            |docs, _| {
                assert!(kind(docs, "PersistentVolumeClaim").is_none());
                let volumes = &must(docs, "Deployment")["spec"]["template"]["spec"]["volumes"];
                assert!(!volumes[0]["emptyDir"].is_null());
            },
        ),
        (
            "persistence with a storage class",
            r#"{"collector": {"persistence": {"storageClass": "fast", "size": "50Gi"}}}"#,
            |docs, _| {
                let pvc = must(docs, "PersistentVolumeClaim");
                assert_eq!(pvc["spec"]["storageClassName"].as_str(), Some("fast"));
                assert_eq!(
                    pvc["spec"]["resources"]["requests"]["storage"].as_str(),
                    Some("50Gi")
                );
            },
        ),
        (
            "PostgreSQL URL",
            r#"{"collector": {"postgres": {"url": "postgres://sonde@db.example/sonde"}}}"#,
            |docs, _| {
                assert!(kind(docs, "PersistentVolumeClaim").is_none());
                let db = env(container(docs, "Deployment"), "SONDE_DATABASE").expect("database");
                assert_eq!(
                    db["value"].as_str(),
                    Some("postgres://sonde@db.example/sonde")
                );
            },
        ),
        (
            "PostgreSQL from a Secret, three replicas",
            r#"{"collector": {"replicas": 3, "postgres": {"existingSecret": "sonde-db"}}}"#,
            |docs, _| {
                let deployment = must(docs, "Deployment");
                assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
                assert!(deployment["spec"]["strategy"].is_null());
                let db = env(container(docs, "Deployment"), "SONDE_DATABASE").expect("database");
                assert_eq!(
                    db["valueFrom"]["secretKeyRef"]["name"].as_str(),
                    Some("sonde-db")
                );
                assert_eq!(db["valueFrom"]["secretKeyRef"]["key"].as_str(), Some("url"));
            },
        ),
        (
            "query token",
            r#"{"collector": {"queryTokenSecret": "sonde-query"}}"#,
            |docs, _| {
                let token = env(container(docs, "Deployment"), "SONDE_QUERY_TOKEN").expect("token");
                assert_eq!(
                    token["valueFrom"]["secretKeyRef"]["name"].as_str(),
                    Some("sonde-query")
                );
            },
        ),
        (
            "specs, ports and extra config",
            r#"{"agent": {"ports": [80, 8080], "extraConfig": "[detect]\n"},
                "specs": {"orders.yaml": {"port": 8080, "content": "openapi: 3.0.3\ninfo: {title: Orders, version: '1'}\npaths:\n  /orders/{id}:\n    get:\n      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]\n      responses: {'200': {description: ok}}\n"},
                          "users.json": {"authority": "users.internal", "process": "users", "content": "{\"openapi\": \"3.1.0\", \"info\": {\"title\": \"Users\", \"version\": \"1\"}, \"paths\": {\"/users\": {\"get\": {\"responses\": {\"200\": {\"description\": \"ok\"}}}}}}"}}}"#,
            |docs, dir| {
                let (text, config) = agent_toml(docs, dir);
                assert_eq!(config.capture.ports, [80, 8080]);
                assert_eq!(config.specs.len(), 2, "{text}");
                let users = config
                    .specs
                    .iter()
                    .find(|s| s.path.ends_with("users.json"))
                    .expect("users spec");
                assert_eq!(users.authority.as_deref(), Some("users.internal"));
                assert_eq!(users.process.as_deref(), Some("users"));
                let items = &must(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"][0]["configMap"]
                    ["items"];
                let paths: Vec<&str> = items
                    .as_sequence()
                    .expect("items")
                    .iter()
                    .filter_map(|i| i["path"].as_str())
                    .collect();
                assert_eq!(
                    paths,
                    ["agent.toml", "specs/orders.yaml", "specs/users.json"]
                );
                // The specs as the pod sees them: /etc/sonde/specs/<name> from the ConfigMap.
                let etc = dir.join("etc-sonde");
                std::fs::create_dir_all(etc.join("specs")).expect("mkdir");
                let data = &must(docs, "ConfigMap")["data"];
                for name in ["orders.yaml", "users.json"] {
                    std::fs::write(
                        etc.join("specs").join(name),
                        data[name].as_str().expect("spec"),
                    )
                    .expect("write spec");
                }
                let mut config = config;
                for s in &mut config.specs {
                    s.path = etc
                        .join("specs")
                        .join(s.path.file_name().expect("file name"));
                }
                config.check().expect("both declared specs load");
            },
        ),
        (
            "resources, tolerations, node selector, image",
            r#"{"agent": {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                          "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
                          "nodeSelector": {"kubernetes.io/os": "linux"}, "priorityClassName": "system-node-critical"},
                "image": {"agent": {"repository": "registry.example/sonde-agent", "tag": "1.2.3"}}}"#,
            |docs, _| {
                let agent = container(docs, "DaemonSet");
                assert_eq!(agent["resources"]["requests"]["cpu"].as_str(), Some("250m"));
                assert_eq!(
                    agent["image"].as_str(),
                    Some("registry.example/sonde-agent:1.2.3")
                );
                let pod = &must(docs, "DaemonSet")["spec"]["template"]["spec"];
                assert_eq!(pod["tolerations"][0]["key"].as_str(), Some("dedicated"));
                assert_eq!(
                    pod["nodeSelector"]["kubernetes.io/os"].as_str(),
                    Some("linux")
                );
                assert_eq!(
                    pod["priorityClassName"].as_str(),
                    Some("system-node-critical")
                );
            },
        ),
        (
            "identity without the Kubernetes API",
            r#"{"agent": {"identity": {"kubernetes": "off"}}}"#,
            |docs, dir| {
                assert!(kind(docs, "ClusterRole").is_none());
                assert!(kind(docs, "ClusterRoleBinding").is_none());
                let sa = must(docs, "ServiceAccount");
                assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));
                let pod = &must(docs, "DaemonSet")["spec"]["template"]["spec"];
                assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
                let (_, config) = agent_toml(docs, dir);
                assert!(config.identity.enabled);
                assert!(!config.identity.kubernetes_enabled());
                assert_eq!(config.identity.host_root, Path::new("/host"));
            },
        ),
        (
            "identity off",
            r#"{"agent": {"identity": {"enabled": false}}}"#,
            |docs, dir| {
                assert!(kind(docs, "ClusterRole").is_none());
                let agent = container(docs, "DaemonSet");
                let mounts = agent["volumeMounts"].as_sequence().expect("mounts");
                assert!(
                    !mounts.iter().any(|m| m["mountPath"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/host"))),
                    "no host mounts without identity: {mounts:?}"
                );
                let (_, config) = agent_toml(docs, dir);
                assert!(!config.identity.enabled);
                assert!(!config.identity.kubernetes_enabled());
            },
        ),
        (
            "identity on a hybrid cgroup host, Kubernetes watch forced on",
            r#"{"agent": {"identity": {"kubernetes": "on", "hostCgroupPath": "/sys/fs/cgroup/unified"}}}"#,
            |docs, dir| {
                assert!(kind(docs, "ClusterRole").is_some());
                let volumes = must(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
                    .as_sequence()
                    .expect("volumes");
                let cgroup = volumes
                    .iter()
                    .find(|v| v["name"].as_str() == Some("host-cgroup"))
                    .expect("host-cgroup volume");
                assert_eq!(
                    cgroup["hostPath"]["path"].as_str(),
                    Some("/sys/fs/cgroup/unified")
                );
                let (_, config) = agent_toml(docs, dir);
                assert_eq!(
                    config.identity.kubernetes,
                    sonde_identity::KubernetesMode::On
                );
            },
        ),
        (
            "host network",
            r#"{"agent": {"hostNetwork": true}}"#,
            |docs, _| {
                let pod = &must(docs, "DaemonSet")["spec"]["template"]["spec"];
                assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
                assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
            },
        ),
        (
            "collector only",
            r#"{"agent": {"enabled": false}}"#,
            |docs, _| {
                assert!(kind(docs, "DaemonSet").is_none());
                assert!(kind(docs, "ClusterRole").is_none());
                assert!(kind(docs, "ConfigMap").is_none());
                assert!(kind(docs, "Deployment").is_some());
            },
        ),
        (
            "agents only",
            r#"{"collector": {"enabled": false}}"#,
            |docs, _| {
                assert!(kind(docs, "Deployment").is_none());
                assert!(kind(docs, "Service").is_none());
                assert!(kind(docs, "DaemonSet").is_some());
            },
        ),
        (
            "namespace and plain labels",
            r#"{"createNamespace": true, "plainLabels": true}"#,
            |docs, _| {
                let ns = must(docs, "Namespace");
                assert_eq!(
                    ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
                    Some("privileged")
                );
                for d in docs {
                    assert!(d["metadata"]["labels"]["helm.sh/chart"].is_null());
                }
            },
        ),
    ];
    let mut files = Vec::new();
    for (i, (name, values, check)) in cases.iter().enumerate() {
        let case_dir = dir.join(format!("case-{i}"));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        let yaml = render(&[], &[values]).unwrap_or_else(|e| panic!("{name}: render failed: {e}"));
        let docs = documents(&yaml);
        check(&docs, &case_dir);
        let file = case_dir.join("rendered.yaml");
        std::fs::write(&file, &yaml).expect("write rendering");
        files.push(file);
    }
    schema_check(&files);

    // Refusals: SQLite cannot be shared by replicas; a broken values type is a lint error.
    let err = render(&[], &[r#"{"collector": {"replicas": 2}}"#]).expect_err("2 SQLite replicas");
    assert!(err.contains("needs a shared PostgreSQL database"), "{err}");
    let err = render(&[], &[r#"{"agent": {"identity": {"kubernetes": "yes"}}}"#])
        .expect_err("an unknown kubernetes mode");
    assert!(err.contains("must be auto, on or off"), "{err}");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i, privilegd: true}]\n").expect("write");
    let status = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&bad)
        .stdout(Stdio::null())
        .status()
        .expect("kubernetes-validate runs");
    assert!(
        !status.success(),
        "the schema check must catch a misspelt field"
    );
}

/// deploy/kubernetes is exactly the chart rendered with deploy/kubernetes/values (so the raw
/// manifests cannot drift), kubectl builds both kustomizations offline, and every file passes
/// the strict schema check.
#[test]
fn raw_manifests_are_the_chart_rendered_and_pass_kubectl_and_schema_validation() {
    xtask(&["manifests", "--check"]);
    let kube = repo().join("deploy/kubernetes");
    for set in [kube.clone(), kube.join("mtls")] {
        let built = run_ok(Command::new("kubectl").arg("kustomize").arg(&set));
        let docs = documents(&built);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for k in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "Deployment",
            "PersistentVolumeClaim",
        ] {
            assert!(
                kinds.contains(&k),
                "{k} missing from {}: {kinds:?}",
                set.display()
            );
        }
        for d in &docs {
            if d["kind"].as_str() != Some("Namespace")
                && d["kind"].as_str() != Some("ClusterRole")
                && d["kind"].as_str() != Some("ClusterRoleBinding")
            {
                assert_eq!(d["metadata"]["namespace"].as_str(), Some("sonde"));
            }
        }
        let files: Vec<PathBuf> = std::fs::read_dir(&set)
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml")
                    && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            })
            .collect();
        assert_eq!(files.len(), 5, "{files:?}");
        schema_check(&files);
    }
}

/// The agent's files as the pod sees them under /etc/sonde, from a raw ConfigMap, with every
/// `/etc/sonde/` path moved under `etc`.
fn materialise_configmap(configmap: &Path, etc: &Path) -> PathBuf {
    let text = std::fs::read_to_string(configmap).expect("read ConfigMap");
    let docs = documents(&text);
    let data = &must(&docs, "ConfigMap")["data"];
    std::fs::create_dir_all(etc.join("specs")).expect("mkdir");
    let mut config = None;
    for (key, value) in data.as_mapping().expect("data") {
        let (key, value) = (key.as_str().expect("key"), value.as_str().expect("value"));
        if key == "agent.toml" {
            let path = etc.join("agent.toml");
            let local = format!("{}/", etc.display());
            std::fs::write(&path, value.replace("/etc/sonde/", &local)).expect("write");
            config = Some(path);
        } else {
            std::fs::write(etc.join("specs").join(key), value).expect("write spec");
        }
    }
    config.expect("agent.toml in the ConfigMap")
}

/// A CA, the collector's certificate (for its Service name and 127.0.0.1) and an agent client
/// certificate, as the two Secrets of the mTLS manifests hold them.
fn write_pki(collector_dir: &Path, agent_dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (dir, sans) in [
        (
            collector_dir,
            names(&["sonde-collector.sonde.svc", "127.0.0.1"]),
        ),
        (agent_dir, names(&["sonde-agent"])),
    ] {
        std::fs::create_dir_all(dir).expect("mkdir");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    }
}

/// The raw ConfigMaps' agent.toml and specs pass the real agent's `run --check-config`; a
/// damaged spec or a missing certificate is refused; and the mTLS manifests' settings (agent
/// [export.tls], collector --tls-* flags from the Deployment) connect a real agent to a real
/// collector that requires client certificates.
#[test]
fn agent_configmaps_pass_check_config_and_mtls_settings_connect_agent_and_collector() {
    let dir = scratch_dir("configmap");
    let check = |config: &Path| {
        Command::new(bin("sonde-agent"))
            .arg("--config")
            .arg(config)
            .args(["run", "--check-config"])
            .output()
            .expect("sonde-agent runs")
    };
    let plain_etc = dir.join("plain");
    let plain = materialise_configmap(&repo().join("deploy/kubernetes/configmap.yaml"), &plain_etc);
    let out = check(&plain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("config OK: 1 declared spec(s)"), "{said}");

    // A damaged spec is refused by name.
    let spec = plain_etc.join("specs/example-api.yaml");
    let good = std::fs::read_to_string(&spec).expect("spec");
    std::fs::write(&spec, "openapi: [unterminated").expect("damage spec");
    let out = check(&plain);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("example-api.yaml"));
    std::fs::write(&spec, good).expect("restore spec");

    // mTLS: without the Secret's files the check names the missing one.
    let etc = dir.join("mtls");
    let config = materialise_configmap(&repo().join("deploy/kubernetes/mtls/configmap.yaml"), &etc);
    let out = check(&config);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading TLS file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let collector_tls = dir.join("collector-tls");
    write_pki(&collector_tls, &etc.join("tls"));
    let out = check(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(mTLS)"));

    // The collector with the Deployment's TLS flags, the agent with the ConfigMap's settings.
    let docs = documents(
        &std::fs::read_to_string(repo().join("deploy/kubernetes/mtls/collector.yaml"))
            .expect("collector manifest"),
    );
    let args: Vec<String> = strings(&container(&docs, "Deployment")["args"])
        .into_iter()
        .map(|a| a.replace("/etc/sonde/tls/", &format!("{}/", collector_tls.display())))
        .collect();
    let port = free_port();
    let mut collector_args = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            // Loopback instead of the pod's 0.0.0.0; no metrics port (another branch adds it).
            "--listen" | "--metrics-listen" => {
                it.next();
            }
            _ => collector_args.push(a.clone()),
        }
    }
    assert!(collector_args.contains(&"--tls-client-ca".to_string()));
    let _collector = Proc(
        Command::new(bin("sonde-collector"))
            .args(&collector_args)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--database"])
            .arg(dir.join("collector.db"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("collector.log")).expect("log"))
            .spawn()
            .expect("collector starts"),
    );
    wait_for_port(port);
    let toml = std::fs::read_to_string(&config).expect("agent.toml");
    let url = format!("https://127.0.0.1:{port}");
    std::fs::write(
        &config,
        toml.replace("https://sonde-collector.sonde.svc:7419", &url),
    )
    .expect("point the agent at the test collector");
    let unused_port = free_port();
    let agent_log = dir.join("agent.log");
    let _agent = Proc(
        Command::new(bin("sonde-agent"))
            .arg("--config")
            .arg(&config)
            .args(["run", "--port", &unused_port.to_string(), "--state-dir"])
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).expect("log"))
            .spawn()
            .expect("agent starts"),
    );
    let ca = collector_tls.join("ca.crt");
    eventually(WAIT, "the mTLS agent to be listed by the collector", || {
        let out = Command::new(bin("sonde"))
            .args(["--collector", &url, "--ca-cert"])
            .arg(&ca)
            .args(["--json", "agents"])
            .output()
            .ok()?;
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (agents.as_array()?.len() == 1).then_some(())
    });
    let log = std::fs::read_to_string(&agent_log).expect("agent log");
    assert!(log.contains("connected to the collector"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// `Key=value` lines of a unit's [Service] section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
        .collect()
}

/// `setpriv` arguments reproducing a unit's root-with-bounding-set (or unprivileged-user)
/// execution: the bounding set, no inheritable or ambient capabilities, no_new_privs.
fn setpriv_for(unit: &str, user: Option<u32>) -> Vec<String> {
    let caps = unit_values(unit, "CapabilityBoundingSet")
        .pop()
        .expect("the unit sets CapabilityBoundingSet");
    let mut bounding = String::from("-all");
    for cap in caps.split_whitespace() {
        bounding.push_str(",+");
        bounding.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    assert_eq!(unit_values(unit, "NoNewPrivileges"), ["yes"]);
    let mut args = vec![
        format!("--bounding-set={bounding}"),
        "--inh-caps=-all".to_string(),
        "--no-new-privs".to_string(),
    ];
    if let Some(uid) = user {
        args.extend([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
        ]);
    }
    args
}

fn split_command(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// Whether a binary accepts a flag (the metrics flags come from another branch of work).
fn supports(binary: &Path, args: &[&str], flag: &str) -> bool {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .expect("help");
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

/// Replaces `--metrics-listen ADDR` by a free loopback port, or drops it where the binary does
/// not have the flag yet (said on stderr).
fn metrics_arg(cmd: Vec<String>, supported: bool) -> (Vec<String>, Option<u16>) {
    let mut out = Vec::new();
    let mut port = None;
    let mut it = cmd.into_iter();
    while let Some(a) = it.next() {
        if a == "--metrics-listen" {
            it.next();
            if supported {
                let p = free_port();
                out.extend([a, format!("127.0.0.1:{p}")]);
                port = Some(p);
            } else {
                eprintln!("this build has no --metrics-listen: run without it");
            }
        } else {
            out.push(a);
        }
    }
    (out, port)
}

/// `cargo xtask install --systemd` into a scratch root: `systemd-analyze verify` accepts both
/// units as installed (it needs no systemd as PID 1), a second install changes nothing, and
/// `--uninstall` removes binaries and units but keeps the configuration. Then the units'
/// ExecStart lines run under their own restrictions: the collector as an unprivileged user with
/// no capability at all, the agent as root bounded to the unit's capability set, with
/// no_new_privs; the agent's ExecStartPre check passes, it attaches its eBPF programs, captures
/// a real HTTP exchange and delivers it to the collector.
#[test]
fn systemd_units_verify_install_idempotently_and_run_with_their_capability_sets() {
    let dir = scratch_dir("systemd");
    let prefix = dir.join("usr");
    let etc = dir.join("etc/sonde");
    let units = dir.join("systemd");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            "--systemd",
            "--prefix",
            prefix.to_str().expect("utf-8"),
            "--config-dir",
            etc.to_str().expect("utf-8"),
            "--unit-dir",
            units.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let out = xtask_command(&args).output().expect("xtask install runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = install(&[]);
    assert!(first.contains("wrote"), "{first}");
    for unit in ["sonde-agent.service", "sonde-collector.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(units.join(unit))
            .output()
            .expect("systemd-analyze runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );
    }
    // systemd's own exposure score of the hardening (0 = fully locked down, 10 = none).
    for (unit, at_most) in [
        ("sonde-agent.service", 5.0),
        ("sonde-collector.service", 2.0),
    ] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(units.join(unit))
            .output()
            .expect("systemd-analyze security runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("exposure level for ")?
                    .1
                    .split_once(": ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no exposure score for {unit}:\n{text}"));
        eprintln!("{unit}: systemd exposure {score}");
        assert!(score <= at_most, "{unit}: exposure {score} > {at_most}");
    }
    let second = install(&["--no-build"]);
    assert!(
        !second.contains("wrote"),
        "a second install rewrote files: {second}"
    );

    // The collector as its unit runs it (DynamicUser: an unprivileged uid, no capabilities).
    let collector_unit =
        std::fs::read_to_string(units.join("sonde-collector.service")).expect("unit");
    let coll_port = free_port();
    let db_dir = dir.join("collector-state");
    std::fs::create_dir_all(&db_dir).expect("mkdir");
    run_ok(Command::new("chown").args(["65534:65534"]).arg(&db_dir));
    let collector_toml = etc.join("collector.toml");
    let text = std::fs::read_to_string(&collector_toml).expect("collector.toml");
    std::fs::write(
        &collector_toml,
        text.replace("127.0.0.1:7419", &format!("127.0.0.1:{coll_port}"))
            .replace("/var/lib/sonde-collector", db_dir.to_str().expect("utf-8")),
    )
    .expect("collector.toml for the test");
    let collector_bin = prefix.join("bin/sonde-collector");
    let (cmd, coll_metrics) = metrics_arg(
        split_command(&unit_values(&collector_unit, "ExecStart")[0]),
        supports(&collector_bin, &[], "--metrics-listen"),
    );
    let _collector = Proc(
        Command::new("setpriv")
            .args(setpriv_for(&collector_unit, Some(65534)))
            .arg("--")
            .args(&cmd)
            .current_dir(&db_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("collector.log")).expect("log"))
            .spawn()
            .expect("collector starts"),
    );
    wait_for_port(coll_port);
    let url = format!("http://127.0.0.1:{coll_port}");

    // The agent as its unit runs it, capturing only the test server's port.
    let agent_unit = std::fs::read_to_string(units.join("sonde-agent.service")).expect("unit");
    let state = dir.join("agent-state");
    let agent_toml = etc.join("agent.toml");
    let text = std::fs::read_to_string(&agent_toml).expect("agent.toml");
    std::fs::write(&agent_toml, text.replace("http://127.0.0.1:7419", &url))
        .expect("agent.toml for the test");
    let agent_bin = prefix.join("bin/sonde-agent");
    let as_unit = |line: &str| -> Vec<String> {
        split_command(line)
            .into_iter()
            .map(|a| a.replace("/var/lib/sonde", state.to_str().expect("utf-8")))
            .collect()
    };
    let pre = as_unit(&unit_values(&agent_unit, "ExecStartPre")[0]);
    let said = run_ok(
        Command::new("setpriv")
            .args(setpriv_for(&agent_unit, None))
            .arg("--")
            .args(&pre),
    );
    assert!(said.contains("config OK"), "{said}");
    let (mut cmd, agent_metrics) = metrics_arg(
        as_unit(&unit_values(&agent_unit, "ExecStart")[0]),
        supports(&agent_bin, &["run"], "--metrics-listen"),
    );
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("status.json"), "{\"ok\": true}").expect("write");
    let api = PythonServer::start(&www, free_port());
    cmd.extend(["--port".to_string(), api.port.to_string()]);
    let agent_log = dir.join("agent.log");
    let agent = Proc(
        Command::new("setpriv")
            .args(setpriv_for(&agent_unit, None))
            .arg("--")
            .args(&cmd)
            .env("SONDE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).expect("log"))
            .spawn()
            .expect("agent starts"),
    );
    eventually(
        WAIT,
        "the agent to attach under the unit's capabilities",
        || {
            let log = std::fs::read_to_string(&agent_log).ok()?;
            assert!(!log.contains("Error:"), "the agent failed:\n{log}");
            log.contains("capture attached").then_some(())
        },
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).expect("agent status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim()
        .to_string();
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_PERFMON (38), CAP_BPF (39).
    assert_eq!(bounding, "000000c000080004", "the agent's bounding set");
    let endpoints = eventually(WAIT, "the exchange to reach the collector", || {
        curl(&[&format!("http://127.0.0.1:{}/status.json", api.port)]);
        let out = Command::new(bin("sonde"))
            .args(["--collector", &url, "--json", "endpoints"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("/status.json").then_some(text)
    });
    assert!(endpoints.contains("GET"), "{endpoints}");
    for (what, port) in [("agent", agent_metrics), ("collector", coll_metrics)] {
        if let Some(port) = port {
            let (_, body) = curl(&[&format!("http://127.0.0.1:{port}/healthz")]);
            assert!(!body.is_empty(), "{what} /healthz answered nothing");
        }
    }

    let third = install(&["--no-build", "--uninstall"]);
    assert!(third.contains("removed"), "{third}");
    assert!(!prefix.join("bin/sonde-agent").exists());
    assert!(!units.join("sonde-agent.service").exists());
    assert!(etc.join("agent.toml").exists(), "configuration is kept");
}

// ---------------------------------------------------------------------------------------------
// Container images
// ---------------------------------------------------------------------------------------------

/// podman on this host runs containers only with `--runtime runc` (crun refuses the hybrid
/// cgroup v1 + v2 layout: "cgroups in hybrid mode not supported") and with explicit ulimits no
/// higher than the host's hard limits (podman's defaults raise RLIMIT_NOFILE/NPROC, which needs
/// CAP_SYS_RESOURCE, absent from this sandbox's bounding set).
fn podman_run() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "run",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    c
}

/// A container removed (with its anonymous volumes) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-v", "-t", "15", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Both images build offline (`cargo xtask image`, FROM scratch); the collector container runs
/// as the unprivileged uid 65532 and answers `sonde agents` from the host and from inside; the
/// agent container, with the DaemonSet's security context (only its capabilities, hostPID, the
/// host's tracefs and bpffs, the identity mounts under /host, read-only root), attaches its
/// programs, registers with the collector container and stops cleanly on the image's
/// STOPSIGNAL. The runtime's default
/// seccomp profile refuses the ring buffer map to CAP_BPF without CAP_SYS_ADMIN: the reason
/// the chart's agent runs seccomp-unconfined.
#[test]
fn images_build_offline_and_run_under_podman_with_runc_collector_answers_agent_registers() {
    xtask(&["image", "all"]);
    let dir = scratch_dir("images");
    let tag = |name: &str| format!("localhost/sonde-{name}:{}", env!("CARGO_PKG_VERSION"));
    let id = std::process::id();

    let port = free_port();
    let collector = Container(format!("sonde-e2e-collector-{id}"));
    run_ok(
        podman_run()
            .args(["-d", "--name", &collector.0, "-p"])
            .arg(format!("127.0.0.1:{port}:7419"))
            .arg(tag("collector")),
    );
    let url = format!("http://127.0.0.1:{port}");
    eventually(WAIT, "the collector container to answer", || {
        Command::new(bin("sonde"))
            .args(["--collector", &url, "agents"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    let inside =
        run_ok(Command::new("podman").args(["exec", &collector.0, "/usr/bin/sonde", "agents"]));
    assert!(inside.starts_with("AGENT"), "{inside}");
    let user = run_ok(Command::new("podman").args(["top", &collector.0, "huser"]));
    assert!(
        user.lines().nth(1).is_some_and(|u| u.trim() == "65532"),
        "{user}"
    );

    // The agent container as the DaemonSet runs it.
    let etc = dir.join("etc");
    let state = dir.join("state");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(&state).expect("mkdir");
    let unused_port = free_port();
    std::fs::write(
        etc.join("agent.toml"),
        format!(
            "[capture]\nports = [{unused_port}]\n\n[export]\ncollector_url = \"{url}\"\n\n\
             [identity]\nkubernetes = \"off\"\nhost_root = \"/host\"\n"
        ),
    )
    .expect("agent.toml");
    let daemonset_like = |c: &mut Command| {
        c.args([
            "--network",
            "host",
            "--pid",
            "host",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "-v",
            "/sys/kernel/tracing:/sys/kernel/tracing",
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            "/sys/fs/cgroup:/host/sys/fs/cgroup:ro",
        ]);
        // The identity mounts of the runtimes this host has.
        for dir in [
            "/run/containerd",
            "/run/containers",
            "/var/lib/containers",
            "/var/lib/docker",
        ] {
            if Path::new(dir).is_dir() {
                c.arg("-v").arg(format!("{dir}:/host{dir}:ro"));
            }
        }
        c.arg("-v")
            .arg(format!("{}:/etc/sonde:ro", etc.display()))
            .arg("-v")
            .arg(format!("{}:/var/lib/sonde", state.display()));
    };
    let mut refused = podman_run();
    refused.arg("--rm");
    daemonset_like(&mut refused);
    let out = refused
        .arg(tag("agent"))
        .args(["capture", "--duration", "1", "--quiet"])
        .output()
        .expect("podman runs");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("failed to create map"),
        "the default seccomp profile was expected to refuse bpf() without CAP_SYS_ADMIN: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let agent = Container(format!("sonde-e2e-agent-{id}"));
    let mut run = podman_run();
    run.args([
        "-d",
        "--name",
        &agent.0,
        "--security-opt",
        "seccomp=unconfined",
    ]);
    daemonset_like(&mut run);
    run_ok(run.arg(tag("agent")).args([
        "--config",
        "/etc/sonde/agent.toml",
        "run",
        "--state-dir",
        "/var/lib/sonde",
    ]));
    eventually(WAIT, "the agent container to register", || {
        let out = Command::new(bin("sonde"))
            .args(["--collector", &url, "--json", "agents"])
            .output()
            .ok()?;
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (agents.as_array()?.len() == 1).then_some(())
    });
    run_ok(Command::new("podman").args(["stop", "-t", "15", &agent.0]));
    let logs = Command::new("podman")
        .args(["logs", &agent.0])
        .output()
        .expect("logs");
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("capture attached"), "{logs}");
    assert!(
        state.join("baseline.sonde").exists(),
        "the agent did not save its baseline on stop:\n{logs}"
    );
    let exit =
        run_ok(Command::new("podman").args(["inspect", "-f", "{{.State.ExitCode}}", &agent.0]));
    assert_eq!(exit.trim(), "0", "{logs}");
}
