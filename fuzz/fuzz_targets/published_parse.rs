//! The large published network lists, in each of their formats: parsing
//! arbitrary text never panics, and what parses joins a network list that
//! can look up any address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark::classify::Verdict;
use waymark::classify::networks::NetworkList;
use waymark::classify::published::{Format, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::AppleEgressCsv, Format::PrefixJson, Format::Microsoft365Json, Format::Plain] {
        let Ok(lists) = parse(format, text, "fuzz", Verdict::Proxy) else { continue };
        let mut networks = NetworkList::builtin();
        for list in lists {
            networks.add(list, "fuzzed list");
        }
        let _ = networks.find("192.0.2.1".parse().unwrap());
        let _ = networks.find("2001:db8::1".parse().unwrap());
    }
});
