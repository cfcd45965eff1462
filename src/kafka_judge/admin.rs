//! The judge's internal listener (`admin_listen`): `/healthz`, `/readyz`
//! and `/metrics`. Nothing else: the judge serves no public traffic.
//!
//! `/readyz` is 503 until the judge has first been assigned partitions
//! (it has joined its group), then 200 `ready`, or 200 `degraded: …` with
//! the most serious reason (no partition held now, the event sink's state),
//! and 503 `draining` once stopping.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::stats::JudgeStats;
use crate::health::{Component, Degraded, Health, Readiness};
use crate::metrics::Metrics;

impl Component for JudgeStats {
    fn degraded(&self) -> Option<Degraded> {
        (!self.assigned.load(Ordering::Relaxed))
            .then_some(Degraded { severity: 5, reason: "no partition of the hits topic assigned" })
    }
}

/// The answer to one request; pure but for the state it reads.
pub fn answer(path: &str, metrics: &Metrics, health: &Health, stats: &JudgeStats) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if !stats.ever_assigned.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for partitions of the hits topic\n".into(),
        ),
        "/readyz" => match health.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            Readiness::Degraded(why) => text(StatusCode::OK, format!("degraded: {why}\n")),
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        },
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves the listener until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stats: Arc<JudgeStats>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, health, stats) = (metrics.clone(), health.clone(), stats.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = answer(req.uri().path(), &metrics, &health, &stats);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}
