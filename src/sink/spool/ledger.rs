//! The ledger: what the spool's writer and its readers share. It owns the
//! cursor (the position up to which everything was acknowledged, in
//! `DIR/cursor`, written by rename so it is always whole), the readable end
//! (everything before it is on disk and can be read back), and the
//! counters of damage met and cursor moves that failed.
//!
//! A position is `segment << 32 | offset`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{SpoolError, io, replace_whole, segment_path, segments};

pub fn pos(segment: u32, offset: u32) -> u64 {
    (segment as u64) << 32 | offset as u64
}

pub fn split(pos: u64) -> (u32, u32) {
    ((pos >> 32) as u32, pos as u32)
}

/// Counters read by the metrics at scrape time.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Bytes passed over because no valid record was found in them.
    pub skipped_bytes: AtomicU64,
    /// Records those bytes probably held.
    pub skipped_records: AtomicU64,
    /// Cursors found pointing nowhere and reset.
    pub cursor_resets: AtomicU64,
    /// Attempts to move the cursor that failed.
    pub cursor_failures: AtomicU64,
    /// Records refused because the disk refused writes (distinct from a full spool).
    pub unwritable: AtomicU64,
}

#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    readable_end: AtomicU64,
    /// Everything before this position was acknowledged by the brokers, as
    /// the shipper last saw it (in memory; the cursor file lags it).
    acknowledged: AtomicU64,
    cursor_failing: AtomicBool,
    /// Damaged regions already reported, by position: a replay that reads
    /// them again neither counts nor logs them twice.
    damage_seen: Mutex<HashSet<u64>>,
    pub stats: SpoolStats,
}

/// Why a cursor points nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub cursor: u64,
    pub reset_to: u64,
}

impl std::fmt::Display for Stray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seg, off) = split(self.cursor);
        let (to_seg, _) = split(self.reset_to);
        write!(
            f,
            "the spool cursor (segment {seg}, offset {off}) points past every record on disk; \
             reading resumes at the first record that exists (segment {to_seg}), so some events may be sent twice"
        )
    }
}

impl Ledger {
    pub fn new(dir: &Path, readable_end: u64) -> Ledger {
        Ledger {
            dir: dir.to_owned(),
            readable_end: AtomicU64::new(readable_end),
            acknowledged: AtomicU64::new(0),
            cursor_failing: AtomicBool::new(false),
            damage_seen: Mutex::new(HashSet::new()),
            stats: SpoolStats::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything before this position is on disk and can be read back.
    pub fn readable_end(&self) -> u64 {
        self.readable_end.load(Ordering::Acquire)
    }

    pub(super) fn set_readable_end(&self, end: u64) {
        self.readable_end.store(end, Ordering::Release);
    }

    /// Everything before this position has been acknowledged by the brokers.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// The shipper saw everything before `at` acknowledged.
    pub fn note_acknowledged(&self, at: u64) {
        self.acknowledged.fetch_max(at, Ordering::AcqRel);
    }

    /// The acknowledged position as stored, 0 when none was ever written.
    pub fn stored_cursor(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("cursor")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// The cursor to read from, and whether the stored one points nowhere
    /// (past the last segment, or past the end of its segment; e.g. after
    /// segments were removed by hand).
    pub fn cursor(&self) -> Result<(u64, Option<Stray>), SpoolError> {
        let cursor = self.stored_cursor();
        let segs = segments(&self.dir)?;
        Ok(judge_cursor(cursor, &segs, |s| {
            std::fs::metadata(segment_path(&self.dir, s)).map(|m| m.len()).unwrap_or(0)
        }))
    }

    /// Records everything before `at` as acknowledged, and deletes the
    /// segments it leaves wholly behind (every record in them was read and
    /// acknowledged). A failure is counted and shown in readiness until a
    /// move succeeds.
    pub fn commit(&self, at: u64) -> Result<(), SpoolError> {
        let outcome = self.write_cursor(at);
        self.cursor_failing.store(outcome.is_err(), Ordering::Relaxed);
        if outcome.is_err() {
            self.stats.cursor_failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn write_cursor(&self, at: u64) -> Result<(), SpoolError> {
        let dir = &self.dir;
        replace_whole(dir, "cursor", &at.to_string())?;
        let (current, _) = split(at);
        for seg in segments(dir)? {
            if seg < current {
                let path = segment_path(dir, seg);
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Whether the last attempt to move the cursor failed.
    pub fn cursor_failing(&self) -> bool {
        self.cursor_failing.load(Ordering::Relaxed)
    }

    /// A reader met `bytes` of damage at `at`: counted and logged once.
    pub(super) fn damaged(&self, at: u64, bytes: u64, records: u64) {
        if !self.damage_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(at) {
            return;
        }
        self.stats.skipped_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.skipped_records.fetch_add(records, Ordering::Relaxed);
        let (segment, offset) = split(at);
        tracing::error!(
            segment,
            offset,
            bytes,
            records,
            dir = %self.dir.display(),
            "damaged spool bytes skipped: the records in them are lost, the ones after them are read"
        );
    }
}

/// Where reading starts for a stored `cursor`, given the segments on disk
/// and their lengths; pure, so every case is a unit test.
pub fn judge_cursor(cursor: u64, segs: &[u32], len: impl Fn(u32) -> u64) -> (u64, Option<Stray>) {
    let (seg, off) = split(cursor);
    let first = segs.first().map_or(0, |s| pos(*s, 0));
    let nowhere = match segs.last() {
        None => cursor != 0,
        Some(&last) if seg > last => true,
        Some(_) if segs.contains(&seg) => u64::from(off) > len(seg),
        // Before the first segment, or in one removed between two others:
        // the reader moves on to the next segment that exists.
        Some(_) => false,
    };
    if nowhere { (first, Some(Stray { cursor, reset_to: first })) } else { (cursor, None) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_pointing_nowhere_is_told_and_reset_to_the_first_record() {
        let len = |s: u32| if s == 3 { 500 } else { 1000 };
        let cases: [(&str, u64, &[u32], Option<u64>); 8] = [
            ("fresh spool", 0, &[], None),
            ("inside a segment", pos(3, 200), &[3, 4], None),
            ("at the end of a segment", pos(3, 500), &[3, 4], None),
            ("in a segment shipped and deleted", pos(2, 900), &[3, 4], None),
            ("segments removed, cursor kept", pos(7, 100), &[1], Some(pos(1, 0))),
            ("past the end of its segment", pos(3, 501), &[3, 4], Some(pos(3, 0))),
            ("no segments, an old cursor", pos(5, 10), &[], Some(0)),
            ("past the last segment", pos(5, 0), &[3, 4], Some(pos(3, 0))),
        ];
        for (name, cursor, segs, reset) in cases {
            let (from, stray) = judge_cursor(cursor, segs, len);
            assert_eq!(stray.as_ref().map(|s| s.reset_to), reset, "{name}");
            assert_eq!(from, reset.unwrap_or(cursor), "{name}");
        }
    }
}
