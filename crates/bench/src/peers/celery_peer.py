"""The peer of `bakery bench jobs --peer celery`: no-op tasks through Celery 5 on the
same RabbitMQ, with Celery's defaults (prefork, one process per core, prefetch
multiplier 4, acks on receipt) and results ignored (bakery's jobs keep theirs).

Written next to the bench's report and run by it:

    python3 celery_peer.py worker NAME     a worker (its own process group)
    python3 celery_peer.py produce N P     N tasks from P producer threads, each
                                           calling apply_async() once per task; waits
                                           until all ran; prints one JSON line

Environment: BENCH_BROKER (the AMQP URL), BENCH_QUEUE (a queue of this round's own),
BENCH_DIR (where each task appends its latency and each worker marks itself ready).
A task appends one short line to a file opened for appending, which is one atomic
write, so every process of every worker can count into the same file.
"""

import json
import os
import sys
import threading
import time

from celery import Celery
from celery.signals import worker_ready

BROKER = os.environ["BENCH_BROKER"]
QUEUE = os.environ["BENCH_QUEUE"]
DIR = os.environ["BENCH_DIR"]
ENDS = os.path.join(DIR, "ends")

app = Celery("celery_peer", broker=BROKER)
app.conf.task_ignore_result = True
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop")
def noop(enqueued_at):
    line = "%.3f\n" % ((time.time() - enqueued_at) * 1000.0)
    fd = os.open(ENDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@worker_ready.connect
def mark_ready(sender=None, **_):
    with open(os.path.join(DIR, "ready-" + sender.hostname), "w"):
        pass


def ends():
    try:
        with open(ENDS) as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def produce(n, producers):
    share = [n // producers + (1 if i < n % producers else 0) for i in range(producers)]
    start = time.time()

    def run(count):
        for _ in range(count):
            noop.apply_async(args=[time.time()])

    threads = [threading.Thread(target=run, args=(c,)) for c in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while True:
        done = ends()
        if len(done) >= n:
            break
        time.sleep(0.05)
    elapsed = time.time() - start
    done.sort()

    def pct(p):
        return done[min(len(done) - 1, round(p / 100.0 * (len(done) - 1)))]

    print(json.dumps({"jobs_per_s": n / elapsed, "p50_ms": pct(50), "p99_ms": pct(99)}))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        app.worker_main(["worker", "--loglevel=warning", "-n", sys.argv[2], "-Q", QUEUE])
    elif sys.argv[1] == "produce":
        produce(int(sys.argv[2]), int(sys.argv[3]))
