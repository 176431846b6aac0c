//! The blind-spots report: TLS connections whose plaintext the agent cannot read, and why.
//!
//! A connection whose syscall bytes are TLS records is readable when plaintext for it arrives
//! from the TLS-library probes (`Source::Tls`). One without plaintext past a grace period (or at
//! its close) is blind, and the process that owns it is inspected once through /proc to say why:
//! a Go binary that is stripped, too old or not attached, a JVM (JSSE), rustls, a TLS library the probes do not
//! cover (GnuTLS, NSS, wolfSSL, mbed TLS), OpenSSL linked into the executable, a stripped static
//! executable, or dynamically linked OpenSSL whose probes did not deliver.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;

use object::{Object as _, ObjectSymbol as _};

use crate::capture::tls::go::GoTls;
use serde::Serialize;

/// Executables read for inspection up to this size (larger ones are judged by their maps only).
const MAX_EXE_BYTES: u64 = 512 << 20;
/// Symbols looked at per executable (stripped ones have none; huge ones stop here).
const MAX_SYMBOLS: usize = 2_000_000;

/// Why a process's TLS is unreadable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum BlindReason {
    /// A Go executable whose `crypto/tls` probes did not deliver (not attached: the bound, a
    /// refusal, or functions that could not be decoded).
    GoCryptoTls,
    /// A Go executable with neither a symbol table nor a readable `.gopclntab` (packed or
    /// mangled): `crypto/tls` cannot be located.
    GoStripped,
    /// Go on an architecture other than x86-64 (the Go probes read amd64 registers).
    GoUnsupportedArch,
    /// Go older than 1.17: arguments on the stack, which the Go probes do not read.
    GoStackAbi,
    /// A JVM (libjvm mapped): TLS is JSSE, in Java.
    JavaJsse,
    /// rustls symbols or sources in the executable.
    Rustls,
    /// A TLS library the probes do not cover is mapped (the name says which).
    UnsupportedLibrary(String),
    /// OpenSSL/BoringSSL linked into the executable (its `SSL_read` is not a shared library's).
    StaticOpenssl,
    /// A statically linked executable without symbols: its TLS code cannot be located.
    StaticStripped,
    /// libssl is mapped but no plaintext arrived: its probes are not attached (or failed).
    OpensslNotAttached,
    /// The process exited before it could be inspected.
    ProcessGone,
    Unknown,
}

impl BlindReason {
    /// The machine-readable kind (heartbeat `BlindSpot.kind`, counter names).
    pub fn kind(&self) -> &'static str {
        match self {
            BlindReason::GoCryptoTls => "tls.go_crypto_tls",
            BlindReason::GoStripped => "tls.go_stripped",
            BlindReason::GoStackAbi => "tls.go_stack_abi",
            BlindReason::GoUnsupportedArch => "tls.go_unsupported_arch",
            BlindReason::JavaJsse => "tls.java_jsse",
            BlindReason::Rustls => "tls.rustls",
            BlindReason::UnsupportedLibrary(_) => "tls.unsupported_library",
            BlindReason::StaticOpenssl => "tls.static_openssl",
            BlindReason::StaticStripped => "tls.static_stripped",
            BlindReason::OpensslNotAttached => "tls.openssl_not_attached",
            BlindReason::ProcessGone => "tls.process_exited",
            BlindReason::Unknown => "tls.unknown",
        }
    }

    /// One line for people.
    pub fn explain(&self) -> String {
        match self {
            BlindReason::GoCryptoTls => "Go binary whose crypto/tls probes are not attached".into(),
            BlindReason::GoStripped => {
                "Go binary without symbols or function table: crypto/tls cannot be located".into()
            }
            BlindReason::GoUnsupportedArch => {
                "Go binary on an architecture the Go TLS probes do not read (x86-64 only)".into()
            }
            BlindReason::GoStackAbi => {
                "Go older than 1.17 (stack-based calling convention): not readable".into()
            }
            BlindReason::JavaJsse => "Java process: TLS is JSSE inside the JVM".into(),
            BlindReason::Rustls => "rustls compiled into the executable".into(),
            BlindReason::UnsupportedLibrary(l) => {
                format!("uses {l}, which the TLS probes do not cover")
            }
            BlindReason::StaticOpenssl => {
                "OpenSSL/BoringSSL linked into the executable, not probed".into()
            }
            BlindReason::StaticStripped => {
                "statically linked and stripped: no symbols to probe".into()
            }
            BlindReason::OpensslNotAttached => {
                "dynamically linked OpenSSL, but no plaintext arrived from its probes".into()
            }
            BlindReason::ProcessGone => "the process exited before it could be inspected".into(),
            BlindReason::Unknown => "no known TLS library found".into(),
        }
    }
}

