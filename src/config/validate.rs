//! Turns raw settings into checked values, one section at a time, and
//! names the bad setting the way the user wrote it. Pure: no file is read
//! or written here.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;

use super::settings::{RawCertificate, RawKafka, RawTenant};
use super::{
    AdminSettings, Config, ConfigError, JudgeMode, KeySpec, LogFormat, Origins, RawConfig, SinkSettings,
    TlsSettings,
};
use crate::classify::behaviour::Windows;
use crate::classify::{self, CountingPolicy, Verdict};
use crate::destination::Destination;
use crate::hit::ClientIpHeader;
use crate::keys::KeyRing;
use crate::privacy::{IpMode, Privacy};
use crate::rewrite::Switches;
use crate::sink::kafka::{HitsSettings, KafkaSettings};
use crate::sink::spool::SpoolSettings;
use crate::tenancy::{self, Tenant, UnknownHosts};
use crate::tls::CertSpec;

/// Names settings in errors, and keeps secrets out of them.
struct Check<'a> {
    origins: &'a Origins,
}

impl Check<'_> {
    fn invalid(&self, key: &str, value: impl Into<String>, expected: &str) -> ConfigError {
        let value = if Origins::is_secret(key) { "<redacted>".into() } else { value.into() };
        ConfigError::invalid(&self.origins.name(key), value, expected)
    }

    /// A setting that must be from 1 to `max`, `default` when unset.
    fn positive(&self, key: &str, v: Option<u64>, default: u64, max: u64) -> Result<u64, ConfigError> {
        match v.unwrap_or(default) {
            n @ 1.. if n <= max => Ok(n),
            n => Err(self.invalid(key, n.to_string(), &format!("a number from 1 to {max}"))),
        }
    }

    fn millis(&self, key: &str, v: Option<u64>, default: u64, max: u64) -> Result<Duration, ConfigError> {
        self.positive(key, v, default, max).map(Duration::from_millis)
    }

    /// A window that may be zero (off), at most 30 days.
    fn window(&self, key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            n if n <= 30 * 24 * 3_600_000 => Ok(Duration::from_millis(n)),
            n => Err(self.invalid(key, n.to_string(), "at most 30 days in milliseconds")),
        }
    }

    fn url(&self, key: &str, v: Option<String>) -> Result<Option<Destination>, ConfigError> {
        v.map(|v| {
            Destination::parse(&v)
                .map_err(|e| self.invalid(key, &v, &format!("an absolute http(s) URL ({e})")))
        })
        .transpose()
    }

    fn addr(&self, key: &str, text: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        text.parse()
            .map_err(|_| self.invalid(key, text, &format!("an IP address and port such as {example}")))
    }

    fn rate(&self, key: &str, v: Option<u64>, default: u64) -> Result<NonZeroU32, ConfigError> {
        let n = self.positive(key, v, default, 1_000_000)?;
        Ok(NonZeroU32::new(n as u32).expect("positive"))
    }

    fn one_of<T: Copy>(&self, key: &str, v: Option<&str>, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let text = v.unwrap_or(choices[0].0);
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
            .map(|(_, v)| *v)
            .ok_or_else(|| self.invalid(key, text, &names.join(" or ")))
    }

    fn keys(&self, key: &str, entries: &[String]) -> Result<KeyRing, ConfigError> {
        KeyRing::parse(&entries.join(","))
            .map_err(|error| ConfigError::Keys { setting: self.origins.name(key), error })
    }
}

