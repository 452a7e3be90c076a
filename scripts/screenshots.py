"""Screenshots of TensorBoard for the README: the quick preset (24 runs, what a user sees after `make sweep-quick`;
about 7 minutes on 2 CPU cores), TensorBoard on loopback, and headless Chromium driven over the DevTools protocol,
writing docs/tensorboard/*.png.

    .venv/bin/python scripts/screenshots.py                       # train the quick preset, then shoot
    .venv/bin/python scripts/screenshots.py --sweep-dir DIR       # shoot an existing sweep

Needs `chromium-headless-shell` (or Debian's `chromium`) on PATH: `apt-get install -y chromium-headless-shell`.
Chromium is driven through `--remote-debugging-pipe` (file descriptors 3 and 4), so no WebSocket library is
needed. Line charts draw after data arrive, so each page gets real seconds (`--wait`), not a virtual time budget.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's normbench, whatever the environment has installed
from normbench.run.board import timeseries_url  # noqa: E402

BIN = Path(sys.executable).parent
SWEEP = ["sweep=quick", "hydra/launcher=parallel"]  # as `make sweep-quick`
LAYER = r"^watch/act/stage2\.norm/(in|out)$"  # one layer's input and output
# JavaScript run on a page before its screenshot: clicks the tab whose label matches, searching shadow roots
# (TensorBoard's HParams dashboard is a Polymer element; its views are tabs without a URL).
CLICK_TAB = """(() => {
  const all = [];
  const walk = (root) => root.querySelectorAll("*").forEach((e) => {
    all.push(e);
    if (e.shadowRoot) walk(e.shadowRoot);
  });
  walk(document);
  const tab = all.find((e) => e.tagName === "PAPER-TAB" && /%s/i.test(e.textContent));
  if (tab) tab.click();
  return Boolean(tab);
})()"""
# (file, TensorBoard page, script to run before the shot): what TensorBoard opens on (Time Series); the printed
# link for one norm at every images-per-worker value (a colour per cell); Scalars; HParams' parallel coordinates (every
# run must be drawn); one layer's input and output distributions in every run (Histograms) and side by side for one
# run (Time Series); the Custom Scalars charts.
PAGES = [
    ("timeseries.png", lambda port: f"http://localhost:{port}/#timeseries", None),
    ("timeseries_batch_sizes.png", lambda port: timeseries_url(port, runs="^bn_", color="cell"), None),
    ("hparams.png", lambda port: f"http://localhost:{port}/#hparams", CLICK_TAB % "parallel coordinates"),
    ("scalars.png", lambda port: f"http://localhost:{port}/#scalars", None),
    ("histograms.png", lambda port: f"http://localhost:{port}/#histograms&tagFilter=" + quote(LAYER), None),
    ("layer_in_out.png", lambda port: timeseries_url(port, runs="^bn_b002x16_seed000$", tags=LAYER), None),
    ("custom_scalars.png", lambda port: f"http://localhost:{port}/#custom_scalars", None),
]  # fmt: skip
# TensorBoard's stored settings, read before its scripts run: Time Series' settings pane closed (open by default).
SETTINGS = {"timeSeriesSettingsPaneOpened": False}


def ask(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    """TensorBoard's JSON answer to a GET (no `body`) or a POST."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    request = urllib.request.Request(f"http://localhost:{port}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def check_board(port: int, seconds: float = 60) -> None:
    """What the pictures promise, asked of TensorBoard once it has loaded the runs (bounded wait): no "." run,
    runs in name order, and every run has every metric of the HParams experiment (parallel coordinates draw
    only those)."""
    deadline = time.monotonic() + seconds
    while not board_as_promised(port) and time.monotonic() < deadline:
        time.sleep(2)
    if not board_as_promised(port, say=True):
        sys.exit("TensorBoard does not show the sweep as the pictures should: see the line above.")


def board_as_promised(port: int, say: bool = False) -> bool:
    runs = ask(port, "/data/runs")
    experiment = ask(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 1000, "colParams": [], "allowedStatuses": statuses}
    groups = ask(port, "/data/plugin/hparams/session_groups", request)["sessionGroups"]
    drawn = [g["name"] for g in groups if metrics <= {m["name"]["tag"] for m in g["metricValues"]}]
    if say:
        print(f"runs {runs}; HParams metrics {sorted(metrics)}; in parallel coordinates: {len(drawn)} of {len(runs)}")
    return bool(runs) and "." not in runs and runs == sorted(runs) and len(drawn) == len(runs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless Chromium over the DevTools protocol on a pipe: JSON messages separated by NUL bytes."""

    def __init__(self, width: int, height: int) -> None:
        exe = shutil.which("chromium-headless-shell") or shutil.which("chromium")
        if exe is None:
            sys.exit("No chromium-headless-shell or chromium on PATH (apt-get install -y chromium-headless-shell).")
        self.profile = tempfile.mkdtemp(prefix="normbench-chromium-")
        to_child, self.commands = os.pipe()
        self.replies, from_child = os.pipe()

        def pipes_at_3_and_4() -> None:  # where --remote-debugging-pipe expects them
            high = [os.dup(to_child), os.dup(from_child)]  # the pipes may themselves sit at 3 or 4
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
                 f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]  # fmt: skip
        self.process = subprocess.Popen(
            [exe, *flags], preexec_fn=pipes_at_3_and_4, close_fds=False, stderr=subprocess.DEVNULL
        )
        os.close(to_child)
        os.close(from_child)
        self.buffer, self.next_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        store = f"localStorage.setItem('_tb_global_settings', {json.dumps(json.dumps(SETTINGS))})"
        self.call("Page.addScriptToEvaluateOnNewDocument", source=store)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.replies, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed its DevTools pipe during {method}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def screenshot(self, url: str, path: Path, wait: float, script: str | None = None) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(wait)  # real time: TensorBoard fetches data and draws charts after the page has loaded
        if script is not None:
            done = self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value")
            if not done:
                raise RuntimeError(f"{url}: the page has nothing to click for the screenshot {path.name}")
            time.sleep(wait)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        os.close(self.commands)
        os.close(self.replies)
        shutil.rmtree(self.profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-dir", type=Path, help="an existing sweep to show (default: train the quick preset)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tensorboard")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds each page gets to draw")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="normbench-screens-"))
    sweep_dir = args.sweep_dir.resolve() if args.sweep_dir else None
    if sweep_dir is None:
        sweep_dir = workdir / "sweep"
        # This checkout's normbench, whatever the environment has installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "normbench", "sweep", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
        subprocess.run(command, cwd=workdir, env=env, check=True)
    port = free_port()
    board = subprocess.Popen(  # the log directory by its name: the pictures show no path of this machine
        [str(BIN / "tensorboard"), "--logdir", sweep_dir.name, "--host", "127.0.0.1", "--port", str(port)],
        cwd=sweep_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chromium = None
    try:
        for _ in range(120):  # bounded: until TensorBoard answers
            try:
                urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        check_board(port)
        chromium = Chromium(1400, 1000)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, page, script in PAGES:
            chromium.screenshot(page(port), args.out / name, args.wait, script)
            print(f"wrote {args.out / name}")
    finally:
        if chromium is not None:
            chromium.close()
        board.terminate()
        board.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
