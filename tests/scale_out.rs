//! The Kafka mode of the judge (issue 19) against a real Kafka-protocol
//! broker (tansu, from `scripts/kafka-broker`): three `serve` edges with
//! `judge = "kafka"` and two `waymark judge` processes, hits spread
//! round-robin over the edges, judged as one local process judges them;
//! and a judge killed with SIGKILL while hits flow, restarted, with every
//! hit judged into exactly one event (after dedup on `event_id`) and its
//! repeat state rebuilt from the topic.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use support::*;
use waymark::destination::Destination;
use waymark::token::{self, Claims, Link, Target};

const PARTITIONS: &str = "4";
const BROWSER: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15";

/// One test's topics and group, unique to it.
struct Names {
    events: String,
    hits: String,
    group: String,
}

impl Names {
    fn new(test: &str) -> Names {
        let id = format!("{test}-{}", std::process::id());
        Names { events: format!("ev-{id}"), hits: format!("hits-{id}"), group: format!("judges-{id}") }
    }

    fn env<'a>(&'a self, broker: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("WAYMARK_JUDGE", "kafka"),
            ("WAYMARK_KAFKA_BROKERS", broker),
            ("WAYMARK_KAFKA_TOPIC", &self.events),
            ("WAYMARK_KAFKA_HITS_TOPIC", &self.hits),
            ("WAYMARK_KAFKA_JUDGE_GROUP", &self.group),
            ("WAYMARK_KAFKA_HITS_PARTITIONS", PARTITIONS),
            // A killed judge's partitions move after this, not after 45 s.
            ("WAYMARK_KAFKA_PROPERTIES", "session.timeout.ms=6000,heartbeat.interval.ms=500"),
            ("WAYMARK_SPOOL_FSYNC_MS", "50"),
        ]
    }
}

