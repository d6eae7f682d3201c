#!/usr/bin/env python3
"""Run the official Socket.IO and Engine.IO protocol test suites against relay and,
side by side in the same run, against the reference servers of their READMEs.

The suites are not part of this repository: give clones of socketio/socket.io-protocol
and socketio/engine.io-protocol (`--suites DIR` holding both), or let the script clone
them from GitHub. It runs `npm ci` in each `test-suite/`, installs socket.io 4 and
engine.io 6 for the reference servers in a scratch folder, then for each round starts
one server on port 3000, runs one suite, and stops it.

The suites run in one of the two ways their READMEs give:
- `--client browser` (default): in headless Chromium (`chromium` on PATH), as their
  `index.html` does, from a page that loads mocha and chai from the suite's
  node_modules (served on port 8000) and reports over the DevTools protocol;
- `--client node`: `npx mocha test-suite.js` in Node.js, whose `ws` 8.5 client emits
  every frame of one TCP read before the test's `await` resumes, so a test waiting
  for two frames sent back to back can miss the second (docs/socketio.md).

    python3 tests/bench/conformance.py --relay target/release/relay --rounds 5

Prints passes per run and a summary table (markdown) for tests/bench/conformance.md.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "examples", "conformance", "suites.toml")
REPOS = {
    "socket.io": "https://github.com/socketio/socket.io-protocol",
    "engine.io": "https://github.com/socketio/engine.io-protocol",
}

SIO_REFERENCE = """
import { Server } from "socket.io";
const io = new Server(3000, { pingInterval: 300, pingTimeout: 200, maxPayload: 1000000,
  connectTimeout: 1000, cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.emit("auth", socket.handshake.auth);
  socket.on("message", (...args) => { socket.emit.apply(socket, ["message-back", ...args]); });
  socket.on("message-with-ack", (...args) => { const ack = args.pop(); ack(...args); });
});
io.of("/custom").on("connection", (socket) => { socket.emit("auth", socket.handshake.auth); });
"""

EIO_REFERENCE = """
import { listen } from "engine.io";
const server = listen(3000, { pingInterval: 300, pingTimeout: 200, maxPayload: 1e6,
  cors: { origin: "*" } });
server.on("connection", (socket) => { socket.on("data", (...args) => { socket.send(...args); }); });
"""


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>suite</title></head><body><div id="mocha"></div>
<script src="node_modules/mocha/mocha.js"></script>
<script src="node_modules/chai/chai.js"></script>
<script src="node_modules/chai-string/chai-string.js"></script>
<script>mocha.setup("bdd"); window.__results = null;</script>
<script type="module">
  await import("./test-suite.js");
  const failed = [];
  const runner = mocha.run();
  runner.on("fail", (t) => failed.push(t.fullTitle()));
  runner.on("end", () => { window.__results = { passes: runner.stats.passes,
    tests: runner.total, failed }; });
</script></body></html>
"""

# Opens a page in the running Chromium (DevTools port 9222) and prints window.__results.
DRIVER = """
import WebSocket from "ws";
const url = process.argv[2];
const tab = await (await fetch("http://127.0.0.1:9222/json/new?about:blank", { method: "PUT" })).json();
const ws = new WebSocket(tab.webSocketDebuggerUrl);
await new Promise((r) => ws.on("open", r));
let id = 0; const pending = new Map();
ws.on("message", (m) => { const d = JSON.parse(m); const f = pending.get(d.id); if (f) { pending.delete(d.id); f(d); } });
const call = (method, params = {}) => new Promise((r) => { id += 1; pending.set(id, r); ws.send(JSON.stringify({ id, method, params })); });
await call("Page.navigate", { url });
for (const end = Date.now() + 120000; Date.now() < end; ) {
  await new Promise((r) => setTimeout(r, 500));
  const r = await call("Runtime.evaluate", { expression: "JSON.stringify(window.__results)", returnByValue: true });
  const v = r.result && r.result.result && r.result.result.value;
  if (v && v !== "null") { console.log(v); await call("Page.close"); process.exit(0); }
}
console.log(JSON.stringify({ passes: 0, tests: 0, failed: ["timed out"] }));
process.exit(0);
"""


