//! Configuration: what the file and the environment say ([`RawConfig`]) and
//! what the service runs on ([`Config`]), two different types.
//!
//! Every setting can come from the TOML file named by `--config` or
//! `WAYMARK_CONFIG`, and every one can be overridden by a `WAYMARK_*`
//! environment variable ([`ENV_VARS`] lists them). [`RawConfig::validate`]
//! turns raw text into checked values and names the bad setting when it
//! cannot, so a wrong value fails at start-up and never at the first request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::classify::behaviour::Windows;
use crate::classify::{self, CountingPolicy, Verdict};
use crate::destination::Destination;
use crate::keys::{KeyError, KeyRing};
use crate::privacy::{IpMode, Privacy};
use crate::rewrite::Switches;
use crate::sink::kafka::KafkaSettings;
use crate::sink::spool::SpoolSettings;
use crate::tls::CertSpec;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("setting {setting} = {value:?} is invalid: expected {expected}")]
    Invalid { setting: String, value: String, expected: String },
    #[error("setting {setting} is invalid: {source}")]
    Keys { setting: String, source: KeyError },
    #[error("cannot read key file {path} (from {setting}): {source}")]
    KeyFile { setting: String, path: PathBuf, source: std::io::Error },
    #[error(
        "key file {path} can be read by other users (mode {mode:o}): expected mode 600 or 400 (chmod 600 {path})"
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("cannot create the development key ring at {path}: {source}")]
    DevKeys { path: PathBuf, source: std::io::Error },
}

fn boolean(setting: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(setting, value, "true or false")),
    }
}

fn invalid(setting: &str, value: impl Into<String>, expected: &str) -> ConfigError {
    ConfigError::Invalid { setting: setting.into(), value: value.into(), expected: expected.into() }
}

/// The environment variables read, each with the setting it overrides.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("WAYMARK_LISTEN", "listen"),
    ("WAYMARK_PUBLIC_URL", "public_url"),
    ("WAYMARK_KEYS", "keys"),
    ("WAYMARK_KEYS_FILE", "keys_file"),
    ("WAYMARK_DATA_DIR", "data_dir"),
    ("WAYMARK_EVENTS_FILE", "events_file"),
    ("WAYMARK_FALLBACK_URL", "fallback_url"),
    ("WAYMARK_QUEUE_CAPACITY", "queue_capacity"),
    ("WAYMARK_FLUSH_INTERVAL_MS", "flush_interval_ms"),
    ("WAYMARK_SHUTDOWN_GRACE_MS", "shutdown_grace_ms"),
    ("WAYMARK_HEADER_READ_TIMEOUT_MS", "header_read_timeout_ms"),
    ("WAYMARK_TRUSTED_PROXIES", "trusted_proxies"),
    ("WAYMARK_LOG_FORMAT", "log_format"),
    ("WAYMARK_LOG", "log"),
    ("WAYMARK_SCANNER_RULES", "scanner_rules"),
    ("WAYMARK_ASN_DB", "asn_db"),
    ("WAYMARK_CITY_DB", "city_db"),
    ("WAYMARK_PREFETCH_WINDOW_MS", "prefetch_window_ms"),
    ("WAYMARK_REPEAT_WINDOW_MS", "repeat_window_ms"),
    ("WAYMARK_BURST_WINDOW_MS", "burst_window_ms"),
    ("WAYMARK_BURST_LINKS", "burst_links"),
    ("WAYMARK_SCAN_WINDOW_MS", "scan_window_ms"),
    ("WAYMARK_COUNT_OPENS", "count_opens"),
    ("WAYMARK_COUNT_CLICKS", "count_clicks"),
    ("WAYMARK_UA_CACHE_SIZE", "ua_cache_size"),
    ("WAYMARK_TLS_LISTEN", "tls_listen"),
    ("WAYMARK_TLS_CERT", "tls_cert"),
    ("WAYMARK_TLS_KEY", "tls_key"),
    ("WAYMARK_TLS_RELOAD_MS", "tls_reload_ms"),
    ("WAYMARK_KAFKA_BROKERS", "kafka.brokers"),
    ("WAYMARK_KAFKA_TOPIC", "kafka.topic"),
    ("WAYMARK_KAFKA_TOPIC_PER_TYPE", "kafka.topic_per_type"),
    ("WAYMARK_KAFKA_PROPERTIES", "kafka.properties"),
    ("WAYMARK_KAFKA_FLUSH_TIMEOUT_MS", "kafka.flush_timeout_ms"),
    ("WAYMARK_SPOOL_DIR", "spool_dir"),
    ("WAYMARK_SPOOL_MAX_BYTES", "spool_max_bytes"),
    ("WAYMARK_SPOOL_SEGMENT_BYTES", "spool_segment_bytes"),
    ("WAYMARK_SPOOL_FSYNC_MS", "spool_fsync_ms"),
    ("WAYMARK_ADMIN_LISTEN", "admin_listen"),
    ("WAYMARK_ADMIN_TOKEN", "admin_token"),
    ("WAYMARK_ADMIN_MAX_BODY_BYTES", "admin_max_body_bytes"),
    ("WAYMARK_UNKNOWN_HOSTS", "unknown_hosts"),
    ("WAYMARK_UNSUBSCRIBE_RATE_PER_MINUTE", "unsubscribe_rate_per_minute"),
    ("WAYMARK_ADMIN_RATE_PER_MINUTE", "admin_rate_per_minute"),
    ("WAYMARK_MAX_CONNECTIONS", "max_connections"),
    ("WAYMARK_MAX_HEADER_BYTES", "max_header_bytes"),
    ("WAYMARK_IP_MODE", "ip_mode"),
    ("WAYMARK_IP_HASH_KEY", "ip_hash_key"),
    ("WAYMARK_KEEP_USER_AGENT", "keep_user_agent"),
];

