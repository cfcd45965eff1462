//! When a partition's offset may be committed: only once the events
//! produced from every hit before it were acknowledged by the brokers.
//!
//! Pure bookkeeping over two numbers per judged hit: the partition offset
//! to commit after it, and the spool position after its events. The spool
//! is shared by every partition and only grows, and the shipper
//! acknowledges it in order, so one watermark answers for all of them.

use std::collections::VecDeque;

/// One partition's judged hits whose events wait for acknowledgement.
#[derive(Debug, Default)]
pub struct Progress {
    /// `(offset to commit, spool position after the events)`, in order;
    /// hits judged between two looks share one entry.
    waiting: VecDeque<(i64, u64)>,
    /// The offset last handed out to commit.
    committed: Option<i64>,
}

impl Progress {
    /// The hit at `offset` was judged and its events spooled up to `spool_end`.
    pub fn judged(&mut self, offset: i64, spool_end: u64) {
        let next = offset + 1;
        match self.waiting.back_mut() {
            // Same spool position (no event, or a bad record): one entry.
            Some((o, end)) if *end == spool_end => *o = next,
            _ => self.waiting.push_back((next, spool_end)),
        }
    }

    /// The offset to commit now that the brokers acknowledged everything
    /// before `acknowledged`, if it moved since the last commit.
    pub fn committable(&mut self, acknowledged: u64) -> Option<i64> {
        let mut upto = None;
        while let Some(&(offset, end)) = self.waiting.front() {
            if end > acknowledged {
                break;
            }
            upto = Some(offset);
            self.waiting.pop_front();
        }
        let upto = upto.filter(|&o| self.committed.is_none_or(|c| o > c))?;
        self.committed = Some(upto);
        Some(upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_committed_only_after_its_events_were_acknowledged() {
        let mut p = Progress::default();
        assert_eq!(p.committable(u64::MAX), None, "nothing judged");
        p.judged(10, 100);
        p.judged(11, 250);
        p.judged(12, 250); // a bad record or a hit with no new event
        p.judged(13, 400);
        let steps = [(99, None), (100, Some(11)), (300, Some(13)), (300, None), (400, Some(14))];
        for (acknowledged, want) in steps {
            assert_eq!(p.committable(acknowledged), want, "acknowledged {acknowledged}");
        }
        assert!(p.waiting.is_empty());
        p.judged(14, 400);
        assert_eq!(p.committable(400), Some(15), "a hit with no events commits at once");
    }
}
