//! `waymark sign`: mint one tracking URL (or many, for bulk sends and load
//! tests) with the configured key ring.

use std::io::Write as _;

use anyhow::{Context as _, bail};

use super::MessageArgs;
use crate::destination::Destination;
use crate::tenancy::Tenancy;
use crate::token::{Kind, Link, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// open, click or unsubscribe.
    #[arg(value_parser = super::kind_arg)]
    pub kind: Kind,
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

pub fn run(args: &SignArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.message.config.as_deref())?;
    let tenancy = super::minting_tenancy(&config)?;
    if args.count <= 1 {
        println!("{}", sign(&tenancy, args, &args.message.message_id)?);
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in 0..args.count {
        writeln!(out, "{}", sign(&tenancy, args, &format!("{}-{i}", args.message.message_id))?)?;
    }
    out.flush()?;
    Ok(())
}

fn sign(tenancy: &Tenancy, args: &SignArgs, message_id: &str) -> anyhow::Result<String> {
    let target = match (args.kind, &args.url) {
        (Kind::Click, Some(url)) => Target::Click(Link {
            index: args.link_index,
            url: Destination::parse(url).context("--url")?,
            trap: false,
        }),
        (Kind::Click, None) => {
            bail!("a click link needs --url: the destination, an absolute http or https URL")
        }
        (_, Some(_)) => bail!("--url is for click links only"),
        (Kind::Open, None) => Target::Open,
        (Kind::Unsubscribe, None) => Target::Unsubscribe,
    };
    let spec = crate::minting::MessageSpec {
        message_id: message_id.to_owned(),
        expires_at: args.expires_at.clone(),
        ..args.message.spec()?
    };
    let (msg, keys) = crate::minting::message(tenancy, spec).map_err(super::in_flags)?;
    Ok(msg.url(keys, target)?)
}
