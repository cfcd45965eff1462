//! Benches for the work on every request: sealing and opening tokens, and
//! encoding an event. Run with `cargo bench --bench hot_path`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use waymark::destination::Destination;
use waymark::keys::{Key, KeyId, KeyRing};
use waymark::token::{self, Claims, Link, Target};

fn claims() -> Claims {
    Claims {
        target: Target::Click(Link {
            index: 3,
            url: Destination::parse("https://shop.example.com/spring?utm_source=mail").unwrap(),
            trap: false,
        }),
        tenant: String::new(),
        message_id: "em_4yM2nTvR8oPcX3uZiKeLg7sB".into(),
        recipient: Some("recipient@example.com".into()),
        sent_at: 1_779_000_000,
        expires_at: None,
        tags: vec![],
        meta: vec![],
    }
}

fn tokens(c: &mut Criterion) {
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let claims = claims();
    let text = token::seal(&ring, &claims).unwrap();
    c.bench_function("token/seal", |b| b.iter(|| token::seal(&ring, black_box(&claims)).unwrap()));
    c.bench_function("token/open", |b| b.iter(|| token::open(&ring, black_box(&text), 0).unwrap()));
}

criterion_group!(benches, tokens);
criterion_main!(benches);
