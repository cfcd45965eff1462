//! The event pipeline: a bounded hand-off from the HTTP edge to one thread
//! that judges each hit, builds its events and feeds the sink.
//!
//! The edge calls [`Recorder::record`], which never blocks: when the queue
//! is full the hit is counted as dropped and the response goes out all the
//! same. Judging and writing happen off the async runtime, on a plain
//! thread, because sinks may block on disk or on a producer queue.
//!
//! An unsubscribe must not be confirmed unless it was recorded: for it the
//! edge calls [`Recorder::record_durably`], whose future resolves once the
//! sink has made its events durable ([`Sink::sync`], once per batch that
//! holds one), or fails (a full queue, a sink that cannot take or sync it,
//! or no answer within the bound). Pixels and clicks never wait for it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::classify::Classifier;
use crate::event::Event;
use crate::hit::Hit;
use crate::privacy::Privacy;
use crate::sink::Sink;

mod stats;
pub use stats::Stats;

/// What the pipeline is handed: a hit, and for an unsubscribe, where to
/// say once its events are durable.
enum Job {
    Hit(Hit),
    Durable(Hit, Durability),
}

type Durability = tokio::sync::oneshot::Sender<Result<(), NotDurable>>;

/// The edge's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Recorder {
    tx: SyncSender<Job>,
    stats: Arc<Stats>,
    /// How long an unsubscribe waits to be durable.
    durable_within: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the event queue is full")]
    Full,
    #[error("the event pipeline has stopped")]
    Stopped,
}

/// Why an unsubscribe was not confirmed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotDurable {
    #[error("not recorded: {0}")]
    Queue(#[from] RecordError),
    #[error("the sink could not make it durable: {0}")]
    Sink(String),
    #[error("not durable within {0} ms")]
    Timeout(u128),
}

impl Recorder {
    pub fn record(&self, hit: Hit) -> Result<(), RecordError> {
        self.send(Job::Hit(hit))
    }

    fn send(&self, job: Job) -> Result<(), RecordError> {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => RecordError::Full,
                    TrySendError::Disconnected(_) => RecordError::Stopped,
                })
            }
        }
    }

    /// Records a hit whose events must be durable before it is confirmed
    /// (an unsubscribe). The hand-off never blocks; the future resolves
    /// once the sink synced the events, or with why not (counted, and
    /// logged at powers of two).
    pub fn record_durably(&self, hit: Hit) -> impl Future<Output = Result<(), NotDurable>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.send(Job::Durable(hit, tx));
        let (stats, within) = (self.stats.clone(), self.durable_within);
        async move {
            let outcome = match sent {
                Err(e) => Err(NotDurable::Queue(e)),
                Ok(()) => match tokio::time::timeout(within, rx).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Err(NotDurable::Queue(RecordError::Stopped)),
                    Err(_) => Err(NotDurable::Timeout(within.as_millis())),
                },
            };
            match &outcome {
                Ok(()) => {
                    stats.unsubscribes_durable.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let refused = stats.unsubscribes_not_durable.fetch_add(1, Ordering::Relaxed) + 1;
                    if refused.is_power_of_two() {
                        tracing::error!(error = %e, refused, "an unsubscribe was NOT recorded; the person was told to try again");
                    }
                }
            }
            outcome
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// Owns the pipeline thread. [`Pipeline::finish`] drains it and waits.
pub struct Pipeline {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Pipeline {
    pub fn start(
        classifier: Classifier,
        sink: Box<dyn Sink>,
        privacy: Privacy,
        capacity: usize,
        flush_interval: Duration,
        durable_within: Duration,
    ) -> (Recorder, Pipeline) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let events = crate::event::Settings {
            privacy,
            repeat_window_ms: classifier.repeat_window().as_millis() as i64,
        };
        let worker = Worker {
            classifier,
            sink,
            events,
            stats: stats.clone(),
            stop: stop.clone(),
            json: Vec::with_capacity(4096),
            waiting: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("waymark-pipeline".into())
            .spawn(move || worker.run(rx, flush_interval))
            .expect("cannot start the pipeline thread");
        (Recorder { tx, stats, durable_within }, Pipeline { thread, stop })
    }

