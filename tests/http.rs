//! The real binary over real sockets: pixel, redirect, bad tokens, methods,
//! events on disk (schema-valid), rotation and graceful shutdown.

mod support;

use support::*;
use waymark::destination::Destination;
use waymark::token::{self, Claims, Link, Target};

fn click_claims(message_id: &str, url: &str, index: u16) -> Claims {
    Claims {
        target: Target::Click(Link { index, url: Destination::parse(url).unwrap(), trap: false }),
        ..open_claims(message_id)
    }
}

const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";

#[test]
fn pixel_serves_a_transparent_gif_and_records_an_open() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let t = token::seal(&ring(&keys), &open_claims("msg-open-1")).unwrap();

    for path in [format!("/o/{t}"), format!("/o/{t}.gif")] {
        let r = svc.get(&path, &[("User-Agent", UA)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, waymark::edge::PIXEL);
        assert_eq!(r.header("content-type"), Some("image/gif"));
        assert_eq!(r.header("content-length"), Some("42"));
        assert_eq!(
            r.header("cache-control"),
            Some("no-store, no-cache, must-revalidate, private, max-age=0")
        );
        assert_eq!(r.header("pragma"), Some("no-cache"));
        assert_eq!(r.header("expires"), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    }

    let events = svc.events(2);
    assert_eq!(events.len(), 2);
    let schema = event_schema();
    let e = &events[0];
    assert_schema_valid(&schema, e);
    assert_eq!(e["type"], "email.opened");
    let o = &e["data"]["object"];
    assert_eq!(o["object"], "open");
    assert_eq!(o["email"]["id"], "msg-open-1");
    assert_eq!(o["email"]["recipient"], "recipient@example.com");
    assert_eq!(o["email"]["tenant"], "");
    assert_eq!(o["email"]["tags"], serde_json::json!(["welcome"]));
    assert_eq!(o["email"]["meta"], serde_json::json!({"campaign": "spring"}));
    assert_eq!(o["ip_address"], "127.0.0.1");
    assert_eq!(o["user_agent"], UA);
    assert_eq!(o["verdict"], "human");
    assert!(o.get("link").is_none());
    assert_ne!(events[0]["event_id"], events[1]["event_id"]);
}

#[test]
fn click_redirects_to_exactly_the_sealed_url_and_records_it() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let dest = "https://shop.example.com/spring?utm_source=mail&x=%20y#top";
    let t = token::seal(&ring(&keys), &click_claims("msg-click-1", dest, 4)).unwrap();

    let r = svc.get(&format!("/c/{t}"), &[("User-Agent", UA)]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(dest));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let events = svc.events(1);
    assert_schema_valid(&event_schema(), &events[0]);
    let o = &events[0]["data"]["object"];
    assert_eq!(events[0]["type"], "email.clicked");
    assert_eq!(o["link"], serde_json::json!({"index": 4, "url": dest}));
}

#[test]
fn head_answers_without_a_body_and_never_counts() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let r = ring(&keys);
    let open = token::seal(&r, &open_claims("msg-head")).unwrap();
    let click = token::seal(&r, &click_claims("msg-head", "https://example.com/", 0)).unwrap();

    let p = svc.send("HEAD", &format!("/o/{open}"), &[]);
    assert_eq!((p.status, p.body.len()), (200, 0));
    assert_eq!(p.header("content-length"), Some("42"));
    let c = svc.send("HEAD", &format!("/c/{click}"), &[]);
    assert_eq!(c.status, 302);
    assert_eq!(c.header("location"), Some("https://example.com/"));

    let events = svc.events(2);
    for e in &events {
        assert_schema_valid(&event_schema(), e);
        assert_eq!(e["data"]["object"]["counted"], false);
        assert!(e["data"]["object"]["reasons"].as_array().unwrap().contains(&"head".into()));
    }
}

