//! `strata backfill`: sends files of history (Influx line protocol, or one Prometheus remote
//! write request per file; gzip'd or not) to a server's `POST /api/v1/admin/backfill`.
//!
//! Each file is decoded whole with the server's own decoders, its samples grouped by series and
//! sent as remote-write requests of about `request_bytes`, cut by time on UTC day boundaries:
//! every request carries whole series-days, so whole series-hours, as the endpoint requires
//! (see README, "Backfilling history"), however the file orders its lines. Requests go one at a time; a failed one stops
//! the run naming the file and the server's answer (a rerun is safe: backfills are idempotent).

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use strata_ingest::{influx, DecodeContext};
use strata_model::{sort_last_wins, Limits, Sample, SeriesKey, Tenant, WriteBatch};
use strata_stream::window::window_of;

/// What to send where.
pub struct BackfillArgs {
    /// Server base URL.
    pub url: String,
    /// Tenant (`X-Scope-OrgID`), default tenant when `None`.
    pub tenant: Option<String>,
    /// Line protocol timestamps' precision; `None`: the files are remote-write requests.
    pub precision: Option<influx::Precision>,
    /// About how many bytes of samples a request carries (whole hours of series).
    pub request_bytes: usize,
    /// The files.
    pub files: Vec<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Totals of the server's answers.
#[derive(Debug, Default)]
pub struct BackfillTotals {
    /// Requests sent.
    pub requests: u64,
    /// Each numeric field of the answers, summed (`refused` as `refused.too_old`, ...).
    pub fields: BTreeMap<String, u64>,
}

/// A file's bytes, inflated when gzip'd.
fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: broken gzip", path.display()))?;
        return Ok(out);
    }
    Ok(raw)
}

/// One file's samples by series, each sorted, one per timestamp.
fn decode(
    path: &PathBuf,
    precision: Option<influx::Precision>,
) -> anyhow::Result<Vec<(SeriesKey, Vec<Sample>)>> {
    let body = read(path)?;
    let limits = Limits {
        max_age_ms: i64::MAX / 4,
        ..Limits::default()
    };
    let ctx = DecodeContext {
        limits: &limits,
        now_ms: strata_model::time::now_ms(),
        max_decompressed_bytes: usize::MAX / 2,
    };
    let mut batch = WriteBatch::new(Tenant::default_tenant());
    let decoded = match precision {
        Some(p) => influx::decode(&body, p, &ctx, &mut batch),
        None => strata_ingest::remote_write::decode(&body, &ctx, &mut batch),
    }
    .with_context(|| format!("{}", path.display()))?;
    if let Some(r) = decoded.rejected.first() {
        anyhow::bail!(
            "{}: {} items are invalid (the server would refuse the request whole), first: {r}",
            path.display(),
            decoded.rejected_total
        );
    }
    let mut by_series: BTreeMap<SeriesKey, Vec<Sample>> = BTreeMap::new();
    for s in batch.iter() {
        by_series
            .entry(s.key.to_owned())
            .or_default()
            .extend_from_slice(s.samples);
    }
    Ok(by_series
        .into_iter()
        .map(|(k, mut v)| {
            sort_last_wins(&mut v);
            (k, v)
        })
        .collect())
}

/// A UTC day: the cold tier's partition, and the unit requests are cut in.
const DAY_MS: i64 = 86_400_000;

