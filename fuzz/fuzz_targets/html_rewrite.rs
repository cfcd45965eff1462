//! HTML instrumentation: any bytes go through without a panic, and every
//! link the rewriter writes opens as a click token for a real destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use waymark::keys::KeyRing;
use waymark::rewrite::{Message, Switches, instrument};

static RING: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY").unwrap());

fuzz_target!(|data: &[u8]| {
    let msg = Message {
        base_url: waymark::destination::Destination::parse("https://t.example").unwrap(),
        tenant: String::new(),
        message_id: "m".into(),
        recipient: None,
        sent_at: 1_790_000_000,
        tags: vec![],
        meta: vec![],
        switches: Switches::default(),
        tracking_hosts: vec![],
        unsubscribe_mailto: None,
        expires_at: None,
    };
    if let Ok(out) = instrument(&RING, &msg, data) {
        let html = String::from_utf8_lossy(&out.html);
        for piece in html.split("https://t.example/c/").skip(1) {
            let token: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
            assert!(waymark::token::open(&RING, &token, 0).is_ok() || data.windows(token.len().max(1)).any(|w| w == token.as_bytes()));
        }
    }
});
