//! The vendored list of machines' user agents: monperrus/crawler-user-agents
//! (MIT), about 1,500 patterns, each with example `instances` and `tags`.
//! The copy in `data/` is pinned to the version in
//! `data/crawler-user-agents.toml` and compiled in; the patterns named in
//! `data/crawler-deny.txt` (those that match people, or are too loose) are
//! dropped. `scripts/refresh-crawler-list` replaces the copy.
//!
//! The classifier consults this list after waymark's own rules
//! (`data/scanners.toml`), so a rule of ours always wins, and before our
//! generic fallback rules ("anything that calls itself a bot"), which know
//! less. The list's patterns are case-sensitive by design, and are matched
//! so: one `RegexSet` over all of them.
//!
//! Tags decide the verdict: `scanner` is a scanner; every other tag is a
//! bot, with the tag as its [`Category`].

use regex::{RegexSet, RegexSetBuilder};
use serde::Deserialize;

use super::category::Category;
use super::{Reason, Verdict};

/// The list as published, byte for byte.
pub const LIST: &str = include_str!("../../data/crawler-user-agents.json");
/// Which version of the list that is, and where it came from.
pub const PIN: &str = include_str!("../../data/crawler-user-agents.toml");
/// The patterns waymark drops, with why.
pub const DENY: &str = include_str!("../../data/crawler-deny.txt");

#[derive(Debug, thiserror::Error)]
pub enum CrawlersError {
    #[error("the crawler list is not the expected JSON (an array of {{pattern, instances, tags}}): {0}")]
    Syntax(String),
    #[error("the crawler list's pin is not valid TOML with a version: {0}")]
    Pin(String),
    #[error("crawler deny-list line {line}: {problem}")]
    Deny { line: usize, problem: String },
    #[error("crawler list pattern {pattern:?} does not compile under the regex crate: {problem}")]
    Pattern { pattern: String, problem: String },
}

#[derive(Debug, Deserialize)]
pub struct RawEntry {
    pub pattern: String,
    #[serde(default)]
    pub instances: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
struct Pin {
    version: String,
}

/// One kept pattern, as the classifier uses it.
#[derive(Debug)]
pub struct Entry {
    pub pattern: String,
    pub verdict: Verdict,
    pub category: Category,
    /// `ua:list-{slug of the pattern}`, made once.
    pub reason: Reason,
}

/// The compiled list.
#[derive(Debug)]
pub struct CrawlerList {
    pub version: String,
    entries: Vec<Entry>,
    set: RegexSet,
    denied: usize,
}

/// Tags in the order that decides an entry's category when it has
/// several: the most telling first.
const TAGS: [(&str, Category); 11] = [
    ("social-preview", Category::LinkPreview),
    ("monitoring", Category::Monitoring),
    ("http-library", Category::HttpLibrary),
    ("browser-automation", Category::BrowserAutomation),
    ("ai-crawler", Category::AiCrawler),
    ("feed-reader", Category::FeedReader),
    ("search-engine", Category::SearchEngine),
    ("archiver", Category::Archiver),
    ("academic", Category::Academic),
    ("advertising", Category::Advertising),
    ("seo", Category::Seo),
];

/// The tag that makes an entry a scanner.
const SCANNER_TAG: &str = "scanner";

impl CrawlerList {
    pub fn builtin() -> CrawlerList {
        CrawlerList::parse(LIST, PIN, DENY).expect("the vendored crawler list compiles (tested)")
    }

    pub fn parse(list: &str, pin: &str, deny: &str) -> Result<CrawlerList, CrawlersError> {
        let version = toml::from_str::<Pin>(pin).map_err(|e| CrawlersError::Pin(e.to_string()))?.version;
        let raw = entries(list)?;
        let deny = deny_list(deny)?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut denied = 0;
        for (index, e) in raw.into_iter().enumerate() {
            if deny.iter().any(|(p, _)| *p == e.pattern) {
                denied += 1;
                continue;
            }
            let (verdict, category) = judge(&e.tags, &e.pattern, &e.description);
            let reason = Reason::owned(format!("ua:list-{}", slug(&e.pattern, index)));
            entries.push(Entry { pattern: e.pattern, verdict, category, reason });
        }
        let set = compile(entries.iter().map(|e| e.pattern.as_str()))?;
        Ok(CrawlerList { version, entries, set, denied })
    }

    /// The matching entry with the strongest verdict; among equals, the
    /// first in the list.
    pub fn find(&self, user_agent: &str) -> Option<&Entry> {
        let mut best: Option<&Entry> = None;
        for i in self.set.matches(user_agent).iter() {
            let e = &self.entries[i];
            if best.is_none_or(|b| e.verdict > b.verdict) {
                best = Some(e);
            }
        }
        best
    }

