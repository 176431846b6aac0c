//! Baseline update + every detector per exchange, on a benign mix with precomputed CallInfos
//! (the inventory is excluded). Target: ≥ 500,000 exchanges/s per core.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_detect::{DetectConfig, Detectors};

const N: usize = 20_000;

fn corpus() -> (Vec<(sonde_model::Exchange, sonde_inventory::CallInfo)>, u64) {
    // Generate through the real inventory once, keeping each exchange with its CallInfo.
    let mut rec = Sim::new(2_000, 0xbe4c, DetectConfig::default());
    rec.record = Some(Vec::with_capacity(N));
    for _ in 0..N {
        rec.benign_one(5 * MS);
    }
    (rec.record.take().unwrap_or_default(), rec.now)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn bench(c: &mut Criterion) {
    let (calls, _) = corpus();
    let mut det = Detectors::new(DetectConfig::default());
    let mut now = T0;
    // Warm-up: learn the baselines (several passes over simulated time).
    for _ in 0..5 {
        for (e, ci) in &calls {
            det.observe(e, ci, now);
            now += 5 * MS;
        }
    }
    let _ = det.drain();
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(calls.len() as u64));
    g.bench_function("observe_benign_mix", |b| {
        b.iter(|| {
            for (e, ci) in &calls {
                det.observe(black_box(e), black_box(ci), now);
                now += 5 * MS;
            }
            black_box(det.drain().len())
        })
    });
    g.finish();
    // Thread CPU time: independent of other load on the shared cores.
    let t0 = thread_cpu_ns();
    let passes = 20;
    for _ in 0..passes {
        for (e, ci) in &calls {
            det.observe(e, ci, now);
            now += 5 * MS;
        }
    }
    let per = (thread_cpu_ns() - t0) as f64 / (passes * calls.len()) as f64;
    eprintln!(
        "thread CPU: {per:.0} ns per exchange = {:.2} M exchanges/s per core",
        1e3 / per
    );
    let st = det.stats();
    eprintln!(
        "state: {} principals, {} endpoints, {} groups, ~{} KiB ({} findings on benign traffic)",
        st.principals,
        st.endpoints,
        st.groups,
        st.approx_heap_bytes / 1024,
        st.findings
    );

    // Memory per tracked principal: 100k distinct principals, one call each.
    let mut det = Detectors::new(DetectConfig::default());
    let (e, ci) = &calls[0];
    let mut ci = ci.clone();
    for i in 0..100_000u64 {
        ci.auth.principal = Some(format!("{i:032x}"));
        det.observe(e, &ci, now);
        now += 1_000;
    }
    let st = det.stats();
    eprintln!(
        "memory: ~{} bytes per tracked principal ({} principals, ~{} KiB)",
        st.approx_heap_bytes / st.principals.max(1),
        st.principals,
        st.approx_heap_bytes / 1024
    );

    // Memory per tracked endpoint: 5000 templated endpoints, 20 calls each with distinct ids.
    let mut det = Detectors::new(DetectConfig::default());
    let (e, ci) = &calls[0];
    let mut ci = ci.clone();
    for i in 0..5_000u32 {
        ci.endpoint_id = 100_000 + i;
        ci.endpoint = std::sync::Arc::from(format!("svc GET /r{i}/{{int}}"));
        ci.template = std::sync::Arc::from(format!("/r{i}/{{int}}"));
        for j in 0..20u64 {
            let mut e2 = e.clone();
            e2.request.path = format!("/r{i}/{}", j * 7919);
            ci.auth.principal = Some(format!("p{}", j % 4));
            det.observe(&e2, &ci, now);
            now += 1_000;
        }
    }
    let st = det.stats();
    eprintln!(
        "memory: ~{} bytes per tracked endpoint with 20 owned ids ({} endpoints, ~{} KiB)",
        st.approx_heap_bytes / st.endpoints.max(1),
        st.endpoints,
        st.approx_heap_bytes / 1024
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