#[test]
fn bad_tokens_get_a_gif_or_the_bad_link_page_and_no_event() {
    let keys = key_entry("k1");
    let other = key_entry("k9");
    let svc = Service::start(&keys, &[]);
    let r = ring(&keys);
    let good_open = token::seal(&r, &open_claims("m")).unwrap();
    let good_click = token::seal(&r, &click_claims("m", "https://example.com/", 0)).unwrap();
    let unknown_kid = token::seal(&ring(&other), &click_claims("m", "https://evil.example/", 0)).unwrap();
    let other_tenant = token::seal(
        &r,
        &Claims { tenant: "someone-else".into(), ..click_claims("m", "https://example.com/", 0) },
    )
    .unwrap();
    let mut flipped = good_click.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();

    // (case, token text, why it must fail)
    let cases: Vec<(&str, String)> = vec![
        ("bad base64", "!!!not-base64!!!".into()),
        ("empty token", String::new()),
        ("10 KB token", "A".repeat(10 * 1024)),
        ("unknown key id", unknown_kid),
        ("flipped character", flipped),
        ("truncated", good_click[..good_click.len() - 8].to_owned()),
        ("extended", format!("{good_click}AAAA")),
        ("token for another tenant", other_tenant),
        ("percent-encoded", format!("%{:02X}{}", good_click.as_bytes()[0], &good_click[1..])),
        ("path traversal", "../../etc/passwd".into()),
    ];
    for (case, text) in &cases {
        let c = svc.get(&format!("/c/{text}"), &[("User-Agent", UA)]);
        assert_eq!(c.status, 404, "{case}: click status");
        assert_eq!(c.header("location"), None, "{case}: a bad click token must not redirect");
        assert!(c.text().contains("This link is not valid"), "{case}");
        assert_eq!(c.header("content-type"), Some("text/html; charset=utf-8"));

        let p = svc.get(&format!("/o/{text}"), &[("User-Agent", UA)]);
        assert_eq!((p.status, p.body.as_slice()), (200, waymark::edge::PIXEL), "{case}: pixel");
    }
    // A token of one kind is refused on the other's route.
    assert_eq!(svc.get(&format!("/c/{good_open}"), &[]).status, 404);
    assert_eq!(svc.get(&format!("/o/{good_click}"), &[]).status, 200);

    // A good hit after all the bad ones is the only event.
    assert_eq!(svc.get(&format!("/o/{good_open}"), &[]).status, 200);
    let events = svc.events(1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let events_after = read_events(&svc.events_path());
    assert_eq!(events.len(), 1);
    assert_eq!(events_after.len(), 1, "bad tokens produced events: {events_after:#?}");
}

#[test]
fn a_configured_fallback_takes_bad_clicks_there_and_nowhere_else() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_FALLBACK_URL", "https://sender.example/help")]);
    let r = svc.get("/c/garbage", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://sender.example/help"));
}

#[test]
fn odd_requests_get_clear_answers() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let t = token::seal(&ring(&keys), &open_claims("m-odd")).unwrap();
    let mut request =
        format!("GET /o/{t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 ")
            .into_bytes();
    request.extend_from_slice(b"\xff\xfe\r\n\r\n");
    let non_utf8_ua = raw(svc.addr, &request);
    assert_eq!(non_utf8_ua.status, 200);
    let no_ua = svc.get(&format!("/o/{t}"), &[]);
    assert_eq!(no_ua.status, 200);

    let post_pixel = format!("/o/{t}");
    let cases: Vec<(&str, &str, u16, Option<&str>)> = vec![
        ("GET", "/", 404, None),
        ("GET", "/favicon.ico", 404, None),
        ("GET", "/o", 404, None),
        ("POST", &post_pixel, 405, Some("GET, HEAD")),
        ("DELETE", "/c/abc", 405, Some("GET, HEAD")),
        ("GET", "/healthz", 200, None),
        ("GET", "/readyz", 200, None),
    ];
    for (method, path, status, allow) in cases {
        let r = svc.send(method, path, &[]);
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(r.header("allow"), allow, "{method} {path}");
    }

    let events = svc.events(2);
    let uas: Vec<&serde_json::Value> = events.iter().map(|e| &e["data"]["object"]["user_agent"]).collect();
    assert!(uas.contains(&&serde_json::json!("Mozilla/5.0 \u{fffd}\u{fffd}")), "{uas:?}");
    assert!(uas.contains(&&serde_json::Value::Null), "{uas:?}");
    for e in &events {
        assert_schema_valid(&event_schema(), e);
    }
}

#[test]
fn rotation_keeps_old_links_working_until_their_key_is_removed() {
    let k1 = key_entry("k1");
    let k2 = key_entry("k2");
    let old_link = token::seal(&ring(&k1), &click_claims("m-rot", "https://example.com/old", 0)).unwrap();

    let rotated = Service::start(&format!("{k2},{k1}"), &[]);
    let r = rotated.get(&format!("/c/{old_link}"), &[]);
    assert_eq!((r.status, r.header("location")), (302, Some("https://example.com/old")));
    drop(rotated);

    let retired = Service::start(&k2, &[]);
    let r = retired.get(&format!("/c/{old_link}"), &[]);
    assert_eq!((r.status, r.header("location")), (404, None));
}

