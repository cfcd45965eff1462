//! The Kafka sink's state as readiness sees it: the reasons it can be
//! degraded (spooling, behind, brokers unreachable, the spool cursor stuck,
//! the spool full or unwritable), judged when asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::health::{Component, Degraded};
use crate::sink::spool::Ledger;

/// Why the Kafka sink is degraded, most serious last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Events wait in the disk spool for the brokers.
    Spooling,
    /// Events wait unacknowledged while the shipper gets no CPU time: the
    /// core is saturated, and the spool holds them until it is not.
    Behind,
    /// The brokers have not acknowledged anything for a while.
    BrokersUnreachable,
    /// The spool's cursor cannot be moved: shipped events will be sent again.
    CursorStuck,
    /// The disk refuses the spool's writes: events wait in memory, then are lost.
    SpoolUnwritable,
    /// The spool refuses events: new events are being lost.
    SpoolFull,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Spooling => "spooling",
            Reason::Behind => "behind, the core is saturated",
            Reason::BrokersUnreachable => "brokers unreachable",
            Reason::CursorStuck => "spool cursor cannot be moved",
            Reason::SpoolUnwritable => "spool unwritable, events wait in memory",
            Reason::SpoolFull => "spool full, events are being lost",
        }
    }
}

/// What the pipeline thread, the shipper and readiness share.
#[derive(Debug)]
pub struct KafkaState {
    /// The last append was refused.
    pub full: AtomicBool,
    /// The last write to the spool's disk failed.
    pub unwritable: AtomicBool,
    /// The shipper is reading the spool or backing off.
    pub spooling: AtomicBool,
    pub watch: DeliveryWatch,
    ledger: Arc<Ledger>,
}

impl KafkaState {
    pub fn new(ledger: Arc<Ledger>) -> KafkaState {
        KafkaState {
            full: AtomicBool::new(false),
            unwritable: AtomicBool::new(false),
            spooling: AtomicBool::new(false),
            watch: DeliveryWatch::default(),
            ledger,
        }
    }

