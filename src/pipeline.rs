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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Unsubscribes confirmed once durable, and refused because they were not.
    pub unsubscribes_durable: AtomicU64,
    pub unsubscribes_not_durable: AtomicU64,
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
        counter(
            e,
            "unsubscribes_durable",
            "Unsubscribes confirmed after their event was durable",
            get(&self.unsubscribes_durable),
        )?;
        counter(
            e,
            "unsubscribes_not_durable",
            "Unsubscribes answered 503 because their event could not be made durable in time",
            get(&self.unsubscribes_not_durable),
        )?;
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
mod tests {
    //! Durable unsubscribes at the recorder's interface, over scripted sinks.
    use std::sync::Mutex;
    use std::sync::mpsc::Receiver;

    use super::*;
    use crate::classify::Settings;
    use crate::event::EncodedEvent;
    use crate::keys::{Key, KeyId, KeyRing};
    use crate::sink::SinkError;
    use crate::token::{Claims, Target};

    /// A sink whose publish and sync do what the test says.
    struct Scripted {
        /// Publish waits for a message here, when set.
        gate: Option<Arc<Mutex<Receiver<()>>>>,
        refuse: bool,
        sync_fails: bool,
        /// Sync waits this long.
        sync_takes: Duration,
        synced: Arc<AtomicU64>,
    }

    impl Sink for Scripted {
        fn publish(&mut self, _: &EncodedEvent) -> Result<(), SinkError> {
            if let Some(gate) = &self.gate {
                let _ = gate.lock().unwrap().recv();
            }
            if self.refuse {
                return Err(SinkError::Refused { path: "test".into(), why: "scripted" });
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        fn sync(&mut self) -> Result<(), SinkError> {
            std::thread::sleep(self.sync_takes);
            if self.sync_fails {
                return Err(SinkError::Io {
                    path: "test".into(),
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
            self.synced.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn sink() -> Scripted {
        Scripted {
            gate: None,
            refuse: false,
            sync_fails: false,
            sync_takes: Duration::ZERO,
            synced: Arc::default(),
        }
    }

    fn unsubscribe() -> Hit {
        let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
        let claims = Claims {
            target: Target::Unsubscribe,
            tenant: String::new(),
            message_id: "m-1".into(),
            recipient: None,
            sent_at: 1_700_000_000,
            expires_at: None,
            tags: vec![],
            meta: vec![],
        };
        let token =
            crate::token::open(&ring, &crate::token::seal(&ring, &claims).unwrap(), 1_700_000_100).unwrap();
        let at = time::OffsetDateTime::now_utc();
        Hit {
            id: crate::hit::HitId::mint(at),
            token,
            at,
            method: crate::hit::Method::Post,
            client_ip: None,
            user_agent: None,
        }
    }

    fn start(sink: Scripted, capacity: usize, within: Duration) -> (Recorder, Pipeline) {
        let classifier = Classifier::new(&Settings::default()).unwrap();
        Pipeline::start(
            classifier,
            Box::new(sink),
            Privacy::default(),
            capacity,
            Duration::from_secs(3600),
            within,
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn an_unsubscribe_is_confirmed_only_after_the_sink_synced_it() {
        let s = sink();
        let synced = s.synced.clone();
        let (recorder, pipeline) = start(s, 16, Duration::from_secs(60));
        let outcome = runtime().block_on(recorder.record_durably(unsubscribe()));
        assert_eq!(outcome, Ok(()));
        assert!(synced.load(Ordering::Relaxed) >= 1, "synced before the confirmation");
        assert_eq!(recorder.stats().unsubscribes_durable.load(Ordering::Relaxed), 1);
        pipeline.finish();
    }

    #[test]
    fn what_cannot_be_made_durable_is_never_confirmed() {
        let rt = runtime();
        let cases: [(&str, Scripted, Duration); 3] = [
            ("a sink that refuses the event", Scripted { refuse: true, ..sink() }, Duration::from_secs(60)),
            ("a sink that cannot sync", Scripted { sync_fails: true, ..sink() }, Duration::from_secs(60)),
            (
                "a sink slower than the bound",
                Scripted { sync_takes: Duration::from_millis(300), ..sink() },
                Duration::from_millis(1),
            ),
        ];
        for (name, s, within) in cases {
            let (recorder, pipeline) = start(s, 16, within);
            let outcome = rt.block_on(recorder.record_durably(unsubscribe()));
            assert!(outcome.is_err(), "{name}: {outcome:?}");
            assert_eq!(recorder.stats().unsubscribes_not_durable.load(Ordering::Relaxed), 1, "{name}");
            pipeline.finish();
        }
    }

    #[test]
    fn a_full_queue_refuses_the_unsubscribe_at_once_and_pixels_never_wait() {
        let (open, gate) = mpsc::channel();
        let s = Scripted { gate: Some(Arc::new(Mutex::new(gate))), ..sink() };
        let (recorder, pipeline) = start(s, 1, Duration::from_secs(60));
        let rt = runtime();
        // The first is taken by the pipeline and held in the sink; the
        // second fills the queue of one.
        let first = recorder.record_durably(unsubscribe());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while recorder.stats().recorded.load(Ordering::Relaxed) == 1
            && recorder.record(unsubscribe()).is_err()
        {
            assert!(std::time::Instant::now() < deadline, "the pipeline never took the first hit");
            std::thread::yield_now();
        }
        let refused = rt.block_on(recorder.record_durably(unsubscribe()));
        assert_eq!(refused, Err(NotDurable::Queue(RecordError::Full)));
        assert_eq!(
            recorder.record(unsubscribe()),
            Err(RecordError::Full),
            "a pixel is dropped, not made to wait"
        );
        for _ in 0..4 {
            let _ = open.send(());
        }
        assert_eq!(rt.block_on(first), Ok(()), "the one taken is confirmed once written and synced");
        drop(open);
        pipeline.finish();
    }
}
