//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared corpora: `$SONDE_CORPORA`, else `../shared/corpora` beside the repository. Panics
/// when `SONDE_CORPORA` is set but `sub` is missing there; `None` (skip) when neither exists.
pub fn corpus(sub: &str) -> Option<PathBuf> {
    if let Ok(root) = std::env::var("SONDE_CORPORA") {
        let p = PathBuf::from(root).join(sub);
        assert!(
            p.is_dir(),
            "SONDE_CORPORA is set but {} is missing",
            p.display()
        );
        return Some(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../../shared/corpora")
        .join(sub);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("note: corpus {sub} not found (set SONDE_CORPORA); skipping");
        None
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    s.chunks(2)
        .map(|p| {
            let t = std::str::from_utf8(p).expect("hex is ascii");
            u8::from_str_radix(t, 16).expect("valid hex digit")
        })
        .collect()
}

pub fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable corpus dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
pub mod peer;
pub mod wire;
