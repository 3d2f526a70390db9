#!/usr/bin/env python3
"""Load-balancer benchmark: `bakery lb` against nginx, in front of the same three
`bakery web` clones on this machine, on `GET /api/ping` (the cheapest proxied route).

Runs wrk against each, alternating which goes first, for several rounds at each
concurrency level, and prints the median requests/s and p50/p99 latency of each
and the ratio ours/nginx. Writes results.json, results.md and a plot (PNG) to --out.

    scripts/bench_lb.py                      # defaults: 16 and 64 connections, 5 rounds of 8 s
    scripts/bench_lb.py --rounds 3 --duration 5 --connections 8,32,128

Every process it starts is stopped by pid when it ends, also on Ctrl-C.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import need, prepare, pyplot, run, log, spawn, stop_all, wrk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args, env, read_addr=True):
    """Starts a process in its own group; returns (Popen, addr from its `listening` line)."""
    proc = spawn(args, env)
    if not read_addr:
        return proc, None
    line = proc.stdout.readline()
    match = re.search(r"addr=(\S+)", line)
    if not match:
        raise SystemExit(f"bench: {args[1]} did not print its listening line: {line!r}")
    return proc, match.group(1)


def get(url):
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read()


def wait_until(check, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} not ready after {limit} s")


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream web {{
    least_conn;
{servers}
    keepalive 256;
  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto http;
      proxy_set_header X-Request-Id $request_id;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""


def plot(results, levels, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    xs = range(len(levels))
    for i, target in enumerate(["bakery", "nginx"]):
        rps = [results[target][str(c)]["rps"] for c in levels]
        p99 = [results[target][str(c)]["p99_ms"] for c in levels]
        offset = [x + (i - 0.5) * width for x in xs]
        ax1.bar(offset, rps, width, label=f"{target} lb")
        ax2.bar(offset, p99, width, label=f"{target} lb")
    for ax, title in [(ax1, "median requests/s (higher is better)"), (ax2, "median p99 latency, ms (lower is better)")]:
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{c} conns" for c in levels])
        ax.set_title(title)
        ax.legend()
    fig.suptitle("GET /api/ping through the load balancer, 3 bakery web clones, same 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results/lb"))
    parser.add_argument("--no-build", action="store_true", help="use --bin as it is")
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.rounds < 1 or args.duration < 1 or not levels:
        print("bench: --rounds, --duration and --connections must be positive", file=sys.stderr)
        sys.exit(2)

    need("wrk", "wrk")
    need("nginx", "nginx-light")
    prepare(build=not args.no_build, services=False)

    work = tempfile.mkdtemp(prefix="bakery-bench-")
    env = {**os.environ, "BAKERY_DATA_DIR": work, "BAKERY_LOG": "error", "BAKERY_ADMIN_PASSWORD": "bench-password"}
    try:
        subprocess.run([args.bin, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        clones = []
        for i in range(1, 4):
            _, addr = start([args.bin, "web", "--listen", "127.0.0.1:0", "--id", f"web-{i}"], env)
            clones.append(addr)
        for addr in clones:
            wait_until(lambda: get(f"http://{addr}/healthz")[0] == 200, 30, f"clone {addr}")
        backends = sum([["--backend", f"web=web-{i + 1}@{a}"] for i, a in enumerate(clones)], [])
        _, lb_addr = start([args.bin, "lb", "--listen", "127.0.0.1:0", "--id", "lb-1", *backends], env)

        def lb_ready():
            body = json.loads(get(f"http://{lb_addr}/lb/backends")[1])
            return sum(b["healthy"] for b in body["pools"][0]["backends"]) == 3
        wait_until(lb_ready, 30, "bakery lb")

        with socket_port() as nginx_port:
            pass
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=os.cpu_count() or 2, dir=work, listen=f"127.0.0.1:{nginx_port}",
                                      servers="\n".join(f"    server {a};" for a in clones)))
        start(["nginx", "-c", conf, "-p", work, "-e", os.path.join(work, "nginx-error.log")], env, read_addr=False)
        nginx_addr = f"127.0.0.1:{nginx_port}"
        wait_until(lambda: get(f"http://{nginx_addr}/api/ping")[0] == 200, 15, "nginx")

        targets = {"bakery": f"http://{lb_addr}/api/ping", "nginx": f"http://{nginx_addr}/api/ping"}
        log("warming up")
        for url in targets.values():
            wrk(url, levels[0], 2)

        runs = {t: {str(c): [] for c in levels} for t in targets}
        total = len(levels) * args.rounds * len(targets)
        done = 0
        for c in levels:
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for target in order:
                    result = wrk(targets[target], c, args.duration)
                    runs[target][str(c)].append(result)
                    done += 1
                    log(f"[{done:>2}/{total}] {target:<6} c={c:<4} round {r + 1}: {result['rps']:>9.0f} req/s"
                        f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                        + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else "")
                        + (f"  socket errors {result['socket_errors']}" if result["socket_errors"] else ""))

        medians = {t: {c: {k: statistics.median(run[k] for run in rs) for k in ("rps", "p50_ms", "p99_ms")}
                       for c, rs in by_c.items()} for t, by_c in runs.items()}
        lines = ["| connections | bakery req/s | nginx req/s | ratio ours/nginx | bakery p50 / p99 ms | nginx p50 / p99 ms |",
                 "|---|---|---|---|---|---|"]
        for c in levels:
            b, n = medians["bakery"][str(c)], medians["nginx"][str(c)]
            lines.append(f"| {c} | {b['rps']:.0f} | {n['rps']:.0f} | {b['rps'] / n['rps']:.2f} | "
                         f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {n['p50_ms']:.2f} / {n['p99_ms']:.2f} |")
        table = "\n".join(lines)
        log(f"\nmedians of {args.rounds} rounds x {args.duration} s, wrk -t2, on {os.cpu_count()} cores:\n{table}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"medians": medians, "runs": runs, "rounds": args.rounds, "duration_s": args.duration}, f, indent=2)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
        plot(medians, levels, os.path.join(args.out, "lb-vs-nginx.png"))
    finally:
        stop_all(grace=10)
        shutil.rmtree(work, ignore_errors=True)


class socket_port:
    """A free loopback port (bound, read, released)."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


if __name__ == "__main__":
    run(main)
