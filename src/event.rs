//! [`Event`]: what consumers read, one JSON object per hit, and its encoding.
//!
//! The envelope follows the common shape of email providers' webhooks
//! (`event_id`, `type`, `created_at`, `data.object`) and is described by
//! `schema/event.schema.json`, which the tests hold every event to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use ulid::Ulid;

use crate::classify::{Judgement, Reason, Verdict};
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
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Opened => "email.opened",
            EventType::Clicked => "email.clicked",
            EventType::Unsubscribed => "email.unsubscribed",
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

#[derive(Debug, Clone, Serialize)]
pub struct Object {
    pub id: String,
    pub object: &'static str,
    pub email: Email,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
    pub ip_address: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub counted: bool,
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
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
    pub fn from_hit(hit: &Hit, judgement: Judgement) -> Event {
        let claims = hit.token.claims();
        let kind = claims.target.kind();
        let id = Ulid::from_datetime(hit.at.into());
        Event {
            event_id: format!("evt_{id}"),
            kind: EventType::of(kind),
            created_at: hit.at,
            data: Data {
                object: Object {
                    id: format!("{}_{id}", kind.as_str()),
                    object: kind.as_str(),
                    email: Email::of(claims),
                    link: match &claims.target {
                        Target::Click(link) => {
                            Some(LinkInfo { index: link.index, url: link.url.to_string() })
                        }
                        _ => None,
                    },
                    ip_address: hit.client_ip,
                    user_agent: hit.user_agent.clone(),
                    counted: judgement.counted,
                    verdict: judgement.verdict,
                    reasons: judgement.reasons,
                },
            },
        }
    }

    /// The JSON and the routing facts a sink needs, computed once.
    pub fn encode(&self) -> EncodedEvent {
        let json = serde_json::to_vec(self).expect("events always serialize");
        EncodedEvent {
            event_id: self.event_id.clone(),
            kind: self.kind,
            message_id: self.data.object.email.id.clone(),
            tenant: self.data.object.email.tenant.clone(),
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
