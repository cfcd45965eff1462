//! The Kafka sink against a real Kafka-protocol broker (tansu, started by
//! `scripts/kafka-broker`, which `scripts/test` runs): round trip, an
//! outage under load, a crash while spooling, and start-up with no broker.
//!
//! Tests that stop a broker start their own, so they never pause the
//! shared one under another test.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use support::*;
use waymark::token;

/// A broker of this test's own, killed when dropped.
struct OwnBroker {
    child: Child,
    addr: String,
}

impl OwnBroker {
    fn start() -> Option<OwnBroker> {
        broker()?;
        let tansu = std::env::var("WAYMARK_TEST_TANSU").expect("WAYMARK_TEST_TANSU names the tansu binary");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(OwnBroker { child, addr: format!("127.0.0.1:{port}") })
    }

    fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn topic(name: &str) -> String {
    format!("waymark-test-{name}-{}", std::process::id())
}

struct Consumed {
    key: String,
    headers: BTreeMap<String, String>,
    body: serde_json::Value,
}

/// Reads the topic from the start until `want` distinct event ids arrived,
/// or the deadline; returns the records by event id. It may start before
/// the topic exists: the service creates it with its first event.
fn consume(broker: &str, topic: &str, want: usize, within: Duration) -> BTreeMap<String, Consumed> {
    let deadline = Instant::now() + within;
    let Some(consumer) = reader_from_start(broker, topic, deadline) else { return BTreeMap::new() };
    let mut seen = BTreeMap::new();
    while seen.len() < want && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else { continue };
        let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        seen.insert(body["event_id"].as_str().unwrap().to_owned(), Consumed { key, headers, body });
    }
    seen
}

/// Sends `n` pixel hits for messages `{prefix}-{i}`; returns the slowest answer.
fn hits(svc: &Service, keys: &str, prefix: &str, n: usize) -> Duration {
    let ring = ring(keys);
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = token::seal(&ring, &open_claims(&format!("{prefix}-{i}"))).unwrap();
        let started = Instant::now();
        let r = svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]);
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 200);
    }
    slowest
}

/// A loopback address where no broker listens (the port was free a moment ago).
fn unreachable_broker() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Polls until `/readyz` answers 200 with exactly `ready` and the service's
/// log holds `logged`, for at most `seconds`. Degraded is never failed: every
/// answer on the way must be a 200 too.
fn wait_until_both_say(svc: &Service, ready: &str, logged: &str, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let r = svc.get("/readyz", &[]);
        assert_eq!(r.status, 200, "degraded, not failed");
        if r.text() == ready && svc.stderr().contains(logged) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness {:?} (wanted {ready:?}) and the log (wanted {logged:?}): {}",
            r.text(),
            svc.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kafka_env<'a>(broker: &'a str, topic: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("WAYMARK_KAFKA_BROKERS", broker), ("WAYMARK_KAFKA_TOPIC", topic), ("WAYMARK_SPOOL_FSYNC_MS", "50")]
}

#[test]
fn every_hit_arrives_on_the_topic_with_its_key_and_headers() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let topic = topic("roundtrip");
    let svc = Service::start(&keys, &kafka_env(&broker, &topic));
    assert!(svc.stdout.iter().any(|l| l.starts_with("events go to Kafka")));
    // Reading starts first, before the topic exists, as a downstream
    // consumer deployed with the service would.
    let reader = {
        let (broker, topic) = (broker.clone(), topic.clone());
        std::thread::spawn(move || consume(&broker, &topic, 200, Duration::from_secs(60)))
    };
    hits(&svc, &keys, "rt", 200);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 200, "events consumed; the service's /readyz: {}", svc.get("/readyz", &[]).text());
    let schema = event_schema();
    for (id, c) in &got {
        assert_schema_valid(&schema, &c.body);
        assert_eq!(c.key, c.body["data"]["object"]["email"]["id"].as_str().unwrap(), "key = message id");
        assert_eq!(c.headers["event_id"], *id);
        assert_eq!(c.headers["type"], "email.opened");
        assert_eq!(c.headers["tenant"], "");
    }
    assert!(!svc.events_path().exists(), "with brokers configured, the file sink is not used");
}

