//! The Kubernetes index built from watch events over `kubectl get -o json`-shaped objects.
//!
//! No Kubernetes API server can run on this machine (none is packaged for Debian, PyPI or npm
//! here), so these tests feed the watcher's event stream by hand with typed objects: the fixtures
//! deserialize into k8s-openapi's types (which check `apiVersion` and `kind`, and every required
//! field), so a fixture that does not match the API schema fails. The one test that does use the
//! kube client points it at a closed port: that is the "API server down" path, for real.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use sonde_identity::kube::Reflector;
use sonde_identity::{KubeIndex, KubeState};
use sonde_model::Workload;

const API_CONTAINER: &str = "3f4b1c9e0d2a4b6c8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
const API_POD_UID: &str = "0b7c5a2e-1d3f-4e5a-9b8c-7d6e5f4a3b2c";

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{name} does not match the API schema: {e}"))
}

/// An owner object as the metadata-only watch delivers it (checked as the full type first).
fn owner_meta<K: serde::de::DeserializeOwned + k8s_openapi::Resource>(
    name: &str,
) -> PartialObjectMeta<K> {
    let _typed: K = fixture(name);
    fixture(name)
}

/// The initial list of a watch: Init, one InitApply per object, InitDone.
fn list<K: sonde_identity::kube::Indexed>(index: &KubeIndex, r: &mut Reflector<K>, objs: Vec<K>) {
    r.apply(index, Event::Init);
    for o in objs {
        r.apply(index, Event::InitApply(o));
    }
    r.apply(index, Event::InitDone);
}

fn name_of(index: &KubeIndex, uid: Option<&str>, container: Option<&str>) -> String {
    let m = index.pod_for(uid, container).expect("pod known");
    Workload {
        pod: Some(m.pod),
        ..Workload::default()
    }
    .derive_name()
}

#[test]
fn pod_store_without_api_server_maps_a_deployment_pod_through_its_replicaset() {
    let index = KubeIndex::new();
    let mut pods = Reflector::<Pod>::default();
    list(&index, &mut pods, vec![fixture("pod-deployment.json")]);

    // Before the ReplicaSet is listed, the Deployment controller's naming rule
    // (`<deployment>-<pod-template-hash>`) already names the Deployment.
    assert_eq!(
        name_of(&index, None, Some(API_CONTAINER)),
        "deployment/shop/api"
    );

    let mut rs = Reflector::<PartialObjectMeta<ReplicaSet>>::default();
    let gen_before = index.generation();
    list(
        &index,
        &mut rs,
        vec![owner_meta::<ReplicaSet>("replicaset.json")],
    );
    assert!(
        index.generation() > gen_before,
        "a change is visible to cached identities"
    );

    let m = index
        .pod_for(None, Some(API_CONTAINER))
        .expect("matched by container id");
    assert_eq!(m.container_name.as_deref(), Some("api"));
    assert_eq!(m.pod.name, "api-7d9c5b6f4-x2k8p");
    assert_eq!(m.pod.namespace, "shop");
    assert_eq!(m.pod.node, "node-a");
    assert_eq!(m.pod.uid, API_POD_UID);
    assert_eq!(
        (m.pod.workload_kind.as_str(), m.pod.workload_name.as_str()),
        ("Deployment", "api")
    );
    assert_eq!(
        m.pod.labels.get("tier").map(String::as_str),
        Some("backend")
    );
    // The sidecar is the same pod, another container.
    let sidecar = index
        .pod_for(
            None,
            Some("aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999"),
        )
        .expect("sidecar");
    assert_eq!(sidecar.container_name.as_deref(), Some("envoy"));
    // By pod UID alone (a container id the status does not list yet).
    assert_eq!(
        name_of(&index, Some(API_POD_UID), Some(&"0".repeat(64))),
        "deployment/shop/api"
    );
    // The pod's IP names its workload (for callers seen from the server side).
    assert_eq!(
        index
            .workload_at("10.244.1.17".parse().expect("ip"))
            .as_deref(),
        Some("deployment/shop/api")
    );
}

