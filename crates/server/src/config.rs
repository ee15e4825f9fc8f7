//! Configuration: a TOML file, overridden by command-line flags. Every option has a default, so
//! `strata serve` alone works. `strata config` prints the defaults as a commented TOML file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use strata_model::time::parse_duration_ms;
use strata_model::Limits;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the log, blocks and checkpoints live.
    pub data_dir: PathBuf,
    /// How long raw samples are kept (Prometheus duration, e.g. `30d`).
    pub retention: Duration,
    /// Number of ingest-log partitions, one shard each. Fixed when the data directory is created.
    pub partitions: Partitions,
    /// Edge limits.
    pub limits: LimitsConfig,
    /// Connection handling.
    pub server: ServerConfig,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// PromQL evaluation limits.
    pub query: QueryConfig,
    /// Event-time rollups (the warm tier).
    pub rollups: RollupsConfig,
    /// The Parquet cold tier (`[cold]`).
    pub cold: ColdConfig,
    /// Alerting and recording rules (`[alerting]`).
    pub alerting: AlertingConfig,
    /// Anomaly detection (`[[anomaly.detectors]]`).
    pub anomaly: AnomalyConfig,
    /// Sources Strata connects to or listens on (`[[sources.mqtt]]`).
    pub sources: SourcesConfig,
    /// The device registry (`[registry]`).
    pub registry: RegistryConfig,
    /// Fleet status (`[devices]`).
    pub devices: DevicesConfig,
    /// Live push over WebSocket (`[live]`).
    pub live: LiveConfig,
}

/// Live push over WebSocket at `/api/v1/stream` (`[live]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Most WebSocket connections open at once (more are refused with 503).
    pub max_connections: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Updates a connection's queue holds before the client is closed as too slow (pending
    /// updates of one series and window merge first).
    pub queue: usize,
    /// Largest client message accepted (bytes); a larger one closes the connection.
    pub max_message_bytes: usize,
    /// Updates each tenant's journal keeps for clients that resume.
    pub journal_messages: usize,
    /// Bytes of updates each tenant's journal keeps.
    pub journal_bytes: usize,
    /// How long a closed connection's subscriptions keep collecting for its resume.
    pub resume_window: Duration,
    /// Interval of the server's pings; a client silent for three is closed.
    pub heartbeat: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_connections: 10_000,
            max_subscriptions: 256,
            queue: 4096,
            max_message_bytes: 64 << 10,
            journal_messages: 100_000,
            journal_bytes: 64 << 20,
            resume_window: Duration(300_000),
            heartbeat: Duration(15_000),
        }
    }
}

/// Fleet status (`[devices]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// How often a device reports when the registry does not say (`expected_interval`).
    pub expected_interval: Duration,
    /// Expected intervals without a reading after which a device is offline.
    pub offline_after: u32,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            expected_interval: Duration(60_000),
            offline_after: 3,
        }
    }
}

/// The device registry (`[registry]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The metadata database: `postgres://user:password@host/db` (shared by several nodes);
    /// default: `meta.db`, a SQLite file in the data directory.
    pub url: Option<String>,
    /// Registry fields (`site`, `region`, `type`, `model`, `firmware`, `owner`, `location`,
    /// `name`, `provisioned`) or free labels added as labels to every series of the device.
    pub enrich: Vec<String>,
    /// Readings of unknown or inactive devices: `accept` (default), `reject` or `quarantine`.
    pub unknown_devices: crate::registry::Policy,
}

/// Sources beside the HTTP API (`[sources]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// MQTT broker connections (`[[sources.mqtt]]`).
    pub mqtt: Vec<strata_sources::mqtt::MqttConfig>,
}

/// Anomaly detection (`[anomaly]`): detectors scoring final 1-minute windows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// The detectors (`[[anomaly.detectors]]`).
    pub detectors: Vec<DetectorConfig>,
}

/// One detector (`[[anomaly.detectors]]`); every setting but `match` has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Its name: the `detector` label of its outputs and events (default none).
    pub name: Option<String>,
    /// Which series it scores: a PromQL series selector.
    #[serde(rename = "match")]
    pub matches: String,
    /// The window figure scored: `mean` (default), `min`, `max`, `sum`, `count`, `last`,
    /// `increase`.
    pub figure: Option<String>,
    /// The residual z-score that scores 1.0.
    pub sensitivity: Option<f64>,
    /// `both` (default), `above` or `below`.
    pub direction: Option<String>,
    /// Deviations smaller than this (in the series' unit) are none.
    pub min_deviation: Option<f64>,
    /// `auto` (default: searched at every refit), `none`, or a duration (`1d`).
    pub period: Option<String>,
    /// Windows the baseline is the median of.
    pub window: Option<usize>,
    /// Residuals the score is measured against.
    pub history: Option<usize>,
    /// Windows before the first score.
    pub warm_up: Option<usize>,
    /// How often the period is searched for.
    pub refit: Option<Duration>,
    /// Windows averaged by the sustained-shift test (0: none).
    pub sustained: Option<usize>,
    /// The top fraction of residuals a heavy tail is fitted to (0: the normal tail only).
    pub tail_fraction: Option<f64>,
    /// Anomalies within this long of one are the same event.
    pub suppress: Option<Duration>,
    /// How often the daily or weekly profile is refitted from the 1-hour tier: a duration
    /// (default `1d`), or `off` for no profile.
    pub profile_refit: Option<String>,
    /// The hours a profile is fitted from (default `35d`, so a few missing hours at its edges
    /// still leave the 4 whole weeks a weekly shape needs; at least `4d`).
    pub profile_history: Option<Duration>,
    /// The `severity` label of its events.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// The notifiers its events go to (empty: every one whose match takes them).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Series scored at most, per tenant (each keeps ~40 kB of history); more are counted
    /// and left unscored.
    #[serde(default = "default_max_scored")]
    pub max_series: usize,
}

fn default_severity() -> String {
    "warning".to_string()
}

fn default_max_scored() -> usize {
    10_000
}

