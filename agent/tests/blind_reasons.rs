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

/// Builds a Go program using crypto/tls that sleeps, with `ldflags` (position-independent when
/// `name` says "pie").
fn go_binary(dir: &std::path::Path, name: &str, ldflags: &str) -> std::path::PathBuf {
    let buildmode = if name.contains("pie") { "pie" } else { "exe" };
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n\tfmt.Println(tls.VersionTLS13, tls.Client)\n\ttime.Sleep(30 * time.Second)\n}\n",
    )
    .expect("write");
    let exe = dir.join(name);
    let built = Command::new("go")
        .args(["build", &format!("-buildmode={buildmode}")])
        .args([&format!("-ldflags={ldflags}"), "-o"])
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
fn go_binaries_are_located_from_their_symbols_or_stripped_from_their_function_table() {
    use sonde_agent::capture::tls::elf::find_entry_points;
    use sonde_agent::capture::tls::go::GoTls;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = go_binary(dir.path(), "gofull", "");
    // Stripped (-s -w): no symbol table, no DWARF; the runtime's .gopclntab stays.
    let stripped = go_binary(dir.path(), "gostripped", "-s -w");
    let GoTls::Found(go) = find_entry_points(&full).expect("ELF").go else {
        panic!("crypto/tls located from the symbol table");
    };
    assert!(go.version.starts_with("go1."), "{}", go.version);
    assert!(!go.read.returns.is_empty() && !go.write.returns.is_empty());
    // The same code, linked the same way: the function table gives the very same points.
    let GoTls::Found(from_pclntab) = find_entry_points(&stripped).expect("ELF").go else {
        panic!("crypto/tls located from .gopclntab");
    };
    assert_eq!(from_pclntab, go);
    // Position-independent builds too (the table moves to .data.rel.ro.gopclntab).
    let pie = go_binary(dir.path(), "gopie", "");
    let pie_stripped = go_binary(dir.path(), "gopies", "-s -w");
    let (GoTls::Found(a), GoTls::Found(b)) = (
        find_entry_points(&pie).expect("ELF").go,
        find_entry_points(&pie_stripped).expect("ELF").go,
    ) else {
        panic!("crypto/tls located in PIE builds");
    };
    assert_eq!(a, b);
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
    // Readable, so blind only when their probes did not deliver (not attached here).
    for (exe, name) in [(&full, "gofull"), (&stripped, "gostripped")] {
        let child = Kill(
            Command::new(exe)
                .stdout(Stdio::null())
                .spawn()
                .expect("go binary"),
        );
        wait_exec(child.0.id(), name);
        assert_eq!(reason_of(child.0.id()), BlindReason::GoCryptoTls, "{name}");
    }
    // Without its function table (a packer or obfuscator does this), nothing says where.
    let mangled = dir.path().join("gomangled");
    let mut data = std::fs::read(&stripped).expect("read");
    let elf = object::File::parse(&*data).expect("ELF");
    use object::{Object as _, ObjectSection as _};
    let (off, len) = elf
        .section_by_name(".gopclntab")
        .and_then(|s| s.file_range())
        .expect(".gopclntab");
    data[off as usize..(off + len) as usize].fill(0);
    std::fs::write(&mangled, &data).expect("write");
    assert!(matches!(
        find_entry_points(&mangled).expect("ELF").go,
        GoTls::Undecodable(_)
    ));
}