/// The `[kafka]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub brokers: Option<String>,
    pub topic: Option<String>,
    pub topic_per_type: Option<bool>,
    /// librdkafka properties (e.g. `"security.protocol" = "SASL_SSL"`).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    pub flush_timeout_ms: Option<u64>,
}

/// One TLS certificate and the tracking hosts it serves (file only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// A tracking host served for one tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: String,
    pub hosts: Vec<String>,
    pub fallback_url: Option<String>,
    /// Tracking defaults for this tenant's mail (each on unless set false).
    pub opens: Option<bool>,
    pub clicks: Option<bool>,
    pub unsubscribe: Option<bool>,
    /// Its own key ring (`KID:SECRET` entries); the global ring otherwise.
    pub keys: Option<Vec<String>>,
}

/// Settings as written, before any checking. Every field is optional: a
/// missing one takes its default in [`RawConfig::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub keys: Option<Vec<String>>,
    pub keys_file: Option<String>,
    pub data_dir: Option<String>,
    pub events_file: Option<String>,
    pub fallback_url: Option<String>,
    pub queue_capacity: Option<u64>,
    pub flush_interval_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub log_format: Option<String>,
    pub log: Option<String>,
    pub scanner_rules: Option<String>,
    pub asn_db: Option<String>,
    pub city_db: Option<String>,
    pub prefetch_window_ms: Option<u64>,
    pub repeat_window_ms: Option<u64>,
    pub burst_window_ms: Option<u64>,
    pub burst_links: Option<u64>,
    pub scan_window_ms: Option<u64>,
    pub count_opens: Option<Vec<String>>,
    pub count_clicks: Option<Vec<String>>,
    pub ua_cache_size: Option<u64>,
    pub tls_listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_reload_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub admin_max_body_bytes: Option<u64>,
    pub unknown_hosts: Option<String>,
    pub unsubscribe_rate_per_minute: Option<u64>,
    pub admin_rate_per_minute: Option<u64>,
    #[serde(default)]
    pub kafka: RawKafka,
    pub spool_dir: Option<String>,
    pub spool_max_bytes: Option<u64>,
    pub spool_segment_bytes: Option<u64>,
    pub spool_fsync_ms: Option<u64>,
    pub ip_mode: Option<String>,
    pub ip_hash_key: Option<String>,
    pub keep_user_agent: Option<bool>,
    #[serde(default)]
    pub tls_certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Where the key ring came from; a development ring is never for production.
