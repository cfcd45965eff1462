//! The Kafka sink. Every event is first appended to the disk [`spool`]
//! (the write-ahead log), then shipped from memory by one shipper thread
//! through an idempotent rdkafka producer; the spool's cursor advances only
//! over what the brokers acknowledged. When the brokers are slow, down, or
//! the producer queue is full, events simply wait in the spool and are
//! replayed in order once the brokers answer, so an outage or a crash loses
//! nothing that reached the spool, and nothing here ever makes the HTTP
//! edge wait.
//!
//! Record key: the message id (one message's events stay ordered on one
//! partition). Headers: `type`, `tenant`, `event_id`.
//!
//! This module must never block the pipeline thread on the network: the
//! pipeline only appends to the spool and hands over a copy in memory.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use serde::Deserialize;

use super::spool::{self, Reader, Spool, SpoolError, SpoolSettings};
use super::{Sink, SinkError};
use crate::event::EncodedEvent;
use crate::health::{Degraded, Health};

/// Kafka settings, validated.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    /// Publish each event type to `{topic}.{type}` (e.g. `waymark.events.email.clicked`).
    pub topic_per_type: bool,
    /// librdkafka properties, applied over waymark's defaults.
    pub properties: Vec<(String, String)>,
    /// How long shutdown waits for the brokers to acknowledge what is in flight.
    pub flush_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool: SpoolSettings,
}

impl KafkaSettings {
    /// waymark's producer defaults, then the configured properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Failures surface within this; the spool keeps the event meanwhile.
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "100000")
            .set("client.id", "waymark");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn topic_for(&self, kind: &str) -> std::borrow::Cow<'_, str> {
        if self.topic_per_type { format!("{}.{kind}", self.topic).into() } else { self.topic.as_str().into() }
    }
}

/// One event as the spool keeps it: the JSON and what Kafka keys and
/// headers on, read back without copying.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    kind: &'a str,
    key: &'a str,
    tenant: &'a str,
    event_id: &'a str,
    json: &'a [u8],
}

/// First byte of a record in the current layout. Earlier spools hold
/// postcard records, which start with the length of the type name (under
/// 128), so they can never begin with it.
const RECORD_V2: u8 = 0xFF;

