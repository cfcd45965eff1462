//! Large published network lists, read in the formats their operators
//! publish them in: Apple's iCloud Private Relay egress CSV
//! (`egress-ip-ranges.csv`), the `{"prefixes": [{"ipv4Prefix": …}]}` JSON
//! of Google's crawler and fetcher ranges and of OpenAI's bot ranges,
//! Microsoft 365's endpoints JSON, and a plain file of one CIDR, operator
//! and verdict a line.
//!
//! Parsing is pure functions from text to prefixes, so every format is
//! tested without a file or a network; [`load_dir`] reads a directory of
//! lists named by its `lists.toml` manifest (which
//! `scripts/refresh-networks` writes), and
//! [`super::networks::NetworkList::add`] takes them into the same
//! most-specific-prefix look-up as the built-in list. [`ListDir`] re-reads
//! the directory when anything in it changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;

use super::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    #[error("cannot read network list {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("network lists manifest {path}: {problem}")]
    Manifest { path: PathBuf, problem: String },
    #[error("network list {path}: {source}")]
    List { path: PathBuf, source: Box<PublishedError> },
    #[error("{format} line {line}: {problem}")]
    Line { format: &'static str, line: usize, problem: String },
    #[error("{format}: not the expected JSON ({expected}): {problem}")]
    Json { format: &'static str, expected: &'static str, problem: String },
}

/// The formats waymark reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `prefix,country,region,city,` a line (Apple iCloud Private Relay).
    AppleEgressCsv,
    /// `{"prefixes": [{"ipv4Prefix": "…"} | {"ipv6Prefix": "…"}]}` (Google, OpenAI).
    PrefixJson,
    /// `[{"ips": ["…"], …}]` (Microsoft 365 endpoints web service).
    Microsoft365Json,
    /// `CIDR operator verdict` a line; `#` starts a comment.
    Plain,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::AppleEgressCsv => "apple-egress-csv",
            Format::PrefixJson => "prefix-json",
            Format::Microsoft365Json => "microsoft-365-json",
            Format::Plain => "plain",
        }
    }

    pub fn parse_name(s: &str) -> Option<Format> {
        [Format::AppleEgressCsv, Format::PrefixJson, Format::Microsoft365Json, Format::Plain]
            .into_iter()
            .find(|f| f.name() == s)
    }
}

/// Prefixes of one operator, with the verdict its traffic gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub operator: String,
    pub verdict: Verdict,
    pub nets: Vec<IpNet>,
}

/// Reads `text` in `format`. For every format but [`Format::Plain`], all
/// prefixes belong to `operator` with `verdict`; a plain file names its
/// own, one group per operator and verdict in order of first appearance.
pub fn parse(
    format: Format,
    text: &str,
    operator: &str,
    verdict: Verdict,
) -> Result<Vec<Published>, PublishedError> {
    let one = |nets| vec![Published { operator: operator.to_owned(), verdict, nets }];
    match format {
        Format::AppleEgressCsv => apple_csv(text).map(one),
        Format::PrefixJson => prefix_json(text).map(one),
        Format::Microsoft365Json => microsoft_json(text).map(one),
        Format::Plain => plain(text),
    }
}

/// The manifest of a directory of lists: `lists.toml`, one `[[list]]` per
/// file.
pub const MANIFEST: &str = "lists.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default, rename = "list")]
    lists: Vec<ManifestEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    file: String,
    format: String,
    operator: String,
    verdict: Verdict,
    what: String,
    source: String,
}

