//! Hostile clients at the HTTP layer, against the real server on loopback: silent and
//! half-sent connections, more connections than allowed, compression bombs, extreme times,
//! duplicate tenant headers, huge exports and write floods. Each ends in a clear refusal, the
//! server alive and `/health` answering, and acknowledged data intact.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Writes a few samples and returns them as the export shows them, to check at the end.
fn write_keep(s: &Server, t: i64) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    let body = format!("keep,site=a value=1 {t}\nkeep,site=b value=2 {t}\n");
    assert_eq!(s.post("/write?precision=ms", body).status().as_u16(), 204);
    let kept = s.export("keep");
    assert_eq!(kept.len(), 2);
    kept
}

fn health_ok(s: &Server) {
    let t = Instant::now();
    let r = s.client.get(s.url("/health")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "/health took {:?}",
        t.elapsed()
    );
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c
}

/// Reads until the peer closes; true when it did before `deadline`.
fn closed_by(mut c: &TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Whatever arrives within the socket's read timeout.
fn read_some(mut c: &TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    match c.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

/// `/metrics` asked over an open connection `c` (keep-alive), read to its Content-Length.
fn metrics_on(mut c: &TcpStream) -> String {
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
            }
        }
        assert!(Instant::now() < deadline, "no whole /metrics answer");
        match c.read(&mut buf) {
            Ok(0) => panic!("connection closed before the /metrics answer"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
}

const HEADER_TIMEOUTS: &str = "strata_http_connections_closed_total{reason=\"header_timeout\"}";
const BODY_TIMEOUTS: &str = "strata_http_connections_closed_total{reason=\"body_timeout\"}";
const REFUSED_408: &str =
    "strata_http_requests_refused_total{code=\"408\",reason=\"body_timeout\"}";
const REFUSED_413: &str =
    "strata_http_requests_refused_total{code=\"413\",reason=\"body_too_large\"}";
const REFUSED_503: &str =
    "strata_http_requests_refused_total{code=\"503\",reason=\"pending_ingest\"}";

#[test]
fn silent_and_half_sent_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(
        dir.path(),
        "[server]\nheader_read_timeout = \"2s\"\nmax_connections = 1000\n",
    );
    // The server closes idle connections after 2 s: a pooled one could be reused just as it
    // closes, so this test's client opens a connection per request.
    s.client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let kept = write_keep(&s, now_ms());
    let opened = Instant::now();
    let mut socks = Vec::new();
    for i in 0..200 {
        let mut c = connect(&s);
        if i % 2 == 1 {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: ")
                .unwrap();
        }
        socks.push(c);
    }
    // An idle keep-alive connection: one full request, then silence.
    let mut idle = connect(&s);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_some(&idle).starts_with("HTTP/1.1 200"));
    // The server answers while they are held, and they are still open before the timeout
    // (counted as open: the 200 held and the idle one, which asks).
    assert!(metric(&metrics_on(&idle), "strata_http_open_connections") >= 201.0);
    health_ok(&s);
    if opened.elapsed() < Duration::from_millis(1500) {
        assert!(!closed_by(&socks[0], opened + Duration::from_millis(1500)));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, c) in socks.iter().enumerate() {
        assert!(closed_by(c, deadline), "connection {i} still open");
    }
    assert!(
        closed_by(&idle, deadline),
        "idle keep-alive connection still open"
    );
    health_ok(&s);
    // Each was closed by the header timeout and counted; none is counted open any longer
    // (only the connection asking, and perhaps the last one closing).
    let m = s.metrics();
    assert!(metric(&m, HEADER_TIMEOUTS) >= 201.0, "{m}");
    assert!(metric(&m, "strata_http_open_connections") <= 2.0, "{m}");
    assert_eq!(metric(&m, BODY_TIMEOUTS), 0.0, "{m}");
    assert_eq!(s.export("keep"), kept);
}

