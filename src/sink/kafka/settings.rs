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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(topic_per_type: bool, properties: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            brokers: "broker-a:9092,broker-b:9092".into(),
            topic: "waymark.events".into(),
            topic_per_type,
            properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            flush_timeout: Duration::from_secs(5),
            spool_dir: PathBuf::from("spool"),
            spool: SpoolSettings::default(),
        }
    }

    /// The delivery guarantees the README promises for the producer.
    #[test]
    fn the_producer_is_idempotent_and_acknowledged_by_all_replicas() {
        let c = settings(false, &[]).client_config();
        let cases = [
            ("bootstrap.servers", "broker-a:9092,broker-b:9092"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ];
        for (key, want) in cases {
            assert_eq!(c.get(key), Some(want), "{key}");
        }
    }

    #[test]
    fn configured_properties_override_the_defaults_and_add_to_them() {
        let c = settings(false, &[("linger.ms", "50"), ("security.protocol", "SASL_SSL")]).client_config();
        assert_eq!(c.get("linger.ms"), Some("50"), "a configured property wins over the default");
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("acks"), Some("all"), "defaults not configured stay");
    }

    #[test]
    fn each_event_type_gets_its_own_topic_only_when_asked() {
        // (topic_per_type, event type, topic)
        let cases = [
            (true, "email.clicked", "waymark.events.email.clicked"),
            (true, "email.opened", "waymark.events.email.opened"),
            (false, "email.clicked", "waymark.events"),
        ];
        for (per_type, kind, want) in cases {
            assert_eq!(settings(per_type, &[]).topic_for(kind), want, "per type {per_type}, {kind}");
        }
    }

    #[test]
    fn the_spooled_destination_round_trips_to_the_same_settings() {
        // (topic_per_type, destination the spool records)
        let cases = [(false, "waymark.events"), (true, "waymark.events.*")];
        for (per_type, destination) in cases {
            let s = settings(per_type, &[]);
            assert_eq!(s.destination(), destination);
            // Shipping to it from settings of the other form gives these back.
            let back = settings(!per_type, &[]).shipping_to(destination);
            assert_eq!(
                (back.topic.as_str(), back.topic_per_type),
                ("waymark.events", per_type),
                "{destination}"
            );
            assert_eq!(back.destination(), destination);
        }
    }
}
