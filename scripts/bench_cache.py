#!/usr/bin/env python3
"""Cache benchmark: GET /api/products/{id} through the load balancer on PostgreSQL,
for a product with 20 reviews, with the cache off and on each engine (embedded,
Redis, Memcached on two nodes), side by side in one run; then the hit ratio under a
skewed (Zipf) workload over 200 products with a small cache TTL churn.

Starts one `bakery up` (3 clones) per setup, all on one fresh PostgreSQL database,
and alternates wrk runs between them for several rounds. Prints median requests/s,
p50/p99 and the ratio of each engine to cache off; writes results.json, results.md
and cache.png to --out. Needs the services of scripts/services.sh.

    scripts/bench_cache.py --rounds 3 --duration 6
    scripts/bench_cache.py --db-cpu 0,0.5,0.25     # also with the database on a fixed CPU budget
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import prepare, pyplot, run, CGROUP, limit_cpu, log, release_cpu, start_up, stop_all, wrk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUPS = {
    "cache off": "none",
    "embedded": "embedded",
    "redis": "redis://127.0.0.1:6379",
    "memcached": "memcached://127.0.0.1:11211,127.0.0.1:11212",
}


def call(base, method, path, body=None, cookie=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("content-type", "application/json")
    if cookie:
        request.add_header("cookie", cookie)
    with urllib.request.urlopen(request, timeout=10) as response:
        set_cookie = response.headers.get("set-cookie", "")
        return json.loads(response.read() or b"null"), response.headers, set_cookie.split(";")[0]


def metric_sum(base_addrs, name, label):
    total = 0.0
    for addr in base_addrs:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + "{") and label in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


def zipf_script(path, products, s=1.1):
    """A wrk script drawing product ids from a Zipf(s) distribution."""
    weights = [1 / (k ** s) for k in range(1, products + 1)]
    total = sum(weights)
    cumulative, acc = [], 0.0
    for w in weights:
        acc += w / total
        cumulative.append(round(acc, 6))
    with open(path, "w") as f:
        f.write("local cdf = {" + ",".join(map(str, cumulative)) + "}\n")
        f.write("""
math.randomseed(os.time())
request = function()
  local r = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/api/products/" .. lo)
