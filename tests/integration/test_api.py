"""cairnd's /v1 API over real HTTP with the real gemma-3-270m: auth, bad input, limits,
completions (streaming and not), stop strings, client disconnects, overload and shutdown."""
import json
import os
import signal
import socket
import time

from harness import Daemon, get_json, http, run_tests

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
MODEL = os.path.join(MODELS, "gemma-3-270m-q4_k_m.gguf")
EMBEDDER = os.path.join(MODELS, "all-minilm-l6-v2.gguf")
KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
BASE_ARGS = [f"--model.path={MODEL}", f"--embed.model={EMBEDDER}", f"--auth.api_keys={KEY},other-key", "--workers.ctx=256",
             "--limits.max_tokens=48", "--http.max_body=64K", "--model.name=gemma-3-270m"]

_daemon = None


def daemon():
    """One shared cairnd for the tests that do not need special limits."""
    global _daemon
    if _daemon is None:
        _daemon = Daemon(*BASE_ARGS)
    return _daemon


def post(path, body, headers=AUTH, d=None, timeout=120):
    d = d or daemon()
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return http("POST", d.url + path, data, headers=headers, timeout=timeout)


def error_of(body):
    e = json.loads(body)["error"]
    assert set(e) == {"code", "message", "type"}, e
    return e


