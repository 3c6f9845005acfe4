"""cairnd's /metrics held to Prometheus' own checker: every endpoint is exercised first (so the
histograms have samples and the labelled families have series), then `promtool check metrics`
must accept the page without a single lint complaint, and the families the service promises
(TTFT, inter-token and end-to-end histograms, retrieval and prefetch figures, queue depths)
must be there with the right types and with the requests just made counted in them.

promtool comes from the Debian package prometheus (scripts/setup installs it); without it this
test fails rather than skips, since a metrics page nobody checked is the defect it guards."""
import json
import os
import shutil
import socket
import subprocess
import tempfile

from harness import Daemon, http, parse_metrics, run_tests, sample, wait_until

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDGE_MODELS = os.path.join(TOP, "adapt", "models")
KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
PASSAGES = {
    "everest": "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    "python": "Python is a programming language created by Guido van Rossum in 1991.",
    "reef": "The Great Barrier Reef, off Queensland, Australia, is the largest coral reef.",
    "insulin": "Insulin is a hormone produced by the beta cells of the pancreas.",
}

_state = {}


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package prometheus (scripts/setup does)"
    return path


def daemon():
    if "d" not in _state:
        tmp = tempfile.TemporaryDirectory(prefix="cairn-metrics-")
        corpus = os.path.join(tmp.name, "corpus.jsonl")
        with open(corpus, "w") as f:
            for pid, text in PASSAGES.items():
                f.write(json.dumps({"id": pid, "text": text}) + "\n")
        args = [f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf",
                f"--embed.model={MODELS}/all-minilm-l6-v2.gguf", f"--auth.api_keys={KEY}",
                f"--rag.corpus={corpus}", f"--rag.dir={tmp.name}/index", "--workers.ctx=512",
                "--limits.max_tokens=12"]
        if os.path.exists(os.path.join(EDGE_MODELS, "edge.gguf")):
            # The edge endpoints register their own families: check those too.
            args += ["--edge.enrollment_token=tok", f"--edge.models={EDGE_MODELS}"]
        _state["tmp"] = tmp
        _state["d"] = Daemon(*args)
    return _state["d"]


def post(path, body, headers=AUTH):
    d = daemon()
    return http("POST", d.url + path, json.dumps(body), headers=headers, timeout=300)


def scrape():
    status, headers, raw = http("GET", daemon().url + "/metrics")
    assert status == 200, raw
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    return raw


def check(raw):
    """Runs promtool check metrics on raw; returns (exit status, its output)."""
    p = subprocess.run([promtool(), "check", "metrics"], input=raw, capture_output=True,
                       timeout=60)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def exercise():
    """One request of each kind, plus errors, so every family has series to show."""
    if _state.get("exercised"):
        return
    d = daemon()
    assert http("GET", d.url + "/health")[0] == 200
    assert http("GET", d.url + "/v1/models", headers=AUTH)[0] == 200
    assert http("GET", d.url + "/v1/models")[0] == 401
    assert http("GET", d.url + "/no/such/path")[0] == 404
    status, _, raw = post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8})
    assert status == 200, raw
    status, _, raw = post("/v1/chat/completions", {"messages": [{"role": "user",
                                                                 "content": "Say hi"}],
                                                   "max_tokens": 6, "stream": True})
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
    status, _, raw = post("/v1/embeddings", {"input": ["a cat", "a dog"]})
    assert status == 200, raw
    status, _, raw = post("/v1/retrieve", {"query": "highest mountain", "k": 2})
    assert status == 200, raw
    status, _, raw = post("/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "Which organ makes insulin?"}],
                           "max_tokens": 6, "rag": {"k": 2, "mode": "rewrite"}})
    assert status == 200, raw
    assert json.loads(raw)["sources"], raw
    status, _, raw = post("/v1/completions", {"prompt": "x", "max_tokens": -1})
    assert status == 400, raw
    # An invalid UTF-8 path must not break the page (label values are route patterns).
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.recv(4096)
    # Request metrics are recorded when a request completes, a moment after its answer.
    def counted():
        _, samples = parse_metrics(scrape().decode())
        n = sample(samples, "cairn_http_requests_total", route="/v1/retrieve", code="200")
        return n is not None and n >= 1 and \
            sample(samples, "cairn_http_requests_in_flight") == 1  # only this scrape
    assert wait_until(counted, timeout=30), scrape().decode()
    _state["exercised"] = True


# ---- Tests ---------------------------------------------------------------------------------------


