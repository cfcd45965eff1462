//! `waymark judge`'s loop: one consumer in the judge group reads the hits
//! topic, each partition's hits are judged in offset order by that
//! partition's own [`Judge`], events go to the Kafka sink (spool, shipper,
//! idempotent producer), and a partition's offset is committed once the
//! brokers acknowledged the events of every hit before it.
//!
//! Why acknowledged and not merely spooled: a judge's spool is local to
//! its pod, and a pod moved to another node leaves its disk behind; hits
//! committed with their events only in that spool would be lost. Waiting
//! for the acknowledgement costs a few milliseconds of linger and makes
//! the hits topic the only place a hit must survive.
//!
//! Rebalances: a revoked partition is settled (acknowledged, committed)
//! inside the callback, before another judge can take it; a partition is
//! rebuilt lazily, when its first record arrives, from the hits of the
//! state horizon before that record ([`super::partition`]). A partition
//! that comes back exactly where this judge left it keeps its state.
//!
//! One thread does all of it: a judge scales by processes (one per
//! partition at most), and per-partition order is then free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::partition::{Partition, Replayer, replayer};
use super::stats::JudgeStats;
use crate::classify::{self, Classifier};
use crate::event;
use crate::hit::Hit;
use crate::hit::record::HitRecord;
use crate::pipeline::{Judge, Stats};
use crate::sink::kafka::{HitsSettings, KafkaSettings, KafkaSink};
use crate::tenancy::Tenancy;

/// How often offsets are committed and lag measured.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("cannot create the judge's Kafka consumer for {brokers}: {source}")]
    Consumer { brokers: String, source: rdkafka::error::KafkaError },
    #[error("cannot subscribe to the hits topic {topic}: {source}")]
    Subscribe { topic: String, source: rdkafka::error::KafkaError },
    #[error(transparent)]
    Sink(#[from] crate::sink::kafka::KafkaSetupError),
    #[error(transparent)]
    Classify(#[from] classify::ClassifyError),
}

/// What a judge process runs on.
pub struct Options {
    pub kafka: KafkaSettings,
    pub hits: HitsSettings,
    pub classify: classify::Settings,
    pub events: event::Settings,
}

/// Everything the loop and the rebalance callbacks share.
struct Judging {
    partitions: HashMap<i32, Partition>,
    sink: KafkaSink,
    replayer: Replayer,
    tenancy: Arc<Tenancy>,
    /// Each partition's judge gets a shard of it.
    classifier: Classifier,
    events: event::Settings,
    pipeline: Arc<Stats>,
    stats: Arc<JudgeStats>,
    topic: String,
    horizon: Duration,
    /// How long a revoked partition's events may take to be acknowledged.
    settle_within: Duration,
}

struct Context {
    judging: Mutex<Option<Judging>>,
    stats: Arc<JudgeStats>,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every second): the lag of each partition
    /// held, measured by the client itself. Asking the brokers instead
    /// would queue behind the consumer's own long fetch.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = self.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
        for topic in statistics.topics.values() {
            for (p, n) in lag.iter_mut() {
                if let Some(part) = topic.partitions.get(p).filter(|part| part.consumer_lag >= 0) {
                    *n = part.consumer_lag;
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?revoked, "partitions revoked: settling and committing them");
            if let Some(j) = self.judging.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                j.settle(consumer, &revoked);
                for p in &revoked {
                    if let Some(part) = j.partitions.get_mut(p) {
                        part.live = false;
                    }
                }
                j.stats.lag.lock().unwrap_or_else(|p| p.into_inner()).retain(|p, _| !revoked.contains(p));
            }
        }
    }

    /// After a rebalance, incremental (only what moved) or not: what this
    /// judge holds now is the consumer's whole assignment.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(e) = rebalance {
            tracing::warn!(error = %e, "rebalance failed");
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            let added: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let protocol = match consumer.rebalance_protocol() {
                RebalanceProtocol::Cooperative => "cooperative",
                RebalanceProtocol::Eager => "eager",
                RebalanceProtocol::None => "none",
            };
            tracing::info!(?added, protocol, "partitions assigned");
            self.stats.ever_assigned.store(true, Ordering::Relaxed);
        }
        let held: Vec<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        if let Some(j) = self.judging.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            // State of partitions gone elsewhere is stale by the time they return.
            j.partitions.retain(|p, _| held.contains(p));
            let mut lag = j.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
            lag.retain(|p, _| held.contains(p));
            for p in &held {
                lag.entry(*p).or_insert(0);
            }
        }
        self.stats.assigned.store(!held.is_empty(), Ordering::Relaxed);
    }
}