#[test]
fn connection_limit_refuses_new_connections_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[server]\nheader_read_timeout = \"60s\"\nmax_connections = 8\nshutdown_grace = \"60s\"\n",
    );
    let kept = write_keep(&s, now_ms());
    // An established keep-alive connection, opened before the flood.
    let mut old = connect(&s);
    old.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_some(&old).starts_with("HTTP/1.1 200"));
    // Twelve more keep-alive clients: those given a slot are served and stay open, the rest
    // get a 503 naming the limit and are closed.
    let mut socks = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = connect(&s);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let got = read_some(&c);
        if got.starts_with("HTTP/1.1 503") {
            assert!(got.contains("server.max_connections"), "{got}");
            assert!(closed_by(&c, Instant::now() + Duration::from_secs(5)));
            refused += 1;
        } else {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            assert_eq!(refused, 0, "a connection was served after one was refused");
        }
        socks.push(c);
    }
    // 8 slots: the old connection, the test client's pooled one (if any) and the first of the
    // twelve; the rest were refused.
    assert!((5..=7).contains(&refused), "refused {refused} of 12");
    // All 8 slots are counted open; the refused connections are counted, and not as open.
    let m = metrics_on(&old);
    assert_eq!(metric(&m, "strata_http_open_connections"), 8.0, "{m}");
    assert_eq!(
        metric(&m, "strata_http_connections_refused_total"),
        refused as f64,
        "{m}"
    );
    // A client that sends its request at once (a fresh HTTP client) reads the 503 too.
    let r = reqwest::blocking::Client::new()
        .get(s.url("/health"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().unwrap().contains("server.max_connections"));
    // The established connection is served throughout.
    for _ in 0..3 {
        old.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(read_some(&old).starts_with("HTTP/1.1 200"));
    }
    drop(socks);
    // Closed connections free their slots.
    let t = Instant::now();
    loop {
        let c = connect(&s);
        (&c).write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        if read_some(&c).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "slots not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&s.metrics(), "strata_http_connections_refused_total") > refused as f64);
    assert_eq!(s.export("keep"), kept);
    // SIGTERM with idle and half-sent connections open exits at once: they have no request
    // to finish, so the (long) shutdown grace is not waited out for them.
    let half: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\n").unwrap();
            c
        })
        .collect();
    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        t.elapsed()
    );
    drop((half, old));
}

