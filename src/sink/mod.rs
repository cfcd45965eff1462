//! Sinks: where encoded events go. The [`Sink`] trait is the seam between
//! the event pipeline and the outside world; the pipeline knows nothing of
//! files or Kafka, and the HTTP edge knows nothing of sinks at all.
//!
//! A sink runs on the pipeline's own thread, so it may block; it must never
//! be called from the HTTP runtime.

pub mod file;
pub mod kafka;
pub mod spool;

use crate::event::EncodedEvent;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write events to {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

pub trait Sink: Send {
    /// Takes one event. May buffer; [`Sink::flush`] makes it durable.
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError>;
    /// Pushes out whatever is buffered. Called every flush interval.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Last call before the process exits: flush, and make it durable.
    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}
