//! `cargo xtask run`: the main job. Builds the agent and the CLI, starts the agent with an
//! embedded collector on this host, and shows the live inventory and anomalies (by querying the
//! collector with the `sonde` CLI, as an operator would). `--demo` also starts a small local API
//! with a declared OpenAPI spec and drives benign traffic and a few attacks at it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::util::{cargo, root, run as run_cmd, target_dir};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Also start a small local API and drive traffic at it, so there is something to see.
    #[arg(long)]
    demo: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds between refreshes of the view.
    #[arg(long, default_value_t = 3)]
    refresh: u64,
    /// Port of the embedded collector.
    #[arg(long, default_value_t = 7419)]
    collector_port: u16,
    /// Port of the demo API.
    #[arg(long, default_value_t = 18080)]
    demo_port: u16,
}

/// Children killed (and waited for) when the main job ends, however it ends.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        let alive = |c: &mut Child| !matches!(c.try_wait(), Ok(Some(_)));
        // SIGINT to all at once: the agent flushes its spool and stops the collector cleanly.
        // Then SIGTERM to what still runs after a moment (a script started with SIGINT ignored;
        // the agent treats it as SIGINT), and SIGKILL after 10 s.
        for (_, child) in self.0.iter_mut() {
            // SAFETY: signalling our own child.
            unsafe { libc_kill(child.id() as i32, 2) };
        }
        let start = Instant::now();
        let mut termed = false;
        while self.0.iter_mut().any(|(_, c)| alive(c)) && start.elapsed() < Duration::from_secs(10)
        {
            if !termed && start.elapsed() > Duration::from_secs(2) {
                termed = true;
                for (_, child) in self.0.iter_mut() {
                    if alive(child) {
                        // SAFETY: as above.
                        unsafe { libc_kill(child.id() as i32, 15) };
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, child) in self.0.iter_mut() {
            if alive(child) {
                eprintln!("stopping {name}");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::setup::setup()?;
    let root = root();
    run_cmd(cargo().current_dir(&root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "sonde-agent",
        "-p",
        "sonde-collector",
    ]))?;
    let bin = target_dir().join("release");
    let state = target_dir().join("sonde-state");
    std::fs::create_dir_all(&state)?;
    let collector_url = format!("http://127.0.0.1:{}", args.collector_port);

    // The agent's config: the demo API's spec applies to the demo API's port only.
    let fixtures = root.join("tests").join("fixtures");
    let mut config = String::from("[capture]\n");
    if args.demo {
        config.push_str(&format!(
            "\n[[specs]]\npath = \"{}\"\nport = {}\n",
            fixtures.join("demo-openapi.yaml").display(),
            args.demo_port
        ));
    }
    let config_path = state.join("agent.toml");
    std::fs::write(&config_path, config)?;

    let mut children = Children(Vec::new());
    let agent_log = state.join("agent.log");
    // The previous run's log is kept beside the new one.
    if agent_log.exists() {
        let _ = std::fs::rename(&agent_log, state.join("agent.log.1"));
    }
    let agent = Command::new(bin.join("sonde-agent"))
        .arg("--config")
        .arg(&config_path)
        .args(["run", "--embedded-collector", "--collector", &collector_url])
        .arg("--state-dir")
        .arg(&state)
        .env(
            "SONDE_LOG",
            std::env::var("SONDE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log)?)
        .spawn()
        .context("starting sonde-agent (it needs root: it loads eBPF programs)")?;
    children.0.push(("sonde-agent".into(), agent));
    wait_for_agent(&bin, &collector_url, &agent_log, &mut children)?;

    if args.demo {
        if std::net::TcpListener::bind(("127.0.0.1", args.demo_port)).is_err() {
            bail!(
                "the demo API's port {} is taken: free it or pass --demo-port",
                args.demo_port
            );
        }
        let api = Command::new("python3")
            .arg(fixtures.join("demo_api.py"))
            .arg(args.demo_port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo API")?;
        children.0.push(("demo API".into(), api));
        let traffic_secs = args.duration.unwrap_or(600).to_string();
        let traffic = Command::new("python3")
            .arg(fixtures.join("demo_traffic.py"))
            .arg(args.demo_port.to_string())
            .arg(&traffic_secs)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo traffic")?;
        children.0.push(("demo traffic".into(), traffic));
    }

    let started = Instant::now();
    let stop = ctrl_c_flag();
    loop {
        // Ctrl-C reaches the whole process group: stop before querying an agent that is going.
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let endpoints = sonde(&bin, &collector_url, &["endpoints"]);
        let anomalies = sonde(&bin, &collector_url, &["anomalies", "--since", "15m"]);
        let agents = sonde(&bin, &collector_url, &["agents"]);
        print!("\x1b[2J\x1b[H");
        println!(
            "Sonde on this host: collector {collector_url}, agent log {}  (Ctrl-C stops)\n",
            agent_log.display()
        );
        println!("== endpoints ==\n{}", last_lines(&endpoints, 30));
        println!(
            "== anomalies (last 15 min) ==\n{}",
            last_lines(&anomalies, 20)
        );
        println!("== agents ==\n{agents}");
        if !children
            .0
            .iter_mut()
            .take(1)
            .all(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            bail!("the agent stopped; see {}", agent_log.display());
        }
        let done = args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d));
        if done || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let until = Instant::now() + Duration::from_secs(args.refresh.max(1));
        while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(children);
    Ok(())
}

fn wait_for_agent(
    bin: &std::path::Path,
    url: &str,
    log: &std::path::Path,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        if log_text.contains("capture attached")
            && Command::new(bin.join("sonde"))
                .args(["--collector", url, "agents"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        if let Some((_, agent)) = children.0.first_mut()
            && let Ok(Some(status)) = agent.try_wait()
        {
            bail!("sonde-agent exited ({status}):\n{log_text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent did not come up in 60 s; see {}", log.display())
}

fn sonde(bin: &std::path::Path, url: &str, args: &[&str]) -> String {
    match Command::new(bin.join("sonde"))
        .args(["--collector", url])
        .args(args)
        .output()
    {
        Ok(out) => {
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&out.stderr));
            s
        }
        Err(e) => format!("sonde: {e}"),
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= n + 1 {
        return s.to_string();
    }
    // Keep the header row.
    let mut out = vec![lines[0]];
    out.extend(&lines[lines.len() - n..]);
    format!("{}\n({} more rows)", out.join("\n"), lines.len() - 1 - n)
}

/// Set when Ctrl-C (SIGINT) arrives, so the children are stopped cleanly.
fn ctrl_c_flag() -> &'static std::sync::atomic::AtomicBool {
    static FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_sigint(_: i32) {
        FLAG.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    unsafe extern "C" {
        fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    }
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe { signal(2, on_sigint) };
    &FLAG
}
