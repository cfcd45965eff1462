//! Config files: parsing and validating arbitrary TOML never panics.
//! Validation reads and writes no file, so any input is safe to check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = waymark::config::RawConfig::from_toml(text) {
        let _ = waymark::config::validate(raw, &waymark::config::Origins::default());
    }
});
