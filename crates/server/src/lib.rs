//! The Strata server: configuration, the engine (ingest log plus one shard per partition), the
//! HTTP API, and the fleet simulator. The `strata` binary is a thin command line over this.
//!
//! This crate wires the others together; storage, decoding and the log live in their own crates.

pub mod alerting;
pub mod anomaly;
pub mod backfill;
pub mod cold;
pub mod config;
pub mod device_rules;
mod device_stage;
pub mod engine;
pub mod groups;
pub mod http;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod registry;
pub mod roster;
pub mod selector;
pub mod shard;
pub mod simulate;
pub mod sources;

use config::Config;
use std::sync::Arc;

/// Runs the server until SIGINT or SIGTERM; with `demo`, also a simulated fleet against itself.
pub fn serve(mut cfg: Config, demo: bool) -> anyhow::Result<()> {
    if demo && cfg.registry.enrich.is_empty() {
        cfg.registry.enrich = vec!["model".into(), "firmware".into()];
    }
    if demo && cfg.alerting.device_rules.is_empty() {
        cfg.alerting.device_rules.push(demo_rule());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    // Notifiers and device rules exist before the shards replay: replay may bring state changes.
    let notify = alerting::notifications(&cfg, rt.handle())?;
    let meta = match &cfg.registry.url {
        Some(url) => rt
            .block_on(strata_meta::MetaStore::open_url(url))
            .map_err(|e| anyhow::anyhow!("{e} (registry.url)"))?,
        None => rt
            .block_on(strata_meta::MetaStore::open(&cfg.data_dir.join("meta.db")))
            .map_err(|e| anyhow::anyhow!("{e} ({})", cfg.data_dir.join("meta.db").display()))?,
    };
    let registry = rt.block_on(registry::Registry::open(
        meta.clone(),
        cfg.registry.enrich.clone(),
        cfg.registry.unknown_devices,
    ))?;
    registry.spawn_refresh(rt.handle());
    if demo {
        // The demo fleet is registered, so its series carry registry labels it never sends.
        let devices = simulate::registry_devices(&demo_fleet("http://unused".into()));
        rt.block_on(async {
            meta.import_devices(
                strata_model::Tenant::DEFAULT,
                &devices,
                strata_model::time::now_ms(),
            )
            .await?;
            registry.reload().await
        })
        .map_err(|e| anyhow::anyhow!("demo: registering the fleet: {e}"))?;
    }
    let devices = rt.block_on(device_rules::DeviceRulesHub::open(
        cfg.device_rules()?,
        meta,
    ))?;
    if let Some(n) = &notify {
        devices.notify_through(n.clone());
    }
    let engine = Engine::open(&cfg, rt.handle().clone(), Some(devices.clone()))?;
    let http_counters = Arc::new(metrics::HttpCounters::default());
    let cache = Arc::new(http::cache::ResultCache::new(
        cfg.query.cache_options(engine.rollups_enabled()),
    ));
    engine.observe_late_writes(cache.clone());
    let promql = strata_promql::Engine::new(
        engine.clone(),
        cfg.query.engine_options(cfg.limits.max_label_value_len),
    )
    .with_tiers(engine.clone());
    let rules = alerting::start(
        &cfg,
        engine.clone(),
        promql.clone(),
        rt.handle().clone(),
        notify.clone(),
    )?;
    // Alert state changes go to the live stream too (before the server listens, so no
    // subscriber misses one).
    devices.observe_through(engine.live().clone());
    if let Some(r) = &rules {
        r.observe_through(engine.live().clone());
    }
    let detectors = cfg.detector_specs()?;
    let anomaly_stats = (cfg.rollups.enabled && !detectors.is_empty())
        .then(|| Arc::new(anomaly::AnomalyStats::default()));
    if !detectors.is_empty() && !cfg.rollups.enabled {
        tracing::warn!("anomaly detectors need rollups (rollups.enabled = true): not running");
    }
    let mut sources = sources::Sources::start(&cfg, &engine, &registry, rt.handle())?;
    let queries = Arc::new(http::QueryGate::new(
        cfg.query.max_concurrency,
        cfg.query.max_queue,
    ));
    let mut stages = prometheus_client::registry::Registry::default();
    metrics::register(&mut stages, engine.clone());
    metrics::register(&mut stages, http_counters.clone());
    metrics::register(&mut stages, queries.clone());
    metrics::register(&mut stages, cache.clone());
    metrics::register(&mut stages, sources.metrics());
    metrics::register(&mut stages, registry.clone());
    metrics::register(&mut stages, memory::Memory);
    metrics::register(&mut stages, devices.clone());
    metrics::register(&mut stages, engine.live().clone());
    if let Some(r) = &rules {
        metrics::register(&mut stages, r.clone());
    }
    if let Some(n) = &notify {
        metrics::register(&mut stages, n.clone());
    }
    if let Some(a) = &anomaly_stats {
        metrics::register(&mut stages, a.clone());
    }
    let state = http::AppState {
        engine: engine.clone(),
        metrics: Arc::new(stages),
        registry: registry.clone(),
        publishers: sources.publishers().into(),
        fleet: http::FleetStatus {
            expected_interval_ms: cfg.devices.expected_interval.0,
            offline_after: i64::from(cfg.devices.offline_after),
        },
        limits: Arc::new(cfg.model_limits()),
        max_body_bytes: cfg.limits.max_body_bytes,
        max_metadata_results: cfg.limits.max_metadata_results,
        body_read_timeout: std::time::Duration::from_millis(cfg.server.body_read_timeout.0 as u64),
        promql,
        rules: rules.clone(),
        devices: devices.clone(),
        queries,
        http: http_counters.clone(),
        cache,
        retentions: http::backfill::Retentions {
            raw_ms: cfg.retention.0,
            windows_ms: cfg.rollups.retention.0,
            hours_ms: cfg.rollups.hour_retention.0,
        },
    };
    // Shutdown stops running queries, so the connections waiting on them close promptly.
    let promql = state.promql.clone();
    let app = http::router(state);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let groups = cfg.group_specs()?;
    let merger = (cfg.rollups.enabled && !groups.is_empty()).then(|| {
        let m = groups::Merger {
            engine: engine.clone(),
            groups,
            window_ms: cfg.rollups.window.0,
            checkpoint: cfg.data_dir.join("groups.ckpt"),
        };
        let (stop, rt) = (stop.clone(), rt.handle().clone());
        background("groups", move || m.run(stop, rt))
    });
    let scorer = anomaly_stats.map(|stats| {
        let specs: Arc<[anomaly::DetectorSpec]> = detectors.into();
        let s = anomaly::Scorer {
            feeds: engine.tap_final(|from| anomaly::Feed::new(specs.clone(), from)),
            engine: engine.clone(),
            specs,
            window_ms: cfg.rollups.window.0,
            checkpoint: cfg.data_dir.join("anomaly.ckpt"),
            events: Some(devices.clone()),
            stats,
        };
        let (stop, rt) = (stop.clone(), rt.handle().clone());
        background("anomaly", move || s.run(stop, rt))
    });
    let partitions = engine.partitions();
    let grace = std::time::Duration::from_millis(cfg.server.shutdown_grace.0 as u64);
    // Weak: the manager holds the engine, which shutdown waits to be the last holder of.
    let sighup_rules = rules.as_ref().map(Arc::downgrade);
    let lingering = Arc::downgrade(engine.live());
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), partitions, "strata is serving");
        if demo {
            let fleet = demo_fleet(format!("http://{addr}/api/v1/events"));
            tracing::info!(
                "demo: simulating 100 registered devices on 5 sites; try: curl -s http://{addr}/api/v1/query --data-urlencode 'query=avg by (model) (temperature_celsius)' or curl -s http://{addr}/api/v1/devices"
            );
            std::thread::spawn(move || simulate::run(&fleet));
        }
        tokio::spawn(expire_lingering(lingering));
        #[cfg(unix)]
        if let Some(m) = sighup_rules {
            tokio::spawn(reload_on_sighup(m));
        }
        http::serve::serve(listener, app, &cfg.server, http_counters, async move {
            shutdown_signal().await;
            promql.shut_down();
        })
        .await;
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down: flushing shards");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sources.stop();
    if let Some(m) = rules {
        m.stop();
    }
    if let Some(s) = scorer {
        let _ = s.join();
    }
    if let Some(m) = merger {
        let _ = m.join();
    }
    // The shards stop and flush when the engine is dropped, and they need the runtime for it:
    // wait (bounded) for work still holding the engine (a query past its connection, a write
    // being acknowledged) while the runtime runs.
    let sole = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&engine) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Arc::strong_count(&engine) == 1
    });
    drop(engine);
    if !sole {
        // Every acknowledged write is in the log; the next start replays it.
        tracing::warn!("work still running after server.shutdown_grace: exiting without a flush");
        rt.shutdown_background();
    }
    Ok(())
}

