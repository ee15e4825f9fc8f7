//! The range query result cache on the real binary: repeated and moved-forward dashboard
//! queries are answered from the cache (wholly or partly) exactly as an uncached evaluation
//! (`nocache=1`), late data invalidates exactly the cached ranges it reaches, the cache stays
//! within its byte bound, and queries whose meaning follows the range are not cached.

mod common;
use common::*;
use serde_json::Value;

/// A range query; the `Strata-Cache` header and the body.
fn range(
    s: &Server,
    tenant: Option<&str>,
    query: &str,
    (start, end, step): (i64, i64, i64),
    nocache: bool,
) -> (String, Value) {
    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);
    let mut params = vec![
        ("query", query.to_string()),
        ("start", secs(start)),
        ("end", secs(end)),
        ("step", secs(step)),
    ];
    if nocache {
        params.push(("nocache", "1".into()));
    }
    let mut req = s.client.post(s.url("/api/v1/query_range")).form(&params);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let r = req.send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{query}");
    let outcome = r
        .headers()
        .get("strata-cache")
        .expect("a Strata-Cache header")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().unwrap();
    assert_eq!(body["status"], "success", "{query}: {body}");
    (outcome, body)
}

/// The query through the cache, checked against `nocache=1`; what the cache did.
fn cached(s: &Server, tenant: Option<&str>, query: &str, r: (i64, i64, i64)) -> (String, Value) {
    let (outcome, got) = range(s, tenant, query, r, false);
    let (bypass, want) = range(s, tenant, query, r, true);
    assert_eq!(bypass, "bypass");
    assert_eq!(got, want, "{query} over {r:?} ({outcome})");
    (outcome, got)
}

fn write(s: &Server, tenant: Option<&str>, lines: String) {
    let mut req = s.client.post(s.url("/write?precision=ms")).body(lines);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    assert_eq!(req.send().unwrap().status().as_u16(), 204);
}

/// Four hours up to now, every 30 s: a counter and a gauge on three devices of two sites.
fn load(s: &Server, tenant: Option<&str>, base: i64, scale: f64) {
    let mut lines = String::new();
    for (dev, site, rate) in [("a", "s1", 1.0), ("b", "s1", 2.0), ("c", "s2", 3.5)] {
        for i in 0..=480 {
            let t = base - 4 * 3_600_000 + i * 30_000;
            let temp = 20.0 + ((i as f64) * 0.37 + rate).sin() * 5.0 * scale;
            lines.push_str(&format!(
                "reqs,device={dev},site={site} total={} {t}\ntemp,device={dev},site={site} celsius={temp} {t}\n",
                i as f64 * 30.0 * rate * scale
            ));
        }
    }
    write(s, tenant, lines);
}

fn metric_of(s: &Server, name: &str) -> f64 {
    metric(&s.metrics(), name)
}

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

const QUERIES: &[&str] = &[
    "rate(reqs_total[5m])",
    "sum by (site) (rate(reqs_total[5m]))",
    "temp_celsius",
    "max_over_time(temp_celsius[10m:1m])",
    "avg_over_time(temp_celsius[5m] offset 30m)",
    "temp_celsius offset -5m",
    "scalar(sum(temp_celsius)) * time()",
    "topk(2, temp_celsius)",
    "timestamp(temp_celsius)",
    "increase(reqs_total[1h:5m])",
];

