//! Health: the facts `/healthz` and `/readyz` report, set by whichever
//! component knows them.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Shutting down: load balancers should send traffic elsewhere.
    Draining,
}

impl Health {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) { Readiness::Draining } else { Readiness::Ready }
    }
}
