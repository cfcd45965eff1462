//! Everything attackers and broken clients send, over real sockets, each
//! with its expected answer; then a property test that no request makes
//! `/c/` redirect anywhere but to a URL sealed for that host's tenant.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use support::*;
use waymark::destination::Destination;
use waymark::token::{self, Claims, Link, Target};

const SEALED: &str = "https://shop.example.com/landing?utm=mail";

fn click(url: &str, tenant: &str) -> Claims {
    Claims {
        target: Target::Click(Link { index: 0, url: Destination::parse(url).unwrap(), trap: false }),
        tenant: tenant.into(),
        ..open_claims("m-bad-input")
    }
}

/// What a case must get: a status, or the connection closed with no answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Status(u16),
    /// Either of two statuses (the protocol layer may answer either way).
    OneOf(u16, u16),
}

#[test]
fn a_table_of_bad_inputs_gets_clear_safe_answers() {
    let keys = key_entry("k1");
    let other = key_entry("k9");
    let svc = Service::start(&keys, &[("WAYMARK_MAX_HEADER_BYTES", "16384")]);
    let r = ring(&keys);
    let good = token::seal(&r, &click(SEALED, "")).unwrap();
    let good_open = token::seal(&r, &open_claims("m-bad-input")).unwrap();
    let unsub = token::seal(&r, &Claims { target: Target::Unsubscribe, ..open_claims("m") }).unwrap();
    let expired = token::seal(&r, &Claims { expires_at: Some(1), ..click(SEALED, "") }).unwrap();
    let other_key = token::seal(&ring(&other), &click("https://evil.example/", "")).unwrap();
    let other_tenant = token::seal(&r, &click("https://evil.example/", "tenant-b")).unwrap();
    let mut raw_good = URL_SAFE_NO_PAD.decode(&good).unwrap();
    let truncated = URL_SAFE_NO_PAD.encode(&raw_good[..raw_good.len() - 1]);
    let extended = format!("{good}AAAA");
    raw_good[20] ^= 0x01;
    let flipped = URL_SAFE_NO_PAD.encode(&raw_good);
    raw_good[20] ^= 0x01;
    raw_good[0] = 0x22;
    let version2 = URL_SAFE_NO_PAD.encode(&raw_good);
    let pct = |t: &str| t.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let long = |n: usize| "A".repeat(n);
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let with = |head: &str| format!("{head}\r\nHost: t.example\r\nConnection: close\r\n\r\n").into_bytes();

    let mut cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("empty pixel token", get("/o/"), Want::Status(200)),
        ("empty click token", get("/c/"), Want::Status(404)),
        ("bad base64 (click)", get("/c/!!notbase64!!"), Want::Status(404)),
        ("bad base64 (pixel)", get("/o/!!notbase64!!"), Want::Status(200)),
        ("padded base64", get(&format!("/c/{good}=")), Want::Status(404)),
        ("10 KB token", get(&format!("/c/{}", long(10_000))), Want::Status(404)),
        ("100 KB token", get(&format!("/c/{}", long(100_000))), Want::OneOf(431, 414)),
        ("flipped bit", get(&format!("/c/{flipped}")), Want::Status(404)),
        ("truncated", get(&format!("/c/{truncated}")), Want::Status(404)),
        ("extended", get(&format!("/c/{extended}")), Want::Status(404)),
        ("unknown key id", get(&format!("/c/{other_key}")), Want::Status(404)),
        ("version 2", get(&format!("/c/{version2}")), Want::Status(404)),
        ("another tenant's token", get(&format!("/c/{other_tenant}")), Want::Status(404)),
        ("open token on /c/", get(&format!("/c/{good_open}")), Want::Status(404)),
        ("unsubscribe token on /c/", get(&format!("/c/{unsub}")), Want::Status(404)),
        ("click token on /u/", get(&format!("/u/{good}")), Want::Status(404)),
        ("expired", get(&format!("/c/{expired}")), Want::Status(404)),
        ("percent-encoded token", get(&format!("/c/{}", pct(&good))), Want::Status(404)),
        ("double-encoded slash", get("/c/%252F%252Fevil.example"), Want::Status(404)),
        ("path traversal", get("/c/../../etc/passwd"), Want::Status(404)),
        ("encoded traversal", get("/c/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), Want::Status(404)),
        ("upper-case route", get(&format!("/C/{good}")), Want::Status(404)),
        ("double slash", get(&format!("//c/{good}")), Want::Status(404)),
        ("extra segment", get(&format!("/c/{good}/extra")), Want::Status(404)),
        ("query naming another URL", get(&format!("/c/{good}?url=https://evil.example/&next=//evil.example")), Want::Status(302)),
        ("gif suffix twice", get(&format!("/o/{good_open}.gif.gif")), Want::Status(200)),
        ("CRLF in path", get("/c/%0d%0aSet-Cookie:%20a=b"), Want::Status(404)),
        ("raw UTF-8 in path", "GET /c/токен HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n".as_bytes().to_vec(), Want::OneOf(404, 400)),
        ("invalid UTF-8 in path", [b"GET /c/\xff\xfe HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n".as_slice()].concat(), Want::OneOf(404, 400)),
        ("NUL in path", b"GET /c/a\0b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Want::Status(400)),
        ("space in target", b"GET /c/a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Want::Status(400)),
        ("missing Host", format!("GET /c/{good} HTTP/1.1\r\nConnection: close\r\n\r\n").into_bytes(), Want::Status(302)),
        ("HTTP/1.0", format!("GET /o/{good_open} HTTP/1.0\r\n\r\n").into_bytes(), Want::Status(200)),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), Want::Status(400)),
        ("lower-case method", with("get /healthz HTTP/1.1"), Want::OneOf(400, 405)),
        ("absurd method", with("FROBNICATE /c/x HTTP/1.1"), Want::Status(405)),
        ("huge method", with(&format!("{} /c/x HTTP/1.1", "X".repeat(5000))), Want::OneOf(400, 405)),
        ("TRACE", with("TRACE /c/x HTTP/1.1"), Want::Status(405)),
        ("OPTIONS *", with("OPTIONS * HTTP/1.1"), Want::Status(404)),
        ("CONNECT", with("CONNECT evil.example:443 HTTP/1.1"), Want::OneOf(400, 404)),
        ("DELETE a pixel", with(&format!("DELETE /o/{good_open} HTTP/1.1")), Want::Status(405)),
        ("chunked body on GET", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes(), Want::Status(200)),
        ("length body on GET", format!("GET /c/{good} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello").into_bytes(), Want::Status(302)),
        ("both length and chunked (smuggling)", format!("POST /u/{unsub} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), Want::OneOf(400, 200)),
        ("bad chunk size", format!("POST /u/{unsub} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(), Want::Status(400)),
        ("20 KB header", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n", long(20_000)).into_bytes(), Want::Status(431)),
        ("200 headers", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n", (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()).into_bytes(), Want::Status(431)),
        ("100 KB user agent", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n", long(100_000)).into_bytes(), Want::Status(431)),
        ("5 KB user agent", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n", long(5_000)).into_bytes(), Want::Status(200)),
        ("duplicated Host", format!("GET /c/{good} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n").into_bytes(), Want::OneOf(302, 400)),
        ("Host naming another site", format!("GET /c/{good} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").into_bytes(), Want::Status(302)),
        ("absolute-form target", format!("GET http://evil.example/c/{good} HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n").into_bytes(), Want::Status(302)),
        ("X-Forwarded-Host trick", format!("GET /c/{other_tenant} HTTP/1.1\r\nHost: t.example\r\nX-Forwarded-Host: tenant-b.example\r\nConnection: close\r\n\r\n").into_bytes(), Want::Status(404)),
        ("header without colon", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n").into_bytes(), Want::Status(400)),
        ("obs-fold header", format!("GET /o/{good_open} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n").into_bytes(), Want::OneOf(400, 200)),
        ("HEAD on a bad click", with("HEAD /c/bad HTTP/1.1"), Want::Status(404)),
        ("health with a query", get("/healthz?probe=1"), Want::Status(200)),
        ("unknown path", get("/wp-login.php"), Want::Status(404)),
        ("oversized unsubscribe body", format!("POST /u/{unsub} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{}", long(5000)).into_bytes(), Want::Status(413)),
    ];
    // Pipelining: two requests in one write, two answers in order.
    let pipelined = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /c/{good} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    cases.push(("pipelined (first answer)", pipelined.clone().into_bytes(), Want::Status(200)));

    assert!(cases.len() >= 50, "{} cases", cases.len());
    for (name, request, want) in &cases {
        let answer = try_raw(svc.addr, request);
        let status = answer.as_ref().map(|r| r.status);
        let ok = match (want, status) {
            (Want::Status(w), Some(s)) => *w == s,
            (Want::OneOf(a, b), Some(s)) => *a == s || *b == s,
            (_, None) => false,
        };
        assert!(ok, "{name}: wanted {want:?}, got {status:?}");
        if let Some(r) = &answer {
            if let Some(location) = r.header("location") {
                assert_eq!(location, SEALED, "{name}: redirected somewhere not sealed");
            }
            assert!(r.header("set-cookie").is_none(), "{name}: a cookie was set");
        }
    }
    // The pipelined second answer is the redirect.
    let both = raw_all(svc.addr, pipelined.as_bytes());
    assert_eq!(both.matches("HTTP/1.1 ").count(), 2, "{both}");
    assert!(both.contains(&format!("location: {SEALED}")));
    // Still alive and well after all of it.
    assert_eq!(svc.get("/healthz", &[]).status, 200);
}

/// Like `raw`, but a closed connection without an answer is `None`.
fn try_raw(addr: std::net::SocketAddr, request: &[u8]) -> Option<Response> {
    parse(raw_all(addr, request).as_bytes())
}

fn raw_all(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Requests built from pieces an attacker would try: valid tokens of every
/// kind and tenant, mutations of them, and noise, under random hosts.
fn request() -> impl Strategy<Value = (usize, Vec<(usize, u8)>, String, String)> {
    (0usize..6, proptest::collection::vec((0usize..200, any::<u8>()), 0..3), "[ -~]{0,40}", "[a-z.-]{0,20}")
}

#[test]
fn no_request_redirects_anywhere_not_sealed_for_its_tenant() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let r = ring(&keys);
    let tokens = [
        token::seal(&r, &click(SEALED, "")).unwrap(),
        token::seal(&r, &click("https://evil.example/", "other")).unwrap(),
        token::seal(&r, &open_claims("m")).unwrap(),
        token::seal(&ring(&key_entry("k1")), &click("https://evil.example/forged", "")).unwrap(),
        token::seal(&r, &Claims { expires_at: Some(1), ..click("https://evil.example/expired", "") })
            .unwrap(),
        String::new(),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
    runner
        .run(&request(), |(which, flips, noise, host)| {
            let mut bytes = tokens[which].clone().into_bytes();
            for (at, b) in &flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[*b as usize % 64];
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            let noise = noise.replace([' ', '#', '?', '%'], "");
            let path = if which == 5 { format!("/c/{noise}") } else { format!("/c/{text}") };
            let host = if host.is_empty() { "t.example".to_owned() } else { host };
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let answer = try_raw(svc.addr, req.as_bytes());
            if let Some(resp) = answer
                && let Some(location) = resp.header("location")
            {
                prop_assert_eq!(location, SEALED);
                prop_assert_eq!(which, 0, "only the valid default-tenant token redirects");
                prop_assert!(text == tokens[0], "a mutated token redirected");
            }
            Ok(())
        })
        .unwrap();
}
