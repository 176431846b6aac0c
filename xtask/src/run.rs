//! `cargo xtask run`: the main job.

use crate::util::{cargo, root, run as run_cmd};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Also start a small local API and drive traffic at it, so there is something to see.
    #[arg(long)]
    demo: bool,
    /// Extra arguments for `sonde-agent run`.
    #[arg(last = true)]
    agent_args: Vec<String>,
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
    let agent = crate::util::target_dir().join("release").join("sonde-agent");
    let mut cmd = std::process::Command::new(agent);
    cmd.arg("capture");
    if args.demo {
        cmd.arg("--port").arg("18080");
    }
    cmd.args(&args.agent_args);
    run_cmd(&mut cmd)
}
