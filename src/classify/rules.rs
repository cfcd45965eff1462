//! The user-agent rule list: data, not code. `data/scanners.toml` is
//! compiled in as the default; a file named in config replaces it and is
//! reloaded when it changes (see [`RuleFile`]).
//!
//! Each rule has exactly one matcher: `contains` (case-insensitive
//! substring, matched for all rules at once with Aho-Corasick), `regex`
//! (case-insensitive, matched at once with a `RegexSet`) or `equals` (the
//! whole user agent, case-sensitive, a hash look-up). When several rules
//! match, the one listed first wins, so the file orders rules from most to
//! least specific. A rule marked `fallback` (the generic "anything that
//! calls itself a bot") is consulted only after the vendored crawler list,
//! whose specific entries know more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aho_corasick::AhoCorasick;
use regex::RegexSet;
use serde::Deserialize;

use super::category::Category;
use super::{Reason, Verdict};

/// The rule list shipped in the binary.
pub const BUILTIN: &str = include_str!("../../data/scanners.toml");

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("scanner rules are not valid TOML: {0}")]
    Syntax(String),
    #[error("scanner rule {index} ({name:?}): {problem}")]
    Rule { index: usize, name: String, problem: String },
    #[error("cannot read scanner rules from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    version: String,
    /// The verdict for a user agent no rule or list knows and that looks
    /// like no person's client; absent: leave it to the other signals.
    unknown_agents: Option<Verdict>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    what: String,
    verdict: Verdict,
    contains: Option<String>,
    equals: Option<String>,
    regex: Option<String>,
    /// Fetches made with no person behind them (Apple Mail Privacy
    /// Protection loads every pixel on delivery): such opens never count.
    #[serde(default)]
    machine_open: bool,
    /// What kind of agent; by default the verdict's usual kind.
    category: Option<Category>,
    /// Generic: consulted after the vendored crawler list.
    #[serde(default)]
    fallback: bool,
    source: String,
}

/// One rule, as the classifier uses it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub what: String,
    pub verdict: Verdict,
    pub machine_open: bool,
    pub category: Category,
    pub fallback: bool,
    /// `ua:{name}`, made once.
    pub reason: Reason,
}

/// A compiled rule list.
#[derive(Debug)]
pub struct Rules {
    pub version: String,
    /// See [`RawRules::unknown_agents`].
    pub unknown_agents: Option<Verdict>,
    rules: Vec<Arc<Rule>>,
    contains: AhoCorasick,
    contains_rule: Vec<usize>,
    regex: RegexSet,
    regex_rule: Vec<usize>,
    equals: HashMap<String, usize>,
}

