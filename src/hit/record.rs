//! The hit record: one hit as the edge hands it to a judge in another
//! process (the hits topic, `judge = "kafka"`). A versioned binary layout,
//! cheap to write on the edge (a few copies, no encryption, no JSON) and
//! read back without copying.
//!
//! | bytes    | field                                                        |
//! |----------|--------------------------------------------------------------|
//! | 1        | layout version, [`VERSION`] (1)                              |
//! | 16       | hit id: the ULID's 128 bits, big-endian                      |
//! | 8        | hit time: Unix nanoseconds, i64 little-endian                |
//! | 1        | method: 0 GET, 1 HEAD, 2 POST                                |
//! | 1        | client address family: 0 none, 4 IPv4, 6 IPv6                |
//! | 0, 4, 16 | client address                                               |
//! | 1        | tenant name length `n` (0 to 63; 0 is the default tenant)    |
//! | n        | tenant name, UTF-8                                           |
//! | 2        | user agent length `m`, u16 little-endian (0: none; at most 512) |
//! | m        | user agent, UTF-8                                            |
//! | 2        | sealed token length `k`, u16 little-endian (1 to 6000)       |
//! | k        | the sealed token text exactly as the edge received it        |
//!
//! Nothing may follow the token. A reader refuses a version it does not
//! know rather than guess at it.
//!
//! Why the sealed token and not its opened claims: the judge opens it
//! again with the tenant's key ring, taking the hit's own time as "now"
//! (so a token that expired after the hit still judges). A [`Token`] can
//! then still only be obtained by opening a sealed string, a record written
//! into the topic by anyone but an edge holding the keys cannot invent a
//! message or a recipient, and the recipient's address stays encrypted in
//! the topic and in the edge's spool. Opening costs the judge about a
//! microsecond; the edge only copies the text it already has.
//!
//! [`Token`]: crate::token::Token

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use time::OffsetDateTime;
use ulid::Ulid;

use super::{Hit, HitId, MAX_USER_AGENT, Method};
use crate::keys::KeyRing;
use crate::token::{self, MAX_TOKEN_LEN, OpenError, limits};

/// The layout written today.
pub const VERSION: u8 = 1;

/// One hit record, borrowing its text from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitRecord<'a> {
    pub id: HitId,
    pub at: OffsetDateTime,
    pub method: Method,
    pub client_ip: Option<IpAddr>,
    /// The tenant whose key ring opened the token at the edge.
    pub tenant: &'a str,
    pub user_agent: Option<&'a str>,
    pub token: &'a str,
}

/// Why bytes are not a hit record. [`BadRecord::kind`] names the kind for
/// metrics and for logging each kind once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("empty hit record")]
    Empty,
    #[error("hit record layout version {0}: this waymark reads version {VERSION}")]
    Version(u8),
    #[error("hit record cut short in its {0}")]
    Truncated(&'static str),
    #[error("hit record has {0} bytes after its token")]
    Trailing(usize),
    #[error("hit record has method {0}: expected 0 (GET), 1 (HEAD) or 2 (POST)")]
    Method(u8),
    #[error("hit record has address family {0}: expected 0, 4 or 6")]
    Family(u8),
    #[error("hit record's {0} is too long")]
    TooLong(&'static str),
    #[error("hit record's {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("hit record's time is out of range")]
    Time,
}

impl BadRecord {
    pub fn kind(self) -> &'static str {
        match self {
            BadRecord::Empty => "empty",
            BadRecord::Version(_) => "version",
            BadRecord::Truncated(_) => "truncated",
            BadRecord::Trailing(_) => "trailing",
            BadRecord::Method(_) => "method",
            BadRecord::Family(_) => "family",
            BadRecord::TooLong(_) => "too_long",
            BadRecord::NotUtf8(_) => "not_utf8",
            BadRecord::Time => "time",
        }
    }
}

