//! Cost of the identity lookup the pipeline makes per exchange (a cache hit), and of a first
//! sight of a process (reads /proc/PID/cgroup, /proc/PID/exe and stats the cgroup directory).

use std::os::unix::fs::MetadataExt;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_identity::resolver::cgroup2_mount;
use sonde_identity::{IdentityConfig, Resolver};

fn own_cgroup_id() -> u64 {
    let root = cgroup2_mount(std::path::Path::new("/proc/self/mountinfo")).expect("cgroup2");
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let path = sonde_identity::cgroup::proc_cgroup_path(&text)
        .expect("path")
        .to_owned();
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .expect("dir")
        .ino()
}

fn bench(c: &mut Criterion) {
    let pid = std::process::id();
    let cgroup_id = own_cgroup_id();
    let cfg = IdentityConfig {
        // Found once here, so the first-sight figure is the lookup's, not mountinfo's.
        cgroup_root: cgroup2_mount(std::path::Path::new("/proc/self/mountinfo")),
        ..IdentityConfig::default()
    };
    let mut r = Resolver::new(&cfg, None);
    r.resolve(pid, cgroup_id).expect("resolves");
    c.bench_function("resolve_cached", |b| {
        b.iter(|| r.resolve(std::hint::black_box(pid), cgroup_id))
    });
    c.bench_function("resolve_first_sight", |b| {
        b.iter(|| {
            let mut fresh = Resolver::new(&cfg, None);
            fresh.resolve(std::hint::black_box(pid), cgroup_id)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
