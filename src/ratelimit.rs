//! Per-client rate limits on the endpoints where a client can make waymark
//! do real work or record a state change: unsubscribe, and the admin API.
//! Pixels and clicks are never limited: a recipient's mail client must
//! always get its image and its redirect.
//!
//! Built on governor's keyed GCRA limiter. Clients are keyed by address,
//! IPv6 by /64, since one host holds a whole /64 and could rotate through it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct ClientLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl std::fmt::Debug for ClientLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimit").field("clients", &self.limiter.len()).finish()
    }
}

/// How often the limiter forgets clients whose budget is full again, which
/// bounds its memory by the number of recently active clients.
const PRUNE_EVERY: u64 = 4096;

impl ClientLimit {
    /// `per_minute` requests a minute per client, in bursts of up to as many.
    pub fn per_minute(per_minute: NonZeroU32) -> ClientLimit {
        ClientLimit { limiter: RateLimiter::keyed(Quota::per_minute(per_minute)), checks: AtomicU64::new(0) }
    }

    /// Whether `client` may make one more request now.
    pub fn allow(&self, client: IpAddr) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key(client)).is_ok()
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_own_budget_and_ipv6_counts_by_64() {
        let limit = ClientLimit::per_minute(NonZeroU32::new(3).unwrap());
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        assert!((0..3).all(|_| limit.allow(a)));
        assert!(!limit.allow(a), "the fourth request within the minute is refused");
        assert!(limit.allow(b), "another client is unaffected");
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!((0..3).all(|_| limit.allow(v6a)));
        assert!(!limit.allow(v6b), "the same /64 shares one budget");
    }
}
