//! Fuzzing the PromQL parser and evaluator over a small [`MemStorage`].
//!
//! A generator builds well-typed expressions of bounded depth (selectors with offsets and `@`,
//! range selectors and subqueries, aggregations with grouping, binary operators with vector
//! matching, functions of every kind, literals including NaN and infinities) over series
//! holding NaN, staleness markers, infinities and counter resets. Every generated query must
//! parse; evaluating it as an instant and as a range query over small grids must return a
//! result or an error, never panic; and a range query's value at a step equals the instant
//! query's at that time. The parser also gets generated queries mutated byte by byte, and
//! token soup.

#[path = "../../model/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{config, mutate, mutations};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use strata_model::{Labels, Sample, Tenant, STALE_NAN};
use strata_promql::{Engine, EngineOptions, MemStorage, QueryContext, Value};

/// Samples lie in `[0, END]`, every 15 s with gaps.
const END: i64 = 600_000;

/// An engine over [`storage`].
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(
            storage(),
            EngineOptions {
                max_samples: 200_000,
                timeout: Some(Duration::from_secs(20)),
                ..EngineOptions::default()
            },
        )
    })
}

/// An engine over [`storage`] whose sample limit most queries reach: the paths that give up
/// half way through.
fn tight_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(
            storage(),
            EngineOptions {
                max_samples: 40,
                ..EngineOptions::default()
            },
        )
    })
}

/// The series every query reads.
fn storage() -> Arc<MemStorage> {
    static STORAGE: OnceLock<Arc<MemStorage>> = OnceLock::new();
    STORAGE
        .get_or_init(|| {
            let st = Arc::new(MemStorage::new());
            let t = Tenant::default();
            let specials = [
                f64::NAN,
                STALE_NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                0.0,
                1e308,
                -5.5,
            ];
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for (name, a, b) in [
                ("m", "x", "1"),
                ("m", "x", "2"),
                ("m", "y", "1"),
                ("c", "x", "1"),
                ("c", "y", "2"),
                ("g", "y", "2"),
            ] {
                let labels = Labels::from_pairs([("__name__", name), ("a", a), ("b", b)]).unwrap();
                let mut v = 0.0;
                let samples: Vec<Sample> = (0..=END / 15_000)
                    .filter_map(|i| {
                        let r = next();
                        // Gaps: about one sample in eight is missing.
                        if r % 8 == 0 {
                            return None;
                        }
                        v = match name {
                            // A counter with resets.
                            "c" if r % 13 == 0 => 0.0,
                            "c" => v + (r % 50) as f64,
                            _ if r % 11 == 0 => specials[(r >> 8) as usize % specials.len()],
                            _ => (r % 2000) as f64 / 10.0 - 50.0,
                        };
                        Some(Sample::new(i * 15_000, v))
                    })
                    .collect();
                st.append(&t, labels, &samples);
            }
            // A classic histogram.
            for (i, le) in ["0.1", "1", "10", "+Inf"].iter().enumerate() {
                let labels =
                    Labels::from_pairs([("__name__", "h_bucket"), ("a", "x"), ("le", le)]).unwrap();
                let samples: Vec<Sample> = (0..=END / 15_000)
                    .map(|s| Sample::new(s * 15_000, (s * (i as i64 + 1)) as f64))
                    .collect();
                st.append(&t, labels, &samples);
            }
            st
        })
        .clone()
}

// ---- the generator: strings of well-typed PromQL ----

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    proptest::sample::select(items).prop_map(str::to_string)
}

fn duration() -> impl Strategy<Value = String> + Clone {
    pick(&["1s", "15s", "30s", "1m", "2m", "5m", "10m", "1h"])
}

/// Scalar literals, the awkward ones included.
fn number() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        pick(&[
            "0", "1", "-1", "0.5", "2", "3", "10", "NaN", "Inf", "-Inf", "1e308", "-0", "0x10",
            "1e-300"
        ]),
        (-100i32..100).prop_map(|x| x.to_string()),
    ]
}

