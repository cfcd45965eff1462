//! `waymark serve`: start the service and print what a person can curl.

use std::sync::Arc;

use crate::config::{Config, JudgeMode, SinkSettings};
use crate::startup;
use crate::tenancy::Tenancy;
use crate::token::{Claims, Link, Target};

pub fn run(config: Config) -> anyhow::Result<()> {
    super::init_logging(&config)?;
    let tenancy = Arc::new(startup::tenancy(&config, |warning| tracing::warn!("{warning}"))?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let base = tenancy.base_url(None).as_str().trim_end_matches('/').to_owned();
        let sink = config.sink.clone();
        let judge = config.judge.clone();
        let demo = demo_links(&tenancy)?;
        let server = startup::start(config, tenancy).await?;
        let shutdown = crate::server::shutdown_signal();
        let addr = server.local_addr();
        if let Some(tls) = server.tls_addr() {
            println!("waymark listening on https://{tls}");
        }
        if let Some(admin) = server.admin_addr() {
            println!("admin (metrics, instrument API) on http://{admin}");
        }
        let base = base.replace(":0", &format!(":{}", addr.port()));
        match (&sink, &judge) {
            (SinkSettings::Kafka(k), JudgeMode::Kafka(hits)) => println!(
                "hits go to the judges through Kafka at {} (topic {}); run `waymark judge` to judge them",
                k.brokers, hits.topic
            ),
            (SinkSettings::File(path), _) => println!("events are written to {}", path.display()),
            (SinkSettings::Kafka(k), _) => println!(
                "events go to Kafka at {} (topic {}), spooled in {}",
                k.brokers,
                k.topic,
                k.spool_dir.display()
            ),
        }
        if let Some((open, click)) = demo {
            println!("try:\n  curl -s {base}{open} | od -c\n  curl -si {base}{click}");
        }
        // Last, so whoever waits for this line has the whole banner.
        println!("waymark listening on http://{addr}");
        server.run(shutdown).await;
        anyhow::Ok(())
    })
}

/// Ready-to-curl paths for the start-up banner, for the default tenant.
fn demo_links(tenancy: &Tenancy) -> anyhow::Result<Option<(String, String)>> {
    if !tenancy.is_empty() {
        return Ok(None);
    }
    let claims = Claims {
        target: Target::Open,
        tenant: String::new(),
        message_id: format!("demo-{}", ulid::Ulid::generate()),
        recipient: Some("you@example.com".into()),
        // A minute ago, so a quick curl is not mistaken for a prefetch.
        sent_at: crate::minting::now_secs().saturating_sub(60),
        expires_at: None,
        tags: vec!["demo".into()],
        meta: vec![],
    };
    let keys = tenancy.keys(None);
    let open = crate::token::seal(keys, &claims)?;
    let link =
        Link { index: 0, url: crate::destination::Destination::parse("https://example.com/")?, trap: false };
    let click = crate::token::seal(keys, &Claims { target: Target::Click(link), ..claims })?;
    Ok(Some((format!("/o/{open}.gif"), format!("/c/{click}"))))
}
