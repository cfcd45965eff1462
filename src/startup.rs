//! Start-up: the steps between a checked [`Config`] and a running
//! [`Server`], in order: load the key ring, check librdkafka's properties,
//! build the classifier, the sink and the pipeline, the tenancy, the edge
//! and the admin API, then bind the listeners. Each step that can fail
//! fails here, before the first request.

use std::sync::Arc;

use crate::admin::Admin;
use crate::classify::Classifier;
use crate::config::{Config, ConfigError, JudgeMode, KeySource, SinkSettings};
use crate::edge::{ClientAddress, Edge};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pipeline::{self, Pipeline};
use crate::ratelimit::ClientLimit;
use crate::server::{Limits, Listeners, ServeError, Server};
use crate::sink::Sink;
use crate::sink::file::FileSink;
use crate::sink::kafka::{HitsSettings, KafkaSettings, KafkaSink};
use crate::tenancy::{self, Tenancy};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("setting kafka.properties is invalid: {0}")]
    KafkaProperties(String),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Kafka(#[from] crate::sink::kafka::KafkaSetupError),
    #[error(transparent)]
    Classify(#[from] crate::classify::ClassifyError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What to tell whoever is about to use a development ring.
fn development_ring_warning(path: &std::path::Path) -> String {
    format!(
        "DEVELOPMENT KEY RING IN USE ({}): links minted with it stop working wherever this file is lost. \
         Set WAYMARK_KEYS (see `waymark keygen`) before sending real mail.",
        path.display()
    )
}

/// The tenancy of a configuration: loads its key ring (reading the key
/// file, or creating the development ring) and hands `warn` the warning a
/// development ring deserves, for the caller to say its own way.
pub fn tenancy(config: &Config, warn: impl FnOnce(&str)) -> Result<Tenancy, ConfigError> {
    let (keys, source) = config.keys.load()?;
    if let KeySource::Development(path) = source {
        warn(&development_ring_warning(&path));
    }
    Ok(Tenancy::new(
        keys,
        tenancy::default_base(config.public_url.as_ref(), config.listen),
        config.tenants.clone(),
        config.unknown_hosts,
    ))
}

/// librdkafka checks every property when a client is made, so a typo
/// fails now. Its message can quote a property's value, which may be a
/// password: every configured value is cut out of it.
pub fn probe_kafka(settings: &KafkaSettings) -> Result<(), StartError> {
    let mut probe = settings.client_config();
    probe.set("log_level", "0");
    match probe.create::<rdkafka::producer::BaseProducer>() {
        Ok(_) => Ok(()),
        Err(e) => Err(StartError::KafkaProperties(redact_values(&e.to_string(), &settings.properties))),
    }
}

fn redact_values(message: &str, properties: &[(String, String)]) -> String {
    let mut values: Vec<&str> =
        properties.iter().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()).collect();
    // Longest first, so a value that contains another is cut whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.iter().fold(message.to_owned(), |m, v| m.replace(v, "<redacted>"))
}

/// Builds every part from a checked configuration and its tenancy (over
/// the loaded key ring), and binds the listeners.
pub async fn start(config: Config, tenancy: Arc<Tenancy>) -> Result<Server, StartError> {
    if let SinkSettings::Kafka(kafka) = &config.sink {
        probe_kafka(kafka)?;
    }
    let classifier = Classifier::new(&config.classify)?;
    let cache_stats = classifier.cache_stats().clone();
    tracing::info!(rules_version = classifier.rules_version(), "classifier ready");
    let health = Arc::new(Health::default());
    let sink: Box<dyn Sink> = match (&config.sink, &config.judge) {
        (SinkSettings::Kafka(kafka), JudgeMode::Kafka(hits)) => {
            crate::kafka_judge::topic::ensure_soon(kafka, hits).await;
            tracing::info!(brokers = %kafka.brokers, topic = %hits.topic, spool = %kafka.spool_dir.display(), "hits go to the judges through Kafka");
            Box::new(KafkaSink::start(hit_records(kafka, hits))?)
        }
        (SinkSettings::File(path), _) => Box::new(FileSink::open(path)?.rotating(config.events_rotation)),
        (SinkSettings::Kafka(kafka), _) => {
            tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, spool = %kafka.spool_dir.display(), "events go to Kafka");
            Box::new(KafkaSink::start(kafka.clone())?)
        }
    };
    health.register_from(sink.state());
    let mut sources: Vec<Arc<dyn crate::metrics::Source>> = vec![cache_stats];
    sources.extend(sink.metrics());
    let options = pipeline::Options {
        events: event_settings(&config),
        capacity: config.queue_capacity,
        flush_interval: config.flush_interval,
        durable_within: config.unsubscribe_durable,
        judge_threads: config.judge_threads,
    };
    let forwarding = matches!(config.judge, JudgeMode::Kafka(_));
    let (recorder, pipeline) = match forwarding {
        true => Pipeline::forwarding(sink, options),
        false => Pipeline::start(classifier, sink, options),
    };
    let stats = recorder.stats().clone();
    sources.push(stats.clone());
    let metrics = Arc::new(Metrics::new(sources));
    let admin = config.admin.as_ref().map(|a| {
        (
            a.listen,
            Arc::new(Admin::new(metrics.clone(), tenancy.clone(), a.token.as_deref(), a.max_body, a.rate)),
        )
    });
    let edge = Edge::new(
        tenancy,
        recorder,
        config.fallback_url.clone(),
        ClientAddress { trusted_proxies: config.trusted_proxies.clone(), header: config.client_ip_header },
        health.clone(),
        metrics,
        ClientLimit::per_minute(config.unsubscribe_rate),
    );
    let edge = Arc::new(if forwarding { edge.forwarding() } else { edge });
    let listeners = Listeners { public: config.listen, tls: config.tls.clone(), admin };
    let limits = Limits {
        delay: config.shutdown_delay,
        grace: config.shutdown_grace,
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
        max_connections: config.max_connections,
    };
    Ok(Server::bind(listeners, limits, edge, pipeline, stats, health).await?)
}

/// The Kafka sink of an edge whose hits `waymark judge` processes judge:
/// hit records, all to the hits topic.
pub fn hit_records(kafka: &KafkaSettings, hits: &HitsSettings) -> KafkaSettings {
    KafkaSettings { topic: hits.topic.clone(), topic_per_type: false, ..kafka.clone() }
}

/// What `waymark serve` with this configuration ships through Kafka (and
/// so spools): hit records or events; `None` without brokers.
pub fn edge_kafka(config: &Config) -> Option<KafkaSettings> {
    match (&config.sink, &config.judge) {
        (SinkSettings::Kafka(kafka), JudgeMode::Kafka(hits)) => Some(hit_records(kafka, hits)),
        (SinkSettings::Kafka(kafka), JudgeMode::Local) => Some(kafka.clone()),
        (SinkSettings::File(_), _) => None,
    }
}

/// What every event shares, the same whether `serve` or `judge` builds it:
/// how much of the client it keeps, and the `dedup_key` bucket (the
/// repeat window the classifier judges repeats by).
pub fn event_settings(config: &Config) -> crate::event::Settings {
    crate::event::Settings {
        privacy: config.privacy.clone(),
        repeat_window_ms: config.classify.windows.repeat.as_millis() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_lose_every_configured_value() {
        let props = vec![
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("security.protocol".into(), "PW".into()),
        ];
        let message = "Invalid value \"PW\" for configuration property \"security.protocol\"; hunter2";
        let got = redact_values(message, &props);
        assert!(!got.contains("PW") && !got.contains("hunter2"), "{got}");
        assert!(got.contains("security.protocol"));
    }
}
