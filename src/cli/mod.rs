//! The command line, one file per command: `serve`, `judge`, `sign`, `rewrite`,
//! `classify`, `spool`, `keygen` and `healthcheck`. Parsing lives here with
//! clap; each command is a few lines over the library, and nothing in the
//! library imports this module. `anyhow` is used here and in `main.rs` only.

mod classify;
mod healthcheck;
mod judge;
mod keygen;
mod rewrite;
mod serve;
mod sign;
mod spool;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::minting::MessageSpec;
use crate::startup;
use crate::tenancy::Tenancy;
use crate::token::Kind;

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
    /// Judge the hits topic as one of the judge group (judge = "kafka"):
    /// the same config file and environment as serve.
    Judge {
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
    Sign(Box<sign::SignArgs>),
    /// Classify user agents (one a line on stdin, or `IP<TAB>USER_AGENT`) with
    /// exactly the code the server runs; prints one JSON object a line.
    Classify(classify::ClassifyArgs),
    /// Instrument an HTML email read from stdin: click URLs, the pixel, the
    /// honeypot and the unsubscribe URL; HTML to stdout, headers to --headers.
    Rewrite(Box<rewrite::RewriteArgs>),
    /// Inspect or drain the Kafka sink's disk spool.
    Spool {
        #[command(subcommand)]
        action: spool::SpoolAction,
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

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(load_config(config.as_deref())?),
        Command::Judge { config } => judge::run(load_config(config.as_deref())?),
        Command::Keygen { kid } => keygen::run(kid),
        Command::Sign(args) => sign::run(&args),
        Command::Classify(args) => classify::run(args),
        Command::Rewrite(args) => rewrite::run(&args),
        Command::Spool { action, config } => {
            let config = load_config(config.as_deref())?;
            init_logging(&config)?; // damage passed over and broker errors are shown
            spool::run(action, config)
        }
        Command::Healthcheck { url } => healthcheck::run(&url),
    }
}

/// An error and its causes on one line, each said once: a cause whose text
/// its parent already quotes is not repeated.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    Ok(crate::config::load(file, |k| std::env::var(k).ok())?)
}

/// The tenancy for a minting command, warning on stderr when it mints with
/// the development ring: such links stop working in production.
fn minting_tenancy(config: &Config) -> anyhow::Result<Tenancy> {
    Ok(startup::tenancy(config, |warning| eprintln!("waymark: warning: {warning}"))?)
}

/// What `sign` and `rewrite` both need to know of the message.
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    /// Base of the tracking URLs, e.g. `https://t.example.com` (default: the tenant's, else public_url, else the listen address).
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

impl MessageArgs {
    fn spec(&self) -> anyhow::Result<MessageSpec> {
        let meta = self
            .meta
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => bail!("--meta {kv:?} is not of the form KEY=VALUE"),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(MessageSpec {
            tenant: self.tenant.clone(),
            base_url: self.base_url.clone(),
            message_id: self.message_id.clone(),
            recipient: self.recipient.clone(),
            sent_at: self.sent_at.clone(),
            tags: self.tags.clone(),
            meta,
            ..MessageSpec::default()
        })
    }
}

/// A minting error in the words of the command line: its flags.
fn in_flags(error: crate::minting::MintError) -> anyhow::Error {
    use crate::minting::MintError;
    let flag = |field: &str| format!("--{}", field.replace('_', "-"));
    match error {
        MintError::Tenant(crate::tenancy::NoSuchTenant(name)) => {
            anyhow::anyhow!("--tenant {name:?} is not configured in [[tenants]]")
        }
        MintError::BaseUrl { value, reason } => anyhow::anyhow!("--base-url {value:?} is invalid: {reason}"),
        MintError::Time { field, value } => {
            anyhow::anyhow!("{} {value:?} is not an RFC 3339 time such as 2026-11-24T09:30:00Z", flag(field))
        }
        MintError::BeforeEpoch { field, value } => {
            anyhow::anyhow!("{} {value:?} is before 1970", flag(field))
        }
    }
}

/// `open`, `click` or `unsubscribe`, as token kinds are named.
fn kind_arg(text: &str) -> Result<Kind, String> {
    match text {
        "open" => Ok(Kind::Open),
        "click" => Ok(Kind::Click),
        "unsubscribe" => Ok(Kind::Unsubscribe),
        other => Err(format!("{other:?} is not open, click or unsubscribe")),
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).with_context(|| {
        format!("setting log = {:?} is not a valid filter such as info or waymark=debug", config.log)
    })?;
    // Colour only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}
