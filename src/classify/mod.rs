//! The classifier: turns a [`Hit`] into a [`Judgement`]: a verdict, whether
//! the hit counts as engagement, and the reason code of every signal that
//! fired, so a user can always see why a hit did or did not count.
//!
//! Signals, in the order they are read:
//! - the user agent against waymark's rule list ([`rules`], data not
//!   code), then the vendored list of crawlers ([`crawlers`]), then the
//!   rule list's generic fallbacks and woothee's parse (its `crawler`
//!   category); what kind of agent it is becomes its [`Category`]; all
//!   cached per user agent in a bounded moka cache whose `get_with`
//!   computes a missing entry once;
//! - the client's network against the scanner-network list and, when
//!   configured, an ASN database ([`networks`]);
//! - the request: HEAD never counts; a hit within `prefetch_window` of the
//!   send time is a prefetch;
//! - history ([`behaviour`]): honeypot links, bursts, clients already
//!   scanning the message, repeats, click back-fill, reclassification.
//!
//! The classifier never blocks and never fails: what it cannot tell it
//! leaves at `human`.

mod agent;
pub mod behaviour;
pub mod category;
pub mod crawlers;
pub mod networks;
pub mod people;
pub mod published;
mod reason;
pub mod rules;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use self::behaviour::Withdrawn;
pub use self::category::Category;
pub use self::reason::Reason;

use self::agent::UaFacts;
use self::behaviour::{Behaviour, MessageKey, Seen, Windows};
use self::crawlers::CrawlerList;
use self::networks::{Asn, Databases, Geo, NetworkList};
use self::published::ListDir;
use self::rules::{RuleFile, Rules};
use crate::hit::{Hit, Method};
use crate::token::{Kind, Target};

/// Whether `s` can name a rule or operator in a reason code
/// (`ua:{s}`, `net:{s}`): lower-case letters, digits and '-'.
pub(crate) fn is_code(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Who was behind a hit. Ordered by strength of evidence: when signals
/// disagree, the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Human,
    Proxy,
    Bot,
    Scanner,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [Verdict::Human, Verdict::Proxy, Verdict::Bot, Verdict::Scanner];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Human => "human",
            Verdict::Proxy => "proxy",
            Verdict::Bot => "bot",
            Verdict::Scanner => "scanner",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// woothee's reading of the user agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub category: Option<String>,
    pub name: Option<String>,
    pub os: Option<String>,
    pub version: Option<String>,
}

/// What the request alone says, before history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    /// What kind of agent the user agent names.
    pub category: Category,
    pub machine_open: bool,
    /// Shared with the user-agent cache: a cached hit copies no strings.
    pub device: Option<Arc<Device>>,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
}

/// The full judgement of one hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub counted: bool,
    pub reasons: Vec<Reason>,
    pub agent_category: Category,
    pub device: Option<Arc<Device>>,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
    pub rules_version: Arc<str>,
}

/// A judgement plus the events history asks for.
#[derive(Debug)]
pub struct Outcome {
    pub judgement: Judgement,
    /// Emit a counted `email.opened` (reason `backfill`).
    pub backfill: bool,
    /// Emit an `email.reclassified` for each.
    pub withdrawn: Vec<Withdrawn>,
}

/// Which verdicts count, per kind. Machine opens never count; unsubscribes
/// always do (once), since only a deliberate POST makes one.
#[derive(Debug, Clone)]
pub struct CountingPolicy {
    pub opens: Vec<Verdict>,
    pub clicks: Vec<Verdict>,
}

impl Default for CountingPolicy {
    fn default() -> Self {
        CountingPolicy { opens: vec![Verdict::Human, Verdict::Proxy], clicks: vec![Verdict::Human] }
    }
}

/// Everything the classifier is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rules_file: Option<PathBuf>,
    /// A directory of published network lists with a `lists.toml`
    /// manifest ([`published::load_dir`]), re-read when it changes.
    pub network_lists: Option<PathBuf>,
    pub asn_db: Option<PathBuf>,
    pub city_db: Option<PathBuf>,
    pub prefetch_window: Duration,
    pub windows: Windows,
    pub policy: CountingPolicy,
    pub cache_capacity: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rules_file: None,
            network_lists: None,
            asn_db: None,
            city_db: None,
            prefetch_window: Duration::from_secs(5),
            windows: Windows::default(),
            policy: CountingPolicy::default(),
            cache_capacity: 20_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error(transparent)]
    Networks(#[from] networks::NetworksError),
    #[error(transparent)]
    Published(#[from] published::PublishedError),
}

/// Cache hits and misses, for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// How often a configured rule file is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

pub struct Classifier {
    rules: Arc<Rules>,
    crawlers: Arc<CrawlerList>,
    rule_file: Option<RuleFile>,
    network_dir: Option<ListDir>,
    checked_at: Instant,
    rules_version: Arc<str>,
    networks: Arc<NetworkList>,
    databases: Arc<Databases>,
    cache: moka::sync::Cache<String, Arc<UaFacts>, foldhash::fast::RandomState>,
    cache_stats: Arc<CacheStats>,
    woothee: woothee::parser::Parser,
    behaviour: Behaviour,
    prefetch_window: Duration,
    policy: CountingPolicy,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("rules_version", &self.rules_version).finish_non_exhaustive()
    }
}