/// Reads every list the directory's `lists.toml` names: each with what it
/// is, ready for [`super::networks::NetworkList::add`]. Any bad file fails
/// the whole load, naming the file.
pub fn load_dir(dir: &Path) -> Result<Vec<(Published, String)>, PublishedError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| PublishedError::Read { path: path.clone(), source })?;
    let bad = |problem: String| PublishedError::Manifest { path: path.clone(), problem };
    let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for entry in manifest.lists {
        let format = Format::parse_name(&entry.format).ok_or_else(|| {
            bad(format!(
                "{}: format {:?} is not one of apple-egress-csv, prefix-json, microsoft-365-json, plain",
                entry.file, entry.format
            ))
        })?;
        if !super::is_code(&entry.operator) {
            return Err(bad(format!(
                "{}: operator {:?} must be lower-case letters, digits and '-'",
                entry.file, entry.operator
            )));
        }
        if entry.file.contains('/') || entry.file.contains("..") {
            return Err(bad(format!("{}: name a file inside the directory", entry.file)));
        }
        let file = dir.join(&entry.file);
        let text = std::fs::read_to_string(&file)
            .map_err(|source| PublishedError::Read { path: file.clone(), source })?;
        let lists = parse(format, &text, &entry.operator, entry.verdict)
            .map_err(|e| PublishedError::List { path: file.clone(), source: Box::new(e) })?;
        let what = format!("{} ({})", entry.what, entry.source);
        out.extend(lists.into_iter().map(|p| (p, what.clone())));
    }
    Ok(out)
}

/// A directory of lists, re-read when any file in it changes (its name,
/// size or modification time). A directory that fails to load on reload is
/// logged and the lists in force stay, as with `scanner_rules`.
#[derive(Debug, Clone)]
pub struct ListDir {
    dir: PathBuf,
    stamp: Vec<(String, u64, Option<SystemTime>)>,
}

impl ListDir {
    /// Loads the directory; at start-up a bad list is an error.
    pub fn load(dir: &Path) -> Result<(ListDir, Vec<(Published, String)>), PublishedError> {
        let stamp = stamp(dir);
        let lists = load_dir(dir)?;
        Ok((ListDir { dir: dir.to_owned(), stamp }, lists))
    }

    /// The lists anew when the directory changed and loads; `None` otherwise.
    pub fn reload(&mut self) -> Option<Vec<(Published, String)>> {
        let stamp = stamp(&self.dir);
        if stamp == self.stamp {
            return None;
        }
        // Remember the stamp either way, so a broken list is reported once.
        self.stamp = stamp;
        match load_dir(&self.dir) {
            Ok(lists) => {
                let prefixes: usize = lists.iter().map(|(p, _)| p.nets.len()).sum();
                tracing::info!(dir = %self.dir.display(), lists = lists.len(), prefixes, "network lists reloaded");
                Some(lists)
            }
            Err(e) => {
                tracing::error!(error = %e, "network lists not reloaded; the previous lists stay in force");
                None
            }
        }
    }

    /// A short name for what is loaded, for `rules_version`: a hash of the
    /// files' names, sizes and modification times.
    pub fn version(&self) -> String {
        // FNV-1a: stable across runs, unlike the process's seeded hashers.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, len, modified) in &self.stamp {
            let secs = modified
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            for b in name.bytes().chain(len.to_le_bytes()).chain(secs.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        format!("{:08x}", h >> 32)
    }
}

/// Every file of the directory with its size and modification time, sorted.
fn stamp(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), meta.len(), meta.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

fn cidr(format: Format, line: usize, s: &str) -> Result<IpNet, PublishedError> {
    let bad = |problem: String| PublishedError::Line { format: format.name(), line, problem };
    let net: IpNet =
        s.trim().parse().map_err(|_| bad(format!("{s:?} is not a CIDR such as 192.0.2.0/24")))?;
    if net.trunc() != net {
        return Err(bad(format!("{s:?} has host bits set: expected {}", net.trunc())));
    }
    Ok(net)
}

fn apple_csv(text: &str) -> Result<Vec<IpNet>, PublishedError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| cidr(Format::AppleEgressCsv, i + 1, l.split(',').next().unwrap_or_default()))
        .collect()
}

