//! TLS on the real binary: SNI picks each tracking host's certificate,
//! ALPN offers HTTP/2, and a renewed certificate is served without a
//! restart. Certificates are generated here with rcgen.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use support::*;
use waymark::token;

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "waymark test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, issuer: rcgen::Issuer::new(params, key) }
}

/// Writes `NAME.pem` and `NAME.key` for `host`, with common name `cn`.
fn leaf(ca: &Ca, host: &str, cn: &str, dir: &Path, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    // Write to a temporary name and rename, as certificate renewers do.
    std::fs::write(dir.join(format!("{name}.key.tmp")), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem.tmp")), cert.pem()).unwrap();
    std::fs::rename(dir.join(format!("{name}.key.tmp")), dir.join(format!("{name}.key"))).unwrap();
    std::fs::rename(dir.join(format!("{name}.pem.tmp")), dir.join(format!("{name}.pem"))).unwrap();
}

fn client(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The TLS listener's address, as the service prints it.
fn https_addr(svc: &Service) -> std::net::SocketAddr {
    svc.stdout
        .iter()
        .find_map(|l| l.strip_prefix("waymark listening on https://"))
        .expect("the HTTPS address is printed")
        .parse()
        .unwrap()
}

/// Connects with SNI `host`, sends GET `path` over the protocol ALPN picks;
/// returns (certificate common name, ALPN protocol, status, body).
async fn fetch(
    addr: std::net::SocketAddr,
    ca: &Ca,
    host: &str,
    path: &str,
) -> (String, Option<Vec<u8>>, u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client(ca, &[b"h2", b"http/1.1"])
        .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    let der = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let cn = ["cert-a1", "cert-a2", "cert-b"]
        .into_iter()
        .find(|cn| der.windows(cn.len()).any(|w| w == cn.as_bytes()))
        .unwrap_or("?")
        .to_owned();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let req =
        hyper::Request::get(format!("https://{host}{path}")).body(Empty::<bytes::Bytes>::new()).unwrap();
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    (cn, alpn, status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_and_live_certificate_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    leaf(&ca, "t.sender-a.example", "cert-a1", dir.path(), "a");
    leaf(&ca, "t.sender-b.example", "cert-b", dir.path(), "b");
    let config = dir.path().join("waymark.toml");
    let d = dir.path().display();
    std::fs::write(
        &config,
        format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_reload_ms = 100\n\
             [[tls_certificates]]\nhosts = [\"t.sender-a.example\"]\ncert = \"{d}/a.pem\"\nkey = \"{d}/a.key\"\n\
             [[tls_certificates]]\nhosts = [\"t.sender-b.example\"]\ncert = \"{d}/b.pem\"\nkey = \"{d}/b.key\"\n"
        ),
    )
    .unwrap();
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[("WAYMARK_CONFIG", config.to_str().unwrap())]);
    let https = https_addr(&svc);
    let t = token::seal(&ring(&keys), &open_claims("m-tls")).unwrap();

    let (cn, alpn, status, body) = fetch(https, &ca, "t.sender-a.example", &format!("/o/{t}")).await;
    assert_eq!((cn.as_str(), alpn.as_deref(), status), ("cert-a1", Some(&b"h2"[..]), 200));
    assert_eq!(body, waymark::edge::PIXEL);
    let (cn, ..) = fetch(https, &ca, "t.sender-b.example", "/healthz").await;
    assert_eq!(cn, "cert-b");
    assert_eq!(svc.events(1).len(), 1, "the pixel over HTTP/2 recorded its open");

    // Renew A's certificate on disk; within a few reload periods it is served.
    leaf(&ca, "t.sender-a.example", "cert-a2", dir.path(), "a");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (cn, ..) = fetch(https, &ca, "t.sender-a.example", "/healthz").await;
        if cn == "cert-a2" {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The plain listener keeps working beside it.
    assert_eq!(svc.get("/healthz", &[]).status, 200);
}

#[test]
fn tls_misconfiguration_fails_at_start() {
    let out =
        waymark(&["serve"], &[("WAYMARK_TLS_LISTEN", "127.0.0.1:0"), ("WAYMARK_KEYS", &key_entry("k1"))]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("setting WAYMARK_TLS_LISTEN = \"127.0.0.1:0\" is invalid: expected a certificate too")
    );
    let out = waymark(
        &["serve"],
        &[
            ("WAYMARK_TLS_LISTEN", "127.0.0.1:0"),
            ("WAYMARK_TLS_CERT", "/nonexistent/cert.pem"),
            ("WAYMARK_TLS_KEY", "/nonexistent/key.pem"),
            ("WAYMARK_KEYS", &key_entry("k1")),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read certificate /nonexistent/cert.pem"));
}

/// A client that opens a TLS connection and stalls in the handshake (sends
/// nothing, or half a ClientHello) is closed at `header_read_timeout_ms`:
/// a handshake is no way to hold a connection.
#[test]
fn a_stalled_tls_handshake_is_closed_at_the_header_read_timeout() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    leaf(&ca(), "t.sender-a.example", "cert-a1", dir.path(), "a");
    let config = dir.path().join("waymark.toml");
    let d = dir.path().display();
    std::fs::write(
        &config,
        format!(
            "tls_listen = \"127.0.0.1:0\"\n\
             [[tls_certificates]]\nhosts = [\"t.sender-a.example\"]\ncert = \"{d}/a.pem\"\nkey = \"{d}/a.key\"\n"
        ),
    )
    .unwrap();
    let svc = Service::start(
        &key_entry("k1"),
        &[("WAYMARK_CONFIG", config.to_str().unwrap()), ("WAYMARK_HEADER_READ_TIMEOUT_MS", "500")],
    );
    let https = https_addr(&svc);
    // A TLS record header announcing a ClientHello of 512 bytes, and 4 of them.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    for (name, sent) in [("nothing", &[][..]), ("half a ClientHello", half_hello)] {
        let mut conn = std::net::TcpStream::connect(https).unwrap();
        conn.write_all(sent).unwrap();
        // Far beyond the timeout: only a server that never closes reaches it.
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 256];
        let closed = loop {
            match conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // an alert before closing
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "{name}: the stalled handshake was not closed");
    }
}
