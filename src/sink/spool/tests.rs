//! The spool at its own interface: write, damage the files as a crash, a
//! bad disk or a hand would, and read back. Damage cases are a table run
//! against a model (the records written, minus those the damage touched),
//! in the manner of Vector's disk buffer tests.
#![allow(clippy::single_range_in_vec_init)] // damaged regions are lists of ranges

use std::io::Write as _;
use std::ops::Range;

use super::*;

fn settings() -> SpoolSettings {
    SpoolSettings { max_bytes: 1 << 20, segment_bytes: 400, fsync_every: Duration::ZERO }
}

fn read_all(dir: &Path, from: u64) -> (Vec<Vec<u8>>, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::new(dir, 0));
    let mut r = Reader::new(ledger.clone(), from);
    let mut out = Vec::new();
    while let Some((_, _, p)) = r.next(pos(u32::MAX, 0)).unwrap() {
        out.push(p.to_vec());
    }
    (out, ledger)
}

/// A spool of `n` distinct records; returns each record and where its frame lies.
fn spool_of(dir: &Path, n: usize) -> Vec<(Vec<u8>, u64, u64)> {
    let mut s = Spool::open(dir, settings()).unwrap();
    let mut written = Vec::new();
    for i in 0..n {
        let payload = format!("{{\"event\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 7 * 5)).into_bytes();
        let at = s.append(&payload).unwrap();
        written.push((payload, at, s.end()));
    }
    s.sync().unwrap();
    written
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
    let written = spool_of(dir.path(), 50);
    assert!(segments(dir.path()).unwrap().len() > 3, "small segments roll");
    let (read, ledger) = read_all(dir.path(), 0);
    assert_eq!(read, written.iter().map(|w| w.0.clone()).collect::<Vec<_>>());
    assert_eq!(ledger.stats.skipped_bytes.load(Ordering::Relaxed), 0, "nothing taken for damage");
}

#[test]
fn commit_deletes_shipped_segments_and_reopening_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let written = spool_of(dir.path(), 40);
    let before = segments(dir.path()).unwrap().len();
    let ledger = Ledger::new(dir.path(), 0);
    ledger.commit(written[30].1).unwrap();
    assert!(segments(dir.path()).unwrap().len() < before);
    let s = Spool::open(dir.path(), settings()).unwrap();
    let (rest, _) = read_all(dir.path(), s.ledger().cursor().unwrap().0);
    assert_eq!(rest.len(), 10);
    assert_eq!(rest[0], written[30].0);
    assert_eq!(status(dir.path()).unwrap().pending_records, 10);
}

#[test]
fn a_torn_tail_is_cut_on_recovery_and_writing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), SpoolSettings { segment_bytes: 1 << 20, ..settings() }).unwrap();
    s.append(b"whole one").unwrap();
    s.append(b"whole two").unwrap();
    s.sync().unwrap();
    let seg = segment_path(dir.path(), *segments(dir.path()).unwrap().last().unwrap());
    drop(s);
    // A crash mid-write: the start of a record, cut short.
    let mut cut = Vec::new();
    frame::encode(&mut cut, b"never finished");
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&cut[..15]).unwrap();
    let mut s = Spool::open(dir.path(), settings()).unwrap();
    s.append(b"after the crash").unwrap();
    s.flush().unwrap();
    let (read, ledger) = read_all(dir.path(), 0);
    assert_eq!(read, [&b"whole one"[..], b"whole two", b"after the crash"]);
    assert_eq!(ledger.stats.skipped_bytes.load(Ordering::Relaxed), 0, "the torn tail was cut, not skipped");
}

#[test]
fn the_cap_refuses_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), SpoolSettings { max_bytes: 120, ..settings() }).unwrap();
    s.append(&[1; 40]).unwrap();
    s.append(&[1; 40]).unwrap();
    assert!(matches!(s.append(&[1; 40]), Err(SpoolError::Full { .. })));
    assert!(matches!(s.append(&[]), Err(SpoolError::BadSize(0))), "an empty record is never written");
}

/// A damage to the spool's files: what it does, given the records written.
type Damage = fn(&Path, &[(Vec<u8>, u64, u64)]) -> Vec<Range<u64>>;

fn file_of(dir: &Path, at: u64) -> PathBuf {
    segment_path(dir, ledger::split(at).0)
}

/// Damages bytes `range` (offsets within one segment) with `f`; returns the positions touched.
fn alter(dir: &Path, at: u64, range: Range<usize>, f: impl Fn(&mut [u8])) -> Vec<Range<u64>> {
    let path = file_of(dir, at);
    let mut bytes = std::fs::read(&path).unwrap();
    let range = range.start..range.end.min(bytes.len());
    f(&mut bytes[range.clone()]);
    std::fs::write(&path, bytes).unwrap();
    let seg = ledger::split(at).0;
    vec![pos(seg, range.start as u32)..pos(seg, range.end as u32)]
}

