//! Decoder tables: valid payloads with exact expectations, and malformed ones with the error or
//! rejection they must produce.

use proptest::prelude::*;
use strata_ingest::{
    events, influx, remote_write, DecodeContext, Decoded, IngestError, Location, RejectReason,
};
use strata_model::{Limits, Tenant, WriteBatch};

const NOW: i64 = 1_700_000_000_000;

fn ctx(limits: &Limits) -> DecodeContext<'_> {
    DecodeContext {
        limits,
        now_ms: NOW,
        max_decompressed_bytes: 1 << 20,
    }
}

/// Series as "labels => [(t, v)]" strings, in batch order.
fn dump(b: &WriteBatch) -> Vec<String> {
    b.iter()
        .map(|s| {
            format!(
                "{} => {:?}",
                s.key.labels(),
                s.samples
                    .iter()
                    .map(|x| (x.timestamp, x.value))
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

// ---- remote write ----

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}
fn len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(buf, ((field << 3) | 2) as u64);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}
fn ts_msg(labels: &[(&str, &str)], samples: &[(i64, f64)], extra: &[u8]) -> Vec<u8> {
    let mut ts = Vec::new();
    for (k, v) in labels {
        let mut l = Vec::new();
        len_field(&mut l, 1, k.as_bytes());
        len_field(&mut l, 2, v.as_bytes());
        len_field(&mut ts, 1, &l);
    }
    for (t, v) in samples {
        let mut s = vec![0x09];
        s.extend_from_slice(&v.to_le_bytes());
        s.push(0x10);
        varint(&mut s, *t as u64);
        len_field(&mut ts, 2, &s);
    }
    ts.extend_from_slice(extra);
    ts
}
fn request(series: &[Vec<u8>], extra: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for s in series {
        len_field(&mut r, 1, s);
    }
    r.extend_from_slice(extra);
    r
}
fn rw(body: &[u8]) -> (Result<Decoded, IngestError>, WriteBatch) {
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    let compressed = snap::raw::Encoder::new().compress_vec(body).unwrap();
    (remote_write::decode(&compressed, &ctx(&limits), &mut b), b)
}

#[test]
fn remote_write_decodes_series_samples_and_skips_the_rest() {
    let stale = f64::from_bits(0x7ff0000000000002);
    // An exemplar (field 3) inside a series, metadata (field 3) in the request: both skipped.
    let mut exemplar = Vec::new();
    len_field(&mut exemplar, 3, &[0x11, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut metadata = Vec::new();
    len_field(&mut metadata, 3, &[0x08, 0x01]);
    let body = request(
        &[
            ts_msg(
                &[
                    ("job", "api"),
                    ("__name__", "http_requests_total"),
                    ("code", "200"),
                ],
                &[(NOW, 10.0), (NOW - 15000, 7.0)],
                &exemplar,
            ),
            ts_msg(&[("__name__", "up"), ("empty", "")], &[(NOW, stale)], &[]),
        ],
        &metadata,
    );
    let (d, b) = rw(&body);
    let d = d.unwrap();
    assert_eq!(d.accepted_samples, 3);
    assert_eq!(d.rejected_total, 0);
    assert_eq!(
        dump(&b)[0],
        format!(
            r#"http_requests_total{{code="200", job="api"}} => [({NOW}, 10.0), ({}, 7.0)]"#,
            NOW - 15000
        )
    );
    let up = b.get(1).unwrap();
    assert!(
        up.samples[0].is_stale(),
        "staleness marker bits must survive"
    );
    assert_eq!(up.key.labels().to_string(), "up{}");
}

#[test]
fn remote_write_from_real_prometheus() {
    // Bodies captured from Prometheus 2.42 remote-writing its own metrics.
    for f in [
        "prometheus-2.42-remote-write-1.bin",
        "prometheus-2.42-remote-write-last.bin",
    ] {
        let body =
            std::fs::read(format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let limits = Limits {
            max_age_ms: i64::MAX / 4,
            max_future_skew_ms: i64::MAX / 4,
            ..Limits::default()
        };
        let mut b = WriteBatch::new(Tenant::default());
        let d = remote_write::decode(&body, &ctx(&limits), &mut b).unwrap();
        assert!(d.accepted_samples > 50, "{f}: {}", d.accepted_samples);
        assert_eq!(d.rejected_total, 0, "{f}: {:?}", d.rejected);
        let names: Vec<String> = b
            .iter()
            .map(|s| s.key.labels().get("job").unwrap_or("").to_string())
            .collect();
        assert!(names.iter().all(|j| j == "prometheus"), "{f}");
        assert!(b
            .iter()
            .all(|s| s.key.labels().get("instance") == Some("127.0.0.1:19998")));
    }
}

#[test]
fn remote_write_rejections_keep_the_rest() {
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("l{i}"), "v".into())).collect();
    let mut ml: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    ml.push(("__name__", "m"));
    let body = request(
        &[
            ts_msg(&[("__name__", "ok")], &[(NOW, 1.0)], &[]),
            ts_msg(&[("no_name", "x")], &[(NOW, 1.0)], &[]),
            ts_msg(&ml, &[(NOW, 1.0)], &[]),
            ts_msg(
                &[("__name__", "ts")],
                &[(NOW, 1.0), (NOW + 3_600_000, 2.0), (0, 3.0)],
                &[],
            ),
            ts_msg(&[("__name__", "bad-name")], &[(NOW, 1.0)], &[]),
            ts_msg(
                &[("__name__", "utf"), ("a", "\u{fffd}")],
                &[(NOW, 1.0)],
                &[],
            ),
        ],
        &[],
    );
    let (d, b) = rw(&body);
    let d = d.unwrap();
    assert_eq!(
        dump(&b),
        vec![
            format!("ok{{}} => [({NOW}, 1.0)]"),
            format!("ts{{}} => [({NOW}, 1.0)]"),
            format!("utf{{a=\"\u{fffd}\"}} => [({NOW}, 1.0)]")
        ]
    );
    let msgs: Vec<String> = d.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        msgs[0],
        "item 1: series has no metric name (__name__ label)"
    );
    assert!(
        msgs[1].starts_with("item 2: series has 41 labels, more than the limit of 30"),
        "{msgs:?}"
    );
    assert!(msgs[2].starts_with("item 3: timestamp"), "{msgs:?}");
    assert!(
        msgs[3].contains("item 4") && msgs[3].contains("invalid metric name"),
        "{msgs:?}"
    );
    assert_eq!(d.rejected_total, 5);
}

#[test]
fn remote_write_malformed_bodies() {
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    let e = remote_write::decode(b"not snappy at all", &ctx(&limits), &mut b).unwrap_err();
    assert!(matches!(e, IngestError::Snappy(_)), "{e}");
    let big = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 2 << 20])
        .unwrap();
    assert!(matches!(
        remote_write::decode(&big, &ctx(&limits), &mut b),
        Err(IngestError::TooLarge { .. })
    ));
    let body = request(
        &[ts_msg(
            &[("__name__", "up"), ("job", "x")],
            &[(NOW, 1.0), (NOW + 1, 2.0)],
            &[],
        )],
        &[],
    );
    // Every truncation point of a valid message either decodes a prefix or fails cleanly.
    for cut in 0..body.len() {
        let mut out = WriteBatch::new(Tenant::default());
        let r = remote_write::decode_uncompressed(&body[..cut], &ctx(&limits), &mut out);
        if cut > 0 {
            assert!(r.is_err(), "cut {cut} accepted");
        }
    }
    let e =
        remote_write::decode_uncompressed(&[0x0a, 0xff, 0x7f], &ctx(&limits), &mut b).unwrap_err();
    assert!(e.to_string().contains("runs past the end"), "{e}");
    let e = remote_write::decode_uncompressed(&[0x0f], &ctx(&limits), &mut b).unwrap_err();
    assert!(e.to_string().contains("wire type 7"), "{e}");
}

