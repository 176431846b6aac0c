//! Deployment tasks: container images (`image`), the raw Kubernetes manifests rendered from the
//! Helm chart (`manifests`), and a host install with systemd units (`install`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{cargo, output, root, run, succeeds, target_dir};

/// Version of the workspace, the images' tag.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The unprivileged user of the collector image (the `nonroot` convention of distroless bases).
const NONROOT_UID: u32 = 65532;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageName {
    Agent,
    Collector,
    All,
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Which image to build.
    #[arg(value_enum, default_value = "all")]
    which: ImageName,
    /// Container engine (default: podman when installed, else docker).
    #[arg(long)]
    engine: Option<String>,
    /// Image name prefix; images are `<prefix>/sonde-agent:<version>` and `.../sonde-collector`.
    #[arg(long, default_value = "localhost")]
    repository: String,
    /// Use the release binaries already built instead of running `cargo build --release`.
    #[arg(long)]
    no_build: bool,
}

#[derive(clap::Args)]
pub struct ManifestsArgs {
    /// Fail if the checked-in manifests differ from a fresh rendering instead of rewriting them.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Binaries go to `<prefix>/bin`.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Configuration directory (agent.toml, collector.toml, specs/).
    #[arg(long, default_value = "/etc/sonde")]
    config_dir: PathBuf,
    /// Also install the systemd units (and run `systemctl daemon-reload` where systemd runs).
    #[arg(long)]
    systemd: bool,
    /// Where the units go.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Remove what an install put there (binaries and units; configuration is kept).
    #[arg(long)]
    uninstall: bool,
    /// Use the release binaries already built instead of running `cargo build --release`.
    #[arg(long)]
    no_build: bool,
}

/// Binaries of each image.
fn image_binaries(which: ImageName) -> &'static [&'static str] {
    match which {
        ImageName::Agent => &["sonde-agent"],
        ImageName::Collector => &["sonde-collector", "sonde"],
        ImageName::All => &[],
    }
}

fn build_release() -> anyhow::Result<()> {
    run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "sonde-agent",
        "-p",
        "sonde-collector",
    ]))
}

pub fn image(args: ImageArgs) -> anyhow::Result<()> {
    crate::setup::deploy_tools()?;
    let engine = match args.engine {
        Some(e) => e,
        None if succeeds(Command::new("podman").arg("--version")) => "podman".into(),
        None if succeeds(Command::new("docker").arg("info")) => "docker".into(),
        None => bail!("no container engine: install podman (`cargo xtask setup`) or docker"),
    };
    if !args.no_build {
        build_release()?;
    }
    let names = match args.which {
        ImageName::All => vec![ImageName::Agent, ImageName::Collector],
        one => vec![one],
    };
    for name in names {
        let short = match name {
            ImageName::Agent => "agent",
            _ => "collector",
        };
        let context = target_dir().join("sonde-image").join(short);
        layout_rootfs(&context, image_binaries(name))?;
        let tag = format!("{}/sonde-{short}:{VERSION}", args.repository);
        let containerfile = root()
            .join("deploy")
            .join("images")
            .join(format!("{short}.Containerfile"));
        run(Command::new(&engine)
            .args(["build", "--file"])
            .arg(&containerfile)
            .args(["--tag", &tag])
            .arg(&context))?;
        eprintln!("image: built {tag}");
    }
    Ok(())
}

/// Lays out a build context: `rootfs/` with the release binaries under /usr/bin, every shared
/// library `ldd` names for them at the path the loader looks for it, and the few /etc files a
/// process needs (users, name service order); `state/`, the collector's writable directory.
///
/// Hand-written rather than a distroless base image because the test build must work without
/// pulling anything: the binaries are glibc-linked (no musl target can be installed here), so
/// the image carries exactly the libraries this host built them against.
fn layout_rootfs(context: &Path, binaries: &[&str]) -> anyhow::Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)
            .with_context(|| format!("clearing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    let release = target_dir().join("release");
    let mut libraries = BTreeSet::new();
    for bin in binaries {
        let src = release.join(bin);
        anyhow::ensure!(
            src.exists(),
            "{} is missing: build it with `cargo build --release`",
            src.display()
        );
        copy_file(&src, &rootfs.join("usr/bin").join(bin))?;
        libraries.extend(shared_libraries(&src)?);
    }
    for lib in &libraries {
        let relative = lib.strip_prefix("/").unwrap_or(lib);
        // Copy the file a symlink resolves to under the name the loader asks for.
        copy_file(lib, &rootfs.join(relative))?;
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nsonde:x:{NONROOT_UID}:{NONROOT_UID}:sonde:/var/lib/sonde:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        ),
    )?;
    std::fs::write(
        etc.join("group"),
        format!("root:x:0:\nsonde:x:{NONROOT_UID}:\nnogroup:x:65534:\n"),
    )?;
    std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n")?;
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    set_mode(&tmp, 0o1777)?;
    std::fs::create_dir_all(context.join("state"))?;
    eprintln!(
        "image: {} binaries, {} shared libraries in {}",
        binaries.len(),
        libraries.len(),
        rootfs.display()
    );
    Ok(())
}

/// The shared libraries (and the program interpreter) `ldd` lists for a binary.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`;
        // linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some(p) if line.contains("not found") => bail!("{}: {p} not found", binary.display()),
            _ => {}
        }
    }
    anyhow::ensure!(
        !libs.is_empty(),
        "ldd lists no libraries for {}",
        binary.display()
    );
    Ok(libs)
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The raw manifest sets: (directory under deploy/kubernetes, values files).
const MANIFEST_SETS: &[(&str, &[&str])] = &[
    ("", &["values/plain.yaml"]),
    ("mtls", &["values/plain.yaml", "values/mtls.yaml"]),
];

