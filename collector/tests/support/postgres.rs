//! A private PostgreSQL server for the tests of one test binary, and a fresh database per test.
//!
//! The server (Debian's `postgresql` package, installed by `cargo xtask setup`) is initialised
//! into a temporary directory and listens on a free loopback port and a private socket
//! directory. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user.
//! It is started from a thread that lives as long as the test process and gets SIGINT (fast
//! shutdown) when that process exits (`PR_SET_PDEATHSIG`), so no server outlives its tests; data
//! directories of earlier, finished runs are removed when the next one starts.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Prefix of the per-process data directories under the system temp dir.
const DIR_PREFIX: &str = "sonde-test-pg-";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    /// The postgres server process id (for tests that want to see it).
    pub pid: u32,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);
static NEXT_SERVER: AtomicU32 = AtomicU32::new(0);

/// The directory holding `initdb` and `postgres`: /usr/lib/postgresql/<newest>/bin, or PATH.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .context("looking for postgres on PATH")?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    anyhow::ensure!(
        !path.is_empty(),
        "PostgreSQL is not installed (run `cargo xtask setup`, which installs Debian's postgresql)"
    );
    Ok(Path::new(&path)
        .parent()
        .context("postgres path has no parent")?
        .to_path_buf())
}

/// uid/gid to run the server as: the `postgres` user when we are root, else ourselves.
fn server_identity() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no `postgres` user (install Debian's postgresql package)")?;
    let fields: Vec<&str> = entry.split(':').collect();
    let uid = fields.get(2).and_then(|v| v.parse().ok()).context("uid")?;
    let gid = fields.get(3).and_then(|v| v.parse().ok()).context("gid")?;
    Ok(Some((uid, gid)))
}

fn as_server_user(command: &mut Command, identity: Option<(u32, u32)>) {
    if let Some((uid, gid)) = identity {
        command.uid(uid).gid(gid);
    }
}

/// Removes data directories left by test processes that have exited.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Starts a private server. `durable` keeps PostgreSQL's default fsync and full-page-write
    /// settings (benchmarks); tests turn them off, since they kill collectors, not the database.
    pub fn start(durable: bool) -> anyhow::Result<PgServer> {
        start_server(durable)
    }

    /// Fast shutdown, then removes the data directory.
    pub fn stop(&self) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: signalling the server process this module started.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            // The spawner thread never reaps it: a zombie means it has exited.
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
            if stat.contains(") Z ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A new, empty database on this server; returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let mut admin = postgres::Client::connect(&self.admin_url(), postgres::NoTls)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(name))
    }
}

fn start_server(durable: bool) -> anyhow::Result<PgServer> {
    remove_stale_dirs();
    let bin = bin_dir()?;
    let identity = server_identity()?;
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        NEXT_SERVER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets)?;
    if let Some((uid, gid)) = identity {
        for path in [&dir, &sockets] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ])
        .stdout(Stdio::null());
    as_server_user(&mut initdb, identity);
    let out = initdb.output().context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    if let Some((uid, gid)) = identity {
        std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid))?;
    }
    let mut server = Command::new(bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&sockets)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "max_connections=300"])
        .stdout(Stdio::null())
        .stderr(log);
    if !durable {
        server.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
    }
    as_server_user(&mut server, identity);
    // SAFETY: prctl is async-signal-safe; it runs in the child after the uid switch, so the
    // setting survives (a credential change would clear it).
    unsafe {
        server.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The death signal fires when the spawning *thread* exits: spawn from one that never does.
    let (sent, spawned) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sonde-test-postgres".into())
        .spawn(move || {
            let child = server.spawn();
            let _ = sent.send(child.map(|c| c.id()));
            loop {
                std::thread::park();
            }
        })?;
    let pid = spawned
        .recv()
        .context("postgres spawner thread")?
        .context("starting postgres")?;
    let server = PgServer { port, dir, pid };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match postgres::Client::connect(&server.admin_url(), postgres::NoTls) {
            Ok(_) => return Ok(server),
            Err(error) => {
                if Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
                    anyhow::bail!("postgres never accepted connections ({error}); log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl PgServer {
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }
}

/// The server of this test process, started on first use. Blocking: call off async threads.
pub fn server() -> anyhow::Result<&'static PgServer> {
    SERVER
        .get_or_init(|| start_server(false).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("private PostgreSQL server: {e}"))
}

/// A new, empty database on the private server; returns its URL. Blocking.
pub fn fresh_database() -> anyhow::Result<String> {
    let server = server()?;
    let name = format!(
        "sonde_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    server.create_database(&name)
}

/// Runs one SQL statement as the server's superuser on `database_url` and returns the first
/// column of the first row as text (for `pg_terminate_backend` and the like). Blocking.
pub fn admin_query(database_url: &str, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut client = postgres::Client::connect(database_url, postgres::NoTls)?;
    let rows = client.simple_query(sql)?;
    Ok(rows
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}