/// What the Go probes can do with a Go executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GoVerdict {
    /// crypto/tls can be located (or is absent): blind only if the probes did not deliver.
    Locatable,
    Stripped,
    StackAbi,
    UnsupportedArch,
}

/// What one executable's ELF says.
#[derive(Clone, Copy, Debug, Default)]
struct ExeFacts {
    go: bool,
    /// What the Go probes can do with it (for Go executables).
    go_tls: Option<GoVerdict>,
    rustls: bool,
    ssl_symbols: bool,
    static_linked: bool,
    has_symtab: bool,
}

fn exe_facts(data: &[u8]) -> Option<ExeFacts> {
    let file = object::File::parse(data).ok()?;
    let mut f = ExeFacts {
        go: file.section_by_name(".go.buildinfo").is_some(),
        static_linked: file.section_by_name(".interp").is_none(),
        // Read with read(2), not mapped: the code bytes are as on disk.
        go_tls: match crate::capture::tls::go::find_go_tls(&file, None) {
            GoTls::NotGo => None,
            GoTls::Stripped => Some(GoVerdict::Stripped),
            GoTls::StackAbi(_) => Some(GoVerdict::StackAbi),
            GoTls::UnsupportedArch => Some(GoVerdict::UnsupportedArch),
            GoTls::NoCryptoTls | GoTls::Undecodable(_) | GoTls::Found(_) => {
                Some(GoVerdict::Locatable)
            }
        },
        ..ExeFacts::default()
    };
    for sym in file
        .symbols()
        .chain(file.dynamic_symbols())
        .take(MAX_SYMBOLS)
    {
        if !sym.is_definition() {
            continue;
        }
        f.has_symtab = true;
        let Ok(name) = sym.name() else { continue };
        match name {
            "runtime.buildVersion" => f.go = true,
            "SSL_read" | "SSL_write" | "SSL_read_ex" | "SSL_write_ex" => f.ssl_symbols = true,
            n if n.contains("rustls") => f.rustls = true,
            _ => {}
        }
    }
    // Stripped Rust executables keep their panic locations: `.../rustls-0.23.x/src/...`.
    if !f.rustls {
        f.rustls = memchr::memmem::find(data, b"/rustls-").is_some();
    }
    Some(f)
}

/// Why process `pid` is blind, from /proc/PID/maps and its executable. `exe_cache` holds the
/// ELF verdicts by (device, inode), so thousands of processes of one binary cost one read.
fn inspect(
    pid: u32,
    exe_cache: &mut HashMap<(u64, u64), Option<ExeFacts>>,
) -> (BlindReason, String) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return (BlindReason::ProcessGone, exe);
    };
    let mut libssl = false;
    let mut unsupported = None;
    let mut jvm = false;
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if name == "libjvm.so" {
            jvm = true;
        } else if name.starts_with("libssl.so") {
            libssl = true;
        } else if unsupported.is_none() {
            unsupported = [
                ("libgnutls.so", "GnuTLS"),
                ("libnss3.so", "NSS"),
                ("libssl3.so", "NSS"),
                ("libwolfssl.so", "wolfSSL"),
                ("libmbedtls.so", "mbed TLS"),
                ("libbotan-", "Botan"),
                ("libs2n.so", "s2n-tls"),
            ]
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, lib)| lib.to_string());
        }
    }
    if jvm {
        return (BlindReason::JavaJsse, exe);
    }
    let proc_exe = format!("/proc/{pid}/exe");
    let facts = match std::fs::metadata(&proc_exe) {
        Ok(md) => *exe_cache.entry((md.dev(), md.ino())).or_insert_with(|| {
            if md.len() > MAX_EXE_BYTES {
                return None;
            }
            std::fs::read(&proc_exe).ok().and_then(|d| exe_facts(&d))
        }),
        Err(_) => None,
    };
    let f = facts.unwrap_or_default();
    let reason = if f.go_tls == Some(GoVerdict::StackAbi) {
        BlindReason::GoStackAbi
    } else if f.go_tls == Some(GoVerdict::Stripped) {
        BlindReason::GoStripped
    } else if f.go_tls == Some(GoVerdict::UnsupportedArch) {
        BlindReason::GoUnsupportedArch
    } else if f.go {
        BlindReason::GoCryptoTls
    } else if f.rustls {
        BlindReason::Rustls
    } else if f.ssl_symbols {
        BlindReason::StaticOpenssl
    } else if libssl {
        // Before other TLS libraries: curl maps GnuTLS through librtmp yet speaks OpenSSL.
        BlindReason::OpensslNotAttached
    } else if let Some(lib) = unsupported {
        BlindReason::UnsupportedLibrary(lib)
    } else if facts.is_some() && f.static_linked && !f.has_symtab {
        BlindReason::StaticStripped
    } else {
        BlindReason::Unknown
    };
    (reason, exe)
}

