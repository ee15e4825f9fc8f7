//! Self-metrics: one `prometheus-client` registry that every stage registers with, served at
//! `/metrics`.
//!
//! A stage keeps its own counters (plain atomics on the hot path, no registry lookups per
//! sample) and describes them at each scrape through [`Stage::collect`]; the registry writes the
//! exposition (Prometheus text 0.0.4, or OpenMetrics when the scraper asks for it), so names,
//! escaping and histogram layout are the crate's, not hand-assembled text.

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A part of the server with self-metrics, registered once with [`register`].
pub trait Stage: Send + Sync + 'static {
    /// Describes the stage's metrics as they are now.
    fn collect(&self, out: &mut Out<'_>);
}

impl<T: Stage + ?Sized> Stage for Arc<T> {
    fn collect(&self, out: &mut Out<'_>) {
        (**self).collect(out)
    }
}

/// Registers `stage`: its metrics are part of every scrape of `registry` from now on.
pub fn register(registry: &mut Registry, stage: impl Stage) {
    registry.register_collector(Box::new(StageCollector(stage)));
}

/// Encodes `registry` in the format `accept` (an HTTP `Accept` header) prefers: OpenMetrics
/// when it names it, else the Prometheus text format. Returns the body and its content type.
pub fn expose(registry: &Registry, accept: &str) -> (String, &'static str) {
    let mut body = String::with_capacity(16 << 10);
    // Writing to a String cannot fail; a collector's error would be a bug in it.
    if accept.contains("application/openmetrics-text") {
        let _ = prometheus_client::encoding::text::encode(&mut body, registry);
        (
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, registry);
        (
            body,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    }
}

struct StageCollector<S>(S);

impl<S> std::fmt::Debug for StageCollector<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<S>())
    }
}

impl<S: Stage> Collector for StageCollector<S> {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Out {
            encoder,
            result: Ok(()),
        };
        self.0.collect(&mut out);
        out.result
    }
}

/// What a stage writes its metrics to during a scrape.
///
/// Names are written as exposed: a counter's ends in `_total` (which the encoder adds back).
/// The first encoding error is kept and ends the scrape; later writes are skipped.
pub struct Out<'a> {
    encoder: DescriptorEncoder<'a>,
    result: std::fmt::Result,
}

/// No labels (label sets are arrays of pairs: `[("protocol", "influx")]`).
pub const NONE: [(&str, &str); 0] = [];

impl Out<'_> {
    /// One unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.counters(name, help, [(NONE, v)]);
    }

    /// One unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, v: impl EncodeGaugeValue) {
        self.gauges(name, help, [(NONE, v)]);
    }

    /// A counter with one series per label set (none written when `series` is empty).
    pub fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) {
        let base = name.strip_suffix("_total");
        debug_assert!(base.is_some(), "counter {name} must end in _total");
        self.family(
            base.unwrap_or(name),
            help,
            MetricType::Counter,
            series,
            |m, v| m.encode_counter::<NoExemplar, _, u64>(v, None),
        );
    }

    /// A gauge with one series per label set.
    pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(name, help, MetricType::Gauge, series, |m, v| {
            m.encode_gauge(v)
        });
    }

    /// A histogram with one series per label set.
    pub fn histograms<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, Histogram)>,
    ) {
        self.family(name, help, MetricType::Histogram, series, |m, h| {
            // OpenMetrics wants the `+Inf` bucket written out: it holds what the others miss.
            let mut buckets = h.buckets.clone();
            if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
                let counted: u64 = buckets.iter().map(|b| b.1).sum();
                buckets.push((f64::INFINITY, h.count.saturating_sub(counted)));
            }
            m.encode_histogram::<NoExemplar>(h.sum, h.count, &buckets, None)
        });
    }

    fn family<L: EncodeLabelSet, V>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        series: impl IntoIterator<Item = (L, V)>,
        mut encode: impl FnMut(
            &mut prometheus_client::encoding::MetricEncoder<'_>,
            &V,
        ) -> std::fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            let mut m = self.encoder.encode_descriptor(name, help, None, kind)?;
            for (labels, v) in series {
                encode(&mut m.encode_family(&labels)?, &v)?;
            }
            Ok(())
        })();
    }
}

type NoExemplar = prometheus_client::encoding::NoLabelSet;

/// One histogram's state: per-bucket (not cumulative) counts by upper bound, with the
/// observations' sum and count (a `+Inf` bucket, if not given, holds what the others miss).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations in each bucket alone, by upper bound, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// A monotonically increasing counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The ingest protocols, as they appear in the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// Prometheus remote write.
    RemoteWrite,
    /// Influx line protocol.
    Influx,
    /// JSON device events.
    Events,
}