#[derive(Debug)]
pub enum KeySource {
    Configured,
    Development(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub fallback_url: Option<Destination>,
    /// `https://` + its first host: the base of the URLs minted for it.
    pub base_url: Destination,
    pub switches: Switches,
    pub keys: Option<Arc<KeyRing>>,
}

/// What a request to a host no tenant claims gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownHosts {
    /// Treated as the default tenant (empty name).
    Default,
    /// Every token refused: no redirect, no event.
    Reject,
}

/// The checked configuration the service runs on.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base of the URLs printed at start-up and minted by `waymark sign`
    /// when no `--base-url` is given.
    pub public_url: Option<Destination>,
    pub keys: KeyRing,
    pub key_source: KeySource,
    pub data_dir: PathBuf,
    pub events_file: PathBuf,
    pub fallback_url: Option<Destination>,
    pub queue_capacity: usize,
    pub flush_interval: Duration,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers) read.
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    pub log: String,
    /// Tracking host (lower case, no port) to tenant.
    pub tenants: HashMap<String, Tenant>,
    pub unknown_hosts: UnknownHosts,
    /// Requests a minute one client may make to `/u/`.
    pub unsubscribe_rate: NonZeroU32,
    /// The internal listener: metrics, health and the instrument API.
    pub admin: Option<AdminSettings>,
    pub classify: classify::Settings,
    pub tls: Option<TlsSettings>,
    pub privacy: Privacy,
    /// Where events go: the events file, or Kafka with its spool.
    pub sink: SinkSettings,
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