def metric(d, name):
    _, _, text = http("GET", d.url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def sse_events(raw):
    """The data payloads of an SSE body, in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(block[len("data: "):])
    return out


def open_stream(d, body, key=KEY):
    """Sends a streaming request on a raw socket and returns it (the caller reads or closes)."""
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
              + payload)
    return s


def wait_until(fn, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if fn():
            return True
        time.sleep(0.05)
    return False


# ---- Auth -------------------------------------------------------------------------------------

def test_health_is_open_and_v1_needs_a_key():
    d = daemon()
    status, _, _ = http("GET", d.url + "/health")
    assert status == 200
    status, _, body = http("GET", d.url + "/v1/models")
    assert status == 401, status
    e = error_of(body)
    assert e["type"] == "authentication_error" and "Authorization" in e["message"], e
    status, _, body = http("GET", d.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert status == 401 and "invalid API key" in error_of(body)["message"]
    status, _, body = post("/v1/completions", {"prompt": "x"}, headers={})
    assert status == 401
    for key in (KEY, "other-key"):
        status, _, models = get_json(d.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert status == 200 and models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["gemma-3-270m"], models


# ---- Bad input ----------------------------------------------------------------------------------

def test_bad_input_gets_400_naming_the_field():
    cases = [
        ("/v1/chat/completions", b'{"messages": [', "invalid JSON"),
        ("/v1/chat/completions", b'"just a string"', "expected a JSON object"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]},
         "messages[0]: content"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]},
         "messages[0]: role"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -5}, "max_tokens: -5"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 49}, "max_tokens: 49"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2**40}, "max_tokens: 1099511627776"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**30}, "too big integer"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "7"}, "max_tokens: expected an integer"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", b'{"prompt": "caf\xc3"}', "invalid JSON"),
        ("/v1/completions", b'{"prompt": "\xff\xfe"}', "invalid JSON"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/embeddings", {"input": [1, 2]}, "input[0]"),
        ("/v1/retrieve", {"query": "q", "k": 0}, "k: 0"),
        ("/v1/rag", {"question": "q", "mode": "psychic"}, "mode: 'psychic'"),
        ("/v1/documents", {"documents": [{"txt": "a"}]}, "documents[0]"),
    ]
    for path, body, want in cases:
        status, _, raw = post(path, body)
        assert status == 400, (path, body, status, raw)
        e = error_of(raw)
        assert e["code"] == 400 and e["type"] == "invalid_request_error", e
        assert want in e["message"], (body, e["message"])


def test_oversized_body_413_unknown_model_404_long_prompt_400():
    status, _, raw = post("/v1/completions", {"prompt": "x" * 70000})
    assert status == 413, status
    assert error_of(raw)["code"] == 413
    status, _, raw = post("/v1/completions", {"prompt": "hi", "model": "gpt-9"})
    assert status == 404 and "gpt-9" in error_of(raw)["message"]
    # 256 positions of context: a prompt of ~600 tokens cannot fit.
    status, _, raw = post("/v1/completions", {"prompt": "word " * 600, "max_tokens": 2})
    assert status == 400 and "context" in error_of(raw)["message"], raw
    status, _, raw = http("GET", daemon().url + "/v1/completions", headers=AUTH)
    assert status == 405


# ---- Generation --------------------------------------------------------------------------------

def complete(prompt, n, **extra):
    status, _, raw = post("/v1/completions",
                          {"prompt": prompt, "max_tokens": n, "temperature": 0, **extra})
    assert status == 200, raw
    return json.loads(raw)


def test_completion_non_streaming_and_streaming_agree():
    prompt = "The three primary colors are"
    a = complete(prompt, 8)
    assert a["object"] == "text_completion" and a["id"].startswith("cmpl-")
    ch = a["choices"][0]
    assert ch["finish_reason"] == "length", ch
    u = a["usage"]
    assert u["completion_tokens"] == 8 and u["prompt_tokens"] > 3, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert a["cairn"]["ttft_s"] > 0 and a["cairn"]["total_s"] >= a["cairn"]["ttft_s"]
    assert complete(prompt, 8)["choices"][0]["text"] == ch["text"]  # greedy: reproducible

    status, headers, raw = post("/v1/completions", {"prompt": prompt, "max_tokens": 8,
                                                    "temperature": 0, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), headers
    events = sse_events(raw)
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == ch["text"], (text, ch["text"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def test_chat_completion_and_stream():
    msgs = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What color is the sky?"}]
    status, _, raw = post("/v1/chat/completions", {"messages": msgs, "max_tokens": 6,
                                                   "temperature": 0})
    assert status == 200, raw
    r = json.loads(raw)
    assert r["object"] == "chat.completion"
    msg = r["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert r["usage"]["completion_tokens"] <= 6
    status, _, raw = post("/v1/chat/completions", {"messages": msgs, "max_tokens": 6,
                                                   "temperature": 0, "stream": True})
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"], (text, msg["content"])
    assert chunks[-1]["choices"][0]["finish_reason"] == r["choices"][0]["finish_reason"]


def test_stop_string_cuts_the_answer():
    prompt = "Count: one, two, three, four, five,"
    full = complete(prompt, 16)["choices"][0]["text"]
    # Stop at the second word of the greedy continuation: the answer is what precedes it.
    words = full.split()
    assert len(words) >= 3, full
    stop = words[1]
    cut = full[:full.index(stop)]
    r = complete(prompt, 16, stop=[stop])
    assert r["choices"][0]["text"] == cut, (r["choices"][0]["text"], cut, full)
    assert r["choices"][0]["finish_reason"] == "stop"


def test_client_disconnect_frees_the_sequence():
    d = daemon()
    before = metric(d, "cairn_generated_tokens_total")
    s = open_stream(d, {"prompt": "Once upon a time", "max_tokens": 48, "stream": True})
    got = b""
    while b"data: {" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert metric(d, "cairn_sequences_running") == 1
    s.close()
    assert wait_until(lambda: metric(d, "cairn_sequences_running") == 0), "sequence not freed"
    time.sleep(0.3)
    produced = metric(d, "cairn_generated_tokens_total") - before
    assert 1 <= produced < 48, produced  # cancelled, not run to max_tokens
    # The histograms saw the requests.
    assert metric(d, "cairn_ttft_seconds_count") >= 1
    assert metric(d, "cairn_inter_token_seconds_count") >= 1
    assert metric(d, "cairn_e2e_seconds_count") >= 1


def test_overload_gets_429_with_retry_after():
    with Daemon(*BASE_ARGS, "--limits.max_concurrent=1", "--limits.max_queue=0") as d:
        s = open_stream(d, {"prompt": "Once upon a time", "max_tokens": 48, "stream": True})
        s.recv(64)  # the first request is running
        status, headers, raw = post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, d=d)
        assert status == 429, (status, raw)
        assert headers.get("Retry-After") == "1", headers
        assert error_of(raw)["type"] == "rate_limit_error"
        s.close()
        assert wait_until(lambda: post("/v1/completions", {"prompt": "hi", "max_tokens": 1},
                                       d=d)[0] == 200)
        assert metric(d, "cairn_requests_shed_total") >= 1


def test_request_timeout_cancels_the_sequence():
    with Daemon(*BASE_ARGS, "--limits.timeout=1s") as d:
        # Warm up (the first request pays for page faults), then one that cannot finish in 1 s.
        post("/v1/completions", {"prompt": "hi", "max_tokens": 1}, d=d)
        t0 = time.time()
        status, headers, raw = post("/v1/completions", {"prompt": "Once upon a time",
                                                        "max_tokens": 48, "temperature": 0}, d=d)
        if status == 200:  # a machine fast enough to finish 48 tokens in 1 s proves nothing
            assert json.loads(raw)["cairn"]["total_s"] <= 1.5
            return
        assert status == 503 and "timed out" in error_of(raw)["message"], raw
        assert headers.get("Retry-After")
        assert time.time() - t0 < 10
        assert wait_until(lambda: metric(d, "cairn_sequences_running") == 0)


def test_shutdown_with_a_request_in_flight():
    d = Daemon(*BASE_ARGS)
    try:
        s = open_stream(d, {"prompt": "Once upon a time", "max_tokens": 48, "stream": True})
        s.recv(64)
        assert d.stop(signal.SIGTERM, timeout=30) == 0, d.output()
        s.settimeout(10)
        rest = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        s.close()
        assert "ERROR: AddressSanitizer" not in d.output()
    finally:
        d.__exit__()


def test_embeddings():
    status, _, raw = post("/v1/embeddings", {"input": ["a cat sat on the mat",
                                                       "a kitten sat on a rug",
                                                       "quarterly tax filing deadlines"]})
    assert status == 200, raw
    r = json.loads(raw)
    vecs = [d["embedding"] for d in sorted(r["data"], key=lambda d: d["index"])]
    assert len(vecs) == 3 and all(len(v) == 384 for v in vecs)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert all(abs(dot(v, v) - 1) < 1e-3 for v in vecs)  # L2-normalised
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]) + 0.2, (dot(vecs[0], vecs[1]),
                                                                 dot(vecs[0], vecs[2]))
    status, _, raw = post("/v1/embeddings", {"input": "single"})
    assert status == 200 and len(json.loads(raw)["data"]) == 1


def test_zz_shared_daemon_stops_cleanly():
    global _daemon
    d = daemon()
    assert d.stop() == 0, d.output()
    out = d.output()
    assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-3000:]
    d.__exit__()
    _daemon = None


if __name__ == "__main__":
    run_tests(globals())
