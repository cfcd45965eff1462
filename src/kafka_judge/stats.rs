//! What `waymark judge` counts and how ready it is: records judged, bad
//! records by kind, rebalances, assigned partitions and their lag, rebuilds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct JudgeStats {
    pub judged: AtomicU64,
    pub rebalances: AtomicU64,
    pub rebuilds: AtomicU64,
    /// Hits replayed (judged without emitting) to rebuild partitions.
    pub rebuilt_hits: AtomicU64,
    pub rebuild_ms: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    /// The judge holds partitions now.
    pub assigned: AtomicBool,
    /// The judge has held partitions at least once (joined its group).
    pub ever_assigned: AtomicBool,
    /// Lag by partition (high watermark minus the next offset to judge).
    pub lag: Mutex<BTreeMap<i32, i64>>,
    /// Bad records by stage (`record`, `tenant`, `token`) and kind.
    pub bad: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl JudgeStats {
    /// Counts a bad record; true the first time of its kind (to log it).
    pub fn bad(&self, stage: &'static str, kind: &'static str) -> bool {
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        let n = bad.entry((stage, kind)).or_default();
        *n += 1;
        *n == 1
    }
}

impl crate::metrics::Source for JudgeStats {
    fn encode(&self, e: &mut prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(e, "judge_records_judged", "Hit records judged from the hits topic", get(&self.judged))?;
        counter(e, "judge_rebalances", "Partition assignments and revocations", get(&self.rebalances))?;
        counter(
            e,
            "judge_rebuilds",
            "Partitions whose state was rebuilt from the topic",
            get(&self.rebuilds),
        )?;
        counter(
            e,
            "judge_rebuilt_hits",
            "Hits replayed without emitting to rebuild state",
            get(&self.rebuilt_hits),
        )?;
        gauge(e, "judge_rebuild_last_ms", "How long the last rebuild took", get(&self.rebuild_ms) as i64)?;
        counter(e, "judge_commits", "Offset commits made", get(&self.commits))?;
        counter(e, "judge_commit_failures", "Offset commits that failed", get(&self.commit_failures))?;
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gauge(
            e,
            "judge_assigned_partitions",
            "Partitions of the hits topic this judge holds",
            lag.len() as i64,
        )?;
        let mut family = e.encode_descriptor(
            "judge_lag",
            "Hit records not yet judged, by partition",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (partition, n) in lag {
            let labels = [("partition", partition.to_string())];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        let bad = self.bad.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut family = e.encode_descriptor(
            "judge_bad_records",
            "Records of the hits topic skipped, by stage and kind",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for ((stage, kind), n) in bad {
            ConstCounter::new(n).encode(family.encode_family(&[("stage", stage), ("kind", kind)])?)?;
        }
        Ok(())
    }
}