fn instant_selector() -> impl Strategy<Value = String> + Clone {
    let base = pick(&[
        "m",
        "c",
        "g",
        "h_bucket",
        "nothing",
        "m{a=\"x\"}",
        "m{a!=\"x\"}",
        "m{a=~\"x|y\"}",
        "m{b!~\"1\"}",
        "{__name__=~\"m|c\"}",
        "{a=\"y\"}",
        "c{b=\"\"}",
    ]);
    let modifier = pick(&[
        "",
        "",
        "",
        " offset 1m",
        " offset -30s",
        " @ 300",
        " @ 0",
        " @ start()",
        " @ end()",
        " offset 10m @ 450",
        " offset 290y",
        " offset -290y",
        " @ 9223372036854775",
    ]);
    (base, modifier).prop_map(|(b, m)| format!("{b}{m}"))
}

/// A range vector, for range functions.
fn matrix(depth: u32) -> BoxedStrategy<String> {
    let selector = (
        pick(&[
            "m",
            "c",
            "g",
            "m{a=\"x\"}",
            "{__name__=~\"m|c\"}",
            "nothing",
        ]),
        duration(),
        pick(&["", "", " offset 1m", " @ 300", " offset -290y"]),
    )
        .prop_map(|(s, d, m)| format!("{s}[{d}]{m}"));
    if depth == 0 {
        return selector.boxed();
    }
    // Subqueries, with few steps each.
    let subquery = (
        vector(depth - 1),
        pick(&["1m", "2m", "5m"]),
        pick(&["", "15s", "30s", "1m", "7s"]),
        pick(&["", "", " offset 30s", " offset 290y"]),
    )
        .prop_map(|(v, r, s, m)| format!("({v})[{r}:{s}]{m}"));
    prop_oneof![3 => selector, 1 => subquery].boxed()
}

