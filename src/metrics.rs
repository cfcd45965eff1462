//! Prometheus metrics, named by Prometheus conventions (`waymark_` prefix,
//! `_total` counters, seconds for durations) and served as text on the
//! internal admin listener only, never on the public one.
//!
//! One way to collect: the edge's request metrics live here; every other
//! component keeps its counters where they are cheapest (atomics) and
//! offers them as a [`Source`], read at scrape time, so recording a hit
//! never takes a lock for metrics. This module knows the sources only
//! through that trait (the pipeline, the sinks and the classifier's cache
//! each implement it), so nothing here imports upward.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::classify::CacheStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A component's metrics, read at scrape time.
pub trait Source: std::fmt::Debug + Send + Sync + 'static {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error>;
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub token_failures: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs to about 0.4 s: the edge answers in microseconds when healthy.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 15))
}

impl Metrics {
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Metrics {
        let mut registry = Registry::with_prefix("waymark");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        let latency =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from request to response, by route",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let token_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("token_failures", "Tokens refused, by reason", token_failures.clone());
        registry.register_collector(Box::new(Scraped { sources }));
        Metrics { registry, requests, latency, token_failures }
    }

    /// The text exposition format, for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads the atomics at scrape time.
#[derive(Debug)]
struct Scraped {
    sources: Vec<Arc<dyn Source>>,
}

pub fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for source in &self.sources {
            source.encode(&mut e)?;
        }
        Ok(())
    }
}

impl Source for CacheStats {
    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            e,
            "ua_cache_hits",
            "User-agent look-ups answered from the cache",
            self.hits.load(Ordering::Relaxed),
        )?;
        counter(e, "ua_cache_misses", "User-agent look-ups computed", self.misses.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Verdict;
    use crate::pipeline::Stats;
    use crate::token::Kind;

    #[test]
    fn exposition_names_follow_prometheus_conventions() {
        let stats = Arc::new(Stats::default());
        stats.recorded.fetch_add(3, Ordering::Relaxed);
        stats.processed.fetch_add(1, Ordering::Relaxed);
        stats.verdict_counter(Kind::Click, Verdict::Scanner, false).fetch_add(2, Ordering::Relaxed);
        let m = Metrics::new(vec![stats, Arc::new(CacheStats::default())]);
        m.requests.get_or_create(&RequestLabels { route: "pixel", status: 200 }).inc();
        m.latency.get_or_create(&RouteLabels { route: "pixel" }).observe(0.0001);
        m.token_failures.get_or_create(&ReasonLabels { reason: "forged" }).inc();
        let text = m.encode();
        for line in [
            "waymark_http_requests_total{route=\"pixel\",status=\"200\"} 1",
            "waymark_http_request_duration_seconds_count{route=\"pixel\"} 1",
            "waymark_token_failures_total{reason=\"forged\"} 1",
            "waymark_hits_recorded_total 3",
            "waymark_queue_depth 2",
            "waymark_hits_total{kind=\"click\",verdict=\"scanner\",counted=\"false\"} 2",
            "# TYPE waymark_ua_cache_hits counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
