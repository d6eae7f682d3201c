#!/usr/bin/env python3
"""The benchmark suite: relay and its Node peers (socket.io 4, ws) under the same
load in one run, on this machine, over loopback.

    python3 tests/bench/run.py            # everything (about 15 minutes), then the report
    python3 tests/bench/run.py --quick    # smaller counts, for a smoke run
    python3 tests/bench/run.py --only fanout,latency
    python3 tests/bench/run.py --report   # only rebuild docs/BENCHMARKS.md + plot from the last results

It builds relay and the load tool (`relay-bench`, tests/src/bin/relay-bench.rs) in
release mode, installs the peers from their lockfile (tests/bench/peers), starts
each server fresh for each scenario, drives it with relay-bench (which appends one
JSON line per run to target/bench/results.jsonl), and writes docs/BENCHMARKS.md and
docs/bench-latency.png (matplotlib, installed into target/bench/venv).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
PEERS = BENCH / "peers"
OUT = ROOT / "target" / "bench"
RESULTS = OUT / "results.jsonl"
RELAY = ROOT / "target" / "release" / "relay"
TOOL = ROOT / "target" / "release" / "relay-bench"
CA = OUT / "relay-data" / "dev-certs" / "ca.pem"


def log(msg):
    print(f"[bench] {msg}", flush=True)


def sh(cmd, **kw):
    log(" ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def wait_port(port, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {secs}s")


class Server:
    """One server process: relay (all tenants) or a Node peer."""

    def __init__(self, kind):
        self.kind = kind
        self.proc = None
        self.port = None

    def __enter__(self):
        if self.kind == "relay":
            # Fresh for each scenario: a store left by an earlier run (md5-sign's replay
            # set keeps each nonce for its 300 s window) would fill the tenant's store.
            shutil.rmtree(OUT / "relay-data" / "store", ignore_errors=True)
            self.proc = subprocess.Popen(
                [RELAY, "serve", "--config", BENCH / "relay-bench.toml"],
                stdout=subprocess.DEVNULL,
                stderr=open(OUT / "relay.log", "a"),
                env={**os.environ, "RUST_LOG": "warn"},
            )
            for p in (19080, 19081, 19082, 19083, 19084):
                wait_port(p)
        else:
            script = {"node-ws": "ws-server.js", "node-sio": "sio-server.js"}[self.kind]
            self.proc = subprocess.Popen(
                ["node", PEERS / script, "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=open(OUT / f"{self.kind}.log", "a"),
                text=True,
            )
            line = self.proc.stdout.readline().split()
            if len(line) != 2 or line[0] != "LISTENING":
                raise RuntimeError(f"{self.kind} did not start: {line}")
            self.port = int(line[1])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(1)  # let TIME_WAIT and memory settle between runs

    @property
    def pid(self):
        return self.proc.pid

    def client(self, wire):
        """(url template, wire, push url) for this server."""
        sio = "/socket.io/?EIO=4&transport=websocket&rooms={room}"
        if self.kind == "relay":
            if wire == "socket.io":
                return f"ws://127.0.0.1:19081{sio}", wire, "http://127.0.0.1:19084/sio/push"
            return "ws://127.0.0.1:19080/?rooms={room}", wire, "http://127.0.0.1:19084/ws/push"
        base = f"127.0.0.1:{self.port}"
        if self.kind == "node-sio":
            return f"ws://{base}{sio}", "socket.io", f"http://{base}/push"
        return f"ws://{base}/?rooms={{room}}", "ws-json", f"http://{base}/push"


# (server kind, wire, name in the report)
FANOUT_SERVERS = [
    ("relay", "ws-json", "relay (ws-json)"),
    ("relay", "socket.io", "relay (socket.io)"),
    ("node-ws", "ws-json", "Node ws"),
    ("node-sio", "socket.io", "Node socket.io"),
]


def tool(args, label, pid=None):
    cmd = [TOOL, *args[:1], "--label", label, "--json", RESULTS, *args[1:]]
    if pid:
        cmd += ["--server-pid", str(pid)]
    sh([str(c) for c in cmd])


def fanout_runs(q, clients, rooms, rate, scenario, secs):
    for kind, wire, name in FANOUT_SERVERS:
        with Server(kind) as s:
            url, wire, push = s.client(wire)
            sample = 1 if clients * (rate or 1) <= 200_000 else 10
            tool(
                [
                    "fanout", "--url", url, "--wire", wire, "--clients", clients,
                    "--rooms", rooms, "--push", push, "--rate", rate,
                    "--messages", 10_000_000, "--duration", secs, "--window", 64,
                    "--size", 100, "--sample", sample, "--sources", 8, "--pushers", 32,
                ],
                f"{scenario}|{name}|{clients}|{rooms}|{rate}",
                s.pid,
            )


def scenario_fanout(q):
    for clients in ([1000] if q else [1000, 10_000]):
        fanout_runs(q, clients, 1, 0, "fanout", 4 if q else 10)


def scenario_rooms(q):
    fanout_runs(q, 2000 if q else 10_000, 200 if q else 1000, 0, "rooms", 4 if q else 10)


def scenario_latency(q):
    rates = [20, 200] if q else [20, 100, 500, 1000, 2000]
    for rate in rates:
        fanout_runs(q, 1000, 1, rate, "latency", 3 if q else 8)
    if not q:
        fanout_runs(q, 10_000, 1, 20, "latency", 8)


def scenario_idle(q):
    n = 2000 if q else 19_000
    procs = 1 if q else 2
    runs = [
        ("relay", "ws://127.0.0.1:19080/?rooms={room}", "ws-json", "relay ws"),
        ("relay", "wss://localhost:19082/?rooms={room}", "ws-json", "relay wss"),
        ("node-ws", None, "ws-json", "Node ws"),
        ("node-sio", None, "socket.io", "Node socket.io"),
    ]
    for kind, url, wire, name in runs:
        with Server(kind) as s:
            if url is None:
                url, wire, _ = s.client(wire)
            args = ["idle", "--url", url, "--wire", wire, "--clients", n, "--rooms", 100,
                    "--procs", procs, "--sources", 8]
            if url.startswith("wss"):
                args += ["--ca", CA]
            tool(args, f"idle|{name}|{n}", s.pid)


HS_POLICIES = [
    ("open", "/open", []),
    ("wasm md5-sign", "/signed", ["--sign-key", "bench-key"]),
    ("wasm testkit (no signature, no store write)", "/kit", []),
]


def scenario_handshakes(q):
    # Many short rounds, alternating the policies: the machine's noise changes over
    # seconds, so each round's ratio to the open round just before it is what counts.
    n, rounds = (1000, 3) if q else (3000, 40)
    with Server("relay") as s:
        for label, path, extra in HS_POLICIES:
            tool(["handshakes", "--addr", "127.0.0.1:19083", "--count", 300, "--path", path, *extra],
                 f"warmup|{label}", s.pid)
        for rnd in range(rounds):
            for label, path, extra in HS_POLICIES:
                tool(["handshakes", "--addr", "127.0.0.1:19083", "--count", n,
                      "--concurrency", 16, "--path", path, *extra],
                     f"handshakes|{label}|{rnd}", s.pid)


def handshake_rounds(rows):
    """{policy: [(round, per_s, relay CPU µs per handshake)]} of the handshake storm's
    rounds without failures."""
    out = {}
    for r in rows:
        if not r["label"].startswith("handshakes|") or r.get("failed"):
            continue  # a round with failures is reported apart (handshake_failures)
        _, policy, rnd = r["label"].split("|")
        cpu_us = r["server"]["cpu_pct"] / 100 / r["per_s"] * 1e6 if r["per_s"] else 0
        out.setdefault(policy, []).append((int(rnd), r["per_s"], cpu_us))
    return out


def handshake_failures(rows):
    """{policy: (failed handshakes, first error)} of the handshake storm."""
    out = {}
    for r in rows:
        if r["label"].startswith("handshakes|") and r.get("failed"):
            policy = r["label"].split("|")[1]
            n, err = out.get(policy, (0, None))
            out[policy] = (n + r["failed"], err or r.get("first_error"))
    return out


def median(v):
    v = sorted(v)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2 if v else 0


def handshake_ratio(rounds, policy):
    """Median over rounds of the policy's rate / the open policy's rate in that round."""
    o = {rnd: r for rnd, r, _ in rounds.get("open", [])}
    ratios = [r / o[rnd] for rnd, r, _ in rounds.get(policy, []) if o.get(rnd)]
    return median(ratios), ratios


def scenario_ingress(q):
    n = 5000 if q else 20_000
    with Server("relay") as s:
        for rnd in range(2):
            tool(["push", "--push", "http://127.0.0.1:19084/ws/push", "--count", n],
                 f"push|open /push (JSON, no signature)|{rnd}", s.pid)
            tool(["push", "--push", "http://127.0.0.1:19084/im/api/notify", "--format",
                  "socket-im", "--source-key", "bench:bench-secret", "--room", "nobody",
                  "--count", n],
                 f"push|socket-im /api/notify (md5 signature)|{rnd}", s.pid)
        # UDP: datagrams processed end to end (one subscriber counts them).
        tool(["fanout", "--url", "ws://127.0.0.1:19080/?rooms={room}", "--clients", 1,
              "--push", "udp://127.0.0.1:19085", "--pushers", 1, "--window", 256,
              "--messages", n * 5, "--duration", 10],
             "udp|open UDP datagram → 1 subscriber|0", s.pid)


SCENARIOS = {
    "fanout": scenario_fanout,
    "rooms": scenario_rooms,
    "latency": scenario_latency,
    "idle": scenario_idle,
    "handshakes": scenario_handshakes,
    "ingress": scenario_ingress,
}


def setup(skip_build):
    OUT.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log(f"descriptor limit {hard}")
    if not skip_build:
        sh(["cargo", "build", "--release", "-p", "relay", "--bin", "relay",
            "-p", "relay-tests", "--bin", "relay-bench"], cwd=ROOT)
    if not (PEERS / "node_modules").exists():
        sh(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEERS)


# ---------------------------------------------------------------- report

def load():
    """The results, the last run of each label only (a scenario re-run with --keep
    replaces its earlier rows)."""
    rows = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.pop(r["label"], None)
                rows[r["label"]] = r
    return list(rows.values())


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except Exception:
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "rustc": ver(["rustc", "--version"]),
        "node": ver(["node", "--version"]),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def fmt(v, unit=""):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.2f}{unit}"


def ratio(a, b):
    return f"{a / b:.1f}×" if a and b else "–"


def report(rows, started):
    m = machine()
    by = {}
    for r in rows:
        by[r["label"]] = r
    out = []
    w = out.append
    w("# Benchmarks\n")
    w("Generated by `python3 tests/bench/run.py` (the whole suite; `--report` rebuilds this page "
      "from `target/bench/results.jsonl`). relay and its peers run one after another in the same "
      "run, each freshly started, under the same load from the same load tool "
      "(`relay-bench`, `tests/src/bin/relay-bench.rs`). Loopback only. The machine is shared and "
      "noisy: read the ratios, measured minutes apart, rather than the absolute figures.\n")
    w(f"- Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, descriptor limit {m['nofile']} per process")
    w(f"- {m['rustc']}; Node {m['node']}; peers: socket.io 4.8.4 (default in-memory adapter), ws 8.23.0 (`tests/bench/peers`)")
    w(f"- Run: {started}\n")
    w("Peers do exactly relay's job: clients join rooms named in the query, a backend POSTs "
      "`{\"room\",\"data\"}`, the server encodes the message once and sends it to the room. "
      "Each push carries its send time, so every client measures push→receive latency.\n")

    def fan_table(scenario, clients, rooms, title):
        w(f"## {title}\n")
        w("| server | deliveries/s | vs Node socket.io | vs Node ws | latency p50 / p99 (ms) | server CPU | RSS connected |")
        w("|---|---|---|---|---|---|---|")
        base = {n: by.get(f"{scenario}|{n}|{clients}|{rooms}|0") for _, _, n in FANOUT_SERVERS}
        sio = (base.get("Node socket.io") or {}).get("deliveries_per_s")
        wsn = (base.get("Node ws") or {}).get("deliveries_per_s")
        for _, _, n in FANOUT_SERVERS:
            r = base.get(n)
            if not r:
                continue
            d = r["deliveries_per_s"]
            lat = r["latency_ms"]
            w(f"| {n} | {fmt(d)} | {ratio(d, sio)} | {ratio(d, wsn)} | {lat['p50']:.1f} / {lat['p99']:.1f} "
              f"| {r['server']['cpu_pct']:.0f}% | {r['server']['rss_kib_connected'] / 1024:.1f} MiB |")
        w("")

    w("## (a) Fan-out: one room, pushes as fast as they are delivered\n")
    w("100-byte data, 32 HTTP connections pushing, at most 64 pushes in flight. Latency is measured under this saturating "
      "load, so it is mostly queueing.\n")
    for clients in (1000, 10_000):
        if any(by.get(f"fanout|{n}|{clients}|1|0") for _, _, n in FANOUT_SERVERS):
            fan_table("fanout", clients, 1, f"{clients:,} clients in one room")
    rooms_rows = [r for r in rows if r["label"].startswith("rooms|")]
    if rooms_rows:
        c, rm = rooms_rows[0]["clients"], rooms_rows[0]["rooms"]
        w("## (b) Many rooms: pushes to random rooms\n")
        fan_table("rooms", c, rm, f"{c:,} clients in {rm:,} rooms")

    lat_rows = [r for r in rows if r["label"].startswith("latency|")]
    if lat_rows:
        w("## Latency at fixed rates\n")
        w("push→receive latency over every delivery (ms), by push rate, 1,000 clients in one room "
          "(so deliveries/s = 1,000 × rate). Plot: `docs/bench-latency.png`.\n")
        rates = sorted({r["rate_target"] for r in lat_rows if r["clients"] == 1000})
        w("| pushes/s | " + " | ".join(n for _, _, n in FANOUT_SERVERS) + " |")
        w("|---|" + "---|" * len(FANOUT_SERVERS))
        for rate in rates:
            cells = []
            for _, _, n in FANOUT_SERVERS:
                r = by.get(f"latency|{n}|1000|1|{rate:g}") or by.get(f"latency|{n}|1000|1|{int(rate)}")
                if r:
                    l = r["latency_ms"]
                    miss = r["errors"]["lost"]
                    cells.append(f"{l['p50']:.1f} / {l['p99']:.1f} / {l['p999']:.1f}" + (f" ({miss} late)" if miss else ""))
                else:
                    cells.append("–")
            w(f"| {rate:g} | " + " | ".join(cells) + " |")
        w("\nCells are p50 / p99 / p999 ms.\n")
        big = [r for r in lat_rows if r["clients"] == 10_000]
        if big:
            w("**10,000 clients, 20 pushes/s (200,000 deliveries/s):**\n")
            w("| server | p50 | p99 | p999 | delivered/expected |")
            w("|---|---|---|---|---|")
            for r in big:
                l = r["latency_ms"]
                w(f"| {r['label'].split('|')[1]} | {l['p50']:.1f} | {l['p99']:.1f} | {l['p999']:.1f} | {r['delivered']:,}/{r['expected']:,} |")
            w("")
        plot(lat_rows)

    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        w("## (c) Idle connections: memory\n")
        w("As many idle connections as the descriptor limit allows (clients spread over two "
          "load-tool processes). RSS growth of the server process divided by the connections "
          "(user-space memory; kernel socket buffers are not in RSS).\n")
        w("| server | connections | RSS before → held | per connection | connections/s |")
        w("|---|---|---|---|---|")
        for r in idle:
            s = r["server"]
            w(f"| {r['label'].split('|')[1]} | {r['connected']:,} | {s['rss_kib_before'] / 1024:.1f} → {s['rss_kib_held'] / 1024:.1f} MiB "
              f"| {s['bytes_per_conn'] / 1024:.2f} KiB | {fmt(r['connect_per_s'])} |")
        w("")

    hs = handshake_rounds(rows)
    if hs:
        w("## (d) Handshake storm\n")
        w(f"New WebSocket connections per second (upgrade answered 101, then closed), 16 in flight, "
          f"in {len(hs.get('open', []))} rounds alternating the policies. md5-sign checks "
          "an md5 over user, ts and key (one per line), the time window and the replay set (a key-value write) in the WASM "
          "plugin; testkit accepts everyone, which measures the WASM host's own cost (one hook call "
          "per connection). The ratio is the median over rounds of each round's rate against the "
          "open round just before it (the machine's noise changes over seconds); relay CPU is the "
          "server's CPU time per handshake.\n")
        w("| policy | handshakes/s (median) | vs open (median of rounds) | range of rounds | relay CPU per handshake |")
        w("|---|---|---|---|---|")
        for k, v in hs.items():
            mid, ratios = handshake_ratio(hs, k)
            spread = f"{100 * min(ratios):.0f}–{100 * max(ratios):.0f}%" if ratios else ""
            w(f"| {k} | {fmt(median([x[1] for x in v]))} | {100 * mid:.0f}% | {spread} "
              f"| {median([x[2] for x in v]):.1f} µs |")
        w("")
        for k, (n, err) in handshake_failures(rows).items():
            w(f"**{k}: {n:,} handshakes failed** (first error: {err}); its rounds do not count.\n")

    ing = [r for r in rows if r["label"].startswith(("push|", "udp|"))]
    if ing:
        w("## (e) Ingress\n")
        w("HTTP: 16 keep-alive connections, one request in flight each. UDP: datagrams delivered "
          "end to end to one subscriber, 256 in flight.\n")
        agg = {}
        for r in ing:
            v = r.get("per_s") or r.get("deliveries_per_s")
            agg.setdefault(r["label"].split("|")[1], []).append(v)
        w("| ingress | requests/s |")
        w("|---|---|")
        for k, v in agg.items():
            w(f"| {k} | {fmt(sum(v) / len(v))} |")
        w("")

    targets(rows, by, w)
    analysis = BENCH / "analysis.md"
    if analysis.exists():
        w(analysis.read_text())
    # The cluster figures come from tests/bench/cluster.py, kept by hand in cluster.md.
    cluster = BENCH / "cluster.md"
    if cluster.exists():
        w("\n".join(l for l in cluster.read_text().splitlines() if not l.startswith("<!--")) + "\n")
    w("## Raw results\n")
    w("Every run's JSON line is in `target/bench/results.jsonl` after a run (not committed).\n")
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(out) + "\n")
    log("wrote docs/BENCHMARKS.md")


def targets(rows, by, w):
    """The issue's targets against this run's figures."""
    out = []

    def row(name, value, goal, ok):
        out.append(f"| {name} | {value} | {goal} | {'met' if ok else '**not met**'} |")

    r, sio = by.get("fanout|relay (ws-json)|1000|1|0"), by.get("fanout|Node socket.io|1000|1|0")
    if r and sio:
        d, s = r["deliveries_per_s"], sio["deliveries_per_s"]
        row("fan-out, 1,000 clients", f"{d:,.0f}/s, {d / s:.1f}× Node socket.io", "≥ 1,000,000/s and ≥ 10×", d >= 1e6 and d >= 10 * s)
    lat = by.get("latency|relay (ws-json)|1000|1|20")
    if lat:
        l = lat["latency_ms"]
        row("latency, 20 pushes/s to 1,000 clients", f"p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms", "p50 ≤ 10 ms, p99 ≤ 25 ms", l["p50"] <= 10 and l["p99"] <= 25)
    for name, goal in (("relay ws", 4.0), ("relay wss", 16.0)):
        m = [x for x in rows if x["scenario"] == "idle" and x["label"].split("|")[1] == name]
        if m:
            kib = m[0]["server"]["bytes_per_conn"] / 1024
            row(f"idle memory, {name}", f"{kib:.2f} KiB per connection", f"≤ {goal:g} KiB", kib <= goal)
    hs = handshake_rounds(rows)
    if hs.get("open") and hs.get("wasm md5-sign"):
        mid, _ = handshake_ratio(hs, "wasm md5-sign")
        failed = handshake_failures(rows)
        note = " — failed handshakes: " + ", ".join(f"{k} {n:,}" for k, (n, _) in failed.items()) if failed else ""
        row("handshakes, WASM md5-sign vs open", f"{100 * mid:.0f}% (median of rounds){note}", "≥ 90%",
            mid >= 0.9 and not failed)
    if out:
        w("## Targets (issue 7) in this run\n")
        w("| target | this run | goal | |")
        w("|---|---|---|---|")
        for line in out:
            w(line)
        w("")


def plot(lat_rows):
    venv = OUT / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", venv])
        sh([py, "-m", "pip", "install", "--quiet", "matplotlib==3.9.2"])
    data = {}
    for r in lat_rows:
        if r["clients"] != 1000:
            continue
        name = r["label"].split("|")[1]
        data.setdefault(name, []).append((r["rate_target"] * 1000, r["latency_ms"]))
    src = OUT / "latency.json"
    src.write_text(json.dumps(data))
    code = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open({str(src)!r}))
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for ax, p in zip(axes, ["p50", "p99"]):
    for name, pts in sorted(data.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [max(l[p], 0.01) for _, l in pts], marker="o", label=name)
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("offered deliveries/s (1,000 clients × pushes/s)")
    ax.set_title(f"push→receive latency {{p}}")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("ms")
axes[0].legend()
fig.tight_layout()
fig.savefig({str(ROOT / "docs" / "bench-latency.png")!r}, dpi=110)
"""
    subprocess.run([py, "-c", code], check=True)
    log("wrote docs/bench-latency.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--report", action="store_true", help="only rebuild the report")
    ap.add_argument("--keep", action="store_true", help="append to the previous results")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not a.report:
        setup(a.no_build)
        if not a.keep and RESULTS.exists():
            RESULTS.unlink()
        names = a.only.split(",") if a.only else list(SCENARIOS)
        for n in names:
            log(f"scenario {n}")
            SCENARIOS[n](a.quick)
    report(load(), started)


if __name__ == "__main__":
    main()
