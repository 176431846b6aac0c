//! Services keyed by the serving workload; Kubernetes Services and pods naming addresses.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::{NOW_NS, ex};
use sonde_inventory::{AddressNames, Inventory, InventoryConfig};
use sonde_model::{ConnMeta, PodIdentity, Role, Workload};

fn pod_workload(deployment: &str, pod: &str) -> Arc<Workload> {
    let mut w = Workload {
        container_id: Some(format!("{:0>64}", pod.len())),
        pod: Some(PodIdentity {
            uid: format!("uid-{pod}"),
            name: pod.into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload_kind: "Deployment".into(),
            workload_name: deployment.into(),
            ..PodIdentity::default()
        }),
        ..Workload::default()
    };
    w.name = w.derive_name();
    Arc::new(w)
}

fn with_process(
    e: sonde_model::Exchange,
    role: Role,
    workload: Option<Arc<Workload>>,
) -> sonde_model::Exchange {
    let mut conn: ConnMeta = (*e.conn).clone();
    conn.role = role;
    if role == Role::Client {
        std::mem::swap(&mut conn.local, &mut conn.remote);
    }
    conn.process.workload = workload;
    conn.id.fd += 1;
    sonde_model::Exchange {
        conn: Arc::new(conn),
        ..e
    }
}

#[test]
fn two_pods_of_one_deployment_share_one_service_whatever_host_header_callers_use() {
    let mut inv = Inventory::new(InventoryConfig::default());
    let a = with_process(
        ex("GET", "/users/1")
            .server("10.244.1.17:8080")
            .authority("api.shop.svc.cluster.local")
            .build(),
        Role::Server,
        Some(pod_workload("api", "api-7d9c5b6f4-x2k8p")),
    );
    let b = with_process(
        ex("GET", "/users/2")
            .server("10.244.1.18:8080")
            .authority("10.96.12.34")
            .build(),
        Role::Server,
        Some(pod_workload("api", "api-7d9c5b6f4-zz9qq")),
    );
    let ca = inv.observe(&a, NOW_NS);
    let cb = inv.observe(&b, NOW_NS);
    assert!(
        Arc::ptr_eq(&ca.service, &cb.service),
        "{} vs {}",
        ca.service,
        cb.service
    );
    let svc = &ca.service;
    assert_eq!(
        svc.authority, None,
        "the Host header does not split a Kubernetes workload"
    );
    assert_eq!(
        svc.workload.as_ref().map(|w| w.name.as_str()),
        Some("deployment/shop/api")
    );
    assert_eq!(inv.services().count(), 1);
    // Another port of the workload is another service.
    let metrics = with_process(
        ex("GET", "/metrics").server("10.244.1.17:9090").build(),
        Role::Server,
        Some(pod_workload("api", "api-7d9c5b6f4-x2k8p")),
    );
    let cm = inv.observe(&metrics, NOW_NS);
    assert!(!Arc::ptr_eq(&ca.service, &cm.service));
}

#[test]
fn bare_metal_workloads_keep_the_host_header_in_the_key_and_without_identity_nothing_changes() {
    let mut inv = Inventory::new(InventoryConfig::default());
    let unit = Arc::new(Workload {
        name: "nginx.service".into(),
        systemd_unit: Some("nginx.service".into()),
        executable: Some("/usr/sbin/nginx".into()),
        ..Workload::default()
    });
    let a = with_process(
        ex("GET", "/a").authority("a.example").build(),
        Role::Server,
        Some(unit.clone()),
    );
    let b = with_process(
        ex("GET", "/a").authority("b.example").build(),
        Role::Server,
        Some(unit),
    );
    let ca = inv.observe(&a, NOW_NS);
    let cb = inv.observe(&b, NOW_NS);
    assert!(
        !Arc::ptr_eq(&ca.service, &cb.service),
        "virtual hosts of one unit stay apart"
    );
    assert_eq!(ca.service.authority.as_deref(), Some("a.example"));
    assert_eq!(
        ca.service.workload.as_ref().map(|w| w.name.as_str()),
        Some("nginx.service")
    );
    assert_eq!(
        ca.service.process, None,
        "the unit names it, not the task name"
    );
    let plain = inv.observe(&ex("GET", "/a").build(), NOW_NS);
    assert_eq!(plain.service.workload, None);
    assert_eq!(plain.service.process.as_deref(), Some("api"));
    assert_eq!(
        plain.service.to_string(),
        "api.example.com@10.0.0.1:8080[api]"
    );
}

struct Names;

impl AddressNames for Names {
    fn service_at(&self, addr: SocketAddr) -> Option<Arc<str>> {
        (addr == "10.96.12.34:80".parse().expect("addr")).then(|| Arc::from("shop/api"))
    }
    fn workload_at(&self, ip: IpAddr) -> Option<String> {
        (ip == "10.244.1.40".parse::<IpAddr>().expect("ip"))
            .then(|| "deployment/shop/web".to_owned())
    }
}

#[test]
fn client_views_of_a_cluster_ip_name_the_kubernetes_service_and_pod_callers_are_named() {
    let mut inv = Inventory::new(InventoryConfig::default());
    inv.set_address_names(Arc::new(Names));
    // A local client calling the Service's ClusterIP.
    let client_view = with_process(
        ex("GET", "/users/1")
            .server("10.96.12.34:80")
            .authority("api.shop")
            .build(),
        Role::Client,
        Some(pod_workload("web", "web-5f6d7c8b9-abcde")),
    );
    let c = inv.observe(&client_view, NOW_NS);
    assert_eq!(c.service.kubernetes_service.as_deref(), Some("shop/api"));
    assert_eq!(c.service.authority, None);
    let rec = inv
        .endpoints()
        .find(|r| Arc::ptr_eq(&r.service, &c.service))
        .expect("endpoint");
    let callers: Vec<&str> = rec.callers.names().collect();
    assert_eq!(callers.len(), 1);
    assert!(callers[0].ends_with("[deployment/shop/web]"), "{callers:?}");

    // A server-side view whose caller is a pod of this node.
    let server_view = with_process(
        {
            let mut e = ex("GET", "/orders").build();
            let mut c = (*e.conn).clone();
            c.remote = Some("10.244.1.40:43000".parse().expect("addr"));
            e.conn = Arc::new(c);
            e
        },
        Role::Server,
        Some(pod_workload("orders", "orders-0")),
    );
    let s = inv.observe(&server_view, NOW_NS);
    let rec = inv
        .endpoints()
        .find(|r| Arc::ptr_eq(&r.service, &s.service))
        .expect("endpoint");
    let callers: Vec<&str> = rec.callers.names().collect();
    assert_eq!(callers, vec!["10.244.1.40[deployment/shop/web]"]);
}
