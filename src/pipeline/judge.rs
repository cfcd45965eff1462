//! The judge: one hit in, its events out. Judges the hit in the light of
//! its message's earlier hits (the classifier's behaviour state), builds
//! its events in one step and hands them to a sink. The same code judges
//! in every mode; only where hits come from and which thread owns which
//! messages differ.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::classify::Classifier;
use crate::event::{self, Event};
use crate::hit::Hit;
use crate::sink::{Sink, SinkError};

use super::{Handle, Stats};

pub struct Judge {
    classifier: Classifier,
    events: event::Settings,
    stats: Arc<Stats>,
    /// Every event's JSON is written here in turn: one buffer, no
    /// allocation per event.
    json: Vec<u8>,
}

impl Judge {
    pub fn new(classifier: Classifier, events: event::Settings, stats: Arc<Stats>) -> Judge {
        Judge { classifier, events, stats, json: Vec::with_capacity(4096) }
    }

    /// From now on counts into `stats`. A judge rebuilding a partition's
    /// state replays hits that were counted when first judged; it counts
    /// them into throwaway stats, then into the process's.
    pub fn count_into(&mut self, stats: Arc<Stats>) {
        self.stats = stats;
    }

    /// Judges one hit and publishes its events; false if the sink refused one.
    pub fn handle(&mut self, hit: &Hit, sink: &mut dyn Sink) -> bool {
        let outcome = self.classifier.judge(hit);
        let j = &outcome.judgement;
        let kind = hit.token.claims().target.kind();
        self.stats.verdict_counter(kind, j.verdict, j.counted).fetch_add(1, Ordering::Relaxed);
        let mut taken = self.publish(Event::from_hit(hit, j, &self.events), sink);
        if outcome.backfill {
            taken &= self.publish(Event::backfill(hit, j, &self.events), sink);
        }
        for withdrawn in &outcome.withdrawn {
            taken &= self.publish(Event::reclassified(hit, withdrawn, j, &self.events), sink);
        }
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        taken
    }

    fn publish(&mut self, event: Event, sink: &mut dyn Sink) -> bool {
        let taken = checked(&self.stats, sink.publish(&event.encode(&mut self.json)));
        if taken {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

/// A sink operation's outcome: a failure is counted and logged, never fatal.
pub fn checked(stats: &Stats, outcome: Result<(), SinkError>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(e) => {
            let failures = stats.sink_errors.fetch_add(1, Ordering::Relaxed) + 1;
            // At powers of two: a sink failing every event (a full spool)
            // must not turn the pipeline into a log writer that falls behind
            // and sheds hits.
            if failures.is_power_of_two() {
                tracing::error!(error = %e, failures, "event sink failed");
            }
            false
        }
    }
}

impl Handle for Judge {
    fn handle(&mut self, hit: &Hit, sink: &mut dyn Sink) -> bool {
        Judge::handle(self, hit, sink)
    }
}
