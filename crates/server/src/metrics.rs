//! Self-metrics in the Prometheus text format, served at `/metrics`.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
    fn render(&self, out: &mut String) {
        header(
            out,
            "strata_backfill_requests_total",
            "counter",
            "Backfill requests, by outcome (completed; failed: refused or not completed).",
        );
        for (o, c) in [("completed", &self.completed), ("failed", &self.failed)] {
            let _ = writeln!(
                out,
                "strata_backfill_requests_total{{outcome=\"{o}\"}} {}",
                c.get()
            );
        }
        header(
            out,
            "strata_backfill_samples_total",
            "counter",
            "Samples of completed backfills, by where they went (a sample of an old hour counts in hours, and in windows and cold_raw when it went there too).",
        );
        for (to, c) in [
            ("raw", &self.raw),
            ("windows", &self.windows),
            ("hours", &self.hours),
            ("cold_raw", &self.cold_raw),
            ("refused_too_old", &self.too_old),
        ] {
            let _ = writeln!(
                out,
                "strata_backfill_samples_total{{to=\"{to}\"}} {}",
                c.get()
            );
        }
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

    /// Writes the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "strata_ingest_requests_total",
            "counter",
            "Write requests received, by protocol.",
        );
        for p in Protocol::ALL {
            let _ = writeln!(
                out,
                "strata_ingest_requests_total{{protocol=\"{}\"}} {}",
                p.as_str(),
                self.requests[p.index()].get()
            );
        }
        header(
            out,
            "strata_ingest_samples_total",
            "counter",
            "Samples acknowledged and stored, by protocol.",
        );
        for p in Protocol::ALL {
            let _ = writeln!(
                out,
                "strata_ingest_samples_total{{protocol=\"{}\"}} {}",
                p.as_str(),
                self.samples[p.index()].get()
            );
        }
        header(
            out,
            "strata_ingest_rejected_total",
            "counter",
            "Input items refused, by protocol and reason.",
        );
        for ((p, reason), n) in self.rejected.lock().iter() {
            let _ = writeln!(
                out,
                "strata_ingest_rejected_total{{protocol=\"{}\",reason=\"{reason}\"}} {n}",
                p.as_str()
            );
        }
        counter(
            out,
            "strata_ingest_duplicate_samples_total",
            "Samples dropped as exact repeats of (series, timestamp, value).",
            self.duplicate_samples.get(),
        );
        counter(
            out,
            "strata_ingest_overwritten_samples_total",
            "Samples that replaced a different value at the same (series, timestamp).",
            self.overwritten_samples.get(),
        );
        counter(
            out,
            "strata_ingest_duplicate_events_total",
            "Events dropped as redeliveries of an event_id already stored.",
            self.duplicate_events.get(),
        );
        counter(
            out,
            "strata_log_replayed_records_total",
            "Ingest-log records replayed at start-up.",
            self.replayed_records.get(),
        );
        counter(
            out,
            "strata_flushes_total",
            "Flushes of the head into blocks.",
            self.flushes.get(),
        );
        self.backfill.render(out);
    }
}

/// Writes `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one unlabelled counter.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Writes one unlabelled gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
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
    fn labels(self) -> (u16, &'static str) {
        match self {
            Refusal::BodyTimeout => (408, "body_timeout"),
            Refusal::BodyTooLarge => (413, "body_too_large"),
            Refusal::PendingIngest => (503, "pending_ingest"),
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

    /// Writes the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        gauge(
            out,
            "strata_http_open_connections",
            "Client connections open (at most server.max_connections).",
            self.open_connections.load(Ordering::Relaxed) as f64,
        );
        counter(
            out,
            "strata_http_connections_refused_total",
            "Connections answered 503 and closed because server.max_connections were open.",
            self.connections_refused.get(),
        );
        header(
            out,
            "strata_http_connections_closed_total",
            "counter",
            "Connections closed by a timeout: header_timeout (no whole request head within \
             server.header_read_timeout, idle keep-alive included), body_timeout (a request \
             body silent for server.body_read_timeout).",
        );
        for (reason, n) in [
            ("header_timeout", self.header_timeouts.get()),
            ("body_timeout", self.body_timeouts.get()),
        ] {
            let _ = writeln!(
                out,
                "strata_http_connections_closed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            out,
            "strata_http_requests_refused_total",
            "counter",
            "Requests refused by the HTTP layer's limits, by status code and reason.",
        );
        for r in Refusal::ALL {
            let (code, reason) = r.labels();
            let _ = writeln!(
                out,
                "strata_http_requests_refused_total{{code=\"{code}\",reason=\"{reason}\"}} {}",
                self.refused[r as usize].get()
            );
        }
    }
}
