//! Where a partition's state is rebuilt from, when a judge is assigned it.
//!
//! The state that matters is that of the hits within the state horizon
//! (the longest of the classifier's windows) before the first hit the
//! judge will judge. Brokers cannot all find an offset by time (tansu's
//! `offsets_for_times` answers 0 for every partition), so the start is
//! found by a binary search over hit times read from the partition itself,
//! then the range is read forward, keeping only hits inside the horizon.
//! Hits are nearly in time order in a partition (edges' clocks differ by
//! milliseconds), so the search lands at most a few hits off; a margin of
//! time absorbs that.
//!
//! Pure: the reads are a closure, so every case is a unit test.

use std::time::Duration;

/// Slack below the horizon, for hits out of order across edges' clocks.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// Most hits replayed to rebuild one partition, whatever the horizon: a
/// bound on the time a rebalance takes.
pub const MAX_REPLAY: i64 = 2_000_000;

/// The first offset in `[low, high)` whose hit time is at or after
/// `since_ms`, given `time_at(o)`: the time of the first readable hit at or
/// after offset `o` with its offset, or `None` past the end. At most
/// [`MAX_REPLAY`] before `high`.
pub fn replay_from(
    low: i64,
    high: i64,
    since_ms: i64,
    mut time_at: impl FnMut(i64) -> Option<(i64, i64)>,
) -> i64 {
    let (mut lo, mut hi) = (low.max(high - MAX_REPLAY), high);
    // Invariant: every offset before `lo` is too old; `hi` is new enough.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match time_at(mid) {
            Some((offset, at)) if offset < hi && at < since_ms => lo = offset + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// The state horizon in milliseconds before the first hit to judge.
pub fn since_ms(first_hit_ms: i64, horizon: Duration) -> i64 {
    first_hit_ms - (horizon + CLOCK_SLACK).as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hit times by offset, from offset 100; `None` is an unreadable record.
    fn partition(times: &[Option<i64>]) -> impl FnMut(i64) -> Option<(i64, i64)> + '_ {
        move |o| {
            (o.max(100)..100 + times.len() as i64).find_map(|at| times[(at - 100) as usize].map(|t| (at, t)))
        }
    }

    #[test]
    fn the_replay_starts_at_the_first_hit_inside_the_horizon() {
        let sorted: Vec<Option<i64>> = (0..50).map(|i| Some(i * 10)).collect();
        let mut jittered = sorted.clone();
        jittered.swap(20, 21); // two edges' clocks a little apart
        let mut damaged = sorted.clone();
        damaged[25] = None;
        damaged[26] = None;
        let cases: Vec<(&str, &[Option<i64>], i64, i64)> = vec![
            ("in order", &sorted, 250, 125),
            ("before every hit", &sorted, -5, 100),
            ("after every hit", &sorted, 10_000, 150),
            ("between two hits", &sorted, 251, 126),
            // Offset 120 (210) sits before 121 (200): the search lands after the
            // pair, and the horizon's slack is what keeps such a hit harmless.
            ("out of order at the boundary", &jittered, 205, 122),
            // 125 and 126 cannot be read: the replay starts at them, and
            // reading skips them.
            ("unreadable records on the way", &damaged, 255, 125),
            ("an empty partition", &[], 0, 100),
        ];
        for (name, times, since, want) in cases {
            let high = 100 + times.len() as i64;
            assert_eq!(replay_from(100, high, since, partition(times)), want, "{name}");
        }
    }

    #[test]
    fn the_replay_is_bounded() {
        let mut reads = 0;
        let start = replay_from(0, 10 * MAX_REPLAY, 0, |o| {
            reads += 1;
            Some((o, o))
        });
        assert_eq!(start, 9 * MAX_REPLAY);
        assert!(reads <= 64, "{reads} reads");
    }
}