#[test]
fn sigterm_finishes_writing_every_event_and_exits_zero() {
    let keys = key_entry("k1");
    // A long flush interval: only the shutdown flush can write these.
    let mut svc = Service::start(&keys, &[("WAYMARK_FLUSH_INTERVAL_MS", "600000")]);
    let r = ring(&keys);
    for i in 0..50 {
        let t = token::seal(&r, &open_claims(&format!("m-term-{i}"))).unwrap();
        assert_eq!(svc.get(&format!("/o/{t}"), &[]).status, 200);
    }
    let status = svc.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(read_events(&svc.events_path()).len(), 50);
}

/// After SIGTERM with `shutdown_delay_ms`, `/readyz` answers 503
/// `draining` while hits are still answered (and recorded); then the
/// service stops as usual.
#[test]
fn during_the_shutdown_delay_readiness_says_draining_and_hits_are_still_served() {
    let keys = key_entry("k1");
    let mut svc = Service::start(&keys, &[("WAYMARK_SHUTDOWN_DELAY_MS", "3000")]);
    assert_eq!(svc.get("/readyz", &[]).status, 200);
    svc.signal("TERM");
    // The signal is handled asynchronously: readiness turns soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut ready = svc.get("/readyz", &[]);
    while ready.status != 503 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        ready = svc.get("/readyz", &[]);
    }
    assert_eq!((ready.status, ready.text().trim()), (503, "draining"));
    let t = token::seal(&ring(&keys), &open_claims("m-draining")).unwrap();
    assert_eq!(svc.get(&format!("/o/{t}"), &[]).status, 200, "still accepting while draining");
    assert!(svc.stop().success());
    let events = read_events(&svc.events_path());
    assert!(events.iter().any(|e| e["data"]["object"]["email"]["id"] == "m-draining"), "{events:?}");
}

#[test]
fn with_no_configuration_it_makes_a_dev_ring_and_prints_working_links() {
    let svc = Service::start("", &[]);
    let text = svc.stdout.join("\n");
    assert!(svc.dir.path().join("dev-keys").exists());
    let open = text.split_whitespace().find(|w| w.contains("/o/")).expect("an open link is printed");
    let click = text.split_whitespace().find(|w| w.contains("/c/")).expect("a click link is printed");
    let path = |url: &str| url.split_once(&svc.addr.to_string()).unwrap().1.to_owned();
    assert_eq!(svc.get(&path(open), &[]).body, waymark::edge::PIXEL);
    assert_eq!(svc.get(&path(click), &[]).header("location"), Some("https://example.com/"));
    assert_eq!(svc.events(2).len(), 2);
}

