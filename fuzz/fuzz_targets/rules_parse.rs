//! Scanner rule and network lists: parsing arbitrary text never panics, and
//! a list that parses can match any user agent or address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rules) = waymark::classify::rules::Rules::parse(text) {
        let _ = rules.find(text);
        let _ = rules.find("Mozilla/5.0");
    }
    if let Ok(list) = waymark::classify::networks::NetworkList::parse(text) {
        let _ = list.find("192.0.2.1".parse().unwrap());
        let _ = list.find("2001:db8::1".parse().unwrap());
    }
});