#[test]
fn compression_bombs_and_unsized_bodies_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[limits]\nmax_body_bytes = 100000\n[server]\nbody_read_timeout = \"1s\"\n",
    );
    let kept = write_keep(&s, now_ms());
    let expect_413 = |r: reqwest::blocking::Response, what: &str| {
        assert_eq!(r.status().as_u16(), 413, "{what}");
        let body = r.text().unwrap();
        assert!(body.contains("limits.max_body_bytes"), "{what}: {body}");
        assert!(body.contains("100000"), "{what}: {body}");
    };
    // 10 MB of zeros: 470 KB of snappy, under the raw limit only when cut down, so take 1 MB
    // (about 47 KB compressed): the declared size gives it away before any decompression.
    let bomb = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 1 << 20])
        .unwrap();
    assert!(bomb.len() < 100_000);
    expect_413(s.post("/api/v1/write", bomb), "snappy bomb");
    // A header declaring 4 GiB in front of a few bytes: refused without allocating it.
    let mut forged = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    forged.extend_from_slice(b"\x00\x01\x02");
    expect_413(s.post("/api/v1/write", forged), "forged snappy length");
    // Bodies without a Content-Length (chunked) are counted as they arrive: 150 KB in 10 KB
    // chunks gets the 413 (the overshoot is read and discarded, so the answer arrives).
    for path in ["/write", "/api/v1/events", "/api/v1/write"] {
        let mut c = connect(&s);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        for _ in 0..15 {
            write!(c, "{:x}\r\n{}\r\n", 10_000, "#".repeat(10_000)).unwrap();
        }
        c.write_all(b"0\r\n\r\n").unwrap();
        let got = read_some(&c);
        assert!(got.starts_with("HTTP/1.1 413"), "{path}: {got}");
        assert!(got.contains("limits.max_body_bytes"), "{path}: {got}");
    }
    // Far over the limit, the connection is dropped once the overshoot allowance is spent:
    // the server reads no more than that, whatever the client sends.
    let mut c = connect(&s);
    c.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 100_000, "#".repeat(100_000));
    let mut sent = 0;
    while sent < 50 << 20 && c.write_all(chunk.as_bytes()).is_ok() {
        sent += chunk.len();
    }
    assert!(
        sent < 50 << 20,
        "the server read 50 MB of a body over its limit"
    );
    drop(c);
    // A body that stalls is abandoned with 408.
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nm value=1")
        .unwrap();
    let got = read_some(&c);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("server.body_read_timeout"), "{got}");
    // The rest of the body may still come: the connection ends with the 408.
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert!(closed_by(&c, Instant::now() + Duration::from_secs(5)));
    health_ok(&s);
    // Every refusal above is counted: two snappy bombs, three chunked bodies and the one far
    // over the limit got 413, the stalled body 408 (closing its connection).
    let m = s.metrics();
    assert_eq!(metric(&m, REFUSED_413), 6.0, "{m}");
    assert_eq!(metric(&m, REFUSED_408), 1.0, "{m}");
    assert_eq!(metric(&m, BODY_TIMEOUTS), 1.0, "{m}");
    assert_eq!(metric(&m, REFUSED_503), 0.0, "{m}");
    assert_eq!(s.export("keep"), kept);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn post_encoded(s: &Server, path: &str, encoding: &str, body: Vec<u8>) -> (u16, String) {
    let r = s
        .client
        .post(s.url(path))
        .header("Content-Encoding", encoding)
        .body(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn compressed_bodies_are_stored_and_bombs_and_cut_streams_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[limits]\nmax_body_bytes = 100000\n");
    let kept = write_keep(&s, now_ms());
    let t = now_ms() - 60_000;
    // Every endpoint and encoding stores what it decodes, as Telegraf's influxdb_v2 output
    // sends it (gzip to /api/v2/write) and the others alike.
    let influx = |metric: &str| -> Vec<u8> {
        (0..500)
            .map(|i| format!("{metric},dev=d{i:03} value={i} {}\n", t + i))
            .collect::<String>()
            .into_bytes()
    };
    let events = |metric: &str| -> Vec<u8> {
        (0..300)
            .map(|i| {
                format!(
                    "{{\"device_id\":\"d{i:03}\",\"timestamp\":{},\"readings\":{{\"{metric}\":{i}}}}}\n",
                    t + i
                )
            })
            .collect::<String>()
            .into_bytes()
    };
    let cases: Vec<(&str, &str, &str, Vec<u8>, usize)> = vec![
        (
            "/api/v2/write?precision=ms",
            "gzip",
            "gz_v2",
            gzip(&influx("gz_v2")),
            500,
        ),
        (
            "/write?precision=ms",
            "GZIP",
            "gz_v1",
            gzip(&influx("gz_v1")),
            500,
        ),
        (
            "/write?precision=ms",
            "deflate",
            "zl_v1",
            zlib(&influx("zl_v1")),
            500,
        ),
        (
            "/api/v2/write?precision=ms",
            "zstd",
            "zs_v2",
            zstd(&influx("zs_v2")),
            500,
        ),
        (
            "/api/v1/events",
            "gzip",
            "gz_ev",
            gzip(&events("gz_ev")),
            300,
        ),
        (
            "/api/v1/events",
            "deflate",
            "zl_ev",
            zlib(&events("zl_ev")),
            300,
        ),
        (
            "/api/v1/events",
            "zstd",
            "zs_ev",
            zstd(&events("zs_ev")),
            300,
        ),
    ];
    for (path, enc, metric, body, n) in &cases {
        let (code, text) = post_encoded(&s, path, enc, body.clone());
        assert!(code == 200 || code == 204, "{path} {enc}: {code} {text}");
        let got = s.export(metric);
        assert_eq!(got.len(), *n, "{path} {enc}");
        for (labels, samples) in got {
            let i: i64 = labels["dev"]
                .as_str()
                .or(labels["device"].as_str())
                .unwrap()[1..]
                .parse()
                .unwrap();
            assert_eq!(samples, vec![(t + i, i as f64)], "{path} {enc} {labels}");
        }
    }
    // Bombs: 20 MB of one repeated line, a few KB compressed, well under the raw limit; each
    // is refused with the 413 naming the decompressed limit, and the server stays up.
    let line = format!("bomb,dev=x value=1 {t}\n");
    let huge = line.repeat((20 << 20) / line.len()).into_bytes();
    for (enc, body) in [
        ("gzip", gzip(&huge)),
        ("deflate", zlib(&huge)),
        ("zstd", zstd(&huge)),
    ] {
        assert!(body.len() < 100_000, "{enc} bomb is {} bytes", body.len());
        for path in ["/api/v2/write", "/api/v1/events"] {
            let (code, text) = post_encoded(&s, path, enc, body.clone());
            assert_eq!(code, 413, "{path} {enc}: {text}");
            assert!(
                text.contains("limits.max_body_bytes"),
                "{path} {enc}: {text}"
            );
            assert!(text.contains("100000"), "{path} {enc}: {text}");
            assert!(text.contains(enc), "{path} {enc}: {text}");
        }
    }
    // Just over the limit when decompressed, just under it compressed: refused too.
    let over = influx("over");
    assert!(over.len() > 10_000);
    let over: Vec<u8> = over.repeat(100_001 / over.len() + 1);
    let (code, text) = post_encoded(&s, "/write?precision=ms", "gzip", gzip(&over));
    assert_eq!(code, 413, "{text}");
    // A cut-off or damaged stream is a 400 naming the encoding, and stores nothing of what
    // decoded before the cut.
    let whole = influx("cut");
    for (enc, body) in [
        ("gzip", gzip(&whole)),
        ("deflate", zlib(&whole)),
        ("zstd", zstd(&whole)),
    ] {
        for cut in [body.len() / 2, body.len() - 1] {
            let (code, text) = post_encoded(&s, "/write?precision=ms", enc, body[..cut].to_vec());
            assert_eq!(code, 400, "{enc} cut at {cut}: {text}");
            assert!(text.contains(&format!("not valid {enc}")), "{enc}: {text}");
        }
        let mut junk = body.clone();
        junk.extend_from_slice(b"\x00garbage");
        let (code, text) = post_encoded(&s, "/write?precision=ms", enc, junk);
        assert_eq!(code, 400, "{enc} with trailing junk: {text}");
    }
    // Six bombs and the body just over: seven 413s, counted.
    assert_eq!(metric(&s.metrics(), REFUSED_413), 7.0);
    assert!(s.export("cut").is_empty());
    assert!(s.export("bomb").is_empty());
    assert!(s.export("over").is_empty());
    // Encodings not spoken are 415, naming those that are.
    let (code, text) = post_encoded(&s, "/write", "br", gzip(&whole));
    assert_eq!(code, 415, "{text}");
    assert!(text.contains("gzip, deflate, zstd"), "{text}");
    health_ok(&s);
    assert_eq!(s.export("keep"), kept);
}

#[test]
fn extreme_times_and_steps_are_refused_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let kept = write_keep(&s, now_ms());
    let bad = [
        "9223372036854775807",
        "-9223372036854775808",
        "9.3e18",
        "1e300",
        "-1e300",
        "NaN",
        "Inf",
        "-Inf",
        "+Inf",
        "9007199254741",
        "-9007199254741",
        "99999-01-01T00:00:00Z",
        "+262143-12-31T23:59:59Z",
        "9999-99-99T00:00:00Z",
    ];
    // (path, the other parameters it needs, the time parameters it takes)
    let endpoints: &[(&str, &str, &[&str])] = &[
        ("/api/v1/query", "query=up", &["time"]),
        ("/api/v1/query_range", "query=up&step=60", &["start", "end"]),
        ("/api/v1/series", "match[]=keep", &["start", "end"]),
        ("/api/v1/labels", "", &["start", "end"]),
        ("/api/v1/label/site/values", "", &["start", "end"]),
        ("/api/v1/export", "match[]=keep", &["start", "end"]),
        ("/api/v1/rollups", "match[]=keep", &["start", "end"]),
        ("/api/v1/devices/d1/summary", "", &["start", "end"]),
    ];
    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    for (path, rest, params) in endpoints {
        for p in *params {
            for v in bad {
                // The other bound of a range is a plain valid time.
                let other = match *p {
                    "start" => "&end=1000",
                    "end" => "&start=0",
                    _ => "",
                };
                let url = s.url(&format!("{path}?{rest}{other}&{p}={}", enc(v)));
                let r = s.client.get(&url).send().unwrap();
                assert_eq!(r.status().as_u16(), 400, "{url}");
                let body = r.text().unwrap();
                assert!(body.contains(&format!("\\\"{p}\\\"")), "{url}: {body}");
            }
        }
    }
    for v in [
        "1e300",
        "NaN",
        "Inf",
        "-Inf",
        "9223372036854775807",
        "99999999999999999y",
        "0",
        "-5",
    ] {
        let url = s.url(&format!(
            "/api/v1/query_range?query=up&start=0&end=1000&step={}",
            enc(v)
        ));
        let r = s.client.get(&url).send().unwrap();
        assert_eq!(r.status().as_u16(), 400, "{url}");
        assert!(r.text().unwrap().contains("step"), "{url}");
    }
    // The widest accepted range and the smallest steps answer without overflow (debug builds
    // panic on it): a 200 or a clear 4xx, never a dropped connection.
    let lo = "-9007199254740";
    let hi = "9007199254740";
    let wide = [
        format!("/api/v1/query?query=up&time={hi}"),
        format!("/api/v1/query?query=up&time={lo}"),
        format!("/api/v1/query?query=time()&time={hi}"),
        format!("/api/v1/query_range?query=up&start={lo}&end={hi}&step=1e12"),
        format!("/api/v1/query_range?query=up&start={lo}&end={hi}&step=0.001"),
        format!("/api/v1/query_range?query=up&start={hi}&end={hi}&step=0.001"),
        format!("/api/v1/series?match[]=keep&start={lo}&end={hi}"),
        format!("/api/v1/labels?start={lo}&end={hi}"),
        format!("/api/v1/label/site/values?start={lo}&end={hi}"),
        format!("/api/v1/export?match[]=keep&start={lo}&end={hi}"),
        format!("/api/v1/rollups?match[]=keep&start={lo}&end={hi}"),
        format!("/api/v1/rollups?match[]=keep&end={lo}"),
        format!("/api/v1/devices/d1/summary?start={lo}&end={hi}"),
        format!("/api/v1/devices/d1/summary?end={lo}"),
    ];
    for path in &wide {
        let r = s.client.get(s.url(path)).send().unwrap();
        let code = r.status().as_u16();
        assert!(code == 200 || (400..500).contains(&code), "{path}: {code}");
    }
    health_ok(&s);
    assert_eq!(s.export("keep"), kept);
}

