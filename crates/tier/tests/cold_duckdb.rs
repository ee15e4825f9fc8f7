//! DuckDB, a reader with no Strata code, on a local cold directory: the query of the README
//! (`read_parquet('<dir>/**/*.parquet', hive_partitioning=true)`) over every tier at once.
//! Uses the `duckdb` CLI or Python's `duckdb` package (`pip install duckdb`); skips, saying so,
//! when neither is installed.

mod common;
mod duckdb_support;

use common::*;
use duckdb_support::{close, find_duckdb, query};
use std::collections::BTreeMap;
use strata_model::Tenant;
use strata_tier::cold::{ColdOptions, ColdStore, SeriesWindows, Tier};

#[test]
fn duckdb_reads_the_cold_directory() {
    let Some(duck) = find_duckdb("duckdb_reads_the_cold_directory") else {
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