#[test]
fn repeated_and_moved_queries_come_from_the_cache_and_equal_uncached_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let base = now_ms() / MIN * MIN;
    load(&s, None, base, 1.0);
    s.flush();
    for q in QUERIES {
        let first = (base - 3 * HOUR, base - HOUR, MIN);
        assert_eq!(cached(&s, None, q, first).0, "miss", "{q}");
        assert_eq!(cached(&s, None, q, first).0, "hit", "{q}");
        // The dashboard moved on: only the new tail is evaluated.
        let moved = (base - 3 * HOUR + 5 * MIN, base - HOUR + 5 * MIN, MIN);
        assert_eq!(cached(&s, None, q, moved).0, "partial", "{q}");
        assert_eq!(cached(&s, None, q, moved).0, "hit", "{q}");
        // A wider range: an uncached head and tail around the kept part.
        let wider = (base - 4 * HOUR, base - 30 * MIN, MIN);
        assert_eq!(cached(&s, None, q, wider).0, "partial", "{q}");
        // Up to now: the last 10 minutes are never kept, so repeating it is a partial hit.
        let live = (base - HOUR, base, MIN);
        cached(&s, None, q, live);
        assert_eq!(cached(&s, None, q, live).0, "partial", "{q}");
        // Another step alignment is another entry.
        let shifted = (base - 3 * HOUR + 15_000, base - HOUR + 15_000, MIN);
        assert_eq!(cached(&s, None, q, shifted).0, "miss", "{q}");
    }
    // Another tenant with the same query text has its own entries, and its own answers.
    load(&s, Some("other"), base, 2.0);
    let first = (base - 3 * HOUR, base - HOUR, MIN);
    let (outcome, theirs) = cached(&s, Some("other"), QUERIES[1], first);
    assert_eq!(outcome, "miss");
    let (_, ours) = cached(&s, None, QUERIES[1], first);
    assert_ne!(theirs, ours);
    // The parser's formatting is the key: spacing does not matter.
    let (outcome, _) = cached(&s, None, "sum by(site)(rate( reqs_total [5m] ))", first);
    assert_eq!(outcome, "hit");
    // An answer with an info (rate of a gauge) is not kept: its annotations are not per step.
    let (outcome, info) = cached(&s, None, "rate(temp_celsius[5m])", first);
    assert!(
        info["infos"].as_array().is_some_and(|i| !i.is_empty()),
        "{info}"
    );
    assert_eq!(outcome, "miss");
    assert_eq!(cached(&s, None, "rate(temp_celsius[5m])", first).0, "miss");
    let m = s.metrics();
    assert!(metric(&m, "strata_query_cache_hits_total") >= 2.0 * QUERIES.len() as f64);
    assert!(metric(&m, "strata_query_cache_partial_hits_total") >= 3.0 * QUERIES.len() as f64);
    assert!(metric(&m, "strata_query_cache_misses_total") >= 2.0 * QUERIES.len() as f64);
    assert!(metric(&m, "strata_query_cache_bypassed_total") > 0.0);
    assert!(metric(&m, "strata_query_cache_bytes") > 0.0);
}

#[test]
fn late_data_invalidates_exactly_the_cached_ranges_it_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let base = now_ms() / MIN * MIN;
    load(&s, None, base, 1.0);
    s.flush();
    let r = (base - 3 * HOUR, base - HOUR, MIN);
    let sum = "sum by (site) (rate(reqs_total[5m]))";
    let shifted = "sum(temp_celsius offset 2h)";
    for q in [sum, shifted] {
        assert_eq!(cached(&s, None, q, r).0, "miss");
    }
    // Late samples of another tenant, and of ours far before the range's reach: kept as is.
    let late = |device: &str, t: i64| {
        format!("reqs,device={device},site=s1 total=0 {t}\nreqs,device={device},site=s1 total=600 {}\ntemp,device={device},site=s1 celsius=1000 {t}\n", t + 30_000)
    };
    write(&s, Some("other"), late("z", base - 2 * HOUR));
    write(&s, None, late("z", base - 10 * HOUR));
    for q in [sum, shifted] {
        assert_eq!(cached(&s, None, q, r).0, "hit", "{q}");
    }
    assert_eq!(metric_of(&s, "strata_query_cache_invalidations_total"), 0.0);

    // A late sample inside the range: the next answer has its effect, equal to uncached.
    let (_, before) = range(&s, None, sum, r, false);
    write(&s, None, late("y", base - 2 * HOUR));
    let (outcome, after) = cached(&s, None, sum, r);
    assert_eq!(
        outcome, "partial",
        "only the steps the sample reaches are evaluated again"
    );
    assert_ne!(before, after, "the late sample changes the answer");
    // `offset 2h` moves its reach out of the range: that entry is untouched.
    assert_eq!(cached(&s, None, shifted, r).0, "hit");
    assert_eq!(metric_of(&s, "strata_query_cache_invalidations_total"), 1.0);

    // A late sample that lands, through the offset, in the shifted query's range.
    write(&s, None, late("x", base - 4 * HOUR + 10 * MIN));
    assert_eq!(cached(&s, None, shifted, r).0, "partial");
    assert_eq!(cached(&s, None, sum, r).0, "hit");
    assert_eq!(metric_of(&s, "strata_query_cache_invalidations_total"), 2.0);
}