// ---- influx ----

fn lp(body: &str, precision: influx::Precision) -> (Decoded, Vec<String>) {
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    let d = influx::decode(body.as_bytes(), precision, &ctx(&limits), &mut b).unwrap();
    (d, dump(&b))
}

#[test]
fn influx_valid_lines() {
    let s = NOW / 1000;
    let cases: Vec<(String, influx::Precision, Vec<String>)> = vec![
        (
            format!("cpu,host=a value=1.5 {}", NOW * 1_000_000),
            influx::Precision::Ns,
            vec![format!("cpu{{host=\"a\"}} => [({NOW}, 1.5)]")],
        ),
        (
            format!("cpu,host=a usage=2i,ok=true,bad=F {s}"),
            influx::Precision::S,
            vec![
                format!("cpu_usage{{host=\"a\"}} => [({NOW}, 2.0)]"),
                format!("cpu_ok{{host=\"a\"}} => [({NOW}, 1.0)]"),
                format!("cpu_bad{{host=\"a\"}} => [({NOW}, 0.0)]"),
            ],
        ),
        (
            format!("# comment\n\nm u=7u {}\r\n", NOW * 1000),
            influx::Precision::Us,
            vec![format!("m_u{{}} => [({NOW}, 7.0)]")],
        ),
        (
            format!(r"we\ ird\,m,ta\ g=v\,1,dotted.key=x value=-1e3 {NOW}"),
            influx::Precision::Ms,
            vec![format!(
                "we_ird_m{{dotted_key=\"x\", ta_g=\"v,1\"}} => [({NOW}, -1000.0)]"
            )],
        ),
        (
            "nots value=3".to_string(),
            influx::Precision::Ns,
            vec![format!("nots{{}} => [({NOW}, 3.0)]")],
        ),
    ];
    for (body, p, want) in cases {
        let (d, got) = lp(&body, p);
        assert_eq!(d.rejected, vec![], "{body}");
        assert_eq!(got, want, "{body}");
    }
}

