//! The HTTP edge: routes a request, answers it at once, and hands the hit to
//! the pipeline.
//!
//! This module must never wait on the pipeline or a sink: recording is a
//! non-blocking hand-off whose failure is counted, never shown to the
//! client. A valid click is always redirected; a bad token never redirects
//! anywhere the request could have chosen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method as HttpMethod, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use ipnet::IpNet;
use time::OffsetDateTime;

use crate::config::{Tenant, UnknownHosts};
use crate::destination::Destination;
use crate::health::{Degraded, Health, Readiness};
use crate::hit::{self, Hit, Method};
use crate::keys::KeyRing;
use crate::metrics::{Metrics, ReasonLabels};
use crate::pipeline::Recorder;
use crate::ratelimit::ClientLimit;
use crate::token::{self, Kind, OpenError, Token};

pub type Body = Full<Bytes>;

/// The classic 42-byte 1x1 GIF whose one pixel is the transparent colour
/// (`R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7`).
pub const PIXEL: &[u8] = &[
    b'G', b'I', b'F', b'8', b'9', b'a', 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x01, 0x44, 0x00, 0x3b,
];

/// What a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Pixel(&'a str),
    Click(&'a str),
    Unsubscribe(&'a str),
    Healthz,
    Readyz,
    NotFound,
}

impl Route<'_> {
    /// The route's name in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Pixel(_) => "pixel",
            Route::Click(_) => "click",
            Route::Unsubscribe(_) => "unsubscribe",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::NotFound => "not_found",
        }
    }
}

/// Maps a path (without query) to a route. Pure, so it is tested alone.
pub fn route(path: &str) -> Route<'_> {
    if let Some(rest) = path.strip_prefix("/o/") {
        return Route::Pixel(rest.strip_suffix(".gif").unwrap_or(rest));
    }
    if let Some(rest) = path.strip_prefix("/c/") {
        return Route::Click(rest);
    }
    if let Some(rest) = path.strip_prefix("/u/") {
        return Route::Unsubscribe(rest);
    }
    match path {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => Route::NotFound,
    }
}

/// Why a token was not accepted on this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Open(OpenError),
    /// A valid token of another kind (an open token on `/c/`).
    WrongKind,
    /// A valid token for another tenant's tracking domain.
    WrongTenant,
    /// A host no tenant claims, with `unknown_hosts = "reject"`.
    UnknownHost,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Open(e) => e.reason(),
            Refusal::WrongKind => "wrong_kind",
            Refusal::WrongTenant => "wrong_tenant",
            Refusal::UnknownHost => "unknown_host",
        }
    }
}

pub struct Edge {
    pub keys: Arc<KeyRing>,
    pub recorder: Recorder,
    pub fallback_url: Option<Destination>,
    pub tenants: HashMap<String, Tenant>,
    pub unknown_hosts: UnknownHosts,
    pub trusted_proxies: Vec<IpNet>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Per-client limit on `/u/`, the one route that changes state.
    pub unsubscribe_limit: ClientLimit,
}