impl<'a> HitRecord<'a> {
    /// The record of a hit whose token arrived as `sealed`.
    pub fn of(hit: &'a Hit, sealed: &'a str) -> HitRecord<'a> {
        HitRecord {
            id: hit.id,
            at: hit.at,
            method: hit.method,
            client_ip: hit.client_ip,
            tenant: &hit.token.claims().tenant,
            user_agent: hit.user_agent.as_deref(),
            token: sealed,
        }
    }

    /// Appends the record to `out`. Fields longer than the layout allows
    /// (which the edge never produces) are cut.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ua = self.user_agent.unwrap_or("");
        out.reserve(1 + 16 + 8 + 2 + 16 + 1 + self.tenant.len() + 4 + ua.len() + self.token.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id.0.to_bytes());
        let nanos = i64::try_from(self.at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        out.extend_from_slice(&nanos.to_le_bytes());
        out.push(match self.method {
            Method::Get => 0,
            Method::Head => 1,
            Method::Post => 2,
        });
        match self.client_ip {
            None => out.push(0),
            Some(IpAddr::V4(ip)) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        let tenant = cut(self.tenant, limits::TENANT);
        out.push(tenant.len() as u8);
        out.extend_from_slice(tenant.as_bytes());
        for (text, max) in [(ua, MAX_USER_AGENT), (self.token, MAX_TOKEN_LEN)] {
            let text = cut(text, max);
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }

    pub fn decode(bytes: &'a [u8]) -> Result<HitRecord<'a>, BadRecord> {
        let mut r = Reader(bytes);
        let version = r.take(1, "version").map_err(|_| BadRecord::Empty)?[0];
        if version != VERSION {
            return Err(BadRecord::Version(version));
        }
        let id = HitId(Ulid::from_bytes(r.array::<16>("hit id")?));
        let nanos = i64::from_le_bytes(r.array::<8>("time")?);
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|_| BadRecord::Time)?;
        let method = match r.array::<1>("method")?[0] {
            0 => Method::Get,
            1 => Method::Head,
            2 => Method::Post,
            m => return Err(BadRecord::Method(m)),
        };
        let client_ip = match r.array::<1>("address family")?[0] {
            0 => None,
            4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>("address")?))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>("address")?))),
            f => return Err(BadRecord::Family(f)),
        };
        let tenant_len = usize::from(r.array::<1>("tenant")?[0]);
        let tenant = r.text(tenant_len, limits::TENANT, "tenant")?;
        let ua_len = usize::from(u16::from_le_bytes(r.array::<2>("user agent")?));
        let user_agent = r.text(ua_len, MAX_USER_AGENT, "user agent")?;
        let token_len = usize::from(u16::from_le_bytes(r.array::<2>("token")?));
        if token_len == 0 {
            return Err(BadRecord::Truncated("token"));
        }
        let token = r.text(token_len, MAX_TOKEN_LEN, "token")?;
        if !r.0.is_empty() {
            return Err(BadRecord::Trailing(r.0.len()));
        }
        let user_agent = (!user_agent.is_empty()).then_some(user_agent);
        Ok(HitRecord { id, at, method, client_ip, tenant, user_agent, token })
    }

    /// Opens the token with the tenant's ring at the hit's own time and
    /// gives back the hit as the edge saw it.
    pub fn open(&self, keys: &KeyRing) -> Result<Hit, OpenError> {
        let now = u64::try_from(self.at.unix_timestamp()).unwrap_or(0);
        let token = token::open(keys, self.token, now)?;
        Ok(Hit {
            id: self.id,
            token,
            at: self.at,
            method: self.method,
            client_ip: self.client_ip,
            user_agent: self.user_agent.map(str::to_owned),
            sealed: None,
        })
    }
}

