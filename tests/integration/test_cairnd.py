"""cairnd end to end: health, metrics, HTTP errors, configuration errors, clean shutdown."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from harness import BIN, Daemon, free_port, get_json, http, run_tests


def test_health_answers_ok():
    with Daemon() as d:
        status, headers, body = get_json(d.url + "/health")
        assert status == 200, status
        assert headers["Content-Type"].startswith("application/json")
        assert body["status"] == "ok"
        assert body["version"]
        assert body["uptime_s"] >= 0


def test_metrics_prometheus_text():
    with Daemon() as d:
        for _ in range(3):
            http("GET", d.url + "/health")
        http("GET", d.url + "/nope")
        # A request is counted when its connection completes, which may trail the client's
        # receipt of the answer by a moment: read the metrics until every count shows.
        for _ in range(50):
            status, headers, body = http("GET", d.url + "/metrics")
            text = body.decode()
            health = re.search(r'cairn_http_requests_total\{route="/health",code="200"\} (\d+)',
                               text)
            if (re.search(r'cairn_http_requests_total\{route="other",code="404"\} 1', text) and
                    health and int(health.group(1)) >= 3):
                break
            time.sleep(0.1)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE cairn_http_requests_total counter" in text, text
        m = re.search(r'cairn_http_requests_total\{route="/health",code="200"\} (\d+)', text)
        assert m and int(m.group(1)) >= 3, text
        assert re.search(r'cairn_http_requests_total\{route="other",code="404"\} 1', text), text
        assert 'cairn_http_request_duration_seconds_bucket{route="/health",le="+Inf"}' in text
        assert re.search(r'cairn_build_info\{version="[0-9.]+",cuda="(yes|no)"\} 1', text), text
        assert re.search(r'cairn_process_start_time_seconds \d', text), text
        # Every sample line belongs to a metric announced by TYPE, and every name has our prefix.
        for line in text.splitlines():
            if line and not line.startswith("#"):
                assert line.startswith("cairn_"), line


def test_unknown_path_and_method():
    with Daemon() as d:
        status, _, body = http("GET", d.url + "/v1/nothing")
        err = json.loads(body)["error"]
        assert status == 404 and err["code"] == 404 and "/v1/nothing" in err["message"], body
        assert err["type"] == "not_found_error"
        status, _, body = http("POST", d.url + "/health", body="{}")
        err = json.loads(body)["error"]
        assert status == 405 and "POST" in err["message"], body


def test_sigint_and_sigterm_stop_cleanly():
    for sig in (signal.SIGINT, signal.SIGTERM):
        d = Daemon()
        try:
            assert http("GET", d.url + "/health")[0] == 200
            rc = d.stop(sig)
            out = d.output()
            assert rc == 0, f"exit status {rc} after {sig!r}:\n{out}"
            assert "shutting down" in out and "stopped" in out, out
        finally:
            d.__exit__()


def test_signal_during_start_stops_cleanly():
    """A stop signal that comes while cairnd is still starting (its port already open, the
    main thread not yet waiting for signals) ends it by the same clean shutdown, not by the
    signal's default action on a thread a library started before main (OpenBLAS's pool)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        for _ in range(5):
            d = Daemon(wait=False)
            try:
                t0 = time.time()
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
                        break
                    except OSError:
                        assert d.proc.poll() is None, d.output()
                        assert time.time() - t0 < 60, "cairnd did not listen within 60 s"
                        time.sleep(0.001)
                rc = d.stop(sig)
                out = d.output()
                assert rc == 0, f"exit status {rc} after {sig!r} during start:\n{out}"
                assert "stopped" in out, out
            finally:
                d.__exit__()


def test_https_with_configured_cert():
    import ssl
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        with Daemon(f"--tls.cert={cert}", f"--tls.key={key}", wait=False) as d:
            ctx = ssl.create_default_context(cafile=cert)
            ctx.check_hostname = False
            url = f"https://127.0.0.1:{d.port}/health"
            for _ in range(300):
                try:
                    with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError("no HTTPS answer:\n" + d.output())
            assert "tls=on" in d.output()
        r = run_cairnd(f"--tls.cert={cert}")
        assert r.returncode == 1 and "tls.cert and tls.key" in r.stderr, r.stderr


