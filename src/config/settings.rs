//! Every setting declared once: its file key, its environment variable, the
//! default and the effect the README shows, and whether its value is a
//! secret. `settings!` turns one declaration into the raw struct's field,
//! the environment override and the row of the README's reference table, so
//! the four can no longer drift apart.
//!
//! Nothing here checks a value beyond its shape (a number, a boolean, a
//! list); [`super::validate`] does that, naming the setting the way the user
//! wrote it ([`Origins::name`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// One setting as the README's configuration table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key in the TOML file, dotted inside a table (`kafka.topic`).
    pub key: &'static str,
    pub env: &'static str,
    /// The default as the README shows it.
    pub default: &'static str,
    pub effect: &'static str,
    /// Its value is never printed, not even in an error.
    pub secret: bool,
}

impl Setting {
    /// Its row in the README's table.
    pub fn row(&self) -> String {
        format!("| `{}` | `{}` | {} | {} |", self.key, self.env, self.default, self.effect)
    }
}

/// Where each setting's value came from, so an error names what the user
/// wrote: the environment variable, or the key in the named file.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: Option<PathBuf>,
    from_env: HashMap<&'static str, &'static str>,
}

impl Origins {
    /// How an error names `key`: `WAYMARK_LISTEN` when the environment set
    /// it, `listen (in waymark.toml)` when the file did, else `listen`.
    pub fn name(&self, key: &str) -> String {
        if let Some(env) = self.from_env.get(key) {
            return (*env).to_owned();
        }
        match &self.file {
            Some(file) => format!("{key} (in {})", file.display()),
            None => key.to_owned(),
        }
    }

    pub fn is_secret(key: &str) -> bool {
        all().any(|s| s.key == key && s.secret) || key.ends_with(".keys")
    }

    pub(super) fn set_file(&mut self, file: &Path) {
        self.file = Some(file.to_owned());
    }
}

/// How a value is read from an environment variable.
trait FromEnv: Sized {
    fn from_env(var: &str, value: &str, secret: bool, old: Option<Self>) -> Result<Self, ConfigError>;
}

fn shown(value: &str, secret: bool) -> String {
    if secret { "<redacted>".into() } else { value.to_owned() }
}

impl FromEnv for String {
    fn from_env(_: &str, value: &str, _: bool, _: Option<Self>) -> Result<Self, ConfigError> {
        Ok(value.to_owned())
    }
}

impl FromEnv for u64 {
    fn from_env(var: &str, value: &str, secret: bool, _: Option<Self>) -> Result<Self, ConfigError> {
        value.trim().parse().map_err(|_| ConfigError::invalid(var, shown(value, secret), "a whole number"))
    }
}

impl FromEnv for bool {
    fn from_env(var: &str, value: &str, secret: bool, _: Option<Self>) -> Result<Self, ConfigError> {
        match value.trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ConfigError::invalid(var, shown(value, secret), "true or false")),
        }
    }
}

