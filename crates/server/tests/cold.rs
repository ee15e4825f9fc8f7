//! The cold tier through the server: final hours reach Parquet files under
//! `<data_dir>/cold/tenant=.../tier=1h/day=.../` by `POST /api/v1/admin/flush`, and DuckDB (a
//! reader with no Strata code) answers the README's query from them; a late event's corrected
//! hour is archived again at its higher revision; a SIGKILL while archiving leaves no partial or
//! duplicate rows and loses nothing; raw samples are archived before retention deletes their
//! blocks. DuckDB is the CLI or Python's `duckdb` (`pip install duckdb`, see `.ci/run`); the
//! tests that need it skip, saying so, when neither is installed.

mod common;
#[path = "../../tier/tests/duckdb_support/mod.rs"]
mod duckdb_support;
use common::*;
use duckdb_support::{close, find_duckdb, query, Duck};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DEVICES: usize = 6;
const EVERY_MS: i64 = 60_000;

const CONFIG: &str = r#"
partitions = 2
[rollups]
window = "1m"
out_of_orderness = "10s"
allowed_lateness = "2m"
idle_timeout = "1h"
quantile_metrics = ["temperature_celsius"]
[cold]
interval = "1h"
"#;

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The glob over every Parquet file of the server's cold directory.
fn glob(dir: &Path) -> String {
    format!(
        "read_parquet('{}/data/cold/**/*.parquet', hive_partitioning=true)",
        dir.display()
    )
}

/// Device `d`'s reading at minute `i`: eighths (exact sums), different per device.
fn reading(d: usize, i: i64) -> f64 {
    (i % 20) as f64 * 0.125 + d as f64 * 3.0
}

fn event(id: &str, d: usize, ts: i64, v: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","device_id":"d{d}","timestamp":{ts},"readings":{{"temperature_celsius":{v}}},"labels":{{"site":"s{}"}}}}"#,
        d % 2
    ) + "\n"
}

/// Every device's readings over `hours` hours from `base`, and what each device's hours hold.
/// Hours are left-open, `(start, start + 1h]`: reading `i` is at the end of minute `i`, the
/// 60th of an hour on the hour's end.
fn fleet(base: i64, hours: i64) -> (String, BTreeMap<(usize, i64), Vec<f64>>) {
    let mut body = String::new();
    let mut truth: BTreeMap<(usize, i64), Vec<f64>> = BTreeMap::new();
    for i in 0..hours * HOUR / EVERY_MS {
        for d in 0..DEVICES {
            let (ts, v) = (base + (i + 1) * EVERY_MS, reading(d, i));
            body.push_str(&event(&format!("e{d}-{ts}"), d, ts, v));
            let h = base + (i * EVERY_MS) / HOUR * HOUR;
            truth.entry((d, h)).or_default().push(v);
        }
    }
    (body, truth)
}

/// Milliseconds as the API's seconds, to the millisecond.
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// (device, start) -> (state, revision) of every temperature hour overlapping `[from, to]`.
fn hour_states(s: &Server, from: i64, to: i64) -> BTreeMap<(String, i64), (String, u64)> {
    let body = s.get_json(&format!(
        "/api/v1/rollups?match[]=temperature_celsius&tier=1h&start={}&end={}",
        secs(from),
        secs(to)
    ));
    let mut out = BTreeMap::new();
    for series in body["data"].as_array().unwrap() {
        let dev = series["metric"]["device"].as_str().unwrap().to_string();
        for w in series["windows"].as_array().unwrap() {
            out.insert(
                (dev.clone(), w["start"].as_i64().unwrap()),
                (
                    w["state"].as_str().unwrap().to_string(),
                    w["revision"].as_u64().unwrap(),
                ),
            );
        }
    }
    out
}

