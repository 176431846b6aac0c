//! Learn, save, load, detect without relearning; corrupt and incompatible snapshots.

mod common;

use common::*;
use sonde_detect::{DetectConfig, Detectors};
use sonde_inventory::{Inventory, InventoryConfig};

fn unauth_probe(sim: &mut Sim) -> Vec<String> {
    sim.feed(
        Ex::new([192, 168, 9, 9], "GET", "/api/me").json(r#"{"name":"x"}"#),
        10 * MS,
    );
    sim.drain().into_iter().map(|a| a.kind).collect()
}

#[test]
fn baselines_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("detect.snap");
    let mut sim = Sim::new(100, 11, DetectConfig::default());
    sim.benign(30_000, 72 * MS);
    assert!(sim.drain().is_empty());
    sim.det.save(&path).expect("save");
    let saved = sim.det.stats();

    // Restart: fresh inventory, detectors loaded from the snapshot, clock a bit later.
    sim.inv = Inventory::new(InventoryConfig::default());
    sim.det = Detectors::load(&path, DetectConfig::default()).expect("load");
    let st = sim.det.stats();
    assert_eq!(
        (st.endpoints, st.principals),
        (saved.endpoints, saved.principals)
    );
    sim.now += 120 * 1_000_000_000;
    sim.benign(50, 72 * MS);
    assert!(
        sim.drain().is_empty(),
        "restored baseline is quiet on benign traffic"
    );
    let kinds = unauth_probe(&mut sim);
    assert!(
        kinds.iter().any(|k| k == "auth.unauthenticated_access"),
        "detected without relearning: {kinds:?}"
    );

    // Without the snapshot the same probe only teaches the baseline.
    let mut fresh = Sim::new(100, 11, DetectConfig::default());
    fresh.benign(50, 72 * MS);
    assert!(unauth_probe(&mut fresh).is_empty());
}

#[test]
fn corrupt_or_incompatible_snapshots_are_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("detect.snap");
    // Missing file: fresh start.
    let d = Detectors::load(&path, DetectConfig::default()).expect("missing is fine");
    assert_eq!(d.stats().endpoints, 0);

    let mut sim = Sim::new(20, 3, DetectConfig::default());
    sim.benign(2_000, 72 * MS);
    sim.det.save(&path).expect("save");
    let good = std::fs::read(&path).expect("read");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"definitely not a snapshot".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("future version", {
            let mut b = good.clone();
            b[8] = 0xfe;
            b
        }),
        ("flipped payload", {
            let mut b = good.clone();
            for x in b.iter_mut().skip(12).step_by(7) {
                *x ^= 0x5a;
            }
            b
        }),
    ];
    for (i, (name, bytes)) in cases.into_iter().enumerate() {
        std::fs::write(&path, &bytes).expect("write");
        let d = Detectors::load(&path, DetectConfig::default())
            .expect("corrupt snapshot is not an error");
        assert_eq!(d.stats().endpoints, 0, "{name}: learning restarts");
        assert!(!path.exists(), "{name}: moved aside");
        let aside = dir.path().join(format!("detect.snap.corrupt-{i}"));
        assert_eq!(std::fs::read(&aside).expect("aside copy"), bytes, "{name}");
    }
    // And the good one still loads.
    std::fs::write(&path, &good).expect("write");
    assert!(
        Detectors::load(&path, DetectConfig::default())
            .expect("load")
            .stats()
            .endpoints
            > 0
    );
}