#[test]
fn a_second_tenant_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let t = now_ms();
    let two = |rb: reqwest::blocking::RequestBuilder| {
        let r = rb
            .header("X-Scope-OrgID", "alice")
            .header("X-Scope-OrgID", "mallory")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body = r.text().unwrap();
        assert!(body.contains("X-Scope-OrgID"), "{body}");
    };
    two(s
        .client
        .post(s.url("/write?precision=ms"))
        .body(format!("dup value=1 {t}\n")));
    two(s
        .client
        .post(s.url("/api/v1/write"))
        .body(remote_write_body(&[(
            vec![("__name__", "dup")],
            vec![(t, 1.0)],
        )])));
    two(s.client.get(s.url("/api/v1/export?match[]=dup")));
    two(s.client.get(s.url("/api/v1/query?query=dup")));
    two(s.client.get(s.url("/api/v1/series?match[]=dup")));
    // Nothing was stored for either tenant; one header still works.
    assert!(s.export_as("dup", Some("alice")).is_empty());
    assert!(s.export_as("dup", Some("mallory")).is_empty());
    let r = s
        .client
        .post(s.url("/write?precision=ms"))
        .header("X-Scope-OrgID", "alice")
        .body(format!("dup value=1 {t}\n"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.export_as("dup", Some("alice")).len(), 1);
}

