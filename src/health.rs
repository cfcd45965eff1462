//! Health: a small registry of components that report their state, read by
//! `/healthz` and `/readyz`. Each component judges its own state when asked
//! (so a thread that cannot run still gets reported), and the most serious
//! state wins. Degraded is not failed: a replica whose events are spooling
//! still answers every request correctly, so it stays in service.
//!
//! This module knows no component: what "degraded" means for Kafka or for
//! the events file lives with that sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Why a component is degraded: the text `/readyz` shows after
/// `degraded: `, and how serious it is (higher wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degraded {
    pub severity: u8,
    pub reason: &'static str,
}

/// Something whose state readiness reports.
pub trait Component: Send + Sync + std::fmt::Debug {
    /// The component's state now; `None` when healthy.
    fn degraded(&self) -> Option<Degraded>;
}

#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    components: RwLock<Vec<Arc<dyn Component>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Degraded(&'static str),
    /// Shutting down: load balancers should send traffic elsewhere.
    Draining,
}

impl Health {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Adds a component whose state readiness reports from now on.
    pub fn register(&self, component: Arc<dyn Component>) {
        self.components.write().unwrap_or_else(|p| p.into_inner()).push(component);
    }

    /// Registers `component`, if there is one.
    pub fn register_from(&self, component: Option<Arc<dyn Component>>) {
        if let Some(c) = component {
            self.register(c);
        }
    }

    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) {
            return Readiness::Draining;
        }
        let components = self.components.read().unwrap_or_else(|p| p.into_inner());
        match components.iter().filter_map(|c| c.degraded()).max_by_key(|d| d.severity) {
            Some(d) => Readiness::Degraded(d.reason),
            None => Readiness::Ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Part(Mutex<Option<Degraded>>);

    impl Component for Part {
        fn degraded(&self) -> Option<Degraded> {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn the_most_serious_state_wins_and_draining_above_all() {
        let h = Health::default();
        assert_eq!(h.readiness(), Readiness::Ready, "no component, nothing wrong");
        let (a, b) = (Arc::new(Part::default()), Arc::new(Part::default()));
        h.register(a.clone());
        h.register(b.clone());
        assert_eq!(h.readiness(), Readiness::Ready);
        *a.0.lock().unwrap() = Some(Degraded { severity: 1, reason: "spooling" });
        assert_eq!(h.readiness(), Readiness::Degraded("spooling"));
        *b.0.lock().unwrap() = Some(Degraded { severity: 5, reason: "events file unwritable" });
        assert_eq!(h.readiness(), Readiness::Degraded("events file unwritable"));
        *b.0.lock().unwrap() = None;
        assert_eq!(h.readiness(), Readiness::Degraded("spooling"));
        h.set_draining();
        assert_eq!(h.readiness(), Readiness::Draining);
    }
}