#[test]
fn influx_malformed_lines_keep_the_rest() {
    let body = format!(
        "ok value=1 {NOW}\nnofields\nm,t=a\nm value=1x {NOW}\nm value=\"unterminated {NOW}\nm s=\"str\",n=2 {NOW}\nm value=NaN {NOW}\nm value=1 12x\nm,t=é\u{fffd} value=2 {NOW}\nm value=1 99999999999999\nok2 value=2 {NOW}"
    );
    let (d, got) = lp(&body, influx::Precision::Ms);
    assert_eq!(
        got,
        vec![
            format!("ok{{}} => [({NOW}, 1.0)]"),
            format!("m_n{{}} => [({NOW}, 2.0)]"),
            format!("m{{t=\"é\u{fffd}\"}} => [({NOW}, 2.0)]"),
            format!("ok2{{}} => [({NOW}, 2.0)]"),
        ]
    );
    let msgs: Vec<String> = d.rejected.iter().map(|r| r.to_string()).collect();
    let expect = [
        "line 2: missing fields",
        "line 3: missing fields",
        "line 4, field \"value\": invalid number \"1x\"",
        "line 5: unterminated string",
        "line 6, field \"s\": value is a string",
        "line 7, field \"value\": value is NaN",
        "line 8: invalid timestamp \"12x\"",
        "line 10: timestamp 99999999999999 is more than",
    ];
    assert_eq!(msgs.len(), expect.len(), "{msgs:#?}");
    for (m, e) in msgs.iter().zip(expect) {
        assert!(m.starts_with(e), "{m:?} should start with {e:?}");
    }
    assert_eq!(d.rejected[4].reason.kind(), "string_field");
    assert_eq!(
        d.rejected[4].location,
        Location::Field {
            line: 6,
            field: "s".into()
        }
    );
}

#[test]
fn influx_bad_utf8_in_tags_is_a_line_error() {
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    let d = influx::decode(
        b"m,t=\xff value=1\nok value=1",
        influx::Precision::Ns,
        &ctx(&limits),
        &mut b,
    )
    .unwrap();
    assert_eq!(d.accepted_samples, 1);
    assert!(
        d.rejected[0]
            .to_string()
            .starts_with("line 1: tag at column 3 is not valid UTF-8"),
        "{}",
        d.rejected[0]
    );
}

// ---- events ----

fn ev(body: &str) -> (Result<Decoded, IngestError>, WriteBatch) {
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    (events::decode(body.as_bytes(), &ctx(&limits), &mut b), b)
}

