//! Sealing and opening tokens: round trips, expiry, rotation, refusals,
//! and tokens sealed by earlier versions.

use super::*;
use crate::keys::Key;

fn ring(ids: &[&str]) -> KeyRing {
    KeyRing::parse(
        &ids.iter().map(|id| Key::generate_entry(&KeyId::new(id).unwrap())).collect::<Vec<_>>().join(","),
    )
    .unwrap()
}

pub(crate) fn typical_open() -> Claims {
    Claims {
        target: Target::Open,
        tenant: String::new(),
        message_id: "em_4yM2nTvR8oPcX3uZiKeLg7sB".into(),
        recipient: Some("recipient@example.com".into()),
        sent_at: 1_779_000_000,
        expires_at: None,
        tags: vec![],
        meta: vec![],
    }
}

#[test]
fn typical_open_token_is_under_120_characters() {
    let text = seal(&ring(&["k1"]), &typical_open()).unwrap();
    assert!(text.len() < 120, "{} characters: {text}", text.len());
}

/// A click with every optional field set.
fn full_click() -> Claims {
    Claims {
        target: Target::Click(Link {
            index: 3,
            url: Destination::parse("https://example.com/promo?a=1").unwrap(),
            trap: false,
        }),
        tenant: "sender-a".into(),
        tags: vec!["welcome".into(), "series".into()],
        meta: vec![("campaign".into(), "spring".into())],
        expires_at: Some(2_000_000_000),
        ..typical_open()
    }
}

/// Claims of every shape a sent email holds, for the pinned tokens below.
fn golden_claims() -> [Claims; 3] {
    [typical_open(), full_click(), Claims { target: Target::Unsubscribe, recipient: None, ..typical_open() }]
}

/// Tokens sealed on 2026-11-30 with a key kept here: the mail sent
/// then holds such links. Whatever changes in the format, the key
/// derivation or the claims' encoding, they must open to the same
/// claims, or every link already sent stops working.
#[test]
fn tokens_sealed_by_earlier_versions_still_open() {
    let r = KeyRing::parse("golden:qPhTr4yXjmu4qv2n8Duuo590ZXiL-SGUCJABy8Nf_-A").unwrap();
    let sealed = [
        "FmdvbGRlbiEWg02wAhSWBWEniY53lMGFpXZvxAkqC0GPK7YSGhqOvDZnrpsglLMi17l0a3lmtN2gVFttQuRbfxFivgLXu64sAc61PPP3d9V3X6_qiWQvcyAVEIE4",
        "FmdvbGRlbtwp0xJw7645cfAKWmqKeF52DlzAonsQnZ5ziGsoGvfQXc1oJSpDQJDn0KNP9Jc3_LQ2h3BzYkrQBSpe7DK6GBon7Gf_G04rt1CQ5JJ3evVvdFHgtoT4Dz2rLK1tiy9koBMIW5Yj-vj6_NLZIRUHNHiYW8IkdIAq1wN5MwZinj0JFVPXxops_8CJIqI-t1NWy_3qRKq96SsGF-V6rQQ1_bZvzHBEyQ",
        "FmdvbGRlbtI4RShFfc0ImDigpflFrhHrU609YS_R0q77YijdKOKqGhL-W7iYdd3NWQYcAiNHnVaJrsscg2Xfa3tABfoqdEg",
    ];
    for (text, claims) in sealed.iter().zip(golden_claims()) {
        let token = open(&r, text, 1_779_000_100).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(token.claims(), &claims);
        assert_eq!(token.key_id().as_str(), "golden");
    }
}

#[test]
fn round_trip_keeps_every_field() {
    let r = ring(&["k1"]);
    let claims = full_click();
    let token = open(&r, &seal(&r, &claims).unwrap(), 1_779_000_100).unwrap();
    assert_eq!(token.claims(), &claims);
    assert_eq!(token.key_id().as_str(), "k1");
}

#[test]
fn expired_tokens_are_refused() {
    let r = ring(&["k1"]);
    let claims = Claims { expires_at: Some(100), ..typical_open() };
    let text = seal(&r, &claims).unwrap();
    assert!(open(&r, &text, 100).is_ok());
    assert_eq!(open(&r, &text, 101), Err(OpenError::Expired));
}

#[test]
fn rotation_keeps_old_tokens_and_removal_retires_them() {
    let k1 = Key::generate_entry(&KeyId::new("k1").unwrap());
    let k2 = Key::generate_entry(&KeyId::new("k2").unwrap());
    let old = KeyRing::parse(&k1).unwrap();
    let rotated = KeyRing::parse(&format!("{k2},{k1}")).unwrap();
    let retired = KeyRing::parse(&k2).unwrap();

    let under_k1 = seal(&old, &typical_open()).unwrap();
    let under_k2 = seal(&rotated, &typical_open()).unwrap();
    assert_eq!(open(&rotated, &under_k1, 0).unwrap().key_id().as_str(), "k1");
    assert_eq!(open(&rotated, &under_k2, 0).unwrap().key_id().as_str(), "k2");
    assert_eq!(open(&retired, &under_k1, 0), Err(OpenError::UnknownKey));
    assert_eq!(open(&old, &under_k2, 0), Err(OpenError::UnknownKey));
}

#[test]
fn a_key_with_the_same_id_but_another_secret_cannot_open() {
    let a = ring(&["k1"]);
    let b = ring(&["k1"]);
    let text = seal(&a, &typical_open()).unwrap();
    assert_eq!(open(&b, &text, 0), Err(OpenError::Forged));
}

#[test]
fn sealing_refuses_oversized_or_control_fields() {
    let r = ring(&["k1"]);
    let cases = [
        (Claims { message_id: String::new(), ..typical_open() }, SealError::EmptyMessageId),
        (
            Claims { message_id: "m".repeat(300), ..typical_open() },
            SealError::TooLong { field: "message id", len: 300, max: 256 },
        ),
        (
            Claims { tags: vec!["t".into(); 11], ..typical_open() },
            SealError::TooMany { field: "tags", count: 11, max: 10 },
        ),
        (
            Claims { recipient: Some("a@b\r\nBcc: x".into()), ..typical_open() },
            SealError::ControlCharacter { field: "recipient", value: "a@b\r\nBcc: x".into() },
        ),
    ];
    for (claims, want) in cases {
        assert_eq!(seal(&r, &claims), Err(want));
    }
}

#[test]
fn bad_texts_are_refused_with_their_reason() {
    let r = ring(&["k1"]);
    let good = seal(&r, &typical_open()).unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
    let truncated = URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 3]);
    let v2 = {
        raw[0] = 0x22;
        URL_SAFE_NO_PAD.encode(&raw)
    };
    let cases = [
        (String::new(), OpenError::Empty),
        ("A".repeat(10_000), OpenError::TooLong),
        ("not base64!".to_owned(), OpenError::Encoding),
        (format!("{good}="), OpenError::Encoding),
        ("EQ".to_owned(), OpenError::TooShort),
        (v2, OpenError::Version(2)),
        (URL_SAFE_NO_PAD.encode([0x10u8, 0]), OpenError::KeyId),
        (URL_SAFE_NO_PAD.encode([0x19u8, 0, 0]), OpenError::KeyId),
        (URL_SAFE_NO_PAD.encode([0x12u8; 40]), OpenError::KeyId),
        (truncated, OpenError::Forged),
    ];
    for (text, want) in cases {
        assert_eq!(open(&r, &text, 0), Err(want), "{text:.40}");
    }
}
