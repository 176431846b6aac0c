//! Helpers shared by the integration tests: exchange builder and corpus location.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sonde_model::{
    Body, ConnId, ConnMeta, Exchange, ExchangeFlags, Header, HttpVersion, ProcessInfo, Request,
    Response, Role,
};

/// `$SONDE_CORPORA` if set (then the corpus must exist), else `../shared/corpora` beside the
/// repository. `None` (with a note) only when neither exists.
pub fn corpus(rel: &str) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("SONDE_CORPORA") {
        let p = PathBuf::from(root).join(rel);
        assert!(
            p.exists(),
            "SONDE_CORPORA is set but {} is missing",
            p.display()
        );
        return Some(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../../shared/corpora")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("note: corpus {rel} not found (set SONDE_CORPORA); test skipped");
        None
    }
}

pub const NOW_NS: u64 = 1_780_000_000_000_000_000;

pub struct Ex {
    pub ex: Exchange,
}

pub fn conn(server: &str, client: &str, comm: &str) -> Arc<ConnMeta> {
    let local: SocketAddr = server.parse().expect("test address");
    let remote: SocketAddr = client.parse().expect("test address");
    Arc::new(ConnMeta {
        id: ConnId {
            tgid: 10,
            fd: 5,
            generation: 1,
        },
        role: Role::Server,
        process: ProcessInfo {
            pid: 10,
            comm: comm.into(),
            cgroup_id: 0,
            workload: None,
        },
        local: Some(local),
        remote: Some(remote),
    })
}

/// `target` may carry a query string.
pub fn ex(method: &str, target: &str) -> Ex {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Ex {
        ex: Exchange {
            conn: conn("10.0.0.1:8080", "10.0.0.9:51000", "api"),
            version: HttpVersion::Http11,
            stream_id: None,
            request: Request {
                method: method.into(),
                authority: Some("api.example.com".into()),
                path,
                query,
                headers: vec![Header::new("user-agent", "test")],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: NOW_NS,
                ts_end_ns: NOW_NS + 1000,
            },
            response: Some(Response {
                status: 200,
                reason: "OK".into(),
                headers: vec![],
                trailers: vec![],
                body: Body::default(),
                ts_start_ns: NOW_NS + 100_000,
                ts_end_ns: NOW_NS + 200_000,
            }),
            grpc: None,
            flags: ExchangeFlags::default(),
        },
    }
}

fn body(ct_json: &[u8]) -> Body {
    Body {
        declared_len: Some(ct_json.len() as u64),
        wire_len: ct_json.len() as u64,
        sample: Bytes::copy_from_slice(ct_json),
        ..Body::default()
    }
}

impl Ex {
    pub fn header(mut self, name: &str, value: &str) -> Ex {
        self.ex.request.headers.push(Header::new(name, value));
        self
    }
    pub fn authority(mut self, a: &str) -> Ex {
        self.ex.request.authority = Some(a.into());
        self
    }
    pub fn req_body(mut self, content_type: &str, b: &[u8]) -> Ex {
        self.ex
            .request
            .headers
            .push(Header::new("content-type", content_type));
        self.ex.request.body = body(b);
        self
    }
    pub fn status(mut self, s: u16) -> Ex {
        if let Some(r) = self.ex.response.as_mut() {
            r.status = s;
        }
        self
    }
    pub fn resp_body(mut self, content_type: &str, b: &[u8]) -> Ex {
        if let Some(r) = self.ex.response.as_mut() {
            r.headers.push(Header::new("content-type", content_type));
            r.body = body(b);
        }
        self
    }
    pub fn resp_header(mut self, name: &str, value: &str) -> Ex {
        if let Some(r) = self.ex.response.as_mut() {
            r.headers.push(Header::new(name, value));
        }
        self
    }
    pub fn server(mut self, server: &str) -> Ex {
        self.ex.conn = conn(server, "10.0.0.9:51000", "api");
        self
    }
    pub fn build(self) -> Exchange {
        self.ex
    }
}
