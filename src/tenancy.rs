//! Tenancy: which tenant a tracking host belongs to, and what a tenant
//! mints with — its key ring (else the global one), its base URL, its
//! tracking hosts and its defaults. The edge, the CLI and the instrument
//! API all ask here, so they cannot disagree.
//!
//! Hosts are compared in one normal form ([`normalize_host`]): lower case,
//! no port, no trailing dot, IDNA (punycode) for non-ASCII names. Browsers
//! send `t.example.com.` for a URL written with the trailing dot; it is the
//! same host and must never reach another tenant's rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::destination::Destination;
use crate::keys::KeyRing;
use crate::rewrite::Switches;

/// One sender with its own tracking hosts.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    /// Normalised; the first makes its base URL.
    pub hosts: Vec<String>,
    /// `https://` + its first host: the base of the URLs minted for it.
    pub base_url: Destination,
    pub fallback_url: Option<Destination>,
    /// What its mail tracks unless a message says otherwise.
    pub switches: Switches,
    /// Its own key ring; the global one when `None`.
    pub keys: Option<Arc<KeyRing>>,
}

/// What a request to a host no tenant claims gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownHosts {
    /// Treated as the default tenant (empty name).
    Default,
    /// Every token refused: no redirect, no event.
    Reject,
}

/// A host no tenant claims, with `unknown_hosts = "reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownHost;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {0:?} is not configured in [[tenants]]")]
pub struct NoSuchTenant(pub String);

/// Every tenant, the global key ring and the default base URL.
#[derive(Debug)]
pub struct Tenancy {
    keys: Arc<KeyRing>,
    default_base: Destination,
    tenants: Vec<Tenant>,
    by_host: HashMap<String, usize>,
    unknown_hosts: UnknownHosts,
}

impl Tenancy {
    pub fn new(
        keys: Arc<KeyRing>,
        default_base: Destination,
        tenants: Vec<Tenant>,
        unknown_hosts: UnknownHosts,
    ) -> Tenancy {
        let by_host = tenants
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.hosts.iter().map(move |h| (h.clone(), i)))
            .collect();
        Tenancy { keys, default_base, tenants, by_host, unknown_hosts }
    }

    /// The tenant whose tracking host a request came to: `Ok(None)` is the
    /// default tenant. `host` is as the request gave it (port, case, dot).
    pub fn for_host(&self, host: Option<&str>) -> Result<Option<&Tenant>, UnknownHost> {
        if self.tenants.is_empty() && self.unknown_hosts == UnknownHosts::Default {
            return Ok(None); // one tenant: spare every request the look-up
        }
        let found =
            host.and_then(normalize_host).and_then(|h| self.by_host.get(&h)).map(|&i| &self.tenants[i]);
        match (found, self.unknown_hosts) {
            (Some(t), _) => Ok(Some(t)),
            (None, UnknownHosts::Default) => Ok(None),
            (None, UnknownHosts::Reject) => Err(UnknownHost),
        }
    }

    /// A tenant by name; `""` is the default tenant.
    pub fn named(&self, name: &str) -> Result<Option<&Tenant>, NoSuchTenant> {
        if name.is_empty() {
            return Ok(None);
        }
        self.tenants.iter().find(|t| t.name == name).map(Some).ok_or_else(|| NoSuchTenant(name.to_owned()))
    }

    /// The ring a tenant's tokens are sealed and opened with.
    pub fn keys<'a>(&'a self, tenant: Option<&'a Tenant>) -> &'a KeyRing {
        tenant.and_then(|t| t.keys.as_deref()).unwrap_or(&self.keys)
    }

    /// The global ring, shared.
    pub fn global_keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// Where a tenant's URLs are minted when no base is given.
    pub fn base_url<'a>(&'a self, tenant: Option<&'a Tenant>) -> &'a Destination {
        tenant.map_or(&self.default_base, |t| &t.base_url)
    }

    /// The tenant's name as tokens carry it.
    pub fn name(tenant: Option<&Tenant>) -> &str {
        tenant.map_or("", |t| t.name.as_str())
    }

    /// Every host whose links are already tracking links: each tenant's
    /// hosts and the default base's host.
    pub fn tracking_hosts(&self) -> Vec<String> {
        let default =
            url::Url::parse(self.default_base.as_str()).ok().and_then(|u| u.host_str().map(str::to_owned));
        self.tenants.iter().flat_map(|t| t.hosts.iter().cloned()).chain(default).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// The default base URL: `public_url`, or `http://` and the listen address
/// (loopback for an unspecified one), without a trailing slash.
pub fn default_base(public_url: Option<&Destination>, listen: SocketAddr) -> Destination {
    match public_url {
        Some(url) => url.clone(),
        None => {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            Destination::parse(&format!("http://{addr}")).expect("an address makes a valid URL")
        }
    }
}

/// A host in the one form tenants are looked up by: without its port,
/// lower case, without a trailing dot, non-ASCII names in IDNA form.
/// `None` for something that is not a host name or address.
pub fn normalize_host(host: &str) -> Option<String> {
    let name = strip_port(host.trim());
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    // The common case, a plain lower-case name, needs no IDNA pass.
    if name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return Some(name.to_owned());
    }
    match url::Host::parse(name).ok()? {
        url::Host::Domain(d) => Some(d.trim_end_matches('.').to_owned()),
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(format!("[{ip}]")),
    }
}

