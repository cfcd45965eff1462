//! The Kafka mode of the judge (`judge = "kafka"`): edges publish one hit
//! record per hit to the hits topic, keyed by tenant and message id, and
//! `waymark judge` processes, one consumer group, judge the partitions they
//! are assigned with the same [`Judge`] as the local mode.
//!
//! Parts: the edge's side is a step of the pipeline
//! (`pipeline::forward`: a hit becomes a hit record in the same write-ahead
//! spool and shipper as events); here are [`consumer`] (the judge's
//! loop: rebalances, judging in partition order, offset commits),
//! [`partition`] (one partition's judge and its rebuild from the topic),
//! [`progress`] (when an offset may be committed), [`rebuild`] (where a
//! rebuild starts) and [`stats`] (metrics and readiness).
//!
//! The guarantee: a partition's offset is committed only once the brokers
//! acknowledged every event produced from the hits before it, and event ids
//! derive from hit ids, so a judge killed at any moment leaves hits that
//! are judged again into the same events under the same ids. Consumers
//! dedupe on `event_id`.
//!
//! [`Judge`]: crate::pipeline::Judge

pub mod admin;
pub mod consumer;
pub mod partition;
pub mod progress;
pub mod rebuild;
pub mod stats;
pub mod topic;

use std::time::Duration;

use crate::classify::behaviour::Windows;

pub use consumer::run;
pub use stats::JudgeStats;

/// The longest window the judge's state must cover: how far back a
/// rebuilt partition replays.
pub fn horizon(w: &Windows) -> Duration {
    w.repeat.max(w.burst).max(w.scan).max(w.memory)
}
