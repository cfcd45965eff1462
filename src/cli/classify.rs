//! `waymark classify`: judge user agents with exactly the code the server
//! runs, one JSON object a line.

use std::io::{BufRead as _, Write};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::classify::Classifier;
use crate::config::RawConfig;
use crate::token::Kind;

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// Classify this one user agent instead of reading stdin.
    #[arg(long)]
    ua: Option<String>,
    /// The client address that goes with --ua.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// Judge as a hit on this kind of URL: open or click (a proxy network explains an open, not a click).
    #[arg(long, default_value = "click", value_parser = super::kind_arg)]
    kind: Kind,
    #[arg(long, env = "WAYMARK_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let (raw, origins) = RawConfig::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    let mut classifier = Classifier::new(&crate::config::classify_settings(&raw, &origins)?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.ua {
        Some(ua) => classify_line(&mut classifier, args.kind, args.ip, Some(&ua), &mut out)?,
        None => {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read stdin")?;
                let (ip, ua) = split_classify_line(&line)?;
                classify_line(&mut classifier, args.kind, ip, ua, &mut out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

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
        "agent_category": a.category,
        "machine_open": a.machine_open,
        "device": a.device.as_deref(),
        "geo": a.geo,
        "network": a.asn,
        "rules_version": classifier.rules_version(),
    });
    writeln!(out, "{line}")?;
    Ok(())
}
