//! `waymark judge`: judge the hits topic as one member of the judge group
//! (`judge = "kafka"`), with the same config file and environment as
//! `serve`; `/healthz`, `/readyz` and `/metrics` on `admin_listen`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};

use crate::config::{Config, JudgeMode, SinkSettings};
use crate::health::Health;
use crate::kafka_judge::{self, JudgeStats, consumer::Options};
use crate::metrics::{Metrics, Source};
use crate::pipeline::Stats;
use crate::startup;

pub fn run(config: Config) -> anyhow::Result<()> {
    super::init_logging(&config)?;
    let (JudgeMode::Kafka(hits), SinkSettings::Kafka(kafka)) = (config.judge.clone(), config.sink.clone())
    else {
        bail!(
            "waymark judge reads hit records from Kafka: set judge = \"kafka\" (WAYMARK_JUDGE=kafka) and kafka.brokers (WAYMARK_KAFKA_BROKERS)"
        );
    };
    startup::probe_kafka(&kafka)?;
    let tenancy = Arc::new(startup::tenancy(&config, |warning| tracing::warn!("{warning}"))?);
    let events = startup::event_settings(&config);
    let options =
        Options { kafka: kafka.clone(), hits: hits.clone(), classify: config.classify.clone(), events };
    let (stats, pipeline) = (Arc::new(JudgeStats::default()), Arc::new(Stats::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::default());
    health.register(stats.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        kafka_judge::topic::ensure_soon(&kafka, &hits).await;
        let shutdown = crate::server::shutdown_signal();
        let (sink_parts, parts) = std::sync::mpsc::sync_channel(1);
        let judge = {
            let (tenancy, pipeline, stats, stop) = (tenancy, pipeline.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new().name("waymark-judge".into()).spawn(move || {
                kafka_judge::run(options, tenancy, pipeline, stats, stop, |sink| {
                    let _ =
                        sink_parts.send((crate::sink::Sink::state(sink), crate::sink::Sink::metrics(sink)));
                })
            })?
        };
        let (state, sink_metrics) = tokio::task::spawn_blocking(move || parts.recv())
            .await?
            .context("the judge stopped before starting its event sink")?;
        health.register_from(state);
        let mut sources: Vec<Arc<dyn Source>> = vec![stats.clone(), pipeline];
        sources.extend(sink_metrics);
        let metrics = Arc::new(Metrics::new(sources));
        if let Some(admin) = &config.admin {
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("cannot listen on admin_listen {}", admin.listen))?;
            println!("admin (healthz, readyz, metrics) on http://{}", listener.local_addr()?);
            tokio::spawn(kafka_judge::admin::serve(listener, metrics, health.clone(), stats));
        }
        println!("waymark judge reading {} as group {} from {}", hits.topic, hits.group, kafka.brokers);
        let finished = tokio::task::spawn_blocking(move || judge.join());
        tokio::pin!(finished);
        tokio::select! {
            _ = shutdown => {}
            _ = &mut finished => bail!("the judge stopped on its own"),
        }
        health.set_draining();
        stop.store(true, Ordering::Relaxed);
        match finished.await? {
            Ok(outcome) => outcome.map_err(anyhow::Error::from),
            Err(_) => bail!("the judge thread panicked"),
        }
    })
}
