//! Declared-spec parser on arbitrary text (YAML and JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_inventory::SpecScope;
use sonde_inventory::spec::parse_spec;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_spec(std::path::Path::new("fuzz.yaml"), &text, SpecScope::default());
});
