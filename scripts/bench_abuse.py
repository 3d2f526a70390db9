#!/usr/bin/env python3
"""Abuse benchmark: what a normal user sees while the site is attacked.

  1. Stalled bodies: N connections (default 4,000) each send a POST's headers and
     then nothing. Meanwhile one client pings `GET /api/ping` through the same load
     balancer; its latencies are compared with the same pings before the attack.
  2. Password guessing: wrong passwords for one username as fast as one client can
     send them; how many are checked (401) before the limit answers 429, and how
     fast the 429s come back.

    scripts/bench_abuse.py --no-build                 # 4,000 stalled connections
    scripts/bench_abuse.py --no-build --stalled 1000

Results: bench-results/abuse/results.json. Every process it starts is stopped by pid.
"""

import argparse
import json
import os
import socket
import statistics
import time
import urllib.error
import urllib.request

from benchlib import ROOT, log, prepare, run, start_up, stop_all


def ping_latencies(base, count):
    out = []
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/ping", timeout=10) as response:
            response.read()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(values):
    values = sorted(values)
    return {"p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(values[int(len(values) * 0.99) - 1], 2), "n": len(values)}


def log_in(base, username, password):
    request = urllib.request.Request(f"{base}/api/session", method="POST",
                                     data=json.dumps({"username": username, "password": password}).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalled", type=int, default=4000)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--guesses", type=int, default=200)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "abuse"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    prepare(build=not args.no_build, services=False)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.stalled + 1024), hard))

    import tempfile
    work = tempfile.mkdtemp(prefix="bakery-bench-abuse-")
    env = {**os.environ, "BAKERY_DATA_DIR": work, "BAKERY_LOG": "error", "BAKERY_ADMIN_PASSWORD": "bench-password",
           # One client address opens every connection here; the per-client cap is
           # what would stop it, and is lifted to measure the rest of the defence.
           "BAKERY_LB_MAX_CONNECTIONS_PER_CLIENT": str(args.stalled + 100)}
    results = {}
    try:
        lb = start_up(args.bin, env)
        base = f"http://{lb}"
        ping_latencies(base, 50)
        results["ping_before"] = summary(ping_latencies(base, args.pings))
        log(f"ping before: {results['ping_before']}")
        host, port = lb.split(":")
        stalled = []
        for _ in range(args.stalled):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /api/session HTTP/1.1\r\nHost: bakery\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n")
            stalled.append(s)
        log(f"{len(stalled)} connections stalling their bodies")
        results["ping_during_stall"] = summary(ping_latencies(base, args.pings))
        log(f"ping during: {results['ping_during_stall']}")
        for s in stalled:
            s.close()

        statuses = []
        started = time.perf_counter()
        for _ in range(args.guesses):
            statuses.append(log_in(base, "admin", "wrong-password"))
        elapsed = time.perf_counter() - started
        checked = statuses.index(429) if 429 in statuses else len(statuses)
        results["guessing"] = {"guesses": args.guesses, "checked_before_429": checked,
                               "status_counts": {str(s): statuses.count(s) for s in set(statuses)},
                               "guesses_per_s": round(args.guesses / elapsed, 1)}
        log(f"guessing: {results['guessing']}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"stalled": args.stalled, **results}, f, indent=2)
    finally:
        stop_all(grace=10)


if __name__ == "__main__":
    run(main)
