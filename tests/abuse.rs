//! Abuse limits over real sockets: slow or silent clients are cut off at
//! the header read timeout, oversized request heads are refused, and the
//! connection cap holds against working clients but not idle ones.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Reads until the server closes; returns what it sent and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open past {limit:?}: {e}"),
        }
    }
    (out, started.elapsed())
}

#[test]
fn a_slowloris_client_is_cut_off_at_the_header_read_timeout() {
    let svc = Service::start(&key_entry("k1"), &[("WAYMARK_HEADER_READ_TIMEOUT_MS", "500")]);
    let mut s = TcpStream::connect(svc.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // One more header byte every 100 ms: never a complete head.
    let started = Instant::now();
    let mut cut_off = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"X").is_err() {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let closed = matches!(s.read(&mut probe), Ok(0));
        s.set_nonblocking(false).unwrap();
        if closed {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a client trickling header bytes held its connection for 10 s");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off only after {:?}", started.elapsed());
}

#[test]
fn silent_and_idle_keep_alive_connections_are_closed() {
    let svc = Service::start(&key_entry("k1"), &[("WAYMARK_HEADER_READ_TIMEOUT_MS", "400")]);
    // Connected, says nothing.
    let mut silent = TcpStream::connect(svc.addr).unwrap();
    let (_, took) = read_until_closed(&mut silent, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5));
    // One request, then idle on a keep-alive connection.
    let mut idle = TcpStream::connect(svc.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

#[test]
fn oversized_request_heads_are_refused() {
    let svc = Service::start(&key_entry("k1"), &[("WAYMARK_MAX_HEADER_BYTES", "8192")]);
    let big = "a".repeat(20_000);
    let mut s = TcpStream::connect(svc.addr).unwrap();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // The service is unharmed.
    assert_eq!(svc.get("/healthz", &[]).status, 200);
}

/// The cap holds against clients at work: two connections each in the
/// middle of a request (an unsubscribe whose body has not arrived) keep a
/// third waiting until one of them goes.
#[test]
fn the_connection_cap_holds_against_working_clients_and_frees_up() {
    let keys = key_entry("k1");
    let svc = Service::start(
        &keys,
        &[("WAYMARK_MAX_CONNECTIONS", "2"), ("WAYMARK_HEADER_READ_TIMEOUT_MS", "60000")],
    );
    let claims =
        waymark::token::Claims { target: waymark::token::Target::Unsubscribe, ..open_claims("m-cap") };
    let t = waymark::token::seal(&ring(&keys), &claims).unwrap();
    let mid_request = || {
        let mut s = TcpStream::connect(svc.addr).unwrap();
        let head = format!(
            "POST /u/{t} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s
    };
    let hold_a = mid_request();
    let hold_b = mid_request();
    std::thread::sleep(Duration::from_millis(200));
    // The kernel accepts the third connection, but waymark does not serve it.
    let mut third = TcpStream::connect(svc.addr).unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    assert!(third.read(&mut buf).is_err(), "served beyond the cap of 2");
    // Freeing one slot lets it through.
    drop(hold_a);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    drop(hold_b);
}

/// Clients doing nothing cannot fill the cap (issue 18): at the cap, the
/// connections with no request in flight are closed to make room.
#[test]
fn clients_doing_nothing_cannot_fill_the_cap() {
    let svc = Service::start(
        &key_entry("k1"),
        &[("WAYMARK_MAX_CONNECTIONS", "2"), ("WAYMARK_HEADER_READ_TIMEOUT_MS", "60000")],
    );
    let mut silent_a = TcpStream::connect(svc.addr).unwrap();
    let mut silent_b = TcpStream::connect(svc.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(svc.addr).unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (answer, took) = read_until_closed(&mut third, Duration::from_secs(20));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(took < Duration::from_secs(20), "served only when the silent ones timed out");
    // The silent ones were closed, not served.
    for s in [&mut silent_a, &mut silent_b] {
        let (said, _) = read_until_closed(s, Duration::from_secs(5));
        assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));
    }
}