/// Alerting and recording rules (`[alerting]`): Prometheus rule files evaluated on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// Prometheus rule files: paths or globs, relative to the working directory.
    pub rule_files: Vec<String>,
    /// Interval of groups that set none.
    pub evaluation_interval: Duration,
    /// Query offset of groups that set none (none by default).
    pub query_offset: Option<Duration>,
    /// The tenant whose data rules read and whose series they write.
    pub tenant: String,
    /// Rules read only final event-time windows (no false resolve from late data).
    pub final_windows: bool,
    /// `$externalURL` in templates (default: `http://<listen>`).
    pub external_url: Option<String>,
    /// `$externalLabels` in templates.
    pub external_labels: std::collections::BTreeMap<String, String>,
    /// Where alerts are sent (`[[alerting.notifiers]]`).
    pub notifiers: Vec<NotifierConfig>,
    /// Device threshold and offline rules (`[[alerting.device_rules]]`), beside those of
    /// `/api/v1/alert-rules`.
    pub device_rules: Vec<strata_alert::device::DeviceRuleSpec>,
}

/// One notifier (`[[alerting.notifiers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// What routes and rules call it.
    pub name: String,
    /// `alertmanager`, `webhook`, `slack` or `pagerduty`.
    pub kind: String,
    /// Alertmanager's base URL, the webhook's or Slack's URL; PagerDuty's endpoint (default
    /// its Events API v2).
    pub url: Option<String>,
    /// Which alerts it takes: a series selector over alert labels (default all).
    #[serde(rename = "match")]
    pub matches: Option<String>,
    /// Webhook and Slack: labels a notification groups alerts by.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// How often a still-firing alert is sent again (default 1m for Alertmanager, its resend
    /// delay; 4h otherwise).
    pub repeat_interval: Option<Duration>,
    /// Whether resolutions are sent.
    #[serde(default = "default_true")]
    pub send_resolved: bool,
    /// How long one request may take.
    pub timeout: Option<Duration>,
    /// PagerDuty's integration (routing) key.
    pub routing_key: Option<String>,
    /// Slack's channel, overriding the webhook's.
    pub channel: Option<String>,
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".to_string()]
}

fn default_true() -> bool {
    true
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            rule_files: Vec::new(),
            evaluation_interval: Duration(15_000),
            query_offset: None,
            tenant: strata_model::Tenant::default_tenant().as_str().to_string(),
            final_windows: false,
            external_url: None,
            external_labels: Default::default(),
            notifiers: Vec::new(),
            device_rules: Vec::new(),
        }
    }
}

/// The Parquet cold tier (`[cold]`): where final 1-hour windows and expiring raw samples go.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdConfig {
    /// Archive to the cold tier at all.
    pub enabled: bool,
    /// A directory, `file://` URL or `s3://bucket/prefix`; default `<data_dir>/cold`.
    pub url: Option<String>,
    /// Also archive raw samples before retention deletes their blocks.
    pub archive_raw: bool,
    /// How often final hours are archived (and cold files compacted).
    pub interval: Duration,
    /// Compaction merges small cold files into files of about this size.
    pub target_file_bytes: u64,
}

impl Default for ColdConfig {
    fn default() -> Self {
        ColdConfig {
            enabled: true,
            url: None,
            archive_raw: true,
            interval: Duration(60_000),
            target_file_bytes: 128 << 20,
        }
    }
}

impl Config {
    /// The cold tier's URL: `cold.url`, else `<data_dir>/cold`.
    pub fn cold_url(&self) -> String {
        self.cold
            .url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cold").to_string_lossy().into_owned())
    }
}

/// How many ingest-log partitions (one shard each) to run: `"auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitions {
    /// As many as the data directory was created with; for a new one, one per two CPU cores
    /// (at least 1, at most [`Partitions::AUTO_MAX`]). A shard takes a fraction of what
    /// decoding a write costs, and every further partition adds an fsync and a hand-off to
    /// each write spread over them: on two cores, one partition ingests remote write about
    /// 15 % faster than four.
    #[default]
    Auto,
    /// Exactly this many (a data directory keeps the count it was created with).
    Fixed(u32),
}

impl Partitions {
    /// Most partitions a log may have.
    pub const MAX: u32 = 1024;
    /// Most partitions `auto` chooses: decoding, not the shards, bounds ingest long before
    /// (ask for more explicitly).
    pub const AUTO_MAX: u32 = 16;

    /// The count for a new data directory on this machine: one per two cores.
    pub fn for_this_machine() -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        (cores / 2).clamp(1, Self::AUTO_MAX)
    }
}

impl<'de> Deserialize<'de> for Partitions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Word(String),
            Other(serde::de::IgnoredAny),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "auto" => Ok(Partitions::Auto),
            Raw::Count(n) if (1..=Self::MAX as i64).contains(&n) => Ok(Partitions::Fixed(n as u32)),
            _ => Err(serde::de::Error::custom(format!(
                "partitions must be \"auto\" or a number from 1 to {}",
                Partitions::MAX
            ))),
        }
    }
}

/// A duration written as in Prometheus (`15s`, `2h`, `30d`), kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub i64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match parse_duration_ms(s) {
            Some(ms) if ms > 0 => Ok(Duration(ms)),
            _ => Err(format!(
                "invalid duration {s:?}: expected e.g. 15s, 2h, 30d"
            )),
        }
    }
}

