//! Configuration: what the file and the environment say ([`RawConfig`],
//! every setting declared once in [`settings`]) and what the service runs on
//! ([`Config`]), two different types.
//!
//! Every setting can come from the TOML file named by `--config` or
//! `WAYMARK_CONFIG`, and every one can be overridden by a `WAYMARK_*`
//! environment variable. [`load`] checks every value and names the bad
//! setting the way the user wrote it, so a wrong value fails at start-up and
//! never at the first request. Validation has no side effects: reading the
//! key file, creating the development ring and probing librdkafka are steps
//! of start-up ([`KeySpec::load`], and `startup`, which uses this module).

mod keyspec;
pub mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use validate::validate;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::classify;
use crate::destination::Destination;
use crate::hit::ClientIpHeader;
use crate::keys::KeyError;
use crate::privacy::Privacy;
use crate::sink::kafka::{HitsSettings, KafkaSettings};
use crate::tenancy::{Tenant, UnknownHosts};
use crate::tls::CertSpec;

pub use keyspec::{KeySource, KeySpec};
pub use settings::{Origins, RawConfig, RawKafka, Setting};
pub use validate::classify_settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("setting {setting} = {value:?} is invalid: expected {expected}")]
    Invalid { setting: String, value: String, expected: String },
    #[error("setting {setting} is invalid: {error}")]
    Keys { setting: String, error: KeyError },
    #[error("cannot read key file {path} (from {setting}): {error}")]
    KeyFile { setting: String, path: PathBuf, error: std::io::Error },
    #[error(
        "key file {path} can be read by other users (mode {mode:o}): expected mode 600 or 400 (chmod 600 {path})"
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("cannot create the development key ring at {path}: {error}")]
    DevKeys { path: PathBuf, error: std::io::Error },
}

impl ConfigError {
    pub(crate) fn invalid(setting: &str, value: impl Into<String>, expected: &str) -> ConfigError {
        ConfigError::Invalid { setting: setting.into(), value: value.into(), expected: expected.into() }
    }
}

/// Reads the file (if any) and the environment, and checks every setting.
pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let (raw, origins) = RawConfig::load(file, env)?;
    validate::validate(raw, &origins)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The checked configuration the service runs on.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base of the URLs printed at start-up and minted by `waymark sign`
    /// when no `--base-url` is given.
    pub public_url: Option<Destination>,
    /// Where the key ring comes from; loaded at start-up.
    pub keys: KeySpec,
    pub data_dir: PathBuf,
    pub events_file: PathBuf,
    /// Size-based rotation of the events file.
    pub events_rotation: crate::sink::file::Rotation,
    pub fallback_url: Option<Destination>,
    pub queue_capacity: usize,
    pub flush_interval: Duration,
    /// After SIGTERM: accepting on, `/readyz` 503, for this long.
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers) read.
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub log_format: LogFormat,
    pub log: String,
    pub tenants: Vec<Tenant>,
    pub unknown_hosts: UnknownHosts,
    /// Requests a minute one client may make to `/u/`.
    pub unsubscribe_rate: NonZeroU32,
    /// How long an unsubscribe waits for its event to be durable before 503.
    pub unsubscribe_durable: Duration,
    /// Threads judging hits, sharded by message.
    pub judge_threads: usize,
    /// The internal listener: metrics, health and the instrument API.
    pub admin: Option<AdminSettings>,
    pub classify: classify::Settings,
    pub tls: Option<TlsSettings>,
    pub privacy: Privacy,
    /// Where events go: the events file, or Kafka with its spool.
    pub sink: SinkSettings,
    /// Where hits are judged.
    pub judge: JudgeMode,
}

/// Where hits are judged: inside `waymark serve`, or by `waymark judge`
/// processes reading the hit records the edges publish to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JudgeMode {
    Local,
    Kafka(HitsSettings),
}

#[derive(Debug, Clone)]
pub enum SinkSettings {
    File(PathBuf),
    Kafka(KafkaSettings),
}

/// The internal admin listener; never the public one.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Requests a minute one client may make to `/v1/*`.
    pub rate: NonZeroU32,
    /// Bearer token for `/v1/*`; without one the instrument API is off.
    pub token: Option<String>,
    pub max_body: usize,
}

/// HTTPS on its own listener, beside the plain one.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    /// The first answers clients that send no SNI name or an unknown one.
    pub certificates: Vec<CertSpec>,
    pub reload_every: Duration,
}
