//! The HPACK decoder against ../shared/corpora/hpack-test-case: every story of every encoder,
//! decoded from the start and joined late at every case.

mod common;

use std::collections::VecDeque;

use serde_json::Value;
use sonde_http2::hpack::{self, Decoder, Instruction, LiteralMode, NameRef, table};

type Headers = Vec<(String, String)>;

struct Case {
    wire: Vec<u8>,
    headers: Headers,
    table_size: Option<usize>,
}

fn load_story(path: &std::path::Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).expect("readable story");
    let v: Value = serde_json::from_str(&text).expect("story is json");
    v["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .map(|c| Case {
            wire: common::hex(c["wire"].as_str().expect("wire")),
            headers: c["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|h| {
                    let (k, v) = h
                        .as_object()
                        .expect("one-key object")
                        .iter()
                        .next()
                        .expect("one key");
                    (k.clone(), v.as_str().expect("string value").to_owned())
                })
                .collect(),
            table_size: c
                .get("header_table_size")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
        })
        .collect()
}

fn stories() -> Vec<(String, Vec<Case>)> {
    let Some(root) = common::corpus("hpack-test-case") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).expect("corpus dir") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() || dir.ends_with("raw-data") {
            continue;
        }
        for f in common::json_files(&dir) {
            out.push((f.display().to_string(), load_story(&f)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 25,
        "expected the five stories of five encoders, found {}",
        out.len()
    );
    out
}

type Decoded = Vec<(Option<String>, Option<String>)>;

fn decode(d: &mut Decoder, wire: &[u8]) -> Decoded {
    let mut out = Vec::new();
    d.decode_block(wire, &mut |f| {
        out.push((
            f.name
                .map(|n| String::from_utf8(n.to_vec()).expect("utf-8 name")),
            f.value
                .map(|v| String::from_utf8(v.to_vec()).expect("utf-8 value")),
        ))
    })
    .expect("corpus blocks are well-formed");
    out
}

#[test]
fn every_story_decodes_exactly() {
    let mut blocks = 0;
    for (name, cases) in stories() {
        let mut d = Decoder::new(65536);
        for (i, case) in cases.iter().enumerate() {
            if let Some(size) = case.table_size {
                d.set_settings_limit(size);
            }
            let got = decode(&mut d, &case.wire);
            let want: Decoded = case
                .headers
                .iter()
                .map(|(n, v)| (Some(n.clone()), Some(v.clone())))
                .collect();
            assert_eq!(got, want, "{name} case {i}");
            blocks += 1;
        }
        assert_eq!(d.stats().unresolved_fields, 0, "{name}");
        assert_eq!(d.stats().invalid_indices, 0, "{name}");
        assert!(d.table().size() <= d.table().max_size());
    }
    if blocks > 0 {
        assert!(blocks > 250, "{blocks}");
    }
}

/// Ground truth of what a late decoder can know, from an independent model of the table that
/// tracks, per entry, whether its name and value were learnt after the join.
#[derive(Clone)]
struct ModelEntry {
    name_known: bool,
    value_known: bool,
    size: usize,
}

fn expected_late(cases: &[Case], k: usize) -> Vec<Decoded> {
    let mut entries: VecDeque<ModelEntry> = VecDeque::new();
    let mut size = 0usize;
    let mut max = hpack::DEFAULT_TABLE_SIZE;
    let mut result = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let seen = ci >= k;
        let mut pos = 0;
        let mut field = 0;
        let mut decoded = Decoded::new();
        while pos < case.wire.len() {
            let (ins, used) = hpack::read_instruction(&case.wire[pos..]).expect("instruction");
            pos += used;
            let lookup = |i: usize, entries: &VecDeque<ModelEntry>| -> (bool, bool) {
                if i <= table::STATIC_TABLE.len() {
                    (true, true)
                } else {
                    let e = &entries[i - table::STATIC_TABLE.len() - 1];
                    (e.name_known, e.value_known)
                }
            };
            match ins {
                Instruction::SizeUpdate(n) => {
                    max = n;
                    while size > max {
                        size -= entries.pop_back().expect("entry").size;
                    }
                }
                Instruction::Indexed(i) => {
                    let (n, v) = lookup(i, &entries);
                    let (hn, hv) = &case.headers[field];
                    decoded.push((n.then(|| hn.clone()), v.then(|| hv.clone())));
                    field += 1;
                }
                Instruction::Literal { name, mode, .. } => {
                    let name_known = match name {
                        NameRef::Indexed(i) => lookup(i, &entries).0,
                        NameRef::Literal(_) => true,
                    };
                    let (hn, hv) = &case.headers[field];
                    decoded.push((name_known.then(|| hn.clone()), Some(hv.clone())));
                    field += 1;
                    if mode == LiteralMode::Incremental {
                        let esize = hn.len() + hv.len() + table::ENTRY_OVERHEAD;
                        while size + esize > max && !entries.is_empty() {
                            size -= entries.pop_back().expect("entry").size;
                        }
                        if esize <= max {
                            entries.push_front(ModelEntry {
                                name_known: seen && name_known,
                                value_known: seen,
                                size: esize,
                            });
                            size += esize;
                        }
                    }
                }
            }
        }
        assert_eq!(field, case.headers.len());
        if seen {
            result.push(decoded);
        }
    }
    result
}

#[test]
fn late_join_reports_exactly_the_unseen_entries() {
    let mut joins = 0;
    let mut unresolved_total = 0u64;
    for (name, cases) in stories() {
        for k in 1..cases.len() {
            let want = expected_late(&cases, k);
            let mut d = Decoder::new_late(65536);
            for (j, case) in cases[k..].iter().enumerate() {
                let got = decode(&mut d, &case.wire);
                assert_eq!(got, want[j], "{name}: joined at case {k}, case {}", k + j);
            }
            let expected_unresolved: u64 = want
                .iter()
                .flatten()
                .filter(|(n, v)| n.is_none() || v.is_none())
                .count() as u64;
            assert_eq!(
                d.stats().unresolved_fields,
                expected_unresolved,
                "{name} k={k}"
            );
            assert_eq!(d.stats().invalid_indices, 0, "{name} k={k}");
            unresolved_total += expected_unresolved;
            joins += 1;
        }
    }
    if joins > 0 {
        // The late-join cases must actually exercise unresolved references.
        assert!(unresolved_total > 100, "{unresolved_total}");
    }
}