def run_cairnd(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([os.path.join(BIN, "cairnd"), *args], capture_output=True, text=True,
                          env=e, timeout=30)


def test_config_errors_name_key_and_source():
    r = run_cairnd("--port=70000")
    assert r.returncode == 2, r
    assert "port" in r.stderr and "70000" in r.stderr and "--port" in r.stderr, r.stderr
    r = run_cairnd("--prot=80")
    assert r.returncode == 2 and "prot" in r.stderr, r.stderr
    r = run_cairnd(env={"CAIRN_HTTP_THREADS": "zero"})
    assert r.returncode == 2 and "http.threads" in r.stderr and "CAIRN_HTTP_THREADS" in r.stderr, \
        r.stderr
    r = run_cairnd("--workers.device=gpu-zero", "--port=0")
    assert r.returncode != 0 and "workers.device" in r.stderr and "gpu-zero" in r.stderr, r.stderr
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("# test\nport = 8080\nlog_level = loud\n")
    try:
        r = run_cairnd(f"--config={f.name}")
        assert r.returncode == 2 and "log_level" in r.stderr and ":3" in r.stderr, r.stderr
    finally:
        os.unlink(f.name)


def test_config_file_env_and_flag_precedence():
    port_file, port_env = free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(f"host = 127.0.0.1\nport = {port_file}\n")
    try:
        # A flag beats the environment and the file: Daemon passes --port and waits on it.
        with Daemon(f"--config={f.name}", env={"CAIRN_PORT": str(port_env)}) as d:
            assert http("GET", d.url + "/health")[0] == 200
        # The environment beats the file.
        e = dict(os.environ, CAIRN_PORT=str(port_env))
        with tempfile.TemporaryDirectory() as data:
            p = subprocess.Popen([os.path.join(BIN, "cairnd"), f"--config={f.name}",
                                  f"--data-dir={data}"], env=e,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(300):
                    try:
                        if http("GET", f"http://127.0.0.1:{port_env}/health", timeout=1)[0] == 200:
                            break
                    except OSError:
                        time.sleep(0.1)
                else:
                    raise AssertionError("cairnd did not listen on the port from CAIRN_PORT")
            finally:
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=30) == 0
    finally:
        os.unlink(f.name)


def test_cli_dispatch_and_help():
    cairn = os.path.join(BIN, "cairn")
    r = subprocess.run([cairn, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "gguf-info" in r.stdout and "serve" in r.stdout, r
    r = subprocess.run([cairn, "gguf-info", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: cairn gguf-info" in r.stdout, r
    r = subprocess.run([cairn, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "no such command 'frobnicate'" in r.stderr, r
    r = subprocess.run([cairn, "gguf-info", "/nonexistent.gguf"], capture_output=True, text=True)
    assert r.returncode == 1 and "/nonexistent.gguf" in r.stderr, r


def test_cli_gguf_info_on_real_model():
    model = os.path.join(os.environ["CAIRN_TEST_MODELS"], "gemma-3-270m-q4_k_m.gguf")
    assert os.path.exists(model), f"{model} missing: scripts/setup installs it"
    r = subprocess.run([os.path.join(BIN, "cairn"), "gguf-info", model], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "gemma3" in out, out[:2000]
    # Every tensor of the file is listed, with its type and shape.
    for name, typ in (("token_embd.weight", "Q"), ("blk.0.attn_q.weight", "Q"),
                      ("output_norm.weight", "F32")):
        line = next((l for l in out.splitlines() if re.search(rf"\s{re.escape(name)}\s", l)), None)
        assert line and typ in line, (name, line)
    last = max(int(m.group(1)) for m in re.finditer(r"blk\.(\d+)\.", out))
    assert last == 17, last  # gemma-3-270m has 18 blocks


HEAD3 = ("cairn-sched-profile 3\nbackend {backend}\ndevice {device}\n"
         "features 1 tokens logits_rows prefill_chunks keys_prefill keys_decode logits_tiles "
         "token_tiles logits_pairs gemm_steps gemm_tokens gemm_mixed\n")
COEF = "coefficients 0.002 0.0013 0.0028 0.0004 1e-6 3e-6 0.0036 0.0013 0.0011 0 0 0\n"
GEMMA = os.path.join(os.environ.get("CAIRN_TEST_MODELS", "data/models"), "gemma-3-270m-q4_k_m.gguf")


def this_cpu():
    """The CPU's model name as cairnd names the device (/proc/cpuinfo's first "model name")."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return None


def budget_metric(d):
    _, _, body = http("GET", d.url + "/metrics")
    m = re.search(r"^cairn_sched_budget_seconds (\S+)$", body.decode(), re.M)
    assert m, body[:2000]
    return float(m.group(1))


def test_slo_config_errors_name_the_keys():
    """slo.ttft and slo.tbt: positive durations, the TBT below the TTFT; each error names the
    key, its value and where it came from."""
    for args, env, words in (
            (["--slo.tbt=3s", "--slo.ttft=2s"], None,
             ["slo.tbt 3000 ms (from --slo.tbt) must be below slo.ttft 2000 ms (from --slo.ttft)"]),
            (["--slo.tbt=2s"], None, ["slo.tbt 2000 ms", "below slo.ttft 2000 ms (from default)"]),
            ([], {"CAIRN_SLO_TTFT": "100ms"}, ["slo.tbt 200 ms (from default)", "CAIRN_SLO_TTFT"]),
            (["--slo.ttft=0s"], None, ["slo.ttft", "below the minimum"]),
            (["--slo.tbt=-5ms"], None, ["slo.tbt", "-5ms"]),
            (["--slo.tbt=fast"], None, ["slo.tbt", "fast"]),
            (["--sched.budget=0ms"], None, ["sched.budget", "below the minimum"]),
            (["--sched.startup_profile=-1"], None, ["sched.startup_profile", "-1"])):
        r = run_cairnd("--port=0", *args, env=env)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        for w in words:
            assert w in r.stderr, (args, w, r.stderr)


def test_scheduler_profile_loaded_and_checked():
    """sched.profile (cairn bench profile --out): coefficients load at start and the budgets
    follow from the SLO and the profile's searched budget; an explicit sched.budget wins (with
    a warning); a malformed file stops the start with the reason."""
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good")
        head = HEAD3.format(backend="cpu", device=this_cpu())
        with open(good, "w") as f:
            f.write(head + COEF + "budget 0.08\nslo 2 0.2\n")
        # The profile's budget scaled by the ratio of the TBT SLOs, at most 0.6 x the TBT.
        for extra, want in (([], 0.08), (["--slo.tbt=300ms"], 0.08 * 0.3 / 0.2),
                            (["--slo.tbt=100ms"], min(0.08 * 0.1 / 0.2, 0.6 * 0.1)),
                            (["--sched.budget=40ms"], 0.04)):
            with Daemon(f"--model.path={GEMMA}", f"--sched.profile={good}", *extra) as d:
                assert abs(budget_metric(d) - want) < 1e-9, (extra, budget_metric(d), want)
                out = d.output()
                assert f"predictor=\"profile {good}\"" in out, out
                assert ("sched.budget overrides the SLO's" in out) == ("--sched.budget=40ms" in
                                                                        extra), out
        old = "cairn-sched-profile 2\n" + head.split("\n", 3)[3]
        for text, words in (("0.012 0.002 0.0015 2e-7 0.0004 0.0001 3e-6 0.25\n", "old format"),
                            (old + "coefficients 0.01 abc\n", "coefficient 2 'abc'"),
                            (old + "coefficients 1 2 3 4 5 6 7 8\n", "8 coefficients, 12"),
                            (old, "no coefficients line"),
                            (old + COEF + "budget 99\n", "budget 99"),
                            (head + COEF + "budget 0.1\nx\n", "unexpected 'x'")):
            bad = os.path.join(tmp, "bad")
            with open(bad, "w") as f:
                f.write(text)
            r = run_cairnd(f"--model.path={GEMMA}", f"--sched.profile={bad}", "--port=0",
                           f"--data-dir={tmp}")
            assert r.returncode == 1 and words in r.stderr, (text, r.returncode, r.stderr)


def test_stored_profile_per_backend_and_device():
    """Without sched.profile cairnd reads data_dir/profiles/<model>-<backend>-<device>.txt. A
    profile measured on another device or backend (a GPU's on this CPU engine), or written by a
    build whose predictor had other features, is refused with the reason logged, and the short
    profiling run at start takes its place; the budgets are then shares of the TBT SLO."""
    with Daemon(f"--model.path={GEMMA}", "--sched.startup_profile=0") as d0:
        m = re.search(r"no stored scheduler profile looked_for=(\S+)", d0.output())
        assert m, d0.output()
        name = os.path.basename(m.group(1))
    assert name.startswith("gemma-3-270m-q4_k_m-cpu-") and name.endswith(".txt"), name
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "profiles"))
        path = os.path.join(tmp, "profiles", name)
        args = (f"--model.path={GEMMA}", f"--data-dir={tmp}", "--slo.tbt=250ms",
                "--sched.startup_profile=40")
        with open(path, "w") as f:
            f.write(HEAD3.format(backend="cpu", device=this_cpu()) + COEF +
                    "budget 0.05\nslo 1.5 0.1\n")
        with Daemon(*args) as d:
            assert abs(budget_metric(d) - min(0.05 * 0.25 / 0.1, 0.6 * 0.25)) < 1e-9
            assert "startup profile iterations" not in d.output(), d.output()
        # A profile of an earlier build, whose features were fewer, is refused the same way.
        stale = (HEAD3.format(backend="cpu", device=this_cpu()).replace(
                     " gemm_steps gemm_tokens gemm_mixed", "") +
                 COEF.replace(" 0 0 0\n", "\n") + "budget 0.05\n")
        for text, why in ((HEAD3.format(backend="cpu", device="Some Other CPU 9000") + COEF +
                           "budget 0.05\nslo 1.5 0.1\n", "the CPU 'Some Other CPU 9000'"),
                          (HEAD3.format(backend="cuda", device="NVIDIA H100 80GB HBM3") + COEF +
                           "budget 0.05\nslo 1.5 0.1\n", "cuda backend (NVIDIA H100 80GB HBM3)"),
                          (stale, "not this build's")):
            with open(path, "w") as f:
                f.write(text)
            # The profiling run at start takes tens of seconds here, minutes under the
            # sanitizers on a busy machine: more than Daemon's usual wait.
            with Daemon(*args, wait=False) as d:
                d.wait_ready(timeout=600)
                out = d.output()
                assert "scheduler profile refused" in out and why in out, out
                m = re.search(r"startup profile iterations=(\d+) seconds=(\S+) "
                              r"mape_held_out=(\S+) held_out=(\d+)", out)
                assert m and int(m.group(1)) == 40 and int(m.group(4)) > 0, out
                assert abs(budget_metric(d) - 0.5 * 0.25) < 1e-9


if __name__ == "__main__":
    run_tests(globals())
