//! The live stream (`/api/v1/stream`) against the real server: readings as they are written,
//! a window provisional then final then corrected, resume after a disconnect without loss or
//! duplicates (or a snapshot when that is impossible), bad requests answered and the
//! connection kept or closed as documented, and the slow-client close.

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const MIN: i64 = 60_000;

const CONFIG: &str = common::FAST_ROLLUPS;

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// A client of the stream.
struct Client {
    ws: Socket,
}

/// How a connection ended.
#[derive(Debug)]
struct Closed {
    code: u16,
    reason: String,
}

impl Client {
    fn connect(s: &Server, tenant: Option<&str>) -> Client {
        let url = s.base.replace("http://", "ws://") + "/api/v1/stream";
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = tenant {
            req.headers_mut()
                .insert("X-Scope-OrgID", t.parse().unwrap());
        }
        let (ws, resp) = tungstenite::connect(req).expect("websocket handshake");
        assert_eq!(resp.status().as_u16(), 101);
        if let MaybeTlsStream::Plain(t) = ws.get_ref() {
            t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Client { ws }
    }

    /// Caps the kernel's receive buffer of the connection (no autotuning to megabytes), so
    /// a client that stops reading holds the server back soon.
    fn shrink_receive_buffer(&self) {
        use std::os::fd::AsRawFd;
        let MaybeTlsStream::Plain(t) = self.ws.get_ref() else {
            unreachable!("plain ws://")
        };
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket descriptor and an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                t.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
    }

    fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    fn send_text(&mut self, t: &str) {
        self.ws.send(Message::Text(t.into())).unwrap();
    }

    /// The next JSON message, or how the connection closed.
    fn next(&mut self) -> Result<Value, Closed> {
        // Pings keep the socket's read timeout from firing: a minute at most in all.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no message in a minute");
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(f)) => {
                    let f = f.expect("a close frame with a code");
                    return Err(Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    });
                }
                Ok(_) => continue,
                Err(e) => panic!("stream read failed: {e}"),
            }
        }
    }

    fn message(&mut self) -> Value {
        self.next().unwrap_or_else(|c| panic!("closed: {c:?}"))
    }

    /// Subscribes and returns the acknowledgement.
    fn subscribe(&mut self, id: &str, kind: &str, selector: &str, since: Option<&Value>) -> Value {
        let mut sub = json!({"id": id, "kind": kind, "selector": selector});
        if let Some(p) = since {
            sub["since"] = json!({"epoch": p["epoch"], "offset": p["offset"]});
        }
        self.send(&json!({ "subscribe": sub }));
        let ack = self.message();
        assert_eq!(ack["event"], "subscribed", "{ack}");
        assert_eq!(ack["id"], id);
        ack
    }

    /// The next message of subscription `id` (others are skipped).
    fn of(&mut self, id: &str) -> Value {
        loop {
            let m = self.message();
            if m["id"] == id {
                return m;
            }
        }
    }
}