def test_promtool_rejects_a_broken_page():
    """The checker itself must be able to fail: a counter without _total is a lint error and a
    bucket series without le a parse error."""
    rc, out = check(b"# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n")
    assert rc != 0 and "_total" in out, (rc, out)
    rc, out = check(b"# TYPE h histogram\nh_bucket{x=\"1\"} 1\nh_sum 1\nh_count 1\n")
    assert rc != 0, (rc, out)


def test_promtool_accepts_metrics_after_every_endpoint():
    exercise()
    raw = scrape()
    rc, out = check(raw)
    assert rc == 0 and out.strip() == "", f"promtool exit {rc}:\n{out}\n--- page ---\n" \
                                          f"{raw.decode()}"


def test_promised_families_are_there_with_samples():
    exercise()
    types, samples = parse_metrics(scrape().decode())
    want = {
        "cairn_ttft_seconds": "histogram",
        "cairn_inter_token_seconds": "histogram",
        "cairn_e2e_seconds": "histogram",
        "cairn_generation_queue_seconds": "histogram",
        "cairn_http_request_duration_seconds": "histogram",
        "cairn_rag_stage_seconds": "histogram",
        "cairn_retrieval_searches_total": "counter",
        "cairn_retrieval_clusters_probed_total": "counter",
        "cairn_retrieval_fast_tier_hits_total": "counter",
        "cairn_prefetch_bytes_total": "counter",
        "cairn_prefetch_budget_bytes_total": "counter",
        "cairn_retrieval_saved_seconds_total": "counter",
        "cairn_generation_queue_depth": "gauge",
        "cairn_sequences_running": "gauge",
        "cairn_requests_admitted": "gauge",
        "cairn_http_requests_in_flight": "gauge",
        "cairn_requests_shed_total": "counter",
        "cairn_generated_tokens_total": "counter",
    }
    missing = {n: t for n, t in want.items() if types.get(n) != t}
    assert not missing, f"missing or mistyped: {missing}; have {types}"
    # Three generations ran to the end (completion, streamed chat, RAG answer) plus the RAG
    # rewrite: each is one TTFT and one end-to-end observation.
    assert sample(samples, "cairn_ttft_seconds_count") >= 4, samples
    assert sample(samples, "cairn_e2e_seconds_count") >= 4
    assert sample(samples, "cairn_inter_token_seconds_count") >= 4
    # /v1/retrieve and the RAG request each searched once, and the RAG one rewrote first.
    assert sample(samples, "cairn_rag_stage_seconds_count", stage="search") >= 2
    assert sample(samples, "cairn_rag_stage_seconds_count", stage="embed") >= 2
    assert sample(samples, "cairn_rag_stage_seconds_count", stage="pre_retrieval") >= 1
    assert sample(samples, "cairn_retrieval_searches_total") >= 2
    assert sample(samples, "cairn_retrieval_clusters_probed_total") >= 2
    # Nothing is running or queued once the answers are in.
    assert sample(samples, "cairn_generation_queue_depth") == 0
    assert sample(samples, "cairn_sequences_running") == 0
    assert sample(samples, "cairn_requests_admitted") == 0
    # Every request made above is counted under its route and status.
    for route, code in (("/health", "200"), ("/v1/models", "401"), ("other", "404"),
                        ("/v1/completions", "400"), ("/v1/embeddings", "200"),
                        ("/v1/chat/completions", "200")):
        n = sample(samples, "cairn_http_requests_total", route=route, code=code)
        assert n and n >= 1, (route, code, n)


def test_histograms_are_cumulative_and_agree_with_count():
    exercise()
    types, samples = parse_metrics(scrape().decode())
    checked = 0
    for fam, kind in types.items():
        if kind != "histogram":
            continue
        series = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                rest = frozenset(kv for kv in labels if kv[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append((float(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            assert buckets[-1][0] == float("inf"), (fam, rest)
            assert counts == sorted(counts), (fam, rest, buckets)
            total = samples[(fam + "_count", rest)]
            assert counts[-1] == total, (fam, rest, counts[-1], total)
            if total:
                assert samples[(fam + "_sum", rest)] > 0, (fam, rest)
            checked += 1
    assert checked >= 8, checked


def test_zz_daemon_stops_cleanly():
    d = daemon()
    assert d.stop() == 0, d.output()[-3000:]
    out = d.output()
    assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-3000:]
    d.__exit__()
    _state["tmp"].cleanup()


if __name__ == "__main__":
    run_tests(globals())
