//! The whole pipeline on live traffic: exchanges rebuilt from real eBPF capture match what real
//! clients sent and received, and the main job (agent process + collector process + `sonde` CLI)
//! lists the endpoints with the right templates and classifications, surviving a collector
//! restart without losing anything.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_e2e::capture::Capture;
use sonde_e2e::servers::{Nginx, PythonServer, curl};
use sonde_e2e::stack::{DemoStack, bin};
use sonde_e2e::{eventually, free_port, scratch_dir};
use sonde_model::{CaptureEvent, Exchange, Role};
use sonde_protocol::{Tracker, TrackerConfig};

const WAIT: Duration = Duration::from_secs(20);

fn exchanges(events: Vec<CaptureEvent>) -> Vec<Exchange> {
    let mut tracker = Tracker::new(TrackerConfig::default()).expect("tracker");
    let mut out = Vec::new();
    for ev in events {
        tracker.on_event(ev, &mut out);
    }
    tracker.flush(&mut out);
    out
}

fn server_side(exs: &[Exchange], pid: u32) -> Vec<&Exchange> {
    exs.iter()
        .filter(|e| e.conn.role == Role::Server && e.conn.process.pid == pid)
        .collect()
}

#[test]
fn exchanges_match_what_curl_wrk_and_python_requests_sent_and_received() {
    let dir = scratch_dir("observe");
    let nginx_port = free_port();
    let py_port = free_port();
    let nginx = Nginx::start(&dir, nginx_port);
    std::fs::write(nginx.www().join("small.json"), "{\"ok\":true}\n").expect("write");
    std::fs::write(nginx.www().join("big.bin"), vec![7u8; 300_000]).expect("write");
    std::fs::create_dir_all(dir.join("py")).expect("mkdir");
    std::fs::write(dir.join("py").join("hello.txt"), "hello from python\n").expect("write");
    let py = PythonServer::start(&dir.join("py"), py_port);
    let cap = Capture::start(&[nginx_port, py_port]);

    // curl: keep-alive GETs, a 404, a POST with a body.
    let base = format!("http://127.0.0.1:{nginx_port}");
    curl(&[
        &format!("{base}/small.json"),
        &format!("{base}/big.bin"),
        &format!("{base}/small.json?x=1"),
    ]);
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/missing"),
        ])
        .output()
        .expect("curl");
    assert_eq!(out.stdout, b"404");
    curl(&["-d", "a=1&b=2", &format!("{base}/upload")]);
    // wrk: keep-alive load for a second.
    let wrk = Command::new("wrk")
        .args(["-t1", "-c2", "-d1s", &format!("{base}/small.json")])
        .output()
        .expect("wrk");
    let wrk_text = String::from_utf8_lossy(&wrk.stdout);
    let wrk_requests: usize = wrk_text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("wrk request count");
    // python requests against python http.server.
    let script = format!(
        "import requests\ns = requests.Session()\nfor i in range(5):\n    r = s.get('http://127.0.0.1:{py_port}/hello.txt?i=%d' % i)\n    assert r.status_code == 200\nr = requests.get('http://127.0.0.1:{py_port}/nope')\nassert r.status_code == 404\n"
    );
    let st = Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python");
    assert!(st.success());

    let worker = nginx.worker_pid();
    let expected_nginx = 5 + wrk_requests;
    let mut seen;
    let start = std::time::Instant::now();
    let events = loop {
        let events = cap.events();
        let exs = exchanges(events.clone());
        seen = (
            server_side(&exs, worker).len(),
            server_side(&exs, py.pid()).len(),
        );
        if (seen.0 >= expected_nginx && seen.1 >= 6) || start.elapsed() > WAIT {
            break events;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        seen.0 >= expected_nginx && seen.1 >= 6,
        "nginx exchanges {} of {expected_nginx}, python {} of 6",
        seen.0,
        seen.1
    );
    let (_, counters) = cap.stop();
    let exs = exchanges(events);

    // nginx's view: exactly the curl calls plus wrk's requests (wrk counts completed responses;
    // a request in flight when it stopped may add at most one per connection).
    let nginx_side = server_side(&exs, worker);
    let curl_calls: Vec<_> = nginx_side
        .iter()
        .filter(|e| {
            e.request.path != "/small.json"
                || e.request.query.is_some()
                || e.request.method == "POST"
        })
        .collect();
    let by_path: BTreeMap<(String, String), Vec<u16>> =
        nginx_side.iter().fold(BTreeMap::new(), |mut m, e| {
            m.entry((e.request.method.clone(), e.request.path.clone()))
                .or_default()
                .push(e.status().unwrap_or(0));
            m
        });
    assert!(
        nginx_side.len() >= expected_nginx && nginx_side.len() <= expected_nginx + 2,
        "{} vs {expected_nginx}",
        nginx_side.len()
    );
    assert_eq!(
        by_path.get(&("GET".into(), "/big.bin".into())),
        Some(&vec![200])
    );
    assert_eq!(
        by_path.get(&("GET".into(), "/missing".into())),
        Some(&vec![404])
    );
    assert_eq!(
        by_path.get(&("POST".into(), "/upload".into())),
        Some(&vec![200])
    );
    assert!(
        by_path
            .keys()
            .all(
                |(m, p)| ["/small.json", "/big.bin", "/missing", "/upload"].contains(&p.as_str())
                    && (m == "GET" || m == "POST")
            ),
        "nothing invented: {by_path:?}"
    );
    let big = nginx_side
        .iter()
        .find(|e| e.request.path == "/big.bin")
        .expect("big");
    let resp = big.response.as_ref().expect("response");
    assert_eq!(
        resp.body.wire_len, 300_000,
        "body size from Content-Length, bytes sent with sendfile"
    );
    let post = nginx_side
        .iter()
        .find(|e| e.request.method == "POST")
        .expect("post");
    assert_eq!(post.request.body.wire_len, 7);
    assert_eq!(&post.request.body.sample[..], b"a=1&b=2");
    assert!(
        curl_calls
            .iter()
            .any(|e| e.request.query.as_deref() == Some("x=1"))
    );
    assert!(nginx_side.iter().all(
        |e| e.request.authority.as_deref() == Some(format!("127.0.0.1:{nginx_port}").as_str())
    ));

    // python's view: five keep-alive GETs in order and the 404.
    let py_side = server_side(&exs, py.pid());
    let queries: Vec<_> = py_side
        .iter()
        .filter(|e| e.request.path == "/hello.txt")
        .map(|e| e.request.query.clone().unwrap_or_default())
        .collect();
    assert_eq!(queries, vec!["i=0", "i=1", "i=2", "i=3", "i=4"]);
    assert!(
        py_side
            .iter()
            .filter(|e| e.request.path == "/hello.txt")
            .all(|e| e.status() == Some(200)
                && e.response
                    .as_ref()
                    .is_some_and(|r| &r.body.sample[..] == b"hello from python\n"))
    );
    assert_eq!(
        py_side
            .iter()
            .filter(|e| e.request.path == "/nope")
            .map(|e| e.status())
            .collect::<Vec<_>>(),
        vec![Some(404)]
    );
    assert_eq!(py_side.len(), 6);
    for (name, v) in counters.drops() {
        assert_eq!(v, 0, "drop counter {name}");
    }
}

