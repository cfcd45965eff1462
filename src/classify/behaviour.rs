//! What a hit means given the hits before it: repeats, bursts of clicks,
//! honeypot links, clients known to be scanning a message, clicks that
//! back-fill a missing open, and reclassification of events already
//! published when evidence of a scanner arrives late.
//!
//! Time is the hit's own timestamp, never the wall clock, so every rule is
//! a pure function of the hits fed in and is unit-tested as such. State is
//! bounded: entries older than the longest window are pruned, and each map
//! is capped.

use std::net::IpAddr;
use std::time::Duration;

// Randomly seeded like std's maps but several times cheaper per look-up;
// the pipeline looks up three maps for every hit.
use crate::hit::HitId;
use crate::token::Kind;
use foldhash::HashMap;
use smallvec::SmallVec;

/// The windows the rules look back over.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// A second counted hit on the same message and link within this is a repeat.
    pub repeat: Duration,
    /// Clicks on `burst_links` distinct links of one message from one client within this are a burst.
    pub burst: Duration,
    pub burst_links: usize,
    /// How long a client found scanning a message stays a scanner for it.
    pub scan: Duration,
    /// How long a counted open, or an unsubscribe, is remembered.
    pub memory: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            repeat: Duration::from_secs(60),
            burst: Duration::from_secs(2),
            burst_links: 3,
            scan: Duration::from_secs(600),
            memory: Duration::from_secs(24 * 3600),
        }
    }
}

/// Most entries any one map holds; past it the oldest half is dropped.
/// With the entries below (16 to 150 bytes each), this bounds the state to
/// about 50 MiB however many messages are in flight.
///
/// 7/16 of a power of two on purpose: a table of 2^18 buckets holds 7/8 of
/// that, and entries dropped leave tombstones that use up its room. When
/// they do, the table is rehashed in place if at most half its room is
/// taken, and doubled otherwise; kept at or under half, it never grows past
/// 2^18 buckets.
const MAX_ENTRIES: usize = 7 << 14;

/// One message of one tenant, as a 64-bit hash: the state remembers
/// millions of messages, and owned strings would cost ten times the memory.
/// Two messages sharing a hash (about one chance in 2^64 per pair) would
/// only share their repeat and back-fill memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKey(u64);

impl MessageKey {
    pub fn new(tenant: &str, message_id: &str) -> MessageKey {
        use std::hash::{Hash as _, Hasher as _};
        // SipHash with fixed keys: the same message hashes the same on
        // every replica and across restarts.
        let mut h = std::hash::DefaultHasher::new();
        tenant.hash(&mut h);
        message_id.hash(&mut h);
        MessageKey(h.finish())
    }
}

/// One hit, as behaviour sees it. Times are Unix milliseconds.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub message: &'a MessageKey,
    pub kind: Kind,
    pub link: Option<u16>,
    pub trap: bool,
    pub client: Option<IpAddr>,
    pub at_ms: i64,
    pub hit: HitId,
}

/// What behaviour adds to the judgement of one hit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub honeypot: bool,
    pub burst: bool,
    /// The client was already known to be scanning this message.
    pub scanning: bool,
    pub repeat: bool,
    /// Emit a counted open with reason `backfill`.
    pub backfill: bool,
    /// Events already published as counted that must now be withdrawn.
    pub withdrawn: Vec<Withdrawn>,
}

impl Findings {
    /// Evidence that the client is a scanner.
    pub fn machine(&self) -> bool {
        self.honeypot || self.burst || self.scanning
    }
}

/// An event published earlier as counted, named by the hit it came from:
/// the hit's own event, or the open that hit back-filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withdrawn {
    pub hit: HitId,
    pub kind: Kind,
    pub backfill: bool,
}

#[derive(Debug, Default)]
struct Trail {
    scanning_since: Option<i64>,
    // Each link clicked within the burst window, with its latest click:
    // at most `burst_links` of them, however often one link is clicked
    // (a client hammering one link must not grow its trail). Inline: most
    // clients hit a message once or twice.
    clicks: SmallVec<[(u16, i64); 2]>,
    counted: SmallVec<[(Withdrawn, Option<u16>); 1]>,
    last_ms: i64,
}

