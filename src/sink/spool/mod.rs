//! The spool: an append-only, checksummed, size-capped log of encoded
//! events on local disk, in segment files. The Kafka sink writes every
//! event here first and ships it from memory; the spool is read back only
//! to replay what was not acknowledged (after an outage, a failure or a
//! restart). So nothing acknowledged to a client is lost to a broker outage
//! or a crash, and the hot path never reads the disk.
//!
//! Why not a crate: `queue-file` keeps one file with no checksums, `yaque`
//! is async-only with no size cap; we need segments that can be deleted once
//! shipped, a checksum on every record to find a torn tail after a crash, a
//! hard size cap, and fsync on our own schedule.
//!
//! Parts: [`frame`] (the versioned record format and resynchronisation),
//! [`ledger`] (the cursor and the readable end, shared by the writer and
//! the readers), [`reader`], and here the writer and `spool status`.
//!
//! Layout: `DIR/NNNNNNNNNN.seg` files (see [`frame`] for their contents)
//! and `DIR/cursor`. Segment numbers only grow; a number that would wrap
//! is refused, never reused.
//!
//! Durability: records reach the kernel at every [`Spool::flush`] (the
//! pipeline's flush interval) and the disk at every `fsync` interval, or at
//! once by [`Spool::sync`]. A SIGKILL loses only what was not yet flushed
//! to the kernel; a power loss also what was not yet synced. On a full disk
//! a record is kept whole in memory (up to a bound) or refused whole: the
//! segment never holds part of one.

pub mod frame;
pub mod ledger;
pub mod reader;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use frame::MAX_RECORD;
pub use ledger::{Ledger, pos};
pub use reader::Reader;

use super::whole::{Refused, WholeWriter};

