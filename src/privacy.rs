//! What of the client an event keeps: the IP address in full, truncated
//! (IPv4 to /24, IPv6 to /48), as a keyed hash, or not at all; and the
//! user agent or not. Classification always sees the real values; only
//! what leaves waymark in events is reduced.
//!
//! A keyed hash (HMAC-SHA-256) lets consumers count distinct clients without
//! holding addresses, and without a dictionary attack on the 2^32 IPv4
//! space, since the key never leaves waymark.

use std::net::IpAddr;

use ring::hmac;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMode {
    Full,
    Truncated,
    Hashed,
    None,
}

impl IpMode {
    pub fn parse(s: &str) -> Option<IpMode> {
        match s {
            "full" => Some(IpMode::Full),
            "truncated" => Some(IpMode::Truncated),
            "hashed" => Some(IpMode::Hashed),
            "none" => Some(IpMode::None),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Privacy {
    ip: IpMode,
    key: hmac::Key,
    keep_user_agent: bool,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("ip", &self.ip)
            .field("keep_user_agent", &self.keep_user_agent)
            .finish()
    }
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy::new(IpMode::Full, &[0; 32], true)
    }
}

impl Privacy {
    pub fn new(ip: IpMode, hash_key: &[u8], keep_user_agent: bool) -> Privacy {
        Privacy { ip, key: hmac::Key::new(hmac::HMAC_SHA256, hash_key), keep_user_agent }
    }

    /// The address as an event shows it.
    pub fn ip(&self, ip: IpAddr) -> Option<String> {
        match self.ip {
            IpMode::Full => Some(ip.to_string()),
            IpMode::Truncated => Some(truncate(ip).to_string()),
            IpMode::Hashed => {
                let tag = hmac::sign(&self.key, ip.to_canonical().to_string().as_bytes());
                let hex: String = tag.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
                Some(format!("hash:{hex}"))
            }
            IpMode::None => None,
        }
    }

    /// Whether events keep the user agent.
    pub fn keeps_user_agent(&self) -> bool {
        self.keep_user_agent
    }
}

fn truncate(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_reduces_the_address_as_documented() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:cafe:1:2:3:4:5".parse().unwrap();
        let p = |mode| Privacy::new(mode, b"0123456789abcdef0123456789abcdef", true);
        assert_eq!(p(IpMode::Full).ip(v4).unwrap(), "203.0.113.77");
        assert_eq!(p(IpMode::Truncated).ip(v4).unwrap(), "203.0.113.0");
        assert_eq!(p(IpMode::Truncated).ip(v6).unwrap(), "2001:db8:cafe::");
        assert_eq!(p(IpMode::None).ip(v4), None);
        let h = p(IpMode::Hashed).ip(v4).unwrap();
        assert!(h.starts_with("hash:") && h.len() == 5 + 32, "{h}");
        assert_eq!(p(IpMode::Hashed).ip(v4), Some(h.clone()), "stable under one key");
        let other_key = Privacy::new(IpMode::Hashed, b"another key, another set of hash", true);
        assert_ne!(other_key.ip(v4).unwrap(), h);
        assert_ne!(p(IpMode::Hashed).ip("203.0.113.78".parse().unwrap()).unwrap(), h);
    }
}