#[test]
fn events_in_every_shape() {
    let one = format!(
        r#"{{"event_id":"e1","device_id":"d1","timestamp":{NOW},"readings":{{"temp":21.5,"open":true,"gone":null}},"labels":{{"site":"s1"}}}}"#
    );
    let (d, b) = ev(&one);
    assert_eq!(d.unwrap().accepted_samples, 2);
    assert_eq!(
        dump(&b),
        vec![
            format!("open{{device=\"d1\", site=\"s1\"}} => [({NOW}, 1.0)]"),
            format!("temp{{device=\"d1\", site=\"s1\"}} => [({NOW}, 21.5)]"),
        ]
    );
    assert!(b.iter().all(|s| s.event_id() == Some(&b"e1"[..])));
    let rfc = r#"[{"device_id":"d2","timestamp":"2023-11-14T22:13:20Z","readings":{"a":1}}, {"device_id":"d3","readings":{"a":2}}]"#;
    let (d, b) = ev(rfc);
    assert_eq!(d.unwrap().accepted_samples, 2);
    assert_eq!(dump(&b)[0], format!("a{{device=\"d2\"}} => [({NOW}, 1.0)]"));
    assert_eq!(
        dump(&b)[1],
        format!("a{{device=\"d3\"}} => [({NOW}, 2.0)]"),
        "missing timestamp is now"
    );
    let nd = format!("{{\"device_id\":\"d4\",\"timestamp\":{NOW},\"readings\":{{\"x\":1}}}}\n\n{{\"metric\":\"flat\",\"labels\":{{\"k\":\"v\"}},\"timestamp\":{NOW},\"value\":3}}\n");
    let (d, b) = ev(&nd);
    assert_eq!(d.unwrap().accepted_samples, 2);
    assert_eq!(dump(&b)[1], format!("flat{{k=\"v\"}} => [({NOW}, 3.0)]"));
    let pretty = format!(
        "{{\n  \"device_id\": \"d5\",\n  \"timestamp\": {NOW},\n  \"readings\": {{\"x\": 4}}\n}}\n"
    );
    let (d, _) = ev(&pretty);
    assert_eq!(d.unwrap().accepted_samples, 1);
}

#[test]
fn event_values_keep_every_bit() {
    // 17 significant digits, where a fast float parser is off by one unit in the last place.
    for text in [
        "24.388698630136986",
        "0.30000000000000004",
        "1.7976931348623157e308",
        "5e-324",
    ] {
        let body = format!(r#"{{"device_id":"d1","timestamp":{NOW},"readings":{{"x":{text}}}}}"#);
        let (d, b) = ev(&body);
        assert_eq!(d.unwrap().accepted_samples, 1);
        let got = b.iter().next().unwrap().samples[0].value;
        assert_eq!(
            got.to_bits(),
            text.parse::<f64>().unwrap().to_bits(),
            "{text}"
        );
    }
}

#[test]
fn events_malformed() {
    let (r, _) = ev("[{\"device_id\": ");
    assert!(matches!(r, Err(IngestError::Json { .. })));
    let (r, _) = ev("   ");
    assert!(r.is_err());
    let body = format!(
        "{{\"timestamp\":{NOW},\"readings\":{{\"a\":1}}}}\n{{\"device_id\":\"d\",\"readings\":[1]}}\n{{\"device_id\":\"d\",\"timestamp\":{NOW},\"readings\":{{\"s\":\"x\",\"ok\":1}}}}\n{{\"device_id\":\"d\",\"timestamp\":\"yesterday\",\"readings\":{{\"a\":1}}}}\n{{\"device_id\":\"d\",\"timestamp\":1,\"readings\":{{\"a\":1}}}}\n{{\"device_id\":\"d\", \"readings\":\n{{\"device_id\":\"d\",\"labels\":{{\"n\":1}},\"readings\":{{\"a\":1}}}}\n{{\"device_id\":\"d\",\"readings\":{{\"bad-name\":1}}}}"
    );
    let (d, b) = ev(&body);
    let d = d.unwrap();
    assert_eq!(d.accepted_samples, 1);
    assert_eq!(
        dump(&b),
        vec![format!("ok{{device=\"d\"}} => [({NOW}, 1.0)]")]
    );
    let msgs: Vec<String> = d.rejected.iter().map(|r| r.to_string()).collect();
    let expect = [
        "line 1: device_id is missing",
        "line 2: unexpected shape",
        "line 3, reading \"s\": value is a string",
        "line 4: timestamp \"yesterday\" is not RFC 3339",
        "line 5: timestamp 1 is older than the retention",
        "line 6: malformed JSON",
        "line 7: labels.n must be a string",
        "line 8, reading \"bad-name\": invalid metric name",
    ];
    assert_eq!(msgs.len(), expect.len(), "{msgs:#?}");
    for (m, e) in msgs.iter().zip(expect) {
        assert!(m.starts_with(e), "{m:?} should start with {e:?}");
    }
    let (r, _) = ev("{\"device_id\":\"\u{0}\",\"readings\":{\"a\":1}}\n");
    assert!(r.is_ok());
    let limits = Limits::default();
    let mut b = WriteBatch::new(Tenant::default());
    let d = events::decode(
        b"{\"device_id\":\"\xff\",\"readings\":{\"a\":1}}",
        &ctx(&limits),
        &mut b,
    )
    .unwrap();
    assert_eq!(d.accepted_samples, 0);
    assert!(
        d.rejected[0].to_string().contains("line 1"),
        "{}",
        d.rejected[0]
    );
    let _ = RejectReason::StringField.kind();
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let limits = Limits::default();
        let mut b = WriteBatch::new(Tenant::default());
        let _ = remote_write::decode(&bytes, &ctx(&limits), &mut b);
        let _ = remote_write::decode_uncompressed(&bytes, &ctx(&limits), &mut b);
        let _ = influx::decode(&bytes, influx::Precision::Ns, &ctx(&limits), &mut b);
        let _ = events::decode(&bytes, &ctx(&limits), &mut b);
    }

    #[test]
    fn influx_round_trip(rows in proptest::collection::vec(("[a-z][a-z0-9_]{0,6}", "[a-z]{1,4}", "[a-zA-Z0-9 ,=]{1,6}", -1e9f64..1e9, 0i64..600_000), 1..20)) {
        let mut body = String::new();
        for (m, k, v, x, dt) in &rows {
            let esc = v.replace(' ', "\\ ").replace(',', "\\,").replace('=', "\\=");
            body.push_str(&format!("{m},{k}={esc} value={x:?} {}\n", NOW - dt));
        }
        let (d, got) = lp(&body, influx::Precision::Ms);
        prop_assert_eq!(d.rejected_total, 0);
        prop_assert_eq!(got.len(), rows.len());
        for ((m, k, v, x, dt), g) in rows.iter().zip(&got) {
            let want = format!("{m}{{{k}={v:?}}} => [({}, {x:?})]", NOW - dt);
            prop_assert_eq!(g, &want);
        }
    }
}