impl Judging {
    /// Judges one record of the hits topic.
    fn take(&mut self, m: &BorrowedMessage<'_>) {
        let (p, offset) = (m.partition(), m.offset());
        let payload = m.payload().unwrap_or(&[]);
        let record = HitRecord::decode(payload);
        // A live partition goes on whatever the offset (a gap is records
        // gone, not hits of ours); one taken up again is activated.
        if !self.partitions.get(&p).is_some_and(|part| part.live) {
            // A bad first record: the horizon is measured from now instead.
            let at = record.as_ref().map_or_else(|_| time::OffsetDateTime::now_utc(), |r| r.at);
            self.activate(p, offset, (at.unix_timestamp_nanos() / 1_000_000) as i64);
        }
        let Some(part) = self.partitions.get_mut(&p) else { return };
        if offset < part.next {
            return; // delivered again; judged already
        }
        match record {
            Err(e) => {
                if self.stats.bad("record", e.kind()) {
                    tracing::warn!(partition = p, offset, error = %e, "skipping a bad record of the hits topic (logged once per kind, counted)");
                }
            }
            Ok(r) => {
                if let Some(hit) = open(&self.tenancy, &self.stats, &r) {
                    part.judge.handle(&hit, &mut self.sink);
                }
            }
        }
        part.next = offset + 1;
        part.progress.judged(offset, self.sink.end());
        self.stats.judged.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes partition `p` ready to judge from `offset`: kept state if it
    /// stops exactly there, else a fresh judge rebuilt from the topic.
    fn activate(&mut self, p: i32, offset: i64, first_hit_ms: i64) {
        if let Some(part) = self.partitions.get_mut(&p)
            && part.next == offset
        {
            part.live = true;
            return;
        }
        // Shares the rules and caches; the behaviour state is the partition's own.
        let classifier = self.classifier.shard();
        // Hits and bad records met again while rebuilding were counted when
        // first judged: `waymark_hits_total` counts each hit once.
        let mut judge = Judge::new(classifier, self.events.clone(), Default::default());
        let (tenancy, uncounted) = (self.tenancy.clone(), JudgeStats::default());
        let open = move |r: &HitRecord| open(&tenancy, &uncounted, r);
        let rebuilt = self.replayer.rebuild(p, offset, first_hit_ms, self.horizon, &mut judge, &open);
        judge.count_into(self.pipeline.clone());
        tracing::info!(
            partition = p,
            from = rebuilt.from,
            upto = offset,
            hits = rebuilt.hits,
            ms = rebuilt.took.as_millis() as u64,
            "partition state rebuilt"
        );
        self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.stats.rebuilt_hits.fetch_add(rebuilt.hits, Ordering::Relaxed);
        self.stats.rebuild_ms.store(rebuilt.took.as_millis() as u64, Ordering::Relaxed);
        let part = Partition { judge, next: offset, progress: Default::default(), live: true };
        self.partitions.insert(p, part);
    }

    /// Commits, for every live partition, the offsets whose events were acknowledged.
    fn commit(&mut self, consumer: &BaseConsumer<Context>, only: Option<&[i32]>) {
        let acknowledged = self.sink.acknowledged();
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &mut self.partitions {
            if !part.live || only.is_some_and(|only| !only.contains(p)) {
                continue;
            }
            if let Some(offset) = part.progress.committable(acknowledged) {
                let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.stats.commit_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, failures = n, "cannot commit offsets: those hits will be judged again (same event ids)");
                }
            }
        }
    }

    /// Waits (bounded) until the events of `partitions` were acknowledged,
    /// then commits them.
    fn settle(&mut self, consumer: &BaseConsumer<Context>, partitions: &[i32]) {
        let _ = crate::sink::Sink::flush(&mut self.sink);
        let deadline = Instant::now() + self.settle_within;
        let acknowledged = |j: &Judging| j.sink.acknowledged() >= j.sink.end();
        while !acknowledged(self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !acknowledged(self) {
            tracing::warn!(
                "events not acknowledged in time: their hits will be judged again (same event ids)"
            );
        }
        self.commit(consumer, Some(partitions));
    }
}

