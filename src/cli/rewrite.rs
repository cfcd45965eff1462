//! `waymark rewrite`: instrument an HTML email read from stdin, minted by
//! the same rules as `POST /v1/instrument` ([`crate::minting`]).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;

use super::MessageArgs;

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

pub fn run(args: &RewriteArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.message.config.as_deref())?;
    let tenancy = super::minting_tenancy(&config)?;
    // A switch given on the command line turns tracking off; otherwise the
    // tenant's defaults apply, as in the API.
    let off = |flag: bool| flag.then_some(false);
    let spec = crate::minting::MessageSpec {
        opens: off(args.no_opens),
        clicks: off(args.no_clicks),
        unsubscribe: off(args.no_unsubscribe),
        unsubscribe_mailto: args.unsubscribe_mailto.clone(),
        ..args.message.spec()?
    };
    let (msg, keys) = crate::minting::message(&tenancy, spec).map_err(super::in_flags)?;
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