end
""")


def parse_budgets(raw):
    """`0,0.5,0.25` -> [0.0, 0.5, 0.25]; 0 means no limit."""
    try:
        budgets = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        budgets = []
    if not budgets or any(b < 0 or b > 2 for b in budgets):
        print("bench: --db-cpu is a comma-separated list of shares of one core from 0 (no limit) to 2", file=sys.stderr)
        sys.exit(2)
    return budgets


def budget_name(budget):
    return "shared box" if budget == 0 else f"database on {budget:g} core"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "cache"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--db-cpu", default="0",
                        help="comma-separated CPU budgets for the PostgreSQL primary, in shares of one core, each measured "
                             "in turn (0: no limit, sharing the box with everything else), as if it ran on its own machine")
    args = parser.parse_args()
    budgets = parse_budgets(args.db_cpu)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1:
        print("bench: every count must be positive", file=sys.stderr)
        sys.exit(2)
    if any(budgets) and (not os.path.isdir(CGROUP) or os.geteuid() != 0):
        print("bench: a --db-cpu budget needs root and cgroup v1 at /sys/fs/cgroup/cpu", file=sys.stderr)
        sys.exit(2)
    prepare(build=not args.no_build)

    name = f"bakery_bench_cache_{int(time.time())}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    group = None
    work = tempfile.mkdtemp(prefix="bakery-bench-cache-")
    try:
        # Four topologies of three clones on one PostgreSQL: 6 connections a clone keeps
        # them within its default max_connections (100) with room to spare.
        base_env = {**os.environ, "BAKERY_LOG": "error", "BAKERY_ADMIN_PASSWORD": "bench-password",
                    "BAKERY_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
                    "BAKERY_DATABASE_POOL_SIZE": "6"}
        bases = {}
        for setup, url in SETUPS.items():
            addr = start_up(args.bin, {**base_env, "BAKERY_CACHE_URL": url,
                                       "BAKERY_DATA_DIR": os.path.join(work, setup.replace(" ", "-"))}, ["--no-demo"])
            bases[setup] = f"http://{addr}"
        base = bases["cache off"]
        _, _, admin = call(base, "POST", "/api/session", {"username": "admin", "password": "bench-password"})
        log("loading 200 products and 20 reviews on product 1")
        for i in range(200):
            call(base, "POST", "/api/products", {"name": f"Loaf {i}", "description": "Bench bread. " * 20,
                                                 "price_cents": 100 + i}, admin)
        for i in range(20):
            username = f"reviewer{i}"
            call(base, "POST", "/api/users", {"username": username, "email": f"{username}@example.com", "password": "password-1"})
            _, _, cookie = call(base, "POST", "/api/session", {"username": username, "password": "password-1"})
            call(base, "POST", "/api/products/1/reviews", {"rating": 1 + i % 5, "body": "A fine loaf, " * 10}, cookie)
        for setup, b in bases.items():
            wrk(f"{b}/api/products/1", 8, 2)

        runs = {budget_name(b): {s: [] for s in SETUPS} for b in budgets}
        total = args.rounds * len(SETUPS) * len(budgets)
        done = 0
        for budget in budgets:
            if budget > 0:
                group = group or limit_cpu("bakery-bench-primary", 5432, budget)
                set_quota(group, budget)
                log(f"PostgreSQL held to {budget:g} of a core")
            elif group:
                set_quota(group, None)
            label = budget_name(budget)
            for r in range(args.rounds):
                order = list(SETUPS) if r % 2 == 0 else list(reversed(SETUPS))
                for setup in order:
                    result = wrk(f"{bases[setup]}/api/products/1", args.connections, args.duration)
                    runs[label][setup].append(result)
                    done += 1
                    log(f"[{done:>2}/{total}] {label:<22} {setup:<10} round {r + 1}: {result['rps']:>8.0f} req/s"
                        f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                        + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else ""))
        if group:
            set_quota(group, None)
        med = {label: {s: {k: statistics.median(run[k] for run in rs) for k in ("rps", "p50_ms", "p99_ms")}
                       for s, rs in per_setup.items()} for label, per_setup in runs.items()}

        script = os.path.join(work, "zipf.lua")
        zipf_script(script, 200)
        hit_ratio = {}
        for setup in SETUPS:
            if setup == "cache off":
                continue
            clones = clone_addrs(bases[setup])
            label = 'cache="object"'
            before = {r: metric_sum(clones, "bakery_cache_requests_total", f'{label},result="{r}"') for r in ("hit", "miss", "bypass")}
            result = wrk(bases[setup], args.connections, args.duration, script)
            after = {r: metric_sum(clones, "bakery_cache_requests_total", f'{label},result="{r}"') for r in ("hit", "miss", "bypass")}
            counts = {r: after[r] - before[r] for r in after}
            hit_ratio[setup] = {"hit_ratio": counts["hit"] / max(1, sum(counts.values())), "rps": result["rps"], **counts}
            log(f"zipf  {setup:<10}: hit ratio {hit_ratio[setup]['hit_ratio']:.3f} at {result['rps']:.0f} req/s")

        lines = ["| database | setup | req/s | p50 / p99 ms | ratio to cache off | Zipf hit ratio |", "|---|---|---|---|---|---|"]
        for label, per_setup in med.items():
            off = per_setup["cache off"]["rps"]
            for setup, m in per_setup.items():
                zipf = f"{hit_ratio[setup]['hit_ratio']:.3f}" if setup in hit_ratio else "—"
                lines.append(f"| {label} | {setup} | {m['rps']:.0f} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} | {m['rps'] / off:.2f} | {zipf} |")
        table = "\n".join(lines)
        log(f"\nGET /api/products/1 (20 reviews), medians of {args.rounds} rounds, wrk -t2 -c{args.connections} {args.duration} s:\n{table}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"runs": runs, "medians": med, "zipf": hit_ratio}, f, indent=2)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
        plot(med, os.path.join(args.out, "cache.png"))
    finally:
        stop_all()
        if group:
            release_cpu(group)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def set_quota(group, share):
    """Changes a cgroup's CPU budget in place (`None`: no limit)."""
    with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
        f.write("-1" if share is None else str(int(share * 100000)))


def clone_addrs(base):
    with urllib.request.urlopen(f"{base}/lb/backends", timeout=5) as response:
        pools = json.loads(response.read())["pools"]
    return [b["addr"] for p in pools for b in p["backends"]]


def plot(med, path):
    """Grouped bars: one group per database budget, one bar per setup, each labelled
    with its ratio to cache off under the same budget."""
    plt = pyplot()
    if plt is None:
        return
    labels = list(med)
    setups = list(SETUPS)
    colours = ["#999999", "#c77d3a", "#b5473a", "#5f6b3a"]
    width = 0.8 / len(setups)
    fig, ax = plt.subplots(figsize=(max(8, 3 * len(labels)), 4.4))
    for i, setup in enumerate(setups):
        xs = [g + (i - (len(setups) - 1) / 2) * width for g in range(len(labels))]
        values = [med[label][setup]["rps"] for label in labels]
        bars = ax.bar(xs, values, width, label=setup, color=colours[i % len(colours)])
        for bar, label in zip(bars, labels):
            ratio = med[label][setup]["rps"] / med[label]["cache off"]["rps"]
            ax.annotate(f"{ratio:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("requests/s (median)")
    ax.set_title("GET /api/products/1 (20 reviews) through the load balancer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


if __name__ == "__main__":
    run(main)