#[test]
fn the_cache_stays_within_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[query]\ncache_bytes = 40000\n");
    let base = now_ms() / MIN * MIN;
    load(&s, None, base, 1.0);
    s.flush();
    let r = (base - 3 * HOUR, base - HOUR, MIN);
    for i in 0..30 {
        cached(&s, None, &format!("temp_celsius + {i}"), r);
    }
    let m = s.metrics();
    let bytes = metric(&m, "strata_query_cache_bytes");
    assert!(bytes > 0.0 && bytes <= 40_000.0, "{bytes}");
    assert!(metric(&m, "strata_query_cache_evictions_total") > 0.0);
    assert!(metric(&m, "strata_query_cache_entries") < 30.0);

    // Off: every query is a bypass.
    let dir = tempfile::tempdir().unwrap();
    let off = Server::start(dir.path(), "[query]\ncache_bytes = 0\n");
    load(&off, None, base, 1.0);
    assert_eq!(cached(&off, None, "temp_celsius", r).0, "bypass");
    assert_eq!(cached(&off, None, "temp_celsius", r).0, "bypass");
}

#[test]
fn queries_whose_meaning_follows_the_range_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let base = now_ms() / MIN * MIN;
    load(&s, None, base, 1.0);
    s.flush();
    let first = (base - 3 * HOUR, base - HOUR, MIN);
    let moved = (base - 3 * HOUR + 30 * MIN, base - HOUR + 30 * MIN, MIN);
    for q in [
        "temp_celsius @ start()",
        "max_over_time(temp_celsius[10m] @ end())",
        "temp_celsius - temp_celsius @ end()",
    ] {
        let (o1, a) = cached(&s, None, q, first);
        let (o2, b) = cached(&s, None, q, moved);
        assert_eq!((o1.as_str(), o2.as_str()), ("bypass", "bypass"), "{q}");
        // The answer at a step both ranges share differs: caching it would be wrong.
        let at = |v: &Value| {
            v["data"]["result"][0]["values"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p[0].as_f64() == Some((base - 2 * HOUR) as f64 / 1000.0))
                .cloned()
        };
        assert_ne!(at(&a), at(&b), "{q}");
    }
}

#[test]
fn fresh_data_never_meets_a_cached_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let base = now_ms() / MIN * MIN;
    load(&s, None, base, 1.0);
    let live = (base - HOUR, base, MIN);
    // A negative offset reads ahead of its step: its cached steps end that much earlier.
    for q in ["temp_celsius offset -5m", "sum(temp_celsius)"] {
        cached(&s, None, q, live);
    }
    // Fresh data (newer than the freshness window: not reported as late) for a new device.
    write(
        &s,
        None,
        format!("temp,device=q,site=s9 celsius=99 {}\n", base - 7 * MIN),
    );
    let (_, after) = cached(&s, None, "temp_celsius offset -5m", live);
    let sites: Vec<&Value> = after["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["metric"]["site"])
        .collect();
    assert!(sites.contains(&&Value::from("s9")), "{sites:?}");
    cached(&s, None, "sum(temp_celsius)", live);
}
