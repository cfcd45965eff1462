//! Config files: parsing and validating arbitrary TOML never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut raw) = waymark::config::RawConfig::from_toml(text) {
        // Keep validation from touching real files: no key file, no dev ring outside a temp dir.
        raw.keys_file = None;
        raw.data_dir = Some(std::env::temp_dir().join("waymark-fuzz").to_string_lossy().into_owned());
        raw.scanner_rules = None;
        raw.asn_db = None;
        raw.city_db = None;
        raw.tls_certificates.clear();
        raw.tls_cert = None;
        raw.tls_key = None;
        let _ = raw.validate();
    }
});
