#!/usr/bin/env python3
"""Soak: run relay under mixed churn for a bounded time and watch it stay flat.

Starts `relay serve` with a soak config (ws, wss with a dev certificate, Socket.IO,
a testkit WASM tenant, an http listener), runs tests/bench/soak-load.js against it
(ws/wss/long-polling churn, steady members, slow consumers, HTTP pushes), reloads the
testkit plugin every 30 s, and every 10 s samples the server's RSS and open
descriptors (/proc) and its /metrics (connections, runtime tasks, queued bytes, slow
consumers closed). Prints the samples as a markdown table, and whether RSS,
descriptors and tasks in the last minute stayed within the first minute's range
plus a margin.

    python3 tests/bench/soak.py --relay target/release/relay --minutes 10 [--out FILE]
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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTS = {"ws": 19380, "wss": 19381, "sio": 19382, "http": 19383}

CONFIG = """
[server]
data_dir = "{data}"

[[tenant]]
name = "ws"
policy = "open"
outbound_queue = 256
outbound_queue_bytes = 262144

[[tenant]]
name = "sio"
policy = "open"
profile = "socket.io"

[[tenant]]
name = "kit"
policy = "wasm"
plugin = "bundled:testkit"

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:{ws}"
routes = [{{ path = "/kit", tenant = "kit" }}, {{ path = "/", tenant = "ws" }}]

[[listener]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:{wss}"
dev_cert = true
routes = [{{ path = "/", tenant = "ws" }}]

[[listener]]
name = "sio"
kind = "ws"
bind = "127.0.0.1:{sio}"
routes = [{{ path = "/", tenant = "sio" }}]

[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:{http}"
routes = [{{ path = "/", tenant = "ws" }}]
"""


def wait_port(port, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} did not open")


def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{PORTS['http']}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("relay_"):
            name, _, value = line.partition(" ")
            try:
                out[name[len("relay_"):]] = float(value)
            except ValueError:
                pass
    return out


def proc(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def reload_plugin():
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['http']}/admin/reload?tenant=kit", method="POST")
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except Exception as e:  # noqa: BLE001 - report, keep soaking
        return str(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", default=os.path.join(ROOT, "target", "release", "relay"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--push-rate", type=int, default=200)
    ap.add_argument("--out", help="also write the markdown report here")
    args = ap.parse_args()
    node_dir = os.path.join(ROOT, "tests", "node")
    if not os.path.isdir(os.path.join(node_dir, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir, check=True)

    scratch = tempfile.mkdtemp(prefix="relay-soak-")
    config = os.path.join(scratch, "soak.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(data=os.path.join(scratch, "data"), **PORTS))
    server = subprocess.Popen([args.relay, "serve", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="warn"))
    try:
        for p in PORTS.values():
            wait_port(p)
        secs = int(args.minutes * 60)
        load = subprocess.Popen(
            ["node", os.path.join(ROOT, "tests", "bench", "soak-load.js"), "--secs", str(secs),
             "--ws", f"127.0.0.1:{PORTS['ws']}", "--wss", f"127.0.0.1:{PORTS['wss']}",
             "--sio", f"127.0.0.1:{PORTS['sio']}", "--push", f"127.0.0.1:{PORTS['http']}",
             "--push-rate", str(args.push_rate)],
            stdout=subprocess.PIPE, text=True)
        samples, reloads = [], []
        start = time.time()
        next_reload = start + 30
        while load.poll() is None:
            time.sleep(10)
            if load.poll() is not None:
                break
            rss, fds = proc(server.pid)
            m = metrics()
            samples.append({
                "t": round(time.time() - start), "rss_mb": rss, "fds": fds,
                "conns": int(m.get("connections_open", 0)), "tasks": int(m.get("runtime_tasks", 0)),
                "queued_kb": int(m.get("queued_bytes", 0)) // 1024,
                "slow_closed": int(m.get("slow_consumers", 0)),
                "accepted": int(m.get("connections_total", 0)),
            })
            print(json.dumps(samples[-1]), flush=True)
            if time.time() >= next_reload:
                reloads.append(reload_plugin())
                next_reload += 30
        totals = json.loads(load.stdout.read().strip().splitlines()[-1])
        time.sleep(3)
        rss, fds = proc(server.pid)
        m = metrics()
        after = {"rss_mb": rss, "fds": fds, "conns": int(m.get("connections_open", 0)),
                 "tasks": int(m.get("runtime_tasks", 0)), "queued_kb": int(m.get("queued_bytes", 0)) // 1024}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    lines = [f"Soak: {args.minutes:g} min, `python3 tests/bench/soak.py --minutes {args.minutes:g}`; "
             f"load totals {json.dumps(totals)}; plugin reloads {len(reloads)} "
             f"(statuses {sorted(set(map(str, reloads)))}).", "",
             "| t (s) | RSS MB | fds | open conns | tasks | queued KB | slow closed | accepted |",
             "|---|---|---|---|---|---|---|---|"]
    for s in samples:
        lines.append(f"| {s['t']} | {s['rss_mb']} | {s['fds']} | {s['conns']} | {s['tasks']} | "
                     f"{s['queued_kb']} | {s['slow_closed']} | {s['accepted']} |")
    lines.append(f"| after the load (+3 s) | {after['rss_mb']} | {after['fds']} | {after['conns']} | "
                 f"{after['tasks']} | {after['queued_kb']} | | |")
    first = [s for s in samples if s["t"] <= 70] or samples[:1]
    last = [s for s in samples if s["t"] >= samples[-1]["t"] - 60] or samples[-1:]
    verdict = []
    for key, margin in (("rss_mb", 1.25), ("fds", 1.25), ("tasks", 1.25)):
        hi_first = max(s[key] for s in first)
        hi_last = max(s[key] for s in last)
        ok = hi_last <= hi_first * margin + 5
        verdict.append(f"{key}: first minute max {hi_first}, last minute max {hi_last} "
                       f"({'flat' if ok else 'GROWING'})")
    lines += ["", "; ".join(verdict) + "."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
