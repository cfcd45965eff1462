//! The server: binds the listeners, accepts connections (the plain port,
//! HTTPS with its handshake deadline, the admin port), serves each with the
//! edge or the admin API, and shuts down in order: stop accepting, let
//! in-flight requests finish (bounded by the grace period), then drain the
//! pipeline into the sink. What it serves is built by [`crate::startup`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

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
        let Limits { grace, header_read_timeout, max_header_bytes, max_connections } = limits;
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
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(header_read_timeout)
            .max_concurrent_streams(100);
        let graceful = Arc::new(GracefulShutdown::new());
        let conns = Connections {
            builder: Arc::new(builder),
            app: App::Edge(edge.clone()),
            handshake_timeout: header_read_timeout,
            limit: connections,
        };
        let (stop, stopped) = watch::channel(false);
        let mut loops =
            vec![tokio::spawn(accept_loop(listener, None, conns.clone(), graceful.clone(), stopped.clone()))];
        if let Some((listener, admin)) = admin {
            // Its own small connection budget: scrapes and API calls never
            // compete with tracking traffic for the public one.
            let admin_conns =
                Connections { app: App::Admin(admin), limit: Arc::new(Semaphore::new(64)), ..conns.clone() };
            loops.push(tokio::spawn(accept_loop(
                listener,
                None,
                admin_conns,
                graceful.clone(),
                stopped.clone(),
            )));
        }
        if let Some(tls) = tls {
            tls.certificates.clone().watch(tls.reload_every);
            let acceptor = TlsAcceptor::from(tls.certificates.server_config());
            loops.push(tokio::spawn(accept_loop(
                tls.listener,
                Some(acceptor),
                conns,
                graceful.clone(),
                stopped,
            )));
        }
        shutdown.await;
        let _ = stop.send(true);
        for l in loops {
            let _ = l.await;
        }
        health.set_draining();
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // The accept loops held the only other references, and have ended.
        let graceful = Arc::into_inner(graceful).expect("accept loops have ended");
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
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

/// The service a listener serves.
#[derive(Clone)]
enum App {
    Edge(Arc<Edge>),
    Admin(Arc<Admin>),
}

/// What every accepted connection needs, shared by the accept loops.
#[derive(Clone)]
struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: App,
    /// One permit per open connection: at the cap, accepting pauses and
    /// new clients wait in the kernel's queue rather than exhausting us.
    limit: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl Connections {
    /// Serves one connection to its end, under the graceful-shutdown watch.
    async fn serve<S>(self, watcher: Watcher, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = TokioIo::new(FirstByte::new(stream, self.handshake_timeout));
        let ended = match self.app {
            App::Edge(edge) => {
                watcher.watch(self.builder.serve_connection(stream, edge.service(peer)).into_owned()).await
            }
            App::Admin(admin) => {
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer.ip()).await) }
                });
                watcher.watch(self.builder.serve_connection(stream, service).into_owned()).await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// Accepts connections until told to stop; with `tls`, each connection
/// shakes hands (bounded by the header read timeout) before it is served.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    conns: Connections,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = conns.limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.changed() => return,
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
        // Taken here, so no connection task keeps the shutdown handle alive.
        let watcher = graceful.watcher();
        let conns = conns.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    conns.serve(watcher, stream, peer).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(conns.handshake_timeout, handshake).await {
                        Ok(Ok(stream)) => conns.serve(watcher, stream, peer).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// A stream whose first read must bring data within a deadline. hyper's
/// header read timeout starts with the first byte, and protocol detection
/// waits for that byte with no limit at all; without this, a client that
/// connects and says nothing holds its connection for ever.
struct FirstByte<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByte<S> {
    fn new(inner: S, within: Duration) -> Self {
        FirstByte { inner, deadline: Some(Box::pin(tokio::time::sleep(within))) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match (&polled, self.deadline.as_mut()) {
            (_, None) => {}
            (Poll::Ready(_), Some(_)) if buf.filled().len() > before => self.deadline = None,
            (Poll::Ready(_), Some(_)) => {}
            (Poll::Pending, Some(deadline)) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot listen for SIGINT");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