/// Limits enforced at the edge (see the README's "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes (after decompression for remote write).
    pub max_body_bytes: usize,
    /// Most labels per series, `__name__` included.
    pub max_labels_per_series: usize,
    /// Longest label name in bytes.
    pub max_label_name_len: usize,
    /// Longest label value in bytes.
    pub max_label_value_len: usize,
    /// Most series per metric name and tenant; new series beyond it are refused.
    pub max_series_per_metric: usize,
    /// Most live (head) series per tenant; new series beyond it are refused.
    pub max_series_per_tenant: usize,
    /// Most live (head) series of all tenants together; new series beyond it are refused.
    pub max_series_total: usize,
    /// How far in the future a timestamp may be.
    pub max_future_skew: Duration,
    /// How long an event id is remembered to recognise redeliveries.
    pub event_dedup_horizon: Duration,
    /// Most bytes of decoded writes queued for or being applied by the shards; a write beyond
    /// it waits for room.
    pub max_pending_ingest_bytes: usize,
    /// Longest a write waits for room in `max_pending_ingest_bytes` before it fails with 503.
    pub pending_ingest_timeout: Duration,
    /// Most series, label names or label values one `/api/v1/series`, `/api/v1/labels` or
    /// `/api/v1/label/NAME/values` answer holds (a `limit` parameter cuts it shorter).
    pub max_metadata_results: usize,
}

/// Connection handling (`[server]`): how many connections, and how long a silent one is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Most open client connections; a connection beyond it is answered 503 and closed.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after it connected,
    /// or after its last response (an idle keep-alive connection), is closed.
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned with 408.
    pub body_read_timeout: Duration,
    /// On shutdown, how long requests in flight may finish before their connections are
    /// dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            header_read_timeout: Duration(30_000),
            body_read_timeout: Duration(30_000),
            shutdown_grace: Duration(5_000),
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Time span of a freshly cut block.
    pub block_duration: Duration,
    /// Roll an ingest-log segment past this many bytes.
    pub log_segment_bytes: u64,
    /// Persist the head into blocks and truncate the log at least this often, bounding replay.
    pub flush_interval: Duration,
    /// Also persist and truncate once a partition has logged this many bytes since its last
    /// flush (0: by time only). Replay after a crash reads at most this much per partition.
    pub checkpoint_log_bytes: u64,
}

/// PromQL evaluation limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Longest a query may run before it fails with `errorType: timeout`.
    pub timeout: Duration,
    /// Most samples one query may load or hold at once.
    pub max_samples: usize,
    /// How far back an instant selector looks for a sample.
    pub lookback_delta: Duration,
    /// Step of subqueries written without one (`x[1h:]`).
    pub default_subquery_step: Duration,
    /// Most queries evaluated at once (`/api/v1/query`, `query_range`, `format_query`).
    pub max_concurrency: usize,
    /// Most queries waiting for a turn; beyond, a query is refused with 503 `unavailable`.
    pub max_queue: usize,
    /// Longest query text accepted, in bytes.
    pub max_query_length: usize,
    /// Deepest nesting accepted (brackets, plus operators chained within one bracket).
    pub max_depth: usize,
    /// Most bytes the range query result cache may hold (0 turns it off).
    pub cache_bytes: u64,
    /// Steps newer than this are never cached: data for them may still arrive on time.
    pub cache_freshness: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        let engine = strata_promql::EngineOptions::default();
        QueryConfig {
            timeout: Duration(120_000),
            max_samples: 50_000_000,
            lookback_delta: Duration(300_000),
            default_subquery_step: Duration(60_000),
            max_concurrency: 4,
            max_queue: 64,
            max_query_length: engine.max_query_length,
            max_depth: engine.max_depth,
            cache_bytes: 256 << 20,
            cache_freshness: Duration(600_000),
        }
    }
}

impl QueryConfig {
    /// The engine options these settings describe; a label a query builds may be as long as a
    /// stored one (`max_label_value_len`, from `[limits]`).
    pub fn engine_options(&self, max_label_value_len: usize) -> strata_promql::EngineOptions {
        strata_promql::EngineOptions {
            lookback_delta_ms: self.lookback_delta.0,
            max_samples: self.max_samples,
            timeout: Some(std::time::Duration::from_millis(self.timeout.0 as u64)),
            default_subquery_step_ms: self.default_subquery_step.0,
            max_query_length: self.max_query_length,
            max_depth: self.max_depth,
            max_label_value_len,
            ..strata_promql::EngineOptions::default()
        }
    }

    /// The result cache's options these settings describe.
    /// The result cache's settings; `tiers`: the router may answer selectors from rollup
    /// windows, whose lookback widens to an hour (so late data invalidates that far).
    pub fn cache_options(&self, tiers: bool) -> crate::http::cache::CacheOptions {
        let lookback = self.lookback_delta.0;
        crate::http::cache::CacheOptions {
            max_bytes: self.cache_bytes,
            freshness_ms: self.cache_freshness.0,
            lookback_ms: if tiers {
                lookback.max(strata_stream::hour::HOUR_MS)
            } else {
                lookback
            },
        }
    }
}

/// Event-time rollups: windows, watermarks, lateness, corrections and the warm tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollupsConfig {
    /// Roll every raw series up into windows (the warm tier).
    pub enabled: bool,
    /// Window length; windows are aligned to the clock.
    pub window: Duration,
    /// How far behind the highest event time a shard's watermark trails.
    pub out_of_orderness: Duration,
    /// How long after the watermark passes its end a window stays provisional.
    pub allowed_lateness: Duration,
    /// How far behind the watermark an event still corrects a final window (default: the raw
    /// retention, since corrections recompute from raw samples).
    pub correction_horizon: Option<Duration>,
    /// A shard without event-time progress this long lets its watermark follow the clock.
    pub idle_timeout: Duration,
    /// How long final windows are kept.
    pub retention: Duration,
    /// How long final 1-hour windows are kept (the 1-hour tier; windows must divide an hour).
    pub hour_retention: Duration,
    /// Keep the 1-day tier (days merged from final hours).
    pub days: bool,
    /// How long final 1-day windows are kept.
    pub day_retention: Duration,
    /// Span of a warm-tier block. Windows come one per series per minute, so warm blocks span
    /// longer than raw ones to hold as many samples per chunk (fewer, better compressed chunks).
    pub block_duration: Duration,
    /// Metrics whose windows keep a quantile sketch (DDSketch, 1% relative accuracy).
    pub quantile_metrics: Vec<String>,
    /// Quantiles reported for those metrics.
    pub quantiles: Vec<f64>,
    /// Rollups of one metric across series, by labels, written back as series.
    pub groups: Vec<GroupConfig>,
}

