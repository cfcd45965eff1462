//! The server: builds every part from a validated [`Config`], runs the
//! accept loop, and shuts down in order: stop accepting, let in-flight
//! requests finish (bounded by the grace period), then drain the pipeline
//! into the sink.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::classify::Classifier;
use crate::config::Config;
use crate::health::Health;
use crate::http::Edge;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::pipeline::{Pipeline, Stats};
use crate::sink::file::FileSink;
use crate::sink::{Sink, SinkError};
use crate::tls::Certificates;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Classify(#[from] crate::classify::ClassifyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

pub struct Server {
    listener: TcpListener,
    tls: Option<TlsListener>,
    edge: Arc<Edge>,
    pipeline: Pipeline,
    stats: Arc<Stats>,
    health: Arc<Health>,
    grace: Duration,
    header_read_timeout: Duration,
}

struct TlsListener {
    listener: TcpListener,
    certificates: Arc<Certificates>,
    reload_every: Duration,
}

impl Server {
    /// Opens the sink and binds the listener; fails here, not later.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let classifier = Classifier::new(&config.classify)?;
        let cache_stats = classifier.cache_stats().clone();
        tracing::info!(rules_version = classifier.rules_version(), "classifier ready");
        let sink: Box<dyn Sink> = Box::new(FileSink::open(&config.events_file)?);
        let (recorder, pipeline) =
            Pipeline::start(classifier, sink, config.privacy, config.queue_capacity, config.flush_interval);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
        let tls = match config.tls {
            Some(tls) => Some(TlsListener {
                certificates: Certificates::load(tls.certificates)?,
                listener: TcpListener::bind(tls.listen)
                    .await
                    .map_err(|source| ServeError::Bind { addr: tls.listen, source })?,
                reload_every: tls.reload_every,
            }),
            None => None,
        };
        let health = Arc::new(Health::default());
        let stats = recorder.stats().clone();
        let metrics = Arc::new(Metrics::new(stats.clone(), cache_stats, vec![]));
        let edge = Arc::new(Edge {
            keys: Arc::new(config.keys),
            recorder,
            fallback_url: config.fallback_url,
            tenants: config.tenants,
            trusted_proxies: config.trusted_proxies,
            health: health.clone(),
            metrics: metrics.clone(),
        });
        Ok(Server {
            listener,
            tls,
            edge,
            pipeline,
            stats,
            health,
            grace: config.shutdown_grace,
            header_read_timeout: config.header_read_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The HTTPS listener's address, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.listener.local_addr().expect("a bound listener has an address"))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.edge.metrics
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, tls, edge, pipeline, stats, health, grace, header_read_timeout } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
        let graceful = Arc::new(GracefulShutdown::new());
        let conns = Connections {
            builder: Arc::new(builder),
            edge: edge.clone(),
            handshake_timeout: header_read_timeout,
        };
        let (stop, stopped) = watch::channel(false);
        let mut loops =
            vec![tokio::spawn(accept_loop(listener, None, conns.clone(), graceful.clone(), stopped.clone()))];
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

/// What every accepted connection needs, shared by the accept loops.
#[derive(Clone)]
struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    edge: Arc<Edge>,
    handshake_timeout: Duration,
}

impl Connections {
    /// Serves one connection to its end, under the graceful-shutdown watch.
    async fn serve<S>(self, watcher: Watcher, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let edge = self.edge;
        let service = service_fn(move |req| {
            let started = Instant::now();
            let response = edge.handle(&req, peer);
            let route = crate::http::route(req.uri().path()).name();
            let m = &edge.metrics;
            m.requests.get_or_create(&RequestLabels { route, status: response.status().as_u16() }).inc();
            m.latency.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), service).into_owned();
        if let Err(e) = watcher.watch(conn).await {
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
                tokio::spawn(conns.serve(watcher, stream, peer));
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
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
