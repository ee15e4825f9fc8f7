//! Every query is bounded: samples held at every step (subquery grids and literals included),
//! nesting depth, label sizes, times near the ends of `i64`, cancellation and shutdown; and
//! `topk` / `bottomk` break ties as Prometheus does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_model::{Labels, Sample, Tenant};
use strata_promql::{Engine, EngineOptions, Error, MemStorage, QueryContext, Value};

/// A series' labels and its samples.
type Data<'a> = (&'a [(&'a str, &'a str)], Vec<(i64, f64)>);

fn engine(opts: EngineOptions, series: &[Data<'_>]) -> Engine {
    let storage = MemStorage::new();
    for (labels, points) in series {
        let samples: Vec<Sample> = points.iter().map(|(t, v)| Sample::new(*t, *v)).collect();
        storage.append(
            &Tenant::default_tenant(),
            Labels::from_pairs(labels.iter().copied()).unwrap(),
            &samples,
        );
    }
    Engine::new(Arc::new(storage), opts)
}

fn ctx() -> QueryContext {
    QueryContext::new(Tenant::default_tenant())
}

fn too_many(e: Error) -> bool {
    matches!(e, Error::TooManySamples(..)) && e.to_string().contains("query.max_samples")
}

/// A subquery grid of literals is counted before it is allocated: a year at 1 ms (31.5 billion
/// steps) fails at once instead of asking for 250 GB.
#[test]
fn subquery_grids_and_literals_count_against_the_limit() {
    let e = engine(EngineOptions::default(), &[]);
    let t = 1_700_000_000_000;
    for q in [
        "count_over_time(vector(1)[1y:1ms])",
        "count_over_time(vector(1)[3d:1ms])",
        "max_over_time(vector(time())[3d:1ms])",
        "count_over_time(absent(nothing)[3d:1ms])",
        "sum_over_time((vector(1) + 1)[3d:1ms])",
    ] {
        let started = Instant::now();
        let err = e.instant(&ctx(), q, t).unwrap_err();
        assert!(too_many(err.clone()), "{q}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{q}");
    }
    // Under the limit the same shapes answer.
    let out = e
        .instant(&ctx(), "count_over_time(vector(1)[1h:1s])", t)
        .unwrap();
    match out.value {
        Value::Vector(v) => assert_eq!(v[0].v, 3600.0),
        other => panic!("{other:?}"),
    }
}

/// The limit applies to what is held at once: a node's inputs are released once it is done,
/// so a long chain does not add up, while a node holding too much fails.
#[test]
fn held_samples_are_what_counts() {
    let opts = EngineOptions {
        max_samples: 1000,
        ..Default::default()
    };
    let series: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64)).collect();
    let e = engine(opts, &[(&[("__name__", "x")], series)]);
    // 300 steps: the selector holds 300 points, each `+ 1` node its input and output.
    let q = vec!["x"; 1]
        .into_iter()
        .chain(std::iter::repeat_n("1", 20))
        .collect::<Vec<_>>()
        .join(" + ");
    e.range(&ctx(), &q, 0, 299_000, 1000).unwrap();
    // Four copies of the selector held by one node's inputs: 1,200 > 1,000.
    let err = e
        .range(&ctx(), "(x + x) + (x + x)", 0, 299_000, 1000)
        .unwrap_err();
    assert!(too_many(err.clone()), "{err}");
    // A fine subquery over a sparse series: its points, not its steps, are held.
    let err = e
        .instant(&ctx(), "max_over_time(x[10m:1ms])", 299_000)
        .unwrap_err();
    assert!(too_many(err.clone()), "{err}");
}

/// Times and offsets near the ends of `i64` neither overflow nor panic (debug builds check).
#[test]
fn extreme_times_do_not_overflow() {
    let e = engine(
        EngineOptions {
            max_samples: 10_000,
            ..Default::default()
        },
        &[(&[("__name__", "x")], vec![(0, 1.0), (1000, 2.0)])],
    );
    let queries = [
        "x",
        "rate(x[5m])",
        "x offset 292y",
        "x offset -292y",
        "max_over_time(x[5m:1m] offset 292y)",
        "max_over_time(x[292y:1y])",
        "x @ 9223372036854775",
        "timestamp(x @ -9223372036854775)",
        "count_over_time(x[1m:7ms] @ 9223372036854775)",
        "time() - 1",
        "range()",
    ];
    for q in queries {
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let _ = e.instant(&ctx(), q, t);
        }
        for (s, end, step) in [
            (i64::MIN, i64::MAX, i64::MAX),
            (i64::MIN + 1, i64::MAX - 1, i64::MAX / 2),
            (i64::MAX - 10_000, i64::MAX, 1000),
        ] {
            if let Err(err) = e.range(&ctx(), q, s, end, step) {
                assert!(!err.to_string().is_empty());
            }
        }
    }
}