/// The longest prefix of `text` of at most `max` bytes, cut at a character.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BadRecord> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(BadRecord::Truncated(field))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BadRecord> {
        Ok(self.take(N, field)?.try_into().expect("took N bytes"))
    }

    fn text(&mut self, len: usize, max: usize, field: &'static str) -> Result<&'a str, BadRecord> {
        if len > max {
            return Err(BadRecord::TooLong(field));
        }
        std::str::from_utf8(self.take(len, field)?).map_err(|_| BadRecord::NotUtf8(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Key, KeyId};
    use crate::token::{Claims, Target};

    fn ring() -> KeyRing {
        KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap()
    }

    fn record(token: &str) -> HitRecord<'_> {
        HitRecord {
            id: HitId(Ulid::from_string("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B").unwrap()),
            at: OffsetDateTime::from_unix_timestamp_nanos(1_779_000_123_456_789_012).unwrap(),
            method: Method::Head,
            client_ip: Some("2001:db8::7".parse().unwrap()),
            tenant: "acme",
            user_agent: Some("Mozilla/5.0 (é)"),
            token,
        }
    }

    fn bytes(r: &HitRecord) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out);
        out
    }

    #[test]
    fn records_read_back_as_written() {
        let full = record("AbC-_9");
        let v4 =
            HitRecord { client_ip: Some("192.0.2.1".parse().unwrap()), method: Method::Post, ..full.clone() };
        let bare =
            HitRecord { client_ip: None, user_agent: None, tenant: "", method: Method::Get, ..full.clone() };
        for r in [full, v4, bare] {
            assert_eq!(HitRecord::decode(&bytes(&r)), Ok(r.clone()));
        }
        // Written down, so a change to the layout is a deliberate one.
        let head = bytes(&record("t"));
        assert_eq!(head[0], VERSION);
        assert_eq!(head.len(), 1 + 16 + 8 + 1 + 1 + 16 + 1 + 4 + 2 + 16 + 2 + 1);
    }

    #[test]
    fn bad_records_are_refused_with_their_kind() {
        let good = bytes(&record("tok"));
        let with = |at: usize, b: u8| {
            let mut v = good.clone();
            v[at] = b;
            v
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "empty"),
            ("a future version", with(0, 2), "version"),
            ("version zero", with(0, 0), "version"),
            ("cut in the hit id", good[..9].to_vec(), "truncated"),
            ("cut in the time", good[..20].to_vec(), "truncated"),
            ("cut in the address", good[..30].to_vec(), "truncated"),
            ("cut in the token", good[..good.len() - 1].to_vec(), "truncated"),
            ("a byte after the token", [&good[..], b"x"].concat(), "trailing"),
            ("method 7", with(25, 7), "method"),
            ("family 5", with(26, 5), "family"),
            ("tenant longer than 63", with(43, 64), "too_long"),
            ("user agent not UTF-8", with(50, 0xFF), "not_utf8"),
            ("an empty token", [&good[..good.len() - 5], &[0, 0][..]].concat(), "truncated"),
            ("garbage", b"GET /o/abc HTTP/1.1\r\n".to_vec(), "version"),
            ("a spool event record", [&[0xFF][..], &good[1..]].concat(), "version"),
        ];
        for (name, input, kind) in cases {
            match HitRecord::decode(&input) {
                Err(e) => assert_eq!(e.kind(), kind, "{name}: {e}"),
                Ok(r) => panic!("{name}: read as {r:?}"),
            }
        }
    }

    #[test]
    fn the_judge_opens_the_token_at_the_hits_own_time() {
        let keys = ring();
        let claims = Claims {
            target: Target::Open,
            tenant: "acme".into(),
            message_id: "m-1".into(),
            recipient: Some("a@example.com".into()),
            sent_at: 1_779_000_000,
            expires_at: Some(1_779_000_200),
            tags: vec![],
            meta: vec![],
        };
        let sealed = token::seal(&keys, &claims).unwrap();
        let r = record(&sealed);
        let hit = HitRecord::decode(&bytes(&r)).unwrap().open(&keys).unwrap();
        assert_eq!(hit.token.claims(), &claims, "opened although expired by now");
        assert_eq!((hit.id, hit.at, hit.method, hit.client_ip), (r.id, r.at, r.method, r.client_ip));
        assert_eq!(hit.user_agent.as_deref(), r.user_agent);
        let late = HitRecord { at: OffsetDateTime::from_unix_timestamp(1_779_000_201).unwrap(), ..r.clone() };
        assert_eq!(late.open(&keys).unwrap_err(), OpenError::Expired);
        assert_eq!(r.open(&ring()).unwrap_err(), OpenError::Forged);
    }
}
