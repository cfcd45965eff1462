//! Opening arbitrary text as a token never panics, and never succeeds for
//! text that was not sealed with the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use waymark::keys::KeyRing;

static RING: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY").unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    assert!(waymark::token::open(&RING, text, 0).is_err(), "forged token opened: {text:?}");
});
