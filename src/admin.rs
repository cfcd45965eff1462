//! The internal admin listener: `/metrics` for Prometheus, `/healthz`, and
//! `POST /v1/instrument`, the HTML instrumentation API for senders not
//! written in Rust. It listens on its own address (`admin_listen`), never
//! on the public one, and is off unless configured; `/v1/*` also needs the
//! bearer token from `admin_token`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::minting::{self, MessageSpec};
use crate::ratelimit::ClientLimit;
use crate::rewrite;
use crate::tenancy::Tenancy;

pub struct Admin {
    metrics: Arc<Metrics>,
    tenancy: Arc<Tenancy>,
    max_body: usize,
    auth: Option<(hmac::Key, hmac::Tag)>,
    limit: ClientLimit,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        tenancy: Arc<Tenancy>,
        token: Option<&str>,
        max_body: usize,
        rate: std::num::NonZeroU32,
    ) -> Admin {
        // The token is compared as an HMAC under a key made at start, so the
        // comparison takes the same time whatever the guess.
        let auth = token.map(|t| {
            let mut secret = [0u8; 32];
            SystemRandom::new().fill(&mut secret).expect("the operating system's random source failed");
            let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
            let tag = hmac::sign(&key, t.as_bytes());
            (key, tag)
        });
        Admin { metrics, tenancy, max_body, auth, limit: ClientLimit::per_minute(rate) }
    }

    pub async fn handle<B>(&self, req: Request<B>, peer: std::net::IpAddr) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.uri().path().starts_with("/v1/") && !self.limit.allow(peer) {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this address; try again in a minute",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            (&Method::POST, "/v1/instrument") => self.instrument(req).await,
            (_, "/metrics" | "/healthz" | "/v1/instrument") => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                let allow = if req.uri().path() == "/v1/instrument" { "POST" } else { "GET" };
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "no such endpoint: expected /metrics, /healthz or /v1/instrument",
            ),
        }
    }

    /// The answer to a request without the right bearer token, if it lacks it.
    fn refusal<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let Some((key, tag)) = &self.auth else {
            return Some(error(
                StatusCode::FORBIDDEN,
                "the instrument API is off: set admin_token to turn it on",
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        hmac::verify(key, given.as_bytes(), tag.as_ref()).err().map(|_| {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        })
    }

    async fn instrument<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(r) = self.refusal(&req) {
            return r;
        }
        let is_json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json");
        }
        let body = match http_body_util::Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                let msg = format!("the body is larger than admin_max_body_bytes ({} bytes)", self.max_body);
                return error(StatusCode::PAYLOAD_TOO_LARGE, &msg);
            }
            Err(_) => return error(StatusCode::BAD_REQUEST, "the request body could not be read"),
        };
        let request: InstrumentRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not a valid instrument request: {e}"),
                );
            }
        };
        match self.run(request) {
            Ok(out) => json(StatusCode::OK, &out),
            Err(message) => error(StatusCode::UNPROCESSABLE_ENTITY, &message),
        }
    }

    fn run(&self, req: InstrumentRequest) -> Result<InstrumentResponse, String> {
        let track = req.track.unwrap_or_default();
        let spec = MessageSpec {
            tenant: req.tenant.unwrap_or_default(),
            base_url: req.base_url,
            message_id: req.message_id,
            recipient: req.recipient,
            sent_at: req.sent_at,
            tags: req.tags,
            meta: req.meta.into_iter().collect(),
            opens: track.opens,
            clicks: track.clicks,
            unsubscribe: track.unsubscribe,
            unsubscribe_mailto: req.unsubscribe_mailto,
            expires_at: None,
        };
        let (msg, keys) = minting::message(&self.tenancy, spec).map_err(|e| e.to_string())?;
        let out = rewrite::instrument(keys, &msg, req.html.as_bytes()).map_err(|e| e.to_string())?;
        Ok(InstrumentResponse {
            html: String::from_utf8_lossy(&out.html).into_owned(),
            headers: out.headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
            links: out.links,
        })
    }
}

/// `POST /v1/instrument`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentRequest {
    pub html: String,
    pub message_id: String,
    pub recipient: Option<String>,
    pub tenant: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// RFC 3339; default now.
    pub sent_at: Option<String>,
    pub base_url: Option<String>,
    /// Per-message switches over the tenant's defaults.
    pub track: Option<Track>,
    pub unsubscribe_mailto: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub opens: Option<bool>,
    pub clicks: Option<bool>,
    pub unsubscribe: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct InstrumentResponse {
    pub html: String,
    pub headers: Vec<Header>,
    pub links: usize,
}

#[derive(Debug, Serialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).expect("serializable"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
