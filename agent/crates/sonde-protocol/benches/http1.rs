//! Reassembly + HTTP/1 parsing through `Tracker` on a generated keep-alive mix, and httparse
//! alone on the same heads for comparison.

use bytes::Bytes;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sonde_model::{
    CaptureEvent, ConnId, ConnOpen, DataChunk, Direction, ProcessInfo, Role, Source,
};
use sonde_protocol::{Tracker, TrackerConfig};

const SMALL_REQ: &[u8] = b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\n\r\n";
const SMALL_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"id\":12345,\"name\":\"alice\"}";

fn json_post() -> (Vec<u8>, Vec<u8>) {
    let body = format!(
        "{{\"user\":\"bob\",\"items\":[{}]}}",
        "1,".repeat(120) + "1"
    );
    let req = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nAuthorization: Bearer abc.def.ghi\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    );
    let resp = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"id\":98765}";
    (req.into_bytes(), resp.to_vec())
}

/// One connection carrying `n` exchanges, each message one delivery (or `chunk`-sized reads).
fn conversation(n: usize, req: &[u8], resp: &[u8], chunk: usize) -> Vec<CaptureEvent> {
    let conn = ConnId {
        tgid: 1,
        fd: 7,
        generation: 0,
    };
    let mut evs = vec![CaptureEvent::Open(ConnOpen {
        conn,
        ts_ns: 0,
        role: Role::Client,
        process: ProcessInfo::default(),
        local: None,
        remote: None,
    })];
    let req = Bytes::copy_from_slice(req);
    let resp = Bytes::copy_from_slice(resp);
    let mut offsets = [0u64; 2];
    let mut ts = 0;
    for _ in 0..n {
        for (dir, msg) in [(Direction::Egress, &req), (Direction::Ingress, &resp)] {
            let mut pos = 0;
            while pos < msg.len() {
                let end = (pos + chunk).min(msg.len());
                ts += 1_000;
                let off = &mut offsets[dir.index()];
                evs.push(CaptureEvent::Data(DataChunk {
                    conn,
                    direction: dir,
                    source: Source::Syscall,
                    offset: *off,
                    len: (end - pos) as u64,
                    data: msg.slice(pos..end),
                    ts_ns: ts,
                    tid: 1,
                }));
                *off += (end - pos) as u64;
                pos = end;
            }
        }
    }
    evs
}

fn run(evs: Vec<CaptureEvent>, out: &mut Vec<sonde_model::Exchange>) -> usize {
    let mut tracker = Tracker::new(TrackerConfig::default()).expect("default config is valid");
    out.clear();
    for ev in evs {
        tracker.on_event(ev, out);
    }
    tracker.flush(out);
    out.len()
}

/// CPU time of the benchmarking thread: on this shared 2-core machine other jobs take the CPU
/// away for long stretches, which inflates wall time; per-core figures come from this clock.
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time: reuse its formatter.
        WallTime.formatter()
    }
}

fn bench<M: Measurement>(c: &mut Criterion<M>, clock: &str) {
    const N: usize = 1_000;
    let mut out = Vec::with_capacity(N);

    let mut g = c.benchmark_group(format!("tracker_{clock}"));
    let small = conversation(N, SMALL_REQ, SMALL_RESP, usize::MAX);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("small_get_exchanges", |b| {
        b.iter_batched(
            || small.clone(),
            |evs| run(evs, &mut out),
            BatchSize::LargeInput,
        )
    });

    let (post_req, post_resp) = json_post();
    let posts = conversation(N, &post_req, &post_resp, usize::MAX);
    g.bench_function("json_post_exchanges", |b| {
        b.iter_batched(
            || posts.clone(),
            |evs| run(evs, &mut out),
            BatchSize::LargeInput,
        )
    });

    const LARGE: usize = 4 << 20;
    const LARGE_N: usize = 8;
    let mut large_resp =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {LARGE}\r\n\r\n")
            .into_bytes();
    large_resp.extend(std::iter::repeat_n(b'x', LARGE));
    let large = conversation(LARGE_N, SMALL_REQ, &large_resp, 64 << 10);
    let large_bytes = (LARGE_N * (SMALL_REQ.len() + large_resp.len())) as u64;
    g.throughput(Throughput::Bytes(large_bytes));
    g.bench_function("large_bodies_64k_reads", |b| {
        b.iter_batched(
            || large.clone(),
            |evs| run(evs, &mut out),
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // httparse alone on the heads of one small exchange, for the ratio.
    let mut g = c.benchmark_group(format!("httparse_{clock}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("small_get_heads", |b| {
        b.iter(|| {
            let mut h1 = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut h1);
            let a = req
                .parse(std::hint::black_box(SMALL_REQ))
                .map(|s| s.is_complete());
            let mut h2 = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut h2);
            let b = resp
                .parse(std::hint::black_box(SMALL_RESP))
                .map(|s| s.is_complete());
            (a, b)
        })
    });
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "wall");
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench(c, "cpu");
}

criterion_group!(wall_clock, wall);
criterion_group! {
    name = cpu_clock;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu
}
criterion_main!(wall_clock, cpu_clock);
