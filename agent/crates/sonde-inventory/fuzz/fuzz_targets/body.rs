//! JSON walker and sensitive-data scanner on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_inventory::schema::{BodyFacts, WalkOutcome, walk_json};
use sonde_inventory::sensitive::{scan_text, scan_value};

fuzz_target!(|data: &[u8]| {
    let mut facts = BodyFacts::default();
    let outcome = walk_json(data, 8, 64, &mut facts);
    if let WalkOutcome::Invalid { offset } = outcome {
        assert!(offset <= data.len());
    }
    assert!(facts.fields.len() <= 64);
    let _ = scan_text(data);
    let _ = scan_value(data);
});