impl Rules {
    pub fn builtin() -> Rules {
        Rules::parse(BUILTIN).expect("the built-in scanner rules are valid (tested)")
    }

    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let raw: RawRules = toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        let (mut contains, mut contains_rule) = (Vec::new(), Vec::new());
        let (mut regex, mut regex_rule) = (Vec::new(), Vec::new());
        let mut equals = HashMap::new();
        for (index, r) in raw.rules.into_iter().enumerate() {
            let bad = |problem: String| RulesError::Rule { index, name: r.name.clone(), problem };
            if !super::is_code(&r.name) {
                return Err(bad("name must be lower-case letters, digits and '-'".into()));
            }
            if r.source.trim().is_empty() {
                return Err(bad("source is empty: every rule cites where it came from".into()));
            }
            match (r.contains, r.equals, r.regex) {
                (Some(s), None, None) if !s.is_empty() => {
                    contains.push(s);
                    contains_rule.push(index);
                }
                (None, Some(s), None) if !s.is_empty() => {
                    equals.entry(s).or_insert(index);
                }
                (None, None, Some(s)) => {
                    regex::Regex::new(&s).map_err(|e| bad(format!("regex {s:?} is invalid: {e}")))?;
                    regex.push(format!("(?i:{s})"));
                    regex_rule.push(index);
                }
                _ => {
                    return Err(bad(
                        "expected exactly one non-empty matcher: contains, equals or regex".into()
                    ));
                }
            }
            let reason = Reason::owned(format!("ua:{}", r.name));
            let category = r.category.unwrap_or(match r.verdict {
                Verdict::Proxy => Category::ImageProxy,
                Verdict::Scanner => Category::SecurityScanner,
                Verdict::Bot => Category::Crawler,
                Verdict::Human => Category::Unknown,
            });
            rules.push(Arc::new(Rule {
                name: r.name,
                what: r.what,
                verdict: r.verdict,
                machine_open: r.machine_open,
                category,
                fallback: r.fallback,
                reason,
            }));
        }
        let contains = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&contains)
            .map_err(|e| RulesError::Syntax(e.to_string()))?;
        let regex = RegexSet::new(&regex).map_err(|e| RulesError::Syntax(e.to_string()))?;
        Ok(Rules {
            version: raw.version,
            unknown_agents: raw.unknown_agents,
            rules,
            contains,
            contains_rule,
            regex,
            regex_rule,
            equals,
        })
    }

    /// The first rule, in file order, that matches the user agent; a
    /// fallback rule only when no other rule matches.
    pub fn find(&self, user_agent: &str) -> Option<&Arc<Rule>> {
        // Fallback rules rank after every other rule, whatever their place.
        let rank = |index: usize| (self.rules[index].fallback, index);
        let mut best = self.equals.get(user_agent).copied();
        let mut consider =
            |index: usize| best = Some(best.map_or(index, |b| if rank(index) < rank(b) { index } else { b }));
        // Overlapping search: a later pattern must not hide an earlier rule.
        for m in self.contains.find_overlapping_iter(user_agent) {
            consider(self.contains_rule[m.pattern().as_usize()]);
        }
        for i in self.regex.matches(user_agent).iter() {
            consider(self.regex_rule[i]);
        }
        best.map(|i| &self.rules[i])
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A rule file on disk, reloaded when its modification time or size
/// changes. A file that fails to parse on reload is logged and the rules
/// in force stay: a typo must not switch classification off.
#[derive(Debug, Clone)]
pub struct RuleFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
}

impl RuleFile {
    /// Loads the file; at start-up an invalid file is an error.
    pub fn load(path: &Path) -> Result<(RuleFile, Rules), RulesError> {
        let mut file = RuleFile { path: path.to_owned(), stamp: None };
        let rules = file.read()?;
        Ok((file, rules))
    }

    /// New rules when the file changed and parses; `None` otherwise.
    pub fn reload(&mut self) -> Option<Rules> {
        let stamp = stamp(&self.path);
        if stamp.is_none() || stamp == self.stamp {
            return None;
        }
        match self.read() {
            Ok(rules) => {
                tracing::info!(path = %self.path.display(), version = %rules.version, rules = rules.len(), "scanner rules reloaded");
                Some(rules)
            }
            Err(e) => {
                // Remember the stamp so a broken file is reported once.
                self.stamp = stamp;
                tracing::error!(error = %e, "scanner rules not reloaded; the previous rules stay in force");
                None
            }
        }
    }