#[test]
fn remote_write_fields_in_any_order_decode_alike() {
    // What other encoders may send: labels after or between samples, a sample's timestamp
    // before its value, a zero value left out (proto3 defaults), unknown fields inside.
    let label = |k: &str, v: &str| {
        let mut l = Vec::new();
        len_field(&mut l, 1, k.as_bytes());
        len_field(&mut l, 2, v.as_bytes());
        let mut f = Vec::new();
        len_field(&mut f, 1, &l);
        f
    };
    let sample = |fields: &[u8]| {
        let mut f = Vec::new();
        len_field(&mut f, 2, fields);
        f
    };
    let mut reversed = vec![0x10];
    varint(&mut reversed, NOW as u64);
    reversed.push(0x09);
    reversed.extend_from_slice(&2.5f64.to_le_bytes());
    let mut zero = vec![0x10];
    varint(&mut zero, (NOW + 1) as u64);
    let mut unknown = vec![0x09];
    unknown.extend_from_slice(&(-1.0f64).to_le_bytes());
    unknown.push(0x10);
    varint(&mut unknown, (NOW + 2) as u64);
    unknown.extend_from_slice(&[0x18, 0x05]);
    let series = [
        label("__name__", "m"),
        sample(&reversed),
        label("b", "2"),
        sample(&zero),
        label("a", "1"),
        sample(&unknown),
    ]
    .concat();
    let want = vec![format!(
        r#"m{{a="1", b="2"}} => [({NOW}, 2.5), ({}, 0.0), ({}, -1.0)]"#,
        NOW + 1,
        NOW + 2
    )];
    for _ in 0..2 {
        let (d, b) = rw(&request(std::slice::from_ref(&series), &[]));
        assert_eq!(d.unwrap().accepted_samples, 3);
        assert_eq!(dump(&b), want);
    }
    // The same series with its labels leading (the cached shape), twice: alike.
    let leading = [
        label("__name__", "m"),
        label("b", "2"),
        label("a", "1"),
        sample(&reversed),
        sample(&zero),
        sample(&unknown),
    ]
    .concat();
    for _ in 0..2 {
        let (d, b) = rw(&request(std::slice::from_ref(&leading), &[]));
        assert_eq!(d.unwrap().accepted_samples, 3);
        assert_eq!(dump(&b), want);
    }
}