/// Polls until every hour of every device from `base` for `hours` is final or corrected.
fn wait_final(s: &Server, base: i64, hours: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = hour_states(s, base + 1, base + hours * HOUR);
        let done = st.len() == DEVICES * hours as usize
            && st.values().all(|(state, _)| state != "provisional");
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hours not final: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Writes `hours` hours of the fleet from `base` and makes them final.
fn write_final_hours(s: &Server, base: i64, hours: i64) -> BTreeMap<(usize, i64), Vec<f64>> {
    let (body, truth) = fleet(base, hours);
    assert!(s.post("/api/v1/events", body).status().is_success());
    let t = ticks(base + hours * HOUR + 3 * MIN);
    assert!(s.post("/api/v1/events", t).status().is_success());
    wait_final(s, base, hours);
    truth
}

/// Each site's average of its hours' means, from the truth.
fn site_averages(truth: &BTreeMap<(usize, i64), Vec<f64>>) -> BTreeMap<String, f64> {
    let mut by_site: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for ((d, _), v) in truth {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        by_site.entry(format!("s{}", d % 2)).or_default().push(mean);
    }
    by_site
        .into_iter()
        .map(|(s, m)| (s, m.iter().sum::<f64>() / m.len() as f64))
        .collect()
}

/// The README's query, as DuckDB answers it.
fn duck_site_averages(duck: &Duck, dir: &Path) -> BTreeMap<String, f64> {
    query(
        duck,
        &format!(
            "select site, avg(mean) from {} where metric='temperature_celsius' group by site order by site",
            glob(dir)
        ),
    )
    .into_iter()
    .map(|r| (r[0].clone(), num(&r[1])))
    .collect()
}

/// (device, start) -> rows DuckDB sees of that hour.
fn duck_rows(duck: &Duck, dir: &Path) -> BTreeMap<(String, i64), u64> {
    query(
        duck,
        &format!(
            "select device, start, count(*) from {} where metric='temperature_celsius' and tier='1h' group by all order by all",
            glob(dir)
        ),
    )
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].parse().unwrap()), r[2].parse().unwrap()))
    .collect()
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("data/cold"), &mut out);
    out
}