/// Blind-spot settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlindSpotConfig {
    /// How long after its first TLS record a connection may wait for plaintext before it counts
    /// as blind. Default 5000 ms.
    pub grace_ms: u64,
    /// Processes listed in the report; past it their connections are still counted. Default 256.
    pub max_processes: usize,
}

impl Default for BlindSpotConfig {
    fn default() -> BlindSpotConfig {
        BlindSpotConfig {
            grace_ms: 5000,
            max_processes: 256,
        }
    }
}

/// One blind process.
#[derive(Clone, Debug, Serialize)]
pub struct BlindProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub reason: BlindReason,
    pub connections: u64,
    /// TLS bytes of its connections seen on the syscall path.
    pub bytes: u64,
}

/// The report, as the status output and the heartbeat show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BlindSpotReport {
    /// TLS connections judged (readable or blind), and their syscall-side bytes.
    pub tls_connections: u64,
    pub blind_connections: u64,
    pub tls_bytes: u64,
    pub blind_bytes: u64,
    /// Blind connections per reason kind.
    pub by_reason: BTreeMap<&'static str, u64>,
    pub processes: Vec<BlindProcess>,
    /// Processes not listed because the list was full.
    pub processes_not_listed: u64,
    /// UDP sockets on port 443 (QUIC, HTTP/3): outside a TCP capture.
    pub quic_udp_sockets: u64,
}

impl BlindSpotReport {
    /// Share of TLS connections (and bytes) the sensor cannot read, in per mille.
    pub fn blind_share_permille(&self) -> (u64, u64) {
        let share = |a: u64, b: u64| a.saturating_mul(1000).checked_div(b).unwrap_or(0);
        (
            share(self.blind_connections, self.tls_connections),
            share(self.blind_bytes, self.tls_bytes),
        )
    }

    /// Counters for the heartbeat.
    pub fn counters(&self, out: &mut HashMap<String, u64>) {
        out.insert("tls.connections".into(), self.tls_connections);
        out.insert("tls.blind_connections".into(), self.blind_connections);
        out.insert("tls.bytes".into(), self.tls_bytes);
        out.insert("tls.blind_bytes".into(), self.blind_bytes);
        let (c, b) = self.blind_share_permille();
        out.insert("tls.blind_connections_permille".into(), c);
        out.insert("tls.blind_bytes_permille".into(), b);
        for (k, v) in &self.by_reason {
            out.insert(format!("blind.{k}"), *v);
        }
        out.insert("blind.quic.udp_443_sockets".into(), self.quic_udp_sockets);
    }

    /// The heartbeat's `blind_spots`: one per process, plus QUIC when present.
    pub fn blind_spots(&self) -> Vec<sonde_proto::v1::BlindSpot> {
        let mut out: Vec<sonde_proto::v1::BlindSpot> = self
            .processes
            .iter()
            .map(|p| sonde_proto::v1::BlindSpot {
                kind: p.reason.kind().to_string(),
                detail: format!(
                    "pid {} {} ({}): {} TLS connection(s), {} bytes unreadable: {}",
                    p.pid,
                    p.comm,
                    p.exe,
                    p.connections,
                    p.bytes,
                    p.reason.explain()
                ),
            })
            .collect();
        if self.quic_udp_sockets > 0 {
            out.push(sonde_proto::v1::BlindSpot {
                kind: "quic.udp".into(),
                detail: format!(
                    "{} UDP socket(s) on port 443: QUIC/HTTP3 is outside the TCP capture",
                    self.quic_udp_sockets
                ),
            });
        }
        out
    }

