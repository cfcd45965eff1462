//! [`Event`]: what consumers read, one JSON object per hit, and its encoding.
//!
//! The envelope follows the common shape of email providers' webhooks
//! (`event_id`, `type`, `created_at`, `data.object`) and is described by
//! `schema/event.schema.json`, which the tests hold every event to.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use ulid::Ulid;

use crate::classify::behaviour::Withdrawn;
use crate::classify::networks::{Asn, Geo};
use crate::classify::{Device, Judgement, Reason, Verdict};
use crate::hit::Hit;
use crate::token::{Claims, Kind, Target};

/// RFC 3339 in UTC with microseconds: `2026-02-11T22:14:33.481927Z`.
const RFC3339_MICROS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

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

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: OffsetDateTime,
    pub data: Data,
}

#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub object: Object,
}

// Events are built and encoded at once, never stored in bulk: the size
// difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Object {
    Hit(HitObject),
    Reclassification(Reclassification),
}

impl Object {
    pub fn email(&self) -> &Email {
        match self {
            Object::Hit(h) => &h.email,
            Object::Reclassification(r) => &r.email,
        }
    }
}

/// An open, click or unsubscribe.
#[derive(Debug, Clone, Serialize)]
pub struct HitObject {
    pub id: String,
    pub object: &'static str,
    pub email: Email,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub counted: bool,
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    pub device: Option<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<Geo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Asn>,
    pub dedup_key: String,
    pub rules_version: String,
}

/// Withdraws an earlier event from the counts.
#[derive(Debug, Clone, Serialize)]
pub struct Reclassification {
    pub id: String,
    pub object: &'static str,
    pub email: Email,
    pub original_event_id: String,
    #[serde(rename = "original_type")]
    pub original_kind: EventType,
    pub ip_address: Option<String>,
    pub counted: bool,
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    pub rules_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Email {
    pub id: String,
    pub recipient: Option<String>,
    pub tenant: String,
    #[serde(serialize_with = "rfc3339")]
    pub sent_at: OffsetDateTime,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    pub index: u16,
    pub url: String,
}

fn rfc3339<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let utc = at.to_offset(time::UtcOffset::UTC);
    s.serialize_str(&utc.format(RFC3339_MICROS).map_err(serde::ser::Error::custom)?)
}

/// Formats a time the way events do, for logs and tools.
pub fn format_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC).format(RFC3339_MICROS).unwrap_or_default()
}

impl Event {
    /// The event a judged hit produces.
    pub fn from_hit(hit: &Hit, id: Ulid, judgement: &Judgement) -> Event {
        let claims = hit.token.claims();
        let kind = claims.target.kind();
        let link = match &claims.target {
            Target::Click(link) => Some(LinkInfo { index: link.index, url: link.url.to_string() }),
            _ => None,
        };
        Event::hit(hit, id, kind, link, judgement, judgement.counted, judgement.reasons.clone())
    }

    /// The counted open a first counted click stands in for, when the
    /// open itself never reached the pixel (images off, or a cache warmed
    /// by a scanner).
    pub fn backfill(hit: &Hit, id: Ulid, click: &Judgement) -> Event {
        Event::hit(hit, id, Kind::Open, None, click, true, vec![Reason::BACKFILL])
    }

    /// Withdraws `withdrawn`, published earlier as counted, because this
    /// hit showed its client to be a scanner.
    pub fn reclassified(hit: &Hit, id: Ulid, withdrawn: &Withdrawn, judgement: &Judgement) -> Event {
        Event {
            event_id: format!("evt_{id}"),
            kind: EventType::Reclassified,
            created_at: hit.at,
            data: Data {
                object: Object::Reclassification(Reclassification {
                    id: format!("reclass_{id}"),
                    object: "reclassification",
                    email: Email::of(hit.token.claims()),
                    original_event_id: format!("evt_{}", withdrawn.event_id),
                    original_kind: EventType::of(withdrawn.kind),
                    ip_address: hit.client_ip.map(|ip| ip.to_string()),
                    counted: false,
                    verdict: judgement.verdict,
                    reasons: judgement.reasons.clone(),
                    rules_version: judgement.rules_version.to_string(),
                }),
            },
        }
    }

    fn hit(
        hit: &Hit,
        id: Ulid,
        kind: Kind,
        link: Option<LinkInfo>,
        judgement: &Judgement,
        counted: bool,
        reasons: Vec<Reason>,
    ) -> Event {
        let claims = hit.token.claims();
        let at_ms = (hit.at.unix_timestamp_nanos() / 1_000_000) as i64;
        Event {
            event_id: format!("evt_{id}"),
            kind: EventType::of(kind),
            created_at: hit.at,
            data: Data {
                object: Object::Hit(HitObject {
                    id: format!("{}_{id}", kind.as_str()),
                    object: kind.as_str(),
                    email: Email::of(claims),
                    dedup_key: dedup_key(claims, kind, link.as_ref().map(|l| l.index), at_ms, judgement),
                    link,
                    ip_address: hit.client_ip.map(|ip| ip.to_string()),
                    user_agent: hit.user_agent.clone(),
                    counted,
                    verdict: judgement.verdict,
                    reasons,
                    device: judgement.device.clone(),
                    geo: judgement.geo.clone(),
                    network: judgement.asn.clone(),
                    rules_version: judgement.rules_version.to_string(),
                }),
            },
        }
    }

    /// The JSON and the routing facts a sink needs, computed once.
    pub fn encode(&self) -> EncodedEvent {
        let json = serde_json::to_vec(self).expect("events always serialize");
        EncodedEvent {
            event_id: self.event_id.clone(),
            kind: self.kind,
            message_id: self.data.object.email().id.clone(),
            tenant: self.data.object.email().tenant.clone(),
            json: Bytes::from(json),
        }
    }
}

impl Email {
    fn of(claims: &Claims) -> Email {
        Email {
            id: claims.message_id.clone(),
            recipient: claims.recipient.clone(),
            tenant: claims.tenant.clone(),
            sent_at: OffsetDateTime::from_unix_timestamp(claims.sent_at as i64)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            tags: claims.tags.clone(),
            meta: claims.meta.iter().cloned().collect(),
        }
    }
}

/// The same key for every event that describes the same engagement: one
/// message, kind and link within one repeat-window bucket (unsubscribes:
/// ever). Replicas that each saw a copy of a hit agree on it, so consumers
/// count at most one counted event per key.
fn dedup_key(claims: &Claims, kind: Kind, link: Option<u16>, at_ms: i64, judgement: &Judgement) -> String {
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
    let mut key = String::with_capacity(3 + 20);
    key.push_str("dk_");
    for b in &digest.as_ref()[..10] {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// An event ready for a sink: its JSON, plus what Kafka keys and headers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub event_id: String,
    pub kind: EventType,
    /// The record key: one message's events stay in order on one partition.
    pub message_id: String,
    pub tenant: String,
    pub json: Bytes,
}
