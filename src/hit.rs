//! [`Hit`]: one request for a tracking URL, reduced to what the classifier
//! and the event need, and the pure functions that take a request apart.
//!
//! Nothing here does I/O, so the edge cases (forwarded headers, broken user
//! agents) are unit-tested without a socket. [`record`] is the layout in
//! which a hit travels to a judge in another process.

pub mod record;

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use time::OffsetDateTime;
use ulid::Ulid;

use crate::token::Token;

/// Longest user agent kept; the rest is cut at a character boundary.
pub const MAX_USER_AGENT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

/// A hit's identity, minted once when the hit arrives. Every event the hit
/// gives rise to takes its id from this one ([`crate::event::ids`]), so
/// judging the same hit again gives the same events with the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HitId(pub Ulid);

impl HitId {
    /// A new id at the hit's time: sortable, and unique by its 80 random bits.
    pub fn mint(at: OffsetDateTime) -> HitId {
        HitId(Ulid::from_datetime(at.into()))
    }
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: HitId,
    pub token: Token,
    pub at: OffsetDateTime,
    pub method: Method,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The token as the edge received it, kept only when the hit is
    /// forwarded to a judge in another process (`judge = "kafka"`).
    pub sealed: Option<Box<str>>,
}

/// The one header a trusted proxy writes the client's address in. Only
/// that one is read: a proxy passes the other through from the client, who
/// could then choose its own address (and network verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most untrusted address of the proxy's header.
/// Headers from anyone else are ignored: they are free to forge.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], header: ClientIpHeader) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let values = |name: &'static str| {
        headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    };
    let forwarded: Vec<IpAddr> = match header {
        ClientIpHeader::Forwarded => values("forwarded").filter_map(forwarded_for).collect(),
        ClientIpHeader::XForwardedFor => {
            values("x-forwarded-for").filter_map(|s| parse_ip(s.trim())).collect()
        }
    };
    // Walk from the nearest hop outwards; the first address we do not
    // operate is the client. Everything further left is client-supplied.
    let mut client = peer;
    for ip in forwarded.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| parse_ip(v.trim().trim_matches('"')))?
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok()).map(IpAddr::V4)
}

/// The user agent as text: bytes that are not UTF-8 become U+FFFD, and it is
/// cut to [`MAX_USER_AGENT`] bytes. An empty one counts as missing.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(http::header::USER_AGENT)?.as_bytes();
    let raw = &raw[..raw.len().min(MAX_USER_AGENT)];
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        use ClientIpHeader::{Forwarded, XForwardedFor as Xff};
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer_lb: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let cases: Vec<(IpAddr, ClientIpHeader, Vec<(&str, &str)>, &str)> = vec![
            (stranger, Xff, vec![("x-forwarded-for", "203.0.113.9")], "198.51.100.7"),
            (peer_lb, Xff, vec![], "10.1.2.3"),
            (peer_lb, Xff, vec![("x-forwarded-for", "203.0.113.9")], "203.0.113.9"),
            // The client may prepend lies; the right-most untrusted hop wins.
            (peer_lb, Xff, vec![("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.9.9.9")], "203.0.113.9"),
            (
                peer_lb,
                Xff,
                vec![("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.9")],
                "203.0.113.9",
            ),
            (peer_lb, Xff, vec![("x-forwarded-for", "garbage")], "10.1.2.3"),
            // A Forwarded header the proxy passed through from the client
            // is ignored when the proxy writes X-Forwarded-For (issue 18).
            (
                peer_lb,
                Xff,
                vec![("x-forwarded-for", "203.0.113.5"), ("forwarded", "for=66.249.84.1")],
                "203.0.113.5",
            ),
            (peer_lb, Xff, vec![("forwarded", "for=66.249.84.1")], "10.1.2.3"),
            (peer_lb, Forwarded, vec![("x-forwarded-for", "66.249.84.1")], "10.1.2.3"),
            (
                peer_lb,
                Forwarded,
                vec![("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
                "192.0.2.60",
            ),
            (
                peer_lb,
                Forwarded,
                vec![("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            (
                peer_lb,
                Forwarded,
                vec![("forwarded", "for=192.0.2.43, for=198.51.100.17:80")],
                "198.51.100.17",
            ),
        ];
        for (peer, header, hs, want) in cases {
            assert_eq!(
                client_ip(peer, &headers(&hs), &trusted, header).to_string(),
                want,
                "{header:?} {hs:?}"
            );
        }
    }

    #[test]
    fn user_agents_are_kept_as_text_and_bounded() {
        assert_eq!(user_agent(&HeaderMap::new()), None);
        assert_eq!(user_agent(&headers(&[("user-agent", "  ")])), None);
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_bytes(b"Mozilla/5.0 \xff\xfe x").unwrap());
        assert_eq!(user_agent(&h).unwrap(), "Mozilla/5.0 \u{fffd}\u{fffd} x");
        let long = "a".repeat(5000);
        assert_eq!(user_agent(&headers(&[("user-agent", &long)])).unwrap().len(), MAX_USER_AGENT);
    }
}
