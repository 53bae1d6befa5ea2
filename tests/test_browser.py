"""report.html in a real browser: headless Chromium opens it offline, every image decodes, the console stays clean.

Chromium is driven over the DevTools protocol (a websocket; `websocket-client` is a dev dependency), so the
test sees what a person would: image load state, console errors, network requests, and a screenshot kept
under test-artifacts/ (gitignored). It skips, saying why, only when no Chromium is installed; `.ci/run`
installs Debian's `chromium` when it is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from promptlab.cli import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,900"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("Chromium is not installed: `apt-get install -y chromium` (`.ci/run` does it) to run the browser check")


class DevTools:
    """The smallest DevTools-protocol client this test needs: send a command, collect events."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params: object) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e["method"] == event:
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == event:
                    return msg
        raise AssertionError(f"no {event} within {timeout} s")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def report_html(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = root / "cmp"
    code = main(["compare", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--methods",
                 "zero-shot,prompt-tuning,linear-probe", "--train-size", "24", "--epochs", "1", "--virtual-tokens",
                 "4", "--eval-size", "24", "--config", str(root / "fast.yaml"), "--out", str(out)])
    assert code == 0
    return out / "report.html"


@pytest.fixture
def browser(tmp_path):
    exe = chromium()
    profile = tmp_path / "profile"
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}: {proc.stderr.read().decode()[-800:]}")
            if time.monotonic() > deadline:
                pytest.fail("chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield client
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_report_renders_in_chromium_with_every_image_and_no_console_errors(report_html, browser):
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Page.navigate", url=report_html.as_uri())
    browser.wait_for("Page.loadEventFired")

    images = browser.send("Runtime.evaluate", returnByValue=True, expression=(
        "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, "
        "h: i.naturalHeight}))"))["result"]["value"]
    assert len(images) == 4, images  # params, time, training curves, confusion matrices
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, f"image did not load: {img}"

    rows = browser.send("Runtime.evaluate", returnByValue=True,
                        expression="document.querySelector('table tbody').rows.length")["result"]["value"]
    assert rows == 3  # the side-by-side table: one row per method (later tables: prompts found, inspection)

    # full-page screenshot, kept for a person to look at
    size = browser.send("Page.getLayoutMetrics")["cssContentSize"]
    browser.send("Emulation.setDeviceMetricsOverride", width=1280, height=int(size["height"]), deviceScaleFactor=1,
                 mobile=False)
    png = base64.b64decode(browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[20:24], "big") > 1000  # the whole page

    errors = [e for e in browser.events if
              e["method"] == "Runtime.exceptionThrown"
              or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == [], errors
    requested = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    assert requested and all(u.startswith(("file:", "data:")) for u in requested), requested
