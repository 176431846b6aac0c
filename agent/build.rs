//! Builds the eBPF programs (ebpf/sonde-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker (both installed by `cargo xtask setup`), to be embedded with
//! `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata_root()?;
    let ebpf_dir = metadata.join("ebpf").join("sonde-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    // aya-build relays the nested cargo's stderr as `cargo:warning` lines, so its progress
    // ("Compiling sonde-ebpf ...") would read as warnings; quiet keeps real warnings and errors.
    // aya-build spawns that cargo itself and takes no environment for it: inheritance is the
    // only way in. SAFETY: the build script is single-threaded here.
    #[allow(clippy::disallowed_methods)]
    unsafe {
        std::env::set_var("CARGO_TERM_QUIET", "true")
    };
    aya_build::build_ebpf(
        [aya_build::Package { name: "sonde-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or the nightly toolchain is missing)")
}

fn cargo_metadata_root() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let dir = std::path::PathBuf::from(dir);
    dir.parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| anyhow!("agent crate has no parent dir"))
}