impl Protocol {
    /// All protocols, for exposition.
    pub const ALL: [Protocol; 3] = [Protocol::RemoteWrite, Protocol::Influx, Protocol::Events];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::RemoteWrite => "remote_write",
            Protocol::Influx => "influx",
            Protocol::Events => "events",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What `POST /api/v1/admin/backfill` did.
#[derive(Default)]
pub struct BackfillCounters {
    /// Requests completed.
    pub completed: Counter,
    /// Requests refused (4xx) or not completed (5xx).
    pub failed: Counter,
    /// Samples sent through the ordinary write path.
    pub raw: Counter,
    /// Samples rolled up into backfilled windows.
    pub windows: Counter,
    /// Samples rolled up into backfilled hours.
    pub hours: Counter,
    /// Samples archived as raw rows to the cold tier.
    pub cold_raw: Counter,
    /// Samples refused as older than the 1-hour tier keeps.
    pub too_old: Counter,
}

impl BackfillCounters {
    fn collect(&self, out: &mut Out<'_>) {
        out.counters(
            "strata_backfill_requests_total",
            "Backfill requests, by outcome (completed; failed: refused or not completed).",
            [("completed", &self.completed), ("failed", &self.failed)]
                .map(|(o, c)| ([("outcome", o)], c.get())),
        );
        out.counters(
            "strata_backfill_samples_total",
            "Samples of completed backfills, by where they went (a sample of an old hour counts in hours, and in windows and cold_raw when it went there too).",
            [
                ("raw", &self.raw),
                ("windows", &self.windows),
                ("hours", &self.hours),
                ("cold_raw", &self.cold_raw),
                ("refused_too_old", &self.too_old),
            ]
            .map(|(to, c)| ([("to", to)], c.get())),
        );
    }
}

/// Counters updated by the HTTP layer and the shards.
#[derive(Default)]
pub struct Counters {
    requests: [Counter; 3],
    samples: [Counter; 3],
    /// Samples dropped as exact repeats of stored ones.
    pub duplicate_samples: Counter,
    /// Samples that replaced a different value at the same timestamp.
    pub overwritten_samples: Counter,
    /// Events dropped as redeliveries.
    pub duplicate_events: Counter,
    /// Log records replayed at start.
    pub replayed_records: Counter,
    /// Flushes of the head into blocks.
    pub flushes: Counter,
    /// What backfills did.
    pub backfill: BackfillCounters,
    rejected: Mutex<BTreeMap<(Protocol, &'static str), u64>>,
}

impl Counters {
    /// Counts one request of `p`.
    pub fn request(&self, p: Protocol) {
        self.requests[p.index()].add(1);
    }

    /// Counts stored samples of `p`.
    pub fn samples(&self, p: Protocol, n: u64) {
        self.samples[p.index()].add(n);
    }

    /// Counts refused input of `p` by reason.
    pub fn rejected(&self, p: Protocol, reason: &'static str, n: u64) {
        if n > 0 {
            *self.rejected.lock().entry((p, reason)).or_default() += n;
        }
    }

    /// Describes the counters (the engine's [`Stage`] includes them).
    pub fn collect(&self, out: &mut Out<'_>) {
        let by_protocol = |c: &[Counter; 3]| {
            Protocol::ALL.map(|p| ([("protocol", p.as_str())], c[p.index()].get()))
        };
        out.counters(
            "strata_ingest_requests_total",
            "Write requests received, by protocol.",
            by_protocol(&self.requests),
        );
        out.counters(
            "strata_ingest_samples_total",
            "Samples acknowledged and stored, by protocol.",
            by_protocol(&self.samples),
        );
        out.counters(
            "strata_ingest_rejected_total",
            "Input items refused, by protocol and reason.",
            self.rejected
                .lock()
                .iter()
                .map(|((p, reason), n)| ([("protocol", p.as_str()), ("reason", reason)], *n)),
        );
        out.counter(
            "strata_ingest_duplicate_samples_total",
            "Samples dropped as exact repeats of (series, timestamp, value).",
            self.duplicate_samples.get(),
        );
        out.counter(
            "strata_ingest_overwritten_samples_total",
            "Samples that replaced a different value at the same (series, timestamp).",
            self.overwritten_samples.get(),
        );
        out.counter(
            "strata_ingest_duplicate_events_total",
            "Events dropped as redeliveries of an event_id already stored.",
            self.duplicate_events.get(),
        );
        out.counter(
            "strata_log_replayed_records_total",
            "Ingest-log records replayed at start-up.",
            self.replayed_records.get(),
        );
        out.counter(
            "strata_flushes_total",
            "Flushes of the head into blocks.",
            self.flushes.get(),
        );
        self.backfill.collect(out);
    }
}

/// Why the HTTP layer refused a request, as it appears in `strata_http_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 408: the body sent nothing for `server.body_read_timeout`.
    BodyTimeout,
    /// 413: the body, as sent or decompressed, passed its limit.
    BodyTooLarge,
    /// 503: a write found no room in `limits.max_pending_ingest_bytes` in time.
    PendingIngest,
}

impl Refusal {
    const ALL: [Refusal; 3] = [
        Refusal::BodyTimeout,
        Refusal::BodyTooLarge,
        Refusal::PendingIngest,
    ];

