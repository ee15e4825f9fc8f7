//! The Prometheus query API on the real binary: instant and range queries over GET and
//! Grafana-style form POST, result types, value encoding, and every error class.

mod common;
use common::*;
use serde_json::{json, Value};

fn form(s: &Server, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let r = s.client.post(s.url(path)).form(params).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn get(s: &Server, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let r = s.client.get(s.url(path)).query(params).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// Path, parameters, expected status, `errorType`, and a word the message must contain.
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);

#[test]
fn query_api_answers_like_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[query]\nmax_samples = 1000\n");
    // 10 minutes of a counter on two devices, one sample every 15 s, ending a minute ago.
    let t_end = (now_ms() / 60_000) * 60_000 - 60_000;
    let t0 = t_end - 600_000;
    let mut lines = String::new();
    for (dev, step) in [("a", 1.0), ("b", 2.0)] {
        for i in 0..=40 {
            let t = t0 + i * 15_000;
            lines.push_str(&format!(
                "packets,device={dev},site=s1 total={} {t}\n",
                i as f64 * step * 15.0
            ));
        }
    }
    let r = s.post("/write?precision=ms", lines);
    assert_eq!(r.status().as_u16(), 204);
    s.flush();
    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);

    // Instant vector, GET.
    let (st, v) = get(
        &s,
        "/api/v1/query",
        &[
            ("query", "sum by (site) (rate(packets_total[5m]))"),
            ("time", &secs(t_end)),
        ],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let res = &v["data"]["result"][0];
    assert_eq!(res["metric"], json!({"site": "s1"}));
    assert_eq!(res["value"][0].as_f64().unwrap(), t_end as f64 / 1000.0);
    // a rises 1/s, b 2/s.
    let rate: f64 = res["value"][1].as_str().unwrap().parse().unwrap();
    assert!((rate - 3.0).abs() < 1e-9, "{rate}");

    // Range query, Grafana-style form POST with RFC 3339 times and a duration step.
    let rfc = |ms: i64| strata_model::time::format_rfc3339_ms(ms);
    let (st, v) = form(
        &s,
        "/api/v1/query_range",
        &[
            ("query", "packets_total{device=\"a\"} / 15"),
            ("start", &rfc(t0)),
            ("end", &rfc(t0 + 60_000)),
            ("step", "30s"),
        ],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    let m = &v["data"]["result"][0];
    assert_eq!(m["metric"], json!({"device": "a", "site": "s1"}));
    let vals: Vec<(f64, String)> = m["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        vals,
        vec![
            (t0 as f64 / 1000.0, "0".to_string()),
            ((t0 + 30_000) as f64 / 1000.0, "2".to_string()),
            ((t0 + 60_000) as f64 / 1000.0, "4".to_string()),
        ]
    );

    // Scalars, strings, special values as strings, the info annotation on a non-counter.
    let (_, v) = get(&s, "/api/v1/query", &[("query", "1/0"), ("time", "100")]);
    assert_eq!(
        v["data"],
        json!({"resultType": "scalar", "result": [100, "+Inf"]})
    );
    let (_, v) = get(&s, "/api/v1/query", &[("query", "0/0"), ("time", "100")]);
    assert_eq!(v["data"]["result"][1], "NaN");
    let (_, v) = get(&s, "/api/v1/query", &[("query", "\"hi\""), ("time", "100")]);
    assert_eq!(
        v["data"],
        json!({"resultType": "string", "result": [100, "hi"]})
    );
    let (_, v) = get(
        &s,
        "/api/v1/query",
        &[("query", "rate(packets[5m])"), ("time", &secs(t_end))],
    );
    assert_eq!(v["data"]["result"], json!([]));

    // A range selector in an instant query is a matrix.
    let (_, v) = get(
        &s,
        "/api/v1/query",
        &[
            ("query", "packets_total{device=\"b\"}[1m]"),
            ("time", &secs(t_end)),
        ],
    );
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(
        v["data"]["result"][0]["values"].as_array().unwrap().len(),
        4
    );

    // format_query and metadata.
    let (st, v) = get(
        &s,
        "/api/v1/format_query",
        &[("query", "sum(rate(x[5m]))by(a)")],
    );
    assert_eq!(st, 200);
    assert_eq!(v["data"], "sum by (a) (rate(x[5m]))");
    let (st, v) = get(&s, "/api/v1/metadata", &[]);
    assert_eq!((st, v["data"].clone()), (200, json!({})));

    // Errors: bad_data 400, execution 422, each naming the problem.
    let bad: &[BadCase] = &[
        (
            "/api/v1/query",
            &[("query", "sum(")],
            400,
            "bad_data",
            "query",
        ),
        ("/api/v1/query", &[], 400, "bad_data", "query is empty"),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "yesterday")],
            400,
            "bad_data",
            "time",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("timeout", "soon")],
            400,
            "bad_data",
            "timeout",
        ),
        (
            "/api/v1/query_range",
            &[("query", "up"), ("start", "1"), ("end", "2")],
            400,
            "bad_data",
            "step",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "10"),
                ("end", "2"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "end timestamp",
        ),
        (
            "/api/v1/query_range",
            &[("query", "up"), ("start", "1"), ("end", "2"), ("step", "0")],
            400,
            "bad_data",
            "zero or negative",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "100000"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "11,000 points",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up[5m]"),
                ("start", "0"),
                ("end", "10"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "range vector",
        ),
        (
            "/api/v1/query",
            &[("query", "packets_total + on() packets_total")],
            422,
            "execution",
            "many-to-many",
        ),
        (
            "/api/v1/query",
            &[(
                "query",
                "label_replace(packets_total, \"device\", \"x\", \"\", \"\")",
            )],
            422,
            "execution",
            "same labelset",
        ),
    ];
    for (path, params, status, kind, needle) in bad {
        let mut p: Vec<(&str, &str)> = params.to_vec();
        let t = secs(t_end);
        if *path == "/api/v1/query" && !p.iter().any(|(k, _)| *k == "time") && !p.is_empty() {
            p.push(("time", &t));
        }
        let (st, v) = get(&s, path, &p);
        assert_eq!(st, *status, "{path} {params:?}: {v}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], *kind, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{path} {params:?}: {v}"
        );
    }

    // The sample limit (1000 here) fails cleanly instead of exhausting memory.
    let (st, v) = get(
        &s,
        "/api/v1/query_range",
        &[
            ("query", "packets_total"),
            ("start", &secs(t0)),
            ("end", &secs(t_end)),
            ("step", "1"),
        ],
    );
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("too many samples"),
        "{v}"
    );

    // A tiny timeout gives errorType timeout with 503.
    let (st, v) = get(
        &s,
        "/api/v1/query",
        &[
            ("query", "count(count_over_time(packets_total[10m:1ms]))"),
            ("time", &secs(t_end)),
            ("timeout", "0.001"),
        ],
    );
    assert!(
        st == 503 && v["errorType"] == "timeout" || st == 422,
        "{st} {v}"
    );

    // Tenants: another tenant sees nothing.
    let r = s
        .client
        .get(s.url("/api/v1/query"))
        .header("X-Scope-OrgID", "other")
        .query(&[("query", "packets_total"), ("time", &secs(t_end))])
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["data"]["result"], json!([]));
    s.stop();
}