fn prefix_json(text: &str) -> Result<Vec<IpNet>, PublishedError> {
    #[derive(Deserialize)]
    struct File {
        prefixes: Vec<Prefix>,
    }
    #[derive(Deserialize)]
    struct Prefix {
        #[serde(rename = "ipv4Prefix")]
        v4: Option<String>,
        #[serde(rename = "ipv6Prefix")]
        v6: Option<String>,
    }
    let file: File = serde_json::from_str(text).map_err(|e| PublishedError::Json {
        format: Format::PrefixJson.name(),
        expected: "{\"prefixes\": [{\"ipv4Prefix\": …} or {\"ipv6Prefix\": …}]}",
        problem: e.to_string(),
    })?;
    file.prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| match (&p.v4, &p.v6) {
            (Some(s), None) | (None, Some(s)) => cidr(Format::PrefixJson, i + 1, s),
            _ => Err(PublishedError::Line {
                format: Format::PrefixJson.name(),
                line: i + 1,
                problem: "expected exactly one of ipv4Prefix and ipv6Prefix".into(),
            }),
        })
        .collect()
}

fn microsoft_json(text: &str) -> Result<Vec<IpNet>, PublishedError> {
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(default)]
        ips: Vec<String>,
    }
    let endpoints: Vec<Endpoint> = serde_json::from_str(text).map_err(|e| PublishedError::Json {
        format: Format::Microsoft365Json.name(),
        expected: "[{\"ips\": [\"…\"], …}]",
        problem: e.to_string(),
    })?;
    let mut nets: Vec<IpNet> = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        for ip in &e.ips {
            nets.push(cidr(Format::Microsoft365Json, i + 1, ip)?);
        }
    }
    // Endpoint sets repeat ranges.
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