/// One group rollup (`[[rollups.groups]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Input metric name.
    pub metric: String,
    /// Labels to group by.
    #[serde(default)]
    pub by: Vec<String>,
    /// Outputs: `count_samples`, `sum_samples`, `min`, `max`, `avg`, `stddev`, `stdvar`,
    /// `increase`, `count_series`, `quantiles(0.5, 0.95)`, `distinct(label)`.
    pub outputs: Vec<String>,
}

impl Default for RollupsConfig {
    fn default() -> Self {
        RollupsConfig {
            enabled: true,
            window: Duration(60_000),
            out_of_orderness: Duration(10_000),
            allowed_lateness: Duration(120_000),
            correction_horizon: None,
            idle_timeout: Duration(300_000),
            retention: Duration(400 * 86_400_000),
            hour_retention: Duration(3 * 31_536_000_000),
            days: true,
            day_retention: Duration(3 * 31_536_000_000),
            block_duration: Duration(86_400_000),
            quantile_metrics: Vec::new(),
            quantiles: vec![0.5, 0.95, 0.99],
            groups: Vec::new(),
        }
    }
}

impl Config {
    /// The window settings these options describe.
    pub fn window_options(&self) -> strata_stream::window::WindowOptions {
        let r = &self.rollups;
        strata_stream::window::WindowOptions {
            window_ms: r.window.0,
            out_of_orderness_ms: r.out_of_orderness.0,
            allowed_lateness_ms: r.allowed_lateness.0,
            correction_horizon_ms: r.correction_horizon.unwrap_or(self.retention).0,
            idle_timeout_ms: r.idle_timeout.0,
            quantile_metrics: r.quantile_metrics.clone(),
        }
    }

