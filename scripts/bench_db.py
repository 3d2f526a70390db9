#!/usr/bin/env python3
"""Database benchmark: a read-heavy mix through the load balancer on PostgreSQL,
primary only against primary + streaming replica, side by side in one run; and what
read-your-writes routing costs a writer.

Starts two `bakery up` topologies (3 clones each) on one fresh database: one with
BAKERY_REPLICA_URLS, one without. Then, alternating between them for several rounds:

  * wrk with a mix of GET /api/products, /api/products/{id} and /api/events
    (anonymous: eligible for the replica); median requests/s, p50, p99, ratio;
  * a writer loop (PATCH a price, then GET the product with the same session) and an
    anonymous reader loop: median and p99 latency of the reads, and which server
    answered them (x-db).

Needs PostgreSQL on 5432 and the replica on 5433 (scripts/services.sh makes both).

On one small machine every server shares the same cores, so a replica cannot add
capacity there. `--db-cpu 0.4` gives the primary cluster and the replica cluster each
a fixed share of a core (cgroup v1 CPU quota, as root), as if each ran on its own
small machine: then the replica's share is capacity the primary alone does not have.
Writes results.json, results.md and db-replicas.png to --out.

    scripts/bench_db.py --rounds 3 --duration 8
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import prepare, pyplot, run, CGROUP, limit_cpu, log, release_cpu, start_up, stop_all, wrk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def psql(port, sql, db="postgres"):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-qAtc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


WRK_MIX = """
local paths = {"/api/products", "/api/events"}
for i = 1, 12 do paths[#paths + 1] = "/api/products/" .. i end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end
"""


class Client:
    def __init__(self, addr):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.cookie = None

    def call(self, method, path, body=None):
        headers = {"content-type": "application/json"} if body is not None else {}
        if self.cookie:
            headers["cookie"] = self.cookie
        start = time.perf_counter()
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        cookie = response.getheader("set-cookie")
        if cookie and cookie.startswith("bakery_session="):
            self.cookie = cookie.split(";")[0]
        if response.status >= 400:
            raise SystemExit(f"bench: {method} {path} answered {response.status}: {data[:200]!r}")
        return elapsed, response.getheader("x-db")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def reader_loops(addr, iterations):
    """Median/p99 of a writer's reads right after its writes, and of anonymous reads."""
    writer = Client(addr)
    writer.call("POST", "/api/session", {"username": "admin", "password": "bench-password"})
    anonymous = Client(addr)
    writer_ms, writer_roles, anon_ms, anon_roles = [], [], [], []
    for i in range(iterations):
        writer.call("PATCH", "/api/products/1", {"price_cents": 600 + i % 50})
        ms, role = writer.call("GET", "/api/products/1")
        writer_ms.append(ms)
        writer_roles.append(role)
        ms, role = anonymous.call("GET", "/api/products/2")
        anon_ms.append(ms)
        anon_roles.append(role)
    share = lambda roles: round(sum(r == "replica" for r in roles) / len(roles), 3)
    return {"writer_read_p50_ms": statistics.median(writer_ms), "writer_read_p99_ms": percentile(writer_ms, 0.99),
            "writer_reads_on_replica": share(writer_roles),
            "anonymous_read_p50_ms": statistics.median(anon_ms), "anonymous_read_p99_ms": percentile(anon_ms, 0.99),
            "anonymous_reads_on_replica": share(anon_roles)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--writes", type=int, default=300, help="write-then-read iterations per round")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=None, help="default: bench-results/db (or db-cpu-limited)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--db-cpu", type=float, default=0.0,
                        help="give each PostgreSQL cluster this share of one core (0: no limit)")
    args = parser.parse_args()
    if args.out is None:
        args.out = os.path.join(ROOT, "bench-results", "db-cpu-limited" if args.db_cpu > 0 else "db")
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.writes < 1:
        print("bench: every count must be positive", file=sys.stderr)
        sys.exit(2)
    prepare(build=not args.no_build)

    name = f"bakery_bench_{int(time.time())}"
    psql(5432, f"CREATE DATABASE {name}")
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            psql(5433, "SELECT 1", db=name)
            break
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    primary = f"postgres://postgres@127.0.0.1:5432/{name}"
    replica = f"postgres://postgres@127.0.0.1:5433/{name}"
    groups = []
    if args.db_cpu > 0:
        if not os.path.isdir(CGROUP) or os.geteuid() != 0:
            print("bench: --db-cpu needs root and cgroup v1 at /sys/fs/cgroup/cpu", file=sys.stderr)
            sys.exit(2)
        groups = [limit_cpu("bakery-bench-primary", 5432, args.db_cpu), limit_cpu("bakery-bench-replica", 5433, args.db_cpu)]
        log(f"each PostgreSQL cluster limited to {args.db_cpu:.2f} of a core")
    work = tempfile.mkdtemp(prefix="bakery-bench-db-")
    script = os.path.join(work, "mix.lua")
    with open(script, "w") as f:
        f.write(WRK_MIX)
    try:
        # The cache is off: this measures where database reads go. Two topologies of
        # three clones at 8 connections a pool stay well within max_connections (100).
        base = {**os.environ, "BAKERY_LOG": os.environ.get("BAKERY_LOG", "error"), "BAKERY_ADMIN_PASSWORD": "bench-password",
                "BAKERY_DATABASE_URL": primary, "BAKERY_CACHE_URL": "none", "BAKERY_DATABASE_POOL_SIZE": "8"}
        setups = {
            "primary only": start_up(args.bin, {**base, "BAKERY_DATA_DIR": os.path.join(work, "a")}),
            "primary + replica": start_up(args.bin, {**base, "BAKERY_DATA_DIR": os.path.join(work, "b"),
                                                     "BAKERY_REPLICA_URLS": replica}),
        }
        log("warming up")
        for addr in setups.values():
            wrk(f"http://{addr}", args.connections, 2, script)
        mix = {s: [] for s in setups}
        loops = {s: [] for s in setups}
        total = args.rounds * len(setups)
        done = 0
        for r in range(args.rounds):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            for setup in order:
                result = wrk(f"http://{setups[setup]}", args.connections, args.duration, script)
                mix[setup].append(result)
                loop = reader_loops(setups[setup], args.writes)
                loops[setup].append(loop)
                done += 1
                log(f"[{done}/{total}] {setup:<18} round {r + 1}: {result['rps']:>8.0f} req/s  p50 {result['p50_ms']:.2f} ms"
                    f"  p99 {result['p99_ms']:.2f} ms | writer read p50 {loop['writer_read_p50_ms']:.2f} ms"
                    f" ({loop['writer_reads_on_replica']:.0%} on replica), anonymous read p50"
                    f" {loop['anonymous_read_p50_ms']:.2f} ms ({loop['anonymous_reads_on_replica']:.0%} on replica)")
        med = lambda rows, key: statistics.median(row[key] for row in rows)
        a, b = "primary only", "primary + replica"
        lines = [
            "| setup | mix req/s | mix p50 / p99 ms | writer read p50 / p99 ms | writer reads on replica | anonymous read p50 / p99 ms | anonymous reads on replica |",
            "|---|---|---|---|---|---|---|"]
        for s in setups:
            lines.append(f"| {s} | {med(mix[s], 'rps'):.0f} | {med(mix[s], 'p50_ms'):.2f} / {med(mix[s], 'p99_ms'):.2f} | "
                         f"{med(loops[s], 'writer_read_p50_ms'):.2f} / {med(loops[s], 'writer_read_p99_ms'):.2f} | "
                         f"{med(loops[s], 'writer_reads_on_replica'):.0%} | "
                         f"{med(loops[s], 'anonymous_read_p50_ms'):.2f} / {med(loops[s], 'anonymous_read_p99_ms'):.2f} | "
                         f"{med(loops[s], 'anonymous_reads_on_replica'):.0%} |")
        ratio = med(mix[b], "rps") / med(mix[a], "rps")
        lines.append("")
        lines.append(f"ratio (primary + replica) / (primary only), mix req/s: {ratio:.2f}")
        table = "\n".join(lines)
        log(f"\nmedians of {args.rounds} rounds (wrk -t2 -c{args.connections}, {args.duration} s; {args.writes} write-then-read pairs):\n{table}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"mix": mix, "loops": loops, "ratio": ratio}, f, indent=2)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
        plot(mix, loops, os.path.join(args.out, "db-replicas.png"), args.db_cpu)
    finally:
        stop_all()
        for group in groups:
            release_cpu(group)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def plot(mix, loops, path, db_cpu):
    plt = pyplot()
    if plt is None:
        return
    setups = list(mix)
    med = lambda rows, key: statistics.median(row[key] for row in rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.bar(setups, [med(mix[s], "rps") for s in setups], color=["#c77d3a", "#5f6b3a"])
    ax1.set_title("read mix, median requests/s")
    width = 0.38
    xs = range(len(setups))
    ax2.bar([x - width / 2 for x in xs], [med(loops[s], "writer_read_p50_ms") for s in setups], width, label="writer, right after a write")
    ax2.bar([x + width / 2 for x in xs], [med(loops[s], "anonymous_read_p50_ms") for s in setups], width, label="anonymous")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(setups)
    ax2.set_title("GET /api/products/{id}, median latency, ms")
    ax2.legend()
    limit = f", each cluster limited to {db_cpu:.2f} core" if db_cpu > 0 else ", all on the same 2 cores"
    fig.suptitle(f"PostgreSQL primary only vs primary + streaming replica, through the load balancer{limit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


if __name__ == "__main__":
    run(main)
