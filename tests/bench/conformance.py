#!/usr/bin/env python3
"""Run the official Socket.IO and Engine.IO protocol test suites against relay and,
side by side in the same run, against the reference servers of their READMEs.

The suites are not part of this repository: give clones of socketio/socket.io-protocol
and socketio/engine.io-protocol (`--suites DIR` holding both), or let the script clone
them from GitHub. It runs `npm ci` in each `test-suite/`, installs socket.io 4 and
engine.io 6 for the reference servers in a scratch folder, then for each round starts
one server on port 3000, runs one suite with mocha's JSON reporter, and stops it.

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", default=os.path.join(ROOT, "target", "release", "relay"))
    ap.add_argument("--suites", help="folder holding socket.io-protocol and engine.io-protocol")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true")
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
                    res = mocha(suite_dir)
                finally:
                    p.send_signal(signal.SIGTERM)
                    p.wait()
                    wait_port(3000, False)
                results.setdefault((server, suite), []).append(res)
                print(f"round {r + 1} {server:9} {suite:9} {res[0]}/{res[1]} {res[2]}", flush=True)

    print("\n| server | suite | passes per run | all passed |")
    print("|---|---|---|---|")
    for (server, suite), runs in results.items():
        per = ", ".join(f"{p}/{t}" for p, t, _ in runs)
        clean = sum(1 for p, t, _ in runs if p == t)
        print(f"| {server} | {suite} | {per} | {clean} of {len(runs)} runs |")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