    /// The `code` and `reason` labels.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Refusal::BodyTimeout => ("408", "body_timeout"),
            Refusal::BodyTooLarge => ("413", "body_too_large"),
            Refusal::PendingIngest => ("503", "pending_ingest"),
        }
    }
}

/// What the HTTP layer's own limits did: connections open, refused and closed, and requests
/// refused before they reached the engine. Shared by the accept loop and the handlers.
#[derive(Default)]
pub struct HttpCounters {
    open_connections: AtomicU64,
    connections_refused: Counter,
    header_timeouts: Counter,
    body_timeouts: Counter,
    refused: [Counter; 3],
}

/// One connection counted as open until it is dropped.
pub struct OpenConnection(std::sync::Arc<HttpCounters>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpCounters {
    /// Counts a connection as open for as long as the returned guard lives.
    pub fn opened(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts a connection refused because `server.max_connections` were open.
    pub fn connection_refused(&self) {
        self.connections_refused.add(1);
    }

    /// Counts a connection closed for sending no whole request head within
    /// `server.header_read_timeout` (idle keep-alive connections included).
    pub fn header_timeout(&self) {
        self.header_timeouts.add(1);
    }

    /// Counts a refused request; a body timeout also closes its connection.
    pub fn refused(&self, r: Refusal) {
        self.refused[r as usize].add(1);
        if r == Refusal::BodyTimeout {
            self.body_timeouts.add(1);
        }
    }
}

impl Stage for HttpCounters {
    fn collect(&self, out: &mut Out<'_>) {
        out.gauge(
            "strata_http_open_connections",
            "Client connections open (at most server.max_connections).",
            self.open_connections.load(Ordering::Relaxed),
        );
        out.counter(
            "strata_http_connections_refused_total",
            "Connections answered 503 and closed because server.max_connections were open.",
            self.connections_refused.get(),
        );
        out.counters(
            "strata_http_connections_closed_total",
            "Connections closed by a timeout: header_timeout (no whole request head within \
             server.header_read_timeout, idle keep-alive included), body_timeout (a request \
             body silent for server.body_read_timeout).",
            [
                ("header_timeout", self.header_timeouts.get()),
                ("body_timeout", self.body_timeouts.get()),
            ]
            .map(|(reason, n)| ([("reason", reason)], n)),
        );
        out.counters(
            "strata_http_requests_refused_total",
            "Requests refused by the HTTP layer's limits, by status code and reason.",
            Refusal::ALL.map(|r| {
                let (code, reason) = r.labels();
                (
                    [("code", code), ("reason", reason)],
                    self.refused[r as usize].get(),
                )
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Example(Counter);

    impl Stage for Example {
        fn collect(&self, out: &mut Out<'_>) {
            out.counter("example_events_total", "Events.", self.0.get());
            out.gauges(
                "example_queue",
                "Queued, by \"queue\".",
                [([("queue", "a\"b\\c\nd")], 2u64), ([("queue", "plain")], 0)],
            );
            out.histograms(
                "example_seconds",
                "Latency.",
                [(
                    NONE,
                    Histogram {
                        buckets: vec![(0.1, 3), (1.0, 1)],
                        sum: 1.5,
                        count: 5,
                    },
                )],
            );
        }
    }

    #[test]
    fn stages_are_exposed_in_both_formats() {
        let stage = Arc::new(Example(Counter::default()));
        let mut registry = Registry::default();
        register(&mut registry, stage.clone());
        stage.0.add(7);
        let (text, ctype) = expose(&registry, "text/plain");
        assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
        let want = [
            "# HELP example_events_total Events.",
            "# TYPE example_events_total counter",
            "example_events_total 7",
            "# HELP example_queue Queued, by \"queue\".",
            "# TYPE example_queue gauge",
            r#"example_queue{queue="a\"b\\c\nd"} 2"#,
            r#"example_queue{queue="plain"} 0"#,
            "# HELP example_seconds Latency.",
            "# TYPE example_seconds histogram",
            r#"example_seconds_bucket{le="0.1"} 3"#,
            r#"example_seconds_bucket{le="1"} 4"#,
            r#"example_seconds_bucket{le="+Inf"} 5"#,
            "example_seconds_sum 1.5",
            "example_seconds_count 5",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
        let (open, ctype) = expose(&registry, "application/openmetrics-text;version=1.0.0");
        assert!(ctype.starts_with("application/openmetrics-text"));
        assert!(open.contains("# TYPE example_events counter\n"), "{open}");
        assert!(open.contains("example_events_total 7\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("example_seconds_bucket{le=\"+Inf\"} 5\n"),
            "{open}"
        );
    }
}
