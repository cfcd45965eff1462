//! The Kafka sink. Every event is first appended to the disk [`spool`]
//! (the write-ahead log), then shipped from memory by one [`shipper`]
//! thread through an idempotent producer; the spool's cursor advances only
//! over what the brokers acknowledged. When the brokers are slow, down, or
//! the producer queue is full, events simply wait in the spool and are
//! replayed in order once the brokers answer, so an outage or a crash loses
//! nothing that reached the spool, and nothing here ever makes the HTTP
//! edge wait.
//!
//! Parts: [`settings`], [`record`] (the spool record layout), [`producer`]
//! (the seam over rdkafka), [`shipper`] (the state machine), [`state`]
//! (what readiness reports) and [`stats`] (metrics).
//!
//! Record key: the message id (one message's events stay ordered on one
//! partition). Headers: `type`, `tenant`, `event_id`.
//!
//! This module must never block the pipeline thread on the network: the
//! pipeline only appends to the spool and hands over a copy in memory.
//!
//! [`spool`]: crate::sink::spool

pub mod producer;
pub mod record;
pub mod settings;
pub mod shipper;
pub mod state;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::KafkaError;

pub use settings::{HitsSettings, KafkaSettings};
pub use state::KafkaState;
pub use stats::{KafkaMetrics, KafkaStats};

use self::producer::Rdkafka;
use self::record::Record;
use self::shipper::{LIVE_QUEUE, Shipment, Shipper};
use super::spool::{self, Ledger, Spool, SpoolError};
use super::{Sink, SinkError};
use crate::event::EncodedEvent;

