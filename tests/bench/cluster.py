#!/usr/bin/env python3
"""Cluster benchmarks: three relay nodes sharing one redis-server, against one node,
in the same run, on this machine (loopback; the nodes, Redis and the load tool share
its cores).

    python3 tests/bench/cluster.py             # about 5 minutes; prints a Markdown table
    python3 tests/bench/cluster.py --quick

Scenarios (each once on one plain node, once on the cluster):
- fan-out: N clients in one room (spread evenly over the nodes), pushes through node A
  as fast as they are delivered: deliveries/s; Redis commands per publication (from
  `INFO commandstats`);
- rooms: 10,000 clients in 1,000 rooms: deliveries/s, subscriptions per node;
- handshakes signed by the md5-sign plugin (its replay set in Redis on the cluster).

Needs `cargo build --release -p relay --bin relay -p relay-tests --bin relay-bench`.
Results are appended to target/bench/cluster.jsonl.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import wait_port  # noqa: E402  (the suite's helper)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "bench" / "cluster"
RESULTS = OUT / "cluster.jsonl"
RELAY = ROOT / "target" / "release" / "relay"
TOOL = ROOT / "target" / "release" / "relay-bench"
REDIS_PORT = 19379


def log(msg):
    print(f"[cluster-bench] {msg}", file=sys.stderr, flush=True)


def start_redis():
    """A fresh redis-server on REDIS_PORT, no persistence."""
    p = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(REDIS_PORT)
    return p


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    time.sleep(1)


def redis_cli(*args):
    return subprocess.run(["redis-cli", "-p", str(REDIS_PORT), *args], check=True,
                          capture_output=True, text=True).stdout


def publish_calls():
    for line in redis_cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_publish:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def config(i, cluster):
    ws, http, storm, sio = 19180 + i, 19190 + i, 19200 + i, 19210 + i
    section = ""
    if cluster:
        section = f'[cluster]\nredis = "redis://127.0.0.1:{REDIS_PORT}/0"\nnode = "n{i}"\n'
    return f"""
[server]
data_dir = "{OUT}/data-{i}-{int(cluster)}"
{section}
[[tenant]]
name = "ws"
max_pushes_per_sec = 0
max_messages_per_sec = 0
policy = "open"
outbound_queue = 4096
idle_timeout_ms = 0
ping_interval_ms = 0

[[tenant]]
name = "sio"
max_pushes_per_sec = 0
max_messages_per_sec = 0
policy = "open"
profile = "socket.io"
outbound_queue = 4096
ping_interval_ms = 25000
ping_timeout_ms = 60000

[[tenant]]
name = "signed"
max_pushes_per_sec = 0
max_messages_per_sec = 0
policy = "wasm"
plugin = "bundled:md5-sign"
settings = {{ key = "bench-key" }}
outbound_queue = 4096
idle_timeout_ms = 0
ping_interval_ms = 0

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:{ws}"
max_connections = 30000
max_connections_per_ip = 30000
routes = [{{ path = "/", tenant = "ws" }}]

[[listener]]
name = "storm"
kind = "ws"
bind = "127.0.0.1:{storm}"
max_connections = 30000
max_connections_per_ip = 30000
routes = [{{ path = "/signed", tenant = "signed" }}]

[[listener]]
name = "sio"
kind = "ws"
bind = "127.0.0.1:{sio}"
max_connections = 30000
max_connections_per_ip = 30000
routes = [{{ path = "/", tenant = "sio" }}]

