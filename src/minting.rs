//! Minting: one description of a message (from `waymark rewrite`, `waymark
//! sign` or `POST /v1/instrument`) becomes the [`rewrite::Message`] and the
//! key ring it is sealed with, under one set of rules: the tenant's base URL
//! and defaults, every tracking host of every tenant, and one `sent_at`
//! rule (RFC 3339, not before 1970, default now).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::destination::Destination;
use crate::keys::KeyRing;
use crate::rewrite::{Message, Switches};
use crate::tenancy::{NoSuchTenant, Tenancy};

/// A message as a sender describes it, before any checking.
#[derive(Debug, Clone, Default)]
pub struct MessageSpec {
    /// `""` for the default tenant.
    pub tenant: String,
    /// Overrides the tenant's base URL.
    pub base_url: Option<String>,
    pub message_id: String,
    pub recipient: Option<String>,
    /// RFC 3339; default now.
    pub sent_at: Option<String>,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
    /// Per-message switches over the tenant's defaults.
    pub opens: Option<bool>,
    pub clicks: Option<bool>,
    pub unsubscribe: Option<bool>,
    pub unsubscribe_mailto: Option<String>,
    /// RFC 3339; never when `None`.
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Tenant(#[from] NoSuchTenant),
    #[error("base_url {value:?} is invalid: {reason}")]
    BaseUrl { value: String, reason: String },
    #[error("{field} {value:?} is not an RFC 3339 time such as 2026-11-24T09:30:00Z")]
    Time { field: &'static str, value: String },
    #[error("{field} {value:?} is before 1970")]
    BeforeEpoch { field: &'static str, value: String },
}

/// The wall clock in Unix seconds, the unit tokens carry.
pub fn now_secs() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

/// An RFC 3339 time as Unix seconds; `field` names it in errors.
pub fn parse_time(field: &'static str, text: &str) -> Result<u64, MintError> {
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|_| MintError::Time { field, value: text.to_owned() })?;
    u64::try_from(at.unix_timestamp()).map_err(|_| MintError::BeforeEpoch { field, value: text.to_owned() })
}

/// The message to instrument and the ring to seal it with.
pub fn message(tenancy: &Tenancy, spec: MessageSpec) -> Result<(Message, &KeyRing), MintError> {
    let tenant = tenancy.named(&spec.tenant)?;
    let base_url = match &spec.base_url {
        Some(b) => Destination::parse(b)
            .map_err(|e| MintError::BaseUrl { value: b.clone(), reason: e.to_string() })?,
        None => tenancy.base_url(tenant).clone(),
    };
    let sent_at = match &spec.sent_at {
        Some(t) => parse_time("sent_at", t)?,
        None => now_secs(),
    };
    let defaults = tenant.map_or_else(Switches::default, |t| t.switches);
    let message = Message {
        base_url,
        tenant: Tenancy::name(tenant).to_owned(),
        message_id: spec.message_id,
        recipient: spec.recipient,
        sent_at,
        tags: spec.tags,
        meta: spec.meta,
        switches: Switches {
            opens: spec.opens.unwrap_or(defaults.opens),
            clicks: spec.clicks.unwrap_or(defaults.clicks),
            unsubscribe: spec.unsubscribe.unwrap_or(defaults.unsubscribe),
        },
        tracking_hosts: tenancy.tracking_hosts(),
        unsubscribe_mailto: spec.unsubscribe_mailto,
        expires_at: spec.expires_at.as_deref().map(|t| parse_time("expires_at", t)).transpose()?,
    };
    Ok((message, tenancy.keys(tenant)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_at_has_one_rule() {
        assert_eq!(parse_time("sent_at", "1970-01-01T00:00:10Z"), Ok(10));
        assert_eq!(
            parse_time("sent_at", "1969-12-31T23:59:59Z"),
            Err(MintError::BeforeEpoch { field: "sent_at", value: "1969-12-31T23:59:59Z".into() })
        );
        assert!(matches!(parse_time("sent_at", "yesterday"), Err(MintError::Time { .. })));
    }
}
