//! The HTTP edge: one hyper [`Service`](hyper::service::Service) that routes a request once, answers
//! it at once, hands the hit to the pipeline, and records the request's
//! metrics once.
//!
//! This module must never wait on the pipeline or a sink: recording is a
//! non-blocking hand-off whose failure is counted, never shown to the
//! client. A valid click is always redirected; a bad token never redirects
//! anywhere the request could have chosen. Only an unsubscribe POST waits
//! for anything: its body.

mod responses;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use ipnet::IpNet;
use time::OffsetDateTime;

use crate::destination::Destination;
use crate::health::{Health, Readiness};
use crate::hit::{self, ClientIpHeader, Hit};
use crate::metrics::{Metrics, ReasonLabels, RequestLabels, RouteLabels};
use crate::minting::now_secs;
use crate::pipeline::Recorder;
use crate::ratelimit::ClientLimit;
use crate::tenancy::{Tenancy, Tenant, UnknownHost};
use crate::token::{self, Kind, OpenError, Token};

pub use responses::{Body, PIXEL};
use responses::{bad_link, method_not_allowed, not_found, page, pixel, redirect, text, too_many};

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

/// Who the request's client is, as far as the edge may believe.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    /// Proxies whose client-address header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The one header they write.
    pub header: ClientIpHeader,
}

/// Everything the edge needs, built once at start-up.
pub struct Edge {
    tenancy: Arc<Tenancy>,
    recorder: Recorder,
    fallback_url: Option<Destination>,
    client: ClientAddress,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Per-client limit on `/u/`, the one route that changes state.
    unsubscribe_limit: ClientLimit,
    /// Keep each hit's token text: the hit goes to a judge in another
    /// process (`judge = "kafka"`), which opens the token again.
    forwarding: bool,
}

impl Edge {
    pub fn new(
        tenancy: Arc<Tenancy>,
        recorder: Recorder,
        fallback_url: Option<Destination>,
        client: ClientAddress,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        unsubscribe_limit: ClientLimit,
    ) -> Edge {
        Edge {
            tenancy,
            recorder,
            fallback_url,
            client,
            health,
            metrics,
            unsubscribe_limit,
            forwarding: false,
        }
    }

    /// The edge of the Kafka mode: hits keep the token text as received.
    pub fn forwarding(self) -> Edge {
        Edge { forwarding: true, ..self }
    }

    /// The edge as a hyper service for one connection from `peer`.
    pub fn service(self: &Arc<Self>, peer: SocketAddr) -> EdgeService {
        EdgeService { edge: self.clone(), peer }
    }

