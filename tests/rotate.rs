//! The events file rotated under the running binary: moved away by a
//! log rotator (with SIGHUP, or noticed by itself), or rotated by size by
//! waymark; nothing lost or written twice.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use waymark::token;

fn hits(svc: &Service, keys: &str, prefix: &str, n: usize) {
    let ring = ring(keys);
    for i in 0..n {
        let t = token::seal(&ring, &open_claims(&format!("{prefix}-{i}"))).unwrap();
        assert_eq!(svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]).status, 200);
    }
}

/// Message ids in the given files, counting repeats.
fn ids(files: &[&Path]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| read_events(f))
        .map(|e| e["data"]["object"]["email"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_for(n: usize, files: &[&Path]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = ids(files);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_each_once(got: Vec<String>, n: usize) {
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!((got.len(), distinct.len()), (n, n), "each event exactly once: {got:?}");
}

#[test]
fn a_file_moved_away_is_reopened_on_sighup_and_by_itself() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let (path, rotated, again) =
        (svc.events_path(), svc.dir.path().join("events.jsonl.1"), svc.dir.path().join("events.jsonl.2"));
    hits(&svc, &keys, "before", 10);
    wait_for(10, &[&path]);
    // logrotate's `create` mode: move the file, then signal.
    std::fs::rename(&path, &rotated).unwrap();
    svc.signal("HUP");
    hits(&svc, &keys, "after-hup", 10);
    assert_each_once(wait_for(20, &[&rotated, &path]), 20);
    assert!(svc.get("/healthz", &[]).status == 200, "SIGHUP does not stop the service");
    // Moved with no signal (a shipper that renames and forgets): noticed at the next flush.
    std::fs::rename(&path, &again).unwrap();
    hits(&svc, &keys, "after-move", 10);
    assert_each_once(wait_for(30, &[&rotated, &again, &path]), 30);
    assert_eq!(read_events(&path).len(), 10, "the new file holds what came after the move");
}

#[test]
fn rotation_by_size_splits_only_between_lines_and_keeps_so_many_files() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_EVENTS_MAX_BYTES", "4096"), ("WAYMARK_EVENTS_KEEP", "100")]);
    let path = svc.events_path();
    let files: Vec<std::path::PathBuf> = std::iter::once(path.clone())
        .chain((1..=100).map(|n| svc.dir.path().join(format!("events.jsonl.{n}"))))
        .collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    // In rounds, each written before the next (a file is rotated at a flush).
    for round in 1..=4 {
        hits(&svc, &keys, &format!("sized-{round}"), 10);
        wait_for(10 * round, &refs);
    }
    assert_each_once(wait_for(40, &refs), 40);
    let existing: Vec<&&Path> = refs.iter().filter(|p| p.exists()).collect();
    assert!(existing.len() > 2, "rotated: {existing:?}");
}
