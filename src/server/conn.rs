//! One connection, from accept to close: the accept loop, the TLS
//! handshake, the first-byte deadline, and a watchdog that closes a
//! connection doing nothing.
//!
//! hyper closes an idle HTTP/1.1 keep-alive connection at its header read
//! timeout, but HTTP/2 has no such timeout: a client that sends the preface
//! and SETTINGS and answers PINGs would hold its connection (and a slot of
//! `max_connections`) for ever. So every connection's requests are counted
//! ([`Activity`]), and one with none in flight for the idle timeout is shut
//! down gracefully (GOAWAY), then dropped if it has not finished within the
//! same time again (streams stuck behind a zero flow-control window). When
//! the connection cap is reached, connections with nothing in flight for
//! half a second are asked to close, and asked again while the cap lasts
//! ([`Shed`]), so clients doing nothing cannot keep working ones out.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::first_byte::FirstByte;
use crate::admin::Admin;
use crate::edge::{Answer, Body, Edge, EdgeService};

/// The service a listener serves.
#[derive(Clone)]
pub enum App {
    Edge(Arc<Edge>),
    Admin(Arc<Admin>),
}

/// How long a connection must have had nothing in flight to be closed to
/// make room at the cap.
const SHED_AFTER: Duration = Duration::from_millis(500);
/// How often, at the cap, idle connections are asked again.
const SHED_EVERY: Duration = Duration::from_millis(100);

/// Asks idle connections to close now: bumped when the cap is reached.
pub type Shed = watch::Sender<u64>;

/// What every accepted connection needs, shared by the accept loops.
#[derive(Clone)]
pub struct Connections {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub app: App,
    /// One permit per open connection: at the cap, accepting pauses and
    /// new clients wait in the kernel's queue rather than exhausting us.
    pub limit: Arc<Semaphore>,
    /// Bounds a handshake, the wait for the first byte, and idleness.
    pub idle_timeout: Duration,
    pub shed: Arc<Shed>,
    /// Held by every connection task: shutdown waits until all are dropped
    /// (mini-redis's pattern).
    pub alive: mpsc::Sender<()>,
}

/// A connection's requests: how many are in flight, and when the last one
/// started or ended.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has had nothing in flight, if it has not.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }
}

/// A service whose requests are counted in an [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, F> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>> + Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<F>;

    fn call(&self, req: Request<Incoming>) -> InFlight<F> {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.touch();
        InFlight { inner: self.inner.call(req), _guard: Guard(self.activity.clone()) }
    }
}

/// A request's future; its guard marks the request ended when dropped,
/// whether it completed or was cancelled.
struct InFlight<F> {
    inner: F,
    _guard: Guard,
}

struct Guard(Arc<Activity>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F: Future + Unpin> Future for InFlight<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// The edge or the admin API, as one service type, so one connection
/// loop serves both.
#[derive(Clone)]
enum AppService {
    Edge(EdgeService),
    Admin(Arc<Admin>, SocketAddr),
}

impl Service<Request<Incoming>> for AppService {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        match self {
            AppService::Edge(edge) => edge.call(req),
            AppService::Admin(admin, peer) => {
                let (admin, ip) = (admin.clone(), peer.ip());
                Answer::Waiting(Box::pin(async move { admin.handle(req, ip).await }))
            }
        }
    }
}

impl Connections {
    /// Serves one connection to its end: shut down gracefully at server
    /// shutdown, when idle, or when asked to make room, and dropped if a
    /// graceful shutdown does not finish within the idle timeout.
    async fn serve<S>(self, mut stop: watch::Receiver<bool>, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _alive = self.alive.clone();
        let stream = TokioIo::new(FirstByte::new(stream, self.idle_timeout));
        let activity = Activity::new();
        let app = match &self.app {
            App::Edge(edge) => AppService::Edge(edge.service(peer)),
            App::Admin(admin) => AppService::Admin(admin.clone(), peer),
        };
        let service = Tracked { inner: app, activity: activity.clone() };
        let conn = self.builder.serve_connection(stream, service).into_owned();
        tokio::pin!(conn);
        let mut shed = self.shed.subscribe();
        let idle = self.idle_timeout;
        // A keep-alive connection between two requests is not shed at once.
        let shed_after = SHED_AFTER.min(idle);
        let check = tokio::time::sleep(idle);
        tokio::pin!(check);
        let mut closing = false;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                _ = stop.changed(), if !closing => {
                    // Server shutdown: its grace period bounds the wait.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    check.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
                }
                _ = shed.changed(), if !closing => {
                    if activity.idle_for().is_some_and(|for_| for_ >= shed_after) {
                        tracing::debug!(%peer, "closing an idle connection to make room");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        check.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                }
                _ = check.as_mut() => {
                    if closing {
                        tracing::debug!(%peer, "dropping a connection that did not close in time");
                        break Ok(());
                    }
                    match activity.idle_for() {
                        Some(for_) if for_ >= idle => {
                            tracing::debug!(%peer, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            check.as_mut().reset(tokio::time::Instant::now() + idle);
                        }
                        Some(for_) => check.as_mut().reset(tokio::time::Instant::now() + (idle - for_)),
                        None => check.as_mut().reset(tokio::time::Instant::now() + idle),
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// Accepts connections until told to stop; with `tls`, each connection
/// shakes hands (bounded by the idle timeout) before it is served.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    conns: Connections,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = loop {
            if let Ok(permit) = conns.limit.clone().try_acquire_owned() {
                break permit;
            }
            // At the cap: ask connections doing nothing to make room, and
            // again while it lasts (a connection idle too briefly to go
            // now may be idle enough at the next ask).
            conns.shed.send_modify(|generation| *generation += 1);
            tokio::select! {
                permit = conns.limit.clone().acquire_owned() => break permit.expect("the semaphore is never closed"),
                _ = tokio::time::sleep(SHED_EVERY) => {}
                _ = stop.changed() => return,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Only ever set to true: any change, or a dropped sender, is the stop.
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let conns = conns.clone();
        let stop = stop.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    conns.serve(stop, stream, peer).await;
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(conns.idle_timeout, handshake).await {
                        Ok(Ok(stream)) => conns.serve(stop, stream, peer).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
