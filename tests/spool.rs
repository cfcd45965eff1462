//! The spool over the real binary: a damaged spool is replayed past its
//! damage, `spool replay` says when it could not do what was asked, and
//! `spool status` survives a reader that stops early. (The spool's own
//! cases are unit tests in `sink::spool::tests`.)

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};

use support::*;
use waymark::token;

fn unreachable_broker() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// A stopped service's data directory holding `n` spooled events (the
/// brokers were unreachable the whole time).
fn spooled(keys: &str, n: usize) -> Service {
    let nowhere = unreachable_broker();
    let mut svc = Service::start_with_stderr(keys, &[("WAYMARK_KAFKA_BROKERS", &nowhere)]);
    let ring = ring(keys);
    for i in 0..n {
        let t = token::seal(&ring, &open_claims(&format!("spooled-{i}"))).unwrap();
        assert_eq!(svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]).status, 200);
    }
    assert!(svc.stop().success());
    svc
}

fn spool_cmd(svc: &Service, keys: &str, brokers: &str, args: &[&str]) -> std::process::Output {
    let data = svc.dir.path().to_str().unwrap();
    let mut all = vec!["spool"];
    all.extend_from_slice(args);
    waymark(&all, &[("WAYMARK_DATA_DIR", data), ("WAYMARK_KEYS", keys), ("WAYMARK_KAFKA_BROKERS", brokers)])
}