#[test]
fn export_of_many_series_streams_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[server]\nshutdown_grace = \"60s\"\n");
    let t0 = now_ms() - 3_600_000;
    let (series, points) = (3000usize, 40i64);
    for chunk in 0..(series / 500) {
        let mut body = String::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            for k in 0..points {
                body.push_str(&format!(
                    "big,dev=d{i:05} value={} {}\n",
                    i as i64 * 1000 + k,
                    t0 + k * 1000
                ));
            }
        }
        assert_eq!(s.post("/write?precision=ms", body).status().as_u16(), 204);
    }
    let r = s
        .client
        .get(s.url("/api/v1/export"))
        .query(&[("match[]", "big")])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Streamed: no length known up front, chunked transfer.
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(
        r.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    let text = r.text().unwrap();
    assert!(text.len() > 1 << 20, "export is only {} bytes", text.len());
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["metric"]["dev"], format!("d{i:05}"));
        let ts = v["timestamps"].as_array().unwrap();
        let vs = v["values"].as_array().unwrap();
        assert_eq!(ts.len(), points as usize);
        for k in 0..points as usize {
            assert_eq!(ts[k].as_i64().unwrap(), t0 + k as i64 * 1000);
            assert_eq!(vs[k].as_f64().unwrap(), (i * 1000 + k) as f64);
        }
        n += 1;
    }
    assert_eq!(n, series);
    // A client that reads a little and goes away does not stop the server.
    for _ in 0..5 {
        let mut c = connect(&s);
        c.write_all(b"GET /api/v1/export?match[]=big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(read_some(&c).starts_with("HTTP/1.1 200"));
    }
    health_ok(&s);
    // Two match[] sets covering the same series write each once.
    let both = s
        .client
        .get(s.url("/api/v1/export"))
        .query(&[("match[]", "big"), ("match[]", "{dev=\"d00007\"}")])
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(both.lines().count(), series);
    // SIGTERM while an export streams: it is finished (within server.shutdown_grace) before
    // the connection closes.
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /api/v1/export?match[]=big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = vec![0u8; 1024];
    let n = c.read(&mut raw).unwrap();
    raw.truncate(n);
    let reader = std::thread::spawn(move || {
        c.read_to_end(&mut raw).unwrap();
        raw
    });
    s.stop();
    let raw = reader.join().unwrap();
    assert_eq!(dechunk(&raw).lines().count(), series);
}