impl RawConfig {
    /// Reads the TOML file, if any, then applies the environment.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                Self::from_toml(&text)
                    .map_err(|message| ConfigError::Syntax { path: path.into(), message })?
            }
            None => RawConfig::default(),
        };
        raw.apply_env(env)?;
        Ok(raw)
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Overrides settings from `WAYMARK_*` variables.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let list = |v: String| -> Vec<String> {
            v.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        for (var, _) in ENV_VARS {
            let Some(value) = env(var) else { continue };
            let number = || value.trim().parse::<u64>().map_err(|_| invalid(var, &value, "a whole number"));
            match *var {
                "WAYMARK_LISTEN" => self.listen = Some(value),
                "WAYMARK_PUBLIC_URL" => self.public_url = Some(value),
                "WAYMARK_KEYS" => self.keys = Some(list(value)),
                "WAYMARK_KEYS_FILE" => self.keys_file = Some(value),
                "WAYMARK_DATA_DIR" => self.data_dir = Some(value),
                "WAYMARK_EVENTS_FILE" => self.events_file = Some(value),
                "WAYMARK_FALLBACK_URL" => self.fallback_url = Some(value),
                "WAYMARK_QUEUE_CAPACITY" => self.queue_capacity = Some(number()?),
                "WAYMARK_FLUSH_INTERVAL_MS" => self.flush_interval_ms = Some(number()?),
                "WAYMARK_SHUTDOWN_GRACE_MS" => self.shutdown_grace_ms = Some(number()?),
                "WAYMARK_HEADER_READ_TIMEOUT_MS" => self.header_read_timeout_ms = Some(number()?),
                "WAYMARK_TRUSTED_PROXIES" => self.trusted_proxies = Some(list(value)),
                "WAYMARK_LOG_FORMAT" => self.log_format = Some(value),
                "WAYMARK_LOG" => self.log = Some(value),
                "WAYMARK_SCANNER_RULES" => self.scanner_rules = Some(value),
                "WAYMARK_ASN_DB" => self.asn_db = Some(value),
                "WAYMARK_CITY_DB" => self.city_db = Some(value),
                "WAYMARK_PREFETCH_WINDOW_MS" => self.prefetch_window_ms = Some(number()?),
                "WAYMARK_REPEAT_WINDOW_MS" => self.repeat_window_ms = Some(number()?),
                "WAYMARK_BURST_WINDOW_MS" => self.burst_window_ms = Some(number()?),
                "WAYMARK_BURST_LINKS" => self.burst_links = Some(number()?),
                "WAYMARK_SCAN_WINDOW_MS" => self.scan_window_ms = Some(number()?),
                "WAYMARK_COUNT_OPENS" => self.count_opens = Some(list(value)),
                "WAYMARK_COUNT_CLICKS" => self.count_clicks = Some(list(value)),
                "WAYMARK_UA_CACHE_SIZE" => self.ua_cache_size = Some(number()?),
                "WAYMARK_TLS_LISTEN" => self.tls_listen = Some(value),
                "WAYMARK_TLS_CERT" => self.tls_cert = Some(value),
                "WAYMARK_TLS_KEY" => self.tls_key = Some(value),
                "WAYMARK_TLS_RELOAD_MS" => self.tls_reload_ms = Some(number()?),
                "WAYMARK_KAFKA_BROKERS" => self.kafka.brokers = Some(value),
                "WAYMARK_KAFKA_TOPIC" => self.kafka.topic = Some(value),
                "WAYMARK_KAFKA_TOPIC_PER_TYPE" => self.kafka.topic_per_type = Some(boolean(var, &value)?),
                "WAYMARK_KAFKA_PROPERTIES" => {
                    for pair in list(value.clone()) {
                        let (k, v) = pair.split_once('=').ok_or_else(|| {
                            invalid(var, &value, "comma-separated librdkafka properties, KEY=VALUE")
                        })?;
                        self.kafka.properties.insert(k.trim().to_owned(), v.trim().to_owned());
                    }
                }
                "WAYMARK_KAFKA_FLUSH_TIMEOUT_MS" => self.kafka.flush_timeout_ms = Some(number()?),
                "WAYMARK_SPOOL_DIR" => self.spool_dir = Some(value),
                "WAYMARK_SPOOL_MAX_BYTES" => self.spool_max_bytes = Some(number()?),
                "WAYMARK_SPOOL_SEGMENT_BYTES" => self.spool_segment_bytes = Some(number()?),
                "WAYMARK_SPOOL_FSYNC_MS" => self.spool_fsync_ms = Some(number()?),
                "WAYMARK_ADMIN_LISTEN" => self.admin_listen = Some(value),
                "WAYMARK_ADMIN_TOKEN" => self.admin_token = Some(value),
                "WAYMARK_ADMIN_MAX_BODY_BYTES" => self.admin_max_body_bytes = Some(number()?),
                "WAYMARK_UNKNOWN_HOSTS" => self.unknown_hosts = Some(value),
                "WAYMARK_UNSUBSCRIBE_RATE_PER_MINUTE" => self.unsubscribe_rate_per_minute = Some(number()?),
                "WAYMARK_ADMIN_RATE_PER_MINUTE" => self.admin_rate_per_minute = Some(number()?),
                "WAYMARK_MAX_CONNECTIONS" => self.max_connections = Some(number()?),
                "WAYMARK_MAX_HEADER_BYTES" => self.max_header_bytes = Some(number()?),
                "WAYMARK_IP_MODE" => self.ip_mode = Some(value),
                "WAYMARK_IP_HASH_KEY" => self.ip_hash_key = Some(value),
                "WAYMARK_KEEP_USER_AGENT" => self.keep_user_agent = Some(boolean(var, &value)?),
                _ => unreachable!("every variable in ENV_VARS is handled"),
            }
        }
        Ok(())
    }

    /// Checks every setting and fills in the defaults. Creates the
    /// development key ring when no key is configured.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let classify = classify_settings(&self)?;
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid("listen", &listen_text, "an IP address and port such as 127.0.0.1:8080"))?;
        let url = |setting: &str, v: Option<String>| -> Result<Option<Destination>, ConfigError> {
            v.map(|v| {
                Destination::parse(&v)
                    .map_err(|e| invalid(setting, &v, &format!("an absolute http(s) URL ({e})")))
            })
            .transpose()
        };
        let public_listen = listen;
        let public_url = url("public_url", self.public_url)?;
        let fallback_url = url("fallback_url", self.fallback_url)?;
        let data_dir = PathBuf::from(self.data_dir.unwrap_or_else(|| "./waymark-data".into()));
        let events_file =
            self.events_file.map(PathBuf::from).unwrap_or_else(|| data_dir.join("events.jsonl"));

        let queue_capacity = positive("queue_capacity", self.queue_capacity, 65_536, 16 << 20)? as usize;
        let ms = Duration::from_millis;
        let flush_interval = ms(positive("flush_interval_ms", self.flush_interval_ms, 1_000, 3_600_000)?);
        let shutdown_grace = ms(positive("shutdown_grace_ms", self.shutdown_grace_ms, 10_000, 600_000)?);
        let header_read_timeout =
            ms(positive("header_read_timeout_ms", self.header_read_timeout_ms, 10_000, 600_000)?);

        let max_connections = positive("max_connections", self.max_connections, 10_000, 1_000_000)? as usize;
        let max_header_bytes = match self.max_header_bytes.unwrap_or(16_384) {
            n @ 8_192..=1_048_576 => n as usize,
            n => return Err(invalid("max_header_bytes", n.to_string(), "a size from 8192 to 1048576")),
        };
        let trusted_proxies = self
            .trusted_proxies
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid("trusted_proxies", &c, "a list of CIDRs such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let log_format = match self.log_format.as_deref().unwrap_or("human") {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => return Err(invalid("log_format", other, "human or json")),
        };
        let log = self.log.unwrap_or_else(|| "info".into());

        let mut tenants = HashMap::new();
        for t in self.tenants {
            let setting = format!("tenants[{}]", t.name);
            if t.name.is_empty() || t.name.len() > crate::token::limits::TENANT {
                return Err(invalid("tenants.name", &t.name, "a name of 1 to 63 characters"));
            }
            let fallback_url = url(&format!("{setting}.fallback_url"), t.fallback_url)?;
            let first = t.hosts.first().cloned().unwrap_or_default();
            let base_url = Destination::parse(&format!("https://{first}"))
                .map_err(|_| invalid(&format!("{setting}.hosts"), &first, "at least one host name"))?;
            let keys = t
                .keys
                .map(|k| {
                    KeyRing::parse(&k.join(","))
                        .map(Arc::new)
                        .map_err(|source| ConfigError::Keys { setting: format!("{setting}.keys"), source })
                })
                .transpose()?;
            let switches = Switches {
                opens: t.opens.unwrap_or(true),
                clicks: t.clicks.unwrap_or(true),
                unsubscribe: t.unsubscribe.unwrap_or(true),
            };
            for host in t.hosts {
                let key = host.trim().to_ascii_lowercase();
                if key.is_empty() || key.contains([':', '/', ' ']) {
                    return Err(invalid(&format!("{setting}.hosts"), host, "a host name without port"));
                }
                let tenant = Tenant {
                    name: t.name.clone(),
                    fallback_url: fallback_url.clone(),
                    base_url: base_url.clone(),
                    switches,
                    keys: keys.clone(),
                };
                if tenants.insert(key, tenant).is_some() {
                    return Err(invalid(
                        &format!("{setting}.hosts"),
                        host,
                        "a host served by one tenant only",
                    ));
                }
            }
        }

        let unknown_hosts = match self.unknown_hosts.as_deref().unwrap_or("default") {
            "default" => UnknownHosts::Default,
            "reject" => UnknownHosts::Reject,
            other => return Err(invalid("unknown_hosts", other, "default or reject")),
        };
        let rate = |setting: &str, v: Option<u64>, default: u64| -> Result<NonZeroU32, ConfigError> {
            let n = positive(setting, v, default, 1_000_000)?;
            Ok(NonZeroU32::new(n as u32).expect("positive"))
        };
        let unsubscribe_rate = rate("unsubscribe_rate_per_minute", self.unsubscribe_rate_per_minute, 30)?;
        let admin = match self.admin_listen {
            None => None,
            Some(text) => {
                let listen: SocketAddr = text.parse().map_err(|_| {
                    invalid("admin_listen", &text, "an IP address and port such as 127.0.0.1:9090")
                })?;
                if listen == public_listen && listen.port() != 0 {
                    return Err(invalid(
                        "admin_listen",
                        &text,
                        "an address other than the public listener's",
                    ));
                }
                let token = self.admin_token.filter(|t| !t.is_empty());
                if token.as_ref().is_some_and(|t| t.len() < 16) {
                    return Err(invalid("admin_token", "<redacted>", "a secret of at least 16 characters"));
                }
                let max_body =
                    positive("admin_max_body_bytes", self.admin_max_body_bytes, 2 << 20, 64 << 20)? as usize;
                let rate = rate("admin_rate_per_minute", self.admin_rate_per_minute, 600)?;
                Some(AdminSettings { listen, rate, token, max_body })
            }
        };

        let mut certificates = Vec::new();
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                certificates.push(CertSpec { hosts: vec![], cert: cert.into(), key: key.into() })
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("tls_key", "", "a key file to go with tls_cert")),
            (None, Some(_)) => return Err(invalid("tls_cert", "", "a certificate file to go with tls_key")),
        }
        certificates.extend(self.tls_certificates.into_iter().map(|c| CertSpec {
            hosts: c.hosts,
            cert: c.cert.into(),
            key: c.key.into(),
        }));
        let tls = match self.tls_listen {
            Some(text) => {
                let listen = text.parse().map_err(|_| {
                    invalid("tls_listen", &text, "an IP address and port such as 0.0.0.0:8443")
                })?;
                if certificates.is_empty() {
                    return Err(invalid(
                        "tls_listen",
                        &text,
                        "a certificate too (tls_cert and tls_key, or [[tls_certificates]])",
                    ));
                }
                let reload_every = ms(positive("tls_reload_ms", self.tls_reload_ms, 10_000, 86_400_000)?);
                Some(TlsSettings { listen, certificates, reload_every })
            }
            None if !certificates.is_empty() => {
                return Err(invalid("tls_listen", "", "an address to serve the configured certificates on"));
            }
            None => None,
        };

        let ip_mode = match self.ip_mode.as_deref() {
            None => IpMode::Full,
            Some(m) => {
                IpMode::parse(m).ok_or_else(|| invalid("ip_mode", m, "full, truncated, hashed or none"))?
            }
        };
        let ip_hash_key = match &self.ip_hash_key {
            Some(k) => Some(
                URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')).ok().filter(|b| b.len() >= 16).ok_or_else(
                    || invalid("ip_hash_key", "<redacted>", "base64url of at least 16 random bytes"),
                )?,
            ),
            None if ip_mode == IpMode::Hashed => {
                return Err(invalid(
                    "ip_hash_key",
                    "",
                    "a secret key when ip_mode is hashed (waymark keygen makes one)",
                ));
            }
            None => None,
        };
        let privacy = Privacy::new(
            ip_mode,
            ip_hash_key.as_deref().unwrap_or(&[0; 32]),
            self.keep_user_agent.unwrap_or(true),
        );

        let sink = match self.kafka.brokers.filter(|b| !b.trim().is_empty()) {
            None => SinkSettings::File(events_file.clone()),
            Some(brokers) => {
                let topic = self.kafka.topic.unwrap_or_else(|| "waymark.events".into());
                if topic.is_empty()
                    || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(invalid(
                        "kafka.topic",
                        &topic,
                        "a topic name of letters, digits, '.', '_' and '-'",
                    ));
                }
                let spool = SpoolSettings {
                    max_bytes: positive("spool_max_bytes", self.spool_max_bytes, 1 << 30, 1 << 50)?,
                    segment_bytes: positive(
                        "spool_segment_bytes",
                        self.spool_segment_bytes,
                        16 << 20,
                        1 << 30,
                    )?,
                    fsync_every: ms(positive("spool_fsync_ms", self.spool_fsync_ms, 1_000, 3_600_000)?),
                };
                let settings = KafkaSettings {
                    brokers,
                    topic,
                    topic_per_type: self.kafka.topic_per_type.unwrap_or(false),
                    properties: self.kafka.properties.into_iter().collect(),
                    flush_timeout: ms(positive(
                        "kafka.flush_timeout_ms",
                        self.kafka.flush_timeout_ms,
                        5_000,
                        600_000,
                    )?),
                    spool_dir: self.spool_dir.map(PathBuf::from).unwrap_or_else(|| data_dir.join("spool")),
                    spool,
                };
                // librdkafka checks every property now, so a typo fails at start.
                let mut probe = settings.client_config();
                probe.set("log_level", "0");
                probe.create::<rdkafka::producer::BaseProducer>().map_err(|e| {
                    invalid("kafka.properties", e.to_string(), "properties librdkafka accepts")
                })?;
                SinkSettings::Kafka(settings)
            }
        };

        let (keys, key_source) = load_keys(self.keys, self.keys_file, &data_dir)?;
        Ok(Config {
            listen,
            unknown_hosts,
            unsubscribe_rate,
            admin,
            public_url,
            keys,
            key_source,
            data_dir,
            events_file,
            fallback_url,
            queue_capacity,
            flush_interval,
            shutdown_grace,
            header_read_timeout,
            max_connections,
            max_header_bytes,
            trusted_proxies,
            log_format,
            log,
            tenants,
            classify,
            tls,
            privacy,
            sink,
        })
    }
}