#[test]
fn final_hours_reach_parquet_that_duckdb_reads_and_corrections_follow() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let base = (now_ms() - 5 * HOUR).div_euclid(HOUR) * HOUR;
    let mut truth = write_final_hours(&s, base, 2);
    // The archiver runs hourly here: the flush is what brings the cold tier up to date.
    s.flush();
    let files = parquet_files(dir.path());
    assert!(!files.is_empty(), "no Parquet files after the flush");
    for f in &files {
        let rel = f.strip_prefix(dir.path().join("data/cold")).unwrap();
        let parts: Vec<_> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(parts[0], "tenant=default", "{rel:?}");
        assert!(parts[1] == "tier=1h", "{rel:?}");
        assert!(parts[2].starts_with("day=20"), "{rel:?}");
    }
    let m = s.metrics();
    assert_eq!(
        metric(&m, "strata_cold_hours_archived_total"),
        (DEVICES * 2) as f64
    );
    assert_eq!(metric(&m, "strata_cold_pending_hours"), 0.0);
    assert!(metric(&m, "strata_cold_files") >= 1.0);
    assert!(metric(&m, "strata_cold_rows_written_total") >= (DEVICES * 2) as f64);
    assert_eq!(metric(&m, "strata_cold_archive_failures_total"), 0.0);

    let Some(duck) = find_duckdb("final_hours_reach_parquet_that_duckdb_reads") else {
        return;
    };
    let want = site_averages(&truth);
    let got = duck_site_averages(&duck, dir.path());
    assert_eq!(got.len(), 2, "{got:?}");
    for (site, avg) in &want {
        assert!(close(got[site], *avg), "{site}: {} vs {avg}", got[site]);
    }
    // Sketched: each hour carries its state (the merged DDSketch) for later merges.
    let sketched = query(
        &duck,
        &format!(
            "select count(*), count(sketch) from {} where metric='temperature_celsius'",
            glob(dir.path())
        ),
    );
    assert_eq!(sketched[0], vec![(DEVICES * 2).to_string(); 2]);
    // Every hour once, with every figure of its samples.
    let rows = duck_rows(&duck, dir.path());
    assert_eq!(rows.len(), DEVICES * 2);
    assert!(rows.values().all(|&n| n == 1), "{rows:?}");
    let figures = query(
        &duck,
        &format!(
            "select device, start, \"end\", count, sum, min, max, first, last, revision, labels['site'], first_ts, last_ts from {} where metric='temperature_celsius' order by device, start",
            glob(dir.path())
        ),
    );
    for r in &figures {
        let d: usize = r[0][1..].parse().unwrap();
        let start: i64 = r[1].parse().unwrap();
        let v = &truth[&(d, start)];
        assert_eq!(r[2].parse::<i64>().unwrap(), start + HOUR);
        assert_eq!(r[3].parse::<usize>().unwrap(), v.len());
        assert!(close(num(&r[4]), v.iter().sum()));
        assert_eq!(num(&r[5]), v.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(
            num(&r[6]),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        assert_eq!(num(&r[7]), v[0]);
        assert_eq!(num(&r[8]), v[v.len() - 1]);
        assert_eq!(r[9], "0");
        assert_eq!(r[10], format!("s{}", d % 2));
        // `(start, end]`: the reading on the hour's end is its last, none on its start.
        assert_eq!(r[11].parse::<i64>().unwrap(), start + MIN);
        assert_eq!(r[12].parse::<i64>().unwrap(), start + HOUR);
    }

    // A late event corrects d0's first hour: archived again at revision 1.
    let late_ts = base + 20 * MIN + 7_000;
    assert!(s
        .post("/api/v1/events", event("late-1", 0, late_ts, 500.0))
        .status()
        .is_success());
    truth.get_mut(&(0, base)).unwrap().push(500.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while hour_states(&s, base + 1, base + HOUR)[&("d0".to_string(), base)].1 != 1 {
        assert!(std::time::Instant::now() < deadline, "hour not corrected");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.flush();
    let newest = query(
        &duck,
        &format!(
            "select count, sum, max, revision from {} where metric='temperature_celsius' and device='d0' and start={base} \
             qualify row_number() over (partition by labels, start order by revision desc) = 1",
            glob(dir.path())
        ),
    );
    assert_eq!(newest.len(), 1, "{newest:?}");
    let v = &truth[&(0, base)];
    assert_eq!(newest[0][0].parse::<usize>().unwrap(), v.len());
    assert!(close(num(&newest[0][1]), v.iter().sum()));
    assert_eq!(num(&newest[0][2]), 500.0);
    assert_eq!(newest[0][3], "1");
    assert_eq!(
        metric(&s.metrics(), "strata_cold_hours_archived_total"),
        (DEVICES * 2 + 1) as f64
    );
}

#[test]
fn a_sigkill_while_archiving_loses_nothing_and_duplicates_nothing() {
    let Some(duck) = find_duckdb("a_sigkill_while_archiving_loses_nothing_and_duplicates_nothing")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let timed = CONFIG.replace("\"1h\"", "\"1s\"");
    let s = Server::start(dir.path(), &timed);
    let base = (now_ms() - 8 * HOUR).div_euclid(HOUR) * HOUR;
    let truth = write_final_hours(&s, base, 3);
    // Archived by a timed pass, before any checkpoint recorded them as taken (or the hours
    // themselves): a restart replays them final and queued again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while metric(&s.metrics(), "strata_cold_hours_archived_total") < (DEVICES * 3) as f64 {
        assert!(std::time::Instant::now() < deadline, "no timed pass");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(duck_rows(&duck, dir.path()).len(), DEVICES * 3);
    s.kill9();
    let s = Server::start(dir.path(), CONFIG);
    // More hours, and a kill while the flush archives them (wherever it lands).
    let more = write_final_hours(&s, base + 3 * HOUR, 2);
    let url = s.url("/api/v1/admin/flush");
    let flusher = std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new().post(url).send();
    });
    s.kill9();
    flusher.join().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    s.flush();
    let rows = duck_rows(&duck, dir.path());
    assert_eq!(rows.len(), DEVICES * 5, "every hour archived: {rows:?}");
    assert!(
        rows.values().all(|&n| n == 1),
        "no hour twice, none partial: {rows:?}"
    );
    let mut all = truth;
    all.extend(more);
    let want = site_averages(&all);
    let got = duck_site_averages(&duck, dir.path());
    for (site, avg) in &want {
        assert!(close(got[site], *avg), "{site}: {} vs {avg}", got[site]);
    }
    s.stop();
}

#[test]
fn raw_samples_are_archived_before_retention_deletes_their_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        // Raw samples expire only once their windows are final: an idle shard's windows close
        // by the clock after `idle_timeout`.
        "partitions = 1\nretention = \"2m\"\n[storage]\nblock_duration = \"1m\"\n[rollups]\nidle_timeout = \"5s\"\nallowed_lateness = \"5s\"\n[cold]\ninterval = \"1h\"\n",
    );
    let t0 = now_ms() - 100_000;
    let samples: Vec<(i64, f64)> = (0..20).map(|i| (t0 + i * 1000, i as f64 * 0.5)).collect();
    let body = remote_write_body(&[(
        vec![("__name__", "archived_metric"), ("site", "s1")],
        samples.clone(),
    )]);
    let r = s
        .client
        .post(s.url("/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    s.flush();
    // Retention deletes the samples' blocks within a minute or so (the samples may straddle
    // two one-minute blocks, deleted one after the other); each flush runs maintenance.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !s.export("archived_metric").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the raw tier never let them go"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        s.flush();
    }
    assert!(metric(&s.metrics(), "strata_tsdb_retention_deleted_blocks_total") > 0.0);
    let m = s.metrics();
    assert_eq!(metric(&m, "strata_cold_raw_samples_archived_total"), 20.0);
    assert_eq!(metric(&m, "strata_cold_raw_archive_failures_total"), 0.0);
    let Some(duck) = find_duckdb("raw_samples_are_archived_before_retention_deletes_their_blocks")
    else {
        return;
    };
    let rows = query(
        &duck,
        &format!(
            "select timestamp, value, site from {} where metric='archived_metric' and tier='raw' order by timestamp",
            glob(dir.path())
        ),
    );
    let got: Vec<(i64, f64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r[2], "s1");
            (r[0].parse().unwrap(), num(&r[1]))
        })
        .collect();
    assert_eq!(got, samples);
}

