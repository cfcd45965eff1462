//! What a user-agent string says, read once per distinct string (the
//! classifier caches the result): woothee's parse, and who the agent is,
//! asked in this order:
//! 1. waymark's own rules (`data/scanners.toml`), except the generic ones;
//! 2. the vendored crawler list ([`super::crawlers`]);
//! 3. our generic fallback rules ("anything that calls itself a bot");
//! 4. woothee's `crawler` category;
//! 5. the shape of people's clients ([`super::people`]): a user agent that
//!    none of the above knows and that looks like no browser, webview, app
//!    or mail client gets the rule file's `unknown_agents` verdict
//!    (`ua:unknown-agent`), when the file sets one.

use std::sync::Arc;

use super::crawlers::CrawlerList;
use super::people;
use super::rules::{Rule, Rules};
use super::{Category, Device, Reason, Verdict};

/// What a user agent says.
#[derive(Debug)]
pub(super) struct UaFacts {
    pub device: Option<Arc<Device>>,
    /// The verdict, its reason and whether it is a machine open, when a
    /// rule, the crawler list or woothee knows the agent.
    pub known: Option<(Verdict, Reason, bool)>,
    pub category: Category,
}

pub(super) fn read(
    ua: &str,
    woothee: &woothee::parser::Parser,
    rules: &Rules,
    crawlers: &CrawlerList,
) -> UaFacts {
    let parsed = woothee.parse(ua);
    let known = |s: &str| (s != woothee::woothee::VALUE_UNKNOWN && !s.is_empty()).then(|| s.to_owned());
    let woothee_crawler = parsed.as_ref().is_some_and(|p| p.category == "crawler");
    let device = parsed.map(|p| Device {
        category: known(p.category),
        name: known(p.name),
        os: known(p.os),
        version: known(p.version),
    });
    let from_rule = |r: &Rule| (Some((r.verdict, r.reason.clone(), r.machine_open)), r.category);
    let (known, category) = match (rules.find(ua), crawlers.find(ua)) {
        (Some(r), _) if !r.fallback => from_rule(r),
        (_, Some(e)) => (Some((e.verdict, e.reason.clone(), false)), e.category),
        (Some(r), None) => from_rule(r),
        (None, None) if woothee_crawler => (Some((Verdict::Bot, Reason::CRAWLER, false)), Category::Crawler),
        (None, None) if people::looks_like_a_person(ua, device.as_ref()) => {
            (None, person_category(device.as_ref()))
        }
        (None, None) => match rules.unknown_agents {
            Some(verdict) => (Some((verdict, Reason::UNKNOWN_AGENT, false)), Category::Unknown),
            None => (None, Category::Unknown),
        },
    };
    UaFacts { device: device.map(Arc::new), known, category }
}

/// The kind of a user agent no list knows: a browser when woothee reads
/// one (a pc, phone or appliance), unknown otherwise.
fn person_category(device: Option<&Device>) -> Category {
    match device.and_then(|d| d.category.as_deref()) {
        Some("pc" | "smartphone" | "mobilephone" | "appliance") => Category::Browser,
        _ => Category::Unknown,
    }
}
