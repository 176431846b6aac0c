//! Scenario harness: generated exchanges through a real `Inventory`, a controllable clock, benign
//! traffic of many principals, and attack generators.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use sonde_detect::{DetectConfig, Detectors};
use sonde_inventory::{CallInfo, Inventory, InventoryConfig};
use sonde_model::{
    Anomaly, Body, ConnId, ConnMeta, Exchange, ExchangeFlags, Header, HttpVersion, ProcessInfo,
    Request, Response, Role,
};

pub const T0: u64 = 1_780_000_000_000_000_000;
pub const MS: u64 = 1_000_000;

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A JWT (not verifiable: the sensor never verifies) for `sub`, expiring at `exp` (Unix s).
pub fn jwt(sub: &str, exp: i64) -> String {
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"iss":"https://id.example.com","sub":"{sub}","exp":{exp}}}"#
        )),
        b64("signature-bytes-here")
    )
}

pub fn unsigned_jwt(sub: &str, exp: i64) -> String {
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"iss":"https://id.example.com","sub":"{sub}","exp":{exp}}}"#
        )),
    )
}

pub fn body(b: &[u8]) -> Body {
    Body {
        declared_len: Some(b.len() as u64),
        wire_len: b.len() as u64,
        sample: Bytes::copy_from_slice(b),
        ..Body::default()
    }
}

/// One exchange under construction.
pub struct Ex(pub Exchange);

impl Ex {
    pub fn new(client_ip: [u8; 4], method: &str, target: &str) -> Ex {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        let remote = SocketAddr::from((client_ip, 40000 + u16::from(client_ip[3])));
        let local: SocketAddr = SocketAddr::from(([10, 0, 0, 1], 8080));
        Ex(Exchange {
            conn: Arc::new(ConnMeta {
                id: ConnId {
                    tgid: 10,
                    fd: 5,
                    generation: 1,
                },
                role: Role::Server,
                process: ProcessInfo {
                    pid: 10,
                    comm: "shop-api".into(),
                    cgroup_id: 0,
                    workload: None,
                },
                local: Some(local),
                remote: Some(remote),
            }),
            version: HttpVersion::Http11,
            stream_id: None,
            request: Request {
                method: method.into(),
                authority: Some("shop.example.com".into()),
                path,
                query,
                headers: vec![Header::new("user-agent", "shop-app/2.1")],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: 0,
                ts_end_ns: 0,
            },
            response: Some(Response {
                status: 200,
                reason: "OK".into(),
                headers: vec![],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: 0,
                ts_end_ns: 0,
            }),
            grpc: None,
            flags: ExchangeFlags::default(),
        })
    }
    pub fn bearer(self, token: &str) -> Ex {
        self.header("authorization", &format!("Bearer {token}"))
    }
    pub fn header(mut self, n: &str, v: &str) -> Ex {
        self.0.request.headers.push(Header::new(n, v));
        self
    }
    pub fn req_json(mut self, b: &str) -> Ex {
        self.0
            .request
            .headers
            .push(Header::new("content-type", "application/json"));
        self.0.request.body = body(b.as_bytes());
        self
    }
    pub fn status(mut self, s: u16) -> Ex {
        if let Some(r) = self.0.response.as_mut() {
            r.status = s;
        }
        self
    }
    pub fn json(mut self, b: &str) -> Ex {
        if let Some(r) = self.0.response.as_mut() {
            r.headers
                .push(Header::new("content-type", "application/json"));
            r.body = body(b.as_bytes());
        }
        self
    }
    pub fn text(mut self, ct: &str, b: &str) -> Ex {
        if let Some(r) = self.0.response.as_mut() {
            r.headers.push(Header::new("content-type", ct));
            r.body = body(b.as_bytes());
        }
        self
    }
    /// Response body whose sample is cut to `sample` bytes of a `wire`-byte body.
    pub fn big_json(mut self, b: &str, wire: u64) -> Ex {
        if let Some(r) = self.0.response.as_mut() {
            r.headers
                .push(Header::new("content-type", "application/json"));
            let mut bd = body(b.as_bytes());
            bd.wire_len = wire;
            bd.declared_len = Some(wire);
            bd.sample_truncated = (b.len() as u64) < wire;
            r.body = bd;
        }
        self
    }
    pub fn flag(mut self, f: u32) -> Ex {
        self.0.flags.insert(f);
        self
    }
}

pub struct User {
    pub sub: String,
    pub token: String,
    pub ip: [u8; 4],
    pub orders: Vec<u64>,
}

fn order_json(id: u64, email: &str) -> String {
    format!(
        r#"{{"id":{id},"status":"shipped","total":42.5,"currency":"EUR","email":"{email}","items":[{{"sku":"A-1","qty":1}}]}}"#
    )
}

fn order_list(n: usize, email: &str) -> String {
    let items: Vec<String> = (0..n).map(|i| order_json(1000 + i as u64, email)).collect();
    format!("[{}]", items.join(","))
}