#[test]
fn a_bad_cold_url_stops_the_server_at_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("strata.toml");
    std::fs::write(&cfg, "[cold]\nurl = \"gs://bucket/prefix\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cold.url") && err.contains("gs://bucket/prefix"),
        "{err}"
    );
}

/// Kills the moto server this test started when the test ends, however it ends.
struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto's S3 server on a free loopback port; `None` when it is not installed.
fn start_moto() -> Option<(Moto, u16)> {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut moto = match child {
        Ok(c) => Moto(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("moto_server did not start: {e}"),
    };
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((moto, port));
        }
        if let Some(status) = moto.0.try_wait().unwrap() {
            panic!("moto_server exited with {status} before listening");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("moto_server did not listen on port {port} within 30 s");
}

#[test]
fn the_cold_tier_on_a_real_s3_server() {
    let Some((_moto, port)) = start_moto() else {
        println!("SKIPPED the_cold_tier_on_a_real_s3_server: moto_server not found (pip install \"moto[server]\")");
        return;
    };
    let s3 = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", s3.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    boto3(&env, &["create", "strata"]);
    let config = format!("{CONFIG}url = \"s3://strata/fleet/cold\"\n");
    let s = Server::start_with_env(dir.path(), &config, &env);
    let base = (now_ms() - 5 * HOUR).div_euclid(HOUR) * HOUR;
    let truth = write_final_hours(&s, base, 2);
    s.flush();
    assert_eq!(
        metric(&s.metrics(), "strata_cold_hours_archived_total"),
        (DEVICES * 2) as f64
    );
    assert!(
        !dir.path().join("data/cold").exists(),
        "nothing written locally"
    );
    // The bucket holds the files under the prefix, in the same layout; downloaded as they
    // are (by boto3, which moto brings), DuckDB answers the README's query from them.
    let local = tempfile::tempdir().unwrap();
    let keys = boto3(
        &env,
        &[
            "download",
            "strata",
            "fleet/",
            &local.path().join("data").display().to_string(),
        ],
    );
    assert!(
        keys.iter().any(|k| k == "fleet/cold/_strata/manifest.json"),
        "{keys:?}"
    );
    let files: Vec<&String> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
    assert!(!files.is_empty(), "{keys:?}");
    for k in &files {
        assert!(
            k.starts_with("fleet/cold/tenant=default/tier=1h/day="),
            "{k}"
        );
    }
    let Some(duck) = find_duckdb("the_cold_tier_on_a_real_s3_server (DuckDB part)") else {
        return;
    };
    let got = duck_site_averages(&duck, local.path());
    let want = site_averages(&truth);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (site, avg) in &want {
        assert!(close(got[site], *avg), "{site}: {} vs {avg}", got[site]);
    }
    assert!(duck_rows(&duck, local.path()).values().all(|&n| n == 1));
}

/// Runs a small boto3 script against moto: `create BUCKET`, or `download BUCKET PREFIX DIR`
/// (every object under PREFIX into DIR, the prefix cut off); prints and returns the keys.
fn boto3(env: &[(&str, &str)], args: &[&str]) -> Vec<String> {
    const SCRIPT: &str = "import boto3, os, sys\n\
        s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
        if sys.argv[1] == 'create':\n    s3.create_bucket(Bucket=sys.argv[2])\n\
        else:\n    \
            _, _, bucket, prefix, out = sys.argv\n    \
            for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):\n        \
                for o in page.get('Contents', []):\n            \
                    path = os.path.join(out, o['Key'][len(prefix):])\n            \
                    os.makedirs(os.path.dirname(path), exist_ok=True)\n            \
                    s3.download_file(bucket, o['Key'], path)\n            \
                    print(o['Key'])\n";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn timed_passes_compact_a_corrected_day_so_outside_readers_see_each_hour_once() {
    let Some(duck) = find_duckdb("timed_passes_compact_a_corrected_day") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &CONFIG.replace("\"1h\"", "\"1s\""));
    let base = (now_ms() - 5 * HOUR).div_euclid(HOUR) * HOUR;
    let mut truth = write_final_hours(&s, base, 1);
    s.flush();
    let late_ts = base + 30 * MIN + 1_000;
    assert!(s
        .post("/api/v1/events", event("late-2", 1, late_ts, -40.0))
        .status()
        .is_success());
    truth.get_mut(&(1, base)).unwrap().push(-40.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while hour_states(&s, base + 1, base + HOUR)[&("d1".to_string(), base)].1 != 1 {
        assert!(std::time::Instant::now() < deadline, "hour not corrected");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.flush();
    // The next timed pass merges the day's files, keeping only the newest revision.
    while metric(&s.metrics(), "strata_cold_files_compacted_total") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(parquet_files(dir.path()).len(), 1);
    let rows = query(
        &duck,
        &format!(
            "select device, count(*), max(revision), min(min) from {} where metric='temperature_celsius' group by device order by device",
            glob(dir.path())
        ),
    );
    assert_eq!(rows.len(), DEVICES);
    for r in &rows {
        assert_eq!(r[1], "1", "{r:?}");
        let want_rev = if r[0] == "d1" { "1" } else { "0" };
        assert_eq!(r[2], want_rev, "{r:?}");
    }
    assert_eq!(num(&rows[1][3]), -40.0);
}
