//! Health: the facts `/healthz` and `/readyz` report, set by whichever
//! component knows them. Degraded is not failed: a replica whose events are
//! spooling still answers every request correctly, so it stays in service.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why the service is degraded, most serious last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Degraded {
    /// Events wait in the disk spool for the brokers.
    Spooling = 1,
    /// Events wait unacknowledged while the shipper gets no CPU time: the
    /// core is saturated, and the spool holds them until it is not.
    Behind = 2,
    /// The brokers have not acknowledged anything for a while.
    BrokersUnreachable = 3,
    /// The spool hit its size cap: new events are being lost.
    SpoolFull = 4,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::Spooling => "spooling",
            Degraded::Behind => "behind, the core is saturated",
            Degraded::BrokersUnreachable => "brokers unreachable",
            Degraded::SpoolFull => "spool full, events are being lost",
        }
    }

    fn from_u8(v: u8) -> Option<Degraded> {
        match v {
            1 => Some(Degraded::Spooling),
            2 => Some(Degraded::Behind),
            3 => Some(Degraded::BrokersUnreachable),
            4 => Some(Degraded::SpoolFull),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    degraded: AtomicU8,
    delivery: DeliveryWatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Degraded(Degraded),
    /// Shutting down: load balancers should send traffic elsewhere.
    Draining,
}

impl Health {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Sets or clears the degraded state.
    pub fn set_degraded(&self, why: Option<Degraded>) {
        self.degraded.store(why.map_or(0, |d| d as u8), Ordering::Relaxed);
    }

    /// Events handed to the brokers and their acknowledgements.
    pub fn delivery(&self) -> &DeliveryWatch {
        &self.delivery
    }

    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) {
            return Readiness::Draining;
        }
        let set = Degraded::from_u8(self.degraded.load(Ordering::Relaxed));
        match set.max(self.delivery.stall()) {
            Some(d) => Readiness::Degraded(d),
            None => Readiness::Ready,
        }
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
    pub fn stall(&self) -> Option<Degraded> {
        self.stall_at(self.now_ms())
    }

    fn stall_at(&self, now: u64) -> Option<Degraded> {
        if !self.stalled_at(now) {
            None
        } else if now.saturating_sub(self.shipper_at.load(Ordering::Acquire)) > SHIPPER_SILENT {
            Some(Degraded::Behind)
        } else {
            Some(Degraded::BrokersUnreachable)
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
        assert_eq!(
            w.stall_at(6 * S),
            Some(Degraded::BrokersUnreachable),
            "the shipper runs and hears nothing"
        );
        assert_eq!(w.stall_at(7 * S), Some(Degraded::Behind), "the shipper has not run for 1.1 s");
        w.shipper_at.store(7 * S, Ordering::Release);
        assert_eq!(w.stall_at(7 * S), Some(Degraded::BrokersUnreachable));
        w.acknowledged_at(1, 7 * S);
        assert_eq!(w.stall_at(60 * S), None, "nothing waits");
    }

    #[test]
    fn readiness_reports_a_stall_nobody_set() {
        // A watch whose clock started ten seconds ago, one event waiting since then.
        let epoch = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        let h = Health { delivery: DeliveryWatch { epoch, ..DeliveryWatch::default() }, ..Health::default() };
        assert_eq!(h.readiness(), Readiness::Ready);
        h.delivery.handed_at(1, || 0);
        assert_eq!(h.readiness(), Readiness::Degraded(Degraded::Behind), "no shipper ever ran");
        h.delivery.shipper_turned();
        assert_eq!(h.readiness(), Readiness::Degraded(Degraded::BrokersUnreachable));
        h.set_degraded(Some(Degraded::Spooling));
        assert_eq!(
            h.readiness(),
            Readiness::Degraded(Degraded::BrokersUnreachable),
            "the more serious state wins"
        );
        h.set_degraded(Some(Degraded::SpoolFull));
        assert_eq!(h.readiness(), Readiness::Degraded(Degraded::SpoolFull));
        h.delivery.acknowledged(1);
        h.set_degraded(None);
        assert_eq!(h.readiness(), Readiness::Ready);
    }
}
