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
//!
//! Files that rotate: at every flush the sink checks that its path still
//! names the file it writes (a stat a flush interval), and reopens the
//! path when the file was renamed or removed (logrotate, Vector, Fluent
//! Bit), or on SIGHUP. With [`Rotation::max_bytes`] it rotates the file
//! itself: `events.jsonl` becomes `events.jsonl.1`, older ones shift up,
//! and only [`Rotation::keep`] are kept. Lines move between files only
//! whole, at a flush, so nothing is lost or written twice across a
//! rotation.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
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

/// Size-based rotation of the events file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would take the file past this; `None`: never.
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`events.jsonl.1` … `.keep`); older ones are deleted.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_bytes: None, keep: 5 }
    }
}

/// A medium that lives at a path and can be found there again.
pub trait Reopen: Medium + Sized {
    /// Whether `path` still names this medium (not after a rename or removal).
    fn still_at(&self, path: &Path) -> bool;
    /// Opens the medium at `path`, creating it; and the bytes of whole lines in it.
    fn reopen(path: &Path) -> std::io::Result<(Self, u64)>;
}

impl Reopen for File {
    fn still_at(&self, path: &Path) -> bool {
        match (self.metadata(), std::fs::metadata(path)) {
            (Ok(ours), Ok(there)) => (ours.dev(), ours.ino()) == (there.dev(), there.ino()),
            _ => false,
        }
    }

    fn reopen(path: &Path) -> std::io::Result<(File, u64)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let len = whole_lines(&mut file)?;
        if len < file.metadata()?.len() {
            tracing::warn!(path = %path.display(), "cutting a torn last line from the events file");
            file.set_len(len)?;
        }
        Ok((file, len))
    }
}

pub struct FileSink<M = File> {
    path: PathBuf,
    out: WholeWriter<M>,
    state: Arc<FileState>,
    rotation: Rotation,
    /// Set on SIGHUP: reopen the path at the next flush.
    hangup: Arc<AtomicBool>,
}

impl FileSink<File> {
    /// Opens `path` for appending, creating it and its directory, and cuts
    /// a torn last line. Inside a Tokio runtime, SIGHUP makes it reopen
    /// the path from then on.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let (file, len) = File::reopen(path)
            .map_err(|source| SinkError::Io { path: path.display().to_string(), source })?;
        let sink = FileSink::over(path, file, len);
        reopen_on_hangup(sink.hangup.clone());
        Ok(sink)
    }
}

/// Sets `flag` on every SIGHUP, when there is a runtime to listen with.
fn reopen_on_hangup(flag: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    // Made here, so the signal is caught (not fatal) once `open` returns.
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: the events file will be reopened");
                    flag.store(true, Ordering::Relaxed);
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the events file is still reopened when moved")
        }
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
            rotation: Rotation::default(),
            hangup: Arc::default(),
        }
    }

    /// Rotates the file by size.
    pub fn rotating(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    fn written(&self, outcome: std::io::Result<()>) -> Result<(), SinkError> {
        self.state.unwritable.store(outcome.is_err(), Ordering::Relaxed);
        outcome.map_err(|source| {
            self.state.write_errors.fetch_add(1, Ordering::Relaxed);
            SinkError::Io { path: self.path.display().to_string(), source }
        })
    }
}

impl<M: Reopen> FileSink<M> {
    /// Before writing: reopen the path if the file was moved away (or on
    /// SIGHUP), and rotate it if the pending lines would take it past its size.
    fn follow(&mut self) {
        let asked = self.hangup.swap(false, Ordering::Relaxed);
        if asked || !self.out.medium().still_at(&self.path) {
            self.reopen(if asked { "SIGHUP" } else { "the file was moved or removed" });
        }
        if let Some(max) = self.rotation.max_bytes {
            let (written, pending) = (self.out.written(), self.out.pending() as u64);
            if written > 0 && pending > 0 && written + pending > max {
                self.rotate();
            }
        }
    }

    fn reopen(&mut self, why: &str) {
        match M::reopen(&self.path) {
            Ok((medium, len)) => {
                self.out.replace(medium, len);
                tracing::info!(path = %self.path.display(), why, "events file reopened");
            }
            // Kept on the old file; tried again at the next flush.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the events file")
            }
        }
    }

    /// `events.jsonl` → `.1` → `.2` …, keeping `keep` of them.
    fn rotate(&mut self) {
        if let Err(e) = self.out.sync_written() {
            tracing::warn!(error = %e, "cannot sync the events file before rotating it");
        }
        let numbered = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.rotation.keep.max(1);
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        match std::fs::rename(&self.path, numbered(1)) {
            Ok(()) => self.reopen("rotated by size"),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the events file")
            }
        }
    }
}

impl<M: Reopen> Sink for FileSink<M> {
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
        self.follow();
        let outcome = self.out.flush();
        self.written(outcome)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.follow();
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

    impl Reopen for Faulty {
        fn still_at(&self, _: &Path) -> bool {
            true
        }
        fn reopen(_: &Path) -> std::io::Result<(Self, u64)> {
            unreachable!("an injected disk is never moved")
        }
    }

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

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn publish_flush(sink: &mut FileSink, from: usize, n: usize) {
        for i in from..from + n {
            sink.publish(&event(&format!("{{\"n\":{i:04}}}"))).unwrap();
            sink.flush().unwrap();
        }
    }

    #[test]
    fn a_moved_or_removed_file_is_reopened_and_nothing_is_lost_or_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = FileSink::open(&path).unwrap();
        publish_flush(&mut sink, 0, 3);
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        sink.publish(&event("{\"n\":3}")).unwrap();
        sink.flush().unwrap();
        assert_eq!(lines(&dir.path().join("moved")).len(), 3, "the moved file keeps what it had");
        assert_eq!(lines(&path), ["{\"n\":3}"], "later lines go to the path again");
        std::fs::remove_file(&path).unwrap();
        sink.publish(&event("{\"n\":4}")).unwrap();
        sink.sync().unwrap();
        assert_eq!(lines(&path), ["{\"n\":4}"], "a removed file is made again");
        sink.hangup.store(true, Ordering::Relaxed);
        sink.publish(&event("{\"n\":5}")).unwrap();
        sink.flush().unwrap();
        assert_eq!(lines(&path).len(), 2, "a SIGHUP reopens the same path: appended, not truncated");
    }

    #[test]
    fn rotation_by_size_keeps_whole_lines_and_only_so_many_files() {
        for (keep, want_files) in [(100, 11), (2, 3)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let mut sink = FileSink::open(&path).unwrap().rotating(Rotation { max_bytes: Some(50), keep });
            // 11 bytes a line: four fit in 50.
            publish_flush(&mut sink, 0, 44);
            let files: Vec<PathBuf> = std::iter::once(path.clone())
                .chain((1..=keep + 1).map(|n| dir.path().join(format!("events.jsonl.{n}"))))
                .filter(|p| p.exists())
                .collect();
            assert_eq!(files.len(), want_files, "keep {keep}: {files:?}");
            let mut all = Vec::new();
            for f in files.iter().rev() {
                let text = std::fs::read_to_string(f).unwrap();
                assert!(text.len() <= 50 && text.ends_with('\n'), "{f:?}: {text:?}");
                all.extend(lines(f));
            }
            let want: Vec<String> = (44 - all.len()..44).map(|i| format!("{{\"n\":{i:04}}}")).collect();
            assert_eq!(all, want, "keep {keep}: in order, none twice, none missing in what is kept");
            if keep == 100 {
                assert_eq!(all.len(), 44);
            }
        }
    }
}
