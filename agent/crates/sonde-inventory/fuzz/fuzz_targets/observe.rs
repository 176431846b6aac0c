//! A whole exchange built from arbitrary bytes: method, path, query, headers, bodies.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sonde_inventory::{Inventory, InventoryConfig};
use sonde_model::{Body, ConnId, ConnMeta, Exchange, ExchangeFlags, Header, HttpVersion, ProcessInfo, Request, Response, Role};

fn inventory() -> &'static Mutex<Inventory> {
    static INV: OnceLock<Mutex<Inventory>> = OnceLock::new();
    INV.get_or_init(|| {
        Mutex::new(Inventory::new(InventoryConfig {
            max_endpoints_per_service: 64,
            max_nodes_per_service: 256,
            param_min_distinct: 4,
            ..InventoryConfig::default()
        }))
    })
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(8, |b| *b == 0xff).collect();
    let part = |i: usize| String::from_utf8_lossy(parts.get(i).copied().unwrap_or_default()).into_owned();
    let (method, path, query, auth, cookie, ct, authority) = (part(0), part(1), part(2), part(3), part(4), part(5), part(6));
    let body = Bytes::copy_from_slice(parts.get(7).copied().unwrap_or_default());
    let conn = Arc::new(ConnMeta {
        id: ConnId { tgid: 1, fd: 3, generation: 0 },
        role: Role::Server,
        process: ProcessInfo { pid: 1, comm: "f".into(), cgroup_id: 0, workload: None },
        local: "127.0.0.1:80".parse().ok(),
        remote: "127.0.0.2:9".parse().ok(),
    });
    let sample = |b: &Bytes| Body { wire_len: b.len() as u64, sample: b.clone(), ..Body::default() };
    let ex = Exchange {
        conn,
        version: HttpVersion::Http11,
        stream_id: None,
        request: Request {
            method,
            authority: Some(authority),
            path,
            query: Some(query),
            headers: vec![Header::new("authorization", auth), Header::new("cookie", cookie), Header::new("content-type", ct.clone())],
            trailers: vec![],
            body: sample(&body),
            ts_start_ns: 1,
            ts_end_ns: 2,
        },
        response: Some(Response {
            status: 200,
            reason: String::new(),
            headers: vec![Header::new("content-type", ct)],
            trailers: vec![],
            body: sample(&body),
            ts_start_ns: 3,
            ts_end_ns: 4,
        }),
        grpc: None,
        flags: ExchangeFlags::default(),
    };
    let Ok(mut inv) = inventory().lock() else { return };
    let _ = inv.observe(&ex, 5);
    assert!(inv.check_consistency().is_ok());
    let _ = inv.take_dirty();
    let _ = inv.drain_events();
});
