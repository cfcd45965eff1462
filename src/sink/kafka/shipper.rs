//! The shipper: a state machine that sends spooled events to the brokers
//! in spool order, through a [`Producer`], and moves the spool's cursor
//! over what they acknowledged.
//!
//! It takes events from memory (live shipments from the pipeline) while it
//! keeps up, and reads the spool (replay) when it cannot: at start, after a
//! gap (the live queue overflowed), a full producer queue, or a failed
//! delivery. After a failure it starts over from the first unacknowledged
//! record with a fresh producer, after a growing pause. Duplicates are
//! possible; consumers dedupe on `event_id`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::producer::{Outgoing, Producer, Refusal, Report};
use super::record;
use super::settings::KafkaSettings;
use super::state::{KafkaState, Reason};
use super::stats::KafkaStats;
use crate::sink::spool::{Ledger, Reader};

/// One event handed from the pipeline to the shipper in memory.
pub struct Shipment {
    pub at: u64,
    pub next: u64,
    pub payload: Bytes,
}

/// Shipments waiting in memory; beyond this the shipper reads the spool.
pub const LIVE_QUEUE: usize = 65_536;
/// The shipper's pause when it can do nothing until reports or a flush come.
const IDLE_WAIT: Duration = Duration::from_millis(2);
/// Most live shipments sent in one turn of the shipper's loop.
const LIVE_BATCH: usize = 1024;
/// The first pause after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the cursor moves while shipping, and is retried after a failure.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
const COMMIT_RETRY: Duration = Duration::from_secs(1);

pub struct Shipper<P> {
    settings: KafkaSettings,
    producer: P,
    ledger: Arc<Ledger>,
    state: Arc<KafkaState>,
    stats: Arc<KafkaStats>,
    /// Position of the next record to send.
    next: u64,
    /// Sent, not yet acknowledged.
    in_flight: BTreeSet<u64>,
    committed: u64,
    committed_at: Instant,
    /// Failed attempts to move the cursor in a row.
    commit_failures: u64,
    /// Some: reading the spool from this reader instead of the live queue.
    replay: Option<Reader>,
    /// Live shipments kept while replaying, so no flush is waited for.
    held: VecDeque<Shipment>,
    /// Read from the spool, refused by a full producer queue: sent first
    /// next time (only if still next in order), so nothing is skipped.
    unsent: Option<(u64, u64, Bytes)>,
    /// After a failure, nothing is sent before this.
    backoff_until: Option<Instant>,
    backoff: Duration,
    /// The state last reported, so changes are logged once.
    reported: Option<Reason>,
    reports: Vec<Report>,
}

impl<P: Producer> Shipper<P> {
    /// A shipper that starts by reading the spool from `cursor`: it may
    /// hold a previous run's events.
    pub fn new(
        settings: KafkaSettings,
        producer: P,
        ledger: Arc<Ledger>,
        state: Arc<KafkaState>,
        stats: Arc<KafkaStats>,
        cursor: u64,
    ) -> Self {
        Shipper {
            settings,
            producer,
            replay: Some(Reader::new(ledger.clone(), cursor)),
            ledger,
            state,
            stats,
            next: cursor,
            in_flight: BTreeSet::new(),
            committed: cursor,
            committed_at: Instant::now(),
            commit_failures: 0,
            held: VecDeque::new(),
            unsent: None,
            backoff_until: None,
            backoff: FIRST_BACKOFF,
            reported: None,
            reports: Vec::new(),
        }
    }

    /// Ships until `stop` is set, then finishes.
    pub fn run(mut self, incoming: Receiver<Shipment>, stop: &AtomicBool) {
        loop {
            if stop.load(Ordering::Acquire) {
                self.serve_reports();
                // Take what is left in memory in order, then finish.
                while let Ok(s) = incoming.try_recv() {
                    self.held.push_back(s);
                }
                self.ship_held();
                break;
            }
            self.turn(&incoming);
        }
        self.finish();
    }

