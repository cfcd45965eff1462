//! The pipeline's step in the Kafka mode of the judge (`judge = "kafka"`),
//! in place of judging: a hit becomes one hit record,
//! published through the sink's raw-record path (the same write-ahead
//! spool and shipper as events) to the hits topic, keyed by tenant and
//! message id and carrying the headers `type` = `hit`, `tenant` and
//! `event_id` (the id of the hit's own event, which derives from the hit id).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::judge::checked;
use super::{Handle, Stats};
use crate::hit::Hit;
use crate::hit::record::HitRecord;
use crate::sink::{Sink, SinkError};

/// The `type` header of a hit record.
pub const HIT_TYPE: &str = "hit";

/// Turns hits into hit records; one buffer reused for every record.
#[derive(Debug, Default)]
pub struct Forward {
    record: Vec<u8>,
    key: String,
}

impl Forward {
    /// Publishes `hit`'s record to `sink`. A hit without its sealed text
    /// (an edge not in the Kafka mode made it) cannot be forwarded.
    pub fn publish(&mut self, hit: &Hit, sink: &mut dyn Sink) -> Result<(), SinkError> {
        let Some(sealed) = hit.sealed.as_deref() else {
            return Err(SinkError::Refused {
                path: "the hits topic".into(),
                why: "the hit carries no sealed token",
            });
        };
        let claims = hit.token.claims();
        self.record.clear();
        HitRecord::of(hit, sealed).encode(&mut self.record);
        self.key.clear();
        self.key.push_str(&claims.tenant);
        self.key.push('/');
        self.key.push_str(&claims.message_id);
        let mut id = [0u8; 40];
        let id = crate::event::Prefixed::event(crate::event::ids::of_hit(hit.id)).as_str(&mut id);
        sink.publish_raw([HIT_TYPE, &self.key, &claims.tenant, id], &self.record)
    }
}

/// A pipeline thread's step that forwards instead of judging.
pub struct Forwarding {
    pub forward: Forward,
    pub stats: Arc<Stats>,
}

impl Handle for Forwarding {
    fn handle(&mut self, hit: &Hit, sink: &mut dyn Sink) -> bool {
        let taken = checked(&self.stats, self.forward.publish(hit, sink));
        if taken {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        taken
    }
}
