//! `cargo xtask bench capture`: the whole-system overhead run (nginx + wrk on loopback, with
//! and without the agent, in one session); `cargo xtask bench tls`: the same over TLS (nginx
//! with a self-signed certificate, wrk over https; the agent reads the plaintext with uprobes,
//! the floor attaches empty programs at the same uprobe points and syscall hooks);
//! `cargo xtask bench go-tls`: the same against the Go HTTPS server of the TLS tests (Go's own
//! crypto/tls, read by the Go probes); `cargo xtask bench <crate>`: that crate's criterion benchmarks.
//!
//! Modes are alternated round by round because this machine is noisy (DESIGN.md: ±10% between
//! identical runs): `none` (no agent), `floor` (the same hooks with programs that return at once)
//! and `agent`. Two kinds of figure per mode:
//! - peak: wrk as fast as it goes; throughput ratio against `none`;
//! - paced: wrk held at a fixed rate; whole-host busy CPU per request from /proc/stat, the
//!   agent's own CPU per request, and eBPF run time per request (bpf_stats, read from the agent's
//!   program fds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::util::{cargo, root, run};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `capture`, `tls` or `go-tls` (whole-system runs), or the name of a crate whose criterion benches
    /// to run.
    which: String,
    /// Rounds per mode.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Requests per second of the paced runs.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Agent subcommand and flags to measure (default: the capture view, printing nothing).
    #[arg(long, default_value = "capture --quiet")]
    agent: String,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let (tls, go) = match args.which.as_str() {
        "capture" => (false, false),
        "tls" => (true, false),
        "go-tls" => (true, true),
        krate => {
            return run(cargo()
                .current_dir(root())
                .args(["bench", "--locked", "-p", krate]));
        }
    };
    crate::setup::setup()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "--locked", "-p", "sonde-agent"]))?;
    capture_bench(&args, tls, go)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Floor,
    Agent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Floor => "floor",
            Mode::Agent => "agent",
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    requests: f64,
    seconds: f64,
    host_busy_s: f64,
    agent_cpu_s: f64,
    bpf_ns: f64,
    bpf_runs: f64,
    drops: u64,
    /// SSL calls whose socket the kernel side could not name (host-wide).
    tls_fd_unknown: u64,
    /// TLS plaintext calls shipped (host-wide).
    tls_plaintext_calls: u64,
    /// run_time_ns and run_cnt by program name, over the measured window.
    per_program: BTreeMap<String, (u64, u64)>,
}