impl Classifier {
    /// Builds the classifier; a bad rule file or database fails here, at start.
    pub fn new(settings: &Settings) -> Result<Classifier, ClassifyError> {
        let (rule_file, rules) = match &settings.rules_file {
            Some(path) => {
                let (file, rules) = RuleFile::load(path)?;
                (Some(file), rules)
            }
            None => (None, Rules::builtin()),
        };
        let (network_dir, networks) = match &settings.network_lists {
            Some(dir) => {
                let (dir, lists) = ListDir::load(dir)?;
                (Some(dir), with_lists(lists))
            }
            None => (None, NetworkList::builtin()),
        };
        let crawlers = CrawlerList::builtin();
        let databases = Databases::open(settings.asn_db.as_deref(), settings.city_db.as_deref())?;
        let rules_version = version(&rules, &crawlers, &networks, network_dir.as_ref());
        Ok(Classifier {
            rules: Arc::new(rules),
            crawlers: Arc::new(crawlers),
            rule_file,
            network_dir,
            checked_at: Instant::now(),
            rules_version,
            networks: Arc::new(networks),
            databases: Arc::new(databases),
            // foldhash instead of SipHash: a randomly seeded hash is all a cache
            // keyed by user agents needs, at a fraction of the cost.
            cache: moka::sync::Cache::builder()
                .max_capacity(settings.cache_capacity)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            cache_stats: Arc::default(),
            woothee: woothee::parser::Parser::new(),
            behaviour: Behaviour::new(settings.windows),
            prefetch_window: settings.prefetch_window,
            policy: settings.policy.clone(),
        })
    }

    /// A classifier for another judge thread: the same rules, networks,
    /// databases and user-agent cache (shared, not copied), and behaviour
    /// state of its own, for the messages that thread owns.
    pub fn shard(&self) -> Classifier {
        Classifier {
            rules: self.rules.clone(),
            crawlers: self.crawlers.clone(),
            rule_file: self.rule_file.clone(),
            network_dir: self.network_dir.clone(),
            checked_at: self.checked_at,
            rules_version: self.rules_version.clone(),
            networks: self.networks.clone(),
            databases: self.databases.clone(),
            cache: self.cache.clone(),
            cache_stats: self.cache_stats.clone(),
            woothee: woothee::parser::Parser::new(),
            behaviour: Behaviour::new(*self.behaviour.windows()),
            prefetch_window: self.prefetch_window,
            policy: self.policy.clone(),
        }
    }

    pub fn rules_version(&self) -> &str {
        &self.rules_version
    }

    pub fn cache_stats(&self) -> &Arc<CacheStats> {
        &self.cache_stats
    }

    /// Picks up a changed rule file, at most once a second.
    fn maybe_reload(&mut self) {
        if (self.rule_file.is_none() && self.network_dir.is_none())
            || self.checked_at.elapsed() < RELOAD_EVERY
        {
            return;
        }
        self.checked_at = Instant::now();
        let mut changed = false;
        if let Some(rules) = self.rule_file.as_mut().and_then(RuleFile::reload) {
            self.rules = Arc::new(rules);
            // Cached facts carry the old rules' matches.
            self.cache.invalidate_all();
            changed = true;
        }
        if let Some(lists) = self.network_dir.as_mut().and_then(ListDir::reload) {
            self.networks = Arc::new(with_lists(lists));
            changed = true;
        }
        if changed {
            self.rules_version =
                version(&self.rules, &self.crawlers, &self.networks, self.network_dir.as_ref());
        }
    }

    fn ua_facts(&self, ua: &str) -> Arc<UaFacts> {
        if let Some(facts) = self.cache.get(ua) {
            self.cache_stats.hits.fetch_add(1, Ordering::Relaxed);
            return facts;
        }
        self.cache_stats.misses.fetch_add(1, Ordering::Relaxed);
        self.cache
            .get_with(ua.to_owned(), || Arc::new(agent::read(ua, &self.woothee, &self.rules, &self.crawlers)))
    }

