//! Sealed tokens: what a tracking URL carries, and the only way to read it.
//!
//! A token is `base64url-nopad(header | nonce | ciphertext | tag)`:
//!
//! | bytes        | field                                              |
//! |--------------|----------------------------------------------------|
//! | 1            | high 4 bits: format version, [`VERSION`] (1); low 4 bits: key id length `n` (1..=8) |
//! | n            | key id, ASCII `[A-Za-z0-9_-]`                      |
//! | 12           | random nonce                                       |
//! | rest − 16    | AES-256-GCM ciphertext of the postcard-encoded [`Claims`] |
//! | 16           | GCM tag                                            |
//!
//! The header (version, key id) is the AEAD's associated data, so it is
//! authenticated too. [postcard](https://postcard.jamesmunns.com/wire-format)
//! is a stable, compact wire format (varints, length-prefixed strings), which
//! keeps a typical open token near 110 characters.
//!
//! Opening is the only way to obtain a [`Token`]: a bit flipped anywhere, a
//! truncated or extended string, an unknown or removed key, or an unknown
//! version is refused with an [`OpenError`] whose [`OpenError::reason`] is a
//! short code fit for metrics.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::destination::Destination;
use crate::keys::{KeyId, KeyRing, MAX_KID_LEN};

pub const VERSION: u8 = 1;
/// Longest token text accepted before any decoding work is done.
pub const MAX_TOKEN_LEN: usize = 6000;
const TAG_LEN: usize = 16;

/// Limits on the sealed fields, so that a token always fits in a URL that
/// mail clients keep whole.
pub mod limits {
    pub const MESSAGE_ID: usize = 256;
    pub const RECIPIENT: usize = 320;
    pub const TENANT: usize = 63;
    pub const TAGS: usize = 10;
    pub const TAG: usize = 64;
    pub const META: usize = 10;
    pub const META_KEY: usize = 40;
    pub const META_VALUE: usize = 256;
}

/// What the URL is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The tracking pixel.
    Open,
    /// A rewritten link.
    Click(Link),
    /// The RFC 8058 one-click unsubscribe link.
    Unsubscribe,
}

impl Target {
    pub fn kind(&self) -> Kind {
        match self {
            Target::Open => Kind::Open,
            Target::Click(_) => Kind::Click,
            Target::Unsubscribe => Kind::Unsubscribe,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Open,
    Click,
    Unsubscribe,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Click => "click",
            Kind::Unsubscribe => "unsubscribe",
        }
    }
}

/// A link in the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Position of the link in the message, from 0.
    pub index: u16,
    pub url: Destination,
    /// A link no person can see; whoever follows it is a machine.
    pub trap: bool,
}

/// Everything a token says, sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub struct Claims {
    pub target: Target,
    /// The tenant (branded tracking domain); empty for the default tenant.
    pub tenant: String,
    pub message_id: String,
    pub recipient: Option<String>,
    /// When the message was sent, in Unix seconds.
    pub sent_at: u64,
    /// After this Unix second the token no longer opens.
    pub expires_at: Option<u64>,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
}

/// The claims in wire order. The fields most tokens leave empty travel in
/// one optional group, so that together they cost one byte when absent.
#[derive(Serialize, Deserialize)]
struct Wire {
    target: Target,
    tenant: String,
    message_id: String,
    recipient: Option<String>,
    #[serde(with = "since_2025")]
    sent_at: u64,
    extras: Option<Extras>,
}

#[derive(Serialize, Deserialize)]
struct Extras {
    expires_at: Option<u64>,
    tags: Vec<String>,
    meta: Vec<(String, String)>,
}

impl From<Claims> for Wire {
    fn from(c: Claims) -> Wire {
        let extras = (c.expires_at.is_some() || !c.tags.is_empty() || !c.meta.is_empty()).then_some(Extras {
            expires_at: c.expires_at,
            tags: c.tags,
            meta: c.meta,
        });
        Wire {
            target: c.target,
            tenant: c.tenant,
            message_id: c.message_id,
            recipient: c.recipient,
            sent_at: c.sent_at,
            extras,
        }
    }
}

impl From<Wire> for Claims {
    fn from(w: Wire) -> Claims {
        let Extras { expires_at, tags, meta } =
            w.extras.unwrap_or(Extras { expires_at: None, tags: Vec::new(), meta: Vec::new() });
        Claims {
            target: w.target,
            tenant: w.tenant,
            message_id: w.message_id,
            recipient: w.recipient,
            sent_at: w.sent_at,
            expires_at,
            tags,
            meta,
        }
    }
}

/// Send times travel as signed seconds since 2025-01-01, which keeps them
/// at four varint bytes until 2033 instead of five.
mod since_2025 {
    use serde::{Deserialize, Deserializer, Serializer};

    const EPOCH: i64 = 1_735_689_600;