    /// The group rollups, parsed.
    pub fn group_specs(&self) -> anyhow::Result<Vec<strata_stream::group::GroupSpec>> {
        self.rollups
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                anyhow::ensure!(
                    !g.metric.is_empty() && !g.metric.contains(':'),
                    "rollups.groups[{i}]: metric must be a raw metric name (no ':'), got {:?}",
                    g.metric
                );
                anyhow::ensure!(!g.outputs.is_empty(), "rollups.groups[{i}]: no outputs");
                let outputs = g
                    .outputs
                    .iter()
                    .map(|o| strata_stream::group::Output::parse(o))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("rollups.groups[{i}]: {e}"))?;
                Ok(strata_stream::group::GroupSpec {
                    metric: g.metric.clone(),
                    by: g.by.clone(),
                    outputs,
                })
            })
            .collect()
    }

    /// The device rules of `[[alerting.device_rules]]`, checked.
    pub fn device_rules(&self) -> anyhow::Result<Vec<strata_alert::device::DeviceRule>> {
        let mut out: Vec<strata_alert::device::DeviceRule> = Vec::new();
        for spec in &self.alerting.device_rules {
            let id = spec.rule_id.clone();
            anyhow::ensure!(
                !out.iter().any(|r| r.spec.rule_id == id),
                "alerting.device_rules: two rules have rule_id {id:?}"
            );
            let rule = strata_alert::device::DeviceRule::new(spec.clone())
                .map_err(|e| anyhow::anyhow!("alerting.device_rules {id:?}: {e}"))?;
            out.push(rule);
        }
        Ok(out)
    }

    /// The notifiers of `[[alerting.notifiers]]`, checked.
    pub fn notifier_specs(&self) -> anyhow::Result<Vec<strata_alert::notify::NotifierSpec>> {
        use strata_alert::notify::{Kind, NotifierSpec, PAGERDUTY_URL};
        let mut out: Vec<NotifierSpec> = Vec::new();
        for n in &self.alerting.notifiers {
            let at = format!("alerting.notifiers {:?}", n.name);
            anyhow::ensure!(
                !n.name.is_empty(),
                "alerting.notifiers: a notifier has no name"
            );
            anyhow::ensure!(
                !out.iter().any(|o| o.name == n.name),
                "{at}: two notifiers have this name"
            );
            let kind = match n.kind.as_str() {
                "alertmanager" => Kind::Alertmanager,
                "webhook" => Kind::Webhook,
                "slack" => Kind::Slack,
                "pagerduty" => Kind::PagerDuty,
                other => anyhow::bail!(
                    "{at}: unknown kind {other:?} (expected alertmanager, webhook, slack or pagerduty)"
                ),
            };
            let url = match (&n.url, kind) {
                (Some(u), _) => u.clone(),
                (None, Kind::PagerDuty) => PAGERDUTY_URL.to_string(),
                (None, _) => anyhow::bail!("{at}: url is required for kind {:?}", n.kind),
            };
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{at}: url {url:?} must be an http:// or https:// URL"
            );
            anyhow::ensure!(
                kind != Kind::PagerDuty || n.routing_key.as_deref().is_some_and(|k| !k.is_empty()),
                "{at}: routing_key (the PagerDuty integration key) is required"
            );
            let matchers = match &n.matches {
                None => Vec::new(),
                Some(sel) => {
                    let mut sets = crate::selector::parse_selector(sel)
                        .map_err(|e| anyhow::anyhow!("{at}: match: {e}"))?;
                    anyhow::ensure!(sets.len() == 1, "{at}: match: `or` is not supported here");
                    sets.remove(0)
                }
            };
            let default_repeat = if kind == Kind::Alertmanager {
                60_000
            } else {
                4 * 3_600_000
            };
            out.push(NotifierSpec {
                name: n.name.clone(),
                kind,
                url,
                routing_key: n.routing_key.clone(),
                channel: n.channel.clone(),
                matchers,
                group_by: n.group_by.clone(),
                repeat_interval_ms: n.repeat_interval.map_or(default_repeat, |d| d.0),
                send_resolved: n.send_resolved,
                timeout_ms: n.timeout.map_or(10_000, |d| d.0),
            });
        }
        Ok(out)
    }

    /// Checks what serde cannot: values that parse but make no sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.group_specs()?;
        self.notifier_specs()?;
        self.device_rules()?;
        self.detector_specs()?;
        for n in &self.registry.enrich {
            let valid = !n.is_empty()
                && !n.starts_with("__")
                && n != "device"
                && n.bytes().enumerate().all(|(i, b)| {
                    b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
                });
            anyhow::ensure!(
                valid,
                "registry.enrich: {n:?} is not a label name (a registry field such as site or type, or a free label; not device)"
            );
        }
        anyhow::ensure!(
            self.devices.expected_interval.0 > 0 && self.devices.offline_after > 0,
            "devices.expected_interval and devices.offline_after must be positive"
        );
        let l = &self.live;
        anyhow::ensure!(
            l.max_subscriptions > 0 && l.queue > 0 && l.journal_messages > 0 && l.heartbeat.0 > 0,
            "live.max_subscriptions, live.queue, live.journal_messages and live.heartbeat must be positive"
        );
        anyhow::ensure!(
            l.max_message_bytes >= 1024,
            "live.max_message_bytes must be at least 1024, got {}",
            l.max_message_bytes
        );
        anyhow::ensure!(
            self.query.max_concurrency > 0,
            "query.max_concurrency must be at least 1"
        );
        let r = &self.rollups;
        anyhow::ensure!(
            86_400_000 % r.window.0 == 0,
            "rollups.window must divide a day evenly (e.g. 10s, 1m, 5m, 1h), got {} ms",
            r.window.0
        );
        if let Some(q) = r.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            anyhow::bail!("rollups.quantiles must lie in [0, 1], got {q}");
        }
        // Both are semaphore permits: connections are acquired many at once on shutdown (a u32).
        anyhow::ensure!(
            (1..=u32::MAX as usize).contains(&self.server.max_connections),
            "server.max_connections must be at least 1, got {}",
            self.server.max_connections
        );
        anyhow::ensure!(
            self.limits.max_metadata_results >= 1,
            "limits.max_metadata_results must be at least 1"
        );
        anyhow::ensure!(
            (1..=1usize << 40).contains(&self.limits.max_pending_ingest_bytes),
            "limits.max_pending_ingest_bytes must be 1 to 2^40, got {}",
            self.limits.max_pending_ingest_bytes
        );
        strata_model::Tenant::new(&self.alerting.tenant)
            .map_err(|e| anyhow::anyhow!("alerting.tenant {:?}: {e}", self.alerting.tenant))?;
        for f in &self.alerting.rule_files {
            glob::Pattern::new(f).map_err(|e| anyhow::anyhow!("alerting.rule_files {f:?}: {e}"))?;
        }
        if self.cold.enabled {
            let url = self.cold_url();
            let scheme = url.split_once("://").map(|(s, _)| s);
            anyhow::ensure!(
                matches!(scheme, None | Some("s3" | "file")),
                "cold.url {url:?}: only s3://bucket/prefix, file:// URLs and directory paths are supported"
            );
            anyhow::ensure!(
                !url.starts_with("s3://") || url.len() > 5 && !url[5..].starts_with('/'),
                "cold.url {url:?}: no bucket name (expected s3://bucket/prefix)"
            );
            anyhow::ensure!(
                self.cold.target_file_bytes >= 1 << 20,
                "cold.target_file_bytes must be at least 1 MiB, got {}",
                self.cold.target_file_bytes
            );
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9464".parse().expect("static address"),
            data_dir: PathBuf::from("strata-data"),
            retention: Duration(30 * 86_400_000),
            partitions: Partitions::Auto,
            limits: LimitsConfig::default(),
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            query: QueryConfig::default(),
            rollups: RollupsConfig::default(),
            cold: ColdConfig::default(),
            alerting: AlertingConfig::default(),
            anomaly: AnomalyConfig::default(),
            sources: SourcesConfig::default(),
            registry: RegistryConfig::default(),
            devices: DevicesConfig::default(),
            live: LiveConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_body_bytes: 64 << 20,
            max_labels_per_series: l.max_labels_per_series,
            max_label_name_len: l.max_label_name_len,
            max_label_value_len: l.max_label_value_len,
            max_series_per_metric: l.max_series_per_metric,
            max_series_per_tenant: 1_000_000,
            max_series_total: 2_000_000,
            max_future_skew: Duration(l.max_future_skew_ms),
            event_dedup_horizon: Duration(3_600_000),
            max_pending_ingest_bytes: 256 << 20,
            pending_ingest_timeout: Duration(10_000),
            max_metadata_results: 100_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            block_duration: Duration(2 * 3_600_000),
            log_segment_bytes: 64 << 20,
            flush_interval: Duration(15 * 60_000),
            // Replay reads about 130 MB/s per partition (6.8 M samples/s at 19 bytes a
            // sample, docs/benchmarks.md): about 2 s.
            checkpoint_log_bytes: 256 << 20,
        }
    }
}

/// The defaults as a documented TOML file (printed by `strata config`).
pub const DEFAULT_TOML: &str = r#"# Strata configuration. Every key is optional; these are the defaults.
listen = "127.0.0.1:9464"        # HTTP address
data_dir = "strata-data"         # log, blocks and checkpoints
retention = "30d"                # raw samples older than this are refused and deleted
partitions = "auto"              # ingest-log partitions (one shard each), fixed at creation;
                                 # auto: the data directory's count, else half the cores (max 16)

[limits]
max_body_bytes = 67108864        # largest request body (decompressed), bytes
max_labels_per_series = 30       # __name__ included
max_label_name_len = 1024        # bytes
max_label_value_len = 2048       # bytes
max_series_per_metric = 100000   # per tenant; new series beyond it are refused
max_series_per_tenant = 1000000  # live series (written in the last flush interval or 5m)
max_series_total = 2000000       # live series of all tenants; new series beyond either are refused
max_future_skew = "10m"          # timestamps further ahead than this are refused
event_dedup_horizon = "1h"       # how long an event_id is remembered
max_pending_ingest_bytes = 268435456  # decoded writes queued for the shards; more wait for room
pending_ingest_timeout = "10s"   # a write waiting longer for room fails with 503
max_metadata_results = 100000    # most entries of a series/labels/label values answer; more:
                                 # 422, or cut with a warning when the request has limit=

