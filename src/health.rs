//! Health: the facts `/healthz` and `/readyz` report, set by whichever
//! component knows them. Degraded is not failed: a replica whose events are
//! spooling still answers every request correctly, so it stays in service.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Why the service is degraded, most serious last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Degraded {
    /// Events wait in the disk spool for the brokers.
    Spooling = 1,
    /// The brokers have not acknowledged anything for a while.
    BrokersUnreachable = 2,
    /// The spool hit its size cap: new events are being lost.
    SpoolFull = 3,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::Spooling => "spooling",
            Degraded::BrokersUnreachable => "brokers unreachable",
            Degraded::SpoolFull => "spool full, events are being lost",
        }
    }

    fn from_u8(v: u8) -> Option<Degraded> {
        match v {
            1 => Some(Degraded::Spooling),
            2 => Some(Degraded::BrokersUnreachable),
            3 => Some(Degraded::SpoolFull),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    degraded: AtomicU8,
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

    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) {
            return Readiness::Draining;
        }
        match Degraded::from_u8(self.degraded.load(Ordering::Relaxed)) {
            Some(d) => Readiness::Degraded(d),
            None => Readiness::Ready,
        }
    }
}
