#!/usr/bin/env python3
"""Two relay binaries side by side: the check a refactor owes (same work, old and new).

    python3 tests/bench/compare.py --old /path/to/old/relay --new target/release/relay

Runs, in alternating rounds (the order flips each round, so drift on a shared machine
falls on both alike), the benchmark suite's relay scenarios against each binary:
fan-out to 1,000 clients in one room (ws-json and socket.io), idle memory per ws
connection, and the handshake storm (open and WASM md5-sign). Each server starts
fresh with an empty store, from tests/bench/relay-bench.toml, driven by the release
`relay-bench` (built by `run.py`, or `cargo build --release -p relay-tests`). Prints
per-round figures and the median of each, and the new/old ratio.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the suite's server and tool helpers)

OUT = run.OUT / "compare.jsonl"


def fanout(label, wire):
    with run.Server("relay") as s:
        url, wire, push = s.client(wire)
        run.tool(
            ["fanout", "--url", url, "--wire", wire, "--clients", 1000, "--rooms", 1,
             "--push", push, "--rate", 0, "--messages", 10_000_000, "--duration", 6,
             "--window", 64, "--size", 100, "--sample", 1, "--sources", 8, "--pushers", 32],
            label, s.pid)


def idle(label, n):
    with run.Server("relay") as s:
        run.tool(["idle", "--url", "ws://127.0.0.1:19080/?rooms={room}", "--wire", "ws-json",
                  "--clients", n, "--rooms", 100, "--procs", 1, "--sources", 8], label, s.pid)


def handshakes(label, count):
    with run.Server("relay") as s:
        for policy, path, extra in run.HS_POLICIES[:2]:
            run.tool(["handshakes", "--addr", "127.0.0.1:19083", "--count", 300, "--path", path,
                      *extra], f"warmup|{policy}", s.pid)
        for rnd in range(5):
            for policy, path, extra in run.HS_POLICIES[:2]:
                run.tool(["handshakes", "--addr", "127.0.0.1:19083", "--count", count,
                          "--concurrency", 16, "--path", path, *extra],
                         f"{label}|{policy}|{rnd}", s.pid)


def summarize(rows, binaries):
    def med(values):
        return statistics.median(values) if values else float("nan")

    figures = {}
    for b in binaries:
        mine = [r for r in rows if r["label"].split("|")[1] == b]
        fan = lambda wire: med([r["deliveries_per_s"] for r in mine  # noqa: E731
                                if r["label"].startswith(f"fanout-{wire}|")])
        kib = med([r["server"]["bytes_per_conn"] / 1024 for r in mine
                   if r["label"].startswith("idle|")])
        # Handshakes: per round, md5-sign's rate over open's rate in the same round.
        hs = {}
        for r in mine:
            if r["label"].startswith("handshakes|") and not r.get("failed"):
                # handshakes|<binary>|<round>|<policy>|<storm round>
                _, _, rnd, policy, sub = r["label"].split("|")
                hs.setdefault((rnd, sub), {})[policy] = r["per_s"]
        ratios = [v["wasm md5-sign"] / v["open"] for v in hs.values()
                  if v.get("open") and v.get("wasm md5-sign")]
        opens = [v["open"] for v in hs.values() if v.get("open")]
        figures[b] = {
            "fan-out ws-json (deliveries/s)": fan("ws-json"),
            "fan-out socket.io (deliveries/s)": fan("socket.io"),
            "idle ws (KiB per connection)": kib,
            "handshakes open (per s)": med(opens),
            "handshakes md5-sign / open": med(ratios),
        }
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the old relay binary")
    ap.add_argument("--new", required=True, help="the new relay binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-clients", type=int, default=10_000)
    ap.add_argument("--handshakes", type=int, default=2000, help="handshakes per storm round")
    ap.add_argument("--summary", action="store_true", help="only summarize the last run")
    a = ap.parse_args()
    run.OUT.mkdir(parents=True, exist_ok=True)
    run.RESULTS = OUT
    if not a.summary:
        OUT.unlink(missing_ok=True)
    bins = {"old": Path(a.old).resolve(), "new": Path(a.new).resolve()}
    for rnd in range(0 if a.summary else a.rounds):
        order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
        for b in order:
            run.RELAY = bins[b]
            fanout(f"fanout-ws-json|{b}|{rnd}", "ws-json")
            fanout(f"fanout-socket.io|{b}|{rnd}", "socket.io")
            idle(f"idle|{b}|{rnd}", a.idle_clients)
            handshakes(f"handshakes|{b}|{rnd}", a.handshakes)
    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not r["label"].startswith("warmup|")]
    f = summarize(rows, ["old", "new"])
    print(f"\n| figure (median of {a.rounds} alternating rounds) | old | new | new/old |")
    print("|---|---|---|---|")
    for k in f["old"]:
        o, n = f["old"][k], f["new"][k]
        print(f"| {k} | {o:,.2f} | {n:,.2f} | {n / o if o else float('nan'):.3f} |")


if __name__ == "__main__":
    main()
