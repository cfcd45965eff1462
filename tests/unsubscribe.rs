//! RFC 8058 one-click unsubscribe over the real binary.

mod support;

use support::*;
use waymark::token::{self, Claims, Target};

fn unsubscribe_claims(message_id: &str) -> Claims {
    Claims { target: Target::Unsubscribe, ..open_claims(message_id) }
}

fn post(svc: &Service, path: &str, content_type: &str, body: &[u8]) -> Response {
    raw(svc.addr, &post_request(svc, path, content_type, body))
}

/// A whole POST request, head and body, on a connection of its own.
fn post_request(svc: &Service, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        svc.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[test]
fn one_click_post_unsubscribes_once_and_get_never_does() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let t = token::seal(&ring(&keys), &unsubscribe_claims("m-unsub")).unwrap();
    let path = format!("/u/{t}");

    // A scanner following the link: a page, no event.
    let page = svc.get(&path, &[("User-Agent", "Mozilla/5.0 (compatible; LinkScanner)")]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<form method=\"post\""));
    assert!(page.text().contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    assert!(page.header("set-cookie").is_none());

    let first = post(&svc, &path, "application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click");
    assert_eq!(first.status, 200);
    assert!(first.text().contains("You are unsubscribed"));
    assert!(first.header("location").is_none() && first.header("set-cookie").is_none());
    let again = post(&svc, &path, "application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click");
    assert_eq!(again.status, 200, "a repeat is answered the same way");

    let events = svc.events(2);
    assert_eq!(events.len(), 2, "GET recorded nothing: {events:#?}");
    let schema = event_schema();
    for e in &events {
        assert_schema_valid(&schema, e);
        assert_eq!(e["type"], "email.unsubscribed");
        assert_eq!(e["data"]["object"]["object"], "unsubscribe");
    }
    assert_eq!(events[0]["data"]["object"]["counted"], true);
    assert_eq!(events[1]["data"]["object"]["counted"], false);
    assert!(events[1]["data"]["object"]["reasons"].as_array().unwrap().contains(&"repeat".into()));
}

#[test]
fn bad_unsubscribe_requests_get_clear_answers_and_no_event() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let r = ring(&keys);
    let good = format!("/u/{}", token::seal(&r, &unsubscribe_claims("m-bad")).unwrap());
    let open_token = format!("/u/{}", token::seal(&r, &open_claims("m-bad")).unwrap());
    let form = "application/x-www-form-urlencoded";
    let big = vec![b'a'; 10_000];
    let cases: Vec<(&str, &str, &[u8], u16, &str)> = vec![
        (
            "forged token",
            "/u/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"List-Unsubscribe=One-Click",
            404,
            "This link is not valid",
        ),
        ("open token on /u/", &open_token, b"List-Unsubscribe=One-Click", 404, "This link is not valid"),
        ("wrong body", &good, b"unsubscribe=yes", 400, "List-Unsubscribe=One-Click"),
        ("empty body", &good, b"", 400, "List-Unsubscribe=One-Click"),
        ("body over the limit", &good, &big, 413, "larger than"),
    ];
    for (case, path, body, status, says) in cases {
        let resp = post(&svc, path, form, body);
        assert_eq!(resp.status, status, "{case}");
        assert!(resp.text().contains(says), "{case}: {}", resp.text());
    }
    // Chunked, with no length announced, and over the limit.
    let mut chunked = format!(
        "POST {good} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Type: {form}\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 2000, "b".repeat(2000)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(svc.addr, &chunked).status, 413);
    let delete = svc.send("DELETE", &good, &[]);
    assert_eq!((delete.status, delete.header("allow")), (405, Some("GET, HEAD, POST")));
    assert_eq!(svc.send("POST", "/o/x", &[]).header("allow"), Some("GET, HEAD"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(read_events(&svc.events_path()).is_empty(), "no event from a refused request");
}

#[test]
fn unsubscribe_is_rate_limited_per_client_but_pixels_never_are() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_UNSUBSCRIBE_RATE_PER_MINUTE", "3")]);
    let r = ring(&keys);
    let path = format!("/u/{}", token::seal(&r, &unsubscribe_claims("m-rate")).unwrap());
    let statuses: Vec<u16> = (0..5).map(|_| svc.get(&path, &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let limited = post(&svc, &path, "application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click");
    assert_eq!((limited.status, limited.header("retry-after")), (429, Some("60")));
    let pixel = format!("/o/{}", token::seal(&r, &open_claims("m-rate")).unwrap());
    assert!((0..20).all(|_| svc.get(&pixel, &[]).status == 200), "pixels are never limited");
}

const ONE_CLICK: &[u8] = b"List-Unsubscribe=One-Click";
const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn an_unsubscribe_the_sink_cannot_record_is_answered_503_never_confirmed() {
    let keys = key_entry("k1");
    // Every write to /dev/full fails with ENOSPC.
    let svc = Service::start_with_stderr(&keys, &[("WAYMARK_EVENTS_FILE", "/dev/full")]);
    let path = format!("/u/{}", token::seal(&ring(&keys), &unsubscribe_claims("m-full")).unwrap());
    let r = post(&svc, &path, FORM, ONE_CLICK);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("10")));
    assert!(
        r.text().contains("did not go through") && !r.text().contains("You are unsubscribed"),
        "{}",
        r.text()
    );
    assert!(r.header("content-security-policy").is_some());
    assert_eq!(svc.get(&path, &[]).status, 200, "the page itself is still shown");
    assert!(svc.stderr().contains("an unsubscribe was NOT recorded"), "{}", svc.stderr());
}

/// SIGKILL, at once.
fn kill(svc: &mut Service) {
    svc.signal("KILL");
    svc.child.wait().unwrap();
}

#[test]
fn a_sigkill_right_after_the_confirmation_loses_no_unsubscribe() {
    let keys = key_entry("k1");
    // Nothing is written by the flush interval during the test: only the
    // unsubscribe's own sync can have put it on disk.
    let mut svc = Service::start(&keys, &[("WAYMARK_FLUSH_INTERVAL_MS", "3600000")]);
    let path = format!("/u/{}", token::seal(&ring(&keys), &unsubscribe_claims("m-kill")).unwrap());
    assert_eq!(post(&svc, &path, FORM, ONE_CLICK).status, 200);
    kill(&mut svc);
    let events = read_events(&svc.events_path());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "email.unsubscribed");
}

