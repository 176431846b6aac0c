//! Replay throughput on a generated capture: 1 000 interleaved HTTP/1.1 connections with ten
//! exchanges each (300-byte requests, 3 000-byte responses in three segments), one response
//! segment in fifty retransmitted and one in a hundred and fifty delivered out of order.

use std::io::Cursor;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_model::CaptureEvent;
use sonde_pcap::{PcapReader, ReassemblyLimits};

#[path = "../tests/common/synth.rs"]
mod synth;

use synth::{Framing, SYN, Synth, ack, fin_ack, syn_ack};

const CONNECTIONS: u32 = 1000;
const EXCHANGES: u32 = 10;

fn generate() -> Vec<u8> {
    let mut cap = Synth::new(Framing::Ethernet);
    let server: SocketAddr = "10.9.0.1:8080".parse().expect("addr");
    let clients: Vec<SocketAddr> = (0..CONNECTIONS)
        .map(|i| {
            format!("10.8.{}.{}:{}", i / 200, i % 200 + 1, 30_000 + i)
                .parse()
                .expect("addr")
        })
        .collect();
    let request = {
        let mut r = b"GET /api/v1/orders/12345 HTTP/1.1\r\nHost: shop.example\r\n".to_vec();
        r.resize(296, b'a');
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let body = vec![b'b'; 1000];
    let (c_isn, s_isn) = (1_000u32, 9_000_000u32);
    for c in &clients {
        cap.tcp(*c, server, c_isn, SYN, b"");
        cap.tcp(server, *c, s_isn, syn_ack(c_isn + 1), b"");
        cap.tcp(*c, server, c_isn + 1, ack(s_isn + 1), b"");
    }
    let mut n = 0u32;
    for x in 0..EXCHANGES {
        for c in &clients {
            let c_seq = c_isn + 1 + x * request.len() as u32;
            let s_seq = s_isn + 1 + x * 3000;
            cap.tcp(*c, server, c_seq, ack(s_seq), &request);
            let c_next = c_seq + request.len() as u32;
            n += 1;
            let order: [u32; 3] = if n.is_multiple_of(150) {
                [0, 2, 1]
            } else {
                [0, 1, 2]
            };
            for part in order {
                cap.tcp(server, *c, s_seq + part * 1000, ack(c_next), &body);
                if (n + part).is_multiple_of(50) {
                    cap.tcp(server, *c, s_seq + part * 1000, ack(c_next), &body);
                }
            }
            cap.tcp(*c, server, c_next, ack(s_seq + 3000), b"");
        }
    }
    for c in &clients {
        let c_end = c_isn + 1 + EXCHANGES * request.len() as u32;
        let s_end = s_isn + 1 + EXCHANGES * 3000;
        cap.tcp(*c, server, c_end, fin_ack(s_end), b"");
        cap.tcp(server, *c, s_end, fin_ack(c_end + 1), b"");
        cap.tcp(*c, server, c_end + 1, ack(s_end + 1), b"");
    }
    cap.pcap(false)
}

/// Replays the whole capture; returns the number of events.
fn replay(capture: &Bytes) -> u64 {
    let reader = PcapReader::from_reader(
        "bench.pcap",
        Cursor::new(capture.clone()),
        ReassemblyLimits::default(),
    )
    .expect("generated capture");
    let mut events = 0u64;
    for event in reader {
        if let Ok(CaptureEvent::Data(chunk)) = &event {
            std::hint::black_box(chunk.data.len());
        }
        events += 1;
    }
    events
}

fn bench(c: &mut Criterion) {
    let capture = Bytes::from(generate());
    let events = replay(&capture);
    let mut group = c.benchmark_group("pcap_replay");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(capture.len() as u64));
    group.bench_function("bytes", |b| b.iter(|| replay(&capture)));
    group.throughput(Throughput::Elements(events));
    group.bench_function("events", |b| b.iter(|| replay(&capture)));
    group.finish();
    eprintln!("capture: {} bytes, {events} events", capture.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
