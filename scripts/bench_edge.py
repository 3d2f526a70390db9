#!/usr/bin/env python3
"""Edge benchmark: a product page served by the load balancer's edge, the same page
rendered by a web clone, and nginx serving the same HTML file from disk — side by
side in one run, on this machine.

  * edge:  GET /products/1 through `bakery lb` (no session cookie: pre-rendered page)
  * clone: GET /products/1 straight to one `bakery web` clone (renders the page from
           the cached Product:1 — the most favourable case for the clone: no LB hop)
  * nginx: GET /products/1, a static file holding the edge's HTML, 1 worker per core

wrk (2 threads) at --connections, alternating the order each round; medians, ratios
edge/clone and edge/nginx, results.json, results.md and edge.png under --out.

    scripts/bench_edge.py                       # 5 rounds of 8 s at 64 connections
    scripts/bench_edge.py --rounds 3 --duration 5

Every process it starts is stopped by pid when it ends, also on Ctrl-C.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from benchlib import ROOT, log, need, prepare, pyplot, run, spawn, start_up, stop_all, wrk

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  server {{
    listen {listen};
    root {dir}/site;
    default_type "text/html; charset=utf-8";
    etag on;
  }}
}}
"""


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {what} not ready after {limit} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "edge"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    need("nginx", "nginx-light")
    prepare(build=not args.no_build, services=False)

    work = tempfile.mkdtemp(prefix="bakery-bench-edge-")
    env = {**os.environ, "BAKERY_DATA_DIR": work, "BAKERY_LOG": "error", "BAKERY_ADMIN_PASSWORD": "bench-password"}
    try:
        lb = start_up(args.bin, env, ["--workers", "1"])
        page = f"http://{lb}/products/1"
        wait_until(lambda: get(page)[1].get("x-edge") == "hit", 60, "the edge's /products/1")
        _, _, html = get(page)
        backends = json.loads(get(f"http://{lb}/lb/backends")[2])
        clone = next(b["addr"] for p in backends["pools"] if p["name"] == "web" for b in p["backends"])

        # nginx's workers run as an unprivileged user: the file must be readable.
        os.chmod(work, 0o755)
        os.makedirs(os.path.join(work, "site", "products"))
        with open(os.path.join(work, "site", "products", "1"), "wb") as f:
            f.write(html)
        nginx_port = free_port()
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=os.cpu_count() or 2, dir=work, listen=f"127.0.0.1:{nginx_port}"))
        spawn(["nginx", "-c", conf, "-p", work, "-e", os.path.join(work, "nginx-error.log")], env)
        wait_until(lambda: get(f"http://127.0.0.1:{nginx_port}/products/1")[0] == 200, 15, "nginx")

        targets = {"edge": page, "clone": f"http://{clone}/products/1",
                   "nginx": f"http://127.0.0.1:{nginx_port}/products/1"}
        sizes = {name: len(get(url)[2]) for name, url in targets.items()}
        log(f"page sizes (bytes): {sizes}")
        log("warming up")
        for url in targets.values():
            wrk(url, args.connections, 2)
        runs = {t: [] for t in targets}
        total = args.rounds * len(targets)
        done = 0
        for r in range(args.rounds):
            order = list(targets)[r % len(targets):] + list(targets)[:r % len(targets)]
            for target in order:
                result = wrk(targets[target], args.connections, args.duration)
                runs[target].append(result)
                done += 1
                log(f"[{done:>2}/{total}] {target:<5} round {r + 1}: {result['rps']:>9.0f} req/s"
                    f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                    + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else ""))
        medians = {t: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p99_ms")}
                   for t, rs in runs.items()}
        ratios = {"edge_over_clone": medians["edge"]["rps"] / medians["clone"]["rps"],
                  "edge_over_nginx": medians["edge"]["rps"] / medians["nginx"]["rps"]}
        lines = ["| target | req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        for t in targets:
            m = medians[t]
            lines.append(f"| {t} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |")
        table = "\n".join(lines)
        log(f"\nmedians of {args.rounds} rounds x {args.duration} s, {args.connections} connections, wrk -t2, "
            f"{os.cpu_count()} cores:\n{table}\n"
            f"edge/clone {ratios['edge_over_clone']:.2f} (goal >= 5), edge/nginx {ratios['edge_over_nginx']:.2f} "
            f"(goal >= 0.8)")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"medians": medians, "ratios": ratios, "runs": runs, "sizes": sizes,
                       "connections": args.connections, "rounds": args.rounds, "duration_s": args.duration}, f,
                      indent=2)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
        plt = pyplot()
        if plt:
            fig, ax = plt.subplots(figsize=(7, 4))
            names = list(targets)
            bars = ax.bar(names, [medians[n]["rps"] for n in names], color=["#c0703a", "#999999", "#4a7a3a"])
            ax.bar_label(bars, fmt="%.0f")
            ax.set_ylabel("requests/s (median)")
            ax.set_title(f"GET /products/1, {args.connections} connections, same {os.cpu_count()} cores")
            fig.tight_layout()
            fig.savefig(os.path.join(args.out, "edge.png"), dpi=110)
    finally:
        stop_all(grace=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
