//! [`Destination`]: a URL that is safe to send a person to.
//!
//! The only way to get one is [`Destination::parse`], so holding a
//! `Destination` proves the URL is absolute http(s), carries no user info
//! (the `https://bank.example@evil.example` trick) and no control characters
//! (the header-splitting trick). Its text is the URL in canonical form, which
//! is also what a redirect's `Location` carries, byte for byte.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest destination accepted; browsers and mail clients start breaking
/// links a little above this.
pub const MAX_URL_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("destination is empty: expected an absolute http or https URL")]
    Empty,
    #[error("destination is {0} bytes long: expected at most {MAX_URL_LEN}")]
    TooLong(usize),
    #[error(
        "destination {0:?} contains a control character or white space at byte {1}: expected a URL with none"
    )]
    ControlCharacter(String, usize),
    #[error("destination {0:?} is not a URL ({1}): expected an absolute http or https URL")]
    NotAUrl(String, url::ParseError),
    #[error("destination {0:?} has scheme {1:?}: expected http or https")]
    Scheme(String, String),
    #[error("destination {0:?} carries a user name or password: expected none")]
    UserInfo(String),
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Destination(String);

impl Destination {
    pub fn parse(raw: &str) -> Result<Self, DestinationError> {
        if raw.is_empty() {
            return Err(DestinationError::Empty);
        }
        if raw.len() > MAX_URL_LEN {
            return Err(DestinationError::TooLong(raw.len()));
        }
        // The url crate silently drops tabs and new lines; refuse them instead,
        // since they only ever appear in a URL by mistake or by malice.
        if let Some(at) = raw.bytes().position(|b| b <= b' ' || b == 0x7f) {
            return Err(DestinationError::ControlCharacter(raw.to_owned(), at));
        }
        let url = url::Url::parse(raw).map_err(|e| DestinationError::NotAUrl(raw.to_owned(), e))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DestinationError::Scheme(raw.to_owned(), url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DestinationError::UserInfo(raw.to_owned()));
        }
        let canonical = String::from(url);
        if canonical.len() > MAX_URL_LEN {
            return Err(DestinationError::TooLong(canonical.len()));
        }
        Ok(Destination(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Destination {
    type Error = DestinationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Destination::parse(&s)
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.0
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_absolute_web_urls_in_canonical_form() {
        let cases = [
            ("https://example.com/promo?utm=1#top", "https://example.com/promo?utm=1#top"),
            ("http://EXAMPLE.com", "http://example.com/"),
            ("https://例え.jp/パス", "https://xn--r8jz45g.jp/%E3%83%91%E3%82%B9"),
            ("https://example.com:8443/a%20b", "https://example.com:8443/a%20b"),
        ];
        for (raw, canonical) in cases {
            assert_eq!(Destination::parse(raw).unwrap().as_str(), canonical, "{raw}");
        }
    }

    #[test]
    fn refuses_everything_else_with_a_named_reason() {
        use DestinationError as E;
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let cases: Vec<(&str, fn(&DestinationError) -> bool)> = vec![
            ("", |e| matches!(e, E::Empty)),
            (&long, |e| matches!(e, E::TooLong(_))),
            ("https://example.com/\r\nSet-Cookie: a=b", |e| matches!(e, E::ControlCharacter(_, 20))),
            ("https://exa\tmple.com/", |e| matches!(e, E::ControlCharacter(..))),
            ("https://example.com/a b", |e| matches!(e, E::ControlCharacter(..))),
            ("javascript:alert(1)", |e| matches!(e, E::Scheme(_, s) if s == "javascript")),
            ("data:text/html,<script>", |e| matches!(e, E::Scheme(..))),
            ("ftp://example.com/", |e| matches!(e, E::Scheme(..))),
            ("//evil.example/", |e| matches!(e, E::NotAUrl(..))),
            ("/relative/path", |e| matches!(e, E::NotAUrl(..))),
            ("https://bank.example@evil.example/", |e| matches!(e, E::UserInfo(_))),
            ("https://user:pw@example.com/", |e| matches!(e, E::UserInfo(_))),
            ("https://", |e| matches!(e, E::NotAUrl(..))),
        ];
        for (raw, expected) in cases {
            let err = Destination::parse(raw).unwrap_err();
            assert!(expected(&err), "{raw:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn deserializing_revalidates() {
        let ok: Destination = serde_json::from_str("\"https://example.com/\"").unwrap();
        assert_eq!(ok.as_str(), "https://example.com/");
        assert!(serde_json::from_str::<Destination>("\"javascript:x\"").is_err());
    }
}
