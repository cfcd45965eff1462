//! The admin listener over real sockets: Prometheus metrics, the
//! instrument API and its errors; and tenants on the public listener.

mod support;

use std::net::SocketAddr;

use support::*;
use waymark::destination::Destination;
use waymark::token::{self, Claims, Link, Target};

const TOKEN: &str = "admin-token-0123456789";

fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

fn start(extra: &[(&str, &str)]) -> (Service, String) {
    let keys = key_entry("k1");
    let mut env = vec![("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0"), ("WAYMARK_ADMIN_TOKEN", TOKEN)];
    env.extend_from_slice(extra);
    (Service::start(&keys, &env), keys)
}

#[test]
fn prometheus_scrapes_metrics_from_the_admin_listener_only() {
    let (svc, keys) = start(&[]);
    let t = token::seal(&ring(&keys), &open_claims("m-metrics")).unwrap();
    svc.get(&format!("/o/{t}"), &[("User-Agent", "Mozilla/5.0 (Macintosh)")]);
    svc.get("/c/forged", &[]);
    svc.events(1);
    let admin = svc.admin_addr();
    let scrape = call(admin, "GET", "/metrics", &[], b"");
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = scrape.text();
    for want in [
        "waymark_http_requests_total{route=\"pixel\",status=\"200\"} 1",
        "waymark_http_requests_total{route=\"click\",status=\"404\"} 1",
        "waymark_token_failures_total{reason=\"encoding\"} 1",
        "waymark_hits_total{kind=\"open\",verdict=\"human\",counted=\"true\"} 1",
        "waymark_http_request_duration_seconds_bucket{",
        "waymark_queue_depth 0",
        "waymark_ua_cache_misses_total 1",
        "waymark_events_published_total 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains(&keys.split(':').nth(1).unwrap()[..20]), "no secret in metrics");
    assert_eq!(svc.get("/metrics", &[]).status, 404, "never on the public listener");
}

#[test]
fn the_instrument_api_rewrites_html_and_refuses_bad_calls_clearly() {
    let (svc, keys) = start(&[("WAYMARK_ADMIN_MAX_BODY_BYTES", "4096")]);
    let admin = svc.admin_addr();
    let auth = format!("Bearer {TOKEN}");
    let json = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let body = serde_json::json!({
        "html": "<html><body><p>Hi <a href=\"https://example.com/a?x=1&amp;y=2\">there</a></p></body></html>",
        "message_id": "m-api", "recipient": "r@example.com", "tags": ["api"], "meta": {"k": "v"},
        "base_url": "https://t.sender.example", "sent_at": "2026-11-24T09:30:00Z"
    })
    .to_string();
    let ok = call(admin, "POST", "/v1/instrument", &json, body.as_bytes());
    assert_eq!(ok.status, 200, "{}", ok.text());
    let out: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    let html = out["html"].as_str().unwrap();
    let token_text = html.split("https://t.sender.example/c/").nth(1).unwrap().split('"').next().unwrap();
    let claims = token::open(&ring(&keys), token_text, 0).unwrap().into_claims();
    assert_eq!(claims.meta, [("k".to_owned(), "v".to_owned())]);
    match claims.target {
        Target::Click(link) => assert_eq!(link.url.as_str(), "https://example.com/a?x=1&y=2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out["links"], 1);
    assert_eq!(
        out["headers"][1],
        serde_json::json!({"name": "List-Unsubscribe-Post", "value": "List-Unsubscribe=One-Click"})
    );

    let big = format!("{{\"html\": \"{}\", \"message_id\": \"m\"}}", "x".repeat(5000));
    let cases: Vec<(&str, Vec<(&str, &str)>, &[u8], u16, &str)> = vec![
        ("no token", vec![("Content-Type", "application/json")], body.as_bytes(), 401, "bearer token"),
        (
            "wrong token",
            vec![("Content-Type", "application/json"), ("Authorization", "Bearer nope")],
            body.as_bytes(),
            401,
            "bearer token",
        ),
        (
            "not JSON",
            vec![("Content-Type", "text/html"), ("Authorization", &auth)],
            body.as_bytes(),
            415,
            "application/json",
        ),
        ("too large", json.to_vec(), big.as_bytes(), 413, "admin_max_body_bytes (4096 bytes)"),
        ("broken JSON", json.to_vec(), b"{\"html\":", 400, "not a valid instrument request"),
        ("missing field", json.to_vec(), b"{\"html\": \"<p>x</p>\"}", 400, "missing field `message_id`"),
        (
            "unknown field",
            json.to_vec(),
            b"{\"html\": \"\", \"message_id\": \"m\", \"colour\": 1}",
            400,
            "unknown field `colour`",
        ),
        (
            "unknown tenant",
            json.to_vec(),
            b"{\"html\": \"\", \"message_id\": \"m\", \"tenant\": \"nobody\"}",
            422,
            "tenant \"nobody\" is not configured",
        ),
        (
            "bad base_url",
            json.to_vec(),
            b"{\"html\": \"\", \"message_id\": \"m\", \"base_url\": \"ftp://x\"}",
            422,
            "base_url",
        ),
    ];
    for (case, headers, body, status, says) in cases {
        let r = call(admin, "POST", "/v1/instrument", &headers, body);
        assert_eq!(r.status, status, "{case}: {}", r.text());
        let err: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(err["error"].as_str().unwrap().contains(says), "{case}: {err}");
    }
    assert_eq!(call(admin, "GET", "/v1/instrument", &json, b"").header("allow"), Some("POST"));
    assert_eq!(svc.send("POST", "/v1/instrument", &[]).status, 404, "never on the public listener");
}

#[test]
fn the_admin_api_is_rate_limited_per_client() {
    let (svc, _keys) = start(&[("WAYMARK_ADMIN_RATE_PER_MINUTE", "3")]);
    let admin = svc.admin_addr();
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let body = br#"{"html": "<p>hi</p>", "message_id": "m-rate"}"#;
    // (call within the minute, status, Retry-After)
    let cases = [(1, 200, None), (2, 200, None), (3, 200, None), (4, 429, Some("60")), (5, 429, Some("60"))];
    for (n, status, retry_after) in cases {
        let r = call(admin, "POST", "/v1/instrument", &headers, body);
        assert_eq!((r.status, r.header("retry-after")), (status, retry_after), "call {n}: {}", r.text());
    }
    // Only the API is limited: Prometheus still scrapes.
    assert_eq!(call(admin, "GET", "/metrics", &[], b"").status, 200);
}

#[test]
fn without_a_token_the_instrument_api_is_off() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0")]);
    let r = call(svc.admin_addr(), "POST", "/v1/instrument", &[("Content-Type", "application/json")], b"{}");
    assert_eq!(r.status, 403);
    assert_eq!(call(svc.admin_addr(), "GET", "/metrics", &[], b"").status, 200);
}

/// The service with the admin API on, and `toml` as its config file (kept
/// alive by the returned handle).
fn with_tenants(global: &str, toml: &str) -> (Service, tempfile::NamedTempFile) {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut config, toml.as_bytes()).unwrap();
    let env = [
        ("WAYMARK_CONFIG", config.path().to_str().unwrap()),
        ("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0"),
        ("WAYMARK_ADMIN_TOKEN", TOKEN),
    ];
    (Service::start(global, &env), config)
}

#[test]
fn tenants_own_their_hosts_keys_and_defaults() {
    let global = key_entry("k1");
    let a_keys = key_entry("ka");
    let (svc, _config) = with_tenants(
        &global,
        &format!(
            "[[tenants]]\nname = \"a\"\nhosts = [\"t.sender-a.example\"]\nkeys = [\"{a_keys}\"]\nclicks = false\n\
             [[tenants]]\nname = \"b\"\nhosts = [\"t.sender-b.example\"]\nfallback_url = \"https://sender-b.example/\"\n"
        ),
    );
    let click = |tenant: &str| Claims {
        target: Target::Click(Link {
            index: 0,
            url: Destination::parse("https://example.com/x").unwrap(),
            trap: false,
        }),
        tenant: tenant.into(),
        ..open_claims("m-tenant")
    };
    let a_token = token::seal(&ring(&a_keys), &click("a")).unwrap();
    // Each request names its tracking host in the Host header.
    let a_on_a = raw(
        svc.addr,
        format!("GET /c/{a_token} HTTP/1.1\r\nHost: t.sender-a.example\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!((a_on_a.status, a_on_a.header("location")), (302, Some("https://example.com/x")));
    let a_on_b = raw(
        svc.addr,
        format!("GET /c/{a_token} HTTP/1.1\r\nHost: t.sender-b.example:8080\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(
        (a_on_b.status, a_on_b.header("location")),
        (302, Some("https://sender-b.example/")),
        "B's fallback, never A's destination"
    );
    // Sealed with the global ring for tenant a: A's own ring does not open it.
    let wrong_ring = token::seal(&ring(&global), &click("a")).unwrap();
    let r = raw(
        svc.addr,
        format!("GET /c/{wrong_ring} HTTP/1.1\r\nHost: t.sender-a.example\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 404);

    // The instrument API applies tenant a's defaults: no click tracking.
    let auth = format!("Bearer {TOKEN}");
    let r = call(
        svc.admin_addr(),
        "POST",
        "/v1/instrument",
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        br#"{"html": "<body><a href=\"https://example.com/\">x</a></body>", "message_id": "m", "tenant": "a"}"#,
    );
    let out: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let html = out["html"].as_str().unwrap();
    assert!(
        html.contains("href=\"https://example.com/\"") && html.contains("https://t.sender-a.example/o/"),
        "{html}"
    );

    let events = svc.events(1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["object"]["email"]["tenant"], "a");
}

#[test]
fn unknown_hosts_can_be_rejected() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_UNKNOWN_HOSTS", "reject")]);
    let click = Claims {
        target: Target::Click(Link {
            index: 0,
            url: Destination::parse("https://example.com/").unwrap(),
            trap: false,
        }),
        ..open_claims("m-unknown")
    };
    let t = token::seal(&ring(&keys), &click).unwrap();
    assert_eq!(svc.get(&format!("/c/{t}"), &[]).status, 404);
}

/// Replaces every token in `text` with the claims it opens to, so two
/// mintings of one message compare equal whatever their nonces.
fn opened(text: &str, keys: &waymark::keys::KeyRing) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = ["/o/", "/c/", "/u/"].iter().filter_map(|p| rest.find(p)).min() {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(tail.len());
        let claims = token::open(keys, &tail[..end], 0).map(|t| format!("{:?}", t.claims()));
        out.push_str(&claims.unwrap_or_else(|e| format!("<{e:?}>")));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Issue 15: `waymark rewrite` and `POST /v1/instrument` mint one message
/// the same way: the tenant's defaults, every tracking host of the tenant
/// left alone, one `sent_at` rule.
#[test]
fn rewrite_and_the_api_mint_the_same_message() {
    let global = key_entry("k1");
    let a_keys = key_entry("ka");
    let (svc, config) = with_tenants(
        &global,
        &format!(
            "[[tenants]]\nname = \"a\"\nhosts = [\"t.sender-a.example\", \"Links.Sender-A.example.\"]\nkeys = [\"{a_keys}\"]\nunsubscribe = false\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config.path().to_str().unwrap();
    let html = "<html><body><p><a href=\"https://example.com/spring?utm=1\">spring</a> \
                <a href=\"https://links.sender-a.example/already\">tracked</a> \
                <a href=\"https://t.sender-a.example/c/x\">tracked too</a></p></body></html>";
    let sent_at = "2026-11-24T09:30:00Z";
    let request = serde_json::json!({
        "html": html, "message_id": "m-drift", "tenant": "a", "sent_at": sent_at,
        "recipient": "r@example.com", "tags": ["welcome"], "meta": {"campaign": "spring"},
    });
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let api = call(svc.admin_addr(), "POST", "/v1/instrument", &headers, request.to_string().as_bytes());
    assert_eq!(api.status, 200, "{}", api.text());
    let api: serde_json::Value = serde_json::from_slice(&api.body).unwrap();

    let headers_file = dir.path().join("headers.txt");
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["rewrite", "--tenant", "a", "--message-id", "m-drift", "--sent-at", sent_at])
        .args(["--recipient", "r@example.com", "--tag", "welcome", "--meta", "campaign=spring"])
        .args(["--headers", headers_file.to_str().unwrap()])
        .env_clear()
        .env("WAYMARK_CONFIG", config)
        .env("WAYMARK_KEYS", &global)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    cli.stdin.take().unwrap().write_all(html.as_bytes()).unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success());
    let cli_html = String::from_utf8(out.stdout).unwrap();

    let a_ring = ring(&a_keys);
    assert_eq!(opened(&cli_html, &a_ring), opened(api["html"].as_str().unwrap(), &a_ring));
    let api_headers: String = api["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}: {}\n", h["name"].as_str().unwrap(), h["value"].as_str().unwrap()))
        .collect();
    let cli_headers = std::fs::read_to_string(&headers_file).unwrap();
    assert_eq!(opened(&cli_headers, &a_ring), opened(&api_headers, &a_ring));
    // Both left the tenant's second host alone and took its defaults.
    assert!(cli_html.contains("href=\"https://links.sender-a.example/already\""), "{cli_html}");
    assert!(!cli_html.contains("/u/"), "tenant a tracks no unsubscribes: {cli_html}");

    // One sent_at rule: before 1970 is refused by both.
    let early = serde_json::json!({"html": html, "message_id": "m", "tenant": "a", "sent_at": "1969-12-31T23:00:00Z"});
    let api = call(svc.admin_addr(), "POST", "/v1/instrument", &headers, early.to_string().as_bytes());
    assert_eq!(api.status, 422);
    assert!(api.text().contains("before 1970"), "{}", api.text());
    let cli = waymark(
        &["sign", "open", "--message-id", "m", "--sent-at", "1969-12-31T23:00:00Z"],
        &[("WAYMARK_KEYS", &global)],
    );
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("before 1970"));
}