[server]
max_connections = 4096           # open connections; one more is answered 503 and closed
header_read_timeout = "30s"      # close a connection without a whole request head this long
                                 # after connecting or after its last response (idle keep-alive)
body_read_timeout = "30s"        # a request body sending nothing this long is abandoned (408)
shutdown_grace = "5s"            # on SIGTERM, requests in flight may finish this long

[storage]
block_duration = "2h"            # span of a freshly cut block
log_segment_bytes = 67108864     # ingest-log segment size
flush_interval = "15m"           # persist the head and truncate the log at least this often
checkpoint_log_bytes = 268435456 # ... and once a partition logged this much (0: by time only);
                                 # bounds the replay after a crash (about 2 s per 256 MiB)

[query]
timeout = "2m"                   # queries running longer fail with errorType "timeout" (503)
max_samples = 50000000           # most samples and points one query may hold at once (selectors,
                                 # subquery steps, literals, results); more fails with 422
lookback_delta = "5m"            # how far back an instant selector looks for a sample
default_subquery_step = "1m"     # step of subqueries written without one, e.g. x[1h:]
max_concurrency = 4              # queries evaluated at once (each already uses every core)
max_queue = 64                   # queries waiting for a turn; more are refused with 503
max_query_length = 262144        # longest query text, bytes (400 beyond)
max_depth = 128                  # deepest nesting: brackets, plus operators chained in one (400)
cache_bytes = 268435456          # range query result cache, bytes (0: off); see "Result cache"
cache_freshness = "10m"          # steps newer than this are never cached (data may still arrive)

[rollups]
enabled = true                   # roll every raw series up into event-time windows (warm tier)
window = "1m"                    # window length, aligned to the clock; must divide a day
out_of_orderness = "10s"         # watermark = highest event time seen minus this
allowed_lateness = "2m"          # windows stay provisional until the watermark passes end + this
# correction_horizon = "30d"     # events this far behind the watermark still correct final
                                 # windows (default: the raw retention); older ones are too late
idle_timeout = "5m"              # a shard without event-time progress this long follows the clock
retention = "400d"               # how long final windows are kept
hour_retention = "3y"            # how long final 1-hour windows are kept (1-hour tier); a
                                 # minute leaves only once its hour is final and stored
days = true                      # keep the 1-day tier (days merged from final hours)
day_retention = "3y"             # how long final 1-day windows are kept; an hour leaves only
                                 # once its day is final and stored
block_duration = "24h"           # span of a warm-tier block (one window per series per minute)
quantile_metrics = []            # metrics whose windows keep a quantile sketch (DDSketch, 1%)
quantiles = [0.5, 0.95, 0.99]    # quantiles reported for them
# Group rollups: one metric across series, by labels, written back as ordinary series named
# <metric>:<window>_by_<labels>_<output> (as VictoriaMetrics' stream aggregation names them),
# at each window's end, once every shard has closed the window; recomputed on corrections.
# [[rollups.groups]]
# metric = "temperature_celsius"
# by = ["site"]
# outputs = ["avg", "quantiles(0.95)", "distinct(device)"]   # also count_samples, sum_samples,
#                                  # min, max, stddev, stdvar, increase, count_series

[cold]
enabled = true                   # archive final 1-hour windows as Parquet (the cold tier)
# url = "s3://bucket/prefix"     # default: <data_dir>/cold; S3 settings from AWS_* variables
archive_raw = true               # also archive raw samples before retention deletes them
interval = "1m"                  # how often final hours are archived and cold files compacted
target_file_bytes = 134217728    # compaction merges small cold files into files this large

[alerting]
rule_files = []                  # Prometheus rule files, paths or globs (e.g. "rules/*.yml");
                                 # reloaded on SIGHUP and POST /-/reload
evaluation_interval = "15s"      # interval of groups that set none
# query_offset = "1m"            # query offset of groups that set none (default none)
tenant = "default"               # whose data rules read and whose series they write
final_windows = false            # rules read only final event-time windows: a late event cannot
                                 # resolve (or fire) an alert that the settled data would not
# external_url = "http://strata.example:9464"   # $externalURL (default http://<listen>)
# external_labels = { cluster = "c1" }          # $externalLabels
# [[alerting.notifiers]]
# name = "ops"                   # what routes and rules call it
# kind = "alertmanager"          # alertmanager | webhook | slack | pagerduty
# url = "http://127.0.0.1:9093"  # Alertmanager's base URL, the webhook's or Slack's URL
# match = '{severity="page"}'    # which alerts it takes (default all)
# group_by = ["alertname"]       # webhook, slack: alerts of one notification share these
# repeat_interval = "4h"         # resend still-firing alerts (alertmanager: 1m)
# send_resolved = true
# timeout = "10s"
# routing_key = "..."            # pagerduty; slack takes channel = "ops-alerts"
# [[alerting.device_rules]]      # judged by event time; more through /api/v1/alert-rules
# rule_id = "boiler-hot"
# device_group = '{type="boiler"}'   # or device_id = "b-17"
# metric = "temperature_celsius"
# operator = ">"
# threshold = 90.0
# sustained_periods = 3          # consecutive readings
# clear_threshold = 85.0         # resolves once a reading is not above this
# severity = "critical"
# notification_channels = ["ops"]