/// A setting that must be from 1 to `max`, `default` when unset.
fn positive(setting: &str, v: Option<u64>, default: u64, max: u64) -> Result<u64, ConfigError> {
    match v.unwrap_or(default) {
        n @ 1.. if n <= max => Ok(n),
        n => Err(invalid(setting, n.to_string(), &format!("a number from 1 to {max}"))),
    }
}

/// The classifier's settings alone: `waymark classify` needs these and no keys.
pub fn classify_settings(raw: &RawConfig) -> Result<classify::Settings, ConfigError> {
    let ms = Duration::from_millis;
    let zero_ok = |setting: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            n if n <= 30 * 24 * 3_600_000 => Ok(ms(n)),
            n => Err(invalid(setting, n.to_string(), "at most 30 days in milliseconds")),
        }
    };
    let verdicts =
        |setting: &str, v: Option<Vec<String>>, default: Vec<Verdict>| -> Result<Vec<Verdict>, ConfigError> {
            v.map(|list| {
                list.iter()
                    .map(|s| {
                        Verdict::parse(s.trim())
                            .ok_or_else(|| invalid(setting, s, "a list of human, proxy, bot, scanner"))
                    })
                    .collect()
            })
            .unwrap_or(Ok(default))
        };
    let path = |v: &Option<String>| v.as_ref().map(PathBuf::from);
    let defaults = classify::Settings::default();
    let classify = classify::Settings {
        rules_file: path(&raw.scanner_rules),
        asn_db: path(&raw.asn_db),
        city_db: path(&raw.city_db),
        prefetch_window: zero_ok("prefetch_window_ms", raw.prefetch_window_ms, 5_000)?,
        windows: Windows {
            repeat: zero_ok("repeat_window_ms", raw.repeat_window_ms, 60_000)?,
            burst: zero_ok("burst_window_ms", raw.burst_window_ms, 2_000)?,
            burst_links: positive("burst_links", raw.burst_links, 3, 1000)? as usize,
            scan: zero_ok("scan_window_ms", raw.scan_window_ms, 600_000)?,
            memory: defaults.windows.memory,
        },
        policy: CountingPolicy {
            opens: verdicts("count_opens", raw.count_opens.clone(), defaults.policy.opens)?,
            clicks: verdicts("count_clicks", raw.count_clicks.clone(), defaults.policy.clicks)?,
        },
        cache_capacity: positive("ua_cache_size", raw.ua_cache_size, 20_000, 100_000_000)?,
    };
    Ok(classify)
}