    /// One turn: take delivery reports, send what can be sent (live or
    /// from the spool), move the cursor, report the state. Waits a few
    /// milliseconds at most.
    pub fn turn(&mut self, incoming: &Receiver<Shipment>) {
        self.state.watch.shipper_turned();
        self.serve_reports();
        match self.backoff_until {
            Some(t) if Instant::now() < t => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                self.backoff_until = None;
                if self.replay.is_some() {
                    while let Ok(s) = incoming.try_recv() {
                        if self.held.len() < LIVE_QUEUE {
                            self.held.push_back(s);
                        } else {
                            self.held.clear();
                        }
                    }
                    if !self.replay_some() {
                        // Nothing can be sent before the next spool flush or
                        // delivery: wait instead of spinning.
                        std::thread::sleep(IDLE_WAIT);
                    }
                } else {
                    self.take_live(incoming);
                }
            }
        }
        self.maybe_commit(false);
        self.report_state();
    }

    fn take_live(&mut self, incoming: &Receiver<Shipment>) {
        match incoming.recv_timeout(Duration::from_millis(5)) {
            Ok(s) => {
                self.ship_live(s);
                // Take what else waits before the bookkeeping, which need
                // not run per event.
                for _ in 0..LIVE_BATCH {
                    if self.replay.is_some() {
                        break; // the next turn reads the spool
                    }
                    match incoming.try_recv() {
                        Ok(s) => self.ship_live(s),
                        Err(_) => break,
                    }
                }
            }
            Err(quiet) => {
                // A gap is otherwise seen only when the next shipment
                // arrives: the tail of a burst that overflowed the queue
                // would wait in the spool for the next event, however late.
                if self.ledger.readable_end() > self.next {
                    self.start_replay();
                } else if quiet == RecvTimeoutError::Disconnected {
                    std::thread::sleep(IDLE_WAIT); // nobody hands anything over (a replay by hand)
                }
            }
        }
    }

    /// Whether everything readable in the spool was sent and acknowledged.
    pub fn caught_up(&self) -> bool {
        self.replay.is_none()
            && self.in_flight.is_empty()
            && self.held.is_empty()
            && self.next >= self.ledger.readable_end()
    }

    /// At the end: give the brokers a bounded time for what is in flight,
    /// and move the cursor over what they acknowledged.
    pub fn finish(&mut self) {
        self.producer.flush(self.settings.flush_timeout);
        self.serve_reports();
        self.maybe_commit(true);
        let left = self.in_flight.len();
        if left > 0 {
            tracing::warn!(left, "events not acknowledged at shutdown stay in the spool for the next start");
        }
    }

    /// At shutdown: send what was handed over in memory, up to the first
    /// gap; the rest stays in the spool for the next start.
    fn ship_held(&mut self) {
        // A gap (or a full producer queue) starts a replay and puts the
        // shipment back: checked every turn, or it would be taken again forever.
        while self.replay.is_none() {
            let Some(s) = self.held.pop_front() else { break };
            self.ship_live(s);
        }
    }

    fn ship_live(&mut self, s: Shipment) {
        if s.at < self.next {
            return; // already sent from the spool
        }
        if s.at > self.next {
            // A gap: shipments were skipped when the queue was full.
            self.start_replay();
            self.held.push_back(s);
            return;
        }
        self.send(s.at, s.next, &s.payload, false);
    }

    fn start_replay(&mut self) {
        if self.replay.is_none() {
            self.replay = Some(Reader::new(self.ledger.clone(), self.next));
        }
    }

    /// Sends a batch from the spool, then from the held live shipments;
    /// back to live mode once caught up. False when nothing could be sent.
    fn replay_some(&mut self) -> bool {
        let start = self.next;
        let end = self.ledger.readable_end();
        for _ in 0..1000 {
            let (at, next, payload) = match self.unsent.take() {
                Some(record) if record.0 == self.next => record,
                _ => {
                    let Some(reader) = self.replay.as_mut() else { return true };
                    match reader.next(end) {
                        Ok(Some(record)) => record,
                        Ok(None) => {
                            // Nothing left to send before the reader's
                            // position (empty segments, damage passed over).
                            self.next = self.next.max(reader.position().min(end));
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the spool; retrying");
                            self.backoff_until = Some(Instant::now() + Duration::from_secs(1));
                            return true;
                        }
                    }
                }
            };
            if at < self.next {
                continue;
            }
            // A record after damage the reader passed over: go on from it.
            self.next = self.next.max(at);
            if !self.send(at, next, &payload, true) {
                // The reader has moved past it: keep it to try first.
                self.unsent = Some((at, next, payload));
                return self.next != start;
            }
        }
        // Caught up with what is readable: continue from the held shipments.
        while let Some(s) = self.held.front() {
            if s.at < self.next {
                self.held.pop_front();
            } else if s.at == self.next {
                let (at, next, payload) = (s.at, s.next, s.payload.clone());
                if !self.send(at, next, &payload, false) {
                    return self.next != start; // kept: tried again next turn
                }
                self.held.pop_front();
            } else {
                return self.next != start; // a gap, readable after the next flush
            }
        }
        if self.ledger.readable_end() <= self.next {
            self.replay = None;
        }
        true
    }

    /// Sends one record; false when the producer cannot take it now.
    fn send(&mut self, at: u64, next: u64, payload: &[u8], replayed: bool) -> bool {
        let decoded = match record::decode_any(payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, at, "skipping an unreadable spool record");
                self.next = next;
                return true;
            }
        };
        let record = decoded.record();
        let topic = self.settings.topic_for(record.kind);
        match self.producer.send(Outgoing { topic: &topic, record, at, next }) {
            Ok(()) => {
                self.in_flight.insert(at);
                self.next = next;
                if replayed {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.unacknowledged.store(self.in_flight.len() as u64, Ordering::Relaxed);
                true
            }
            Err(Refusal::QueueFull) => {
                // The producer holds as much as it may: wait, and read the spool later.
                self.start_replay();
                std::thread::sleep(IDLE_WAIT);
                self.serve_reports();
                false
            }
            Err(Refusal::Other(e)) => {
                tracing::warn!(error = %e, "the producer refused an event; it stays in the spool");
                self.fail();
                false
            }
        }
    }

    /// Applies the delivery reports that arrived.
    fn serve_reports(&mut self) {
        let mut reports = std::mem::take(&mut self.reports);
        self.producer.reports(&mut reports);
        let mut acknowledged = 0;
        let mut failed = false;
        for report in reports.drain(..) {
            match report.outcome {
                Ok(()) => {
                    if self.in_flight.remove(&report.at) {
                        acknowledged += 1;
                    }
                    self.backoff = FIRST_BACKOFF;
                }
                // Reports for records given up on by an earlier failure are stale.
                Err(e) if self.in_flight.contains(&report.at) => {
                    self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    if !failed {
                        tracing::warn!(error = %e, "delivery failed; unacknowledged events will be replayed from the spool");
                    }
                    failed = true;
                }
                Err(_) => {}
            }
        }
        self.reports = reports;
        if acknowledged > 0 {
            self.stats.delivered.fetch_add(acknowledged, Ordering::Relaxed);
            self.state.watch.acknowledged(acknowledged);
        }
        self.stats.unacknowledged.store(self.in_flight.len() as u64, Ordering::Relaxed);
        if failed {
            self.fail();
        }
    }

    /// Sends everything unacknowledged again, after a growing pause,
    /// through a fresh producer.
    fn fail(&mut self) {
        // After its messages time out, an idempotent producer's epoch is
        // bumped and a broker may answer it ProducerFenced from then on;
        // a new producer (and producer id) starts clean.
        if let Err(e) = self.producer.renew() {
            tracing::error!(error = %e, "cannot recreate the Kafka producer; keeping the old one");
        }
        let from = self.in_flight.first().copied().unwrap_or(self.next).min(self.next);
        self.in_flight.clear();
        self.next = from;
        self.held.clear();
        self.unsent = None;
        self.replay = Some(Reader::new(self.ledger.clone(), from));
        self.backoff_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Moves the cursor over what was acknowledged, at most five times a
    /// second, and once a second while moving it fails (logged at powers
    /// of two, so a read-only spool cannot flood the log).
    fn maybe_commit(&mut self, now: bool) {
        let acknowledged = self.in_flight.first().copied().unwrap_or(self.next);
        // What the brokers have, for whoever waits on it (the judge's commits).
        self.ledger.note_acknowledged(acknowledged);
        // Never past what is on disk: records shipped from memory before
        // they were written (a flush to come, or a disk that refuses) would
        // leave a cursor pointing nowhere after a crash.
        let upto = acknowledged.min(self.ledger.readable_end());
        let every = if self.commit_failures > 0 { COMMIT_RETRY } else { COMMIT_EVERY };
        if upto <= self.committed || (!now && self.committed_at.elapsed() < every) {
            return;
        }
        self.committed_at = Instant::now();
        match self.ledger.commit(upto) {
            Ok(()) => {
                if self.commit_failures > 0 {
                    tracing::info!(failures = self.commit_failures, "the spool cursor moves again");
                }
                self.commit_failures = 0;
                self.committed = upto;
            }
            Err(e) => {
                self.commit_failures += 1;
                if self.commit_failures.is_power_of_two() {
                    tracing::error!(
                        error = %e,
                        failures = self.commit_failures,
                        "cannot move the spool cursor: shipped events will be sent again after a restart"
                    );
                }
            }
        }
    }

    fn report_state(&mut self) {
        self.state.spooling.store(self.replay.is_some() || self.backoff_until.is_some(), Ordering::Relaxed);
        let why = self.state.reason();
        if why != self.reported {
            match why {
                Some(Reason::BrokersUnreachable) => tracing::warn!(
                    brokers = %self.settings.brokers,
                    "no acknowledgement from the Kafka brokers for 5 s: events are spooling to disk"
                ),
                Some(r) => tracing::info!(state = r.as_str(), "Kafka sink degraded"),
                None => tracing::info!("Kafka sink healthy: the spool is drained"),
            }
            self.reported = why;
        }
    }
}

#[cfg(test)]
#[path = "shipper_tests.rs"]
mod tests;
