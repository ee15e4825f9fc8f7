//! Hostile input on every write endpoint: a 4xx naming the problem, no crash, and acknowledged
//! data untouched.

mod common;
use common::*;

struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    message: &'static str,
) -> Case {
    Case {
        name,
        path,
        headers: vec![],
        body: body.into(),
        status,
        message,
    }
}

#[test]
fn malformed_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[limits]\nmax_body_bytes = 100000\nmax_labels_per_series = 8\nmax_series_per_metric = 3\n",
    );
    let t = now_ms();
    // Acknowledged data that must survive everything below.
    let good = format!("keep,site=a value=1 {t}\n");
    assert_eq!(s.post("/write?precision=ms", good).status().as_u16(), 204);

    let valid_rw = remote_write_body(&[(vec![("__name__", "rw_ok")], vec![(t, 1.0)])]);
    let many_labels: Vec<(String, String)> =
        (0..12).map(|i| (format!("l{i}"), "v".into())).collect();
    let mut ml: Vec<(&str, &str)> = many_labels
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    ml.push(("__name__", "too_many"));
    let too_many_labels = remote_write_body(&[(ml, vec![(t, 1.0)])]);
    let long_name = "x".repeat(3000);
    let cases = vec![
        case(
            "rw not snappy",
            "/api/v1/write",
            b"definitely not snappy".to_vec(),
            400,
            "snappy",
        ),
        case(
            "rw truncated",
            "/api/v1/write",
            valid_rw[..valid_rw.len() - 3].to_vec(),
            400,
            "",
        ),
        case(
            "rw garbage protobuf",
            "/api/v1/write",
            snap::raw::Encoder::new()
                .compress_vec(&[0x0a, 0xff, 0xff, 0xff, 0x0f, 1])
                .unwrap(),
            400,
            "",
        ),
        case(
            "rw too many labels",
            "/api/v1/write",
            too_many_labels,
            400,
            "limit of 8",
        ),
        Case {
            headers: vec![("Content-Type", "application/json")],
            ..case(
                "rw wrong content type",
                "/api/v1/write",
                valid_rw.clone(),
                415,
                "application/x-protobuf",
            )
        },
        Case {
            headers: vec![("Content-Encoding", "gzip")],
            ..case(
                "influx says gzip, sends plain text",
                "/write",
                b"m value=1".to_vec(),
                400,
                "not valid gzip",
            )
        },
        Case {
            headers: vec![("Content-Encoding", "zstd")],
            ..case(
                "events say zstd, send plain text",
                "/api/v1/events",
                b"{}".to_vec(),
                400,
                "not valid zstd",
            )
        },
        Case {
            headers: vec![("Content-Encoding", "br")],
            ..case(
                "influx brotli",
                "/write",
                b"m value=1".to_vec(),
                415,
                "gzip, deflate, zstd or identity",
            )
        },
        Case {
            headers: vec![("Content-Encoding", "gzip")],
            ..case(
                "remote write gzip",
                "/api/v1/write",
                valid_rw.clone(),
                415,
                "snappy",
            )
        },
        case(
            "oversized body",
            "/write",
            vec![b'#'; 200_000],
            413,
            "max_body_bytes",
        ),
        case(
            "influx bad precision",
            "/write?precision=h",
            b"m value=1".to_vec(),
            400,
            "precision",
        ),
        case(
            "influx no fields",
            "/write",
            b"m,site=a\n".to_vec(),
            400,
            "line 1",
        ),
        case(
            "influx string field",
            "/write?precision=ms",
            format!("strf value=\"on\",n=2 {t}\n"),
            400,
            "string",
        ),
        case(
            "influx bad number",
            "/write",
            b"m value=1x2\n".to_vec(),
            400,
            "line 1",
        ),
        case(
            "influx absurd timestamp",
            "/write?precision=s",
            b"m value=1 99999999999\n".to_vec(),
            400,
            "future",
        ),
        case(
            "influx bad utf8",
            "/write",
            b"m,t=\xff\xfe value=1\n".to_vec(),
            400,
            "line 1",
        ),
        case(
            "influx long label",
            "/write",
            format!("m,t={long_name} value=1\n"),
            400,
            "2048",
        ),
        case(
            "events not json",
            "/api/v1/events",
            b"{\"device_id\": ".to_vec(),
            400,
            "",
        ),
        case(
            "events missing device",
            "/api/v1/events",
            format!("{{\"timestamp\":{t},\"readings\":{{\"a\":1}}}}"),
            400,
            "device_id",
        ),
        case(
            "events string reading",
            "/api/v1/events",
            format!("{{\"device_id\":\"d\",\"timestamp\":{t},\"readings\":{{\"a\":\"x\"}}}}"),
            400,
            "a",
        ),
        case(
            "events bad timestamp",
            "/api/v1/events",
            b"{\"device_id\":\"d\",\"timestamp\":\"yesterday\",\"readings\":{\"a\":1}}".to_vec(),
            400,
            "timestamp",
        ),
        Case {
            headers: vec![("X-Scope-OrgID", "../etc")],
            ..case(
                "bad tenant",
                "/write",
                b"m value=1".to_vec(),
                400,
                "X-Scope-OrgID",
            )
        },
    ];
    for c in cases {
        let mut req = s.client.post(s.url(c.path)).body(c.body.clone());
        for (k, v) in &c.headers {
            req = req.header(*k, *v);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.name);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
        assert_eq!(v["status"], "error", "{}", c.name);
        assert!(
            text.contains(c.message),
            "{}: {text} should mention {:?}",
            c.name,
            c.message
        );
    }

    // Partial batches: the good part is stored, and the response counts both.
    let mixed =
        format!("ok1 value=1 {t}\nbroken line\nok2 value=2 {t}\nstrf2 value=\"x\",n=3 {t}\n");
    let r = s.post("/write?precision=ms", mixed);
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["accepted"], 3, "{v}");
    assert_eq!(v["rejected"], 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 4"), "{v}");
    assert_eq!(s.export("ok1")[0].1, vec![(t, 1.0)]);
    assert_eq!(s.export("ok2")[0].1, vec![(t, 2.0)]);
    assert_eq!(s.export("strf2_n")[0].1, vec![(t, 3.0)]);

    // Cardinality limit: the 4th series of a metric is refused, the first 3 are kept.
    let body: String = (0..5)
        .map(|i| format!("card,dev=d{i} value=1 {t}\n"))
        .collect();
    let r = s.post("/write?precision=ms", body);
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_series_per_metric = 3"),
        "{v}"
    );
    assert_eq!(s.export("card").len(), 3);

    // Nothing acknowledged was disturbed, and the rejections are counted.
    assert_eq!(s.export("keep")[0].1, vec![(t, 1.0)]);
    assert!(s.export("too_many").is_empty());
    let metrics = s.metrics();
    assert!(
        metrics
            .contains("strata_ingest_rejected_total{protocol=\"influx\",reason=\"string_field\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"series_limit\"} 2"), "{metrics}");
}