[[listener]]
name = "http"
kind = "http"
bind = "127.0.0.1:{http}"
routes = [{{ path = "/ws", tenant = "ws" }}, {{ path = "/sio", tenant = "sio" }}]
"""


def node_env(cluster):
    env = {**os.environ, "RUST_LOG": "warn"}
    # --cluster-workers N: each cluster node's tokio worker threads (default: one per core).
    if cluster and WORKERS:
        env["TOKIO_WORKER_THREADS"] = str(WORKERS)
    return env


WORKERS = None


class Nodes:
    """`n` relay nodes (a cluster on a fresh redis-server when `cluster`)."""

    def __init__(self, n, cluster):
        self.n, self.cluster, self.procs, self.redis = n, cluster, [], None

    def __enter__(self):
        if self.cluster:
            self.redis = start_redis()
        for i in range(self.n):
            shutil.rmtree(OUT / f"data-{i}-{int(self.cluster)}", ignore_errors=True)
            path = OUT / f"node{i}-{int(self.cluster)}.toml"
            path.write_text(config(i, self.cluster))
            self.procs.append(subprocess.Popen(
                [RELAY, "serve", "--config", path], stdout=subprocess.DEVNULL,
                stderr=open(OUT / f"node{i}.log", "a"), env=node_env(self.cluster)))
            for p in (19180 + i, 19190 + i, 19200 + i, 19210 + i):
                wait_port(p)
        time.sleep(1.5)  # the nodes' first heartbeats
        return self

    def __exit__(self, *exc):
        stop(self.procs + ([self.redis] if self.redis else []))

    def urls(self):
        return [f"ws://127.0.0.1:{19180 + i}/?rooms={{room}}" for i in range(self.n)]

    def metric(self, i, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{19190 + i}/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith(f"relay_{name} "):
                return float(line.split()[1])
        return None


SIO = "/socket.io/?EIO=4&transport=websocket&rooms={room}"


class NodeSio:
    """Three Node socket.io processes sharing a fresh redis-server (the Redis adapter)."""

    def __enter__(self):
        self.redis = start_redis()
        peers = ROOT / "tests" / "bench" / "peers"
        if not (peers / "node_modules" / "@socket.io" / "redis-adapter").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=peers, check=True)
        self.procs, self.ports = [], []
        for _ in range(3):
            p = subprocess.Popen(["node", peers / "sio-server.js", "--port", "0"],
                                 stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}"})
            line = p.stdout.readline().split()
            if len(line) != 2 or line[0] != "LISTENING":
                raise RuntimeError(f"node socket.io did not start: {line}")
            self.procs.append(p)
            self.ports.append(int(line[1]))
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        stop(self.procs + [self.redis])


def sio_fanout(urls, push, clients, secs, label):
    args = [a for u in urls for a in ("--url", u)]
    return tool(["fanout", *args, "--wire", "socket.io", "--clients", clients, "--rooms", 1,
                 "--push", push, "--messages", 10_000_000, "--duration", secs, "--window", 64,
                 "--size", 100, "--sample", 10, "--sources", 8, "--pushers", 32], label)


def tool(args, label):
    cmd = [str(TOOL), args[0], "--label", label, "--json", str(RESULTS), *map(str, args[1:])]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    with open(RESULTS) as f:
        return json.loads(f.readlines()[-1])


def fanout(nodes, clients, rooms, secs, label):
    urls = [a for u in nodes.urls() for a in ("--url", u)]
    return tool(["fanout", *urls, "--clients", clients, "--rooms", rooms,
                 "--push", "http://127.0.0.1:19190/ws/push", "--messages", 10_000_000,
                 "--duration", secs, "--window", 64, "--size", 100, "--sample", 10,
                 "--sources", 8, "--pushers", 32], label)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cluster-workers", type=int, default=None)
    args = ap.parse_args()
    q = args.quick
    global WORKERS
    WORKERS = args.cluster_workers
    OUT.mkdir(parents=True, exist_ok=True)
    secs = 4 if q else 10
    fan_clients = 600 if q else 3000
    rooms_clients, rooms = (2000, 200) if q else (10_000, 1000)
    hs = 1000 if q else 3000
    rows = {}
    for cluster, n in ((False, 1), (True, 3)):
        kind = "cluster (3 nodes)" if cluster else "one node"
        with Nodes(n, cluster) as nodes:
            before = publish_calls() if cluster else 0
            r = fanout(nodes, fan_clients, 1, secs, f"fanout|{kind}")
            pubs = (publish_calls() - before) if cluster else None
            rows[("fanout", kind)] = (r, pubs)
        with Nodes(n, cluster) as nodes:
            peak = [0.0] * n
            done = threading.Event()

            def watch():
                # Subscriptions while the clients are connected (they leave at the end).
                while not done.wait(0.5):
                    for i in range(n):
                        peak[i] = max(peak[i], nodes.metric(i, "cluster_subscriptions") or 0)

            watcher = threading.Thread(target=watch, daemon=True)
            if cluster:
                watcher.start()
            r = fanout(nodes, rooms_clients, rooms, secs, f"rooms|{kind}")
            done.set()
            rows[("rooms", kind)] = (r, peak if cluster else None)
        with Nodes(n, cluster) as nodes:
            tool(["handshakes", "--addr", "127.0.0.1:19200", "--count", 300, "--path", "/signed",
                  "--sign-key", "bench-key"], f"warmup|{kind}")
            r = tool(["handshakes", "--addr", "127.0.0.1:19200", "--count", hs,
                      "--concurrency", 16, "--path", "/signed", "--sign-key", "bench-key"],
                     f"handshakes|{kind}")
            rows[("handshakes", kind)] = (r, None)
    # The peer users would otherwise pick: socket.io with its Redis adapter, 3 processes,
    # against relay's 3-node cluster on the Socket.IO profile, same load.
    with Nodes(3, True) as nodes:
        urls = [f"ws://127.0.0.1:{19210 + i}{SIO}" for i in range(3)]
        rows[("sio", "relay")] = (sio_fanout(urls, "http://127.0.0.1:19190/sio/push",
                                             fan_clients, secs, "sio|relay cluster"), None)
    with NodeSio() as peers:
        urls = [f"ws://127.0.0.1:{p}{SIO}" for p in peers.ports]
        rows[("sio", "node")] = (sio_fanout(urls, f"http://127.0.0.1:{peers.ports[0]}/push",
                                            fan_clients, secs, "sio|node redis-adapter"), None)
    print(report(rows, fan_clients, rooms_clients, rooms))


def report(rows, fan_clients, rooms_clients, rooms):
    def get(s, k, field):
        return rows[(s, k)][0].get(field) or 0

    one, three = "one node", "cluster (3 nodes)"
    out = ["| scenario | one node | cluster (3 nodes) | cluster / one |", "|---|---|---|---|"]
    for s, what, field in (
        ("fanout", f"fan-out, {fan_clients:,} clients in one room: deliveries/s", "deliveries_per_s"),
        ("rooms", f"{rooms_clients:,} clients in {rooms:,} rooms: deliveries/s", "deliveries_per_s"),
        ("handshakes", "md5-sign handshakes/s", "per_s"),
    ):
        a, b = get(s, one, field), get(s, three, field)
        out.append(f"| {what} | {a:,.0f} | {b:,.0f} | {b / a if a else 0:.2f}× |")
        failed = [k for k in (one, three) if rows[(s, k)][0].get("failed") or
                  (rows[(s, k)][0].get("errors") or {}).get("lost")]
        if failed:
            out.append(f"| (errors in {s}: {', '.join(failed)}; see {RESULTS}) | | | |")
    a = rows[("sio", "relay")][0].get("deliveries_per_s") or 0
    b = rows[("sio", "node")][0].get("deliveries_per_s") or 0
    out.append(f"\n| Socket.IO, {fan_clients:,} clients in one room over 3 processes: deliveries/s "
               f"| relay cluster | Node socket.io + Redis adapter | relay / Node |")
    out.append("|---|---|---|---|")
    out.append(f"| | {a:,.0f} | {b:,.0f} | {a / b if b else 0:.1f}× |")
    for k in ("relay", "node"):
        lost = (rows[("sio", k)][0].get("errors") or {}).get("lost")
        if lost:
            out.append(f"({k}: {lost:,} deliveries lost)")
    r, pubs = rows[("fanout", three)]
    sent = r.get("pushes") or 0
    if pubs is not None and sent:
        out.append(f"\nRedis PUBLISH calls per push (fan-out, cluster): {pubs / sent:.2f} "
                   f"({pubs:,} for {sent:,} pushes)")
    subs = rows[("rooms", three)][1]
    if subs:
        out.append(f"Room channels subscribed per node at most (rooms scenario, {rooms:,} rooms): "
                   f"{', '.join(f'{s:.0f}' for s in subs)}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
