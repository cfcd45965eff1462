//! The JSON-lines file sink, the embedded default: one event a line,
//! appended, flushed every flush interval and synced to disk on close.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use super::{Sink, SinkError};
use crate::event::EncodedEvent;

pub struct FileSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl FileSink {
    /// Opens `path` for appending, creating it and its directory.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(FileSink { path: path.to_owned(), out: BufWriter::with_capacity(64 * 1024, file) })
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::Io { path: self.path.display().to_string(), source }
    }
}

impl Sink for FileSink {
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError> {
        self.out.write_all(event.json).and_then(|()| self.out.write_all(b"\n")).map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.out.get_ref().sync_data().map_err(|e| self.io(e))
    }
}
