//! Queries over enough data to run on several threads (series evaluated in parallel, grouped
//! aggregations in blocks of steps) answer exactly as the same queries over one group at a
//! time, which are small enough to run on one thread in one block.

use std::sync::Arc;
use strata_model::{Labels, Sample, Tenant, STALE_NAN};
use strata_promql::{Engine, EngineOptions, MemStorage, QueryContext, Value};

const GROUPS: usize = 100;
const STEP: i64 = 15_000;
const POINTS: i64 = 3000;

fn storage() -> Arc<MemStorage> {
    let st = Arc::new(MemStorage::new());
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for g in 0..GROUPS {
        for i in 0..2 {
            let labels = Labels::from_pairs([
                ("__name__", "m"),
                ("g", &format!("g{g:03}")),
                ("i", &i.to_string()),
            ])
            .unwrap();
            let mut v = 0.0;
            let samples: Vec<Sample> = (0..POINTS)
                .map(|p| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A counter with a reset now and then, and a staleness marker.
                    v = if x.is_multiple_of(997) {
                        0.0
                    } else {
                        v + (x % 100) as f64 / 10.0
                    };
                    let value = if p == 1000 + g as i64 { STALE_NAN } else { v };
                    Sample::new(p * STEP, value)
                })
                .collect();
            st.append(&Tenant::default(), labels, &samples);
        }
    }
    st
}

fn matrix(engine: &Engine, query: &str) -> Vec<(Labels, Vec<(i64, u64)>)> {
    let ctx = QueryContext::new(Tenant::default());
    let out = engine
        .range(&ctx, query, 600_000, (POINTS - 1) * STEP, STEP)
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    match out.value {
        Value::Matrix(series) => series
            .into_iter()
            .map(|s| {
                let bits = s.points.iter().map(|(t, v)| (*t, v.to_bits())).collect();
                (s.labels, bits)
            })
            .collect(),
        other => panic!("{query}: not a matrix: {other:?}"),
    }
}

#[test]
fn parallel_and_blocked_evaluation_equals_one_group_at_a_time() {
    let engine = Engine::new(storage(), EngineOptions::default());
    for (whole, per_group) in [
        ("sum by (g) (rate(m[5m]))", "sum(rate(m{g=\"G\"}[5m]))"),
        ("avg by (g) (m)", "avg(m{g=\"G\"})"),
        (
            "max by (g) (increase(m[1h]))",
            "max(increase(m{g=\"G\"}[1h]))",
        ),
        ("count by (g) (m > 100)", "count(m{g=\"G\"} > 100)"),
    ] {
        let all = matrix(&engine, whole);
        assert_eq!(all.len(), GROUPS, "{whole}");
        for (labels, points) in &all {
            let g = labels.get("g").unwrap();
            let one = matrix(&engine, &per_group.replace('G', g));
            assert_eq!(one.len(), 1, "{per_group} for {g}");
            assert_eq!(&one[0].1, points, "{whole} vs {per_group} for {g}");
        }
    }
}