    /// Answers a request that needs no body: everything but an unsubscribe
    /// POST, without a single await.
    pub fn answer<B>(&self, req: &Request<B>, route: Route<'_>, peer: SocketAddr) -> Response<Body> {
        let method = match *req.method() {
            Method::GET => hit::Method::Get,
            Method::HEAD => hit::Method::Head,
            _ => {
                return match route {
                    Route::NotFound => not_found(),
                    Route::Unsubscribe(_) => method_not_allowed("GET, HEAD, POST"),
                    _ => method_not_allowed("GET, HEAD"),
                };
            }
        };
        match route {
            Route::Pixel(text) => {
                if let Ok(token) = self.accept(req, text, Kind::Open) {
                    self.record(req, peer, method, token, text);
                }
                pixel()
            }
            Route::Click(text) => match self.accept(req, text, Kind::Click) {
                Ok(token) => {
                    let location = match &token.claims().target {
                        token::Target::Click(link) => link.url.clone(),
                        _ => unreachable!("accept checked the kind"),
                    };
                    self.record(req, peer, method, token, text);
                    redirect(&location)
                }
                Err(_) => {
                    let tenant = self.tenant(req).ok().flatten();
                    match tenant.and_then(|t| t.fallback_url.as_ref()).or(self.fallback_url.as_ref()) {
                        Some(fallback) => redirect(fallback),
                        None => bad_link(),
                    }
                }
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
                Readiness::Degraded(why) => text(StatusCode::OK, format!("degraded: {why}\n")),
                Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            Route::NotFound => not_found(),
        }
    }

    /// RFC 8058 one-click unsubscribe: `POST /u/{token}` with the body
    /// `List-Unsubscribe=One-Click`, from a mail client or the page's button.
    /// No cookies, no redirects, no authentication beyond the token.
    async fn unsubscribe<B>(&self, req: Request<B>, sealed: &str, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
        // Confirmed only once recorded durably; the pipeline counts and logs a failure.
        match self.recorder.record_durably(self.hit(&req, peer, hit::Method::Post, token, sealed)).await {
            Ok(()) => page(StatusCode::OK, crate::pages::UNSUBSCRIBED),
            Err(_) => {
                let mut r = page(StatusCode::SERVICE_UNAVAILABLE, crate::pages::NOT_UNSUBSCRIBED);
                r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
                r
            }
        }
    }

    fn client_ip<B>(&self, req: &Request<B>, peer: SocketAddr) -> std::net::IpAddr {
        hit::client_ip(peer.ip(), req.headers(), &self.client.trusted_proxies, self.client.header)
    }

    fn within_limit<B>(&self, req: &Request<B>, peer: SocketAddr) -> bool {
        self.unsubscribe_limit.allow(self.client_ip(req, peer))
    }

    /// The tenant whose tracking host the request came to. The host of a
    /// request in absolute form (`GET https://host/…`) wins over `Host`, as
    /// RFC 9112 §3.2.2 requires; HTTP/2's `:authority` arrives the same way.
    fn tenant<B>(&self, req: &Request<B>) -> Result<Option<&Tenant>, UnknownHost> {
        let host = req.uri().host().or_else(|| req.headers().get(header::HOST)?.to_str().ok());
        self.tenancy.for_host(host)
    }

    /// Opens the token and checks it belongs on this route and this host.
    fn accept<B>(&self, req: &Request<B>, text: &str, kind: Kind) -> Result<Token, Refusal> {
        let token = self.tenant(req).map_err(|UnknownHost| Refusal::UnknownHost).and_then(|tenant| {
            let t = token::open(self.tenancy.keys(tenant), text, now_secs()).map_err(Refusal::Open)?;
            if t.claims().target.kind() != kind {
                return Err(Refusal::WrongKind);
            }
            if t.claims().tenant != Tenancy::name(tenant) {
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

    fn hit<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        method: hit::Method,
        token: Token,
        text: &str,
    ) -> Hit {
        let at = OffsetDateTime::now_utc();
        Hit {
            id: hit::HitId::mint(at),
            token,
            at,
            method,
            client_ip: Some(self.client_ip(req, peer)),
            user_agent: hit::user_agent(req.headers()),
            sealed: self.forwarding.then(|| text.into()),
        }
    }

    fn record<B>(&self, req: &Request<B>, peer: SocketAddr, method: hit::Method, token: Token, text: &str) {
        if let Err(e) = self.recorder.record(self.hit(req, peer, method, token, text)) {
            // Logged at powers of two so an overload cannot flood the log.
            let dropped = self.recorder.stats().dropped.load(Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(error = %e, dropped, "hit not recorded");
            }
        }
    }

    fn observe(&self, route: &'static str, status: StatusCode, started: Instant) {
        let m = &self.metrics;
        m.requests.get_or_create(&RequestLabels { route, status: status.as_u16() }).inc();
        m.latency.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
    }
}

/// The edge serving one connection.
#[derive(Clone)]
pub struct EdgeService {
    edge: Arc<Edge>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let started = Instant::now();
        let route = route(req.uri().path());
        let name = route.name();
        if let (Route::Unsubscribe(sealed), &Method::POST) = (route, req.method()) {
            let sealed = sealed.to_owned();
            let edge = self.edge.clone();
            let peer = self.peer;
            return Answer::Waiting(Box::pin(async move {
                let response = edge.unsubscribe(req, &sealed, peer).await;
                edge.observe(name, response.status(), started);
                response
            }));
        }
        let response = self.edge.answer(&req, route, self.peer);
        self.edge.observe(name, response.status(), started);
        Answer::Ready(Some(response))
    }
}

/// An answer: ready at once, or (an unsubscribe POST) once its body is read.
pub enum Answer {
    Ready(Option<Response<Body>>),
    Waiting(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<Body>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(response) => {
                Poll::Ready(Ok(response.take().expect("an answer is polled to its end once")))
            }
            Answer::Waiting(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
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
    fn one_click_bodies() {
        assert!(is_one_click(b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(b"a=b&List-Unsubscribe=One-Click"));
        assert!(is_one_click(
            b"--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--"
        ));
        assert!(!is_one_click(b""));
        assert!(!is_one_click(b"List-Unsubscribe=Maybe"));
    }
}
