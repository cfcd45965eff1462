//! Who operates the client's network: the scanner-network list (CIDRs and
//! ASNs with operator and verdict, `data/networks.toml` compiled in) and,
//! when configured, MaxMind-format databases for ASN and geography.
//!
//! Everything here answers from memory; a look-up never touches the disk.
//! The service runs with no database at all.

use foldhash::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use maxminddb::{Reader, geoip2};
use serde::{Deserialize, Serialize};

use super::{Reason, Verdict};

pub const BUILTIN: &str = include_str!("../../data/networks.toml");

#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("network list is not valid TOML: {0}")]
    Syntax(String),
    #[error("network entry {index} ({operator:?}): {problem}")]
    Entry { index: usize, operator: String, problem: String },
    #[error("cannot open {what} database {path}: {message}")]
    Database { what: &'static str, path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    version: String,
    #[serde(default, rename = "network")]
    networks: Vec<RawNetwork>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    operator: String,
    what: String,
    verdict: Verdict,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    asns: Vec<u32>,
    /// Opens from here are fetched with no person behind them.
    #[serde(default)]
    machine_open: bool,
    source: String,
}

#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub what: String,
    pub verdict: Verdict,
    pub machine_open: bool,
    /// `net:{name}`, made once.
    pub reason: Reason,
}

/// The compiled network list: most specific prefix wins.
#[derive(Debug)]
pub struct NetworkList {
    pub version: String,
    operators: Vec<Operator>,
    /// One map per prefix length in use, longest first.
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
    asns: HashMap<u32, usize>,
}

impl NetworkList {
    pub fn builtin() -> NetworkList {
        NetworkList::parse(BUILTIN).expect("the built-in network list is valid (tested)")
    }

    pub fn parse(text: &str) -> Result<NetworkList, NetworksError> {
        let raw: RawList = toml::from_str(text).map_err(|e| NetworksError::Syntax(e.to_string()))?;
        let mut v4: HashMap<u8, HashMap<u32, usize>> = HashMap::default();
        let mut v6: HashMap<u8, HashMap<u128, usize>> = HashMap::default();
        let mut asns = HashMap::default();
        let mut operators = Vec::new();
        for (index, n) in raw.networks.into_iter().enumerate() {
            let bad = |problem: String| NetworksError::Entry { index, operator: n.operator.clone(), problem };
            if !super::is_code(&n.operator) {
                return Err(bad("operator must be lower-case letters, digits and '-'".into()));
            }
            if n.source.trim().is_empty() {
                return Err(bad("source is empty: every entry cites where it came from".into()));
            }
            for cidr in &n.cidrs {
                let net: IpNet =
                    cidr.parse().map_err(|_| bad(format!("{cidr:?} is not a CIDR such as 192.0.2.0/24")))?;
                if net.trunc() != net {
                    return Err(bad(format!("{cidr:?} has host bits set: expected {}", net.trunc())));
                }
                match net {
                    IpNet::V4(n4) => {
                        v4.entry(n4.prefix_len()).or_default().insert(u32::from(n4.network()), index);
                    }
                    IpNet::V6(n6) => {
                        v6.entry(n6.prefix_len()).or_default().insert(u128::from(n6.network()), index);
                    }
                }
            }
            for asn in &n.asns {
                asns.insert(*asn, index);
            }
            let reason = Reason::owned(format!("net:{}", n.operator));
            operators.push(Operator {
                name: n.operator,
                what: n.what,
                verdict: n.verdict,
                machine_open: n.machine_open,
                reason,
            });
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut v6: Vec<_> = v6.into_iter().collect();
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(NetworkList { version: raw.version, operators, v4, v6, asns })
    }

    /// The operator whose published range holds `ip`, most specific first.
    pub fn find(&self, ip: IpAddr) -> Option<&Operator> {
        let index = match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                self.v4.iter().find_map(|(len, map)| map.get(&(bits & mask32(*len))))
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                self.v6.iter().find_map(|(len, map)| map.get(&(bits & mask128(*len))))
            }
        }?;
        Some(&self.operators[*index])
    }

    /// Adds a published list (see [`super::published`]) as one more
    /// operator. Its prefixes join the same look-up: the most specific
    /// prefix wins, whichever list it came from.
    pub fn add(&mut self, published: super::published::Published, what: &str) {
        let index = self.operators.len();
        for net in &published.nets {
            match net {
                IpNet::V4(n4) => insert(&mut self.v4, n4.prefix_len(), u32::from(n4.network()), index),
                IpNet::V6(n6) => insert(&mut self.v6, n6.prefix_len(), u128::from(n6.network()), index),
            }
        }
        let reason = Reason::owned(format!("net:{}", published.operator));
        self.operators.push(Operator {
            name: published.operator,
            what: what.to_owned(),
            verdict: published.verdict,
            machine_open: false,
            reason,
        });
    }

    /// Prefixes held, of every operator.
    pub fn prefixes(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn by_asn(&self, asn: u32) -> Option<&Operator> {
        self.asns.get(&asn).map(|i| &self.operators[*i])
    }

    pub fn len(&self) -> usize {
        self.operators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }
}

