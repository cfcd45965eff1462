//! Key material for sealing tokens: the [`KeyId`], one [`Key`], and the
//! [`KeyRing`] that seals with its first key and opens with any of them.
//!
//! Rotation works by prepending: `k2:…,k1:…` seals new mail under `k2` while
//! mail already out there under `k1` keeps opening. Removing `k1` retires it.
//! Secrets never leave this module in readable form: `Debug` prints only ids.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of secret behind every key.
pub const SECRET_LEN: usize = 32;
/// Longest key id, in bytes; it travels in clear in every token.
pub const MAX_KID_LEN: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key id {0:?} is invalid: expected 1 to 8 characters of A-Z, a-z, 0-9, '-' or '_'")]
    BadId(String),
    #[error("a key entry of {0} characters is not of the form KID:SECRET (not shown: it may hold a secret)")]
    BadEntry(usize),
    #[error(
        "the key id before ':' in an entry is invalid ({0} characters; expected 1 to 8 of A-Z, a-z, 0-9, '-' or '_'); not shown: it may be a secret written the wrong way round"
    )]
    BadEntryId(usize),
    #[error("the secret of key {kid:?} is not base64url of 32 bytes (got {got})")]
    BadSecret { kid: String, got: String },
    #[error("key id {0:?} appears twice in the key ring")]
    Duplicate(String),
    #[error("the key ring is empty: expected at least one KID:SECRET")]
    Empty,
}

/// The name of a key, carried in clear inside each token so the right key
/// can be found without trial decryption.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    bytes: [u8; MAX_KID_LEN],
    len: u8,
}

impl KeyId {
    pub fn new(id: &str) -> Result<Self, KeyError> {
        Self::from_bytes(id.as_bytes()).ok_or_else(|| KeyError::BadId(id.to_owned()))
    }

    /// Accepts exactly the bytes [`KeyId::new`] accepts; `None` otherwise.
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_KID_LEN
            && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        ok.then(|| {
            let mut bytes = [0; MAX_KID_LEN];
            bytes[..raw.len()].copy_from_slice(raw);
            KeyId { bytes, len: raw.len() as u8 }
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever admitted, so this cannot fail.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key: its id and the AEAD key derived from its secret.
pub struct Key {
    id: KeyId,
    aead: LessSafeKey,
}

impl Key {
    /// Derives the token key with HKDF rather than using the secret as is,
    /// so the same secret can later key other purposes (say, IP hashing)
    /// without two uses ever sharing key bytes.
    pub fn from_secret(id: KeyId, secret: &[u8; SECRET_LEN]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"waymark");
        let prk = salt.extract(secret);
        let okm = prk
            .expand(&[b"token-v1"], &AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF output length");
        let aead = LessSafeKey::new(UnboundKey::from(okm));
        Key { id, aead }
    }

    /// Parses one `KID:SECRET` entry.
    pub fn parse(entry: &str) -> Result<Self, KeyError> {
        let entry = entry.trim();
        let (kid, secret) = entry.split_once(':').ok_or_else(|| KeyError::BadEntry(entry.chars().count()))?;
        let id = KeyId::new(kid).map_err(|_| KeyError::BadEntryId(kid.chars().count()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(secret.trim_end_matches('='))
            .ok()
            .and_then(|b| <[u8; SECRET_LEN]>::try_from(b).ok())
            .ok_or_else(|| KeyError::BadSecret {
                kid: kid.to_owned(),
                got: format!("{} characters", secret.len()),
            })?;
        Ok(Key::from_secret(id, &bytes))
    }

    /// Makes a new random key, printed by `waymark keygen` as `KID:SECRET`.
    pub fn generate_entry(id: &KeyId) -> String {
        let mut secret = [0u8; SECRET_LEN];
        SystemRandom::new().fill(&mut secret).expect("the operating system's random source failed");
        format!("{}:{}", id, URL_SAFE_NO_PAD.encode(secret))
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, <secret>)", self.id)
    }
}

/// An ordered, non-empty set of keys: the first seals, every one opens.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    pub fn new(keys: Vec<Key>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.id == k.id) {
                return Err(KeyError::Duplicate(k.id.to_string()));
            }
        }
        Ok(KeyRing { keys })
    }

    /// Parses `k2:SECRET,k1:SECRET` (commas or new lines between entries).
    pub fn parse(list: &str) -> Result<Self, KeyError> {
        let keys = list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .map(Key::parse)
            .collect::<Result<Vec<_>, _>>()?;
        KeyRing::new(keys)
    }

    pub fn sealing(&self) -> &Key {
        &self.keys[0]
    }

    pub fn find(&self, id: &KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| &k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_follow_the_documented_alphabet() {
        for good in ["k1", "2026-11", "a_b", "ABCDEFGH"] {
            assert!(KeyId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "k 1", "k:1", "ABCDEFGHI", "ключ", "k1\n"] {
            assert_eq!(KeyId::new(bad), Err(KeyError::BadId(bad.into())), "{bad:?}");
        }
    }

    #[test]
    fn generated_entries_parse_back() {
        let entry = Key::generate_entry(&KeyId::new("k9").unwrap());
        let key = Key::parse(&entry).unwrap();
        assert_eq!(key.id().as_str(), "k9");
        assert_eq!(entry.len(), "k9:".len() + 43);
    }

    #[test]
    fn ring_errors_name_the_bad_entry_without_the_secret() {
        let e = KeyRing::parse("k1:short").unwrap_err();
        assert_eq!(e, KeyError::BadSecret { kid: "k1".into(), got: "5 characters".into() });
        let e = KeyRing::parse("nocolonhere-and-a-long-secret-value").unwrap_err();
        assert_eq!(e, KeyError::BadEntry(35));
        // A secret pasted before the id (issue 18) is not shown either.
        let secret = "9J0fQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4";
        for entry in [format!("{secret}:k1"), format!("k1={secret}")] {
            let e = KeyRing::parse(&entry).unwrap_err();
            assert!(!e.to_string().contains("9J0f"), "{e}");
        }
        assert_eq!(KeyRing::parse(" , ").unwrap_err(), KeyError::Empty);
        let k = Key::generate_entry(&KeyId::new("k1").unwrap());
        assert_eq!(KeyRing::parse(&format!("{k},{k}")).unwrap_err(), KeyError::Duplicate("k1".into()));
    }

    #[test]
    fn debug_output_never_shows_secret_bytes() {
        let entry = Key::generate_entry(&KeyId::new("k1").unwrap());
        let ring = KeyRing::parse(&entry).unwrap();
        let shown = format!("{ring:?}");
        let secret = entry.split_once(':').unwrap().1;
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("k1"));
    }
}