impl Edge {
    pub fn handle<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Body> {
        let method = match *req.method() {
            HttpMethod::GET => Some(Method::Get),
            HttpMethod::HEAD => Some(Method::Head),
            _ => None,
        };
        let route = route(req.uri().path());
        let Some(method) = method else {
            return match route {
                Route::NotFound => not_found(),
                Route::Unsubscribe(_) => method_not_allowed("GET, HEAD, POST"),
                _ => method_not_allowed("GET, HEAD"),
            };
        };
        match route {
            Route::Pixel(text) => {
                if let Ok(token) = self.accept(req, text, Kind::Open) {
                    self.record(req, peer, method, token);
                }
                pixel()
            }
            Route::Click(text) => match self.accept(req, text, Kind::Click) {
                Ok(token) => {
                    let location = match &token.claims().target {
                        token::Target::Click(link) => link.url.clone(),
                        _ => unreachable!("accept checked the kind"),
                    };
                    self.record(req, peer, method, token);
                    redirect(&location)
                }
                Err(_) => match self
                    .tenant(req)
                    .and_then(|t| t.fallback_url.as_ref())
                    .or(self.fallback_url.as_ref())
                {
                    Some(fallback) => redirect(fallback),
                    None => bad_link(),
                },
            },
            // A GET only shows the page: scanners follow every link, and
            // only the button's POST (or the mail client's) unsubscribes.
            Route::Unsubscribe(_) if !self.within_limit(req, peer) => too_many(),
            Route::Unsubscribe(text) => match self.accept(req, text, Kind::Unsubscribe) {
                Ok(_) => page(StatusCode::OK, crate::pages::UNSUBSCRIBE),
                Err(_) => bad_link(),
            },
            Route::Healthz => text(StatusCode::OK, "ok\n"),
            Route::Readyz => match self.health.readiness() {
                Readiness::Ready => text(StatusCode::OK, "ready\n"),
                Readiness::Degraded(Degraded::Spooling) => text(StatusCode::OK, "degraded: spooling\n"),
                Readiness::Degraded(Degraded::Behind) => {
                    text(StatusCode::OK, "degraded: behind, the core is saturated\n")
                }
                Readiness::Degraded(Degraded::BrokersUnreachable) => {
                    text(StatusCode::OK, "degraded: brokers unreachable\n")
                }
                Readiness::Degraded(Degraded::SpoolFull) => {
                    text(StatusCode::OK, "degraded: spool full, events are being lost\n")
                }
                Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            Route::NotFound => not_found(),
        }
    }

    /// Whether the request is an unsubscribe POST, whose body must be read
    /// (by [`Edge::unsubscribe`]) before it can be answered.
    pub fn wants_body<B>(req: &Request<B>) -> bool {
        req.method() == HttpMethod::POST && matches!(route(req.uri().path()), Route::Unsubscribe(_))
    }

    /// RFC 8058 one-click unsubscribe: `POST /u/{token}` with the body
    /// `List-Unsubscribe=One-Click`, from a mail client or the page's button.
    /// No cookies, no redirects, no authentication beyond the token.
    pub async fn unsubscribe<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Route::Unsubscribe(sealed) = route(req.uri().path()) else { return not_found() };
        if !self.within_limit(&req, peer) {
            return too_many();
        }
        let token = match self.accept(&req, sealed, Kind::Unsubscribe) {
            Ok(token) => token,
            Err(_) => return bad_link(),
        };
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_UNSUBSCRIBE_BODY as u64) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than an unsubscribe request needs\n",
            );
        }
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_UNSUBSCRIBE_BODY);
        let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is larger than an unsubscribe request needs\n",
                );
            }
            Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "the request body could not be read\n"),
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the request body took too long\n"),
        };
        if !is_one_click(&body) {
            return text(
                StatusCode::BAD_REQUEST,
                "expected the form body List-Unsubscribe=One-Click (RFC 8058)\n",
            );
        }
        let req = Request::from_parts(parts, ());
        self.record(&req, peer, Method::Post, token);
        page(StatusCode::OK, crate::pages::UNSUBSCRIBED)
    }

    fn within_limit<B>(&self, req: &Request<B>, peer: SocketAddr) -> bool {
        self.unsubscribe_limit.allow(hit::client_ip(peer.ip(), req.headers(), &self.trusted_proxies))
    }

    /// The tenant whose tracking domain the request came to, if configured.
    fn tenant<B>(&self, req: &Request<B>) -> Option<&Tenant> {
        if self.tenants.is_empty() {
            return None; // one tenant: spare every request the look-up
        }
        let host = req.uri().host().or_else(|| req.headers().get(header::HOST)?.to_str().ok())?;
        self.tenants.get(&host_name(host).to_ascii_lowercase())
    }

    /// Opens the token and checks it belongs on this route and this host.
    fn accept<B>(&self, req: &Request<B>, text: &str, kind: Kind) -> Result<Token, Refusal> {
        let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let tenant = self.tenant(req);
        let token = if tenant.is_none() && self.unknown_hosts == UnknownHosts::Reject {
            Err(Refusal::UnknownHost)
        } else {
            let keys = tenant.and_then(|t| t.keys.as_deref()).unwrap_or(&self.keys);
            token::open(keys, text, now).map_err(Refusal::Open)
        };
        let token = token.and_then(|t| {
            if t.claims().target.kind() != kind {
                return Err(Refusal::WrongKind);
            }
            if t.claims().tenant != tenant.map(|t| t.name.as_str()).unwrap_or("") {
                return Err(Refusal::WrongTenant);
            }
            Ok(t)
        });
        if let Err(refusal) = &token {
            tracing::debug!(reason = refusal.reason(), "token refused");
            self.metrics.token_failures.get_or_create(&ReasonLabels { reason: refusal.reason() }).inc();
        }
        token
    }

    fn record<B>(&self, req: &Request<B>, peer: SocketAddr, method: Method, token: Token) {
        let hit = Hit {
            token,
            at: OffsetDateTime::now_utc(),
            method,
            client_ip: Some(hit::client_ip(peer.ip(), req.headers(), &self.trusted_proxies)),
            user_agent: hit::user_agent(req.headers()),
        };
        if let Err(e) = self.recorder.record(hit) {
            // Logged at powers of two so an overload cannot flood the log.
            let dropped = self.recorder.stats().dropped.load(Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(error = %e, dropped, "hit not recorded");
            }
        }
    }
}

