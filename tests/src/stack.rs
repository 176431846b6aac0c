//! The workspace's own binaries as separate processes: the collector, and the agent watching the
//! demo API (tests/fixtures), as the main job runs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::servers::wait_for_port;
use crate::{eventually, free_port};

/// A binary of this workspace, built by `cargo test` (or built here when missing).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "sonde-agent", "-p", "sonde-collector"])
            .status()
            .expect("cargo build");
        assert!(st.success());
    }
    path
}

/// A child process stopped with SIGINT (then SIGKILL after 10 s) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sonde-collector` on 127.0.0.1:`port` with its database at `db`.
pub fn collector(port: u16, db: &Path) -> Proc {
    let child = Command::new(bin("sonde-collector"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--database"])
        .arg(db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sonde-collector starts");
    wait_for_port(port);
    Proc(child)
}

/// The demo API, a collector, and `sonde-agent run` capturing only the API's process (other
/// processes of this host may use the same port numbers) with the API's declared spec.
pub struct DemoStack {
    // Dropped in this order: agent first, so it delivers to a collector still up.
    agent: Option<Proc>,
    collector: Option<Proc>,
    _api: Proc,
    pub api_port: u16,
    pub api_pid: u32,
    pub url: String,
    coll_port: u16,
    db: PathBuf,
    dir: PathBuf,
}

/// `sonde-agent run` with the stack's config and state directory in `dir`, once it has attached.
fn start_agent(dir: &Path, url: &str) -> Proc {
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let agent = Proc(
        Command::new(bin("sonde-agent"))
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .args(["run", "--collector", url, "--state-dir"])
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sonde-agent starts"),
    );
    eventually(Duration::from_secs(20), "the agent to attach", || {
        std::fs::read_to_string(&log_path)
            .ok()
            .filter(|l| l.contains("capture attached"))
            .map(|_| ())
    });
    agent
}

impl DemoStack {
    /// `extra_config` is appended to the agent's TOML config.
    pub fn start(dir: &Path, extra_config: &str) -> DemoStack {
        let api_port = free_port();
        let coll_port = free_port();
        let url = format!("http://127.0.0.1:{coll_port}");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let api = Proc(
            Command::new("python3")
                .arg(fixtures.join("demo_api.py"))
                .arg(api_port.to_string())
                .stdout(Stdio::null())
                .spawn()
                .expect("demo api"),
        );
        wait_for_port(api_port);
        let api_pid = api.0.id();
        let db = dir.join("collector.db");
        let collector = collector(coll_port, &db);
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[capture]\nports = [{api_port}]\npids = [{api_pid}]\n\n[[specs]]\npath = \"{}\"\nport = {api_port}\n\n[export]\ninterval_ms = 300\n\n{extra_config}",
                fixtures.join("demo-openapi.yaml").display()
            ),
        )
        .expect("config");
        let agent = start_agent(dir, &url);
        DemoStack {
            agent: Some(agent),
            dir: dir.to_path_buf(),
            collector: Some(collector),
            _api: api,
            api_port,
            api_pid,
            url,
            coll_port,
            db,
        }
    }

    /// Stops the agent (it delivers what it holds) and starts a new one on the same config and
    /// state directory, as a restart or an upgrade would.
    pub fn restart_agent(&mut self) {
        drop(self.agent.take());
        self.agent = Some(start_agent(&self.dir, &self.url));
    }

    pub fn stop_collector(&mut self) {
        drop(self.collector.take());
    }

    /// Starts the collector again on the same port and database.
    pub fn start_collector(&mut self) {
        self.collector = Some(collector(self.coll_port, &self.db));
    }
}