    pub fn serialize<S: Serializer>(at: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64((*at as i64).wrapping_sub(EPOCH))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(i64::deserialize(d)?.wrapping_add(EPOCH) as u64)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("message id is empty: expected 1 to {} bytes", limits::MESSAGE_ID)]
    EmptyMessageId,
    #[error("{field} is {len} bytes long: expected at most {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} has {count} entries: expected at most {max}")]
    TooMany { field: &'static str, count: usize, max: usize },
    #[error("{field} {value:?} contains a control character: expected none")]
    ControlCharacter { field: &'static str, value: String },
    #[error("the sealed token would be {0} characters: expected at most {MAX_TOKEN_LEN}")]
    TokenTooLong(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum OpenError {
    #[error("token is empty")]
    Empty,
    #[error("token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("token is not base64url")]
    Encoding,
    #[error("token is too short to hold a header and a tag")]
    TooShort,
    #[error("token has format version {0}: expected {VERSION}")]
    Version(u8),
    #[error("token names a malformed key id")]
    KeyId,
    #[error("token was sealed with a key that is not in the key ring")]
    UnknownKey,
    #[error("token failed authentication")]
    Forged,
    #[error("token payload is malformed")]
    Payload,
    #[error("token has expired")]
    Expired,
}

impl OpenError {
    /// A stable code for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            OpenError::Empty => "empty",
            OpenError::TooLong => "too_long",
            OpenError::Encoding => "encoding",
            OpenError::TooShort => "too_short",
            OpenError::Version(_) => "version",
            OpenError::KeyId => "key_id",
            OpenError::UnknownKey => "unknown_key",
            OpenError::Forged => "forged",
            OpenError::Payload => "payload",
            OpenError::Expired => "expired",
        }
    }
}

/// An opened, authenticated token. There is no other way to build one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    key_id: KeyId,
    claims: Claims,
}

impl Token {
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
    pub fn into_claims(self) -> Claims {
        self.claims
    }
}

impl Claims {
    fn check(&self) -> Result<(), SealError> {
        if self.message_id.is_empty() {
            return Err(SealError::EmptyMessageId);
        }
        let fields = [
            ("message id", self.message_id.as_str(), limits::MESSAGE_ID),
            ("recipient", self.recipient.as_deref().unwrap_or(""), limits::RECIPIENT),
            ("tenant", self.tenant.as_str(), limits::TENANT),
        ];
        let tags = self.tags.iter().map(|t| ("tag", t.as_str(), limits::TAG));
        let meta = self.meta.iter().flat_map(|(k, v)| {
            [("meta key", k.as_str(), limits::META_KEY), ("meta value", v.as_str(), limits::META_VALUE)]
        });
        for (field, value, max) in fields.into_iter().chain(tags).chain(meta) {
            if value.len() > max {
                return Err(SealError::TooLong { field, len: value.len(), max });
            }
            if value.chars().any(char::is_control) {
                return Err(SealError::ControlCharacter { field, value: value.to_owned() });
            }
        }
        for (field, count, max) in
            [("tags", self.tags.len(), limits::TAGS), ("meta", self.meta.len(), limits::META)]
        {
            if count > max {
                return Err(SealError::TooMany { field, count, max });
            }
        }
        Ok(())
    }
}

/// Seals `claims` under the ring's sealing key.
pub fn seal(ring: &KeyRing, claims: &Claims) -> Result<String, SealError> {
    claims.check()?;
    let key = ring.sealing();
    let kid = key.id().as_bytes();
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).expect("the operating system's random source failed");

    let mut buf = Vec::with_capacity(1 + kid.len() + NONCE_LEN + 96 + TAG_LEN);
    buf.push(VERSION << 4 | kid.len() as u8);
    buf.extend_from_slice(kid);
    let header_len = buf.len();
    buf.extend_from_slice(&nonce);
    let body_at = buf.len();
    let plain = postcard::to_allocvec(claims).expect("claims always serialize");
    buf.extend_from_slice(&plain);

    let (head, body) = buf.split_at_mut(body_at);
    let tag = key
        .aead()
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&head[..header_len]), body)
        .expect("payload is far below AES-GCM's length limit");
    buf.extend_from_slice(tag.as_ref());

    let text = URL_SAFE_NO_PAD.encode(&buf);
    if text.len() > MAX_TOKEN_LEN {
        return Err(SealError::TokenTooLong(text.len()));
    }
    Ok(text)
}

/// Opens a token's text, checking its expiry against `now` (Unix seconds).
pub fn open(ring: &KeyRing, text: &str, now: u64) -> Result<Token, OpenError> {
    if text.is_empty() {
        return Err(OpenError::Empty);
    }
    if text.len() > MAX_TOKEN_LEN {
        return Err(OpenError::TooLong);
    }
    let mut buf = URL_SAFE_NO_PAD.decode(text).map_err(|_| OpenError::Encoding)?;
    let (&first, rest) = buf.split_first().ok_or(OpenError::TooShort)?;
    if first >> 4 != VERSION {
        return Err(OpenError::Version(first >> 4));
    }
    let kid_len = (first & 0x0f) as usize;
    if kid_len == 0 || kid_len > MAX_KID_LEN {
        return Err(OpenError::KeyId);
    }
    if rest.len() < kid_len + NONCE_LEN + TAG_LEN {
        return Err(OpenError::TooShort);
    }
    let key_id = KeyId::from_bytes(&rest[..kid_len]).ok_or(OpenError::KeyId)?;
    let key = ring.find(&key_id).ok_or(OpenError::UnknownKey)?;

    let header_len = 1 + kid_len;
    let nonce = Nonce::try_assume_unique_for_key(&buf[header_len..header_len + NONCE_LEN])
        .map_err(|_| OpenError::TooShort)?;
    let (head, body) = buf.split_at_mut(header_len + NONCE_LEN);
    let plain = key
        .aead()
        .open_in_place(nonce, Aad::from(&head[..header_len]), body)
        .map_err(|_| OpenError::Forged)?;
    let claims: Claims = postcard::from_bytes(plain).map_err(|_| OpenError::Payload)?;
    if claims.expires_at.is_some_and(|at| now > at) {
        return Err(OpenError::Expired);
    }
    Ok(Token { key_id, claims })
}

#[cfg(test)]
mod tests;