fn load_keys(
    inline: Option<Vec<String>>,
    file: Option<String>,
    data_dir: &Path,
) -> Result<(KeyRing, KeySource), ConfigError> {
    let from_list = |setting: &str, list: &str| {
        KeyRing::parse(list).map_err(|source| ConfigError::Keys { setting: setting.into(), source })
    };
    match (inline, file) {
        (Some(list), _) => Ok((from_list("keys", &list.join(","))?, KeySource::Configured)),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            check_private(&path)?;
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::KeyFile {
                setting: "keys_file".into(),
                path: path.clone(),
                source,
            })?;
            Ok((from_list("keys_file", &text)?, KeySource::Configured))
        }
        (None, None) => {
            let path = data_dir.join("dev-keys");
            let text =
                dev_keys(&path).map_err(|source| ConfigError::DevKeys { path: path.clone(), source })?;
            Ok((from_list("keys_file", &text)?, KeySource::Development(path)))
        }
    }
}

/// A key file anyone on the host can read is a leaked key.
fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::KeyFile {
        setting: "keys_file".into(),
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && !meta.is_symlink() && !is_kubernetes_secret(path) {
        return Err(ConfigError::KeyFileMode { path: path.into(), mode });
    }
    Ok(())
}

/// Kubernetes mounts secrets through symlinks into a `..data` directory,
/// with a mode the pod cannot choose; the mount itself is private.
fn is_kubernetes_secret(path: &Path) -> bool {
    path.parent().is_some_and(|dir| dir.join("..data").exists())
}

