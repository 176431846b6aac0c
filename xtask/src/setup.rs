//! `cargo xtask setup`: installs what a fresh machine of this kind lacks, and does nothing (in a
//! second or two) when everything is there. The toolchain section of ../shared/DESIGN.md is the recipe.

use std::process::Command;

use anyhow::Context as _;

use crate::util::{output, run, succeeds};

/// Debian packages the build, the tests and the benchmarks use, by the command that proves each
/// is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "/usr/sbin/nginx"),
    ("wrk", "/usr/bin/wrk"),
    ("curl", "/usr/bin/curl"),
    ("nghttp2-client", "/usr/bin/nghttp"),
    ("iproute2", "/usr/sbin/ip"),
    // `bench capture` names each program's bpf_stats run time.
    ("bpftool", "/usr/sbin/bpftool"),
    // Container identity e2e test: podman with runc (crun refuses hybrid cgroup hosts).
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    // TLS tests: `openssl` (certificates, s_client, s_server handshakes), a client linked
    // statically against libssl.a (gcc + libssl-dev + libc6-dev), and `nm` for the ELF tests.
    ("openssl", "/usr/bin/openssl"),
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("gcc", "/usr/bin/gcc"),
    ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"),
    ("binutils", "/usr/bin/nm"),
    // Blind-spots tests: a JVM (JSSE) client and a Go executable (crypto/tls compiled in).
    ("openjdk-17-jdk-headless", "/usr/bin/javac"),
    ("golang-go", "/usr/bin/go"),
    // The collector's PostgreSQL tests and benchmark start private servers from its binaries.
    ("postgresql", "/usr/bin/pg_ctlcluster"),
];

/// Python packages the end-to-end tests drive servers and clients with.
const PIP_PACKAGES: &[(&str, &str)] = &[("requests", "requests")];

/// Debian packages only the deployment commands and tests use (images, manifests): installed by
/// [`deploy_tools`], not by every `setup`. runc beside podman because crun refuses a host whose
/// cgroup v1 and v2 hierarchies are both mounted (hybrid), as on this kind of machine.
const DEPLOY_APT_PACKAGES: &[(&str, &str)] = &[
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("systemd", "/usr/bin/systemd-analyze"),
    // Debian's kubectl; hosts with a newer one (e.g. from the Kubernetes packages) keep theirs.
    ("kubernetes-client", "/usr/bin/kubectl"),
];

/// Python packages of the deployment tests: Helm's Go SDK (libhelm_c) to render the chart, the
/// Kubernetes OpenAPI schemas to validate what it renders.
const DEPLOY_PIP_PACKAGES: &[(&str, &str)] = &[
    ("helm-python-sdk==0.2.2", "helm_python"),
    ("kubernetes-validate", "kubernetes_validate"),
];

/// What `cargo xtask image`, `manifests` and the deployment tests need beyond [`setup`].
pub fn deploy_tools() -> anyhow::Result<()> {
    apt_install(DEPLOY_APT_PACKAGES)?;
    pip_install(DEPLOY_PIP_PACKAGES)
}

pub fn setup() -> anyhow::Result<()> {
    apt_packages()?;
    pip_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("setup: done");
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    apt_install(APT_PACKAGES)?;
    // Debian starts nginx on install; the tests start their own instances.
    let _ = succeeds(Command::new("nginx").args(["-s", "stop"]));
    Ok(())
}

/// Installs the packages whose probe path is missing.
fn apt_install(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !std::path::Path::new(probe).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Debian starts a PostgreSQL cluster on install; the tests start their own.
    if missing.contains(&"postgresql") {
        let _ = succeeds(Command::new("service").args(["postgresql", "stop"]));
    }
    Ok(())
}

fn pip_packages() -> anyhow::Result<()> {
    pip_install(PIP_PACKAGES)
}

/// Installs the packages whose module does not import.
fn pip_install(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    for (pkg, module) in packages {
        if !succeeds(Command::new("python3").args(["-c", &format!("import {module}")])) {
            run(Command::new("python3").args(["-m", "pip", "install", "-q", pkg]))?;
        }
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed to build the eBPF programs")?;
    if !installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src"))
    {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly rustc's own libLLVM (Debian has no LLVM of that
/// version). Tied to that exact nightly: never `rustup update` it.
fn bpf_linker() -> anyhow::Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = sysroot.trim();
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc +nightly -vV`")?
        .to_string();
    let lib_dir = std::path::Path::new(sysroot).join("lib");
    let llvm_lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .map(|n| {
            n.trim_start_matches("lib")
                .trim_end_matches(".so")
                .to_string()
        })
        .context("the nightly toolchain ships no libLLVM-*-rust-*.so")?;
    eprintln!("setup: building bpf-linker against {llvm_lib} (about a minute)");
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
        .env(
            "RUSTFLAGS",
            format!("-L {sysroot}/lib -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{sysroot}/lib"),
        )
        .env("CXXSTDLIB", "stdc++"))?;
    Ok(())
}
