//! The JSON-lines file sink, the embedded default: one event a line,
//! appended, written out every flush interval and synced on demand and on
//! close.
//!
//! Whole lines or none: lines go through a [`WholeWriter`], so a full disk
//! never leaves half a line (a reader of JSON lines would stop there).
//! While the disk refuses, lines wait in memory up to a bound, readiness
//! says `events file unwritable`, and lines past the bound are counted
//! lost; writing resumes by itself once there is room. A torn last line
//! left by a crash is cut when the file is opened.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;

use super::whole::{Medium, Refused, WholeWriter};
use super::{Sink, SinkError};
use crate::event::EncodedEvent;
use crate::health::{Component, Degraded};
use crate::metrics::{Source, counter};

/// Bytes of lines kept in memory while the disk refuses writes.
const PENDING_CAP: usize = 8 << 20;

/// What readiness and the metrics see of the events file.
#[derive(Debug, Default)]
pub struct FileState {
    unwritable: AtomicBool,
    /// Events refused because the disk refused and memory was spent.
    pub lost: AtomicU64,
    pub write_errors: AtomicU64,
}

impl Component for FileState {
    fn degraded(&self) -> Option<Degraded> {
        self.unwritable
            .load(Ordering::Relaxed)
            .then_some(Degraded { severity: 50, reason: "events file unwritable" })
    }
}

impl Source for FileState {
    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            e,
            "events_file_lost",
            "Events lost because the events file could not be written",
            get(&self.lost),
        )?;
        counter(
            e,
            "events_file_write_errors",
            "Writes to the events file that failed",
            get(&self.write_errors),
        )
    }
}

pub struct FileSink<M = File> {
    path: PathBuf,
    out: WholeWriter<M>,
    state: Arc<FileState>,
}

impl FileSink<File> {
    /// Opens `path` for appending, creating it and its directory, and cuts
    /// a torn last line.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io)?;
        let len = whole_lines(&mut file).map_err(io)?;
        if len < file.metadata().map_err(io)?.len() {
            tracing::warn!(path = %path.display(), "cutting a torn last line from the events file");
            file.set_len(len).map_err(io)?;
        }
        Ok(FileSink::over(path, file, len))
    }
}

/// The length of the file up to and including its last newline.
fn whole_lines(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl<M: Medium> FileSink<M> {
    /// A sink over any medium that already holds `len` bytes of whole lines.
    pub fn over(path: &Path, medium: M, len: u64) -> Self {
        FileSink {
            path: path.to_owned(),
            out: WholeWriter::new(medium, len, PENDING_CAP),
            state: Arc::default(),
        }
    }

    fn written(&self, outcome: std::io::Result<()>) -> Result<(), SinkError> {
        self.state.unwritable.store(outcome.is_err(), Ordering::Relaxed);
        outcome.map_err(|source| {
            self.state.write_errors.fetch_add(1, Ordering::Relaxed);
            SinkError::Io { path: self.path.display().to_string(), source }
        })
    }
}

impl<M: Medium> Sink for FileSink<M> {
    fn publish(&mut self, event: &EncodedEvent) -> Result<(), SinkError> {
        let json = event.json;
        let taken = self.out.push_with(json.len() + 1, |out| {
            out.extend_from_slice(json);
            out.push(b'\n');
        });
        self.state.unwritable.store(self.out.failing(), Ordering::Relaxed);
        match taken {
            Ok(()) => Ok(()),
            Err(Refused) => {
                self.state.lost.fetch_add(1, Ordering::Relaxed);
                Err(SinkError::Refused {
                    path: self.path.display().to_string(),
                    why: "the disk refuses writes and the lines waiting for it fill the memory set aside",
                })
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let outcome = self.out.flush();
        self.written(outcome)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        let outcome = self.out.sync();
        self.written(outcome)
    }

    fn state(&self) -> Option<Arc<dyn Component>> {
        Some(self.state.clone())
    }

    fn metrics(&self) -> Option<Arc<dyn Source>> {
        Some(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Prefixed};
    use crate::sink::whole::fault::Faulty;

    fn event(json: &str) -> EncodedEvent<'_> {
        EncodedEvent {
            event_id: Prefixed::event("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B".parse().unwrap()),
            kind: EventType::Opened,
            message_id: "m",
            tenant: "",
            json: json.as_bytes(),
        }
    }

    #[test]
    fn a_full_disk_leaves_whole_lines_says_so_and_writing_resumes() {
        let disk = Faulty::with_room(Some(30));
        let mut sink = FileSink::over(Path::new("events.jsonl"), disk.clone(), 0);
        let state = sink.state.clone();
        for i in 0..5 {
            sink.publish(&event(&format!("{{\"n\":{i}}}"))).unwrap();
        }
        assert!(sink.flush().is_err(), "40 bytes do not fit in 30");
        assert_eq!(disk.bytes(), b"", "no torn line");
        assert_eq!(state.degraded().map(|d| d.reason), Some("events file unwritable"));
        assert!(sink.sync().is_err(), "not durable while the disk refuses");
        disk.set_room(None);
        sink.publish(&event("{\"n\":5}")).unwrap();
        sink.sync().unwrap();
        let text = String::from_utf8(disk.bytes()).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{text}");
        assert_eq!(state.degraded(), None, "ready again");
        assert_eq!(disk.synced(), text.len());
    }

    #[test]
    fn events_past_the_memory_bound_are_refused_and_counted() {
        let disk = Faulty::with_room(Some(0));
        let mut sink = FileSink::over(Path::new("events.jsonl"), disk.clone(), 0);
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
        let mut refused = 0;
        for _ in 0..10 {
            if sink.publish(&event(&big)).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert_eq!(sink.state.lost.load(Ordering::Relaxed), refused);
    }

    #[test]
    fn a_torn_last_line_is_cut_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        sink.publish(&event("{\"a\":3}")).unwrap();
        sink.sync().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }
}