    /// What the request alone says: user agent and network. This is the
    /// path `waymark classify` runs, and the first step of [`Self::judge`].
    pub fn assess(&mut self, kind: Kind, ip: Option<IpAddr>, user_agent: Option<&str>) -> Assessment {
        self.maybe_reload();
        let mut a = Assessment {
            verdict: Verdict::Human,
            reasons: Vec::new(),
            category: Category::Unknown,
            machine_open: false,
            device: None,
            geo: None,
            asn: None,
        };
        match user_agent {
            None => {
                a.verdict = Verdict::Bot;
                a.reasons.push(Reason::NO_USER_AGENT);
            }
            Some(ua) => {
                let facts = self.ua_facts(ua);
                a.device = facts.device.clone();
                a.category = facts.category;
                if let Some((verdict, reason, machine_open)) = &facts.known {
                    a.verdict = a.verdict.max(*verdict);
                    a.machine_open |= machine_open;
                    a.reasons.push(reason.clone());
                }
            }
        }
        if let Some(ip) = ip {
            a.asn = self.databases.asn(ip);
            a.geo = self.databases.geo(ip);
            let operator = self
                .networks
                .find(ip)
                .or_else(|| a.asn.as_ref().and_then(|asn| self.networks.by_asn(asn.number)));
            if let Some(op) = operator {
                // A proxy network only explains an open: people click
                // through relays (iCloud Private Relay) as themselves.
                if op.verdict != Verdict::Proxy || kind == Kind::Open {
                    a.verdict = a.verdict.max(op.verdict);
                    a.machine_open |= op.machine_open;
                }
                if !a.reasons.contains(&op.reason) {
                    a.reasons.push(op.reason.clone());
                }
            }
        }
        if kind == Kind::Open && a.machine_open {
            a.reasons.push(Reason::MACHINE_OPEN);
        } else {
            a.machine_open = false;
        }
        a
    }

    /// Judges one hit, in the light of the hits of its message before it.
    pub fn judge(&mut self, hit: &Hit) -> Outcome {
        let claims = hit.token.claims();
        let kind = claims.target.kind();
        let a = self.assess(kind, hit.client_ip, hit.user_agent.as_deref());
        let (mut verdict, mut reasons) = (a.verdict, a.reasons);

        // A HEAD fetches no image and follows no link: a checker, not a person.
        let head = hit.method == Method::Head;
        if head {
            reasons.push(Reason::HEAD);
            verdict = verdict.max(Verdict::Bot);
        }
        let at_ms = (hit.at.unix_timestamp_nanos() / 1_000_000) as i64;
        let since_send = at_ms - claims.sent_at as i64 * 1000;
        let prefetch = kind != Kind::Unsubscribe && since_send < self.prefetch_window.as_millis() as i64;
        if prefetch {
            reasons.push(Reason::PREFETCH);
            // Gateways fetch pixels and follow links right after delivery.
            verdict = verdict.max(if kind == Kind::Open { Verdict::Proxy } else { Verdict::Scanner });
        }

        let allowed = match kind {
            Kind::Open => self.policy.opens.contains(&verdict) && !a.machine_open,
            Kind::Click => self.policy.clicks.contains(&verdict),
            Kind::Unsubscribe => true,
        };
        let counted = allowed && !head && !prefetch;

        let message = MessageKey::new(&claims.tenant, &claims.message_id);
        let (link, trap) = match &claims.target {
            Target::Click(l) => (Some(l.index), l.trap),
            _ => (None, false),
        };
        let seen = Seen { message: &message, kind, link, trap, client: hit.client_ip, at_ms, hit: hit.id };
        let f = self.behaviour.observe(&seen, counted);
        for (fired, reason) in
            [(f.honeypot, Reason::HONEYPOT), (f.burst, Reason::BURST), (f.scanning, Reason::SCANNING)]
        {
            if fired {
                reasons.push(reason);
                verdict = Verdict::Scanner;
            }
        }
        if f.repeat {
            reasons.push(Reason::REPEAT);
        }
        let counted = counted && !f.machine() && !f.repeat;
        Outcome {
            judgement: Judgement {
                verdict,
                counted,
                reasons,
                agent_category: a.category,
                device: a.device,
                geo: a.geo,
                asn: a.asn,
                rules_version: self.rules_version.clone(),
            },
            backfill: f.backfill,
            withdrawn: f.withdrawn,
        }
    }
}

/// One version string for all the lists, so an event names exactly the
/// data that judged it: `ua-<rules>+cua-<crawler list>+net-<networks>`,
/// and `+nl-<hash>` of the published network lists when configured.
fn version(
    rules: &Rules,
    crawlers: &CrawlerList,
    networks: &NetworkList,
    lists: Option<&ListDir>,
) -> Arc<str> {
    let lists = lists.map(|l| format!("+nl-{}", l.version())).unwrap_or_default();
    Arc::from(format!("ua-{}+cua-{}+net-{}{lists}", rules.version, crawlers.version, networks.version))
}

/// The built-in networks with the published lists added.
fn with_lists(lists: Vec<(published::Published, String)>) -> NetworkList {
    let mut networks = NetworkList::builtin();
    for (list, what) in lists {
        networks.add(list, &what);
    }
    networks
}
