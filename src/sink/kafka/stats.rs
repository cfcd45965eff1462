//! The Kafka sink's counters, and their metrics (read at scrape time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{Source, counter, gauge};
use crate::sink::spool::Ledger;

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

/// The Kafka sink's metrics: its counters and its spool's.
#[derive(Debug)]
pub struct KafkaMetrics {
    pub stats: Arc<KafkaStats>,
    pub ledger: Arc<Ledger>,
}

impl Source for KafkaMetrics {
    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        counter(
            e,
            "kafka_spooled",
            "Events written to the spool (every event, before shipping)",
            get(&s.spooled),
        )?;
        counter(e, "kafka_delivered", "Events the brokers acknowledged", get(&s.delivered))?;
        counter(
            e,
            "kafka_delivery_errors",
            "Deliveries that failed and will be replayed",
            get(&s.delivery_errors),
        )?;
        counter(e, "kafka_replayed", "Events read back from the spool and sent again", get(&s.replayed))?;
        counter(e, "kafka_lost", "Events lost because the spool could not take them", get(&s.lost))?;
        gauge(e, "spool_bytes", "Bytes in the spool on disk", get(&s.spool_bytes) as i64)?;
        gauge(
            e,
            "kafka_unacknowledged",
            "Events sent and not yet acknowledged",
            get(&s.unacknowledged) as i64,
        )?;
        let l = &self.ledger.stats;
        counter(
            e,
            "spool_skipped_bytes",
            "Damaged spool bytes passed over when reading",
            get(&l.skipped_bytes),
        )?;
        counter(
            e,
            "spool_skipped_records",
            "Spool records lost to damage (estimated)",
            get(&l.skipped_records),
        )?;
        counter(
            e,
            "spool_cursor_resets",
            "Spool cursors found pointing nowhere and reset",
            get(&l.cursor_resets),
        )?;
        counter(
            e,
            "spool_cursor_failures",
            "Attempts to move the spool cursor that failed",
            get(&l.cursor_failures),
        )?;
        counter(
            e,
            "spool_unwritable",
            "Events refused because the spool's disk refused writes",
            get(&l.unwritable),
        )
    }
}
