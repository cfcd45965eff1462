//! [`Event`]: what consumers read, one JSON object per hit, and its encoding.
//!
//! The envelope follows the common shape of email providers' webhooks
//! (`event_id`, `type`, `created_at`, `data.object`) and is described by
//! `schema/event.schema.json`, which the tests hold every event to.

use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use ulid::Ulid;

use crate::classify::behaviour::Withdrawn;
use crate::classify::networks::{Asn, Geo};
use crate::classify::{Device, Judgement, Reason, Verdict};
use crate::hit::Hit;
use crate::token::{Claims, Kind, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "email.opened")]
    Opened,
    #[serde(rename = "email.clicked")]
    Clicked,
    #[serde(rename = "email.unsubscribed")]
    Unsubscribed,
    /// An earlier event no longer counts: evidence of a scanner came later.
    #[serde(rename = "email.reclassified")]
    Reclassified,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Opened => "email.opened",
            EventType::Clicked => "email.clicked",
            EventType::Unsubscribed => "email.unsubscribed",
            EventType::Reclassified => "email.reclassified",
        }
    }

    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Open => EventType::Opened,
            Kind::Click => EventType::Clicked,
            Kind::Unsubscribe => EventType::Unsubscribed,
        }
    }
}

/// One event, borrowing everything it says from the hit and its judgement:
/// building it costs no copies, and it is encoded at once.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub event_id: Prefixed,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: OffsetDateTime,
    pub data: Data<'a>,
}

#[derive(Debug, Serialize)]
pub struct Data<'a> {
    pub object: Object<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Object<'a> {
    Hit(HitObject<'a>),
    Reclassification(Reclassification<'a>),
}

impl<'a> Object<'a> {
    pub fn email(&self) -> &Email<'a> {
        match self {
            Object::Hit(h) => &h.email,
            Object::Reclassification(r) => &r.email,
        }
    }
}

/// An open, click or unsubscribe.
#[derive(Debug, Serialize)]
pub struct HitObject<'a> {
    pub id: Prefixed,
    pub object: &'static str,
    pub email: Email<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo<'a>>,
    pub ip_address: Option<String>,
    pub user_agent: Option<&'a str>,
    pub counted: bool,
    pub verdict: Verdict,
    pub reasons: &'a [Reason],
    pub device: Option<&'a Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<&'a Geo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'a Asn>,
    pub dedup_key: DedupKey,
    pub rules_version: &'a str,
}

/// Withdraws an earlier event from the counts.
#[derive(Debug, Serialize)]
pub struct Reclassification<'a> {
    pub id: Prefixed,
    pub object: &'static str,
    pub email: Email<'a>,
    pub original_event_id: Prefixed,
    #[serde(rename = "original_type")]
    pub original_kind: EventType,
    pub ip_address: Option<String>,
    pub counted: bool,
    pub verdict: Verdict,
    pub reasons: &'a [Reason],
    pub rules_version: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Email<'a> {
    pub id: &'a str,
    pub recipient: Option<&'a str>,
    pub tenant: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub sent_at: OffsetDateTime,
    pub tags: &'a [String],
    #[serde(serialize_with = "sorted_map")]
    pub meta: &'a [(String, String)],
}

#[derive(Debug, Serialize)]
pub struct LinkInfo<'a> {
    pub index: u16,
    pub url: &'a str,
}

/// An id with a fixed prefix, such as `evt_01K…`: written out when
/// serialized, never allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixed {
    pub prefix: &'static str,
    pub id: Ulid,
}

impl Prefixed {
    pub fn event(id: Ulid) -> Prefixed {
        Prefixed { prefix: "evt_", id }
    }

    /// The id as text, written into `buf`: the longest prefix,
    /// `unsubscribe_`, and a ULID fit.
    pub fn as_str<'b>(&self, buf: &'b mut [u8; 40]) -> &'b str {
        let n = self.prefix.len();
        buf[..n].copy_from_slice(self.prefix.as_bytes());
        let mut id = [0; ulid::ULID_LEN];
        buf[n..n + ulid::ULID_LEN].copy_from_slice(self.id.array_to_str(&mut id).as_bytes());
        std::str::from_utf8(&buf[..n + ulid::ULID_LEN]).expect("ASCII")
    }
}

impl std::fmt::Display for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str(&mut [0; 40]))
    }
}

impl Serialize for Prefixed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str(&mut [0; 40]))
    }
}

