//! `cargo xtask bench`: whole-system overhead (`capture`) and the criterion suites.

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `capture`, or a crate's criterion bench name.
    which: String,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("unknown benchmark {}", args.which)
}
