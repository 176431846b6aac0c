//! Inventory throughput: exchanges without bodies (target ≥ 1M updates/s), body schema + scan
//! (target ≥ 500 MB/s of sample), and the measured heap per endpoint (counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use sonde_inventory::schema::{BodyFacts, walk_json};
use sonde_inventory::{Inventory, InventoryConfig};
use sonde_model::{
    Body, ConnId, ConnMeta, Exchange, ExchangeFlags, Header, HttpVersion, ProcessInfo, Request,
    Response, Role,
};

/// Counts live heap bytes, for the memory-per-endpoint figure.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `alloc` above with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NOW: u64 = 1_780_000_000_000_000_000;

fn conn() -> Arc<ConnMeta> {
    let local: SocketAddr = "10.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!());
    let remote: SocketAddr = "10.0.0.9:51000".parse().unwrap_or_else(|_| unreachable!());
    Arc::new(ConnMeta {
        id: ConnId {
            tgid: 1,
            fd: 3,
            generation: 0,
        },
        role: Role::Server,
        process: ProcessInfo {
            pid: 1,
            comm: "api".into(),
            cgroup_id: 0,
            workload: None,
        },
        local: Some(local),
        remote: Some(remote),
    })
}

fn exchange(
    conn: &Arc<ConnMeta>,
    method: &str,
    path: String,
    req_body: Body,
    resp_body: Body,
) -> Exchange {
    Exchange {
        conn: conn.clone(),
        version: HttpVersion::Http11,
        stream_id: None,
        request: Request {
            method: method.into(),
            authority: Some("api.example.com".into()),
            path,
            query: None,
            headers: vec![
                Header::new("user-agent", "wrk"),
                Header::new("accept", "application/json"),
                Header::new("x-request-id", "4bf92f3577b34da6"),
            ],
            trailers: vec![],
            body: req_body,
            ts_start_ns: NOW,
            ts_end_ns: NOW + 1_000,
        },
        response: Some(Response {
            status: 200,
            reason: "OK".into(),
            headers: vec![
                Header::new("content-type", "application/json"),
                Header::new("content-length", "512"),
            ],
            trailers: vec![],
            body: resp_body,
            ts_start_ns: NOW + 50_000,
            ts_end_ns: NOW + 120_000,
        }),
        grpc: None,
        flags: ExchangeFlags::default(),
    }
}

/// 1000 exchanges over 40 templates with varying ids, no bodies.
fn no_body_mix() -> Vec<Exchange> {
    let c = conn();
    let resources = [
        "users", "orders", "invoices", "products", "carts", "reviews", "sessions", "teams",
        "projects", "files",
    ];
    (0..1000u32)
        .map(|i| {
            let r = resources[(i % 10) as usize];
            let path = match i % 4 {
                0 => format!("/api/v1/{r}"),
                1 => format!("/api/v1/{r}/{}", 1000 + i * 7),
                2 => format!("/api/v1/{r}/{}/history", 1000 + i * 7),
                _ => format!("/api/v1/{r}/3fa85f64-5717-4562-b3fc-{:012x}", i),
            };
            exchange(
                &c,
                if i % 5 == 0 { "POST" } else { "GET" },
                path,
                Body::default(),
                Body::default(),
            )
        })
        .collect()
}

/// A realistic 16 KiB JSON response: a page of customers with contact data.
fn json_sample() -> Vec<u8> {
    let mut s = String::from("{\"page\":1,\"per_page\":50,\"customers\":[");
    let mut i = 0;
    while s.len() < 16 * 1024 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":\"cus_{i:08}Ab\",\"name\":\"Customer Number {i}\",\"email\":\"customer{i}@example.com\",\"phone\":\"+1 415 555 {:04}\",\
             \"created\":\"2026-01-{:02}T10:00:00Z\",\"balance\":{}.25,\"active\":true,\"address\":{{\"line1\":\"{} Market Street\",\
             \"city\":\"San Francisco\",\"zip\":\"94105\",\"country\":\"US\"}},\"tags\":[\"vip\",\"beta\"],\"notes\":null}}",
            i % 10_000,
            1 + i % 28,
            i * 13,
            100 + i
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn body(b: &[u8]) -> Body {
    Body {
        declared_len: Some(b.len() as u64),
        wire_len: b.len() as u64,
        sample: Bytes::copy_from_slice(b),
        ..Body::default()
    }
}

fn memory_per_endpoint() {
    let c = conn();
    let sample = json_sample();
    let small = &sample[..2048];
    let before = LIVE.load(Ordering::Relaxed);
    // No learning, so that each of the 1000 templates stays its own endpoint.
    let cfg = InventoryConfig {
        param_min_distinct: 1_000_000,
        ..InventoryConfig::default()
    };
    let mut inv = Inventory::new(cfg.clone());
    let n = 1000u32;
    for round in 0..5u32 {
        for i in 0..n {
            let path = format!("/svc{}/res{}/{}", i % 50, i / 50, round * 100 + i);
            let ex = exchange(&c, "GET", path, Body::default(), body(small));
            black_box(inv.observe(&ex, NOW + u64::from(round)));
        }
    }
    let _ = inv.take_dirty();
    let _ = inv.drain_events();
    let _ = inv.take_retired();
    let endpoints = inv.endpoints().count();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: {endpoints} endpoints (5 calls each, JSON responses with {} schema fields), {} bytes heap total, {} bytes per endpoint (estimate from sizes: {})",
        inv.endpoints()
            .next()
            .map_or(0, |r| r.response_schema.fields.len()),
        bytes,
        bytes / endpoints.max(1) as isize,
        inv.approx_heap_bytes() / endpoints.max(1)
    );
    let before = LIVE.load(Ordering::Relaxed);
    let mut bare = Inventory::new(cfg);
    for i in 0..n {
        let ex = exchange(
            &c,
            "GET",
            format!("/svc{}/res{}", i % 50, i / 50),
            Body::default(),
            Body::default(),
        );
        black_box(bare.observe(&ex, NOW));
    }
    let _ = bare.take_dirty();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: {} bodiless endpoints, {} bytes per endpoint",
        bare.endpoints().count(),
        bytes / bare.endpoints().count().max(1) as isize
    );
    drop(inv);
    drop(bare);
}