/// `dk_` and 20 hex digits; see [`dedup_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey([u8; 23]);

impl DedupKey {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl Serialize for DedupKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn rfc3339<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(format_rfc3339(*at).as_str())
}

/// Meta in key order whatever order the sender gave, the last value of a
/// repeated key winning (as a map built from the pairs would have it).
fn sorted_map<S: Serializer>(meta: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut sorted: smallvec::SmallVec<[&(String, String); 8]> = meta.iter().rev().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut map = s.serialize_map(Some(sorted.len()))?;
    for (k, v) in sorted {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// A formatted time: `2026-02-11T22:14:33.481927Z`, on the stack.
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

/// RFC 3339 in UTC with microseconds, written by hand: the general
/// formatter in `time` was a tenth of the pipeline's cost. Years outside
/// 0000-9999 are clamped, as no hit or send time can carry one.
pub fn format_rfc3339(at: OffsetDateTime) -> Rfc3339 {
    let utc = at.to_offset(time::UtcOffset::UTC);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, utc.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(utc.month()) as u32);
    put(8, 2, utc.day() as u32);
    put(11, 2, utc.hour() as u32);
    put(14, 2, utc.minute() as u32);
    put(17, 2, utc.second() as u32);
    put(20, 6, utc.microsecond());
    Rfc3339(out)
}

/// Formats a time the way events do, for logs and tools.
pub fn format_time(at: OffsetDateTime) -> String {
    format_rfc3339(at).as_str().to_owned()
}

impl<'a> Event<'a> {
    /// The event a judged hit produces.
    pub fn from_hit(hit: &'a Hit, id: Ulid, judgement: &'a Judgement) -> Event<'a> {
        let claims = hit.token.claims();
        let kind = claims.target.kind();
        let link = match &claims.target {
            Target::Click(link) => Some(LinkInfo { index: link.index, url: link.url.as_str() }),
            _ => None,
        };
        Event::hit(hit, id, kind, link, judgement, judgement.counted, &judgement.reasons)
    }

    /// The counted open a first counted click stands in for, when the
    /// open itself never reached the pixel (images off, or a cache warmed
    /// by a scanner).
    pub fn backfill(hit: &'a Hit, id: Ulid, click: &'a Judgement) -> Event<'a> {
        static BACKFILL: [Reason; 1] = [Reason::BACKFILL];
        Event::hit(hit, id, Kind::Open, None, click, true, &BACKFILL)
    }

    /// Withdraws `withdrawn`, published earlier as counted, because this
    /// hit showed its client to be a scanner.
    pub fn reclassified(
        hit: &'a Hit,
        id: Ulid,
        withdrawn: &Withdrawn,
        judgement: &'a Judgement,
    ) -> Event<'a> {
        Event {
            event_id: Prefixed::event(id),
            kind: EventType::Reclassified,
            created_at: hit.at,
            data: Data {
                object: Object::Reclassification(Reclassification {
                    id: Prefixed { prefix: "reclass_", id },
                    object: "reclassification",
                    email: Email::of(hit.token.claims()),
                    original_event_id: Prefixed::event(withdrawn.event_id),
                    original_kind: EventType::of(withdrawn.kind),
                    ip_address: hit.client_ip.map(|ip| ip.to_string()),
                    counted: false,
                    verdict: judgement.verdict,
                    reasons: &judgement.reasons,
                    rules_version: &judgement.rules_version,
                }),
            },
        }
    }

    fn hit(
        hit: &'a Hit,
        id: Ulid,
        kind: Kind,
        link: Option<LinkInfo<'a>>,
        judgement: &'a Judgement,
        counted: bool,
        reasons: &'a [Reason],
    ) -> Event<'a> {
        let claims = hit.token.claims();
        let at_ms = (hit.at.unix_timestamp_nanos() / 1_000_000) as i64;
        Event {
            event_id: Prefixed::event(id),
            kind: EventType::of(kind),
            created_at: hit.at,
            data: Data {
                object: Object::Hit(HitObject {
                    id: Prefixed { prefix: object_prefix(kind), id },
                    object: kind.as_str(),
                    email: Email::of(claims),
                    dedup_key: dedup_key(claims, kind, link.as_ref().map(|l| l.index), at_ms, judgement),
                    link,
                    ip_address: hit.client_ip.map(|ip| ip.to_string()),
                    user_agent: hit.user_agent.as_deref(),
                    counted,
                    verdict: judgement.verdict,
                    reasons,
                    device: judgement.device.as_ref(),
                    geo: judgement.geo.as_ref(),
                    network: judgement.asn.as_ref(),
                    rules_version: &judgement.rules_version,
                }),
            },
        }
    }

    /// The JSON and the routing facts a sink needs. The JSON is written
    /// into `json` (cleared first): the pipeline reuses one buffer for every
    /// event instead of allocating each.
    pub fn encode<'e>(&'e self, json: &'e mut Vec<u8>) -> EncodedEvent<'e> {
        json.clear();
        serde_json::to_writer(&mut *json, self).expect("events always serialize");
        let email = self.data.object.email();
        EncodedEvent {
            event_id: self.event_id,
            kind: self.kind,
            message_id: email.id,
            tenant: email.tenant,
            json,
        }
    }
}

