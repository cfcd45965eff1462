//! The command line: `serve`, `sign`, `keygen`. Parsing lives here with
//! clap; each command is a few lines over the library. `anyhow` is used here
//! and in `main.rs` only.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Config, KeySource, LogFormat, RawConfig};
use crate::destination::Destination;
use crate::keys::{Key, KeyId};
use crate::server::Server;
use crate::token::{self, Claims, Link, Target};

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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignKind {
    Open,
    Click,
    Unsubscribe,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    pub kind: SignKind,
    /// Base of the tracking URL, e.g. https://t.example.com (default: public_url, else the listen address).
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long)]
    pub message_id: String,
    #[arg(long)]
    pub recipient: Option<String>,
    /// Destination of a click link: an absolute http or https URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Position of the link in the message (click only).
    #[arg(long, default_value_t = 0)]
    pub link_index: u16,
    /// When the message was sent, RFC 3339 (default: now).
    #[arg(long)]
    pub sent_at: Option<String>,
    /// When the URL stops working, RFC 3339 (default: never).
    #[arg(long)]
    pub expires_at: Option<String>,
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
        Command::Sign(args) => {
            let config = load_config(args.config.clone())?;
            println!("{}", sign(&config, &args)?);
            Ok(())
        }
    }
}

fn load_config(file: Option<PathBuf>) -> anyhow::Result<Config> {
    let raw = RawConfig::load(file.as_deref(), |k| std::env::var(k).ok())?;
    Ok(raw.validate()?)
}

/// The base URL links are minted under when none is given.
pub fn default_base(config: &Config) -> String {
    match &config.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => {
            let mut addr = config.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    }
}

/// Mints the URL `waymark sign` prints.
pub fn sign(config: &Config, args: &SignArgs) -> anyhow::Result<String> {
    let base = match &args.base_url {
        Some(b) => Destination::parse(b)
            .with_context(|| format!("--base-url {b:?}"))?
            .as_str()
            .trim_end_matches('/')
            .to_owned(),
        None => default_base(config),
    };
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
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|t| {
                let at = OffsetDateTime::parse(t, &Rfc3339).with_context(|| {
                    format!("{flag} {t:?} is not an RFC 3339 time such as 2026-11-24T09:30:00Z")
                })?;
                u64::try_from(at.unix_timestamp()).with_context(|| format!("{flag} {t:?} is before 1970"))
            })
            .transpose()
    };
    let meta = args
        .meta
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--meta {kv:?} is not of the form KEY=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let claims = Claims {
        target,
        tenant: args.tenant.clone(),
        message_id: args.message_id.clone(),
        recipient: args.recipient.clone(),
        sent_at: time("--sent-at", &args.sent_at)?
            .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp() as u64),
        expires_at: time("--expires-at", &args.expires_at)?,
        tags: args.tags.clone(),
        meta,
    };
    let token = token::seal(&config.keys, &claims)?;
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
        let events_file = config.events_file.clone();
        let demo = demo_links(&config)?;
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        let base = base.replace(&format!(":{}", 0), &format!(":{}", addr.port()));
        let demo = demo.map(|(o, c)| (o.replace("{base}", &base), c.replace("{base}", &base)));
        println!("events are written to {}", events_file.display());
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