/// The shared state; only this thread, and the callbacks it runs inside
/// `poll`, take it.
fn lock(c: &BaseConsumer<Context>) -> std::sync::MutexGuard<'_, Option<Judging>> {
    c.context().judging.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hit a record describes, opened with its tenant's ring at its own
/// time; `None` (counted, logged once per kind) when it cannot be.
fn open(tenancy: &Tenancy, stats: &JudgeStats, r: &HitRecord) -> Option<Hit> {
    let refused = |stage: &'static str, kind: &'static str| {
        if stats.bad(stage, kind) {
            tracing::warn!(
                stage,
                kind,
                tenant = r.tenant,
                "skipping a hit record the judge cannot open (logged once per kind, counted)"
            );
        }
        None
    };
    let Ok(tenant) = tenancy.named(r.tenant) else { return refused("tenant", "unknown_tenant") };
    match r.open(tenancy.keys(tenant)) {
        Ok(hit) if hit.token.claims().tenant == r.tenant => Some(hit),
        Ok(_) => refused("tenant", "wrong_tenant"),
        Err(e) => refused("token", e.reason()),
    }
}

/// The consumer's configuration: the brokers and properties of the events'
/// producer, the group, and offsets committed by hand.
fn consumer_config(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Incremental rebalancing: when a judge joins or leaves, only the
        // partitions that move stop and are rebuilt; the others go on.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "1000")
        .set("client.id", "waymark-judge");
    for (k, v) in &kafka.properties {
        // Producer settings do not concern the consumer (and librdkafka
        // warns about each); connection and security ones do.
        if !PRODUCER_ONLY.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c
}

const PRODUCER_ONLY: &[&str] = &[
    "enable.idempotence",
    "acks",
    "compression.type",
    "linger.ms",
    "message.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "batch.size",
    "batch.num.messages",
];

/// Runs the judge until `stop` is set: then finishes what is in flight,
/// commits, leaves the group and closes the sink.
pub fn run(
    options: Options,
    tenancy: Arc<Tenancy>,
    pipeline: Arc<Stats>,
    stats: Arc<JudgeStats>,
    stop: Arc<AtomicBool>,
    on_sink: impl FnOnce(&KafkaSink),
) -> Result<(), JudgeError> {
    let Options { kafka, hits, classify, events } = options;
    let classifier = Classifier::new(&classify)?;
    let config = consumer_config(&kafka, &hits.group);
    let brokers = kafka.brokers.clone();
    let made = |source| JudgeError::Consumer { brokers: brokers.clone(), source };
    let replayer =
        replayer(&consumer_config(&kafka, &format!("{}.rebuild", hits.group)), &hits.topic).map_err(made)?;
    let settle_within = kafka.flush_timeout;
    let sink = KafkaSink::start(kafka)?;
    on_sink(&sink);
    let judging = Judging {
        partitions: HashMap::new(),
        sink,
        replayer,
        tenancy,
        horizon: super::horizon(&classify.windows),
        classifier,
        events,
        pipeline,
        stats: stats.clone(),
        topic: hits.topic.clone(),
        settle_within,
    };
    let context = Context { judging: Mutex::new(Some(judging)), stats: stats.clone() };
    let consumer: BaseConsumer<Context> = config.create_with_context(context).map_err(made)?;
    consumer
        .subscribe(&[&hits.topic])
        .map_err(|source| JudgeError::Subscribe { topic: hits.topic.clone(), source })?;
    let mut last_commit = Instant::now();
    let mut errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(j) = lock(&consumer).as_mut() {
                    j.take(&m);
                }
            }
            Some(Err(e)) => {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "reading the hits topic failed");
                }
            }
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            if let Some(j) = lock(&consumer).as_mut() {
                let _ = crate::sink::Sink::flush(&mut j.sink);
                j.commit(&consumer, None);
            }
        }
    }
    tracing::info!("stopping: settling in-flight events, committing, leaving the group");
    if let Some(j) = lock(&consumer).as_mut() {
        let live: Vec<i32> = j.partitions.iter().filter(|(_, p)| p.live).map(|(p, _)| *p).collect();
        j.settle(&consumer, &live);
    }
    consumer.unsubscribe();
    let judging = lock(&consumer).take();
    drop(consumer); // closes: leaves the group
    if let Some(mut j) = judging
        && let Err(e) = crate::sink::Sink::close(&mut j.sink)
    {
        tracing::error!(error = %e, "closing the event sink failed");
    }
    Ok(())
}