/// The server under load: nginx (OpenSSL when `tls`), or the Go HTTPS server of the TLS tests
/// (Go's own crypto/tls) when `go`.
enum Server {
    Nginx(#[allow(dead_code)] Nginx),
    Go(Child),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Go(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn capture_bench(args: &BenchArgs, tls: bool, go: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sonde-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www").join("index.html"), "x".repeat(612))?;
    let port = match (tls, go) {
        (_, true) => 18_193,
        (true, false) => 18_192,
        (false, false) => 18_191,
    };
    let (server, path) = if go {
        (Server::Go(go_server(&dir, port)?), "/a")
    } else {
        (Server::Nginx(Nginx::start(&dir, port, tls)?), "/index.html")
    };
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let lua = dir.join("paced.lua");
    // wrk's delay() is per connection: 10 connections each waiting 10/rate s between requests.
    let conns = 10u32;
    let delay_ms = 1000.0 * f64::from(conns) / f64::from(args.rate);
    std::fs::write(&lua, format!("function delay() return {delay_ms:.3} end\n"))?;
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}{path}");
    let agent_bin = crate::util::target_dir()
        .join("release")
        .join("sonde-agent");

    // Warm up nginx and the page cache.
    wrk(&url, 2, None, conns)?;
    let modes = [Mode::None, Mode::Floor, Mode::Agent];
    let mut peak: Vec<(Mode, Sample)> = Vec::new();
    let mut paced: Vec<(Mode, Sample)> = Vec::new();
    for round in 0..args.rounds {
        for &mode in &modes {
            for (pace, out) in [(None, &mut peak), (Some(lua.as_path()), &mut paced)] {
                let agent = Agent::start(mode, &agent_bin, &args.agent)?;
                let s = measure(&url, args.seconds, pace, conns, agent.as_ref())?;
                if let Some(a) = agent {
                    let c = a.stop()?;
                    out.push((
                        mode,
                        Sample {
                            drops: c.drops,
                            tls_fd_unknown: c.tls_fd_unknown,
                            tls_plaintext_calls: c.tls_plaintext_calls,
                            ..s
                        },
                    ));
                } else {
                    out.push((mode, s));
                }
                eprintln!(
                    "round {round} {:<5} {}: done",
                    mode.name(),
                    if pace.is_some() { "paced" } else { "peak" }
                );
            }
        }
    }
    drop(server);
    report(&peak, &paced, args, tls);
    Ok(())
}

fn report(peak: &[(Mode, Sample)], paced: &[(Mode, Sample)], args: &BenchArgs, tls: bool) {
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let per_mode = |set: &[(Mode, Sample)], mode: Mode, f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = set
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, s)| f(s))
            .collect();
        median(&mut v)
    };
    let rps = |s: &Sample| s.requests / s.seconds;
    let base_rps = per_mode(peak, Mode::None, &rps);
    println!(
        "\n== capture overhead: nginx + wrk on loopback{}, {} rounds x {} s, medians ==",
        if tls { " over TLS (https)" } else { "" },
        args.rounds,
        args.seconds
    );
    println!("agent command: sonde-agent {}", args.agent);
    println!(
        "{:<6} {:>12} {:>8} | {:>16} {:>16} {:>16} {:>10}",
        "mode", "peak req/s", "ratio", "host µs/req", "agent µs/req", "eBPF µs/req", "drops"
    );
    let base_host = per_mode(paced, Mode::None, &|s| 1e6 * s.host_busy_s / s.requests);
    for mode in [Mode::None, Mode::Floor, Mode::Agent] {
        let r = per_mode(peak, mode, &rps);
        let host = per_mode(paced, mode, &|s| 1e6 * s.host_busy_s / s.requests);
        let agent = per_mode(paced, mode, &|s| 1e6 * s.agent_cpu_s / s.requests);
        let bpf = per_mode(paced, mode, &|s| s.bpf_ns / 1e3 / s.requests);
        let drops: u64 = peak
            .iter()
            .chain(paced)
            .filter(|(m, _)| *m == mode)
            .map(|(_, s)| s.drops)
            .sum();
        println!(
            "{:<6} {:>12.0} {:>8.3} | {:>8.2} (+{:>5.2}) {:>16.2} {:>16.3} {:>10}",
            mode.name(),
            r,
            r / base_rps,
            host,
            host - base_host,
            agent,
            bpf,
            drops
        );
    }
    let bpf_floor = per_mode(paced, Mode::Floor, &|s| s.bpf_ns / 1e3 / s.requests);
    let bpf_agent = per_mode(paced, Mode::Agent, &|s| s.bpf_ns / 1e3 / s.requests);
    let runs = per_mode(paced, Mode::Agent, &|s| s.bpf_runs / s.requests);
    println!(
        "eBPF above the empty-hook floor: {:.3} µs/request ({runs:.1} program runs per request); paced at {} req/s",
        bpf_agent - bpf_floor,
        args.rate
    );
    for mode in [Mode::Floor, Mode::Agent] {
        let set: Vec<&Sample> = paced
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, s)| s)
            .collect();
        let requests: f64 = set.iter().map(|s| s.requests).sum();
        let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for s in &set {
            for (name, (ns, runs)) in &s.per_program {
                let e = totals.entry(name).or_default();
                e.0 += ns;
                e.1 += runs;
            }
        }
        println!(
            "{} programs, paced runs summed: ns/request, runs/request, ns/run",
            mode.name()
        );
        let mut rows: Vec<_> = totals.into_iter().filter(|(_, (_, r))| *r > 0).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
        for (name, (ns, runs)) in rows {
            println!(
                "  {name:<18} {:>8.1} {:>6.2} {:>8.1}",
                ns as f64 / requests.max(1.0),
                runs as f64 / requests.max(1.0),
                ns as f64 / runs.max(1) as f64
            );
        }
    }
    if tls {
        let sum = |f: &dyn Fn(&Sample) -> u64| -> u64 {
            peak.iter()
                .chain(paced)
                .filter(|(m, _)| *m == Mode::Agent)
                .map(|(_, s)| f(s))
                .sum()
        };
        let requests: f64 = peak
            .iter()
            .chain(paced)
            .filter(|(m, _)| *m == Mode::Agent)
            .map(|(_, s)| s.requests)
            .sum();
        println!(
            "TLS plaintext calls shipped: {:.2} per request; SSL calls with no socket named (host-wide): {}",
            sum(&|s| s.tls_plaintext_calls) as f64 / requests.max(1.0),
            sum(&|s| s.tls_fd_unknown)
        );
    }
}