/// An instant vector.
fn vector(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        4 => instant_selector(),
        1 => number().prop_map(|n| format!("vector({n})")),
        1 => Just("vector(time())".to_string()),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let v = || vector(depth - 1);
    let s = || scalar(depth - 1);
    let agg = (
        pick(&[
            "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group",
        ]),
        pick(&[
            "",
            " by (a)",
            " without (b)",
            " by ()",
            " by (a, le)",
            " without (__name__)",
        ]),
        v(),
    )
        .prop_map(|(op, g, v)| format!("{op}{g} ({v})"));
    let param_agg = (
        pick(&["topk", "bottomk", "quantile", "limitk", "limit_ratio"]),
        pick(&["", " by (a)"]),
        s(),
        v(),
    )
        .prop_map(|(op, g, p, v)| format!("{op}{g} ({p}, {v})"));
    let count_values =
        (pick(&["", " by (b)"]), v()).prop_map(|(g, v)| format!("count_values{g} (\"val\", {v})"));
    let arith = pick(&["+", "-", "*", "/", "%", "^", "atan2"]);
    let cmp = pick(&["==", "!=", ">", "<", ">=", "<="]);
    let op = prop_oneof![arith, cmp.clone(), cmp.prop_map(|c| format!("{c} bool"))];
    let matching = pick(&[
        "",
        "",
        " on (a)",
        " ignoring (b)",
        " on (a) group_left ()",
        " ignoring (b) group_right ()",
        " on (a) group_left (b)",
        " on ()",
    ]);
    let binary =
        (v(), op.clone(), matching, v()).prop_map(|(l, o, m, r)| format!("({l}) {o}{m} ({r})"));
    let set = (
        v(),
        pick(&["and", "or", "unless"]),
        pick(&["", " on (a)", " ignoring (b)"]),
        v(),
    )
        .prop_map(|(l, o, m, r)| format!("({l}) {o}{m} ({r})"));
    let with_scalar = (v(), op, s(), any::<bool>()).prop_map(|(v, o, s, left)| {
        if left {
            format!("({v}) {o} ({s})")
        } else {
            format!("({s}) {o} ({v})")
        }
    });
    let math = (
        pick(&[
            "abs",
            "ceil",
            "floor",
            "exp",
            "ln",
            "log2",
            "log10",
            "sqrt",
            "sgn",
            "timestamp",
            "sort",
            "sort_desc",
            "absent",
            "day_of_month",
            "day_of_week",
            "day_of_year",
            "days_in_month",
            "hour",
            "minute",
            "month",
            "year",
            "sin",
            "cos",
            "tan",
            "asin",
            "acos",
            "atan",
            "sinh",
            "cosh",
            "tanh",
            "asinh",
            "acosh",
            "atanh",
            "deg",
            "rad",
            "-",
        ]),
        v(),
    )
        .prop_map(|(f, v)| {
            if f == "-" {
                format!("-({v})")
            } else {
                format!("{f}({v})")
            }
        });
    let with_args = prop_oneof![
        (v(), s()).prop_map(|(v, s)| format!("round({v}, {s})")),
        (v(), s(), s()).prop_map(|(v, a, b)| format!("clamp({v}, {a}, {b})")),
        (v(), s()).prop_map(|(v, s)| format!("clamp_min({v}, {s})")),
        (v(), s()).prop_map(|(v, s)| format!("clamp_max({v}, {s})")),
        (s(), v()).prop_map(|(s, v)| format!("histogram_quantile({s}, {v})")),
        (
            v(),
            pick(&["\"$1\"", "\"$1-$2\"", "\"\"", "\"${1}x\""]),
            pick(&["\"(.*)\"", "\"(x)(.?)\"", "\"\"", "\"(\""])
        )
            .prop_map(|(v, r, re)| format!("label_replace({v}, \"dst\", {r}, \"a\", {re})")),
        (v(), pick(&["\"__name__\"", "\"a\"", "\"new\""]))
            .prop_map(|(v, d)| format!("label_join({v}, {d}, \",\", \"a\", \"b\")")),
        v().prop_map(|v| format!("sort_by_label({v}, \"b\", \"a\")")),
        v().prop_map(|v| format!("sort_by_label_desc({v}, \"a\")")),
    ];
    let m = || matrix(depth - 1);
    let over_time = (
        pick(&[
            "rate",
            "irate",
            "increase",
            "delta",
            "idelta",
            "deriv",
            "changes",
            "resets",
            "avg_over_time",
            "min_over_time",
            "max_over_time",
            "sum_over_time",
            "count_over_time",
            "last_over_time",
            "first_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "present_over_time",
            "absent_over_time",
            "mad_over_time",
            "ts_of_max_over_time",
            "ts_of_min_over_time",
            "ts_of_last_over_time",
        ]),
        m(),
    )
        .prop_map(|(f, m)| format!("{f}({m})"));
    let range_args = prop_oneof![
        (s(), m()).prop_map(|(s, m)| format!("quantile_over_time({s}, {m})")),
        (m(), s()).prop_map(|(m, s)| format!("predict_linear({m}, {s})")),
        (
            m(),
            pick(&["0.5", "0.1", "2", "NaN"]),
            pick(&["0.5", "0.9", "0", "-1"])
        )
            .prop_map(|(m, a, b)| format!("double_exponential_smoothing({m}, {a}, {b})")),
    ];
    prop_oneof![
        4 => leaf,
        2 => agg,
        1 => param_agg,
        1 => count_values,
        3 => binary,
        1 => set,
        2 => with_scalar,
        2 => math,
        2 => with_args,
        3 => over_time,
        1 => range_args,
    ]
    .boxed()
}

/// A scalar.
fn scalar(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![4 => number(), 1 => pick(&["time()", "pi()"])];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => vector(depth - 1).prop_map(|v| format!("scalar({v})")),
        1 => (scalar(depth - 1), pick(&["+", "-", "*", "/", "%", "^", "== bool", "> bool"]), scalar(depth - 1))
            .prop_map(|(a, o, b)| format!("({a}) {o} ({b})")),
    ]
    .boxed()
}

/// A query: an instant vector or a scalar, up to depth 3 (the strategies are built once).
fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => vector(0),
        1 => vector(1),
        1 => vector(2),
        1 => vector(3),
        1 => scalar(2),
    ]
}