fn sonde_json(url: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(bin("sonde"))
        .args(["--collector", url, "--json"])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        return Some(if v.is_object() {
            serde_json::Value::Array(vec![v])
        } else {
            v
        });
    }
    // Line-delimited (anomalies): collect into an array.
    Some(serde_json::Value::Array(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    ))
}

/// (method, template) → (classification, calls).
type EndpointTable = BTreeMap<(String, String), (String, u64)>;
/// ((method, template), (classification, calls)) expected.
type Expected<'a> = ((&'a str, &'a str), (&'a str, u64));

/// The endpoints of the demo API's port, as `sonde --json endpoints` lists them.
fn demo_endpoints(url: &str, port: u16) -> EndpointTable {
    let Some(serde_json::Value::Array(eps)) = sonde_json(url, &["endpoints"]) else {
        return BTreeMap::new();
    };
    eps.iter()
        .filter(|e| {
            e["service"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!(":{port}")))
        })
        .map(|e| {
            (
                (
                    e["method"].as_str().unwrap_or("").to_string(),
                    e["path_template"].as_str().unwrap_or("").to_string(),
                ),
                (
                    e["classification"].as_str().unwrap_or("").to_lowercase(),
                    e["call_count"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

#[test]
fn main_job_lists_endpoints_with_classifications_and_survives_collector_and_agent_restarts() {
    let dir = scratch_dir("mainjob");
    let mut stack = DemoStack::start(&dir, "");
    let (api_port, url) = (stack.api_port, stack.url.clone());

    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2ln";
    let get = |path: &str, auth: bool| {
        let mut args = vec!["-s".to_string(), "-o".into(), "/dev/null".into()];
        if auth {
            args.push("-H".into());
            args.push(format!("Authorization: Bearer {jwt}"));
        }
        args.push(format!("http://127.0.0.1:{api_port}{path}"));
        assert!(
            Command::new("curl")
                .args(&args)
                .status()
                .expect("curl")
                .success()
        );
    };
    for id in [1, 2, 3, 40, 500] {
        get(&format!("/api/v2/users/{id}"), true);
    }
    get("/api/v2/orders", true);
    get("/api/v2/health", false);
    get("/api/v1/users/7", false);
    // python requests, as the other client.
    let script = format!(
        "import requests\nr = requests.get('http://127.0.0.1:{api_port}/api/v2/debug/users')\nassert r.status_code == 200 and '@example.com' in r.text\n"
    );
    assert!(
        Command::new("python3")
            .args(["-c", &script])
            .status()
            .expect("python")
            .success()
    );

    let expect_before = [
        (("GET", "/api/v2/users/{id}"), ("managed", 5)),
        (("GET", "/api/v2/orders"), ("managed", 1)),
        (("GET", "/api/v2/health"), ("managed", 1)),
        (("GET", "/api/v1/users/{id}"), ("zombie", 1)),
        (("GET", "/api/v2/debug/users"), ("shadow", 1)),
    ];
    let matches = |eps: &BTreeMap<(String, String), (String, u64)>, expect: &[Expected]| {
        expect.iter().all(|((m, t), (c, n))| {
            eps.get(&(m.to_string(), t.to_string()))
                .is_some_and(|(class, calls)| class.contains(c) && calls == n)
        })
    };
    let eps = eventually(WAIT, "the endpoints in `sonde endpoints`", || {
        let eps = demo_endpoints(&url, api_port);
        matches(&eps, &expect_before).then_some(eps)
    });
    assert_eq!(
        eps.len(),
        expect_before.len(),
        "no other endpoints: {eps:?}"
    );
    let anomalies = eventually(WAIT, "inventory events in `sonde anomalies`", || {
        let v = sonde_json(&url, &["anomalies"])?;
        let kinds: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|a| {
                a["anomaly"]["kind"]
                    .as_str()
                    .or(a["kind"].as_str())
                    .map(String::from)
            })
            .collect();
        (kinds.iter().any(|k| k == "inventory.shadow_endpoint")
            && kinds.iter().any(|k| k == "inventory.zombie_endpoint"))
        .then_some(kinds)
    });
    assert!(
        anomalies
            .iter()
            .any(|k| k == "inventory.unauthenticated_pii"),
        "{anomalies:?}"
    );
    // Auth schemes and sensitive kinds per endpoint, never raw values.
    let raw = sonde_json(&url, &["endpoints"]).expect("endpoints json");
    let find = |t: &str| {
        raw.as_array()
            .and_then(|a| a.iter().find(|e| e["path_template"] == t))
            .cloned()
            .unwrap_or_default()
    };
    let users = find("/api/v2/users/{id}");
    assert!(
        users["auth_schemes"].to_string().contains("bearer"),
        "{users}"
    );
    assert!(
        users["sensitive_kinds"].to_string().contains("email"),
        "{users}"
    );
    let debug = find("/api/v2/debug/users");
    assert!(
        debug["sensitive_kinds"].to_string().contains("phone"),
        "{debug}"
    );
    assert!(
        debug["unauthenticated"].as_bool().unwrap_or(false),
        "{debug}"
    );
    let all = raw.to_string();
    assert!(
        !all.contains("@example.com") && !all.contains(jwt),
        "no raw personal data or token leaves the agent"
    );
    // The endpoint's own view lists its anomalies.
    let id = debug["id"].as_str().expect("endpoint id").to_string();
    let detail = eventually(WAIT, "recent anomalies on the endpoint", || {
        let v = sonde_json(&url, &["endpoint", &id])?;
        let v = v.as_array()?.first()?.clone();
        v["recent_anomalies"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(v)
    });
    assert!(
        detail["recent_anomalies"]
            .to_string()
            .contains("inventory.shadow_endpoint"),
        "{detail}"
    );

    // The collector goes away; calls made meanwhile are spooled and delivered after it returns.
    stack.stop_collector();
    for id in [9, 10] {
        get(&format!("/api/v2/users/{id}"), true);
    }
    get("/internal/metrics", false);
    std::thread::sleep(Duration::from_secs(2));
    stack.start_collector();
    let mut expect_after = expect_before.to_vec();
    expect_after[0].1.1 = 7;
    expect_after.push((("GET", "/internal/metrics"), ("shadow", 1)));
    let eps = eventually(
        Duration::from_secs(40),
        "the calls made while the collector was down",
        || {
            let eps = demo_endpoints(&url, api_port);
            matches(&eps, &expect_after).then_some(eps)
        },
    );
    assert_eq!(eps.len(), expect_after.len(), "{eps:?}");

    // The agent restarts (its counts start from zero): the collector's totals keep counting.
    stack.restart_agent();
    get("/api/v2/users/11", true);
    get("/api/v2/health", false);
    let mut expect_restart = expect_after.clone();
    expect_restart[0].1.1 = 8;
    expect_restart[2].1.1 = 2;
    let eps = eventually(
        Duration::from_secs(40),
        "totals that add the restarted agent's calls",
        || {
            let eps = demo_endpoints(&url, api_port);
            matches(&eps, &expect_restart).then_some(eps)
        },
    );
    assert_eq!(eps.len(), expect_restart.len(), "{eps:?}");
    drop(stack);
}

fn b64url(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn token(sub: &str, exp: u64, alg: &str) -> String {
    let header = b64url(&format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
    let body = b64url(&format!(
        "{{\"sub\":\"{sub}\",\"iss\":\"demo\",\"exp\":{exp}}}"
    ));
    let sig = if alg == "none" { "" } else { "c2lnbmF0dXJl" };
    format!("{header}.{body}.{sig}")
}

#[test]
fn attacks_on_live_traffic_raise_anomalies_and_benign_traffic_raises_none() {
    let dir = scratch_dir("detect");
    let stack = DemoStack::start(&dir, "[detect]\nlearn_min_calls = 20\nlearn_min_secs = 1\n");
    let (api_port, url) = (stack.api_port, stack.url.clone());
    let far = 4_102_444_800; // 2100-01-01
    let call = |path: &str, tok: &str| {
        let st = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-H",
                &format!("Authorization: Bearer {tok}"),
            ])
            .arg(format!("http://127.0.0.1:{api_port}{path}"))
            .status()
            .expect("curl");
        assert!(st.success());
    };
    // Benign: five principals, each reading its own user and orders, declared endpoints only.
    let users: Vec<(String, u32)> = (0..5)
        .map(|i| (token(&format!("user{i}"), far, "HS256"), 10 + i))
        .collect();
    for _ in 0..6 {
        for (tok, id) in &users {
            call(&format!("/api/v2/users/{id}"), tok);
            call("/api/v2/orders", tok);
            call("/api/v2/export", tok);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let benign = sonde_json(&url, &["anomalies"]).expect("anomalies");
    assert_eq!(
        benign.as_array().map(Vec::len),
        Some(0),
        "benign traffic raised: {benign}"
    );

    // A live watch, then the attacks.
    let mut follow = Command::new(bin("sonde"))
        .args(["--collector", &url, "--json", "anomalies", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sonde anomalies --follow");
    let follow_out = follow.stdout.take().expect("stdout");
    let followed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = followed.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("lock").push(line);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let mallory = token("mallory", far, "HS256");
    for id in 100..140 {
        call(&format!("/api/v2/users/{id}"), &mallory);
    }
    call("/api/v2/export?limit=500", &mallory);
    call("/api/v2/users/3", &token("eve", 1_000_000_000, "HS256"));
    call("/api/v2/users/4", &token("eve", far, "none"));

    let expected = [
        ("bola.", "API1"),
        ("auth.expired_jwt_accepted", "API2"),
        ("auth.unsigned_jwt_accepted", "API2"),
        ("exposure.", "API3"),
    ];
    let found = |lines: &[serde_json::Value]| {
        expected.iter().all(|(kind, cat)| {
            lines.iter().any(|a| {
                let a = if a["anomaly"].is_object() {
                    &a["anomaly"]
                } else {
                    a
                };
                a["kind"].as_str().is_some_and(|k| k.starts_with(kind))
                    && a["category"].as_str().is_some_and(|c| c.contains(cat))
            })
        })
    };
    let listed = eventually(WAIT, "the attacks in `sonde anomalies`", || {
        let v = sonde_json(&url, &["anomalies"])?;
        let lines = v.as_array()?.clone();
        found(&lines).then_some(lines)
    });
    let streamed = eventually(WAIT, "the attacks on the `--follow` stream", || {
        let lines: Vec<serde_json::Value> = followed
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        found(&lines).then_some(lines)
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    let text = serde_json::Value::Array(listed.clone()).to_string();
    assert!(
        !text.contains(&mallory) && !text.contains("eyJ"),
        "no raw token in evidence"
    );
    assert!(!streamed.is_empty());
}
