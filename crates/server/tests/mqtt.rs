//! The MQTT source against a real mosquitto (Debian's `mosquitto`, started here on a loopback
//! port with its own config) and its real clients (`mosquitto_pub`, `mosquitto_sub`) as devices:
//! QoS 1 delivery acknowledged after durability, a SIGKILL mid-stream that loses and doubles
//! nothing, messages queued at the broker while Strata is down, bad payloads counted and
//! dead-lettered, a shadow delta published to the device, and a broker restart survived.

mod common;

use common::{free_port, metric, now_ms, wait_for, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Broker {
    child: Child,
    port: u16,
    bin: &'static str,
    conf: PathBuf,
}

/// Publishes each line as one message on `topic` at QoS 1 (`mosquitto_pub -l`): once it
/// returns, the broker has acknowledged every one.
fn publish(port: u16, topic: &str, lines: &[String]) {
    let mut c = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (package mosquitto-clients)");
    let mut stdin = c.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(c.wait().unwrap().success(), "mosquitto_pub failed");
}

impl Broker {
    /// Starts mosquitto on `port` with persistence in `dir`; `None` when it is not installed.
    fn start(dir: &Path, port: u16) -> Option<Broker> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n\
                 persistence_location {}/\nmax_inflight_messages 200\nmax_queued_messages 100000\n\
                 log_type error\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let b = Broker {
            child,
            port,
            bin,
            conf,
        };
        wait_for("mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(b)
    }

    /// Stops it as an operator would (it saves its sessions), and starts it again.
    fn restart(&mut self) {
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
        self.child = Command::new(self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let port = self.port;
        wait_for("mosquitto to listen again", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn publish(&self, topic: &str, lines: &[String]) {
        publish(self.port, topic, lines);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source_metric(text: &str, name: &str) -> f64 {
    metric(text, &format!("{name}{{source=\"devices\"}}"))
}

/// Events `from..to` of device `d-1`, one second apart from `base`, with event ids.
fn events(base: i64, from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| {
            format!(
                r#"{{"event_id":"e-{i}","timestamp":{},"readings":{{"temperature":{i}}}}}"#,
                base + i as i64 * 1000
            )
        })
        .collect()
}

/// Every value of `temperature{device="d-1"}`, checked one sample per timestamp.
fn values(s: &Server) -> Vec<i64> {
    let rows = s.export(r#"temperature{device="d-1"}"#);
    let mut out = Vec::new();
    for (_, points) in rows {
        for (t, v) in points {
            out.push((t, v as i64));
        }
    }
    out.sort();
    let n = out.len();
    out.dedup_by_key(|p| p.0);
    assert_eq!(out.len(), n, "one sample per timestamp");
    out.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn mqtt_qos1_survives_sigkill_downtime_bad_payloads_and_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut broker) = Broker::start(&dir.path().join("broker"), port) else {
        eprintln!(
            "skipping: mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        );
        return;
    };
    let cfg = format!(
        r#"
[limits]
max_body_bytes = 4096
[[sources.mqtt]]
name = "devices"
url = "mqtt://127.0.0.1:{port}"
topics = ["devices/+/telemetry"]
device_from_topic = "devices/{{device_id}}/telemetry"
dead_letter_topic = "strata/dead"
"#
    );
    // The dead-letter topic's reader, subscribed before anything is sent.
    let dead = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "strata/dead", "-C", "3", "-W", "120"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s = Server::start(dir.path(), &cfg);
    wait_for("the source to connect", || {
        source_metric(&s.metrics(), "strata_source_connected") == 1.0
    });
    let base = (now_ms() - 3_600_000) / 60_000 * 60_000;

    // QoS 1 delivery, with three bad payloads among good ones.
    broker.publish("devices/d-1/telemetry", &events(base, 0, 100));
    let big = format!(
        r#"{{"readings":{{"temperature":1}},"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    broker.publish(
        "devices/d-1/telemetry",
        &[
            "not json".to_string(),
            r#"{"readings":{"temperature":"hot"}}"#.to_string(),
            big,
        ],
    );
    wait_for("103 messages acknowledged", || {
        source_metric(&s.metrics(), "strata_source_acked_total") == 103.0
    });
    assert_eq!(values(&s), (0..100).collect::<Vec<_>>());
    // A desired change the device has not reported yet is published to it as a delta.
    let delta = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "devices/d-1/shadow/delta", "-C", "1", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = s
        .client
        .patch(s.url("/api/v1/devices/d-1/shadow"))
        .body(r#"{"state":{"desired":{"temperature":99,"setpoint":21}},"version":0}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let delta = delta.wait_with_output().unwrap();
    let delta: serde_json::Value = serde_json::from_slice(&delta.stdout).unwrap();
    // temperature 99 is what the device reported last (event 99): no delta for it.
    assert_eq!(delta["state"], serde_json::json!({"setpoint": 21}));
    assert_eq!(delta["version"], 1);
    assert_eq!(
        source_metric(&s.metrics(), "strata_source_shadow_deltas_published_total"),
        1.0
    );
    let m = s.metrics();
    for reason in ["syntax", "string_field", "too_large"] {
        assert_eq!(
            metric(
                &m,
                &format!("strata_source_bad_total{{source=\"devices\",reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(source_metric(&m, "strata_source_dead_lettered_total"), 3.0);
    let dead = dead.wait_with_output().unwrap();
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(dead.contains("not json") && dead.contains("hot"), "{dead}");

    // SIGKILL in the middle of a stream: the broker redelivers what was not acknowledged.
    let publisher = {
        let lines = events(base, 100, 3100);
        std::thread::spawn(move || publish(port, "devices/d-1/telemetry", &lines))
    };
    wait_for("part of the stream acknowledged", || {
        source_metric(&s.metrics(), "strata_source_acked_total") > 400.0
    });
    s.kill9();
    publisher.join().unwrap();
    // Queued at the broker while Strata is down, some of them again (redelivered by a device).
    broker.publish("devices/d-1/telemetry", &events(base, 3000, 3500));
    let s = Server::start(dir.path(), &cfg);
    wait_for("every message after the restart", || {
        values(&s).len() == 3500
    });
    assert_eq!(values(&s), (0..3500).collect::<Vec<_>>());

    // The broker restarts: the source reconnects and goes on.
    broker.restart();
    broker.publish("devices/d-1/telemetry", &events(base, 3500, 3600));
    wait_for("messages after the broker's restart", || {
        values(&s).len() == 3600
    });
    let m = s.metrics();
    assert!(source_metric(&m, "strata_source_reconnects_total") >= 1.0);
    assert_eq!(source_metric(&m, "strata_source_in_flight"), 0.0);
    assert_eq!(values(&s), (0..3600).collect::<Vec<_>>());
    s.stop();
}
