"""cairnd beyond its capacity: with small limits (limits.max_concurrent 2, limits.max_queue 2)
a burst of slow generation requests must be split into answers and 429s — every 429 with a
Retry-After header and the API's JSON error, every other request a complete answer — while
/health keeps answering; afterwards nothing is left admitted or running, new requests succeed
and the daemon stops cleanly (no ASan report). Clients that give up on a deferred answer must
have their generation cancelled rather than run to max_tokens."""
import json
import os
import socket
import threading
import time

from harness import Daemon, http, parse_metrics, run_tests, sample, wait_until

MODELS = os.environ.get("CAIRN_TEST_MODELS", "data/models")
KEY = "overload-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
MAX_CONCURRENT, MAX_QUEUE = 2, 2
ARGS = [f"--model.path={MODELS}/gemma-3-270m-q4_k_m.gguf", f"--auth.api_keys={KEY}",
        "--workers.ctx=256", "--limits.max_tokens=64", f"--limits.max_concurrent={MAX_CONCURRENT}",
        f"--limits.max_queue={MAX_QUEUE}"]
BURST = 16

_state = {}


def daemon():
    if "d" not in _state:
        _state["d"] = Daemon(*ARGS)
    return _state["d"]


def metrics(d):
    status, _, raw = http("GET", d.url + "/metrics")
    assert status == 200, raw
    return parse_metrics(raw.decode())[1]


def metric(d, name, **labels):
    return sample(metrics(d), name, **labels)