use engine::Engine;

/// The simulated fleet of `serve --demo`, writing to `url`.
fn demo_fleet(url: String) -> simulate::FleetConfig {
    simulate::FleetConfig {
        url,
        sites: 5,
        devices_per_site: 20,
        interval: std::time::Duration::from_secs(5),
        duration: None,
        seed: 42,
        progress: false,
    }
}

/// The device rule of `serve --demo`, so the dashboard's alerts move: the warmest devices of
/// the simulated fleet wander over 26 °C and back.
fn demo_rule() -> strata_alert::device::DeviceRuleSpec {
    toml::from_str(
        r#"
rule_id = "demo-warm"
device_group = '{__name__="temperature_celsius"}'
metric = "temperature_celsius"
operator = ">"
threshold = 26
sustained_periods = 3
clear_threshold = 25.8
severity = "warning"
"#,
    )
    .expect("the demo rule is valid")
}

/// Drops the stream subscriptions whose resume window is over, now and then.
async fn expire_lingering(live: std::sync::Weak<live::Live>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(l) = live.upgrade() else { return };
        l.hub.expire(std::time::Instant::now());
    }
}

/// Reloads the rule files at each SIGHUP (as Prometheus does).
#[cfg(unix)]
async fn reload_on_sighup(rules: std::sync::Weak<strata_alert::manager::RuleManager>) {
    let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while s.recv().await.is_some() {
        let Some(m) = rules.upgrade() else { return };
        match tokio::task::spawn_blocking(move || m.reload()).await {
            Ok(Ok(n)) => tracing::info!(groups = n, "SIGHUP: rule files reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: rule files not reloaded; the previous rules keep running")
            }
            Err(_) => tracing::error!("SIGHUP: rule reload panicked"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Starts a stage that works behind the shards (group rollups, anomaly scoring) on a named
/// thread of lower scheduling priority: when the cores are busy, ingest goes first and the
/// stage catches up after (its lag is its progress metric); idle cores run it at full speed.
fn background(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            {
                // SAFETY: plain syscalls on the calling thread (Linux nice values are per
                // thread).
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) } != 0 {
                    tracing::debug!("background thread keeps its priority");
                }
            }
            f()
        })
        .expect("spawning a thread")
}