/// Cuts series into requests of about `budget` bytes of samples, by time: day by day, each
/// series' samples of a day in one request (a day is whole hours), so a request touches few
/// days of each tier (few blocks, few cold-tier files) however the file was ordered.
fn requests(
    series: &[(SeriesKey, Vec<Sample>)],
    budget: usize,
) -> Vec<Vec<(&SeriesKey, &[Sample])>> {
    const SAMPLE_BYTES: usize = 16;
    let mut days: BTreeMap<i64, Vec<(&SeriesKey, &[Sample])>> = BTreeMap::new();
    for (key, samples) in series {
        for day in samples
            .chunk_by(|a, b| window_of(a.timestamp, DAY_MS) == window_of(b.timestamp, DAY_MS))
        {
            days.entry(window_of(day[0].timestamp, DAY_MS))
                .or_default()
                .push((key, day));
        }
    }
    let mut out = Vec::new();
    let (mut cur, mut bytes): (Vec<(&SeriesKey, &[Sample])>, usize) = (Vec::new(), 0);
    for (key, day) in days.into_values().flatten() {
        let size = day.len() * SAMPLE_BYTES + key.as_bytes().len();
        if bytes > 0 && bytes + size > budget {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push((key, day));
        bytes += size;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Sends every file (see the module doc); returns the answers' totals.
pub fn run(args: &BackfillArgs) -> anyhow::Result<BackfillTotals> {
    let url = format!("{}/api/v1/admin/backfill", args.url.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(3600))
        .build()?;
    let mut totals = BackfillTotals::default();
    let bar = args.progress.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} samples, {elapsed} elapsed, {eta} left, {msg}",
            )
            .expect("static template"),
        );
        b
    });
    for path in &args.files {
        let series = decode(path, args.precision)?;
        let n: usize = series.iter().map(|s| s.1.len()).sum();
        if let Some(b) = &bar {
            b.inc_length(n as u64);
            b.set_message(path.display().to_string());
        }
        for req in requests(&series, args.request_bytes) {
            let labels: Vec<Vec<(String, String)>> = req
                .iter()
                .map(|(k, _)| {
                    k.labels()
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect()
                })
                .collect();
            let pairs: Vec<Vec<(&str, &str)>> = labels
                .iter()
                .map(|l| l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect())
                .collect();
            let rows: Vec<strata_ingest::remote_write::SeriesToEncode<'_>> = pairs
                .iter()
                .zip(&req)
                .map(|(p, (_, s))| (p.as_slice(), *s))
                .collect();
            let mut r = client
                .post(&url)
                .header("Content-Type", "application/x-protobuf")
                .header("Content-Encoding", "snappy")
                .body(strata_ingest::remote_write::encode(&rows));
            if let Some(t) = &args.tenant {
                r = r.header("X-Scope-OrgID", t);
            }
            let resp = r.send().with_context(|| format!("POST {url}"))?;
            let status = resp.status();
            let text = resp.text().unwrap_or_default();
            anyhow::ensure!(status.is_success(), "{}: {status}: {text}", path.display());
            let v: serde_json::Value = serde_json::from_str(&text)?;
            add_numbers(&mut totals.fields, "", &v);
            totals.requests += 1;
            if let Some(b) = &bar {
                b.inc(req.iter().map(|(_, s)| s.len() as u64).sum());
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(totals)
}

/// Adds every unsigned number of `v` (nested objects as `a.b`) to `into`.
fn add_numbers(into: &mut BTreeMap<String, u64>, prefix: &str, v: &serde_json::Value) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match x.as_u64() {
                Some(n) => *into.entry(name).or_default() += n,
                None => add_numbers(into, &name, x),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    #[test]
    fn requests_carry_whole_series_days_in_time_order() {
        let key = |d: &str| {
            Labels::from_pairs([("__name__", "m"), ("device", d)])
                .unwrap()
                .key()
        };
        // Every 5 minutes, the last of each day on its end: 288 samples a day.
        let days = |n: i64| -> Vec<Sample> {
            (0..n * 288)
                .map(|i| Sample::new(10 * DAY_MS + (i + 1) * 300_000, i as f64))
                .collect()
        };
        let series = vec![(key("a"), days(3)), (key("b"), days(2))];
        // About one series-day a request.
        let reqs = requests(&series, 288 * 16 + 100);
        assert_eq!(reqs.len(), 5);
        let mut last_day = i64::MIN;
        let mut total = 0;
        for r in &reqs {
            assert_eq!(r.len(), 1);
            let (_, s) = r[0];
            assert_eq!(
                (s[0].timestamp % DAY_MS, s.len()),
                (300_000, 288),
                "a whole day"
            );
            assert!(s[0].timestamp >= last_day, "in time order");
            last_day = s[0].timestamp;
            total += s.len();
        }
        assert_eq!(total, 5 * 288, "every sample once");
        let two_days = requests(&series, 4 * 288 * 16 + 100);
        assert_eq!(
            two_days.len(),
            2,
            "the first two days of both, then the third of a"
        );
        assert_eq!(two_days[0].len(), 4);
        let one = requests(&series, usize::MAX);
        assert_eq!((one.len(), one[0].len()), (1, 5));
    }
}