fn object_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Open => "open_",
        Kind::Click => "click_",
        Kind::Unsubscribe => "unsubscribe_",
    }
}

impl<'a> Email<'a> {
    fn of(claims: &'a Claims) -> Email<'a> {
        Email {
            id: &claims.message_id,
            recipient: claims.recipient.as_deref(),
            tenant: &claims.tenant,
            sent_at: OffsetDateTime::from_unix_timestamp(claims.sent_at as i64)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            tags: &claims.tags,
            meta: &claims.meta,
        }
    }
}

/// The same key for every event that describes the same engagement: one
/// message, kind and link within one repeat-window bucket (unsubscribes:
/// ever). Replicas that each saw a copy of a hit agree on it, so consumers
/// count at most one counted event per key.
fn dedup_key(claims: &Claims, kind: Kind, link: Option<u16>, at_ms: i64, judgement: &Judgement) -> DedupKey {
    let bucket = match (kind, judgement.repeat_window_ms) {
        (Kind::Unsubscribe, _) | (_, 0) => 0,
        (_, window) => at_ms.div_euclid(window),
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in
        [claims.tenant.as_bytes(), b"\0", claims.message_id.as_bytes(), b"\0", kind.as_str().as_bytes()]
    {
        ctx.update(part);
    }
    ctx.update(&link.map_or(-1i32, i32::from).to_be_bytes());
    ctx.update(&bucket.to_be_bytes());
    let digest = ctx.finish();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = *b"dk_00000000000000000000";
    for (i, b) in digest.as_ref()[..10].iter().enumerate() {
        key[3 + 2 * i] = HEX[usize::from(b >> 4)];
        key[4 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    DedupKey(key)
}

/// An event ready for a sink: its JSON, plus what Kafka keys and headers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent<'e> {
    pub event_id: Prefixed,
    pub kind: EventType,
    /// The record key: one message's events stay in order on one partition.
    pub message_id: &'e str,
    pub tenant: &'e str,
    pub json: &'e [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, format_description};

    #[test]
    fn hand_written_rfc3339_agrees_with_the_time_crate() {
        let reference =
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
        for at in [
            datetime!(2026-02-11 22:14:33.481927 UTC),
            datetime!(2024-02-29 00:00:00 UTC),
            datetime!(1999-12-31 23:59:59.999999999 UTC),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(2026-11-25 01:30:00.000001 +02:00),
            datetime!(0001-01-01 00:00:00.5 UTC),
        ] {
            let utc = at.to_offset(time::UtcOffset::UTC);
            assert_eq!(format_rfc3339(at).as_str(), utc.format(reference).unwrap(), "{at}");
        }
    }

    #[test]
    fn prefixed_ids_read_the_same_written_and_serialized() {
        let id = Ulid::from_string("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B").unwrap();
        let p = Prefixed { prefix: "reclass_", id };
        assert_eq!(p.to_string(), "reclass_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"reclass_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B\"");
        let longest = Prefixed { prefix: object_prefix(Kind::Unsubscribe), id };
        assert_eq!(serde_json::to_string(&longest).unwrap(), format!("\"{longest}\""));
    }

    #[test]
    fn meta_is_written_in_key_order_once_per_key_last_value_winning() {
        #[derive(Serialize)]
        struct M<'a>(#[serde(serialize_with = "sorted_map")] &'a [(String, String)]);
        let meta: Vec<(String, String)> = [("z", "1"), ("a", "2"), ("m", "3"), ("a", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(serde_json::to_string(&M(&meta)).unwrap(), r#"{"a":"4","m":"3","z":"1"}"#);
        assert_eq!(serde_json::to_string(&M(&[])).unwrap(), "{}");
    }
}
