"""The built-in dashboard in a real browser: Debian's Chromium, driven headless by Playwright.

Run by crates/server/tests/dashboard.rs against a `serve --demo` server:
    python3 dashboard.py BASE_URL SCREENSHOT_DIR
Each step that fails saves a screenshot of the page as SCREENSHOT_DIR/<step>.png and exits 1.
"""

import json
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

BASE, SHOTS = sys.argv[1], sys.argv[2]
MIN = 60_000
PROBE = "browser-probe-1"


def now_ms():
    return int(time.time() * 1000)


def post_event(device, ts, readings):
    body = json.dumps({"device_id": device, "timestamp": ts, "readings": readings}).encode()
    req = urllib.request.Request(
        BASE + "/api/v1/events", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status


def wait_ready(page):
    """Until the page's socket is open and every subscription is acknowledged."""
    page.wait_for_function("window.strataLive && window.strataLive.ready()", timeout=15_000)


def text(page, selector):
    return page.locator(selector).first.inner_text().strip()


def overview(page):
    page.goto(BASE + "/")
    assert page.title() == "Strata"
    page.wait_for_function(
        "document.getElementById('n-devices').textContent === '100'", timeout=30_000
    )
    sites = page.locator("#sites tbody tr td:first-child").all_inner_texts()
    assert sites == [f"site-{i:02}" for i in range(5)], sites
    assert int(text(page, "#n-online")) + int(text(page, "#n-offline")) == 100
    # The ingest rate needs two polls of /metrics.
    page.wait_for_function(
        "Number(document.getElementById('n-rate').textContent) > 0", timeout=15_000
    )
    # A site's devices, paged, linked to their pages.
    page.click("#sites a >> text=site-01")
    page.wait_for_selector("#devices tbody tr[data-device]")
    rows = page.locator("#devices tbody tr[data-device]")
    assert rows.count() == 20, rows.count()
    assert text(page, "#counts").startswith("20 devices"), text(page, "#counts")


def device_page(page):
    page.goto(BASE + "/#/device/dev-00001")
    page.wait_for_selector("#registry .kv")
    assert "site-00" in text(page, "#registry"), text(page, "#registry")
    page.wait_for_selector("#shadow table")
    # The demo device's charts come from the snapshot of its last hour.
    page.wait_for_selector('.chart[data-metric="temperature_celsius"] canvas', timeout=15_000)


def live_reading_and_windows(page):
    page.goto(BASE + "/#/device/" + PROBE)
    wait_ready(page)
    t = now_ms()
    post_event(PROBE, t, {"probe": 42.125})
    acked = time.monotonic()
    chart = f'.chart[data-metric="probe"]'
    page.wait_for_selector(f'{chart} .now[data-value="42.125"]', timeout=2_000)
    shown = time.monotonic() - acked
    print(f"a reading was drawn {shown * 1000:.0f} ms after its write was acknowledged")
    # Its window is provisional, drawn on the dashed series.
    start = t - (t % MIN) if t % MIN else t - MIN
    row = f'{chart} tr[data-start="{start}"]'
    page.wait_for_selector(row)
    assert text(page, f"{row} .state") == "provisional"
    drawn = page.evaluate(
        """([key, end]) => {
            const c = [...window.strata.charts.values()].find(c => c.labels.__name__ === key);
            const i = c.plot.data[0].indexOf(end / 1000);
            return [c.plot.data[1][i], c.plot.data[2][i]];
        }""",
        ["probe", start + MIN],
    )
    assert drawn == [None, 42.125], drawn


def correction(page):
    page.goto(BASE + "/#/device/" + PROBE)
    wait_ready(page)
    # A minute the watermark passed long ago: final (or corrected) when first written, then a
    # late reading corrects it, and the drawn minute changes.
    start = (now_ms() // MIN - 4) * MIN
    post_event(PROBE, start + 10_000, {"level": 10})
    chart = '.chart[data-metric="level"]'
    row = f'{chart} tr[data-start="{start}"]'
    page.wait_for_selector(row, timeout=5_000)
    page.wait_for_function(
        f"document.querySelector('{row} .mean').textContent === '10'", timeout=5_000
    )
    first = text(page, f"{row} .state")
    assert first != "provisional", first
    revision = int(text(page, f"{row} td:nth-child(3)"))

    def drawn():
        return page.evaluate(
            """(end) => {
                const c = [...window.strata.charts.values()].find(c => c.labels.__name__ === 'level');
                const i = c.plot.data[0].indexOf(end / 1000);
                return [c.plot.data[1][i], c.plot.data[3][i]];
            }""",
            start + MIN,
        )

    assert drawn()[0] == 10, drawn()
    post_event(PROBE, start + 20_000, {"level": 30})
    page.wait_for_function(
        f"document.querySelector('{row} .mean').textContent === '20'", timeout=5_000
    )
    assert text(page, f"{row} .state") == "corrected"
    assert int(text(page, f"{row} td:nth-child(3)")) == revision + 1
    assert drawn() == [20, 20], drawn()


def desired_change(page):
    page.goto(BASE + "/#/device/" + PROBE)
    wait_ready(page)
    page.wait_for_selector("#shadow table")
    body = json.dumps({"state": {"desired": {"setpoint": 19.5}}}).encode()
    req = urllib.request.Request(
        BASE + f"/api/v1/devices/{PROBE}/shadow", data=body, method="PATCH"
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status
    # Pushed over the stream, not polled (the page polls every 10 s).
    page.wait_for_function(
        "document.getElementById('shadow').textContent.includes('setpoint')", timeout=3_000
    )
    assert "version 1" in text(page, "#shadow"), text(page, "#shadow")


def query_page(page):
    page.goto(BASE + "/#/query")
    page.fill("#expr", "avg by (site) (temperature_celsius)")
    page.select_option("#range", "15m")
    page.click("#run")
    page.wait_for_selector("#query-table tbody tr td.labels")
    labels = page.locator("#query-table tbody td.labels").all_inner_texts()
    assert sorted(labels) == [f'{{site="site-{i:02}"}}' for i in range(5)], labels
    drawn = page.evaluate(
        "[window.strata.query.series.length, window.strata.query.data[1].filter(v => v !== null).length]"
    )
    assert drawn[0] == 6 and drawn[1] > 0, drawn
    # A bad expression is shown as the API's error.
    page.fill("#expr", "sum(")
    page.click("#run")
    page.wait_for_function("document.getElementById('query-error').textContent.length > 0")


def main():
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        # The page under its own content security policy: it runs, and breaks no directive.
        strict = browser.new_page()
        violations = []
        strict.on("console", lambda m: "Content Security Policy" in m.text and violations.append(m.text))
        strict.on("pageerror", lambda e: errors.append(str(e)))
        strict.goto(BASE + "/")
        strict.wait_for_selector("#sites tbody tr", timeout=30_000)
        strict.goto(BASE + "/#/device/dev-00001")
        strict.wait_for_selector(".chart canvas", timeout=15_000)
        assert not violations and not errors, (violations, errors)
        strict.close()
        # The checks evaluate script in the page, which that policy forbids.
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.on("pageerror", lambda e: errors.append(str(e)))
        steps = (overview, device_page, live_reading_and_windows, correction, desired_change, query_page)
        for step in steps:
            try:
                step(page)
                assert not errors, f"script errors in the page: {errors}"
                print(f"ok: {step.__name__}")
            except Exception as e:
                path = f"{SHOTS}/{step.__name__}.png"
                page.screenshot(path=path, full_page=True)
                print(f"FAILED: {step.__name__}: {e!r} (screenshot: {path})")
                browser.close()
                sys.exit(1)
        browser.close()


if __name__ == "__main__":
    main()