/// Puts a prefix into the map of its length, keeping the maps ordered
/// longest first; a prefix already held keeps its operator.
fn insert<K: std::hash::Hash + Eq>(maps: &mut Vec<(u8, HashMap<K, usize>)>, len: u8, key: K, index: usize) {
    let at = match maps.iter().position(|(l, _)| *l <= len) {
        Some(at) if maps[at].0 == len => at,
        Some(at) => {
            maps.insert(at, (len, HashMap::default()));
            at
        }
        None => {
            maps.push((len, HashMap::default()));
            maps.len() - 1
        }
    };
    maps[at].1.entry(key).or_insert(index);
}

fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len) }
}

/// The autonomous system behind an address, from an ASN database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Asn {
    pub number: u32,
    pub organization: Option<String>,
}

/// Where an address is, from a city database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Geo {
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

/// Optional MaxMind-format databases, read fully into memory at start.
#[derive(Default)]
pub struct Databases {
    asn: Option<Reader<Vec<u8>>>,
    city: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Databases")
            .field("asn", &self.asn.is_some())
            .field("city", &self.city.is_some())
            .finish()
    }
}

impl Databases {
    pub fn open(asn: Option<&Path>, city: Option<&Path>) -> Result<Databases, NetworksError> {
        let open = |what: &'static str, path: &Path| {
            let reader = Reader::open_readfile(path).map_err(|e| NetworksError::Database {
                what,
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let kind = &reader.metadata().database_type;
            tracing::info!(path = %path.display(), database_type = %kind, "{what} database loaded");
            Ok::<_, NetworksError>(reader)
        };
        Ok(Databases {
            asn: asn.map(|p| open("ASN", p)).transpose()?,
            city: city.map(|p| open("city", p)).transpose()?,
        })
    }

    pub fn asn(&self, ip: IpAddr) -> Option<Asn> {
        let found = self.asn.as_ref()?.lookup(ip).ok()?;
        let record: geoip2::Asn = found.decode().ok()??;
        Some(Asn {
            number: record.autonomous_system_number?,
            organization: record.autonomous_system_organization.map(str::to_owned),
        })
    }

    pub fn geo(&self, ip: IpAddr) -> Option<Geo> {
        let found = self.city.as_ref()?.lookup(ip).ok()?;
        let record: geoip2::City = found.decode().ok()??;
        let geo = Geo {
            country: record.country.iso_code.map(str::to_owned),
            region: record
                .subdivisions
                .first()
                .and_then(|s| s.iso_code.or(s.names.english))
                .map(str::to_owned),
            city: record.city.names.english.map(str::to_owned),
        };
        (geo.country.is_some() || geo.city.is_some()).then_some(geo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
version = "n1"
[[network]]
operator = "wide"
what = "a wide range"
verdict = "scanner"
cidrs = ["198.51.100.0/24", "2001:db8::/32"]
source = "test"
[[network]]
operator = "narrow"
what = "a narrow range inside the wide one"
verdict = "proxy"
cidrs = ["198.51.100.128/25", "2001:db8:1::/48"]
asns = [64500]
source = "test"
"#;

    #[test]
    fn the_most_specific_range_wins() {
        let list = NetworkList::parse(SMALL).unwrap();
        let find = |ip: &str| list.find(ip.parse().unwrap()).map(|o| o.name.as_str());
        assert_eq!(find("198.51.100.1"), Some("wide"));
        assert_eq!(find("198.51.100.200"), Some("narrow"));
        assert_eq!(find("198.51.101.1"), None);
        assert_eq!(find("2001:db8:2::1"), Some("wide"));
        assert_eq!(find("2001:db8:1::1"), Some("narrow"));
        assert_eq!(find("::ffff:198.51.100.200"), Some("narrow"), "IPv4-mapped IPv6");
        assert_eq!(list.by_asn(64500).map(|o| o.reason.as_str()), Some("net:narrow"));
    }

    #[test]
    fn published_lists_join_the_most_specific_look_up() {
        use crate::classify::published::{Format, parse};
        let mut list = NetworkList::parse(SMALL).unwrap();
        let before = list.prefixes();
        let plain =
            "198.51.100.192/26 relay proxy\n203.0.113.0/24 relay proxy\n2001:db8:1:2::/64 relay proxy\n";
        for p in parse(Format::Plain, plain, "-", Verdict::Human).unwrap() {
            list.add(p, "a published relay list");
        }
        assert_eq!(list.prefixes(), before + 3);
        let find = |ip: &str| list.find(ip.parse().unwrap()).map(|o| (o.name.as_str(), o.verdict));
        assert_eq!(find("198.51.100.200"), Some(("relay", Verdict::Proxy)), "a /26 beats the list's /25");
        assert_eq!(find("198.51.100.1"), Some(("wide", Verdict::Scanner)));
        assert_eq!(find("203.0.113.9"), Some(("relay", Verdict::Proxy)));
        assert_eq!(find("2001:db8:1:2::9"), Some(("relay", Verdict::Proxy)));
        assert_eq!(find("2001:db8:1:3::9"), Some(("narrow", Verdict::Proxy)));
    }

    #[test]
    fn bad_entries_are_named() {
        let bad_cidr = SMALL.replace("198.51.100.0/24", "198.51.100.0/33");
        assert!(
            NetworkList::parse(&bad_cidr)
                .unwrap_err()
                .to_string()
                .contains("\"198.51.100.0/33\" is not a CIDR")
        );
        let host_bits = SMALL.replace("198.51.100.0/24", "198.51.100.7/24");
        let err = NetworkList::parse(&host_bits).unwrap_err().to_string();
        assert!(err.contains("has host bits set: expected 198.51.100.0/24"), "{err}");
    }

    #[test]
    fn builtin_list_parses() {
        let list = NetworkList::builtin();
        assert!(!list.is_empty());
    }
}

#[cfg(test)]
mod database_tests {
    use super::*;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
    }

    #[test]
    fn real_mmdb_files_answer_asn_and_geo() {
        let db = Databases::open(Some(&data("test-asn.mmdb")), Some(&data("test-city.mmdb"))).unwrap();
        let asn = db.asn("192.0.2.77".parse().unwrap()).unwrap();
        assert_eq!(asn, Asn { number: 8075, organization: Some("MICROSOFT-CORP-MSN-AS-BLOCK".into()) });
        assert_eq!(db.asn("2001:db8:ffff::1".parse().unwrap()).unwrap().number, 64497);
        assert_eq!(db.asn("10.0.0.1".parse().unwrap()), None);
        let geo = db.geo("203.0.113.9".parse().unwrap()).unwrap();
        assert_eq!(
            geo,
            Geo { country: Some("DE".into()), region: Some("BE".into()), city: Some("Berlin".into()) }
        );
        assert_eq!(db.geo("2001:db8:1::5".parse().unwrap()).unwrap().city.as_deref(), Some("Nairobi"));
        assert_eq!(db.geo("192.0.2.77".parse().unwrap()), None);
    }

    #[test]
    fn a_missing_or_broken_database_fails_with_its_path() {
        let err = Databases::open(Some(Path::new("/nonexistent.mmdb")), None).unwrap_err().to_string();
        assert!(err.contains("cannot open ASN database /nonexistent.mmdb"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mmdb");
        std::fs::write(&junk, b"not a database").unwrap();
        assert!(
            Databases::open(None, Some(&junk)).unwrap_err().to_string().contains("cannot open city database")
        );
    }
}
