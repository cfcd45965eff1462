//! The hits topic is created when missing, with `kafka.hits_partitions`
//! partitions: the most judges that can share the work. A topic that
//! exists is left as it is (partitions are never added here: that would
//! move messages between partitions, and so between judges, mid-flight).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::sink::kafka::{HitsSettings, KafkaSettings};

/// Creates the hits topic unless it exists. The replication factor is the
/// brokers' default (`default.replication.factor`).
pub async fn ensure(kafka: &KafkaSettings, hits: &HitsSettings) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            config.set(k, v);
        }
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let topic = NewTopic::new(&hits.topic, hits.partitions as i32, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let outcome = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| format!("cannot create the hits topic {}: {e}", hits.topic))?;
    for result in outcome {
        match result {
            Ok(_) => tracing::info!(topic = %hits.topic, partitions = hits.partitions, "hits topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(format!(
                    "cannot create the hits topic {name} with {} partitions: {code}; create it by hand",
                    hits.partitions
                ));
            }
        }
    }
    Ok(())
}

/// How long start-up waits for the brokers to make sure of the hits topic.
const PATIENCE: Duration = Duration::from_secs(3);

/// [`ensure`] without holding start-up hostage to an outage: waits at most
/// [`PATIENCE`], then lets the attempt run on in the background (an edge
/// spools hit records meanwhile, a judge waits for partitions) and logs
/// how it ends.
pub async fn ensure_soon(kafka: &KafkaSettings, hits: &HitsSettings) {
    let (k, h) = (kafka.clone(), hits.clone());
    let mut attempt = tokio::spawn(async move { ensure(&k, &h).await });
    let report = |outcome: Result<(), String>| {
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "the hits topic may be missing: hit records wait in the spool and judges for partitions until it exists");
        }
    };
    match tokio::time::timeout(PATIENCE, &mut attempt).await {
        Ok(outcome) => report(outcome.unwrap_or(Ok(()))),
        Err(_) => {
            tracing::warn!(
                waited_ms = PATIENCE.as_millis() as u64,
                "no broker answered: going on, and the hits topic is made sure of when one does"
            );
            tokio::spawn(async move { report(attempt.await.unwrap_or(Ok(()))) });
        }
    }
}
