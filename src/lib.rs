//! waymark: an edge service for email engagement tracking.
//!
//! A request flows one way through these modules:
//!
//! - [`http`]: the edge. Routes `/o/` (pixel), `/c/` (click), `/u/`
//!   (unsubscribe) and health; answers at once and hands a [`hit::Hit`] to
//!   the pipeline without waiting.
//! - [`token`]: sealed tokens (AES-256-GCM with a key id), the only way a
//!   URL's claims are read; [`keys`] holds the rotating key ring and
//!   [`destination`] the validated redirect target.
//! - [`pipeline`]: the bounded hand-off and the thread that turns hits into
//!   events: [`classify`] judges a hit, [`event`] builds and encodes the JSON.
//! - [`sink`]: where events go, behind one trait: the JSON-lines file by
//!   default, or Kafka behind a write-ahead disk spool.
//! - [`config`]: raw settings from file and environment, validated at start.
//! - [`server`]: builds everything from a config, accept loop, shutdown.
//! - [`rewrite`]: instrumenting HTML email (the sending side); [`admin`]
//!   serves it over HTTP with `/metrics`, on the internal listener only.
//! - [`metrics`], [`health`], [`privacy`], [`ratelimit`], [`tls`],
//!   [`pages`]: operations.
//! - [`cli`]: `waymark serve | sign | keygen | classify | rewrite | spool`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub mod destination;
pub mod event;
pub mod health;
pub mod hit;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod pages;
pub mod pipeline;
pub mod privacy;
pub mod ratelimit;
pub mod rewrite;
pub mod server;
pub mod sink;
pub mod tls;
pub mod token;