/// The body of a raw chunked HTTP/1.1 response, checked to end with the last chunk.
fn dechunk(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let (head, mut rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("truncated chunked body");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap();
    }
}

#[test]
fn a_write_flood_past_the_pending_budget_gets_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[limits]\nmax_pending_ingest_bytes = 1024\npending_ingest_timeout = \"1ms\"\n",
    );
    let t0 = now_ms() - 600_000;
    let base = s.base.clone();
    let results: Vec<Vec<(usize, u16, String)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                let base = base.clone();
                sc.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    (0..15)
                        .map(|k| {
                            let id = w * 100 + k;
                            let mut body = String::new();
                            for i in 0..200 {
                                body.push_str(&format!(
                                    "flood,w=w{id},s=s{i} value={id} {}\n",
                                    t0 + i
                                ));
                            }
                            let r = client
                                .post(format!("{base}/write?precision=ms"))
                                .body(body)
                                .send()
                                .unwrap();
                            let code = r.status().as_u16();
                            (id, code, r.text().unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut acked = Vec::new();
    let mut refused = 0;
    for (id, code, body) in results.into_iter().flatten() {
        match code {
            204 => acked.push(id),
            503 => {
                assert!(body.contains("too much pending ingest"), "{body}");
                assert!(body.contains("limits.max_pending_ingest_bytes"), "{body}");
                refused += 1;
            }
            _ => panic!("write {id}: {code} {body}"),
        }
    }
    assert!(
        refused > 0,
        "no write was refused with a 1 KiB budget and a 1 ms wait"
    );
    assert!(!acked.is_empty());
    // Each 503 is counted as refused for the pending-ingest budget.
    assert_eq!(metric(&s.metrics(), REFUSED_503), refused as f64);
    health_ok(&s);
    // Every acknowledged write is there in full; refused ones left nothing.
    for id in (0..8).flat_map(|w| (0..15).map(move |k| w * 100 + k)) {
        let n = s.export(&format!("flood{{w=\"w{id}\"}}")).len();
        if acked.contains(&id) {
            assert_eq!(n, 200, "acknowledged write {id}");
        } else {
            assert_eq!(n, 0, "write {id}");
        }
    }
}

#[test]
fn metadata_answers_are_bounded_by_limit_and_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[limits]\nmax_metadata_results = 1000\n");
    let t = now_ms() - 60_000;
    let body: String = (0..1500)
        .map(|i| format!("meta,dev=d{i:04},rack=r{} value=1 {t}\n", i % 3))
        .collect();
    assert_eq!(s.post("/write?precision=ms", body).status().as_u16(), 204);
    let get = |path: &str, params: &[(&str, &str)]| -> (u16, serde_json::Value) {
        let r = s.client.get(s.url(path)).query(params).send().unwrap();
        let code = r.status().as_u16();
        (code, r.json().unwrap())
    };
    let all = ("match[]", "{__name__=~\".+\"}");
    // Over the cap without a limit: 422 naming the cap, not an answer that looks complete.
    for (path, params) in [
        ("/api/v1/series", vec![all]),
        ("/api/v1/series", vec![all, ("limit", "0")]),
        ("/api/v1/label/dev/values", vec![]),
        ("/api/v1/label/dev/values", vec![all]),
    ] {
        let (code, v) = get(path, &params);
        assert_eq!(code, 422, "{path} {params:?}: {v}");
        assert_eq!(v["errorType"], "execution", "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("limits.max_metadata_results"), "{e}");
        assert!(e.contains("more than 1000"), "{e}");
    }
    // With limit=: the first entries in order, and Prometheus' warning.
    let truncated = serde_json::json!(["results truncated due to limit"]);
    let (code, v) = get("/api/v1/series", &[all, ("limit", "3")]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["data"],
        serde_json::json!([
            {"__name__": "meta", "dev": "d0000", "rack": "r0"},
            {"__name__": "meta", "dev": "d0001", "rack": "r1"},
            {"__name__": "meta", "dev": "d0002", "rack": "r2"},
        ])
    );
    assert_eq!(v["warnings"], truncated);
    let (code, v) = get("/api/v1/label/dev/values", &[("limit", "2")]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"], serde_json::json!(["d0000", "d0001"]));
    assert_eq!(v["warnings"], truncated);
    let (_, v) = get("/api/v1/labels", &[("limit", "1")]);
    assert_eq!(v["data"], serde_json::json!(["__name__"]));
    assert_eq!(v["warnings"], truncated);
    // The union of several match[] sets is cut after merging, in order.
    let (_, v) = get(
        "/api/v1/label/dev/values",
        &[
            ("match[]", "meta{dev=\"d0009\"}"),
            ("match[]", "meta{dev=\"d0004\"}"),
            ("match[]", "meta{dev=\"d0007\"}"),
            ("limit", "2"),
        ],
    );
    assert_eq!(v["data"], serde_json::json!(["d0004", "d0007"]), "{v}");
    // A limit over the cap takes the first `cap` entries, warned about both.
    let (code, v) = get("/api/v1/series", &[all, ("limit", "100000")]);
    assert_eq!(code, 200);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1000);
    assert_eq!(data[999]["dev"], "d0999");
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w[0], "results truncated due to limit");
    assert!(
        w[1].as_str()
            .unwrap()
            .contains("limits.max_metadata_results"),
        "{w:?}"
    );
    // Within both, the answer is whole and carries no warnings (a limit exactly reached is
    // not a truncation).
    for (path, params) in [
        (
            "/api/v1/series",
            vec![("match[]", "meta{rack=\"r1\",dev=~\"d000.\"}")],
        ),
        (
            "/api/v1/series",
            vec![
                ("match[]", "meta{rack=\"r1\",dev=~\"d000.\"}"),
                ("limit", "3"),
            ],
        ),
        ("/api/v1/labels", vec![]),
        ("/api/v1/label/rack/values", vec![("limit", "3")]),
    ] {
        let (code, v) = get(path, &params);
        assert_eq!(code, 200, "{path}: {v}");
        assert!(v.get("warnings").is_none(), "{path} {params:?}: {v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 3, "{path}: {v}");
    }
    // A limit that is not a non-negative integer is a 400 naming it.
    for bad in ["-1", "x", "1.5", "1e3"] {
        let (code, v) = get("/api/v1/series", &[all, ("limit", bad)]);
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("\"limit\""), "{v}");
    }
    health_ok(&s);
}

/// Over three partitions, series in blocks and in the head: a `limit` answers exactly the
/// first entries of the whole answer in label order (label names `a` and `ab` sort otherwise
/// as key bytes), merged from every partition.
#[test]
fn metadata_limits_hold_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "partitions = 3\n");
    let t = now_ms() - 60_000;
    let line = |i: u32| {
        let name = if i.is_multiple_of(3) { "a" } else { "ab" };
        format!(
            "part,{name}=v{:04},zone=z{} value=1 {t}\n",
            (i * 7919) % 900,
            i % 41
        )
    };
    let first: String = (0..600).map(line).collect();
    assert_eq!(s.post("/write?precision=ms", first).status().as_u16(), 204);
    s.flush();
    let rest: String = (500..900).map(line).collect();
    assert_eq!(s.post("/write?precision=ms", rest).status().as_u16(), 204);
    let get = |path: &str, params: &[(&str, &str)]| -> serde_json::Value {
        let r = s.client.get(s.url(path)).query(params).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} {params:?}");
        r.json().unwrap()
    };
    let sel = ("match[]", "part");
    let all = get("/api/v1/series", &[sel]);
    let all = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 900);
    let key = |v: &serde_json::Value| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        p.sort();
        p
    };
    assert!(
        all.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "sorted by labels"
    );
    for limit in [1usize, 7, 300, 899] {
        let v = get("/api/v1/series", &[sel, ("limit", &limit.to_string())]);
        assert_eq!(
            v["data"].as_array().unwrap()[..],
            all[..limit],
            "limit {limit}"
        );
        assert_eq!(v["warnings"][0], "results truncated due to limit");
    }
    let v = get("/api/v1/series", &[sel, ("limit", "900")]);
    assert_eq!(v["data"].as_array().unwrap().len(), 900);
    assert!(v.get("warnings").is_none(), "a limit exactly reached: {v}");
    let zones = get("/api/v1/label/zone/values", &[sel]);
    let zones = zones["data"].as_array().unwrap().clone();
    assert_eq!(zones.len(), 41);
    let v = get("/api/v1/label/zone/values", &[sel, ("limit", "5")]);
    assert_eq!(v["data"].as_array().unwrap()[..], zones[..5]);
    let v = get("/api/v1/labels", &[sel, ("limit", "3")]);
    assert_eq!(v["data"], serde_json::json!(["__name__", "a", "ab"]));
}

/// An export holds one series at a time, at most `query.max_samples` of it: a larger one ends
/// the export with an error instead of being decoded whole; smaller ones export as usual.
#[test]
fn export_refuses_a_series_past_max_samples() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[query]\nmax_samples = 1000\n");
    let t = now_ms() - 3_600_000;
    let big: String = (0..3000)
        .map(|i| format!("huge value={i} {}\n", t + i * 1000))
        .collect();
    assert_eq!(s.post("/write?precision=ms", big).status().as_u16(), 204);
    let small: String = (0..500)
        .map(|i| format!("small value={i} {}\n", t + i * 1000))
        .collect();
    assert_eq!(s.post("/write?precision=ms", small).status().as_u16(), 204);
    s.flush();
    assert_eq!(s.export("small")[0].1.len(), 500);
    // The stream breaks off (before its head, when the series comes first): never a short
    // export that looks complete.
    let got = s
        .client
        .get(s.url("/api/v1/export"))
        .query(&[("match[]", "huge")])
        .send()
        .and_then(|r| r.text());
    assert!(got.is_err(), "{got:?}");
    health_ok(&s);
}