/// A list: comma- or newline-separated.
impl FromEnv for Vec<String> {
    fn from_env(_: &str, value: &str, _: bool, _: Option<Self>) -> Result<Self, ConfigError> {
        Ok(value.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
    }
}

/// `KEY=VALUE` pairs, over the file's. A malformed pair is named by its
/// position and key only: these are where SASL passwords live.
impl FromEnv for BTreeMap<String, String> {
    fn from_env(var: &str, value: &str, _: bool, old: Option<Self>) -> Result<Self, ConfigError> {
        let mut map = old.unwrap_or_default();
        for (i, pair) in Vec::<String>::from_env(var, value, true, None)?.into_iter().enumerate() {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(ConfigError::invalid(
                    var,
                    format!("<entry {} redacted>", i + 1),
                    "comma-separated librdkafka properties, KEY=VALUE",
                ));
            };
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(map)
    }
}

/// Declares a raw settings struct: one line per setting, then any tables.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($prefix:literal) {
            $( $field:ident : $ty:ty = $env:literal, $default:literal, $effect:literal $(, $secret:ident)? ; )*
        }
        $( tables { $( $(#[$tmeta:meta])* $tfield:ident : $tty:ty , )* } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( pub $field: Option<$ty>, )*
            $( $( $(#[$tmeta])* pub $tfield: $tty, )* )?
        }

        impl $name {
            pub const SETTINGS: &'static [Setting] = &[
                $( Setting {
                    key: concat!($prefix, stringify!($field)),
                    env: $env,
                    default: $default,
                    effect: $effect,
                    secret: settings!(@secret $($secret)?),
                }, )*
            ];

            /// Overrides settings from their environment variables.
            fn apply_env(
                &mut self,
                env: &impl Fn(&str) -> Option<String>,
                origins: &mut Origins,
            ) -> Result<(), ConfigError> {
                $(
                    if let Some(value) = env($env) {
                        let secret = settings!(@secret $($secret)?);
                        self.$field = Some(<$ty as FromEnv>::from_env($env, &value, secret, self.$field.take())?);
                        origins.from_env.insert(concat!($prefix, stringify!($field)), $env);
                    }
                )*
                Ok(())
            }
        }
    };
    (@secret secret) => { true };
    (@secret) => { false };
}

settings! {
    /// Settings as written, before any checking: a missing one takes its
    /// default in [`super::validate`].
    pub struct RawConfig ("") {
        listen: String = "WAYMARK_LISTEN", "`127.0.0.1:8080`", "address of the public listener";
        public_url: String = "WAYMARK_PUBLIC_URL", "`http://` + listen", "base of the URLs printed at start and minted by `sign` without `--base-url`";
        keys: Vec<String> = "WAYMARK_KEYS", "—", "key ring, `KID:SECRET` entries, comma-separated; first seals", secret;
        keys_file: String = "WAYMARK_KEYS_FILE", "—", "file holding the key ring (one entry a line); must not be readable by others (mode 600)";
        data_dir: String = "WAYMARK_DATA_DIR", "`./waymark-data`", "where the development key ring and default events file live";
        events_file: String = "WAYMARK_EVENTS_FILE", "`{data_dir}/events.jsonl`", "JSON-lines events file";
        events_max_bytes: u64 = "WAYMARK_EVENTS_MAX_BYTES", "none", "rotate the events file before a write would take it past this size (`events.jsonl` → `events.jsonl.1` …); lines are never split";
        events_keep: u64 = "WAYMARK_EVENTS_KEEP", "`5`", "rotated events files kept (1 to 1000); older ones are deleted";
        fallback_url: String = "WAYMARK_FALLBACK_URL", "—", "where bad click links go instead of the error page";
        queue_capacity: u64 = "WAYMARK_QUEUE_CAPACITY", "`65536`", "hits waiting for the judge threads (shared out among them) before new ones are dropped (counted)";
        judge_threads: u64 = "WAYMARK_JUDGE_THREADS", "half the cores, at least 1", "threads that judge hits; each owns the messages whose tenant and id hash to it, so a message's hits are judged together and in order";
        flush_interval_ms: u64 = "WAYMARK_FLUSH_INTERVAL_MS", "`1000`", "how often the sink is flushed";
        shutdown_delay_ms: u64 = "WAYMARK_SHUTDOWN_DELAY_MS", "`0`", "how long after SIGTERM the service keeps accepting while `/readyz` answers 503 `draining`, so load balancers stop sending first (the Helm chart's preStop sleep does this instead)";
        shutdown_grace_ms: u64 = "WAYMARK_SHUTDOWN_GRACE_MS", "`10000`", "how long in-flight requests may take at shutdown";
        header_read_timeout_ms: u64 = "WAYMARK_HEADER_READ_TIMEOUT_MS", "`10000`", "time a client has to send its request head, and longest a connection may sit silent (before its first byte, between keep-alive requests, in a TLS handshake, or with no HTTP/2 stream open)";
        max_connections: u64 = "WAYMARK_MAX_CONNECTIONS", "`10000`", "connections served at once; beyond it clients wait in the accept queue";
        max_header_bytes: u64 = "WAYMARK_MAX_HEADER_BYTES", "`16384`", "largest request head; larger ones get 431 (8192 to 1048576)";
        trusted_proxies: Vec<String> = "WAYMARK_TRUSTED_PROXIES", "none", "CIDRs whose client-address header (`client_ip_header`) is believed; nobody else's is";
        client_ip_header: String = "WAYMARK_CLIENT_IP_HEADER", "`x-forwarded-for`", "the one header the trusted proxies write the client's address in: `x-forwarded-for` or `forwarded` (RFC 7239); the other is ignored";
        log_format: String = "WAYMARK_LOG_FORMAT", "`human`", "`human` or `json` (logs go to stderr; colour only on a terminal)";
        log: String = "WAYMARK_LOG", "`info`", "log filter, e.g. `info,waymark=debug`";
        scanner_rules: String = "WAYMARK_SCANNER_RULES", "built-in `data/scanners.toml`", "user-agent rule file, reloaded when it changes";
        network_lists: String = "WAYMARK_NETWORK_LISTS", "none", "directory of published network lists (Apple Private Relay, Google, Microsoft 365, OpenAI, plain CIDR files) named by its `lists.toml`, as `scripts/refresh-networks` writes it; re-read when it changes";
        asn_db: String = "WAYMARK_ASN_DB", "none", "MaxMind-format ASN database (GeoLite2-ASN layout): `network` in events, ASN operators in the network list";
        city_db: String = "WAYMARK_CITY_DB", "none", "MaxMind-format city database: `geo` in events";
        prefetch_window_ms: u64 = "WAYMARK_PREFETCH_WINDOW_MS", "`5000`", "hits this soon after the send time are prefetches";
        repeat_window_ms: u64 = "WAYMARK_REPEAT_WINDOW_MS", "`60000`", "repeats within this are not counted again; also the `dedup_key` bucket";
        burst_window_ms: u64 = "WAYMARK_BURST_WINDOW_MS", "`2000`", "window for a burst of clicks";
        burst_links: u64 = "WAYMARK_BURST_LINKS", "`3`", "distinct links in a burst";
        scan_window_ms: u64 = "WAYMARK_SCAN_WINDOW_MS", "`600000`", "how long a client caught scanning a message stays a scanner for it";
        count_opens: Vec<String> = "WAYMARK_COUNT_OPENS", "`human,proxy`", "verdicts whose opens count (machine opens never do)";
        count_clicks: Vec<String> = "WAYMARK_COUNT_CLICKS", "`human`", "verdicts whose clicks count";
        ua_cache_size: u64 = "WAYMARK_UA_CACHE_SIZE", "`20000`", "user agents whose parse is cached";
        tls_listen: String = "WAYMARK_TLS_LISTEN", "none", "HTTPS listener beside the plain one (needs a certificate)";
        tls_cert: String = "WAYMARK_TLS_CERT", "none", "PEM certificate chain served to clients without a known SNI name (with `tls_key`)";
        tls_key: String = "WAYMARK_TLS_KEY", "none", "its PEM private key";
        tls_reload_ms: u64 = "WAYMARK_TLS_RELOAD_MS", "`10000`", "how often certificate files are checked; a renewed one is served without a restart";
        ip_mode: String = "WAYMARK_IP_MODE", "`full`", "how events keep the client address: `full`, `truncated` (IPv4 /24, IPv6 /48), `hashed` (HMAC-SHA-256, `hash:` + 32 hex digits) or `none`";
        ip_hash_key: String = "WAYMARK_IP_HASH_KEY", "—", "base64url secret (≥ 16 bytes) for `hashed`; required with it", secret;
        keep_user_agent: bool = "WAYMARK_KEEP_USER_AGENT", "`true`", "`false` drops the user agent from events (the verdict and `device` stay)";
        admin_listen: String = "WAYMARK_ADMIN_LISTEN", "off", "internal listener for `/metrics`, `/healthz` and `/v1/instrument`";
        admin_token: String = "WAYMARK_ADMIN_TOKEN", "none (API off)", "bearer token for `/v1/*`, at least 16 characters, compared in constant time; white space around it (a file's last new line) is trimmed", secret;
        admin_max_body_bytes: u64 = "WAYMARK_ADMIN_MAX_BODY_BYTES", "2 MiB", "largest instrument request";
        unsubscribe_rate_per_minute: u64 = "WAYMARK_UNSUBSCRIBE_RATE_PER_MINUTE", "`30`", "requests a minute one client (IPv4 address, IPv6 /64) may make to `/u/`; beyond it 429 with `Retry-After` (pixels and clicks are never limited)";
        unsubscribe_durable_ms: u64 = "WAYMARK_UNSUBSCRIBE_DURABLE_MS", "`3000`", "how long `POST /u/` waits for its event to be durable (written and synced by the events file, or the spool) before answering 503 with `Retry-After` instead of confirming";
        admin_rate_per_minute: u64 = "WAYMARK_ADMIN_RATE_PER_MINUTE", "`600`", "the same for `/v1/*` on the admin listener";
        unknown_hosts: String = "WAYMARK_UNKNOWN_HOSTS", "`default`", "`default` or `reject` for hosts no tenant claims";
        judge: String = "WAYMARK_JUDGE", "`local`", "where hits are judged: `local` (inside `waymark serve`) or `kafka` (`serve` publishes hit records to `kafka.hits_topic`; `waymark judge` processes judge them)";
        spool_dir: String = "WAYMARK_SPOOL_DIR", "`{data_dir}/spool`", "the spool";
        spool_max_bytes: u64 = "WAYMARK_SPOOL_MAX_BYTES", "1 GiB", "cap on the spool";
        spool_segment_bytes: u64 = "WAYMARK_SPOOL_SEGMENT_BYTES", "16 MiB", "segment size; shipped segments are deleted";
        spool_fsync_ms: u64 = "WAYMARK_SPOOL_FSYNC_MS", "`1000`", "how often the spool is synced to disk";
    }
    tables {
        #[serde(default)]
        kafka: RawKafka,
        #[serde(default)]
        tls_certificates: Vec<RawCertificate>,
        #[serde(default)]
        tenants: Vec<RawTenant>,
    }
}

settings! {
    /// The `[kafka]` table.
    pub struct RawKafka ("kafka.") {
        brokers: String = "WAYMARK_KAFKA_BROKERS", "none (file sink)", "bootstrap servers";
        topic: String = "WAYMARK_KAFKA_TOPIC", "`waymark.events`", "topic (prefix with `topic_per_type`)";
        topic_per_type: bool = "WAYMARK_KAFKA_TOPIC_PER_TYPE", "`false`", "one topic per event type";
        properties: BTreeMap<String, String> = "WAYMARK_KAFKA_PROPERTIES", "—", "librdkafka properties over the defaults (`[kafka.properties]` in the file); their values are never printed", secret;
        flush_timeout_ms: u64 = "WAYMARK_KAFKA_FLUSH_TIMEOUT_MS", "`5000`", "how long shutdown waits for acknowledgements; the rest stays spooled";
        hits_topic: String = "WAYMARK_KAFKA_HITS_TOPIC", "`waymark.hits`", "topic of the hit records with `judge = \"kafka\"`, keyed by tenant and message id";
        judge_group: String = "WAYMARK_KAFKA_JUDGE_GROUP", "`waymark-judge`", "consumer group of the `waymark judge` processes";
        hits_partitions: u64 = "WAYMARK_KAFKA_HITS_PARTITIONS", "`6`", "partitions of the hits topic when waymark creates it (1 to 1000): the most judges that share the work";
    }
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

/// A tracking host served for one tenant (file only).
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

/// Every setting with an environment variable, in README order.
pub fn all() -> impl Iterator<Item = &'static Setting> {
    RawConfig::SETTINGS.iter().chain(RawKafka::SETTINGS)
}

impl RawConfig {
    /// Reads the TOML file, if any, then applies the environment.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Origins), ConfigError> {
        let mut origins = Origins::default();
        let mut raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| ConfigError::Read { path: path.into(), error })?;
                origins.set_file(path);
                Self::from_toml(&text)
                    .map_err(|message| ConfigError::Syntax { path: path.into(), message })?
            }
            None => RawConfig::default(),
        };
        raw.apply_all_env(&env, &mut origins)?;
        Ok((raw, origins))
    }

    /// Parses a config file's text. A syntax error is reported by line and
    /// column with serde's message, but never with the line itself, which
    /// may hold a secret (toml's own message quotes it).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line_text = text.lines().nth(line - 1).unwrap_or("");
                (line, line_text)
            });
            match at {
                Some((line, line_text)) if mentions_secret(line_text) => {
                    format!("line {line}: not valid here (the line is not shown: it holds a secret)")
                }
                Some((line, _)) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })
    }

    /// Overrides settings from `WAYMARK_*` variables.
    pub fn apply_all_env(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
        origins: &mut Origins,
    ) -> Result<(), ConfigError> {
        self.apply_env(env, origins)?;
        self.kafka.apply_env(env, origins)
    }
}