/// An instant time and a small range grid: `(time, start, end, step)`.
fn grid() -> impl Strategy<Value = (i64, i64, i64, i64)> {
    (
        prop_oneof![Just(END), Just(0), 0i64..(END + 400_000), Just(-60_000)],
        -60_000i64..END,
        1i64..(40 * 60_000),
        prop_oneof![Just(15_000i64), Just(60_000), 1_000i64..120_000],
    )
        .prop_map(|(t, start, span, step)| {
            // At most about 40 steps.
            let end = start + span.min(step * 40);
            (t, start, end, step)
        })
}

fn ctx() -> QueryContext {
    QueryContext::new(Tenant::default())
}

/// The result as comparable rows: (labels, value bits), sorted; NaNs all alike.
fn rows(value: &Value) -> Vec<(String, u64)> {
    let bits = |v: f64| {
        if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        }
    };
    let mut out: Vec<(String, u64)> = match value {
        Value::Scalar { v, .. } => vec![(String::new(), bits(*v))],
        Value::Vector(v) => v
            .iter()
            .map(|s| (s.labels.to_string(), bits(s.v)))
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

/// Floats equal as an evaluator computes them: the same bits, or within rounding (sums over a
/// step grid may add in another order than at one instant).
fn close(a: u64, b: u64) -> bool {
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    a == b || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) || (x == 0.0 && y == 0.0)
}