/// Nesting is refused before parsing, with a `bad_data` error naming the limit; nesting within
/// the limit parses, evaluates and prints (on a thread with stack enough for it).
#[test]
fn depth_is_limited() {
    let e = engine(
        EngineOptions::default(),
        &[(&[("__name__", "x")], vec![(0, 1.0)])],
    );
    let deep_sum = format!("{}x{}", "sum(".repeat(5000), ")".repeat(5000));
    let chain = vec!["1"; 1702].join("+");
    for q in [&deep_sum, &chain] {
        let err = e.instant(&ctx(), q, 0).unwrap_err();
        assert_eq!(err.error_type(), "bad_data");
        assert!(err.to_string().contains("query.max_depth"), "{err}");
        let err = e.format(q).unwrap_err();
        assert!(err.to_string().contains("query.max_depth"), "{err}");
    }
    let long = "x".repeat(300 << 10);
    let err = e.instant(&ctx(), &long, 0).unwrap_err();
    assert!(err.to_string().contains("query.max_query_length"), "{err}");

    // The deepest queries allowed work.
    let max = EngineOptions::default().max_depth;
    let chain = vec!["1"; max + 1].join("+");
    match e.instant(&ctx(), &chain, 0).unwrap().value {
        Value::Scalar { v, .. } => assert_eq!(v, (max + 1) as f64),
        other => panic!("{other:?}"),
    }
    let nested = format!("{}x{}", "sum(".repeat(max), ")".repeat(max));
    match e.instant(&ctx(), &nested, 0).unwrap().value {
        Value::Vector(v) => assert_eq!(v[0].v, 1.0),
        other => panic!("{other:?}"),
    }
    let calls = format!(
        "{}x{}",
        "max_over_time(abs(".repeat(max / 4),
        ")[1m:20s])".repeat(max / 4)
    );
    e.instant(&ctx(), &calls, 0).unwrap();
    // Every kind of node, nested as deep as allowed, within the stack.
    for (open, close) in [
        ("label_replace(", ", \"a\", \"$1\", \"__name__\", \"(.*)\")"),
        ("topk(1, ", ")"),
        ("count_values(\"v\", ", ")"),
        ("histogram_quantile(0.5, ", ")"),
        ("quantile_over_time(0.5, (", ")[1m:30s])"),
        ("-(", ")"),
        ("(", " > bool on() group_left x)"),
        ("(", " or x)"),
        ("clamp(", ", 0, 1)"),
    ] {
        let n = deepest(&e, open, close);
        assert!(n >= max / 8, "{open}: only {n} levels");
        let q = wrap(open, close, n);
        if let Err(err) = e.instant(&ctx(), &q, 0) {
            assert_ne!(err.error_type(), "bad_data", "{open}: {err}");
        }
        e.range(&ctx(), &q, 0, 120_000, 30_000).ok();
    }
    assert!(e.format(&nested).unwrap().starts_with("sum("));
    assert!(e.format(&chain).unwrap().contains('+'));
}

/// `x` wrapped `n` times in `open`..`close`.
fn wrap(open: &str, close: &str, n: usize) -> String {
    format!("{}x{}", open.repeat(n), close.repeat(n))
}

/// The most times `open`..`close` can wrap `x` within the depth limit.
fn deepest(e: &Engine, open: &str, close: &str) -> usize {
    let within = |n| match e.parse(&wrap(open, close, n)) {
        Ok(_) => true,
        Err(err) => !err.to_string().contains("query.max_depth"),
    };
    let mut n = 1;
    while within(n + 1) {
        n += 1;
    }
    n
}

/// A label built by a query may be no longer than a stored one (`limits.max_label_value_len`).
#[test]
fn built_labels_are_limited() {
    let e = engine(
        EngineOptions::default(),
        &[(&[("__name__", "x"), ("a", "0123456789")], vec![(0, 1.0)])],
    );
    let q = format!(
        "label_replace(x, \"b\", \"{}\", \"a\", \"(.*)\")",
        "$1".repeat(500)
    );
    let err = e.instant(&ctx(), &q, 0).unwrap_err();
    assert_eq!(err.error_type(), "execution");
    assert!(
        err.to_string().contains("limits.max_label_value_len"),
        "{err}"
    );
    let q = format!(
        "label_join(x, \"b\", \"{}\", \"a\", \"a\")",
        "-".repeat(3000)
    );
    let err = e.instant(&ctx(), &q, 0).unwrap_err();
    assert!(
        err.to_string().contains("limits.max_label_value_len"),
        "{err}"
    );
    // Short ones are built.
    e.instant(
        &ctx(),
        "label_replace(x, \"b\", \"$1$1\", \"a\", \"(.*)\")",
        0,
    )
    .unwrap();
}

/// A heavy query over little data: every step sorts a window of 20,000 samples.
fn heavy() -> (Engine, &'static str) {
    let series: Vec<(i64, f64)> = (0..20_000).map(|i| (i * 10, (i % 97) as f64)).collect();
    let e = engine(
        EngineOptions {
            timeout: None,
            ..Default::default()
        },
        &[(&[("__name__", "x")], series)],
    );
    (e, "quantile_over_time(0.5, x[1d])")
}