fn flip_in_record(dir: &Path, w: &[(Vec<u8>, u64, u64)], i: usize, byte: u64) -> Vec<Range<u64>> {
    let at = (w[i].1 + byte) as usize & 0xFFFF_FFFF;
    alter(dir, w[i].1, at..at + 1, |b| b[0] ^= 0x20)
}

const DAMAGES: &[(&str, Damage)] = &[
    ("a flipped bit in a payload", |d, w| flip_in_record(d, w, 20, 14)),
    ("a flipped bit in a length", |d, w| flip_in_record(d, w, 20, 5)),
    ("a flipped bit in a magic", |d, w| flip_in_record(d, w, 20, 1)),
    ("two records damaged in one segment", |d, w| {
        let mut r = flip_in_record(d, w, 21, 13);
        r.extend(flip_in_record(d, w, 23, 13));
        r
    }),
    ("a segment filled with zeros", |d, w| alter(d, w[20].1, 0..1 << 20, |b| b.fill(0))),
    ("a run of zeros across records", |d, w| {
        let start = (w[20].1 & 0xFFFF_FFFF) as usize + 3;
        alter(d, w[20].1, start..start + 70, |b| b.fill(0))
    }),
    ("a segment cut short", |d, w| {
        let path = file_of(d, w[20].1);
        let len = std::fs::metadata(&path).unwrap().len();
        let keep = (w[20].1 & 0xFFFF_FFFF) + 5;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
        let seg = ledger::split(w[20].1).0;
        vec![pos(seg, keep as u32)..pos(seg, len as u32 + 1_000_000)]
    }),
];

#[test]
fn damage_costs_only_the_records_it_touches() {
    for (name, damage) in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let written = spool_of(dir.path(), 60);
        let touched = damage(dir.path(), &written);
        let intact: Vec<Vec<u8>> = written
            .iter()
            .filter(|(_, at, end)| !touched.iter().any(|t| t.start < *end && *at < t.end))
            .map(|w| w.0.clone())
            .collect();
        assert!(intact.len() < written.len(), "{name}: the damage touched a record");
        let (read, ledger) = read_all(dir.path(), 0);
        assert_eq!(read, intact, "{name}: every intact record, in order, and nothing else");
        assert!(ledger.stats.skipped_bytes.load(Ordering::Relaxed) > 0, "{name}: the damage is counted");
        assert!(ledger.stats.skipped_records.load(Ordering::Relaxed) > 0, "{name}");
        assert_eq!(status(dir.path()).unwrap().pending_records, intact.len() as u64, "{name}: status agrees");
        // Shipping everything and committing at its end deletes every
        // segment but the last: nothing intact is left unread in them.
        Ledger::new(dir.path(), 0).commit(written.last().unwrap().2).unwrap();
        let reopened = Spool::open(dir.path(), settings()).unwrap();
        assert_eq!(status(dir.path()).unwrap().pending_records, 0, "{name}");
        drop(reopened);
    }
}

#[test]
fn first_layout_segments_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Vec::new();
    for p in [&b"old one"[..], b"old two"] {
        old.extend_from_slice(&(p.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
        old.extend_from_slice(p);
    }
    // Zeros after them must not read as empty records.
    old.extend_from_slice(&[0; 64]);
    std::fs::write(segment_path(dir.path(), 7), &old).unwrap();
    let mut s = Spool::open(dir.path(), settings()).unwrap();
    s.append(b"new one").unwrap();
    s.sync().unwrap();
    let (read, _) = read_all(dir.path(), 0);
    assert_eq!(read, [&b"old one"[..], b"old two", b"new one"]);
    assert_eq!(status(dir.path()).unwrap().pending_records, 3);
}

#[test]
fn a_stray_last_segment_number_never_makes_the_next_wrap() {
    let dir = tempfile::tempdir().unwrap();
    spool_of(dir.path(), 5);
    std::fs::write(segment_path(dir.path(), u32::MAX), b"").unwrap();
    let mut s = Spool::open(dir.path(), settings()).unwrap();
    assert!(ledger::split(s.end()).0 < u32::MAX && ledger::split(s.end()).0 > 1, "{s:?}");
    s.append(b"after").unwrap();
    s.sync().unwrap();
    drop(s);
    assert_eq!(status(dir.path()).unwrap().pending_records, 6, "the empty stray was removed");

    let mut full = Vec::from(&frame::SEGMENT_HEADER[..]);
    frame::encode(&mut full, b"last number");
    std::fs::write(segment_path(dir.path(), u32::MAX), full).unwrap();
    let e = Spool::open(dir.path(), settings()).unwrap_err();
    assert!(matches!(e, SpoolError::Exhausted { last: u32::MAX, .. }), "{e}");
    assert!(e.to_string().contains("4294967295.seg"), "{e}");
}

#[test]
fn a_cursor_pointing_nowhere_is_reported_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    spool_of(dir.path(), 30);
    // Segments removed by hand, the cursor kept.
    std::fs::write(dir.path().join("cursor"), pos(9_999, 0).to_string()).unwrap();
    let st = status(dir.path()).unwrap();
    assert!(st.cursor_problem.as_deref().unwrap_or("").contains("points past every record"), "{st:?}");
    assert_eq!(st.pending_records, 30, "status counts from where reading will resume");
    let s = Spool::open(dir.path(), settings()).unwrap();
    assert_eq!(s.ledger().stats.cursor_resets.load(Ordering::Relaxed), 1);
    let (cursor, stray) = s.ledger().cursor().unwrap();
    assert!(stray.is_none());
    assert_eq!(read_all(dir.path(), cursor).0.len(), 30, "everything on disk is read again");
}

