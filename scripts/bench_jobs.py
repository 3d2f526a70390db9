#!/usr/bin/env python3
"""Jobs benchmark: no-op jobs/s through bakery's job queue against Celery (PyPI) on
the same RabbitMQ, side by side in one run, at equal worker process counts.

  * bakery: `bakery bench jobs --jobs N --workers W --batch B` with BAKERY_BROKER_URL
    on a fresh vhost (each job a durable row in SQLite, claimed under a lease, ended
    with its result), workers of BAKERY_WORKER_CONCURRENCY (--concurrency) tasks;
    run twice per round: enqueued in batches of B (--batch; one transaction and one
    dispatch message per 64 jobs) and one job at a time (batch 1: a transaction and
    a message per job);
  * Celery: W `celery worker` processes (prefork, concurrency 4, acks late, results
    ignored) on another fresh vhost; N `noop.delay()` from one producer; a task counts
    itself in Redis; done when the count reaches N.

Every figure is N over the time from the first enqueue to the last end. Rounds
alternate; medians and the ratios to Celery are printed, written to
--out/results.json and plotted to --out/jobs.png.

    scripts/bench_jobs.py --jobs 20000 --workers 2 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchlib import ROOT, log, prepare, pyplot, run, spawn, stop_all

CELERY_DIR = os.path.join(ROOT, "scripts", "celery_bench")


def vhost(name):
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True,
                   stdout=subprocess.DEVNULL)
    return f"amqp://guest:guest@127.0.0.1:5672/{name}"


def bakery(binary, jobs, workers, batch, concurrency, tag):
    import tempfile
    data = tempfile.mkdtemp(prefix="bakery-bench-jobs-")
    env = {**os.environ, "BAKERY_DATA_DIR": data, "BAKERY_LOG": "warn",
           "BAKERY_WORKER_CONCURRENCY": str(concurrency),
           "BAKERY_BROKER_URL": vhost(f"bakery-bench-jobs-{tag}-b{batch}")}
    out = subprocess.run([binary, "bench", "jobs", "--jobs", str(jobs), "--workers", str(workers),
                          "--batch", str(batch)], env=env, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("result ")][-1]
    return json.loads(line[len("result "):])["jobs_per_s"]


def celery(jobs, workers, tag):
    env = {**os.environ, "CELERY_BROKER": vhost(f"bakery-bench-celery-{tag}"), "BENCH_KEY": f"bench-{tag}",
           "PYTHONPATH": CELERY_DIR}
    for i in range(workers):
        spawn([sys.executable, "-m", "celery", "-A", "noop_tasks", "worker", "--concurrency", "4", "-P", "prefork",
               "-n", f"w{i}-{tag}@%h", "--loglevel=warning"], env)
    time.sleep(6)  # workers connect
    producer = (
        "import time, redis\n"
        "from noop_tasks import noop, KEY\n"
        f"N = {jobs}\n"
        "r = redis.Redis(); r.delete(KEY)\n"
        "start = time.perf_counter()\n"
        "for _ in range(N): noop.delay()\n"
        "while int(r.get(KEY) or 0) < N: time.sleep(0.02)\n"
        "print(N / (time.perf_counter() - start))\n"
    )
    out = subprocess.run([sys.executable, "-c", producer], env=env, check=True, capture_output=True, text=True,
                         cwd=CELERY_DIR).stdout
    stop_all()
    return float(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue transaction (batch N)")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks per bakery worker")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "jobs"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    prepare(build=not args.no_build)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "celery", "redis"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures = {"celery": [], "bakery": [], "bakery_batch1": []}
    try:
        for round_ in range(1, args.rounds + 1):
            tag = f"{os.getpid():x}-{round_}"
            c = celery(args.jobs, args.workers, tag)
            b = bakery(args.bin, args.jobs, args.workers, args.batch, args.concurrency, tag)
            b1 = bakery(args.bin, args.jobs, args.workers, 1, args.concurrency, tag)
            log(f"round {round_}: Celery {c:.0f} tasks/s, bakery {b:.0f} jobs/s (batch {args.batch}), "
                f"{b1:.0f} jobs/s (batch 1); ratios {b / c:.2f}, {b1 / c:.2f}")
            for name, value in (("celery", c), ("bakery", b), ("bakery_batch1", b1)):
                figures[name].append(value)
    finally:
        stop_all()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    result = {"jobs": args.jobs, "workers": args.workers, "batch": args.batch, "concurrency": args.concurrency,
              "celery_per_s": medians["celery"], "bakery_per_s": medians["bakery"],
              "bakery_batch1_per_s": medians["bakery_batch1"], "rounds": figures}
    result["ratio"] = result["bakery_per_s"] / result["celery_per_s"]
    result["ratio_batch1"] = result["bakery_batch1_per_s"] / result["celery_per_s"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(f"median: Celery {medians['celery']:.0f}/s, bakery {medians['bakery']:.0f}/s (batch {args.batch}), "
        f"{medians['bakery_batch1']:.0f}/s (batch 1); ratios {result['ratio']:.2f}, "
        f"{result['ratio_batch1']:.2f} (goal >= 10)")
    plt = pyplot()
    if plt:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["Celery 5 (prefork 4)", f"bakery, batch {args.batch}", "bakery, batch 1"]
        values = [medians["celery"], medians["bakery"], medians["bakery_batch1"]]
        bars = ax.bar(labels, values, color=["#999999", "#c0703a", "#e0a070"])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_ylabel("no-op jobs/s (median)")
        ax.set_title(f"{args.jobs} jobs, {args.workers} worker processes, same RabbitMQ")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "jobs.png"), dpi=110)


if __name__ == "__main__":
    run(main)
