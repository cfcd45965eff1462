//! The command line: `serve`, `sign`, `keygen`. Parsing lives here with
//! clap; each command is a few lines over the library. `anyhow` is used here
//! and in `main.rs` only.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::io::{BufRead as _, Write};

use crate::classify::Classifier;
use crate::config::{Config, KeySource, LogFormat, RawConfig};
use crate::destination::Destination;
use crate::keys::{Key, KeyId};
use crate::server::Server;
use crate::token::{self, Claims, Kind, Link, Target};

#[derive(Debug, Parser)]
#[command(name = "waymark", version, about = "Email engagement tracking at the edge")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve tracking URLs (configured by --config and WAYMARK_* variables).
    Serve {
        #[arg(long, env = "WAYMARK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a new random key as KID:SECRET, for WAYMARK_KEYS.
    Keygen {
        /// Key id, 1 to 8 characters of A-Z a-z 0-9 - _ (default: k + today's date).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Mint a tracking URL with the configured key ring.
    Sign(Box<SignArgs>),
    /// Classify user agents (one a line on stdin, or `IP<TAB>USER_AGENT`) with
    /// exactly the code the server runs; prints one JSON object a line.
    Classify {
        /// Classify this one user agent instead of reading stdin.
        #[arg(long)]
        ua: Option<String>,
        /// The client address that goes with --ua.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Judge as a hit on this kind of URL (a proxy network explains an open, not a click).
        #[arg(long, value_enum, default_value_t = ClassifyKind::Click)]
        kind: ClassifyKind,
        #[arg(long, env = "WAYMARK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Instrument an HTML email read from stdin: click URLs, the pixel, the
    /// honeypot and the unsubscribe URL; HTML to stdout, headers to --headers.
    Rewrite(Box<RewriteArgs>),
    /// Inspect or drain the Kafka sink's disk spool.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
        #[arg(long, env = "WAYMARK_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// Exit 0 if the service answers 200 on its health endpoint: a container
    /// probe that needs no shell and no curl.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RewriteArgs {
    #[command(flatten)]
    pub message: MessageArgs,
    #[arg(long)]
    pub no_opens: bool,
    #[arg(long)]
    pub no_clicks: bool,
    #[arg(long)]
    pub no_unsubscribe: bool,
    /// Also offer unsubscribing by mail to this address in List-Unsubscribe.
    #[arg(long)]
    pub unsubscribe_mailto: Option<String>,
    /// Write the headers to add here, one `Name: value` a line (default: stderr).
    #[arg(long)]
    pub headers: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Print the spool's segments, size, cursor and pending events as JSON.
    Status,
    /// Ship what the spool holds to the configured brokers and wait for
    /// their acknowledgements (run it while the service is stopped).
    Replay {
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClassifyKind {
    Open,
    Click,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignKind {
    Open,
    Click,
    Unsubscribe,
}

/// What `sign` and `rewrite` both need to know of the message.
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    /// Base of the tracking URLs, e.g. `https://t.example.com` (default: public_url, else the listen address).
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long)]
    pub message_id: String,
    #[arg(long)]
    pub recipient: Option<String>,
    /// When the message was sent, RFC 3339 (default: now).
    #[arg(long)]
    pub sent_at: Option<String>,
    #[arg(long, default_value = "")]
    pub tenant: String,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// K=V pairs carried into every event.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    #[arg(long, env = "WAYMARK_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    pub kind: SignKind,
    #[command(flatten)]
    pub message: MessageArgs,
    /// Destination of a click link: an absolute http or https URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Position of the link in the message (click only).
    #[arg(long, default_value_t = 0)]
    pub link_index: u16,
    /// When the URL stops working, RFC 3339 (default: never).
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Mint this many URLs, one a line, for message ids ID-0, ID-1, … (for
    /// bulk sends and load tests).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(load_config(config)?),
        Command::Keygen { kid } => {
            let kid = kid.unwrap_or_else(|| {
                let today = OffsetDateTime::now_utc().date();
                format!("k{:02}{:02}{:02}", today.year() % 100, today.month() as u8, today.day())
            });
            println!("{}", Key::generate_entry(&KeyId::new(&kid)?));
            Ok(())
        }
        Command::Classify { ua, ip, kind, config } => {
            let raw = RawConfig::load(config.as_deref(), |k| std::env::var(k).ok())?;
            let mut classifier = Classifier::new(&crate::config::classify_settings(&raw)?)?;
            let kind = match kind {
                ClassifyKind::Open => Kind::Open,
                ClassifyKind::Click => Kind::Click,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match ua {
                Some(ua) => classify_line(&mut classifier, kind, ip, Some(&ua), &mut out)?,
                None => {
                    for line in std::io::stdin().lock().lines() {
                        let line = line.context("cannot read stdin")?;
                        let (ip, ua) = split_classify_line(&line)?;
                        classify_line(&mut classifier, kind, ip, ua, &mut out)?;
                    }
                }
            }
            out.flush()?;
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(&url),
        Command::Rewrite(args) => rewrite(&args),
        Command::Spool { action, config } => {
            let config = load_config(config)?;
            let crate::config::SinkSettings::Kafka(kafka) = config.sink else {
                bail!(
                    "no Kafka brokers are configured (kafka.brokers or WAYMARK_KAFKA_BROKERS): there is no spool"
                );
            };
            match action {
                SpoolAction::Status => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&crate::sink::spool::status(&kafka.spool_dir)?)?
                    );
                }
                SpoolAction::Replay { timeout_secs } => {
                    let (sent, acked) =
                        crate::sink::kafka::replay_now(kafka, std::time::Duration::from_secs(timeout_secs))?;
                    println!("sent {sent} events, {acked} acknowledged");
                }
            }
            Ok(())
        }
        Command::Sign(args) => {
            let config = load_config(args.message.config.clone())?;
            if args.count <= 1 {
                println!("{}", sign(&config, &args)?);
                return Ok(());
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut one = SignArgs { count: 1, ..(*args).clone() };
            for i in 0..args.count {
                one.message.message_id = format!("{}-{i}", args.message.message_id);
                writeln!(out, "{}", sign(&config, &one)?)?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

/// `USER_AGENT` or `IP<TAB>USER_AGENT`; an empty user agent is a missing one.
fn split_classify_line(line: &str) -> anyhow::Result<(Option<std::net::IpAddr>, Option<&str>)> {
    let (ip, ua) = match line.split_once('\t') {
        Some((ip, ua)) => {
            let ip =
                ip.trim().parse().with_context(|| format!("{ip:?} before the tab is not an IP address"))?;
            (Some(ip), ua)
        }
        None => (None, line),
    };
    let ua = ua.trim();
    Ok((ip, (!ua.is_empty()).then_some(ua)))
}

fn classify_line(
    classifier: &mut Classifier,
    kind: Kind,
    ip: Option<std::net::IpAddr>,
    ua: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let a = classifier.assess(kind, ip, ua);
    let line = serde_json::json!({
        "ip": ip,
        "user_agent": ua,
        "verdict": a.verdict,
        "reasons": a.reasons,
        "machine_open": a.machine_open,
        "device": a.device,
        "geo": a.geo,
        "network": a.asn,
        "rules_version": classifier.rules_version(),
    });
    writeln!(out, "{line}")?;
    Ok(())
}

fn rewrite(args: &RewriteArgs) -> anyhow::Result<()> {
    use std::io::Read as _;
    let m = &args.message;
    let config = load_config(m.config.clone())?;
    let (base, keys) = minting(&config, m)?;
    let msg = crate::rewrite::Message {
        base_url: Destination::parse(&base)?,
        tenant: m.tenant.clone(),
        message_id: m.message_id.clone(),
        recipient: m.recipient.clone(),
        sent_at: parse_time("--sent-at", &m.sent_at)?.unwrap_or_else(now_secs),
        tags: m.tags.clone(),
        meta: parse_meta(&m.meta)?,
        switches: crate::rewrite::Switches {
            opens: !args.no_opens,
            clicks: !args.no_clicks,
            unsubscribe: !args.no_unsubscribe,
        },
        tracking_hosts: config.tenants.keys().cloned().collect(),
        unsubscribe_mailto: args.unsubscribe_mailto.clone(),
    };
    let mut html = Vec::new();
    std::io::stdin().read_to_end(&mut html).context("cannot read the HTML from stdin")?;
    let out = crate::rewrite::instrument(keys, &msg, &html)?;
    std::io::stdout().write_all(&out.html)?;
    let headers: String = out.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    match &args.headers {
        Some(path) => {
            std::fs::write(path, headers).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => eprint!("{headers}"),
    }
    Ok(())
}

fn now_secs() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

fn parse_time(flag: &str, v: &Option<String>) -> anyhow::Result<Option<u64>> {
    v.as_deref()
        .map(|t| {
            let at = OffsetDateTime::parse(t, &Rfc3339).with_context(|| {
                format!("{flag} {t:?} is not an RFC 3339 time such as 2026-11-24T09:30:00Z")
            })?;
            u64::try_from(at.unix_timestamp()).with_context(|| format!("{flag} {t:?} is before 1970"))
        })
        .transpose()
}

fn parse_meta(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--meta {kv:?} is not of the form KEY=VALUE"),
        })
        .collect()
}

/// Where a message's URLs are minted, and with which keys: `--base-url`
/// (checked, without a trailing slash), else the tenant's first host, else
/// the default; the tenant's own key ring when it has one.
fn minting<'c>(config: &'c Config, m: &MessageArgs) -> anyhow::Result<(String, &'c crate::keys::KeyRing)> {
    let tenant = match m.tenant.as_str() {
        "" => None,
        name => Some(
            config
                .tenants
                .values()
                .find(|t| t.name == name)
                .with_context(|| format!("--tenant {name:?} is not configured in [[tenants]]"))?,
        ),
    };
    let base = match (&m.base_url, tenant) {
        (Some(b), _) => Destination::parse(b)
            .with_context(|| format!("--base-url {b:?}"))?
            .as_str()
            .trim_end_matches('/')
            .to_owned(),
        (None, Some(t)) => t.base_url.as_str().trim_end_matches('/').to_owned(),
        (None, None) => default_base(config),
    };
    let keys = tenant.and_then(|t| t.keys.as_deref()).unwrap_or(&config.keys);
    Ok((base, keys))
}

fn healthcheck(url: &str) -> anyhow::Result<()> {
    use std::io::Read as _;
    use std::net::{TcpStream, ToSocketAddrs as _};
    use std::time::Duration;
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if parsed.scheme() != "http" {
        bail!("--url {url:?} has scheme {:?}: expected http", parsed.scheme());
    }
    let host = parsed.host_str().context("--url has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addr = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} does not resolve"))?;
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", parsed.path())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).context("no HTTP answer")?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => bail!("{url} answered {}", String::from_utf8_lossy(status)),
    }
}

fn load_config(file: Option<PathBuf>) -> anyhow::Result<Config> {
    let raw = RawConfig::load(file.as_deref(), |k| std::env::var(k).ok())?;
    Ok(raw.validate()?)
}

/// The base URL links are minted under when none is given.
pub fn default_base(config: &Config) -> String {
    default_base_of(config.public_url.as_ref(), config.listen)
}

/// `public_url`, or `http://` and the listen address (loopback for any).
pub fn default_base_of(public_url: Option<&Destination>, listen: std::net::SocketAddr) -> String {
    match public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    }
}

/// Mints the URL `waymark sign` prints.
pub fn sign(config: &Config, args: &SignArgs) -> anyhow::Result<String> {
    let m = &args.message;
    let (base, keys) = minting(config, m)?;
    let target = match (args.kind, &args.url) {
        (SignKind::Click, Some(url)) => Target::Click(Link {
            index: args.link_index,
            url: Destination::parse(url).context("--url")?,
            trap: false,
        }),
        (SignKind::Click, None) => {
            bail!("a click link needs --url: the destination, an absolute http or https URL")
        }
        (_, Some(_)) => bail!("--url is for click links only"),
        (SignKind::Open, None) => Target::Open,
        (SignKind::Unsubscribe, None) => Target::Unsubscribe,
    };
    let meta = parse_meta(&m.meta)?;
    let claims = Claims {
        target,
        tenant: m.tenant.clone(),
        message_id: m.message_id.clone(),
        recipient: m.recipient.clone(),
        sent_at: parse_time("--sent-at", &m.sent_at)?.unwrap_or_else(now_secs),
        expires_at: parse_time("--expires-at", &args.expires_at)?,
        tags: m.tags.clone(),
        meta,
    };
    let token = token::seal(keys, &claims)?;
    Ok(match args.kind {
        SignKind::Open => format!("{base}/o/{token}.gif"),
        SignKind::Click => format!("{base}/c/{token}"),
        SignKind::Unsubscribe => format!("{base}/u/{token}"),
    })
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).with_context(|| {
        format!("setting log = {:?} is not a valid filter such as info or waymark=debug", config.log)
    })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config)?;
    if let KeySource::Development(path) = &config.key_source {
        tracing::warn!(
            path = %path.display(),
            "DEVELOPMENT KEY RING IN USE: links minted now stop working wherever this file is lost. \
             Set WAYMARK_KEYS (see `waymark keygen`) before sending real mail."
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let base = default_base(&config);
        let sink = config.sink.clone();
        let demo = demo_links(&config)?;
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        if let Some(tls) = server.tls_addr() {
            println!("waymark listening on https://{tls}");
        }
        if let Some(admin) = server.admin_addr() {
            println!("admin (metrics, instrument API) on http://{admin}");
        }
        let base = base.replace(&format!(":{}", 0), &format!(":{}", addr.port()));
        let demo = demo.map(|(o, c)| (o.replace("{base}", &base), c.replace("{base}", &base)));
        match &sink {
            crate::config::SinkSettings::File(path) => println!("events are written to {}", path.display()),
            crate::config::SinkSettings::Kafka(k) => {
                println!(
                    "events go to Kafka at {} (topic {}), spooled in {}",
                    k.brokers,
                    k.topic,
                    k.spool_dir.display()
                )
            }
        }
        if let Some((open, click)) = demo {
            println!("try:\n  curl -s {open} | od -c\n  curl -si {click}");
        }
        // Last, so whoever waits for this line has the whole banner.
        println!("waymark listening on http://{addr}");
        server.run(crate::server::shutdown_signal()).await;
        anyhow::Ok(())
    })
}

/// Ready-to-curl links for the start-up banner, under a `{base}` placeholder
/// filled in once the port is known.
fn demo_links(config: &Config) -> anyhow::Result<Option<(String, String)>> {
    if !config.tenants.is_empty() {
        return Ok(None);
    }
    let claims = Claims {
        target: Target::Open,
        tenant: String::new(),
        message_id: format!("demo-{}", ulid::Ulid::generate()),
        recipient: Some("you@example.com".into()),
        // A minute ago, so a quick curl is not mistaken for a prefetch.
        sent_at: (OffsetDateTime::now_utc().unix_timestamp() - 60).max(0) as u64,
        expires_at: None,
        tags: vec!["demo".into()],
        meta: vec![],
    };
    let open = token::seal(&config.keys, &claims)?;
    let click = token::seal(
        &config.keys,
        &Claims {
            target: Target::Click(Link {
                index: 0,
                url: Destination::parse("https://example.com/")?,
                trap: false,
            }),
            ..claims
        },
    )?;
    Ok(Some((format!("{{base}}/o/{open}.gif"), format!("{{base}}/c/{click}"))))
}