proptest! {
    #![proptest_config(config(512))]

    /// Every generated query parses, and evaluates as an instant query and as a range query
    /// to a result or an error, never a panic, also where the sample limit stops it.
    #[test]
    fn generated_queries_evaluate_or_fail_cleanly(q in query(), (t, start, end, step) in grid()) {
        prop_assert!(strata_promql::parse(&q).is_ok(), "does not parse: {} ({:?})", q, strata_promql::parse(&q).err());
        for e in [engine(), tight_engine()] {
            let _ = e.instant(&ctx(), &q, t);
            let _ = e.range(&ctx(), &q, start, end, step);
        }
    }

    /// A range query's value at each step is the instant query's value at that time.
    #[test]
    fn range_steps_equal_instant_queries(q in query().prop_filter("start() and end() depend on the grid", |q| !q.contains("start()") && !q.contains("end()")), (_, start, end, step) in grid(), pick in any::<proptest::sample::Index>()) {
        let e = engine();
        let Ok(range) = e.range(&ctx(), &q, start, end, step) else { return Ok(()) };
        let Value::Matrix(series) = range.value else { panic!("a range query answers a matrix") };
        let steps = ((end - start) / step + 1) as usize;
        let t = start + pick.index(steps) as i64 * step;
        let Ok(instant) = e.instant(&ctx(), &q, t) else { return Ok(()) };
        let mut want: Vec<(String, u64)> = series
            .iter()
            .filter_map(|s| s.points.iter().find(|p| p.0 == t).map(|p| (s.labels.to_string(), p.1)))
            .map(|(l, v)| (l, if v.is_nan() { f64::NAN.to_bits() } else { v.to_bits() }))
            .collect();
        want.sort();
        let mut got = rows(&instant.value);
        if matches!(instant.value, Value::Scalar { .. }) {
            // A scalar's range result is one series without labels.
            got.iter_mut().for_each(|r| r.0 = "{}".to_string());
            want.iter_mut().for_each(|r| r.0 = "{}".to_string());
        }
        prop_assert_eq!(got.len(), want.len(), "{} at {}: instant {:?}, range step {:?}", q, t, got, want);
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(g.0 == w.0 && close(g.1, w.1), "{} at {}: instant {:?}, range step {:?}", q, t, got, want);
        }
    }

    /// `count by (a)` and `sum by (a)` of any generated vector agree with counting and
    /// summing that vector's samples by their `a` label in the test.
    #[test]
    fn aggregations_agree_with_the_samples_they_aggregate(inner in prop_oneof![vector(0), vector(1), vector(2)], t in 0i64..END) {
        let e = engine();
        let Ok(out) = e.instant(&ctx(), &inner, t) else { return Ok(()) };
        let Value::Vector(rows) = out.value else { return Ok(()) };
        let mut want: std::collections::BTreeMap<String, (usize, Vec<f64>)> = Default::default();
        for r in &rows {
            let key = r.labels.get("a").map_or("{}".to_string(), |a| format!("{{a=\"{a}\"}}"));
            let g = want.entry(key).or_default();
            g.0 += 1;
            g.1.push(r.v);
        }
        let got = |agg: &str| -> Vec<(String, f64)> {
            match e.instant(&ctx(), &format!("{agg} by (a) ({inner})"), t).map(|o| o.value) {
                Ok(Value::Vector(v)) => {
                    let mut v: Vec<(String, f64)> = v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                }
                other => panic!("{agg} by (a) ({inner}): {other:?}"),
            }
        };
        let counts = got("count");
        prop_assert_eq!(
            counts.iter().map(|(l, v)| (l.clone(), *v as usize)).collect::<Vec<_>>(),
            want.iter().map(|(l, g)| (l.clone(), g.0)).collect::<Vec<_>>(),
            "count by (a) ({})", inner
        );
        for ((l, sum), (wl, (_, vals))) in got("sum").iter().zip(&want) {
            prop_assert_eq!(l, wl);
            // Only where the order of addition cannot matter much.
            if vals.iter().all(|v| v.is_finite() && v.abs() < 1e12) {
                let exact: f64 = vals.iter().sum();
                prop_assert!((sum - exact).abs() <= 1e-6 * exact.abs().max(1.0), "sum by (a) ({}) {}: {} vs {}", inner, l, sum, exact);
            }
        }
    }

    /// Generated queries mutated byte by byte: parsing and evaluating never panic.
    #[test]
    fn mutated_queries_fail_cleanly(q in query(), ms in mutations(), t in 0i64..END) {
        let mut b = q.into_bytes();
        mutate(&mut b, &ms);
        let q = String::from_utf8_lossy(&b);
        let _ = engine().instant(&ctx(), &q, t);
    }

    /// Token soup: PromQL's own words and punctuation in any order.
    #[test]
    fn token_soup_fails_cleanly(tokens in proptest::collection::vec(pick(&[
        "(", ")", "[", "]", "{", "}", ",", ":", "@", "offset", "by", "without", "on", "ignoring", "group_left",
        "group_right", "bool", "and", "or", "unless", "+", "-", "*", "/", "%", "^", "==", "!=", "=~", "!~", "<", ">",
        "=", "sum", "rate", "m", "c", "a", "\"x\"", "1", "1m", "5m:", "1e20", "0x7fffffffffffffff", "293y", "NaN", "Inf", "-", "topk", "scalar", "vector",
        "start()", "end()", "time()", "\"", "'", "`", "#", "\n", " ",
    ]), 0..40), t in 0i64..END) {
        let q = tokens.join(" ");
        let _ = strata_promql::parse(&q);
        let _ = engine().instant(&ctx(), &q, t);
        let _ = engine().range(&ctx(), &q, 0, END, 60_000);
    }
}

/// Offsets, `@` times, ranges and evaluation times near the ends of i64 (all of them reachable
/// from a query string, the evaluation time from an API parameter): evaluation should answer
/// or refuse them, but overflows its time arithmetic, a panic in debug builds ("attempt to
/// subtract with overflow" in eval.rs: `min_ref - lookback + 1` in `instant_selector`, `t -
/// offset` there and in `matrix_selector`, `first - offset - range` in `subquery`) and wrapped
/// times in release builds. `m @ 9223372036854775` panics at any evaluation time.
#[test]
fn extreme_offsets_and_times_do_not_overflow() {
    let e = engine();
    let mut panics = Vec::new();
    for q in [
        "m @ 9223372036854775",
        "m offset 200y",
        "m offset -200y",
        "rate(m[5m] offset 290y)",
        "rate(m[200y])",
        "count_over_time(m[292y])",
        "max_over_time(m[5m:1m] offset 250y)",
        "timestamp(m offset 292y)",
    ] {
        for t in [0, END, i64::MAX - 1, i64::MIN + 1] {
            let instant = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = e.instant(&ctx(), q, t);
            }));
            let range = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = e.range(&ctx(), q, t.saturating_sub(60_000), t, 15_000);
            }));
            if instant.is_err() || range.is_err() {
                panics.push(format!("{q} at {t}"));
            }
        }
    }
    assert!(panics.is_empty(), "evaluation panicked: {panics:#?}");
}