    /// Writes every hit queued so far, closes the sink and waits for it.
    /// Hits recorded after this are refused with [`RecordError::Stopped`].
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::error!("the event pipeline thread panicked");
        }
    }
}

struct Worker {
    classifier: Classifier,
    sink: Box<dyn Sink>,
    events: crate::event::Settings,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// Every event's JSON is written here in turn: one buffer, no
    /// allocation per event.
    json: Vec<u8>,
    /// Unsubscribes handled since the last sync, and whether their events
    /// were all taken by the sink.
    waiting: Vec<(Durability, bool)>,
}

/// How often an idle pipeline looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Most hits handled before looking at flush and stop again.
const BATCH: usize = 4096;
/// Pause between batches while busy: adds at most this to an event's delay.
const NAP: Duration = Duration::from_micros(500);
/// Quiet time after which the thread blocks instead of napping.
const QUIET: Duration = Duration::from_millis(100);

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>, flush_interval: Duration) {
        let mut next_flush = Instant::now() + flush_interval;
        let mut idle_since = Instant::now();
        loop {
            // Under load, drain in batches and nap between them instead of
            // blocking in recv: a blocked receiver makes every try_send on
            // the edge a wake-up (a futex call and a context switch per
            // hit). Only after a quiet spell does the thread block again.
            let mut took = 0;
            while took < BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        self.take(job);
                        took += 1;
                    }
                    Err(_) => break,
                }
            }
            if took > 0 {
                idle_since = Instant::now();
                if took < BATCH {
                    std::thread::sleep(NAP);
                }
            } else if idle_since.elapsed() < QUIET {
                std::thread::sleep(NAP);
            } else {
                let wait = next_flush.saturating_duration_since(Instant::now()).min(STOP_POLL);
                match rx.recv_timeout(wait) {
                    Ok(job) => {
                        self.take(job);
                        idle_since = Instant::now();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.settle();
            if self.stop.load(Ordering::Relaxed) {
                while let Ok(job) = rx.try_recv() {
                    self.take(job);
                }
                self.settle();
                break;
            }
            if Instant::now() >= next_flush {
                checked(&self.stats, self.sink.flush());
                next_flush = Instant::now() + flush_interval;
            }
        }
        checked(&self.stats, self.sink.close());
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Hit(hit) => {
                self.handle(&hit);
            }
            Job::Durable(hit, done) => {
                let taken = self.handle(&hit);
                self.waiting.push((done, taken));
            }
        }
    }

    /// Makes what the waiting unsubscribes published durable, once for all
    /// of them, and tells each whether it is.
    fn settle(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let synced = match self.sink.sync() {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = e.to_string();
                checked(&self.stats, Err(e));
                Err(why)
            }
        };
        for (done, taken) in self.waiting.drain(..) {
            let outcome = match (&synced, taken) {
                (Err(e), _) => Err(NotDurable::Sink(e.clone())),
                (Ok(()), false) => Err(NotDurable::Sink("the sink refused the event".into())),
                (Ok(()), true) => Ok(()),
            };
            let _ = done.send(outcome);
        }
    }

    /// Judges one hit and publishes its events; false if the sink refused one.
    fn handle(&mut self, hit: &Hit) -> bool {
        let outcome = self.classifier.judge(hit);
        let j = &outcome.judgement;
        let kind = hit.token.claims().target.kind();
        self.stats.verdict_counter(kind, j.verdict, j.counted).fetch_add(1, Ordering::Relaxed);
        let mut taken = self.publish(Event::from_hit(hit, j, &self.events));
        if outcome.backfill {
            taken &= self.publish(Event::backfill(hit, j, &self.events));
        }
        for withdrawn in &outcome.withdrawn {
            taken &= self.publish(Event::reclassified(hit, withdrawn, j, &self.events));
        }
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        taken
    }

    fn publish(&mut self, event: Event) -> bool {
        let taken = checked(&self.stats, self.sink.publish(&event.encode(&mut self.json)));
        if taken {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

/// A sink operation's outcome: a failure is counted and logged, never fatal.
fn checked(stats: &Stats, outcome: Result<(), crate::sink::SinkError>) -> bool {
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

#[cfg(test)]
mod tests;