fn plain(text: &str) -> Result<Vec<Published>, PublishedError> {
    let mut out: Vec<Published> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad =
            |problem: String| PublishedError::Line { format: Format::Plain.name(), line: i + 1, problem };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [net, operator, verdict] = fields[..] else {
            return Err(bad(format!("expected CIDR, operator and verdict, found {line:?}")));
        };
        let net = cidr(Format::Plain, i + 1, net)?;
        if !super::is_code(operator) {
            return Err(bad(format!("operator {operator:?}: expected lower-case letters, digits and '-'")));
        }
        let verdict = Verdict::parse(verdict)
            .ok_or_else(|| bad(format!("verdict {verdict:?}: expected human, proxy, bot or scanner")))?;
        match out.iter_mut().find(|p| p.operator == operator && p.verdict == verdict) {
            Some(p) => p.nets.push(net),
            None => out.push(Published { operator: operator.to_owned(), verdict, nets: vec![net] }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[Published]) -> Vec<String> {
        v.iter().flat_map(|p| p.nets.iter().map(|n| format!("{}:{}", p.operator, n))).collect()
    }

    #[test]
    fn each_format_reads_its_published_shape() {
        let apple = "172.224.224.0/27,GB,GB-EN,London,\n2a02:26f7:b3c0:4000::/64,GB,GB-EN,London,\n";
        let google = r#"{"creationTime": "2026-09-08T00:00:00", "prefixes": [{"ipv6Prefix": "2001:4860:4801:10::/64"}, {"ipv4Prefix": "66.249.80.0/24"}]}"#;
        let microsoft = r#"[{"id": 1, "serviceArea": "Exchange", "ips": ["40.92.0.0/15", "2a01:111:f400::/48"]}, {"id": 2, "urls": ["x.example"]}, {"id": 3, "ips": ["40.92.0.0/15"]}]"#;
        let plain = "# operator list\n192.0.2.0/24 acme-gateway scanner\n198.51.100.7/32 acme-gateway scanner # one host\n2001:db8::/32 relay proxy\n";
        let cases: [(Format, &str, Vec<&str>); 4] = [
            (Format::AppleEgressCsv, apple, vec!["op:172.224.224.0/27", "op:2a02:26f7:b3c0:4000::/64"]),
            (Format::PrefixJson, google, vec!["op:2001:4860:4801:10::/64", "op:66.249.80.0/24"]),
            (Format::Microsoft365Json, microsoft, vec!["op:40.92.0.0/15", "op:2a01:111:f400::/48"]),
            (
                Format::Plain,
                plain,
                vec!["acme-gateway:192.0.2.0/24", "acme-gateway:198.51.100.7/32", "relay:2001:db8::/32"],
            ),
        ];
        for (format, text, want) in cases {
            let got = parse(format, text, "op", Verdict::Proxy).unwrap();
            assert_eq!(nets(&got), want, "{}", format.name());
        }
        let plain = parse(Format::Plain, plain, "ignored", Verdict::Human).unwrap();
        assert_eq!((plain[0].verdict, plain[1].verdict), (Verdict::Scanner, Verdict::Proxy));
        assert_eq!(Format::parse_name("prefix-json"), Some(Format::PrefixJson));
    }

    #[test]
    fn a_directory_loads_the_lists_its_manifest_names() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "[[list]]\nfile = \"relay.csv\"\nformat = \"apple-egress-csv\"\noperator = \"apple-private-relay\"\nverdict = \"proxy\"\nwhat = \"iCloud Private Relay egress\"\nsource = \"https://mask-api.icloud.com/egress-ip-ranges.csv\"\n";
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        std::fs::write(dir.path().join("relay.csv"), "172.224.224.0/27,GB,GB-EN,London,\n").unwrap();
        let lists = load_dir(dir.path()).unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!((lists[0].0.operator.as_str(), lists[0].0.nets.len()), ("apple-private-relay", 1));
        assert!(lists[0].1.starts_with("iCloud Private Relay egress ("));

        let cases = [
            (manifest.replace("apple-egress-csv", "yaml"), "format \"yaml\" is not one of"),
            (manifest.replace("relay.csv", "../relay.csv"), "name a file inside the directory"),
            (manifest.replace("relay.csv", "missing.csv"), "cannot read network list"),
            (manifest.replace("verdict = \"proxy\"", "verdict = \"relay\""), "unknown variant"),
        ];
        for (text, want) in cases {
            std::fs::write(dir.path().join(MANIFEST), text).unwrap();
            let err = load_dir(dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        std::fs::write(dir.path().join("relay.csv"), "not-an-ip,GB,,,\n").unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("relay.csv: apple-egress-csv line 1"), "{err}");
    }

    #[test]
    fn a_list_directory_reloads_only_when_changed_and_valid() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "[[list]]\nfile = \"a.txt\"\nformat = \"plain\"\noperator = \"-\"\nverdict = \"bot\"\nwhat = \"w\"\nsource = \"s\"\n";
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        std::fs::write(dir.path().join("a.txt"), "192.0.2.0/24 acme scanner\n").unwrap();
        let (mut lists, first) = ListDir::load(dir.path()).unwrap();
        assert_eq!(first[0].0.nets.len(), 1);
        let version = lists.version();
        assert!(lists.reload().is_none(), "unchanged");
        std::fs::write(dir.path().join("a.txt"), "192.0.2.0/24 acme scanner\n198.51.100.0/24 acme scanner\n")
            .unwrap();
        assert_eq!(lists.reload().unwrap()[0].0.nets.len(), 2);
        assert_ne!(lists.version(), version);
        std::fs::write(dir.path().join("a.txt"), "not a list at all\n").unwrap();
        assert!(lists.reload().is_none(), "a broken list keeps the old ones");
    }

    #[test]
    fn bad_input_is_named() {
        let cases = [
            (
                Format::AppleEgressCsv,
                "not-an-ip,GB,,,\n",
                "apple-egress-csv line 1: \"not-an-ip\" is not a CIDR",
            ),
            (
                Format::AppleEgressCsv,
                "172.224.224.0/27,GB\n172.224.224.1/27,GB\n",
                "line 2: \"172.224.224.1/27\" has host bits set",
            ),
            (Format::PrefixJson, "{\"prefix\": []}", "prefix-json: not the expected JSON"),
            (Format::PrefixJson, "{\"prefixes\": [{}]}", "line 1: expected exactly one of ipv4Prefix"),
            (Format::Microsoft365Json, "{}", "microsoft-365-json: not the expected JSON"),
            (Format::Plain, "192.0.2.0/24 acme\n", "plain line 1: expected CIDR, operator and verdict"),
            (Format::Plain, "192.0.2.0/24 Acme scanner\n", "operator \"Acme\""),
            (Format::Plain, "192.0.2.0/24 acme robot\n", "verdict \"robot\""),
        ];
        for (format, text, want) in cases {
            let err = parse(format, text, "op", Verdict::Bot).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