    /// Patterns kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Patterns dropped by the deny-list.
    pub fn denied(&self) -> usize {
        self.denied
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// The list's entries, as published.
pub fn entries(list: &str) -> Result<Vec<RawEntry>, CrawlersError> {
    serde_json::from_str(list).map_err(|e| CrawlersError::Syntax(e.to_string()))
}

/// The deny-list: `(pattern, reason)` per line, TAB-separated; `#` starts
/// a comment line.
pub fn deny_list(text: &str) -> Result<Vec<(String, String)>, CrawlersError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem: &str| CrawlersError::Deny { line: i + 1, problem: problem.to_owned() };
        let (pattern, reason) =
            line.split_once('\t').ok_or_else(|| bad("expected the pattern, a TAB, and the reason"))?;
        if pattern.is_empty() {
            return Err(bad("the pattern is empty"));
        }
        if reason.trim().is_empty() {
            return Err(bad("the reason is empty: say why the pattern is dropped"));
        }
        out.push((pattern.to_owned(), reason.trim().to_owned()));
    }
    Ok(out)
}

/// One set for all patterns, case-sensitive as the list intends. On
/// failure the offending pattern is found and named.
fn compile<'a>(patterns: impl Iterator<Item = &'a str> + Clone) -> Result<RegexSet, CrawlersError> {
    // The list's ~1,500 patterns outgrow the default program size.
    RegexSetBuilder::new(patterns.clone()).size_limit(64 << 20).build().map_err(|e| {
        patterns
            .filter_map(|p| regex::Regex::new(p).err().map(|e| (p, e)))
            .map(|(p, e)| CrawlersError::Pattern { pattern: p.to_owned(), problem: e.to_string() })
            .next()
            .unwrap_or(CrawlersError::Pattern { pattern: "(the whole set)".into(), problem: e.to_string() })
    })
}

/// The verdict and category of an entry from its tags. An AI crawler
/// that fetches for a person asking (ChatGPT-User, Claude-User, …; the
/// list tags both kinds `ai-crawler`) is an AI assistant.
fn judge(tags: &[String], pattern: &str, description: &str) -> (Verdict, Category) {
    let has = |t: &str| tags.iter().any(|x| x == t);
    if has(SCANNER_TAG) {
        return (Verdict::Scanner, Category::SecurityScanner);
    }
    if has("ai-crawler") && (pattern.ends_with("User") || description.contains("assistant")) {
        return (Verdict::Bot, Category::AiAssistant);
    }
    let category = TAGS.iter().find(|(t, _)| has(t)).map_or(Category::Crawler, |(_, c)| *c);
    (Verdict::Bot, category)
}

/// Whether waymark knows what a tag means; the tests hold the vendored
/// list to it, so a refresh that brings a new tag asks for a decision.
pub fn known_tag(tag: &str) -> bool {
    tag == SCANNER_TAG || TAGS.iter().any(|(t, _)| *t == tag)
}