#[derive(Debug, Default)]
pub struct Behaviour {
    windows: Windows,
    last_counted: HashMap<(MessageKey, Kind, Option<u16>), i64>,
    opened: HashMap<MessageKey, i64>,
    trails: HashMap<(IpAddr, MessageKey), Trail>,
    pruned_ms: i64,
    max_entries: usize,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Behaviour {
    pub fn new(windows: Windows) -> Self {
        Behaviour { windows, max_entries: MAX_ENTRIES, ..Default::default() }
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Looks at one hit. `counted` is whether the hit would count on its
    /// own signals; the findings say what its history changes.
    pub fn observe(&mut self, seen: &Seen<'_>, counted: bool) -> Findings {
        use std::collections::hash_map::Entry;
        self.prune(seen.at_ms);
        // Checked on every hit, before this hit adds its entries, not once a
        // second: a flood of new messages adds tens of thousands a second,
        // and a table that outgrows the cap doubles its memory.
        cap(&mut self.last_counted, self.max_entries, |at| *at);
        cap(&mut self.opened, self.max_entries, |at| *at);
        cap(&mut self.trails, self.max_entries, |t| t.last_ms);
        let w = self.windows;
        let mut f = Findings::default();

        // One look-up per map and hit: the pipeline does this for every hit.
        let mut trail = seen.client.map(|ip| self.trails.entry((ip, *seen.message)).or_default());
        if let Some(trail) = trail.as_deref_mut() {
            trail.last_ms = trail.last_ms.max(seen.at_ms);
            f.scanning = trail.scanning_since.is_some_and(|since| seen.at_ms - since <= ms(w.scan));
            f.honeypot = seen.trap;
            if let (Kind::Click, Some(link)) = (seen.kind, seen.link) {
                trail.clicks.retain(|(_, at)| seen.at_ms - *at <= ms(w.burst));
                match trail.clicks.iter_mut().find(|(l, _)| *l == link) {
                    Some((_, at)) => *at = (*at).max(seen.at_ms),
                    None => trail.clicks.push((link, seen.at_ms)),
                }
                f.burst = trail.clicks.len() >= w.burst_links;
            }
            if (f.honeypot || f.burst) && !f.scanning {
                trail.scanning_since = Some(seen.at_ms);
                // Late evidence: withdraw what this client already had counted.
                for (withdrawn, link) in trail.counted.drain(..) {
                    let kind = withdrawn.kind;
                    f.withdrawn.push(withdrawn);
                    self.last_counted.remove(&(*seen.message, kind, link));
                    if kind == Kind::Open {
                        self.opened.remove(seen.message);
                    }
                }
            }
        }
        if !counted || f.machine() {
            return f;
        }

        let window = if seen.kind == Kind::Unsubscribe { w.memory } else { w.repeat };
        match self.last_counted.entry((*seen.message, seen.kind, seen.link)) {
            Entry::Occupied(last) if seen.at_ms - *last.get() <= ms(window) => {
                f.repeat = true;
                return f;
            }
            Entry::Occupied(mut last) => *last.get_mut() = seen.at_ms,
            Entry::Vacant(none) => {
                none.insert(seen.at_ms);
            }
        }
        let mut counted_now: SmallVec<[(Withdrawn, Option<u16>); 2]> = SmallVec::new();
        counted_now.push((Withdrawn { hit: seen.hit, kind: seen.kind, backfill: false }, seen.link));
        match (seen.kind, self.opened.entry(*seen.message)) {
            (Kind::Open, opened) => {
                opened.insert_entry(seen.at_ms);
            }
            (Kind::Click, Entry::Vacant(none)) => {
                f.backfill = true;
                none.insert(seen.at_ms);
                counted_now.push((Withdrawn { hit: seen.hit, kind: Kind::Open, backfill: true }, None));
            }
            _ => {}
        }
        if let Some(trail) = trail {
            trail.counted.extend(counted_now);
        }
        f
    }

    /// Drops what no window can reach any more. Runs at most once a second
    /// of hit time, so its cost is spread thin.
    fn prune(&mut self, now_ms: i64) {
        if now_ms - self.pruned_ms < 1000 {
            return;
        }
        self.pruned_ms = now_ms;
        let w = self.windows;
        let memory = ms(w.memory);
        let repeat = ms(w.repeat);
        let trail_life = ms(w.scan.max(w.burst).max(w.repeat));
        self.last_counted.retain(|(_, kind, _), at| {
            now_ms - *at <= if *kind == Kind::Unsubscribe { memory } else { repeat }
        });
        self.opened.retain(|_, at| now_ms - *at <= memory);
        self.trails.retain(|_, t| now_ms - t.last_ms <= trail_life);
    }
}

/// Leaves room in a map for one more entry within `max` by dropping its
/// older half when it is full.
fn cap<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, max: usize, at: impl Fn(&V) -> i64) {
    if map.len() < max {
        return;
    }
    let mut times: Vec<i64> = map.values().map(&at).collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let median = *median;
    map.retain(|_, v| at(v) > median);
    tracing::warn!(kept = map.len(), "classifier state over its cap: the oldest half was dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> MessageKey {
        MessageKey::new("", id)
    }

    struct Feed {
        b: Behaviour,
        n: u64,
    }

    impl Feed {
        fn new() -> Self {
            Feed { b: Behaviour::new(Windows::default()), n: 0 }
        }
        fn hit(
            &mut self,
            m: &MessageKey,
            kind: Kind,
            link: Option<u16>,
            ip: &str,
            at_ms: i64,
        ) -> (HitId, Findings) {
            self.hit_full(m, kind, link, false, ip, at_ms, true)
        }
        #[allow(clippy::too_many_arguments)]
        fn hit_full(
            &mut self,
            m: &MessageKey,
            kind: Kind,
            link: Option<u16>,
            trap: bool,
            ip: &str,
            at_ms: i64,
            counted: bool,
        ) -> (HitId, Findings) {
            self.n += 1;
            let id = HitId(ulid::Ulid::from_parts(at_ms as u64, self.n as u128));
            let seen = Seen { message: m, kind, link, trap, client: ip.parse().ok(), at_ms, hit: id };
            (id, self.b.observe(&seen, counted))
        }
    }

    #[test]
    fn repeats_within_the_window_do_not_count_again() {
        let mut f = Feed::new();
        let m = msg("m1");
        assert!(!f.hit(&m, Kind::Open, None, "203.0.113.1", 1_000).1.repeat);
        assert!(f.hit(&m, Kind::Open, None, "203.0.113.2", 30_000).1.repeat, "any client");
        assert!(!f.hit(&m, Kind::Open, None, "203.0.113.1", 62_000).1.repeat, "after the window");
        // Clicks repeat per link.
        assert!(!f.hit(&m, Kind::Click, Some(0), "203.0.113.1", 70_000).1.repeat);
        assert!(!f.hit(&m, Kind::Click, Some(1), "203.0.113.1", 75_000).1.repeat);
        assert!(f.hit(&m, Kind::Click, Some(0), "203.0.113.1", 80_000).1.repeat);
        // A hit that did not count does not start a window.
        let m2 = msg("m2");
        f.hit_full(&m2, Kind::Open, None, false, "203.0.113.9", 1_000, false);
        assert!(!f.hit(&m2, Kind::Open, None, "203.0.113.1", 2_000).1.repeat);
    }

    #[test]
    fn a_client_hammering_one_link_keeps_a_small_trail_and_is_no_burst() {
        let mut f = Feed::new();
        let m = msg("m1");
        for i in 0..10_000 {
            let (_, found) = f.hit(&m, Kind::Click, Some(3), "203.0.113.1", 1_000 + i);
            assert!(!found.burst, "one link is no burst");
        }
        let trail = &f.b.trails[&("203.0.113.1".parse().unwrap(), m)];
        assert_eq!(trail.clicks.as_slice(), &[(3, 10_999)], "one entry per link, its latest click");
        // Other links still make a burst as before.
        let links = Windows::default().burst_links as u16;
        let last = (0..links).map(|l| f.hit(&m, Kind::Click, Some(10 + l), "203.0.113.1", 11_000).1).last();
        assert!(last.unwrap().burst);
    }

    #[test]
    fn a_first_click_back_fills_a_missing_open_once() {
        let mut f = Feed::new();
        let m = msg("m1");
        let (_, first) = f.hit(&m, Kind::Click, Some(0), "203.0.113.1", 1_000);
        assert!(first.backfill);
        let (_, second) = f.hit(&m, Kind::Click, Some(1), "203.0.113.1", 9_000);
        assert!(!second.backfill);
        let opened = msg("m2");
        f.hit(&opened, Kind::Open, None, "203.0.113.1", 1_000);
        assert!(!f.hit(&opened, Kind::Click, Some(0), "203.0.113.1", 5_000).1.backfill);
    }

    #[test]
    fn bursts_and_honeypots_mark_the_client_and_withdraw_its_counted_events() {
        let mut f = Feed::new();
        let m = msg("m1");
        let (open_id, _) = f.hit(&m, Kind::Open, None, "198.51.100.5", 1_000);
        let (click_id, c1) = f.hit(&m, Kind::Click, Some(0), "198.51.100.5", 10_000);
        assert!(!c1.machine());
        let (_, c2) = f.hit(&m, Kind::Click, Some(1), "198.51.100.5", 10_300);
        assert!(!c2.burst, "two links are not a burst");
        let (_, c3) = f.hit(&m, Kind::Click, Some(2), "198.51.100.5", 10_600);
        assert!(c3.burst);
        let ids: Vec<(HitId, bool)> = c3.withdrawn.iter().map(|w| (w.hit, w.backfill)).collect();
        assert!(ids.contains(&(open_id, false)) && ids.contains(&(click_id, false)), "{c3:?}");
        // Its later hits on that message are scanner hits, and nothing is withdrawn twice.
        let (_, later) = f.hit(&m, Kind::Open, None, "198.51.100.5", 60_000);
        assert!(later.scanning && later.withdrawn.is_empty());
        // Another client on the same message is unaffected, and the open it
        // makes is not a repeat of the withdrawn one.
        let (_, other) = f.hit(&m, Kind::Open, None, "203.0.113.7", 61_000);
        assert!(!other.machine() && !other.repeat);

        let mut f = Feed::new();
        let trap = f.hit_full(&m, Kind::Click, Some(9), true, "198.51.100.6", 5_000, true).1;
        assert!(trap.honeypot && !trap.backfill);
        assert!(f.hit(&m, Kind::Click, Some(0), "198.51.100.6", 20_000).1.scanning);
    }

    #[test]
    fn slow_clicks_on_many_links_are_not_a_burst() {
        let mut f = Feed::new();
        let m = msg("m1");
        for (i, at) in [0, 3_000, 6_000, 9_000].into_iter().enumerate() {
            assert!(!f.hit(&m, Kind::Click, Some(i as u16), "203.0.113.1", at).1.burst);
        }
    }

    #[test]
    fn an_unsubscribe_counts_once_a_day() {
        let mut f = Feed::new();
        let m = msg("m1");
        assert!(!f.hit(&m, Kind::Unsubscribe, None, "203.0.113.1", 0).1.repeat);
        assert!(f.hit(&m, Kind::Unsubscribe, None, "203.0.113.1", 3_600_000).1.repeat);
    }

    #[test]
    fn a_flood_of_new_messages_keeps_every_map_within_its_cap() {
        let mut f = Feed::new();
        // As MAX_ENTRIES: 7/16 of 2^11 buckets.
        f.b.max_entries = 7 << 7;
        // New messages from new clients, a few hundred a second of hit
        // time, for long enough that capped tables would have filled with
        // tombstones many times over.
        for i in 0..40_000u32 {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let kind = if i % 2 == 0 { Kind::Open } else { Kind::Click };
            f.hit(&msg(&format!("m{i}")), kind, Some(0), &ip, i64::from(i) * 3);
            assert!(
                [f.b.trails.len(), f.b.opened.len(), f.b.last_counted.len()].iter().all(|n| *n <= 7 << 7)
            );
        }
        // Tombstones never made a table grow past 2^11 buckets (room for 7/8).
        for capacity in [f.b.trails.capacity(), f.b.opened.capacity(), f.b.last_counted.capacity()] {
            assert!(capacity <= 7 << 8, "{capacity}");
        }
    }

    #[test]
    fn state_is_pruned_as_hit_time_moves_on() {
        let mut f = Feed::new();
        for i in 0..100 {
            f.hit(&msg(&format!("m{i}")), Kind::Click, Some(0), "203.0.113.1", 1_000);
        }
        assert_eq!(f.b.trails.len(), 100);
        f.hit(&msg("late"), Kind::Open, None, "203.0.113.1", 2 * 24 * 3600 * 1000);
        assert_eq!(f.b.trails.len(), 1);
        assert_eq!(f.b.opened.len(), 1);
    }
}