/// The first layout, still read so an upgrade replays an old spool.
#[derive(Deserialize)]
struct RecordV1 {
    kind: String,
    key: String,
    tenant: String,
    event_id: String,
    json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable spool record: {0}")]
struct RecordError(&'static str);

impl<'a> Record<'a> {
    /// `0xFF`, then type, key, tenant and event id each as a little-endian
    /// u16 length and its bytes, then the JSON to the end.
    fn encode(event: &EncodedEvent) -> Vec<u8> {
        let mut id = [0; 40];
        let fields = [event.kind.as_str(), event.message_id, event.tenant, event.event_id.as_str(&mut id)];
        let mut out =
            Vec::with_capacity(1 + 8 + fields.iter().map(|f| f.len()).sum::<usize>() + event.json.len());
        out.push(RECORD_V2);
        for field in fields {
            // Message ids and tenants are bounded far below this by the token size.
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        }
        out.extend_from_slice(event.json);
        out
    }

    fn decode(payload: &'a [u8]) -> Result<Record<'a>, RecordError> {
        let Some((&RECORD_V2, mut rest)) = payload.split_first() else {
            return Err(RecordError("unknown layout"));
        };
        let mut field = || -> Result<&'a str, RecordError> {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or(RecordError("truncated"))?;
            let len = usize::from(u16::from_le_bytes(*len));
            let (text, tail) = tail.split_at_checked(len).ok_or(RecordError("truncated"))?;
            rest = tail;
            std::str::from_utf8(text).map_err(|_| RecordError("field is not UTF-8"))
        };
        let (kind, key, tenant, event_id) = (field()?, field()?, field()?, field()?);
        Ok(Record { kind, key, tenant, event_id, json: rest })
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub spooled: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_errors: AtomicU64,
    pub replayed: AtomicU64,
    pub lost: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub unacknowledged: AtomicU64,
}

impl crate::metrics::Source for KafkaStats {
    fn encode(&self, e: &mut prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            e,
            "kafka_spooled",
            "Events written to the spool (every event, before shipping)",
            get(&self.spooled),
        )?;
        counter(e, "kafka_delivered", "Events the brokers acknowledged", get(&self.delivered))?;
        counter(
            e,
            "kafka_delivery_errors",
            "Deliveries that failed and will be replayed",
            get(&self.delivery_errors),
        )?;
        counter(e, "kafka_replayed", "Events read back from the spool and sent again", get(&self.replayed))?;
        counter(e, "kafka_lost", "Events lost because the spool was full", get(&self.lost))?;
        gauge(e, "spool_bytes", "Bytes in the spool on disk", get(&self.spool_bytes) as i64)?;
        gauge(
            e,
            "kafka_unacknowledged",
            "Events sent and not yet acknowledged",
            get(&self.unacknowledged) as i64,
        )
    }
}

/// What the pipeline thread and the shipper share.
#[derive(Debug)]
struct Shared {
    /// Everything before this position is in the kernel and can be read back.
    readable_end: AtomicU64,
    stop: AtomicBool,
    /// The last append failed for want of room.
    full: AtomicBool,
    stats: Arc<KafkaStats>,
    health: Arc<Health>,
}

impl Shared {
    /// Readable up to `end`, neither stopping nor full.
    fn new(end: u64, stats: Arc<KafkaStats>, health: Arc<Health>) -> Arc<Shared> {
        Arc::new(Shared {
            readable_end: AtomicU64::new(end),
            stop: AtomicBool::new(false),
            full: AtomicBool::new(false),
            stats,
            health,
        })
    }
}

/// One event handed from the pipeline to the shipper in memory.
struct Shipment {
    at: u64,
    next: u64,
    payload: Bytes,
}

/// Shipments waiting in memory; beyond this the shipper reads the spool.
const LIVE_QUEUE: usize = 65_536;
/// The shipper's pause when it can do nothing until reports or a flush come.
const IDLE_WAIT: Duration = Duration::from_millis(2);
/// Most live shipments sent in one turn of the shipper's loop.
const LIVE_BATCH: usize = 1024;

pub struct KafkaSink {
    spool: Spool,
    live: SyncSender<Shipment>,
    shared: Arc<Shared>,
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
    pub fn start(
        settings: KafkaSettings,
        health: Arc<Health>,
        stats: Arc<KafkaStats>,
    ) -> Result<KafkaSink, KafkaSetupError> {
        let spool = Spool::open(&settings.spool_dir, settings.spool)?;
        let shared = Shared::new(spool.end(), stats, health);
        shared.stats.spool_bytes.store(spool.used(), Ordering::Relaxed);
        let (live, incoming) = mpsc::sync_channel(LIVE_QUEUE);
        let cursor = spool::read_cursor(&settings.spool_dir);
        let pending = spool::status(&settings.spool_dir).map(|s| s.pending_records).unwrap_or(0);
        if pending > 0 {
            tracing::warn!(pending, "replaying events a previous run left in the spool");
            shared.health.delivery().handed(pending);
        }
        // The producer is made on the shipper's thread, so librdkafka's own
        // threads inherit its lower priority; a bad setting still fails here.
        let (ready, made) = mpsc::sync_channel(1);
        let for_shipper = shared.clone();
        let shipper = std::thread::Builder::new()
            .name("waymark-kafka".into())
            .spawn(move || {
                yield_to_requests();
                match producer(&settings) {
                    Ok(producer) => {
                        let _ = ready.send(Ok(()));
                        Shipper::new(settings, producer, for_shipper, cursor).run(incoming)
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
        Ok(KafkaSink { spool, live, shared, shipper: Some(shipper), lost_logged: 0 })
    }
}

impl Sink for KafkaSink {
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError> {
        let payload = Bytes::from(Record::encode(event));
        let at = match self.spool.append(&payload) {
            Ok(at) => at,
            Err(e) => {
                let lost = self.shared.stats.lost.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.full.store(true, Ordering::Relaxed);
                self.shared.health.set_degraded(Some(Degraded::SpoolFull));
                if lost > self.lost_logged * 2 {
                    self.lost_logged = lost;
                    tracing::error!(error = %e, lost, "EVENTS ARE BEING LOST: the spool cannot take them");
                }
                return Err(SinkError::Spool(e));
            }
        };
        self.shared.stats.spooled.fetch_add(1, Ordering::Relaxed);
        self.shared.health.delivery().handed(1);
        self.shared.full.store(false, Ordering::Relaxed);
        let shipment = Shipment { at, next: self.spool.end(), payload };
        // A shipper that is behind reads this one from the spool instead.
        let _ = self.live.try_send(shipment);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.spool.flush().map_err(SinkError::Spool)?;
        self.shared.readable_end.store(self.spool.end(), Ordering::Release);
        self.shared.stats.spool_bytes.store(self.spool.used(), Ordering::Relaxed);
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.spool.sync().map_err(SinkError::Spool)?;
        self.shared.readable_end.store(self.spool.end(), Ordering::Release);
        self.shared.stop.store(true, Ordering::Release);
        if let Some(shipper) = self.shipper.take()
            && shipper.join().is_err()
        {
            tracing::error!("the Kafka shipper thread panicked");
        }
        Ok(())
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

/// Collects delivery reports; rdkafka calls it from `poll` on the shipper's
/// own thread.
#[derive(Default)]
struct Reports {
    outcomes: Mutex<Vec<(u64, u64, Result<(), String>)>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<(u64, u64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (at, next) = *opaque;
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).push((at, next, outcome));
    }
}

fn producer(settings: &KafkaSettings) -> Result<BaseProducer<Reports>, KafkaSetupError> {
    settings
        .client_config()
        .create_with_context(Reports::default())
        .map_err(|source| KafkaSetupError::Producer { brokers: settings.brokers.clone(), source })
}

/// Ships spooled events to the brokers, in spool order, and moves the
/// spool's cursor over what they acknowledged.
struct Shipper {
    settings: KafkaSettings,
    producer: BaseProducer<Reports>,
    shared: Arc<Shared>,
    /// Position of the next record to send.
    next: u64,
    /// Sent, not yet acknowledged.
    in_flight: BTreeSet<u64>,
    committed: u64,
    committed_at: Instant,
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
    /// The health last reported, so changes are logged once.
    reported: Option<Degraded>,
}

impl Shipper {
    fn new(
        settings: KafkaSettings,
        producer: BaseProducer<Reports>,
        shared: Arc<Shared>,
        cursor: u64,
    ) -> Self {
        let reader = Reader::new(&settings.spool_dir, cursor);
        Shipper {
            settings,
            producer,
            shared,
            next: cursor,
            in_flight: BTreeSet::new(),
            committed: cursor,
            committed_at: Instant::now(),
            // Always start by reading the spool: it may hold a previous run's events.
            replay: Some(reader),
            held: VecDeque::new(),
            unsent: None,
            backoff_until: None,
            backoff: Duration::from_millis(250),
            reported: None,
        }
    }

    fn run(mut self, incoming: Receiver<Shipment>) {
        loop {
            self.shared.health.delivery().shipper_turned();
            let stopping = self.shared.stop.load(Ordering::Acquire);
            self.serve_events();
            if stopping {
                // Take what is left in memory in order, then finish.
                while let Ok(s) = incoming.try_recv() {
                    self.held.push_back(s);
                }
                self.ship_held();
                break;
            }
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
                        match incoming.recv_timeout(Duration::from_millis(5)) {
                            Ok(s) => {
                                self.ship_live(s);
                                // Take what else waits before the bookkeeping
                                // below, which need not run per event.
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
                            Err(RecvTimeoutError::Timeout) => {
                                // A gap is otherwise seen only when the next
                                // shipment arrives: the tail of a burst that
                                // overflowed the queue would wait in the spool
                                // for the next event, however late it comes.
                                if self.shared.readable_end.load(Ordering::Acquire) > self.next {
                                    self.start_replay();
                                }
                            }
                            Err(RecvTimeoutError::Disconnected) => {}
                        }
                    }
                }
            }
            self.maybe_commit(false);
            self.report_health();
        }
        // Shutdown: give the brokers a bounded time for what is in flight.
        let _ = self.producer.flush(self.settings.flush_timeout);
        self.take_reports();
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
            self.replay = Some(Reader::new(&self.settings.spool_dir, self.next));
        }
    }

    /// Sends a batch from the spool, then from the held live shipments;
    /// back to live mode once caught up. False when nothing could be sent.
    fn replay_some(&mut self) -> bool {
        let start = self.next;
        let end = self.shared.readable_end.load(Ordering::Acquire);
        for _ in 0..1000 {
            let (at, next, payload) = match self.unsent.take() {
                Some(record) if record.0 == self.next => record,
                _ => {
                    let Some(reader) = self.replay.as_mut() else { return true };
                    match reader.next(end) {
                        Ok(Some(record)) => record,
                        Ok(None) => break,
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
        if self.shared.readable_end.load(Ordering::Acquire) <= self.next {
            self.replay = None;
        }
        true
    }

    /// Sends one record; false when the producer cannot take it now.
    fn send(&mut self, at: u64, next: u64, payload: &[u8], replayed: bool) -> bool {
        let v1: RecordV1;
        let record = match Record::decode(payload) {
            Ok(r) => r,
            Err(_) if let Ok(old) = postcard::from_bytes::<RecordV1>(payload) => {
                v1 = old;
                Record {
                    kind: &v1.kind,
                    key: &v1.key,
                    tenant: &v1.tenant,
                    event_id: &v1.event_id,
                    json: &v1.json,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, at, "skipping an unreadable spool record");
                self.next = next;
                return true;
            }
        };
        let topic = self.settings.topic_for(record.kind);
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: "type", value: Some(record.kind) })
            .insert(Header { key: "tenant", value: Some(record.tenant) })
            .insert(Header { key: "event_id", value: Some(record.event_id) });
        let base = BaseRecord::with_opaque_to(&topic, Box::new((at, next)))
            .key(record.key.as_bytes())
            .payload(record.json)
            .headers(headers);
        match self.producer.send(base) {
            Ok(()) => {
                self.in_flight.insert(at);
                self.next = next;
                if replayed {
                    self.shared.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                self.shared.stats.unacknowledged.store(self.in_flight.len() as u64, Ordering::Relaxed);
                true
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // librdkafka holds as much as it may: wait, and read the spool later.
                self.start_replay();
                std::thread::sleep(IDLE_WAIT);
                self.serve_events();
                false
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "the producer refused an event; it stays in the spool");
                self.fail();
                false
            }
        }
    }

    /// Serves what librdkafka has queued for us (delivery reports) without
    /// waiting. Waits are sleeps elsewhere: rdkafka's `poll` with a timeout
    /// keeps polling until the deadline and spins on the clock for its last
    /// millisecond, which cost a fifth of a core under load.
    fn serve_events(&mut self) {
        // One event carries the reports of a whole produce request.
        for _ in 0..64 {
            self.producer.poll(Duration::ZERO);
            if self.take_reports() == 0 {
                break;
            }
        }
    }

    /// Applies the delivery reports collected so far; returns how many.
    fn take_reports(&mut self) -> usize {
        let outcomes =
            std::mem::take(&mut *self.producer.context().outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        let taken = outcomes.len();
        let mut acknowledged = 0;
        let mut failed = false;
        for (at, _next, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    if self.in_flight.remove(&at) {
                        acknowledged += 1;
                    }
                    self.backoff = Duration::from_millis(250);
                }
                // Reports for records given up on by an earlier failure are stale.
                Err(e) if self.in_flight.contains(&at) => {
                    self.shared.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    if !failed {
                        tracing::warn!(error = %e, "delivery failed; unacknowledged events will be replayed from the spool");
                    }
                    failed = true;
                }
                Err(_) => {}
            }
        }
        if acknowledged > 0 {
            self.shared.stats.delivered.fetch_add(acknowledged, Ordering::Relaxed);
            self.shared.health.delivery().acknowledged(acknowledged);
        }
        self.shared.stats.unacknowledged.store(self.in_flight.len() as u64, Ordering::Relaxed);
        if failed {
            self.fail();
        }
        taken
    }

    /// Sends everything unacknowledged again, after a growing pause, through
    /// a fresh producer. Duplicates are possible; consumers dedupe on
    /// `event_id`.
    fn fail(&mut self) {
        // After its messages time out, an idempotent producer's epoch is
        // bumped and a broker may answer it ProducerFenced from then on;
        // a new producer (and producer id) starts clean. Dropping the old
        // one purges what it still held: those events are in the spool.
        match producer(&self.settings) {
            Ok(fresh) => self.producer = fresh,
            Err(e) => tracing::error!(error = %e, "cannot recreate the Kafka producer; keeping the old one"),
        }
        let from = self.in_flight.first().copied().unwrap_or(self.next).min(self.next);
        self.in_flight.clear();
        self.next = from;
        self.held.clear();
        self.replay = Some(Reader::new(&self.settings.spool_dir, from));
        self.backoff_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }

    /// Moves the cursor over what was acknowledged, at most five times a second.
    fn maybe_commit(&mut self, now: bool) {
        let upto = self.in_flight.first().copied().unwrap_or(self.next);
        if upto <= self.committed || (!now && self.committed_at.elapsed() < Duration::from_millis(200)) {
            return;
        }
        match spool::commit(&self.settings.spool_dir, upto) {
            Ok(()) => {
                self.committed = upto;
                self.committed_at = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "cannot move the spool cursor"),
        }
    }

    fn report_health(&mut self) {
        let set = if self.shared.full.load(Ordering::Relaxed) {
            Some(Degraded::SpoolFull)
        } else if self.replay.is_some() || self.backoff_until.is_some() {
            Some(Degraded::Spooling)
        } else {
            None
        };
        self.shared.health.set_degraded(set);
        // A stall is judged by the watch whenever readiness is asked, not
        // stored here: this thread may not run to take it back.
        let why = set.max(self.shared.health.delivery().stall());
        if why != self.reported {
            match why {
                Some(Degraded::BrokersUnreachable) => tracing::warn!(
                    brokers = %self.settings.brokers,
                    "no acknowledgement from the Kafka brokers for 5 s: events are spooling to disk"
                ),
                Some(d) => tracing::info!(state = d.as_str(), "Kafka sink degraded"),
                None => tracing::info!("Kafka sink healthy: the spool is drained"),
            }
            self.reported = why;
        }
    }
}

/// `waymark spool replay`: ships what the spool holds and waits for the
/// brokers' acknowledgements, for at most `timeout`. Returns (sent, acknowledged).
pub fn replay_now(settings: KafkaSettings, timeout: Duration) -> Result<(u64, u64), KafkaSetupError> {
    let dir = settings.spool_dir.clone();
    let end = spool_end(&dir)?;
    // Refused while a service ships from the same spool.
    let _lock = if dir.exists() { Some(spool::lock(&dir)?) } else { None };
    let producer = producer(&settings)?;
    let shared = Shared::new(end, Arc::default(), Arc::default());
    let mut shipper = Shipper::new(settings, producer, shared.clone(), spool::read_cursor(&dir));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(IDLE_WAIT);
        shipper.serve_events();
        match shipper.backoff_until {
            Some(t) if Instant::now() < t => continue,
            _ => shipper.backoff_until = None,
        }
        if shipper.replay.is_some() {
            shipper.replay_some();
        } else if shipper.in_flight.is_empty() {
            break;
        }
        shipper.maybe_commit(false);
    }
    let _ = shipper.producer.flush(Duration::from_secs(5));
    shipper.take_reports();
    shipper.maybe_commit(true);
    let s = &shared.stats;
    Ok((s.replayed.load(Ordering::Relaxed), s.delivered.load(Ordering::Relaxed)))
}

/// The end of what a stopped service left in the spool.
fn spool_end(dir: &Path) -> Result<u64, SpoolError> {
    let segs = if dir.exists() { spool::segments(dir)? } else { Vec::new() };
    Ok(segs.last().map_or(0, |last| spool::pos(*last, u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Prefixed};

    fn event(json: &str) -> EncodedEvent<'_> {
        EncodedEvent {
            event_id: Prefixed::event("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B".parse().unwrap()),
            kind: EventType::Clicked,
            message_id: "msg-ü-1",
            tenant: "acme",
            json: json.as_bytes(),
        }
    }

    /// Settings for a test: one topic, the default spool under `dir`.
    fn settings(brokers: String, topic: String, dir: &Path) -> KafkaSettings {
        KafkaSettings {
            brokers,
            topic,
            topic_per_type: false,
            properties: Vec::new(),
            flush_timeout: Duration::from_secs(5),
            spool_dir: dir.join("spool"),
            spool: SpoolSettings::default(),
        }
    }

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
        let settings = settings(brokers, format!("waymark.test.tail.{}", std::process::id()), dir.path());
        let stats = Arc::new(KafkaStats::default());
        let mut sink = KafkaSink::start(settings, Arc::new(Health::default()), stats.clone()).unwrap();
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

    #[test]
    fn shutdown_with_a_gap_in_the_held_shipments_ends() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings("127.0.0.1:9".into(), "waymark.events".into(), dir.path());
        let shared = Shared::new(0, Arc::default(), Arc::default());
        let mut shipper = Shipper::new(settings.clone(), producer(&settings).unwrap(), shared, 0);
        shipper.replay = None;
        // The shipment after a gap, as when the live queue overflowed just
        // before a SIGTERM.
        shipper.held.push_back(Shipment { at: 100, next: 200, payload: Bytes::from_static(b"x") });
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            shipper.ship_held();
            let _ = done.send(shipper.held.len());
        });
        let left = finished.recv_timeout(Duration::from_secs(10)).expect("ship_held never returned");
        assert_eq!(left, 1, "the shipment after the gap stays for the spool's replay at the next start");
    }

    #[test]
    fn records_read_back_as_written() {
        for json in ["{\"a\":1}", "", "{\"ua\":\"Mozilla/5.0 \\u00e9\"}"] {
            let payload = Record::encode(&event(json));
            let record = Record::decode(&payload).unwrap();
            assert_eq!(
                record,
                Record {
                    kind: "email.clicked",
                    key: "msg-ü-1",
                    tenant: "acme",
                    event_id: "evt_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B",
                    json: json.as_bytes(),
                }
            );
        }
    }

    #[test]
    fn first_layout_records_are_told_apart_and_still_read() {
        #[derive(serde::Serialize)]
        struct Old<'a> {
            kind: &'a str,
            key: &'a str,
            tenant: &'a str,
            event_id: &'a str,
            json: Vec<u8>,
        }
        let old = postcard::to_allocvec(&Old {
            kind: "email.opened",
            key: "m",
            tenant: "",
            event_id: "evt_x",
            json: b"{}".to_vec(),
        })
        .unwrap();
        assert!(Record::decode(&old).is_err(), "an old record is not mistaken for the new layout");
        let read: RecordV1 = postcard::from_bytes(&old).unwrap();
        assert_eq!(
            (read.kind.as_str(), read.key.as_str(), read.json.as_slice()),
            ("email.opened", "m", &b"{}"[..])
        );
    }

    #[test]
    fn damaged_records_are_refused_not_misread() {
        let good = Record::encode(&event("{}"));
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("other layout byte", [&[0x0C][..], &good[1..]].concat()),
            ("cut inside a length", good[..2].to_vec()),
            ("cut inside a field", good[..8].to_vec()),
            ("field not UTF-8", [&[RECORD_V2, 2, 0, 0xC3, 0x28][..], &[0, 0, 0, 0, 0, 0][..]].concat()),
        ];
        for (name, payload) in cases {
            assert!(Record::decode(&payload).is_err(), "{name}");
        }
    }
}