/// Inventory + detectors + clock + a population of users.
pub struct Sim {
    pub inv: Inventory,
    pub det: Detectors,
    pub now: u64,
    pub rng: Rng,
    pub users: Vec<User>,
    pub products: Vec<u64>,
    pub found: Vec<Anomaly>,
    pub exchanges: u64,
    /// When set, every fed exchange is kept with its CallInfo (benchmarks).
    pub record: Option<Vec<(Exchange, CallInfo)>>,
}

impl Sim {
    pub fn new(users: usize, seed: u64, cfg: DetectConfig) -> Sim {
        let mut rng = Rng(seed | 1);
        let mut us = Vec::new();
        let exp = (T0 / 1_000_000_000) as i64 + 30 * 86400;
        for i in 0..users {
            let sub = format!("user-{i}");
            let orders = (0..(5 + rng.below(15)))
                .map(|_| 1_000_000 + rng.below(9_000_000))
                .collect();
            us.push(User {
                token: jwt(&sub, exp),
                sub,
                ip: [10, 1, (i / 250) as u8, (i % 250) as u8 + 1],
                orders,
            });
        }
        let products = (0..200).map(|i| 100 + i * 7).collect();
        Sim {
            inv: Inventory::new(InventoryConfig::default()),
            det: Detectors::new(cfg),
            now: T0,
            rng,
            users: us,
            products,
            found: Vec::new(),
            exchanges: 0,
            record: None,
        }
    }

    pub fn now_s(&self) -> i64 {
        (self.now / 1_000_000_000) as i64
    }

    /// Runs one exchange through inventory and detectors at the current time, then advances the
    /// clock by `dt`. Returns the CallInfo.
    pub fn feed(&mut self, mut e: Ex, dt: u64) -> CallInfo {
        let lat = (2 + self.rng.below(20)) * MS;
        e.0.request.ts_start_ns = self.now;
        e.0.request.ts_end_ns = self.now + MS / 10;
        if let Some(r) = e.0.response.as_mut() {
            r.ts_start_ns = self.now + lat;
            r.ts_end_ns = self.now + lat + MS / 10;
        }
        let call = self.inv.observe(&e.0, self.now);
        self.det.observe(&e.0, &call, self.now);
        self.exchanges += 1;
        self.now += dt;
        if let Some(r) = self.record.as_mut() {
            r.push((e.0, call.clone()));
        }
        call
    }

    pub fn drain(&mut self) -> Vec<Anomaly> {
        let d = self.det.drain();
        self.found.extend(d.iter().cloned());
        d
    }

    /// One benign call by a random user.
    pub fn benign_one(&mut self, dt: u64) {
        let ui = self.rng.below(self.users.len() as u64) as usize;
        let roll = self.rng.below(100);
        let (token, ip, email) = {
            let u = &self.users[ui];
            (u.token.clone(), u.ip, format!("{}@mail.example.com", u.sub))
        };
        let e = match roll {
            0..40 => {
                let u = &self.users[ui];
                let id = u.orders[self.rng.below(u.orders.len() as u64) as usize];
                Ex::new(ip, "GET", &format!("/api/orders/{id}"))
                    .bearer(&token)
                    .json(&order_json(id, &email))
            }
            40..60 => {
                let pid = self.products[self.rng.below(self.products.len() as u64) as usize];
                let e = Ex::new(ip, "GET", &format!("/api/products/{pid}"));
                let e = if roll.is_multiple_of(2) {
                    e.bearer(&token)
                } else {
                    e
                };
                e.json(&format!(
                    r#"{{"id":{pid},"name":"Widget {pid}","price":9.99,"stock":12}}"#
                ))
            }
            60..75 => {
                let n = 3 + self.rng.below(10) as usize;
                Ex::new(ip, "GET", "/api/orders?page=1&sort=date")
                    .bearer(&token)
                    .json(&order_list(n, &email))
            }
            75..85 => Ex::new(ip, "POST", "/api/orders")
                .bearer(&token)
                .req_json(r#"{"product":107,"qty":2,"note":"leave at the door, ring twice"}"#)
                .status(201)
                .json(r#"{"id":5551234,"status":"created"}"#),
            85..95 => Ex::new(ip, "GET", "/api/me")
                .bearer(&token)
                .json(&format!(r#"{{"name":"User","email":"{email}"}}"#)),
            95..99 => Ex::new(ip, "GET", "/health").text("text/plain", "ok"),
            _ => {
                let id = 20_000_000 + self.rng.below(1_000_000);
                Ex::new(ip, "GET", &format!("/api/orders/{id}"))
                    .bearer(&token)
                    .status(404)
                    .json(r#"{"error":"not found"}"#)
            }
        };
        self.feed(e, dt);
    }

    pub fn benign(&mut self, n: u64, dt: u64) {
        for _ in 0..n {
            self.benign_one(dt);
        }
    }

    /// Order ids owned by users other than `not`.
    pub fn foreign_orders(&mut self, not: usize, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < n && i < 100_000 {
            let ui = self.rng.below(self.users.len() as u64) as usize;
            if ui != not {
                let u = &self.users[ui];
                let id = u.orders[self.rng.below(u.orders.len() as u64) as usize];
                if !out.contains(&id) {
                    out.push(id);
                }
            }
            i += 1;
        }
        out
    }
}
