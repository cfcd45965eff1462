//! One assigned partition: its judge (the classifier's state for the
//! messages that hash to it), the next offset to judge, and what waits to
//! be committed; and the rebuild that brings a newly assigned partition's
//! state up to its committed offset without emitting anything.
//!
//! The rebuild reads with its own consumer, outside the group, so the
//! group's position is untouched: a binary search by hit time finds where
//! the state horizon starts ([`super::rebuild`]), then the hits from there
//! up to the first one to judge are judged into a sink that keeps nothing.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::progress::Progress;
use super::rebuild;
use crate::event::EncodedEvent;
use crate::hit::Hit;
use crate::hit::record::HitRecord;
use crate::pipeline::Judge;
use crate::sink::{Sink, SinkError};

/// How long one read of the rebuild waits for the broker.
const READ_WAIT: Duration = Duration::from_secs(5);

pub struct Partition {
    pub judge: Judge,
    /// The next offset to judge: earlier ones were judged (or replayed).
    pub next: i64,
    pub progress: Progress,
    /// False once revoked: kept only in case the same partition comes back
    /// with nothing judged elsewhere in between.
    pub live: bool,
}

/// A sink that keeps nothing: the rebuild judges without emitting.
pub struct Discard;

impl Sink for Discard {
    fn publish(&mut self, _: &EncodedEvent) -> Result<(), SinkError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn sync(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What a rebuild did, for the log and the metrics.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub from: i64,
    pub hits: u64,
    pub took: Duration,
}

/// Reads a partition outside the group to rebuild its state.
pub struct Replayer {
    pub consumer: BaseConsumer,
    pub topic: String,
}

impl Replayer {
    /// The first readable hit at or after `offset`, before `upto`: its
    /// offset and hit time in milliseconds.
    fn hit_time(&self, partition: i32, offset: i64, upto: i64) -> Option<(i64, i64)> {
        self.assign(partition, offset)?;
        let deadline = Instant::now() + READ_WAIT;
        while Instant::now() < deadline {
            let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            if m.partition() != partition || m.offset() < offset {
                continue; // fetched for an earlier read
            }
            if m.offset() >= upto {
                return None;
            }
            if let Ok(r) = HitRecord::decode(m.payload().unwrap_or(&[])) {
                return Some((m.offset(), (r.at.unix_timestamp_nanos() / 1_000_000) as i64));
            }
        }
        None
    }

    fn assign(&self, partition: i32, offset: i64) -> Option<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).ok()?;
        self.consumer.assign(&tpl).ok()
    }

    /// Judges, without emitting, the hits of `partition` within `horizon`
    /// before `upto` (the first offset to judge, whose hit is at
    /// `first_hit_ms`). `open` turns a record into a hit (or refuses it).
    pub fn rebuild(
        &self,
        partition: i32,
        upto: i64,
        first_hit_ms: i64,
        horizon: Duration,
        judge: &mut Judge,
        open: &dyn Fn(&HitRecord) -> Option<Hit>,
    ) -> Rebuilt {
        let started = Instant::now();
        let low = match self.consumer.fetch_watermarks(&self.topic, partition, READ_WAIT) {
            Ok((low, _)) => low,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the partition's first offset; judging without rebuilding its state");
                return Rebuilt { from: upto, ..Rebuilt::default() };
            }
        };
        let since = rebuild::since_ms(first_hit_ms, horizon);
        let from = rebuild::replay_from(low, upto, since, |o| self.hit_time(partition, o, upto));
        let mut hits = 0;
        if from < upto && self.assign(partition, from).is_some() {
            let mut next = from;
            let mut deadline = Instant::now() + READ_WAIT;
            while next < upto && Instant::now() < deadline {
                let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) else { continue };
                if m.partition() != partition || m.offset() < next {
                    continue;
                }
                if m.offset() >= upto {
                    break;
                }
                next = m.offset() + 1;
                deadline = Instant::now() + READ_WAIT;
                let Ok(r) = HitRecord::decode(m.payload().unwrap_or(&[])) else { continue };
                if ((r.at.unix_timestamp_nanos() / 1_000_000) as i64) < since {
                    continue;
                }
                if let Some(hit) = open(&r) {
                    judge.handle(&hit, &mut Discard);
                    hits += 1;
                }
            }
            if next < upto {
                tracing::warn!(
                    partition,
                    from,
                    reached = next,
                    upto,
                    "the rebuild could not read every hit of the horizon; judging on what it read"
                );
            }
        }
        let _ = self.consumer.unassign();
        Rebuilt { from, hits, took: started.elapsed() }
    }
}

/// Builds the replayer's consumer: outside the group, never committing.
pub fn replayer(config: &rdkafka::ClientConfig, topic: &str) -> Result<Replayer, rdkafka::error::KafkaError> {
    let mut c = config.clone();
    c.set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "0");
    Ok(Replayer { consumer: c.create()?, topic: topic.to_owned() })
}