/// Header of every rendered file.
const RENDERED_HEADER: &str = "# Rendered from deploy/helm/sonde by `cargo xtask manifests`: edit the chart or\n# deploy/kubernetes/values/, then re-render; do not edit this file.\n";

pub fn manifests(args: ManifestsArgs) -> anyhow::Result<()> {
    crate::setup::deploy_tools()?;
    let kube = root().join("deploy").join("kubernetes");
    let mut stale = Vec::new();
    for (dir, values) in MANIFEST_SETS {
        let fresh = target_dir()
            .join("sonde-manifests")
            .join(if dir.is_empty() { "plain" } else { dir });
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh)?;
        }
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("deploy/helm/render.py"))
            .arg(root().join("deploy/helm/sonde"))
            .arg("--lint");
        for v in *values {
            cmd.arg("-f").arg(kube.join(v));
        }
        run(cmd.arg("--out-dir").arg(&fresh))?;
        let mut files: Vec<String> = std::fs::read_dir(&fresh)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        files.sort();
        let target = kube.join(dir);
        for name in &files {
            let text = format!(
                "{RENDERED_HEADER}{}",
                std::fs::read_to_string(fresh.join(name))?
            );
            write_or_compare(&target.join(name), &text, args.check, &mut stale)?;
        }
        let kustomization = format!(
            "{RENDERED_HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}",
            files
                .iter()
                .map(|f| format!("  - {f}\n"))
                .collect::<String>()
        );
        write_or_compare(
            &target.join("kustomization.yaml"),
            &kustomization,
            args.check,
            &mut stale,
        )?;
    }
    if !stale.is_empty() {
        bail!(
            "deploy/kubernetes is out of date with the chart ({}): run `cargo xtask manifests`",
            stale.join(", ")
        );
    }
    Ok(())
}

fn write_or_compare(
    path: &Path,
    text: &str,
    check: bool,
    stale: &mut Vec<String>,
) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current == text {
        return Ok(());
    }
    if check {
        stale.push(path.display().to_string());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("manifests: wrote {}", path.display());
    Ok(())
}

/// Binaries a host install puts in `<prefix>/bin`.
const INSTALLED_BINARIES: &[&str] = &["sonde-agent", "sonde-collector", "sonde"];
const UNITS: &[&str] = &["sonde-agent.service", "sonde-collector.service"];
const CONFIGS: &[&str] = &["agent.toml", "collector.toml"];

pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let bindir = args.prefix.join("bin");
    if args.uninstall {
        for bin in INSTALLED_BINARIES {
            remove_if_present(&bindir.join(bin))?;
        }
        for unit in UNITS {
            remove_if_present(&args.unit_dir.join(unit))?;
        }
        daemon_reload();
        eprintln!(
            "install: removed; configuration kept in {}",
            args.config_dir.display()
        );
        return Ok(());
    }
    if !args.no_build {
        build_release()?;
    }
    let release = target_dir().join("release");
    for bin in INSTALLED_BINARIES {
        let target = bindir.join(bin);
        install_file(&release.join(bin), &target, 0o755)?;
    }
    let systemd = root().join("deploy").join("systemd");
    std::fs::create_dir_all(args.config_dir.join("specs"))
        .with_context(|| format!("creating {}", args.config_dir.display()))?;
    for config in CONFIGS {
        let target = args.config_dir.join(config);
        // An operator's edits win: the default configuration is written only once.
        if target.exists() {
            eprintln!("install: kept {}", target.display());
        } else {
            install_file(&systemd.join(config), &target, 0o644)?;
        }
    }
    if args.systemd {
        for unit in UNITS {
            let text = std::fs::read_to_string(systemd.join(unit))?
                .replace("/usr/local/bin/", &format!("{}/", bindir.display()))
                .replace("/etc/sonde/", &format!("{}/", args.config_dir.display()));
            let target = args.unit_dir.join(unit);
            if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
                std::fs::create_dir_all(&args.unit_dir)?;
                std::fs::write(&target, text)
                    .with_context(|| format!("writing {}", target.display()))?;
                eprintln!("install: wrote {}", target.display());
            }
        }
        daemon_reload();
        eprintln!(
            "install: enable with `systemctl enable --now sonde-collector sonde-agent` (check the agent's config first: `{} --config {} run --check-config`)",
            bindir.join("sonde-agent").display(),
            args.config_dir.join("agent.toml").display()
        );
    }
    Ok(())
}

/// Copies a file unless the target already has the same bytes (a second install changes
/// nothing), then sets its mode.
fn install_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let same = match (std::fs::read(from), std::fs::read(to)) {
        (Ok(a), Ok(b)) => a == b,
        (Err(e), _) => return Err(e).with_context(|| format!("reading {}", from.display())),
        _ => false,
    };
    if !same {
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Write beside and rename: a running binary is replaced, not rewritten in place.
        let tmp = to.with_extension("sonde-new");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
        eprintln!("install: wrote {}", to.display());
    }
    set_mode(to, mode)
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            eprintln!("install: removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// `systemctl daemon-reload` when systemd is the init system (else there is nothing to reload).
fn daemon_reload() {
    if Path::new("/run/systemd/system").is_dir()
        && let Err(e) = run(Command::new("systemctl").arg("daemon-reload"))
    {
        eprintln!("install: {e:#}");
    }
}