#[test]
fn remote_write_series_cache_is_exact() {
    // The second decode of the same labels comes from the per-thread cache; it must give the
    // same series and ids, per tenant, and respect limits changed in between.
    let body = request(
        &[ts_msg(
            &[("__name__", "cached"), ("device", "d1"), ("z", "1")],
            &[(NOW, 1.0)],
            &[],
        )],
        &[],
    );
    let compressed = snap::raw::Encoder::new().compress_vec(&body).unwrap();
    let limits = Limits::default();
    let decode = |tenant: &str, limits: &Limits| {
        let mut b = WriteBatch::new(Tenant::new(tenant).unwrap());
        let d = remote_write::decode(&compressed, &ctx(limits), &mut b).unwrap();
        let s = b.get(0).map(|s| (s.key.to_owned(), s.id, s.entity));
        (d, s)
    };
    let (_, first) = decode("a", &limits);
    let (_, again) = decode("a", &limits);
    assert_eq!(first, again);
    let (_, other) = decode("b", &limits);
    assert_ne!(
        first.as_ref().unwrap().1,
        other.as_ref().unwrap().1,
        "ids are per tenant"
    );
    let strict = Limits {
        max_labels_per_series: 2,
        ..Limits::default()
    };
    let (d, s) = decode("a", &strict);
    assert!(s.is_none());
    assert_eq!(d.rejected_total, 1);
}

#[test]
fn influx_series_cache_is_exact() {
    let body = format!("cache,host=a,z=1 value=1,other=2 {NOW}\n");
    let (_, first) = lp(&body, influx::Precision::Ms);
    let (_, again) = lp(&body, influx::Precision::Ms);
    assert_eq!(first, again);
    assert_eq!(first.len(), 2);
    let strict = Limits {
        max_labels_per_series: 2,
        ..Limits::default()
    };
    let mut b = WriteBatch::new(Tenant::default());
    let d = influx::decode(
        body.as_bytes(),
        influx::Precision::Ms,
        &ctx(&strict),
        &mut b,
    )
    .unwrap();
    assert_eq!(
        (d.accepted_samples, d.rejected_total),
        (0, 2),
        "changed limits bypass the cache"
    );
}

/// The events decoder remembers series it built (per thread): a series decoded again from that
/// memory is the same series, and inputs that differ only in where one part ends and the next
/// begins never share an entry.
#[test]
fn events_remembered_series_are_the_series_built() {
    let limits = Limits::default();
    let body = [
        r#"{"device_id":"d1","event_id":"e1","timestamp":1700000000000,"readings":{"t":1,"h":2},"labels":{"a":"bc","site":"s1"}}"#,
        r#"{"device_id":"d1","timestamp":1700000000000,"readings":{"t":3},"labels":{"ab":"c","site":"s1"}}"#,
        r#"{"device_id":"d1b","timestamp":1700000000000,"readings":{"t":4}}"#,
        r#"{"device_id":"d","timestamp":1700000000000,"readings":{"t":5},"labels":{"device":"x","zb":"y"}}"#,
        r#"{"metric":"t","labels":{"device":"d1"},"timestamp":1700000000000,"value":6}"#,
    ]
    .join("\n");
    let decode = || {
        let mut b = WriteBatch::new(Tenant::default_tenant());
        let d = events::decode(body.as_bytes(), &ctx(&limits), &mut b).unwrap();
        assert_eq!(d.accepted_samples, 6);
        b
    };
    let (first, again) = (decode(), decode());
    let ids = |b: &WriteBatch| -> Vec<_> {
        b.iter()
            .map(|s| {
                (
                    s.key.labels().to_string(),
                    s.id,
                    s.entity,
                    s.event_id().map(<[u8]>::to_vec),
                )
            })
            .collect()
    };
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(
        dump(&again),
        [
            r#"h{a="bc", device="d1", site="s1"} => [(1700000000000, 2.0)]"#,
            r#"t{a="bc", device="d1", site="s1"} => [(1700000000000, 1.0)]"#,
            r#"t{ab="c", device="d1", site="s1"} => [(1700000000000, 3.0)]"#,
            r#"t{device="d1b"} => [(1700000000000, 4.0)]"#,
            r#"t{device="d", zb="y"} => [(1700000000000, 5.0)]"#,
            r#"t{device="d1"} => [(1700000000000, 6.0)]"#,
        ]
    );
    // Another tenant's series are its own (ids seeded by tenant).
    let mut other = WriteBatch::new(Tenant::new("acme").unwrap());
    events::decode(body.as_bytes(), &ctx(&limits), &mut other).unwrap();
    assert_ne!(ids(&other)[0].1, ids(&first)[0].1);
}
