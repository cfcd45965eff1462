//! The server: binds the listeners, accepts connections (the plain port,
//! HTTPS with its handshake deadline, the admin port), serves each with the
//! edge or the admin API, and shuts down in order: stop accepting, let
//! in-flight requests finish (bounded by the grace period), then drain the
//! pipeline into the sink. What it serves is built by `startup`.

mod conn;
mod first_byte;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use conn::{App, Connections, accept_loop};

use crate::admin::Admin;
use crate::config::TlsSettings;
use crate::edge::Edge;
use crate::health::Health;
use crate::pipeline::{Pipeline, Stats};
use crate::tls::Certificates;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where to listen: the public address, HTTPS beside it, and the admin API.
pub struct Listeners {
    pub public: SocketAddr,
    pub tls: Option<TlsSettings>,
    pub admin: Option<(SocketAddr, Arc<Admin>)>,
}

/// Bounds on connections and on shutdown.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// After the signal, how long to go on accepting while readiness says draining.
    pub delay: Duration,
    pub grace: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

pub struct Server {
    listener: TcpListener,
    tls: Option<TlsListener>,
    admin: Option<(TcpListener, Arc<Admin>)>,
    edge: Arc<Edge>,
    pipeline: Pipeline,
    stats: Arc<Stats>,
    health: Arc<Health>,
    limits: Limits,
}

struct TlsListener {
    listener: TcpListener,
    certificates: Arc<Certificates>,
    reload_every: Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|error| ServeError::Bind { addr, error })
}

impl Server {
    /// Binds every listener; fails here, not later.
    pub async fn bind(
        listeners: Listeners,
        limits: Limits,
        edge: Arc<Edge>,
        pipeline: Pipeline,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Result<Server, ServeError> {
        let listener = bind(listeners.public).await?;
        let tls = match listeners.tls {
            Some(tls) => Some(TlsListener {
                certificates: Certificates::load(tls.certificates)?,
                listener: bind(tls.listen).await?,
                reload_every: tls.reload_every,
            }),
            None => None,
        };
        let admin = match listeners.admin {
            Some((addr, app)) => Some((bind(addr).await?, app)),
            None => None,
        };
        Ok(Server { listener, tls, admin, edge, pipeline, stats, health, limits })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The admin listener's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(l, _)| l.local_addr().expect("a bound listener has an address"))
    }

    /// The HTTPS listener's address, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.listener.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, tls, admin, edge, pipeline, stats, health, limits } = self;
        let Limits { delay, grace, header_read_timeout, max_header_bytes, max_connections } = limits;
        let connections = Arc::new(Semaphore::new(max_connections));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The header read timeout also bounds an idle keep-alive connection's
        // wait for its next request, so a slow or silent client (slowloris)
        // cannot hold a connection past it.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_header_bytes)
            .keep_alive(true);
        // Streams, header lists and buffers are bounded per connection; the
        // answers are small, and so are the only bodies read (an unsubscribe
        // form, an instrument request), so small windows cost nothing. An
        // idle connection is closed by `conn` (HTTP/2 has no header timeout).
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(header_read_timeout)
            .keep_alive_timeout(header_read_timeout)
            .max_concurrent_streams(100)
            .max_header_list_size(max_header_bytes as u32)
            .max_send_buf_size(16 * 1024)
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(256 * 1024);
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        let conns = Connections {
            builder: Arc::new(builder),
            app: App::Edge(edge.clone()),
            limit: connections,
            idle_timeout: header_read_timeout,
            shed: Arc::new(watch::channel(0).0),
            alive,
        };
        let (stop, stopped) = watch::channel(false);
        let mut loops = vec![tokio::spawn(accept_loop(listener, None, conns.clone(), stopped.clone()))];
        if let Some((listener, admin)) = admin {
            // Its own small connection budget: scrapes and API calls never
            // compete with tracking traffic for the public one.
            let admin_conns = Connections {
                app: App::Admin(admin),
                limit: Arc::new(Semaphore::new(64)),
                shed: Arc::new(watch::channel(0).0),
                ..conns.clone()
            };
            loops.push(tokio::spawn(accept_loop(listener, None, admin_conns, stopped.clone())));
        }
        if let Some(tls) = tls {
            tls.certificates.clone().watch(tls.reload_every);
            let acceptor = TlsAcceptor::from(tls.certificates.server_config());
            loops.push(tokio::spawn(accept_loop(tls.listener, Some(acceptor), conns.clone(), stopped)));
        }
        // Only the accept loops and the connections may hold `alive` now.
        drop(conns);
        shutdown.await;
        // Readiness first: load balancers that probe it stop sending while
        // the listeners still accept what is already on its way.
        health.set_draining();
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "draining: /readyz answers 503, still accepting"
            );
            tokio::time::sleep(delay).await;
        }
        let _ = stop.send(true);
        for l in loops {
            let _ = l.await;
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // Every connection task holds a clone of `alive`; the accept loops
        // have dropped theirs, so this ends when the last connection does.
        if tokio::time::timeout(grace, all_closed.recv()).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "requests still in flight after the grace period"
            );
        }
        drop(edge);
        tokio::task::spawn_blocking(move || pipeline.finish()).await.ok();
        let recorded = stats.recorded.load(std::sync::atomic::Ordering::Relaxed);
        let published = stats.published.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(recorded, published, "stopped");
    }
}

/// Completes on SIGTERM or SIGINT.
/// The handlers are installed when this is called, not when it is first
/// awaited, so a signal sent as soon as the banner is printed is caught.
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot listen for SIGINT");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