/// Reads the development ring, creating it (mode 600) on first use.
fn dev_keys(path: &Path) -> std::io::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let entry = crate::keys::Key::generate_entry(&crate::keys::KeyId::new("dev").expect("valid id"));
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            writeln!(f, "# Development key ring made by waymark: never use it in production.\n{entry}")?;
            Ok(entry)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn key() -> String {
        crate::keys::Key::generate_entry(&crate::keys::KeyId::new("k1").unwrap())
    }

    #[test]
    fn defaults_make_a_development_ring() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawConfig { data_dir: Some(dir.path().to_str().unwrap().into()), ..Default::default() };
        let config = raw.validate().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.events_file, dir.path().join("events.jsonl"));
        assert!(matches!(config.key_source, KeySource::Development(_)));
        // The second start reuses the same ring, so old dev links keep working.
        let again = RawConfig { data_dir: Some(dir.path().to_str().unwrap().into()), ..Default::default() };
        let again = again.validate().unwrap();
        assert_eq!(again.keys.sealing().id().as_str(), "dev");
        let text = std::fs::read_to_string(dir.path().join("dev-keys")).unwrap();
        assert!(text.contains("never use it in production"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut raw = RawConfig::from_toml("listen = \"0.0.0.0:80\"\nqueue_capacity = 5").unwrap();
        raw.apply_env(env(&[("WAYMARK_LISTEN", "127.0.0.1:9"), ("WAYMARK_KEYS", &key())])).unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9");
        assert_eq!(c.queue_capacity, 5);
        assert!(matches!(c.key_source, KeySource::Configured));
    }

    #[test]
    fn bad_settings_are_named() {
        let k = key();
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("WAYMARK_LISTEN", "localhost")], "setting listen = \"localhost\" is invalid"),
            (vec![("WAYMARK_QUEUE_CAPACITY", "lots")], "setting WAYMARK_QUEUE_CAPACITY = \"lots\""),
            (vec![("WAYMARK_QUEUE_CAPACITY", "0")], "setting queue_capacity = \"0\""),
            (vec![("WAYMARK_FALLBACK_URL", "javascript:x")], "setting fallback_url = \"javascript:x\""),
            (vec![("WAYMARK_TRUSTED_PROXIES", "10.0.0.0/33")], "setting trusted_proxies = \"10.0.0.0/33\""),
            (vec![("WAYMARK_LOG_FORMAT", "xml")], "expected human or json"),
            (vec![("WAYMARK_KEYS", "k1:nope")], "setting keys is invalid: the secret of key \"k1\""),
        ];
        for (vars, want) in cases {
            let mut vars = vars;
            if !vars.iter().any(|(k, _)| *k == "WAYMARK_KEYS") {
                vars.push(("WAYMARK_KEYS", &k));
            }
            let mut raw = RawConfig::default();
            let err = match raw.apply_env(env(&vars)) {
                Err(e) => e,
                Ok(()) => raw.validate().unwrap_err(),
            };
            assert!(err.to_string().contains(want), "{vars:?}: {err}");
        }
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let err = RawConfig::from_toml("listne = \"x\"").unwrap_err();
        assert!(err.contains("unknown field `listne`"), "{err}");
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, key()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let raw = RawConfig { keys_file: Some(path.to_str().unwrap().into()), ..Default::default() };
        let err = raw.validate().unwrap_err();
        assert!(err.to_string().contains("mode 644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let raw = RawConfig { keys_file: Some(path.to_str().unwrap().into()), ..Default::default() };
        assert!(raw.validate().is_ok());
    }

    #[test]
    fn tenants_map_their_hosts() {
        let toml = format!(
            "keys = [\"{}\"]\n[[tenants]]\nname = \"a\"\nhosts = [\"T.Sender-A.com\"]\nfallback_url = \"https://sender-a.com/\"",
            key()
        );
        let c = RawConfig::from_toml(&toml).unwrap().validate().unwrap();
        let t = &c.tenants["t.sender-a.com"];
        assert_eq!(t.name, "a");
        assert_eq!(t.fallback_url.as_ref().unwrap().as_str(), "https://sender-a.com/");
    }
}
