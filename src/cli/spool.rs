//! `waymark spool status | replay`: inspect or drain the Kafka sink's disk
//! spool while the service is stopped.

use std::io::Write as _;

use anyhow::bail;

use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
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

pub fn run(action: SpoolAction, config: Config) -> anyhow::Result<()> {
    // A spool says where its records go; an older one is taken to hold what
    // `waymark serve` with this configuration spools.
    let Some(kafka) = crate::startup::edge_kafka(&config) else {
        bail!("no Kafka brokers are configured (kafka.brokers or WAYMARK_KAFKA_BROKERS): there is no spool");
    };
    match action {
        SpoolAction::Status => {
            let status = serde_json::to_string_pretty(&crate::sink::spool::status(&kafka.spool_dir)?)?;
            // A reader that stops early (`| head`) is not an error.
            match writeln!(std::io::stdout(), "{status}") {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        SpoolAction::Replay { timeout_secs } => {
            crate::startup::probe_kafka(&kafka)?;
            let r = crate::sink::kafka::replay_now(kafka, std::time::Duration::from_secs(timeout_secs))?;
            println!("sent {} events, {} acknowledged", r.sent, r.acknowledged);
        }
    }
    Ok(())
}