/// Whether a line of the config file sets a secret.
fn mentions_secret(line: &str) -> bool {
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
    all().any(|s| s.secret && s.key.rsplit('.').next() == Some(key))
        || ["keys", "password", "secret", "token", "sasl"]
            .iter()
            .any(|w| key.to_ascii_lowercase().contains(w))
        || !line.contains('=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_own_key_and_variable() {
        let mut keys: Vec<_> = all().map(|s| s.key).collect();
        let mut envs: Vec<_> = all().map(|s| s.env).collect();
        keys.sort();
        keys.dedup();
        envs.sort();
        envs.dedup();
        assert_eq!(keys.len(), all().count());
        assert_eq!(envs.len(), all().count());
        for s in all() {
            let expected = format!("WAYMARK_{}", s.key.replace('.', "_").to_ascii_uppercase());
            assert!(
                s.env == expected || s.key.starts_with("spool_") || s.key.starts_with("kafka."),
                "{} is read from {}, expected {expected}",
                s.key,
                s.env
            );
        }
    }

    /// The README's configuration tables list every declared setting, in
    /// the words declared here, and nothing else.
    #[test]
    fn readme_tables_match_the_declarations() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let documented: Vec<&str> =
            readme.lines().filter(|l| l.starts_with("| `") && l.contains("| `WAYMARK_")).collect();
        let declared: Vec<String> = all().map(Setting::row).collect();
        let missing: Vec<&String> =
            declared.iter().filter(|row| !documented.contains(&row.as_str())).collect();
        let stray: Vec<&&str> =
            documented.iter().filter(|row| !declared.iter().any(|d| d == **row)).collect();
        assert!(
            missing.is_empty() && stray.is_empty(),
            "README rows differ from the declarations.\nexpected rows:\n{}\nstray rows:\n{}",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            stray.iter().map(|s| **s).collect::<Vec<_>>().join("\n"),
        );
    }

    #[test]
    fn syntax_errors_never_quote_a_secret() {
        let secret = "k1:9J0fAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for text in [
            format!("keys = [\"{secret}\"\n"),
            format!("keys = \"{secret}\" x\n"),
            format!("admin_token = {secret}\n"),
            format!("[kafka.properties]\n\"sasl.password\" = {secret}\n"),
        ] {
            let err = RawConfig::from_toml(&text).unwrap_err();
            assert!(!err.contains("9J0f"), "{text:?} gave {err}");
        }
        let err = RawConfig::from_toml("listen = [").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }
}
