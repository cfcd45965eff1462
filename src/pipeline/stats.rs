//! The pipeline's counters: kept as atomics where they are counted (no
//! lock, no allocation per hit) and read by the metrics at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::Verdict;
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
