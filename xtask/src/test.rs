//! `cargo xtask test`: every test the project has, in the order that fails fastest.

use std::process::Command;

use anyhow::Context as _;

use crate::util::{cargo, root, run};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the privileged end-to-end tests (real eBPF, real servers).
    #[arg(long)]
    no_e2e: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Only the end-to-end tests whose name contains this.
    #[arg(long)]
    e2e_filter: Option<String>,
}

pub fn test(args: TestArgs) -> anyhow::Result<()> {
    crate::setup::setup()?;
    // The deployment tests (tests/tests/deploy.rs) build images and render the chart.
    crate::setup::deploy_tools()?;
    let root = root();
    let corpora = root.join("..").join("shared").join("corpora");
    let corpora = corpora
        .canonicalize()
        .with_context(|| format!("the test corpora are expected at {}", corpora.display()))?;
    let with_env = |mut c: Command| {
        c.current_dir(&root).env("SONDE_CORPORA", &corpora);
        c
    };
    if !args.no_lint {
        run(with_env(cargo()).args(["fmt", "--all", "--check"]))?;
        run(with_env(cargo()).args([
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        run(with_env(cargo()).args([
            "clippy",
            "--locked",
            "-p",
            "sonde-e2e",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run(with_env(cargo()).args(["test", "--locked", "--no-fail-fast"]))?;
    if !args.no_e2e {
        // Privileged tests load real programs and open real ports: one at a time (each test
        // also filters capture to its own ports, so the host's other traffic cannot disturb it).
        let mut c = with_env(cargo());
        c.args([
            "test",
            "--locked",
            "-p",
            "sonde-e2e",
            "--",
            "--test-threads=1",
        ]);
        if let Some(f) = &args.e2e_filter {
            c.arg(f);
        }
        run(&mut c)?;
    }
    Ok(())
}
