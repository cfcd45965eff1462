//! The second round of hardening (issue 18), each tried over real sockets
//! against the real binary, as an attacker or an unlucky operator would.

mod support;

use std::time::{Duration, Instant};

use support::*;
use waymark::destination::Destination;
use waymark::token::{self, Claims, Link, Target};

fn click(tenant: &str, url: &str) -> Claims {
    Claims {
        target: Target::Click(Link { index: 0, url: Destination::parse(url).unwrap(), trap: false }),
        tenant: tenant.into(),
        ..open_claims("m-hardening")
    }
}

fn get_on(svc: &Service, target: &str, host: &str) -> Response {
    raw(svc.addr, format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
}

/// A host with a trailing dot, a port, capitals or in absolute form is the
/// same host, and never reaches another tenant's tokens.
#[test]
fn a_host_in_any_spelling_stays_with_its_tenant() {
    let keys = key_entry("k1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waymark.toml");
    std::fs::write(&config, "[[tenants]]\nname = \"sender-a\"\nhosts = [\"t.sender-a.com\"]\n").unwrap();
    let svc = Service::start(&keys, &[("WAYMARK_CONFIG", config.to_str().unwrap())]);
    let default_token = token::seal(&ring(&keys), &click("", "https://default.example/")).unwrap();
    let a_token = token::seal(&ring(&keys), &click("sender-a", "https://sender-a.example/")).unwrap();
    let path = |t: &str| format!("/c/{t}");
    let cases = [
        // (request target, Host, token, expected Location or 404)
        (path(&default_token), "t.sender-a.com", &default_token, None),
        (path(&default_token), "t.sender-a.com.", &default_token, None),
        (path(&default_token), "T.SENDER-A.COM.:8080", &default_token, None),
        (path(&a_token), "t.sender-a.com.", &a_token, Some("https://sender-a.example/")),
        (path(&a_token), "T.Sender-A.com:443", &a_token, Some("https://sender-a.example/")),
        (path(&a_token), "other.example", &a_token, None),
        (path(&default_token), "other.example.", &default_token, Some("https://default.example/")),
        // RFC 9112 §3.2.2: in absolute form the target's authority names
        // the host, whatever Host says.
        (
            format!("http://t.sender-a.com.{}", path(&a_token)),
            "other.example",
            &a_token,
            Some("https://sender-a.example/"),
        ),
        (format!("http://t.sender-a.com{}", path(&default_token)), "other.example", &default_token, None),
    ];
    for (target, host, _, want) in cases {
        let r = get_on(&svc, &target, host);
        match want {
            Some(location) => {
                assert_eq!((r.status, r.header("location")), (302, Some(location)), "{target} on {host}")
            }
            None => assert_eq!((r.status, r.header("location")), (404, None), "{target} on {host}"),
        }
    }
}

/// Behind a trusted proxy that writes X-Forwarded-For, a `Forwarded` header
/// passed through from the client chooses neither the client's address (nor
/// so its network verdict) nor its unsubscribe rate limit.
#[test]
fn a_client_cannot_choose_its_address_with_another_header() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let open = token::seal(&ring(&keys), &open_claims("m-forwarded")).unwrap();
    let r = svc.get(
        &format!("/o/{open}"),
        &[
            ("X-Forwarded-For", "203.0.113.5"),
            ("Forwarded", "for=66.249.84.1"),
            ("User-Agent", "Mozilla/5.0"),
        ],
    );
    assert_eq!(r.status, 200);
    let events = svc.events(1);
    let object = &events[0]["data"]["object"];
    assert_eq!(object["ip_address"], "203.0.113.5", "{object}");

    let unsub =
        token::seal(&ring(&keys), &Claims { target: Target::Unsubscribe, ..open_claims("m-u") }).unwrap();
    let body = "List-Unsubscribe=One-Click";
    let mut statuses = Vec::new();
    for i in 0..40 {
        let req = format!(
            "POST /u/{unsub} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.5\r\n\
             Forwarded: for=198.51.100.{i}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        statuses.push(raw(svc.addr, req.as_bytes()).status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 30, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
}

/// No start-up error prints a secret: a key written the wrong way round, a
/// key without its colon, a bad Kafka property's value or a broken line
/// of the config file.
#[test]
fn start_up_errors_never_print_a_secret() {
    let secret = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tx";
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, format!("keys = [\"k1:{secret}\"\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("WAYMARK_KEYS", format!("{secret}:k1"))],
        vec![("WAYMARK_KEYS", format!("k1={secret}"))],
        vec![("WAYMARK_KEYS", format!("k1:{secret}"))],
        vec![("WAYMARK_CONFIG", bad_toml.to_str().unwrap().into())],
        vec![
            ("WAYMARK_KAFKA_BROKERS", "127.0.0.1:1".into()),
            ("WAYMARK_KAFKA_PROPERTIES", format!("sasl.password{secret}")),
        ],
        vec![
            ("WAYMARK_KAFKA_BROKERS", "127.0.0.1:1".into()),
            ("WAYMARK_KAFKA_PROPERTIES", format!("security.protocol={secret}")),
        ],
        vec![
            ("WAYMARK_KAFKA_BROKERS", "127.0.0.1:1".into()),
            ("WAYMARK_KAFKA_PROPERTIES", format!("sasl.pasword={secret}")),
        ],
        vec![
            ("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("WAYMARK_ADMIN_TOKEN", format!("{} {}", &secret[..8], &secret[8..])),
        ],
    ];
    let good_keys = key_entry("k1");
    for vars in cases {
        let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([("WAYMARK_DATA_DIR", data), ("WAYMARK_LISTEN", "127.0.0.1:0")]);
        if !env.iter().any(|(k, _)| *k == "WAYMARK_KEYS") {
            env.push(("WAYMARK_KEYS", &good_keys));
        }
        let out = waymark(&["serve"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{vars:?} started");
        assert!(!stderr.contains("S3cr3t"), "{vars:?} printed a secret: {stderr}");
        assert!(stderr.contains("setting") || stderr.contains("config file"), "{vars:?}: {stderr}");
    }
}

/// An admin token read from a file keeps its last new line; it is trimmed,
/// so the right bearer token works.
#[test]
fn an_admin_token_with_a_trailing_new_line_still_works() {
    let token = "admin-token-0123456789";
    let svc = Service::start(
        &key_entry("k1"),
        &[("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0"), ("WAYMARK_ADMIN_TOKEN", &format!("{token}\n"))],
    );
    let admin: std::net::SocketAddr = svc
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("admin (metrics, instrument API) on http://"))
        .unwrap()
        .parse()
        .unwrap();
    let body = r#"{"html": "<a href=\"https://example.com/\">x</a>", "message_id": "m"}"#;
    let req = format!(
        "POST /v1/instrument HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw(admin, req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// HTTP/2 clients that connect, settle their SETTINGS, answer PINGs and
/// never ask for anything are closed at the idle timeout, and while the
/// connection cap is full of them a real client still gets in.
#[test]
fn idle_http2_connections_are_closed_and_cannot_fill_the_cap() {
    let svc = Service::start(
        &key_entry("k1"),
        &[("WAYMARK_HEADER_READ_TIMEOUT_MS", "1000"), ("WAYMARK_MAX_CONNECTIONS", "20")],
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let addr = svc.addr;
    rt.block_on(async move {
        // 20 idle clients fill the cap; each runs its connection (which
        // answers the server's PINGs) until the server closes it.
        let mut idle = Vec::new();
        for _ in 0..20 {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let io = hyper_util::rt::TokioIo::new(stream);
            let (sender, conn) = hyper::client::conn::http2::handshake::<
                _,
                _,
                http_body_util::Empty<bytes::Bytes>,
            >(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
            idle.push((sender, tokio::spawn(conn)));
        }
        // A real client is served although the cap is full of idle ones.
        let started = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            raw(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        })
        .await
        .unwrap();
        assert_eq!(answer.status, 200);
        eprintln!("a real client was served after {:?} with the cap full", started.elapsed());
        // Every idle connection is closed by the server, well before this bound.
        for (_sender, conn) in idle {
            let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
            assert!(ended.is_ok(), "an idle HTTP/2 connection was still open after 20 s");
        }
    });
}
