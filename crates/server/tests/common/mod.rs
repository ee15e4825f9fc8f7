//! Starts the real `strata` binary on a free loopback port for integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub client: reqwest::blocking::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts `strata serve` on `dir` with extra config TOML, and waits until it answers.
    pub fn start(dir: &Path, extra_toml: &str) -> Server {
        Server::start_with_env(dir, extra_toml, &[])
    }

    /// As [`Server::start`], with environment variables for the server alone.
    pub fn start_with_env(dir: &Path, extra_toml: &str, env: &[(&str, &str)]) -> Server {
        Server::start_with(dir, extra_toml, env, &[])
    }

    /// As [`Server::start_with_env`], with more arguments to `strata serve`.
    pub fn start_with(dir: &Path, extra_toml: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let port = free_port();
        let cfg = dir.join("strata.toml");
        std::fs::write(&cfg, extra_toml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start strata");
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if s.client
                .get(format!("{}/health", s.base))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("strata did not answer on {}", s.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> reqwest::blocking::Response {
        self.client.post(self.url(path)).body(body).send().unwrap()
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.client.get(self.url(path)).send().unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }

    /// Export lines for a selector as (labels, [(ts, value)]).
    pub fn export(&self, selector: &str) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
        self.export_as(selector, None)
    }

    pub fn export_as(
        &self,
        selector: &str,
        tenant: Option<&str>,
    ) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
        let mut req = self
            .client
            .get(self.url("/api/v1/export"))
            .query(&[("match[]", selector)]);
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        let r = req.send().unwrap();
        assert!(r.status().is_success(), "export {selector}: {}", r.status());
        r.text()
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ts: Vec<i64> = v["timestamps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_i64().unwrap())
                    .collect();
                let vs: Vec<f64> = v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN))
                    .collect();
                (v["metric"].clone(), ts.into_iter().zip(vs).collect())
            })
            .collect()
    }

    /// Writes `series` by remote write (as Prometheus sends it) and checks it was taken.
    pub fn remote_write(&self, series: &[SeriesRows<'_>]) {
        let r = self
            .client
            .post(self.url("/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .body(remote_write_body(series))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "remote write: {}", r.status());
    }

    pub fn flush(&self) {
        let r = self
            .client
            .post(self.url("/api/v1/admin/flush"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "strata exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A series' labels and its samples.
pub type SeriesRows<'a> = (Vec<(&'a str, &'a str)>, Vec<(i64, f64)>);

/// A remote-write body, encoded as Prometheus does.
pub fn remote_write_body(series: &[SeriesRows<'_>]) -> Vec<u8> {
    let samples: Vec<Vec<strata_model::Sample>> = series
        .iter()
        .map(|(_, s)| {
            s.iter()
                .map(|(t, v)| strata_model::Sample::new(*t, *v))
                .collect()
        })
        .collect();
    let rows: Vec<strata_ingest::remote_write::SeriesToEncode<'_>> = series
        .iter()
        .zip(&samples)
        .map(|((l, _), s)| (l.as_slice(), s.as_slice()))
        .collect();
    strata_ingest::remote_write::encode(&rows)
}

/// The value of an unlabelled self-metric.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .parse()
        .unwrap()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// JSON device events from 16 devices at `t`: moves every shard's watermark there (each shard
/// sees at least one of them).
pub fn ticks(t: i64) -> String {
    (0..16)
        .map(|k| {
            format!(r#"{{"device_id":"tick{k}","timestamp":{t},"readings":{{"tick":1}}}}"#) + "\n"
        })
        .collect()
}

/// One request a [`Receiver`] took: its path and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: String,
}

/// A local HTTP receiver standing in for a webhook's owner (a real server on loopback that
/// records what it is sent): it answers each request with the next scripted status (then 200),
/// a 503 or 429 with `Retry-After: 1`.
pub struct Receiver {
    pub url: String,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    pub script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (g, sc) = (got.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (g, sc) = (g.clone(), sc.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let status = sc.lock().unwrap().pop_front().unwrap_or(200);
                        if status == 200 {
                            g.lock().unwrap().push(Received {
                                path,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                        }
                        let extra = if status == 503 || status == 429 {
                            "Retry-After: 1\r\n"
                        } else {
                            ""
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\n{extra}Content-Length: 2\r\nContent-Type: text/plain\r\n\r\nno"
                        );
                        if w.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url, got, script }
    }

    /// What it accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Answers the next requests with these statuses.
    pub fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses.iter().copied());
    }
}

/// Waits up to a minute for `f` to hold.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One partition and 1-minute windows that settle soon after the watermark (1 s out of order,
/// 10 s lateness), so a test sees provisional, final and corrected windows within seconds.
pub const FAST_ROLLUPS: &str = r#"
partitions = 1
[rollups]
window = "1m"
out_of_orderness = "1s"
allowed_lateness = "10s"
idle_timeout = "1h"
"#;
