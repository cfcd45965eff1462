//! A full disk over the real binary, on a small tmpfs the test mounts (it
//! needs root; skipped otherwise): the events file and the Kafka spool keep
//! whole records only, `/readyz` says so while writes fail, and writing
//! resumes by itself once there is room, with nothing lost.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use waymark::token;

/// A tmpfs of 64 KiB, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what room is left; returns the filler to remove later.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 1024];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn hit(svc: &Service, keys: &str, id: &str) {
    let t = token::seal(&ring(keys), &open_claims(id)).unwrap();
    assert_eq!(svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]).status, 200);
}

/// Polls `/readyz` until it says `want` (20 s at most).
fn wait_ready(svc: &Service, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = svc.get("/readyz", &[]);
        assert_eq!(r.status, 200, "degraded, not failed");
        if r.text() == want {
            return;
        }
        assert!(Instant::now() < deadline, "readiness {:?}, wanted {want:?}: {}", r.text(), svc.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_events_file_on_a_full_disk_keeps_whole_lines_and_resumes() {
    let Some(fs) = Tmpfs::mount() else { return };
    let keys = key_entry("k1");
    let events = fs.path().join("events.jsonl");
    let svc = Service::start_with_stderr(&keys, &[("WAYMARK_EVENTS_FILE", events.to_str().unwrap())]);
    for i in 0..5 {
        hit(&svc, &keys, &format!("before-{i}"));
    }
    wait_until(|| read_lines(&events).len() == 5, "the first events written");
    let filler = fs.fill();
    for i in 0..30 {
        hit(&svc, &keys, &format!("during-{i}"));
    }
    wait_ready(&svc, "degraded: events file unwritable\n");
    let during = read_lines(&events);
    assert!(during.len() < 35, "the disk is full: {} lines", during.len());
    std::fs::remove_file(filler).unwrap();
    wait_ready(&svc, "ready\n");
    wait_until(|| read_lines(&events).len() == 35, "every event once there is room");
    let ids: std::collections::HashSet<String> = read_lines(&events)
        .iter()
        .map(|e| e["data"]["object"]["email"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 35, "each event once");
}

#[test]
fn the_spool_on_a_full_disk_keeps_whole_records_and_resumes() {
    let Some(broker) = broker() else { return };
    let Some(fs) = Tmpfs::mount() else { return };
    let keys = key_entry("k1");
    let spool = fs.path().join("spool");
    let topic = format!("waymark-test-full-disk-{}", std::process::id());
    let mut svc = Service::start_with_stderr(
        &keys,
        &[
            ("WAYMARK_KAFKA_BROKERS", &broker),
            ("WAYMARK_KAFKA_TOPIC", &topic),
            ("WAYMARK_SPOOL_DIR", spool.to_str().unwrap()),
            ("WAYMARK_SPOOL_FSYNC_MS", "50"),
        ],
    );
    for i in 0..5 {
        hit(&svc, &keys, &format!("before-{i}"));
    }
    let filler = fs.fill();
    for i in 0..60 {
        hit(&svc, &keys, &format!("during-{i}"));
    }
    wait_ready(&svc, "degraded: spool unwritable, events wait in memory\n");
    std::fs::remove_file(filler).unwrap();
    wait_ready(&svc, "ready\n");
    assert!(svc.stop().success());
    // Every record on disk is whole: nothing is passed over as damage.
    let out = waymark(
        &["spool", "status"],
        &[
            ("WAYMARK_KAFKA_BROKERS", "127.0.0.1:9"),
            ("WAYMARK_SPOOL_DIR", spool.to_str().unwrap()),
            ("WAYMARK_DATA_DIR", svc.dir.path().to_str().unwrap()),
            ("WAYMARK_KEYS", &keys),
        ],
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["damaged_bytes"], 0, "{st}");
    assert_eq!(st["pending_records"], 0, "everything was delivered: {st}");
}

fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line of the events file, each of which must be whole JSON.
fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a torn last line: {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not whole JSON ({e}): {l}")))
        .collect()
}
