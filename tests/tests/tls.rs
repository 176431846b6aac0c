//! TLS posture and blind spots on live traffic, through the main job's processes (agent run +
//! collector + `sonde` CLI).
//!
//! These need the kernel side to ship a TLS connection's handshake records on the syscall path
//! (the records up to the first application data, per direction); with a kernel side that drops
//! TLS connections at classification the agent sees no handshake and these tests fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sonde_e2e::servers::wait_for_port;
use sonde_e2e::stack::{Proc, bin, collector};
use sonde_e2e::{eventually, free_port, scratch_dir};
use sonde_tls::harness::{TestCert, unix_now};

const WAIT: Duration = Duration::from_secs(30);

/// `openssl s_server -www` on 127.0.0.1:`port` with `cert` and extra arguments.
fn s_server(cert: &TestCert, port: u16, args: &[&str]) -> Proc {
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(cert.cert_path())
        .arg("-key")
        .arg(cert.key_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server (cargo xtask setup installs openssl)");
    wait_for_port(port);
    Proc(child)
}

/// `sonde-agent run` capturing `ports`, exporting to `url` every 300 ms, blind after 1 s.
fn agent(dir: &Path, url: &str, ports: &[u16]) -> Proc {
    let config = dir.join("agent.toml");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(
        &config,
        format!(
            "[capture]\nports = [{}]\n\n[export]\ninterval_ms = 300\n\n[blind_spots]\ngrace_ms = 1000\n",
            ports.join(", ")
        ),
    )
    .expect("config");
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(bin("sonde-agent"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--collector", url, "--state-dir"])
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sonde-agent starts");
    eventually(Duration::from_secs(20), "the agent to attach", || {
        std::fs::read_to_string(&log_path)
            .ok()
            .filter(|l| l.contains("capture attached"))
            .map(|_| ())
    });
    Proc(child)
}

fn sonde(url: &str, args: &[&str]) -> String {
    let out = Command::new(bin("sonde"))
        .args(["--collector", url])
        .args(args)
        .output()
        .expect("sonde runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn legacy_tls_and_an_expired_certificate_become_api8_anomalies_once_per_server() {
    let dir = scratch_dir("tls-posture");
    let now = unix_now();
    let expired = TestCert::self_signed("legacy.sonde.test", now - 400 * 86_400, now - 30 * 86_400);
    let port = free_port();
    let _server = s_server(&expired, port, &["-cipher", "DEFAULT:@SECLEVEL=0"]);
    let coll_port = free_port();
    let url = format!("http://127.0.0.1:{coll_port}");
    let _collector = collector(coll_port, &dir.join("collector.db"));
    let _agent = agent(&dir, &url, &[port]);

    // Three TLS 1.0 connections of openssl's own client.
    for _ in 0..3 {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args([
                "-tls1",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-servername",
                "legacy.sonde.test",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Protocol  : TLSv1\n"), "{text}");
    }
    let text = eventually(WAIT, "both posture anomalies in the collector", || {
        let t = sonde(&url, &["anomalies"]);
        (t.contains("tls.legacy_version") && t.contains("tls.certificate_expired")).then_some(t)
    });
    assert!(text.contains("API8"), "{text}");
    // Once per server: three connections, one row each.
    assert_eq!(text.matches("tls.legacy_version").count(), 1, "{text}");
    assert_eq!(text.matches("tls.certificate_expired").count(), 1, "{text}");
}

#[test]
fn a_java_https_client_is_a_jsse_blind_spot_in_sonde_agents() {
    let dir = scratch_dir("tls-blind");
    let cert = TestCert::valid("jsse.sonde.test");
    let port = free_port();
    let _server = s_server(&cert, port, &[]);
    let coll_port = free_port();
    let url = format!("http://127.0.0.1:{coll_port}");
    let _collector = collector(coll_port, &dir.join("collector.db"));
    let _agent = agent(&dir, &url, &[port]);

    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/TlsClient.java");
    let out = Command::new("java")
        .arg(&client)
        .args([&format!("https://127.0.0.1:{port}/"), "3", "3000"])
        .output()
        .expect("java (cargo xtask setup installs openjdk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("200 ")).count(),
        3,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let agents = eventually(WAIT, "the JSSE blind spot in `sonde agents`", || {
        let t = sonde(&url, &["agents"]);
        t.contains("blind spot tls.java_jsse").then_some(t)
    });
    assert!(agents.contains("java"), "{agents}");
    assert!(agents.contains("TLS unreadable: "), "{agents}");
    let json = sonde(&url, &["--json", "agents"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("agents JSON");
    let counters = &v[0]["counters"];
    // The client's connections are blind (JSSE); the server's side is OpenSSL, readable once its
    // probes attach, so it may or may not add to the blind total.
    let jsse = counters["blind.tls.java_jsse"].as_u64().unwrap_or(0);
    assert!(jsse >= 1, "{json}");
    assert!(
        counters["tls.blind_connections"].as_u64().unwrap_or(0) >= jsse,
        "{json}"
    );
}