    /// Lines for the status output.
    pub fn lines(&self) -> Vec<String> {
        let (c, b) = self.blind_share_permille();
        let mut out = vec![format!(
            "TLS: {} connection(s), {} unreadable ({:.1}%); {} bytes, {} unreadable ({:.1}%)",
            self.tls_connections,
            self.blind_connections,
            c as f64 / 10.0,
            self.tls_bytes,
            self.blind_bytes,
            b as f64 / 10.0
        )];
        for s in self.blind_spots() {
            out.push(format!("  blind spot {}: {}", s.kind, s.detail));
        }
        if self.processes_not_listed > 0 {
            out.push(format!(
                "  ({} more blind processes not listed)",
                self.processes_not_listed
            ));
        }
        out
    }
}

/// Accumulates judgements of TLS connections into the report.
#[derive(Debug, Default)]
pub struct BlindSpots {
    cfg: BlindSpotConfig,
    report: BlindSpotReport,
    /// Process verdicts by pid (a pid is inspected once while it lives).
    verdicts: HashMap<u32, (BlindReason, String)>,
    exe_cache: HashMap<(u64, u64), Option<ExeFacts>>,
}

impl BlindSpots {
    pub fn new(cfg: BlindSpotConfig) -> BlindSpots {
        BlindSpots {
            cfg,
            ..BlindSpots::default()
        }
    }

    pub fn grace_ns(&self) -> u64 {
        self.cfg.grace_ms.saturating_mul(1_000_000)
    }

    /// Inspects `pid` now, while it runs (a short-lived client may be gone by the judgement).
    pub fn prefetch(&mut self, pid: u32) {
        if pid == 0 || self.verdicts.contains_key(&pid) {
            return;
        }
        if self.verdicts.len() >= self.cfg.max_processes.saturating_mul(16).max(1024) {
            self.verdicts.clear();
        }
        let v = inspect(pid, &mut self.exe_cache);
        tracing::debug!(pid, reason = v.0.kind(), exe = %v.1, "TLS process inspected");
        self.verdicts.insert(pid, v);
    }

    /// A TLS connection was judged; `bytes` are its syscall-side bytes so far.
    pub fn judged(&mut self, pid: u32, comm: &str, readable: bool, bytes: u64) {
        self.report.tls_connections += 1;
        self.report.tls_bytes += bytes;
        if readable {
            return;
        }
        self.report.blind_connections += 1;
        self.report.blind_bytes += bytes;
        self.prefetch(pid);
        let (reason, exe) = self
            .verdicts
            .get(&pid)
            .cloned()
            .unwrap_or((BlindReason::ProcessGone, String::new()));
        *self.report.by_reason.entry(reason.kind()).or_insert(0) += 1;
        if let Some(p) = self.report.processes.iter_mut().find(|p| p.pid == pid) {
            p.connections += 1;
            p.bytes += bytes;
        } else if self.report.processes.len() < self.cfg.max_processes {
            tracing::info!(pid, comm, exe = %exe, reason = reason.kind(), "TLS blind spot: {}", reason.explain());
            self.report.processes.push(BlindProcess {
                pid,
                comm: comm.to_string(),
                exe,
                reason,
                connections: 1,
                bytes,
            });
        } else {
            self.report.processes_not_listed += 1;
        }
    }

    /// More syscall-side bytes of an already judged connection.
    pub fn more_bytes(&mut self, pid: u32, blind: bool, bytes: u64) {
        self.report.tls_bytes += bytes;
        if blind {
            self.report.blind_bytes += bytes;
            if let Some(p) = self.report.processes.iter_mut().find(|p| p.pid == pid) {
                p.bytes += bytes;
            }
        }
    }

    /// The report, with the QUIC socket count refreshed from /proc/net/udp{,6}.
    pub fn report(&mut self) -> &BlindSpotReport {
        self.report.quic_udp_sockets = count_udp_443();
        &self.report
    }
}

