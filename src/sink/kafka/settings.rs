//! The Kafka sink's settings, validated, and the producer configuration
//! they make.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::sink::spool::SpoolSettings;

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

/// The hits topic of the Kafka mode of the judge (`judge = "kafka"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitsSettings {
    pub topic: String,
    /// The consumer group the `waymark judge` processes share.
    pub group: String,
    /// Partitions the topic is created with when it is missing.
    pub partitions: u32,
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

    /// Where this sink's records go, as its spool records it: the topic, or
    /// `topic.*` when each event type has its own.
    pub fn destination(&self) -> String {
        if self.topic_per_type { format!("{}.*", self.topic) } else { self.topic.clone() }
    }

    /// These settings shipping to `destination` (as [`Self::destination`] writes it).
    pub fn shipping_to(self, destination: &str) -> KafkaSettings {
        match destination.strip_suffix(".*") {
            Some(topic) => KafkaSettings { topic: topic.to_owned(), topic_per_type: true, ..self },
            None => KafkaSettings { topic: destination.to_owned(), topic_per_type: false, ..self },
        }
    }

    pub fn topic_for(&self, kind: &str) -> Cow<'_, str> {
        if self.topic_per_type { format!("{}.{kind}", self.topic).into() } else { self.topic.as_str().into() }
    }
}
