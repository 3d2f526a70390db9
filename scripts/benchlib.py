"""What the benchmark scripts share: starting and always stopping processes (by
process group), running wrk and reading its figures."""

import os
import re
import signal
import subprocess

STARTED = []  # every Popen a script started, stopped by stop_all()


def log(message):
    print(message, flush=True)


def spawn(args, env):
    """Starts a process in its own process group, its stdout piped as text."""
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    STARTED.append(proc)
    return proc


def start_up(binary, env, flags=()):
    """`bakery up --listen 127.0.0.1:0 --clones 3`; returns the load balancer's address."""
    proc = spawn([binary, "up", "--listen", "127.0.0.1:0", "--clones", "3", *flags], env)
    for line in proc.stdout:
        if line.startswith("ready "):
            return line.split()[1].replace("http://", "")
    raise SystemExit("bench: bakery up did not get ready")


def stop_all(grace=30):
    """SIGTERM to every group started, newest first; SIGKILL what outlives `grace`."""
    for proc in reversed(STARTED):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in reversed(STARTED):
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def to_ms(value):
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, connections, duration, script=None):
    """One wrk run (2 threads): requests/s, p50 and p99 in ms, failures."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99_ms": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}
