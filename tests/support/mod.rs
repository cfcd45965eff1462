//! Test support: runs the real `waymark` binary on a free loopback port and
//! talks to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use waymark::keys::{Key, KeyId, KeyRing};
use waymark::token::{Claims, Target};

pub fn key_entry(kid: &str) -> String {
    Key::generate_entry(&KeyId::new(kid).unwrap())
}

pub fn ring(entries: &str) -> KeyRing {
    KeyRing::parse(entries).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Claims for an open sent a minute ago, so no prefetch rule applies.
pub fn open_claims(message_id: &str) -> Claims {
    Claims {
        target: Target::Open,
        tenant: String::new(),
        message_id: message_id.into(),
        recipient: Some("recipient@example.com".into()),
        sent_at: now() - 60,
        expires_at: None,
        tags: vec!["welcome".into()],
        meta: vec![("campaign".into(), "spring".into())],
    }
}

pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stdout: Vec<String>,
}

impl Service {
    /// Starts `waymark serve` with the given extra environment. Its log is
    /// kept in a file, read by [`Service::stderr`] and printed only if the
    /// test fails: the errors a fault test provokes on purpose (a broker
    /// down, a full disk) are not failures and do not belong in the output.
    pub fn start(keys: &str, env: &[(&str, &str)]) -> Service {
        Service::launch(keys, env)
    }

    /// The same as [`Service::start`]; the name says the test reads the log.
    pub fn start_with_stderr(keys: &str, env: &[(&str, &str)]) -> Service {
        Service::launch(keys, env)
    }

    /// The admin listener's address (`WAYMARK_ADMIN_LISTEN` set).
    pub fn admin_addr(&self) -> SocketAddr {
        self.stdout
            .iter()
            .find_map(|l| l.strip_prefix("admin (metrics, instrument API) on http://"))
            .expect("the admin address is printed")
            .parse()
            .unwrap()
    }

    /// The sum of a metric's samples on the admin listener.
    pub fn metric(&self, name: &str) -> u64 {
        metric_at(self.admin_addr(), name)
    }

    /// Sends the service a signal (`TERM`, `KILL`, `HUP`…) and returns at once.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// The service's log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn launch(keys: &str, env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waymark"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WAYMARK_LISTEN", "127.0.0.1:0")
            .env("WAYMARK_DATA_DIR", dir.path())
            .env("WAYMARK_FLUSH_INTERVAL_MS", "20")
            .env("WAYMARK_LOG", "warn")
            // One judge thread whatever the machine's cores, so events of
            // different messages keep their order; tests of the sharded
            // judge ask for more.
            .env("WAYMARK_JUDGE_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        if !keys.is_empty() {
            cmd.env("WAYMARK_KEYS", keys);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start waymark");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let addr = loop {
            let Some(line) = lines.next() else {
                let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                panic!("waymark exited before listening; its log:\n{log}");
            };
            let line = line.unwrap();
            stdout.push(line.clone());
            if let Some(rest) = line.strip_prefix("waymark listening on http://") {
                break rest.trim().parse().unwrap();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Service { child, addr, dir, stdout }
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Waits until the events file holds at least `n` events (10 s at most).
    pub fn events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = read_events(&self.events_path());
            if events.len() >= n || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send("GET", path, headers)
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        raw(self.addr, req.as_bytes())
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "waymark did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- waymark's log, for the failed test ---\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of an events file, each checked against
/// schema/event.schema.json: every event a test reads is.
pub fn read_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let event = serde_json::from_str(l).expect("every line of the events file is JSON");
            assert_schema_valid(schema(), &event);
            event
        })
        .collect()
}

/// The event schema, compiled once per test binary.
pub fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(event_schema)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes, reads until the server closes, parses one response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf).unwrap_or_else(|| panic!("no HTTP response in {:?}", String::from_utf8_lossy(&buf)))
}

pub fn parse(buf: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(at) = resp.parse(buf).ok()? else { return None };
    Some(Response {
        status: resp.code?,
        headers: resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
        body: buf[at..].to_vec(),
    })
}

/// The published JSON Schema for events, compiled.
pub fn event_schema() -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/event.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

pub fn assert_schema_valid(schema: &jsonschema::Validator, event: &serde_json::Value) {
    let errors: Vec<String> =
        schema.iter_errors(event).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "event does not match schema/event.schema.json: {errors:?}\n{event:#}");
}

/// Runs the `waymark` binary with arguments and environment, to completion.
pub fn waymark(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The shared test broker (`scripts/kafka-broker start`), or a loud failure
/// in CI; elsewhere the Kafka tests say they are skipped.
pub fn broker() -> Option<String> {
    match std::env::var("WAYMARK_TEST_KAFKA") {
        Ok(b) => Some(b),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must run the Kafka tests: WAYMARK_TEST_KAFKA is not set")
        }
        Err(_) => {
            eprintln!("SKIPPED: no broker; run `. $(scripts/kafka-broker start)` first");
            None
        }
    }
}

/// A consumer reading every partition of `topic` from its start, or `None`
/// if the topic has no partitions by `deadline`. Partitions are assigned,
/// not subscribed to: a group subscription to a topic made after the
/// consumer would see it only at the next metadata refresh, minutes later.
pub fn reader_from_start(
    broker: &str,
    topic: &str,
    deadline: Instant,
) -> Option<rdkafka::consumer::BaseConsumer> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        // Needed by assign too; no group is joined without a subscription.
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let partitions = loop {
        let found = consumer.fetch_metadata(Some(topic), Duration::from_secs(1)).ok().and_then(|m| {
            let t = m.topics().iter().find(|t| t.name() == topic)?;
            let ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            (t.error().is_none() && !ids.is_empty()).then_some(ids)
        });
        match found {
            Some(ids) => break ids,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            None => return None,
        }
    };
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    Some(consumer)
}

/// Sends process `pid` a signal (`TERM`, `KILL`, `HUP`, `STOP`…).
pub fn signal(pid: u32, sig: &str) {
    Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
}

/// The sum of a metric's samples on an admin listener's `/metrics`.
pub fn metric_at(admin: SocketAddr, name: &str) -> u64 {
    raw(admin, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