# [[anomaly.detectors]]           # scores every final 1-minute window of matching series
# match = 'temperature_celsius{site=~".+"}'   # a PromQL series selector
# name = "temps"                 # `detector` label of outputs and events (default none)
# figure = "mean"                # window figure scored: mean|min|max|sum|count|last|increase
# sensitivity = 3.719            # residual z-score that scores 1.0 (a 1e-4 tail)
# direction = "both"             # both | above | below
# min_deviation = 0.0            # smaller deviations from the baseline count as none
# period = "auto"                # auto (searched at every refit) | none | a duration ("1d")
# window = 1200                  # windows in the baseline's median (and the period search)
# history = 2000                 # residuals a score is measured against
# warm_up = 150                  # windows before the first score
# refit = "1h"                   # how often the period is searched for
# sustained = 30                 # windows of the sustained-shift test (0: none)
# suppress = "2h"                # anomalies this close are one event
# profile_refit = "1d"           # daily or weekly shape refitted from the 1-hour tier (or "off")
# profile_history = "35d"        # hours a profile is fitted from
# severity = "warning"           # of its events (alertname AnomalyDetected)
# channels = []                  # notifiers of its events (default every one that takes them)
# max_series = 10000             # series scored per tenant (~40 kB each)

[live]                           # WebSocket push at /api/v1/stream (README: "Live push")
max_connections = 10000          # open at once; more are refused with 503
max_subscriptions = 256          # per connection
queue = 4096                     # updates queued per connection before it is closed as too
                                 # slow (close code 4008); a window's pending states merge first
max_message_bytes = 65536        # largest client message; larger closes with 1009
journal_messages = 100000        # updates each tenant keeps for clients that resume
journal_bytes = 67108864
resume_window = "5m"             # a closed connection's subscriptions keep collecting this long
heartbeat = "15s"                # server pings; a client silent for three is closed
"#;

