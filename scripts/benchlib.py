"""What the benchmark scripts share: starting and always stopping processes (by
process group), running wrk and reading its figures."""

import os
import re
import shutil
import signal
import subprocess
import time

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


def run(main):
    """Runs a benchmark's main; Ctrl-C still stops everything it started."""
    import sys
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)


def pyplot():
    """matplotlib's pyplot (installed from PyPI if missing), or None without it."""
    import importlib
    import sys
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        log("bench: matplotlib unavailable; no plot")
        return None


def to_ms(value):
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(build=True, services=True):
    """Brings up the services of scripts/services.sh and builds the release binary."""
    if services:
        subprocess.run([os.path.join(ROOT, "scripts/services.sh")], check=True, stdout=subprocess.DEVNULL)
    if build:
        log("building bakery (release)")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "bakery"], cwd=ROOT, check=True)


def need(tool, package):
    """Installs `package` from Debian when `tool` is not on the PATH."""
    if shutil.which(tool):
        return
    log(f"installing {package} (for {tool})")
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wrk(url, connections, duration, script=None):
    """One wrk run (2 threads): requests/s, p50 and p99 in ms, failures."""
    need("wrk", "wrk")
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


# Giving a PostgreSQL cluster a fixed CPU share (cgroup v1), as if it ran on its own
# small machine: on one shared box that is where a cache or a replica shows its worth.
CGROUP = "/sys/fs/cgroup/cpu"


def cluster_pids(port):
    """The postmaster of the cluster on `port` and all its children."""
    data = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qAtc", "SHOW data_directory"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def limit_cpu(name, port, share):
    """Puts a cluster in its own cgroup with `share` of one core; new backends inherit it."""
    group = os.path.join(CGROUP, name)
    os.makedirs(group, exist_ok=True)
    with open(os.path.join(group, "cpu.cfs_period_us"), "w") as f:
        f.write("100000")
    with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
        f.write(str(int(share * 100000)))
    for pid in cluster_pids(port):
        try:
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            pass  # a backend that exited meanwhile
    return group


def release_cpu(group):
    """Moves every process back to the root group (again, while a fork raced us), then removes the group."""
    for _ in range(50):
        with open(os.path.join(group, "cgroup.procs")) as f:
            pids = f.read().split()
        if not pids:
            break
        for pid in pids:
            try:
                with open(os.path.join(CGROUP, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except OSError:
                pass
        time.sleep(0.05)
    try:
        os.rmdir(group)
    except OSError as e:
        log(f"bench: could not remove {group}: {e}")
