//! The built-in dashboard, in a real browser: Debian's Chromium driven headless by Playwright
//! (`tests/browser/dashboard.py`, installed by `.ci/run`) against `serve --demo`. The overview
//! lists the simulated fleet, a device page draws a reading without a reload, a late reading
//! redraws its corrected minute, a desired change is pushed to the shadow shown, and the query
//! page draws a PromQL result. A failing step saves
//! a screenshot under `target/tmp/dashboard/`. Without Chromium or Playwright the browser test
//! skips, saying so.

mod common;

use common::Server;
use std::process::Command;

const CONFIG: &str = common::FAST_ROLLUPS;

fn browser_available() -> bool {
    std::path::Path::new("/usr/bin/chromium").exists()
        && Command::new("python3")
            .args(["-c", "import playwright.sync_api"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn the_dashboard_shows_the_fleet_live_readings_corrections_and_queries() {
    if !browser_available() {
        eprintln!("skipping: needs /usr/bin/chromium (Debian's chromium) and Playwright (pip install playwright)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), CONFIG, &[], &["--demo"]);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.url(""))
        .arg(&shots)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(text.contains("ok: query_page"), "{text}");
    s.stop();
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let client = reqwest::blocking::Client::new();
    let page = client.get(s.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let etag = page.headers()["etag"].clone();
    let body = page.text().unwrap();
    assert!(body.contains("/ui/app.js") && body.contains("/ui/vendor/uPlot.iife.min.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/ui/vendor/uPlot.LICENSE", "text/plain"),
    ] {
        let r = client.get(s.url(path)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(!r.bytes().unwrap().is_empty());
    }
    // Revalidation costs no body.
    let again = client
        .get(s.url("/"))
        .header("If-None-Match", etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    // Unknown files and escapes are a JSON 404 naming the file.
    for path in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml"] {
        let r = client.get(s.url(path)).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["status"], "error", "{path}");
    }
    s.stop();
}
