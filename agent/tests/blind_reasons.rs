//! Blind-spot reasons of real executables: the agent's own binary (rustls, through tonic) and a
//! Go HTTPS client built here (crypto/tls), inspected while they run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sonde_agent::blind::{BlindReason, BlindSpotConfig, BlindSpots};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reason the report gives for one blind connection of `pid`.
fn reason_of(pid: u32) -> BlindReason {
    let mut spots = BlindSpots::new(BlindSpotConfig::default());
    spots.judged(pid, "test", false, 100);
    let report = spots.report();
    assert_eq!(report.blind_connections, 1);
    report.processes[0].reason.clone()
}

/// Waits until `pid` has its executable mapped (it is past exec).
fn wait_exec(pid: u32, exe_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains(exe_name)
    {
        assert!(Instant::now() < deadline, "{exe_name} never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_agent_binary_is_rustls() {
    // Reading a recording from a pipe that never ends keeps it alive.
    let child = Kill(
        Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .args(["observe", "--replay", "/dev/stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sonde-agent"),
    );
    wait_exec(child.0.id(), "sonde-agent");
    assert_eq!(reason_of(child.0.id()), BlindReason::Rustls);
}

#[test]
fn a_go_binary_is_go_crypto_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("main.go"),
        "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n\tfmt.Println(tls.VersionTLS13)\n\ttime.Sleep(30 * time.Second)\n}\n",
    )
    .expect("write");
    let exe = dir.path().join("gotls");
    let built = Command::new("go")
        .args(["build", "-ldflags=-s -w", "-o"])
        .arg(&exe)
        .arg("main.go")
        .current_dir(dir.path())
        .env("GOCACHE", dir.path().join("cache"))
        .env("GOPATH", dir.path().join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("go (cargo xtask setup installs golang-go)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // Stripped (-s -w): the build info section still says Go.
    let child = Kill(
        Command::new(&exe)
            .stdout(Stdio::null())
            .spawn()
            .expect("go binary"),
    );
    wait_exec(child.0.id(), "gotls");
    assert_eq!(reason_of(child.0.id()), BlindReason::GoCryptoTls);
}