impl Config {
    /// The anomaly detectors, checked (see [`crate::anomaly::DetectorSpec`]).
    pub fn detector_specs(&self) -> anyhow::Result<Vec<crate::anomaly::DetectorSpec>> {
        let window_ms = self.rollups.window.0;
        let windows = |d: Duration| ((d.0 / window_ms).max(1)) as usize;
        self.anomaly
            .detectors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let at = |e: String| anyhow::anyhow!("anomaly.detectors[{i}]: {e}");
                let sets = crate::selector::parse_selector(&d.matches).map_err(at)?;
                let figure = match d.figure.as_deref() {
                    None => crate::anomaly::Figure::Mean,
                    Some(f) => crate::anomaly::Figure::parse(f).ok_or_else(|| {
                        at(format!(
                            "figure {f:?}: expected mean, min, max, sum, count, last or increase"
                        ))
                    })?,
                };
                let o = strata_anomaly::Options::default();
                let direction = match d.direction.as_deref() {
                    None => o.direction,
                    Some(s) => strata_anomaly::Direction::parse(s).ok_or_else(|| {
                        at(format!("direction {s:?}: expected both, above or below"))
                    })?,
                };
                let period = match d.period.as_deref() {
                    None | Some("auto") => strata_anomaly::Period::Auto,
                    Some("none") => strata_anomaly::Period::None,
                    Some(p) => {
                        let ms: Duration =
                            p.parse().map_err(|e: String| at(format!("period: {e}")))?;
                        strata_anomaly::Period::Windows(windows(ms))
                    }
                };
                let sensitivity = d.sensitivity.unwrap_or(o.sensitivity);
                if !(sensitivity.is_finite() && sensitivity > 0.0) {
                    return Err(at(format!(
                        "sensitivity must be above 0, got {sensitivity}"
                    )));
                }
                let min_deviation = d.min_deviation.unwrap_or(o.min_deviation);
                if !(min_deviation.is_finite() && min_deviation >= 0.0) {
                    return Err(at(format!(
                        "min_deviation must be 0 or more, got {min_deviation}"
                    )));
                }
                let tail_fraction = d.tail_fraction.unwrap_or(o.tail_fraction);
                if !(0.0..0.5).contains(&tail_fraction) {
                    return Err(at(format!(
                        "tail_fraction must be at least 0 and below 0.5, got {tail_fraction}"
                    )));
                }
                let opts = strata_anomaly::Options {
                    window: d.window.unwrap_or(o.window),
                    history: d.history.unwrap_or(o.history),
                    warm_up: d.warm_up.unwrap_or(o.warm_up),
                    period,
                    refit: d.refit.map_or(o.refit, windows),
                    sensitivity,
                    direction,
                    min_deviation,
                    sustained: d.sustained.unwrap_or(o.sustained),
                    suppress: d.suppress.map_or(o.suppress, windows),
                    tail_fraction,
                    ..o
                };
                for (what, v) in [("window", opts.window), ("history", opts.history)] {
                    if !(10..=100_000).contains(&v) {
                        return Err(at(format!("{what} must be between 10 and 100000, got {v}")));
                    }
                }
                let profile = match d.profile_refit.as_deref() {
                    Some("off") => None,
                    refit => {
                        let refit: Duration = refit
                            .unwrap_or("1d")
                            .parse()
                            .map_err(|e: String| at(format!("profile_refit: {e} (or off)")))?;
                        let history = d.profile_history.unwrap_or(Duration(35 * 86_400_000));
                        if refit.0 < 3_600_000 || history.0 < 4 * 86_400_000 {
                            return Err(at(format!(
                                "profile_refit must be at least 1h and profile_history at \
                                 least 4d, got {} ms and {} ms",
                                refit.0, history.0
                            )));
                        }
                        Some(crate::anomaly::ProfileSpec {
                            refit_ms: refit.0,
                            history_ms: history.0,
                        })
                    }
                };
                Ok(crate::anomaly::DetectorSpec {
                    profile,
                    name: d.name.clone(),
                    sets,
                    figure,
                    opts,
                    severity: d.severity.clone(),
                    channels: d.channels.clone(),
                    max_series: d.max_series,
                })
            })
            .collect()
    }

    /// Reads a TOML file; unknown keys are errors naming the key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// The edge limits in the model's terms.
    pub fn model_limits(&self) -> Limits {
        Limits {
            max_labels_per_series: self.limits.max_labels_per_series,
            max_label_name_len: self.limits.max_label_name_len,
            max_label_value_len: self.limits.max_label_value_len,
            max_series_per_metric: self.limits.max_series_per_metric,
            max_future_skew_ms: self.limits.max_future_skew.0,
            max_age_ms: self.retention.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        let d = Config::default();
        assert_eq!(parsed.listen, d.listen);
        assert_eq!(parsed.live.queue, d.live.queue);
        assert_eq!(parsed.live.journal_bytes, d.live.journal_bytes);
        assert_eq!(parsed.live.resume_window, d.live.resume_window);
        assert_eq!(parsed.live.heartbeat, d.live.heartbeat);
        assert_eq!(parsed.alerting.rule_files, d.alerting.rule_files);
        assert_eq!(
            parsed.alerting.evaluation_interval,
            d.alerting.evaluation_interval
        );
        assert_eq!(parsed.alerting.tenant, d.alerting.tenant);
        assert_eq!(parsed.alerting.final_windows, d.alerting.final_windows);
        assert_eq!(parsed.query.cache_bytes, d.query.cache_bytes);
        assert_eq!(parsed.query.cache_freshness, d.query.cache_freshness);
        assert_eq!(parsed.retention, d.retention);
        assert_eq!(parsed.partitions, d.partitions);
        assert_eq!(parsed.limits.max_body_bytes, d.limits.max_body_bytes);
        assert_eq!(
            parsed.limits.event_dedup_horizon,
            d.limits.event_dedup_horizon
        );
        assert_eq!(parsed.storage.flush_interval, d.storage.flush_interval);
        assert_eq!(
            parsed.limits.max_pending_ingest_bytes,
            d.limits.max_pending_ingest_bytes
        );
        assert_eq!(
            parsed.limits.pending_ingest_timeout,
            d.limits.pending_ingest_timeout
        );
        assert_eq!(
            parsed.limits.max_metadata_results,
            d.limits.max_metadata_results
        );
        assert_eq!(parsed.server.max_connections, d.server.max_connections);
        assert_eq!(
            parsed.server.header_read_timeout,
            d.server.header_read_timeout
        );
        assert_eq!(parsed.server.shutdown_grace, d.server.shutdown_grace);
        assert_eq!(parsed.server.body_read_timeout, d.server.body_read_timeout);
        assert_eq!(
            parsed.storage.checkpoint_log_bytes,
            d.storage.checkpoint_log_bytes
        );
        assert_eq!(
            parsed.limits.max_series_per_tenant,
            d.limits.max_series_per_tenant
        );
        assert_eq!(parsed.limits.max_series_total, d.limits.max_series_total);
        assert_eq!(parsed.query.timeout, d.query.timeout);
        assert_eq!(parsed.query.max_samples, d.query.max_samples);
        assert_eq!(parsed.query.lookback_delta, d.query.lookback_delta);
        assert_eq!(
            parsed.query.default_subquery_step,
            d.query.default_subquery_step
        );
        assert_eq!(parsed.query.max_concurrency, d.query.max_concurrency);
        assert_eq!(parsed.query.max_queue, d.query.max_queue);
        assert_eq!(parsed.query.max_query_length, d.query.max_query_length);
        assert_eq!(parsed.query.max_depth, d.query.max_depth);
        assert_eq!(
            parsed.storage.log_segment_bytes,
            d.storage.log_segment_bytes
        );
        assert_eq!(parsed.rollups.window, d.rollups.window);
        assert_eq!(parsed.cold.enabled, d.cold.enabled);
        assert_eq!(parsed.cold.archive_raw, d.cold.archive_raw);
        assert_eq!(parsed.cold.interval, d.cold.interval);
        assert_eq!(parsed.cold.target_file_bytes, d.cold.target_file_bytes);
        assert_eq!(parsed.cold.url, d.cold.url);
        assert_eq!(parsed.rollups.allowed_lateness, d.rollups.allowed_lateness);
        assert_eq!(parsed.rollups.out_of_orderness, d.rollups.out_of_orderness);
        assert_eq!(parsed.rollups.idle_timeout, d.rollups.idle_timeout);
        assert_eq!(parsed.rollups.retention, d.rollups.retention);
        assert_eq!(parsed.rollups.hour_retention, d.rollups.hour_retention);
        assert_eq!(parsed.rollups.quantiles, d.rollups.quantiles);
        assert_eq!(parsed.rollups.correction_horizon, None);
        parsed.validate().unwrap();
        let mut bad = d.clone();
        bad.rollups.window = Duration(7_000);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("divide a day"));
    }

    #[test]
    fn cold_urls_are_checked() {
        let cfg = |t: &str| toml::from_str::<Config>(t).unwrap();
        assert!(cfg("").validate().is_ok());
        assert_eq!(cfg("data_dir = \"d\"").cold_url(), "d/cold");
        assert!(cfg("[cold]\nurl = \"s3://b/p\"").validate().is_ok());
        for bad in ["gs://b/p", "s3://", "s3:///p"] {
            let e = cfg(&format!("[cold]\nurl = \"{bad}\""))
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("cold.url"), "{bad}: {e}");
        }
        assert!(cfg("[cold]\nenabled = false\nurl = \"gs://x\"")
            .validate()
            .is_ok());
    }

    #[test]
    fn partitions_are_auto_or_a_count() {
        let parse = |t: &str| toml::from_str::<Config>(t).map(|c| c.partitions);
        assert_eq!(parse("").unwrap(), Partitions::Auto);
        assert_eq!(parse("partitions = \"auto\"").unwrap(), Partitions::Auto);
        assert_eq!(parse("partitions = 3").unwrap(), Partitions::Fixed(3));
        for bad in ["0", "-1", "1025", "\"many\"", "2.5"] {
            let e = parse(&format!("partitions = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("\"auto\" or a number from 1 to 1024"),
                "{bad}: {e}"
            );
        }
        assert!((1..=Partitions::AUTO_MAX).contains(&Partitions::for_this_machine()));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        assert!(toml::from_str::<Config>("retension = \"1d\"")
            .unwrap_err()
            .to_string()
            .contains("retension"));
        assert!(toml::from_str::<Config>("retention = \"1x\"")
            .unwrap_err()
            .to_string()
            .contains("invalid duration"));
    }
}