fn benches(c: &mut Criterion) {
    let mix = no_body_mix();
    let mut inv = Inventory::default();
    for ex in &mix {
        inv.observe(ex, NOW);
    }
    let mut g = c.benchmark_group("observe");
    g.throughput(Throughput::Elements(mix.len() as u64));
    g.bench_function("no_body_1000_exchanges", |b| {
        b.iter(|| {
            for ex in &mix {
                black_box(inv.observe(ex, NOW));
            }
            inv.take_dirty().len()
        })
    });
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiaXNzIjoiaHR0cHM6Ly9pZHAiLCJleHAiOjE3ODAwMDM2MDB9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let mut jwt_mix = mix.clone();
    for ex in &mut jwt_mix {
        ex.request
            .headers
            .push(Header::new("authorization", format!("Bearer {token}")));
    }
    g.bench_function("no_body_bearer_jwt_1000_exchanges", |b| {
        b.iter(|| {
            for ex in &jwt_mix {
                black_box(inv.observe(ex, NOW));
            }
        })
    });
    g.finish();

    let sample = json_sample();
    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Bytes(sample.len() as u64));
    let mut facts = BodyFacts::default();
    g.bench_function("schema_and_scan_16k_json", |b| {
        b.iter(|| {
            facts.clear();
            black_box(walk_json(black_box(&sample), 8, 256, &mut facts))
        })
    });
    g.bench_function("scan_text_only_16k", |b| {
        b.iter(|| black_box(sonde_inventory::sensitive::scan_text(black_box(&sample))))
    });
    let cn = conn();
    let with_body = exchange(
        &cn,
        "GET",
        "/api/v1/customers".into(),
        Body::default(),
        body(&sample),
    );
    let mut inv2 = Inventory::default();
    g.bench_function("observe_16k_json_response", |b| {
        b.iter(|| black_box(inv2.observe(&with_body, NOW)))
    });
    g.finish();
}

/// CPU time of this thread, in ns: unlike wall time, not inflated when other processes share
/// the cores (this machine's two cores are shared with other builds).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu_time_report() {
    let mix = no_body_mix();
    let mut inv = Inventory::default();
    for ex in &mix {
        inv.observe(ex, NOW);
    }
    let rounds = 2000u64;
    let t0 = thread_cpu_ns();
    for _ in 0..rounds {
        for ex in &mix {
            black_box(inv.observe(ex, NOW));
        }
    }
    let cpu = (thread_cpu_ns() - t0).max(1);
    println!(
        "cpu-time: observe without bodies: {:.2} M updates per CPU-second",
        (rounds * mix.len() as u64) as f64 * 1e3 / cpu as f64
    );
    let sample = json_sample();
    let mut facts = BodyFacts::default();
    let rounds = 20_000u64;
    let t0 = thread_cpu_ns();
    for _ in 0..rounds {
        facts.clear();
        black_box(walk_json(black_box(&sample), 8, 256, &mut facts));
    }
    let cpu = (thread_cpu_ns() - t0).max(1);
    println!(
        "cpu-time: schema + scan of a 16 KiB JSON sample: {:.0} MB per CPU-second",
        (rounds * sample.len() as u64) as f64 * 1e3 / cpu as f64
    );
}

fn main() {
    memory_per_endpoint();
    cpu_time_report();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
