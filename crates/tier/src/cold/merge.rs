//! Merging the rows of several files into one view: each series once, its rows in time order,
//! one row per key (window start or sample timestamp). Of rows with the same key, the one with
//! the highest rank (window revision) wins, then the one from the newest file (highest `seq`).
//! Scans and compaction both go through here, so what a compacted file holds is exactly what a
//! scan over its inputs returned.

use super::rows::ColdRow;
use super::schema::StoredSeries;
use std::collections::BTreeMap;
use strata_model::Labels;

/// Merges per-file reads, each tagged with its file's `seq`. The result is sorted by metric,
/// then labels.
pub(crate) fn merge<T: ColdRow>(files: Vec<(u64, Vec<StoredSeries<T>>)>) -> Vec<StoredSeries<T>> {
    let mut by_series: BTreeMap<(String, Labels), Vec<(T, u64)>> = BTreeMap::new();
    for (seq, series) in files {
        for s in series {
            by_series
                .entry((s.metric, s.rest))
                .or_default()
                .extend(s.rows.into_iter().map(|r| (r, seq)));
        }
    }
    by_series
        .into_iter()
        .map(|((metric, rest), mut rows)| {
            rows.sort_by_key(|(r, seq)| (r.key(), r.rank(), *seq));
            // Keep the last (winning) row of each key.
            let mut kept: Vec<T> = Vec::with_capacity(rows.len());
            let mut last_key = None;
            for (r, _) in rows {
                if last_key == Some(r.key()) {
                    *kept.last_mut().expect("a row with this key was kept") = r;
                } else {
                    last_key = Some(r.key());
                    kept.push(r);
                }
            }
            StoredSeries {
                metric,
                rest,
                rows: kept,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cold::Window;
    use strata_model::Sample;

    fn w(start: i64, revision: u64, sum: f64) -> Window {
        Window {
            start,
            end: start + 10,
            count: 1,
            sum,
            sum_squares: sum * sum,
            min: sum,
            max: sum,
            first: Sample::new(start + 10, sum),
            last: Sample::new(start + 10, sum),
            increase: 0.0,
            revision,
            sketch: None,
        }
    }

    fn series(metric: &str, rows: Vec<Window>) -> StoredSeries<Window> {
        StoredSeries {
            metric: metric.into(),
            rest: Labels::default(),
            rows,
        }
    }

    #[test]
    fn highest_revision_then_newest_file_wins() {
        let old = vec![series(
            "m",
            vec![w(0, 0, 1.0), w(10, 1, 2.0), w(20, 0, 3.0)],
        )];
        let new = vec![
            series("m", vec![w(0, 1, 10.0), w(10, 0, 20.0), w(20, 0, 30.0)]),
            series("a", vec![w(0, 0, 5.0)]),
        ];
        let got = merge(vec![(2, new), (1, old)]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].metric, "a");
        let sums: Vec<f64> = got[1].rows.iter().map(|r| r.sum).collect();
        // 0: revision 1 beats 0; 10: revision 1 (older file) beats 0; 20: same revision, newer file.
        assert_eq!(sums, vec![10.0, 2.0, 30.0]);
    }
}