fn measure(
    url: &str,
    seconds: u32,
    pace: Option<&Path>,
    conns: u32,
    agent: Option<&Agent>,
) -> anyhow::Result<Sample> {
    let busy0 = host_busy_seconds()?;
    let cpu0 = agent.map(|a| a.cpu_seconds()).unwrap_or(0.0);
    let stats0 = agent.map(|a| a.bpf_stats()).unwrap_or_default();
    let (requests, secs) = wrk(url, seconds, pace, conns)?;
    let busy1 = host_busy_seconds()?;
    let cpu1 = agent.map(|a| a.cpu_seconds()).unwrap_or(0.0);
    let stats1 = agent.map(|a| a.bpf_stats()).unwrap_or_default();
    let mut per_program: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (name, ns, runs)) in &stats1 {
        let (ns0, runs0) = stats0.get(id).map(|(_, n, r)| (*n, *r)).unwrap_or((0, 0));
        let e = per_program.entry(name.clone()).or_default();
        e.0 += ns.saturating_sub(ns0);
        e.1 += runs.saturating_sub(runs0);
    }
    Ok(Sample {
        requests,
        seconds: secs,
        host_busy_s: busy1 - busy0,
        agent_cpu_s: cpu1 - cpu0,
        bpf_ns: per_program.values().map(|v| v.0).sum::<u64>() as f64,
        bpf_runs: per_program.values().map(|v| v.1).sum::<u64>() as f64,
        per_program,
        ..Sample::default()
    })
}

/// Runs wrk; returns (requests, seconds).
fn wrk(url: &str, seconds: u32, pace: Option<&Path>, conns: u32) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{seconds}s")]);
    if let Some(p) = pace {
        cmd.arg("-s").arg(p);
    }
    cmd.arg(url);
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "  123456 requests in 5.00s, 98.1MB read"
    let line = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .with_context(|| format!("wrk output: {text}"))?;
    let mut words = line.split_whitespace();
    let requests: f64 = words.next().context("requests")?.parse()?;
    let secs = words
        .nth(2)
        .context("seconds")?
        .trim_end_matches([',', 's']);
    Ok((requests, secs.parse().unwrap_or(f64::from(seconds))))
}

/// Busy CPU seconds of the whole host (all but idle and iowait) from /proc/stat.
fn host_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ok((total - idle) / clock_ticks())
}

fn clock_ticks() -> f64 {
    100.0
}

struct Agent {
    child: Child,
    /// Everything the agent printed on stderr so far.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Program names by id (the kernel's, from bpftool).
    names: std::sync::Mutex<BTreeMap<u32, String>>,
}

