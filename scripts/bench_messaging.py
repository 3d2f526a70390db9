#!/usr/bin/env python3
"""Messaging benchmark: how long an RSVP takes to become a sent mail (with its
follow-up recorded) and a stored push notification, under a stream of RSVPs, on the
embedded broker and on RabbitMQ side by side; and one push process holding many open
event streams: its memory, and the time one event takes to reach all of them.

For each broker, a `bakery up` (3 clones, one email and one push process) mails to a
real SMTP server (scripts/smtp_sink.py). N users RSVP to one class, C at a time. The
latencies come from the system's own timestamps: `confirmation_sent_at - created_at`
of each RSVP (commit → outbox → broker → email service → SMTP 250 → email.sent →
follow-up), and the `rsvp.created` notification's `created_at - ` the RSVP's (commit →
outbox → broker → push service → stored; streams get it within the feed's wake-up).

Then, on the embedded broker, S streams of one user are opened straight to the push
process; one RSVP; the time until every stream has the event, and the push
process's resident memory before and after opening them.

    scripts/bench_messaging.py --rsvps 400 --concurrency 16 --streams 10000
Writes results.json, results.md and messaging.png to --out.
"""

import argparse
import asyncio
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchlib import ROOT, log, prepare, pyplot, run, spawn, stop_all


class Client:
    def __init__(self, addr):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.cookie = None

    def call(self, method, path, body=None, want=None):
        headers = {"content-type": "application/json"} if body is not None else {}
        if self.cookie:
            headers["cookie"] = self.cookie
        payload = json.dumps(body) if body is not None else None
        try:
            self.conn.request(method, path, body=payload, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # An idle keep-alive connection the server closed: the request never
            # reached it, so sending it again on a fresh connection is safe.
            self.conn.close()
            self.conn.request(method, path, body=payload, headers=headers)
            response = self.conn.getresponse()
        data = response.read()
        cookie = response.getheader("set-cookie")
        if cookie and cookie.startswith("bakery_session="):
            self.cookie = cookie.split(";")[0]
        if response.status >= 400 or (want and response.status != want):
            raise SystemExit(f"bench: {method} {path} answered {response.status}: {data[:200]!r}")
        return json.loads(data) if data else None


def user(addr, name):
    c = Client(addr)
    c.call("POST", "/api/users", {"username": name, "email": f"{name}@example.com", "password": "password-1"})
    c.call("POST", "/api/session", {"username": name, "password": "password-1"})
    return c


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def parse_ms(text):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def start(binary, env):
    """`bakery up`; returns (load balancer address, {role id: (pid, addr)})."""
    proc = spawn([binary, "up", "--listen", "127.0.0.1:0", "--clones", "3", "--no-demo"], env)
    processes = {}
    for line in proc.stdout:
        if line.startswith("started "):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            processes[fields["id"]] = (int(fields["pid"]), fields["addr"])
        if line.startswith("ready "):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return line.split()[1].replace("http://", ""), processes, proc
    raise SystemExit("bench: bakery up did not get ready")


def stop(proc):
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def latencies(binary, broker_url, rsvps, concurrency):
    data = tempfile.mkdtemp(prefix="bakery-bench-msg-")
    mail = os.path.join(data, "sink")
    port = 20000 + os.getpid() % 20000
    sink = spawn([sys.executable, os.path.join(ROOT, "scripts/smtp_sink.py"), str(port), mail], os.environ.copy())
    sink.stdout.readline()
    env = {**os.environ, "BAKERY_DATA_DIR": data, "BAKERY_ADMIN_PASSWORD": "admin-password",
           "BAKERY_LOG": "warn", "BAKERY_SMTP_URL": f"smtp://127.0.0.1:{port}"}
    if broker_url:
        env["BAKERY_BROKER_URL"] = broker_url
    addr, _, proc = start(binary, env)
    admin = Client(addr)
    admin.call("POST", "/api/session", {"username": "admin", "password": "admin-password"})
    event = admin.call("POST", "/api/events", {"title": "Bench bake", "starts_at": "2031-01-01T10:00:00Z",
                                                 "capacity": rsvps + 10})["id"]
    with ThreadPoolExecutor(concurrency) as pool:
        users = list(pool.map(lambda i: user(addr, f"m{os.getpid() % 1000}x{i}"), range(rsvps)))
        log(f"  {rsvps} users; RSVPs {concurrency} at a time")
        started = time.perf_counter()
        list(pool.map(lambda u: u.call("POST", f"/api/events/{event}/rsvp", want=201), users))
        took = time.perf_counter() - started

    def confirmed(u):
        for _ in range(600):
            mine = u.call("GET", "/api/me/rsvps")["items"][0]
            if mine["confirmation_sent_at"]:
                return mine
            time.sleep(0.1)
        raise SystemExit("bench: an RSVP was never confirmed")

    email_ms, push_ms = [], []
    for u in users:
        mine = confirmed(u)
        created = parse_ms(mine["created_at"])
        email_ms.append(parse_ms(mine["confirmation_sent_at"]) - created)
        notes = u.call("GET", "/api/notifications")["items"]
        pushed = [n for n in notes if n["kind"] == "rsvp.created"]
        push_ms.append(parse_ms(pushed[0]["created_at"]) - created)
    mails = len([f for f in os.listdir(mail) if f.endswith(".eml")])
    stop(proc)
    os.killpg(sink.pid, 9)
    return {"rsvps_per_s": rsvps / took, "mails": mails,
            "email_p50_ms": percentile(email_ms, 50), "email_p99_ms": percentile(email_ms, 99),
            "push_p50_ms": percentile(push_ms, 50), "push_p99_ms": percentile(push_ms, 99)}


async def open_stream(host, port, cookie, ready):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/notifications/stream HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
    await writer.drain()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    ready.append(1)
    while True:
        line = await reader.readline()
        if not line:
            return None, writer
        if b"event: rsvp.created" in line:
            return time.perf_counter(), writer


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fan_out(binary, streams):
    data = tempfile.mkdtemp(prefix="bakery-bench-sse-")
    env = {**os.environ, "BAKERY_DATA_DIR": data, "BAKERY_ADMIN_PASSWORD": "admin-password", "BAKERY_LOG": "warn"}
    addr, processes, proc = start(binary, env)
    push_pid, push_addr = processes["push-1"]
    admin = Client(addr)
    admin.call("POST", "/api/session", {"username": "admin", "password": "admin-password"})
    event = admin.call("POST", "/api/events", {"title": "Fan-out", "starts_at": "2031-01-01T10:00:00Z",
                                                 "capacity": 10})["id"]
    member = user(addr, f"fan{os.getpid() % 1000}")
    host, port = push_addr.split(":")
    before = rss_mb(push_pid)

    async def main():
        ready = []
        tasks = []
        for start_at in range(0, streams, 500):
            batch = [asyncio.create_task(open_stream(host, int(port), member.cookie, ready))
                     for _ in range(start_at, min(streams, start_at + 500))]
            tasks.extend(batch)
            while len(ready) < len(tasks):
                await asyncio.sleep(0.05)
        opened = rss_mb(push_pid)
        await asyncio.sleep(1)
        sent = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: member.call("POST", f"/api/events/{event}/rsvp", want=201))
        results = await asyncio.gather(*tasks)
        arrived = [t for t, _ in results if t is not None]
        for _, writer in results:
            writer.close()
        return opened, (max(arrived) - sent) * 1000, (statistics.median(arrived) - sent) * 1000, len(arrived)

    opened, last_ms, median_ms, got = asyncio.run(main())
    stop(proc)
    return {"streams": streams, "received": got, "rss_before_mb": before, "rss_with_streams_mb": opened,
            "kib_per_stream": (opened - before) * 1024 / streams, "all_reached_ms": last_ms,
            "median_reached_ms": median_ms}


