//! A simulated device fleet that sends realistic JSON events, with the mess real fleets make:
//! redeliveries, out-of-order and late events, and bursts after a disconnect.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Fleet shape and delivery faults.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where to POST events (`.../api/v1/events`).
    pub url: String,
    /// Number of sites.
    pub sites: usize,
    /// Devices per site.
    pub devices_per_site: usize,
    /// Seconds between a device's readings.
    pub interval: Duration,
    /// Stop after this long (None: run until killed).
    pub duration: Option<Duration>,
    /// Seed of the pseudo-random faults, for repeatable runs.
    pub seed: u64,
    /// Show a progress line on the terminal.
    pub progress: bool,
}

/// splitmix64: small, fast, repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const TYPES: [&str; 3] = ["sensor", "meter", "gateway"];

struct Device {
    id: String,
    site: usize,
    kind: &'static str,
    temperature: f64,
    humidity: f64,
    battery: f64,
    energy: f64,
    /// Intervals left offline; readings pile up in `buffer` and arrive as a burst.
    offline: u32,
    buffer: Vec<String>,
}

/// The fleet's devices as the registry knows them: id, site, region and type as their events
/// carry them, and a model and firmware version they do not send (so enrichment shows).
pub fn registry_devices(cfg: &FleetConfig) -> Vec<strata_meta::registry::Device> {
    fleet(cfg)
        .iter()
        .enumerate()
        .map(|(i, d)| strata_meta::registry::Device {
            id: d.id.clone(),
            name: Some(format!("{} {}", d.kind, i + 1)),
            device_type: Some(d.kind.to_string()),
            model: Some(format!("{}-{}", d.kind.to_uppercase(), 100 + 100 * (i % 3))),
            firmware: Some(format!("1.{}.{}", i % 4, i % 7)),
            site: Some(format!("site-{:02}", d.site)),
            region: Some(format!("r{}", d.site % 3)),
            location: None,
            owner: Some("demo".into()),
            provisioned: Some("2026-01-15".into()),
            active: true,
            expected_interval: Some(format!("{}s", cfg.interval.as_secs().max(1))),
            labels: Default::default(),
        })
        .collect()
}

/// The fleet's devices in their initial state.
fn fleet(cfg: &FleetConfig) -> Vec<Device> {
    (0..cfg.sites * cfg.devices_per_site)
        .map(|i| Device {
            id: format!("dev-{i:05}"),
            site: i / cfg.devices_per_site.max(1),
            kind: TYPES[i % TYPES.len()],
            temperature: 18.0 + (i % 10) as f64,
            humidity: 40.0 + (i % 20) as f64,
            battery: 100.0,
            energy: 0.0,
            offline: 0,
            buffer: Vec::new(),
        })
        .collect()
}

impl Device {
    /// Moves the readings one interval on.
    fn advance(&mut self, rng: &mut Rng) {
        self.temperature = (self.temperature + (rng.unit() - 0.5) * 0.4).clamp(-10.0, 45.0);
        self.humidity = (self.humidity + (rng.unit() - 0.5)).clamp(5.0, 95.0);
        self.battery = if self.battery <= 5.0 {
            100.0
        } else {
            self.battery - rng.unit() * 0.05
        };
        self.energy += rng.unit() * 10.0;
    }
}

/// One event as NDJSON. Its id is the device and the event time: a redelivery repeats it, and a
/// restarted simulation (same seed, same data directory) is not taken for one.
fn event_json(d: &Device, ts_ms: i64, rng: &mut Rng) -> String {
    let mut s = String::with_capacity(320);
    let error = if rng.unit() < 0.01 {
        1 + (rng.next() % 5) as i64
    } else {
        0
    };
    let _ = write!(
        s,
        r#"{{"event_id":"{id}-{ts_ms}","device_id":"{id}","timestamp":{ts_ms},"readings":{{"temperature_celsius":{t:.1},"humidity_percent":{h:.1},"battery_percent":{b:.1},"power_watts":{p:.0},"energy_wh_total":{e:.0},"error_code":{error}}},"labels":{{"site":"site-{site:02}","region":"r{region}","type":"{kind}"}}}}"#,
        id = d.id,
        t = d.temperature,
        h = d.humidity,
        b = d.battery,
        p = 50.0 + rng.unit() * 200.0,
        e = d.energy,
        site = d.site,
        region = d.site % 3,
        kind = d.kind,
    );
    s
}

