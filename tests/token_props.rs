//! Property tests: every sealed token opens to what was sealed, and no
//! alteration of one (a flipped bit, truncation, extension, another key or
//! version) ever opens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use waymark::destination::Destination;
use waymark::keys::{Key, KeyId, KeyRing};
use waymark::token::{self, Claims, Link, OpenError, Target};

fn ring(kid: &str) -> KeyRing {
    KeyRing::parse(&Key::generate_entry(&KeyId::new(kid).unwrap())).unwrap()
}

fn claims() -> impl Strategy<Value = Claims> {
    let target = prop_oneof![
        Just(Target::Open),
        Just(Target::Unsubscribe),
        (any::<u16>(), "[a-z]{1,12}", "[a-zA-Z0-9/_.?=&-]{0,60}", any::<bool>()).prop_map(
            |(index, host, path, trap)| {
                Target::Click(Link {
                    index,
                    url: Destination::parse(&format!("https://{host}.example/{path}")).unwrap(),
                    trap,
                })
            }
        ),
    ];
    (
        target,
        "[a-z0-9-]{0,20}",
        "[^\\p{Cc}]{1,80}",
        proptest::option::of("[a-z]{1,20}@[a-z]{1,10}\\.com"),
        0u64..4_000_000_000,
        proptest::option::of(0u64..4_000_000_000),
        proptest::collection::vec("[^\\p{Cc}]{0,20}", 0..4),
        proptest::collection::vec(("[a-z]{1,10}", "[^\\p{Cc}]{0,30}"), 0..4),
    )
        .prop_map(|(target, tenant, message_id, recipient, sent_at, expires_at, tags, meta)| Claims {
            target,
            tenant,
            message_id,
            recipient,
            sent_at,
            expires_at,
            tags,
            meta,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seal_then_open_is_identity(c in claims()) {
        let r = ring("k1");
        let text = token::seal(&r, &c).unwrap();
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(token::open(&r, &text, 0).unwrap().into_claims(), c);
    }

    #[test]
    fn any_flipped_bit_is_refused(c in claims(), bit in any::<prop::sample::Index>()) {
        let r = ring("k1");
        let mut raw = URL_SAFE_NO_PAD.decode(token::seal(&r, &c).unwrap()).unwrap();
        let i = bit.index(raw.len() * 8);
        raw[i / 8] ^= 1 << (i % 8);
        prop_assert!(token::open(&r, &URL_SAFE_NO_PAD.encode(&raw), 0).is_err());
    }

    #[test]
    fn truncation_and_extension_are_refused(c in claims(), cut in 1usize..40, extra in proptest::collection::vec(any::<u8>(), 1..20)) {
        let r = ring("k1");
        let raw = URL_SAFE_NO_PAD.decode(token::seal(&r, &c).unwrap()).unwrap();
        let short = &raw[..raw.len().saturating_sub(cut)];
        prop_assert!(token::open(&r, &URL_SAFE_NO_PAD.encode(short), 0).is_err());
        let mut long = raw.clone();
        long.extend(&extra);
        prop_assert!(token::open(&r, &URL_SAFE_NO_PAD.encode(&long), 0).is_err());
    }

    #[test]
    fn another_key_or_version_is_refused(c in claims(), version in 0u8..16) {
        let r = ring("k1");
        let text = token::seal(&r, &c).unwrap();
        prop_assert_eq!(token::open(&ring("k1"), &text, 0).unwrap_err(), OpenError::Forged);
        prop_assert_eq!(token::open(&ring("k2"), &text, 0).unwrap_err(), OpenError::UnknownKey);
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        prop_assume!(version != token::VERSION);
        raw[0] = version << 4 | (raw[0] & 0x0f);
        prop_assert_eq!(token::open(&r, &URL_SAFE_NO_PAD.encode(&raw), 0).unwrap_err(), OpenError::Version(version));
    }

    #[test]
    fn arbitrary_text_never_opens_or_panics(text in "[A-Za-z0-9_-]{0,300}") {
        prop_assert!(token::open(&ring("k1"), &text, 0).is_err());
    }
}
