"""Shared helpers for integration tests: free ports, processes, HTTP, and a tiny test runner.

Each test file calls run_tests(globals()); every function named test_* runs, failures are
reported with their traceback, and the closing line reads 'N passed, N failed'.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

BIN = os.environ.get("CAIRN_BIN", "build/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    """Returns (status, headers, body bytes); HTTP errors are answers, not exceptions."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Daemon:
    """cairnd on a free loopback port in a temporary data dir; stopped on exit."""

    def __init__(self, *args, env=None, wait=True):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="cairn-it-")
        self.log_path = os.path.join(self.dir.name, "cairnd.log")
        self.log = open(self.log_path, "wb")
        e = dict(os.environ)
        e.update(env or {})
        cmd = [os.path.join(BIN, "cairnd"), "--host=127.0.0.1", f"--port={self.port}",
               f"--data-dir={self.dir.name}", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        self.url = f"http://127.0.0.1:{self.port}"
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"cairnd exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, _ = http("GET", self.url + "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"cairnd not ready after {timeout}s:\n{self.output()}")

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and returns the exit status; fails if the process hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError(f"cairnd did not stop within {timeout}s of {sig!r}")
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self.log.close()
        self.dir.cleanup()


def get_json(url, **kw):
    status, headers, body = http("GET", url, **kw)
    return status, headers, json.loads(body)


def run_tests(ns):
    tests = [(k, v) for k, v in ns.items() if k.startswith("test_") and callable(v)]
    passed = failed = 0
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"[ PASSED ] {name} ({time.time() - t0:.2f}s)")
        except Exception:
            failed += 1
            print(f"[ FAILED ] {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


def wait_until(fn, timeout=30, every=0.05):
    """Calls fn until it returns something true (which it returns) or timeout seconds pass
    (then None)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(every)
    return None


def parse_metrics(text):
    """Parses Prometheus text exposition into (types, samples): types maps a family name to
    its TYPE; samples maps (series name, frozenset of (label, value)) to the float value.
    Label values with escapes (\\\\, \\", \\n) are unescaped."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        labels = {}
        if "{" in line:
            name, rest = line.split("{", 1)
            i = 0
            while rest[i] != "}":
                eq = rest.index("=", i)
                key = rest[i:eq].lstrip(",")
                j, val = eq + 2, []
                while rest[j] != '"':
                    if rest[j] == "\\":
                        j += 1
                        val.append({"n": "\n"}.get(rest[j], rest[j]))
                    else:
                        val.append(rest[j])
                    j += 1
                labels[key] = "".join(val)
                i = j + 1
            value = rest[i + 1:].split()[0]
        else:
            name, value = line.split()[:2]
        samples[(name, frozenset(labels.items()))] = float(value)
    return types, samples


def sample(samples, name, **labels):
    """The value of one series from parse_metrics' samples, or None."""
    return samples.get((name, frozenset(labels.items())))


class Redis:
    """redis-server on a free loopback port, AOF fsynced on every write, in a temp dir."""

    def __init__(self):
        if not shutil.which("redis-server"):
            raise AssertionError("redis-server is not installed (scripts/setup installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cairn-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", os.path.join(self.dir, "redis.log")])
        assert wait_until(lambda: self.cli("PING") == "PONG", timeout=20), "redis did not start"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--no-raw", *args],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().strip('"')

    def raw(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                           capture_output=True, text=True, timeout=20)
        return r.stdout

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