/// A `waymark judge` process, killed when dropped.
struct Judge {
    child: Child,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Judge {
    fn start(keys: &str, env: &[(&str, &str)]) -> Judge {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waymark"));
        cmd.arg("judge")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WAYMARK_KEYS", keys)
            .env("WAYMARK_DATA_DIR", dir.path())
            .env("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0")
            .env("WAYMARK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin = None;
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("waymark judge exited early; its log:\n{}", log(&dir));
            };
            if let Some(a) = line.strip_prefix("admin (healthz, readyz, metrics) on http://") {
                admin = Some(a.trim().parse().unwrap());
            }
            if line.starts_with("waymark judge reading") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Judge { child, admin: admin.expect("the admin address is printed"), dir }
    }

    fn metric(&self, name: &str) -> u64 {
        metric_at(self.admin, name)
    }

    fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// SIGTERM, and the exit status within 30 s.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the judge did not stop within 30 s of SIGTERM:\n{}",
                log(&self.dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- a judge's log, for the failed test ---\n{}", log(&self.dir));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
}

/// Waits until the judges together hold every partition, each some.
fn until_assigned(judges: &[&Judge]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: u64 = PARTITIONS.parse().unwrap();
    loop {
        let held: Vec<u64> = judges.iter().map(|j| j.metric("waymark_judge_assigned_partitions")).collect();
        if held.iter().sum::<u64>() == want && !held.contains(&0) {
            return;
        }
        assert!(Instant::now() < deadline, "the judges never shared every partition: {held:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the judges together judged `n` records.
fn until_judged(judges: &[&Judge], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let judged: u64 = judges.iter().map(|j| j.metric("waymark_judge_records_judged_total")).sum();
        if judged >= n {
            return;
        }
        assert!(Instant::now() < deadline, "judged {judged} of {n} hit records");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events on the topic, deduplicated on `event_id`, and how many
/// records were read in all: read from the start until `want` distinct
/// events arrived, then on until a poll of a second brings nothing (a
/// duplicate or an extra event shows). tansu reports a high watermark of
/// one past the last batch's first offset, so the end cannot be asked for.
fn events_on(broker: &str, topic: &str, want: usize) -> (Vec<serde_json::Value>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumer = reader_from_start(broker, topic, deadline).expect("the events topic exists");
    let (mut by_id, mut read) = (BTreeMap::new(), 0);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => {
                read += 1;
                let event: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                assert_schema_valid(schema(), &event);
                by_id.insert(event["event_id"].as_str().unwrap().to_owned(), event);
            }
            None if by_id.len() >= want => break,
            _ => {}
        }
    }
    (by_id.into_values().collect(), read)
}

/// What an event says that does not depend on which process judged it or
/// in which order hits of different edges arrived.
fn summary(events: &[serde_json::Value]) -> BTreeMap<(String, String, bool, String), usize> {
    let mut out = BTreeMap::new();
    for e in events {
        let o = &e["data"]["object"];
        let key = (
            o["email"]["id"].as_str().unwrap().to_owned(),
            e["type"].as_str().unwrap().to_owned(),
            o["counted"].as_bool().unwrap(),
            o["verdict"].as_str().unwrap().to_owned(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn click(keys: &str, message: &str, index: u16) -> String {
    let claims = Claims {
        target: Target::Click(Link {
            index,
            url: Destination::parse(&format!("https://example.com/{index}")).unwrap(),
            trap: false,
        }),
        ..open_claims(message)
    };
    format!("/c/{}", token::seal(&ring(keys), &claims).unwrap())
}

fn open(keys: &str, message: &str) -> String {
    format!("/o/{}", token::seal(&ring(keys), &open_claims(message)).unwrap())
}

fn unsubscribe(keys: &str, message: &str) -> String {
    let claims = Claims { target: Target::Unsubscribe, ..open_claims(message) };
    format!("/u/{}", token::seal(&ring(keys), &claims).unwrap())
}

/// RFC 8058's one-click POST.
fn post(svc: &Service, path: &str) -> Response {
    let body = b"List-Unsubscribe=One-Click";
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        svc.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(svc.addr, &req)
}

/// The hits of the behaviour scenario, with the edge each goes to: a burst
/// over one message's three links, a repeat open and a click back-fill,
/// each split across edges, and opens of other messages in between.
fn scenario(keys: &str) -> Vec<(usize, String)> {
    let mut hits = vec![
        (0, click(keys, "burst", 0)),
        (1, click(keys, "burst", 1)),
        (2, click(keys, "burst", 2)),
        (0, open(keys, "repeat")),
        (1, open(keys, "repeat")),
        (1, click(keys, "backfill", 0)),
        (2, click(keys, "backfill", 1)),
    ];
    for i in 0..12 {
        hits.push((i % 3, open(keys, &format!("plain-{i}"))));
    }
    hits
}

#[test]
fn hits_spread_over_three_edges_are_judged_as_one_process_judges_them() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let names = Names::new("edges");
    let env = names.env(&broker);
    let mut judges = [Judge::start(&keys, &env), Judge::start(&keys, &env)];
    let mut edges: Vec<Service> = (0..3).map(|_| Service::start(&keys, &env)).collect();
    until_assigned(&[&judges[0], &judges[1]]);
    let mut local = Service::start(&keys, &[]);

    // Garbage and a future layout on the hits topic: counted, skipped.
    let producer: rdkafka::producer::BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &broker).create().unwrap();
    for bad in [&b"not a hit record"[..], &[2, 0, 0, 0][..]] {
        producer.send(rdkafka::producer::BaseRecord::to(&names.hits).key("x").payload(bad)).unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();

    let hits = scenario(&keys);
    for (edge, path) in &hits {
        let ua = [("User-Agent", BROWSER)];
        assert!([200, 302].contains(&edges[*edge].get(path, &ua).status));
        assert!([200, 302].contains(&local.get(path, &ua).status));
    }
    // An unsubscribe is confirmed once its hit record is durable in the spool.
    let unsubscribe = unsubscribe(&keys, "leaving");
    assert_eq!(post(&edges[2], &unsubscribe).status, 200, "confirmed through the hits topic");
    assert_eq!(post(&local, &unsubscribe).status, 200);
    let hits_sent = hits.len() + 1;
    for edge in &mut edges {
        assert!(edge.stop().success());
    }
    assert!(local.stop().success());
    until_judged(&[&judges[0], &judges[1]], hits_sent as u64 + 2);
    let bad: u64 = judges.iter().map(|j| j.metric("waymark_judge_bad_records_total")).sum();
    assert_eq!(bad, 2, "the garbage and the future layout are counted");
    for judge in &mut judges {
        assert!(judge.stop().success(), "a judge failed to stop:\n{}", log(&judge.dir));
    }

    let want = read_events(&local.events_path());
    let (got, read) = events_on(&broker, &names.events, want.len());
    eprintln!("{} events after dedup, {read} records; {} from one process", got.len(), want.len());
    assert_eq!(summary(&got), summary(&want), "the Kafka mode judged differently from one process");
    let of = |message: &str, kind: &str| -> Vec<&serde_json::Value> {
        got.iter().filter(|e| e["data"]["object"]["email"]["id"] == message && e["type"] == kind).collect()
    };
    let counted = |events: Vec<&serde_json::Value>| {
        events.iter().filter(|e| e["data"]["object"]["counted"] == true).count()
    };
    assert!(
        of("burst", "email.reclassified").len() >= 2,
        "the clicks counted before the burst are withdrawn"
    );
    assert_eq!(of("burst", "email.clicked").len(), 3);
    assert_eq!(
        counted(of("repeat", "email.opened")),
        1,
        "a repeat open on another edge is not counted twice"
    );
    assert_eq!(of("leaving", "email.unsubscribed").len(), 1);
    let backfills = of("backfill", "email.opened");
    assert_eq!(backfills.len(), 1, "one back-fill for two clicks on two edges: {backfills:?}");
}

#[test]
fn a_judge_killed_while_hits_flow_leaves_every_hit_with_exactly_one_event() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let names = Names::new("kill");
    let env = names.env(&broker);
    let mut first = Judge::start(&keys, &env);
    let mut second = Judge::start(&keys, &env);
    let mut edges: Vec<Service> = (0..3).map(|_| Service::start(&keys, &env)).collect();
    until_assigned(&[&first, &second]);
    const MESSAGES: usize = 60;
    let ua = [("User-Agent", BROWSER)];
    // Every message opened once now, and again after the restart: the
    // second open is a repeat only if the restarted judge rebuilt its state.
    let paths: Vec<String> = (0..MESSAGES).map(|i| open(&keys, &format!("m-{i}"))).collect();
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(edges[i % 3].get(path, &ua).status, 200);
        if i == MESSAGES / 2 {
            second.signal("KILL");
        }
    }
    let _ = second.child.wait();
    let mut second = Judge::start(&keys, &env);
    until_assigned(&[&first, &second]);
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(edges[(i + 1) % 3].get(path, &ua).status, 200);
    }
    for edge in &mut edges {
        assert!(edge.stop().success());
    }
    // The restarted judge re-judges what the killed one had not committed.
    let (events, read) = events_on(&broker, &names.events, 2 * MESSAGES);
    assert!(first.stop().success());
    assert!(second.stop().success());
    assert_eq!(events.len(), 2 * MESSAGES, "one event per hit after dedup on event_id (of {read} records)");
    for i in 0..MESSAGES {
        let of: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["data"]["object"]["email"]["id"] == format!("m-{i}")).collect();
        assert_eq!(of.len(), 2, "m-{i}: {of:?}");
        let counted = of.iter().filter(|e| e["data"]["object"]["counted"] == true).count();
        assert_eq!(counted, 1, "m-{i} counted once across the kill: {of:?}");
    }
    eprintln!("{} events after dedup, {read} records on the topic", events.len());
}

#[test]
fn judges_come_and_go_and_each_message_is_still_counted_once() {
    let Some(broker) = broker() else { return };
    let keys = key_entry("k1");
    let names = Names::new("scale");
    let env = names.env(&broker);
    let mut first = Judge::start(&keys, &env);
    let mut edges: Vec<Service> = (0..3).map(|_| Service::start(&keys, &env)).collect();
    until_assigned(&[&first]);
    const MESSAGES: usize = 24;
    let ua = [("User-Agent", BROWSER)];
    let paths: Vec<String> = (0..MESSAGES).map(|i| open(&keys, &format!("s-{i}"))).collect();
    let round = |edges: &[Service], shift: usize| {
        for (i, path) in paths.iter().enumerate() {
            assert_eq!(edges[(i + shift) % 3].get(path, &ua).status, 200);
        }
    };
    // One judge, then two (partitions move to the new one), then one again
    // (the second leaves with SIGTERM): every message opened in each phase.
    round(&edges, 0);
    until_judged(&[&first], MESSAGES as u64);
    let mut second = Judge::start(&keys, &env);
    until_assigned(&[&first, &second]);
    round(&edges, 1);
    let (events, _) = events_on(&broker, &names.events, 2 * MESSAGES);
    assert_eq!(events.len(), 2 * MESSAGES);
    // The second judge replayed the first round to rebuild its partitions'
    // state; those hits were counted by the first.
    let hits = |j: &Judge| j.metric("waymark_hits_total");
    assert_eq!(hits(&first) + hits(&second), 2 * MESSAGES as u64, "hits counted once across the judges");
    assert!(second.metric("waymark_judge_rebuilds_total") > 0, "the second judge rebuilt what it took over");
    assert!(second.metric("waymark_judge_rebuilt_hits_total") > 0, "from the first round's hits");
    assert!(first.metric("waymark_judge_rebalances_total") > 0, "the first judge saw the second join");
    // Offsets are committed (every half second) once their events are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.metric("waymark_judge_commits_total") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(first.metric("waymark_judge_commits_total") > 0, "the first judge committed");
    // Incremental rebalancing: the first judge gave up only what moved.
    let first_log = log(&first.dir);
    assert!(first_log.contains("protocol=\"cooperative\""), "{first_log}");
    assert!(
        !first_log.lines().any(|l| l.contains("partitions revoked") && l.contains("revoked=[0, 1, 2")),
        "{first_log}"
    );
    assert!(second.stop().success());
    until_assigned(&[&first]);
    round(&edges, 2);
    let (events, read) = events_on(&broker, &names.events, 3 * MESSAGES);
    for edge in &mut edges {
        assert!(edge.stop().success());
    }
    assert!(first.stop().success());
    assert_eq!(events.len(), 3 * MESSAGES, "one event per hit after dedup ({read} records)");
    for i in 0..MESSAGES {
        let of: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["data"]["object"]["email"]["id"] == format!("s-{i}")).collect();
        let counted = of.iter().filter(|e| e["data"]["object"]["counted"] == true).count();
        assert_eq!((of.len(), counted), (3, 1), "s-{i} across two rebalances: {of:?}");
    }
}

#[test]
fn judge_without_the_kafka_mode_says_what_it_needs() {
    let cases: [(&str, Vec<(&str, &str)>); 2] =
        [("local mode", vec![]), ("no brokers", vec![("WAYMARK_JUDGE", "kafka")])];
    for (name, env) in cases {
        let out = waymark(&["judge"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("judge") && stderr.contains("kafka.brokers"), "{name}: {stderr}");
    }
}