    fn read(&mut self) -> Result<Rules, RulesError> {
        let stamp = stamp(&self.path);
        let text = std::fs::read_to_string(&self.path)
            .map_err(|source| RulesError::Read { path: self.path.clone(), source })?;
        self.stamp = stamp;
        Rules::parse(&text)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
version = "t1"
[[rule]]
name = "apple-mpp"
what = "Apple Mail Privacy Protection"
verdict = "proxy"
equals = "Mozilla/5.0"
source = "test"
[[rule]]
name = "google-image-proxy"
what = "Gmail image proxy"
verdict = "proxy"
contains = "GoogleImageProxy"
source = "test"
[[rule]]
name = "generic-bot"
what = "anything that calls itself a bot"
verdict = "bot"
regex = '(?:^|[^a-z])bot\b'
source = "test"
"#;

    #[test]
    fn first_matching_rule_wins_across_matcher_kinds() {
        let rules = Rules::parse(SMALL).unwrap();
        let find = |ua: &str| rules.find(ua).map(|r| r.reason.as_str().to_owned());
        assert_eq!(find("Mozilla/5.0").as_deref(), Some("ua:apple-mpp"));
        assert_eq!(
            find("Mozilla/5.0 (via ggpht.com GoogleImageProxy)").as_deref(),
            Some("ua:google-image-proxy")
        );
        assert_eq!(
            find("Mozilla/5.0 (via googleimageproxy) a bot").as_deref(),
            Some("ua:google-image-proxy")
        );
        assert_eq!(find("Example Bot/1.0 (+http://x)").as_deref(), Some("ua:generic-bot"));
        assert_eq!(find("Mozilla/5.0 (Linux; Android 9; CUBOT X19)").as_deref(), None);
        assert_eq!(find("mozilla/5.0").as_deref(), None, "equals is exact");
    }

    #[test]
    fn a_fallback_rule_yields_to_any_other_whatever_its_place() {
        let text = "version = \"t\"\n[[rule]]\nname = \"any-bot\"\nwhat = \"w\"\nverdict = \"bot\"\nregex = 'bot'\nfallback = true\nsource = \"s\"\n[[rule]]\nname = \"acme\"\nwhat = \"w\"\nverdict = \"scanner\"\ncategory = \"security-scanner\"\ncontains = \"AcmeBot\"\nsource = \"s\"\n";
        let rules = Rules::parse(text).unwrap();
        let acme = rules.find("AcmeBot/1.0").unwrap();
        assert_eq!((acme.name.as_str(), acme.category), ("acme", Category::SecurityScanner));
        let other = rules.find("OtherBot/1.0").unwrap();
        assert_eq!(
            (other.name.as_str(), other.fallback, other.category),
            ("any-bot", true, Category::Crawler)
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let cases = [
            (
                "version = \"x\"\n[[rule]]\nname = \"a\"\nwhat = \"w\"\nverdict = \"bot\"\nsource = \"s\"",
                "exactly one",
            ),
            (
                "version = \"x\"\n[[rule]]\nname = \"a\"\nwhat = \"w\"\nverdict = \"bot\"\nsource = \"s\"\ncontains = \"x\"\nregex = \"y\"",
                "exactly one",
            ),
            (
                "version = \"x\"\n[[rule]]\nname = \"a\"\nwhat = \"w\"\nverdict = \"bot\"\nsource = \"s\"\nregex = \"(\"",
                "regex \"(\" is invalid",
            ),
            (
                "version = \"x\"\n[[rule]]\nname = \"A B\"\nwhat = \"w\"\nverdict = \"bot\"\nsource = \"s\"\ncontains = \"x\"",
                "name must be",
            ),
            (
                "version = \"x\"\n[[rule]]\nname = \"a\"\nwhat = \"w\"\nverdict = \"robot\"\nsource = \"s\"\ncontains = \"x\"",
                "unknown variant",
            ),
            (
                "version = \"x\"\n[[rule]]\nname = \"a\"\nwhat = \"w\"\nverdict = \"bot\"\nsource = \" \"\ncontains = \"x\"",
                "source is empty",
            ),
        ];
        for (text, want) in cases {
            let err = Rules::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn builtin_rules_parse_and_cite_sources() {
        let rules = Rules::builtin();
        assert!(rules.len() >= 15, "{}", rules.len());
        assert!(!rules.version.is_empty());
    }

    #[test]
    fn rule_files_reload_only_when_changed_and_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, SMALL).unwrap();
        let (mut file, rules) = RuleFile::load(&path).unwrap();
        assert_eq!(rules.version, "t1");
        assert!(file.reload().is_none(), "unchanged");
        std::fs::write(&path, SMALL.replace("t1", "t2.0")).unwrap();
        assert_eq!(file.reload().unwrap().version, "t2.0");
        std::fs::write(&path, "this is not toml = = =").unwrap();
        assert!(file.reload().is_none(), "a broken file keeps the old rules");
    }
}
