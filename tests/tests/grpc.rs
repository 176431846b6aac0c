//! gRPC on live traffic: the `sonde` CLI (a tonic client) calling a real collector process (a
//! tonic server) gives unary, server-streaming and failing calls; each is reported once with
//! its service, method, status and message counts, and the inventory keys it by
//! `/package.Service/Method`.

use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_e2e::capture::Capture;
use sonde_e2e::servers::wait_for_port;
use sonde_e2e::stack::bin;
use sonde_e2e::{free_port, scratch_dir};
use sonde_model::{Exchange, HttpVersion, Role};
use sonde_protocol::{Tracker, TrackerConfig};

/// gRPC calls seen from the server's (the collector's) sockets.
fn grpc_calls(xs: &[Exchange], server: u32) -> Vec<(String, String, Option<u32>, u64)> {
    xs.iter()
        .filter(|x| x.conn.role == Role::Server && x.conn.process.pid == server)
        .filter_map(|x| {
            let g = x.grpc.as_ref()?;
            Some((
                g.service.clone(),
                g.method.clone(),
                g.status,
                g.response_messages,
            ))
        })
        .collect()
}

#[test]
fn unary_streaming_and_failing_grpc_calls_are_reported_with_their_status() {
    let dir = scratch_dir("grpc");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut collector = Command::new(bin("sonde-collector"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--database"])
        .arg(dir.join("c.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("collector");
    wait_for_port(port);
    let cap = Capture::start(&[port]);
    let sonde = |args: &[&str]| {
        Command::new(bin("sonde"))
            .args(["--collector", &url])
            .args(args)
            .output()
            .expect("sonde")
    };
    assert!(sonde(&["endpoints"]).status.success());
    assert!(sonde(&["agents"]).status.success());
    let missing = sonde(&["endpoint", "0123456789abcdef"]);
    assert_eq!(missing.status.code(), Some(5), "not found");
    // A server-streaming watch, cut after a second.
    let mut follow = Command::new(bin("sonde"))
        .args(["--collector", &url, "anomalies", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("follow");
    std::thread::sleep(Duration::from_secs(1));
    let _ = follow.kill();
    let _ = follow.wait();

    let start = std::time::Instant::now();
    let exchanges = loop {
        let mut tracker = Tracker::new(TrackerConfig::default()).expect("tracker");
        let mut out = Vec::new();
        for ev in cap.events() {
            tracker.on_event(ev, &mut out);
        }
        tracker.flush(&mut out);
        let calls = grpc_calls(&out, collector.id());
        let has = |m: &str| {
            calls
                .iter()
                .any(|(s, mm, _, _)| s == "sonde.v1.Query" && mm == m)
        };
        if has("ListEndpoints") && has("ListAgents") && has("GetEndpoint") && has("WatchAnomalies")
        {
            break out;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let paths: Vec<_> = out
                .iter()
                .map(|x| (x.conn.role, x.request.path.clone(), x.grpc.clone()))
                .collect();
            panic!(
                "gRPC calls missing: {calls:?}\nexchanges: {paths:?}\nstats: {:?}",
                tracker.stats()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let server_pid = collector.id();
    let _ = collector.kill();
    let _ = collector.wait();
    let calls = grpc_calls(&exchanges, server_pid);
    let status_of = |m: &str| {
        calls
            .iter()
            .filter(|c| c.1 == m)
            .map(|c| c.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(status_of("ListEndpoints"), vec![Some(0)]);
    assert_eq!(status_of("ListAgents"), vec![Some(0)]);
    assert_eq!(
        status_of("GetEndpoint"),
        vec![Some(5)],
        "NOT_FOUND from a trailers-only answer"
    );
    let unary = calls
        .iter()
        .find(|c| c.1 == "ListEndpoints")
        .expect("unary");
    assert_eq!(unary.3, 1, "one response message");
    assert_eq!(
        status_of("WatchAnomalies").len(),
        1,
        "the streaming call is one exchange"
    );
    let server_side: Vec<&Exchange> = exchanges
        .iter()
        .filter(|x| x.conn.role == Role::Server && x.conn.process.pid == server_pid)
        .collect();
    assert!(server_side.iter().all(|x| x.version == HttpVersion::Http2));
    assert!(
        server_side.iter().all(|x| x.request.method == "POST"
            && x.request.path.starts_with("/sonde.v1.Query/")
            || x.request.path.starts_with("/grpc.")),
        "nothing invented: {:?}",
        server_side
            .iter()
            .map(|x| &x.request.path)
            .collect::<Vec<_>>()
    );

    // The inventory names gRPC endpoints by their method.
    let mut inventory = sonde_inventory::Inventory::new(Default::default());
    for x in &server_side {
        inventory.observe(x, x.request.ts_start_ns);
    }
    let templates: Vec<String> = inventory
        .endpoints()
        .map(|e| e.template.to_string())
        .collect();
    assert!(
        templates.contains(&"/sonde.v1.Query/ListEndpoints".to_string()),
        "{templates:?}"
    );
    assert!(
        templates.contains(&"/sonde.v1.Query/GetEndpoint".to_string()),
        "{templates:?}"
    );
}
