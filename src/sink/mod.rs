//! Sinks: where encoded events go. The [`Sink`] trait is the seam between
//! the event pipeline and the outside world; the pipeline knows nothing of
//! files or Kafka, and the HTTP edge knows nothing of sinks at all.
//!
//! A sink runs on the pipeline's own thread, so it may block; it must never
//! be called from the HTTP runtime. A sink reports its own state to
//! readiness and its own metrics, through [`Sink::state`] and
//! [`Sink::metrics`].

pub mod file;
pub mod kafka;
pub mod spool;
pub mod whole;

use std::sync::Arc;

use crate::event::EncodedEvent;
use crate::health::Component;
use crate::metrics::Source;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write events to {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the events file {path} cannot take more: {why}; the event is lost")]
    Refused { path: String, why: &'static str },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

pub trait Sink: Send {
    /// Takes one event. May buffer; [`Sink::flush`] hands it on.
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError>;
    /// Takes one record that is not an event, in the Kafka record layout
    /// (`[type, key, tenant, id]` and the body): a hit record on its way to
    /// the hits topic. Only the Kafka sink takes them.
    fn publish_raw(&mut self, fields: [&str; 4], body: &[u8]) -> Result<(), SinkError> {
        let _ = (fields, body);
        Err(SinkError::Refused { path: "this sink".into(), why: "it takes events only, not hit records" })
    }
    /// Pushes out whatever is buffered. Called every flush interval.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Makes everything published so far durable (on disk, synced): when
    /// it returns Ok, a crash or a power loss loses none of it.
    fn sync(&mut self) -> Result<(), SinkError>;
    /// Last call before the process exits: flush, and make it durable.
    fn close(&mut self) -> Result<(), SinkError> {
        self.sync()
    }
    /// What readiness should ask about this sink.
    fn state(&self) -> Option<Arc<dyn Component>> {
        None
    }
    /// This sink's metrics.
    fn metrics(&self) -> Option<Arc<dyn Source>> {
        None
    }
}