#[test]
fn a_failed_cursor_move_is_counted_and_shown_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(&dir.path().join("gone"), 0);
    assert!(ledger.commit(5).is_err());
    assert!(ledger.cursor_failing());
    assert_eq!(ledger.stats.cursor_failures.load(Ordering::Relaxed), 1);
    std::fs::create_dir(dir.path().join("gone")).unwrap();
    ledger.commit(5).unwrap();
    assert!(!ledger.cursor_failing());
}

#[test]
fn a_full_disk_keeps_records_whole_in_memory_across_a_segment_boundary() {
    // A small tmpfs made for the test (needs root; skipped otherwise).
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let spool_dir = dir.path().join("spool");
    let mut s = Spool::open(&spool_dir, SpoolSettings { segment_bytes: 2048, ..settings() }).unwrap();
    let filler = dir.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0; 1024]).and_then(|()| f.sync_data()).is_ok() {}
    drop(f); // an open file's room is not given back when it is removed
    let records: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("{{\"event\":{i:03},\"pad\":\"{}\"}}", "x".repeat(80)).into_bytes())
        .collect();
    for r in &records {
        s.append(r).expect("kept in memory while the disk is full");
    }
    assert!(s.flush().is_err() && s.failing(), "the disk refuses");
    std::fs::remove_file(&filler).unwrap();
    for r in &records[..5] {
        s.append(r).unwrap();
    }
    s.sync().expect("written once there is room");
    let (read, ledger) = read_all(&spool_dir, 0);
    assert_eq!(read.len(), 45);
    assert_eq!(&read[..40], &records[..]);
    assert_eq!(ledger.stats.skipped_bytes.load(Ordering::Relaxed), 0, "no torn record anywhere");
}

#[test]
fn a_spool_is_for_one_destination_while_it_holds_records() {
    // (what it says before, records pending, claimed for) -> what it says after, or refused.
    let cases: [(&str, Option<&str>, u64, &str, Result<&str, ()>); 5] = [
        ("a new spool takes the destination", None, 0, "waymark.events", Ok("waymark.events")),
        ("an unmarked spool with records is taken as it is", None, 3, "waymark.hits", Ok("waymark.hits")),
        ("the same destination", Some("waymark.hits"), 3, "waymark.hits", Ok("waymark.hits")),
        (
            "an empty spool changes destination",
            Some("waymark.hits"),
            0,
            "waymark.events.*",
            Ok("waymark.events.*"),
        ),
        ("records for another destination", Some("waymark.hits"), 3, "waymark.events", Err(())),
    ];
    for (name, before, pending, wants, after) in cases {
        let dir = tempfile::tempdir().unwrap();
        if let Some(d) = before {
            std::fs::write(dir.path().join("destination"), format!("{d}\n")).unwrap();
        }
        match (claim(dir.path(), wants, pending), after) {
            (Ok(()), Ok(said)) => {
                assert_eq!(destination(dir.path()).unwrap().as_deref(), Some(said), "{name}")
            }
            (Err(SpoolError::Destination { holds, wants: w, pending: p, .. }), Err(())) => {
                assert_eq!((holds.as_str(), w.as_str(), p), (before.unwrap(), wants, pending), "{name}");
                assert_eq!(destination(dir.path()).unwrap().as_deref(), before, "{name}: left as it was");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}
