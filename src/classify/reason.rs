//! [`Reason`]: the code of a signal that fired, as events carry it in
//! `reasons`, so a user can always see why a hit did or did not count.

use std::sync::Arc;

use serde::Serialize;

/// A short machine-readable code for a signal that fired: `head`,
/// `ua:proofpoint`, `net:microsoft`. Codes from the rule data are shared
/// (`Arc<str>`), so putting one on a hit copies a pointer, not a string.
#[derive(Debug, Clone)]
pub struct Reason(ReasonText);

#[derive(Debug, Clone)]
enum ReasonText {
    Fixed(&'static str),
    Shared(Arc<str>),
}

impl Reason {
    pub const HEAD: Reason = Reason::fixed("head");
    pub const PREFETCH: Reason = Reason::fixed("prefetch");
    pub const REPEAT: Reason = Reason::fixed("repeat");
    pub const HONEYPOT: Reason = Reason::fixed("honeypot");
    pub const BURST: Reason = Reason::fixed("burst");
    pub const SCANNING: Reason = Reason::fixed("scanning");
    pub const BACKFILL: Reason = Reason::fixed("backfill");
    pub const MACHINE_OPEN: Reason = Reason::fixed("machine-open");
    pub const CRAWLER: Reason = Reason::fixed("ua:crawler");
    pub const NO_USER_AGENT: Reason = Reason::fixed("ua:missing");
    /// No rule or list knows the user agent and it looks like no person's
    /// client (see [`super::people`]).
    pub const UNKNOWN_AGENT: Reason = Reason::fixed("ua:unknown-agent");

    const fn fixed(code: &'static str) -> Reason {
        Reason(ReasonText::Fixed(code))
    }

    pub fn owned(code: String) -> Reason {
        Reason(ReasonText::Shared(Arc::from(code)))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            ReasonText::Fixed(s) => s,
            ReasonText::Shared(s) => s,
        }
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Reason {}

impl std::hash::Hash for Reason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