/// promql-parser 0.11.1 panics ("cannot convert float seconds to Duration: value is either
/// too big or NaN", `Duration::from_secs_f64` in its grammar actions) on an offset, a range or
/// a subquery step that is a number out of Duration's range, so any client could panic the
/// query path with `up offset NaN`. Found by `token_soup_fails_cleanly` (`and offset NaN`).
/// `parse`, `instant` and `range` refuse such durations before parsing, as Prometheus does
/// ("duration out of range"), with bad_data.
#[test]
fn out_of_range_offsets_and_ranges_do_not_panic_the_parser() {
    let mut panics = Vec::new();
    for q in [
        "m offset NaN",
        "m offset -NaN",
        "m offset Inf",
        "m offset -Inf",
        "m offset 1e400",
        "m offset 1e20",
        "m offset -1e20",
        "sum(m) offset NaN",
        "rate(m[5m] offset NaN)",
        "m[1e20]",
        "max_over_time(m[5m:1e20])",
        "max_over_time(m[1e20:1m])",
    ] {
        match std::panic::catch_unwind(|| strata_promql::parse(q).map(drop)) {
            Err(_) => panics.push(q),
            Ok(res) => {
                let e = res.expect_err(q);
                assert_eq!(e.error_type(), "bad_data", "{q}: {e}");
                assert!(e.to_string().contains("duration out of range"), "{q}: {e}");
                for res in [
                    engine().instant(&ctx(), q, 0).map(drop),
                    engine().range(&ctx(), q, 0, END, 60_000).map(drop),
                ] {
                    let e = res.expect_err(q);
                    assert!(e.to_string().contains("duration out of range"), "{q}: {e}");
                }
            }
        }
    }
    assert!(panics.is_empty(), "the parser panicked on {panics:?}");
}

/// `rate(m[20s]) or m` over a range: at the first step only `m` has a value, at the later
/// ones `rate` has. Prometheus answers two series, `m{a="x"}` at the first step and
/// `{a="x"}` (rate drops the name) at the later ones, as the instant queries at those times
/// do. Strata's range evaluation merged them into one series `m{a="x"}` carrying the rate's
/// values: the right side's row and the left side's row (whose name is only dropped at the
/// end) looked like one label set to the collector of `or`'s results. Found by
/// `range_steps_equal_instant_queries` (`(rate(m[30s])) or (m{a="x"})`).
#[test]
fn or_keeps_series_whose_names_differ_apart_over_a_range() {
    let st = Arc::new(MemStorage::new());
    let labels = Labels::from_pairs([("__name__", "m"), ("a", "x")]).unwrap();
    let samples: Vec<Sample> = (0..3).map(|i| Sample::new(i * 15_000, i as f64)).collect();
    st.append(&Tenant::default(), labels, &samples);
    let e = Engine::new(st, EngineOptions::default());
    let q = "rate(m[20s]) or m";
    let Value::Matrix(series) = e.range(&ctx(), q, 0, 30_000, 15_000).unwrap().value else {
        panic!("a range query answers a matrix")
    };
    let got: Vec<(String, Vec<i64>)> = series
        .iter()
        .map(|s| (s.labels.to_string(), s.points.iter().map(|p| p.0).collect()))
        .collect();
    for t in [0, 15_000, 30_000] {
        let Value::Vector(v) = e.instant(&ctx(), q, t).unwrap().value else {
            panic!("an instant query of a vector answers a vector")
        };
        assert_eq!(v.len(), 1);
        let want = v[0].labels.to_string();
        assert!(
            got.iter().any(|(l, ts)| *l == want && ts.contains(&t)),
            "instant at {t} answers {want}; the range answers {got:?}"
        );
    }
}