#[test]
fn a_sigkill_right_after_the_confirmation_loses_no_unsubscribe_with_kafka() {
    let keys = key_entry("k1");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("127.0.0.1:{port}");
    let mut svc = Service::start_with_stderr(
        &keys,
        &[
            ("WAYMARK_FLUSH_INTERVAL_MS", "3600000"),
            ("WAYMARK_SPOOL_FSYNC_MS", "3600000"),
            ("WAYMARK_KAFKA_BROKERS", &nowhere),
        ],
    );
    let path = format!("/u/{}", token::seal(&ring(&keys), &unsubscribe_claims("m-kill-kafka")).unwrap());
    assert_eq!(post(&svc, &path, FORM, ONE_CLICK).status, 200);
    kill(&mut svc);
    let status = waymark(
        &["spool", "status"],
        &[
            ("WAYMARK_DATA_DIR", svc.dir.path().to_str().unwrap()),
            ("WAYMARK_KEYS", &keys),
            ("WAYMARK_KAFKA_BROKERS", &nowhere),
        ],
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pending_records"], 1, "the unsubscribe is in the spool: {status}");
}

/// A request in flight when SIGTERM arrives is finished (within
/// `shutdown_grace_ms`) and its unsubscribe recorded before the process
/// exits: here the client is still sending the body when the signal comes.
#[test]
fn an_unsubscribe_in_flight_at_sigterm_is_finished_and_recorded() {
    use std::io::{Read as _, Write as _};
    let keys = key_entry("k1");
    let mut svc = Service::start(&keys, &[]);
    let path = format!("/u/{}", token::seal(&ring(&keys), &unsubscribe_claims("m-in-flight")).unwrap());
    let request = post_request(&svc, &path, FORM, ONE_CLICK);
    // All but the body's last bytes now, the rest after the signal.
    let (now, later) = request.split_at(request.len() - (ONE_CLICK.len() - 5));
    let mut conn = std::net::TcpStream::connect(svc.addr).unwrap();
    conn.write_all(now).unwrap();
    // The head is read once the service answers another request after it
    // on a new connection: by then this one is being served.
    assert_eq!(svc.get("/healthz", &[]).status, 200);
    svc.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    conn.write_all(later).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    let r = parse(&answer).expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(svc.stop().success());
    let events = read_events(&svc.events_path());
    assert!(events.iter().any(|e| e["type"] == "email.unsubscribed"), "{events:?}");
}