/// UDP sockets whose local or remote port is 443, from /proc/net/udp and udp6.
fn count_udp_443() -> u64 {
    let mut n = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let mut f = row.split_whitespace();
            let (Some(local), Some(remote)) = (f.nth(1), f.next()) else {
                continue;
            };
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port(local) == Some(443) || port(remote) == Some(443) {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `cmd`, waits until it mapped what it loads (`ready` in its maps), inspects it.
    fn verdict(cmd: &mut Command, ready: &str) -> BlindReason {
        let child = Kill(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        );
        let pid = child.0.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap_or_default()
            .contains(ready)
        {
            assert!(std::time::Instant::now() < deadline, "{ready} never mapped");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        inspect(pid, &mut HashMap::new()).0
    }

    #[test]
    fn a_jvm_is_jsse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("Sleep.java");
        std::fs::write(&src, "class Sleep { public static void main(String[] a) throws Exception { Thread.sleep(30000); } }").expect("write");
        assert_eq!(
            verdict(Command::new("java").arg(&src), "libjvm.so"),
            BlindReason::JavaJsse
        );
    }

    #[test]
    fn python_with_libssl_is_openssl_not_attached_and_gnutls_is_unsupported() {
        assert_eq!(
            verdict(
                Command::new("python3").args(["-c", "import ssl, time; time.sleep(30)"]),
                "libssl.so"
            ),
            BlindReason::OpensslNotAttached
        );
        assert_eq!(
            verdict(
                Command::new("python3").args([
                    "-c",
                    "import ctypes, time; ctypes.CDLL('libgnutls.so.30'); time.sleep(30)"
                ]),
                "libgnutls.so"
            ),
            BlindReason::UnsupportedLibrary("GnuTLS".into())
        );
    }

    #[test]
    fn a_static_stripped_executable_has_nothing_to_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("sleep.c");
        let exe = dir.path().join("sleeper");
        std::fs::write(
            &src,
            "#include <unistd.h>\nint main(void){sleep(30);return 0;}\n",
        )
        .expect("write");
        let ok = Command::new("gcc")
            .args(["-static", "-s", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(ok.success(), "gcc -static (libc6-dev) failed");
        let child = Kill(Command::new(&exe).spawn().expect("spawn"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            inspect(child.0.id(), &mut HashMap::new()).0,
            BlindReason::StaticStripped
        );
        // The same binary unstripped and dynamic: no TLS library at all.
        let dynamic = dir.path().join("dynamic");
        assert!(
            Command::new("gcc")
                .arg("-o")
                .arg(&dynamic)
                .arg(&src)
                .status()
                .expect("gcc")
                .success()
        );
        let child = Kill(Command::new(&dynamic).spawn().expect("spawn"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            inspect(child.0.id(), &mut HashMap::new()).0,
            BlindReason::Unknown
        );
    }

    #[test]
    fn an_exited_process_is_said_to_be_gone() {
        let mut c = Command::new("true").spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        assert_eq!(
            inspect(pid, &mut HashMap::new()).0,
            BlindReason::ProcessGone
        );
    }

    #[test]
    fn udp_sockets_to_port_443_are_counted_as_quic() {
        let before = count_udp_443();
        let quic = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        quic.connect("127.0.0.1:443").expect("connect");
        assert!(count_udp_443() > before);
        let mut b = BlindSpots::new(BlindSpotConfig::default());
        let report = b.report().clone();
        assert!(report.quic_udp_sockets > before);
        let spot = report
            .blind_spots()
            .into_iter()
            .find(|s| s.kind == "quic.udp")
            .expect("QUIC blind spot");
        assert!(
            spot.detail.contains("outside the TCP capture"),
            "{}",
            spot.detail
        );
    }

    #[test]
    fn the_report_counts_shares_and_lists_processes() {
        let mut b = BlindSpots::new(BlindSpotConfig::default());
        b.verdicts
            .insert(7, (BlindReason::GoCryptoTls, "/usr/bin/app".into()));
        b.judged(7, "app", false, 3000);
        b.judged(7, "app", false, 1000);
        b.judged(8, "curl", true, 4000);
        let r = b.report().clone();
        assert_eq!((r.tls_connections, r.blind_connections), (3, 2));
        assert_eq!(r.blind_share_permille(), (666, 500));
        assert_eq!(r.by_reason.get("tls.go_crypto_tls"), Some(&2));
        let spots = r.blind_spots();
        assert_eq!(spots[0].kind, "tls.go_crypto_tls");
        assert!(
            spots[0]
                .detail
                .contains("pid 7 app (/usr/bin/app): 2 TLS connection(s), 4000 bytes"),
            "{}",
            spots[0].detail
        );
    }
}