/// Checks every setting and fills in the defaults.
pub fn validate(raw: RawConfig, origins: &Origins) -> Result<Config, ConfigError> {
    let c = Check { origins };
    let classify = classify_with(&c, &raw)?;
    let listen = c.addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8080"), "127.0.0.1:8080")?;
    let public_url = c.url("public_url", raw.public_url)?;
    let fallback_url = c.url("fallback_url", raw.fallback_url)?;
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./waymark-data".into()));
    let events_file = raw.events_file.map(PathBuf::from).unwrap_or_else(|| data_dir.join("events.jsonl"));
    let events_rotation = crate::sink::file::Rotation {
        max_bytes: match raw.events_max_bytes {
            None => None,
            n => Some(c.positive("events_max_bytes", n, 0, 1 << 50)?),
        },
        keep: c.positive("events_keep", raw.events_keep, 5, 1_000)? as usize,
    };

    let queue_capacity = c.positive("queue_capacity", raw.queue_capacity, 65_536, 16 << 20)? as usize;
    let flush_interval = c.millis("flush_interval_ms", raw.flush_interval_ms, 1_000, 3_600_000)?;
    let shutdown_delay = match raw.shutdown_delay_ms.unwrap_or(0) {
        n if n <= 600_000 => Duration::from_millis(n),
        n => return Err(c.invalid("shutdown_delay_ms", n.to_string(), "0 to 600000 milliseconds")),
    };
    let shutdown_grace = c.millis("shutdown_grace_ms", raw.shutdown_grace_ms, 10_000, 600_000)?;
    let header_read_timeout =
        c.millis("header_read_timeout_ms", raw.header_read_timeout_ms, 10_000, 600_000)?;
    let max_connections = c.positive("max_connections", raw.max_connections, 10_000, 1_000_000)? as usize;
    let max_header_bytes = match raw.max_header_bytes.unwrap_or(16_384) {
        n @ 8_192..=1_048_576 => n as usize,
        n => return Err(c.invalid("max_header_bytes", n.to_string(), "a size from 8192 to 1048576")),
    };
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .into_iter()
        .map(|cidr| {
            cidr.parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| c.invalid("trusted_proxies", &cidr, "a list of CIDRs such as 10.0.0.0/8"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client_ip_header = c.one_of(
        "client_ip_header",
        raw.client_ip_header.as_deref(),
        &[("x-forwarded-for", ClientIpHeader::XForwardedFor), ("forwarded", ClientIpHeader::Forwarded)],
    )?;
    let log_format = c.one_of(
        "log_format",
        raw.log_format.as_deref(),
        &[("human", LogFormat::Human), ("json", LogFormat::Json)],
    )?;
    let log = raw.log.unwrap_or_else(|| "info".into());

    let tenants = raw.tenants.into_iter().map(|t| tenant(&c, t)).collect::<Result<Vec<_>, _>>()?;
    tenancy::check_hosts(&tenants).map_err(|(tenant, host)| {
        c.invalid(&format!("tenants[{tenant}].hosts"), host, "a host served by one tenant only")
    })?;
    let unknown_hosts = c.one_of(
        "unknown_hosts",
        raw.unknown_hosts.as_deref(),
        &[("default", UnknownHosts::Default), ("reject", UnknownHosts::Reject)],
    )?;
    let unsubscribe_rate = c.rate("unsubscribe_rate_per_minute", raw.unsubscribe_rate_per_minute, 30)?;
    // Half the cores: the other half answers requests.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let judge_threads = c.positive("judge_threads", raw.judge_threads, (cores / 2).max(1), 256)? as usize;
    let unsubscribe_durable =
        c.millis("unsubscribe_durable_ms", raw.unsubscribe_durable_ms, 3_000, 60_000)?;
    // Trimmed: a token read from a file or a secret often ends in a new
    // line, which no client sends back. Checked even without an admin
    // listener: a weak secret is a mistake wherever it waits to be used.
    let token = raw.admin_token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if token.as_ref().is_some_and(|t| t.len() < 16 || t.chars().any(char::is_whitespace)) {
        return Err(c.invalid("admin_token", "", "a secret of at least 16 characters, without spaces"));
    }
    let admin = match raw.admin_listen {
        None => None,
        Some(text) => {
            let admin_listen = c.addr("admin_listen", &text, "127.0.0.1:9090")?;
            if admin_listen == listen && listen.port() != 0 {
                return Err(c.invalid("admin_listen", &text, "an address other than the public listener's"));
            }
            let max_body =
                c.positive("admin_max_body_bytes", raw.admin_max_body_bytes, 2 << 20, 64 << 20)? as usize;
            let rate = c.rate("admin_rate_per_minute", raw.admin_rate_per_minute, 600)?;
            Some(AdminSettings { listen: admin_listen, rate, token, max_body })
        }
    };
    let tls = tls(&c, raw.tls_listen, raw.tls_cert, raw.tls_key, raw.tls_certificates, raw.tls_reload_ms)?;
    let privacy = privacy(&c, raw.ip_mode.as_deref(), raw.ip_hash_key.as_deref(), raw.keep_user_agent)?;
    let spool = SpoolSettings {
        max_bytes: c.positive("spool_max_bytes", raw.spool_max_bytes, 1 << 30, 1 << 50)?,
        segment_bytes: c.positive("spool_segment_bytes", raw.spool_segment_bytes, 16 << 20, 1 << 30)?,
        fsync_every: c.millis("spool_fsync_ms", raw.spool_fsync_ms, 1_000, 3_600_000)?,
    };
    let spool_dir = raw.spool_dir.map(PathBuf::from).unwrap_or_else(|| data_dir.join("spool"));
    let judge = judge(&c, raw.judge.as_deref(), &raw.kafka)?;
    let sink = match kafka(&c, raw.kafka, spool_dir, spool)? {
        Some(kafka) => SinkSettings::Kafka(kafka),
        None => SinkSettings::File(events_file.clone()),
    };
    let keys = match (raw.keys, raw.keys_file) {
        (Some(list), _) => {
            KeySpec::Inline { setting: origins.name("keys"), ring: Arc::new(c.keys("keys", &list)?) }
        }
        (None, Some(path)) => KeySpec::File { setting: origins.name("keys_file"), path: path.into() },
        (None, None) => KeySpec::Development(data_dir.join("dev-keys")),
    };
    Ok(Config {
        listen,
        public_url,
        keys,
        data_dir,
        events_file,
        events_rotation,
        fallback_url,
        queue_capacity,
        flush_interval,
        shutdown_delay,
        shutdown_grace,
        header_read_timeout,
        max_connections,
        max_header_bytes,
        trusted_proxies,
        client_ip_header,
        log_format,
        log,
        tenants,
        unknown_hosts,
        unsubscribe_rate,
        unsubscribe_durable,
        judge_threads,
        admin,
        classify,
        tls,
        privacy,
        sink,
        judge,
    })
}

/// `judge`, and with `kafka` the hits topic it needs: brokers, and a topic
/// other than the events'.
fn judge(c: &Check, mode: Option<&str>, raw: &RawKafka) -> Result<JudgeMode, ConfigError> {
    #[derive(Clone, Copy)]
    enum Mode {
        Local,
        Kafka,
    }
    if let Mode::Local = c.one_of("judge", mode, &[("local", Mode::Local), ("kafka", Mode::Kafka)])? {
        return Ok(JudgeMode::Local);
    }
    if raw.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
        return Err(c.invalid("judge", "kafka", "local, or kafka with kafka.brokers set"));
    }
    let topic = raw.hits_topic.clone().unwrap_or_else(|| "waymark.hits".into());
    check_topic(c, "kafka.hits_topic", &topic)?;
    let events = raw.topic.as_deref().unwrap_or("waymark.events");
    if topic == events || (raw.topic_per_type == Some(true) && topic.starts_with(&format!("{events}."))) {
        return Err(c.invalid("kafka.hits_topic", &topic, "a topic other than the events' (kafka.topic)"));
    }
    let group = raw.judge_group.clone().unwrap_or_else(|| "waymark-judge".into());
    if group.trim().is_empty() || group.len() > 255 {
        return Err(c.invalid("kafka.judge_group", &group, "a consumer group name of 1 to 255 characters"));
    }
    let partitions = c.positive("kafka.hits_partitions", raw.hits_partitions, 6, 1000)? as u32;
    Ok(JudgeMode::Kafka(HitsSettings { topic, group, partitions }))
}

fn check_topic(c: &Check, key: &str, topic: &str) -> Result<(), ConfigError> {
    if topic.is_empty()
        || topic.len() > 249
        || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(c.invalid(key, topic, "a topic name of letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

fn tenant(c: &Check, t: RawTenant) -> Result<Tenant, ConfigError> {
    let setting = format!("tenants[{}]", t.name);
    if t.name.is_empty() || t.name.len() > crate::token::limits::TENANT {
        return Err(c.invalid("tenants.name", &t.name, "a name of 1 to 63 characters"));
    }
    let fallback_url = c.url(&format!("{setting}.fallback_url"), t.fallback_url)?;
    let hosts = t
        .hosts
        .iter()
        .map(|host| {
            tenancy::normalize_host(host)
                .ok_or_else(|| c.invalid(&format!("{setting}.hosts"), host, "a host name without port"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first =
        hosts.first().ok_or_else(|| c.invalid(&format!("{setting}.hosts"), "", "at least one host name"))?;
    let base_url = Destination::parse(&format!("https://{first}"))
        .map_err(|_| c.invalid(&format!("{setting}.hosts"), first, "at least one host name"))?;
    let keys = t.keys.map(|k| c.keys(&format!("{setting}.keys"), &k).map(std::sync::Arc::new)).transpose()?;
    let switches = Switches {
        opens: t.opens.unwrap_or(true),
        clicks: t.clicks.unwrap_or(true),
        unsubscribe: t.unsubscribe.unwrap_or(true),
    };
    Ok(Tenant { name: t.name, hosts, base_url, fallback_url, switches, keys })
}

fn tls(
    c: &Check,
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    more: Vec<RawCertificate>,
    reload_ms: Option<u64>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let mut certificates = Vec::new();
    match (cert, key) {
        (Some(cert), Some(key)) => {
            certificates.push(CertSpec { hosts: vec![], cert: cert.into(), key: key.into() })
        }
        (None, None) => {}
        (Some(_), None) => return Err(c.invalid("tls_key", "", "a key file to go with tls_cert")),
        (None, Some(_)) => return Err(c.invalid("tls_cert", "", "a certificate file to go with tls_key")),
    }
    certificates.extend(more.into_iter().map(|c| CertSpec {
        hosts: c.hosts,
        cert: c.cert.into(),
        key: c.key.into(),
    }));
    match listen {
        Some(text) => {
            let listen = c.addr("tls_listen", &text, "0.0.0.0:8443")?;
            if certificates.is_empty() {
                return Err(c.invalid(
                    "tls_listen",
                    &text,
                    "a certificate too (tls_cert and tls_key, or [[tls_certificates]])",
                ));
            }
            let reload_every = c.millis("tls_reload_ms", reload_ms, 10_000, 86_400_000)?;
            Ok(Some(TlsSettings { listen, certificates, reload_every }))
        }
        None if !certificates.is_empty() => {
            Err(c.invalid("tls_listen", "", "an address to serve the configured certificates on"))
        }
        None => Ok(None),
    }
}

fn privacy(
    c: &Check,
    mode: Option<&str>,
    key: Option<&str>,
    keep_ua: Option<bool>,
) -> Result<Privacy, ConfigError> {
    let ip_mode = match mode {
        None => IpMode::Full,
        Some(m) => {
            IpMode::parse(m).ok_or_else(|| c.invalid("ip_mode", m, "full, truncated, hashed or none"))?
        }
    };
    let ip_hash_key = match key {
        Some(k) => Some(
            URL_SAFE_NO_PAD
                .decode(k.trim().trim_end_matches('='))
                .ok()
                .filter(|b| b.len() >= 16)
                .ok_or_else(|| c.invalid("ip_hash_key", "", "base64url of at least 16 random bytes"))?,
        ),
        None if ip_mode == IpMode::Hashed => {
            return Err(c.invalid(
                "ip_hash_key",
                "",
                "a secret key when ip_mode is hashed (waymark keygen makes one)",
            ));
        }
        None => None,
    };
    Ok(Privacy::new(ip_mode, ip_hash_key.as_deref().unwrap_or(&[0; 32]), keep_ua.unwrap_or(true)))
}

/// The `[kafka]` section, when brokers are configured. librdkafka's own
/// check of the properties is a start-up step (`startup::probe_kafka`).
fn kafka(
    c: &Check,
    raw: RawKafka,
    spool_dir: PathBuf,
    spool: SpoolSettings,
) -> Result<Option<KafkaSettings>, ConfigError> {
    let Some(brokers) = raw.brokers.filter(|b| !b.trim().is_empty()) else { return Ok(None) };
    let topic = raw.topic.unwrap_or_else(|| "waymark.events".into());
    check_topic(c, "kafka.topic", &topic)?;
    Ok(Some(KafkaSettings {
        brokers,
        topic,
        topic_per_type: raw.topic_per_type.unwrap_or(false),
        properties: raw.properties.unwrap_or_default().into_iter().collect(),
        flush_timeout: c.millis("kafka.flush_timeout_ms", raw.flush_timeout_ms, 5_000, 600_000)?,
        spool_dir,
        spool,
    }))
}

/// The classifier's settings alone: `waymark classify` needs these and no keys.
pub fn classify_settings(raw: &RawConfig, origins: &Origins) -> Result<classify::Settings, ConfigError> {
    classify_with(&Check { origins }, raw)
}

fn classify_with(c: &Check, raw: &RawConfig) -> Result<classify::Settings, ConfigError> {
    let verdicts =
        |key: &str, v: &Option<Vec<String>>, default: &[Verdict]| -> Result<Vec<Verdict>, ConfigError> {
            match v {
                None => Ok(default.to_vec()),
                Some(list) => list
                    .iter()
                    .map(|s| {
                        Verdict::parse(s.trim())
                            .ok_or_else(|| c.invalid(key, s, "a list of human, proxy, bot, scanner"))
                    })
                    .collect(),
            }
        };
    let path = |v: &Option<String>| v.as_ref().map(PathBuf::from);
    let defaults = classify::Settings::default();
    Ok(classify::Settings {
        rules_file: path(&raw.scanner_rules),
        network_lists: path(&raw.network_lists),
        asn_db: path(&raw.asn_db),
        city_db: path(&raw.city_db),
        prefetch_window: c.window("prefetch_window_ms", raw.prefetch_window_ms, 5_000)?,
        windows: Windows {
            repeat: c.window("repeat_window_ms", raw.repeat_window_ms, 60_000)?,
            burst: c.window("burst_window_ms", raw.burst_window_ms, 2_000)?,
            burst_links: c.positive("burst_links", raw.burst_links, 3, 1000)? as usize,
            scan: c.window("scan_window_ms", raw.scan_window_ms, 600_000)?,
            memory: defaults.windows.memory,
        },
        policy: CountingPolicy {
            opens: verdicts("count_opens", &raw.count_opens, &defaults.policy.opens)?,
            clicks: verdicts("count_clicks", &raw.count_clicks, &defaults.policy.clicks)?,
        },
        cache_capacity: c.positive("ua_cache_size", raw.ua_cache_size, 20_000, 100_000_000)?,
    })
}
