//! DuckDB, a reader with no Strata code, on a local cold directory: the query of the README
//! (`read_parquet('<dir>/**/*.parquet', hive_partitioning=true)`) over every tier at once.
//! Uses the `duckdb` CLI or Python's `duckdb` package (`pip install duckdb`); skips, saying so,
//! when neither is installed.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use strata_model::Tenant;
use strata_tier::cold::{ColdOptions, ColdStore, SeriesWindows, Tier};

/// How DuckDB is run here.
enum Duck {
    Cli,
    Python,
}

fn find_duckdb() -> Option<Duck> {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if ok(Command::new("duckdb").arg("-version")) {
        Some(Duck::Cli)
    } else if ok(Command::new("python3").args(["-c", "import duckdb"])) {
        Some(Duck::Python)
    } else {
        None
    }
}

/// Runs one query; rows of comma-separated values.
fn query(duck: &Duck, sql: &str) -> Vec<Vec<String>> {
    let out = match duck {
        Duck::Cli => Command::new("duckdb")
            .args(["-csv", "-noheader", "-c", sql])
            .output(),
        Duck::Python => Command::new("python3")
            .args([
                "-c",
                "import duckdb, sys\n\
                 for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
                 print(','.join('' if v is None else repr(v) if isinstance(v, float) else str(v) for v in row))",
                sql,
            ])
            .output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn duckdb_reads_the_cold_directory() {
    let Some(duck) = find_duckdb() else {
        println!("SKIPPED duckdb_reads_the_cold_directory: no duckdb CLI or Python duckdb (pip install duckdb)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ColdStore::open(dir.path().to_str().unwrap(), ColdOptions::default()).unwrap();
    let acme = Tenant::new("acme").unwrap();
    // Hour by hour, then a correction of hour 5 of every series, then compaction.
    let mut fleet = fleet(9, 30, 0);
    for h in 0..30 {
        let one: Vec<SeriesWindows> = fleet
            .iter()
            .map(|s| SeriesWindows {
                labels: s.labels.clone(),
                windows: vec![s.windows[h].clone()],
            })
            .collect();
        store.write_windows(&acme, Tier::Hour, &one).unwrap();
    }
    for (i, s) in fleet.iter_mut().enumerate() {
        s.windows[5] = window(T0 + 5 * HOUR, 100.0 + i as f64, 1);
    }
    let fixes: Vec<SeriesWindows> = fleet
        .iter()
        .map(|s| SeriesWindows {
            labels: s.labels.clone(),
            windows: vec![s.windows[5].clone()],
        })
        .collect();
    store.write_windows(&acme, Tier::Hour, &fixes).unwrap();
    let mut humidity = fleet[..2].to_vec();
    for s in &mut humidity {
        s.labels.set("__name__", "humidity_percent");
    }
    store.write_windows(&acme, Tier::Hour, &humidity).unwrap();
    store.write_raw(&acme, &raw(3, 2)).unwrap();
    store.compact().unwrap();
    drop(store);

    let glob = format!(
        "read_parquet('{}/**/*.parquet', hive_partitioning=true)",
        dir.path().display()
    );
    // The README's query, as a user types it: every tier in one glob (raw rows have no `mean`).
    let got = query(
        &duck,
        &format!(
            "select site, avg(mean) from {glob} where metric='temperature_celsius' \
             group by site order by site"
        ),
    );
    let mut means: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in &fleet {
        let site = s.labels.get("site").unwrap().to_string();
        means
            .entry(site)
            .or_default()
            .extend(s.windows.iter().map(|w| w.mean()));
    }
    assert_eq!(got.len(), means.len(), "{got:?}");
    for (row, (site, m)) in got.iter().zip(&means) {
        assert_eq!(&row[0], site);
        let want = m.iter().sum::<f64>() / m.len() as f64;
        let have: f64 = row[1].parse().unwrap();
        assert!(close(have, want), "{site}: {have} != {want}");
    }

    // Every row once after compaction, partitions as columns.
    let counts = query(
        &duck,
        &format!("select tenant, tier, count(*) from {glob} group by all order by all"),
    );
    assert_eq!(
        counts,
        [
            vec![
                "acme".to_string(),
                "1h".into(),
                (9 * 30 + 2 * 30).to_string()
            ],
            vec!["acme".into(), "raw".into(), (3 * 8).to_string()],
        ]
    );
    let distinct = query(
        &duck,
        &format!(
            "select count(*) from (select distinct metric, labels, start from {glob} \
             where tier = '1h')"
        ),
    );
    assert_eq!(distinct, [vec![(9 * 30 + 2 * 30).to_string()]]);
    // The promoted column and the map agree; the corrected revision is the one stored.
    let agree = query(
        &duck,
        &format!(
            "select count(*) filter (where labels['site'] = site), \
             count(*) filter (where revision = 1), max(\"end\" - start) from {glob} \
             where tier = '1h'"
        ),
    );
    assert_eq!(
        agree,
        [vec![
            (9 * 30 + 2 * 30).to_string(),
            "11".into(), // hour 5 of the 9 temperature series and the 2 humidity copies
            HOUR.to_string()
        ]]
    );
}