    /// The most serious reason now, if any.
    pub fn reason(&self) -> Option<Reason> {
        let flag = |f: &AtomicBool, r: Reason| f.load(Ordering::Relaxed).then_some(r);
        [
            flag(&self.full, Reason::SpoolFull),
            flag(&self.unwritable, Reason::SpoolUnwritable),
            self.ledger.cursor_failing().then_some(Reason::CursorStuck),
            self.watch.stall(),
            flag(&self.spooling, Reason::Spooling),
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

impl Component for KafkaState {
    fn degraded(&self) -> Option<Degraded> {
        self.reason().map(|r| Degraded { severity: 10 + r as u8, reason: r.as_str() })
    }
}

/// How long events may wait with no acknowledgement before the brokers
/// count as unreachable.
const STALL: Duration = Duration::from_secs(5);
/// The shipper goes round its loop every few milliseconds; one that has
/// not for this long is not getting the CPU.
const SHIPPER_SILENT: u64 = 1000;

/// Whether events handed to the brokers keep being acknowledged, judged when
/// asked. The shipper runs in the idle scheduling class, so on a saturated
/// core it may not run for seconds: a stall it had to notice itself would go
/// unreported exactly then.
#[derive(Debug)]
pub struct DeliveryWatch {
    epoch: Instant,
    handed: AtomicU64,
    acknowledged: AtomicU64,
    /// Milliseconds after `epoch` when events last began to wait, or were
    /// last acknowledged.
    moved_at: AtomicU64,
    /// Milliseconds after `epoch` when the shipper last went round its loop.
    shipper_at: AtomicU64,
}

impl Default for DeliveryWatch {
    fn default() -> Self {
        DeliveryWatch {
            epoch: Instant::now(),
            handed: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            moved_at: AtomicU64::new(0),
            shipper_at: AtomicU64::new(0),
        }
    }
}

impl DeliveryWatch {
    /// `n` events now wait for the brokers.
    pub fn handed(&self, n: u64) {
        self.handed_at(n, || self.now_ms());
    }

    /// The brokers acknowledged `n` events.
    pub fn acknowledged(&self, n: u64) {
        self.acknowledged_at(n, self.now_ms());
    }

    /// The shipper is running: called once per turn of its loop.
    pub fn shipper_turned(&self) {
        self.shipper_at.store(self.now_ms(), Ordering::Release);
    }

    /// Whether events wait with nothing acknowledged for `STALL`, and what
    /// that says: the brokers do not answer, or the shipper is not getting
    /// the CPU to ask them (it runs in the idle class).
    pub fn stall(&self) -> Option<Reason> {
        self.stall_at(self.now_ms())
    }

    fn stall_at(&self, now: u64) -> Option<Reason> {
        if !self.stalled_at(now) {
            None
        } else if now.saturating_sub(self.shipper_at.load(Ordering::Acquire)) > SHIPPER_SILENT {
            Some(Reason::Behind)
        } else {
            Some(Reason::BrokersUnreachable)
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The clock is read only when nothing waited before: the pipeline
    /// calls this for every event.
    fn handed_at(&self, n: u64, now: impl FnOnce() -> u64) {
        let acknowledged = self.acknowledged.load(Ordering::Acquire);
        if self.handed.fetch_add(n, Ordering::AcqRel) <= acknowledged {
            self.moved_at.store(now(), Ordering::Release);
        }
    }

    fn acknowledged_at(&self, n: u64, now: u64) {
        self.acknowledged.fetch_add(n, Ordering::AcqRel);
        self.moved_at.store(now, Ordering::Release);
    }

    fn stalled_at(&self, now: u64) -> bool {
        let acknowledged = self.acknowledged.load(Ordering::Acquire);
        self.handed.load(Ordering::Acquire) > acknowledged
            && now.saturating_sub(self.moved_at.load(Ordering::Acquire)) > STALL.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn a_stall_is_five_seconds_without_an_acknowledgement_while_events_wait() {
        let w = DeliveryWatch::default();
        assert!(!w.stalled_at(3600 * S), "nothing handed, nothing to wait for");
        w.handed_at(3, || 10 * S);
        assert!(!w.stalled_at(15 * S));
        assert!(w.stalled_at(15 * S + 1));
        w.acknowledged_at(1, 16 * S);
        assert!(!w.stalled_at(21 * S), "an acknowledgement is progress");
        assert!(w.stalled_at(21 * S + 1), "two still wait");
        w.acknowledged_at(2, 22 * S);
        assert!(!w.stalled_at(3600 * S), "all acknowledged: quiet is not a stall");
    }

    #[test]
    fn events_after_a_quiet_hour_are_timed_from_when_they_began_to_wait() {
        let w = DeliveryWatch::default();
        w.handed_at(1, || 0);
        w.acknowledged_at(1, S);
        w.handed_at(1, || 3600 * S);
        assert!(!w.stalled_at(3602 * S), "not timed from the acknowledgement an hour ago");
        assert!(w.stalled_at(3606 * S));
    }

    #[test]
    fn events_handed_while_others_wait_do_not_restart_the_clock() {
        let w = DeliveryWatch::default();
        w.handed_at(1, || 0);
        w.handed_at(1, || panic!("the clock is not read while events wait"));
        assert!(w.stalled_at(6 * S));
    }

    #[test]
    fn a_stall_while_the_shipper_gets_no_cpu_is_behind_not_unreachable() {
        let w = DeliveryWatch::default();
        w.handed_at(1, || 0);
        w.shipper_at.store(5900, Ordering::Release);
        assert_eq!(w.stall_at(6 * S), Some(Reason::BrokersUnreachable), "the shipper runs and hears nothing");
        assert_eq!(w.stall_at(7 * S), Some(Reason::Behind), "the shipper has not run for 1.1 s");
        w.shipper_at.store(7 * S, Ordering::Release);
        assert_eq!(w.stall_at(7 * S), Some(Reason::BrokersUnreachable));
        w.acknowledged_at(1, 7 * S);
        assert_eq!(w.stall_at(60 * S), None, "nothing waits");
    }

    #[test]
    fn readiness_reports_a_stall_nobody_set_and_the_most_serious_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KafkaState::new(Arc::new(Ledger::new(&dir.path().join("gone"), 0)));
        // A watch whose clock started ten seconds ago, one event waiting since then.
        let epoch = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        state.watch = DeliveryWatch { epoch, ..DeliveryWatch::default() };
        assert_eq!(state.reason(), None);
        state.watch.handed_at(1, || 0);
        assert_eq!(state.reason(), Some(Reason::Behind), "no shipper ever ran");
        state.watch.shipper_turned();
        assert_eq!(state.reason(), Some(Reason::BrokersUnreachable));
        state.spooling.store(true, Ordering::Relaxed);
        assert_eq!(state.reason(), Some(Reason::BrokersUnreachable), "the more serious state wins");
        let _ = state.ledger.commit(1);
        assert_eq!(state.reason(), Some(Reason::CursorStuck));
        state.full.store(true, Ordering::Relaxed);
        assert_eq!(state.degraded().map(|d| d.reason), Some("spool full, events are being lost"));
        state.watch.acknowledged(1);
        state.full.store(false, Ordering::Relaxed);
        state.spooling.store(false, Ordering::Relaxed);
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        state.ledger.commit(1).unwrap();
        assert_eq!(state.degraded(), None);
    }
}