#[test]
fn an_outage_under_load_slows_nothing_and_loses_nothing() {
    let Some(own) = OwnBroker::start() else { return };
    let keys = key_entry("k1");
    let topic = topic("outage");
    let svc = Service::start(&keys, &kafka_env(&own.addr, &topic));
    let before = hits(&svc, &keys, "before", 100);

    own.signal("STOP");
    let outage = Instant::now();
    let during = hits(&svc, &keys, "during", 300);
    std::thread::sleep(Duration::from_secs(6));
    let ready = svc.get("/readyz", &[]);
    assert_eq!(ready.status, 200, "degraded is not failed");
    assert!(ready.text().starts_with("degraded"), "{}", ready.text());
    own.signal("CONT");
    let outage = outage.elapsed();

    let after = hits(&svc, &keys, "after", 100);
    let got = consume(&own.addr, &topic, 500, Duration::from_secs(90));
    let ids: HashSet<String> =
        got.values().map(|c| c.body["data"]["object"]["email"]["id"].as_str().unwrap().to_owned()).collect();
    let mut missing = Vec::new();
    for (prefix, n) in [("before", 100), ("during", 300), ("after", 100)] {
        for i in 0..n {
            if !ids.contains(&format!("{prefix}-{i}")) {
                missing.push(format!("{prefix}-{i}"));
            }
        }
    }
    eprintln!(
        "outage of {outage:?}: slowest answer before {before:?}, during {during:?}, after {after:?}; {} distinct events consumed",
        got.len()
    );
    assert!(
        missing.is_empty(),
        "{} events never arrived: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(during < Duration::from_secs(1), "an answer took {during:?} while the broker was down");
}

/// Hits before, during and after a broker outage of `pause`, with one
/// librdkafka property set; returns how many distinct events arrived, and
/// how many were sent.
fn through_an_outage(property: &str, name: &str, during: usize, pause: Duration) -> (usize, usize) {
    let Some(own) = OwnBroker::start() else { return (0, 0) };
    let keys = key_entry("k1");
    let topic = topic(name);
    let mut env = kafka_env(&own.addr, &topic);
    env.push(("WAYMARK_KAFKA_PROPERTIES", property));
    let svc = Service::start(&keys, &env);
    hits(&svc, &keys, "before", 30);
    own.signal("STOP");
    hits(&svc, &keys, "during", during);
    std::thread::sleep(pause);
    own.signal("CONT");
    hits(&svc, &keys, "after", 30);
    let sent = 60 + during;
    (consume(&own.addr, &topic, sent, Duration::from_secs(90)).len(), sent)
}

#[test]
fn an_outage_longer_than_the_message_timeout_loses_nothing() {
    // Messages time out inside librdkafka during this outage; the producer
    // may come back fenced, and delivery must resume all the same.
    let (got, sent) =
        through_an_outage("message.timeout.ms=1500", "long-outage", 200, Duration::from_secs(6));
    assert_eq!(got, sent, "events consumed after an outage of 4x the message timeout");
}

#[test]
fn a_full_producer_queue_during_an_outage_loses_nothing() {
    // With room for only 20 messages inside librdkafka, the outage fills it
    // at once: every later event waits in the spool, and each attempt to
    // send one is refused again and again until the broker is back.
    let (got, sent) =
        through_an_outage("queue.buffering.max.messages=20", "queue-full", 300, Duration::from_secs(2));
    assert_eq!(got, sent, "every event arrives though the producer's queue was full for seconds");
}

#[test]
fn events_spooled_before_a_sigkill_are_replayed_after_restart() {
    let Some(own) = OwnBroker::start() else { return };
    let keys = key_entry("k1");
    let topic = topic("crash");
    own.signal("STOP");
    let svc = Service::start(&keys, &kafka_env(&own.addr, &topic));
    hits(&svc, &keys, "crash", 150);
    // Past a flush interval: every hit is in the spool, in the kernel.
    std::thread::sleep(Duration::from_millis(500));
    let data = svc.dir.path().to_owned();
    let mut svc = svc;
    svc.signal("KILL");
    svc.child.wait().unwrap();
    let spool = std::fs::read_dir(data.join("spool")).unwrap().count();
    assert!(spool >= 2, "segments and cursor were left behind");

    own.signal("CONT");
    // Restart on the same data directory: the spool is replayed.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.arg("serve")
        .env_clear()
        .env("WAYMARK_LISTEN", "127.0.0.1:0")
        .env("WAYMARK_DATA_DIR", &data)
        .env("WAYMARK_KEYS", &keys)
        .env("WAYMARK_LOG", "warn")
        .envs(kafka_env(&own.addr, &topic))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut restarted = cmd.spawn().unwrap();
    let got = consume(&own.addr, &topic, 150, Duration::from_secs(90));
    let _ = restarted.kill();
    let _ = restarted.wait();
    assert_eq!(got.len(), 150, "spooled events replayed after the crash");
}

#[test]
fn with_no_reachable_broker_it_starts_serves_and_spools() {
    let keys = key_entry("k1");
    let nowhere = unreachable_broker();
    let mut svc = Service::start_with_stderr(&keys, &kafka_env(&nowhere, "waymark.events"));
    hits(&svc, &keys, "nobroker", 20);
    // Readiness is judged when asked; the warning is logged by the shipper
    // when it next runs.
    wait_until_both_say(&svc, "degraded: brokers unreachable\n", "events are spooling to disk", 20);
    // Replaying by hand while the service ships from the same spool is refused.
    let replay = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["spool", "replay"])
        .env_clear()
        .env("WAYMARK_DATA_DIR", svc.dir.path())
        .env("WAYMARK_KEYS", &keys)
        .envs(kafka_env(&nowhere, "waymark.events"))
        .output()
        .unwrap();
    assert!(!replay.status.success());
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(said.contains("in use by another waymark process"), "{said}");
    let status = svc.stop();
    assert!(status.success());
    let spool = waymark::sink::spool::status(&svc.dir.path().join("spool")).unwrap();
    assert_eq!(spool.pending_records, 20, "{spool:?}");
}