#[test]
fn pod_store_without_api_server_maps_a_replicaset_without_deployment_to_the_replicaset() {
    let index = KubeIndex::new();
    let mut pod: Pod = fixture("pod-deployment.json");
    // A ReplicaSet created by hand: no template hash label, no Deployment owner.
    pod.metadata
        .labels
        .as_mut()
        .expect("labels")
        .remove("pod-template-hash");
    let mut pods = Reflector::<Pod>::default();
    list(&index, &mut pods, vec![pod]);
    assert_eq!(
        name_of(&index, None, Some(API_CONTAINER)),
        "replicaset/shop/api-7d9c5b6f4"
    );
    let mut rs_meta = owner_meta::<ReplicaSet>("replicaset.json");
    rs_meta.metadata.owner_references = None;
    let mut rs = Reflector::<PartialObjectMeta<ReplicaSet>>::default();
    rs.apply(&index, Event::Apply(rs_meta));
    assert_eq!(
        name_of(&index, None, Some(API_CONTAINER)),
        "replicaset/shop/api-7d9c5b6f4"
    );
}

#[test]
fn pod_store_without_api_server_maps_statefulset_daemonset_cronjob_and_bare_pods() {
    let index = KubeIndex::new();
    let mut pods = Reflector::<Pod>::default();
    list(
        &index,
        &mut pods,
        vec![
            fixture("pod-statefulset.json"),
            fixture("pod-daemonset-hostnetwork.json"),
            fixture("pod-cronjob.json"),
            fixture("pod-bare.json"),
        ],
    );
    assert_eq!(
        name_of(
            &index,
            None,
            Some("1111222233334444555566667777888899990000aaaabbbbccccddddeeeeffff")
        ),
        "statefulset/data/db"
    );
    assert_eq!(
        name_of(
            &index,
            None,
            Some("2222333344445555666677778888999900001111aaaabbbbccccddddeeeeffff")
        ),
        "daemonset/monitoring/node-exporter"
    );
    // A host-network pod's IP is the node's: it must not name the node's traffic.
    assert_eq!(index.workload_at("10.0.0.11".parse().expect("ip")), None);
    // The Job's CronJob, once the Job's owner is known.
    assert_eq!(
        name_of(&index, Some("a5b6c7d8-e9f0-4a1b-2c3d-4e5f6a7b8c9d"), None),
        "job/batch/report-29420160"
    );
    let mut jobs = Reflector::<PartialObjectMeta<Job>>::default();
    list(&index, &mut jobs, vec![owner_meta::<Job>("job.json")]);
    assert_eq!(
        name_of(&index, Some("a5b6c7d8-e9f0-4a1b-2c3d-4e5f6a7b8c9d"), None),
        "cronjob/batch/report"
    );
    // No owner: the pod itself.
    assert_eq!(
        name_of(&index, Some("d8e9f0a1-b2c3-4d4e-5f6a-7b8c9d0e1f2a"), None),
        "pod/default/debug"
    );
    assert_eq!(
        index
            .workload_at("fd00:10:244:1::32".parse().expect("ip"))
            .as_deref(),
        Some("pod/default/debug")
    );
}

#[test]
fn pod_store_without_api_server_relist_replaces_and_delete_removes() {
    let index = KubeIndex::new();
    let mut pods = Reflector::<Pod>::default();
    list(
        &index,
        &mut pods,
        vec![fixture("pod-deployment.json"), fixture("pod-bare.json")],
    );
    assert!(index.pod_for(Some(API_POD_UID), None).is_some());
    assert_eq!(index.stats().pods, 2);

    // A relist (the watch restarted) that no longer holds the API pod: it is gone, and nothing
    // changes before InitDone.
    pods.apply(&index, Event::Init);
    pods.apply(&index, Event::InitApply(fixture("pod-bare.json")));
    assert!(
        index.pod_for(Some(API_POD_UID), None).is_some(),
        "half a relist is not applied"
    );
    pods.apply(&index, Event::InitDone);
    assert!(index.pod_for(Some(API_POD_UID), None).is_none());
    assert!(
        index.pod_for(None, Some(API_CONTAINER)).is_none(),
        "its containers went with it"
    );
    assert_eq!(index.workload_at("10.244.1.17".parse().expect("ip")), None);

    pods.apply(&index, Event::Apply(fixture("pod-deployment.json")));
    assert!(index.pod_for(None, Some(API_CONTAINER)).is_some());
    pods.apply(&index, Event::Delete(fixture("pod-deployment.json")));
    assert!(index.pod_for(None, Some(API_CONTAINER)).is_none());
    assert_eq!(index.stats().pods, 1);
}

