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

pub mod forward;
mod judge;
mod stats;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::classify::Classifier;
use crate::hit::Hit;
use crate::sink::Sink;

pub use judge::Judge;
use judge::checked;
pub use stats::Stats;
use worker::{SharedSink, Worker};

/// What a pipeline thread does with each hit: judge it ([`Judge`]), or,
/// with `judge = "kafka"`, forward it to the judges ([`forward::Forwarding`]).
pub trait Handle: Send {
    /// Handles one hit; false if the sink refused something it made.
    fn handle(&mut self, hit: &Hit, sink: &mut dyn Sink) -> bool;
}

/// What the pipeline is handed: a hit, and for an unsubscribe, where to
/// say once its events are durable.
enum Job {
    Hit(Hit),
    Durable(Hit, Durability),
}

type Durability = tokio::sync::oneshot::Sender<Result<(), NotDurable>>;

impl Job {
    fn hit(&self) -> &Hit {
        match self {
            Job::Hit(hit) | Job::Durable(hit, _) => hit,
        }
    }
}

/// The edge's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Recorder {
    /// One queue per judge thread; a message's hits always go to the same.
    shards: Arc<[SyncSender<Job>]>,
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
        let shard = match self.shards.len() {
            1 => 0,
            n => shard_of(job.hit(), n),
        };
        match self.shards[shard].try_send(job) {
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

/// The judge thread a hit goes to: a hash of its tenant and message id, so
/// every hit of one message is judged by one thread, in arrival order.
pub fn shard_of(hit: &Hit, shards: usize) -> usize {
    use std::hash::BuildHasher as _;
    let claims = hit.token.claims();
    let key = (claims.tenant.as_str(), claims.message_id.as_str());
    (foldhash::fast::FixedState::default().hash_one(key) % shards as u64) as usize
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// What every event shares (see [`crate::startup::event_settings`]).
    pub events: crate::event::Settings,
    /// Hits waiting, over all judge threads, before new ones are dropped.
    pub capacity: usize,
    pub flush_interval: Duration,
    /// How long an unsubscribe waits to be durable.
    pub durable_within: Duration,
    /// Threads judging hits, each owning the messages that hash to it.
    pub judge_threads: usize,
}

/// Owns the judge threads. [`Pipeline::finish`] drains them and waits.
pub struct Pipeline {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    sink: SharedSink,
    stats: Arc<Stats>,
}

impl Pipeline {
    /// Starts `options.judge_threads` judge threads, each with its own
    /// behaviour state over the classifier's shared rules and caches.
    pub fn start(classifier: Classifier, sink: Box<dyn Sink>, options: Options) -> (Recorder, Pipeline) {
        let n = options.judge_threads.max(1);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sink: SharedSink = Arc::new(Mutex::new(sink));
        let events = options.events.clone();
        let mut classifiers: Vec<Classifier> = (1..n).map(|_| classifier.shard()).collect();
        classifiers.insert(0, classifier);
        let steps = classifiers
            .into_iter()
            .map(|c| Box::new(Judge::new(c, events.clone(), stats.clone())) as Box<dyn Handle>)
            .collect();
        Self::spawn(steps, sink, stats, stop, options)
    }

    /// With `judge = "kafka"`: one thread that forwards every hit as a hit
    /// record to the sink (the hits topic), judging nothing.
    pub fn forwarding(sink: Box<dyn Sink>, options: Options) -> (Recorder, Pipeline) {
        let stats = Arc::new(Stats::default());
        let step = forward::Forwarding { forward: Default::default(), stats: stats.clone() };
        let sink: SharedSink = Arc::new(Mutex::new(sink));
        Self::spawn(vec![Box::new(step)], sink, stats, Arc::new(AtomicBool::new(false)), options)
    }

    fn spawn(
        steps: Vec<Box<dyn Handle>>,
        sink: SharedSink,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        options: Options,
    ) -> (Recorder, Pipeline) {
        let n = steps.len();
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (i, judge) in steps.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(options.capacity.div_ceil(n).max(1));
            let worker = Worker {
                judge,
                sink: sink.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                waiting: Vec::new(),
            };
            let flush = options.flush_interval;
            let name = if n == 1 { "waymark-pipeline".to_owned() } else { format!("waymark-judge-{i}") };
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run(rx, flush))
                .expect("cannot start a judge thread");
            shards.push(tx);
            threads.push(thread);
        }
        let recorder =
            Recorder { shards: shards.into(), stats: stats.clone(), durable_within: options.durable_within };
        (recorder, Pipeline { threads, stop, sink, stats })
    }

    /// Writes every hit queued so far, closes the sink and waits for it.
    /// Hits recorded after this are refused with [`RecordError::Stopped`].
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a judge thread panicked");
            }
        }
        let mut sink = worker::lock(&self.sink);
        checked(&self.stats, sink.close());
    }
}

#[cfg(test)]
mod tests;