/// Bytes of records kept in memory while the disk refuses writes.
const PENDING_CAP: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the spool is full ({used} of {cap} bytes): the event is lost")]
    Full { used: u64, cap: u64 },
    #[error("record of {0} bytes is not one the spool accepts (1 to {MAX_RECORD} bytes)")]
    BadSize(usize),
    #[error("the spool {dir} cannot be written ({why}): the event is lost")]
    Unwritable { dir: PathBuf, why: String },
    #[error(
        "the spool {dir} has used every segment number (its last segment is {last}.seg): replay it with \
         `waymark spool replay`, then remove its segments and cursor"
    )]
    Exhausted { dir: PathBuf, last: u32 },
    #[error(
        "the spool {dir} is in use by another waymark process: give each replica its own spool_dir, \
         and stop the service before `waymark spool replay`"
    )]
    InUse { dir: PathBuf },
    #[error(
        "the spool {dir} holds {pending} records for {holds}, but this process ships to {wants}: \
         ship them first (`waymark spool replay` sends them to {holds}), or give this process its own spool_dir"
    )]
    Destination { dir: PathBuf, holds: String, wants: String, pending: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

/// The file in a spool directory naming where its records go: a topic, or
/// `topic.*` when each event type has its own. An edge whose hits are
/// judged by `waymark judge` spools hit records for the hits topic, every
/// other process spools events; either shipped to the other's topic would
/// be garbage there, so a spool is for one destination at a time.
const DESTINATION: &str = "destination";

/// Where the spool's records go, if it says.
pub fn destination(dir: &Path) -> Result<Option<String>, SpoolError> {
    let path = dir.join(DESTINATION);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Claims the spool for `wants`: refused while it holds `pending` records
/// for another destination; an empty spool changes destination freely.
/// (A spool written before destinations were recorded is taken as it is.)
pub fn claim(dir: &Path, wants: &str, pending: u64) -> Result<(), SpoolError> {
    match destination(dir)? {
        Some(holds) if holds == wants => return Ok(()),
        Some(holds) if pending > 0 => {
            return Err(SpoolError::Destination {
                dir: dir.to_owned(),
                holds,
                wants: wants.to_owned(),
                pending,
            });
        }
        _ => {}
    }
    replace_whole(dir, DESTINATION, &format!("{wants}\n"))
}

/// Replaces the small file `dir/name` whole (written as `name.tmp`, then
/// renamed over it): a crash leaves the old content or the new, never part.
fn replace_whole(dir: &Path, name: &str, contents: &str) -> Result<(), SpoolError> {
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Takes the spool directory's lock (an exclusive advisory lock on its
/// `lock` file, released when the process ends however it ends): two
/// writers, or a writer and `spool replay`, would ship and delete each
/// other's records.
pub fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::InUse { dir: dir.to_owned() }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SpoolSettings {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync_every: Duration,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings { max_bytes: 1 << 30, segment_bytes: 16 << 20, fsync_every: Duration::from_secs(1) }
    }
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

/// Segment numbers on disk, in order.
pub fn segments(dir: &Path) -> Result<Vec<u32>, SpoolError> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// The writing end, owned by the pipeline thread.
pub struct Spool {
    ledger: Arc<Ledger>,
    settings: SpoolSettings,
    segment: u32,
    /// Where the next record goes in the segment (written or pending).
    offset: u32,
    out: WholeWriter<File>,
    /// Bytes in all segments, the current one's pending records included.
    used: u64,
    synced_at: Instant,
    dirty: bool,
    /// Held for the spool's life: one writer per directory.
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.ledger.dir())
            .field("segment", &self.segment)
            .field("used", &self.used)
            .finish()
    }
}

impl Spool {
    /// Opens the spool, recovering from a crash: segments with no record
    /// are removed, the last one is cut after its last valid record, a
    /// cursor pointing nowhere is reported and reset, and writing goes on
    /// in a new segment.
    pub fn open(dir: &Path, settings: SpoolSettings) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        let ledger = Arc::new(Ledger::new(dir, 0));
        let mut existing = segments(dir)?;
        // Empty segments (a crash right after one was made, or a stray file)
        // hold nothing; the highest one would only waste segment numbers.
        while let Some(&last) = existing.last() {
            let path = segment_path(dir, last);
            let whole = reader::valid_len(&ledger, last)?;
            if whole > 0 {
                let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                f.set_len(whole).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                break;
            }
            tracing::warn!(segment = %path.display(), "removing a spool segment that holds no record");
            std::fs::remove_file(&path).map_err(io(&path))?;
            existing.pop();
        }
        let (_, stray) = ledger.cursor()?;
        if let Some(stray) = stray {
            tracing::warn!(dir = %dir.display(), "{stray}");
            ledger.stats.cursor_resets.fetch_add(1, Ordering::Relaxed);
            ledger.commit(stray.reset_to)?;
        }
        let mut used = 0;
        for seg in &existing {
            let path = segment_path(dir, *seg);
            used += std::fs::metadata(&path).map_err(io(&path))?.len();
        }
        let segment = match existing.last() {
            None => 1,
            Some(&last) => {
                last.checked_add(1).ok_or_else(|| SpoolError::Exhausted { dir: dir.to_owned(), last })?
            }
        };
        let out = Self::create(dir, segment)?;
        let offset = out.written() as u32;
        ledger.set_readable_end(pos(segment, offset));
        Ok(Spool {
            ledger,
            settings,
            segment,
            offset,
            out,
            used: used + u64::from(offset),
            synced_at: Instant::now(),
            dirty: false,
            _lock: lock,
        })
    }

    /// Makes a segment and writes its header.
    fn create(dir: &Path, segment: u32) -> Result<WholeWriter<File>, SpoolError> {
        let path = segment_path(dir, segment);
        let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        let mut out = WholeWriter::new(f, 0, PENDING_CAP);
        let _ = out.push(frame::SEGMENT_HEADER);
        out.sync().map_err(|e| {
            let _ = std::fs::remove_file(&path);
            io(&path)(e)
        })?;
        // The new name must survive a power loss as well as what is
        // written under it: sync the directory too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        self.ledger.dir()
    }

    /// What the writer shares with the readers.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Bytes on disk or about to be, for metrics and the cap.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Appends one record; returns its position. Never blocks for long:
    /// at the cap, or while the disk refuses and memory is spent, it
    /// refuses the record whole instead.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            return Err(SpoolError::BadSize(payload.len()));
        }
        let size = frame::V2_OVERHEAD + payload.len();
        if self.used + size as u64 > self.settings.max_bytes {
            // Segments may have been shipped and deleted since we last looked.
            self.used = self.measure()?;
            if self.used + size as u64 > self.settings.max_bytes {
                return Err(SpoolError::Full { used: self.used, cap: self.settings.max_bytes });
            }
        }
        let header = frame::SEGMENT_HEADER.len() as u32;
        if u64::from(self.offset) + size as u64 > self.settings.segment_bytes
            && self.offset > header
            && let Err(e) = self.roll()
        {
            // The current segment cannot be finished (a full disk): keep
            // adding to it in memory, within the bound, rather than lose
            // the record; it rolls at the first append once writes succeed.
            tracing::debug!(error = %e, "cannot start a new spool segment yet");
        }
        let at = pos(self.segment, self.offset);
        if let Err(Refused) = self.out.push_with(size, |out| frame::encode(out, payload)) {
            let why = "the disk refuses writes and the records waiting for it fill the memory set aside";
            return Err(self.unwritable(why));
        }
        self.offset += size as u32;
        self.used += size as u64;
        self.dirty = true;
        Ok(at)
    }

    fn unwritable(&self, why: impl std::fmt::Display) -> SpoolError {
        self.ledger.stats.unwritable.fetch_add(1, Ordering::Relaxed);
        SpoolError::Unwritable { dir: self.dir().to_owned(), why: why.to_string() }
    }

    /// The position the next record will take.
    pub fn end(&self) -> u64 {
        pos(self.segment, self.offset)
    }

    /// Whether the last write to disk failed (records wait in memory).
    pub fn failing(&self) -> bool {
        self.out.failing()
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let next = self
            .segment
            .checked_add(1)
            .ok_or_else(|| SpoolError::Exhausted { dir: self.dir().to_owned(), last: self.segment })?;
        self.out = Self::create(self.ledger.dir(), next)?;
        self.segment = next;
        self.offset = self.out.written() as u32;
        self.used += u64::from(self.offset);
        self.ledger.set_readable_end(pos(self.segment, self.offset));
        Ok(())
    }

    fn measure(&self) -> Result<u64, SpoolError> {
        let mut used = u64::from(self.offset);
        for seg in segments(self.dir())? {
            if seg != self.segment {
                used += std::fs::metadata(segment_path(self.dir(), seg)).map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(used)
    }

    /// Hands written records to the kernel (readable from then on), and
    /// syncs them to disk once per fsync interval.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(self.dir(), self.segment);
        let outcome = self.out.flush().map_err(io(&path));
        self.ledger.set_readable_end(pos(self.segment, self.out.written() as u32));
        outcome?;
        if self.dirty && self.synced_at.elapsed() >= self.settings.fsync_every {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes and syncs everything appended so far: durable when it returns Ok.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(self.dir(), self.segment);
        let outcome = self.out.sync().map_err(io(&path));
        self.ledger.set_readable_end(pos(self.segment, self.out.written() as u32));
        outcome?;
        self.synced_at = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

/// What `waymark spool status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub dir: String,
    /// Where its records go (a topic, or `topic.*`), when it says.
    pub destination: Option<String>,
    pub segments: usize,
    pub bytes: u64,
    pub cursor: u64,
    pub pending_records: u64,
    /// Damaged bytes a replay would pass over, and the records they probably held.
    pub damaged_bytes: u64,
    pub damaged_records: u64,
    /// Set when the stored cursor points nowhere: what the next start does about it.
    pub cursor_problem: Option<String>,
}

/// Reads the spool without changing it.
pub fn status(dir: &Path) -> Result<Status, SpoolError> {
    let segs = if dir.exists() { segments(dir)? } else { Vec::new() };
    let bytes =
        segs.iter().map(|s| std::fs::metadata(segment_path(dir, *s)).map(|m| m.len()).unwrap_or(0)).sum();
    let ledger = Arc::new(Ledger::new(dir, 0));
    let (cursor, stray) = if dir.exists() { ledger.cursor()? } else { (0, None) };
    let pending = if dir.exists() { count_from(&ledger, cursor)? } else { 0 };
    Ok(Status {
        dir: dir.display().to_string(),
        destination: if dir.exists() { destination(dir)? } else { None },
        segments: segs.len(),
        bytes,
        cursor: ledger.stored_cursor(),
        pending_records: pending,
        damaged_bytes: ledger.stats.skipped_bytes.load(Ordering::Relaxed),
        damaged_records: ledger.stats.skipped_records.load(Ordering::Relaxed),
        cursor_problem: stray.map(|s| s.to_string()),
    })
}

/// Records on disk from `from` on (damage met is reported through `ledger`,
/// once).
pub fn count_from(ledger: &Arc<Ledger>, from: u64) -> Result<u64, SpoolError> {
    let segs = segments(ledger.dir())?;
    let (Some(&first), Some(&last)) = (segs.first(), segs.last()) else { return Ok(0) };
    let mut reader = Reader::new(ledger.clone(), from.max(pos(first, 0)));
    let mut n = 0;
    while reader.next(pos(last, u32::MAX))?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The end of what a stopped service left in the spool.
pub fn end_on_disk(dir: &Path) -> Result<u64, SpoolError> {
    let segs = if dir.exists() { segments(dir)? } else { Vec::new() };
    let Some(&last) = segs.last() else { return Ok(0) };
    let path = segment_path(dir, last);
    let len = std::fs::metadata(&path).map_err(io(&path))?.len();
    Ok(pos(last, u32::try_from(len).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests;
