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
//! Layout: `DIR/NNNNNNNNNN.seg` files, each a sequence of records
//! `len: u32 LE | crc32(payload): u32 LE | payload`, and `DIR/cursor`, the
//! position up to which everything was acknowledged (written by rename, so
//! it is always whole). A position is `segment << 32 | offset`.
//!
//! Durability: records reach the kernel at every [`Spool::flush`] (the
//! pipeline's flush interval) and the disk at every `fsync` interval. A
//! SIGKILL loses only what was not yet flushed to the kernel; a power loss
//! also what was not yet synced: at most one flush interval, and one fsync
//! interval, of events.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

const HEADER: usize = 8;
/// Largest record accepted; an event is a few hundred bytes.
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the spool is full ({used} of {cap} bytes): the event is lost")]
    Full { used: u64, cap: u64 },
    #[error("record of {0} bytes is larger than the spool accepts")]
    TooLarge(usize),
    #[error(
        "the spool {dir} is in use by another waymark process: give each replica its own spool_dir, \
         and stop the service before `waymark spool replay`"
    )]
    InUse { dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
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

pub fn pos(segment: u32, offset: u32) -> u64 {
    (segment as u64) << 32 | offset as u64
}

fn split(pos: u64) -> (u32, u32) {
    ((pos >> 32) as u32, pos as u32)
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

/// The writing end, owned by the pipeline thread.
pub struct Spool {
    dir: PathBuf,
    settings: SpoolSettings,
    segment: u32,
    offset: u32,
    out: BufWriter<File>,
    /// Bytes in all segments on disk, the current one included.
    used: u64,
    synced_at: Instant,
    dirty: bool,
    /// Held for the spool's life: one writer per directory.
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("segment", &self.segment)
            .field("used", &self.used)
            .finish()
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

/// The acknowledged position, 0 when none was ever written.
pub fn read_cursor(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cursor")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Records everything before `at` as acknowledged, and deletes the segments
/// it leaves wholly behind.
pub fn commit(dir: &Path, at: u64) -> Result<(), SpoolError> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, at.to_string()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join("cursor")).map_err(io(dir))?;
    let (current, _) = split(at);
    for seg in segments(dir)? {
        if seg < current {
            let path = segment_path(dir, seg);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

impl Spool {
    /// Opens the spool, recovering from a crash: the last segment is cut at
    /// its last whole, checksummed record; writing goes on in a new segment.
    pub fn open(dir: &Path, settings: SpoolSettings) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        let existing = segments(dir)?;
        if let Some(&last) = existing.last() {
            let path = segment_path(dir, last);
            let whole = Reader::scan_valid_len(&path)?;
            let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            f.set_len(whole).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        let mut used = 0;
        for seg in &existing {
            let path = segment_path(dir, *seg);
            used += std::fs::metadata(&path).map_err(io(&path))?.len();
        }
        let segment = existing.last().map_or(1, |s| s + 1);
        let out = Self::create(dir, segment)?;
        Ok(Spool {
            dir: dir.to_owned(),
            settings,
            segment,
            offset: 0,
            out,
            used,
            synced_at: Instant::now(),
            dirty: false,
            _lock: lock,
        })
    }

    fn create(dir: &Path, segment: u32) -> Result<BufWriter<File>, SpoolError> {
        let path = segment_path(dir, segment);
        let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        // The new name must survive a power loss as well as what is
        // written under it: sync the directory too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(BufWriter::with_capacity(256 * 1024, f))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk, for metrics and the cap.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Appends one record; returns its position. Never blocks for long:
    /// at the cap it refuses instead.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if payload.len() > MAX_RECORD {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let size = (HEADER + payload.len()) as u64;
        if self.used + size > self.settings.max_bytes {
            // Segments may have been shipped and deleted since we last looked.
            self.used = self.measure()?;
            if self.used + size > self.settings.max_bytes {
                return Err(SpoolError::Full { used: self.used, cap: self.settings.max_bytes });
            }
        }
        if self.offset as u64 + size > self.settings.segment_bytes && self.offset > 0 {
            self.roll()?;
        }
        let at = pos(self.segment, self.offset);
        let path = segment_path(&self.dir, self.segment);
        self.out.write_all(&(payload.len() as u32).to_le_bytes()).map_err(io(&path))?;
        self.out.write_all(&crc32fast::hash(payload).to_le_bytes()).map_err(io(&path))?;
        self.out.write_all(payload).map_err(io(&path))?;
        self.offset += size as u32;
        self.used += size;
        self.dirty = true;
        Ok(at)
    }

    /// The position the next record will take: everything before it is
    /// written (after [`Spool::flush`], readable).
    pub fn end(&self) -> u64 {
        pos(self.segment, self.offset)
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.segment += 1;
        self.offset = 0;
        self.out = Self::create(&self.dir, self.segment)?;
        Ok(())
    }

    fn measure(&self) -> Result<u64, SpoolError> {
        let mut used = self.offset as u64;
        for seg in segments(&self.dir)? {
            if seg != self.segment {
                used += std::fs::metadata(segment_path(&self.dir, seg)).map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(used)
    }

    /// Hands written records to the kernel, and syncs them to disk once per
    /// fsync interval.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, self.segment);
        self.out.flush().map_err(io(&path))?;
        if self.dirty && self.synced_at.elapsed() >= self.settings.fsync_every {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, self.segment);
        self.out.flush().map_err(io(&path))?;
        self.out.get_ref().sync_data().map_err(io(&path))?;
        self.synced_at = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

/// Reads records back in order from a position.
pub struct Reader {
    dir: PathBuf,
    segment: u32,
    offset: u32,
    input: Option<BufReader<File>>,
}

impl Reader {
    pub fn new(dir: &Path, from: u64) -> Reader {
        let (segment, offset) = split(from);
        Reader { dir: dir.to_owned(), segment, offset, input: None }
    }

    /// The next whole record before `end`, with its position and the
    /// position after it; `None` when there is none yet. A corrupt record
    /// (a torn tail left by a crash) ends its segment.
    pub fn next(&mut self, end: u64) -> Result<Option<(u64, u64, Bytes)>, SpoolError> {
        loop {
            if pos(self.segment, self.offset) >= end {
                return Ok(None);
            }
            if self.input.is_none() {
                let path = segment_path(&self.dir, self.segment);
                match File::open(&path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.offset as u64)).map_err(io(&path))?;
                        self.input = Some(BufReader::with_capacity(256 * 1024, f));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if self.advance()? {
                            continue;
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            let input = self.input.as_mut().expect("opened above");
            match read_record(input) {
                Some(payload) => {
                    let at = pos(self.segment, self.offset);
                    self.offset += (HEADER + payload.len()) as u32;
                    return Ok(Some((at, pos(self.segment, self.offset), payload)));
                }
                None => {
                    // End of this segment (or its torn tail): on to the next, if any.
                    if !self.advance()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Moves to the next segment on disk after the current one.
    fn advance(&mut self) -> Result<bool, SpoolError> {
        let next = segments(&self.dir)?.into_iter().find(|s| *s > self.segment);
        match next {
            Some(s) => {
                self.segment = s;
                self.offset = 0;
                self.input = None;
                Ok(true)
            }
            None => {
                self.input = None;
                Ok(false)
            }
        }
    }

    /// Length of the prefix of a segment made of whole, valid records.
    fn scan_valid_len(path: &Path) -> Result<u64, SpoolError> {
        let mut input = BufReader::new(File::open(path).map_err(io(path))?);
        let mut len = 0u64;
        while let Some(payload) = read_record(&mut input) {
            len += (HEADER + payload.len()) as u64;
        }
        Ok(len)
    }
}

fn read_record(input: &mut impl Read) -> Option<Bytes> {
    let mut header = [0u8; HEADER];
    input.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return None;
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).ok()?;
    (crc32fast::hash(&payload) == crc).then(|| Bytes::from(payload))
}

/// What `waymark spool status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub dir: String,
    pub segments: usize,
    pub bytes: u64,
    pub cursor: u64,
    pub pending_records: u64,
}

pub fn status(dir: &Path) -> Result<Status, SpoolError> {
    let segs = if dir.exists() { segments(dir)? } else { Vec::new() };
    let bytes =
        segs.iter().map(|s| std::fs::metadata(segment_path(dir, *s)).map(|m| m.len()).unwrap_or(0)).sum();
    let cursor = read_cursor(dir);
    let mut pending = 0;
    if let Some(&last) = segs.last() {
        let mut reader = Reader::new(dir, cursor.max(pos(segs[0], 0)));
        while reader.next(pos(last, u32::MAX))?.is_some() {
            pending += 1;
        }
    }
    Ok(Status {
        dir: dir.display().to_string(),
        segments: segs.len(),
        bytes,
        cursor,
        pending_records: pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SpoolSettings {
        SpoolSettings { max_bytes: 1 << 20, segment_bytes: 200, fsync_every: Duration::ZERO }
    }

    fn all(dir: &Path, from: u64, end: u64) -> Vec<Vec<u8>> {
        let mut r = Reader::new(dir, from);
        let mut out = Vec::new();
        while let Some((_, _, p)) = r.next(end).unwrap() {
            out.push(p.to_vec());
        }
        out
    }

    #[test]
    fn one_writer_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path(), settings()).unwrap();
        let second = Spool::open(dir.path(), settings()).unwrap_err();
        assert!(matches!(&second, SpoolError::InUse { dir: d } if d == dir.path()), "{second}");
        assert!(second.to_string().contains("in use by another waymark process"), "{second}");
        drop(first);
        Spool::open(dir.path(), settings()).expect("free again once the first writer is gone");
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), settings()).unwrap();
        let records: Vec<Vec<u8>> =
            (0..50).map(|i| format!("event {i}").repeat(i % 5 + 1).into_bytes()).collect();
        for r in &records {
            s.append(r).unwrap();
        }
        s.flush().unwrap();
        assert!(segments(dir.path()).unwrap().len() > 3, "small segments roll");
        assert_eq!(all(dir.path(), 0, s.end()), records);
    }

    #[test]
    fn commit_deletes_shipped_segments_and_reopening_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), settings()).unwrap();
        let mut positions = Vec::new();
        for i in 0..40 {
            positions.push(s.append(format!("record number {i}").as_bytes()).unwrap());
        }
        s.sync().unwrap();
        let before = segments(dir.path()).unwrap().len();
        commit(dir.path(), positions[30]).unwrap();
        assert!(segments(dir.path()).unwrap().len() < before);
        drop(s);
        let s = Spool::open(dir.path(), settings()).unwrap();
        let rest = all(dir.path(), read_cursor(dir.path()), s.end());
        assert_eq!(rest.len(), 10);
        assert_eq!(rest[0], b"record number 30");
        assert_eq!(status(dir.path()).unwrap().pending_records, 10);
    }

    #[test]
    fn a_torn_tail_is_cut_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), SpoolSettings { segment_bytes: 1 << 20, ..settings() }).unwrap();
        s.append(b"whole one").unwrap();
        s.append(b"whole two").unwrap();
        s.sync().unwrap();
        let seg = segment_path(dir.path(), *segments(dir.path()).unwrap().last().unwrap());
        drop(s);
        // A crash mid-write: a header promising more than was written, then
        // a record whose bytes were damaged.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), settings()).unwrap();
        assert_eq!(all(dir.path(), 0, s.end()), [b"whole one".to_vec(), b"whole two".to_vec()]);
        s.append(b"after the crash").unwrap();
        s.flush().unwrap();
        assert_eq!(all(dir.path(), 0, s.end()).len(), 3);

        let mut bad = std::fs::read(&seg).unwrap();
        bad[HEADER + 2] ^= 0xff;
        std::fs::write(&seg, bad).unwrap();
        assert_eq!(
            all(dir.path(), 0, pos(u32::MAX, 0)),
            [b"after the crash".to_vec()],
            "a bad checksum ends its segment"
        );
    }

    #[test]
    fn the_cap_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), SpoolSettings { max_bytes: 100, ..settings() }).unwrap();
        s.append(&[0; 40]).unwrap();
        s.append(&[0; 40]).unwrap();
        assert!(matches!(s.append(&[0; 40]), Err(SpoolError::Full { .. })));
    }
}