/// Cancellation stops a long query within about a second, wherever it is.
#[test]
fn cancellation_and_shutdown_stop_queries() {
    let (e, q) = heavy();
    let flag = Arc::new(AtomicBool::new(false));
    let c = ctx().with_cancel(flag.clone());
    let started = Instant::now();
    let f = flag.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        f.store(true, Ordering::Relaxed);
    });
    let err = e.range(&c, q, 0, 11_000_000, 1000).unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, Error::Canceled(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let (e, q) = heavy();
    let e2 = e.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        e2.shut_down();
    });
    let err = e.range(&ctx(), q, 0, 11_000_000, 1000).unwrap_err();
    t.join().unwrap();
    assert_eq!(err.error_type(), "unavailable", "{err}");
    // And nothing starts after.
    let err = e.instant(&ctx(), "1", 0).unwrap_err();
    assert_eq!(err.error_type(), "unavailable");

    // The timeout stops it too.
    let (e, q) = heavy();
    let c = ctx().with_timeout(Duration::from_millis(300));
    let err = e.range(&c, q, 0, 11_000_000, 1000).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::Vector(v) => v
            .iter()
            .map(|s| s.labels.get("i").unwrap_or("").to_string())
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// `topk` / `bottomk` keep and order tied series as Prometheus's heap does (a later series
/// replaces the root only when strictly better; the output is the heap, insertion-sorted).
#[test]
fn topk_and_bottomk_break_ties_as_prometheus() {
    let v = |vals: &[f64]| {
        let series: Vec<(Vec<(&str, String)>, f64)> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    vec![("__name__", "x".to_string()), ("i", format!("{i}"))],
                    *v,
                )
            })
            .collect();
        let storage = MemStorage::new();
        for (l, v) in series {
            storage.append(
                &Tenant::default_tenant(),
                Labels::from_pairs(l.iter().map(|(a, b)| (*a, b.as_str()))).unwrap(),
                &[Sample::new(0, v)],
            );
        }
        Engine::new(Arc::new(storage), EngineOptions::default())
    };
    // Expected outputs worked through Go's container/heap by hand.
    let cases: &[(&[f64], &str, &[&str])] = &[
        // a=1 then b, c tied at 2: c replaces the root a; the heap [c, b] stays as it is.
        (&[1.0, 2.0, 2.0], "topk(2, x)", &["2", "1"]),
        // All tied: the first two stay, in input order.
        (&[5.0, 5.0, 5.0], "topk(2, x)", &["0", "1"]),
        (&[5.0, 5.0, 5.0], "topk(1, x)", &["0"]),
        (&[3.0, 1.0, 1.0], "bottomk(2, x)", &["2", "1"]),
        (&[1.0, 2.0, 2.0, 2.0], "topk(2, x)", &["2", "1"]),
        (&[2.0, 2.0, 1.0, 3.0], "topk(3, x)", &["3", "1", "0"]),
        (&[f64::NAN, 1.0, 1.0], "topk(2, x)", &["2", "1"]),
    ];
    for (vals, q, want) in cases {
        let e = v(vals);
        let got = names(&e.instant(&ctx(), q, 0).unwrap().value);
        assert_eq!(got, *want, "{q} over {vals:?}");
    }
}

/// Prometheus's annotations reach the output.
#[test]
fn sort_in_a_range_query_warns() {
    let e = engine(
        EngineOptions::default(),
        &[(&[("__name__", "x")], vec![(0, 1.0)])],
    );
    let out = e.range(&ctx(), "sort(x)", 0, 60_000, 15_000).unwrap();
    assert_eq!(
        out.warnings,
        ["PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:1)"]
    );
    let out = e.instant(&ctx(), "sort(x)", 0).unwrap();
    assert!(out.warnings.is_empty());
}

/// A range query of more steps than `max_points_per_series` is refused by the engine itself,
/// in Prometheus' words, whoever calls it; up to the limit it answers.
#[test]
fn range_queries_are_bounded_in_points_per_series() {
    let opts = EngineOptions {
        max_points_per_series: 1000,
        ..Default::default()
    };
    let e = engine(opts, &[(&[("__name__", "x")], vec![(0, 1.0)])]);
    let err = e.range(&ctx(), "x", 0, 1_001_000, 1000).unwrap_err();
    assert!(matches!(err, Error::BadData(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "exceeded maximum resolution of 1,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    );
    assert!(e.range(&ctx(), "x", 0, 1_000_000, 1000).is_ok());
    let d = engine(EngineOptions::default(), &[]);
    assert!(d
        .range(&ctx(), "x", 0, 11_001_000, 1000)
        .unwrap_err()
        .to_string()
        .contains("11,000 points"));
}