/// Each thread of a process: its name and scheduling policy (field 41 of
/// /proc/PID/task/TID/stat; 0 is SCHED_OTHER, 5 SCHED_IDLE).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            Some((name, rest.split_whitespace().nth(38)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn kafka_threads_give_way_to_requests() {
    let keys = key_entry("k1");
    let nowhere = unreachable_broker();
    let mut svc = Service::start(&keys, &kafka_env(&nowhere, "waymark.events"));
    hits(&svc, &keys, "policy", 5);
    // A thread takes its name when it first runs, which on a busy machine
    // can be a while after it was made: until then it bears its creator's.
    let named = ["waymark-pipelin", "waymark-kafka", "rdk:"];
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads = loop {
        let threads = thread_policies(svc.child.id());
        if named.iter().all(|p| threads.iter().any(|(n, _)| n.starts_with(p))) || Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let policy = |prefix: &str| {
        threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, p)| *p).collect::<Vec<_>>()
    };
    // The shipper and librdkafka's threads (started from it) only run when
    // the core has nothing else to do; answering and judging hits never wait.
    // (A librdkafka thread that has not run yet bears the shipper's name.)
    for kafka in ["waymark-kafka", "rdk:"] {
        assert!(!policy(kafka).is_empty() && policy(kafka).iter().all(|p| *p == 5), "{threads:?}");
    }
    assert!(
        policy("tokio-rt-worker").iter().chain(&policy("waymark-pipelin")).all(|p| *p == 0),
        "{threads:?}"
    );
    assert!(!policy("waymark-pipelin").is_empty(), "{threads:?}");
    assert!(svc.stop().success());
}

#[test]
fn a_full_spool_keeps_serving_and_says_so() {
    let keys = key_entry("k1");
    let nowhere = unreachable_broker();
    let mut env = kafka_env(&nowhere, "waymark.events");
    env.push(("WAYMARK_SPOOL_MAX_BYTES", "8192"));
    let svc = Service::start_with_stderr(&keys, &env);
    // Each event is several hundred bytes: 60 cannot fit in 8 KiB.
    let slowest = hits(&svc, &keys, "full", 60);
    assert!(slowest < Duration::from_secs(1));
    // The state and the log line come from one thread, one after the
    // other: under load either can be seen first.
    wait_until_both_say(&svc, "degraded: spool full, events are being lost\n", "EVENTS ARE BEING LOST", 10);
}
