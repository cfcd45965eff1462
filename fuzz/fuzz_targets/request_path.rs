//! Request paths: routing and destination parsing never panic, and a
//! destination that parses is always a header-safe absolute http(s) URL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = waymark::edge::route(text);
    if let Ok(dest) = waymark::destination::Destination::parse(text) {
        let s = dest.as_str();
        assert!(s.starts_with("http://") || s.starts_with("https://"), "{s:?}");
        assert!(s.bytes().all(|b| b > b' ' && b < 0x7f), "not header-safe: {s:?}");
        assert!(http::HeaderValue::from_str(s).is_ok());
    }
});