#[test]
fn the_healthcheck_command_probes_the_service() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let ok = waymark(&["healthcheck", "--url", &format!("http://{}/healthz", svc.addr)], &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = waymark(&["healthcheck", "--url", &format!("http://{}/nope", svc.addr)], &[]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    drop(svc);
    let down = waymark(&["healthcheck", "--url", "http://127.0.0.1:1/healthz"], &[]);
    assert!(!down.status.success());
}

/// README, Privacy: logs never carry addresses, user agents or request
/// bodies at `info`; nor does any log carry key material.
#[test]
fn logs_at_info_carry_no_address_user_agent_body_or_key() {
    let keys = key_entry("k1");
    let secret = keys.split_once(':').unwrap().1;
    let client = "198.51.100.237";
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 LogCanaryAgent/7";
    let recipient = "log-canary-recipient@example.com";
    let accepted_body = "note=accepted-body-canary&List-Unsubscribe=One-Click";
    let refused_body = "note=refused-body-canary";
    let mut svc = Service::start_with_stderr(
        &keys,
        &[("WAYMARK_LOG", "info"), ("WAYMARK_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let r = ring(&keys);
    let with_recipient = |claims: Claims| Claims { recipient: Some(recipient.into()), ..claims };
    let open = token::seal(&r, &with_recipient(open_claims("m-logs"))).unwrap();
    let click = token::seal(&r, &with_recipient(click_claims("m-logs", "https://example.com/", 0))).unwrap();
    let unsubscribe =
        token::seal(&r, &with_recipient(Claims { target: Target::Unsubscribe, ..open_claims("m-logs") }))
            .unwrap();
    let headers = [("X-Forwarded-For", client), ("User-Agent", ua)];
    assert_eq!(svc.get(&format!("/o/{open}"), &headers).status, 200);
    assert_eq!(svc.get(&format!("/c/{click}"), &headers).status, 302);
    // (body, status): one the service records, one it refuses.
    for (body, status) in [(accepted_body, 200), (refused_body, 400)] {
        let request = format!(
            "POST /u/{unsubscribe} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-Forwarded-For: {client}\r\n\
             User-Agent: {ua}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            svc.addr,
            body.len()
        );
        assert_eq!(raw(svc.addr, request.as_bytes()).status, status, "{body}");
    }
    // The events do carry the address and user agent: they reached waymark.
    let events = svc.events(3);
    assert_eq!(events.len(), 3, "{events:#?}");
    for e in &events {
        assert_eq!(
            (e["data"]["object"]["ip_address"].as_str(), e["data"]["object"]["user_agent"].as_str()),
            (Some(client), Some(ua))
        );
    }
    assert!(svc.stop().success());

    let log = svc.stderr();
    assert!(log.contains("stopped"), "the log is written at info: {log}");
    // (what, text that must not be in the log)
    let secrets = [
        ("client address", client),
        ("user agent", "LogCanaryAgent"),
        ("recipient", recipient),
        ("recorded request body", "accepted-body-canary"),
        ("refused request body", "refused-body-canary"),
        ("key secret", secret),
    ];
    for (what, text) in secrets {
        assert!(!log.contains(text), "the log carries the {what} {text:?}:\n{log}");
    }
}

#[test]
fn privacy_settings_reduce_what_events_keep() {
    let keys = key_entry("k1");
    type Check = fn(&serde_json::Value) -> bool;
    let cases: [(&[(&str, &str)], Check); 4] = [
        (&[("WAYMARK_IP_MODE", "truncated")], |o| o["ip_address"] == "127.0.0.0"),
        (&[("WAYMARK_IP_MODE", "none")], |o| o["ip_address"].is_null()),
        (
            &[
                ("WAYMARK_IP_MODE", "hashed"),
                ("WAYMARK_IP_HASH_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"),
            ],
            |o| o["ip_address"].as_str().is_some_and(|h| h.starts_with("hash:") && h.len() == 37),
        ),
        (&[("WAYMARK_KEEP_USER_AGENT", "false")], |o| {
            o["user_agent"].is_null() && o["ip_address"] == "127.0.0.1"
        }),
    ];
    for (env, check) in cases {
        let svc = Service::start(&keys, env);
        let t = token::seal(&ring(&keys), &open_claims("m-privacy")).unwrap();
        svc.get(&format!("/o/{t}"), &[("User-Agent", UA)]);
        let events = svc.events(1);
        assert_schema_valid(&event_schema(), &events[0]);
        assert!(check(&events[0]["data"]["object"]), "{env:?}: {:#}", events[0]);
    }
    let out = waymark(&["serve"], &[("WAYMARK_IP_MODE", "hashed"), ("WAYMARK_KEYS", &keys)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("setting ip_hash_key"));
    let out = waymark(&["serve"], &[("WAYMARK_IP_MODE", "masked"), ("WAYMARK_KEYS", &keys)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected full, truncated, hashed or none"));
}

/// The click is always redirected and the pixel always served, even when
/// no event can be recorded (every write to /dev/full fails); the failed
/// writes are counted and the service says it is degraded (the events
/// wait in memory, up to a bound, for the disk to take them).
#[test]
fn clicks_and_pixels_are_answered_when_no_event_can_be_recorded() {
    let keys = key_entry("k1");
    let svc = Service::start_with_stderr(
        &keys,
        &[("WAYMARK_EVENTS_FILE", "/dev/full"), ("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0")],
    );
    let r = ring(&keys);
    for i in 0..5 {
        let click =
            token::seal(&r, &click_claims(&format!("m-full-{i}"), "https://shop.example/sale?x=1", 0))
                .unwrap();
        let answer = svc.get(&format!("/c/{click}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]);
        assert_eq!((answer.status, answer.header("location")), (302, Some("https://shop.example/sale?x=1")));
        let pixel = token::seal(&r, &open_claims(&format!("m-full-{i}"))).unwrap();
        let answer = svc.get(&format!("/o/{pixel}"), &[]);
        assert_eq!((answer.status, answer.header("content-type")), (200, Some("image/gif")));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while svc.metric("waymark_events_file_write_errors_total") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(svc.metric("waymark_events_file_write_errors_total") > 0, "the failed writes are counted");
    let ready = svc.get("/readyz", &[]);
    assert!(ready.text().contains("events file unwritable"), "{}", ready.text());
}