pub struct KafkaSink {
    spool: Spool,
    live: SyncSender<Shipment>,
    state: Arc<KafkaState>,
    stats: Arc<KafkaStats>,
    stop: Arc<AtomicBool>,
    shipper: Option<JoinHandle<()>>,
    lost_logged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka producer for {brokers}: {source}")]
    Producer { brokers: String, source: KafkaError },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl KafkaSink {
    /// Opens the spool, starts the shipper, and replays what a previous run
    /// left unacknowledged. An unreachable broker is not an error: events
    /// wait in the spool.
    pub fn start(settings: KafkaSettings) -> Result<KafkaSink, KafkaSetupError> {
        let spool = Spool::open(&settings.spool_dir, settings.spool)?;
        let ledger = spool.ledger().clone();
        let state = Arc::new(KafkaState::new(ledger.clone()));
        let stats = Arc::new(KafkaStats::default());
        stats.spool_bytes.store(spool.used(), Ordering::Relaxed);
        let (live, incoming) = mpsc::sync_channel(LIVE_QUEUE);
        let (cursor, _) = ledger.cursor()?;
        ledger.note_acknowledged(cursor);
        // Counted through the spool's own ledger, so damage met here is not
        // reported again when the shipper reads past it.
        let pending = spool::count_from(&ledger, cursor).unwrap_or(0);
        spool::claim(&settings.spool_dir, &settings.destination(), pending)?;
        if pending > 0 {
            tracing::warn!(pending, "replaying events a previous run left in the spool");
            state.watch.handed(pending);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // The producer is made on the shipper's thread, so librdkafka's own
        // threads inherit its lower priority; a bad setting still fails here.
        let (ready, made) = mpsc::sync_channel(1);
        let (for_shipper, stats_for_shipper, stop_for_shipper) = (state.clone(), stats.clone(), stop.clone());
        let shipper = std::thread::Builder::new()
            .name("waymark-kafka".into())
            .spawn(move || {
                yield_to_requests();
                match Rdkafka::new(&settings) {
                    Ok(producer) => {
                        let _ = ready.send(Ok(()));
                        Shipper::new(settings, producer, ledger, for_shipper, stats_for_shipper, cursor)
                            .run(incoming, &stop_for_shipper)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .expect("cannot start the Kafka shipper thread");
        match made.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("the Kafka shipper thread ended before making its producer"),
        }
        Ok(KafkaSink { spool, live, state, stats, stop, shipper: Some(shipper), lost_logged: 0 })
    }

    fn note_disk(&self) {
        self.state.unwritable.store(self.spool.failing(), Ordering::Relaxed);
        self.stats.spool_bytes.store(self.spool.used(), Ordering::Relaxed);
    }

    /// Spools one record in the [`Record`] layout and hands it to the
    /// shipper: what [`Sink::publish`] does for an event, for any payload.
    pub fn publish_record(&mut self, payload: Bytes) -> Result<(), SinkError> {
        let at = match self.spool.append(&payload) {
            Ok(at) => at,
            Err(e) => {
                let lost = self.stats.lost.fetch_add(1, Ordering::Relaxed) + 1;
                self.state.full.store(true, Ordering::Relaxed);
                self.note_disk();
                if lost > self.lost_logged * 2 {
                    self.lost_logged = lost;
                    tracing::error!(error = %e, lost, "EVENTS ARE BEING LOST: the spool cannot take them");
                }
                return Err(SinkError::Spool(e));
            }
        };
        self.stats.spooled.fetch_add(1, Ordering::Relaxed);
        self.state.watch.handed(1);
        self.state.full.store(false, Ordering::Relaxed);
        let shipment = Shipment { at, next: self.spool.end(), payload };
        // A shipper that is behind reads this one from the spool instead.
        let _ = self.live.try_send(shipment);
        Ok(())
    }

    /// The spool position after the last record published: once
    /// [`Self::acknowledged`] reaches it, the brokers have everything.
    pub fn end(&self) -> u64 {
        self.spool.end()
    }

    /// Everything published before this spool position was acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.spool.ledger().acknowledged()
    }
}

impl Sink for KafkaSink {
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError> {
        self.publish_record(Bytes::from(Record::encode(event)))
    }

    fn publish_raw(&mut self, fields: [&str; 4], body: &[u8]) -> Result<(), SinkError> {
        self.publish_record(Bytes::from(Record::encode_parts(fields, body)))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let outcome = self.spool.flush();
        self.note_disk();
        outcome.map_err(SinkError::Spool)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        let outcome = self.spool.sync();
        self.note_disk();
        outcome.map_err(SinkError::Spool)
    }

    fn state(&self) -> Option<Arc<dyn crate::health::Component>> {
        Some(self.state.clone())
    }

    fn metrics(&self) -> Option<Arc<dyn crate::metrics::Source>> {
        Some(Arc::new(KafkaMetrics { stats: self.stats.clone(), ledger: self.spool.ledger().clone() }))
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let outcome = self.sync();
        self.stop.store(true, Ordering::Release);
        if let Some(shipper) = self.shipper.take()
            && shipper.join().is_err()
        {
            tracing::error!("the Kafka shipper thread panicked");
        }
        outcome
    }
}

/// Puts the calling thread in the idle scheduling class (`SCHED_IDLE`): on
/// a shared core a request being answered then preempts the Kafka work the
/// moment it arrives, instead of waiting out that work's time slice (nice 5
/// left a 3 ms p99 at half load; idle, 0.6-0.8 ms). Idle threads run on
/// whatever the core has spare; on a core saturated for a long while they
/// fall behind, which is safe only for work that cannot lose anything by
/// it: the shipper reads from the spool what it could not keep up with and
/// catches up when the load drops. The pipeline thread itself stays at
/// normal priority, or a saturated core would make it shed hits. Threads
/// it starts (librdkafka's) inherit the class.
fn yield_to_requests() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) =
        set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, idle)
    {
        tracing::debug!(error = ?e, "cannot move a background thread to the idle scheduling class");
    }
}

/// What `waymark spool replay` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub sent: u64,
    pub acknowledged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error(
        "the spool was not drained within {timeout_secs} s: sent {sent} events, {acknowledged} acknowledged; \
         the brokers ({brokers}) may be unreachable, and what was not acknowledged stays in the spool"
    )]
    NotDrained { timeout_secs: u64, sent: u64, acknowledged: u64, brokers: String },
    #[error(
        "sent {sent} events, {acknowledged} acknowledged, but the spool cursor in {dir} could not be moved \
         (is the directory writable?): the next replay or start will send them again"
    )]
    CursorStuck { sent: u64, acknowledged: u64, dir: String },
}

