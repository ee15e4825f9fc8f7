//! Push latency and ingest cost of the live stream, against a running server
//! (`bench/stream.sh` starts one):
//!
//! `stream_bench latency URL SUBSCRIBERS`: SUBSCRIBERS connections each subscribe to the
//! readings of device `probe`; one reading a 20 ms is written, and each subscriber's receipt
//! is timed from the write's acknowledgement. Prints p50 and p99 in ms.
//!
//! `stream_bench ingest URL SUBSCRIBERS SECONDS FLEET`: SUBSCRIBERS connections each subscribe
//! to one device's readings (`d0`, `d1`…) while two writers send batches of a fleet of FLEET
//! devices (2,000 events a request, every device in turn) for SECONDS; prints events/s and
//! the messages pushed. `ingest-one-thread` is the same with every subscriber read by one
//! thread (tasks of a tokio runtime): the clients' share of this machine's cores shrinks to
//! about what remote clients cost it (nothing but their sockets).
//!
//! `stream_bench hold URL CONNECTIONS SECONDS`: opens CONNECTIONS, each with one
//! subscription, and holds them (for the server's memory per connection).

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn subscribe(url: &str, selector: &str) -> Socket {
    let ws_url = url.replace("http://", "ws://") + "/api/v1/stream";
    let (mut ws, _) = tungstenite::connect(ws_url).expect("connect");
    let sub =
        serde_json::json!({"subscribe": {"id": "s", "kind": "readings", "selector": selector}});
    ws.send(Message::Text(sub.to_string().into())).unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["event"], "subscribed", "{v}");
            return ws;
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn latency(url: &str, subscribers: usize) {
    const WRITES: usize = 200;
    let acked: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; WRITES]));
    let received: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut threads = Vec::new();
    let sockets: Vec<Socket> = (0..subscribers)
        .map(|_| subscribe(url, r#"bench_probe{device="probe"}"#))
        .collect();
    for mut ws in sockets {
        let received = received.clone();
        threads.push(std::thread::spawn(move || {
            let mut got = 0;
            while got < WRITES {
                let Ok(Message::Text(t)) = ws.read() else {
                    continue;
                };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if let Some(i) = v["value"].as_f64() {
                    received.lock().unwrap().push((i as usize, at));
                    got += 1;
                }
            }
        }));
    }
    let client = reqwest::blocking::Client::new();
    let t0 = now_ms();
    for i in 0..WRITES {
        let body = format!(
            r#"{{"device_id":"probe","timestamp":{},"readings":{{"bench_probe":{i}}}}}"#,
            t0 + i as i64
        );
        let r = client
            .post(format!("{url}/api/v1/events"))
            .body(body)
            .send()
            .unwrap();
        let at = Instant::now();
        assert!(r.status().is_success());
        acked.lock().unwrap()[i] = Some(at);
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap();
    let mut ms: Vec<f64> = received
        .lock()
        .unwrap()
        .iter()
        .map(|&(i, at)| {
            let a = acked[i].unwrap();
            // A push may overtake the acknowledgement's trip back to the writer: 0 then.
            at.checked_duration_since(a)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    let n = ms.len();
    let (p50, p99) = (percentile(&mut ms, 0.5), percentile(&mut ms, 0.99));
    println!("subscribers={subscribers} receipts={n} p50_ms={p50:.2} p99_ms={p99:.2}");
}

/// How the ingest run's subscribers read: a thread each (blocking sockets), or all as tasks
/// of one thread (epoll), as remote clients cost the server's machine nothing.
#[derive(Clone, Copy, PartialEq)]
enum Readers {
    Threads,
    OneThread,
}

fn ingest(url: &str, subscribers: usize, seconds: u64, fleet: usize, how: Readers) {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    if how == Readers::OneThread {
        readers.push(one_thread_readers(
            url,
            subscribers,
            fleet,
            stop.clone(),
            received.clone(),
        ));
    }
    for k in (0..subscribers).filter(|_| how == Readers::Threads) {
        let mut ws = subscribe(url, &format!(r#"temperature{{device="d{}"}}"#, k % fleet));
        if let MaybeTlsStream::Plain(t) = ws.get_ref() {
            t.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        let (stop, received) = (stop.clone(), received.clone());
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Message::Text(_)) = ws.read() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let events = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let base = now_ms() - 3_600_000;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (url, events) = (url.to_string(), events.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut n = 0usize;
                while start.elapsed() < Duration::from_secs(seconds) {
                    let mut body = String::with_capacity(2000 * 90);
                    for i in 0..2000 {
                        // Each writer walks the whole fleet, one reading a device a round.
                        let d = (n + w * fleet / 2) % fleet;
                        let ts = base + (n / fleet) as i64 * 10 + w as i64;
                        n += 1;
                        body.push_str(&format!(
                            r#"{{"device_id":"d{d}","timestamp":{ts},"readings":{{"temperature":{}}}}}"#,
                            i % 50
                        ));
                        body.push('\n');
                    }
                    let r = client.post(format!("{url}/api/v1/events")).body(body).send().unwrap();
                    assert!(r.status().is_success(), "{:?}", r.text());
                    events.fetch_add(2000, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let n = events.load(Ordering::Relaxed) as f64;
    println!(
        "subscribers={subscribers} events_per_s={:.0} pushed={}",
        n / secs,
        received.load(Ordering::Relaxed)
    );
}

/// Subscribes `subscribers` connections as in [`ingest`] and reads them all on one thread
/// (a current-thread tokio runtime), counting text messages until `stop`.
fn one_thread_readers(
    url: &str,
    subscribers: usize,
    fleet: usize,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ws_url = url.replace("http://", "ws://") + "/api/v1/stream";
    let sockets = rt.block_on(async {
        let mut out = Vec::new();
        for k in 0..subscribers {
            let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .expect("connect");
            let selector = format!(r#"temperature{{device="d{}"}}"#, k % fleet);
            let sub = serde_json::json!({"subscribe": {"id": "s", "kind": "readings", "selector": selector}});
            ws.send(Message::Text(sub.to_string().into())).await.unwrap();
            loop {
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    assert!(t.as_str().contains("\"subscribed\""), "{t}");
                    break;
                }
            }
            out.push(ws);
        }
        out
    });
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for mut ws in sockets {
                let received = received.clone();
                tasks.spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tasks.abort_all();
        })
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: stream_bench latency URL SUBSCRIBERS | ingest|ingest-one-thread URL SUBSCRIBERS SECONDS FLEET | hold URL CONNECTIONS SECONDS";
    match args.get(1).map(String::as_str) {
        Some("latency") => latency(&args[2], args[3].parse().expect(usage)),
        Some(mode @ ("ingest" | "ingest-one-thread")) => ingest(
            &args[2],
            args[3].parse().expect(usage),
            args[4].parse().expect(usage),
            args[5].parse().expect(usage),
            if mode == "ingest" {
                Readers::Threads
            } else {
                Readers::OneThread
            },
        ),
        Some("hold") => {
            let n: usize = args[3].parse().expect(usage);
            let held: Vec<Socket> = (0..n)
                .map(|k| subscribe(&args[2], &format!(r#"temperature{{device="d{k}"}}"#)))
                .collect();
            println!("holding {} connections", held.len());
            std::thread::sleep(Duration::from_secs(args[4].parse().expect(usage)));
        }
        _ => eprintln!("{usage}"),
    }
}
