//! The seam between the shipper and the Kafka client: a [`Producer`] takes
//! records and later reports their delivery. [`Rdkafka`] is the real one,
//! over rdkafka's `BaseProducer`; the shipper's tests use a scripted one,
//! so every state of the shipper is tested without a broker.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use super::KafkaSetupError;
use super::record::Record;
use super::settings::KafkaSettings;

/// One record to send, and its place in the spool (`at`, and `next`, the
/// position after it), which its delivery report carries back.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub record: Record<'a>,
    pub at: u64,
    pub next: u64,
}

/// Why a producer did not take a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It holds as much as it may: try again once deliveries are reported.
    QueueFull,
    /// Anything else: the shipper starts over with a fresh producer.
    Other(String),
}

/// The outcome of one record sent, reported later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub at: u64,
    pub outcome: Result<(), String>,
}

pub trait Producer: Send {
    /// Takes one record, or refuses it at once.
    fn send(&mut self, record: Outgoing<'_>) -> Result<(), Refusal>;
    /// Moves the delivery reports that arrived since the last call into
    /// `into`, without waiting.
    fn reports(&mut self, into: &mut Vec<Report>);
    /// Waits at most `timeout` for what was sent to be delivered (at shutdown).
    fn flush(&mut self, timeout: Duration);
    /// Replaces the client with a fresh one (a new producer id). What the
    /// old one held is dropped: it is all in the spool.
    fn renew(&mut self) -> Result<(), KafkaSetupError>;
}

/// Collects delivery reports; rdkafka calls it from `poll` on the shipper's
/// own thread.
#[derive(Default)]
pub struct Reports {
    outcomes: Mutex<Vec<Report>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, at: Self::DeliveryOpaque) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).push(Report { at: *at, outcome });
    }
}

/// The real producer: rdkafka's `BaseProducer`, made from the settings.
pub struct Rdkafka {
    settings: KafkaSettings,
    inner: BaseProducer<Reports>,
}

impl Rdkafka {
    pub fn new(settings: &KafkaSettings) -> Result<Rdkafka, KafkaSetupError> {
        Ok(Rdkafka { inner: Self::client(settings)?, settings: settings.clone() })
    }

    fn client(settings: &KafkaSettings) -> Result<BaseProducer<Reports>, KafkaSetupError> {
        settings
            .client_config()
            .create_with_context(Reports::default())
            .map_err(|source| KafkaSetupError::Producer { brokers: settings.brokers.clone(), source })
    }

    fn take(&self, into: &mut Vec<Report>) -> usize {
        let mut outcomes = self.inner.context().outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let n = outcomes.len();
        into.append(&mut outcomes);
        n
    }
}

impl Producer for Rdkafka {
    fn send(&mut self, out: Outgoing<'_>) -> Result<(), Refusal> {
        let r = &out.record;
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: "type", value: Some(r.kind) })
            .insert(Header { key: "tenant", value: Some(r.tenant) })
            .insert(Header { key: "event_id", value: Some(r.event_id) });
        let base = BaseRecord::with_opaque_to(out.topic, Box::new(out.at))
            .key(r.key.as_bytes())
            .payload(r.json)
            .headers(headers);
        match self.inner.send(base) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(Refusal::QueueFull),
            Err((e, _)) => Err(Refusal::Other(e.to_string())),
        }
    }

    /// Serves what librdkafka has queued (delivery reports) without
    /// waiting. Waits are sleeps in the shipper: rdkafka's `poll` with a
    /// timeout keeps polling until the deadline and spins on the clock for
    /// its last millisecond, which cost a fifth of a core under load.
    fn reports(&mut self, into: &mut Vec<Report>) {
        self.take(into);
        // One event carries the reports of a whole produce request.
        for _ in 0..64 {
            self.inner.poll(Duration::ZERO);
            if self.take(into) == 0 {
                break;
            }
        }
    }

    fn flush(&mut self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }

    fn renew(&mut self) -> Result<(), KafkaSetupError> {
        self.inner = Self::client(&self.settings)?;
        Ok(())
    }
}
