//! Blind-spot reasons of real executables: the agent's own binary (rustls, through tonic) and a
//! Go programs built here (crypto/tls, stripped and not), inspected while they run.

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

/// Builds a Go program using crypto/tls that sleeps, with `ldflags`.
fn go_binary(dir: &std::path::Path, name: &str, ldflags: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n\tfmt.Println(tls.VersionTLS13, tls.Client)\n\ttime.Sleep(30 * time.Second)\n}\n",
    )
    .expect("write");
    let exe = dir.join(name);
    let built = Command::new("go")
        .args(["build", &format!("-ldflags={ldflags}"), "-o"])
        .arg(&exe)
        .arg("main.go")
        .current_dir(dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("go (cargo xtask setup installs golang-go)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    exe
}

#[test]
fn a_stripped_go_binary_cannot_be_located_and_an_unstripped_one_is_probed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Stripped (-s -w): the build info section still says Go, no symbol table says where.
    let stripped = go_binary(dir.path(), "gostripped", "-s -w");
    let child = Kill(
        Command::new(&stripped)
            .stdout(Stdio::null())
            .spawn()
            .expect("go binary"),
    );
    wait_exec(child.0.id(), "gostripped");
    assert_eq!(reason_of(child.0.id()), BlindReason::GoStripped);

    // With its symbol table, crypto/tls is located; blind only if its probes did not deliver.
    let full = go_binary(dir.path(), "gofull", "");
    let found = sonde_agent::capture::tls::elf::find_entry_points(&full).expect("ELF");
    let sonde_agent::capture::tls::go::GoTls::Found(go) = &found.go else {
        panic!("crypto/tls located: {:?}", found.go);
    };
    assert!(go.version.starts_with("go1."), "{}", go.version);
    assert!(!go.read.returns.is_empty() && !go.write.returns.is_empty());
    // The probes go past the stack-growth check: the bytes before them are its JBE.
    let bytes = std::fs::read(&full).expect("read the executable");
    for f in [&go.read, &go.write] {
        let at = f.entry as usize;
        let jbe_rel32 = bytes[at - 6..at - 4] == [0x0f, 0x86];
        let jbe_rel8 = bytes[at - 2] == 0x76;
        assert!(jbe_rel32 || jbe_rel8, "no JBE before {:#x}", f.entry);
        for &r in &f.returns {
            assert_eq!(bytes[r as usize], 0xc3, "RET at {r:#x}");
        }
    }
    let stripped_found = sonde_agent::capture::tls::elf::find_entry_points(&stripped).expect("ELF");
    assert_eq!(
        stripped_found.go,
        sonde_agent::capture::tls::go::GoTls::Stripped
    );
    let child = Kill(
        Command::new(&full)
            .stdout(Stdio::null())
            .spawn()
            .expect("go binary"),
    );
    wait_exec(child.0.id(), "gofull");
    assert_eq!(reason_of(child.0.id()), BlindReason::GoCryptoTls);
}
