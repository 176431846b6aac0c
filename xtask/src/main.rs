//! `cargo xtask <task>`: everything a fresh machine needs, and the project's entry points.

mod bench;
mod deploy;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, nightly rust-src, bpf-linker), idempotently.
    Setup,
    /// The main job: collector + agent on this host, showing live inventory and anomalies.
    Run(run::RunArgs),
    /// Every test: format, lints, unit and corpus tests, privileged end-to-end tests.
    Test(test::TestArgs),
    /// Benchmarks (`capture`: whole-system overhead with nginx + wrk; others: criterion).
    Bench(bench::BenchArgs),
    /// Container images of the agent and the collector (podman, or docker), built offline.
    Image(deploy::ImageArgs),
    /// Render deploy/kubernetes from the Helm chart (`--check`: fail when it is out of date).
    Manifests(deploy::ManifestsArgs),
    /// Install the binaries, default configuration and (`--systemd`) the units on this host.
    Install(deploy::InstallArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Run(args) => run::run(args),
        Task::Test(args) => test::test(args),
        Task::Bench(args) => bench::bench(args),
        Task::Image(args) => deploy::image(args),
        Task::Manifests(args) => deploy::manifests(args),
        Task::Install(args) => deploy::install(args),
    }
}
