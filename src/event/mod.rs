//! [`Event`]: what consumers read, one JSON object per hit, and its encoding.
//!
//! The envelope follows the common shape of email providers' webhooks
//! (`event_id`, `type`, `created_at`, `data.object`) and is described by
//! `schema/event.schema.json`, which the tests hold every event to.
//!
//! An event is built in one step from the hit, its judgement and the
//! pipeline's [`Settings`]: its ids derive from the hit's ([`ids`]), the
//! client's address is reduced as configured while it is written in, and
//! the `dedup_key` is computed here, nowhere else.

mod format;
pub mod ids;

use serde::Serialize;
use time::OffsetDateTime;
use ulid::Ulid;

use crate::classify::networks::{Asn, Geo};
use crate::classify::{Category, Device, Judgement, Reason, Verdict, Withdrawn};
use crate::hit::Hit;
use crate::privacy::Privacy;
use crate::token::{Claims, Kind, Target};

pub use format::{DedupKey, Prefixed, Rfc3339, format_rfc3339};
use format::{dedup_key, rfc3339, sorted_map};

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
    /// What kind of agent the user agent names.
    pub agent_category: Category,
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

/// What every event a pipeline builds shares: how much of the client it
/// keeps, and the bucket of its `dedup_key`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub privacy: Privacy,
    /// The repeat window in milliseconds; 0 puts every hit in one bucket.
    pub repeat_window_ms: i64,
}

impl<'a> Event<'a> {
    /// The event a judged hit produces.
    pub fn from_hit(hit: &'a Hit, judgement: &'a Judgement, settings: &Settings) -> Event<'a> {
        let claims = hit.token.claims();
        let kind = claims.target.kind();
        let link = match &claims.target {
            Target::Click(link) => Some(LinkInfo { index: link.index, url: link.url.as_str() }),
            _ => None,
        };
        let id = ids::of_hit(hit.id);
        Event::hit(hit, id, kind, link, judgement, judgement.counted, &judgement.reasons, settings)
    }

    /// The counted open a first counted click stands in for, when the
    /// open itself never reached the pixel (images off, or a cache warmed
    /// by a scanner).
    pub fn backfill(hit: &'a Hit, click: &'a Judgement, settings: &Settings) -> Event<'a> {
        static BACKFILL: [Reason; 1] = [Reason::BACKFILL];
        Event::hit(hit, ids::backfill(hit.id), Kind::Open, None, click, true, &BACKFILL, settings)
    }

    /// Withdraws `withdrawn`, published earlier as counted, because this
    /// hit showed its client to be a scanner.
    pub fn reclassified(
        hit: &'a Hit,
        withdrawn: &Withdrawn,
        judgement: &'a Judgement,
        settings: &Settings,
    ) -> Event<'a> {
        let original = ids::withdrawn(withdrawn);
        let id = ids::reclassification(hit.id, original);
        Event {
            event_id: Prefixed::event(id),
            kind: EventType::Reclassified,
            created_at: hit.at,
            data: Data {
                object: Object::Reclassification(Reclassification {
                    id: Prefixed { prefix: "reclass_", id },
                    object: "reclassification",
                    email: Email::of(hit.token.claims()),
                    original_event_id: Prefixed::event(original),
                    original_kind: EventType::of(withdrawn.kind),
                    ip_address: hit.client_ip.and_then(|ip| settings.privacy.ip(ip)),
                    counted: false,
                    verdict: judgement.verdict,
                    reasons: &judgement.reasons,
                    rules_version: &judgement.rules_version,
                }),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hit(
        hit: &'a Hit,
        id: Ulid,
        kind: Kind,
        link: Option<LinkInfo<'a>>,
        judgement: &'a Judgement,
        counted: bool,
        reasons: &'a [Reason],
        settings: &Settings,
    ) -> Event<'a> {
        let claims = hit.token.claims();
        let at_ms = (hit.at.unix_timestamp_nanos() / 1_000_000) as i64;
        let link_index = link.as_ref().map(|l| l.index);
        Event {
            event_id: Prefixed::event(id),
            kind: EventType::of(kind),
            created_at: hit.at,
            data: Data {
                object: Object::Hit(HitObject {
                    id: Prefixed { prefix: object_prefix(kind), id },
                    object: kind.as_str(),
                    email: Email::of(claims),
                    dedup_key: dedup_key(claims, kind, link_index, at_ms, settings.repeat_window_ms),
                    link,
                    ip_address: hit.client_ip.and_then(|ip| settings.privacy.ip(ip)),
                    user_agent: hit.user_agent.as_deref().filter(|_| settings.privacy.keeps_user_agent()),
                    counted,
                    verdict: judgement.verdict,
                    reasons,
                    agent_category: judgement.agent_category,
                    device: judgement.device.as_deref(),
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