def run(cmd, cwd=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def wait_port(port, up, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not come {'up' if up else 'free'}")


def mocha(suite_dir):
    out = subprocess.run(
        ["npx", "mocha", "--reporter", "json", "test-suite.js"],
        cwd=suite_dir,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out[out.index("{"):])
    failed = [t["fullTitle"] for t in report["failures"]]
    return report["stats"]["passes"], report["stats"]["tests"], failed


def browser_suite(suite_dir, base):
    name = os.path.basename(os.path.dirname(suite_dir))
    out = subprocess.run(
        ["node", os.path.join(suite_dir, "cdp-driver.mjs"),
         f"{base}/{name}/test-suite/relay-page.html"],
        cwd=suite_dir, capture_output=True, text=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return report["passes"], report["tests"], report["failed"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", default=os.path.join(ROOT, "target", "release", "relay"))
    ap.add_argument("--suites", help="folder holding socket.io-protocol and engine.io-protocol")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--client", choices=["browser", "node"], default="browser")
    args = ap.parse_args()

    scratch = tempfile.mkdtemp(prefix="relay-conformance-")
    suites = args.suites or scratch
    dirs = {}
    for name, url in REPOS.items():
        d = os.path.join(suites, url.rsplit("/", 1)[1])
        if not os.path.isdir(d):
            run(["git", "clone", "--depth", "1", url, d])
        dirs[name] = os.path.join(d, "test-suite")
        if not os.path.isdir(os.path.join(dirs[name], "node_modules")):
            run(["npm", "ci", "--no-audit", "--no-fund"], cwd=dirs[name])
    servers = {"relay": None}
    if not args.no_reference:
        ref = os.path.join(scratch, "reference")
        os.makedirs(ref)
        run(["npm", "init", "-y"], cwd=ref)
        run(["npm", "install", "--no-audit", "--no-fund", "socket.io@4", "engine.io@6"], cwd=ref)
        for name, code in (("socket.io", SIO_REFERENCE), ("engine.io", EIO_REFERENCE)):
            with open(os.path.join(ref, f"{name}.mjs"), "w") as f:
                f.write(code)
        servers["reference"] = ref

    helpers = []
    if args.client == "browser":
        for suite_dir in dirs.values():
            with open(os.path.join(suite_dir, "relay-page.html"), "w") as f:
                f.write(PAGE)
            with open(os.path.join(suite_dir, "cdp-driver.mjs"), "w") as f:
                f.write(DRIVER)
        root = os.path.dirname(os.path.dirname(next(iter(dirs.values()))))
        helpers.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1"],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        helpers.append(subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-port=9222", f"--user-data-dir={scratch}/chromium",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(8000, True)
        wait_port(9222, True)

    results = {}  # (server, suite) -> list of (passes, total, failed)
    for r in range(args.rounds):
        for server, ref in servers.items():
            for suite, suite_dir in dirs.items():
                if server == "relay":
                    cmd = [args.relay, "serve", "--config", CONFIG]
                else:
                    cmd = ["node", os.path.join(ref, f"{suite}.mjs")]
                p = subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=dict(os.environ, RELAY_LOG="warn"),
                )
                try:
                    wait_port(3000, True)
                    if args.client == "browser":
                        res = browser_suite(suite_dir, "http://localhost:8000")
                    else:
                        res = mocha(suite_dir)
                finally:
                    p.send_signal(signal.SIGTERM)
                    p.wait()
                    wait_port(3000, False)
                results.setdefault((server, suite), []).append(res)
                print(f"round {r + 1} {server:9} {suite:9} {res[0]}/{res[1]} {res[2]}", flush=True)

    for h in helpers:
        h.terminate()
        h.wait()
    print(f"\nclient: {args.client}")
    print("\n| server | suite | passes per run | all passed |")
    print("|---|---|---|---|")
    for (server, suite), runs in results.items():
        per = ", ".join(f"{p}/{t}" for p, t, _ in runs)
        clean = sum(1 for p, t, _ in runs if p == t)
        print(f"| {server} | {suite} | {per} | {clean} of {len(runs)} runs |")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