def fresh_vhost():
    vhost = f"bakery-bench-{os.getpid():x}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   stdout=subprocess.DEVNULL)
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rsvps", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/bakery"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "messaging"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    prepare(build=not args.no_build)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.makedirs(args.out, exist_ok=True)
    results = {}
    try:
        for name, url in [("embedded", None), ("rabbitmq", fresh_vhost())]:
            log(f"RSVP → email / push latency on {name}")
            results[name] = latencies(args.bin, url, args.rsvps, args.concurrency)
            log(f"  {json.dumps(results[name])}")
        log(f"{args.streams} open streams on one push process")
        results["fan_out"] = fan_out(args.bin, args.streams)
        log(f"  {json.dumps(results['fan_out'])}")
    finally:
        stop_all()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = ["| broker | RSVPs/s | mails | RSVP→mail+follow-up p50 / p99 ms | RSVP→push stored p50 / p99 ms |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name in ("embedded", "rabbitmq"):
        r = results[name]
        lines.append(f"| {name} | {r['rsvps_per_s']:.0f} | {r['mails']} | {r['email_p50_ms']:.0f} / {r['email_p99_ms']:.0f}"
                     f" | {r['push_p50_ms']:.0f} / {r['push_p99_ms']:.0f} |")
    f = results["fan_out"]
    lines.append("")
    lines.append(f"{f['streams']} streams on one push process: {f['received']} received the event; all within "
                 f"{f['all_reached_ms']:.0f} ms (median {f['median_reached_ms']:.0f} ms); resident memory "
                 f"{f['rss_before_mb']:.0f} → {f['rss_with_streams_mb']:.0f} MB ({f['kib_per_stream']:.1f} KiB per stream)")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as out:
        out.write(table + "\n")
    print(table)
    plt = pyplot()
    if plt:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = ["embedded", "rabbitmq"]
        xs = range(len(names))
        for offset, (key, label) in enumerate([("email_p50_ms", "mail p50"), ("email_p99_ms", "mail p99"),
                                               ("push_p50_ms", "push p50"), ("push_p99_ms", "push p99")]):
            ax.bar([x + offset * 0.2 for x in xs], [results[n][key] for n in names], width=0.2, label=label)
        ax.set_xticks([x + 0.3 for x in xs], names)
        ax.set_ylabel("ms after the RSVP's commit")
        ax.set_title(f"{args.rsvps} RSVPs, {args.concurrency} at a time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "messaging.png"), dpi=110)


if __name__ == "__main__":
    run(main)
