//! The event pipeline: a bounded hand-off from the HTTP edge to one thread
//! that judges each hit, builds its events and feeds the sink.
//!
//! The edge only ever calls [`Recorder::record`], which never blocks: when
//! the queue is full the hit is counted as dropped and the response goes out
//! all the same. Judging and writing happen off the async runtime, on a plain
//! thread, because sinks may block on disk or on a producer queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ulid::Ulid;

use crate::classify::{Classifier, Verdict};
use crate::event::Event;
use crate::hit::Hit;
use crate::privacy::Privacy;
use crate::sink::Sink;
use crate::token::Kind;

/// Counters the pipeline keeps, readable from anywhere.
#[derive(Debug, Default)]
pub struct Stats {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    /// Hits the pipeline has finished with; `recorded - processed` is the queue depth.
    pub processed: AtomicU64,
    pub published: AtomicU64,
    pub sink_errors: AtomicU64,
    /// Judged hits by kind, verdict and counted: a fixed table, so counting
    /// one takes no lock and no allocation.
    verdicts: [[[AtomicU64; 2]; 4]; 3],
}

impl Stats {
    pub fn verdict_counter(&self, kind: Kind, verdict: Verdict, counted: bool) -> &AtomicU64 {
        let k = match kind {
            Kind::Open => 0,
            Kind::Click => 1,
            Kind::Unsubscribe => 2,
        };
        &self.verdicts[k][verdict as usize][counted as usize]
    }
}

impl crate::metrics::Source for Stats {
    fn encode(&self, e: &mut prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric as _};
        use prometheus_client::metrics::counter::ConstCounter;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(e, "hits_recorded", "Hits handed to the event pipeline", get(&self.recorded))?;
        counter(
            e,
            "hits_dropped",
            "Hits lost because the event queue was full or stopped",
            get(&self.dropped),
        )?;
        counter(e, "events_published", "Events accepted by the sink", get(&self.published))?;
        counter(e, "sink_errors", "Sink operations that failed", get(&self.sink_errors))?;
        let depth = get(&self.recorded).saturating_sub(get(&self.processed));
        gauge(e, "queue_depth", "Hits waiting for the event pipeline", depth as i64)?;

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct HitLabels {
            kind: &'static str,
            verdict: &'static str,
            counted: &'static str,
        }
        let mut hits = e.encode_descriptor(
            "hits",
            "Hits judged, by kind, verdict and whether they counted",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in [Kind::Open, Kind::Click, Kind::Unsubscribe] {
            for verdict in Verdict::ALL {
                for counted in [false, true] {
                    let n = get(self.verdict_counter(kind, verdict, counted));
                    if n == 0 {
                        continue;
                    }
                    let labels = HitLabels {
                        kind: kind.as_str(),
                        verdict: verdict.as_str(),
                        counted: if counted { "true" } else { "false" },
                    };
                    ConstCounter::new(n).encode(hits.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The edge's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Recorder {
    tx: SyncSender<Hit>,
    stats: Arc<Stats>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the event queue is full")]
    Full,
    #[error("the event pipeline has stopped")]
    Stopped,
}

impl Recorder {
    pub fn record(&self, hit: Hit) -> Result<(), RecordError> {
        match self.tx.try_send(hit) {
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
    ) -> (Recorder, Pipeline) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            classifier,
            sink,
            privacy,
            stats: stats.clone(),
            stop: stop.clone(),
            json: Vec::with_capacity(4096),
        };
        let thread = std::thread::Builder::new()
            .name("waymark-pipeline".into())
            .spawn(move || worker.run(rx, flush_interval))
            .expect("cannot start the pipeline thread");
        (Recorder { tx, stats }, Pipeline { thread, stop })
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
    privacy: Privacy,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// Every event's JSON is written here in turn: one buffer, no
    /// allocation per event.
    json: Vec<u8>,
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
    fn run(mut self, rx: mpsc::Receiver<Hit>, flush_interval: Duration) {
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
                    Ok(hit) => {
                        self.handle(&hit);
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
                    Ok(hit) => {
                        self.handle(&hit);
                        idle_since = Instant::now();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                while let Ok(hit) = rx.try_recv() {
                    self.handle(&hit);
                }
                break;
            }
            if Instant::now() >= next_flush {
                checked(&self.stats, self.sink.flush());
                next_flush = Instant::now() + flush_interval;
            }
        }
        checked(&self.stats, self.sink.close());
    }

    fn handle(&mut self, hit: &Hit) {
        let id = Ulid::from_datetime(hit.at.into());
        let outcome = self.classifier.judge(hit, id);
        let j = &outcome.judgement;
        let kind = hit.token.claims().target.kind();
        self.stats.verdict_counter(kind, j.verdict, j.counted).fetch_add(1, Ordering::Relaxed);
        self.publish(Event::from_hit(hit, id, j));
        if let Some(backfill) = outcome.backfill {
            self.publish(Event::backfill(hit, backfill, j));
        }
        for withdrawn in &outcome.withdrawn {
            self.publish(Event::reclassified(hit, Ulid::from_datetime(hit.at.into()), withdrawn, j));
        }
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&mut self, mut event: Event) {
        self.privacy.apply(&mut event);
        if checked(&self.stats, self.sink.publish(&event.encode(&mut self.json))) {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
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