/// Flips one byte in the middle of the segment that holds the events.
fn flip_a_byte_of_the_events(svc: &Service) {
    let seg = std::fs::read_dir(svc.dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
}

fn status(svc: &Service, keys: &str) -> serde_json::Value {
    let out = spool_cmd(svc, keys, "127.0.0.1:9", &["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_flipped_byte_costs_one_event_and_replay_delivers_the_rest() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let svc = spooled(&keys, 200);
    assert_eq!(status(&svc, &keys)["pending_records"], 200);
    flip_a_byte_of_the_events(&svc);
    let st = status(&svc, &keys);
    assert_eq!(st["pending_records"], 199, "{st}");
    assert!(st["damaged_bytes"].as_u64().unwrap() > 0, "{st}");

    let replay = spool_cmd(&svc, &keys, &broker, &["replay", "--timeout-secs", "60"]);
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{said} {}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(said.trim(), "sent 199 events, 199 acknowledged");
    assert!(String::from_utf8_lossy(&replay.stderr).contains("damaged spool bytes skipped"));
    assert_eq!(status(&svc, &keys)["pending_records"], 0, "the cursor moved past everything");
}

#[test]
fn replay_with_no_broker_fails_and_says_why() {
    let keys = key_entry("k1");
    let svc = spooled(&keys, 5);
    let replay = spool_cmd(&svc, &keys, &unreachable_broker(), &["replay", "--timeout-secs", "2"]);
    assert!(!replay.status.success(), "nothing was delivered: not a success");
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(said.contains("not drained within 2 s") && said.contains("0 acknowledged"), "{said}");
    assert_eq!(status(&svc, &keys)["pending_records"], 5, "still there for the next try");
}

#[test]
fn status_into_a_closed_pipe_does_not_panic() {
    let keys = key_entry("k1");
    let svc = spooled(&keys, 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["spool", "status"])
        .env_clear()
        .env("WAYMARK_DATA_DIR", svc.dir.path())
        .env("WAYMARK_KEYS", &keys)
        .env("WAYMARK_KAFKA_BROKERS", "127.0.0.1:9")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: the reader is gone before anything is written
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success() && !stderr.contains("panicked"), "{status}: {stderr}");
}

#[test]
fn segments_removed_with_the_cursor_kept_are_noticed_and_new_events_still_counted() {
    let keys = key_entry("k1");
    let svc = spooled(&keys, 3);
    let spool = svc.dir.path().join("spool");
    std::fs::write(spool.join("cursor"), ((7u64 << 32) | 300).to_string()).unwrap();
    for e in std::fs::read_dir(&spool).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let st = status(&svc, &keys);
    assert!(st["cursor_problem"].as_str().unwrap_or("").contains("points past every record"), "{st}");
    // A service started on it resets the cursor and spools new events where they will be read.
    let data = svc.dir.path().to_str().unwrap().to_owned();
    let nowhere = unreachable_broker();
    let mut again = Service::start_with_stderr(
        &keys,
        &[("WAYMARK_DATA_DIR", &data), ("WAYMARK_KAFKA_BROKERS", &nowhere), ("WAYMARK_LOG", "warn")],
    );
    let t = token::seal(&ring(&keys), &open_claims("after-reset")).unwrap();
    assert_eq!(again.get(&format!("/o/{t}"), &[]).status, 200);
    assert!(again.stop().success());
    assert!(again.stderr().contains("points past every record"), "{}", again.stderr());
    let st = status(&svc, &keys);
    assert_eq!(st["pending_records"], 1, "{st}");
    assert!(st["cursor_problem"].is_null(), "{st}");
}

#[test]
fn replay_that_cannot_move_the_cursor_fails_and_says_why() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let svc = spooled(&keys, 5);
    // The cursor is written by rename from cursor.tmp: a directory there
    // makes every move fail, even for root (a read-only spool does too).
    std::fs::create_dir(svc.dir.path().join("spool").join("cursor.tmp")).unwrap();
    let replay = spool_cmd(&svc, &keys, &broker, &["replay", "--timeout-secs", "60"]);
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(!replay.status.success(), "{said}");
    assert!(said.contains("5 acknowledged") && said.contains("could not be moved"), "{said}");
}

#[test]
fn a_service_started_on_a_damaged_spool_reports_the_damage_once() {
    let keys = key_entry("k1");
    let svc = spooled(&keys, 50);
    flip_a_byte_of_the_events(&svc);
    let data = svc.dir.path().to_str().unwrap().to_owned();
    let nowhere = unreachable_broker();
    let mut again = Service::start_with_stderr(
        &keys,
        &[("WAYMARK_DATA_DIR", &data), ("WAYMARK_KAFKA_BROKERS", &nowhere), ("WAYMARK_LOG", "warn")],
    );
    // Counted at start, then read past by the shipper: one report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !again.stderr().contains("replaying events a previous run left") {
        assert!(std::time::Instant::now() < deadline, "{}", again.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(again.stderr().contains("pending=49"), "{}", again.stderr());
    assert!(again.stop().success());
    let log = again.stderr();
    assert_eq!(log.matches("damaged spool bytes skipped").count(), 1, "{log}");
}

/// Records on `topic` from its start, counted until `want` or `within`.
fn records_on(broker: &str, topic: &str, want: usize, within: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    let Some(consumer) = reader_from_start(broker, topic, deadline) else { return 0 };
    let mut n = 0;
    while n < want && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(std::time::Duration::from_millis(200)) {
            n += 1;
        }
    }
    n
}

/// An edge whose hits `waymark judge` judges spools hit records, and its
/// spool says so: `waymark serve` judging locally will not ship them as
/// events, and `spool replay` sends them to the hits topic, not the events
/// topic, whatever the configuration it runs with.
#[test]
fn hit_records_in_a_spool_go_to_the_hits_topic_and_nowhere_else() {
    let keys = key_entry("k1");
    let nowhere = unreachable_broker();
    let (events, hits) =
        (format!("spool-events-{}", std::process::id()), format!("spool-hits-{}", std::process::id()));
    let edge = [
        ("WAYMARK_KAFKA_BROKERS", nowhere.as_str()),
        ("WAYMARK_KAFKA_TOPIC", events.as_str()),
        ("WAYMARK_KAFKA_HITS_TOPIC", hits.as_str()),
        ("WAYMARK_JUDGE", "kafka"),
    ];
    let mut svc = Service::start_with_stderr(&keys, &edge);
    let ring = ring(&keys);
    for i in 0..3 {
        let t = token::seal(&ring, &open_claims(&format!("h-{i}"))).unwrap();
        assert_eq!(svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]).status, 200);
    }
    assert!(svc.stop().success());
    let data = svc.dir.path().to_str().unwrap();
    let st = status(&svc, &keys);
    assert_eq!(
        (st["destination"].as_str(), st["pending_records"].as_u64()),
        (Some(hits.as_str()), Some(3)),
        "{st}"
    );

    // The same data directory, judging locally: events would go to the
    // events topic, so start-up refuses the spool and says why.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("WAYMARK_LISTEN", "127.0.0.1:0"),
            ("WAYMARK_DATA_DIR", data),
            ("WAYMARK_KEYS", keys.as_str()),
            ("WAYMARK_KAFKA_BROKERS", nowhere.as_str()),
            ("WAYMARK_KAFKA_TOPIC", events.as_str()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("waymark serve started on a spool of hit records, judging locally");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut said = String::new();
    serve.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(!exited.success());
    assert!(
        said.contains(&format!("holds 3 records for {hits}, but this process ships to {events}")),
        "{said}"
    );

    let Some(broker) = broker() else { return };
    let replay = spool_cmd(&svc, &keys, &broker, &["replay", "--timeout-secs", "60"]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let secs = std::time::Duration::from_secs;
    assert_eq!(records_on(&broker, &hits, 3, secs(30)), 3, "the hit records are on the hits topic");
    // Had they gone there, they would be there by now.
    assert_eq!(records_on(&broker, &events, 1, secs(3)), 0, "and nothing went to the events topic");
}