#[test]
fn pod_store_without_api_server_bounds_labels() {
    let index = KubeIndex::new();
    let mut pod: Pod = fixture("pod-bare.json");
    let labels = pod.metadata.labels.as_mut().expect("labels");
    for i in 0..100 {
        labels.insert(format!("l{i:03}"), "v".into());
    }
    labels.insert("big".into(), "x".repeat(1000));
    let mut pods = Reflector::<Pod>::default();
    pods.apply(&index, Event::Apply(pod));
    let m = index
        .pod_for(Some("d8e9f0a1-b2c3-4d4e-5f6a-7b8c9d0e1f2a"), None)
        .expect("pod");
    assert_eq!(m.pod.labels.len(), sonde_identity::kube::MAX_LABELS);
    assert!(
        m.pod
            .labels
            .values()
            .all(|v| v.len() <= sonde_identity::kube::MAX_LABEL_LEN)
    );
    assert_eq!(
        index.stats().labels_dropped,
        101 + 1 - sonde_identity::kube::MAX_LABELS as u64
    );
}

#[test]
fn service_index_without_api_server_names_cluster_ips_and_endpoints() {
    let index = KubeIndex::new();
    let mut svcs = Reflector::<Service>::default();
    let mut slices = Reflector::<EndpointSlice>::default();
    list(&index, &mut svcs, vec![fixture("service.json")]);
    list(&index, &mut slices, vec![fixture("endpointslice.json")]);
    let at = |s: &str| {
        index
            .service_at(s.parse::<SocketAddr>().expect("addr"))
            .map(|n| n.to_string())
    };
    assert_eq!(at("10.96.12.34:80").as_deref(), Some("shop/api"));
    assert_eq!(at("[fd00:10:96::c22]:80").as_deref(), Some("shop/api"));
    assert_eq!(
        at("10.244.1.17:8080").as_deref(),
        Some("shop/api"),
        "an endpoint behind it"
    );
    assert_eq!(
        at("10.244.2.9:8080").as_deref(),
        Some("shop/api"),
        "on another node too"
    );
    assert_eq!(at("10.96.12.34:81"), None, "only the Service's ports");
    svcs.apply(&index, Event::Delete(fixture("service.json")));
    assert_eq!(at("10.96.12.34:80"), None);
    assert_eq!(
        at("10.244.1.17:8080").as_deref(),
        Some("shop/api"),
        "the slice still stands"
    );
}

/// The real kube client and watchers against an API server that is not there (a closed port on
/// loopback): every watch fails, backs off and is counted; the state says so; what the index
/// already knew keeps answering.
#[tokio::test]
async fn watch_without_api_server_backs_off_counts_errors_and_keeps_known_pods() {
    let index = Arc::new(KubeIndex::new());
    let mut pods = Reflector::<Pod>::default();
    list(&index, &mut pods, vec![fixture("pod-deployment.json")]);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let cfg = kube::Config::new(format!("http://127.0.0.1:{port}").parse().expect("uri"));
    let client = kube::Client::try_from(cfg).expect("client");
    let task = tokio::spawn(sonde_identity::kube::watch(
        index.clone(),
        client,
        Some("node-a".into()),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while index.stats().errors < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let stats = index.stats();
    assert!(
        stats.errors >= 5,
        "every watch reported its failure: {stats:?}"
    );
    assert_eq!(index.state(), KubeState::Degraded);
    assert_eq!(
        name_of(&index, None, Some(API_CONTAINER)),
        "deployment/shop/api"
    );
}