/// `waymark spool replay`: ships what the spool holds and waits for the
/// brokers' acknowledgements, for at most `timeout`, by driving a shipper
/// as the service does. An error when it could not ship everything or
/// could not record that it did.
pub fn replay_now(settings: KafkaSettings, timeout: Duration) -> Result<Replayed, ReplayError> {
    let dir = settings.spool_dir.clone();
    let end = spool::end_on_disk(&dir).map_err(KafkaSetupError::from)?;
    // Refused while a service ships from the same spool.
    let _lock = if dir.exists() { Some(spool::lock(&dir).map_err(KafkaSetupError::from)?) } else { None };
    let ledger = Arc::new(Ledger::new(&dir, end));
    let (cursor, stray) =
        if dir.exists() { ledger.cursor().map_err(KafkaSetupError::from)? } else { (0, None) };
    if let Some(stray) = stray {
        eprintln!("{stray}");
    }
    // Records go where the process that wrote them meant them to go (hit
    // records to the hits topic), whatever this configuration would say.
    let settings = match spool::destination(&dir).map_err(KafkaSetupError::from)? {
        Some(destination) => settings.shipping_to(&destination),
        None => settings,
    };
    let producer = Rdkafka::new(&settings)?;
    let state = Arc::new(KafkaState::new(ledger.clone()));
    let stats = Arc::new(KafkaStats::default());
    let brokers = settings.brokers.clone();
    let mut shipper = Shipper::new(settings, producer, ledger.clone(), state, stats.clone(), cursor);
    // Nothing is handed over in memory: everything comes from the spool.
    let (_, nothing) = mpsc::sync_channel(0);
    let deadline = Instant::now() + timeout;
    while !shipper.caught_up() && Instant::now() < deadline {
        shipper.turn(&nothing);
    }
    let drained = shipper.caught_up();
    shipper.finish();
    let sent = stats.replayed.load(Ordering::Relaxed);
    let acknowledged = stats.delivered.load(Ordering::Relaxed);
    if !drained {
        return Err(ReplayError::NotDrained { timeout_secs: timeout.as_secs(), sent, acknowledged, brokers });
    }
    if ledger.cursor_failing() {
        return Err(ReplayError::CursorStuck { sent, acknowledged, dir: dir.display().to_string() });
    }
    Ok(Replayed { sent, acknowledged })
}

#[cfg(test)]
mod tests {
    use super::record::tests::event;
    use super::*;
    use crate::sink::spool::SpoolSettings;

    /// The test broker from `scripts/kafka-broker`; required under CI.
    fn test_broker() -> Option<String> {
        match std::env::var("WAYMARK_TEST_KAFKA") {
            Ok(b) => Some(b),
            Err(_) if std::env::var("CI").is_ok() => {
                panic!("CI must run the Kafka tests: WAYMARK_TEST_KAFKA is not set")
            }
            Err(_) => None,
        }
    }

    #[test]
    fn the_tail_of_a_burst_that_overflowed_the_live_queue_is_shipped_without_another_event() {
        let Some(brokers) = test_broker() else { return };
        let dir = tempfile::tempdir().unwrap();
        let settings = KafkaSettings {
            brokers,
            topic: format!("waymark.test.tail.{}", std::process::id()),
            topic_per_type: false,
            properties: Vec::new(),
            flush_timeout: Duration::from_secs(5),
            spool_dir: dir.path().join("spool"),
            spool: SpoolSettings::default(),
        };
        let mut sink = KafkaSink::start(settings).unwrap();
        let stats = sink.stats.clone();
        let delivered = |want: u64| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while stats.delivered.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            stats.delivered.load(Ordering::Relaxed)
        };
        for _ in 0..20 {
            sink.publish(&event("{}")).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(delivered(20), 20);
        // Ten more spooled but never handed over, as when the live queue
        // was full: the end of a burst, and then quiet.
        for _ in 0..10 {
            sink.spool.append(&Record::encode(&event("{}"))).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(delivered(30), 30, "the tail stayed in the spool");
        sink.close().unwrap();
    }
}