/// Runs the fleet until `duration` passes (or forever). Returns events sent.
pub fn run(cfg: &FleetConfig) -> anyhow::Result<u64> {
    let mut rng = Rng(cfg.seed);
    let mut devices = fleet(cfg);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // Events held back to arrive late: (ticks to wait, body line).
    let mut delayed: VecDeque<(u32, String)> = VecDeque::new();
    let mut recent: VecDeque<String> = VecDeque::new();
    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .expect("static template"),
        );
        b
    });
    let started = Instant::now();
    let (mut sent, mut errors, mut dups, mut late) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let tick = Instant::now();
        let now = strata_model::time::now_ms();
        let mut body = String::new();
        for d in &mut devices {
            d.advance(&mut rng);
            let line = event_json(d, now, &mut rng);
            if d.offline == 0 && rng.unit() < 0.002 {
                d.offline = 3 + (rng.next() % 10) as u32;
            }
            if d.offline > 0 {
                d.offline -= 1;
                d.buffer.push(line);
                if d.offline == 0 {
                    for l in d.buffer.drain(..) {
                        body.push_str(&l);
                        body.push('\n');
                    }
                }
                continue;
            }
            let r = rng.unit();
            if r < 0.02 {
                // Out of order (a few ticks) or late (beyond a couple of minutes).
                let wait = if r < 0.005 {
                    150 / cfg.interval.as_secs().max(1) as u32 + 1
                } else {
                    1 + (rng.next() % 3) as u32
                };
                delayed.push_back((wait, line));
                late += 1;
                continue;
            }
            body.push_str(&line);
            body.push('\n');
            recent.push_back(line);
            if recent.len() > 1000 {
                recent.pop_front();
            }
        }
        for _ in 0..delayed.len() {
            if let Some((w, l)) = delayed.pop_front() {
                if w <= 1 {
                    body.push_str(&l);
                    body.push('\n');
                } else {
                    delayed.push_back((w - 1, l));
                }
            }
        }
        // Redeliveries: an at-least-once client resending what it already sent.
        for _ in 0..(devices.len() / 50).max(1) {
            if let Some(l) = recent.get((rng.next() % recent.len().max(1) as u64) as usize) {
                body.push_str(l);
                body.push('\n');
                dups += 1;
            }
        }
        let lines = body.lines().count() as u64;
        match client
            .post(&cfg.url)
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
        {
            Ok(r) if r.status().is_success() => sent += lines,
            Ok(r) => {
                errors += 1;
                tracing::warn!(
                    "simulator: server answered {}: {}",
                    r.status(),
                    r.text().unwrap_or_default()
                );
            }
            Err(e) => {
                errors += 1;
                tracing::warn!("simulator: {e}");
            }
        }
        if let Some(b) = &bar {
            b.set_message(format!(
                "{} devices, {sent} events sent ({dups} redelivered, {late} delayed), {errors} failed requests",
                devices.len()
            ));
            b.tick();
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        std::thread::sleep(cfg.interval.saturating_sub(tick.elapsed()));
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(sent)
}

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    /// Events acknowledged.
    pub events: u64,
    /// Readings (samples) they carried.
    pub samples: u64,
    /// Wall time of the sending phase.
    pub seconds: f64,
    /// Requests that failed.
    pub failed_requests: u64,
}

/// Readings per event of [`event_json`].
const READINGS_PER_EVENT: u64 = 6;

/// Sends `span` of the fleet's history, ending now, as fast as the server takes it, over
/// `connections` concurrent connections in batches of `batch` events. The bodies are built
/// before the clock starts, so the figure is the server's, not the generator's.
pub fn backfill(
    cfg: &FleetConfig,
    span: Duration,
    connections: usize,
    batch: usize,
) -> anyhow::Result<BackfillReport> {
    let mut rng = Rng(cfg.seed);
    let mut devices = fleet(cfg);
    let step = cfg.interval.as_millis().max(1) as i64;
    let end = strata_model::time::now_ms();
    let mut t = end - span.as_millis() as i64;
    let mut bodies: Vec<String> = Vec::new();
    let mut body = String::new();
    let mut lines = 0;
    while t < end {
        for d in &mut devices {
            d.advance(&mut rng);
            body.push_str(&event_json(d, t, &mut rng));
            body.push('\n');
            lines += 1;
            if lines == batch {
                bodies.push(std::mem::take(&mut body));
                lines = 0;
            }
        }
        t += step;
    }
    if !body.is_empty() {
        bodies.push(body);
    }
    let events = (bodies.iter().map(|b| b.lines().count()).sum::<usize>()) as u64;
    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(bodies.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} requests, {elapsed} elapsed, {eta} left",
            )
            .expect("static template"),
        );
        b
    });
    let queue = std::sync::Mutex::new(bodies.into_iter());
    let failed = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..connections.max(1) {
            s.spawn(|| {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("http client");
                loop {
                    let Some(b) = queue.lock().expect("queue").next() else {
                        break;
                    };
                    let ok = client
                        .post(&cfg.url)
                        .header("Content-Type", "application/x-ndjson")
                        .body(b)
                        .send()
                        .is_ok_and(|r| r.status().is_success());
                    if !ok {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                }
            });
        }
    });
    if let Some(b) = bar {
        b.finish();
    }
    Ok(BackfillReport {
        events,
        samples: events * READINGS_PER_EVENT,
        seconds: started.elapsed().as_secs_f64(),
        failed_requests: failed.into_inner(),
    })
}