/// `t.example.com:8080` → `t.example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The first host claimed twice, as (tenant, host), if any.
pub fn check_hosts(tenants: &[Tenant]) -> Result<(), (String, String)> {
    let mut seen = std::collections::HashSet::new();
    for t in tenants {
        for h in &t.hosts {
            if !seen.insert(h) {
                return Err((t.name.clone(), h.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_one_normal_form() {
        let cases = [
            ("t.example.com", Some("t.example.com")),
            ("t.example.com:8080", Some("t.example.com")),
            ("T.Example.COM", Some("t.example.com")),
            ("t.example.com.", Some("t.example.com")),
            ("T.EXAMPLE.COM.:443", Some("t.example.com")),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("BÜCHER.example.", Some("xn--bcher-kva.example")),
            ("[::1]:80", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            ("", None),
            (".", None),
            ("a b", None),
        ];
        for (host, want) in cases {
            assert_eq!(normalize_host(host).as_deref(), want, "{host:?}");
        }
    }

    fn ring() -> Arc<KeyRing> {
        Arc::new(
            KeyRing::parse(&crate::keys::Key::generate_entry(&crate::keys::KeyId::new("k1").unwrap()))
                .unwrap(),
        )
    }

    fn tenancy(unknown: UnknownHosts) -> Tenancy {
        let a = Tenant {
            name: "a".into(),
            hosts: vec!["t.sender-a.com".into(), "links.sender-a.com".into()],
            base_url: Destination::parse("https://t.sender-a.com").unwrap(),
            fallback_url: None,
            switches: Switches::default(),
            keys: Some(ring()),
        };
        Tenancy::new(ring(), Destination::parse("https://t.example.com").unwrap(), vec![a], unknown)
    }

    #[test]
    fn a_trailing_dot_or_a_port_reaches_the_same_tenant() {
        let t = tenancy(UnknownHosts::Default);
        for host in ["t.sender-a.com", "t.sender-a.com.", "T.SENDER-A.COM.:8080", "links.sender-a.com"] {
            assert_eq!(t.for_host(Some(host)).unwrap().map(|t| t.name.as_str()), Some("a"), "{host}");
        }
        assert!(t.for_host(Some("other.com")).unwrap().is_none());
        let strict = tenancy(UnknownHosts::Reject);
        assert!(matches!(strict.for_host(Some("other.com.")), Err(UnknownHost)));
        assert!(matches!(strict.for_host(None), Err(UnknownHost)));
        assert!(strict.for_host(Some("t.sender-a.com.")).unwrap().is_some());
    }

    #[test]
    fn tracking_hosts_are_every_tenant_host_and_the_default() {
        let t = tenancy(UnknownHosts::Default);
        assert_eq!(t.tracking_hosts(), ["t.sender-a.com", "links.sender-a.com", "t.example.com"]);
        assert!(matches!(t.named("b"), Err(NoSuchTenant(name)) if name == "b"));
        assert!(t.named("").unwrap().is_none());
        assert!(std::ptr::eq(
            t.keys(t.named("a").unwrap()),
            t.named("a").unwrap().unwrap().keys.as_deref().unwrap()
        ));
    }
}