/// A `Host` value without its port: `t.example.com:8080` → `t.example.com`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn pixel() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(PIXEL)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, private, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
    r
}

fn redirect(to: &Destination) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    let h = r.headers_mut();
    // A Destination is canonical ASCII without control characters, so it is
    // always a valid header value.
    h.insert(header::LOCATION, HeaderValue::from_str(to.as_str()).expect("destinations are header-safe"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn page(status: StatusCode, html: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(crate::pages::CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn bad_link() -> Response<Body> {
    page(StatusCode::NOT_FOUND, crate::pages::BAD_LINK)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn too_many() -> Response<Body> {
    let mut r =
        text(StatusCode::TOO_MANY_REQUESTS, "too many requests from this address; try again in a minute\n");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The largest unsubscribe body read; the real one is 26 bytes.
pub const MAX_UNSUBSCRIBE_BODY: usize = 4096;
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// RFC 8058's body, form-urlencoded or as one multipart field.
fn is_one_click(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let urlencoded = text.split('&').any(|pair| pair.trim() == "List-Unsubscribe=One-Click");
    let multipart = text.contains("name=\"List-Unsubscribe\"") && text.contains("One-Click");
    urlencoded || multipart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            ("/o/abc", Route::Pixel("abc")),
            ("/o/abc.gif", Route::Pixel("abc")),
            ("/o/", Route::Pixel("")),
            ("/c/abc", Route::Click("abc")),
            ("/c/abc.gif", Route::Click("abc.gif")),
            ("/u/abc", Route::Unsubscribe("abc")),
            ("/healthz", Route::Healthz),
            ("/readyz", Route::Readyz),
            ("/", Route::NotFound),
            ("/o", Route::NotFound),
            ("/x/abc", Route::NotFound),
            ("/healthz/", Route::NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(route(path), want, "{path}");
        }
    }

    #[test]
    fn host_names_lose_their_port() {
        for (host, want) in [
            ("t.example.com:8080", "t.example.com"),
            ("t.example.com", "t.example.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
        ] {
            assert_eq!(host_name(host), want);
        }
    }

    #[test]
    fn one_click_bodies() {
        assert!(is_one_click(b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(b"a=b&List-Unsubscribe=One-Click"));
        assert!(is_one_click(
            b"--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--"
        ));
        assert!(!is_one_click(b""));
        assert!(!is_one_click(b"List-Unsubscribe=Maybe"));
    }

    #[test]
    fn pixel_is_a_transparent_1x1_gif() {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let mut decoder = options.read_info(PIXEL).unwrap();
        assert_eq!((decoder.width(), decoder.height()), (1, 1));
        let frame = decoder.read_next_frame().unwrap().unwrap();
        assert_eq!(frame.buffer.len(), 4);
        assert_eq!(frame.buffer[3], 0, "alpha of the only pixel");
    }
}
