//! waymark: an edge service for email engagement tracking.
//!
//! A request flows one way through these modules:
//!
//! - [`edge`]: the HTTP edge, one hyper service. Routes `/o/` (pixel),
//!   `/c/` (click), `/u/` (unsubscribe) and health; answers at once and
//!   hands a [`hit::Hit`] to the pipeline without waiting.
//! - [`tenancy`]: which tenant a host belongs to, and its key ring, base
//!   URL and defaults; [`token`]: sealed tokens (AES-256-GCM with a key
//!   id), the only way a URL's claims are read; [`keys`] holds the rotating
//!   key ring and [`destination`] the validated redirect target.
//! - [`pipeline`]: the bounded hand-off and the judge threads, sharded by
//!   message, that turn hits into events: [`classify`] judges a hit,
//!   [`event`] builds and encodes the JSON.
//! - `kafka_judge`: the judge across processes (`judge = "kafka"`): hit
//!   records on a Kafka topic, judged by `waymark judge` processes.
//! - [`sink`]: where events go, behind one trait: the JSON-lines file by
//!   default, or Kafka behind a write-ahead disk spool.
//! - [`config`]: every setting declared once, read from file and
//!   environment, validated; `startup` turns a config into a running
//!   `server`, which accepts connections and shuts down in order.
//! - `minting` and [`rewrite`]: the sending side, one message described
//!   once and instrumented; `admin` serves it over HTTP with `/metrics`,
//!   on the internal listener only.
//! - [`metrics`], `health`, [`privacy`], [`ratelimit`], `tls`,
//!   `pages`: operations.
//! - [`cli`]: the commands; nothing in the library imports it.
#![forbid(unsafe_code)]

mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub mod destination;
pub mod edge;
pub mod event;
mod health;
pub mod hit;
mod kafka_judge;
pub mod keys;
pub mod metrics;
mod minting;
mod pages;
pub mod pipeline;
pub mod privacy;
pub mod ratelimit;
pub mod rewrite;
mod server;
pub mod sink;
mod startup;
pub mod tenancy;
mod tls;
pub mod token;