impl Agent {
    fn start(mode: Mode, bin: &Path, subcommand: &str) -> anyhow::Result<Option<Agent>> {
        let mut cmd = Command::new(bin);
        match mode {
            Mode::None => return Ok(None),
            Mode::Floor => {
                cmd.args(["capture", "--quiet", "--empty-programs"]);
            }
            Mode::Agent => {
                cmd.args(subcommand.split_whitespace());
            }
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("SONDE_LOG", "warn");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().context("agent stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let agent = Agent {
            child,
            stderr,
            names: std::sync::Mutex::new(BTreeMap::new()),
        };
        // Attached once it reports its hook strategy: loading (the verifier's work, charged to
        // the agent) must not fall into the measured window.
        for _ in 0..600 {
            if agent.stderr.lock().is_ok_and(|s| s.contains("hooks: ")) {
                std::thread::sleep(Duration::from_millis(500));
                return Ok(Some(agent));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the agent did not attach its programs in 30 s")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        (utime + stime) / clock_ticks()
    }

    fn bpf_prog_fds(&self) -> Vec<PathBuf> {
        let dir = PathBuf::from(format!("/proc/{}/fdinfo", self.pid()));
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("prog_type:")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// run_time_ns and run_cnt of each of the agent's programs, by program id, with its name.
    fn bpf_stats(&self) -> BTreeMap<u32, (String, u64, u64)> {
        let mut stats = BTreeMap::new();
        for p in self.bpf_prog_fds() {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let field = |name: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let id = field("prog_id:") as u32;
            let name = self.program_name(id);
            stats.insert(id, (name, field("run_time_ns:"), field("run_cnt:")));
        }
        stats
    }

    /// A program's name as the kernel knows it (truncated to 15 bytes), from bpftool, cached.
    fn program_name(&self, id: u32) -> String {
        let Ok(mut names) = self.names.lock() else {
            return format!("prog {id}");
        };
        names
            .entry(id)
            .or_insert_with(|| {
                Command::new("bpftool")
                    .args(["-j", "prog", "show", "id", &id.to_string()])
                    .output()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| format!("prog {id}"))
            })
            .clone()
    }

    /// Stops the agent with SIGINT and returns the counters it printed.
    fn stop(mut self) -> anyhow::Result<AgentCounters> {
        // Release the pipe reader once the child exits.
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        std::mem::replace(&mut self.child, Command::new("true").spawn()?).wait()?;
        // The agent's stderr is read by the thread started in `start`: give it the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let text = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let mut c = AgentCounters::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(name), Some(v)) = (w.next(), w.next()) else {
                continue;
            };
            let v = v.parse::<u64>().unwrap_or(0);
            match name {
                "ring_full_data" | "ring_full_conn" | "read_user_failed" | "map_full"
                | "ring_full_proc" => {
                    if v > 0 {
                        eprintln!("agent drop counter {name}: {v}");
                    }
                    c.drops += v
                }
                "tls_fd_unknown" => c.tls_fd_unknown += v,
                "tls_plaintext_calls" => c.tls_plaintext_calls += v,
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Kernel counters an agent printed on exit.
#[derive(Default)]
struct AgentCounters {
    drops: u64,
    tls_fd_unknown: u64,
    tls_plaintext_calls: u64,
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Builds and starts tests/clients/go_tls.go's server on `port` with a fresh certificate.
fn go_server(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let (cert, key) = self_signed(dir)?;
    let exe = dir.join("go_tls_server");
    let cache = crate::util::target_dir().join("go-cache");
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(root().join("tests/clients/go_tls.go"))
        .env("GOCACHE", &cache)
        .env("GOPATH", cache.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0"))?;
    let child = Command::new(&exe)
        .arg("serve")
        .arg(format!("127.0.0.1:{port}"))
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the Go server")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the Go server did not listen on {port}")
}

/// A self-signed certificate and key in `dir`.
fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()))?;
    Ok((cert, key))
}

struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, port: u16, tls: bool) -> anyhow::Result<Nginx> {
        let listen = if tls {
            let (cert, key) = self_signed(dir)?;
            format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            )
        } else {
            format!("listen 127.0.0.1:{port};")
        };
        let conf = format!(
            "daemon off; master_process on; worker_processes 1; user root;
pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 10000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ {listen} root {d}/www; }} }}
",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .spawn()
            .context("starting nginx")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { child });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen on {port}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 3) };
        let _ = self.child.wait();
    }
}