class HealthProbe(threading.Thread):
    """Asks /health every 0.1 s until stopped; keeps (status, seconds) of every answer."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.answers, self.halt = d, [], threading.Event()

    def run(self):
        while not self.halt.wait(0.1):
            t0 = time.time()
            try:
                status = http("GET", self.d.url + "/health", timeout=10)[0]
            except OSError as e:
                status = repr(e)
            self.answers.append((status, time.time() - t0))


def burst(d, bodies):
    """Sends every body at once (one thread each, released together); returns the answers in
    order as (status, headers, body bytes) or the exception a request raised."""
    go = threading.Barrier(len(bodies))
    out = [None] * len(bodies)

    def one(i):
        go.wait()
        try:
            out[i] = http("POST", d.url + bodies[i][0], json.dumps(bodies[i][1]), headers=AUTH,
                          timeout=300)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "requests hung"
    return out


def check_answer(path, body, answer):
    """Asserts answer is a complete success for the request, or a proper 429; returns the
    status."""
    assert not isinstance(answer, Exception), f"{path}: {answer!r}"
    status, headers, raw = answer
    if status == 429:
        assert headers.get("Retry-After", "").isdigit() and int(headers["Retry-After"]) >= 1, \
            headers
        assert headers.get("Content-Type", "").startswith("application/json"), headers
        err = json.loads(raw)["error"]
        assert err["code"] == 429 and err["type"] == "rate_limit_error" and err["message"], err
        return status
    assert status == 200, (path, status, raw[:500])
    if body.get("stream"):
        events = [e for e in raw.decode().split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]", events[-3:]
        last = json.loads(events[-2][len("data: "):])
        assert last["choices"][0]["finish_reason"] in ("length", "stop"), last
    else:
        r = json.loads(raw)
        usage = r["usage"]
        assert 1 <= usage["completion_tokens"] <= body["max_tokens"], usage
        assert r["choices"][0]["finish_reason"] in ("length", "stop"), r
    return status


# ---- Tests ---------------------------------------------------------------------------------------


def test_burst_beyond_capacity_gets_429s_and_answers():
    d = daemon()
    shed0 = metric(d, "cairn_requests_shed_total")
    bodies = []
    for i in range(BURST):
        if i % 2:
            bodies.append(("/v1/completions", {"prompt": f"Story number {i}: once upon a time",
                                               "max_tokens": 16, "temperature": 0,
                                               "stream": i % 4 == 1}))
        else:
            bodies.append(("/v1/chat/completions",
                           {"messages": [{"role": "user", "content": f"Count to {i + 10}."}],
                            "max_tokens": 16, "temperature": 0, "stream": i % 4 == 2}))
    probe = HealthProbe(d)
    probe.start()
    answers = burst(d, bodies)
    probe.halt.set()
    probe.join()
    statuses = [check_answer(p, b, a) for (p, b), a in zip(bodies, answers)]
    n429 = statuses.count(429)
    n200 = statuses.count(200)
    # All arrive within milliseconds and each takes far longer than that: the first
    # max_concurrent + max_queue are admitted, the rest are shed.
    assert n200 >= MAX_CONCURRENT + MAX_QUEUE, statuses
    assert n429 >= BURST // 2, statuses
    # The server counted exactly the 429s the clients saw.
    assert metric(d, "cairn_requests_shed_total") - shed0 == n429
    # /health answered throughout, and promptly.
    assert len(probe.answers) >= 3, probe.answers
    assert all(s == 200 for s, _ in probe.answers), probe.answers
    assert max(t for _, t in probe.answers) < 2.0, probe.answers
    # Afterwards nothing is held, and the service takes work again.
    assert wait_until(lambda: metric(d, "cairn_requests_admitted") == 0, timeout=30)
    assert metric(d, "cairn_sequences_running") == 0
    assert metric(d, "cairn_generation_queue_depth") == 0
    status, _, raw = http("POST", d.url + "/v1/completions",
                          json.dumps({"prompt": "hi", "max_tokens": 2}), headers=AUTH)
    assert status == 200, raw


def test_repeated_bursts_keep_shedding_and_recover():
    """Overload again and again: the admission count must return to zero each time (a slot
    leaked on any path would shrink capacity until everything got 429)."""
    d = daemon()
    for round_ in range(3):
        bodies = [("/v1/completions", {"prompt": f"Round {round_}, request {i}",
                                       "max_tokens": 6, "stream": bool(i % 2)})
                  for i in range(10)]
        answers = burst(d, bodies)
        statuses = [check_answer(p, b, a) for (p, b), a in zip(bodies, answers)]
        assert statuses.count(200) >= MAX_CONCURRENT + MAX_QUEUE, (round_, statuses)
        assert wait_until(lambda: metric(d, "cairn_requests_admitted") == 0, timeout=30), round_
    assert http("GET", d.url + "/health")[0] == 200


def test_abandoned_requests_are_cancelled():
    """Clients that time out and leave — the usual companion of overload — must not keep the
    engine busy: a non-streaming request whose client closes its socket is cancelled."""
    d = daemon()
    tokens0 = metric(d, "cairn_generated_tokens_total")
    # Greedy counting runs on to max_tokens rather than stopping early, so a produced count
    # below max_tokens means the request was cancelled.
    payload = json.dumps({"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                          "max_tokens": 64, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
              + payload)
    # Wait until it produces tokens, then give up on it.
    assert wait_until(lambda: metric(d, "cairn_generated_tokens_total") - tokens0 >= 2,
                      timeout=60, every=0.02)
    s.close()
    assert wait_until(lambda: metric(d, "cairn_requests_admitted") == 0, timeout=30)
    assert metric(d, "cairn_sequences_running") == 0
    produced = metric(d, "cairn_generated_tokens_total") - tokens0
    assert produced < 64, produced  # cancelled, not run to max_tokens
    # The connection completed on the server side (counted under its route).
    assert wait_until(lambda: metric(d, "cairn_http_requests_in_flight") == 1, timeout=10)


def test_n_choices_take_n_slots():
    """A request for n choices runs n sequences: it holds n admission slots (of max_concurrent +
    max_queue = 4), so beside a running n=3 request another n=2 one is shed while n=1 fits."""
    d = daemon()
    assert wait_until(lambda: metric(d, "cairn_requests_admitted") == 0, timeout=30)
    body = json.dumps({"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "max_tokens": 64,
                       "temperature": 0, "n": 3, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
              + body)
    try:
        head = b""
        while b"\r\n\r\n" not in head:  # the stream's head: admitted, its 64 tokens to come
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert metric(d, "cairn_requests_admitted") == 3, metric(d, "cairn_requests_admitted")
        two = json.dumps({"prompt": "Hello", "max_tokens": 2, "n": 2})
        status, headers, raw = http("POST", d.url + "/v1/completions", two, AUTH, timeout=60)
        assert status == 429 and headers.get("Retry-After"), (status, headers, raw)
        one = json.dumps({"prompt": "Hello", "max_tokens": 2})
        status, _, raw = http("POST", d.url + "/v1/completions", one, AUTH, timeout=120)
        assert status == 200, (status, raw)
    finally:
        s.close()
    assert wait_until(lambda: metric(d, "cairn_requests_admitted") == 0, timeout=60)


def test_zz_daemon_stops_cleanly():
    d = daemon()
    assert d.stop() == 0, d.output()[-3000:]
    out = d.output()
    assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-3000:]
    assert "runtime error" not in out, out[-3000:]
    d.__exit__()


if __name__ == "__main__":
    run_tests(globals())