/// A reason-code name for a pattern: its letters and digits, lower-case,
/// runs joined by '-'; a character class stands for its first character
/// (`[cC]laude[bB]ot` is `claudebot`) and escapes are dropped.
fn slug(pattern: &str, index: usize) -> String {
    let mut plain = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
                plain.push(' ');
            }
            '[' => {
                if let Some(first) = chars.next().filter(|c| c.is_ascii_alphanumeric()) {
                    plain.push(first);
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
            }
            c => plain.push(c),
        }
    }
    let words: Vec<String> = plain
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let mut s = words.join("-");
    s.truncate(48);
    let s = s.trim_end_matches('-').to_owned();
    if s.is_empty() { format!("entry-{index}") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kept_pattern_compiles_alone_and_matches_its_own_instances() {
        let deny = deny_list(DENY).unwrap();
        let mut problems = Vec::new();
        for e in entries(LIST).unwrap() {
            if deny.iter().any(|(p, _)| *p == e.pattern) {
                continue;
            }
            let re = match regex::Regex::new(&e.pattern) {
                Ok(re) => re,
                Err(err) => {
                    problems.push(format!("{:?} does not compile: {err}", e.pattern));
                    continue;
                }
            };
            for i in e.instances.iter().filter(|i| !re.is_match(i)) {
                problems.push(format!("{:?} does not match its instance {i:?}", e.pattern));
            }
        }
        assert!(problems.is_empty(), "deny them or fix the list:\n{}", problems.join("\n"));
    }

    #[test]
    fn the_set_finds_each_instance_and_every_tag_is_known() {
        let list = CrawlerList::builtin();
        assert!(list.len() > 1_000, "{}", list.len());
        assert_eq!(list.denied(), deny_list(DENY).unwrap().len(), "every deny-list entry names a pattern");
        let mut unknown: Vec<String> = Vec::new();
        for e in entries(LIST).unwrap() {
            unknown.extend(e.tags.iter().filter(|t| !known_tag(t)).cloned());
            if list.entries().iter().any(|k| k.pattern == e.pattern) {
                for i in &e.instances {
                    assert!(list.find(i).is_some(), "{i:?} ({:?}) not found", e.pattern);
                }
            }
        }
        assert!(unknown.is_empty(), "tags waymark cannot map yet: {unknown:?}");
    }

    #[test]
    fn denied_patterns_do_not_match_people() {
        let list = CrawlerList::builtin();
        for ua in [
            "Mozilla/5.0 (Linux; Android 15; CPH2557 Build/AP3A.240617.008; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/142.0.7444.142 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 16; Pixel 10 Pro XL Build/CP1A.260305.018; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/146.0.7680.174 Mobile Safari/537.36 MetaIAB Facebook",
            "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_5_6; en-us) AppleWebKit/528.16 (KHTML, like Gecko) Fluid/0.9.6 Safari/528.16",
        ] {
            assert!(list.find(ua).is_none(), "{ua}: {:?}", list.find(ua).map(|e| &e.pattern));
        }
    }

    #[test]
    fn tags_decide_verdict_and_category() {
        let t = |tags: &[&str]| tags.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (t(&["scanner"]), "X", "", Verdict::Scanner, Category::SecurityScanner),
            (t(&["seo", "scanner"]), "X", "", Verdict::Scanner, Category::SecurityScanner),
            (t(&["search-engine"]), "X", "", Verdict::Bot, Category::SearchEngine),
            (t(&["seo", "social-preview"]), "X", "", Verdict::Bot, Category::LinkPreview),
            (t(&["ai-crawler"]), "GPTBot", "OpenAI crawler", Verdict::Bot, Category::AiCrawler),
            (t(&["ai-crawler"]), "ChatGPT-User", "", Verdict::Bot, Category::AiAssistant),
            (t(&["ai-crawler"]), "kagi", "Kagi AI assistant", Verdict::Bot, Category::AiAssistant),
            (t(&[]), "X", "", Verdict::Bot, Category::Crawler),
            (t(&["brand-new-tag"]), "X", "", Verdict::Bot, Category::Crawler),
        ];
        for (tags, pattern, description, verdict, category) in cases {
            assert_eq!(judge(&tags, pattern, description), (verdict, category), "{tags:?} {pattern}");
        }
    }

    #[test]
    fn the_strongest_match_wins() {
        let list = CrawlerList::builtin();
        let e = list
            .find("AppEngine-Google; (+http://code.google.com/appengine; appid: s~virustotalcloud)")
            .unwrap();
        assert_eq!((e.verdict, e.category), (Verdict::Scanner, Category::SecurityScanner));
        assert!(list.find("googlebot/2.1").is_none(), "case-sensitive, as the list intends");
    }

    #[test]
    fn slugs_are_reason_codes() {
        assert_eq!(slug(r"Googlebot\/", 0), "googlebot");
        assert_eq!(slug("[cC]laude[bB]ot", 0), "claudebot");
        assert_eq!(slug(r"S[eE][mM]rushBot", 0), "semrushbot");
        assert_eq!(slug(r"^Apache-HttpClient", 0), "apache-httpclient");
        assert_eq!(slug(r"\d+", 7), "entry-7");
        for e in CrawlerList::builtin().entries() {
            let code = e.reason.as_str().strip_prefix("ua:").unwrap();
            assert!(super::super::is_code(code), "{code:?} from {:?}", e.pattern);
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let pin = "version = \"t\"";
        let cases = [
            ("not json", pin, "", "not the expected JSON"),
            ("[]", "nope", "", "pin is not valid"),
            ("[]", pin, "no tab here", "line 1: expected the pattern, a TAB"),
            ("[]", pin, "# c\nx\t ", "line 2: the reason is empty"),
            ("[]", pin, "\treason", "the pattern is empty"),
            (r#"[{"pattern": "a(", "instances": [], "tags": []}]"#, pin, "", "\"a(\" does not compile"),
        ];
        for (list, pin, deny, want) in cases {
            let err = CrawlerList::parse(list, pin, deny).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