fn event(device: &str, ts: i64, v: f64) -> String {
    format!(r#"{{"device_id":"{device}","timestamp":{ts},"readings":{{"temperature":{v}}}}}"#)
        + "\n"
}

fn minute_ago(n: i64) -> i64 {
    (now_ms() / MIN - n) * MIN
}

#[test]
fn readings_and_a_window_provisional_then_final_then_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let mut c = Client::connect(&s, None);
    let sel = r#"temperature{device="d1"}"#;
    let ack = c.subscribe("r", "readings", sel, None);
    assert_eq!(ack["resume"], "live");
    assert_eq!(ack["kind"], "readings");
    assert!(ack["epoch"].as_u64().unwrap() > 0);
    c.subscribe("w", "windows", sel, None);
    let base = minute_ago(30);

    assert!(s
        .post("/api/v1/events", event("d1", base + 10_000, 20.0))
        .status()
        .is_success());
    // Another device's reading is not selected.
    assert!(s
        .post("/api/v1/events", event("d2", base + 10_000, 99.0))
        .status()
        .is_success());
    let r = c.of("r");
    assert_eq!(r["kind"], "readings");
    assert_eq!(
        r["labels"],
        json!({"__name__": "temperature", "device": "d1"})
    );
    assert_eq!(r["timestamp"], base + 10_000);
    assert_eq!(r["value"], 20.0);
    let w = c.of("w");
    assert_eq!(w["kind"], "windows");
    assert_eq!(w["state"], "provisional", "{w}");
    assert_eq!(
        (w["start"].as_i64(), w["end"].as_i64()),
        (Some(base), Some(base + MIN))
    );
    assert_eq!(
        (w["count"].as_u64(), w["revision"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(w["sum"], 20.0);
    assert!(w["offset"].as_u64().unwrap() > r["offset"].as_u64().unwrap());

    // The watermark passes the window and its lateness: final.
    assert!(s
        .post("/api/v1/events", event("d1", base + 5 * MIN, 21.0))
        .status()
        .is_success());
    let mut states = Vec::new();
    let fin = loop {
        let w = c.of("w");
        states.push((
            w["start"].as_i64().unwrap(),
            w["state"].as_str().unwrap().to_string(),
        ));
        if w["start"] == base && w["state"] == "final" {
            break w;
        }
    };
    assert_eq!(
        (fin["count"].as_u64(), fin["revision"].as_u64()),
        (Some(1), Some(0))
    );

    // A late reading corrects it: revision 1, recomputed from the raw data.
    assert!(s
        .post("/api/v1/events", event("d1", base + 20_000, 30.0))
        .status()
        .is_success());
    let late = c.of("r");
    assert_eq!(
        (late["timestamp"].as_i64(), late["value"].as_f64()),
        (Some(base + 20_000), Some(30.0))
    );
    let cor = loop {
        let w = c.of("w");
        if w["start"] == base {
            break w;
        }
    };
    assert_eq!(cor["state"], "corrected", "{cor}; before: {states:?}");
    assert_eq!(
        (cor["count"].as_u64(), cor["revision"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(cor["sum"], 50.0);
    assert_eq!(cor["max"], 30.0);

    // A retried write (the same sample again) is not pushed twice.
    assert!(s
        .post("/api/v1/events", event("d1", base + 20_000, 30.0))
        .status()
        .is_success());
    assert!(s
        .post("/api/v1/events", event("d1", base + 6 * MIN, 22.0))
        .status()
        .is_success());
    let next = c.of("r");
    assert_eq!(next["timestamp"], base + 6 * MIN, "{next}");

    let m = s.metrics();
    assert_eq!(metric(&m, "strata_live_connections"), 1.0);
    assert_eq!(
        metric(&m, r#"strata_live_subscriptions{state="open"}"#),
        2.0
    );
    assert!(metric(&m, "strata_live_messages_total") >= 7.0);
}

#[test]
fn a_client_resumes_without_loss_or_duplicates_or_takes_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let sel = r#"temperature{device="d1"}"#;
    let base = minute_ago(20);
    let mut c = Client::connect(&s, None);
    c.subscribe("r", "readings", sel, None);
    assert!(s
        .post("/api/v1/events", event("d1", base + 1_000, 1.0))
        .status()
        .is_success());
    let last = c.of("r");
    assert_eq!(last["value"], 1.0);
    drop(c); // the connection goes away without a close

    // Written while the client is away: kept for its resume.
    for k in 2..=4 {
        let b = event("d1", base + k * 1_000, k as f64) + &event("d9", base, 0.0);
        assert!(s.post("/api/v1/events", b).status().is_success());
    }
    let mut c = Client::connect(&s, None);
    let ack = c.subscribe("r", "readings", sel, Some(&last));
    assert_eq!(ack["resume"], "replayed", "{ack}");
    assert_eq!(ack["replayed"], 3);
    assert!(s
        .post("/api/v1/events", event("d1", base + 5_000, 5.0))
        .status()
        .is_success());
    let got: Vec<(f64, u64)> = (0..4)
        .map(|_| {
            let m = c.of("r");
            (m["value"].as_f64().unwrap(), m["offset"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        [2.0, 3.0, 4.0, 5.0]
    );
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets ascend: {got:?}"
    );
    assert!(got[0].1 > last["offset"].as_u64().unwrap());

    // A position of another run: the current state instead, marked as a snapshot.
    let old = json!({"epoch": 1, "offset": 3});
    let mut c2 = Client::connect(&s, None);
    let ack = c2.subscribe("r", "readings", sel, Some(&old));
    assert_eq!(ack["resume"], "snapshot");
    let snap = c2.of("r");
    assert_eq!(snap["snapshot"], true, "{snap}");
    assert_eq!(snap["value"], 5.0);
    assert_eq!(snap["timestamp"], base + 5_000);
    assert!(metric(&s.metrics(), "strata_live_snapshots_total") >= 1.0);

    // Tenants are apart: another tenant's client sees nothing of this one.
    let mut other = Client::connect(&s, Some("acme"));
    other.subscribe("r", "readings", sel, None);
    assert!(s
        .post("/api/v1/events", event("d1", base + 6_000, 6.0))
        .status()
        .is_success());
    assert_eq!(c.of("r")["value"], 6.0);
    let r = s
        .client
        .post(s.url("/api/v1/events"))
        .header("X-Scope-OrgID", "acme")
        .body(event("d1", base + 7_000, 7.0))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(other.of("r")["value"], 7.0);
}

#[test]
fn bad_requests_get_an_error_and_the_documented_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!("{CONFIG}\n[live]\nmax_message_bytes = 1024\nmax_subscriptions = 2\n"),
    );
    let mut c = Client::connect(&s, None);
    let cases = [
        (
            json!({"subscribe": {"id": "a", "kind": "readings", "selector": "temperature{"}}),
            "invalid series selector",
        ),
        (
            json!({"subscribe": {"id": "b", "kind": "gossip", "selector": "up"}}),
            "kind",
        ),
        (
            json!({"subscribe": {"id": "c", "kind": "readings"}}),
            "needs a \"selector\"",
        ),
        (
            json!({"subscribe": {"id": "d", "kind": "readings", "selector": "{x=\"\"}"}}),
            "non-empty matcher",
        ),
        (json!({"unsubscribe": {"id": "nope"}}), "no subscription"),
        (json!({"publish": {}}), "unknown field"),
    ];
    for (req, says) in cases {
        c.send(&req);
        let e = c.message();
        let msg = e["error"].as_str().unwrap_or_else(|| panic!("{req}: {e}"));
        assert!(msg.contains(says), "{req}: {msg}");
    }
    c.send_text("not json");
    assert!(c.message()["error"].as_str().unwrap().len() > 5);
    c.ws.send(Message::Binary(vec![1, 2, 3].into())).unwrap();
    assert!(c.message()["error"].as_str().unwrap().contains("binary"));
    // The connection is kept: a good subscription still works.
    c.subscribe("ok", "readings", r#"temperature{device="d1"}"#, None);
    c.subscribe("ok2", "readings", r#"temperature{device="d2"}"#, None);
    c.send(&json!({"subscribe": {"id": "x", "kind": "readings", "selector": "up"}}));
    let e = c.message();
    assert!(
        e["error"].as_str().unwrap().contains("max_subscriptions"),
        "{e}"
    );
    assert_eq!(e["id"], "x");
    // Unsubscribing answers, and frees a place.
    c.send(&json!({"unsubscribe": {"id": "ok2"}}));
    assert_eq!(c.message()["event"], "unsubscribed");
    assert!(s
        .post("/api/v1/events", event("d1", minute_ago(10), 1.0))
        .status()
        .is_success());
    assert_eq!(c.of("ok")["value"], 1.0);

    // Oversized: an error naming the limit, then close 1009.
    let big = format!(
        r#"{{"subscribe":{{"id":"big","kind":"readings","selector":"up{{a=\"{}\"}}"}}}}"#,
        "x".repeat(2000)
    );
    c.send_text(&big);
    let e = c.message();
    assert!(e["error"].as_str().unwrap().contains("1024"), "{e}");
    let closed = c.next().unwrap_err();
    assert_eq!(closed.code, 1009, "{closed:?}");
    // Far past the limit: refused by the socket itself, also with 1009.
    let mut c = Client::connect(&s, None);
    c.send_text(&"y".repeat(100_000));
    let closed = c.next().unwrap_err();
    assert_eq!(closed.code, 1009, "{closed:?}");
    // Not a WebSocket: a 400 that says so.
    let r = s.client.get(s.url("/api/v1/stream")).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("WebSocket"));
    let m = s.metrics();
    assert!(metric(&m, "strata_live_bad_requests_total") >= 10.0);
    // The server is fine.
    assert!(s
        .client
        .get(s.url("/health"))
        .send()
        .unwrap()
        .status()
        .is_success());
}

#[test]
fn a_client_that_cannot_keep_up_is_closed_with_4008_and_may_resume() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &format!("{CONFIG}\n[live]\nqueue = 64\n"));
    let mut c = Client::connect(&s, None);
    // The acknowledgement's position is where a client that received nothing resumes from.
    let ack = c.subscribe("all", "readings", r#"{__name__="temperature"}"#, None);
    c.subscribe("w", "windows", r#"temperature{device="d0"}"#, None);
    // The client stops reading while far more is written than socket buffers hold.
    let base = minute_ago(30);
    for batch in 0..40 {
        let body: String = (0..2_000)
            .map(|i| {
                event(
                    &format!("d{i}"),
                    base + batch * 1_000 + 1,
                    f64::from(i as u32),
                )
            })
            .collect();
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut last = ack;
    let closed = loop {
        match c.next() {
            Ok(m) => {
                if m["id"] == "all" {
                    last = m;
                }
            }
            Err(closed) => break closed,
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never closed");
    };
    assert_eq!(closed.code, 4008, "{closed:?}");
    assert!(closed.reason.contains("too slow"), "{closed:?}");
    let m = s.metrics();
    assert_eq!(metric(&m, "strata_live_slow_closes_total"), 1.0);
    assert!(metric(&m, "strata_live_dropped_total") > 0.0);
    // Writes were never held back: every one was acknowledged above, and stored.
    let q = s
        .client
        .get(s.url("/api/v1/query"))
        .query(&[("query", "count(count_over_time(temperature[1h]))")])
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(q["data"]["result"][0]["value"][1], "2000");
    // It resumes from what it last received (readings kept while its subscription lingered).
    let mut c = Client::connect(&s, None);
    let ack = c.subscribe(
        "all",
        "readings",
        r#"{__name__="temperature"}"#,
        Some(&last),
    );
    assert!(
        ack["resume"] == "replayed" || ack["resume"] == "snapshot",
        "{ack}"
    );
    assert!(c.of("all")["value"].is_number());
}

#[test]
fn pending_updates_of_one_window_are_conflated_for_a_client_that_lags() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let mut c = Client::connect(&s, None);
    c.shrink_receive_buffer();
    c.subscribe("w", "windows", r#"temperature{device="d1"}"#, None);
    // Each write is its own commit, so each changes the window's provisional state; long labels
    // make the updates outgrow the sockets' buffers while the client does not read.
    let base = minute_ago(30);
    let pad = "p".repeat(2_000);
    let n = 400;
    for i in 0..n {
        let body = format!(
            r#"{{"device_id":"d1","timestamp":{},"readings":{{"temperature":{i}}},"labels":{{"pad":"{pad}"}}}}"#,
            base + 1 + i * 100
        );
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    // What arrives is in order, never an older state after a newer, and ends with the newest.
    let mut counts = Vec::new();
    while counts.last() != Some(&(n as u64)) {
        let w = c.of("w");
        assert_eq!(w["state"], "provisional", "{w}");
        counts.push(w["count"].as_u64().unwrap());
    }
    assert!(counts.windows(2).all(|p| p[0] < p[1]), "{counts:?}");
    assert!(
        counts.len() < n as usize,
        "{} updates, none merged",
        counts.len()
    );
    // The drain that sent the newest counted every merge before it.
    let conflated = metric(&s.metrics(), "strata_live_conflated_total");
    assert_eq!(
        counts.len() as f64 + conflated,
        n as f64,
        "each update was sent or merged"
    );
}

#[test]
fn alerts_stream_as_they_fire_and_resolve_and_a_snapshot_lists_the_active() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let rule = json!({"rule_id": "hot", "device_id": "d1", "metric": "temperature",
                      "operator": ">", "threshold": 50, "severity": "critical"});
    assert_eq!(
        s.post("/api/v1/alert-rules", rule.to_string())
            .status()
            .as_u16(),
        201
    );
    let mut c = Client::connect(&s, None);
    c.send(&json!({"subscribe": {"id": "a", "kind": "alerts"}}));
    assert_eq!(c.message()["event"], "subscribed");
    c.send(&json!({"subscribe": {"id": "an", "kind": "anomalies"}}));
    assert_eq!(c.message()["event"], "subscribed");
    let base = minute_ago(30);
    for (i, v) in [60.0, 61.0, 62.0].iter().enumerate() {
        let body = event("d1", base + i as i64 * 5_000, *v);
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    let fired = c.of("a");
    assert_eq!(fired["kind"], "alerts");
    assert_eq!(fired["state"], "firing", "{fired}");
    assert_eq!(fired["labels"]["alertname"], "hot");
    assert_eq!(fired["labels"]["device"], "d1");
    assert_eq!(fired["labels"]["severity"], "critical");
    assert_eq!(fired["value"], 60.0);
    assert_eq!(fired["active_at"], base);

    // A client that asks for a snapshot is told what is active now.
    let mut late = Client::connect(&s, None);
    late.send(&json!({"subscribe": {"id": "s", "kind": "alerts", "selector": "{device=\"d1\"}", "snapshot": true}}));
    let ack = late.message();
    assert_eq!(ack["resume"], "snapshot", "{ack}");
    let snap = late.of("s");
    assert_eq!(snap["snapshot"], true);
    assert_eq!(snap["state"], "firing");
    assert_eq!(snap["labels"]["alertname"], "hot");

    for (i, v) in [40.0, 41.0].iter().enumerate() {
        let body = event("d1", base + (3 + i as i64) * 5_000, *v);
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    let resolved = c.of("a");
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["labels"], fired["labels"]);
    assert!(resolved["resolved_at"].as_i64().unwrap() >= base + 15_000);
    assert!(resolved["offset"].as_u64() > fired["offset"].as_u64());
    assert_eq!(late.of("s")["state"], "resolved");
}

#[test]
fn rule_file_alerts_stream_when_their_state_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: Hot\n        expr: temperature > 80\n        labels:\n          team: plant\n",
    )
    .unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            "partitions = 1\n[alerting]\nrule_files = [{rules:?}]\nevaluation_interval = \"1s\"\n"
        ),
    );
    let mut c = Client::connect(&s, None);
    c.subscribe("a", "alerts", r#"{alertname="Hot"}"#, None);
    assert!(s
        .post("/api/v1/events", event("d1", now_ms(), 90.0))
        .status()
        .is_success());
    let fired = c.of("a");
    assert_eq!(fired["state"], "firing", "{fired}");
    assert_eq!(fired["labels"]["device"], "d1");
    assert_eq!(fired["labels"]["team"], "plant");
    assert_eq!(fired["value"], 90.0);
    // Evaluations that change nothing push nothing: the next message is the resolution.
    assert!(s
        .post("/api/v1/events", event("d1", now_ms(), 20.0))
        .status()
        .is_success());
    let next = c.of("a");
    assert_eq!(next["state"], "resolved", "{next}");
}

#[test]
fn shadow_changes_stream_reported_then_desired_and_a_snapshot_holds_both() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let mut c = Client::connect(&s, None);
    c.subscribe("sh", "shadows", r#"{device="d1"}"#, None);
    let base = minute_ago(30);
    assert!(s
        .post("/api/v1/events", event("d1", base + 20_000, 21.5))
        .status()
        .is_success());
    let r = c.of("sh");
    assert_eq!(r["kind"], "shadows");
    assert_eq!(r["device"], "d1");
    assert_eq!(r["reported"], json!({"temperature": 21.5}));
    assert_eq!(r["timestamp"], base + 20_000);
    assert_eq!(r["labels"]["__name__"], "temperature");
    // An older reading (late) and another device change nothing of d1's shadow; a newer does.
    for body in [
        event("d1", base + 10_000, 5.0),
        event("d2", base + 30_000, 9.0),
        event("d1", base + 40_000, 22.0),
    ] {
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    let r = c.of("sh");
    assert_eq!(
        (
            r["reported"]["temperature"].as_f64(),
            r["timestamp"].as_i64()
        ),
        (Some(22.0), Some(base + 40_000)),
        "{r}"
    );
    // A desired change, as the shadow API answers it.
    let patch = s
        .client
        .patch(s.url("/api/v1/devices/d1/shadow"))
        .body(r#"{"state":{"desired":{"setpoint":19}},"version":0}"#)
        .send()
        .unwrap();
    assert_eq!(patch.status(), 200);
    let d = c.of("sh");
    assert_eq!(d["labels"], json!({"device": "d1"}));
    assert_eq!(d["desired"], json!({"setpoint": 19}));
    assert_eq!(d["delta"], json!({"setpoint": 19}));
    assert_eq!(d["version"], 1);
    // A new subscriber's snapshot: the reported reading and the desired state.
    let mut late = Client::connect(&s, None);
    late.send(&json!({"subscribe": {"id": "s", "kind": "shadows", "selector": "{device=\"d1\"}", "snapshot": true}}));
    assert_eq!(late.message()["resume"], "snapshot");
    let (a, b) = (late.of("s"), late.of("s"));
    assert!(a["snapshot"] == true && b["snapshot"] == true);
    assert_eq!(a["reported"]["temperature"], 22.0, "{a}");
    assert_eq!(b["version"], 1, "{b}");
}

#[test]
fn group_rollups_stream_once_every_shard_closed_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            "{CONFIG}[[rollups.groups]]\nmetric = \"temperature\"\nby = [\"site\"]\noutputs = [\"avg\"]\n"
        ),
    );
    let mut c = Client::connect(&s, None);
    c.subscribe(
        "g",
        "groups",
        r#"{__name__=~"temperature:.*",site="s1"}"#,
        None,
    );
    let at_site = |d: &str, ts: i64, v: f64, site: &str| {
        format!(
            r#"{{"device_id":"{d}","timestamp":{ts},"readings":{{"temperature":{v}}},"labels":{{"site":"{site}"}}}}"#
        )
    };
    let base = minute_ago(30);
    for body in [
        at_site("d1", base + 10_000, 10.0, "s1"),
        at_site("d2", base + 20_000, 20.0, "s1"),
        at_site("d3", base + 20_000, 99.0, "s2"),
        // The watermark passes the window.
        at_site("d1", base + 5 * MIN, 11.0, "s1"),
    ] {
        assert!(s.post("/api/v1/events", body).status().is_success());
    }
    let g = c.of("g");
    assert_eq!(g["kind"], "groups");
    assert_eq!(
        g["labels"],
        json!({"__name__": "temperature:1m_by_site_avg", "site": "s1"})
    );
    assert_eq!(g["timestamp"], base + MIN, "written at the window's end");
    assert_eq!(g["value"], 15.0);
    let mut snap = Client::connect(&s, None);
    snap.send(&json!({"subscribe": {"id": "s", "kind": "groups", "selector": "{site=\"s1\"}", "snapshot": true}}));
    assert_eq!(snap.message()["resume"], "snapshot");
    let first = snap.of("s");
    assert_eq!(first["snapshot"], true);
    assert_eq!(first["labels"]["__name__"], "temperature:1m_by_site_avg");
}

#[test]
fn a_query_subscription_is_evaluated_at_each_window_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let base = minute_ago(3);
    for (d, v) in [("d1", 10.0), ("d2", 30.0)] {
        assert!(s
            .post("/api/v1/events", event(d, base + 10_000, v))
            .status()
            .is_success());
    }
    // Another metric moves the watermark past their window.
    let other = format!(
        r#"{{"device_id":"d9","timestamp":{},"readings":{{"other":1}}}}"#,
        now_ms()
    );
    assert!(s.post("/api/v1/events", other).status().is_success());
    let mut c = Client::connect(&s, None);
    // A bad expression is refused, the connection kept.
    c.send(&json!({"subscribe": {"id": "bad", "kind": "query", "expr": "sum("}}));
    let e = c.message();
    assert_eq!(e["id"], "bad");
    assert!(
        e["error"].as_str().unwrap().contains("invalid expression"),
        "{e}"
    );
    let ack = {
        c.send(&json!({"subscribe": {"id": "q", "kind": "query", "expr": "avg(last_over_time(temperature[10m]))"}}));
        c.message()
    };
    assert_eq!(ack["event"], "subscribed", "{ack}");
    // The result at once, as the Prometheus API's data, at the latest window close.
    let first = c.of("q");
    assert_eq!(first["kind"], "query");
    assert_eq!(first["data"]["resultType"], "vector");
    assert_eq!(first["data"]["result"][0]["value"][1], "20");
    let t0 = first["timestamp"].as_i64().unwrap();
    assert_eq!(t0 % MIN, 0, "a window boundary");
    // A newer reading moves the watermark past another window: evaluated again, later.
    assert!(s
        .post("/api/v1/events", event("d1", now_ms() + 2 * MIN, 50.0))
        .status()
        .is_success());
    let next = c.of("q");
    assert!(next["timestamp"].as_i64().unwrap() > t0, "{next}");
    assert_eq!(next["data"]["resultType"], "vector");
}
