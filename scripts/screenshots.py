#!/usr/bin/env python3
"""Makes the README's dashboard screenshots (docs/dashboard-jobs.png, docs/dashboard-job.png).

A farm on this machine (a coordinator with auth and HTTP, one CPU worker) renders a directed
wheat-field movie with the default network, iterations and warm-up, and headless Chromium,
driven over WebDriver as the dashboard's browser test drives it, signs in and takes each page
once the movie is a few frames in. The browser test's own screenshots (target/screenshots/) show
a movie cut down to test speed (a 4-iteration warm-up), not what a user sees; these do.

    scripts/screenshots.py [--out docs] [--frames-in 12] [--keep]

Needs a release build (target/release/gramzoom) and `scripts/setup.sh --browser` (Chromium,
ChromeDriver). About 5 minutes on 2 CPU cores. Standard library only.
"""

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
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER_TOKEN = "screenshot-user-token-0123456789"
WORKER_TOKEN = "screenshot-worker-token-0123456789"

# What the job page shows best: a zoom that speeds up and a cross-fade, at the demo's size,
# with everything else at its default (iterations a frame, warm-up, network, seed).
MOVIE = [
    "--style", "wheat=" + str(ROOT / "examples/wheatfield.jpg"),
    "--style", "slide=" + str(ROOT / "examples/immunohistochemistry.png"),
    "--blend", "0:(wheat), 24:(wheat), 72:(slide)",
    "--zoom", "0:(1.5), 3s:(3)",
    "--size", "320x180", "--frames", "96", "--segment-frames", "24",
]


def log_value(path, prefix, deadline):
    """The first word after `prefix` on the first line of `path` that starts with it, waiting
    until `deadline` (the coordinator prints `listening on ADDR` and `http listening on ADDR`)."""
    while time.time() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].split()[0]
        time.sleep(0.1)
    sys.exit(f"screenshots: no '{prefix}' in {path} in time:\n{path.read_text(errors='replace')}")


class Driver:
    """Just the WebDriver commands this script needs."""

    def __init__(self, width, height, profile):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        binary = os.environ.get("GRAMZOOM_CHROMEDRIVER", "/usr/bin/chromedriver")
        self.proc = subprocess.Popen([binary, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(self.base + "/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("screenshots: chromedriver did not start (scripts/setup.sh --browser installs it)")
                time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                f"--window-size={width},{height}", f"--user-data-dir={profile}"]
        chromium = os.environ.get("GRAMZOOM_CHROMIUM", "/usr/bin/chromium")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        # A POST carries a JSON object, if only an empty one (ChromeDriver refuses none).
        data = json.dumps({} if body is None else body).encode() if method == "POST" else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            sys.exit(f"screenshots: webdriver {method} {path}: {e.code} {e.read().decode(errors='replace')[:500]}")

    def cmd(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def open(self, url):
        self.cmd("POST", "/url", {"url": url})

    def eval(self, script):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": []})

    def element(self, css):
        return next(iter(self.cmd("POST", "/element", {"using": "css selector", "value": css}).values()))

    def wait(self, secs, what, script, done):
        deadline = time.time() + secs
        while True:
            value = self.eval(script)
            if done(value):
                return value
            if time.time() > deadline:
                sys.exit(f"screenshots: timed out waiting for {what} (last: {value!r})")
            time.sleep(0.5)

    def screenshot(self, path):
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))

    def close(self):
        try:
            self.call("DELETE", f"/session/{self.session}")
        except (SystemExit, OSError):
            pass  # the browser is going anyway: the driver below takes it down
        finally:
            self.proc.terminate()
            self.proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs"), help="where the two PNGs go (default: docs)")
    p.add_argument("--frames-in", type=int, default=12, help="frames done before the job page is taken")
    p.add_argument("--keep", action="store_true", help="keep the farm's folder (logs, database)")
    a = p.parse_args()
    gramzoom = ROOT / "target/release/gramzoom"
    if not gramzoom.exists():
        sys.exit("screenshots: build first (cargo build --release --bin gramzoom)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gramzoom-screenshots-"))
    (work / "tokens").write_text(f"user alice {USER_TOKEN}\nworker gpu {WORKER_TOKEN}\n")
    env = dict(os.environ, GRAMZOOM_CACHE=str(work / "cache"), GRAMZOOM_OFFLINE="1", RUST_LOG="info")
    procs = []
    driver = None
    try:
        log = work / "coordinator.log"
        procs.append(subprocess.Popen(
            [gramzoom, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", work / "data",
             "--auth", work / "tokens"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env))
        deadline = time.time() + 30
        grpc = log_value(log, "listening on ", deadline)
        http = log_value(log, "http listening on ", deadline)
        url = f"http://{grpc}"
        user = dict(env, GRAMZOOM_TOKEN=USER_TOKEN)
        submit = subprocess.run([gramzoom, "submit", "--coordinator", url, *MOVIE], env=user,
                                capture_output=True, text=True)
        if submit.returncode != 0:
            sys.exit(f"screenshots: submit failed:\n{submit.stderr}")
        job = submit.stdout.strip()
        procs.append(subprocess.Popen(
            [gramzoom, "worker", "--coordinator", url, "--name", "cpu-1", "--device", "cpu",
             "--frames-dir", work / "frames", "--preview-secs", "2"],
            stdout=(work / "worker.log").open("w"), stderr=subprocess.STDOUT, env=dict(env, GRAMZOOM_TOKEN=WORKER_TOKEN)))

        driver = Driver(1280, 860, work / "profile")
        driver.open(f"http://{http}/login")
        token = driver.element("#token")
        driver.cmd("POST", f"/element/{token}/value", {"text": USER_TOKEN})
        driver.cmd("POST", f"/element/{driver.element('button[type=submit]')}/click")
        driver.wait(20, "the jobs page", "return location.pathname;", lambda v: v == "/jobs")
        progress = f"const p = document.querySelector('#row-{job} progress'); return p ? Number(p.value) : -1;"
        # The warm-up and the first frames: several minutes on a CPU.
        driver.wait(1800, f"{a.frames_in} frames", progress, lambda v: v >= a.frames_in)
        driver.screenshot(work / "dashboard-jobs.png")
        driver.open(f"http://{http}/jobs/{job}")
        preview = "const i = document.getElementById('job-preview');" \
                  "return i && i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : '';"
        driver.wait(60, "the preview", preview, lambda v: bool(v))
        time.sleep(1)
        driver.screenshot(work / "dashboard-job.png")
        # Both or neither: a run cut short leaves the previous pair in place.
        for name in ["dashboard-jobs.png", "dashboard-job.png"]:
            shutil.copy(work / name, out / f".{name}.tmp")
        for name in ["dashboard-jobs.png", "dashboard-job.png"]:
            os.replace(out / f".{name}.tmp", out / name)
            print(f"wrote {out / name}")
    finally:
        if driver:
            driver.close()
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
